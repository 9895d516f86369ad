"""Per-cell units: native-scale windows centred on each cell of a field, with the cell's mask.

In ``cells`` mode the autoencoder never sees a resized cell: absolute size and colour are signs
of disease (macrocytes, microcytes, hypochromia), so every cell is cut out at the image's own
scale, in a square window of a fixed side centred on the cell's bounding box. The side comes
from the training cells (:func:`window_side`), so normal cells fit with room to spare; a cell
larger than the window is cut by it, like a neighbour reaching in (a larger window of its own
would show the network background far from any window edge, which no training unit has, and
every such cell would be flagged whatever it looks like).

What surrounds the cell in its window is decided by ``context``:

* ``"isolate"`` (the default): every pixel outside the cell's own mask, dilated by
  :data:`MASK_MARGIN` pixels, is set to the field's background colour, so the unit shows one
  cell on a plain background, whatever its neighbours do. Chosen by measurement
  (``benchmarks/cells.py``): neighbours reaching into the window otherwise dominate both the
  reconstruction error and the latent density.
* ``"keep"``: the window as it is in the field, neighbours included.

With ``balance`` (the default) each field is first put on a common footing by its own
background colour (:func:`balance_field`): fields of one slide and of another differ more in
illumination and white balance than a normal cell differs from an abnormal one (measured on
Chula RBC-12: background colours from (108, 129, 145) to (225, 233, 249) in 8-bit RGB).

The error of a cell is reduced over its own mask eroded by the model's ``erode`` (see
:func:`reduction_masks`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy import ndimage

from .cells import CellTable
from .trainconfig import CONTEXTS  # defined with the settings (torch-free)

#: Pixels of context kept around a cell's mask in ``isolate`` mode (its soft rim).
MASK_MARGIN = 2
#: Objects with fewer pixels than this are too small to be read as cells.
MIN_CELL_AREA = 12
#: Background level after :func:`balance_field` on brightfield (background brighter than the
#: cells): a light neutral grey, leaving room above it for paler-than-background pixels.
BRIGHTFIELD_LEVEL = 0.8


@dataclass
class CellUnits:
    """Windows cut around the cells of one field.

    Attributes
    ----------
    windows : list of np.ndarray
        ``(side, side, C)`` float32 windows, one per cell, in table order.
    masks : list of np.ndarray
        ``(side, side)`` bool: the cell's own pixels in its window.
    origins : np.ndarray
        ``(N, 2)`` int64 top-left corner of each window in field coordinates (may be negative
        where the window reaches beyond the field).
    transforms : np.ndarray or None
        Set by :func:`orient_units`: ``(N, 2, 3)`` affine maps ``[M | offset]`` taking a
        pixel ``q`` of an oriented window to ``M @ q + offset`` in the window it was
        resampled from (see :func:`unorient`); None for windows cut as they lie.
    """

    windows: list[np.ndarray]
    masks: list[np.ndarray]
    origins: np.ndarray
    transforms: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.windows)


def align_up(n: float, align: int) -> int:
    """Smallest multiple of ``align`` that is at least ``n``."""
    return int(np.ceil(n / align) * align)


def window_side(table: CellTable, align: int, *, margin: float = 1.25) -> int:
    """Window side for a set of training cells, rounded up to ``align``: the 95th percentile
    of their bounding-box sides times ``margin`` (room for the rim and a little context), and
    at least the 99th percentile plus the kept rim and a few pixels, so nearly every normal
    cell fits whole."""
    if len(table) == 0:
        raise ValueError("no cells to size the window from")
    sides = np.maximum(table.bbox[:, 2] - table.bbox[:, 0], table.bbox[:, 3] - table.bbox[:, 1])
    need = max(float(np.quantile(sides, 0.95)) * margin,
               float(np.quantile(sides, 0.99)) + 2 * MASK_MARGIN + 4)
    return max(2 * align, align_up(need, align))


def background_colour(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Median colour ``(C,)`` of the field's background.

    Label images of training fields often hold only some cells (the normal ones), so the
    pixels outside them are not all background: of those pixels, only the ones on the
    background's side of an Otsu threshold of the brightness (the side holding their
    median) are used, so the colour is the same whichever cells are labelled.
    """
    from skimage.filters import threshold_otsu

    outside = labels == 0
    if outside.sum() < 64:
        outside = np.zeros_like(outside)
        outside[[0, -1], :] = outside[:, [0, -1]] = True
    step = max(1, int(outside.sum() // 200_000))
    pix = x[outside][::step]
    gray = pix.mean(-1)
    if np.ptp(gray) > 0:
        t = threshold_otsu(gray)
        side = gray > t if np.median(gray) > t else gray <= t
        if side.sum() >= 16:
            pix = pix[side]
    return np.median(pix, axis=0).astype(np.float32)


def balance_field(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A field on a common footing: brightfield (background brighter than the labelled cells)
    divided by its background colour per channel and scaled so the background is
    :data:`BRIGHTFIELD_LEVEL` (a flat-field / white-balance correction); fluorescence (darker
    background) minus its background level. Values clipped to [0, 1].

    Returns
    -------
    (np.ndarray, np.ndarray)
        The balanced ``(H, W, C)`` float32 field and its new ``(C,)`` background colour.
    """
    bg = background_colour(x, labels)
    cells = x[labels > 0]
    bright_bg = cells.size == 0 or float(bg.mean()) >= float(cells.mean())
    if bright_bg:
        out = x * (BRIGHTFIELD_LEVEL / np.maximum(bg, 1e-3))
        new_bg = np.full_like(bg, BRIGHTFIELD_LEVEL)
    else:
        out = x - bg
        new_bg = np.zeros_like(bg)
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False), new_bg


def centred_window(box: Sequence[int], side: int, shape: Sequence[int]
                   ) -> tuple[tuple[int, int], tuple[slice, slice], tuple[slice, slice]]:
    """A ``side x side`` window centred on a bounding box ``(r0, c0, r1, c1)``.

    Returns its top-left corner in field coordinates (may be negative) and, for the part that
    lies inside a field of ``shape``, the field's slices and the window's slices
    (:func:`clip_window`).
    """
    r0, c0, r1, c1 = (int(v) for v in box)
    top, left = (r0 + r1) // 2 - side // 2, (c0 + c1) // 2 - side // 2
    return (top, left), *clip_window(top, left, side, shape)


def clip_window(top: int, left: int, side: int, shape: Sequence[int]
                ) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices of a field of ``shape`` and of a ``side x side`` window at ``(top, left)``
    that cover the same pixels (the window may reach beyond the field)."""
    h, w = int(shape[0]), int(shape[1])
    y0, y1, x0, x1 = max(top, 0), min(top + side, h), max(left, 0), min(left + side, w)
    return ((slice(y0, y1), slice(x0, x1)),
            (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)))


def cut_units(x: np.ndarray, labels: np.ndarray, table: CellTable, side: int, *,
              context: str = "isolate", fill: np.ndarray | None = None) -> CellUnits:
    """Cut one window per cell.

    Parameters
    ----------
    x : np.ndarray
        ``(H, W, C)`` preprocessed float32 field.
    labels : np.ndarray
        ``(H, W)`` integer labels of the same field.
    table : CellTable
        The cells to cut (from :func:`.cells.measure_cells`).
    side : int
        Window side (a cell larger than it is cut by the window).
    context : {"isolate", "keep"}
        What surrounds the cell (module docstring).
    fill : np.ndarray, optional
        ``(C,)`` colour for pixels outside the field and, with ``isolate``, outside the cell;
        the field's background colour by default.

    Returns
    -------
    CellUnits
    """
    if context not in CONTEXTS:
        raise ValueError(f"unknown context {context!r}; expected one of {CONTEXTS}")
    fill = background_colour(x, labels) if fill is None else np.asarray(fill, np.float32)
    windows, masks, origins = [], [], []
    grow = ndimage.generate_binary_structure(2, 1)
    for lab, box in zip(table.label, table.bbox, strict=True):
        origin, field, dst = centred_window(box, side, x.shape)
        win = np.empty((side, side, x.shape[2]), dtype=np.float32)
        win[:] = fill
        own = np.zeros((side, side), dtype=bool)
        src = x[field]
        own[dst] = labels[field] == lab
        if context == "isolate":
            keep = ndimage.binary_dilation(own, grow, iterations=MASK_MARGIN)[dst]
            win[dst][keep] = src[keep]
        else:
            win[dst] = src
        windows.append(win)
        masks.append(own)
        origins.append(origin)
    return CellUnits(windows, masks, np.asarray(origins, dtype=np.int64).reshape(-1, 2))


def cell_orientation(mask: np.ndarray) -> tuple[float, float, float]:
    """Centroid ``(row, col)`` of a mask and the angle (radians, from the column axis
    towards the row axis) of its major axis, from its second moments (0 for a mask without
    a preferred direction)."""
    rr, cc = np.nonzero(mask)
    if rr.size == 0:
        c = (mask.shape[0] - 1) / 2
        return c, (mask.shape[1] - 1) / 2, 0.0
    cy, cx = float(rr.mean()), float(cc.mean())
    dy, dx = rr - cy, cc - cx
    myy, mxx, mxy = float((dy * dy).mean()), float((dx * dx).mean()), float((dy * dx).mean())
    return cy, cx, 0.5 * float(np.arctan2(2.0 * mxy, mxx - myy))


def orient_units(units: CellUnits, fill: np.ndarray | None = None) -> CellUnits:
    """The same cells in canonical orientation: each window resampled (bilinear) so that its
    cell's centroid is at the window's centre (within half a pixel) and its major axis
    (second moments of the mask) runs along the columns; the mask is resampled alike.

    Red cells (and many others) lie at any angle in a field; without this the network and
    the latent density spend capacity on the angle. Pixels that come from outside the
    window take ``fill`` (the window's corner colour by default). The flips that keep the
    axes (left-right, up-down) are left free: the training augmentation covers them.

    Parameters
    ----------
    units : CellUnits
        Windows as cut by :func:`cut_units`.
    fill : np.ndarray, optional
        ``(C,)`` colour of pixels that come from outside the window.

    Returns
    -------
    CellUnits
        Windows, masks and origins as before, with ``transforms`` set (:func:`unorient`
        maps per-cell results back).
    """
    n = len(units)
    if n == 0:
        return CellUnits([], [], units.origins, np.zeros((0, 2, 3)))
    s = units.masks[0].shape[0]
    transforms = np.zeros((n, 2, 3))
    c = (s - 1) / 2.0
    for i, own in enumerate(units.masks):
        cy, cx, theta = cell_orientation(own)
        cos, sin = np.cos(theta), np.sin(theta)
        mat = np.array([[cos, sin], [-sin, cos]])
        # the centroid lands within half a pixel of the centre, keeping its sub-pixel
        # position, so an upright cell is moved by whole pixels and not resampled
        centre = np.array([cy, cx]) - np.round(np.array([cy, cx]) - c)
        transforms[i] = np.column_stack([mat, np.array([cy, cx]) - mat @ centre])
    windows, masks = [], []
    for start in range(0, n, 128):
        part = slice(start, start + 128)
        wins = np.stack(units.windows[part]).astype(np.float32)
        bg = (np.broadcast_to(np.asarray(fill, np.float32), (len(wins), wins.shape[-1]))
              if fill is not None else wins[:, 0, 0])
        own = np.stack(units.masks[part]).astype(np.float32)[..., None]
        both = np.concatenate([wins - bg[:, None, None], own], axis=-1)
        out = _resample(both, transforms[part])
        for w, b, orig in zip(out, bg, units.masks[part], strict=True):
            m = w[..., -1] >= 0.5
            windows.append(w[..., :-1] + b)
            masks.append(m if m.any() else orig)
    return CellUnits(windows, masks, units.origins, transforms)


def _resample(stack: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Bilinear resampling of ``(N, S, S, C)`` windows: output pixel ``q`` of window ``i``
    reads ``transforms[i] @ (q, 1)``; pixels from outside the window read 0."""
    import torch
    from torch.nn.functional import grid_sample

    n, s = stack.shape[:2]
    q = np.stack(np.mgrid[0:s, 0:s], -1).reshape(-1, 2).astype(np.float64)  # (P, 2)
    p = q @ transforms[:, :, :2].transpose(0, 2, 1) + transforms[:, None, :, 2]  # (N, P, 2)
    grid = (p[..., ::-1] * (2.0 / max(s - 1, 1)) - 1.0).reshape(n, s, s, 2)  # (x, y), [-1, 1]
    with torch.inference_mode():
        out = grid_sample(torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 1, 2))),
                          torch.from_numpy(grid.astype(np.float32)), mode="bilinear",
                          padding_mode="zeros", align_corners=True)
    return out.numpy().transpose(0, 2, 3, 1)


def unorient(parts: Sequence[np.ndarray], units: CellUnits) -> list[np.ndarray]:
    """Per-cell maps or images ``(s, s[, C])`` of oriented units (:func:`orient_units`)
    resampled back to the windows they came from (unchanged when ``units`` were not
    oriented)."""
    if units.transforms is None or not len(parts):
        return list(parts)
    inv = np.linalg.inv(np.concatenate(
        [units.transforms, np.tile([[[0.0, 0.0, 1.0]]], (len(units), 1, 1))], axis=1))[:, :2]
    out: list[np.ndarray] = []
    for start in range(0, len(parts), 128):
        stack = np.stack(parts[start:start + 128]).astype(np.float32)
        flat = stack[..., None] if stack.ndim == 3 else stack
        res = _resample(flat, inv[start:start + 128])
        out.extend(res[..., 0] if stack.ndim == 3 else res)
    return out


def reduction_masks(masks: list[np.ndarray], erode: int) -> list[np.ndarray]:
    """Each cell's mask eroded by ``erode`` pixels (the rim reconstructs imperfectly in every
    cell); the uneroded mask where erosion would leave nothing."""
    if erode <= 0:
        return masks
    out = []
    for m in masks:
        e = ndimage.binary_erosion(m, iterations=erode)
        out.append(e if e.any() else m)
    return out


def readable(table: CellTable) -> np.ndarray:
    """Bool ``(N,)``: cells large enough to be read (at least :data:`MIN_CELL_AREA` pixels)."""
    return np.asarray(table.area) >= MIN_CELL_AREA


def take_cells(table: CellTable, keep: np.ndarray) -> CellTable:
    """The rows ``keep`` (bool mask or indices) of a cell table."""
    return dataclasses.replace(table, **{f.name: getattr(table, f.name)[keep]
                                         for f in dataclasses.fields(table)})


def pool_cells(tables: Sequence[CellTable]) -> CellTable:
    """The rows of several cell tables in one (labels are no longer unique)."""
    return type(tables[0])(**{f.name: np.concatenate([getattr(t, f.name) for t in tables])
                              for f in dataclasses.fields(tables[0])})


#: Names of the columns of :func:`shape_features`, in order: these five, then the mean colour
#: of each channel, then :data:`SHAPE_FEATURES_V2`.
SHAPE_FEATURES = ("log_area", "roundness", "elongation", "brightness_spread", "pallor")
#: Columns added after the colour means (model files written before them hold densities over
#: the first ``5 + C`` columns only; :meth:`ShapeDensity.log_density` reads those).
SHAPE_FEATURES_V2 = ("concavity", "contrast_rim", "contrast_outer", "contrast_inner",
                     "contrast_core", "pale_fraction")
#: Depth bins of the contrast profile: distance from the cell's edge relative to its deepest
#: point, from the rim (0) to the core (1).
PROFILE_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)


def shape_features(units: CellUnits) -> np.ndarray:
    """Morphometry of each cell from its window and mask: ``(N, 5 + C + 6)`` float64.

    Columns: log area; boundary pixels / sqrt(area) (ragged or irregular outlines score
    higher); elongation (1 - minor / major axis of the second moments); spread of the
    brightness inside the cell; central pallor (mean brightness of the inner half of the
    radius minus the outer part); the mean colour of each channel; then
    (:data:`SHAPE_FEATURES_V2`, :func:`profile_features`) the concavity of the outline
    (log of 1 - solidity: spiky or notched cells), the cell's contrast against the
    background in four depth bins from rim to core, and the fraction of its pixels paler
    than half its own typical contrast (the pallor area). Computed at the image's own scale
    on the (balanced) field, so absolute size and colour count, as they do in disease
    (macrocytes, microcytes, hypochromia).
    """
    if not len(units):
        return np.zeros((0, len(SHAPE_FEATURES) + len(SHAPE_FEATURES_V2)))
    masks = np.stack(units.masks).astype(np.float64)            # (N, S, S)
    wins = np.stack(units.windows).astype(np.float64)           # (N, S, S, C)
    s = masks.shape[1]
    area = np.maximum(masks.sum((1, 2)), 1.0)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    cy = (masks * yy).sum((1, 2)) / area
    cx = (masks * xx).sum((1, 2)) / area
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    myy = (masks * dy**2).sum((1, 2)) / area
    mxx = (masks * dx**2).sum((1, 2)) / area
    mxy = (masks * dy * dx).sum((1, 2)) / area
    root = np.sqrt(((myy - mxx) / 2) ** 2 + mxy**2)
    major = np.sqrt(np.maximum((myy + mxx) / 2 + root, 1e-12))
    minor = np.sqrt(np.maximum((myy + mxx) / 2 - root, 0.0))
    own = masks > 0
    inner = np.zeros_like(own)
    inner[:, 1:-1, 1:-1] = (own[:, 1:-1, 1:-1] & own[:, :-2, 1:-1] & own[:, 2:, 1:-1]
                            & own[:, 1:-1, :-2] & own[:, 1:-1, 2:])
    boundary = (own & ~inner).sum((1, 2))
    bright = wins.mean(-1)
    mean_b = (bright * masks).sum((1, 2)) / area
    spread = np.sqrt(np.maximum((bright**2 * masks).sum((1, 2)) / area - mean_b**2, 0.0))
    radius = np.sqrt(area / np.pi)
    centre = (np.hypot(dy, dx) < 0.5 * radius[:, None, None]) & own
    rim = own & ~centre
    c_area, r_area = np.maximum(centre.sum((1, 2)), 1), np.maximum(rim.sum((1, 2)), 1)
    pallor = (bright * centre).sum((1, 2)) / c_area - (bright * rim).sum((1, 2)) / r_area
    colour = (wins * masks[..., None]).sum((1, 2)) / area[:, None]
    return np.column_stack([np.log(area), boundary / np.sqrt(area), 1.0 - minor / major,
                            spread, pallor, colour, profile_features(units)])


def profile_features(units: CellUnits) -> np.ndarray:
    """The :data:`SHAPE_FEATURES_V2` columns of :func:`shape_features`: ``(N, 6)`` float64.

    Contrast is each pixel's colour distance to the window's background (the median colour
    of the pixels away from the cell, i.e. the fill colour in ``isolate`` context), so it
    needs no stain colour: a pale (hypochromic) cell has low contrast over a large part of
    its area, a target cell a dark core inside a pale ring, a spherocyte no pale centre.
    Depth is the distance to the cell's edge over the cell's largest such distance. The
    concavity is ``log(1 - area / convex hull area)``, the hull taken over the pixels'
    corners, so it is finite for every cell.
    """
    from scipy.spatial import ConvexHull, QhullError

    out = np.zeros((len(units), len(SHAPE_FEATURES_V2)))
    corners = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    pad = MASK_MARGIN + 2
    for i, (win, mask) in enumerate(zip(units.windows, units.masks, strict=True)):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not rows.size:
            continue
        r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, mask.shape[0])
        c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, mask.shape[1])
        own, w = mask[r0:r1, c0:c1], np.asarray(win[r0:r1, c0:c1], dtype=np.float64)
        near = ndimage.binary_dilation(own, iterations=MASK_MARGIN + 1)
        ring = np.zeros_like(own)
        ring[[0, -1], :] = ring[:, [0, -1]] = True
        ring &= ~near
        bg = np.median(w[ring if ring.any() else ~own], axis=0) if (~own).any() else w.max((0, 1))
        contrast = np.linalg.norm(w[own] - bg, axis=-1)
        depth = ndimage.distance_transform_edt(np.pad(own, 1))[1:-1, 1:-1][own]
        rel = depth / max(float(depth.max()), 1e-9)
        for b, (lo, hi) in enumerate(pairwise(PROFILE_BINS)):
            sel = (rel > lo) & (rel <= hi)
            out[i, 1 + b] = contrast[sel].mean() if sel.any() else contrast.mean()
        typical = float(np.percentile(contrast, 90))
        out[i, 5] = float(np.mean(contrast < 0.5 * typical)) if typical > 0 else 0.0
        edge = own & ~ndimage.binary_erosion(own)
        pts = (np.argwhere(edge)[:, None, :] + corners[None]).reshape(-1, 2)
        try:
            hull = ConvexHull(pts).volume
        except (QhullError, ValueError):
            hull = float(own.sum())
        out[i, 0] = np.log(max(1.0 - float(own.sum()) / max(hull, 1e-9), 1e-3))
    return out


@dataclass
class ShapeDensity:
    """A Gaussian over the cells' :func:`shape_features`, with a shrunk covariance
    (Ledoit-Wolf), fitted on training cells; stored as plain arrays.

    In cells mode it is a third criterion beside the error and the latent density: a cell is
    anomalous when its error is too high, its code too unlikely, or its morphometry (size,
    outline, colour) too unlikely, each on the robust z-scale of the calibration cells.
    """

    mean: np.ndarray
    precision: np.ndarray
    log_norm: float

    @classmethod
    def fit(cls, features: np.ndarray) -> ShapeDensity:
        """Fit on ``(N, F)`` features of normal training cells (``N >= 2``)."""
        from sklearn.covariance import LedoitWolf

        f = np.asarray(features, dtype=np.float64)
        if f.shape[0] < 2:
            raise ValueError(f"shape density needs at least 2 cells; got {f.shape[0]}")
        cov = LedoitWolf().fit(f).covariance_
        cov += 1e-9 * np.trace(cov) / len(cov) * np.eye(len(cov))
        _, logdet = np.linalg.slogdet(cov)
        return cls(f.mean(0), np.linalg.inv(cov),
                   -0.5 * (len(cov) * np.log(2 * np.pi) + logdet))

    def log_density(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` Gaussian log-density of ``(N, F)`` features.

        Only the first ``len(mean)`` columns are read, so densities of model files written
        before :data:`SHAPE_FEATURES_V2` existed keep scoring exactly as they were fitted.
        """
        d = np.asarray(features, dtype=np.float64)[:, :self.mean.size] - self.mean
        return self.log_norm - 0.5 * np.einsum("ni,ij,nj->n", d, self.precision, d)

    def to_arrays(self, prefix: str = "shape.") -> dict[str, np.ndarray]:
        """Arrays for a model file."""
        return {prefix + "mean": self.mean, prefix + "precision": self.precision,
                prefix + "log_norm": np.array([self.log_norm])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str = "shape."
                    ) -> ShapeDensity | None:
        """Inverse of :meth:`to_arrays`; None when the file holds no shape density."""
        if prefix + "mean" not in arrays:
            return None
        return cls(np.asarray(arrays[prefix + "mean"], np.float64),
                   np.asarray(arrays[prefix + "precision"], np.float64),
                   float(np.asarray(arrays[prefix + "log_norm"]).ravel()[0]))
