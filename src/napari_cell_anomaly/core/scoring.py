"""From error maps and latent densities to image scores, calibrated thresholds and verdicts.

The dual criterion: an image is anomalous if its latent log-density is too low OR its
reconstruction error too high. Both criteria are put on a common scale by robust z-scores
against held-out normal images (the calibration set); the combined score is the larger of the
two, so ``score > t`` is exactly ``error > e(t) OR log_density < d(t)``. The threshold ``t`` is
the ``1 - fpr`` quantile of the calibration normals' combined scores, so the false-alarm rate on
normals is ``fpr`` by construction and can be changed at scoring time without retraining.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ERROR_KINDS = ("mse", "ssim", "mix")
REDUCTIONS = ("mean", "p99", "max")
DEFAULT_FPR = 0.05


@dataclass(frozen=True)
class ScoringConfig:
    """How per-pixel maps become an image's reconstruction error.

    Parameters
    ----------
    error : {"mse", "ssim", "mix"}
        The map behind the image error and the heatmap: squared error, 1 - SSIM, or their
        mean after scaling each by its calibration median.
    reduce : {"mean", "p99", "max"}
        How the smoothed map becomes one number.
    sigma : float
        Gaussian smoothing of the maps, in pixels at model resolution.
    foreground : bool
        Restrict the reduction to the object (pixels that differ from the border colour),
        which ignores the background of single-cell crops.
    """

    error: str = "mse"
    reduce: str = "mean"
    sigma: float = 1.0
    foreground: bool = False

    def __post_init__(self) -> None:
        if self.error not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error!r}; expected one of {ERROR_KINDS}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduce!r}; expected one of {REDUCTIONS}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoringConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(error=str(d["error"]), reduce=str(d["reduce"]), sigma=float(d["sigma"]),
                   foreground=bool(d["foreground"]))


def reduce_map(error_map: np.ndarray, how: str, mask: np.ndarray | None = None) -> float:
    """Reduce an error map to one number.

    Parameters
    ----------
    error_map : np.ndarray
        ``(H, W)`` per-pixel error.
    how : {"mean", "p99", "max"}
        Reduction.
    mask : np.ndarray of bool, optional
        Pixels to use; all pixels when None or empty.

    Returns
    -------
    float
    """
    values = error_map[mask] if mask is not None and mask.any() else error_map.ravel()
    if how == "mean":
        return float(values.mean())
    if how == "p99":
        return float(np.percentile(values, 99))
    if how == "max":
        return float(values.max())
    raise ValueError(f"unknown reduction {how!r}; expected one of {REDUCTIONS}")


def _robust_location_scale(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    center = float(np.median(x))
    mad = 1.4826 * float(np.median(np.abs(x - center)))
    scale = max(mad, float(x.std()) if mad == 0 else mad, 1e-12 + 1e-6 * abs(center))
    return center, scale


@dataclass
class Calibration:
    """Held-out normal images' statistics, from which every threshold is derived.

    Parameters
    ----------
    errors : np.ndarray
        ``(M,)`` image reconstruction errors of the calibration normals.
    log_densities : np.ndarray
        ``(M,)`` latent log-densities of the calibration normals.
    map_maxima : np.ndarray
        ``(M,)`` maximum of each calibration image's smoothed error map (for pixel thresholds
        and heatmap contrast limits).
    """

    errors: np.ndarray
    log_densities: np.ndarray
    map_maxima: np.ndarray

    def __post_init__(self) -> None:
        self.errors = np.asarray(self.errors, dtype=np.float64).ravel()
        self.log_densities = np.asarray(self.log_densities, dtype=np.float64).ravel()
        self.map_maxima = np.asarray(self.map_maxima, dtype=np.float64).ravel()
        if self.errors.size == 0 or self.errors.size != self.log_densities.size:
            raise ValueError("calibration needs the same, non-zero number of errors and densities")
        self._err_loc, self._err_scale = _robust_location_scale(self.errors)
        self._dens_loc, self._dens_scale = _robust_location_scale(self.log_densities)
        self.scores = self.combine(self.errors, self.log_densities)

    @property
    def size(self) -> int:
        """Number of calibration normals."""
        return int(self.errors.size)

    def combine(self, errors: np.ndarray | float, log_densities: np.ndarray | float) -> np.ndarray:
        """Combined anomaly score (higher = more anomalous) of errors and log-densities."""
        z_err = (np.asarray(errors, dtype=np.float64) - self._err_loc) / self._err_scale
        z_dens = (self._dens_loc - np.asarray(log_densities, dtype=np.float64)) / self._dens_scale
        return np.maximum(z_err, z_dens)

    def threshold(self, fpr: float = DEFAULT_FPR) -> float:
        """Combined-score threshold with false-alarm rate ``fpr`` on the calibration normals."""
        _check_fpr(fpr)
        return float(np.quantile(self.scores, 1.0 - fpr, method="higher"))

    def criteria(self, fpr: float = DEFAULT_FPR) -> dict[str, float]:
        """The dual criterion's two thresholds for ``fpr``.

        Returns
        -------
        dict
            ``score``: combined threshold; ``recon_error``: an image is anomalous above this
            error; ``log_density``: or below this latent log-density.
        """
        t = self.threshold(fpr)
        return {
            "score": t,
            "recon_error": self._err_loc + t * self._err_scale,
            "log_density": self._dens_loc - t * self._dens_scale,
        }

    def pixel_threshold(self, fpr: float = DEFAULT_FPR) -> float:
        """Error-map level that a normal image's map exceeds anywhere with probability ``fpr``."""
        _check_fpr(fpr)
        return float(np.quantile(self.map_maxima, 1.0 - fpr, method="higher"))

    def display_range(self) -> tuple[float, float]:
        """Heatmap contrast limits shared by every image scored with this model."""
        return 0.0, float(np.quantile(self.map_maxima, 0.99)) * 1.25 or 1.0

    def percentile(self, scores: np.ndarray | float) -> np.ndarray:
        """Percent of calibration normals scoring strictly lower than each score."""
        s = np.atleast_1d(np.asarray(scores, dtype=np.float64))
        return 100.0 * np.searchsorted(np.sort(self.scores), s, side="left") / self.size

    def to_arrays(self, prefix: str = "calibration.") -> dict[str, np.ndarray]:
        """Arrays for a model file."""
        return {prefix + "errors": self.errors, prefix + "log_densities": self.log_densities,
                prefix + "map_maxima": self.map_maxima}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray],
                    prefix: str = "calibration.") -> Calibration:
        """Inverse of :meth:`to_arrays`."""
        return cls(arrays[prefix + "errors"], arrays[prefix + "log_densities"],
                   arrays[prefix + "map_maxima"])


def _check_fpr(fpr: float) -> None:
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"false-alarm rate must be between 0 and 1 (exclusive), got {fpr}")
