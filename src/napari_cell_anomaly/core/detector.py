"""The trained anomaly detector: network + preprocessing + latent density + calibration.

An :class:`AnomalyDetector` scores 2-D images of any size. In ``whole`` mode (single-cell crops)
each image is resized to the model size and scored as one unit. In ``patch`` mode (large fields
of view) the network runs over the image at native resolution through overlapping tiles, and
the image's numbers are those of its most anomalous ``size x size`` window.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import errormaps
from .density import LatentDensity, LocalLatentDensity, density_from_arrays
from .images import ImageError, Preprocessing, resize
from .model import Autoencoder, ModelConfig, build_model
from .modelfile import ModelFileError, load_file, save_file
from .scoring import DEFAULT_FPR, Calibration, ScoringConfig, reduce_map
from .tiling import predict_tiled

MODES = ("whole", "patch")
#: Tile side for patch-mode inference; overlap margin discarded on each interior side.
TILE = 512
TILE_MARGIN = 32


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
        Latent log-density under the KDE of training normals (lower = more unusual).
    percentile : float
        Percent of calibration normals that score lower.
    is_anomaly : bool
        Dual-criterion verdict at the false-alarm rate used for scoring.
    threshold : float
        The combined-score threshold behind ``is_anomaly``.
    error_map : np.ndarray
        ``(H, W)`` float32 smoothed per-pixel error (the heatmap), at the input's size.
    ssim_map : np.ndarray
        ``(H, W)`` float32 smoothed ``1 - SSIM`` map.
    reconstruction : np.ndarray
        ``(H, W, C)`` float32 reconstruction in the normalised [0, 1] space.
    n_windows : int
        Model-size windows the image was judged on (1 in whole mode). In patch mode the
        image's numbers are those of its worst window and its score is adjusted for the
        number of windows (see :meth:`Calibration.window_adjusted`); pass ``n_windows`` to
        :meth:`Calibration.pixel_threshold` for the above-threshold region.
    """

    score: float
    recon_error: float
    log_density: float
    percentile: float
    is_anomaly: bool
    threshold: float
    error_map: np.ndarray
    ssim_map: np.ndarray
    reconstruction: np.ndarray
    n_windows: int = 1

    def as_row(self) -> dict[str, float | int]:
        """The numbers of this result, as written to a CSV row."""
        return {"score": self.score, "recon_error": self.recon_error,
                "log_density": self.log_density, "is_anomaly": int(self.is_anomaly),
                "percentile": self.percentile}


@dataclass
class AnomalyDetector:
    """A trained, calibrated anomaly detector.

    Attributes
    ----------
    network : Autoencoder
        The autoencoder (eval mode, channels_last).
    preprocessing : Preprocessing
        Channel mode and intensity normalisation, repeated exactly at scoring time.
    mode : {"whole", "patch"}
        How images are fed to the network (see module docstring).
    size : int
        Model input side in pixels (resize target in whole mode; window in patch mode).
    scoring : ScoringConfig
        How maps become image errors.
    density : LatentDensity or LocalLatentDensity
        Density of training normals' latent codes (kind named by ``scoring.density``).
    calibration : Calibration
        Held-out normals' statistics; all thresholds derive from it.
    provenance : dict
        Training data summary, settings, package versions, date, seed.
    rejected : list of int
        Indices of training images rejected by robust training.
    """

    network: Autoencoder
    preprocessing: Preprocessing
    mode: str
    size: int
    scoring: ScoringConfig
    density: LatentDensity | LocalLatentDensity
    calibration: Calibration
    provenance: dict[str, Any] = field(default_factory=dict)
    rejected: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        self.network.eval()

    # -- properties ---------------------------------------------------------------------------
    @property
    def channels(self) -> str:
        """``"rgb"`` or ``"gray"``."""
        return self.preprocessing.channels

    def summary(self) -> str:
        """A human-readable, multi-line description of the model."""
        p = self.provenance
        crit = self.calibration.criteria(DEFAULT_FPR)
        lines = [
            f"Trained {p.get('date', '?')} on {p.get('n_images', '?')} images "
            f"({p.get('n_train', '?')} train / {p.get('n_val', '?')} held out), "
            f"{p.get('epochs_run', '?')} epochs, seed {p.get('seed', '?')}",
            f"Input: {self.channels.upper()}, {self.mode} mode, {self.size} px, "
            f"preset {self.network.config.preset}",
            f"Calibrated on {self.calibration.size} held-out normals; at 5% false alarms: "
            f"error > {crit['recon_error']:.4g} or log-density < {crit['log_density']:.4g}",
        ]
        if self.rejected:
            lines.append(f"Robust training rejected {len(self.rejected)} training images")
        return "\n".join(lines)

    # -- network passes -----------------------------------------------------------------------
    def _maps(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Smoothed squared-error (RGB, or L*a*b* for ``error="lab"``) and 1-SSIM maps,
        ``(N, 1, H, W)`` each."""
        sigma = self.scoring.sigma
        if self.scoring.error == "lab":
            se = errormaps.gaussian_blur(errormaps.lab_error_map(x, y), sigma)
        else:
            se = errormaps.gaussian_blur(errormaps.squared_error_map(x, y), sigma)
        dssim = errormaps.gaussian_blur(1.0 - errormaps.ssim_map(x, y), sigma)
        return se, dssim

    def _primary(self, se: np.ndarray, dssim: np.ndarray) -> np.ndarray:
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

    def analyse_units(self, units: np.ndarray) -> dict[str, np.ndarray]:
        """Run the network on model-size units and measure them.

        Parameters
        ----------
        units : np.ndarray
            ``(N, size, size, C)`` preprocessed float32 images.

        Returns
        -------
        dict
            ``codes`` (N, D), ``recon`` (N, size, size, C), ``se_map``, ``ssim_map`` and the
            primary ``error_map`` (N, size, size), ``recon_error`` (N,), ``map_max`` (N,).
        """
        out: dict[str, list[np.ndarray]] = {k: [] for k in
                                            ("codes", "recon", "se_map", "ssim_map")}
        with torch.inference_mode():
            for start in range(0, len(units), 64):
                x = to_tensor(units[start:start + 64])
                z = self.network.encode(x)
                y = self.network.decode(z)
                se, dssim = self._maps(x, y)
                out["codes"].append(z.flatten(1).numpy())
                out["recon"].append(y.permute(0, 2, 3, 1).numpy())
                out["se_map"].append(se[:, 0].numpy())
                out["ssim_map"].append(dssim[:, 0].numpy())
        res = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}
        res["error_map"] = self._primary(res["se_map"], res["ssim_map"]).astype(np.float32)
        errors, maxima = [], []
        for x, m in zip(units, res["error_map"], strict=True):
            errors.append(reduce_map(m, self.scoring.reduce, self._foreground(x)))
            maxima.append(float(m.max()))
        res["recon_error"] = np.asarray(errors)
        res["map_max"] = np.asarray(maxima)
        return res

    # -- scoring ------------------------------------------------------------------------------
    def score(self, image: np.ndarray, *, fpr: float | None = None, name: str = "image"
              ) -> ScoreResult:
        """Score one 2-D image.

        Parameters
        ----------
        image : np.ndarray
            ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array of any numeric dtype.
        fpr : float, optional
            Target false-alarm rate for the verdict (default 5%).
        name : str
            Used in error messages.

        Returns
        -------
        ScoreResult

        Raises
        ------
        napari_cell_anomaly.core.images.ImageError
            If the image is not a valid 2-D image or its channels do not match the model.
        """
        fpr = DEFAULT_FPR if fpr is None else fpr
        x = self.preprocessing(image, name=name)
        if self.mode == "whole":
            return self._score_whole(x, fpr)
        if min(x.shape[:2]) < self.size:
            label = "image" if name == "image" else f"image {name!r}"
            raise ImageError(f"{label} is {x.shape[0]}x{x.shape[1]} pixels; this patch-mode "
                             f"model needs at least {self.size} pixels per side")
        return self._score_patch(x, fpr)

    def iter_scores(self, images: Iterable[np.ndarray], *, fpr: float | None = None,
                    names: Sequence[str] | None = None) -> Iterator[ScoreResult]:
        """Score images one by one (a generator, so callers can report progress or stop)."""
        for i, image in enumerate(images):
            yield self.score(image, fpr=fpr, name=names[i] if names else f"image {i}")

    def _finish(self, err: float, logd: float, fpr: float, error_map: np.ndarray,
                ssim_map: np.ndarray, recon: np.ndarray, n_windows: int = 1) -> ScoreResult:
        cal = self.calibration
        score = float(cal.combine(err, logd))
        if n_windows > 1:
            score, percentile = cal.window_adjusted(score, n_windows)
        else:
            percentile = float(cal.percentile(score)[0])
        threshold = cal.threshold(fpr)
        return ScoreResult(
            score=score, recon_error=float(err), log_density=float(logd),
            percentile=percentile, is_anomaly=bool(score > threshold),
            threshold=threshold, error_map=error_map.astype(np.float32, copy=False),
            ssim_map=ssim_map.astype(np.float32, copy=False),
            reconstruction=recon.astype(np.float32, copy=False), n_windows=n_windows,
        )

    def _score_whole(self, x: np.ndarray, fpr: float) -> ScoreResult:
        h, w = x.shape[:2]
        unit = resize(x, (self.size, self.size))[None]
        res = self.analyse_units(unit)
        logd = float(self.density.log_density(res["codes"])[0])

        def back(a: np.ndarray) -> np.ndarray:
            return resize(a, (h, w)) if (h, w) != (self.size, self.size) else a

        return self._finish(res["recon_error"][0], logd, fpr, back(res["error_map"][0]),
                            back(res["ssim_map"][0]), back(res["recon"][0]))

    def _score_patch(self, x: np.ndarray, fpr: float) -> ScoreResult:
        h, w, c = x.shape
        chw = np.ascontiguousarray(x.transpose(2, 0, 1))
        net = self.network

        def fn(t: torch.Tensor) -> torch.Tensor:
            z = net.encode(t)
            y = net.decode(z)
            se, dssim = self._maps(t, y)
            return torch.cat([y, se, dssim], dim=1)

        out = predict_tiled(fn, chw, tile=TILE, margin=TILE_MARGIN, align=net.align)
        recon = out[:c].transpose(1, 2, 0)
        error_map = self._primary(out[c], out[c + 1]).astype(np.float32)
        # Image numbers: the most anomalous model-size window (the calibration unit).
        windows = window_origins(h, w, self.size)
        errs, logds = [], []
        for batch_start in range(0, len(windows), 64):
            batch = windows[batch_start:batch_start + 64]
            crops = np.stack([x[r:r + self.size, q:q + self.size] for r, q in batch])
            logds.append(self.density.log_density(encode_units(net, crops)))
            for (r, q), crop in zip(batch, crops, strict=True):
                m = error_map[r:r + self.size, q:q + self.size]
                errs.append(reduce_map(m, self.scoring.reduce, self._foreground(crop)))
        errs_a, logds_a = np.asarray(errs), np.concatenate(logds)
        scores = self.calibration.combine(errs_a, logds_a)
        worst = int(np.argmax(scores))
        return self._finish(errs_a[worst], logds_a[worst], fpr, error_map, out[c + 1], recon,
                            n_windows=len(windows))

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the detector to one safe file (atomic; see :mod:`.modelfile`)."""
        tensors = {"net." + k: v.detach().cpu().contiguous().numpy()
                   for k, v in self.network.state_dict().items()}
        tensors.update(self.density.to_arrays())
        tensors.update(self.calibration.to_arrays())
        tensors["rejected"] = np.asarray(self.rejected, dtype=np.int64)
        meta = {
            "model": self.network.config.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "mode": self.mode,
            "size": self.size,
            "scoring": self.scoring.to_dict(),
            "provenance": self.provenance,
        }
        save_file(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> AnomalyDetector:
        """Read a detector written by :meth:`save`.

        Raises
        ------
        ModelFileError
            One-line message for missing, corrupt, tampered or incompatible files.
        """
        tensors, meta = load_file(path)
        try:
            config = ModelConfig.from_dict(meta["model"])
            network = build_model(config)
            state = {k[4:]: torch.from_numpy(v.copy()) for k, v in tensors.items()
                     if k.startswith("net.")}
            network.load_state_dict(state, strict=True)
            return cls(
                network=network,
                preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
                mode=str(meta["mode"]), size=int(meta["size"]),
                scoring=ScoringConfig.from_dict(meta["scoring"]),
                density=density_from_arrays(
                    str(meta["scoring"].get("density", "kde")), tensors),
                calibration=Calibration.from_arrays(tensors),
                provenance=dict(meta.get("provenance", {})),
                rejected=[int(i) for i in tensors.get("rejected", np.zeros(0, np.int64))],
            )
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelFileError(f"model file '{path}' is incompatible with this version: "
                                 f"{msg}") from None


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """``(N, H, W, C)`` images -> a float32 channels_last ``(N, C, H, W)`` tensor."""
    t = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).permute(0, 3, 1, 2)
    return t.contiguous(memory_format=torch.channels_last)


def encode_units(network: Autoencoder, units: np.ndarray, batch_size: int = 128
                 ) -> np.ndarray:
    """Flattened latent codes ``(N, D)`` of ``(N, size, size, C)`` images, in batches."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(units), batch_size):
            out.append(network.encode(to_tensor(units[start:start + batch_size]))
                       .flatten(1).numpy())
    return np.concatenate(out)


def window_origins(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of ``size`` windows covering an ``h x w`` image (last ones flush)."""
    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        s = list(range(0, n - size + 1, size))
        if s[-1] != n - size:
            s.append(n - size)
        return s

    return [(r, q) for r in starts(h) for q in starts(w)]


def foreground_mask(x: np.ndarray, erode: int = 2) -> np.ndarray:
    """Pixels of a preprocessed image that differ from its border colour.

    The border colour is the median of the outermost pixels; a pixel belongs to the object when
    it is further from that colour than a quarter of the image's own colour spread. The mask is
    eroded by ``erode`` pixels to drop the object's rim.

    Parameters
    ----------
    x : np.ndarray
        ``(H, W, C)`` float image in [0, 1].
    erode : int
        Erosion radius in pixels.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool mask (may be empty, in which case callers use every pixel).
    """
    from scipy import ndimage

    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((x - bg) ** 2).sum(-1))
    mask = dist > 0.25 * max(float(dist.max()), 1e-6)
    mask = ndimage.binary_fill_holes(mask)
    if erode > 0:
        mask = ndimage.binary_erosion(mask, iterations=erode)
    return mask


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

