"""Evaluation metrics: COCO-style average precision and label F1 between two box sets."""
