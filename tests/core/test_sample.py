"""Tests for napari_cell_anomaly.core.sample."""

from __future__ import annotations

import time

import numpy as np
import pytest
from skimage.measure import label, regionprops

from napari_cell_anomaly.core.sample import SampleSet, make_cell_field, make_cells, make_field


@pytest.fixture(scope="module")
def cells() -> SampleSet:
    return make_cells(200, anomaly_fraction=0.25, seed=11)


def _cell_region(image: np.ndarray) -> np.ndarray:
    """Pixels that are not black background."""
    return image.max(axis=-1) > 30


# ------------------------------------------------------------------ make_cells


def test_cells_types_and_shapes(cells):
    assert len(cells) == 200
    assert len(cells.images) == len(cells.masks) == 200
    assert cells.labels.shape == (200,)
    assert cells.labels.dtype == bool
    for img, mask in zip(cells.images, cells.masks, strict=True):
        assert img.shape == (64, 64, 3)
        assert img.dtype == np.uint8
        assert mask.shape == (64, 64)
        assert mask.dtype == bool


@pytest.mark.parametrize(("n", "fraction", "expected"), [(200, 0.25, 50), (10, 0.33, 3),
                                                         (7, 0.0, 0), (5, 1.0, 5)])
def test_exact_number_of_anomalies(n, fraction, expected):
    assert int(make_cells(n, size=32, anomaly_fraction=fraction).labels.sum()) == expected


def test_anomalies_are_shuffled(cells):
    # 50 anomalous among 200: not simply the first or the last 50
    positions = np.flatnonzero(cells.labels)
    assert positions.min() < 50
    assert positions.max() >= 150


def test_same_seed_same_data():
    a = make_cells(12, anomaly_fraction=0.5, seed=4)
    b = make_cells(12, anomaly_fraction=0.5, seed=4)
    np.testing.assert_array_equal(a.labels, b.labels)
    for x, y in zip(a.images + a.masks, b.images + b.masks, strict=True):
        np.testing.assert_array_equal(x, y)


def test_different_seed_different_data():
    a = make_cells(6, anomaly_fraction=0.5, seed=1)
    b = make_cells(6, anomaly_fraction=0.5, seed=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))


def test_cells_differ_from_each_other(cells):
    sizes = [_cell_region(img).sum() for img in cells.images]
    # sizes vary between about (0.6 * 64 / 2)^2 pi and (0.85 * 64 / 2)^2 pi
    assert max(sizes) > 1.5 * min(sizes)


def test_background_is_black_and_cell_fills_60_to_85_percent(cells):
    for img in cells.images[:50]:
        assert img[0, 0].max() == 0 and img[-1, -1].max() == 0
        region = _cell_region(img)
        ys, xs = np.nonzero(region)
        extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        assert 0.55 * 64 <= extent <= 0.9 * 64


def test_cells_are_pale_pink(cells):
    for img in cells.images[:50]:
        rgb = img[_cell_region(img)].astype(float)
        r, g, b = np.median(rgb, axis=0)
        assert 180 <= r <= 245
        assert r - g > 35 and r - b > 35  # reddish
        assert abs(g - b) < 25  # pink, not orange or green


def test_central_pallor_is_lighter_than_the_rim(cells):
    yy, xx = np.mgrid[0:64, 0:64]
    lighter = 0
    normal = [img for img, lab in zip(cells.images, cells.labels, strict=True) if not lab]
    for img in normal:
        region = _cell_region(img)
        cy, cx = (np.mean(c) for c in np.nonzero(region))
        radius = np.sqrt(region.sum() / np.pi)
        dist = np.hypot(yy - cy, xx - cx) / radius
        green = img[..., 1].astype(float)
        lighter += green[dist < 0.3].mean() > green[(dist > 0.7) & (dist < 0.9)].mean()
    assert lighter >= 0.9 * len(normal)


def test_masks_only_for_anomalous_cells(cells):
    for mask, lab in zip(cells.masks, cells.labels, strict=True):
        if lab:
            assert mask.sum() >= 8
        else:
            assert not mask.any()


def test_masks_lie_inside_the_cell(cells):
    for img, mask in zip(cells.images, cells.masks, strict=True):
        if mask.any():
            inside = _cell_region(img)
            assert inside[mask].all()
            # also away from the crop border
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_stains_are_dark_purple_and_small(cells):
    for img, mask, lab in zip(cells.images, cells.masks, cells.labels, strict=True):
        if not lab:
            continue
        stain = img[mask].astype(float).mean(axis=0)
        cell = np.median(img[_cell_region(img) & ~mask].astype(float), axis=0)
        assert stain[1] < cell[1] - 40  # much less green: purple/magenta
        assert stain[2] > stain[1] and stain[0] > stain[1]
        regions = regionprops(label(mask, connectivity=2))
        assert 1 <= len(regions) <= 6  # 1-3 stains; a ring and its chromatin may split
        for reg in regions:
            assert reg.equivalent_diameter_area / 2 <= 6.5


def test_other_crop_sizes():
    data = make_cells(5, size=128, anomaly_fraction=0.4, seed=0)
    assert data.images[0].shape == (128, 128, 3)
    assert all(m.any() for m, lab in zip(data.masks, data.labels, strict=True) if lab)


def test_zero_cells():
    data = make_cells(0)
    assert data.images == [] and data.masks == []
    assert data.labels.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "n must be"),
        ({"n": 3, "anomaly_fraction": 1.5}, "anomaly_fraction"),
        ({"n": 3, "anomaly_fraction": -0.1}, "anomaly_fraction"),
        ({"n": 3, "size": 8}, "size must be at least 16"),
    ],
)
def test_make_cells_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_cells(**kwargs)


def test_make_cells_is_fast():
    start = time.process_time()  # CPU time: not inflated by other processes on the machine
    data = make_cells(2000, anomaly_fraction=0.1, seed=5)
    elapsed = time.process_time() - start
    assert len(data) == 2000
    assert elapsed < 8.0  # about 1.6 s of CPU on one core; generous for slow CI machines


# ------------------------------------------------------------------ make_field


@pytest.fixture(scope="module")
def field() -> tuple[np.ndarray, np.ndarray]:
    return make_field(seed=3)


def test_field_types(field):
    image, mask = field
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert mask.shape == (512, 512) and mask.dtype == bool


def test_field_is_deterministic(field):
    image, mask = make_field(seed=3)
    np.testing.assert_array_equal(image, field[0])
    np.testing.assert_array_equal(mask, field[1])
    other, _ = make_field(seed=4)
    assert not np.array_equal(other, image)


def test_field_background_is_light_and_noisy(field):
    image, _ = field
    corner = image[:12, :12].astype(float)  # cells keep a margin from corners mostly
    brightest = np.percentile(image.astype(float).mean(axis=-1), 75)
    assert brightest > 190  # a light background dominates
    assert corner.std() > 0.5  # sensor noise, not a flat fill


def test_field_has_many_pink_cells(field):
    image, _ = field
    rgb = image.astype(float)
    pink = (rgb[..., 0] - rgb[..., 1]) > 35  # background is only a little warmer than grey
    cells = [r for r in regionprops(label(pink)) if r.area > 200]
    assert 35 <= len(cells) <= 60
    radii = np.array([np.sqrt(r.area / np.pi) for r in cells if r.area < 2000])
    assert 10 <= np.median(radii) <= 22


def test_field_mask_marks_purple_stains_inside_cells(field):
    image, mask = field
    assert mask.any()
    rgb = image.astype(float)
    stain = rgb[mask].mean(axis=0)
    assert stain[1] < 110 and stain[2] > stain[1]
    # every mask pixel is inside a pink cell: surrounded by cell colour, not background
    inside = (rgb[..., 0] - rgb[..., 1]) > 35
    stains = label(mask, connectivity=2)
    for reg in regionprops(stains):
        y0, x0, y1, x1 = reg.bbox
        ring = inside[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2]
        assert ring.mean() > 0.6


def test_field_anomaly_fraction_zero_has_empty_mask():
    image, mask = make_field((256, 320), n_cells=20, anomaly_fraction=0.0, seed=1)
    assert image.shape == (256, 320, 3)
    assert not mask.any()


def test_field_all_infected_has_stains_in_every_cell():
    image, mask = make_field((256, 256), n_cells=10, anomaly_fraction=1.0, seed=2)
    rgb = image.astype(float)
    cells = label((rgb[..., 0] - rgb[..., 1]) > 35)
    big = [r.label for r in regionprops(cells) if r.area > 100]
    assert len(big) >= 5
    # after filling the stains, every cell blob touches at least one stain pixel
    touched = {int(v) for v in np.unique(label(((rgb[..., 0] - rgb[..., 1]) > 35) | mask)[mask])}
    assert len(touched) >= 0.8 * len(big)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (32, 512)}, "at least 64"),
        ({"shape": (512,)}, "shape must be"),
        ({"n_cells": -2}, "n_cells"),
        ({"anomaly_fraction": 2.0}, "anomaly_fraction"),
    ],
)
def test_make_field_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_field(**kwargs)


def test_cell_field_labels_match_cells_and_stains():
    field = make_cell_field((256, 256), n_cells=30, anomaly_fraction=0.3, seed=3)
    ids = np.unique(field.labels)
    ids = ids[ids > 0]
    # every placed cell is visible, label ids are 1..n in placement order
    assert np.array_equal(ids, np.arange(1, len(field.anomalous) + 1))
    # stains lie inside cells, and only inside the cells flagged anomalous
    stained = np.unique(field.labels[field.mask])
    assert 0 not in stained
    assert set(stained.tolist()) <= set(field.anomalous_ids.tolist())
    assert field.anomalous.sum() == round(0.3 * len(field.anomalous))
    # the plain field is the same picture
    image, mask = make_field((256, 256), n_cells=30, anomaly_fraction=0.3, seed=3)
    assert np.array_equal(image, field.image) and np.array_equal(mask, field.mask)


def test_cell_field_radius_range_sets_cell_size():
    small = make_cell_field((256, 256), n_cells=20, radius=(6.0, 7.0), seed=0)
    areas = np.bincount(small.labels.ravel())[1:]
    assert areas.max() < np.pi * 8.0**2
    with pytest.raises(ValueError, match="radius"):
        make_cell_field((256, 256), radius=(9.0, 3.0))
