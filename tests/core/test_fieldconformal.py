"""Field-aware calibration (cells mode): thresholds and intervals that count the fields."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr

from napari_cell_anomaly.core.fieldconformal import (
    MIN_CALIBRATION_FIELDS,
    effective_size,
    field_correlation,
)
from napari_cell_anomaly.core.scoring import Calibration

#: Calibration field sizes as unequal as those of a default Chula model (one large field).
SIZES = np.array([60, 25, 12, 8, 5, 30, 3, 15, 20])
RATES = (0.01, 0.05, 0.10)


def draw(rng: np.random.Generator, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian cell scores (sd 1) with a field effect of sd ``tau``, and their fields."""
    groups = np.repeat(np.arange(SIZES.size), SIZES)
    return rng.normal(size=groups.size) + tau * rng.normal(size=SIZES.size)[groups], groups


def pair(scores: np.ndarray, groups: np.ndarray) -> tuple[Calibration, Calibration]:
    """The pooled and the field-aware calibration of the same scores (the score is the
    error; a constant density never decides)."""
    zeros, ones = np.zeros(scores.size), np.ones(scores.size)
    return (Calibration(scores, zeros, ones),
            Calibration(scores, zeros, ones, groups=groups))


def true_rate(cal: Calibration, fpr: float, tau: float) -> float:
    """Share of new fields' normal cells above the threshold (exact, Gaussian)."""
    return 1.0 - float(ndtr(cal.criteria(fpr)["recon_error"] / np.sqrt(1.0 + tau ** 2)))


def test_effective_size_spans_cells_to_fields() -> None:
    groups = np.repeat(np.arange(SIZES.size), SIZES)
    assert effective_size(groups, 0.0) == pytest.approx(SIZES.sum())
    assert effective_size(groups, 1.0) == pytest.approx(SIZES.size)
    assert SIZES.size < effective_size(groups, 0.3) < SIZES.sum()


def test_field_correlation_sees_field_effects() -> None:
    rng = np.random.default_rng(0)
    same = [field_correlation(*draw(rng, 0.0), confidence=None) for _ in range(30)]
    apart = [field_correlation(*draw(rng, 1.5)) for _ in range(30)]
    assert np.median(same) < 0.05
    assert min(apart) > 0.2


def test_close_to_the_pooled_rule_when_fields_agree() -> None:
    rng = np.random.default_rng(1)
    equal, rates = 0, {"pooled": [], "fields": []}
    for _ in range(40):
        old, new = pair(*draw(rng, 0.0))
        if new.field_rho == 0.0:
            equal += 1
            for fpr in RATES:  # with no field effect found, exactly the pooled rule
                assert new.threshold(fpr) == old.threshold(fpr)
                assert new.rate_interval(fpr) == pytest.approx(old.rate_interval(fpr))
        rates["pooled"].append(true_rate(old, 0.05, 0.0))
        rates["fields"].append(true_rate(new, 0.05, 0.0))
    assert equal >= 12  # the estimate of rho is clipped at 0 about half the time
    assert np.mean(rates["fields"]) > 0.8 * np.mean(rates["pooled"])


def test_conservative_and_honest_when_fields_differ() -> None:
    rng = np.random.default_rng(2)
    tau, fpr, draws = 1.0, 0.05, 200
    above = {"pooled": 0, "fields": 0}
    realised = []
    for _ in range(draws):
        old, new = pair(*draw(rng, tau))
        assert new.effective_size < old.effective_size
        # Fewer independent units never lower the threshold.
        assert new.threshold(fpr) >= old.threshold(fpr)
        for name, cal in (("pooled", old), ("fields", new)):
            above[name] += true_rate(cal, fpr, tau) > cal.rate_interval(fpr)[1]
        realised.append(true_rate(new, fpr, tau))
    # The pooled interval ignores the fields and is far too narrow; the field-aware one
    # holds about its one-sided 2.5%.
    assert above["pooled"] / draws > 0.15
    assert above["fields"] / draws < 0.06
    assert np.mean(realised) <= fpr


def test_p_values_and_window_adjustment_agree_with_the_threshold() -> None:
    rng = np.random.default_rng(3)
    _, cal = pair(*draw(rng, 1.0))
    assert cal.field_rho > 0
    probe = np.linspace(cal.scores.min() - 1, cal.scores.max() + 1, 301)
    for fpr in RATES:
        t = cal.threshold(fpr)
        np.testing.assert_array_equal(probe > t, cal.p_value(probe) <= fpr)
    # A field's worst of 30 cells: flagged at 5% exactly when its adjusted score is.
    for s in probe[::10]:
        adjusted, pct = cal.window_adjusted(float(s), 30)
        p_field = 1.0 - (1.0 - cal.p_value(s)[0]) ** 30
        assert (adjusted > cal.threshold(0.05)) == (p_field <= 0.05 + 1e-9)
        assert 0.0 <= pct <= 100.0


def test_describe_names_the_fields_and_warns_below_the_minimum() -> None:
    rng = np.random.default_rng(4)
    old, new = pair(*draw(rng, 1.5))
    text = new.describe(0.05, unit="normal cells")
    assert f"{new.size} normal cells from {SIZES.size} fields" in text
    assert f"worth about {new.effective_size:.0f} independent ones" in text
    assert new.rate_interval(0.05)[1] > old.rate_interval(0.05)[1]
    few = Calibration(*[np.r_[x, x] for x in (new.errors[:40], np.zeros(40), np.ones(40))],
                      groups=np.repeat(np.arange(MIN_CALIBRATION_FIELDS - 1), 20))
    assert f"only {MIN_CALIBRATION_FIELDS - 1} field(s)" in few.describe(0.05)


def test_groups_round_trip_and_files_without_them_pool() -> None:
    rng = np.random.default_rng(5)
    scores, groups = draw(rng, 1.0)
    old, new = pair(scores, groups)
    again = Calibration.from_arrays(new.to_arrays())
    assert again.n_fields == new.n_fields and again.field_rho == new.field_rho
    np.testing.assert_array_equal(again.groups, new.groups)
    # Field names of any kind; 12 integer fields keep their codes through a second trip.
    named = Calibration(scores, np.zeros(scores.size), np.ones(scores.size),
                        groups=np.array([f"field {g}" for g in groups]))
    assert named.threshold(0.05) == new.threshold(0.05)
    many = np.arange(scores.size) % 12
    twelve = Calibration(scores, np.zeros(scores.size), np.ones(scores.size), groups=many)
    np.testing.assert_array_equal(Calibration.from_arrays(twelve.to_arrays()).groups, many)
    for fpr in RATES:
        assert again.threshold(fpr) == new.threshold(fpr)
    legacy = {k: v for k, v in new.to_arrays().items() if "groups" not in k}
    pooled = Calibration.from_arrays(legacy)
    assert pooled.groups is None
    for fpr in RATES:
        assert pooled.threshold(fpr) == old.threshold(fpr)
        assert pooled.describe(fpr) == old.describe(fpr)


def test_trimmed_cells_keep_their_fields() -> None:
    rng = np.random.default_rng(6)
    scores, groups = draw(rng, 0.5)
    keep = scores < np.quantile(scores, 0.97)
    zeros, ones = np.zeros(keep.sum()), np.ones(keep.sum())
    cal = Calibration(scores[keep], zeros, ones, n_trimmed=int((~keep).sum()),
                      groups=groups[keep], trimmed_groups=groups[~keep])
    assert cal.size == scores.size
    assert cal.effective_size == pytest.approx(effective_size(groups, cal.field_rho))
    with pytest.raises(ValueError, match="one field per normal"):
        Calibration(scores[keep], zeros, ones, n_trimmed=int((~keep).sum()),
                    groups=groups[keep])
