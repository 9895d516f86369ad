"""The CLI's per-cell path: train from fields with label images, score one row per cell."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from napari_cell_anomaly.cli import main
from napari_cell_anomaly.core.batch import CELLS_CSV_COLUMNS
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.metrics import image_auroc
from napari_cell_anomaly.core.sample import make_cell_field

FIXED_FIRST = ["path", "cell_id", "centroid_y", "centroid_x", "area", "score", "recon_error",
               "log_density", "is_anomaly"]


@pytest.fixture(scope="module")
def fields(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cells-cli")
    normal, labels, test, test_labels = (root / n for n in ("normal", "labels", "test",
                                                            "test_labels"))
    for d in (normal, labels, test, test_labels):
        d.mkdir()
    for s in range(8):  # 6 to train on, 1 to choose the checkpoint, 1 to calibrate
        f = make_cell_field((256, 256), n_cells=25, anomaly_fraction=0.0, seed=s)
        imsave(normal / f"field{s}.png", f.image, check_contrast=False)
        # ids far from 1..n, as another tool would write them: the CSV must keep them
        tifffile.imwrite(labels / f"field{s}_labels.tif",
                         np.where(f.labels > 0, f.labels + 100, 0).astype(np.uint16))
    planted = {}
    for s in (50, 51):
        f = make_cell_field((256, 256), n_cells=25, anomaly_fraction=0.4, seed=s)
        imsave(test / f"t{s}.png", f.image, check_contrast=False)
        tifffile.imwrite(test_labels / f"t{s}.tif", f.labels.astype(np.uint16))
        planted[f"t{s}"] = set(f.anomalous_ids.tolist())
    model = root / "cells.safetensors"
    assert main(["train", str(normal), "--labels", str(labels), "--out", str(model),
                 "--epochs", "40", "--quiet"]) == 0
    return {"root": root, "model": model, "test": test, "test_labels": test_labels,
            "planted": planted}  # type: ignore[dict-item]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_with_a_labels_folder_makes_a_cells_model(fields: dict) -> None:
    det = AnomalyDetector.load(fields["model"])
    assert det.mode == "cells"
    assert det.provenance["cells"]["labels_given"] == 8
    assert det.provenance["cells"]["n_fields_calibration"] == 1


def test_cells_csv_columns_ids_and_verdicts(fields: dict, tmp_path: Path) -> None:
    out, cells_out = tmp_path / "images.csv", tmp_path / "cells.csv"
    assert main(["score", str(fields["model"]), str(fields["test"]), "--labels",
                 str(fields["test_labels"]), "--csv", str(out), "--cells-csv", str(cells_out),
                 "--quiet"]) == 0
    with cells_out.open() as fh:
        header = next(csv.reader(fh))
    assert header[:9] == FIXED_FIRST and tuple(header) == CELLS_CSV_COLUMNS
    rows = _rows(cells_out)
    for stem, planted in fields["planted"].items():
        mine = [r for r in rows if Path(r["path"]).stem == stem]
        labels = tifffile.imread(fields["test_labels"] / f"{stem}.tif")
        ids = {int(r["cell_id"]) for r in mine}
        assert ids == set(np.unique(labels[labels > 0]).tolist())
        for r in mine:  # centroid and area are those of the object with that id
            ys, xs = np.nonzero(labels == int(r["cell_id"]))
            assert int(r["area"]) == ys.size
            assert abs(float(r["centroid_y"]) - ys.mean()) < 0.1
            assert abs(float(r["centroid_x"]) - xs.mean()) < 0.1
        flagged = {int(r["cell_id"]) for r in mine if r["is_anomaly"] == "1"}
        assert len(flagged & planted) >= 0.7 * len(planted)
        # ~25 calibration cells from one held-out field: verdicts on normals are coarse
        assert len(flagged - planted) <= 0.3 * (len(mine) - len(planted))
        y = [int(r["cell_id"]) in planted for r in mine]
        assert image_auroc(y, [float(r["score"]) for r in mine]) > 0.9
    images = _rows(out)
    assert len(images) == 2 and all(r["is_anomaly"] == "1" for r in images)


def test_cells_model_segments_by_itself(fields: dict, tmp_path: Path) -> None:
    out, cells_out, maps = tmp_path / "i.csv", tmp_path / "c.csv", tmp_path / "maps"
    assert main(["score", str(fields["model"]), str(fields["test"]), "--csv", str(out),
                 "--cells-csv", str(cells_out), "--heatmaps", str(maps), "--quiet"]) == 0
    rows = _rows(cells_out)
    assert len(rows) > 30
    for stem in fields["planted"]:
        labels = tifffile.imread(maps / f"{stem}_labels.tif")
        assert labels.dtype == np.uint16
        ids = {int(r["cell_id"]) for r in rows if Path(r["path"]).stem == stem}
        assert ids <= set(np.unique(labels).tolist()) - {0}
        heat = tifffile.imread(maps / f"{stem}_anomaly_map.tif")
        assert heat.shape == labels.shape and heat.dtype == np.float32


def test_missing_label_images_are_one_clear_error(fields: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "nolabels"
    empty.mkdir()
    out = tmp_path / "x.csv"
    assert main(["score", str(fields["model"]), str(fields["test"]), "--labels", str(empty),
                 "--csv", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no label image for t50.png" in err
    model = tmp_path / "m.safetensors"
    assert main(["train", str(fields["test"]), "--labels", str(empty), "--out", str(model),
                 "--quiet"]) == 2
    assert "no label image" in capsys.readouterr().err
    assert not model.exists()


def test_whole_model_on_a_field_says_to_score_per_cell(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       cell_detector: AnomalyDetector) -> None:
    model = tmp_path / "whole.safetensors"
    cell_detector.save(model)
    field = make_cell_field((512, 512), n_cells=60, seed=9)
    imsave(tmp_path / "field.png", field.image, check_contrast=False)
    out = tmp_path / "s.csv"
    assert main(["score", str(model), str(tmp_path / "field.png"), "--csv", str(out)]) == 2
    assert "per cell" in capsys.readouterr().err
    assert main(["score", str(model), str(tmp_path / "field.png"), "--csv", str(out),
                 "--labels", "auto", "--cells-csv", str(tmp_path / "c.csv")]) == 0
    assert len(_rows(tmp_path / "c.csv")) > 20


def test_per_cell_with_a_patch_model_is_one_line_before_any_output(
        fields: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        patch_detector: AnomalyDetector) -> None:
    model = tmp_path / "patch.safetensors"
    patch_detector.save(model)
    out, cells, maps = tmp_path / "s.csv", tmp_path / "c.csv", tmp_path / "maps"
    for extra in (["--cells-csv", str(cells)], ["--labels", str(fields["test_labels"])]):
        assert main(["score", str(model), str(fields["test"]), "--csv", str(out),
                     "--heatmaps", str(maps), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cell-anomaly: error: ")
        assert extra[0] in err[0] and "patch-mode model" in err[0]
        assert not out.exists() and not cells.exists() and not maps.exists()


def test_no_orient_trains_a_model_that_keeps_cells_as_they_lie(fields: dict,
                                                                tmp_path: Path) -> None:
    # The fixture's model was trained without the flag: cells turned (the default).
    assert AnomalyDetector.load(fields["model"]).orient is True
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for s in range(4):
        f = make_cell_field((128, 128), n_cells=10, anomaly_fraction=0.0, seed=s)
        imsave(images / f"f{s}.png", f.image, check_contrast=False)
        tifffile.imwrite(labels / f"f{s}.tif", f.labels.astype(np.uint16))
    model = tmp_path / "plain.safetensors"
    assert main(["train", str(images), "--labels", str(labels), "--out", str(model),
                 "--no-orient", "--epochs", "1", "--quiet"]) == 0
    det = AnomalyDetector.load(model)
    assert det.mode == "cells" and det.orient is False
    oriented = tmp_path / "oriented.safetensors"
    assert main(["train", str(images), "--labels", str(labels), "--out", str(oriented),
                 "--orient", "--epochs", "1", "--quiet"]) == 0
    assert AnomalyDetector.load(oriented).orient is True


def test_resume_scores_again_the_images_whose_label_file_changed(
        fields: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each image's label file is recorded (size, modification time): a resumed run after
    one label file changed scores that image again with it (its rows replaced, nothing
    mixed) and keeps the others' rows; an unchanged resume scores nothing."""
    labels = tmp_path / "labels"
    labels.mkdir()
    for p in fields["test_labels"].glob("*.tif"):
        (labels / p.name).write_bytes(p.read_bytes())
    out, cells_out = tmp_path / "s.csv", tmp_path / "c.csv"
    args = ["score", str(fields["model"]), str(fields["test"]), "--labels", str(labels),
            "--csv", str(out), "--cells-csv", str(cells_out), "--quiet"]
    assert main(args) == 0
    first, first_cells = _rows(out), _rows(cells_out)
    assert len(first) == 2
    # unchanged: nothing to do, nothing rewritten but the same rows
    capsys.readouterr()
    before = out.read_bytes(), cells_out.read_bytes()
    assert main([*args, "--resume"]) == 0
    assert "2 images already scored, 0 to go" in capsys.readouterr().err
    assert (out.read_bytes(), cells_out.read_bytes()) == before
    # one label file loses its largest cell: that image is scored again with the new labels
    changed = labels / "t51.tif"
    lab = tifffile.imread(changed)
    ids, areas = np.unique(lab[lab > 0], return_counts=True)
    gone = int(ids[np.argmax(areas)])
    tifffile.imwrite(changed, np.where(lab == gone, 0, lab).astype(np.uint16))
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert ("1 images already scored, 1 to go (1 of them scored before with a label file "
            "that has changed since)") in err
    second, second_cells = _rows(out), _rows(cells_out)
    key = {r["path"]: r for r in first}
    for r in second:
        if r["path"].endswith("t50.png"):
            assert r == key[r["path"]]  # kept as it was
    ids51 = [r["cell_id"] for r in second_cells if r["path"].endswith("t51.png")]
    assert str(gone) not in ids51 and len(ids51) == len(ids) - 1
    assert ([r for r in second_cells if r["path"].endswith("t50.png")]
            == [r for r in first_cells if r["path"].endswith("t50.png")])
    # and now the record holds the new label file: an unchanged resume scores nothing
    assert main([*args, "--resume"]) == 0
    assert "2 images already scored, 0 to go" in capsys.readouterr().err
    assert _rows(out) == second
