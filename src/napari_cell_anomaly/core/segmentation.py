"""Built-in cell segmentation: the cells of a field without a model (scikit-image / scipy).

napari-free. :func:`segment_cells` finds the cells of a brightfield (stained smear) or
fluorescence field; :func:`image_kind` guesses which of the two a field is and
:func:`segmentation_image` says what is segmented in a multi-channel image. The user's own
label images are read and checked in :mod:`.cells`.

What :func:`segment_cells` does, in order
-----------------------------------------
1. **Validate** the image with :func:`~napari_cell_anomaly.core.images.as_float_image`
   (gray, RGB or RGBA, any dtype, 16-bit too; bad input raises ``ImageError``).
2. **Decide the kind** (``kind="auto"``, :func:`image_kind`): cells are the pixels that
   stand out of the background, the histogram's main peak. If more pixels lie over 4
   deviations below the peak than above it, the cells are darker (brightfield, a stained
   smear), else brighter (fluorescence).
3. **Flatten the illumination**: a first Otsu split marks likely background pixels; a
   quadratic surface fitted to them (per channel, on a subsample) is the background.
4. **Cell signal**, larger where a pixel differs from the background the way cells do:
   brightfield, the optical density ``-log(pixel / background)`` per channel, clipped at 0,
   combined over channels (Euclidean norm), so cells darker *or* more saturated than the
   background both stand out; fluorescence, ``pixel - background`` (channels averaged).
   Lightly smoothed (Gaussian, sigma 1 px).
5. **Foreground** = signal above its Otsu threshold. Nothing is foreground (no cells) when
   the two Otsu classes differ by fewer than 4 background noise deviations (robust, from
   the median absolute deviation): a field of noise only. Fluorescence: the threshold is
   lowered to 10 noise deviations above the background when that is lower (but not below
   0.35 x Otsu's), so dim nuclei beside bright ones are kept; each connected part then
   keeps its pixels above 20 % of the way from that threshold to its own peak (trims the
   halo of bright nuclei).
6. **Diameter** (``diameter=None``): six times the mean distance of foreground pixels to
   the background, holes filled (over a disc of radius R that distance averages R / 3;
   touching cells change it little, debris weighs in by its few pixels only).
7. **Fill holes** smaller than about half a cell (the central pallor of red cells; larger
   enclosed gaps between cells stay background).
8. **Split touching cells**: Euclidean distance transform of the foreground, smoothed
   (sigma 0.15 radius), divided by the radius; for fluorescence averaged half and half
   with the smoothed signal (scaled by its 99th percentile inside cells), so touching
   nuclei split along the dimmer line between them. Markers are the local maxima of that
   landscape at least ``0.55 * radius`` apart whose distance value reaches
   ``0.3 * radius``; a connected part without a marker stays one object. Watershed of the
   negated landscape within the foreground. Images over 2 x 512 x 512 pixels with a
   radius of at least 12 px are split on a grid downsampled by ``radius // 6`` (speed)
   and the labels brought back to full resolution on the full-resolution foreground.
9. **Drop debris**: objects smaller than ``min_area`` pixels; by default ``min_area`` is a
   fifth of the median object area (platelets, dust), never below 8 pixels.
10. **Number** the objects 1..N.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from .images import ImageError, as_float_image

__all__ = [
    "KINDS",
    "image_kind",
    "segment_cells",
    "segmentation_image",
]

#: Accepted values of ``kind``.
KINDS = ("auto", "brightfield", "fluorescence")

# Tuned on chula-rbc and dsb2018-fluo (see benchmarks/segmentation.py).
_MARKER_SPACING = 0.55      # minimum marker distance, in cell radii
_MARKER_DEPTH = 0.3         # a marker's distance value must reach this many radii
_SIGNAL_WEIGHT = 0.5        # fluorescence: weight of the signal in the watershed landscape
_NOISE_K = 10.0             # fluorescence: threshold at most this many noise sigmas up
_MIN_OTSU_FRACTION = 0.35   # ... but not below this fraction of Otsu's threshold
_PEAK_FRACTION = 0.2        # fluorescence: keep pixels above this share of their peak
_CLIP_PERCENTILE = 95.0     # brightfield: signal clipped here before Otsu's threshold
_MIN_CONTRAST = 4.0         # no cells when the classes differ by fewer noise sigmas
_DEBRIS_FRACTION = 0.2      # objects below this fraction of the median area are debris
_HOLE_FRACTION = 0.5        # holes below this fraction of a cell's area are filled
_MIN_RADIUS = 2.0
_SAMPLE = 20_000            # pixels used to fit the background surface
_COARSE_PIXELS = 512 * 512  # larger masks are measured / split on a coarser grid
_COARSE_RADIUS = 6.0        # ... when cells keep at least this radius (px) on it


def _gray(img: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 luminosity-like channel mean of a ``(H, W, C)`` image."""
    return img[:, :, 0] if img.shape[2] == 1 else img.mean(axis=2)


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float(values.max()) if values.size else 0.0
    return float(threshold_otsu(values))


def _subsample(arr: np.ndarray, n: int = 200_000) -> np.ndarray:
    """A regular subsample of about ``n`` pixels (strided view, deterministic)."""
    step = max(1, int(math.sqrt(arr.shape[0] * arr.shape[1] / n)))
    return arr[::step, ::step]


def _kind_of(gray: np.ndarray) -> str:
    """Brightfield when the pixels that stand out of the background are mostly darker."""
    sample = _subsample(gray).ravel()
    low, high = np.percentile(sample, [0.5, 99.5])
    if not high > low:
        low, high = float(sample.min()), float(sample.max())
    hist, edges = np.histogram(np.clip(sample, low, high), bins=128, range=(low, high))
    hist = ndi.uniform_filter1d(hist.astype(np.float64), 3)
    mode = 0.5 * (edges[int(np.argmax(hist))] + edges[int(np.argmax(hist)) + 1])
    q25, q75 = np.percentile(sample, [25.0, 75.0])
    # robust spread; the quartiles keep it above zero on coarsely quantised images
    spread = max(1.4826 * float(np.median(np.abs(sample - mode))), float(q75 - q25) / 1.349)
    darker = np.count_nonzero(sample < mode - 4 * spread)
    brighter = np.count_nonzero(sample > mode + 4 * spread)
    if darker != brighter:
        return "brightfield" if darker > brighter else "fluorescence"
    position = (mode - low) / (high - low) if high > low else 0.0
    return "brightfield" if position > 0.5 else "fluorescence"


def segmentation_image(image: np.ndarray, channel: int | None = None) -> np.ndarray:
    """What the segmentation looks at in a field, ``float32`` ``(H, W, C)``.

    ``channel`` given: that channel alone. Else one channel and RGB colour images (3
    channels, or 4 = RGBA with the alpha dropped, of ``uint8``) as they are; any other
    channel set (2 or more channels of fluorescence, ``uint16`` colour...) is combined into
    one channel: each channel scaled to its own 0.5-99.5 percentile range, then averaged, so
    a dim stain counts as much as a bright one.

    Raises
    ------
    ImageError
        If the image is invalid or ``channel`` is not one of its channels.
    """
    raw = np.asarray(image)
    img = as_float_image(raw)
    if channel is not None:
        if not 0 <= int(channel) < img.shape[2]:
            raise ImageError(f"channel {channel} does not exist: the image has "
                             f"{img.shape[2]} channel(s) (0 to {img.shape[2] - 1})")
        return img[:, :, int(channel):int(channel) + 1]
    if img.shape[2] == 1 or (img.shape[2] in (3, 4) and raw.dtype == np.uint8):
        return img[:, :, :3]
    scaled = np.empty(img.shape, dtype=np.float32)
    for k in range(img.shape[2]):
        low, high = np.percentile(_subsample(img[:, :, k]), [0.5, 99.5])
        scaled[:, :, k] = (img[:, :, k] - low) / max(float(high - low), 1e-12)
    return np.clip(scaled, 0.0, 1.0).mean(axis=2, keepdims=True)


def image_kind(image: np.ndarray) -> str:
    """Guess whether a field is brightfield or fluorescence.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``, any dtype (channels combined as in
        :func:`segmentation_image`).

    Returns
    -------
    str
        ``"brightfield"`` when more pixels lie over 4 deviations below the histogram's main
        peak (the background) than above it (cells darker than the background), else
        ``"fluorescence"``. Deviations: the median absolute distance to the peak (at least the
        interquartile range / 1.349).

    Raises
    ------
    ImageError
        If the image is invalid (see :func:`~napari_cell_anomaly.core.images.as_float_image`).
    """
    return _kind_of(_gray(segmentation_image(image)))


def _lstsq(design: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least squares through the (small) normal equations; falls back to lstsq."""
    try:
        return np.linalg.solve(design.T @ design, design.T @ values)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(design, values, rcond=None)[0]


def _background_surface(channel: np.ndarray, is_bg: np.ndarray) -> np.ndarray:
    """Quadratic surface fitted to ``channel`` on the ``is_bg`` pixels (a subsample)."""
    h, w = channel.shape
    step = max(1, int(math.sqrt(h * w / (4 * _SAMPLE))))
    sub_bg = is_bg[::step, ::step]
    ys, xs = np.nonzero(sub_bg)
    vals = channel[::step, ::step][sub_bg].astype(np.float64)
    if len(vals) < 12:
        level = float(np.median(channel[is_bg])) if is_bg.any() else float(np.median(channel))
        return np.full((h, w), level, dtype=np.float32)
    if len(vals) > _SAMPLE:
        pick = np.linspace(0, len(vals) - 1, _SAMPLE).astype(np.int64)
        ys, xs, vals = ys[pick], xs[pick], vals[pick]
    y = ys * (step / max(h - 1, 1)) - 0.5
    x = xs * (step / max(w - 1, 1)) - 0.5
    design = np.stack([np.ones_like(y), y, x, y * y, x * y, x * x], axis=1)
    coef = _lstsq(design, vals)
    # a robust second pass: drop the worst-fitting tenth (cells misread as background)
    resid = np.abs(design @ coef - vals)
    keep = resid <= np.percentile(resid, 90)
    if keep.sum() >= 12:
        coef = _lstsq(design[keep], vals[keep])
    yy = (np.arange(h, dtype=np.float32) / max(h - 1, 1) - 0.5)[:, None]
    xx = (np.arange(w, dtype=np.float32) / max(w - 1, 1) - 0.5)[None, :]
    c = coef.astype(np.float32)
    return (c[0] + c[1] * yy + c[3] * yy * yy) + (c[2] + c[4] * yy) * xx + c[5] * xx * xx


def _cell_signal(img: np.ndarray, kind: str) -> np.ndarray:
    """Float32 ``(H, W)``: how strongly each pixel looks like cell rather than background."""
    gray = _gray(img)
    t = _otsu(_subsample(gray))
    if kind == "brightfield":
        is_bg = gray > t
        offset = max(1e-3, 1e-3 * float(np.percentile(_subsample(gray), 99.0)))
        signal = np.zeros(gray.shape, dtype=np.float32)
        for c in range(img.shape[2]):
            bg = np.maximum(_background_surface(img[:, :, c], is_bg), offset)
            od = np.log((bg + offset) / (np.maximum(img[:, :, c], 0.0) + offset))
            np.maximum(od, 0.0, out=od)
            signal += od * od
        np.sqrt(signal, out=signal)
    else:
        is_bg = gray <= t
        signal = gray - _background_surface(gray, is_bg)
        np.maximum(signal, 0.0, out=signal)
    return ndi.gaussian_filter(signal.astype(np.float32, copy=False), 1.0)


def _radius_at(mask: np.ndarray) -> float:
    filled = ndi.binary_fill_holes(mask)
    if not filled.any():
        return 0.0
    dist = ndi.distance_transform_edt(filled)
    # over a disc of radius R the distance to its edge averages R / 3
    return 3.0 * float(dist[filled].mean())


def _foreground(signal: np.ndarray, kind: str) -> np.ndarray:
    """Pixels whose signal stands out of the background noise.

    The threshold is Otsu's, lowered for fluorescence to ``_NOISE_K`` noise deviations
    above the background (when that is lower) so that dim nuclei beside bright ones are
    kept; each connected part then keeps the pixels above ``_PEAK_FRACTION`` of its own
    brightest value (trims the halo of bright nuclei). Nothing is foreground when the two
    Otsu classes differ by less than ``_MIN_CONTRAST`` noise deviations (noise only).
    """
    sample = _subsample(signal)
    if kind == "brightfield":
        # a few very dark pixels (a scratch, dirt) must not pull Otsu's threshold above
        # pale cells: clip them first
        t = _otsu(np.minimum(sample, np.percentile(sample, _CLIP_PERCENTILE)))
    else:
        t = _otsu(sample)
    low = sample[sample <= t]
    high = sample[sample > t]
    if low.size < 2 or high.size < 2:
        return np.zeros(signal.shape, dtype=bool)
    level = float(np.median(low))
    sigma = 1.4826 * float(np.median(np.abs(low - level)))
    sigma = max(sigma, 1e-6 * max(float(np.abs(sample).max()), 1e-12))
    if (float(np.median(high)) - level) < _MIN_CONTRAST * sigma:
        return np.zeros(signal.shape, dtype=bool)
    if kind != "fluorescence":
        return signal > t
    t = min(t, max(level + _NOISE_K * sigma, _MIN_OTSU_FRACTION * t))
    mask = signal > t
    if _PEAK_FRACTION > 0:
        comp, n = ndi.label(mask)
        if n:
            peak = np.asarray(ndi.maximum(signal, comp, np.arange(1, n + 1)), dtype=np.float32)
            cut = np.concatenate([[np.inf], _PEAK_FRACTION * (peak - t) + t]).astype(np.float32)
            mask &= signal >= cut[comp]
    return mask


def _estimate_radius(mask: np.ndarray) -> float:
    """Typical cell radius: three times the mean distance to the background.

    Over a disc of radius ``R`` the distance of a pixel to the disc's edge averages
    ``R / 3``; touching cells change this little and small debris weighs in by its few
    pixels only. Holes (central pallor) are filled first. Large masks are measured on a
    strided copy (about 512 x 512 pixels), again at full resolution when cells turn out
    small on that grid.
    """
    step = max(1, int(math.sqrt(mask.size / _COARSE_PIXELS)))
    if step > 1:
        radius = step * _radius_at(mask[::step, ::step])
        if radius >= 4 * step:
            return radius
    return _radius_at(mask)


def _fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    holes = ~mask
    lab, n = ndi.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = sizes <= max_area
    small[0] = False
    # a "hole" touching the image edge is background, not a hole
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    small[edge] = False
    return mask | small[lab]


def _split(mask: np.ndarray, radius: float, signal: np.ndarray | None = None) -> np.ndarray:
    """Watershed of the smoothed distance transform, markers from its spaced maxima.

    With ``signal`` (fluorescence), the landscape also weighs the cell signal, so that
    touching nuclei split along the dimmer line between them.
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    smooth = ndi.gaussian_filter(dist, max(1.0, 0.15 * radius))
    land = smooth / np.float32(radius)
    if signal is not None and _SIGNAL_WEIGHT > 0:
        inside = signal[mask]
        scale = float(np.percentile(inside, 99)) if inside.size else 1.0
        sig = ndi.gaussian_filter(signal, max(1.0, 0.15 * radius)) / np.float32(max(scale, 1e-6))
        np.clip(sig, 0.0, 1.0, out=sig)
        land = (1 - _SIGNAL_WEIGHT) * land + _SIGNAL_WEIGHT * sig
    min_distance = max(1, round(_MARKER_SPACING * radius))
    comp, n_comp = ndi.label(mask)
    peaks = peak_local_max(land, min_distance=min_distance, exclude_border=False)
    if len(peaks):
        deep = smooth[tuple(peaks.T)] >= max(1.0, _MARKER_DEPTH * radius)
        peaks = peaks[deep & mask[tuple(peaks.T)]]
    else:
        peaks = peaks.reshape(0, 2)
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # components without a marker (thin or small) keep one label of their own
    has = np.zeros(n_comp + 1, dtype=bool)
    has[comp[tuple(peaks.T)]] = True
    orphan = ~has
    orphan[0] = False
    if orphan.any():
        extra = np.zeros(n_comp + 1, dtype=np.int32)
        extra[orphan] = len(peaks) + np.arange(1, int(orphan.sum()) + 1, dtype=np.int32)
        markers = np.where(markers > 0, markers, np.where(comp > 0, extra[comp], 0))
    return watershed(-land, markers, mask=mask).astype(np.int32)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return kind


def _check_positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number of pixels; got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number of pixels; got {value!r}")
    return v


def segment_cells(
    image: np.ndarray,
    *,
    kind: str = "auto",
    diameter: float | None = None,
    min_area: float | None = None,
    channel: int | None = None,
) -> np.ndarray:
    """Find the cells of a field (classic segmentation, no model).

    See the module docstring for the steps and their order, and :func:`segmentation_image`
    for what is segmented in a multi-channel image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` field (channels last), any numeric dtype.
    kind : {"auto", "brightfield", "fluorescence"}, optional
        Brightfield: cells darker or more saturated than a bright background (stained
        smears). Fluorescence: cells brighter than a dark background. ``"auto"`` decides
        with :func:`image_kind`.
    diameter : float, optional
        Typical cell diameter in pixels; estimated from the image by default.
    min_area : float, optional
        Objects smaller than this many pixels are dropped as debris; by default a fifth of
        the median object area (at least 8 pixels).
    channel : int, optional
        Segment on this channel only (0-based), e.g. the nuclear stain.

    Returns
    -------
    numpy.ndarray
        ``int32`` ``(H, W)`` labels, 0 = background, ids 1..N. All zero when no cell is
        found.

    Raises
    ------
    ImageError
        If the image is invalid (wrong shape, constant, NaN, ...).
    ValueError
        If ``kind``, ``diameter`` or ``min_area`` is not valid.
    """
    _check_kind(kind)
    diameter = _check_positive("diameter", diameter)
    min_area = _check_positive("min_area", min_area)
    img = segmentation_image(image, channel)
    if kind == "auto":
        kind = _kind_of(_gray(img))
    signal = _cell_signal(img, kind)
    mask = _foreground(signal, kind)
    empty = np.zeros(mask.shape, dtype=np.int32)
    if not mask.any():
        return empty
    radius = diameter / 2 if diameter is not None else _estimate_radius(mask)
    radius = max(radius, _MIN_RADIUS)
    mask = _fill_small_holes(mask, _HOLE_FRACTION * math.pi * radius * radius)

    factor = int(radius // _COARSE_RADIUS) if mask.size > 2 * _COARSE_PIXELS else 1
    if factor >= 2:
        h, w = mask.shape
        small = mask[: h - h % factor, : w - w % factor]
        small = small.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3)) >= 0.5
        coarse_signal = None
        if kind == "fluorescence":
            coarse_signal = signal[: h - h % factor, : w - w % factor].reshape(
                h // factor, factor, w // factor, factor).mean(axis=(1, 3))
        coarse = _split(small, radius / factor, coarse_signal)
        # pixels the coarse grid missed take the label of a neighbouring coarse cell
        coarse = np.where(coarse > 0, coarse, ndi.grey_dilation(coarse, size=(3, 3)))
        up = np.repeat(np.repeat(coarse, factor, axis=0), factor, axis=1)
        full = np.zeros(mask.shape, dtype=np.int32)
        full[: up.shape[0], : up.shape[1]] = up
        # edge strips left by the crop: copy the last full row / column
        if full.shape[0] > up.shape[0]:
            full[up.shape[0]:] = full[up.shape[0] - 1]
        if full.shape[1] > up.shape[1]:
            full[:, up.shape[1]:] = full[:, up.shape[1] - 1: up.shape[1]]
        labels = np.where(mask, full, 0).astype(np.int32)
    else:
        labels = _split(mask, radius, signal if kind == "fluorescence" else None)

    areas = np.bincount(labels.ravel())
    areas[0] = 0
    present = areas > 0
    if not present.any():
        return empty
    if min_area is None:
        min_area = max(8.0, _DEBRIS_FRACTION * float(np.median(areas[present])))
    keep = present & (areas >= min_area)
    keep[0] = False
    lut = np.zeros(len(areas), dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]
