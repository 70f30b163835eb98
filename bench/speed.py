"""Speed of the LSM scorer against cleanlab's object-detection label-quality scorer, same inputs, one run.

    python -m bench.speed [--images 10000] [--boxes 10] [--cleanlab-images 1000] [--seed 0]

Random images of ``--boxes`` crowd boxes each; the predictions are the crowd boxes jittered, with some
dropped, some moved far away and some extra boxes, scored at random. Timed on every image: our batched
``score_batch`` (flat arrays), ``score_images`` (the same plus one ``ImageScore`` per image) and the per-image
path (``score_image`` in a loop); the results of the batched and per-image paths are checked equal.
cleanlab's ``get_label_quality_scores`` runs on the first ``--cleanlab-images`` images (it is slower) and
its time is scaled per image to the full count; the output says so. Every figure is given as wall time and
as process CPU time (``time.process_time``), per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from selection import ImageScore, LSMConfig, score_batch, score_image, score_images
from selection.detections import Detections

_SIZE = 512.0  # image side in pixels
_T = TypeVar("_T")


def timed(fn: Callable[[], _T]) -> tuple[_T, float, float]:
    """``fn()``'s result, wall seconds and process CPU seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _same(a: ImageScore, b: ImageScore) -> bool:
    """Whether two image scores are equal: discrepancy, grade and every instance array (NaN equal to NaN)."""
    if (a.discrepancy, a.grade, a.n_crowd, a.n_pred) != (b.discrepancy, b.grade, b.n_crowd, b.n_pred):
        return False
    for f in dataclasses.fields(a.instances):
        x, y = getattr(a.instances, f.name), getattr(b.instances, f.name)
        if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            return False
    return True


def make_images(
    n_images: int, n_boxes: int, rng: np.random.Generator
) -> tuple[list[Detections], list[Detections]]:
    """Random crowd/prediction pairs: ``n_boxes`` crowd boxes and about as many predictions per image."""
    crowds, preds = [], []
    zeros = np.zeros(n_boxes, np.int64)
    for _ in range(n_images):
        xy = rng.uniform(0, _SIZE - 60, (n_boxes, 2))
        wh = rng.uniform(8, 60, (n_boxes, 2))
        crowd = np.concatenate([xy, xy + wh], axis=1)
        pred = crowd + rng.normal(0, 3, crowd.shape)
        pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 1)
        far = rng.random(n_boxes) < 0.2  # background crowd box + missed object
        pred[far] = np.roll(pred[far], 1, axis=0) + rng.uniform(-100, 100, (int(far.sum()), 1))
        keep = rng.random(n_boxes) >= 0.1
        n_extra = int(rng.integers(0, 3))
        exy = rng.uniform(0, _SIZE - 60, (n_extra, 2))
        extra = np.concatenate([exy, exy + rng.uniform(8, 60, (n_extra, 2))], axis=1)
        pred = np.concatenate([pred[keep], extra])
        crowds.append(Detections(crowd.astype(np.float32), zeros))
        preds.append(
            Detections(
                pred.astype(np.float32),
                np.zeros(len(pred), np.int64),
                rng.uniform(0.05, 1.0, len(pred)).astype(np.float32),
            )
        )
    return crowds, preds


def to_cleanlab(
    crowds: list[Detections], preds: list[Detections]
) -> tuple[list[dict[str, np.ndarray]], list[list[np.ndarray]]]:
    """cleanlab's object-detection format: label dicts; per image, one (K, 5) xyxy+score array per class."""
    labels = [{"bboxes": c.xyxy.astype(np.float64), "labels": c.class_id} for c in crowds]
    predictions = [
        [np.concatenate([p.xyxy, p.score[:, None]], axis=1).astype(np.float32)]  # type: ignore[index]
        for p in preds
    ]
    return labels, predictions


def main(argv: list[str] | None = None) -> None:
    """Time both scorers and print the figures side by side."""
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="images scored by score_images")
    parser.add_argument("--boxes", type=int, default=10, help="crowd boxes per image")
    parser.add_argument("--cleanlab-images", type=int, default=1_000, help="images timed for cleanlab")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images < 1 or args.boxes < 1 or args.cleanlab_images < 0:
        parser.error("--images and --boxes must be >= 1, --cleanlab-images >= 0")

    rng = np.random.default_rng(args.seed)
    crowds, preds = make_images(args.images, args.boxes, rng)
    n_pred = sum(len(p) for p in preds) / len(preds)
    print(f"data: {args.images} images, {args.boxes} crowd boxes and {n_pred:.1f} predictions per image")

    cfg = LSMConfig()
    score_images(crowds[:50], preds[:50], config=cfg)  # warm-up (imports, first calls)
    n = args.images
    batch, b_wall, b_cpu = timed(lambda: score_batch(crowds, preds, config=cfg))
    scores, s_wall, s_cpu = timed(lambda: score_images(crowds, preds, config=cfg))
    pairs = list(zip(crowds, preds, strict=True))
    single, p_wall, p_cpu = timed(lambda: [score_image(c, p, config=cfg) for c, p in pairs])
    assert len(scores) == len(single) == n
    same = all(_same(a, b) for a, b in zip(scores, single, strict=True))
    rows = [
        ("LSM score_batch  ", b_wall, b_cpu),
        ("LSM score_images ", s_wall, s_cpu),
        ("LSM per image    ", p_wall, p_cpu),
    ]
    for name, wall, cpu in rows:
        print(
            f"{name}: {wall:8.3f} s for {n} images = {1000 * wall / n:.4f} ms/image "
            f"(process CPU {1000 * cpu / n:.4f} ms/image)"
        )
    print(
        f"batched paths    : {100 * batch.fallback.mean():.1f}% of images scored one at a time "
        f"(matching conflicts, box-in-box); per-image results {'identical' if same else 'DIFFERENT'}"
    )
    print(
        f"speed-up         : per image / score_images = {p_cpu / s_cpu:.1f}x (CPU), "
        f"per image / score_batch = {p_cpu / b_cpu:.1f}x (CPU)"
    )

    n_cl = min(args.cleanlab_images, args.images)
    if n_cl == 0:
        return
    try:
        from cleanlab.object_detection.rank import get_label_quality_scores
    except ImportError as err:
        print(f"cleanlab unavailable ({err}); no comparison")
        return
    labels, predictions = to_cleanlab(crowds[:n_cl], preds[:n_cl])
    weights = {"overlooked": 0.5, "badloc": 0.5, "swap": 0.0}  # one class: no swap issues
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0, c0 = time.perf_counter(), time.process_time()
        quality = get_label_quality_scores(labels, predictions, aggregation_weights=weights, verbose=False)
        theirs, theirs_cpu = time.perf_counter() - t0, time.process_time() - c0
    assert quality.shape == (n_cl,)
    cl_ms, cl_cpu = 1000 * theirs / n_cl, 1000 * theirs_cpu / n_cl
    scaled = "" if n_cl == n else f" (timed on the first {n_cl} images, scaled per image)"
    print(
        f"cleanlab scorer  : {cl_ms * n / 1000:8.3f} s for {n} images = {cl_ms:.4f} ms/image "
        f"(process CPU {cl_cpu:.4f} ms/image){scaled}"
    )
    for name, wall, cpu in rows:
        print(
            f"ratio            : cleanlab / {name.strip()[4:]:<12} = "
            f"{cl_ms / (1000 * wall / n):6.1f}x (wall), {cl_cpu / (1000 * cpu / n):6.1f}x (CPU)"
        )
    ours_sub = np.array([s.discrepancy for s in scores[:n_cl]])
    corr = np.corrcoef(ours_sub, 1.0 - quality)[0, 1]
    print(
        f"agreement        : Pearson r(LSM discrepancy, 1 - cleanlab quality) = {corr:.3f} on {n_cl} images"
    )


if __name__ == "__main__":
    main()
