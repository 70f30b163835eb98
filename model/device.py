"""Device choice and CPU threads for torch/ultralytics."""

from __future__ import annotations

import logging
import os
import re
from types import ModuleType

logger = logging.getLogger(__name__)

_CUDA_SPEC = re.compile(r"^cuda(:\d+)?$")


def resolve_device(spec: str = "auto") -> str:
    """Turn a device request into a torch device string.

    Args:
        spec: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``"cpu"`` or ``"cuda:N"``.

    Raises:
        ValueError: ``spec`` is not one of the forms above, or asks for CUDA on a machine without it.
    """
    import torch

    if not isinstance(spec, str):
        raise TypeError(
            f"device: expected a string such as 'auto', 'cpu' or 'cuda:0', got {type(spec).__name__}"
        )
    value = spec.strip().lower()
    if value == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if value == "cpu":
        return "cpu"
    if not _CUDA_SPEC.match(value):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device: {spec!r} asks for CUDA but torch.cuda.is_available() is False on this machine; "
            "use device='auto' or 'cpu'"
        )
    index = int(value.split(":")[1]) if ":" in value else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device: {spec!r} asks for CUDA device {index}, but only {count} are visible")
    return f"cuda:{index}"


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads.

    ultralytics sets ``OMP_NUM_THREADS=1`` on import and ``torch.set_num_threads(cpu_count - 1)`` whenever it
    selects a device, which starves CPU training and inference on small machines; call this after it.

    Args:
        n: threads to use; ``None`` means ``os.cpu_count()``.

    Returns:
        The number of threads now set.

    Raises:
        ValueError: ``n`` is not a positive integer.
    """
    import torch

    if n is None:
        n = os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer or None, got {n!r}")
    torch.set_num_threads(n)
    return int(torch.get_num_threads())


def import_ultralytics() -> ModuleType:
    """Import ultralytics (lazily, so that importing ``model`` stays cheap) and return the package.

    ultralytics reads ``YOLO_CONFIG_DIR`` at import: the entry point (or tests/conftest.py) must set it to a
    writable folder inside the work dir, otherwise ultralytics writes its settings under the home folder.

    ``YOLO_OFFLINE`` defaults to ``1`` here (a value already set is kept): on a machine with internet,
    ultralytics would otherwise send usage events (its settings' ``sync``) and ask PyPI for a newer version on
    every training. Nothing in this project may reach the network at run time.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if "YOLO_CONFIG_DIR" not in os.environ:
        logger.warning(
            "YOLO_CONFIG_DIR is not set: ultralytics will write its settings under the home folder"
        )
    import ultralytics

    return ultralytics
