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

ERROR_KINDS = ("lab", "mse", "ssim", "mix")
REDUCTIONS = ("mean", "p99", "max")
DENSITY_KINDS = ("local", "kde")
DEFAULT_FPR = 0.05


@dataclass(frozen=True)
class ScoringConfig:
    """How per-pixel maps become an image's reconstruction error, and which latent density.

    The defaults were chosen by image AUROC on real data (NIH malaria crops; see
    ``docs/benchmarks.md``): a mean over all pixels is dominated by the reconstruction error
    every cell has along its outline (AUROC 0.69); the maximum of the lightly smoothed map
    over the eroded object reaches 0.97.

    Parameters
    ----------
    error : {"lab", "mse", "ssim", "mix"}
        The map behind the image error and the heatmap: squared error in CIE L*a*b* computed
        on input and reconstruction (perceptual colour; lightness only for grayscale),
        squared error in the normalised intensities, 1 - SSIM, or the mean of the latter two
        after scaling each by its calibration median.
    reduce : {"mean", "p99", "max"}
        How the smoothed map becomes one number.
    sigma : float
        Gaussian smoothing of the maps, in pixels at model resolution.
    foreground : bool
        Restrict the reduction to the object (pixels that differ from the border colour),
        which ignores the background of single-cell crops.
    erode : int
        Pixels (at model resolution) eroded from the object mask, to drop the outline where
        every normal cell reconstructs imperfectly.
    density : {"local", "kde"}
        Latent density: a Gaussian mixture over the code vectors of single latent positions
        (image = its least likely position), or the Gaussian KDE over PCA-reduced whole code
        maps.
    """

    error: str = "lab"
    reduce: str = "max"
    sigma: float = 1.0
    foreground: bool = True
    erode: int = 3
    density: str = "local"

    def __post_init__(self) -> None:
        if self.error not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error!r}; expected one of {ERROR_KINDS}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduce!r}; expected one of {REDUCTIONS}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.erode < 0:
            raise ValueError(f"erode must be >= 0, got {self.erode}")
        if self.density not in DENSITY_KINDS:
            raise ValueError(f"unknown density {self.density!r}; expected one of "
                             f"{DENSITY_KINDS}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoringConfig:
        """Inverse of :meth:`to_dict`.

        Keys missing from files written before they existed take the values those versions
        used (erode 2, KDE density), so old models keep scoring the way they were trained.
        """
        return cls(error=str(d["error"]), reduce=str(d["reduce"]), sigma=float(d["sigma"]),
                   foreground=bool(d["foreground"]), erode=int(d.get("erode", 2)),
                   density=str(d.get("density", "kde")))


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


def robust_location_scale(x: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based scale (standard deviation, or a tiny floor, where MAD is 0)."""
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
        self._err_loc, self._err_scale = robust_location_scale(self.errors)
        self._dens_loc, self._dens_scale = robust_location_scale(self.log_densities)
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
        """Combined-score threshold with false-alarm rate ``fpr`` on the calibration normals.

        Rates below ``1 / size`` lie beyond the calibration sample; their thresholds come from
        an exponential fit to the upper tail (see :func:`upper_quantile`).
        """
        _check_fpr(fpr)
        return upper_quantile(self.scores, fpr)

    def window_adjusted(self, window_score: float, n_windows: int) -> tuple[float, float]:
        """Image-level score and percentile from the worst of ``n_windows`` window scores.

        Calibration units are model-size windows; an image made of ``n_windows`` of them is
        more likely to contain a high window by chance. The worst window's tail probability
        ``p`` becomes the image's ``1 - (1 - p) ** n_windows`` (Sidak), mapped back to the
        window score scale, so ``score > threshold(fpr)`` keeps the false-alarm rate ``fpr``
        per *image* and every image shares one threshold.

        Returns
        -------
        (float, float)
            The adjusted score and the image's percentile among normal images.
        """
        n = max(1, int(n_windows))
        p_window = tail_probability(self.scores, window_score)
        p_image = -np.expm1(n * np.log1p(-min(p_window, 1.0 - 1e-16)))
        if p_image < 1.0 / self.size:
            # Far tail: with an exponential tail the adjustment is a shift by beta * ln(n),
            # computed directly so very high scores stay distinct instead of underflowing.
            v, _, _, beta = _tail_model(self.scores)
            return max(float(v[-1]), window_score - beta * float(np.log(n))), \
                100.0 * (1.0 - p_image)
        return upper_quantile(self.scores, p_image), 100.0 * (1.0 - p_image)

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

    def pixel_threshold(self, fpr: float = DEFAULT_FPR, n_windows: int = 1) -> float:
        """Error-map level that a normal image's map exceeds anywhere with probability ``fpr``.

        Parameters
        ----------
        fpr : float
            False-alarm rate per image.
        n_windows : int
            Model-size windows in the image (``ScoreResult.n_windows``); larger images need a
            higher level for the same per-image rate.
        """
        _check_fpr(fpr)
        per_window = 1.0 - (1.0 - fpr) ** (1.0 / max(1, int(n_windows)))
        return upper_quantile(self.map_maxima, per_window)

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


def _tail_model(values: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """Sorted values and an exponential upper-tail fit: (sorted, k, u, beta).

    The ``k`` largest values (about 10%, at least 2) are modelled as ``u + Exp(beta)`` where
    ``u`` is the next value below them (peaks over threshold with a zero shape parameter).
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    m = v.size
    k = int(min(max(2, np.ceil(0.1 * m)), max(m - 1, 1)))
    u = float(v[m - k - 1]) if m > k else float(v[0])
    beta = float(np.mean(v[m - k:] - u)) if m > k else 0.0
    if beta <= 0:
        beta = max(float(v.std()), 1e-6 * max(abs(u), 1.0))
    return v, k, u, beta


def upper_quantile(values: np.ndarray, p: float) -> float:
    """The level exceeded with probability ``p`` by the distribution behind ``values``.

    Empirical (``method="higher"``) where the sample reaches ``p`` (``p >= 1 / M``); beyond
    it, the exponential tail fit of :func:`_tail_model`, never below the sample maximum.
    """
    v, k, u, beta = _tail_model(values)
    m = v.size
    if p >= 1.0 / m:
        return float(np.quantile(v, 1.0 - p, method="higher"))
    return max(float(v[-1]), u + beta * float(np.log((k / m) / p)))


def tail_probability(values: np.ndarray, x: float) -> float:
    """Probability that the distribution behind ``values`` exceeds ``x`` (inverse of
    :func:`upper_quantile`, with the same exponential tail)."""
    v, k, u, beta = _tail_model(values)
    m = v.size
    above = int(np.count_nonzero(v > x))
    if above:
        return above / m
    return min(1.0 / m, (k / m) * float(np.exp(-(x - u) / beta)))


def _check_fpr(fpr: float) -> None:
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"false-alarm rate must be between 0 and 1 (exclusive), got {fpr}")
