"""The conformal rule: thresholds, p-values and intervals from calibration scores.

Every calibration (whole, patch and cells mode) runs this one rule. Each calibration unit has a
weight: the independent units it is worth. Independent normals weigh 1 (then ``n_eff`` is the
number of normals ``n`` and the rule is the plain conformal quantile); in cells mode a field's
cells weigh less when the calibration fields differ (:mod:`.fieldconformal`). Trimmed units
(robust calibration) count as scoring above every score. Over the calibration scores sorted
by value, position ``i`` holds the weight ``C_i`` of the positions up to it and ``A_i =
n_eff - C_i`` above it:

* the threshold for a rate ``fpr`` is the value at the first position with
  ``C_i >= (n_eff + 1) (1 - fpr)``: with unit weights the ``k``-th smallest,
  ``k = ceil((n + 1) (1 - fpr))`` (:func:`conformal_rank`), so that a new normal is flagged with
  probability at most ``(n + 1 - k) / (n + 1) <= fpr``; where no position qualifies the sample
  cannot certify ``fpr``, and the threshold is extrapolated beyond the sample maximum on an
  exponential tail (:func:`_tail_model`);
* the p-value of a score ``s`` is ``(1 + W(>= s)) / (n_eff + 1)``, ``W(>= s)`` the weight of
  units scoring at least ``s`` (trimmed ones included); beyond the sample maximum, the tail;
* the rate a calibration realises at that threshold is ``Beta(1 + A_i, n_eff - A_i)``
  (exactly ``Beta(n + 1 - k, k)`` for continuous scores with unit weights), whose central
  interval :meth:`WeightedConformal.interval` states.

Positions are ranks: tied scores keep their own positions, as continuous scores would (a tie at
the threshold changes its value, never the rank it was taken at).
"""

from __future__ import annotations

import functools
import math

import numpy as np

#: Slack, in units of weight, for rates on the conformal grid ``j / (n_eff + 1)`` whose
#: floating-point products land a hair beyond a whole rank.
RANK_SLACK = 1e-9


def conformal_rank(n: int, fpr: float) -> int:
    """Rank ``k = ceil((n + 1) (1 - fpr))`` of the conformal threshold among ``n`` normals.

    Flagging scores above the ``k``-th smallest of ``n`` exchangeable normal scores flags a new
    normal with probability ``(n + 1 - k) / (n + 1) <= fpr``. ``k > n`` means the sample
    cannot certify ``fpr``.
    """
    return max(1, math.ceil((n + 1) * (1.0 - fpr) - RANK_SLACK))


class WeightedConformal:
    """The conformal rule over weighted calibration scores (see the module docstring).

    Parameters
    ----------
    scores : np.ndarray
        ``(M,)`` calibration scores that were kept.
    weights : np.ndarray, optional
        ``(M,)`` their weights; None: 1 each (independent units).
    trimmed_weight : float
        Total weight of trimmed units, counted as above every score.
    """

    def __init__(self, scores: np.ndarray, weights: np.ndarray | None = None,
                 trimmed_weight: float = 0.0) -> None:
        s = np.asarray(scores, dtype=np.float64).ravel()
        if s.size == 0:
            raise ValueError("the conformal rule needs at least one calibration score")
        w = (np.ones(s.size) if weights is None
             else np.asarray(weights, dtype=np.float64).ravel()[np.argsort(s, kind="stable")])
        self.values = np.sort(s)
        # _above[i]: weight of the positions from i up (kept units only); _above[M] = 0
        self._above = np.concatenate([np.cumsum(w[::-1])[::-1], [0.0]])
        self._upto = np.cumsum(w)  # weight of the positions up to i
        self.trimmed_weight = float(trimmed_weight)
        self.n_eff = float(self._above[0]) + self.trimmed_weight

    @functools.cached_property
    def tail_scale(self) -> float:
        """The scale ``beta`` of the exponential upper tail fitted to the values
        (:func:`_tail_model`), beyond the sample maximum; fitted once."""
        return _tail_model(self.values)[3]

    @property
    def floor_p(self) -> float:
        """The p-value just above the sample maximum (the smallest certifiable rate)."""
        return (1.0 + self.trimmed_weight) / (self.n_eff + 1.0)

    def _grid(self, i: np.ndarray | int) -> np.ndarray:
        """``1 + A``: one plus the weight above the positions below ``i`` (``i = M``: just
        above the sample), i.e. ``(n_eff + 1)`` times the p-value of position ``i``."""
        return 1.0 + (self._above[i] + self.trimmed_weight)

    def index(self, fpr: float) -> int | None:
        """Position of the threshold for ``fpr`` among the sorted values (the first whose
        weight up to it reaches ``(n_eff + 1) (1 - fpr)``); None beyond the sample."""
        need = (self.n_eff + 1.0) * (1.0 - fpr) - RANK_SLACK
        i = int(np.searchsorted(self._upto, need, side="left"))
        return i if i < self.values.size else None

    def threshold(self, fpr: float) -> float:
        """Score threshold for rate ``fpr`` (``score > threshold`` flags): the value at
        :meth:`index`, or beyond the sample maximum on the exponential tail, where the
        p-value falls from :attr:`floor_p` to ``fpr``."""
        i = self.index(fpr)
        if i is not None:
            return float(self.values[i])
        v = self.values
        return float(v[-1]) + self.tail_scale * float(np.log(self.floor_p / fpr))

    def p_value(self, x: np.ndarray | float) -> np.ndarray:
        """``(1 + W(>= x)) / (n_eff + 1)`` within the sample; beyond its maximum, the
        exponential tail from :attr:`floor_p` (the one :meth:`threshold` extrapolates on)."""
        s = np.atleast_1d(np.asarray(x, dtype=np.float64))
        v = self.values
        p = self._grid(np.searchsorted(v, s, side="left")) / (self.n_eff + 1.0)
        beyond = s > v[-1]
        if beyond.any():
            p[beyond] = np.exp(self.tail_log_p(s[beyond]))
        return p

    def tail_log_p(self, x: np.ndarray) -> np.ndarray:
        """Log p-value beyond the sample maximum: ``floor_p`` there, decaying exponentially
        with the tail scale of :func:`_tail_model`."""
        v = self.values
        return (float(np.log(self.floor_p))
                - (np.asarray(x, dtype=np.float64) - v[-1]) / self.tail_scale)

    def interval(self, fpr: float, confidence: float = 0.95) -> tuple[float, float]:
        """Interval for the rate :meth:`threshold` realises: the central ``confidence`` mass
        of ``Beta(1 + A, n_eff - A)``, ``A`` the weight above the threshold's position;
        beyond the sample, ``(0, upper)`` with the one-sided bound of the sample maximum's
        rate."""
        # The Beta quantile from scipy.special (scipy.stats would add ~1 s to start-up).
        from scipy.special import betaincinv

        i = self.index(fpr)
        if i is None:
            a = 1.0 + self.trimmed_weight
            return 0.0, float(betaincinv(a, self.n_eff + 1.0 - a, confidence))
        a = float(self._grid(i + 1))
        tail = 0.5 * (1.0 - confidence)
        lo, hi = betaincinv(a, self.n_eff + 1.0 - a, [tail, 1.0 - tail])
        return float(lo), float(hi)

    def max_adjusted(self, score: float, n: int) -> tuple[float, float]:
        """The worst of ``n`` scores judged at once: its p-value ``p`` becomes
        ``1 - (1 - p) ** n`` (Sidak), rounded up to the p-value grid of the positions and
        mapped back to the score scale (beyond the sample, on the tail).

        Returns
        -------
        (float, float)
            The adjusted score and ``100 (1 - adjusted p-value)``.
        """
        n = max(1, int(n))
        v = self.values
        log_floor = float(np.log(self.floor_p))
        if score > v[-1]:
            log_pw = float(self.tail_log_p(np.array([score]))[0])
        else:
            log_pw = float(np.log(self.p_value(score)[0]))
        if log_pw < -30.0:  # far tail: 1 - (1 - p) ** n == n * p to double precision
            log_pi = log_pw + float(np.log(n))
        else:
            p_w = min(float(np.exp(log_pw)), 1.0 - 1e-16)
            log_pi = float(np.log(-np.expm1(n * np.log1p(-p_w))))
        if log_pi < log_floor - 1e-12:
            # Beyond the sample: invert the tail (in the far tail a shift by beta * ln(n)).
            level = float(v[-1]) + self.tail_scale * (log_floor - log_pi)
            return level, 100.0 * -float(np.expm1(log_pi))
        # The last position (M: just above the maximum) whose p-value is at least p.
        need = np.exp(log_pi) * (self.n_eff + 1.0) - RANK_SLACK
        grid = self._grid(np.arange(v.size + 1))
        i = max(0, int(np.count_nonzero(grid >= need)) - 1)
        level = float(v[i]) if i < v.size else float(np.nextafter(v[-1], np.inf))
        return level, 100.0 * (1.0 - float(grid[i]) / (self.n_eff + 1.0))


def conformal_level(sorted_values: np.ndarray, fpr: float, n_trimmed: int = 0) -> float:
    """The conformal threshold (unit weights) over ``sorted_values`` plus ``n_trimmed``
    values counted as infinite: the ``k``-th smallest of :func:`conformal_rank`, beyond the
    sample (``k > n``) extrapolated on the exponential tail (not certified)."""
    return WeightedConformal(sorted_values, trimmed_weight=n_trimmed).threshold(fpr)


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
    (Thresholds use the conformal rule; this is the plain quantile, for comparison.)
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
