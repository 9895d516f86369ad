"""The calibration rule against its frozen predecessor (``frozen_calibration_v1.py``).

The pooled conformal rule and the field-aware rule once ran side by side in
:class:`Calibration`; they are now one mechanism. Every threshold, interval, p-value, window
adjustment, text and verdict of a calibration without fields (whole and patch mode, model files
written before fields were recorded, the shipped model) must be bit-identical to what the
pooled rule gave, over many sizes (ties, trimmed and shape criteria included), rates (certified
or not, exact rank boundaries included) and seeds. Calibrations with fields (cells mode) keep
the field-aware rule's thresholds, p-values, warnings and verdicts bit for bit; its intervals
differ in the last bits, and where calibration scores tie, the one rule counts them by rank as
the pooled rule did (see :func:`assert_same_with_fields`): the two old rules disagreed there
for the same scores and unit weights, so one rule cannot match both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import frozen_calibration_v1 as old
import numpy as np
import pytest

from napari_cell_anomaly.core.modelfile import load_file
from napari_cell_anomaly.core.scoring import MIN_CALIBRATION, Calibration

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO / "models" / "default.safetensors"

#: Rates: a fixed grid (the slider's and the CLI's usual values, certified or not).
RATES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
#: Window counts of patch mode (and cells per field) for the Sidak adjustment.
WINDOWS = (2, 3, 8, 64, 1000, 10**6)
UNITS = ("normals", "normal windows", "normal cells")


@dataclass
class Case:
    """One calibration sample: the arrays a model file holds."""

    errors: np.ndarray
    log_densities: np.ndarray
    map_maxima: np.ndarray
    n_trimmed: int = 0
    shape: np.ndarray | None = None
    groups: np.ndarray | None = None
    trimmed_groups: np.ndarray | None = None

    def build(self, cls: type) -> object:
        return cls(self.errors.copy(), self.log_densities.copy(), self.map_maxima.copy(),
                   n_trimmed=self.n_trimmed,
                   shape_log_densities=None if self.shape is None else self.shape.copy(),
                   groups=None if self.groups is None else self.groups.copy(),
                   trimmed_groups=(None if self.trimmed_groups is None
                                   else self.trimmed_groups.copy()))


def make_case(m: int, seed: int, *, ties: bool = False, trimmed: int = 0, shape: bool = False,
              fields: int = 0, field_effect: float = 0.0) -> Case:
    """``m`` kept calibration units drawn from ``seed``; ``ties`` rounds them to a few levels
    (scores, map maxima), ``fields`` > 0 gives them fields with a shift of ``field_effect``
    standard deviations between fields."""
    rng = np.random.default_rng(seed)
    groups = trimmed_groups = None
    shift = np.zeros(m)
    if fields:
        groups = rng.integers(0, fields, m)
        groups[:min(fields, m)] = np.arange(min(fields, m))  # every field present
        shift = field_effect * rng.normal(size=fields)[groups]
        trimmed_groups = rng.integers(0, fields, trimmed)
    errors = rng.gamma(2.0, 1.0, m) + shift
    log_densities = rng.normal(0.0, 1.0, m) - shift
    maxima = rng.gamma(3.0, 0.5, m)
    if ties:
        errors, log_densities, maxima = (np.round(a * 2) / 2 for a in
                                         (errors, log_densities, maxima))
    shape_ld = rng.normal(0.0, 1.0, m) if shape else None
    return Case(errors, log_densities, maxima, trimmed, shape_ld, groups, trimmed_groups)


def boundary_rates(n: float) -> list[float]:
    """Rates on the conformal grid ``j / (n + 1)`` (exact rank boundaries, as floats) and
    just beside them."""
    out = []
    for j in sorted({1, 2, 3, max(1, int(0.05 * (n + 1))), max(1, int(0.1 * (n + 1)))}):
        p = j / (n + 1.0)
        if 0 < p < 1:
            out += [p, float(np.nextafter(p, 0.0)), float(np.nextafter(p, 1.0))]
    return out


def assert_same(new: Calibration, ref: old.Calibration, rates: list[float]) -> None:
    """Every output of the two rules, bit for bit (the pooled rule: no fields)."""
    _assert_verdicts(new, ref, rates, exact=True)


def assert_same_with_fields(new: Calibration, ref: old.Calibration, rates: list[float]) -> None:
    """The field-aware rule's outputs: thresholds, certification, p-values, percentiles,
    warnings, criteria and verdicts bit for bit; intervals and texts too where no two
    calibration scores tie, but for rounding in the last bits of the interval (the old rule
    multiplied its p-value back by ``n_eff + 1``); window adjustment of ``n_windows = 1``
    (never asked for by the detector) as the pooled rule gives it. Texts differ by design
    where the old ones said too much: with fewer than ``MIN_CALIBRATION_FIELDS`` fields no
    interval is stated, and fields that agree are not said to differ
    (:func:`test_texts_of_few_or_agreeing_fields`)."""
    same_texts = not new._too_few_fields and (
        new._fields_differ or new.effective_size >= MIN_CALIBRATION)
    _assert_verdicts(new, ref, rates, exact=False, texts=same_texts)


def _assert_verdicts(new: Calibration, ref: old.Calibration, rates: list[float], *,
                     exact: bool, texts: bool = True) -> None:
    assert new.size == ref.size
    assert new.effective_size == ref.effective_size
    assert new.min_certified_rate == ref.min_certified_rate
    assert new.field_rho == ref.field_rho and new.n_fields == ref.n_fields
    np.testing.assert_array_equal(new.scores, ref.scores)
    assert new.display_range() == ref.display_range()
    v = np.sort(ref.scores)
    ties = np.unique(v).size < v.size
    spread = float(v[-1] - v[0]) or 1.0
    probes = np.concatenate([v, (v[:-1] + v[1:]) / 2, v[:1] - 1.0,
                             v[-1:] + spread * np.array([1e-9, 0.01, 0.5, 3.0, 50.0])])
    np.testing.assert_array_equal(new.p_value(probes), ref.p_value(probes))
    np.testing.assert_array_equal(new.percentile(probes), ref.percentile(probes))
    thresholds = [ref.threshold(fpr) for fpr in rates[:: max(1, len(rates) // 6)]]
    for s in probes[:: max(1, probes.size // 40)]:
        for n_win in (1, *WINDOWS):
            got, want = new.window_adjusted(float(s), n_win), ref.window_adjusted(float(s), n_win)
            if exact or (n_win > 1 and not ties):
                assert got == want, (float(s), n_win)
            elif n_win > 1:
                assert got[0] == want[0], (float(s), n_win)
            else:  # the same verdict as the window's own score at every rate
                assert [got[0] > t for t in thresholds] == [s > t for t in thresholds]
    for fpr in rates:
        assert new.threshold(fpr) == ref.threshold(fpr), fpr
        assert new.certified(fpr) == ref.certified(fpr), fpr
        assert new.criteria(fpr) == ref.criteria(fpr), fpr
        if texts:
            assert new.warning(fpr) == ref.warning(fpr), fpr
        for n_win in (1, *WINDOWS[:3]):
            assert new.pixel_threshold(fpr, n_win) == ref.pixel_threshold(fpr, n_win), fpr
        assert np.array_equal(probes > new.threshold(fpr), probes > ref.threshold(fpr))
        if exact:
            assert new.rate_interval(fpr) == ref.rate_interval(fpr), fpr
            assert new.rate_interval(fpr, 0.8) == ref.rate_interval(fpr, 0.8), fpr
        elif not ties:
            np.testing.assert_allclose(new.rate_interval(fpr), ref.rate_interval(fpr),
                                       rtol=1e-12, atol=0)
        if texts and (exact or not ties):
            for unit in UNITS:
                assert new.describe(fpr, unit) == ref.describe(fpr, unit), fpr


def _rates(n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(10_000 + seed)
    return [*RATES, *boundary_rates(n), *np.exp(rng.uniform(np.log(1e-3), np.log(0.5), 6))]


SIZES = [*range(1, 41), 47, 48, 49, 50, 51, 63, 99, 100, 101, 149, 199, 200, 255, 299, 300]


@pytest.mark.parametrize("m", SIZES)
def test_pooled_rule_is_unchanged(m: int) -> None:
    """Without fields (whole and patch mode, older files): bit for bit the pooled rule, with
    and without ties, trimmed normals and a shape criterion, over seeds."""
    for seed in range(2):
        for ties, trimmed, shape in ((False, 0, False), (True, 0, False), (False, 3, True),
                                     (True, 1 + m // 10, False)):
            case = make_case(m, seed * 7919 + m, ties=ties, trimmed=trimmed, shape=shape)
            new, ref = case.build(Calibration), case.build(old.Calibration)
            assert_same(new, ref, _rates(ref.size, seed))


@pytest.mark.parametrize("m", [2, 3, 5, 8, 13, 21, 34, 40, 55, 89, 120, 175, 233, 300])
def test_field_rule_is_unchanged(m: int) -> None:
    """With fields (cells mode): the field-aware rule (:func:`assert_same_with_fields`),
    fields that agree (``rho = 0``: unit weights) or differ, with trimmed cells."""
    for seed in range(2):
        for fields, effect, trimmed in ((1, 0.0, 0), (3, 0.0, 0), (4, 1.0, 2), (9, 0.5, 0),
                                        (12, 2.0, 1 + m // 20)):
            case = make_case(m, seed * 104729 + m, trimmed=trimmed, fields=fields,
                             field_effect=effect, shape=seed == 1)
            new, ref = case.build(Calibration), case.build(old.Calibration)
            assert_same_with_fields(new, ref, _rates(ref.size, seed))


def _same_file(arrays: dict[str, np.ndarray]) -> None:
    new, ref = Calibration.from_arrays(arrays), old.Calibration.from_arrays(arrays)
    rates = [*RATES, *boundary_rates(ref.size), 0.07, 0.0123]
    check = assert_same if ref.groups is None else assert_same_with_fields
    check(new, ref, rates)
    # written again and read back: the same
    check(Calibration.from_arrays(new.to_arrays()), ref, rates)


def test_shipped_model_calibrates_as_before() -> None:
    """models/default.safetensors: thresholds, intervals and texts as before."""
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"{DEFAULT_MODEL} is not in this checkout")
    tensors, _ = load_file(DEFAULT_MODEL)
    assert "calibration.groups" not in tensors
    _same_file(tensors)


def test_cells_model_file_calibrates_as_before(cells_detector, tmp_path: Path) -> None:
    """A cells-mode model file (calibration fields recorded): as before, after a round trip
    through the file."""
    path = tmp_path / "cells.safetensors"
    cells_detector.save(path)
    tensors, _ = load_file(path)
    assert "calibration.groups" in tensors
    _same_file(tensors)
    # the same file as an older one without fields: the pooled rule
    pooled = {k: v for k, v in tensors.items() if "groups" not in k}
    _same_file(pooled)


@pytest.mark.parametrize("fields", [1, 2, 4])
def test_texts_of_few_fields_state_no_interval(fields: int) -> None:
    """Fewer than MIN_CALIBRATION_FIELDS fields: the rate on other fields is unknown, so no
    interval is stated (one field's cells are not independent normals), and the warning says
    why."""
    new = make_case(120, fields, fields=fields, field_effect=0.5).build(Calibration)
    text = new.describe(0.05)
    assert "true rate on other fields unknown" in text and "confidence" not in text
    assert f"only {fields} field(s)" in text


def test_texts_of_agreeing_fields_do_not_say_they_differ() -> None:
    """Fields that agree (rho = 0) with fewer than MIN_CALIBRATION normals: the warning counts
    the normals, and does not claim the fields differ."""
    new = make_case(30, 3, fields=6, field_effect=0.0).build(Calibration)
    assert new.field_rho == 0.0 and new.size < MIN_CALIBRATION
    warning = new.warning(0.05)
    assert f"only {new.size} calibration normals" in warning
    assert "differ" not in warning
    assert "with 95% confidence" in new.describe(0.05)
