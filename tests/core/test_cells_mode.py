"""Cells mode: per-cell units, training from fields with labels, per-cell scores and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cell_anomaly.core.cells import measure_cells
from napari_cell_anomaly.core.cellscores import CELL_COLUMNS
from napari_cell_anomaly.core.cellunits import (
    SHAPE_FEATURES,
    SHAPE_FEATURES_V2,
    CellUnits,
    ShapeDensity,
    cut_units,
    profile_features,
    shape_features,
    window_side,
)
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.images import ImageError
from napari_cell_anomaly.core.metrics import image_auroc
from napari_cell_anomaly.core.sample import make_cell_field, make_cells
from napari_cell_anomaly.core.training import TrainConfig, run_training


@pytest.fixture(scope="module")
def test_field():
    """A field with planted anomalies, cropped so that the image edge cuts some cells."""
    # cells of the same size range as the training fields' (384 px: 0.75 x 14-20 px)
    field = make_cell_field((400, 400), n_cells=55, anomaly_fraction=0.3, seed=100,
                            radius=(10.5, 15.0))
    field.image, field.mask = field.image[16:, 16:], field.mask[16:, 16:]
    field.labels = field.labels[16:, 16:]
    return field


@pytest.fixture(scope="module")
def scored(cells_detector, test_field):
    return cells_detector.score_cells(test_field.image, test_field.labels)


def test_window_side_fits_the_training_cells(cells_detector, cell_fields):
    assert cells_detector.mode == "cells"
    side = cells_detector.size
    assert side % cells_detector.network.align == 0
    table = measure_cells(cell_fields[0].labels)
    boxes = np.maximum(table.bbox[:, 2] - table.bbox[:, 0], table.bbox[:, 3] - table.bbox[:, 1])
    assert side >= np.quantile(boxes, 0.95)
    assert side == window_side(measure_cells(cell_fields[1].labels), 8) or side > boxes.max() / 2


def test_units_are_native_scale_and_isolated(cell_fields):
    field = cell_fields[0]
    x = field.image.astype(np.float32) / 255
    table = measure_cells(field.labels)
    units = cut_units(x, field.labels, table, 48)
    assert len(units) == len(table)
    for win, own, lab, (top, left) in zip(units.windows, units.masks, table.label,
                                          units.origins, strict=True):
        assert win.shape[:2] == own.shape
        # the cell's own pixels are copied unchanged (no resizing)
        ys, xs = np.nonzero(own)
        np.testing.assert_array_equal(win[ys, xs], x[ys + top, xs + left])
        assert (field.labels[ys + top, xs + left] == lab).all()
    # pixels away from the cell show one background colour, not the neighbours
    from scipy.ndimage import binary_dilation

    for win, own in zip(units.windows, units.masks, strict=True):
        away = ~binary_dilation(own, iterations=3)
        assert np.unique(win[away], axis=0).shape[0] == 1


def test_holds_out_whole_fields(cells_detector):
    info = cells_detector.provenance["cells"]
    assert info["holdout"] == "fields"
    assert info["n_fields_validation"] >= 1 and info["n_fields_calibration"] >= 1
    # calibration units are the held-out field's cells only
    assert cells_detector.calibration.size < info["n_cells"] / 2


def test_table_columns_and_label_ids(scored, test_field):
    assert tuple(scored.table) == CELL_COLUMNS
    ids = np.unique(test_field.labels)[1:]
    areas = np.bincount(test_field.labels.ravel())[ids]
    readable = areas >= 12  # cut by the crop, a few cells keep only a sliver
    np.testing.assert_array_equal(scored.table["label"], ids[readable])
    np.testing.assert_array_equal(scored.table["area"], areas[readable])
    assert scored.skipped == int((~readable).sum())
    assert scored.labels.shape == test_field.labels.shape


def test_planted_anomalous_cells_score_highest(scored, test_field):
    y = test_field.anomalous[scored.table["label"] - 1]
    assert image_auroc(y, scored.table["score"]) > 0.95
    flagged = scored.table["is_anomaly"]
    assert flagged[y & ~scored.table["at_border"]].mean() > 0.8
    assert flagged[~y].mean() < 0.25


def test_border_cells_are_marked_and_not_judged(cells_detector, scored, test_field):
    at_border = scored.table["at_border"]
    assert at_border.any()
    assert not scored.table["is_anomaly"][at_border].any()
    everyone = cells_detector.score_cells(test_field.image, test_field.labels,
                                          include_border=True)
    np.testing.assert_allclose(everyone.table["score"], scored.table["score"])
    assert everyone.verdicts(everyone.threshold).sum() >= scored.verdicts(scored.threshold).sum()


def test_rethresholding_is_monotone(cells_detector, scored):
    counts = [int(scored.verdicts(cells_detector.calibration.threshold(f)).sum())
              for f in (0.01, 0.05, 0.2, 0.5)]
    assert counts == sorted(counts)
    assert counts[-1] > counts[0]


def test_heatmap_lies_on_the_cells(scored, test_field):
    m = scored.error_map
    assert m.shape == test_field.labels.shape and m.dtype == np.float32
    assert (m[test_field.labels == 0] == 0).all()
    inside = m[test_field.mask]
    assert inside.mean() > 3 * m[(test_field.labels > 0) & ~test_field.mask].mean()


def test_built_in_segmentation_path(cells_detector, test_field):
    found = cells_detector.score_cells(test_field.image)
    assert len(found) >= 0.8 * len(np.unique(test_field.labels)[1:])
    # each planted anomalous cell is found and flagged (judged ones)
    hits = 0
    judged = 0
    for cell in test_field.anomalous_ids:
        own = found.labels[test_field.labels == cell]
        lab = np.bincount(own[own > 0]).argmax() if (own > 0).any() else 0
        if not lab:
            continue
        row = int(np.flatnonzero(found.table["label"] == lab)[0])
        if not found.table["at_border"][row]:
            judged += 1
            hits += bool(found.table["is_anomaly"][row])
    assert judged >= 5 and hits / judged > 0.8


def test_round_trip_through_a_model_file(cells_detector, scored, test_field, tmp_path):
    path = tmp_path / "cells.safetensors"
    cells_detector.save(path)
    again = AnomalyDetector.load(path)
    assert again.mode == "cells" and again.size == cells_detector.size
    assert again.context == cells_detector.context
    np.testing.assert_allclose(
        again.score_cells(test_field.image, test_field.labels).table["score"],
        scored.table["score"], rtol=1e-5, atol=1e-6)


def test_image_verdict_is_the_worst_cell(cells_detector, test_field, scored):
    result = cells_detector.score(test_field.image)
    assert result.error_map.shape == test_field.labels.shape
    assert result.is_anomaly
    assert result.n_windows > 1
    normal = make_cell_field((384, 384), n_cells=50, anomaly_fraction=0.0, seed=101)
    assert cells_detector.score(normal.image).score < result.score


def test_field_score_is_score_field_without_scoring_again(cells_detector, test_field,
                                                         scored):
    result, _ = cells_detector.score_field(test_field.image, test_field.labels, fpr=0.05)
    field = cells_detector.field_score(scored, 0.05)
    assert (field.score, field.percentile, field.is_anomaly, field.threshold) == (
        result.score, result.percentile, result.is_anomaly, result.threshold)
    assert (field.recon_error, field.log_density) == (result.recon_error, result.log_density)
    assert field.n_judged == result.n_windows == int((~scored.table["at_border"]).sum())
    worst = scored.table["score"][field.row]
    assert worst == scored.table["score"][scored.judged()].max()
    assert field.score < worst  # adjusted for the cells judged: a higher p-value
    # Another rate re-thresholds the same adjusted score; the edge rule changes the field.
    strict = cells_detector.field_score(scored, 0.001)
    assert strict.score == field.score
    assert strict.is_anomaly == (field.score > cells_detector.calibration.threshold(0.001))
    edges = cells_detector.field_score(scored, 0.05, include_border=True)
    assert edges.n_judged == len(scored) > field.n_judged
    # Only some rows (one plane of a stack): judged among those alone.
    some = np.arange(len(scored)) < len(scored) // 2
    part = cells_detector.field_score(scored, 0.05, rows=some)
    assert part.n_judged == int((some & scored.judged()).sum()) and some[part.row]
    assert cells_detector.field_score(scored, rows=np.zeros(len(scored), bool)) is None


@pytest.mark.parametrize("bad, message", [
    (np.zeros((100, 100), np.int32), "shape"),
    (np.zeros((384, 384), np.int32), "no cells"),
    (np.ones((384, 384), np.int32), "covers"),
])
def test_bad_labels_are_refused(cells_detector, test_field, bad, message):
    with pytest.raises(ImageError, match=message):
        cells_detector.score_cells(test_field.image, bad)


def test_tiny_objects_are_refused(cells_detector, test_field):
    dots = np.zeros((384, 384), np.int32)
    dots[10:12, 10:12] = 1
    dots[50:52, 60:62] = 2
    with pytest.raises(ImageError, match="too small"):
        cells_detector.score_cells(test_field.image, dots)


def test_single_cell_crop_to_a_cells_model(cells_detector):
    crop = make_cells(1, size=48, seed=0).images[0]
    with pytest.raises(ImageError, match="single-cell crop"):
        cells_detector.score(crop)


def test_whole_mode_model_refuses_a_field_but_scores_its_cells(cell_detector, test_field):
    big = np.tile(test_field.image, (2, 2, 1))
    with pytest.raises(ImageError, match="per cell"):
        cell_detector.score(big)
    per_cell = cell_detector.score_cells(test_field.image, test_field.labels)
    assert len(per_cell) + per_cell.skipped == len(np.unique(test_field.labels)) - 1
    assert np.isfinite(per_cell.table["score"]).all()


def test_patch_mode_model_cannot_score_cells(patch_detector, test_field):
    with pytest.raises(ImageError, match="cells-mode"):
        patch_detector.score_cells(test_field.image, test_field.labels)


def test_one_field_holds_out_its_lowest_cells(cell_fields):
    field = cell_fields[0]
    det = run_training([field.image], TrainConfig(max_steps=2, epochs=10),
                       labels=[field.labels])
    assert det.mode == "cells"
    assert det.provenance["cells"]["holdout"] == "lowest cells of each field"
    assert 1 <= det.calibration.size < det.provenance["cells"]["n_cells"] / 2


def test_only_labelled_objects_train(cell_fields):
    keep = cell_fields[0].labels.copy()
    keep[keep > 10] = 0  # a label image holding only ten of the cells
    det = run_training([cell_fields[0].image, cell_fields[1].image, cell_fields[2].image],
                       TrainConfig(max_steps=2, epochs=10),
                       labels=[keep, cell_fields[1].labels, cell_fields[2].labels])
    n_whole = sum(int((~measure_cells(lab).at_border).sum())
                  for lab in (keep, cell_fields[1].labels, cell_fields[2].labels))
    assert det.provenance["cells"]["n_cells"] <= n_whole


def test_training_without_cells_is_refused():
    blank = np.full((128, 128, 3), 200, np.uint8)
    blank[::7] = 190
    with pytest.raises(ImageError, match="cells"):
        run_training([blank, blank], TrainConfig(max_steps=2, mode="cells"))


def test_shape_criterion_flags_outsized_cells(cells_detector, scored):
    """Macrocyte-like cells (twice the normal radius, otherwise normal) are caught by the
    morphometry criterion: absolute size counts in cells mode."""
    big = make_cell_field((384, 384), n_cells=6, anomaly_fraction=0.0, seed=201,
                          radius=(21.0, 24.0))
    cells = cells_detector.score_cells(big.image, big.labels)
    normal_shape = scored.table["shape_log_density"][~scored.table["is_anomaly"]]
    assert np.isfinite(cells.table["shape_log_density"]).all()
    assert cells.table["shape_log_density"].max() < np.quantile(normal_shape, 0.05)
    judged = ~cells.table["at_border"]
    assert judged.any() and cells.table["is_anomaly"][judged].all()
    assert "shape_log_density" in cells_detector.calibration.criteria(0.05)


def _disc_unit(side: int = 48, radius: float = 12.0, core: float = 0.0,
               notches: int = 0) -> CellUnits:
    """One isolated cell on a light background: a disc (optionally with notches cut into its
    outline) whose inner ``core`` fraction of the radius is as pale as the background."""
    yy, xx = np.mgrid[0:side, 0:side] - side / 2 + 0.5
    r, angle = np.hypot(yy, xx), np.arctan2(yy, xx)
    edge = radius * (1 - 0.35 * (np.cos(notches * angle) > 0.6)) if notches else radius
    own = r < edge
    win = np.full((side, side, 3), 0.8, dtype=np.float32)
    win[own] = (0.6, 0.3, 0.35)
    win[own & (r < core * radius)] = 0.78
    return CellUnits([win], [own], np.zeros((1, 2), dtype=np.int64))


def test_profile_features_see_pallor_and_notches():
    names = list(SHAPE_FEATURES_V2)
    solid, pale = profile_features(_disc_unit()), profile_features(_disc_unit(core=0.7))
    notched = profile_features(_disc_unit(notches=8))
    core, pale_fraction = names.index("contrast_core"), names.index("pale_fraction")
    # a hypochromic-like cell: a pale core and a large pale area
    assert pale[0, core] < 0.5 * solid[0, core]
    assert pale[0, pale_fraction] > solid[0, pale_fraction] + 0.3
    # the rim keeps its contrast
    assert pale[0, names.index("contrast_rim")] > 0.5 * solid[0, names.index("contrast_rim")]
    # a notched outline is far more concave than a disc
    assert notched[0, names.index("concavity")] > solid[0, names.index("concavity")] + 1.0
    full = shape_features(_disc_unit())
    assert full.shape == (1, len(SHAPE_FEATURES) + 3 + len(SHAPE_FEATURES_V2))
    np.testing.assert_allclose(full[0, -len(names):], solid[0])


def test_shape_density_of_an_older_file_reads_its_own_columns():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(200, 14))
    old = ShapeDensity.fit(feats[:, :8])  # as fitted before the profile columns existed
    np.testing.assert_allclose(old.log_density(feats), old.log_density(feats[:, :8]))
    new = ShapeDensity.fit(feats)
    assert not np.allclose(new.log_density(feats), old.log_density(feats))


def test_per_cell_scoring_reports_a_field_outside_the_training_range(cells_detector,
                                                                     test_field, scored):
    assert scored.range_warning is None  # the same kind of field as in training
    sixteen = test_field.image.astype(np.uint16) * 257  # the model was trained on uint8
    cells = cells_detector.score_cells(sixteen, test_field.labels)
    assert cells.range_warning and "uint16" in cells.range_warning
    result, field_cells = cells_detector.score_field(sixteen, test_field.labels)
    assert field_cells.range_warning == result.range_warning == cells.range_warning


def test_calibration_records_the_fields_and_old_files_pool(cells_detector, tmp_path):
    from napari_cell_anomaly.core.modelfile import load_file, save_file
    from napari_cell_anomaly.core.scoring import Calibration

    cal = cells_detector.calibration
    info = cells_detector.provenance["cells"]
    assert cal.groups is not None and cal.groups.size == cal.scores.size
    assert cal.n_fields == info["n_fields_calibration"]
    text = cells_detector.describe_rate(0.05)
    assert f"normal cells from {cal.n_fields} field" in text
    if cal.n_fields < 5:
        assert "Warning:" in text and "field(s)" in text
    path = tmp_path / "cells.safetensors"
    cells_detector.save(path)
    again = AnomalyDetector.load(path).calibration
    np.testing.assert_array_equal(again.groups, cal.groups)
    assert again.describe(0.05) == cal.describe(0.05)
    # A file written before the fields were recorded: every cell independent, as before.
    tensors, meta = load_file(path)
    legacy = tmp_path / "legacy.safetensors"
    save_file(legacy, {k: v for k, v in tensors.items() if "groups" not in k}, meta)
    old = AnomalyDetector.load(legacy).calibration
    pooled = Calibration(cal.errors, cal.log_densities, cal.map_maxima,
                         n_trimmed=cal.n_trimmed, shape_log_densities=cal.shape_log_densities)
    assert old.groups is None
    for fpr in (0.01, 0.05, 0.1):
        assert old.threshold(fpr) == pooled.threshold(fpr)
        assert old.describe(fpr) == pooled.describe(fpr)
