"""Cells mode with canonical orientation: each cell turned so its major axis is horizontal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cell_anomaly.core.cellunits import (
    CellUnits,
    cell_orientation,
    orient_units,
    unorient,
)
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.sample import make_cell_field
from napari_cell_anomaly.core.training import TrainConfig, _augment, run_training

FILL = np.array([0.8, 0.75, 0.7], dtype=np.float32)


def _ellipse(angle_deg: float, side: int = 64, centre=(30.0, 33.0), axes=(20.0, 8.0)):
    """A window holding one dark elliptical cell, its major axis at ``angle_deg``."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    t = np.deg2rad(angle_deg)
    u = (xx - centre[1]) * np.cos(t) + (yy - centre[0]) * np.sin(t)
    v = -(xx - centre[1]) * np.sin(t) + (yy - centre[0]) * np.cos(t)
    mask = (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1
    win = np.empty((side, side, 3), dtype=np.float32)
    win[:] = FILL
    win[mask] = (0.3, 0.2, 0.4)
    return win, mask


@pytest.mark.parametrize("angle", [0.0, 30.0, 75.0, 90.0, -50.0, 135.0])
def test_an_elongated_cell_is_turned_horizontal_and_centred(angle):
    win, mask = _ellipse(angle)
    _, _, before = cell_orientation(mask)
    assert abs(np.sin(before - np.deg2rad(angle))) < 0.05  # the moments find the angle
    turned = orient_units(CellUnits([win], [mask], np.zeros((1, 2), np.int64)), FILL)
    w, m = turned.windows[0], turned.masks[0]
    cy, cx, theta = cell_orientation(m)
    assert abs(np.sin(theta)) < 0.05                      # major axis along the columns
    assert abs(cy - 31.5) <= 0.6 and abs(cx - 31.5) <= 0.6    # centroid at the window's centre
    rows, cols = np.nonzero(m)
    assert np.ptp(cols) > 2 * np.ptp(rows)
    assert abs(int(m.sum()) - int(mask.sum())) < 0.05 * mask.sum()
    # colours are carried along: the cell's inside and the background are unchanged
    np.testing.assert_allclose(w[31, 31], (0.3, 0.2, 0.4), atol=1e-5)
    np.testing.assert_allclose(w[0, 0], FILL, atol=1e-5)
    assert turned.transforms is not None and turned.transforms.shape == (1, 2, 3)
    # maps of the turned window go back onto the cell as it lay
    from scipy.ndimage import binary_dilation, binary_erosion

    back = unorient([m.astype(np.float32)], turned)[0] >= 0.5
    assert back[binary_erosion(mask)].all() and not back[~binary_dilation(mask)].any()
    colour = unorient([w], turned)[0]
    np.testing.assert_allclose(colour[30, 33], (0.3, 0.2, 0.4), atol=1e-5)


def test_unorient_is_the_identity_without_orientation():
    win, mask = _ellipse(40.0)
    units = CellUnits([win], [mask], np.zeros((1, 2), np.int64))
    assert unorient([win], units)[0] is win


def test_flips_only_augmentation_keeps_the_axes():
    bar = torch.zeros(64, 1, 16, 16)
    bar[:, :, 7:9, 2:14] = 1.0                             # horizontal bars
    gen = torch.Generator().manual_seed(0)
    flipped = _augment(bar, gen, flips_only=True)
    assert bool((flipped.sum(-1).amax(-1) >= 11).all())  # each still spans a row
    turned = _augment(bar, torch.Generator().manual_seed(0))
    assert bool((turned.sum(-2).amax(-1) >= 11).any())   # the full group also turns some


@pytest.fixture(scope="module")
def small_detectors(cell_fields):
    """Briefly trained cells-mode detectors, oriented (the default) and not."""
    images, labels = [f.image for f in cell_fields[:3]], [f.labels for f in cell_fields[:3]]
    return {o: run_training(images, TrainConfig(max_steps=6, epochs=10, orient=o),
                            labels=labels) for o in (True, False)}


def test_orientation_is_the_cells_mode_default(cells_detector):
    assert TrainConfig().orient and cells_detector.orient


def test_an_oriented_model_records_it_scores_and_round_trips(small_detectors, tmp_path):
    from napari_cell_anomaly.core.modelfile import load_file

    det = small_detectors[True]
    assert det.orient
    field = make_cell_field((320, 320), n_cells=35, anomaly_fraction=0.3, seed=55)
    cells = det.score_cells(field.image, field.labels)
    # the per-cell error map is turned back onto each cell's own pixels
    assert (cells.error_map[field.labels == 0] == 0).all()
    assert (cells.error_map[field.labels > 0] > 0).mean() > 0.5
    # the field's verdict assembles the turned-back reconstructions on the field
    result, _ = det.score_field(field.image, field.labels)
    assert result.reconstruction.shape == (*field.labels.shape, 3)
    assert np.isfinite(result.reconstruction).all()
    path = tmp_path / "oriented.safetensors"
    det.save(path)
    assert load_file(path)[1]["cells"]["orient"] is True
    again = AnomalyDetector.load(path)
    assert again.orient
    np.testing.assert_allclose(again.score_cells(field.image, field.labels).table["score"],
                               cells.table["score"], rtol=1e-5, atol=1e-6)


def test_model_files_without_the_setting_load_unoriented(small_detectors, tmp_path):
    from napari_cell_anomaly.core.modelfile import load_file, save_file

    det = small_detectors[False]
    assert not det.orient
    path = tmp_path / "new.safetensors"
    det.save(path)
    tensors, meta = load_file(path)
    del meta["cells"]["orient"]                            # as files written before it
    old = tmp_path / "old.safetensors"
    save_file(old, tensors, meta)
    back = AnomalyDetector.load(old)
    assert back.orient is False
    field = make_cell_field((320, 320), n_cells=35, anomaly_fraction=0.3, seed=56)
    np.testing.assert_array_equal(back.score_cells(field.image, field.labels).table["score"],
                                  det.score_cells(field.image, field.labels).table["score"])
