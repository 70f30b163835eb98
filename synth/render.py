"""Scene layout (where deposits, distractors and the membrane band are) and its rendering to a TEM-like image.

Layout and rendering are separate: :func:`make_scene` decides every box from its own generator, so labels
can be produced (and tested) without drawing a pixel; :func:`render_scene` draws from a second generator.

Intensities are floats in [0, 1] (1 = white) until the final conversion to uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synth.config import SceneConfig

_N_BOUNDARY = 96  # angular samples used to find a blob's bounding box


@dataclass(frozen=True)
class Blob:
    """A dark, irregular, soft-edged shape: a perturbed ellipse.

    The boundary in blob-local polar coordinates is ``r(phi) = radius * (1 + sum_k amp_k cos(k phi + ph_k))``,
    stretched by ``sqrt(aspect)`` along the blob's axis and ``1 / sqrt(aspect)`` across it, then rotated by
    ``angle``.

    Attributes:
        cx, cy: centre in pixels.
        radius: mean radius in pixels.
        aspect: axis ratio (>= 1).
        angle: rotation in radians.
        harmonics: float64 (K, 3) rows of (order, amplitude, phase).
        softness: edge width in pixels.
        contrast: darkening of the core in [0, 1].
        mottle: strength of the internal granular texture in [0, 1].
        hollow: lighter centre (a red cell's biconcave look) in [0, 1].
    """

    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float
    harmonics: np.ndarray
    softness: float
    contrast: float
    mottle: float
    hollow: float = 0.0

    def _radius_at(self, phi: np.ndarray) -> np.ndarray:
        r = np.ones_like(phi)
        for order, amp, phase in self.harmonics:
            r = r + amp * np.cos(order * phi + phase)
        return self.radius * r

    def box(self) -> np.ndarray:
        """float64 (4,) xyxy bounding box of the visible extent (where the edge is half way), pixels."""
        phi = np.linspace(0, 2 * np.pi, _N_BOUNDARY, endpoint=False)
        r = self._radius_at(phi)
        sa = np.sqrt(self.aspect)
        u = r * np.cos(phi) * sa
        v = r * np.sin(phi) / sa
        c, s = np.cos(self.angle), np.sin(self.angle)
        x = self.cx + c * u - s * v
        y = self.cy + s * u + c * v
        return np.array([x.min(), y.min(), x.max(), y.max()])

    def alpha(self, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coverage in [0, 1] at pixel centres ``xx, yy`` (same-shape float arrays, pixels).

        Returns:
            (coverage, relative radius): both float64 shaped like ``xx``; the second is 1 on the edge.
        """
        dx = xx - self.cx
        dy = yy - self.cy
        c, s = np.cos(self.angle), np.sin(self.angle)
        sa = np.sqrt(self.aspect)
        u = (c * dx + s * dy) / sa
        v = (-s * dx + c * dy) * sa
        rho = np.hypot(u, v)
        phi = np.arctan2(v, u)
        edge = self._radius_at(phi)
        return 1.0 / (1.0 + np.exp(-(edge - rho) / self.softness)), rho / np.maximum(edge, 1e-6)


@dataclass(frozen=True)
class Band:
    """The basement-membrane band: a smooth random curve with a thickness.

    In coordinates rotated by ``angle`` about ``origin`` (``a`` along, ``b`` across), the centre line is
    ``b = sum_i amp_i sin(freq_i a + phase_i)``.

    Attributes:
        origin: (2,) a point of the centre line's axis, pixels.
        angle: direction of the axis, radians.
        waves: float64 (K, 3) rows of (amplitude px, angular frequency rad/px, phase).
        thickness: full thickness in pixels.
        lumen_side: +1 or -1, which side of the band is the (lighter) capillary lumen.
    """

    origin: np.ndarray
    angle: float
    waves: np.ndarray
    thickness: float
    lumen_side: int

    def _frame(self) -> tuple[np.ndarray, np.ndarray]:
        u = np.array([np.cos(self.angle), np.sin(self.angle)])
        return u, np.array([-u[1], u[0]])

    def _centre(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.zeros_like(a)
        df = np.zeros_like(a)
        for amp, freq, phase in self.waves:
            f = f + amp * np.sin(freq * a + phase)
            df = df + amp * freq * np.cos(freq * a + phase)
        return f, df

    def signed_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Approximate signed distance (pixels) of points to the centre line; > 0 on the ``+n`` side."""
        u, n = self._frame()
        px = np.asarray(x, np.float64) - self.origin[0]
        py = np.asarray(y, np.float64) - self.origin[1]
        a = px * u[0] + py * u[1]
        b = px * n[0] + py * n[1]
        f, df = self._centre(a)
        return (b - f) / np.sqrt(1.0 + df**2)

    def point(self, a: float, offset: float) -> tuple[float, float, float]:
        """The point at ``a`` along the axis, ``offset`` pixels off the centre line; and the tangent angle."""
        u, n = self._frame()
        f, df = self._centre(np.array([a]))
        tangent = u + df[0] * n
        tangent = tangent / np.linalg.norm(tangent)
        normal = np.array([-tangent[1], tangent[0]])
        p = self.origin + a * u + f[0] * n + offset * normal
        return float(p[0]), float(p[1]), float(np.arctan2(tangent[1], tangent[0]))


@dataclass(frozen=True)
class Nucleus:
    """A cell nucleus near an image edge (its chromatin clumps are distractor blobs)."""

    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float


@dataclass(frozen=True)
class Scene:
    """Everything that decides the labels of one image.

    Attributes:
        size: image side in pixels.
        band: the basement-membrane band.
        deposits: the true deposits.
        cluster: int64 (N,) cluster id per deposit, -1 for a lone deposit.
        visibility: float64 (N,) in [0, 1], how easy each deposit is to see (size and contrast quantiles).
        distractors: deposit-like dark shapes that are not deposits.
        distractor_kind: one of ``"red_cell"``, ``"chromatin"`` per distractor.
        nucleus: the nucleus holding the chromatin clumps, if any.
    """

    size: int
    band: Band
    deposits: tuple[Blob, ...]
    cluster: np.ndarray
    visibility: np.ndarray
    distractors: tuple[Blob, ...]
    distractor_kind: tuple[str, ...]
    nucleus: Nucleus | None

    def deposit_boxes(self) -> np.ndarray:
        """float32 (N, 4) xyxy tight boxes of the deposits, clipped to the image."""
        return _boxes(self.deposits, self.size)

    def distractor_boxes(self) -> np.ndarray:
        """float32 (M, 4) xyxy boxes of the distractors, clipped to the image."""
        return _boxes(self.distractors, self.size)


def _boxes(blobs: tuple[Blob, ...], size: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, 4), np.float32)
    boxes = np.stack([b.box() for b in blobs])
    return np.clip(np.round(boxes, 2), 0, size).astype(np.float32)


def _harmonics(rng: np.random.Generator, orders: range, amp_max: float) -> np.ndarray:
    return np.array(
        [(k, rng.uniform(0, amp_max) / (k - 1 if k > 2 else 1), rng.uniform(0, 2 * np.pi)) for k in orders]
    )


def _make_band(size: int, cfg: SceneConfig, rng: np.random.Generator) -> Band:
    angle = rng.uniform(0, np.pi)
    u = np.array([np.cos(angle), np.sin(angle)])
    n = np.array([-u[1], u[0]])
    origin = np.array([size / 2, size / 2]) + n * rng.uniform(-0.15, 0.15) * size
    waves = np.array(
        [
            (rng.uniform(0.04, 0.12) * size, 2 * np.pi / (size * rng.uniform(0.9, 1.8)), rng.uniform(0, 6.3)),
            (rng.uniform(0.0, 0.035) * size, 2 * np.pi / (size * rng.uniform(0.3, 0.6)), rng.uniform(0, 6.3)),
        ]
    )
    thickness = rng.uniform(*cfg.band_thickness) * size
    return Band(origin, float(angle), waves, float(thickness), int(rng.choice([-1, 1])))


def _inside(box: np.ndarray, size: int, margin: float = 1.0) -> bool:
    return bool(box[0] >= margin and box[1] >= margin and box[2] <= size - margin and box[3] <= size - margin)


def _far_from(x: float, y: float, r: float, blobs: list[Blob], gap: float) -> bool:
    return all(np.hypot(b.cx - x, b.cy - y) > (b.radius + r) * gap for b in blobs)


def _deposit(
    x: float, y: float, size: int, cfg: SceneConfig, rng: np.random.Generator, tangent: float
) -> tuple[Blob, float]:
    size_q, contrast_q = rng.uniform(0, 1, 2)
    lo, hi = cfg.deposit_radius
    radius = lo * (hi / lo) ** size_q * size  # log-uniform: more small deposits than big ones
    contrast = cfg.deposit_contrast[0] + (cfg.deposit_contrast[1] - cfg.deposit_contrast[0]) * contrast_q
    blob = Blob(
        cx=x,
        cy=y,
        radius=radius,
        aspect=rng.uniform(1.0, 2.0),
        angle=tangent + rng.normal(0, 0.5),  # deposits tend to lie along the membrane
        harmonics=_harmonics(rng, range(2, 6), 0.14),
        softness=rng.uniform(0.5, 1.0) + 0.05 * radius,
        contrast=contrast,
        mottle=rng.uniform(0.2, 0.45),
    )
    return blob, 0.5 * size_q + 0.5 * contrast_q


def make_scene(size: int, cfg: SceneConfig, rng: np.random.Generator) -> Scene:
    """Lay out one image: band, distractors, then deposits (lone ones and clusters).

    Args:
        size: image side in pixels.
        cfg: what to draw.
        rng: the image's layout generator (consumed).

    Returns:
        The scene; its deposit boxes are the expert labels.
    """
    band = _make_band(size, cfg, rng)
    half = band.thickness / 2
    distractors: list[Blob] = []
    kinds: list[str] = []
    mean_r = np.sqrt(cfg.deposit_radius[0] * cfg.deposit_radius[1]) * size

    nucleus = None
    if rng.uniform() < cfg.nucleus_prob:
        for _ in range(20):
            radius = rng.uniform(0.16, 0.26) * size
            edge = int(rng.integers(4))
            along = rng.uniform(0.2, 0.8) * size
            depth = rng.uniform(0.15, 0.45) * radius  # how far the centre sits outside the image
            cx, cy = [(along, -depth), (size + depth, along), (along, size + depth), (-depth, along)][edge]
            ring = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            d = band.signed_distance(cx + radius * np.cos(ring), cy + radius * np.sin(ring))
            if np.all(np.abs(d) > half + 2) and (np.all(d > 0) or np.all(d < 0)):
                nucleus = Nucleus(cx, cy, radius, rng.uniform(1.0, 1.4), rng.uniform(0, np.pi))
                break
        if nucleus is not None:
            n_clumps = int(rng.integers(cfg.chromatin_clumps[0], cfg.chromatin_clumps[1] + 1))
            for _ in range(n_clumps * 8):
                if sum(k == "chromatin" for k in kinds) >= n_clumps:
                    break
                r = mean_r * rng.uniform(0.8, 1.6)
                phi = rng.uniform(0, 2 * np.pi)
                dist = nucleus.radius - r * rng.uniform(1.1, 2.2)  # heterochromatin lines the envelope
                x, y = nucleus.cx + dist * np.cos(phi), nucleus.cy + dist * np.sin(phi)
                blob = Blob(
                    x,
                    y,
                    r,
                    rng.uniform(1.0, 2.2),
                    phi + np.pi / 2,
                    _harmonics(rng, range(2, 7), 0.22),
                    rng.uniform(0.6, 1.2),
                    rng.uniform(0.45, 0.75),
                    rng.uniform(0.5, 0.8),
                )
                if _inside(blob.box(), size, 2) and _far_from(x, y, r, distractors, 1.1):
                    distractors.append(blob)
                    kinds.append("chromatin")

    n_cells = int(rng.integers(cfg.red_cells[0], cfg.red_cells[1] + 1))
    for _ in range(n_cells * 15):
        if sum(k == "red_cell" for k in kinds) >= n_cells:
            break
        r = mean_r * rng.uniform(1.5, 2.3)
        x, y = rng.uniform(r, size - r, 2)
        dist = float(band.signed_distance(np.array([x]), np.array([y]))[0])
        if dist * band.lumen_side < half + r * 1.3:  # red cells float in the capillary lumen
            continue
        blob = Blob(x, y, r, rng.uniform(1.0, 1.5), rng.uniform(0, np.pi), _harmonics(rng, range(2, 3), 0.03),
                    rng.uniform(0.4, 0.7), rng.uniform(0.5, 0.7), 0.05, rng.uniform(0.1, 0.3))  # fmt: skip
        clear_of_nucleus = nucleus is None or np.hypot(x - nucleus.cx, y - nucleus.cy) > nucleus.radius + r
        if _inside(blob.box(), size, 1) and _far_from(x, y, r, distractors, 1.2) and clear_of_nucleus:
            distractors.append(blob)
            kinds.append("red_cell")

    deposits: list[Blob] = []
    cluster: list[int] = []
    visibility: list[float] = []

    def free(blob: Blob, gap: float) -> bool:
        if not _inside(blob.box(), size, 1.5):
            return False
        if not _far_from(blob.cx, blob.cy, blob.radius, distractors, 1.3):
            return False
        if nucleus is not None and np.hypot(blob.cx - nucleus.cx, blob.cy - nucleus.cy) < nucleus.radius + 2:
            return False
        return _far_from(blob.cx, blob.cy, blob.radius, deposits, gap)

    n_groups = 0 if rng.uniform() < cfg.empty_image_prob else int(rng.integers(*cfg.deposit_groups) + 1)
    n_clusters = 0
    for _ in range(n_groups):
        members = 1
        if rng.uniform() < cfg.cluster_prob:
            members = int(rng.integers(cfg.cluster_size[0], cfg.cluster_size[1] + 1))
        for _attempt in range(30):
            if rng.uniform() < cfg.in_band_prob:
                a = rng.uniform(-0.6, 0.6) * size
                x, y, tangent = band.point(a, rng.uniform(-0.7, 0.7) * half)
            else:
                x, y = rng.uniform(0.1, 0.9, 2) * size
                tangent = rng.uniform(0, np.pi)
            first, vis = _deposit(x, y, size, cfg, rng, tangent)
            # Lone deposits and clusters keep apart, so a cluster is unambiguous.
            if free(first, 2.2):
                break
        else:
            continue
        group = [first]
        group_vis = [vis]
        for _m in range(members - 1):
            for _attempt in range(25):
                anchor = group[int(rng.integers(len(group)))]
                direction = tangent + rng.normal(0, 0.6) + (np.pi if rng.uniform() < 0.5 else 0.0)
                blob, vis = _deposit(anchor.cx, anchor.cy, size, cfg, rng, tangent)
                step = (anchor.radius + blob.radius) * rng.uniform(1.05, 1.45)
                blob = Blob(anchor.cx + step * np.cos(direction), anchor.cy + step * np.sin(direction),
                            blob.radius, blob.aspect, blob.angle, blob.harmonics, blob.softness,
                            blob.contrast, blob.mottle)  # fmt: skip
                if free(blob, 2.2) and _far_from(blob.cx, blob.cy, blob.radius, group, 1.05):
                    group.append(blob)
                    group_vis.append(vis)
                    break
        cid = n_clusters if len(group) > 1 else -1
        n_clusters += len(group) > 1
        deposits.extend(group)
        visibility.extend(group_vis)
        cluster.extend([cid] * len(group))

    return Scene(
        size=size,
        band=band,
        deposits=tuple(deposits),
        cluster=np.array(cluster, np.int64),
        visibility=np.array(visibility, np.float64),
        distractors=tuple(distractors),
        distractor_kind=tuple(kinds),
        nucleus=nucleus,
    )


_LARGE_FRAME = 512
"""Frames with a side above this many pixels compute wide noise filters at reduced resolution."""


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation.

    On large frames (side > ``_LARGE_FRAME``) a wide filter (``sigma`` >= 8 px) runs on noise drawn at
    ``1 / (sigma // 4)`` of the resolution and is upsampled bilinearly: the same smooth field at a fraction of
    the cost (an exact 2k-pixel filter of sigma 120 takes seconds). Smaller frames keep the exact path, so the
    small presets render bit for bit as before.
    """
    if sigma >= 8 and max(shape) > _LARGE_FRAME:
        factor = int(sigma // 4)
        low = (-(-shape[0] // factor), -(-shape[1] // factor))
        coarse = ndimage.gaussian_filter(rng.standard_normal(low), sigma / factor, mode="wrap")
        field = ndimage.zoom(coarse, factor, order=1, mode="grid-wrap", grid_mode=True)
        field = field[: shape[0], : shape[1]]
    else:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-9)


def _draw_blob(img: np.ndarray, blob: Blob, grain: np.ndarray) -> None:
    size = img.shape[0]
    box = blob.box()
    pad = 4 * blob.softness + 2
    x0, y0 = max(int(box[0] - pad), 0), max(int(box[1] - pad), 0)
    x1, y1 = min(int(box[2] + pad) + 1, size), min(int(box[3] + pad) + 1, size)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    alpha, rel = blob.alpha(xx, yy)
    core = 1.0 - blob.hollow * np.exp(-((rel / 0.45) ** 2))  # red cells: lighter centre
    texture = 1.0 + blob.mottle * 0.5 * grain[y0:y1, x0:x1]
    dark = np.clip(blob.contrast * alpha * core * texture, 0, 0.97)
    img[y0:y1, x0:x1] *= 1.0 - dark


def render_scene(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene as a TEM-like grayscale image.

    Args:
        scene: the layout from :func:`make_scene`.
        rng: the image's rendering generator (consumed).

    Returns:
        uint8 (size, size) image.
    """
    size = scene.size
    shape = (size, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    band = scene.band
    d = band.signed_distance(xx, yy)
    half = band.thickness / 2

    # Granular cytoplasm: two smooth scales plus fine grain; the lumen side is lighter and smoother.
    coarse = _smooth_noise(shape, 0.06 * size, rng)
    medium = _smooth_noise(shape, 0.012 * size + 0.5, rng)
    grain = _smooth_noise(shape, 0.7, rng)
    cyto = 0.60 + 0.05 * coarse + 0.05 * medium + 0.045 * grain
    lumen = 0.80 + 0.03 * coarse + 0.015 * medium + 0.02 * grain
    with np.errstate(over="ignore"):  # far from the band on a large frame exp overflows to inf: side 0
        side = 1.0 / (1.0 + np.exp(-(d * band.lumen_side - half - 3.0) / 2.0))
    img = cyto * (1 - side) + lumen * side

    # Foot processes: a scalloped, slightly darker rim on the cell side of the band.
    rim = np.exp(-(((-d * band.lumen_side) - half - 0.035 * size) ** 2) / (2 * (0.02 * size) ** 2))
    scallop = 0.5 + 0.5 * np.sin(
        (xx * np.cos(band.angle) + yy * np.sin(band.angle)) * 2 * np.pi / (0.07 * size) + medium
    )
    img *= 1.0 - 0.10 * rim * scallop

    # Basement membrane: medium-dark band with a darker lamina densa core.
    with np.errstate(over="ignore"):  # far from the band on a large frame exp overflows to inf: edge 0
        edge = 1.0 / (1.0 + np.exp(-(half - np.abs(d)) / 1.2))
    densa = np.exp(-(d**2) / (2 * (0.22 * band.thickness) ** 2))
    img *= 1.0 - edge * (0.30 + 0.07 * densa + 0.03 * medium)

    if scene.nucleus is not None:
        nuc = scene.nucleus
        blob = Blob(nuc.cx, nuc.cy, nuc.radius, nuc.aspect, nuc.angle, np.zeros((0, 3)), 2.0, 0.3, 0.3)
        _draw_blob(img, blob, coarse * 0.5 + grain * 0.5)
    for blob in scene.distractors:
        _draw_blob(img, blob, _smooth_noise(shape, 1.0, rng) if blob.mottle > 0.3 else grain)
    deposit_grain = _smooth_noise(shape, 0.9, rng)
    for blob in scene.deposits:
        _draw_blob(img, blob, deposit_grain)

    # Microscope: slight defocus, uneven illumination, shot noise.
    img = ndimage.gaussian_filter(img, 0.6)
    img *= 1.0 + 0.04 * _smooth_noise(shape, 0.3 * size, rng)
    img += rng.normal(0, 0.025, shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
