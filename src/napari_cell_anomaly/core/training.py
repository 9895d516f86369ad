"""Training as a generator of progress events, ending in a calibrated :class:`AnomalyDetector`.

``train`` yields a :class:`TrainProgress` after every optimisation step, so any caller (a napari
``thread_worker``, the CLI's progress bar, a notebook) can render progress and stop between
steps. The generator's return value is the detector::

    gen = train(images, TrainConfig(epochs=20))
    for event in gen: ...
    # or: detector = run_training(images, config)

Robust training (``robust=True``) follows Beggel, Pfeiffer & Bischl (2019), "Robust anomaly
detection in images using adversarial autoencoders" (arXiv:1901.06355): after a pretraining
phase (a third of the epochs) the most anomalous training samples are given zero weight, re-decided
after every epoch, so a few anomalies in the training set are not learned. Adapted from the
paper, by measurement on contaminated malaria crops (docs/benchmarks.md):

* the evidence is the detector's own image error (:meth:`AnomalyDetector.analyse_units` with
  the model's :class:`ScoringConfig`), not a one-class SVM on latent codes, which picked
  contaminants at chance; the latent density was not used, as on training units it barely
  separates contaminants (AUROC 0.70 vs 0.97 for the error);
* a sample is rejected when the robust z-score (median / MAD) of its log error exceeds
  ``reject_z`` (at most ``reject_nu`` of the samples), so a clean set loses few samples;
* the adversarial standard-normal prior on the latent code is kept as an option
  (``prior_weight``) but off by default: at weight 0.01 it cut the combined AUROC by 0.016 and
  hid the synthetic anomalies from the rejection;
* the same rule, with the stricter cut ``calibration_z``, drops held-out calibration units
  before the thresholds are fitted, so contaminants there do not raise the threshold
  (``provenance["calibration_dropped"]``); they still count as calibration normals scoring
  above every threshold, so the stated false-alarm rate stays guaranteed.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from . import errormaps
from .cellunits import (
    CONTEXTS,
    CellUnits,
    ShapeDensity,
    balance_field,
    cut_units,
    pool_cells,
    readable,
    reduction_masks,
    shape_features,
    take_cells,
    window_side,
)
from .density import fit_density
from .detector import (
    AnomalyDetector,
    encode_units,
    provenance_base,
    to_tensor,
    window_origins,
)
from .images import ImageError, Preprocessing, random_patches, resize
from .model import Autoencoder, ModelConfig, build_model
from .scoring import Calibration, ScoringConfig, robust_location_scale

MODES = ("auto", "whole", "patch", "cells")
#: Modes whose training units are fixed-size arrays (one unit per image or per cell).
UNIT_MODES = ("whole", "cells")
LOSSES = ("mse", "ssim", "mix")
#: In ``auto`` mode, images whose median longer side exceeds this many model sizes are treated
#: as fields of view and trained on random patches.
PATCH_MODE_FACTOR = 4
#: In patch mode an epoch draws at least this many patches, so that a few large fields of view
#: (the usual napari case) still get enough optimisation steps.
MIN_PATCHES_PER_EPOCH = 1024


class TrainingStopped(ValueError):
    """Training was stopped before its first step, so there is no model to return."""


@dataclass
class TrainConfig:
    """Training settings; the defaults are what users get from the CLI and the widget.

    Parameters
    ----------
    epochs : int
        Passes over the training units.
    batch_size : int
        Units per optimisation step.
    lr : float
        Adam learning rate (decayed by a cosine schedule).
    loss : {"mse", "ssim", "mix"}
        Reconstruction loss.
    seed : int
        Seed for initialisation, data split, sampling and augmentation.
    size : int
        Model input side (whole-image mode) or patch side (patch mode); a multiple of 8.
    mode : {"auto", "whole", "patch", "cells"}
        ``whole``: each image is one cell crop, resized to ``size``. ``patch``: random patches
        from large fields of view. ``cells``: one native-scale window per cell of a field
        (cells from the given label images, or found by :func:`.cells.segment_cells`); the
        window side comes from the training cells' sizes and ``size`` is not used. ``auto``
        picks ``cells`` when label images are given, else ``whole`` or ``patch`` from the
        image sizes.
    preset : {"default", "seed"}
        Network preset (see :mod:`.model`).
    channels : {"rgb", "gray"} or None
        Channel mode; None keeps colour when the images have it.
    val_fraction : float
        Fraction of images (whole mode) or of each image's rows (patch mode, few images) held out
        for the choice of the best checkpoint (and the map scales of ``error="mix"``).
    calibration_fraction : float
        Fraction of images (or rows) held out, apart from those, to calibrate the thresholds
        only: no choice sees them, so the false-alarm rate holds on new normals
        (see :func:`split_holdout`).
    patches_per_image : int
        Patches drawn from each training image per epoch (patch mode; at least
        ``MIN_PATCHES_PER_EPOCH`` in all).
    augment : bool
        Random flips and 90-degree rotations.
    robust : bool
        Iterative rejection of the training samples with the most anomalous image error
        (whole mode), and the same rejection among the calibration units. The adversarial
        latent prior of the paper is added only when ``prior_weight > 0``.
    reject_z : float
        Robust training: reject samples whose log image error lies more than this many robust
        standard deviations (median / MAD) above the median.
    reject_nu : float
        Robust training: the largest fraction of samples rejected per round.
    calibration_z : float
        Robust training: held-out calibration units above this robust z-score of the log
        error are dropped before the thresholds are fitted (stricter than ``reject_z``, as every
        normal dropped there raises the false-alarm rate).
    prior_weight : float
        Robust training: weight of the adversarial standard-normal prior on the latent code
        (0 turns the adversarial autoencoder off, keeping the rejection).
    context : {"isolate", "keep"}
        Cells mode: what surrounds a cell in its window (see :mod:`.cellunits`).
    balance : bool
        Cells mode: balance each field by its own background colour (flat-field / white
        balance for brightfield, offset for fluorescence) before cutting cell windows.
    cell_shape : bool
        Cells mode: add the density of the cells' morphometry (size, outline, elongation,
        pallor, colour) to the latent density (see :class:`.cellunits.ShapeDensity`).
    max_steps : int or None
        Stop after this many steps in total (for quick tests and previews).
    scoring : ScoringConfig
        How maps become image errors; stored in the model.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    loss: str = "mse"
    seed: int = 0
    size: int = 64
    mode: str = "auto"
    preset: str = "default"
    channels: str | None = None
    val_fraction: float = 0.1
    calibration_fraction: float = 0.1
    patches_per_image: int = 64
    augment: bool = True
    robust: bool = False
    reject_z: float = 3.0
    reject_nu: float = 0.15
    calibration_z: float = 4.0
    prior_weight: float = 0.0
    context: str = "isolate"
    balance: bool = True
    cell_shape: bool = True
    max_steps: int | None = None
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {LOSSES}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if self.size < 16 or self.size % 8:
            raise ValueError(f"size must be a multiple of 8 and at least 16, got {self.size}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}; expected one of {CONTEXTS}")
        if not 0.0 < self.calibration_fraction < 0.5:
            raise ValueError("calibration_fraction must be in (0, 0.5), got "
                             f"{self.calibration_fraction}")
        if not 0.0 < self.reject_nu < 0.5:
            raise ValueError(f"reject_nu must be in (0, 0.5), got {self.reject_nu}")
        ModelConfig.from_preset(self.preset)  # validates the preset name

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (recorded in the model file)."""
        d = asdict(self)
        d["scoring"] = self.scoring.to_dict()
        return d


@dataclass
class TrainProgress:
    """One progress event.

    Attributes
    ----------
    phase : str
        ``"train"`` during optimisation, ``"finalize"`` while fitting density and calibration,
        ``"done"`` at the end (``stopped`` tells whether the user stopped it early).
    epoch, epochs : int
        Current epoch (1-based) and total.
    step, steps : int
        Steps done so far and the planned total.
    train_loss : float
        Running mean training loss of the current epoch.
    val_loss : float or None
        Latest validation loss.
    best_val_loss : float or None
        Best validation loss so far (its checkpoint is kept).
    elapsed, eta : float
        Seconds since start and estimated seconds left.
    stopped : bool
        True when the stop flag ended training early.
    rejected : int
        Training samples currently rejected by robust training.
    """

    phase: str
    epoch: int
    epochs: int
    step: int
    steps: int
    train_loss: float
    val_loss: float | None
    best_val_loss: float | None
    elapsed: float
    eta: float
    stopped: bool = False
    rejected: int = 0


# ------------------------------------------------------------------------------------------------
# Data preparation
# ------------------------------------------------------------------------------------------------
@dataclass
class _Data:
    mode: str
    train: np.ndarray | list[np.ndarray]   # whole: (N, S, S, C); patch: list of (H, W, C)
    val: np.ndarray                        # (M, S, S, C) units for the checkpoint choice
    train_index: np.ndarray                # image index of each train unit (whole mode)
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


def _prepare(images: Sequence[np.ndarray], cfg: TrainConfig, prep: Preprocessing,
             names: Sequence[str], rng: np.random.Generator,
             labels: Sequence[np.ndarray | None] | None = None, align: int = 8) -> _Data:
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
        units = np.stack([resize(x, (cfg.size, cfg.size)) for x in xs]).astype(np.float32)
        train_idx, val_idx, cal_idx = split_holdout(n, cfg.val_fraction,
                                                    cfg.calibration_fraction, rng)
        return _Data("whole", units[train_idx], units[val_idx], train_idx, n, shapes, val_idx,
                     size=cfg.size, calib=units[cal_idx], calib_index=cal_idx)

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
    return _Data("patch", train_imgs, np.stack(val_units).astype(np.float32),
                 np.arange(len(train_imgs)), n, shapes, size=cfg.size, calib=cal_imgs,
                 holdout=holdout)


#: Cells mode holds out whole fields (for validation and for calibration) when at least this
#: many fields have cells; with fewer, bands of each field's lowest cells are held out.
MIN_FIELDS_FOR_HOLDOUT = 3


def _prepare_cells(images: Sequence[np.ndarray], xs: Sequence[np.ndarray],
                   labels: Sequence[np.ndarray | None] | None, cfg: TrainConfig,
                   names: Sequence[str], rng: np.random.Generator,
                   shapes: list[tuple[int, ...]], align: int) -> _Data:
    """Cells-mode units: a window per cell, fields split into training and held-out fields."""
    from .cells import check_labels, image_kind, measure_cells, segment_cells

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
    for i, (lab, _, _) in enumerate(fields):
        table = all_cells[i]
        if not len(table):
            continue
        x, fill = balance_field(xs[i], lab) if cfg.balance else (xs[i], None)
        cu = cut_units(x, lab, table, side, context=cfg.context, fill=fill)
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
    shape = shape_features(CellUnits(units, masks, np.zeros((len(units), 2), np.int64)))
    info = {"n_cells": len(units), "window_side": side,
            "holdout": "fields" if by_field else "lowest cells of each field",
            "n_fields_validation": len(set(field_a[va].tolist())) if by_field else 0,
            "n_fields_calibration": len(set(field_a[ca].tolist())) if by_field else 0,
            "segmentation": segmentation,
            "labels_given": int(sum(lab is not None for lab in labels))}
    return _Data("cells", arr[tr], arr[va], field_a[tr], n, shapes, field_a[va], size=side,
                 train_masks=[red[i] for i in tr], val_masks=[red[i] for i in va], info=info,
                 calib=arr[ca], calib_index=field_a[ca], calib_masks=[red[i] for i in ca],
                 train_shape=shape[tr], calib_shape=shape[ca],
                 holdout="fields" if by_field else "strips")


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree rotations (the 8 symmetries of the square), per sample."""
    kinds = torch.randint(0, 8, (x.shape[0],), generator=gen)
    out = x.clone()
    for k in range(1, 8):
        sel = kinds == k
        if not bool(sel.any()):
            continue
        v = x[sel]
        if k >= 4:
            v = v.flip(-1)
        out[sel] = torch.rot90(v, k % 4, dims=(-2, -1))
    return out



# ------------------------------------------------------------------------------------------------
# Robust training pieces
# ------------------------------------------------------------------------------------------------
class _Discriminator(nn.Module):
    """Tells latent codes from samples of the standard-normal prior."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.flatten(1))


def _probe(net: nn.Module, prep: Preprocessing, data: _Data, cfg: TrainConfig,
           provenance: dict[str, Any] | None = None) -> AnomalyDetector:
    """A detector around the current network, only for :meth:`AnomalyDetector.analyse_units`
    (its density and calibration are placeholders)."""
    placeholder = Calibration(np.zeros(1), np.zeros(1), np.ones(1))
    det = AnomalyDetector(network=net, preprocessing=prep, mode=data.mode, size=data.size,
                          scoring=cfg.scoring, density=cast(Any, None), calibration=placeholder,
                          provenance=provenance if provenance is not None else {},
                          context=cfg.context, balance=cfg.balance,
                          segmentation=dict(data.info.get("segmentation", {})))
    return det


def _unit_errors(det: AnomalyDetector, units: np.ndarray,
                 masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The detector's image error of each unit (scoring map, reduction and foreground as at
    scoring time; ``masks`` as for :meth:`AnomalyDetector.analyse_units`); for
    ``error="mix"`` the map scales are taken from ``units`` when the detector has none yet."""
    if det.scoring.error == "mix" and "map_scales" not in det.provenance:
        _set_map_scales(det, units)
    return det.analyse_units(units, masks)["recon_error"]


def _set_map_scales(det: AnomalyDetector, units: np.ndarray) -> None:
    """Record the normals' typical squared-error and 1-SSIM levels, which ``error="mix"``
    divides by to put both maps on one scale before mixing them."""
    probe = det.analyse_units(units)
    det.provenance["map_scales"] = {"mse": float(np.median(probe["se_map"])) or 1.0,
                                    "ssim": float(np.median(probe["ssim_map"])) or 1.0}


def reject_outliers(errors: np.ndarray, z: float, max_fraction: float) -> np.ndarray:
    """Indices of the samples whose error is an outlier: robust z-score (median / MAD) of the
    log error above ``z``, at most the ``max_fraction`` largest.

    Image errors of normals are skewed to the right (roughly log-normal), so the z-score is
    taken on the log scale; on the linear scale the normals' own tail exceeds any fixed cut.
    """
    e = np.log(np.maximum(np.asarray(errors, dtype=np.float64), 1e-12))
    if e.size < 3:
        return np.zeros(0, dtype=np.int64)
    med, scale = robust_location_scale(e)
    score = (e - med) / scale
    cand = np.flatnonzero(score > z)
    k = int(np.floor(max_fraction * e.size))
    if cand.size > k:
        cand = cand[np.argsort(score[cand])[::-1][:k]]
    return np.sort(cand).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def train(images: Sequence[np.ndarray], config: TrainConfig | None = None, *,
          labels: Sequence[np.ndarray | None] | None = None,
          stop: Callable[[], bool] | None = None, names: Sequence[str] | None = None
          ) -> Generator[TrainProgress, None, AnomalyDetector]:
    """Train a detector on normal images, yielding progress after every step.

    Parameters
    ----------
    images : sequence of np.ndarray
        Normal 2-D images (any dtype; grayscale, RGB or RGBA).
    config : TrainConfig, optional
        Settings (defaults if None).
    labels : sequence of (np.ndarray or None), optional
        Cells mode: one label image per image (0 = background, one value per normal cell;
        only labelled objects are used), or None for an image whose cells are found by
        :func:`.cells.segment_cells`. Giving labels makes ``mode="auto"`` choose cells mode.
    stop : callable, optional
        Polled between steps; when it returns True training ends early, keeping the best
        checkpoint so far, and a usable detector is still returned.
    names : sequence of str, optional
        Image names for error messages and provenance.

    Yields
    ------
    TrainProgress

    Returns
    -------
    AnomalyDetector
        The trained, calibrated detector (the generator's return value).

    Raises
    ------
    ImageError
        For invalid images, or too few of them.
    TrainingStopped
        If ``stop`` ended training before its first step.
    """
    cfg = config or TrainConfig()
    if len(images) == 0:
        raise ImageError("no training images given")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    prep = Preprocessing.fit([np.asarray(im) for im in images], channels=cfg.channels)
    in_ch = 3 if prep.channels == "rgb" else 1
    mcfg = ModelConfig.from_preset(cfg.preset, in_channels=in_ch)
    net = build_model(mcfg)
    data = _prepare(images, cfg, prep, names, rng, labels, net.align)

    n_units = (len(data.train) if data.mode in UNIT_MODES
               else max(len(data.train) * cfg.patches_per_image, MIN_PATCHES_PER_EPOCH))
    steps_per_epoch = max(1, math.ceil(n_units / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)

    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                pct_start=0.15)
    weights = np.ones(n_units if data.mode in UNIT_MODES else 0, dtype=np.float32)
    disc = d_opt = None
    if cfg.robust and cfg.prior_weight > 0:
        with torch.no_grad():
            code_dim = net.encode(to_tensor(data.val[:1])).numel()
        disc = _Discriminator(code_dim)
        d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.lr * 0.5)
    bce = nn.BCEWithLogitsLoss()
    pretrain_epochs = max(1, epochs // 3)

    best_state = copy.deepcopy(net.state_dict())
    best_val: float | None = None
    val_loss: float | None = None
    step = 0
    stopped = False
    val_tensor = to_tensor(data.val)
    rejected_units: np.ndarray = np.zeros(0, dtype=np.int64)
    epochs_run = 0

    for epoch in range(1, epochs + 1):
        net.train()
        if data.mode in UNIT_MODES:
            order = rng.permutation(n_units)
        else:
            order = np.arange(n_units)
        running, seen = 0.0, 0
        for b in range(steps_per_epoch):
            if step >= total_steps:
                break
            if stop is not None and stop():
                stopped = True
                break
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            if data.mode in UNIT_MODES:
                x = to_tensor(data.train[idx])
                w = torch.from_numpy(weights[idx])
            else:
                src = rng.integers(0, len(data.train), size=len(idx))
                x = to_tensor(np.concatenate([random_patches(data.train[i], cfg.size, 1, rng)
                                            for i in src]))
                w = None
            if cfg.augment:
                x = _augment(x, gen).contiguous(memory_format=torch.channels_last)
            z = net.encode(x)
            y = net.decode(z)
            loss = errormaps.reconstruction_loss(x, y, cfg.loss, w)
            total = loss
            if disc is not None and d_opt is not None:
                if w is not None and bool((w > 0).any()):
                    z = z[w > 0]
                total = loss + cfg.prior_weight * bce(disc(z), torch.ones(len(z), 1))
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            if disc is not None and d_opt is not None:
                prior = torch.randn(z.shape, generator=gen)
                d_loss = (bce(disc(prior), torch.ones(len(z), 1))
                          + bce(disc(z.detach()), torch.zeros(len(z), 1)))
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                d_opt.step()
            step += 1
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
            elapsed = time.perf_counter() - t0
            yield TrainProgress("train", epoch, epochs, step, total_steps, running / seen,
                                val_loss, best_val, elapsed,
                                elapsed / step * (total_steps - step), False,
                                len(rejected_units))
        if seen:
            epochs_run = epoch
            val_loss = _evaluate(net, val_tensor, cfg.loss)
            if best_val is None or val_loss < best_val:
                best_val = val_loss
                best_state = copy.deepcopy(net.state_dict())
            if cfg.robust and data.mode in UNIT_MODES and epoch >= pretrain_epochs:
                errors = _unit_errors(_probe(net, prep, data, cfg), data.train,
                                      data.train_masks)
                net.train()
                rejected_units = reject_outliers(errors, cfg.reject_z, cfg.reject_nu)
                weights[:] = 1.0
                weights[rejected_units] = 0.0
        if stopped or step >= total_steps:
            break

    if step == 0:
        raise TrainingStopped("training was stopped before its first step; no model was made")
    net.load_state_dict(best_state)
    net.eval()
    elapsed = time.perf_counter() - t0
    yield TrainProgress("finalize", epochs_run, epochs, step, total_steps,
                        running / max(seen, 1), val_loss, best_val, elapsed, 0.0, stopped,
                        len(rejected_units))

    provenance = provenance_base(cfg.seed)
    provenance.update({
        "n_images": data.n_images,
        "n_train": len(data.train),
        "n_val": len(data.val),
        "holdout": data.holdout,
        "image_shapes": _shape_summary(data.shapes),
        "names": names[:1000],
        "epochs_run": epochs_run,
        "steps": step,
        "stopped_early": stopped,
        "best_val_loss": best_val,
        "train_seconds": round(elapsed, 2),
        "train_config": cfg.to_dict(),
    })
    if data.mode == "cells":
        provenance["cells"] = data.info
    rejected_images = [int(data.train_index[i]) for i in rejected_units]
    detector = _finalize(net, prep, data, cfg, provenance, rejected_units, rng)
    detector.rejected = rejected_images
    elapsed = time.perf_counter() - t0
    detector.provenance["train_seconds"] = round(elapsed, 2)
    yield TrainProgress("done", epochs_run, epochs, step, total_steps, running / max(seen, 1),
                        val_loss, best_val, elapsed, 0.0, stopped, len(rejected_units))
    return detector


def _evaluate(net: nn.Module, val: torch.Tensor, loss: str) -> float:
    net.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, val.shape[0], 128):
            x = val[start:start + 128]
            total += float(errormaps.per_sample_error(x, net(x), loss).sum())
    net.train()
    return total / val.shape[0]


def _codes(net: Autoencoder, units: np.ndarray) -> np.ndarray:
    net.eval()
    codes = encode_units(net, units)
    net.train()
    return codes


def _shape_summary(shapes: Sequence[tuple[int, ...]]) -> dict[str, Any]:
    hs = [s[0] for s in shapes]
    ws = [s[1] for s in shapes]
    return {"min": [min(hs), min(ws)], "max": [max(hs), max(ws)],
            "median": [float(np.median(hs)), float(np.median(ws))],
            "channels": sorted({s[2] if len(s) == 3 else 1 for s in shapes})}


def _finalize(net: nn.Module, prep: Preprocessing, data: _Data, cfg: TrainConfig,
              provenance: dict[str, Any], rejected: np.ndarray, rng: np.random.Generator
              ) -> AnomalyDetector:
    """Fit the latent density on training units and calibrate on held-out units."""
    if data.mode in UNIT_MODES:
        keep = np.setdiff1d(np.arange(len(data.train)), rejected)
        train_units = data.train[keep]
    else:
        per = max(1, 2000 // len(data.train))
        train_units = np.concatenate([random_patches(x, cfg.size, per, rng) for x in data.train])
    density = fit_density(cfg.scoring.density, _codes(net, train_units),
                          channels=net.config.latent_channels, seed=cfg.seed)
    # A provisional detector measures the calibration units; its calibration is replaced
    # below. Map scales come from the validation units, so no choice sees the calibration.
    det = _probe(net, prep, data, cfg, provenance)
    det.density = density
    if cfg.scoring.error == "mix":
        _set_map_scales(det, data.val)
    if data.mode == "patch" and data.calib is not None:
        # The windows of the calibration images, measured as at scoring time: from the tiled
        # map with context, restricted to the eroded foreground.
        fields = [det.analyse_field(x) for x in data.calib]
        errors = np.concatenate([f["recon_error"] for f in fields])
        log_dens = np.concatenate([f["log_density"] for f in fields])
        map_max = np.concatenate([f["map_max"] for f in fields])
    else:
        units, masks = ((cast(np.ndarray, data.calib), data.calib_masks)
                        if data.calib is not None else (data.val, data.val_masks))
        res = det.analyse_units(units, masks)
        errors, map_max = res["recon_error"], res["map_max"]
        log_dens = density.log_density(res["codes"])
        if data.train_shape is not None and cfg.cell_shape:
            det.shape = ShapeDensity.fit(data.train_shape[np.setdiff1d(
                np.arange(len(data.train)), rejected)])
            log_dens = log_dens + det.shape.log_density(data.calib_shape)
    keep = np.arange(len(errors))
    dropped = np.zeros(0, dtype=np.int64)
    if cfg.robust:
        # Robust calibration: held-out units can be contaminated too; trim the outliers by
        # the training rule (with a stricter cut) so they do not raise the thresholds. They
        # still count as calibration normals above every threshold (Calibration.n_trimmed),
        # so the false-alarm guarantee holds even if they were normal.
        dropped = reject_outliers(errors, cfg.calibration_z, cfg.reject_nu)
        if len(errors) - dropped.size >= 2:
            keep = np.setdiff1d(keep, dropped)
        else:
            dropped = np.zeros(0, dtype=np.int64)
        provenance["calibration_dropped"] = int(dropped.size)
        index = data.calib_index if data.calib is not None else data.val_index
        if index is not None:
            provenance["calibration_dropped_images"] = [int(index[i]) for i in dropped]
    det.calibration = Calibration(errors[keep], log_dens[keep], map_max[keep],
                                  n_trimmed=int(dropped.size))
    provenance["n_calibration"] = det.calibration.size
    if data.calib is not None:
        provenance["n_calibration_images"] = len(data.calib)
    return det


def run_training(images: Sequence[np.ndarray], config: TrainConfig | None = None, *,
                 labels: Sequence[np.ndarray | None] | None = None,
                 stop: Callable[[], bool] | None = None, names: Sequence[str] | None = None,
                 callback: Callable[[TrainProgress], None] | None = None) -> AnomalyDetector:
    """Run :func:`train` to the end and return the detector.

    Parameters
    ----------
    images, config, labels, stop, names
        As for :func:`train`.
    callback : callable, optional
        Called with every progress event.

    Returns
    -------
    AnomalyDetector
    """
    gen = train(images, config, labels=labels, stop=stop, names=names)
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            return done.value
        if callback is not None:
            callback(event)
