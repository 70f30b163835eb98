"""YOLO txt label files <-> Detections: one ``class cx cy w h [score]`` line per box, normalised to [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from selection.detections import Detections

_FLOAT32_MAX = float(np.finfo(np.float32).max)  # Detections hold float32 pixels


def _check_size(width: float, height: float) -> None:
    if not (np.isfinite(width) and np.isfinite(height)) or width <= 0 or height <= 0:
        raise ValueError(f"width, height: expected positive image size, got {width} x {height}")


def format_yolo_labels(dets: Detections, width: float, height: float) -> str:
    """The text of a YOLO label file (6 decimals; a score column when ``dets`` has scores).

    Args:
        dets: boxes in pixels.
        width, height: image size in pixels.
    """
    _check_size(width, height)
    xyxy = dets.xyxy.astype(np.float64)
    cx = (xyxy[:, 0] + xyxy[:, 2]) / 2 / width
    cy = (xyxy[:, 1] + xyxy[:, 3]) / 2 / height
    w = (xyxy[:, 2] - xyxy[:, 0]) / width
    h = (xyxy[:, 3] - xyxy[:, 1]) / height
    lines = []
    for i in range(len(dets)):
        line = f"{int(dets.class_id[i])} {cx[i]:.6f} {cy[i]:.6f} {w[i]:.6f} {h[i]:.6f}"
        if dets.score is not None:
            line += f" {float(dets.score[i]):.6f}"
        lines.append(line)
    return "".join(line + "\n" for line in lines)


def parse_yolo_labels(text: str, width: float, height: float, *, source: str = "labels") -> Detections:
    """Parse YOLO label text into pixel Detections; ``source`` names the file in errors.

    Raises:
        ValueError: ``source:line:`` of a bad line: the first with wrong columns, a number that is not
            finite, a negative or fractional class, a negative size or a score outside [0, 1]; else the first
            whose pixel coordinates no float32 holds.
    """
    _check_size(width, height)
    rows: list[list[float]] = []
    where: list[tuple[int, str]] = []  # per row: its line number and text
    n_cols = None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (5, 6):
            raise ValueError(f"{source}:{lineno}: expected 'class cx cy w h [score]', got {line!r}")
        if n_cols is not None and len(parts) != n_cols:
            raise ValueError(f"{source}:{lineno}: expected {n_cols} columns, got {len(parts)}")
        n_cols = len(parts)
        try:
            values = [float(p) for p in parts]
        except ValueError as exc:
            raise ValueError(f"{source}:{lineno}: expected numbers, got {line!r}") from exc
        if not all(np.isfinite(values)):
            raise ValueError(f"{source}:{lineno}: expected finite numbers, got {line!r}")
        if values[0] != int(values[0]) or values[0] < 0:
            raise ValueError(f"{source}:{lineno}: expected a non-negative integer class, got {parts[0]!r}")
        if values[3] < 0 or values[4] < 0:
            raise ValueError(f"{source}:{lineno}: expected non-negative width and height, got {line!r}")
        if n_cols == 6 and not 0.0 <= values[5] <= 1.0:
            raise ValueError(f"{source}:{lineno}: expected a score in [0, 1], got {parts[5]!r}")
        rows.append(values)
        where.append((lineno, line))
    if not rows:
        return Detections.empty()
    arr = np.array(rows, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused just below, by its line
        cx, cy, w, h = arr[:, 1] * width, arr[:, 2] * height, arr[:, 3] * width, arr[:, 4] * height
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    beyond = np.flatnonzero(~np.all(np.abs(xyxy) < _FLOAT32_MAX, axis=1))
    if len(beyond):  # finite here, inf as Detections' float32
        lineno, line = where[int(beyond[0])]
        raise ValueError(f"{source}:{lineno}: box coordinates beyond any image, got {line!r}")
    return Detections(
        xyxy=xyxy.astype(np.float32),
        class_id=arr[:, 0].astype(np.int64),
        score=arr[:, 5].astype(np.float32) if n_cols == 6 else None,
    )


def read_yolo_labels(path: str | Path, width: float, height: float) -> Detections:
    """Read a YOLO label file into pixel Detections.

    Args:
        path: the ``.txt`` file; a missing file raises ``FileNotFoundError`` (an empty file means no boxes).
        width, height: image size in pixels.

    Returns:
        Boxes as float32 (N, 4) pixel xyxy; scores when the file has a sixth column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no YOLO label file at {path}")
    return parse_yolo_labels(path.read_text(), width, height, source=str(path))


def write_yolo_labels(path: str | Path, dets: Detections, width: float, height: float) -> None:
    """Write pixel Detections as a YOLO label file (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_yolo_labels(dets, width, height))
