"""Label Studio ML backend: YOLO pre-annotations graded against crowd labels, retraining on expert labels.

Run with ``python -m backend``; build the app with :func:`backend.app.create_app`.
"""
