"""bench.gpu: the agreement of two devices' predictions, and its refusal without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_detections

from bench.gpu import agreement, main


def _dets(boxes, scores):
    return make_detections(boxes, scores=np.asarray(scores, np.float32))


def test_agreement_counts_matched_boxes_of_both_sides_and_the_worst_score_gap():
    a = [
        _dets([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.1]),  # the last is hidden
        _dets([[0, 0, 10, 10]], [0.5]),
    ]
    b = [
        _dets([[0, 0, 10, 10.5], [40, 40, 45, 45]], [0.85, 0.3]),  # IoU 0.95 with a's first; one extra
        _dets([], []),
    ]
    got = agreement(a, b)
    assert got["boxes_a"] == 3 and got["boxes_b"] == 2
    assert got["matched"] == pytest.approx(2 / 5)  # a's first and b's first
    assert got["max_score_diff"] == pytest.approx(0.05, abs=1e-6)


def test_agreement_of_identical_predictions_is_total():
    a = [_dets([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.6])]
    assert agreement(a, a) == {"boxes_a": 2.0, "boxes_b": 2.0, "matched": 1.0, "max_score_diff": 0.0}
    assert agreement([_dets([], [])], [_dets([], [])])["matched"] == 1.0


def test_main_refuses_without_cuda(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # nothing generated or trained
