"""Tests for ``napari_cell_anomaly.core.scoring``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from napari_cell_anomaly.core.scoring import (
    DEFAULT_FPR,
    Calibration,
    ScoringConfig,
    reduce_map,
    tail_probability,
    upper_quantile,
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


@pytest.mark.parametrize("fpr", FPRS)
def test_threshold_gives_stated_false_alarm_rate(cal: Calibration, fpr: float) -> None:
    rate = float(np.mean(cal.scores > cal.threshold(fpr)))
    assert rate <= fpr
    assert rate >= fpr - 1.0 / cal.size


@pytest.mark.parametrize("m", [7, 20, 101])
def test_false_alarm_rate_holds_for_small_calibration_sets(m: int) -> None:
    c = _calibration(m, seed=m)
    for fpr in FPRS:
        rate = float(np.mean(c.scores > c.threshold(fpr)))
        assert fpr - 1.0 / m <= rate <= fpr


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
    assert p[0] == 0.0 and p[-1] == 100.0
    # Percent of calibration normals strictly lower.
    s = float(np.median(cal.scores))
    assert cal.percentile(s)[0] == pytest.approx(100.0 * np.mean(cal.scores < s))
    # A score at the threshold is above (100 - 100 * fpr) percent of the normals, or so.
    t = cal.threshold(0.1)
    assert cal.percentile(t)[0] == pytest.approx(90.0, abs=100.0 / cal.size + 1e-9)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_fpr_raises_value_error(cal: Calibration, bad: float) -> None:
    for method in (cal.threshold, cal.criteria, cal.pixel_threshold):
        with pytest.raises(ValueError, match="false-alarm rate"):
            method(bad)


@pytest.mark.parametrize("fpr", FPRS)
def test_pixel_threshold_rate(cal: Calibration, fpr: float) -> None:
    rate = float(np.mean(cal.map_maxima > cal.pixel_threshold(fpr)))
    assert fpr - 1.0 / cal.size <= rate <= fpr


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
