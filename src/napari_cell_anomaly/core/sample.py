"""Reproducible synthetic thin-smear microscopy: red blood cells with planted parasites.

This is the project's own sample data: it drives the demo, the napari sample-data entries
and the tests that need pixel ground truth. Nothing here is real data.

* :func:`make_cells` makes single-cell crops in the style of the NIH malaria crops: a pale
  pink/red cell with a lighter centre (central pallor) on a black background.
* :func:`make_field` makes a field of view: many such cells on a light background;
  :func:`make_cell_field` also gives its instance labels and which cells are anomalous.

Anomalous cells carry one to three parasite-like stains (dark purple dots or small ring
forms); the returned masks are True exactly on those stain pixels. Both functions render
cells with the same helper, so a cell looks the same in a crop and in a field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["CellField", "SampleSet", "make_cell_field", "make_cells", "make_field"]

# Mean RGB of a stained red blood cell and of a parasite stain (0..255).
_CELL_RGB = np.array([209.0, 150.0, 149.0], dtype=np.float32)
_STAIN_RGB = np.array([128.0, 36.0, 118.0], dtype=np.float32)
_CHROMATIN_RGB = np.array([96.0, 18.0, 100.0], dtype=np.float32)
# Field background (light beige/grey) under brightfield illumination.
_BACKGROUND_RGB = np.array([226.0, 214.0, 206.0], dtype=np.float32)

# A stain pixel belongs to the mask when its coverage is at least this much.
_MASK_LEVEL = 0.5


@dataclass
class SampleSet:
    """A batch of synthetic cell images with ground truth.

    Attributes
    ----------
    images : list of numpy.ndarray
        ``uint8`` RGB images of shape ``(size, size, 3)``.
    masks : list of numpy.ndarray
        ``bool`` arrays of shape ``(size, size)``, True on planted anomaly (stain) pixels;
        all False for normal cells.
    labels : numpy.ndarray
        ``bool`` array of shape ``(n,)``, True = anomalous cell.
    """

    images: list[np.ndarray]
    masks: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _soft_edge(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Coverage in [0, 1] from a signed distance in pixels (positive = inside)."""
    return np.clip(0.5 + signed_distance / width, 0.0, 1.0)


def _stain_layers(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    center: tuple[float, float],
    axes: tuple[float, float],
    angle: float,
    n_stains: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Draw parasite-like stains inside an ellipse; return ``(coverage, rgb)`` layers."""
    a, b = axes
    cos_t, sin_t = math.cos(angle), math.sin(angle)
    radius = math.sqrt(a * b)
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(n_stains):
        ring = rng.random() < 0.4
        if ring:
            ring_r = max(2.2, rng.uniform(0.11, 0.17) * radius)
            thick = max(1.1, rng.uniform(0.05, 0.075) * radius)
            extent = ring_r + thick
        else:
            dot_r = max(1.6, rng.uniform(0.085, 0.16) * radius)
            extent = dot_r * 1.3
        # Stain centre uniformly inside a shrunken copy of the cell ellipse.
        reach = max(0.0, 0.86 - (extent + 1.5) / min(a, b))
        t = rng.uniform(0.0, 2.0 * math.pi)
        s = reach * math.sqrt(rng.random())
        u, v = s * a * math.cos(t), s * b * math.sin(t)
        sy = center[0] + u * sin_t + v * cos_t
        sx = center[1] + u * cos_t - v * sin_t
        dy, dx = yy - sy, xx - sx
        dist = np.hypot(dy, dx)
        colour = _STAIN_RGB + rng.normal(0.0, [10.0, 8.0, 10.0]).astype(np.float32)
        strength = rng.uniform(0.75, 0.95)
        if ring:
            # irregular ring: thickness and radius vary around the circumference
            around = np.arctan2(dy, dx)
            local_r = ring_r * (1.0 + 0.12 * np.cos(2.0 * around + rng.uniform(0, 6.3)))
            local_t = thick * (1.0 + 0.35 * np.cos(around + rng.uniform(0, 6.3)))
            coverage = _soft_edge(local_t / 2 - np.abs(dist - local_r), 0.9)
            # chromatin dot sitting on the ring
            phi = rng.uniform(0.0, 2.0 * math.pi)
            cy, cx = sy + ring_r * math.sin(phi), sx + ring_r * math.cos(phi)
            dot = _soft_edge(thick * 1.05 - np.hypot(yy - cy, xx - cx), 0.9)
            layers.append((coverage * strength, colour))
            layers.append((dot * min(1.0, strength + 0.05), _CHROMATIN_RGB))
        else:
            # slightly irregular, elongated blob
            stretch = rng.uniform(1.0, 1.35)
            rot = rng.uniform(0.0, math.pi)
            du = dx * math.cos(rot) + dy * math.sin(rot)
            dv = -dx * math.sin(rot) + dy * math.cos(rot)
            elong = np.hypot(du / stretch, dv)
            coverage = _soft_edge(dot_r / math.sqrt(stretch) - elong, 0.9)
            dark = 0.85 * colour + 0.15 * _CHROMATIN_RGB
            layers.append((coverage * strength, dark))
    return layers


def _render_cell(
    rng: np.random.Generator,
    shape: tuple[int, int],
    center: tuple[float, float],
    radius: float,
    n_stains: int,
    *,
    noise_sigma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one red blood cell in a window.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of every random choice (shape, colour, texture, stains).
    shape : tuple of int
        Window ``(height, width)``.
    center : tuple of float
        Cell centre ``(y, x)`` in window pixels.
    radius : float
        Cell radius in pixels (the major semi-axis).
    n_stains : int
        Number of parasite-like stains (0 for a normal cell).
    noise_sigma : float
        Standard deviation of the per-pixel sensor noise added to the cell colour.

    Returns
    -------
    colour : numpy.ndarray
        ``float32`` ``(H, W, 3)`` cell colour in 0..255 (unclipped), valid where ``alpha``
        is positive.
    alpha : numpy.ndarray
        ``float32`` ``(H, W)`` cell coverage in [0, 1] (soft 1-2 px rim).
    stain_mask : numpy.ndarray
        ``bool`` ``(H, W)``, True on stain pixels (always inside the cell).
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = center

    # --- shape: slightly elliptical, slightly wobbly outline -------------------------
    a = float(radius)
    b = a * rng.uniform(0.84, 1.0)
    angle = rng.uniform(0.0, math.pi)
    cos_t, sin_t = math.cos(angle), math.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = dx * cos_t + dy * sin_t
    v = -dx * sin_t + dy * cos_t
    rho0 = np.hypot(u / a, v / b)
    phi = np.arctan2(v / b, u / a)
    wobble = np.ones_like(rho0)
    for k in (2, 3, 4, 5):
        wobble += rng.uniform(0.0, 0.045 / k) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    rho = rho0 / wobble
    r_eff = math.sqrt(a * b)
    alpha = _soft_edge((1.0 - rho) * r_eff, rng.uniform(1.0, 1.6))

    # --- colour: base tint, central pallor, rim, texture, noise ------------------------
    brightness = rng.uniform(0.93, 1.05)
    # tint: red varies on its own, green and blue mostly together (stays pink, not orange)
    green_blue = rng.normal(0.0, 4.0)
    tint = rng.normal(0.0, [3.0, 1.5, 1.5]) + np.array([0.0, green_blue, green_blue])
    base = _CELL_RGB * brightness + tint.astype(np.float32)
    colour = np.broadcast_to(base, (h, w, 3)).astype(np.float32)

    # central pallor: a lighter, slightly off-centre zone
    pallor = rng.uniform(0.08, 0.24)
    pallor_r = rng.uniform(0.3, 0.5)
    oy, ox = rng.normal(0.0, 0.07, size=2)
    rho_p = np.hypot(u / a - ox, v / b - oy)
    lift = pallor * np.exp(-((rho_p / pallor_r) ** 2))
    colour += lift[..., None] * (255.0 - colour)

    # soft, slightly darker rim
    rim = rng.uniform(0.03, 0.08) * np.exp(-(((rho - 0.9) / 0.09) ** 2))
    colour *= (1.0 - rim)[..., None]

    # smooth mottled texture (luminance mostly, a little chroma)
    sigma = max(1.0, 0.12 * r_eff)
    field = gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), sigma)
    field *= rng.uniform(2.0, 4.0) / (field.std() + 1e-6)
    colour += field[..., None] * np.array([0.8, 1.0, 0.8], dtype=np.float32)

    # --- parasite stains ---------------------------------------------------------------
    stain_mask = np.zeros((h, w), dtype=bool)
    if n_stains:
        for coverage, rgb in _stain_layers(rng, yy, xx, center, (a, b), angle, n_stains):
            coverage *= alpha  # never paint outside the cell
            colour += coverage[..., None] * (rgb - colour)
            stain_mask |= coverage >= _MASK_LEVEL
        stain_mask &= alpha >= 0.99

    if noise_sigma > 0:
        colour += np.float32(noise_sigma) * rng.standard_normal(colour.shape, dtype=np.float32)
    return colour, alpha.astype(np.float32), stain_mask


def _n_anomalous(n: int, anomaly_fraction: float) -> int:
    if not 0.0 <= anomaly_fraction <= 1.0:
        raise ValueError(f"anomaly_fraction must be in [0, 1]; got {anomaly_fraction!r}")
    return round(n * anomaly_fraction)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_cells(
    n: int,
    *,
    size: int = 64,
    anomaly_fraction: float = 0.0,
    seed: int = 0,
) -> SampleSet:
    """Make single red-blood-cell crops on a black background.

    Parameters
    ----------
    n : int
        Number of cells.
    size : int, optional
        Side of each square crop in pixels (at least 16). The cell spans about 60-85 % of it.
    anomaly_fraction : float, optional
        Fraction of cells with parasite-like stains; exactly ``round(n * anomaly_fraction)``
        cells are anomalous, at positions shuffled by ``seed``.
    seed : int, optional
        Seed; the same arguments always give the same images.

    Returns
    -------
    SampleSet
        ``uint8`` RGB crops, stain masks and labels.

    Examples
    --------
    >>> cells = make_cells(4, anomaly_fraction=0.5, seed=1)
    >>> int(cells.labels.sum()), cells.images[0].shape
    (2, (64, 64, 3))
    """
    n, size = int(n), int(size)
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels; got {size}")
    n_bad = _n_anomalous(n, anomaly_fraction)
    label_seq, *cell_seqs = np.random.SeedSequence(seed).spawn(n + 1)
    labels = np.zeros(n, dtype=bool)
    labels[np.random.default_rng(label_seq).permutation(n)[:n_bad]] = True

    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for label, seq in zip(labels, cell_seqs, strict=True):
        rng = np.random.default_rng(seq)
        radius = rng.uniform(0.30, 0.425) * size
        jitter = rng.normal(0.0, 0.02 * size, size=2)
        center = ((size - 1) / 2 + jitter[0], (size - 1) / 2 + jitter[1])
        n_stains = int(rng.integers(1, 4)) if label else 0
        colour, alpha, stain = _render_cell(
            rng, (size, size), center, radius, n_stains, noise_sigma=rng.uniform(1.5, 3.0)
        )
        images.append(_to_uint8(colour * alpha[..., None]))  # black background
        masks.append(stain)
    return SampleSet(images=images, masks=masks, labels=labels)


def _place_cells(
    rng: np.random.Generator, shape: tuple[int, int], n_cells: int, r_min: float, r_max: float
) -> list[tuple[float, float, float]]:
    """Pick ``(y, x, radius)`` for up to ``n_cells`` cells that barely overlap."""
    h, w = shape
    placed: list[tuple[float, float, float]] = []
    arr = np.empty((0, 3))
    for _ in range(n_cells):
        r = rng.uniform(r_min, r_max)
        if min(h, w) < 2 * r + 4:
            continue
        # Try a batch of candidate centres and keep the first that fits.
        ys = rng.uniform(r + 2, h - r - 2, size=64)
        xs = rng.uniform(r + 2, w - r - 2, size=64)
        if len(arr):
            d = np.hypot(ys[:, None] - arr[None, :, 0], xs[:, None] - arr[None, :, 1])
            ok = np.all(d >= 0.95 * (r + arr[None, :, 2]), axis=1)
        else:
            ok = np.ones(len(ys), dtype=bool)
        if ok.any():
            i = int(np.argmax(ok))
            placed.append((float(ys[i]), float(xs[i]), float(r)))
            arr = np.asarray(placed)
    return placed


@dataclass
class CellField:
    """A synthetic field of view with per-cell ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        ``uint8`` RGB ``(height, width, 3)`` field.
    mask : numpy.ndarray
        ``bool`` ``(height, width)``, True on the planted stain pixels.
    labels : numpy.ndarray
        ``int32`` ``(height, width)`` instance labels: cell ``i`` (1-based, in placement order)
        covers the pixels where its coverage is at least one half and no later cell hides it;
        0 is background.
    anomalous : numpy.ndarray
        ``bool`` ``(n_cells,)``: ``anomalous[i - 1]`` is True when cell ``i`` carries stains.
    """

    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    anomalous: np.ndarray

    @property
    def anomalous_ids(self) -> np.ndarray:
        """Label values of the cells with planted anomalies."""
        return np.flatnonzero(self.anomalous) + 1


def make_field(
    shape: tuple[int, int] = (512, 512),
    *,
    n_cells: int = 60,
    anomaly_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make a thin-smear field of view with many red blood cells, some parasitized.

    The same as :func:`make_cell_field` without the per-cell ground truth.

    Returns
    -------
    image : numpy.ndarray
        ``uint8`` RGB ``(height, width, 3)``: light background with noise and an uneven
        illumination, cells with radius about 14-20 px (scaled with ``min(shape) / 512``).
    mask : numpy.ndarray
        ``bool`` ``(height, width)``, True on the planted stain pixels.
    """
    field = make_cell_field(shape, n_cells=n_cells, anomaly_fraction=anomaly_fraction,
                            seed=seed)
    return field.image, field.mask


def make_cell_field(
    shape: tuple[int, int] = (512, 512),
    *,
    n_cells: int = 60,
    anomaly_fraction: float = 0.2,
    seed: int = 0,
    radius: tuple[float, float] | None = None,
) -> CellField:
    """Make a thin-smear field of view with many red blood cells, some parasitized.

    Parameters
    ----------
    shape : tuple of int, optional
        Image ``(height, width)``; each side at least 64.
    n_cells : int, optional
        Number of cells to place. Cells barely overlap; if the field is too crowded, fewer
        are placed.
    anomaly_fraction : float, optional
        Fraction of the placed cells that carry parasite-like stains.
    seed : int, optional
        Seed; the same arguments always give the same field.
    radius : (float, float), optional
        Range of cell radii in pixels; by default 14-20 px scaled with ``min(shape) / 512``
        (at least 0.4 times).

    Returns
    -------
    CellField
    """
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width); got {shape!r}") from None
    if min(h, w) < 64:
        raise ValueError(f"shape must be at least 64 pixels per side; got {(h, w)}")
    if n_cells < 0:
        raise ValueError(f"n_cells must be >= 0; got {n_cells}")
    if radius is not None and not 2.0 <= radius[0] <= radius[1]:
        raise ValueError(f"radius must be (low, high) with 2 <= low <= high; got {radius!r}")
    rng = np.random.default_rng(seed)

    # Background: beige/grey, a gentle illumination gradient and vignetting.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = yy / (h - 1) - 0.5, xx / (w - 1) - 0.5
    gy, gx = rng.uniform(-0.05, 0.05, size=2)
    illum = 1.0 + gy * yn + gx * xn - 0.06 * (yn**2 + xn**2)
    background = _BACKGROUND_RGB + rng.normal(0.0, 3.0, size=3).astype(np.float32)
    image = np.broadcast_to(background, (h, w, 3)).astype(np.float32)
    mask = np.zeros((h, w), dtype=bool)
    labels = np.zeros((h, w), dtype=np.int32)

    scale = max(min(h, w) / 512.0, 0.4)
    r_min, r_max = radius if radius is not None else (14.0 * scale, 20.0 * scale)
    cells = _place_cells(rng, (h, w), int(n_cells), r_min, r_max)
    n_bad = _n_anomalous(len(cells), anomaly_fraction)
    infected = np.zeros(len(cells), dtype=bool)
    infected[rng.permutation(len(cells))[:n_bad]] = True

    for i, ((cy, cx, r), bad) in enumerate(zip(cells, infected, strict=True), start=1):
        pad = math.ceil(r * 1.2) + 3
        y0, y1 = max(0, int(cy) - pad), min(h, int(cy) + pad + 1)
        x0, x1 = max(0, int(cx) - pad), min(w, int(cx) + pad + 1)
        n_stains = int(rng.integers(1, 4)) if bad else 0
        colour, alpha, stain = _render_cell(
            rng, (y1 - y0, x1 - x0), (cy - y0, cx - x0), r, n_stains, noise_sigma=0.0
        )
        window = image[y0:y1, x0:x1]
        window += alpha[..., None] * (colour - window)
        covered = alpha >= _MASK_LEVEL
        mask[y0:y1, x0:x1] &= ~covered  # a later cell hides what it covers
        mask[y0:y1, x0:x1] |= stain
        labels[y0:y1, x0:x1][covered] = i

    image *= illum[..., None]
    image += np.float32(2.0) * rng.standard_normal(image.shape, dtype=np.float32)
    return CellField(image=_to_uint8(image), mask=mask, labels=labels, anomalous=infected)
