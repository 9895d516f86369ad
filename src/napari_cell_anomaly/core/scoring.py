"""From error maps and latent densities to image scores, calibrated thresholds and verdicts.

The dual criterion: an image is anomalous if its latent log-density is too low OR its
reconstruction error too high. Both criteria are put on a common scale by robust z-scores
against held-out normal images (the calibration set); the combined score is the larger of the
two, so ``score > t`` is exactly ``error > e(t) OR log_density < d(t)``.

The threshold ``t`` for a false-alarm rate ``fpr`` is a conformal (finite-sample) quantile of
the calibration normals' combined scores: with ``n`` of them, the ``k``-th smallest with
``k = ceil((n + 1) (1 - fpr))``. For a new normal exchangeable with the calibration normals
(same distribution, never used to choose anything) the probability of a false alarm is then at
most ``fpr``, whatever the score distribution; the rate realised by one calibration set is
``Beta(n + 1 - k, k)``-distributed, which :meth:`Calibration.rate_interval` reports. When
``k > n`` the sample is too small to certify ``fpr``; the threshold then comes from an
exponential fit to the upper tail and :meth:`Calibration.certified` says so. The rate can be
changed at scoring time without retraining. In cells mode the calibration cells come from a
few fields, and the rule counts how much those fields differ (:mod:`.fieldconformal`): each
cell weighs the independent normals it is worth. Either way one rule computes it all
(:class:`.conformal.WeightedConformal`; independent normals weigh 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .conformal import WeightedConformal, conformal_level
from .fieldconformal import MIN_CALIBRATION_FIELDS, effective_size, field_correlation

ERROR_KINDS = ("lab", "mse", "ssim", "mix")
REDUCTIONS = ("mean", "p99", "max")
#: Latent density models (see :mod:`.density`): a KDE and a Gaussian mixture, each one model
#: over the code vectors of single latent positions pooled over all positions, and the KDE
#: over whole flattened codes (cells mode's density, and that of old whole-mode files).
DENSITY_KINDS = ("kde", "gmm", "kde-flat")
#: The kinds offered for new models (CLI ``--density``, Train widget).
TRAINABLE_DENSITIES = ("kde", "gmm")
#: Where a patch-mode window's latent code comes from (:attr:`ScoringConfig.window_codes`).
WINDOW_CODES = ("field", "crop")
#: Version of the density names written to model files. Files without it (version 1) called
#: the position-level mixture "local" and the whole-code KDE "kde".
DENSITY_NAMES_VERSION = 2
_V1_DENSITY_NAMES = {"local": "gmm", "kde": "kde-flat"}
DEFAULT_FPR = 0.05
#: Below this many calibration normals :meth:`Calibration.describe` adds a warning.
MIN_CALIBRATION = 50


@dataclass(frozen=True)
class ScoringConfig:
    """How per-pixel maps become an image's reconstruction error, and which latent density.

    The defaults were chosen by image AUROC on real data (NIH malaria crops; see
    ``docs/benchmarks.md``): a mean over all pixels is dominated by the reconstruction error
    every cell has along its outline (AUROC 0.69); the maximum of the lightly smoothed map
    over the eroded object reaches 0.97.

    Parameters
    ----------
    error : {"auto", "lab", "mse", "ssim", "mix"}
        The map behind the image error and the heatmap: squared error in CIE L*a*b* computed
        on input and reconstruction (perceptual colour; lightness only for grayscale),
        squared error in the normalised intensities (any number of channels), 1 - SSIM, or
        the mean of the latter two after scaling each by its calibration median. ``"auto"``
        (the default) lets training choose from the training images
        (:func:`.errorchoice.choose_error`: ``"lab"`` for RGB brightfield, else ``"mse"``);
        a trained model always holds the concrete kind.
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
    density : {"kde", "gmm", "kde-flat"}
        Latent density (see :mod:`.density`): a Gaussian kernel density estimate (``"kde"``)
        or one Gaussian mixture (``"gmm"``) over the code vectors of single latent positions,
        pooled over all positions (an image's log-density is that of its least likely
        position); ``"kde-flat"``, the KDE over PCA-reduced whole code maps, is what cells
        mode uses (its windows are centred on the cell) and what old model files used.
    window_codes : {"field", "crop"}
        Patch mode: where a window's latent code comes from. ``"field"``: the codes of the
        tiled pass over the whole image that also gives the maps (one encoder pass; the code
        of a position near a window's edge has seen the image around the window).
        ``"crop"``: every window encoded again on its own (model files written before
        ``"field"`` existed, which record no ``window_codes``).
    """

    error: str = "auto"
    reduce: str = "max"
    sigma: float = 1.0
    foreground: bool = True
    erode: int = 3
    density: str = "kde"
    window_codes: str = "field"

    def __post_init__(self) -> None:
        if self.error not in ("auto", *ERROR_KINDS):
            raise ValueError(f"unknown error kind {self.error!r}; expected 'auto' or one of "
                             f"{ERROR_KINDS}")
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduce!r}; expected one of {REDUCTIONS}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.erode < 0:
            raise ValueError(f"erode must be >= 0, got {self.erode}")
        if self.density not in DENSITY_KINDS:
            raise ValueError(f"unknown density {self.density!r}; expected one of "
                             f"{DENSITY_KINDS}")
        if self.window_codes not in WINDOW_CODES:
            raise ValueError(f"unknown window_codes {self.window_codes!r}; expected one of "
                             f"{WINDOW_CODES}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (with the version of the density names)."""
        return {**asdict(self), "density_names": DENSITY_NAMES_VERSION}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoringConfig:
        """Inverse of :meth:`to_dict`.

        Keys missing from files written before they existed take the values those versions
        used (erode 2, the whole-code KDE ``"kde-flat"``, patch-mode windows encoded on their
        own), and old density names are mapped to the current ones (``"local"`` -> ``"gmm"``,
        ``"kde"`` -> ``"kde-flat"``), so old models keep scoring the way they were trained.
        """
        density = str(d.get("density", "kde-flat"))
        if int(d.get("density_names", 1)) < 2:
            density = _V1_DENSITY_NAMES.get(density, density)
        return cls(error=str(d["error"]), reduce=str(d["reduce"]), sigma=float(d["sigma"]),
                   foreground=bool(d["foreground"]), erode=int(d.get("erode", 2)),
                   density=density, window_codes=str(d.get("window_codes", "crop")))


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

    The calibration normals must not have been used for any choice (training, checkpoint,
    map scales): only then is the false-alarm rate of :meth:`threshold` guaranteed.

    Parameters
    ----------
    errors : np.ndarray
        ``(M,)`` image reconstruction errors of the calibration normals that were kept.
    log_densities : np.ndarray
        ``(M,)`` latent log-densities of the same normals.
    map_maxima : np.ndarray
        ``(M,)`` maximum of each calibration unit's smoothed error map over the pixels its
        verdict looks at (the eroded foreground when ``ScoringConfig.foreground``), for pixel
        thresholds and heatmap contrast limits.
    n_trimmed : int
        Calibration normals that robust calibration dropped as likely outliers. They count as
        scoring above every threshold (ranks are taken among all ``M + n_trimmed``), so the
        guarantee still holds if they were normals.
    shape_log_densities : np.ndarray, optional
        ``(M,)`` log-densities of the same normals' morphometry (cells mode): a third
        criterion, "shape too unusual", on the same robust z-scale as the other two.
    groups : np.ndarray, optional
        ``(M,)`` the field (any id) each kept normal comes from (cells mode). Given,
        thresholds, p-values and the interval count the fields' agreement
        (:mod:`.fieldconformal`): the calibration is worth :attr:`effective_size`
        independent normals, fewer than :attr:`size` when the fields differ. None (files
        written before it existed, whole and patch mode): every normal is independent.
    trimmed_groups : np.ndarray, optional
        ``(n_trimmed,)`` the field of each trimmed normal (needed with ``groups`` when
        ``n_trimmed > 0``).
    """

    errors: np.ndarray
    log_densities: np.ndarray
    map_maxima: np.ndarray
    n_trimmed: int = 0
    shape_log_densities: np.ndarray | None = None
    groups: np.ndarray | None = None
    trimmed_groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.errors = np.asarray(self.errors, dtype=np.float64).ravel()
        self.log_densities = np.asarray(self.log_densities, dtype=np.float64).ravel()
        self.map_maxima = np.asarray(self.map_maxima, dtype=np.float64).ravel()
        self.n_trimmed = int(self.n_trimmed)
        if self.errors.size == 0 or self.errors.size != self.log_densities.size:
            raise ValueError("calibration needs the same, non-zero number of errors and densities")
        if self.n_trimmed < 0:
            raise ValueError(f"n_trimmed must be >= 0, got {self.n_trimmed}")
        self._err_loc, self._err_scale = robust_location_scale(self.errors)
        self._dens_loc, self._dens_scale = robust_location_scale(self.log_densities)
        self._shape_loc = self._shape_scale = 0.0
        if self.shape_log_densities is not None:
            self.shape_log_densities = np.asarray(self.shape_log_densities,
                                                  dtype=np.float64).ravel()
            if self.shape_log_densities.size != self.errors.size:
                raise ValueError("calibration needs one shape log-density per normal")
            self._shape_loc, self._shape_scale = robust_location_scale(
                self.shape_log_densities)
        self.scores = self.combine(self.errors, self.log_densities, self.shape_log_densities)
        self.field_rho = 0.0
        self.n_fields = 0
        weight = 1.0 if self.groups is None else self._field_weight()
        self._rule = WeightedConformal(self.scores, np.full(self.scores.size, weight),
                                       trimmed_weight=self.n_trimmed * weight)

    def _field_weight(self) -> float:
        """The independent normals each calibration normal is worth, from :attr:`groups`
        (:mod:`.fieldconformal`): ``n_eff / n``, 1 when the fields agree."""
        trimmed = (np.zeros(0) if self.trimmed_groups is None
                   else np.asarray(self.trimmed_groups).ravel())
        kept = np.asarray(self.groups).ravel()
        if kept.size != self.errors.size or trimmed.size != self.n_trimmed:
            raise ValueError(f"calibration groups: expected one field per normal "
                             f"({self.errors.size} kept, {self.n_trimmed} trimmed), got "
                             f"{kept.size} and {trimmed.size}")
        # Field ids as small integers 0..K-1 (what the model file stores; integer ids keep
        # their order, so stored codes map to themselves).
        ids = np.concatenate([kept, trimmed.astype(kept.dtype, copy=False)])
        if not np.issubdtype(ids.dtype, np.integer):
            ids = ids.astype(str)
        _, codes = np.unique(ids, return_inverse=True)
        codes = codes.astype(np.int64).ravel()
        self.groups, self.trimmed_groups = codes[:kept.size], codes[kept.size:]
        self.n_fields = int(codes.max()) + 1
        every = np.concatenate([self.scores, np.full(self.n_trimmed, np.inf)])
        self.field_rho = field_correlation(every, codes)
        return effective_size(codes, self.field_rho) / self.size

    @property
    def effective_size(self) -> float:
        """Independent normals the calibration is worth: :attr:`size` without
        :attr:`groups`, else ``sum_k n_k / (1 + (n_k - 1) rho)`` over the fields
        (:func:`.fieldconformal.effective_size`)."""
        return self._rule.n_eff

    @property
    def _fields_differ(self) -> bool:
        """Whether the fields' disagreement costs at least one independent normal."""
        return self.effective_size < self.size - 0.5

    @property
    def _too_few_fields(self) -> bool:
        """Whether the calibration has fields, too few of them to judge how much they differ."""
        return self.groups is not None and self.n_fields < MIN_CALIBRATION_FIELDS

    @property
    def size(self) -> int:
        """Number of calibration normals, trimmed ones included (the ``n`` of the ranks)."""
        return int(self.errors.size) + self.n_trimmed

    def combine(self, errors: np.ndarray | float, log_densities: np.ndarray | float,
                shape_log_densities: np.ndarray | float | None = None) -> np.ndarray:
        """Combined anomaly score (higher = more anomalous): the largest robust z-score of the
        error (high) and the latent log-density (low), and of the shape log-density (low)
        when this calibration has one (cells mode) and it is given."""
        z_err = (np.asarray(errors, dtype=np.float64) - self._err_loc) / self._err_scale
        z_dens = (self._dens_loc - np.asarray(log_densities, dtype=np.float64)) / self._dens_scale
        out = np.maximum(z_err, z_dens)
        if self.shape_log_densities is not None and shape_log_densities is not None:
            z_shape = ((self._shape_loc - np.asarray(shape_log_densities, dtype=np.float64))
                       / self._shape_scale)
            out = np.maximum(out, z_shape)
        return out

    def threshold(self, fpr: float = DEFAULT_FPR) -> float:
        """Combined-score threshold for false-alarm rate ``fpr``: ``score > threshold`` flags.

        The conformal quantile (:class:`.conformal.WeightedConformal`): the ``k``-th smallest
        calibration score, ``k = ceil((n + 1) (1 - fpr))`` (:func:`.conformal.conformal_rank`),
        so that a new normal is flagged with probability at most ``fpr``; with :attr:`groups`,
        ``n`` is :attr:`effective_size`. Rates too small for the sample (see
        :meth:`certified`) get a threshold beyond the sample maximum from an exponential fit
        to the upper tail, which is not certified.
        """
        _check_fpr(fpr)
        return self._rule.threshold(fpr)

    def certified(self, fpr: float = DEFAULT_FPR) -> bool:
        """Whether the calibration sample is large enough to guarantee rate ``fpr``."""
        _check_fpr(fpr)
        return self._rule.index(fpr) is not None

    @property
    def min_certified_rate(self) -> float:
        """The smallest false-alarm rate this calibration can guarantee."""
        return self._rule.floor_p

    def rate_interval(self, fpr: float = DEFAULT_FPR, confidence: float = 0.95
                      ) -> tuple[float, float]:
        """Interval for the true false-alarm rate of :meth:`threshold` at ``fpr``.

        For a certified rate the rate realised by this calibration set is
        ``Beta(n + 1 - k, k)``-distributed over calibration sets (exactly, for continuous
        scores; with trimmed units it is at most that); the interval holds its central
        ``confidence`` mass. For an uncertified rate only an upper bound is known: the
        threshold is at least the sample maximum, so the interval is ``(0, upper)`` with the
        one-sided ``confidence`` bound of the maximum's rate. With :attr:`groups`, the same with
        :attr:`effective_size` in place of ``n``, and one plus the weight above the threshold
        in place of ``n + 1 - k`` (:mod:`.fieldconformal`).
        """
        _check_fpr(fpr)
        return self._rule.interval(fpr, confidence)

    def warning(self, fpr: float = DEFAULT_FPR) -> str | None:
        """Why the stated rate ``fpr`` should not be trusted, or None."""
        parts = []
        if not self.certified(fpr):
            worth = (f" (worth about {self.effective_size:.0f} independent ones)"
                     if self._fields_differ else "")
            parts.append(f"{self.size} calibration normals{worth} cannot certify a rate below "
                         f"{_pct(self.min_certified_rate)}; the threshold for "
                         f"{_pct(fpr)} is extrapolated from their tail")
        if self._too_few_fields:
            parts.append(f"the calibration normals come from only {self.n_fields} "
                         f"field(s) (fewer than {MIN_CALIBRATION_FIELDS}): how much "
                         f"fields differ cannot be judged, and the rate on other fields "
                         f"may be far from the stated one; train on more fields")
        elif self.effective_size < MIN_CALIBRATION and self._fields_differ:
            parts.append(f"the calibration fields differ, so their {self.size} normals "
                         f"are worth only about {self.effective_size:.0f} independent "
                         f"ones (fewer than {MIN_CALIBRATION}): the rate on new fields "
                         f"may be far from the stated one; train on more fields")
        elif self.size < MIN_CALIBRATION:
            more = "fields" if self.groups is not None else "normal images"
            parts.append(f"only {self.size} calibration normals (fewer than "
                         f"{MIN_CALIBRATION}): the true false-alarm rate may be far from "
                         f"the stated one; train on more {more}")
        return "; ".join(parts) if parts else None

    def describe(self, fpr: float = DEFAULT_FPR, unit: str = "normals") -> str:
        """One line for users: the rate, its sample and the 95% interval of the true rate.

        Example: ``5% false alarms (calibrated on 240 normals; true rate 2.6-8.1% with 95%
        confidence)``, followed by ``Warning: ...`` (:meth:`warning`) where it applies. With
        fields, but fewer than ``MIN_CALIBRATION_FIELDS`` of them, no interval is stated: how much
        fields differ cannot be judged, so the rate on other fields is unknown.

        Parameters
        ----------
        fpr : float
            The nominal false-alarm rate.
        unit : str
            What the calibration units are (``"normals"``, ``"normal windows"``, ...).
        """
        lo, hi = self.rate_interval(fpr)
        trimmed = (f", {self.n_trimmed} of them trimmed as outliers and counted as false "
                   f"alarms" if self.n_trimmed else "")
        if self._too_few_fields:
            # how much fields differ cannot be estimated: an interval would treat the cells
            # of these fields as independent, which cells of one field are not
            rate = ("true rate on other fields unknown" if self.certified(fpr)
                    else "not certified, true rate on other fields unknown")
        elif self.certified(fpr):
            rate = f"true rate {_pct(lo, False)}-{_pct(hi)} with 95% confidence"
        else:
            rate = f"not certified, true rate at most {_pct(hi)} with 95% confidence"
        fields = ""
        if self.groups is not None:
            fields = (f" from {self.n_fields} field{'s' if self.n_fields != 1 else ''}"
                      + (f", worth about {self.effective_size:.0f} independent ones as "
                         f"the fields differ" if self._fields_differ else ""))
        text = (f"{_pct(fpr)} false alarms (calibrated on {self.size} {unit}{fields}"
                f"{trimmed}; {rate})")
        warn = self.warning(fpr)
        return f"{text}. Warning: {warn}" if warn else text

    # -- scores of new images ------------------------------------------------------------------
    def p_value(self, scores: np.ndarray | float) -> np.ndarray:
        """Conformal p-value of each score: ``(1 + #{calibration scores >= s}) / (n + 1)``,
        trimmed units counting as above every score (with :attr:`groups`, counted by
        weight); beyond the sample maximum, the exponential tail of :meth:`threshold`.

        ``s > threshold(fpr)`` exactly when ``p_value(s) <= fpr``.
        """
        return self._rule.p_value(scores)

    def percentile(self, scores: np.ndarray | float) -> np.ndarray:
        """``100 (1 - p_value)``: the percent of calibration normals scoring strictly lower,
        counted among ``n + 1`` (the new image included), so an image is flagged at rate
        ``fpr`` exactly when its percentile is at least ``100 (1 - fpr)``."""
        return 100.0 * (1.0 - self.p_value(scores))

    def window_adjusted(self, window_score: float, n_windows: int) -> tuple[float, float]:
        """Image-level score and percentile from the worst of ``n_windows`` window scores.

        Calibration units are model-size windows; an image made of ``n_windows`` of them is
        more likely to contain a high window by chance. The worst window's p-value ``p``
        (:meth:`p_value`) becomes the image's ``1 - (1 - p) ** n_windows`` (Sidak), rounded
        up to the grid of conformal p-values and mapped back to the window score scale, so
        ``score > threshold(fpr)`` exactly when the image's p-value is at most ``fpr`` and
        every image shares one threshold (:meth:`.conformal.WeightedConformal.max_adjusted`).

        Returns
        -------
        (float, float)
            The adjusted score and the image's percentile (``100 (1 - p)``).
        """
        return self._rule.max_adjusted(window_score, n_windows)

    def criteria(self, fpr: float = DEFAULT_FPR) -> dict[str, float]:
        """The dual criterion's two thresholds for ``fpr`` (three in cells mode).

        Returns
        -------
        dict
            ``score``: combined threshold; ``recon_error``: an image is anomalous above this
            error; ``log_density``: or below this latent log-density; with a shape criterion,
            ``shape_log_density``: or below this log-density of its morphometry.
        """
        t = self.threshold(fpr)
        out = {
            "score": t,
            "recon_error": self._err_loc + t * self._err_scale,
            "log_density": self._dens_loc - t * self._dens_scale,
        }
        if self.shape_log_densities is not None:
            out["shape_log_density"] = self._shape_loc - t * self._shape_scale
        return out

    def pixel_threshold(self, fpr: float = DEFAULT_FPR, n_windows: int = 1) -> float:
        """Error-map level that a normal image's map exceeds anywhere (within the pixels its
        verdict looks at, ``ScoreResult.region``) with probability at most ``fpr``.

        The conformal quantile of the calibration units' map maxima, as :meth:`threshold`.

        Parameters
        ----------
        fpr : float
            False-alarm rate per image.
        n_windows : int
            Model-size windows in the image (``ScoreResult.n_windows``); larger images need a
            higher level for the same per-image rate.
        """
        _check_fpr(fpr)
        per_window = -np.expm1(np.log1p(-fpr) / max(1, int(n_windows)))
        return conformal_level(np.sort(self.map_maxima), float(per_window), self.n_trimmed)

    def display_range(self) -> tuple[float, float]:
        """Heatmap contrast limits shared by every image scored with this model."""
        return 0.0, float(np.quantile(self.map_maxima, 0.99)) * 1.25 or 1.0

    def to_arrays(self, prefix: str = "calibration.") -> dict[str, np.ndarray]:
        """Arrays for a model file."""
        out = {prefix + "errors": self.errors, prefix + "log_densities": self.log_densities,
               prefix + "map_maxima": self.map_maxima,
               prefix + "n_trimmed": np.array([self.n_trimmed], dtype=np.int64)}
        if self.shape_log_densities is not None:
            out[prefix + "shape_log_densities"] = self.shape_log_densities
        if self.groups is not None:
            out[prefix + "groups"] = np.asarray(self.groups, dtype=np.int64)
            out[prefix + "trimmed_groups"] = np.asarray(self.trimmed_groups, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray],
                    prefix: str = "calibration.") -> Calibration:
        """Inverse of :meth:`to_arrays` (files without ``n_trimmed`` trimmed nothing; files
        without ``groups`` calibrate as before, every normal independent)."""
        trimmed = arrays.get(prefix + "n_trimmed")
        groups = arrays.get(prefix + "groups")
        return cls(arrays[prefix + "errors"], arrays[prefix + "log_densities"],
                   arrays[prefix + "map_maxima"],
                   n_trimmed=int(trimmed.ravel()[0]) if trimmed is not None else 0,
                   shape_log_densities=arrays.get(prefix + "shape_log_densities"),
                   groups=groups,
                   trimmed_groups=(arrays.get(prefix + "trimmed_groups") if groups is not None
                                   else None))


def _pct(x: float, sign: bool = True) -> str:
    """A rate as a short percentage: 5%, 2.6%, 0.83%."""
    p = 100.0 * x
    text = f"{p:.0f}" if p >= 10 else f"{p:.1f}" if p >= 1 else f"{p:.2g}"
    if "." in text and p == round(p):
        text = f"{p:.0f}"
    return text + ("%" if sign else "")


def _check_fpr(fpr: float) -> None:
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"false-alarm rate must be between 0 and 1 (exclusive), got {fpr}")
