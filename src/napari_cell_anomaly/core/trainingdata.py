"""Training data: images (and label images) to units, split into training, validation and
calibration parts.

* ``whole``: one unit per image, resized to the model size; images are split.
* ``patch``: whole images to draw random patches from; images (or strips of each image) are
  split.
* ``cells``: one native-scale window per cell (:mod:`.cellunits`); fields are split, so the
  calibration cells come from fields that neither training nor the checkpoint choice saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cellunits import (
    balance_field,
    cut_units,
    orient_units,
    pool_cells,
    readable,
    reduction_masks,
    shape_features,
    take_cells,
    window_side,
)
from .images import ImageError, resize
from .mappass import window_origins
from .preprocessing import Preprocessing
from .trainconfig import PATCH_MODE_FACTOR, TrainConfig


@dataclass
class TrainingData:
    """The units of one training run, split into training, validation and calibration parts."""

    mode: str
    train: np.ndarray | list[np.ndarray]   # whole: (N, S, S, C); patch: list of (H, W, C)
    val: np.ndarray                        # (M, S, S, C) units for the checkpoint choice
    train_index: np.ndarray                # image index of each train unit
    n_images: int
    shapes: list[tuple[int, ...]]
    val_index: np.ndarray | None = None    # image index of each val unit (whole, cells)
    size: int = 0                          # unit side (cells mode: from the cells' sizes)
    train_masks: list[np.ndarray] | None = None  # cells mode: each unit's reduction mask
    val_masks: list[np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # provenance of the units
    # Calibration part, apart from the validation part: whole and cells: (K, S, S, C) units;
    # patch: list of images; None: calibrate on ``val`` (with ``val_masks``).
    calib: np.ndarray | list[np.ndarray] | None = None
    calib_index: np.ndarray | None = None  # image index of each calibration unit
    calib_masks: list[np.ndarray] | None = None  # cells mode: each unit's reduction mask
    train_shape: np.ndarray | None = None  # cells mode: shape features of the train units
    calib_shape: np.ndarray | None = None  # ... and of the calibration units
    holdout: str = "images"                # held out by "images" or by "strips" of each one


def split_holdout(groups: int | Sequence[int] | np.ndarray, val_fraction: float,
                  calibration_fraction: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split units into training, validation and calibration parts, keeping groups together.

    Validation units choose the checkpoint (and any other setting); calibration units only
    fit the thresholds, so no choice has seen them and their scores are exchangeable with
    those of new normals. Units of one group (e.g. the cells of one field of view) always go
    to the same part, so that calibration never sees a field that training or validation saw.

    Parameters
    ----------
    groups : int or sequence of int
        The number of units (each its own group), or a group label per unit.
    val_fraction, calibration_fraction : float
        Fractions of the groups held out for validation and for calibration (each at least
        one group).
    rng : np.random.Generator
        Source of the random split.

    Returns
    -------
    (np.ndarray, np.ndarray, np.ndarray)
        Sorted unit indices of the training, validation and calibration parts.

    Raises
    ------
    ValueError
        With fewer than 3 groups (one for each part).
    """
    labels = (np.arange(int(groups)) if np.ndim(groups) == 0
              else np.asarray(groups).ravel())
    unique = np.unique(labels)
    n = unique.size
    if n < 3:
        raise ValueError(f"need at least 3 images (or groups) to hold out one for validation "
                         f"and one for calibration; got {n}")
    n_val = max(1, round(val_fraction * n))
    n_cal = max(1, round(calibration_fraction * n))
    while n_val + n_cal > n - 1:  # keep at least one group to train on
        if n_val >= n_cal and n_val > 1:
            n_val -= 1
        else:
            n_cal -= 1
    order = rng.permutation(unique)
    val_idx = np.flatnonzero(np.isin(labels, order[:n_val]))
    cal_idx = np.flatnonzero(np.isin(labels, order[n_val:n_val + n_cal]))
    train_idx = np.flatnonzero(np.isin(labels, order[n_val + n_cal:]))
    return train_idx, val_idx, cal_idx


def choose_mode(shapes: Sequence[tuple[int, ...]], size: int) -> str:
    """``"patch"`` when the images are much larger than the model size, else ``"whole"``."""
    longest = float(np.median([max(s[0], s[1]) for s in shapes]))
    return "patch" if longest > PATCH_MODE_FACTOR * size else "whole"


def _check_whole_sizes(xs: Sequence[np.ndarray], names: Sequence[str], size: int) -> None:
    """Refuse, in whole mode, a training image far larger than the others (a field among
    single-cell crops), which would be squeezed into the model size as a blur: the rule by
    which a whole-mode model refuses to score such an image (``WHOLE_MODE_MAX_FACTOR``)."""
    from .detector import WHOLE_MODE_MAX_FACTOR

    sides = np.array([max(x.shape[:2]) for x in xs], dtype=float)
    median = float(np.median(sides))
    big = np.flatnonzero(sides > WHOLE_MODE_MAX_FACTOR * median)
    if big.size:
        i = int(big[0])
        h, w = xs[i].shape[:2]
        raise ImageError(
            f"{names[i]} is {h}x{w} pixels, more than {WHOLE_MODE_MAX_FACTOR} times the median "
            f"side of the training images ({median:.0f} px; {big.size} such image(s)): a field "
            f"among single-cell crops would be squeezed into the {size} px input; leave it "
            "out, or train on fields per cell (labels) or in patch mode")


def prepare(images: Sequence[np.ndarray], cfg: TrainConfig, prep: Preprocessing,
             names: Sequence[str], rng: np.random.Generator,
             labels: Sequence[np.ndarray | None] | None = None, align: int = 8) -> TrainingData:
    xs = [prep(img, name=names[i]) for i, img in enumerate(images)]
    shapes = [tuple(np.shape(img)) for img in images]
    if cfg.mode != "auto":
        mode = cfg.mode
    elif labels is not None and any(lab is not None for lab in labels):
        mode = "cells"
    else:
        mode = choose_mode(shapes, cfg.size)
    n = len(xs)
    if mode == "cells":
        return _prepare_cells(images, xs, labels, cfg, names, rng, shapes, align)
    if mode == "whole":
        if n < 4:  # the latent density needs 2 training codes; 2 images are held out
            raise ImageError("whole-image training needs at least 4 images: 2 to train on, 1 "
                             "held out to choose the checkpoint and 1 to calibrate the "
                             f"thresholds (got {n}); add images or use patch mode")
        _check_whole_sizes(xs, names, cfg.size)
        units = np.stack([resize(x, (cfg.size, cfg.size)) for x in xs]).astype(np.float32)
        train_idx, val_idx, cal_idx = split_holdout(n, cfg.val_fraction,
                                                    cfg.calibration_fraction, rng)
        return TrainingData("whole", units[train_idx], units[val_idx], train_idx, n, shapes,
                            val_idx, size=cfg.size, calib=units[cal_idx], calib_index=cal_idx)

    small = [names[i] for i, x in enumerate(xs) if min(x.shape[:2]) < cfg.size]
    if small:
        raise ImageError(f"patch mode needs images of at least {cfg.size} px per side; "
                         f"{small[0]} is smaller")
    if n >= 10:
        train_idx, val_idx, cal_idx = split_holdout(n, cfg.val_fraction,
                                                    cfg.calibration_fraction, rng)
        train_imgs = [xs[i] for i in train_idx]
        val_imgs = [xs[i] for i in val_idx]
        cal_imgs = [xs[i] for i in cal_idx]
        holdout = "images"
    else:
        # Few large images: hold out two bottom strips of each one, the lower one for
        # calibration and the one above it for validation.
        train_imgs, val_imgs, cal_imgs = [], [], []
        for x in xs:
            h = x.shape[0]
            cal = max(cfg.size, round(cfg.calibration_fraction * h))
            val = max(cfg.size, round(cfg.val_fraction * h))
            if h - cal - val < cfg.size:
                raise ImageError(f"images of {h} px height are too small to hold out {val} "
                                 f"rows for validation and {cal} for calibration and still "
                                 f"train on {cfg.size} in patch mode; use a smaller size")
            train_imgs.append(x[: h - cal - val])
            val_imgs.append(x[h - cal - val: h - cal])
            cal_imgs.append(x[h - cal:])
        holdout = "strips"
    val_units = [v[r:r + cfg.size, q:q + cfg.size]
                 for v in val_imgs for r, q in window_origins(*v.shape[:2], cfg.size)]
    return TrainingData("patch", train_imgs, np.stack(val_units).astype(np.float32),
                 np.arange(len(train_imgs)), n, shapes, size=cfg.size, calib=cal_imgs,
                 holdout=holdout)


#: Cells mode's latent density, whatever ``ScoringConfig.density`` says: a KDE over the whole
#: code map. A cell's window is centred on it, so where in the window a code lies carries the
#: cell's size and outline, which the position-pooled densities discard (Chula RBC-12, 20
#: training fields, dev fields: per-cell AUROC 0.83 against 0.80 for the pooled KDE).
CELLS_DENSITY = "kde-flat"

#: Cells mode holds out whole fields (for validation and for calibration) when at least this
#: many fields have cells; with fewer, bands of each field's lowest cells are held out.
MIN_FIELDS_FOR_HOLDOUT = 3


def _prepare_cells(images: Sequence[np.ndarray], xs: Sequence[np.ndarray],
                   labels: Sequence[np.ndarray | None] | None, cfg: TrainConfig,
                   names: Sequence[str], rng: np.random.Generator,
                   shapes: list[tuple[int, ...]], align: int) -> TrainingData:
    """Cells-mode units: a window per cell, fields split into training and held-out fields."""
    from .cells import check_labels, measure_cells
    from .segmentation import image_kind, segment_cells

    n = len(xs)
    labels = list(labels) if labels is not None else [None] * n
    if len(labels) != n:
        raise ImageError(f"got {len(labels)} label images for {n} images")
    kinds = [image_kind(images[i]) for i in range(n) if labels[i] is None]
    segmentation = {"kind": max(set(kinds), key=kinds.count)} if kinds else {}
    fields = []
    for i, x in enumerate(xs):
        if labels[i] is None:
            lab = segment_cells(images[i], **segmentation)
        else:
            lab = check_labels(labels[i], x.shape[:2], name=f"the labels of {names[i]}")
        table = measure_cells(lab)
        use = readable(table) & ~np.asarray(table.at_border, dtype=bool)
        fields.append((lab, table, use))
    n_cells = [int(use.sum()) for _, _, use in fields]
    if sum(n_cells) < 3:
        raise ImageError(f"cells mode needs at least 3 whole cells (not cut by the image edge) "
                         f"to train on; found {sum(n_cells)} in {n} image(s)")
    all_cells = [take_cells(t, use) for _, t, use in fields]
    side = window_side(pool_cells(all_cells), align)
    units, masks, field_of, rows = [], [], [], []
    shape_parts = []
    for i, (lab, _, _) in enumerate(fields):
        table = all_cells[i]
        if not len(table):
            continue
        x, fill = balance_field(xs[i], lab) if cfg.balance else (xs[i], None)
        cu = cut_units(x, lab, table, side, context=cfg.context, fill=fill)
        shape_parts.append(shape_features(cu))  # morphometry as the cells lie
        if cfg.orient:
            cu = orient_units(cu, fill)
        units.extend(cu.windows)
        masks.extend(cu.masks)
        field_of.extend([i] * len(cu))
        # rank of each cell by row within its field, 0 (top) .. 1 (bottom)
        order = np.argsort(np.argsort(table.centroid_y, kind="stable"), kind="stable")
        rows.extend((order + 0.5) / len(cu))
    field_a, rows_a = np.asarray(field_of), np.asarray(rows)
    by_field = len(np.unique(field_a)) >= MIN_FIELDS_FOR_HOLDOUT
    if by_field:
        tr, va, ca = split_holdout(field_a, cfg.val_fraction, cfg.calibration_fraction, rng)
    else:
        # Too few fields: each field's lowest cells calibrate, the band above them validates.
        cal_cut = 1.0 - cfg.calibration_fraction
        val_cut = cal_cut - cfg.val_fraction
        ca = np.flatnonzero(rows_a >= cal_cut)
        va = np.flatnonzero((rows_a >= val_cut) & (rows_a < cal_cut))
        tr = np.flatnonzero(rows_a < val_cut)
    if len(tr) < 2 or not len(va) or not len(ca):
        raise ImageError("cells mode needs cells to train on, cells to choose the checkpoint "
                         f"and cells to calibrate; got {len(tr)}, {len(va)} and {len(ca)} "
                         f"from {n} image(s): add fields")
    arr = np.stack(units).astype(np.float32)
    red = reduction_masks(masks, cfg.scoring.erode)
    shape = np.concatenate(shape_parts)
    info = {"n_cells": len(units), "window_side": side,
            "holdout": "fields" if by_field else "lowest cells of each field",
            "n_fields_validation": len(set(field_a[va].tolist())) if by_field else 0,
            "n_fields_calibration": len(set(field_a[ca].tolist())) if by_field else 0,
            "segmentation": segmentation,
            "labels_given": int(sum(lab is not None for lab in labels))}
    return TrainingData("cells", arr[tr], arr[va], field_a[tr], n, shapes, field_a[va], size=side,
                 train_masks=[red[i] for i in tr], val_masks=[red[i] for i in va], info=info,
                 calib=arr[ca], calib_index=field_a[ca], calib_masks=[red[i] for i in ca],
                 train_shape=shape[tr], calib_shape=shape[ca],
                 holdout="fields" if by_field else "strips")
