"""Reproducible synthetic fluorescence fields: stained nuclei with planted nuclear anomalies.

The fluorescence counterpart of :mod:`.sample` (brightfield smears). Nothing here is real
data. :func:`make_fluo_field` renders a field of view as a widefield camera records it:

* channel 0 (``"DNA"``, as a DAPI or Hoechst stain): nuclei with a textured chromatin
  (smooth mottling, bright chromocentres, dim nucleoli), varied in size, shape and brightness,
  some of them touching;
* channel 1 (``"cytoplasm"``, optional): the cell body around each nucleus, dimmer and
  smoother, largely excluded from the nucleus;
* the optics and the camera: a Gaussian point-spread function, uneven illumination, Poisson
  shot noise on the expected photon counts, a camera dark offset (:data:`DARK_OFFSET`) and
  Gaussian read noise, recorded as ``uint16``.

Anomalous nuclei carry one of :data:`ANOMALY_KINDS`:

``"micronuclei"``
    one to three small extra bodies of DNA beside an otherwise normal nucleus;
``"fragmented"``
    the nucleus broken into three to six condensed, brighter fragments (as in apoptosis);
``"bright"``
    the whole nucleus 2.5-3.5 times as bright as a typical normal one;
``"large"``
    the nucleus 1.7-2.1 times the radius drawn for it (normal radii vary by a factor 1.5).

The returned mask is True exactly on the anomalous structure: the micronuclei (not their
parent nucleus), the fragments, the bright or the large nucleus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from .sample import _n_anomalous, _soft_edge

__all__ = ["ANOMALY_KINDS", "CHANNEL_NAMES", "DARK_OFFSET", "FluoField", "make_fluo_field"]

#: The kinds of planted nuclear anomaly, in the order of their codes in
#: :meth:`FluoField.kind_map` (1, 2, 3, 4).
ANOMALY_KINDS = ("micronuclei", "fragmented", "bright", "large")
#: Names of the channels :func:`make_fluo_field` can render, in channel order.
CHANNEL_NAMES = ("DNA", "cytoplasm")
#: Camera dark offset in ADU: what a pixel reads with no light.
DARK_OFFSET = 100
#: Gaussian read noise of the camera, in ADU.
READ_NOISE = 1.6
#: Sigma of the Gaussian point-spread function, in pixels.
PSF_SIGMA = 0.8

_MASK_LEVEL = 0.5
#: The cytoplasm stain's density inside the nucleus, relative to the cytoplasm around it.
_NUCLEAR_EXCLUSION = 0.35


@dataclass
class FluoField:
    """A synthetic fluorescence field of view with per-nucleus ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        ``uint16`` ``(height, width, channels)`` camera counts (ADU), channels last, in the
        order of ``channel_names``; the dark offset :data:`DARK_OFFSET` is included.
    mask : numpy.ndarray
        ``bool`` ``(height, width)``, True on the planted anomaly pixels.
    labels : numpy.ndarray
        ``int32`` ``(height, width)`` instance labels: nucleus ``i`` (1-based, in placement
        order) covers the pixels of its DNA (micronuclei and fragments included) where its
        coverage is at least one half and no later nucleus hides it; 0 is background.
    anomalous : numpy.ndarray
        ``bool`` ``(n_nuclei,)``: ``anomalous[i - 1]`` is True when nucleus ``i`` carries a
        planted anomaly.
    kinds : tuple of str
        ``kinds[i - 1]`` is the anomaly kind of nucleus ``i`` (one of :data:`ANOMALY_KINDS`),
        or ``""`` for a normal nucleus.
    channel_names : tuple of str
        Name of each channel of ``image``.
    """

    image: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    anomalous: np.ndarray
    kinds: tuple[str, ...]
    channel_names: tuple[str, ...]

    @property
    def anomalous_ids(self) -> np.ndarray:
        """Label values of the nuclei with planted anomalies."""
        return np.flatnonzero(self.anomalous) + 1

    def channel(self, name: str | int) -> np.ndarray:
        """One channel as a ``uint16`` ``(height, width)`` array, by name or index."""
        index = self.channel_names.index(name) if isinstance(name, str) else int(name)
        return self.image[..., index]

    def kind_map(self) -> np.ndarray:
        """``uint8`` ``(height, width)``: on the mask, the code of the pixel's anomaly kind
        (1 + its index in :data:`ANOMALY_KINDS`); 0 elsewhere."""
        codes = np.zeros(len(self.kinds) + 1, dtype=np.uint8)
        for i, kind in enumerate(self.kinds, start=1):
            codes[i] = ANOMALY_KINDS.index(kind) + 1 if kind else 0
        return np.where(self.mask, codes[self.labels], 0).astype(np.uint8)


# ------------------------------------------------------------------------------------------
# one nucleus


def _outline(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, a: float,
             elongation: tuple[float, float], wobble: float) -> tuple[np.ndarray, float]:
    """Normalised radius (1 on the outline) of a wobbly ellipse, and its mean radius."""
    b = a * rng.uniform(*elongation)
    angle = rng.uniform(0.0, math.pi)
    cos_t, sin_t = math.cos(angle), math.sin(angle)
    u = dx * cos_t + dy * sin_t
    v = -dx * sin_t + dy * cos_t
    rho = np.hypot(u / a, v / b)
    phi = np.arctan2(v / b, u / a)
    shape = np.ones_like(rho)
    for k in (2, 3, 4, 5):
        shape += rng.uniform(0.0, wobble / k) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    return rho / shape, math.sqrt(a * b)


def _spots(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, reach: float, n: int,
           sigma: tuple[float, float], amplitude: tuple[float, float]) -> np.ndarray:
    """Sum of ``n`` Gaussian spots centred uniformly within ``reach`` of the centre."""
    out = np.zeros(dy.shape, dtype=np.float32)
    for _ in range(n):
        t, s = rng.uniform(0, 2 * math.pi), reach * math.sqrt(rng.random())
        sy, sx = s * math.sin(t), s * math.cos(t)
        sig = rng.uniform(*sigma)
        out += rng.uniform(*amplitude) * np.exp(-((dy - sy) ** 2 + (dx - sx) ** 2)
                                                / (2 * sig * sig))
    return out


def _chromatin(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, rho: np.ndarray,
               r: float) -> np.ndarray:
    """DNA density inside a nucleus (about 1 on average): a dome, mottling, spots, nucleoli."""
    dome = 0.8 + 0.2 * np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))
    mottle = gaussian_filter(rng.standard_normal(dy.shape, dtype=np.float32),
                             max(1.0, 0.15 * r))
    mottle *= rng.uniform(0.06, 0.12) / (mottle.std() + 1e-6)
    chromocentres = _spots(rng, dy, dx, 0.75 * r, int(rng.integers(2, 7)), (0.8, 1.4),
                           (0.25, 0.6))
    nucleoli = _spots(rng, dy, dx, 0.5 * r, int(rng.integers(0, 3)), (0.12 * r, 0.2 * r),
                      (0.25, 0.4))
    return np.clip(dome + mottle + chromocentres - nucleoli, 0.2, None)


def _disc(dy: np.ndarray, dx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    return _soft_edge(r - np.hypot(dy - cy, dx - cx), 1.2)


def _render_nucleus(
    rng: np.random.Generator, shape: tuple[int, int], center: tuple[float, float],
    radius: float, kind: str, cell_radius: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render one nucleus (and its cell body) in a window.

    Returns
    -------
    dna : numpy.ndarray
        ``float32`` ``(H, W)`` DNA stain density (about 1 inside a typical normal nucleus).
    coverage : numpy.ndarray
        ``float32`` ``(H, W)`` coverage of the nucleus' DNA (micronuclei, fragments included).
    anomaly : numpy.ndarray
        ``bool`` ``(H, W)``, True on the planted anomaly's pixels.
    cytoplasm : numpy.ndarray
        ``float32`` ``(H, W)`` cytoplasm stain density (about 1 in the cell body).
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - center[0], xx - center[1]
    brightness = float(np.exp(rng.normal(0.0, 0.15)))
    a = radius * (rng.uniform(1.7, 2.1) if kind == "large" else 1.0)
    rho, r = _outline(rng, dy, dx, a, (0.72, 1.0), 0.05)

    if kind == "fragmented":
        # three to six separate round fragments, condensed, where the nucleus would be
        coverage = np.zeros((h, w), dtype=np.float32)
        dna = np.zeros((h, w), dtype=np.float32)
        placed: list[tuple[float, float, float]] = []
        for n_fragments in range(int(rng.integers(3, 7))):
            fr = max(1.8, rng.uniform(0.25, 0.36) * r)
            for _try in range(60 if n_fragments < 3 else 30):
                t, s = rng.uniform(0, 2 * math.pi), (1.1 * r - fr) * math.sqrt(rng.random())
                fy, fx = s * math.sin(t), s * math.cos(t)
                if all(math.hypot(fy - py, fx - px) >= fr + pr + 1.5 for py, px, pr in placed):
                    placed.append((fy, fx, fr))
                    break
        for fy, fx, fr in placed:
            piece = _disc(dy, dx, fy, fx, fr)
            coverage = np.maximum(coverage, piece)
            dna += piece * rng.uniform(1.4, 1.9)
        dna *= 1.0 + 0.05 * gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), 1.0)
        anomaly = coverage >= _MASK_LEVEL
    else:
        coverage = _soft_edge((1.0 - rho) * r, rng.uniform(1.0, 1.5))
        dna = coverage * _chromatin(rng, dy, dx, rho, r)
        if kind == "bright":
            dna *= rng.uniform(2.5, 3.5)
        anomaly = coverage >= _MASK_LEVEL if kind in ("bright", "large") else \
            np.zeros((h, w), dtype=bool)
        if kind == "micronuclei":
            for _ in range(int(rng.integers(1, 4))):
                mr = max(1.6, rng.uniform(0.18, 0.28) * r)
                t = rng.uniform(0, 2 * math.pi)
                d = a + mr + rng.uniform(1.5, 4.0)
                micro = _disc(dy, dx, d * math.sin(t), d * math.cos(t), mr)
                dna += micro * rng.uniform(1.0, 1.4)
                coverage = np.maximum(coverage, micro)
                anomaly |= micro >= _MASK_LEVEL
    dna *= brightness

    # the cell body around the nucleus (cytoplasm channel)
    oy, ox = rng.normal(0.0, 0.15 * r, size=2)
    body_rho, _ = _outline(rng, dy - oy, dx - ox, max(cell_radius, 1.4 * a), (0.7, 1.0), 0.25)
    body = _soft_edge((1.0 - body_rho) * cell_radius, 2.5)
    texture = gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), 2.0)
    texture *= 0.12 / (texture.std() + 1e-6)
    cytoplasm = body * (1.0 + texture) * (1.0 - (1.0 - _NUCLEAR_EXCLUSION) * coverage)
    cytoplasm *= float(np.exp(rng.normal(0.0, 0.2)))
    return dna.astype(np.float32), coverage.astype(np.float32), anomaly, \
        np.clip(cytoplasm, 0.0, None).astype(np.float32)


# ------------------------------------------------------------------------------------------
# the field


def _reach(kind: str, r: float) -> float:
    """How far a nucleus of radius ``r`` and this kind extends from its centre."""
    if kind == "large":
        return 2.1 * r
    if kind == "micronuclei":
        return r + 2 * 0.28 * r + 4.0
    if kind == "fragmented":
        return 1.1 * r
    return r


def _place_nuclei(rng: np.random.Generator, shape: tuple[int, int], reach: np.ndarray,
                  touching: float) -> list[tuple[int, float, float]]:
    """``(index, y, x)`` of the nuclei that fit; a fraction ``touching`` is put next to an
    already placed one (touching or just overlapping), the others anywhere free."""
    h, w = shape
    placed: list[tuple[int, float, float]] = []
    for i, r in enumerate(reach):
        if min(h, w) < 2 * r + 4:
            continue
        ys = rng.uniform(r + 2, h - r - 2, size=96)
        xs = rng.uniform(r + 2, w - r - 2, size=96)
        if placed and rng.random() < touching:
            j, py, px = placed[int(rng.integers(len(placed)))]
            t = rng.uniform(0, 2 * math.pi, size=96)
            d = (r + reach[j]) * rng.uniform(0.88, 1.0, size=96)
            ys, xs = py + d * np.sin(t), px + d * np.cos(t)
        arr = np.asarray([(p[1], p[2], reach[p[0]]) for p in placed]).reshape(-1, 3)
        ok = (ys >= r + 2) & (ys <= h - r - 3) & (xs >= r + 2) & (xs <= w - r - 3)
        if len(arr):
            d = np.hypot(ys[:, None] - arr[None, :, 0], xs[:, None] - arr[None, :, 1])
            ok &= np.all(d >= 0.88 * (r + arr[None, :, 2]), axis=1)
        if ok.any():
            k = int(np.argmax(ok))
            placed.append((i, float(ys[k]), float(xs[k])))
    return placed


def make_fluo_field(
    shape: tuple[int, int] = (512, 512),
    *,
    n_nuclei: int = 60,
    n_channels: int = 1,
    anomaly_fraction: float = 0.2,
    kinds: Sequence[str] = ANOMALY_KINDS,
    photons: float = 600.0,
    background: float = 20.0,
    touching: float = 0.15,
    radius: tuple[float, float] = (8.0, 12.0),
    seed: int = 0,
) -> FluoField:
    """Make a widefield fluorescence field of stained nuclei, some of them abnormal.

    Parameters
    ----------
    shape : tuple of int, optional
        Image ``(height, width)``; each side at least 64.
    n_nuclei : int, optional
        Number of nuclei to place; if the field is too crowded, fewer are placed.
    n_channels : {1, 2}, optional
        1: the DNA channel only; 2: DNA and cytoplasm (see :data:`CHANNEL_NAMES`).
    anomaly_fraction : float, optional
        Fraction of the nuclei with a planted anomaly (``round(n_nuclei * fraction)`` are
        drawn; one that does not fit is left out like any other nucleus).
    kinds : sequence of str, optional
        The anomaly kinds to plant (from :data:`ANOMALY_KINDS`), dealt out in turn in a
        shuffled order, so each kind is planted about equally often.
    photons : float, optional
        Mean photon count per pixel inside a typical normal nucleus (DNA channel, before
        the illumination falls off towards the corners); the cytoplasm gets a quarter of it.
    background : float, optional
        Photon count per pixel of the background (autofluorescence, stray light).
    touching : float, optional
        Fraction of nuclei placed right next to an earlier one, touching or slightly
        overlapping it.
    radius : (float, float), optional
        Range of normal nuclear radii in pixels (the same for every field size, as set by
        the magnification).
    seed : int, optional
        Seed; the same arguments always give the same field.

    Returns
    -------
    FluoField
        ``uint16`` camera counts (dark offset :data:`DARK_OFFSET`, Poisson shot noise, read
        noise :data:`READ_NOISE` ADU, one ADU per photon), anomaly mask, instance labels and
        per-nucleus ground truth.

    Examples
    --------
    >>> field = make_fluo_field((128, 128), n_nuclei=8, n_channels=2, seed=1)
    >>> field.image.shape, field.image.dtype.name, field.channel_names
    ((128, 128, 2), 'uint16', ('DNA', 'cytoplasm'))
    """
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width); got {shape!r}") from None
    if min(h, w) < 64:
        raise ValueError(f"shape must be at least 64 pixels per side; got {(h, w)}")
    if n_nuclei < 0:
        raise ValueError(f"n_nuclei must be >= 0; got {n_nuclei}")
    if n_channels not in (1, 2):
        raise ValueError(f"n_channels must be 1 or 2; got {n_channels!r}")
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in ANOMALY_KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty selection of {ANOMALY_KINDS}; got {kinds}")
    if not (photons > 0 and background >= 0):
        raise ValueError(f"photons must be > 0 and background >= 0; got {photons}, "
                         f"{background}")
    if not 0.0 <= touching <= 1.0:
        raise ValueError(f"touching must be in [0, 1]; got {touching!r}")
    if not 2.0 <= radius[0] <= radius[1]:
        raise ValueError(f"radius must be (low, high) with 2 <= low <= high; got {radius!r}")
    n = int(n_nuclei)
    n_bad = _n_anomalous(n, anomaly_fraction)
    rng = np.random.default_rng(seed)

    r_min, r_max = (float(r) for r in radius)
    drawn = np.array(["" for _ in range(n)], dtype=object)
    order = rng.permutation(n)[:n_bad]
    drawn[order] = [kinds[i % len(kinds)] for i in rng.permutation(n_bad)]
    radii = rng.uniform(r_min, r_max, size=n)
    reach = np.array([_reach(k, r) for k, r in zip(drawn, radii, strict=True)])
    placed = _place_nuclei(rng, (h, w), reach, float(touching))

    dna = np.zeros((h, w), dtype=np.float32)
    cyto = np.zeros((h, w), dtype=np.float32)
    mask = np.zeros((h, w), dtype=bool)
    labels = np.zeros((h, w), dtype=np.int32)
    for label, (i, cy, cx) in enumerate(placed, start=1):
        cell_radius = radii[i] * rng.uniform(1.8, 2.4)
        pad = math.ceil(max(reach[i], 1.6 * cell_radius)) + 4
        y0, y1 = max(0, int(cy) - pad), min(h, int(cy) + pad + 1)
        x0, x1 = max(0, int(cx) - pad), min(w, int(cx) + pad + 1)
        d, cover, anomaly, c = _render_nucleus(rng, (y1 - y0, x1 - x0), (cy - y0, cx - x0),
                                               float(radii[i]), str(drawn[i]), cell_radius)
        dna[y0:y1, x0:x1] += d
        cyto[y0:y1, x0:x1] += c
        covered = cover >= _MASK_LEVEL
        mask[y0:y1, x0:x1] &= ~covered  # a later nucleus hides what it covers
        mask[y0:y1, x0:x1] |= anomaly
        labels[y0:y1, x0:x1][covered] = label

    # optics: uneven illumination, a little autofluorescence structure, the PSF
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = yy / (h - 1) - 0.5, xx / (w - 1) - 0.5
    gy, gx = rng.uniform(-0.08, 0.08, size=2)
    illum = 1.0 + gy * yn + gx * xn - 0.3 * (yn**2 + xn**2)
    haze = gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), 24.0)
    haze = 1.0 + 0.1 * haze / (haze.std() + 1e-6)  # smooth, about +-10 %
    expected = [illum * (photons * gaussian_filter(dna, PSF_SIGMA) + background * haze)]
    if n_channels == 2:
        expected.append(illum * (0.25 * photons * gaussian_filter(cyto, PSF_SIGMA)
                                 + background * haze))

    # the camera: shot noise, dark offset, read noise, 16-bit counts
    channels = []
    for lam in expected:
        counts = rng.poisson(np.clip(lam, 0.0, None)).astype(np.float32)
        counts += DARK_OFFSET + READ_NOISE * rng.standard_normal((h, w), dtype=np.float32)
        channels.append(np.clip(np.rint(counts), 0, 65535).astype(np.uint16))

    kept = [int(i) for i, _, _ in placed]
    kinds_kept = tuple(str(drawn[i]) for i in kept)
    return FluoField(image=np.stack(channels, axis=-1), mask=mask, labels=labels,
                     anomalous=np.array([bool(k) for k in kinds_kept], dtype=bool),
                     kinds=kinds_kept, channel_names=CHANNEL_NAMES[:n_channels])
