"""Frozen copy of the calibration rules before they were folded into one mechanism.

Verbatim from commit 11abde0 (``core/scoring.py``: ``robust_location_scale`` to the end;
``core/fieldconformal.py``: ``WeightedConformal``): the pooled conformal rule and the
field-aware rule side by side, as every model file written until then was calibrated.
``test_calibration_equivalence.py`` checks the current :class:`Calibration` against it.
Never edit this file: it is the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_cell_anomaly.core.fieldconformal import (
    MIN_CALIBRATION_FIELDS,
    effective_size,
    field_correlation,
)

DEFAULT_FPR = 0.05
MIN_CALIBRATION = 50

class WeightedConformal:
    """The weighted conformal rule over sorted scores (see the module docstring).

    Parameters
    ----------
    scores : np.ndarray
        ``(M,)`` calibration scores that were kept.
    weights : np.ndarray
        ``(M,)`` their weights.
    trimmed_weight : float
        Total weight of trimmed units, counted as above every score.
    """

    def __init__(self, scores: np.ndarray, weights: np.ndarray, trimmed_weight: float = 0.0
                 ) -> None:
        order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
        self.values = np.asarray(scores, dtype=np.float64)[order]
        w = np.asarray(weights, dtype=np.float64)[order]
        # suffix[i]: weight of the sorted values from index i up
        self._suffix = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
        self.trimmed_weight = float(trimmed_weight)
        self.n_eff = float(self._suffix[0]) + self.trimmed_weight

    @property
    def floor_p(self) -> float:
        """The p-value just above the sample maximum (the smallest certifiable rate)."""
        return (1.0 + self.trimmed_weight) / (self.n_eff + 1.0)

    def weight_above(self, x: np.ndarray | float, strict: bool = True) -> np.ndarray:
        """Weight of calibration units above ``x`` (``>=`` when not ``strict``), trimmed
        units included."""
        side = "right" if strict else "left"
        idx = np.searchsorted(self.values, np.asarray(x, dtype=np.float64), side=side)
        return self._suffix[idx] + self.trimmed_weight

    def _p(self, x: np.ndarray | float, strict: bool) -> np.ndarray:
        """``(1 + W(> x)) / (n_eff + 1)``, with ``>=`` when not ``strict``."""
        return (1.0 + self.weight_above(x, strict=strict)) / (self.n_eff + 1.0)

    def p_value(self, x: np.ndarray | float) -> np.ndarray:
        """``(1 + W(>= x)) / (n_eff + 1)`` (within the sample)."""
        return self._p(x, strict=False)

    def index(self, fpr: float) -> int | None:
        """Index of the threshold for ``fpr`` in the sorted values, None beyond the sample."""
        ok = np.flatnonzero(self._p(self.values, strict=True) <= fpr * (1.0 + 1e-12))
        return int(ok[0]) if ok.size else None

    def achieved(self, fpr: float) -> float:
        """``j / (n_eff + 1)`` with ``j = 1 + W(> threshold)``: the rule's nominal rate."""
        i = self.index(fpr)
        if i is None:
            return self.floor_p
        return float(self._p(self.values[i], strict=True))


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
        self._sorted = np.sort(self.scores)
        self._fields: WeightedConformal | None = None
        self.field_rho = 0.0
        self.n_fields = 0
        if self.groups is not None:
            self._init_fields()

    def _init_fields(self) -> None:
        """The field-aware rule of :mod:`.fieldconformal` from :attr:`groups`."""
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
        n_eff = effective_size(codes, self.field_rho)
        per = n_eff / self.size
        self._fields = WeightedConformal(self.scores, np.full(self.scores.size, per),
                                         trimmed_weight=self.n_trimmed * per)

    @property
    def effective_size(self) -> float:
        """Independent normals the calibration is worth: :attr:`size` without
        :attr:`groups`, else ``sum_k n_k / (1 + (n_k - 1) rho)`` over the fields
        (:func:`.fieldconformal.effective_size`)."""
        return self._fields.n_eff if self._fields is not None else float(self.size)

    @property
    def _fields_differ(self) -> bool:
        """Whether the fields' disagreement costs at least one independent normal."""
        return self.effective_size < self.size - 0.5

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

        The conformal quantile: the ``k``-th smallest calibration score,
        ``k = ceil((n + 1) (1 - fpr))`` (:func:`conformal_rank`), so that a new normal is
        flagged with probability at most ``fpr``. Rates too small for the sample
        (``k > n``; see :meth:`certified`) get a threshold beyond the sample maximum from an
        exponential fit to the upper tail, which is not certified.
        """
        _check_fpr(fpr)
        if self._fields is None:
            return conformal_level(self._sorted, fpr, self.n_trimmed)
        i = self._fields.index(fpr)
        if i is not None:
            return float(self._sorted[i])
        return _tail_level(self._sorted, self._floor_p, fpr)

    def certified(self, fpr: float = DEFAULT_FPR) -> bool:
        """Whether the calibration sample is large enough to guarantee rate ``fpr``."""
        _check_fpr(fpr)
        if self._fields is not None:
            return self._fields.index(fpr) is not None
        return conformal_rank(self.size, fpr) <= self._sorted.size

    @property
    def min_certified_rate(self) -> float:
        """The smallest false-alarm rate this calibration can guarantee."""
        return self._floor_p

    @property
    def _floor_p(self) -> float:
        if self._fields is not None:
            return self._fields.floor_p
        return (self.n_trimmed + 1) / (self.size + 1)

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
        # The Beta quantile from scipy.special (scipy.stats would add ~1 s to start-up).
        from scipy.special import betaincinv

        _check_fpr(fpr)
        tail = 0.5 * (1.0 - confidence)
        if self._fields is not None:
            n_eff = self._fields.n_eff
            if self.certified(fpr):
                j = self._fields.achieved(fpr) * (n_eff + 1.0)
                lo, hi = betaincinv(j, n_eff + 1.0 - j, [tail, 1.0 - tail])
                return float(lo), float(hi)
            j = 1.0 + self._fields.trimmed_weight
            return 0.0, float(betaincinv(j, n_eff + 1.0 - j, confidence))
        n = self.size
        if self.certified(fpr):
            k = conformal_rank(n, fpr)
            lo, hi = betaincinv(n + 1 - k, k, [tail, 1.0 - tail])
            return float(lo), float(hi)
        m = self._sorted.size
        return 0.0, float(betaincinv(n + 1 - m, m, confidence))

    def warning(self, fpr: float = DEFAULT_FPR) -> str | None:
        """Why the stated rate ``fpr`` should not be trusted, or None."""
        parts = []
        if not self.certified(fpr):
            worth = (f" (worth about {self.effective_size:.0f} independent ones)"
                     if self._fields_differ else "")
            parts.append(f"{self.size} calibration normals{worth} cannot certify a rate below "
                         f"{_pct(self.min_certified_rate)}; the threshold for "
                         f"{_pct(fpr)} is extrapolated from their tail")
        if self._fields is not None:
            if self.n_fields < MIN_CALIBRATION_FIELDS:
                parts.append(f"the calibration normals come from only {self.n_fields} "
                             f"field(s) (fewer than {MIN_CALIBRATION_FIELDS}): how much "
                             f"fields differ cannot be judged, and the rate on other fields "
                             f"may be far from the stated one; train on more fields")
            elif self.effective_size < MIN_CALIBRATION:
                parts.append(f"the calibration fields differ, so their {self.size} normals "
                             f"are worth only about {self.effective_size:.0f} independent "
                             f"ones (fewer than {MIN_CALIBRATION}): the rate on new fields "
                             f"may be far from the stated one; train on more fields")
        elif self.size < MIN_CALIBRATION:
            parts.append(f"only {self.size} calibration normals (fewer than "
                         f"{MIN_CALIBRATION}): the true false-alarm rate may be far from "
                         f"the stated one; train on more normal images")
        return "; ".join(parts) if parts else None

    def describe(self, fpr: float = DEFAULT_FPR, unit: str = "normals") -> str:
        """One line for users: the rate, its sample and the 95% interval of the true rate.

        Example: ``5% false alarms (calibrated on 240 normals; true rate 2.6-8.1% with 95%
        confidence)``, followed by ``Warning: ...`` (:meth:`warning`) where it applies.

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
        rate = (f"true rate {_pct(lo, False)}-{_pct(hi)}" if self.certified(fpr)
                else f"not certified, true rate at most {_pct(hi)}")
        fields = ""
        if self._fields is not None:
            fields = (f" from {self.n_fields} field{'s' if self.n_fields != 1 else ''}"
                      + (f", worth about {self.effective_size:.0f} independent ones as "
                         f"the fields differ" if self._fields_differ else ""))
        text = (f"{_pct(fpr)} false alarms (calibrated on {self.size} {unit}{fields}"
                f"{trimmed}; {rate} with 95% confidence)")
        warn = self.warning(fpr)
        return f"{text}. Warning: {warn}" if warn else text

    # -- scores of new images ------------------------------------------------------------------
    def p_value(self, scores: np.ndarray | float) -> np.ndarray:
        """Conformal p-value of each score: ``(1 + #{calibration scores >= s}) / (n + 1)``,
        trimmed units counting as above every score; beyond the sample maximum, the
        exponential tail of :func:`conformal_level`.

        ``s > threshold(fpr)`` exactly when ``p_value(s) <= fpr``.
        """
        s = np.atleast_1d(np.asarray(scores, dtype=np.float64))
        n, v = self.size, self._sorted
        if self._fields is not None:
            p = self._fields.p_value(s)
        else:
            at_or_above = v.size - np.searchsorted(v, s, side="left")
            p = (1.0 + at_or_above + self.n_trimmed) / (n + 1.0)
        beyond = s > v[-1]
        if beyond.any():
            p[beyond] = np.exp(_tail_log_prob(v, s[beyond], self._floor_p))
        return p

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
        every image shares one threshold.

        Returns
        -------
        (float, float)
            The adjusted score and the image's percentile (``100 (1 - p)``).
        """
        n_win = max(1, int(n_windows))
        v, n = self._sorted, self.size
        if self._fields is not None and n_win == 1:
            return window_score, float(self.percentile(window_score)[0])
        log_floor = float(np.log(self._floor_p))
        if window_score > v[-1]:
            log_pw = float(_tail_log_prob(v, np.array([window_score]), self._floor_p)[0])
        else:
            log_pw = float(np.log(self.p_value(window_score)[0]))
        if log_pw < -30.0:  # far tail: 1 - (1 - p) ** n == n * p to double precision
            log_pi = log_pw + float(np.log(n_win))
        else:
            p_w = min(float(np.exp(log_pw)), 1.0 - 1e-16)
            log_pi = float(np.log(-np.expm1(n_win * np.log1p(-p_w))))
        if log_pi < log_floor - 1e-12:
            # Beyond the sample: invert the tail of conformal_level (in the far tail a shift
            # by beta * ln(n_windows)).
            level = float(v[-1]) + _tail_model(v)[3] * (log_floor - log_pi)
            return level, 100.0 * -float(np.expm1(log_pi))
        if self._fields is not None:
            return self._grid_level(float(np.exp(log_pi)))
        j = int(np.ceil(np.exp(log_pi) * (n + 1) - 1e-9))  # p rounded up to j / (n + 1)
        idx = n + 1 - j  # 0-based index of the (n + 2 - j)-th smallest: above the rank-k one
        level = float(v[idx]) if idx < v.size else float(np.nextafter(v[-1], np.inf))
        return level, 100.0 * (1.0 - j / (n + 1.0))

    def _grid_level(self, p: float) -> tuple[float, float]:
        """Field-aware :meth:`window_adjusted` within the sample: the score whose p-value is
        the smallest one reachable that is at least ``p``, and its percentile."""
        v, fields = self._sorted, self._fields
        assert fields is not None
        # Candidate levels: each distinct calibration score, and just above the maximum.
        levels = np.append(np.unique(v), np.nextafter(v[-1], np.inf))
        ps = fields.p_value(levels)
        ok = np.flatnonzero(ps >= p * (1.0 - 1e-12))
        i = int(ok[-1]) if ok.size else 0
        return float(levels[i]), 100.0 * (1.0 - float(ps[i]))

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


def conformal_rank(n: int, fpr: float) -> int:
    """Rank ``k = ceil((n + 1) (1 - fpr))`` of the conformal threshold among ``n`` normals.

    Flagging scores above the ``k``-th smallest of ``n`` exchangeable normal scores flags a new
    normal with probability ``(n + 1 - k) / (n + 1) <= fpr``. ``k > n`` means the sample
    cannot certify ``fpr``.
    """
    return max(1, math.ceil((n + 1) * (1.0 - fpr) - 1e-9))


def conformal_level(sorted_values: np.ndarray, fpr: float, n_trimmed: int = 0) -> float:
    """The conformal threshold of :func:`conformal_rank` over ``sorted_values`` plus
    ``n_trimmed`` values counted as infinite.

    Beyond the sample (``k > n``) the exceedance probability is extrapolated from the sample
    maximum, where it is ``(1 + n_trimmed) / (n + 1)``, as an exponential tail whose scale
    is fitted to the largest values (:func:`_tail_model`); not certified.
    """
    v = np.asarray(sorted_values, dtype=np.float64)
    n = v.size + int(n_trimmed)
    k = conformal_rank(n, fpr)
    if k <= v.size:
        return float(v[k - 1])
    return _tail_level(v, (1.0 + n_trimmed) / (n + 1.0), fpr)


def _tail_level(sorted_values: np.ndarray, floor_p: float, p: float) -> float:
    """The score beyond the sample maximum whose exceedance probability is ``p``, on the
    exponential tail that is ``floor_p`` at the maximum (:func:`_tail_model`)."""
    return float(sorted_values[-1]) + _tail_model(sorted_values)[3] * float(
        np.log(floor_p / p))


def _pct(x: float, sign: bool = True) -> str:
    """A rate as a short percentage: 5%, 2.6%, 0.83%."""
    p = 100.0 * x
    text = f"{p:.0f}" if p >= 10 else f"{p:.1f}" if p >= 1 else f"{p:.2g}"
    if "." in text and p == round(p):
        text = f"{p:.0f}"
    return text + ("%" if sign else "")


def _tail_log_prob(sorted_values: np.ndarray, x: np.ndarray, floor_p: float) -> np.ndarray:
    """Log exceedance probability beyond the sample maximum (see :func:`conformal_level`):
    ``floor_p`` at the maximum, decaying exponentially with the tail scale of
    :func:`_tail_model`."""
    beta = _tail_model(sorted_values)[3]
    return float(np.log(floor_p)) - (np.asarray(x, dtype=np.float64) - sorted_values[-1]) / beta


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
    (Thresholds use the conformal :func:`conformal_level`; this is its tail beyond the sample.)
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
