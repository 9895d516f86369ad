"""Training settings and progress events (:class:`TrainConfig`, :class:`TrainProgress`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .modelconfig import ModelConfig
from .scoring import ScoringConfig

#: Cells mode: what surrounds a cell in its window (see :mod:`.cellunits`).
CONTEXTS = ("isolate", "keep")

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
        (cells from the given label images, or found by :func:`.segmentation.segment_cells`); the
        window side comes from the training cells' sizes and ``size`` is not used. ``auto``
        picks ``cells`` when label images are given, else ``whole`` or ``patch`` from the
        image sizes.
    preset : {"default", "seed"}
        Network preset (see :mod:`.model`).
    channels : {"rgb", "gray", "multi"} or None
        Channel layout (see :class:`.preprocessing.Preprocessing`); None: ``"gray"`` for one
        channel, ``"rgb"`` for 3-channel (or RGBA) ``uint8`` images, else ``"multi"``.
    val_fraction : float
        Fraction of images (whole mode), of fields (cells mode) or of each image's rows (patch
        mode, few images; cells mode, fewer than 3 fields) held out for the choice of the best
        checkpoint (and the map scales of ``error="mix"``).
    calibration_fraction : float
        Fraction of images, fields (or rows) held out, apart from those, to calibrate the
        thresholds
        only: no choice sees them, so the false-alarm rate holds on new normals
        (see :func:`split_holdout`).
    patches_per_image : int
        Patches drawn from each training image per epoch (patch mode; at least
        ``MIN_PATCHES_PER_EPOCH`` in all).
    augment : bool
        Random flips and 90-degree rotations.
    robust : bool
        Iterative rejection of the training samples with the most anomalous image error
        (whole and cells modes), and the same rejection among the calibration units. The adversarial
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
    orient : bool
        Cells mode: turn every cell window so the cell's major axis runs along the columns
        before the network sees it (see :func:`.cellunits.orient_units`); the augmentation
        then only flips (which keeps the axes). On by default (Chula RBC-12 dev fields,
        3 seeds: per-cell AUROC +0.011 to +0.020, docs/benchmarks.md).
    cell_shape : bool
        Cells mode: add the density of the cells' morphometry (size, outline, elongation,
        pallor, colour) to the latent density (see :class:`.cellunits.ShapeDensity`).
    max_steps : int or None
        Stop after this many steps in total (for quick tests and previews).
    channel_names : tuple of str or None
        Names of the channels in the model's order (e.g. napari layer names), recorded in
        the model and used in messages.
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
    orient: bool = True
    cell_shape: bool = True
    max_steps: int | None = None
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    channel_names: tuple[str, ...] | None = None

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
