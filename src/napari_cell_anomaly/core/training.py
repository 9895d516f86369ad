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

import dataclasses
import math
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from . import errormaps
from .cellunits import ShapeDensity
from .density import fit_density
from .detector import AnomalyDetector, provenance_base
from .device import autocast, resolve_device, resolve_precision
from .errorchoice import AUTO, choose_error
from .images import ImageError, random_patches
from .mappass import encode_units, to_tensor
from .model import Autoencoder, ModelConfig, build_model
from .preprocessing import Preprocessing
from .scoring import Calibration, robust_location_scale
from .trainconfig import (  # noqa: F401  (re-exported: the public training API lives here)
    LOSSES,
    MIN_PATCHES_PER_EPOCH,
    MODES,
    PATCH_MODE_FACTOR,
    UNIT_MODES,
    TrainConfig,
    TrainingStopped,
    TrainProgress,
)
from .trainingdata import (  # noqa: F401
    CELLS_DENSITY,
    MIN_FIELDS_FOR_HOLDOUT,
    TrainingData,
    choose_mode,
    prepare,
    split_holdout,
)


def _augment(x: torch.Tensor, gen: torch.Generator, flips_only: bool = False) -> torch.Tensor:
    """Random flips and 90-degree rotations (the 8 symmetries of the square), per sample;
    with ``flips_only`` the 4 that keep the axes (none, left-right, up-down, both), for
    oriented cell windows.

    The choices are drawn from ``gen`` on the CPU (the same on every device) and applied on
    ``x``'s device."""
    kinds = torch.randint(0, 8, (x.shape[0],), generator=gen).to(x.device)
    if flips_only:
        kinds = kinds - kinds % 2  # rotations by 0 or 180 degrees, flipped or not
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


def _probe(net: nn.Module, prep: Preprocessing, data: TrainingData, cfg: TrainConfig,
           provenance: dict[str, Any] | None = None, precision: str = "fp32"
           ) -> AnomalyDetector:
    """A detector around the current network, only for :meth:`AnomalyDetector.analyse_units`
    (its density and calibration are placeholders)."""
    placeholder = Calibration(np.zeros(1), np.zeros(1), np.ones(1))
    det = AnomalyDetector(network=net, preprocessing=prep, mode=data.mode, size=data.size,
                          scoring=cfg.scoring, density=cast(Any, None), calibration=placeholder,
                          provenance=provenance if provenance is not None else {},
                          context=cfg.context, balance=cfg.balance,
                          orient=cfg.orient and data.mode == "cells",
                          segmentation=dict(data.info.get("segmentation", {})),
                          precision=precision)
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
          stop: Callable[[], bool] | None = None, names: Sequence[str] | None = None,
          device: str | torch.device = "auto", precision: str = "auto"
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
        :func:`.segmentation.segment_cells`. Giving labels makes ``mode="auto"`` choose cells mode.
    stop : callable, optional
        Polled between steps; when it returns True training ends early, keeping the best
        checkpoint so far, and a usable detector is still returned.
    names : sequence of str, optional
        Image names for error messages and provenance.
    device : str or torch.device
        Where the network trains: ``"auto"`` (CUDA, then Apple MPS, then the CPU), ``"cpu"``,
        ``"cuda"``, ``"cuda:N"`` or ``"mps"``. The returned detector's network stays there
        (:meth:`AnomalyDetector.to` moves it); the device is not recorded in the model. The
        initial weights, data split, sampling and augmentation are drawn on the CPU, so they
        do not depend on the device.
    precision : str
        The precision of the network's forward when the trained network measures units:
        robust training's rejections, the latent density's codes and the calibration
        (``"auto"``: bf16 where the device computes it natively, else fp32, and fp32 for
        a cells-mode model; see :func:`.device.resolve_precision`); the returned detector
        scores in it too. Not
        recorded as a setting in the model; ``provenance["calibration_precision"]`` says
        what the calibration ran in.

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
    DeviceError
        For an unknown device spec or a device this machine lacks, or (PrecisionError) a
        precision the device cannot run (before any work).
    TrainingStopped
        If ``stop`` ended training before its first step.
    """
    cfg = config or TrainConfig()
    dev = resolve_device(device)
    resolve_precision(precision, dev)  # a spec the device cannot run fails before any work
    if len(images) == 0:
        raise ImageError("no training images given")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    prep = Preprocessing.fit([np.asarray(im) for im in images], channels=cfg.channels,
                             names=cfg.channel_names)
    in_ch = prep.n_channels
    error_choice = "set by the caller"
    if cfg.scoring.error == AUTO:
        error, error_choice = choose_error(prep, images)
        cfg = dataclasses.replace(cfg, scoring=dataclasses.replace(cfg.scoring, error=error))
        error_choice = f"{error} chosen for {error_choice}"
    mcfg = ModelConfig.from_preset(cfg.preset, in_channels=in_ch)
    net = build_model(mcfg)
    data = prepare(images, cfg, prep, names, rng, labels, net.align)
    run_precision = resolve_precision(precision, dev, data.mode)  # auto: fp32 in cells mode
    step_precision = _step_precision(run_precision)
    net.init_output_bias(_dark_or_bright_start(_channel_means(data.train)))
    net.to(dev)

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
            code_dim = net.encode(to_tensor(data.val[:1], dev)).numel()
        disc = _Discriminator(code_dim).to(dev)
        d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.lr * 0.5)
    bce = nn.BCEWithLogitsLoss()
    flips_only = cfg.orient and data.mode == "cells"  # keep oriented cells' axes
    pretrain_epochs = max(1, epochs // 3)

    best_state = _cpu_state(net)
    best_val: float | None = None
    val_loss: float | None = None
    step = 0
    stopped = False
    val_tensor = to_tensor(data.val)  # on the CPU; moved to the device batch by batch
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
                x = to_tensor(data.train[idx], dev)
                w = torch.from_numpy(weights[idx]).to(dev)
            else:
                src = rng.integers(0, len(data.train), size=len(idx))
                x = to_tensor(np.concatenate([random_patches(data.train[i], cfg.size, 1, rng)
                                            for i in src]), dev)
                w = None
            if cfg.augment:
                x = _augment(x, gen, flips_only).contiguous(memory_format=torch.channels_last)
            with autocast(dev, step_precision):
                z = net.encode(x)
                y = net.decode(z)
            z, y = z.float(), y.float()  # no copy in fp32; the loss is float32
            loss = errormaps.reconstruction_loss(x, y, cfg.loss, w)
            total = loss
            if disc is not None and d_opt is not None:
                if w is not None and bool((w > 0).any()):
                    z = z[w > 0]
                total = loss + cfg.prior_weight * bce(disc(z), torch.ones(len(z), 1,
                                                                          device=dev))
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            if disc is not None and d_opt is not None:
                prior = torch.randn(z.shape, generator=gen).to(dev)
                d_loss = (bce(disc(prior), torch.ones(len(z), 1, device=dev))
                          + bce(disc(z.detach()), torch.zeros(len(z), 1, device=dev)))
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
                best_state = _cpu_state(net)
            if cfg.robust and data.mode in UNIT_MODES and epoch >= pretrain_epochs:
                errors = _unit_errors(_probe(net, prep, data, cfg, precision=run_precision),
                                      data.train,
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
        "error_choice": error_choice,
        "calibration_precision": run_precision,
    })
    rejected_images = [int(data.train_index[i]) for i in rejected_units]
    if data.mode == "cells":
        # Cells are rejected, not images: keep each field holding a rejected cell once.
        provenance["cells"] = {**data.info, "rejected_cells": len(rejected_units)}
        rejected_images = sorted(set(rejected_images))
    detector = _finalize(net, prep, data, cfg, provenance, rejected_units, rng,
                         run_precision)
    detector.rejected = rejected_images
    detector.precision = precision
    elapsed = time.perf_counter() - t0
    detector.provenance["train_seconds"] = round(elapsed, 2)
    yield TrainProgress("done", epochs_run, epochs, step, total_steps, running / max(seen, 1),
                        val_loss, best_val, elapsed, 0.0, stopped, len(rejected_units))
    return detector


#: Whether the optimisation steps' forward (and so its backward) runs in bfloat16 when the
#: training precision is bf16. Off: the steps stay float32 whatever ``precision`` says.
#: Measured on malaria (train/Uninfected, defaults, seed 0): val AUROC 0.9728 with bf16 steps
#: against 0.9726 in float32, and about 1.7x the images/s of the float32 steps on this CPU
#: (benchmarks/speed.py); one seed is not enough to make it the default.
BF16_STEPS = False


def _step_precision(precision: str) -> str:
    """The precision of the optimisation steps' forward: bf16 when training in bf16 and
    :data:`BF16_STEPS` is on, else fp32 (fp16 steps would need gradient scaling)."""
    return "bf16" if precision == "bf16" and BF16_STEPS else "fp32"


def _cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the network's weights on the CPU (the best checkpoint so far)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _evaluate(net: nn.Module, val: torch.Tensor, loss: str) -> float:
    net.eval()
    device = next(net.parameters()).device
    total = 0.0
    with torch.inference_mode():
        for start in range(0, val.shape[0], 128):
            x = val[start:start + 128].to(device)
            total += float(errormaps.per_sample_error(x, net(x), loss).sum())
    net.train()
    return total / val.shape[0]


def _codes(net: Autoencoder, units: np.ndarray, precision: str = "fp32") -> np.ndarray:
    net.eval()
    codes = encode_units(net, units, precision=precision)
    net.train()
    return codes


def _shape_summary(shapes: Sequence[tuple[int, ...]]) -> dict[str, Any]:
    hs = [s[0] for s in shapes]
    ws = [s[1] for s in shapes]
    return {"min": [min(hs), min(ws)], "max": [max(hs), max(ws)],
            "median": [float(np.median(hs)), float(np.median(ws))],
            "channels": sorted({s[2] if len(s) == 3 else 1 for s in shapes})}


def _finalize(net: nn.Module, prep: Preprocessing, data: TrainingData, cfg: TrainConfig,
              provenance: dict[str, Any], rejected: np.ndarray, rng: np.random.Generator,
              precision: str = "fp32") -> AnomalyDetector:
    """Fit the latent density on training units and calibrate on held-out units."""
    if data.mode in UNIT_MODES:
        keep = np.setdiff1d(np.arange(len(data.train)), rejected)
        train_units = data.train[keep]
    else:
        per = max(1, 2000 // len(data.train))
        train_units = np.concatenate([random_patches(x, cfg.size, per, rng) for x in data.train])
    kind = CELLS_DENSITY if data.mode == "cells" else cfg.scoring.density
    density = fit_density(kind, _codes(net, train_units, precision),
                          channels=net.config.latent_channels, seed=cfg.seed)
    # A provisional detector measures the calibration units; its calibration is replaced
    # below. Map scales come from the validation units, so no choice sees the calibration.
    det = _probe(net, prep, data, cfg, provenance, precision)
    det.density = density
    det.scoring = dataclasses.replace(cfg.scoring, density=kind)
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
    shape_logd = None
    if data.train_shape is not None and data.calib_shape is not None and cfg.cell_shape:
        det.shape = ShapeDensity.fit(data.train_shape[np.setdiff1d(
            np.arange(len(data.train)), rejected)])
        shape_logd = det.shape.log_density(data.calib_shape)
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
    # Cells mode: the field of each calibration cell, so that the thresholds count how much
    # the calibration fields differ (Calibration.groups, core.fieldconformal).
    fields = data.calib_index if data.mode == "cells" and data.calib is not None else None
    det.calibration = Calibration(errors[keep], log_dens[keep], map_max[keep],
                                  n_trimmed=int(dropped.size),
                                  shape_log_densities=None if shape_logd is None
                                  else shape_logd[keep],
                                  groups=None if fields is None else fields[keep],
                                  trimmed_groups=None if fields is None else fields[dropped])
    provenance["n_calibration"] = det.calibration.size
    if data.calib is not None:
        provenance["n_calibration_images"] = len(data.calib)
    return det


def _channel_means(units: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Mean preprocessed intensity per channel of training units ``(..., C)``."""
    if isinstance(units, np.ndarray):
        return units.reshape(-1, units.shape[-1]).mean(axis=0, dtype=np.float64)
    sums = sum(u.reshape(-1, u.shape[-1]).sum(axis=0, dtype=np.float64) for u in units)
    return sums / sum(u.shape[0] * u.shape[1] for u in units)


#: A channel whose mean training intensity lies outside this range starts at its mean.
MID_RANGE = (0.15, 0.85)


def _dark_or_bright_start(means: np.ndarray) -> np.ndarray:
    """Starting output of each channel: its mean where it lies outside :data:`MID_RANGE`,
    else NaN (the random start, whose sigmoid output begins near 0.5).

    Mostly dark images (fluorescence: a black background and a few bright nuclei) otherwise
    let the network settle on a constant black output (measured on synthetic fluorescence:
    correlation of reconstruction and input 0.00 without, 0.99 with). Mid-range channels keep
    the random start: starting them at their mean made robust training's first rejection
    (after the first third of the epochs) miss the anomalous images in 3 of 6 synthetic runs
    against 1 of 6, as the network had already learnt them.
    """
    low, high = MID_RANGE
    return np.where((means < low) | (means > high), means, np.nan)


def run_training(images: Sequence[np.ndarray], config: TrainConfig | None = None, *,
                 labels: Sequence[np.ndarray | None] | None = None,
                 stop: Callable[[], bool] | None = None, names: Sequence[str] | None = None,
                 callback: Callable[[TrainProgress], None] | None = None,
                 device: str | torch.device = "auto", precision: str = "auto"
                 ) -> AnomalyDetector:
    """Run :func:`train` to the end and return the detector.

    Parameters
    ----------
    images, config, labels, stop, names, device, precision
        As for :func:`train`.
    callback : callable, optional
        Called with every progress event.

    Returns
    -------
    AnomalyDetector
    """
    gen = train(images, config, labels=labels, stop=stop, names=names, device=device,
                precision=precision)
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            return done.value
        if callback is not None:
            callback(event)
