"""Tests for napari_cell_anomaly.core.metrics, on cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.measure import label

from napari_cell_anomaly.core import metrics
from napari_cell_anomaly.core.metrics import (
    aupro,
    image_auprc,
    image_auroc,
    instance_f1,
    match_instances,
    pixel_auroc,
    rates_at_threshold,
)

# ------------------------------------------------------------------ image AUROC / AUPRC


def test_auroc_perfect_reversed_and_chance():
    labels = [False, False, True, True]
    assert image_auroc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert image_auroc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert image_auroc(labels, [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count half


def test_auroc_counts_correctly_ordered_pairs():
    # negatives 0.1, 0.3; positives 0.2, 0.4: 3 of the 4 (neg, pos) pairs are in order
    assert image_auroc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.75)


def test_auprc_hand_cases():
    assert image_auprc([False, True, True], [0.1, 0.8, 0.9]) == 1.0
    # ranking T, F, T: precision 1 at recall 1/2, 2/3 at recall 1
    assert image_auprc([True, False, True], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)
    # ranking F, F, T, T: precision 1/3 at recall 1/2, 2/4 at recall 1
    assert image_auprc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == pytest.approx(5 / 12)


@pytest.mark.parametrize("fn", [image_auroc, image_auprc])
def test_one_class_only_is_a_clear_error(fn):
    with pytest.raises(ValueError, match=r"needs both normal and anomalous images; got 3 "
                                         r"normal and 0 anomalous"):
        fn([False, False, False], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("fn", [image_auroc, image_auprc])
def test_bad_image_inputs(fn):
    with pytest.raises(ValueError, match="same length"):
        fn([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        fn([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="boolean or 0/1"):
        fn([0, 2], [0.1, 0.2])


# ------------------------------------------------------------------ pixel AUROC


def test_pixel_auroc_perfect_and_reversed():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 5:7] = True
    assert pixel_auroc([mask], [mask.astype(float)]) == 1.0
    assert pixel_auroc([mask], [(~mask).astype(float)]) == 0.0


def test_pixel_auroc_pools_all_images():
    m1 = np.array([[True, False], [False, False]])
    a1 = np.array([[0.5, 0.1], [0.2, 0.6]])
    m2 = np.array([[False, False], [True, False]])
    a2 = np.array([[0.0, 0.3], [0.9, 0.4]])
    # positives 0.5 and 0.9 against 6 negatives: 0.5 beats 5 of them, 0.9 beats all 6
    assert pixel_auroc([m1, m2], [a1, a2]) == pytest.approx(11 / 12)
    # the same data as stacked arrays and with a trailing channel axis
    maps = np.stack([a1, a2])[..., None]
    assert pixel_auroc(np.stack([m1, m2]), maps) == pytest.approx(11 / 12)


def test_pixel_auroc_needs_anomalous_pixels():
    with pytest.raises(ValueError, match="anomalous pixels"):
        pixel_auroc([np.zeros((8, 8), bool)], [np.ones((8, 8))])


def test_pixel_auroc_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        pixel_auroc([np.zeros((8, 8), bool)], [np.zeros((8, 9))])
    with pytest.raises(ValueError, match="2 masks but 1 maps"):
        pixel_auroc([np.zeros((8, 8), bool)] * 2, [np.zeros((8, 8))])


def test_pixel_auroc_subsamples_large_inputs_deterministically():
    rng = np.random.default_rng(0)
    masks = [rng.random((1600, 1600)) < 0.01 for _ in range(2)]  # 5.12 M pixels
    maps = [rng.normal(size=m.shape).astype(np.float32) + np.float32(1.0) * m for m in masks]
    assert sum(m.size for m in masks) > metrics.PIXEL_AUROC_MAX_PIXELS
    first = pixel_auroc(masks, maps)
    assert first == pixel_auroc(masks, maps)
    # two unit-variance normals one apart: AUROC = Phi(1 / sqrt(2)) ~ 0.7602
    assert first == pytest.approx(0.7602, abs=0.005)


# ------------------------------------------------------------------ AUPRO


def _two_regions() -> np.ndarray:
    mask = np.zeros((12, 12), bool)
    mask[2, 2] = True  # region A: 1 pixel
    mask[6:9, 6:9] = True  # region B: 9 pixels
    return mask


def test_aupro_perfect_map_is_one():
    mask = _two_regions()
    assert aupro([mask], [mask.astype(float)]) == pytest.approx(1.0)
    assert aupro([mask], [mask * 5.0 + 3.0], max_fpr=1.0) == pytest.approx(1.0)


def test_aupro_inverted_map_is_zero():
    mask = _two_regions()
    assert aupro([mask], [(~mask).astype(float)]) == pytest.approx(0.0)


def test_aupro_constant_map_is_half_of_the_range():
    # one threshold flags everything: the curve is the diagonal (0, 0)-(1, 1); the area up
    # to FPR 0.3 is 0.3^2 / 2, normalised by 0.3 gives 0.15
    mask = _two_regions()
    assert aupro([mask], [np.full(mask.shape, 2.0)]) == pytest.approx(0.15)
    assert aupro([mask], [np.full(mask.shape, 2.0)], max_fpr=1.0) == pytest.approx(0.5)


def test_aupro_weights_regions_equally():
    # Only the 1-pixel region A scores above the normal pixels. Pixel recall at FPR 0 is
    # 1/10, but the per-region overlap is (1 + 0) / 2 = 0.5 up to FPR 1.
    mask = _two_regions()
    amap = np.full(mask.shape, 0.5)
    amap[2, 2] = 1.0
    amap[6:9, 6:9] = 0.0
    assert aupro([mask], [amap]) == pytest.approx(0.5)
    # and the other way round: only the big region is found
    amap2 = np.full(mask.shape, 0.5)
    amap2[6:9, 6:9] = 1.0
    amap2[2, 2] = 0.0
    assert aupro([mask], [amap2]) == pytest.approx(0.5)


def test_aupro_uses_8_connected_regions():
    mask = np.zeros((10, 10), bool)
    mask[2, 2] = mask[3, 3] = True  # diagonal neighbours: one region
    mask[7, 7] = True  # a second region
    amap = np.full(mask.shape, 0.5)
    amap[2, 2] = 1.0
    amap[3, 3] = 0.0
    amap[7, 7] = 0.0
    # regions {half found, not found}: PRO 0.25 (with 4-connectivity it would be 1/3)
    assert aupro([mask], [amap]) == pytest.approx(0.25)


def _ladder(anomaly_value: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """10 normal pixels valued 0.05, 0.15, ..., 0.95 and one anomalous pixel (x8 columns)."""
    normal = np.arange(10) / 10 + 0.05
    value = normal[5] if anomaly_value is None else anomaly_value  # 0.55
    mask = np.zeros((11, 8), bool)
    mask[10] = True
    amap = np.repeat(np.append(normal, value)[:, None], 8, axis=1)
    return mask, amap


def test_aupro_vertical_jump_after_max_fpr_counts_nothing():
    # the anomaly (0.52) is flagged only once 5 of the 10 normal values (0.55..0.95) are:
    # PRO is 0 up to FPR 0.5, then 1
    mask, amap = _ladder(0.52)
    assert aupro([mask], [amap]) == pytest.approx(0.0)
    assert aupro([mask], [amap], max_fpr=0.5) == pytest.approx(0.0)
    # up to FPR 0.6 the area is 0.1 (PRO 1 between FPR 0.5 and 0.6)
    assert aupro([mask], [amap], max_fpr=0.6) == pytest.approx(0.1 / 0.6)


def test_aupro_interpolates_linearly_at_max_fpr():
    # the anomaly ties with the normal value 0.55: one threshold step takes the curve from
    # (FPR 0.4, PRO 0) to (0.5, 1). Cut at 0.45: PRO 0.5 there, a triangle of area
    # 0.05 * 0.5 / 2 = 0.0125, normalised by 0.45.
    mask, amap = _ladder()
    assert aupro([mask], [amap], max_fpr=0.45) == pytest.approx(0.0125 / 0.45)
    # cut at 0.5: triangle 0.1 * 1 / 2 = 0.05
    assert aupro([mask], [amap], max_fpr=0.5) == pytest.approx(0.05 / 0.5)


def _aupro_reference(masks, maps, max_fpr=0.3, num_thresholds=200):
    """A literal, loop-based implementation of the definition, for comparison."""
    lo = min(a.min() for a in maps)
    hi = max(a.max() for a in maps)
    labelled = [label(m, connectivity=2) for m in masks]
    fprs, pros = [0.0], [0.0]
    for t in np.linspace(hi, lo, num_thresholds):
        flagged = [a >= t for a in maps]
        fp = sum(int((f & ~m).sum()) for f, m in zip(flagged, masks, strict=True))
        fprs.append(fp / sum(int((~m).sum()) for m in masks))
        overlaps = [f[lab == k].mean()
                    for f, lab in zip(flagged, labelled, strict=True)
                    for k in range(1, lab.max() + 1)]
        pros.append(float(np.mean(overlaps)))
    x = np.linspace(0.0, max_fpr, 200_001)
    y = np.interp(x, fprs, pros)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / max_fpr)


@pytest.mark.parametrize("seed", [0, 1])
def test_aupro_matches_reference_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for _ in range(3):
        mask = np.zeros((40, 50), bool)
        for _ in range(4):
            y, x = rng.integers(0, 36), rng.integers(0, 46)
            mask[y:y + rng.integers(1, 5), x:x + rng.integers(1, 5)] = True
        masks.append(mask)
        maps.append(rng.random(mask.shape) + 0.6 * mask)
    masks.append(np.zeros((40, 50), bool))  # an image without anomalies
    maps.append(rng.random((40, 50)))
    expected = _aupro_reference(masks, maps)
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-6)
    assert 0.15 < expected < 1.0  # better than chance, not perfect


def test_aupro_random_map_is_near_chance():
    rng = np.random.default_rng(5)
    mask = np.zeros((200, 200), bool)
    for y in range(4, 196, 12):
        for x in range(4, 196, 12):
            mask[y:y + 4, x:x + 4] = True  # 256 separate 4x4 regions
    scores = rng.random(mask.shape)
    assert aupro([mask], [scores]) == pytest.approx(0.15, abs=0.02)


def test_aupro_errors():
    mask = _two_regions()
    with pytest.raises(ValueError, match="at least one anomalous region"):
        aupro([np.zeros((8, 8), bool)], [np.ones((8, 8))])
    with pytest.raises(ValueError, match="max_fpr"):
        aupro([mask], [mask * 1.0], max_fpr=0.0)
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro([mask], [mask * 1.0], num_thresholds=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        aupro([mask], [np.where(mask, np.nan, 0.0)])


# ------------------------------------------------------------------ rates at threshold


def test_rates_at_threshold_hand_case():
    labels = [False, False, True, True]
    scores = [0.1, 0.6, 0.4, 0.9]
    assert rates_at_threshold(labels, scores, 0.5) == (0.5, 0.5)
    assert rates_at_threshold(labels, scores, 0.0) == (1.0, 1.0)
    assert rates_at_threshold(labels, scores, 0.95) == (0.0, 0.0)


def test_rates_at_threshold_is_strictly_greater():
    assert rates_at_threshold([False, True], [0.5, 0.9], 0.9) == (0.0, 0.0)
    assert rates_at_threshold([False, True], [0.5, 0.9], 0.5) == (1.0, 0.0)


def test_rates_at_threshold_single_class_gives_nan_for_the_missing_rate():
    tpr, fpr = rates_at_threshold([False, False, False, False], [0.1, 0.2, 0.3, 0.4], 0.25)
    assert math.isnan(tpr)
    assert fpr == 0.5


def test_match_instances_counts_pairs_above_the_iou():
    truth = np.zeros((10, 10), int)
    truth[0:4, 0:4] = 1  # found exactly
    truth[6:10, 6:10] = 2  # found as a smaller object: IoU 4/16, not a match
    truth[0:2, 7:9] = 3  # missed
    pred = np.zeros((10, 10), int)
    pred[0:4, 0:4] = 7
    pred[8:10, 8:10] = 9
    pred[5, 0:3] = 4  # a false object
    assert match_instances(truth, pred) == (1, 3, 3)
    assert match_instances(truth, pred, iou=0.2) == (2, 3, 3)
    assert instance_f1(*match_instances(truth, pred)) == pytest.approx(2 / 6)
    assert instance_f1(0, 0, 0) == 1.0
    with pytest.raises(ValueError, match="shape"):
        match_instances(truth, pred[:5])
