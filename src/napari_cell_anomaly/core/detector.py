"""The trained anomaly detector: network + preprocessing + latent density + calibration.

An :class:`AnomalyDetector` scores 2-D images of any size. In ``whole`` mode (single-cell crops)
each image is resized to the model size and scored as one unit. In ``patch`` mode (large fields
of view) the network runs over the image at native resolution through overlapping tiles, and
the image's numbers are those of its most anomalous ``size x size`` window. In ``cells`` mode
the unit is one cell: a native-scale ``size x size`` window centred on it (see
:mod:`.cellunits`), and :meth:`AnomalyDetector.score_cells` gives one row per cell.
"""

from __future__ import annotations

import datetime as _dt
import logging
import platform
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import errormaps, mappass
from .cellscoring import CellScoring
from .cellunits import (
    CONTEXTS,
    ShapeDensity,
)
from .density import Density, density_from_arrays
from .device import autocast, module_device, resolve_device, resolve_precision
from .images import ImageError, resize
from .mappass import foreground_mask, to_numpy, to_tensor
from .model import Autoencoder, ModelConfig, build_model
from .modelfile import ModelFileError, load_file, save_file
from .preprocessing import Preprocessing
from .scoring import DEFAULT_FPR, Calibration, ScoringConfig, reduce_map

logger = logging.getLogger(__name__)

MODES = ("whole", "patch", "cells")
#: A whole-mode model refuses images whose longer side exceeds this many times the median
#: longer side of its training images: squeezed into the model size, a field would be a blur.
WHOLE_MODE_MAX_FACTOR = 4
#: Between this factor and :data:`WHOLE_MODE_MAX_FACTOR`, a whole-mode model looks for cells in
#: the image (built-in segmentation) and refuses it when it finds
#: :data:`WHOLE_MODE_MAX_CELLS` or more away from the image edge: a small field, not a large
#: crop of one cell. (Of the 4,100 NIH malaria crops, none over this factor holds more than 2
#: objects, edge or not.)
WHOLE_MODE_CHECK_FACTOR = 2
WHOLE_MODE_MAX_CELLS = 3


@dataclass
class ScoreResult:
    """Everything the detector says about one image.

    Attributes
    ----------
    score : float
        Combined anomaly score (higher = more anomalous).
    recon_error : float
        Image reconstruction error.
    log_density : float
        Latent log-density under the density model of the training normals' codes (of the
        least likely latent position for "kde" and "gmm"; lower = more unusual).
    percentile : float
        Percent of calibration normals that score lower.
    is_anomaly : bool
        Dual-criterion verdict at the false-alarm rate used for scoring.
    threshold : float
        The combined-score threshold behind ``is_anomaly``.
    error_map : np.ndarray
        ``(H, W)`` float32 smoothed per-pixel error (the heatmap), at the input's size.
    ssim_map : np.ndarray or None
        ``(H, W)`` float32 smoothed ``1 - SSIM`` map; None when the model's error map does
        not use SSIM (``ScoringConfig.error`` "lab" or "mse", the default "lab"), as it is
        then not computed.
    reconstruction : np.ndarray
        ``(H, W, C)`` float32 reconstruction in the normalised [0, 1] space.
    n_windows : int
        Model-size windows the image was judged on (1 in whole mode). In patch mode the
        image's numbers are those of its worst window and its score is adjusted for the
        number of windows (see :meth:`Calibration.window_adjusted`); pass ``n_windows`` to
        :meth:`Calibration.pixel_threshold` for the above-threshold region.
    region : np.ndarray or None
        ``(H, W)`` bool: the pixels the verdict looks at (the eroded foreground when
        ``ScoringConfig.foreground``), None for every pixel. The pixel threshold is calibrated
        on these pixels; draw outlines with :meth:`anomaly_region`.
    clipped_fraction : float
        Fraction of the image's values outside the model's training intensity range (clipped
        by the preprocessing; see :meth:`.preprocessing.Preprocessing.transform`).
    range_warning : str or None
        One line when the image lies outside the training range (many values clipped, or
        another integer bit depth than the training images), else None; also logged.
    """

    score: float
    recon_error: float
    log_density: float
    percentile: float
    is_anomaly: bool
    threshold: float
    error_map: np.ndarray
    ssim_map: np.ndarray | None
    reconstruction: np.ndarray
    n_windows: int = 1
    region: np.ndarray | None = None
    clipped_fraction: float = 0.0
    range_warning: str | None = None

    def anomaly_region(self, level: float) -> np.ndarray:
        """``(H, W)`` bool: pixels of :attr:`region` whose error map exceeds ``level``
        (``Calibration.pixel_threshold(fpr, n_windows)``)."""
        above = self.error_map > level
        return above & self.region if self.region is not None else above

    def as_row(self) -> dict[str, float | int]:
        """The numbers of this result, as written to a CSV row."""
        return {"score": self.score, "recon_error": self.recon_error,
                "log_density": self.log_density, "is_anomaly": int(self.is_anomaly),
                "percentile": self.percentile, "clipped_fraction": self.clipped_fraction}


@dataclass
class AnomalyDetector(CellScoring):
    """A trained, calibrated anomaly detector.

    Attributes
    ----------
    network : Autoencoder
        The autoencoder (eval mode, channels_last), on the device it runs on (see
        :attr:`device`, :meth:`to`); everything else is NumPy on the CPU.
    preprocessing : Preprocessing
        Channel mode and intensity normalisation, repeated exactly at scoring time.
    mode : {"whole", "patch"}
        How images are fed to the network (see module docstring).
    size : int
        Model input side in pixels (resize target in whole mode; window in patch mode).
    scoring : ScoringConfig
        How maps become image errors.
    density : LocalLatentKDE or LocalLatentDensity or LatentDensity
        Density of training normals' latent codes (kind named by ``scoring.density``; see
        :mod:`.density`).
    calibration : Calibration
        Held-out normals' statistics; all thresholds derive from it.
    provenance : dict
        Training data summary, settings, package versions, date, seed.
    rejected : list of int
        Indices of training images rejected by robust training (cells mode: of the fields
        holding rejected cells; their number is in ``provenance["cells"]``).
    context : {"isolate", "keep"}
        Cells mode: what surrounds a cell in its window (see :mod:`.cellunits`).
    balance : bool
        Cells mode: balance each field by its background colour before cutting windows.
    orient : bool
        Cells mode: the network sees each cell turned to canonical orientation
        (:func:`.cellunits.orient_units`).
    shape : ShapeDensity or None
        Cells mode: density of the training cells' morphometry; a cell's log-density is its
        code's plus its shape's (see :class:`.cellunits.ShapeDensity`).
    segmentation : dict
        Cells mode: keyword arguments of :func:`.segmentation.segment_cells` used when no labels
        are given (the training fields' image kind, so scoring segments alike).
    precision : {"auto", "fp32", "bf16", "fp16"}
        The precision the network's forward runs in (a runtime choice like the device, never
        saved; see :func:`.device.resolve_precision` and :attr:`run_precision`): ``"auto"``
        = bf16 where the device computes it natively, else fp32 (always fp32 in cells mode).
    """

    network: Autoencoder
    preprocessing: Preprocessing
    mode: str
    size: int
    scoring: ScoringConfig
    density: Density
    calibration: Calibration
    provenance: dict[str, Any] = field(default_factory=dict)
    rejected: list[int] = field(default_factory=list)
    context: str = "isolate"
    balance: bool = True
    orient: bool = False
    shape: ShapeDensity | None = None
    segmentation: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}; expected one of {CONTEXTS}")
        if self.scoring.error == "auto":
            raise ValueError("a detector needs a concrete error kind; training resolves "
                             "error='auto' (see core.errorchoice)")
        resolve_precision(self.precision, self.device)  # a bad spec fails here, in one line
        self.network.eval()

    # -- properties ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device the network runs on (a runtime choice, not saved with the model)."""
        return module_device(self.network)

    @property
    def run_precision(self) -> str:
        """The precision the network runs in on its device now: ``"fp32"``, ``"bf16"`` or
        ``"fp16"`` (:attr:`precision` resolved by :func:`.device.resolve_precision`)."""
        return resolve_precision(self.precision, self.device, self.mode)

    def autocast(self) -> Any:
        """The context the network's forward runs in (:func:`.device.autocast` with
        :attr:`run_precision`); cast its outputs to float32 before measuring them."""
        return autocast(self.device, self.run_precision)

    def to(self, device: str | torch.device, precision: str | None = None
           ) -> AnomalyDetector:
        """Move the network to ``device`` (and set the precision) and return this detector.

        Parameters
        ----------
        device : str or torch.device
            ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (see
            :func:`.device.resolve_device`).
        precision : str, optional
            ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :attr:`precision`); by
            default the detector's precision is kept.

        Returns
        -------
        AnomalyDetector
            ``self``, for chaining (``AnomalyDetector.load(path).to("cuda")``).

        Raises
        ------
        DeviceError
            For an unknown spec or a device this machine lacks; a PrecisionError (a
            DeviceError) for a precision the device cannot run. Nothing changes then.
        """
        target = resolve_device(device)
        precision = self.precision if precision is None else precision
        resolve_precision(precision, target)
        self.network.to(target)
        self.precision = precision
        return self

    @property
    def channels(self) -> str:
        """``"rgb"``, ``"gray"`` or ``"multi"`` (see :class:`.preprocessing.Preprocessing`)."""
        return self.preprocessing.channels

    def describe_input(self) -> str:
        """The model's input channels in words, e.g. ``"RGB"``, ``"2 channels (DAPI,
        GFP)"``."""
        prep = self.preprocessing
        if prep.channels != "multi":
            return prep.channels.upper()
        names = f" ({', '.join(prep.names)})" if prep.names else ""
        return f"{prep.n_channels} channels{names}"

    def summary(self) -> str:
        """A human-readable, multi-line description of the model."""
        p = self.provenance
        crit = self.calibration.criteria(DEFAULT_FPR)
        # What the counts count: patch mode trains on images and holds out windows.
        train, held_unit = {"patch": ("images", " windows"), "cells": ("cells", " cells")
                            }.get(self.mode, ("", ""))
        held = f"{p.get('n_val', '?')}{held_unit} held out for checkpoint choice"
        if "n_calibration" in p:
            held += f", {p['n_calibration']} for calibration"
        lines = [
            f"Trained {p.get('date', '?')} on {p.get('n_images', '?')} images "
            f"({p.get('n_train', '?')} {train + ' ' if train else ''}for training, {held}), "
            f"{p.get('epochs_run', '?')} epochs, seed {p.get('seed', '?')}",
            f"Input: {self.describe_input()}, {self.mode} mode, {self.size} px, "
            f"preset {self.network.config.preset}",
            self.describe_rate(DEFAULT_FPR),
            f"At {100 * DEFAULT_FPR:g}% false alarms: error > {crit['recon_error']:.4g} or "
            f"log-density < {crit['log_density']:.4g}"
            + (f" or shape log-density < {crit['shape_log_density']:.4g}"
               if "shape_log_density" in crit else ""),
        ]
        n_cells = p.get("cells", {}).get("rejected_cells") if self.mode == "cells" else None
        if self.rejected and n_cells is not None:  # cells are rejected, not their fields
            lines.append(f"Robust training rejected {n_cells} training cells (in "
                         f"{len(self.rejected)} of the training images)")
        elif self.rejected:
            lines.append(f"Robust training rejected {len(self.rejected)} training images")
        return "\n".join(lines)

    @property
    def calibration_unit(self) -> str:
        """What the calibration normals are: normal images, windows or cells."""
        return {"patch": "normal windows", "cells": "normal cells"}.get(self.mode, "normals")

    def describe_rate(self, fpr: float = DEFAULT_FPR) -> str:
        """One line on the false-alarm rate ``fpr``: calibration size, 95% interval of the
        true rate and any warning (:meth:`Calibration.describe`)."""
        return self.calibration.describe(fpr, unit=self.calibration_unit)

    # -- network passes -----------------------------------------------------------------------
    @property
    def uses_ssim(self) -> bool:
        """Whether the error map needs the 1-SSIM map (``error`` "ssim" or "mix")."""
        return self.scoring.error in ("ssim", "mix")

    def _maps(self, x: torch.Tensor, y: torch.Tensor, with_ssim: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Smoothed squared-error (RGB, or L*a*b* for ``error="lab"``) and 1-SSIM maps,
        ``(N, 1, H, W)`` each; without SSIM (zeros) when ``with_ssim`` is False and the
        primary map does not need it."""
        sigma = self.scoring.sigma
        if self.scoring.error == "lab":
            se = errormaps.gaussian_blur(errormaps.lab_error_map(x, y), sigma)
        else:
            se = errormaps.gaussian_blur(errormaps.squared_error_map(x, y), sigma)
        if not with_ssim and self.scoring.error in ("mse", "lab"):
            return se, torch.zeros_like(se)
        dssim = errormaps.gaussian_blur(1.0 - errormaps.ssim_map(x, y), sigma)
        return se, dssim

    def _primary(self, se: np.ndarray, dssim: np.ndarray | None) -> np.ndarray:
        if self.scoring.error in ("mse", "lab"):
            return se
        if self.scoring.error == "ssim":
            return dssim
        return 0.5 * (se / self.calibration_scale("mse") + dssim / self.calibration_scale("ssim"))

    def calibration_scale(self, kind: str) -> float:
        """Typical map level of normals for ``kind`` (used to mix maps on one scale)."""
        return float(self.provenance.get("map_scales", {}).get(kind, 1.0)) or 1.0

    def _foreground(self, x: np.ndarray) -> np.ndarray | None:
        """Object mask ``(H, W)`` of a preprocessed image, or None when not restricting."""
        if not self.scoring.foreground:
            return None
        return foreground_mask(x, erode=self.scoring.erode)

    def analyse_units(self, units: np.ndarray, masks: Sequence[np.ndarray] | None = None,
                      with_ssim: bool = True) -> dict[str, np.ndarray]:
        """Run the network on model-size units and measure them.

        Parameters
        ----------
        units : np.ndarray
            ``(N, size, size, C)`` preprocessed float32 images.
        masks : sequence of np.ndarray, optional
            ``(size, size)`` bool per unit: the pixels its error is reduced over (cells mode:
            the cell's eroded mask). By default the object found by :func:`.mappass.foreground_mask`
            when the scoring restricts to the foreground, else every pixel.

        Returns
        -------
        dict
            ``codes`` (N, D), ``recon`` (N, size, size, C), ``se_map``, ``ssim_map`` and the
            primary ``error_map`` (N, size, size), ``recon_error`` (N,), ``map_max`` (N,)
            (over the pixels the verdict looks at), ``region`` (N, size, size) bool.
        """
        out: dict[str, list[np.ndarray]] = {k: [] for k in
                                            ("codes", "recon", "se_map", "ssim_map")}
        device = self.device
        with torch.inference_mode():
            for start in range(0, len(units), 64):
                x = to_tensor(units[start:start + 64], device)
                with self.autocast():
                    z = self.network.encode(x)
                    y = self.network.decode(z)
                z, y = z.float(), y.float()  # no copy in fp32
                se, dssim = self._maps(x, y, with_ssim)
                out["codes"].append(to_numpy(z.flatten(1)))
                out["recon"].append(to_numpy(y.permute(0, 2, 3, 1)))
                out["se_map"].append(to_numpy(se[:, 0]))
                out["ssim_map"].append(to_numpy(dssim[:, 0]))
        res = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}
        res["error_map"] = self._primary(res["se_map"], res["ssim_map"]).astype(np.float32)
        errors, maxima, regions = [], [], []
        for i, (x, m) in enumerate(zip(units, res["error_map"], strict=True)):
            mask = self._region(x, masks[i] if masks is not None else None)
            errors.append(reduce_map(m, self.scoring.reduce, mask))
            maxima.append(float(m[mask].max()))
            regions.append(mask)
        res["recon_error"] = np.asarray(errors)
        res["map_max"] = np.asarray(maxima)
        res["region"] = (np.stack(regions) if regions
                         else np.zeros((0, self.size, self.size), dtype=bool))
        return res

    def _region(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Pixels of a preprocessed unit that its numbers come from: ``mask`` when given,
        else the foreground mask; every pixel when not restricting or when the mask is empty
        (as in ``reduce_map``)."""
        if mask is None:
            mask = self._foreground(x)
        return mask if mask is not None and mask.any() else np.ones(x.shape[:2], dtype=bool)

    # -- scoring ------------------------------------------------------------------------------
    def score(self, image: np.ndarray, *, fpr: float | None = None, name: str = "image",
              stop: Callable[[], bool] | None = None,
              channel_axis: int | None = None) -> ScoreResult:
        """Score one 2-D image.

        Parameters
        ----------
        image : np.ndarray
            ``(H, W)`` or ``(H, W, C)`` (channels last) array of any numeric dtype, with the
            model's channels (see :class:`.preprocessing.Preprocessing`).
        fpr : float, optional
            Target false-alarm rate for the verdict (default 5%).
        name : str
            Used in error messages.
        stop : callable, optional
            Patch mode: called between batches of tiles and of windows; when it returns True,
            scoring ends by raising :class:`~.tiling.PredictionStopped`.
        channel_axis : int, optional
            The axis holding the channels when ``image`` is not channels-last (e.g. 0 for a
            ``(C, H, W)`` array).

        Returns
        -------
        ScoreResult
            With ``clipped_fraction`` and ``range_warning`` (logged as a warning when set).

        Raises
        ------
        napari_cell_anomaly.core.images.ImageError
            If the image is not a valid 2-D image or its channels do not match the model.
        """
        fpr = DEFAULT_FPR if fpr is None else fpr
        if channel_axis is not None:
            image = np.moveaxis(np.asarray(image), channel_axis, -1)
        if self.mode == "cells":
            return self.score_field(image, fpr=fpr, name=name)[0]
        x, clipped = self.preprocessing.transform(image, name=name)
        if self.mode == "whole":
            self._check_whole_scale(x, name)
            result = self._score_whole(x, fpr)
        elif min(x.shape[:2]) < self.size:
            label = "image" if name == "image" else f"image {name!r}"
            raise ImageError(f"{label} is {x.shape[0]}x{x.shape[1]} pixels; this patch-mode "
                             f"model needs at least {self.size} pixels per side")
        else:
            result = self._score_patch(x, fpr, stop)
        return self._note_range(result, clipped, np.asarray(image).dtype, name)

    def _note_range(self, result: ScoreResult, clipped: float, dtype: Any, name: str
                    ) -> ScoreResult:
        """Record how much of the image the intensity range clipped; warn (log) when far
        outside the training range."""
        result.clipped_fraction = clipped
        result.range_warning = self.preprocessing.range_warning(clipped, dtype, name)
        if result.range_warning:
            logger.warning("%s", result.range_warning)
        return result

    def trained_side(self) -> float | None:
        """Median longer side (pixels) of the training images, when recorded."""
        median = self.provenance.get("image_shapes", {}).get("median")
        return float(max(median[0], median[1])) if median else None

    def _check_whole_scale(self, x: np.ndarray, name: str) -> None:
        """Refuse a field far larger than the crops a whole-mode model was trained on.

        Images over :data:`WHOLE_MODE_MAX_FACTOR` times the training crops' median side are
        refused outright; images over :data:`WHOLE_MODE_CHECK_FACTOR` times it when the
        built-in segmentation finds :data:`WHOLE_MODE_MAX_CELLS` or more cells in them that
        the image edge does not cut.
        """
        side = self.trained_side()
        longer = max(x.shape[:2])
        if side is None or longer <= WHOLE_MODE_CHECK_FACTOR * side:
            return
        found = ""
        if longer <= WHOLE_MODE_MAX_FACTOR * side:
            from skimage.segmentation import clear_border

            from .segmentation import segment_cells  # only for images in the doubtful range

            # cells cut by the image edge do not count: a large crop of one cell shows parts
            # of its neighbours there
            n_cells = len(np.unique(clear_border(segment_cells(x)))) - 1
            if n_cells < WHOLE_MODE_MAX_CELLS:
                return
            found = f" and holds about {n_cells} cells"
        label = "the image" if name == "image" else f"image {name!r}"
        raise ImageError(
            f"{label} is {x.shape[0]}x{x.shape[1]} pixels{found} but this whole-image model was "
            f"trained on single-cell crops of about {side:.0f} px; squeezed into its {self.size} "
            "px input it would be a blur: score it per cell (find cells or give labels) or train "
            "a patch- or cells-mode model on such fields")

    def iter_scores(self, images: Iterable[np.ndarray], *, fpr: float | None = None,
                    names: Sequence[str] | None = None) -> Iterator[ScoreResult]:
        """Score images one by one (a generator, so callers can report progress or stop)."""
        for i, image in enumerate(images):
            yield self.score(image, fpr=fpr, name=names[i] if names else f"image {i}")

    def _image_score(self, err: float, logd: float, shape_logd: float | None,
                     n_windows: int) -> tuple[float, float]:
        """An image's score and percentile from its worst unit's numbers: the combined
        score, adjusted for the ``n_windows`` units judged (:meth:`Calibration.window_adjusted`)
        when there are several."""
        cal = self.calibration
        score = float(cal.combine(err, logd, shape_logd))
        if n_windows > 1:
            return cal.window_adjusted(score, n_windows)
        return score, float(cal.percentile(score)[0])

    def _finish(self, err: float, logd: float, fpr: float, error_map: np.ndarray,
                ssim_map: np.ndarray | None, recon: np.ndarray, n_windows: int = 1,
                region: np.ndarray | None = None, shape_logd: float | None = None
                ) -> ScoreResult:
        cal = self.calibration
        score, percentile = self._image_score(err, logd, shape_logd, n_windows)
        threshold = cal.threshold(fpr)
        return ScoreResult(
            score=score, recon_error=float(err), log_density=float(logd),
            percentile=percentile, is_anomaly=bool(score > threshold),
            threshold=threshold, error_map=error_map.astype(np.float32, copy=False),
            ssim_map=(ssim_map.astype(np.float32, copy=False)
                      if ssim_map is not None and self.uses_ssim else None),
            reconstruction=recon.astype(np.float32, copy=False), n_windows=n_windows,
            region=None if region is None or region.all() else region,
        )

    def _score_whole(self, x: np.ndarray, fpr: float) -> ScoreResult:
        h, w = x.shape[:2]
        unit = resize(x, (self.size, self.size))[None]
        res = self.analyse_units(unit, with_ssim=False)
        logd = float(self.density.log_density(res["codes"])[0])

        def back(a: np.ndarray) -> np.ndarray:
            return resize(a, (h, w)) if (h, w) != (self.size, self.size) else a

        region = back(res["region"][0].astype(np.float32)) > 0.5
        ssim = back(res["ssim_map"][0]) if self.uses_ssim else None
        return self._finish(res["recon_error"][0], logd, fpr, back(res["error_map"][0]),
                            ssim, back(res["recon"][0]), region=region)

    def analyse_field(self, x: np.ndarray, stop: Callable[[], bool] | None = None
                      ) -> dict[str, np.ndarray]:
        """Run the network over a preprocessed image in overlapping tiles (patch mode) and
        measure each model-size window: :func:`.mappass.analyse_field` (see there for the
        returned maps and per-window numbers)."""
        return mappass.analyse_field(self, x, stop)

    def _score_patch(self, x: np.ndarray, fpr: float,
                     stop: Callable[[], bool] | None = None) -> ScoreResult:
        res = self.analyse_field(x, stop)
        # Image numbers: the most anomalous model-size window (the calibration unit).
        scores = self.calibration.combine(res["recon_error"], res["log_density"])
        worst = int(np.argmax(scores))
        return self._finish(res["recon_error"][worst], res["log_density"][worst], fpr,
                            res["error_map"], res["ssim_map"], res["recon"],
                            n_windows=len(scores), region=res["region"])

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the detector to one safe file (atomic; see :mod:`.modelfile`)."""
        tensors = {"net." + k: v.detach().cpu().contiguous().numpy()
                   for k, v in self.network.state_dict().items()}
        tensors.update(self.density.to_arrays())
        tensors.update(self.calibration.to_arrays())
        if self.shape is not None:
            tensors.update(self.shape.to_arrays())
        tensors["rejected"] = np.asarray(self.rejected, dtype=np.int64)
        meta = {
            "model": self.network.config.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "mode": self.mode,
            "size": self.size,
            "scoring": self.scoring.to_dict(),
            "provenance": self.provenance,
        }
        if self.mode == "cells":
            meta["cells"] = {"context": self.context, "balance": self.balance,
                             "orient": self.orient, "segmentation": self.segmentation}
        save_file(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "auto",
             precision: str = "auto") -> AnomalyDetector:
        """Read a detector written by :meth:`save`.

        Parameters
        ----------
        path : str or Path
            The model file.
        device : str or torch.device
            Where the network runs: ``"auto"`` (CUDA, then Apple MPS, then the CPU),
            ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``. The file records no device, so
            any model loads on any of them.
        precision : str
            The network's precision there: ``"auto"`` (bf16 where the device computes it
            natively, else fp32; fp32 for a cells-mode model), ``"fp32"``, ``"bf16"`` or
            ``"fp16"`` (CUDA); see :func:`.device.resolve_precision`. Not recorded in the file
            either.

        Raises
        ------
        DeviceError
            For an unknown device spec or a device this machine lacks, or (PrecisionError)
            a precision the device cannot run (checked before the file is read).
        ModelFileError
            One-line message for missing, corrupt, tampered or incompatible files.
        """
        target = resolve_device(device)
        resolve_precision(precision, target)
        tensors, meta = load_file(path)
        try:
            config = ModelConfig.from_dict(meta["model"])
            network = build_model(config)
            state = {k[4:]: torch.from_numpy(v.copy()) for k, v in tensors.items()
                     if k.startswith("net.")}
            network.load_state_dict(state, strict=True)
            scoring = ScoringConfig.from_dict(meta["scoring"])
            detector = cls(
                network=network,
                preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
                mode=str(meta["mode"]), size=int(meta["size"]),
                scoring=scoring,
                density=density_from_arrays(scoring.density, tensors),
                calibration=Calibration.from_arrays(tensors),
                provenance=dict(meta.get("provenance", {})),
                rejected=[int(i) for i in tensors.get("rejected", np.zeros(0, np.int64))],
                context=str(meta.get("cells", {}).get("context", "isolate")),
                balance=bool(meta.get("cells", {}).get("balance", True)),
                orient=bool(meta.get("cells", {}).get("orient", False)),
                shape=ShapeDensity.from_arrays(tensors),
                segmentation=dict(meta.get("cells", {}).get("segmentation", {})),
                precision=precision,
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelFileError(f"model file '{path}' is incompatible with this version: "
                                 f"{msg}") from None
        detector.network.to(target)
        return detector


def provenance_base(seed: int) -> dict[str, Any]:
    """Package versions, platform and date for a model's provenance record."""
    import sklearn

    from .. import __version__

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": seed,
        "versions": {"napari-cell-anomaly": __version__, "torch": torch.__version__,
                     "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                     "python": platform.python_version()},
    }


def default_model_path() -> Path | None:
    """The shipped default model, or None if this installation has none."""
    here = Path(__file__).resolve().parent.parent / "models" / "default.safetensors"
    return here if here.is_file() else None
