"""Tests for ``napari_cell_anomaly.core.scoring``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from napari_cell_anomaly.core.conformal import conformal_rank, tail_probability, upper_quantile
from napari_cell_anomaly.core.scoring import (
    DEFAULT_FPR,
    DENSITY_KINDS,
    DENSITY_NAMES_VERSION,
    MIN_CALIBRATION,
    Calibration,
    ScoringConfig,
    reduce_map,
)

FPRS = (0.01, 0.05, 0.1, 0.25, 0.5)


def _calibration(m: int = 400, seed: int = 0) -> Calibration:
    rng = np.random.default_rng(seed)
    errors = rng.gamma(2.0, 0.01, m)  # skewed, like reconstruction errors
    log_densities = rng.normal(-20.0, 3.0, m) - 0.5 * rng.exponential(2.0, m)
    map_maxima = errors * rng.uniform(3.0, 6.0, m)
    return Calibration(errors, log_densities, map_maxima)


@pytest.fixture(scope="module")
def cal() -> Calibration:
    return _calibration()


@pytest.mark.parametrize(("n", "fpr", "k"), [(19, 0.05, 19), (240, 0.05, 229), (99, 0.01, 99),
                                             (98, 0.01, 99), (10, 0.05, 11), (100, 0.5, 51)])
def test_conformal_rank(n: int, fpr: float, k: int) -> None:
    assert conformal_rank(n, fpr) == k


@pytest.mark.parametrize("m", [7, 20, 101, 400])
def test_threshold_is_the_conformal_order_statistic(m: int) -> None:
    c = _calibration(m, seed=m)
    v = np.sort(c.scores)
    for fpr in FPRS:
        k = math.ceil((m + 1) * (1 - fpr) - 1e-9)
        assert c.certified(fpr) == (k <= m)
        if k <= m:
            assert c.threshold(fpr) == v[k - 1]
            # On the calibration sample itself at most (n - k) / n are above it.
            assert np.mean(c.scores > c.threshold(fpr)) <= fpr
        else:
            assert c.threshold(fpr) > v[-1]


def _true_rates(n: int, fpr: float, draws: int, trim: int = 0, count_trimmed: bool = True,
                seed: int = 0) -> np.ndarray:
    """True false-alarm rate of the threshold fitted to each of ``draws`` calibration sets of
    ``n`` standard exponential scores (exceedance of t is exp(-t)); the ``trim`` largest of
    each set are trimmed (worst case: trimming hits the normals' own tail)."""
    rng = np.random.default_rng(seed)
    rates = np.empty(draws)
    for d in range(draws):
        x = np.sort(rng.exponential(1.0, n))
        kept = x[: n - trim]
        c = Calibration(kept, np.full(kept.size, 1.0), kept,
                        n_trimmed=trim if count_trimmed else 0)
        # Combined score is the robust z of the error: invert it to the error scale.
        t_err = c.criteria(fpr)["recon_error"]
        rates[d] = np.exp(-max(t_err, 0.0))
    return rates


@pytest.mark.parametrize(("n", "fpr"), [(19, 0.05), (40, 0.05), (60, 0.1), (200, 0.01)])
def test_false_alarm_guarantee_on_new_normals(n: int, fpr: float) -> None:
    rates = _true_rates(n, fpr, draws=3000, seed=n)
    k = math.ceil((n + 1) * (1 - fpr) - 1e-9)
    se = rates.std() / np.sqrt(rates.size)
    # Marginal over calibration sets the rate is (n + 1 - k) / (n + 1) <= fpr exactly.
    assert rates.mean() <= fpr + 3 * se
    assert rates.mean() == pytest.approx((n + 1 - k) / (n + 1), abs=3 * se)
    # The stated 95% interval of the realised rate covers it about 95% of the time.
    c = Calibration(np.arange(n, dtype=float), np.zeros(n), np.ones(n))
    lo, hi = c.rate_interval(fpr)
    assert 0.93 <= np.mean((rates >= lo) & (rates <= hi)) <= 0.97


def test_plain_empirical_quantile_breaks_the_guarantee() -> None:
    # What the rule above fixes: the (1 - fpr) empirical quantile of 30 scores is their
    # second largest, so 2 in 31 new normals (6.5%) exceed it at a nominal 5%.
    rng = np.random.default_rng(7)
    rates = [np.exp(-upper_quantile(rng.exponential(1.0, 30), 0.05)) for _ in range(3000)]
    assert np.mean(rates) > 0.055
    assert np.mean(_true_rates(30, 0.05, 3000, seed=7)) < 0.045  # conformal: 1 in 31


def test_trimmed_units_count_as_above_the_threshold() -> None:
    n, fpr, trim = 100, 0.05, 3
    counted = _true_rates(n, fpr, 3000, trim=trim, seed=1)
    ignored = _true_rates(n, fpr, 3000, trim=trim, count_trimmed=False, seed=1)
    se = counted.std() / np.sqrt(counted.size)
    assert counted.mean() <= fpr + 3 * se  # holds even though the trimmed were normals
    assert ignored.mean() > fpr + 0.015  # the old rule: ~7.5% at a nominal 5%
    c = Calibration(np.arange(97.0), np.zeros(97), np.ones(97), n_trimmed=3)
    assert c.size == 100
    assert c.threshold(0.05) == np.sort(c.scores)[conformal_rank(100, 0.05) - 1]
    assert not c.certified(0.03) and c.certified(0.04)  # (3 + 1) / 101 = 0.0396
    assert "3 of them trimmed" in c.describe(0.05)


def test_uncertified_rates_extrapolate_and_say_so() -> None:
    c = _calibration(30, seed=3)
    assert not c.certified(0.01) and c.certified(0.05)
    assert c.min_certified_rate == pytest.approx(1 / 31)
    t = [c.threshold(f) for f in (0.001, 0.01, 0.03, 1 / 31)]
    assert t[0] > t[1] > t[2] > c.scores.max() == t[3]
    lo, hi = c.rate_interval(0.01)
    assert lo == 0.0 and 1 / 31 < hi < 0.2
    text = c.describe(0.01)
    assert "not certified" in text and "cannot certify" in text and "Warning" in text


def test_describe_states_the_sample_and_the_interval() -> None:
    c = _calibration(240, seed=4)
    lo, hi = c.rate_interval(0.05)
    assert lo < 0.05 < hi
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (2.6, 8.1)
    text = c.describe(0.05)
    assert text == ("5% false alarms (calibrated on 240 normals; true rate 2.6-8.1% with 95% "
                    "confidence)")
    assert c.warning(0.05) is None
    assert "240 normal windows" in c.describe(0.05, unit="normal windows")
    small = _calibration(MIN_CALIBRATION - 1, seed=5)
    assert small.certified(0.1)
    warn = small.warning(0.1)
    assert warn is not None and f"only {MIN_CALIBRATION - 1}" in warn
    assert small.describe(0.1).endswith(warn) and "Warning:" in small.describe(0.1)
    assert _calibration(MIN_CALIBRATION, seed=5).warning(0.1) is None
    # Fewer normals, wider interval.
    assert np.diff(small.rate_interval(0.1)) > np.diff(c.rate_interval(0.1))


def test_p_value_and_percentile_agree_with_the_threshold(cal: Calibration) -> None:
    s = np.random.default_rng(6).normal(0.0, 3.0, 5000)
    for fpr in (0.0005, *FPRS):
        flagged = s > cal.threshold(fpr)
        assert np.array_equal(flagged, cal.p_value(s) <= fpr + 1e-12)
        assert np.array_equal(flagged, cal.percentile(s) >= 100 * (1 - fpr) - 1e-9)


def test_threshold_decreases_as_fpr_grows(cal: Calibration) -> None:
    ts = [cal.threshold(f) for f in FPRS]
    assert all(a >= b for a, b in itertools.pairwise(ts))
    assert ts[0] > ts[-1]
    assert cal.threshold() == cal.threshold(DEFAULT_FPR)


@pytest.mark.parametrize("fpr", FPRS)
def test_criteria_are_the_or_rule_of_the_combined_threshold(cal: Calibration,
                                                            fpr: float) -> None:
    crit = cal.criteria(fpr)
    assert crit["score"] == cal.threshold(fpr)
    rng = np.random.default_rng(1)
    n = 20_000
    # Random points spread well around both calibration clouds.
    errors = rng.uniform(0.0, 3.0 * cal.errors.max(), n)
    logd = rng.uniform(cal.log_densities.min() - 10.0, cal.log_densities.max() + 5.0, n)
    by_score = cal.combine(errors, logd) > crit["score"]
    by_rule = (errors > crit["recon_error"]) | (logd < crit["log_density"])
    assert np.array_equal(by_score, by_rule)
    # Both criteria fire somewhere, and each can fire on its own.
    assert (by_rule & (errors <= crit["recon_error"])).any()
    assert (by_rule & (logd >= crit["log_density"])).any()
    assert (~by_rule).any()


def test_combined_score_is_monotone_in_each_criterion(cal: Calibration) -> None:
    errs = np.linspace(0.0, 0.2, 50)
    s = cal.combine(errs, np.full(50, cal.log_densities.min() + 100.0))
    assert np.all(np.diff(s) > 0)  # only the error criterion is active here
    logd = np.linspace(-60.0, -10.0, 50)
    s = cal.combine(np.zeros(50), logd)
    assert np.all(np.diff(s) <= 0)
    assert s[0] > s[-1]
    np.testing.assert_array_equal(cal.scores, cal.combine(cal.errors, cal.log_densities))


def test_percentile_is_monotone_and_bounded(cal: Calibration) -> None:
    grid = np.linspace(cal.scores.min() - 1.0, cal.scores.max() + 1.0, 500)
    p = cal.percentile(grid)
    assert p.shape == grid.shape
    assert np.all(np.diff(p) >= 0)
    assert p[0] == 0.0 and 99.0 < p[-1] < 100.0
    # Percent of calibration normals strictly lower, among n + 1 (the image included).
    s = float(np.median(cal.scores))
    assert cal.percentile(s)[0] == pytest.approx(100.0 * np.sum(cal.scores < s)
                                                 / (cal.size + 1))
    # A score at the threshold is above (100 - 100 * fpr) percent of the normals, or so.
    t = cal.threshold(0.1)
    assert cal.percentile(t)[0] == pytest.approx(90.0, abs=100.0 / cal.size + 1e-9)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_fpr_raises_value_error(cal: Calibration, bad: float) -> None:
    for method in (cal.threshold, cal.criteria, cal.pixel_threshold):
        with pytest.raises(ValueError, match="false-alarm rate"):
            method(bad)


@pytest.mark.parametrize("fpr", FPRS)
def test_pixel_threshold_is_the_conformal_level_of_the_map_maxima(cal: Calibration,
                                                                 fpr: float) -> None:
    k = conformal_rank(cal.size, fpr)
    assert cal.pixel_threshold(fpr) == np.sort(cal.map_maxima)[k - 1]
    rate = float(np.mean(cal.map_maxima > cal.pixel_threshold(fpr)))
    assert fpr - 2.0 / cal.size <= rate <= fpr


def test_display_range(cal: Calibration) -> None:
    lo, hi = cal.display_range()
    assert lo == 0.0
    assert hi > np.quantile(cal.map_maxima, 0.99)
    zero = Calibration(np.ones(5), np.ones(5), np.zeros(5))
    assert zero.display_range() == (0.0, 1.0)


def test_degenerate_calibration_stays_finite() -> None:
    c = Calibration(np.full(10, 0.02), np.full(10, -5.0), np.full(10, 0.1))
    assert np.isfinite(c.threshold(0.05))
    s = c.combine(np.array([0.02, 0.5]), np.array([-5.0, -5.0]))
    assert np.all(np.isfinite(s)) and s[1] > s[0]


def test_calibration_validates_sizes() -> None:
    with pytest.raises(ValueError, match="same, non-zero number"):
        Calibration(np.zeros(0), np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="same, non-zero number"):
        Calibration(np.zeros(3), np.zeros(4), np.zeros(3))


def test_calibration_arrays_round_trip(cal: Calibration) -> None:
    back = Calibration.from_arrays(cal.to_arrays())
    assert back.size == cal.size
    trimmed = Calibration(cal.errors, cal.log_densities, cal.map_maxima, n_trimmed=4)
    back_trimmed = Calibration.from_arrays(trimmed.to_arrays())
    assert back_trimmed.n_trimmed == 4 and back_trimmed.size == cal.size + 4
    old_file = {k: v for k, v in cal.to_arrays().items() if not k.endswith("n_trimmed")}
    assert Calibration.from_arrays(old_file).n_trimmed == 0
    assert np.array_equal(back.scores, cal.scores)
    assert back.criteria(0.05) == cal.criteria(0.05)


def test_reduce_map() -> None:
    rng = np.random.default_rng(2)
    m = rng.random((40, 30))
    assert reduce_map(m, "mean") == pytest.approx(m.mean())
    assert reduce_map(m, "max") == m.max()
    assert reduce_map(m, "p99") == pytest.approx(np.percentile(m, 99))
    assert reduce_map(m, "mean") <= reduce_map(m, "p99") <= reduce_map(m, "max")
    mask = np.zeros_like(m, dtype=bool)
    mask[5:15, 10:20] = True
    assert reduce_map(m, "mean", mask) == pytest.approx(m[5:15, 10:20].mean())
    assert reduce_map(m, "max", mask) == m[5:15, 10:20].max()
    # An empty mask means "use every pixel", as does no mask.
    assert reduce_map(m, "mean", np.zeros_like(mask)) == reduce_map(m, "mean")
    # A hot spot moves max and p99 much more than the mean.
    hot = m.copy()
    hot[0, :24] = 50.0  # 2 % of the pixels
    assert reduce_map(hot, "max") == 50.0
    assert reduce_map(hot, "p99") > 10 * reduce_map(m, "p99")
    assert reduce_map(hot, "mean") < 2.0
    with pytest.raises(ValueError, match="unknown reduction"):
        reduce_map(m, "median")


def test_scoring_config_validation_and_round_trip() -> None:
    cfg = ScoringConfig(error="mix", reduce="p99", sigma=2.0, foreground=True)
    assert ScoringConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="error kind"):
        ScoringConfig(error="l1")
    with pytest.raises(ValueError, match="reduction"):
        ScoringConfig(reduce="median")
    with pytest.raises(ValueError, match="sigma"):
        ScoringConfig(sigma=-1.0)


def test_tail_extrapolation_goes_beyond_the_sample_and_inverts() -> None:
    rng = np.random.default_rng(3)
    values = rng.exponential(1.0, 50)
    # Inside the sample: empirical; beyond it: above the maximum, growing as p shrinks.
    assert upper_quantile(values, 0.1) <= values.max()
    far = [upper_quantile(values, p) for p in (1e-2, 1e-3, 1e-4)]
    assert far[0] >= values.max() and far[0] < far[1] < far[2]
    # The exponential tail of an exponential sample grows by about ln(10) per decade.
    assert 1.0 < far[2] - far[1] < 4.0
    for p in (1e-3, 1e-4):
        assert tail_probability(values, upper_quantile(values, p)) == pytest.approx(p, rel=1e-6)


def test_window_adjustment_keeps_the_per_image_false_alarm_rate() -> None:
    # Simulate images made of 16 normal windows each; the worst window decides.
    rng = np.random.default_rng(4)
    cal_windows = rng.normal(0.0, 1.0, 400)
    cal = Calibration(cal_windows, np.zeros(400), np.ones(400))
    n_windows, n_images = 16, 2000
    worst = cal.combine(rng.normal(0.0, 1.0, (n_images, n_windows)).max(1), 0.0)
    fpr = 0.05
    adjusted = np.array([cal.window_adjusted(w, n_windows)[0] for w in worst])
    raw_rate = float(np.mean(worst > cal.threshold(fpr)))
    rate = float(np.mean(adjusted > cal.threshold(fpr)))
    assert raw_rate > 0.3  # without the adjustment most normal images would be flagged
    assert rate < 2 * fpr
    pct = [cal.window_adjusted(w, n_windows)[1] for w in sorted(worst[:50])]
    assert all(a <= b for a, b in itertools.pairwise(pct))
    assert cal.pixel_threshold(fpr, n_windows) >= cal.pixel_threshold(fpr)


def test_window_adjustment_keeps_far_tail_scores_distinct_and_ordered() -> None:
    cal = Calibration(np.random.default_rng(5).normal(0.0, 1.0, 100), np.zeros(100),
                      np.ones(100))
    raw = [cal.combine(x, 0.0) for x in (50.0, 100.0, 400.0)]
    adjusted = [cal.window_adjusted(float(r), 64)[0] for r in raw]
    assert adjusted[0] < adjusted[1] < adjusted[2]
    assert all(a <= r for a, r in zip(adjusted, raw, strict=True))


def test_scoring_config_reads_the_density_names_of_old_files() -> None:
    for kind in DENSITY_KINDS:
        cfg = ScoringConfig(density=kind)
        assert cfg.to_dict()["density_names"] == DENSITY_NAMES_VERSION
        assert ScoringConfig.from_dict(cfg.to_dict()) == cfg
    old = {"error": "lab", "reduce": "max", "sigma": 1.0, "foreground": True, "erode": 3}
    # Version 1 files: "local" was the per-position mixture, "kde" the whole-code KDE, which
    # was also what files without a density key used.
    assert ScoringConfig.from_dict({**old, "density": "local"}).density == "gmm"
    assert ScoringConfig.from_dict({**old, "density": "kde"}).density == "kde-flat"
    assert ScoringConfig.from_dict(old).density == "kde-flat"
    assert ScoringConfig.from_dict({"error": "mse", "reduce": "mean", "sigma": 0.0,
                                    "foreground": False}).erode == 2
    with pytest.raises(ValueError, match="unknown density"):
        ScoringConfig(density="local")

