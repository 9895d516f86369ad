"""Built-in segmentation (core.segmentation), label-image checks and per-object measurements
(core.cells)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from napari_cell_anomaly.core import cells
from napari_cell_anomaly.core.cells import (
    check_labels,
    match_label_files,
    measure_cells,
    read_labels,
)
from napari_cell_anomaly.core.images import ImageError, read_image
from napari_cell_anomaly.core.sample import make_cell_field
from napari_cell_anomaly.core.segmentation import image_kind, segment_cells

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _matched(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(pairs with IoU > 0.5, objects in truth, objects in pred)."""
    t_ids, t = np.unique(truth, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    inter = np.bincount(t.ravel() * len(p_ids) + p.ravel(),
                        minlength=len(t_ids) * len(p_ids)).reshape(len(t_ids), len(p_ids))
    union = inter.sum(1)[:, None] + inter.sum(0)[None, :] - inter
    iou = (inter / np.maximum(union, 1))[t_ids != 0][:, p_ids != 0]
    return int((iou > 0.5).sum()), int((t_ids != 0).sum()), int((p_ids != 0).sum())


def _fluorescence(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint16 field: bright, slightly blurred nuclei of varying brightness on a dark,
    unevenly lit background with noise."""
    rng = np.random.default_rng(seed)
    n = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(2000, 9000, n)])
    img = ndi.gaussian_filter(brightness[labels], 1.0)
    xx = np.arange(labels.shape[1])[None, :]
    img += 400 + 300 * xx / labels.shape[1] + rng.normal(0, 120, labels.shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def field():
    return make_cell_field((320, 320), n_cells=30, seed=3)


def test_finds_the_planted_cells_of_a_synthetic_smear(field) -> None:
    labels = segment_cells(field.image)
    assert labels.dtype == np.int32 and labels.shape == field.labels.shape
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(0, labels.max() + 1))  # 1..N consecutive
    matched, n_truth, n_pred = _matched(field.labels, labels)
    assert matched >= 0.95 * n_truth
    assert n_pred <= 1.05 * n_truth


def test_segment_cells_is_still_importable_from_core_cells() -> None:
    # README documented ``from napari_cell_anomaly.core.cells import segment_cells``.
    assert cells.segment_cells is segment_cells


def test_kind_is_decided_from_the_image(field) -> None:
    assert image_kind(field.image) == "brightfield"
    assert image_kind(_fluorescence(field.labels)) == "fluorescence"


def test_kind_of_a_nearly_empty_quantised_fluorescence_field() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(1, 5, (128, 128)).astype(np.uint8)  # dark, coarsely quantised
    yy, xx = np.mgrid[0:128, 0:128]
    img[np.hypot(yy - 60, xx - 70) <= 3] = 90  # one small nucleus (0.2 % of the field)
    assert image_kind(img) == "fluorescence"
    labels = segment_cells(img)
    assert labels.max() == 1 and labels[60, 70] == 1


def test_a_dark_scratch_does_not_hide_the_cells(field) -> None:
    img = field.image.copy()
    for k in range(-4, 5):  # a dark diagonal line, 9 px thick
        idx = np.arange(20, 300)
        img[idx, np.clip(idx + k, 0, 319)] = (40, 30, 50)
    matched, n_truth, _ = _matched(field.labels, segment_cells(img))
    assert matched >= 0.8 * n_truth


@pytest.mark.parametrize("kind", ["auto", "fluorescence"])
def test_segments_a_uint16_fluorescence_field(field, kind: str) -> None:
    img = _fluorescence(field.labels, seed=1)
    matched, n_truth, _ = _matched(field.labels, segment_cells(img, kind=kind))
    assert matched >= 0.9 * n_truth


def test_gray_and_rgba_and_float_inputs(field) -> None:
    gray = field.image.mean(axis=2)
    rgba = np.concatenate([field.image, np.full((*field.image.shape[:2], 1), 255, np.uint8)], 2)
    for img in (gray, gray.astype(np.float64) / 255.0, rgba):
        matched, n_truth, _ = _matched(field.labels, segment_cells(img))
        assert matched >= 0.9 * n_truth


def _two_discs(gap: float) -> np.ndarray:
    """Two dark discs (radius 20) whose centres are 40 - gap px apart on a light field."""
    yy, xx = np.mgrid[0:120, 0:160]
    a = np.hypot(yy - 60, xx - 60) <= 20
    b = np.hypot(yy - 60, xx - (100 - gap)) <= 20
    img = np.full((120, 160), 220.0)
    img[a | b] = 120.0
    return img + np.random.default_rng(0).normal(0, 2, img.shape)


def test_touching_cells_are_split() -> None:
    labels = segment_cells(_two_discs(gap=6))  # overlapping by 6 px
    assert labels.max() == 2
    assert labels[60, 60] != labels[60, 94]
    assert labels[60, 60] > 0 and labels[60, 94] > 0


def test_central_pallor_is_filled() -> None:
    yy, xx = np.mgrid[0:100, 0:100]
    r = np.hypot(yy - 50, xx - 50)
    img = np.full((100, 100), 220.0)
    img[r <= 22] = 130.0
    img[r <= 9] = 215.0  # a pale centre, nearly background
    labels = segment_cells(img)
    assert labels.max() == 1
    assert labels[50, 50] == 1  # the centre belongs to the cell


def test_debris_is_dropped_and_min_area_overrides() -> None:
    rng = np.random.default_rng(1)
    img = np.full((200, 200), 220.0)
    yy, xx = np.mgrid[0:200, 0:200]
    centres = [(40, 40), (40, 120), (120, 40), (120, 120), (160, 170)]
    for cy, cx in centres:
        img[np.hypot(yy - cy, xx - cx) <= 16] = 120.0
    img[np.hypot(yy - 90, xx - 180) <= 3] = 120.0  # a platelet
    img += rng.normal(0, 2, img.shape)
    labels = segment_cells(img)
    assert labels.max() == len(centres)
    assert labels[90, 180] == 0
    assert segment_cells(img, min_area=2000).max() == 0  # everything is "debris"


def test_nothing_found_gives_all_zero_labels() -> None:
    rng = np.random.default_rng(0)
    img = 200 + rng.normal(0, 1, (64, 64))  # just noise, no cells
    labels = segment_cells(img, min_area=50)
    assert labels.shape == (64, 64) and labels.dtype == np.int32
    assert labels.max() == 0


def test_diameter_override_changes_the_splitting() -> None:
    img = _two_discs(gap=6)
    assert segment_cells(img, diameter=40).max() == 2
    assert segment_cells(img, diameter=120).max() == 1  # one "cell" of that size


def test_bad_input_and_bad_arguments() -> None:
    with pytest.raises(ImageError, match="constant"):
        segment_cells(np.zeros((64, 64)))
    with pytest.raises(ImageError, match="3-D stack"):
        segment_cells(np.zeros((5, 64, 64)))
    with pytest.raises(ValueError, match="kind must be"):
        segment_cells(_two_discs(0), kind="phase")
    with pytest.raises(ValueError, match="diameter"):
        segment_cells(_two_discs(0), diameter=-3)


def test_measure_cells_agrees_with_the_labels() -> None:
    labels = np.zeros((50, 60), dtype=np.uint16)
    labels[0:10, 5:15] = 7          # touches the top edge
    labels[20:30, 20:26] = 3        # inside
    labels[40:50, 50:60] = 12       # touches the bottom and right edges
    labels[22, 22] = 0              # a hole does not count
    t = measure_cells(labels)
    assert len(t) == 3
    np.testing.assert_array_equal(t.label, [3, 7, 12])
    np.testing.assert_array_equal(t.area, [59, 100, 100])
    np.testing.assert_array_equal(t.at_border, [False, True, True])
    np.testing.assert_array_equal(t.bbox, [[20, 20, 30, 26], [0, 5, 10, 15], [40, 50, 50, 60]])
    ys, xs = np.nonzero(labels == 3)
    assert t.centroid_y[0] == pytest.approx(ys.mean())
    assert t.centroid_x[0] == pytest.approx(xs.mean())
    assert t.label.dtype == np.int64 and t.bbox.dtype == np.int64
    # ids far beyond the pixel count are handled too
    big = np.where(labels == 3, 2_000_000_000, labels.astype(np.int64))
    np.testing.assert_array_equal(measure_cells(big).label, [7, 12, 2_000_000_000])


def test_at_border_flags_on_a_segmented_field(field) -> None:
    img = field.image[40:300, 40:300]  # the crop cuts cells at its edges
    labels = segment_cells(img)
    t = measure_cells(labels)
    h, w = labels.shape
    for i, lab in enumerate(t.label):
        ys, xs = np.nonzero(labels == lab)
        touches = ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1
        assert t.at_border[i] == touches
    assert t.at_border.any() and not t.at_border.all()


def test_check_labels_accepts_good_labels() -> None:
    labels = np.zeros((40, 50), dtype=np.uint16)
    labels[5:10, 5:10] = 4
    out = check_labels(labels, (40, 50))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.ones((30, 50), np.int32), "30x50 pixels but the image is 40x50"),
        (np.ones((40, 50), np.float32), "dtype float32"),
        (np.full((40, 50), -1, np.int32), "negative"),
        (np.zeros((40, 50), np.uint16), "no cells"),
        (np.ones((40, 50), np.uint16), "covers 100% of the image"),
        (np.ones((2, 40, 50), np.uint16), "2-D"),
    ],
)
def test_check_labels_rejects_bad_labels(labels: np.ndarray, match: str) -> None:
    with pytest.raises(ImageError, match=match) as info:
        check_labels(labels, (40, 50), name="labels 'x.tif'")
    assert "\n" not in str(info.value)


def test_check_labels_refuses_a_binary_mask_but_not_a_few_cells() -> None:
    from skimage.measure import label

    mask = np.zeros((40, 50), dtype=np.uint8)
    for r, c in ((2, 2), (2, 20), (2, 38), (20, 2), (20, 20), (30, 38)):
        mask[r:r + 6, c:c + 6] = 255  # six separate cells, all of value 255
    with pytest.raises(ImageError, match=r"1 value.s. for 6 separate objects.*binary mask") \
            as info:
        check_labels(mask, (40, 50), name="labels 'm.png'")
    assert "\n" not in str(info.value)
    # The same cells numbered one by one are fine, and so are two cells of one value each.
    np.testing.assert_array_equal(check_labels(label(mask), (40, 50)), label(mask))
    two = np.where(np.isin(label(mask), [1, 2]), label(mask), 0)
    assert check_labels(two, (40, 50)).max() == 2


def test_read_labels_and_match_by_stem(tmp_path: Path) -> None:
    images = tmp_path / "images"
    lab_dir = tmp_path / "labels"
    images.mkdir()
    lab_dir.mkdir()
    paths = [images / n for n in ("a.png", "b.jpg", "c.tif", "d.png")]
    for p in paths:
        p.touch()
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    tifffile.imwrite(lab_dir / "a_labels.tif", arr)
    (lab_dir / "b.TIFF").touch()
    (lab_dir / "c.tif").touch()
    (lab_dir / "zzz_labels.tif").touch()
    found = match_label_files(paths, lab_dir)
    assert list(found) == paths
    assert found[paths[0]] == lab_dir / "a_labels.tif"
    assert found[paths[1]] == lab_dir / "b.TIFF"
    assert found[paths[2]] == lab_dir / "c.tif"
    assert found[paths[3]] is None
    np.testing.assert_array_equal(read_labels(lab_dir / "a_labels.tif"), arr)
    # labels next to the images: an image is never its own label file
    tifffile.imwrite(images / "c_labels.tif", arr)
    same = match_label_files(paths, images)
    assert same[paths[2]] == images / "c_labels.tif"
    assert same[paths[0]] is None
    with pytest.raises(ImageError, match="labels folder"):
        match_label_files(paths, tmp_path / "missing")


def test_an_ome_tiff_s_labels_may_drop_the_ome_of_its_name(tmp_path: Path) -> None:
    images, lab_dir = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    lab_dir.mkdir()
    paths = [images / n for n in ("x.ome.tif", "y.ome.tiff", "z.ome.tif", ".ome.tif")]
    for p in paths:
        p.touch()
    for name in ("x_labels.tif", "y.tif", "z_labels.tif", "z.ome_labels.tif"):
        (lab_dir / name).touch()
    found = match_label_files(paths, lab_dir)
    assert found[paths[0]] == lab_dir / "x_labels.tif"  # as cellpose or a person names it
    assert found[paths[1]] == lab_dir / "y.tif"
    assert found[paths[2]] == lab_dir / "z.ome_labels.tif"  # the full stem comes first
    assert found[paths[3]] is None


CHULA = DATA / "chula-rbc"
DSB = DATA / "dsb2018-fluo"


@pytest.mark.skipif(not CHULA.is_dir(), reason="real chula-rbc data (../shared/data) not present")
def test_real_smear_field_finds_the_annotated_cells() -> None:
    img = read_image(CHULA / "images" / "1.jpg")
    pts = np.loadtxt(CHULA / "points" / "1.txt", ndmin=2)
    labels = segment_cells(img)
    assert image_kind(img) == "brightfield"
    hit = labels[pts[:, 1].astype(int), pts[:, 0].astype(int)]
    assert np.mean(hit > 0) >= 0.9
    counts = np.bincount(hit[hit > 0])
    assert np.sum(counts > 1) <= 0.05 * np.sum(counts > 0)


@pytest.mark.skipif(not DSB.is_dir(), reason="real dsb2018-fluo data (../shared/data) not present")
def test_real_fluorescence_field_matches_the_nuclei() -> None:
    stem = "0280fa8f60f6bcae"
    img = read_image(DSB / "images" / f"{stem}.png")
    truth = tifffile.imread(DSB / "labels" / f"{stem}_labels.tif")
    assert image_kind(img) == "fluorescence"
    matched, n_truth, n_pred = _matched(truth, segment_cells(img))
    assert 2 * matched / (n_truth + n_pred) >= 0.8
