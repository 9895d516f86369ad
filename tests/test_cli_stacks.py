"""The command line on multi-page TIFF stacks: trained on plane by plane, scored plane by plane
(one CSV row per plane), stacked heatmaps; bad stacks end in one clear line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from napari_cell_anomaly.cli import main
from napari_cell_anomaly.core.batch import CELLS_CSV_COLUMNS, CSV_COLUMNS
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.sample import make_cell_field, make_cells


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def stack_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained by the CLI on one multi-page TIFF: 48 planes of 32 px normal crops."""
    root = tmp_path_factory.mktemp("stacks")
    tifffile.imwrite(root / "normals.tif", np.stack(make_cells(48, size=32, seed=1).images),
                     metadata={"axes": "ZYXS"})
    model = root / "model.safetensors"
    assert main(["train", str(root / "normals.tif"), "--out", str(model), "--size", "32",
                 "--epochs", "3", "--batch-size", "16", "--quiet"]) == 0
    return model


def test_train_takes_the_planes_of_a_stack_as_images(stack_model: Path) -> None:
    det = AnomalyDetector.load(stack_model)
    assert det.provenance["n_images"] == 48
    assert det.mode == "whole" and det.channels == "rgb"


def test_score_writes_one_row_per_plane_and_a_stacked_heatmap(stack_model: Path,
                                                              tmp_path: Path) -> None:
    planes = np.stack(make_cells(3, size=32, seed=5).images
                      + make_cells(2, size=32, anomaly_fraction=1.0, seed=6).images)
    tifffile.imwrite(tmp_path / "z.tif", planes, metadata={"axes": "ZYXS"})
    imsave(tmp_path / "one.png", planes[0], check_contrast=False)
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    assert main(["score", str(stack_model), str(tmp_path / "z.tif"), str(tmp_path / "one.png"),
                 "--csv", str(out), "--heatmaps", str(maps), "--quiet"]) == 0
    rows = _rows(out)
    assert tuple(rows[0]) == CSV_COLUMNS and CSV_COLUMNS[-1] == "plane"
    assert [(Path(r["path"]).name, r["plane"]) for r in rows] == [
        ("z.tif", str(i)) for i in range(5)] + [("one.png", "")]
    det = AnomalyDetector.load(stack_model)
    heat = tifffile.imread(maps / "z_anomaly_map.tif")
    assert heat.shape == (5, 32, 32) and heat.dtype == np.float32
    with tifffile.TiffFile(maps / "z_anomaly_map.tif") as tif:
        assert tif.series[0].axes == "ZYX"
    for i in range(5):
        ref = det.score(planes[i])
        assert float(rows[i]["score"]) == pytest.approx(ref.score, rel=1e-5)
        np.testing.assert_allclose(heat[i], ref.error_map, rtol=1e-5, atol=1e-7)
    assert tifffile.imread(maps / "one_anomaly_map.tif").shape == (32, 32)


def test_per_cell_rows_of_a_stack_name_their_plane(cells_detector: AnomalyDetector,
                                                   tmp_path: Path) -> None:
    fields = [make_cell_field((192, 192), n_cells=12, anomaly_fraction=0.3, seed=s)
              for s in (11, 12)]
    tifffile.imwrite(tmp_path / "t.tif", np.stack([f.image for f in fields]), imagej=False,
                     metadata={"axes": "TYXS"})
    labels = tmp_path / "labels"
    labels.mkdir()
    tifffile.imwrite(labels / "t_labels.tif",
                     np.stack([f.labels for f in fields]).astype(np.uint16))
    model = tmp_path / "cells.safetensors"
    cells_detector.save(model)
    out, cells_csv, maps = tmp_path / "f.csv", tmp_path / "c.csv", tmp_path / "maps"
    assert main(["score", str(model), str(tmp_path / "t.tif"), "--labels", str(labels),
                 "--csv", str(out), "--cells-csv", str(cells_csv), "--heatmaps", str(maps),
                 "--quiet"]) == 0
    assert [r["plane"] for r in _rows(out)] == ["0", "1"]
    cells = _rows(cells_csv)
    assert tuple(cells[0]) == CELLS_CSV_COLUMNS and CELLS_CSV_COLUMNS[-1] == "plane"
    for plane, field in enumerate(fields):
        ids = {int(r["cell_id"]) for r in cells if r["plane"] == str(plane)}
        assert ids and ids <= set(np.unique(field.labels)) - {0}
    written = tifffile.imread(maps / "t_labels.tif")
    np.testing.assert_array_equal(written, np.stack([f.labels for f in fields]))
    assert tifffile.imread(maps / "t_anomaly_map.tif").shape == (2, 192, 192)


@pytest.mark.parametrize(("case", "expected"), [
    ("sizes", "holds 2 images of different sizes"),
    ("tzyx", "axes TZYX"),
])
def test_bad_stacks_end_in_one_clear_line(stack_model: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], case: str,
                                          expected: str) -> None:
    path = tmp_path / "bad.tif"
    if case == "sizes":
        tifffile.imwrite(path, np.full((32, 32, 3), 9, np.uint8))
        tifffile.imwrite(path, np.full((24, 32, 3), 9, np.uint8), append=True)
    else:
        tifffile.imwrite(path, np.ones((2, 3, 32, 32), np.uint8), imagej=True,
                         metadata={"axes": "TZYX"})
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    code = main(["score", str(stack_model), str(path), "--csv", str(out), "--heatmaps",
                 str(maps), "--quiet"])
    assert code == 2  # nothing could be scored
    rows = _rows(out)
    assert len(rows) == 1 and expected in rows[0]["error"] and rows[0]["score"] == ""
    assert list(maps.iterdir()) == []  # no half-written heatmap
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err
    # Training on it: one line too, and no model file.
    assert main(["train", str(path), "--out", str(tmp_path / "m.safetensors"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and not (tmp_path / "m.safetensors").exists()
