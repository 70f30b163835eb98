"""Image files -> the 8-bit RGB pixels every detector sees: one decode and one normalisation for the project.

Microscopes write 16-bit TIFF/PNG, often 12-bit data in a 16-bit container; decoding those the usual way
(OpenCV's ``IMREAD_COLOR``, PIL's ``convert("RGB")``) keeps the high byte and maps 0-4095 to 0-15, a nearly
black image. Here an image is decoded at its own depth (:func:`decode_image`: uint8, uint16, int16, float32
... gray or RGB) and then mapped to uint8 RGB by :func:`normalize_image` under an :class:`ImageNormalization`:

* ``auto`` (the default): 8-bit images pass unchanged (they are display-ready: what annotators see in Label
  Studio and what models trained before this setting existed saw); any other depth is stretched per image
  between two percentiles of its values.
* ``percentile``: every image, 8-bit included, is stretched between the percentiles.
* ``none``: no stretching: integer types are scaled linearly from their type's full range (uint16: 0-65535)
  to 0-255, floats from [0, 1]. 12-bit data then stays dark: pick it only for data that fills its type.

The percentile stretch: ``lo, hi`` = the ``percentiles`` of all pixel values (every channel together, so
colours keep their balance; NaN ignored), ``out = round(255 * (v - lo) / (hi - lo))`` clipped to 0-255. When
``hi <= lo`` (one value fills the whole percentile range, e.g. a dark frame with a few bright spots), the
image's minimum and maximum are used; a constant image falls back to the ``none`` scaling. The default
percentiles (0.1, 99.9) saturate a thousandth of the pixels at each end: enough to ignore hot pixels and dead
columns of a camera (a 2k frame has 4000 pixels in each tail), little enough to keep the contrast inside
deposits that cover a few hundred pixels.

Gray stays one channel through the stretch and is replicated to three at the end; alpha is dropped; palette
images are expanded; EXIF orientation is applied (as browsers and OpenCV's ``IMREAD_COLOR`` do); a multi-page
TIFF gives its first page.

Training and prediction use the same functions with the same :class:`ImageNormalization` (the backend records
it with each model version): :func:`load_image` for bytes, :func:`read_image` for files.

>>> import numpy as np
>>> raw = np.array([[0, 1000], [2000, 4095]], np.uint16)  # 12-bit data in a 16-bit container
>>> normalize_image(raw, ImageNormalization(percentiles=(0.0, 100.0)))[..., 0].tolist()
[[0, 62], [125, 255]]
>>> eight = np.array([[3, 200]], np.uint8)
>>> normalize_image(eight, ImageNormalization())[..., 0].tolist()  # auto: 8-bit passes unchanged
[[3, 200]]
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PERCENTILES",
    "ImageNormalization",
    "Normalize",
    "decode_image",
    "image_size",
    "load_image",
    "normalize_image",
    "read_image",
    "write_image",
]

DEFAULT_PERCENTILES = (0.1, 99.9)
"""Low and high percentile of the stretch (see the module docstring for why)."""


class Normalize(enum.StrEnum):
    """How decoded pixels become uint8 (see the module docstring)."""

    AUTO = "auto"
    PERCENTILE = "percentile"
    NONE = "none"


@dataclass(frozen=True)
class ImageNormalization:
    """The one mapping from decoded pixels to the uint8 RGB a detector sees.

    Attributes:
        mode: ``auto`` (8-bit unchanged, other depths stretched), ``percentile`` (all stretched) or ``none``.
        percentiles: ``(low, high)`` percentiles of the stretch, ``0 <= low < high <= 100``.
    """

    mode: Normalize = Normalize.AUTO
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mode", Normalize(str(self.mode).lower()))
        except ValueError:
            choices = ", ".join(m.value for m in Normalize)
            raise ValueError(f"mode: expected one of {choices}, got {self.mode!r}") from None
        try:
            low, high = (float(p) for p in self.percentiles)
        except (TypeError, ValueError):
            raise ValueError(
                f"percentiles: expected two numbers (low, high), got {self.percentiles!r}"
            ) from None
        if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low < high <= 100.0):
            raise ValueError(f"percentiles: expected 0 <= low < high <= 100, got ({low}, {high})")
        object.__setattr__(self, "percentiles", (low, high))

    def stretches(self, dtype: np.dtype[Any] | type) -> bool:
        """Whether images of ``dtype`` are percentile-stretched (else scaled from their type's range)."""
        if self.mode is Normalize.NONE:
            return False
        return self.mode is Normalize.PERCENTILE or np.dtype(dtype) != np.uint8

    def as_dict(self) -> dict[str, Any]:
        """JSON form, e.g. for a model version's meta: ``{"mode": "auto", "percentiles": [0.1, 99.9]}``."""
        return {"mode": self.mode.value, "percentiles": list(self.percentiles)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageNormalization:
        """Inverse of :meth:`as_dict` (missing keys take the defaults).

        Raises:
            ValueError: not a mapping, an unknown mode or bad percentiles.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a mapping with mode and percentiles, got {type(data).__name__}")
        # __post_init__ validates whatever came (a JSON list, a string, a number) into two floats.
        return cls(
            mode=data.get("mode", Normalize.AUTO), percentiles=data.get("percentiles", DEFAULT_PERCENTILES)
        )


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image bytes (PNG, TIFF, JPEG, BMP, WebP ...) -> pixels at their own depth.

    Through OpenCV, not ``PIL.Image.open``: once ultralytics is imported it patches that function to
    pip-install a HEIF plugin whenever Pillow cannot identify a file, which a corrupt upload must not trigger.

    Args:
        data: the file's bytes.

    Returns:
        (H, W) gray or (H, W, 3) RGB, in the file's sample type (uint8, uint16, int16, float32 ...).

    Raises:
        ValueError: the bytes are not an image OpenCV can decode.
    """
    import cv2

    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR  # keep depth and gray; drop alpha; apply EXIF
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if pixels is None or pixels.ndim not in (2, 3) or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"not a readable image ({len(data)} bytes)")
    if pixels.ndim == 3:
        if pixels.shape[2] != 3:
            raise ValueError(f"not a readable image (decoded to {pixels.shape[2]} channels)")
        pixels = pixels[:, :, ::-1]  # OpenCV decodes BGR
    return np.ascontiguousarray(pixels)


def read_image(path: Path | str) -> np.ndarray:
    """:func:`decode_image` of a file.

    Raises:
        OSError: the file cannot be read.
        ValueError: not a decodable image (the message names the file).
    """
    path = Path(path)
    try:
        return decode_image(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


_EXIF_ORIENTATION = 0x0112
_TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height (transpose, rotate 90/270)


def _orientation(image: Any) -> int:
    """The EXIF orientation tag of an open PIL image (1, upright, when it has none or it is unreadable)."""
    if image.format == "PNG" and "exif" not in image.info:
        # PNG's getexif() decodes the whole image to look past IDAT for an eXIf chunk; one before IDAT
        # (where PNG 1.5+ puts it) is already in info.
        return 1
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError):  # a corrupt EXIF block: shown upright
        return 1
    return value if isinstance(value, int) else 1


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) of an image file as shown, after its EXIF orientation, from the header alone.

    The size :func:`read_image` decodes to (OpenCV applies the orientation, as browsers, hence Label Studio,
    and ultralytics do), so boxes are drawn on, and percents taken of, the turned image. No pixels are
    decoded, at any pixel count (PIL's decompression-bomb limit guards decoding, not this).

    Raises:
        ValueError: no such file, not a readable image, or an image without pixels (the message names it).
    """
    from PIL import Image, UnidentifiedImageError
    from PIL.TiffImagePlugin import IMAGELENGTH, IMAGEWIDTH, TiffImageFile

    path = Path(path)
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # process-wide: lifted for this header read only
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            if isinstance(image, TiffImageFile):  # newer PIL already reports TIFF's turned size
                width, height = image.tag_v2.get(IMAGEWIDTH, width), image.tag_v2.get(IMAGELENGTH, height)
            orientation = _orientation(image)
    except (OSError, UnidentifiedImageError, ImportError, ValueError) as exc:
        # ImportError: once ultralytics is imported (same process), its patched Image.open answers an
        # unidentified file by importing the HEIF plugin, which is not installed. ValueError: what some PIL
        # plugins raise on a malformed header (a TIFF's "Invalid dimensions").
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if orientation in _TURNED:
        width, height = height, width
    if not (isinstance(width, int) and isinstance(height, int)) or width <= 0 or height <= 0:
        raise ValueError(f"{path}: image has no pixels ({width} x {height})")
    return width, height


def write_image(stem: Path | str, pixels: np.ndarray) -> Path:
    """Save decoded pixels without loss, so that :func:`read_image` gives them back exactly.

    uint8 and uint16 go to ``<stem>.png``, any other sample type (int16, float32 ...) to ``<stem>.tiff``.

    Args:
        stem: the file path without its suffix.
        pixels: (H, W) gray or (H, W, 3) RGB, as :func:`decode_image` returns.

    Returns:
        The file written.

    Raises:
        ValueError: a shape other than the above.
        OSError: the file cannot be written.
    """
    import cv2

    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"pixels: expected an (H, W) or (H, W, 3) array, got shape {pixels.shape}")
    stem = Path(stem)
    suffix = ".png" if pixels.dtype in (np.uint8, np.uint16) else ".tiff"
    path = stem.with_name(stem.name + suffix)
    bgr = pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[:, :, ::-1])
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"cannot write {path} ({pixels.dtype} pixels)")
    return path


def _as_channels(pixels: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3); (H, W, 1) squeezed and (H, W, 4) without its alpha."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return pixels[:, :, 0]
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return pixels[:, :, :3]
    if pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3):
        return pixels
    raise ValueError(f"pixels: expected an (H, W) or (H, W, 1|3|4) array, got shape {pixels.shape}")


def _type_range(dtype: np.dtype[Any]) -> tuple[float, float]:
    """The values of ``dtype`` that ``none`` maps to 0 and 255."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def _percentile_range(pixels: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float] | None:
    """``(lo, hi)`` of the stretch, or None for a constant (or all-NaN) image."""
    if np.issubdtype(pixels.dtype, np.integer) and pixels.dtype.itemsize <= 2:
        # Exact inverted-CDF percentiles from a histogram: one pass, no sort of a 16-megapixel frame.
        offset = int(np.iinfo(pixels.dtype).min)
        flat = pixels.reshape(-1)
        counts = np.bincount(flat if offset == 0 else flat.astype(np.int32) - offset)
        cdf = np.cumsum(counts)
        ranks = np.ceil(np.array(percentiles) / 100.0 * cdf[-1]).clip(1, cdf[-1])
        lo, hi = (float(v + offset) for v in np.searchsorted(cdf, ranks))
        nonzero = np.flatnonzero(counts)
        vmin, vmax = float(nonzero[0] + offset), float(nonzero[-1] + offset)
    else:
        values = pixels[np.isfinite(pixels)]
        if values.size == 0:
            return None
        lo, hi = (float(v) for v in np.percentile(values, percentiles, method="inverted_cdf"))
        vmin, vmax = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = vmin, vmax
    return (lo, hi) if hi > lo else None


def _scale(pixels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``round(255 * (v - lo) / (hi - lo))`` clipped to uint8 (NaN -> 0), through a lookup table for
    8- and 16-bit integers."""
    gain = 255.0 / (hi - lo)
    if np.issubdtype(pixels.dtype, np.integer) and pixels.dtype.itemsize <= 2:
        info = np.iinfo(pixels.dtype)
        values = np.arange(info.min, int(info.max) + 1, dtype=np.float64)
        lut = np.clip(np.rint((values - lo) * gain), 0, 255).astype(np.uint8)
        index = pixels if info.min == 0 else pixels.astype(np.int32) - int(info.min)
        return lut[index]
    work = pixels.astype(np.float32)  # float32 is plenty for 8-bit output and halves float64's memory
    work -= np.float32(lo)
    work *= np.float32(gain)
    np.rint(work, out=work)
    np.clip(work, 0, 255, out=work)
    return np.nan_to_num(work, copy=False, nan=0.0).astype(np.uint8)


def normalize_image(pixels: np.ndarray, normalization: ImageNormalization) -> np.ndarray:
    """Decoded pixels -> uint8 (H, W, 3) RGB under ``normalization`` (rules in the module docstring).

    Args:
        pixels: (H, W) gray or (H, W, 3) RGB (also (H, W, 1), or (H, W, 4) whose alpha is dropped), any
            integer or float sample type, e.g. from :func:`decode_image`.
        normalization: the mapping; training and prediction must use the same one.

    Returns:
        A new uint8 (H, W, 3) RGB array (gray replicated to three channels).

    Raises:
        TypeError: ``pixels`` is not a numeric numpy array.
        ValueError: a shape other than the above.
    """
    if not isinstance(pixels, np.ndarray) or not (
        np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)
    ):
        got = pixels.dtype if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise TypeError(f"pixels: expected an integer or float numpy array, got {got}")
    pixels = _as_channels(pixels)
    bounds = (
        _percentile_range(pixels, normalization.percentiles)
        if normalization.stretches(pixels.dtype)
        else None
    )
    if pixels.dtype == np.uint8 and bounds is None:
        out = pixels  # 255 * v / 255: the identity, without a table
    else:
        out = _scale(pixels, *(bounds or _type_range(pixels.dtype)))
    if out.ndim == 2:
        return np.repeat(out[:, :, None], 3, axis=2)
    return out.copy() if out is pixels else np.ascontiguousarray(out)


def load_image(data: bytes, normalization: ImageNormalization) -> np.ndarray:
    """Encoded bytes -> uint8 (H, W, 3) RGB: :func:`normalize_image` of :func:`decode_image`.

    Raises:
        ValueError: not a decodable image.
    """
    return normalize_image(decode_image(data), normalization)
