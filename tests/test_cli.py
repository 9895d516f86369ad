"""End-to-end tests of the ``cell-anomaly`` command line, with a real (briefly) trained model."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from napari_cell_anomaly.cli import main
from napari_cell_anomaly.core.batch import CSV_COLUMNS
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.sample import make_cells


def _write_cells(folder: Path, n: int, anomaly_fraction: float, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cells = make_cells(n, anomaly_fraction=anomaly_fraction, seed=seed)
    paths = []
    for i, img in enumerate(cells.images):
        p = folder / f"cell_{i:03d}.png"
        imsave(p, img, check_contrast=False)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    _write_cells(root / "normal", 80, 0.0, seed=1)
    _write_cells(root / "test_normal", 10, 0.0, seed=2)
    anomalous = make_cells(20, anomaly_fraction=1.0, seed=3)
    (root / "test_anomalous").mkdir()
    for i, img in enumerate(anomalous.images):
        imsave(root / "test_anomalous" / f"a_{i:03d}.png", img, check_contrast=False)
    model = root / "model.safetensors"
    code = main(["train", str(root / "normal"), "--out", str(model), "--epochs", "8",
                 "--batch-size", "16", "--quiet"])
    assert code == 0
    return {"root": root, "model": model}


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message on stderr"
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_train_writes_a_loadable_model(workspace: dict[str, Path]) -> None:
    det = AnomalyDetector.load(workspace["model"])
    assert det.provenance["n_images"] == 80
    assert det.channels == "rgb"
    assert det.calibration.size >= 1


def test_score_writes_csv_rows_and_float32_heatmaps(workspace: dict[str, Path],
                                                    tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    heat = tmp_path / "maps"
    inputs = workspace["root"] / "test_anomalous"
    code = main(["score", str(workspace["model"]), str(inputs), str(workspace["root"] /
                 "test_normal"), "--csv", str(out), "--heatmaps", str(heat), "--quiet"])
    assert code == 0
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert tuple(header[:5]) == ("path", "score", "recon_error", "log_density", "is_anomaly")
    assert tuple(header) == CSV_COLUMNS
    assert len(body) == 30
    assert {r[4] for r in body} <= {"0", "1"}
    first = Path(body[0][0])
    hm = tifffile.imread(heat / f"{first.stem}_anomaly_map.tif")
    assert hm.dtype == np.float32
    assert hm.shape == (64, 64)
    # Even a briefly trained model reconstructs planted anomalies worse than normal cells.
    errors: dict[str, list[float]] = {"test_anomalous": [], "test_normal": []}
    for r in body:
        errors[Path(r[0]).parent.name].append(float(r[2]))
    assert np.median(errors["test_anomalous"]) > np.median(errors["test_normal"])


def test_score_skips_bad_files_and_reports_them(workspace: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    _write_cells(folder, 3, 0.0, seed=5)
    (folder / "broken.png").write_bytes(b"not a png at all")
    imsave(folder / "constant.png", np.full((32, 32, 3), 7, np.uint8), check_contrast=False)
    tifffile.imwrite(folder / "stack.tif", np.zeros((5, 32, 32), np.uint8))
    out = tmp_path / "s.csv"
    assert main(["score", str(workspace["model"]), str(folder), "--csv", str(out),
                 "--quiet"]) == 0
    with open(out, newline="") as fh:
        every = list(csv.DictReader(fh))
    rows = {Path(r["path"]).name: r for r in every}
    assert len(rows) == 6
    assert rows["cell_000.png"]["score"] != ""
    assert "constant" in rows["constant.png"]["error"]
    # 5 pages without axis metadata: 5 planes or 5 channels? The file does not say.
    assert [r["path"].endswith("stack.tif") for r in every].count(True) == 1
    assert "channels or planes" in rows["stack.tif"]["error"]
    assert rows["broken.png"]["score"] == ""
    err = capsys.readouterr().err
    assert "skipped 3" in err
    assert err.count("false alarms (calibrated on") == 1  # the model's rate, stated once


def test_evaluate_prints_json_metrics(workspace: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = workspace["root"]
    assert main(["evaluate", str(workspace["model"]), "--normal", str(root / "test_normal"),
                 "--anomalous", str(root / "test_anomalous")]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("auroc", "auprc", "tpr_at_threshold", "fpr_at_threshold"):
        assert 0.0 <= report[key] <= 1.0
    assert report["n_normal"] == 10 and report["n_anomalous"] == 20
    assert report["nominal_fpr"] == 0.05
    assert report["observed_fpr"] == report["fpr_at_threshold"]
    assert report["observed_fpr_ci95"][0] <= report["observed_fpr"] <= \
        report["observed_fpr_ci95"][1]


@pytest.mark.parametrize("case", ["empty_dir", "missing", "unwritable_out", "bad_model",
                                  "tampered_model", "bad_fpr"])
def test_bad_input_gives_one_clear_line_and_writes_nothing(
        case: str, workspace: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    model = workspace["model"]
    images = str(workspace["root"] / "test_normal")
    out = tmp_path / "out.csv"
    if case == "empty_dir":
        (tmp_path / "empty").mkdir()
        args = ["score", str(model), str(tmp_path / "empty"), "--csv", str(out)]
        expect = "no images found"
    elif case == "missing":
        args = ["train", str(tmp_path / "nope"), "--out", str(tmp_path / "m.safetensors")]
        expect = "no such file"
    elif case == "unwritable_out":
        out = tmp_path / "missing_folder" / "out.csv"
        args = ["score", str(model), images, "--csv", str(out)]
        expect = "does not exist"
    elif case == "bad_model":
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"\x00" * 100)
        args = ["score", str(bad), images, "--csv", str(out)]
        expect = "bad.safetensors"
    elif case == "tampered_model":
        data = bytearray(model.read_bytes())
        data[-10] ^= 0xFF
        bad = tmp_path / "tampered.safetensors"
        bad.write_bytes(bytes(data))
        args = ["score", str(bad), images, "--csv", str(out)]
        expect = "checksum"
    else:
        args = ["score", str(model), images, "--csv", str(out), "--fpr", "2"]
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
        assert "between 0 and 1" in _error_line(capsys)
        assert not out.exists()
        return
    assert main(args) == 2
    line = _error_line(capsys)
    assert line.startswith("cell-anomaly: error:")
    assert expect in line
    assert not out.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_device_option_gives_the_default_results(workspace: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root, model = workspace["root"], str(workspace["model"])
    tables = {}
    for extra in ([], ["--device", "cpu"]):
        out = tmp_path / f"scores{len(extra)}.csv"
        assert main(["score", model, str(root / "test_anomalous"), "--csv", str(out),
                     "--quiet", *extra]) == 0
        tables[len(extra)] = out.read_text()
    assert tables[0] == tables[2] and tables[0].count("\n") == 21
    assert "running on cpu" in capsys.readouterr().err
    reports = []
    for extra in ([], ["--device", "cpu"]):
        assert main(["evaluate", model, "--normal", str(root / "test_normal"), "--anomalous",
                     str(root / "test_anomalous"), *extra]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0] == reports[1]


@pytest.mark.parametrize("command", ["train", "score", "evaluate"])
@pytest.mark.parametrize("device, expect", [
    ("cuda", "cuda requested but this machine has no CUDA device ("),
    ("gpu", "unknown device 'gpu'; expected auto, cpu, cuda, cuda:N or mps"),
])
def test_an_absent_or_unknown_device_is_one_line_and_exit_2(
        command: str, device: str, expect: str, workspace: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root, model = workspace["root"], str(workspace["model"])
    out = tmp_path / "out"
    args = {"train": ["train", str(root / "normal"), "--out", str(out), "--quiet"],
            "score": ["score", model, str(root / "test_normal"), "--csv", str(out)],
            "evaluate": ["evaluate", model, "--normal", str(root / "test_normal"),
                         "--anomalous", str(root / "test_anomalous")]}[command]
    assert main([*args, "--device", device]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cell-anomaly: error: {expect}")
    assert not out.exists()


def test_train_rejects_a_single_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_cells(tmp_path / "one", 1, 0.0, seed=0)
    model = tmp_path / "m.safetensors"
    assert main(["train", str(tmp_path / "one"), "--out", str(model), "--quiet"]) == 2
    assert "at least 4 images" in _error_line(capsys)
    assert not model.exists()


@pytest.mark.parametrize("density", ["kde", "gmm"])
def test_train_records_the_chosen_density(workspace: dict[str, Path], tmp_path: Path,
                                          density: str) -> None:
    from napari_cell_anomaly.core import density as density_mod
    from napari_cell_anomaly.core.modelfile import load_file

    model = tmp_path / f"{density}.safetensors"
    code = main(["train", str(workspace["root"] / "normal"), "--out", str(model), "--epochs",
                 "1", "--batch-size", "24", "--density", density, "--quiet"])
    assert code == 0
    _, meta = load_file(model)
    assert meta["scoring"]["density"] == density
    assert meta["provenance"]["train_config"]["scoring"]["density"] == density
    det = AnomalyDetector.load(model)
    assert det.scoring.density == density
    assert isinstance(det.density, {"kde": density_mod.LocalLatentKDE,
                                    "gmm": density_mod.LocalLatentDensity}[density])


def test_train_defaults_and_their_help_come_from_train_config(
        capsys: pytest.CaptureFixture[str]) -> None:
    from napari_cell_anomaly.cli import build_parser
    from napari_cell_anomaly.core.training import TrainConfig

    d = TrainConfig()
    args = build_parser().parse_args(["train", "in", "--out", "m.safetensors"])
    for name in ("epochs", "size", "loss", "preset", "mode", "batch_size", "seed", "robust"):
        assert getattr(args, name) == getattr(d, name), name
    assert args.density == d.scoring.density
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for value in (d.epochs, d.size, d.loss, d.preset, d.mode, d.batch_size, d.seed,
                  d.scoring.density):
        assert re.search(rf"default: {re.escape(str(value))}[):]", text), value
    with pytest.raises(SystemExit):  # "kde-flat" is read from old files, never trained
        build_parser().parse_args(["train", "in", "--out", "m", "--density", "kde-flat"])


def test_demo_writes_every_output(tmp_path: Path) -> None:
    from napari_cell_anomaly.demo import run_demo

    summary = run_demo(tmp_path, quiet=True, n_train=60, n_test=20, epochs=1)
    for key in ("model", "figure", "scores", "heatmaps"):
        assert Path(summary["files"][key]).exists()
    assert len(list((tmp_path / "heatmaps").glob("*.tif"))) == 20
    assert 0.0 <= summary["auroc"] <= 1.0
    assert json.loads((tmp_path / "summary.json").read_text())["test_images"] == 20


def test_segment_writes_one_label_image_per_field(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from napari_cell_anomaly.core.sample import make_cell_field

    images = tmp_path / "fields"
    images.mkdir()
    field = make_cell_field((256, 256), n_cells=20, seed=4)
    imsave(images / "smear.png", field.image, check_contrast=False)
    blank = (np.random.default_rng(0).normal(200, 1, (64, 64))).astype(np.uint8)
    imsave(images / "blank.png", blank, check_contrast=False)
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "labels"
    code = main(["segment", str(images), "--out", str(out), "--quiet"])
    assert code == 0
    labels = tifffile.imread(out / "smear_labels.tif")
    assert labels.dtype == np.uint16 and labels.shape == (256, 256)
    n_planted = int(field.labels.max())
    assert abs(int(labels.max()) - n_planted) <= 2
    # each planted cell's centre lies in an object
    from scipy import ndimage as ndi

    centres = ndi.center_of_mass(field.labels > 0, field.labels, range(1, n_planted + 1))
    hits = [labels[round(y), round(x)] for y, x in centres]
    assert sum(h > 0 for h in hits) >= n_planted - 1
    empty = tifffile.imread(out / "blank_labels.tif")
    assert empty.shape == (64, 64) and not empty.any()
    assert not (out / "broken_labels.tif").exists()
    assert not list(out.glob(".*tmp"))
    err = capsys.readouterr().err
    assert "warning: no cells found in blank.png" in err
    assert "skipped 1 unusable image file(s)" in err
    assert f"segmented 2 images: {int(labels.max())} cells found" in err


def test_segment_with_nothing_usable_fails_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert main(["segment", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "segmented 0 images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", str(bad), "--out", str(tmp_path / "out"), "--diameter", "-4"])


def test_outputs_of_two_images_of_one_name_are_refused_before_any_work(
        workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # plate1/A01.png and plate2/A01.png: one heatmap (one label image) would silently
    # overwrite the other's in the shared output folder.
    src = sorted((workspace["root"] / "test_normal").glob("*.png"))
    for plate, image in (("plate1", src[0]), ("plate2", src[1])):
        (tmp_path / plate).mkdir()
        (tmp_path / plate / "A01.png").write_bytes(image.read_bytes())
    inputs = [str(tmp_path / "plate1"), str(tmp_path / "plate2")]
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    assert main(["score", str(workspace["model"]), *inputs, "--csv", str(out), "--heatmaps",
                 str(maps), "--quiet"]) == 2
    line = _error_line(capsys)
    assert "share the name 'A01'" in line and "plate1" in line and "plate2" in line
    assert not out.exists() and not maps.exists()
    assert main(["segment", *inputs, "--out", str(tmp_path / "labels"), "--quiet"]) == 2
    assert "share the name 'A01'" in _error_line(capsys)
    assert not (tmp_path / "labels").exists()
    # Without per-image files the same inputs are fine: the CSV tells them apart by path.
    assert main(["score", str(workspace["model"]), *inputs, "--csv", str(out), "--quiet"]) == 0
    with open(out, newline="") as fh:
        assert len(list(csv.reader(fh))) == 3


def test_an_output_that_is_an_input_image_or_another_output_is_refused(
        workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted((workspace["root"] / "test_normal").glob("*.png"))[:2]:
        (folder / image.name).write_bytes(image.read_bytes())
    first = sorted(folder.glob("*.png"))[0]
    before = first.read_bytes()
    model = str(workspace["model"])
    cases = [
        # a typo away from destroying an image: --csv names one of the inputs
        (["score", model, str(folder), "--csv", str(first)], "--csv", "input images"),
        (["score", model, str(folder), "--csv", str(tmp_path / "s.csv"), "--cells-csv",
          str(tmp_path / "s.csv"), "--labels", "auto"], "--cells-csv", "both name"),
        # heatmaps written into the input folder a second time: last run's maps are inputs now
        (["score", model, str(folder / "x.png"), str(folder / "x_anomaly_map.tif"), "--csv",
          str(tmp_path / "h.csv"), "--heatmaps", str(folder)], "--heatmaps", "input images"),
        (["train", str(folder), "--out", str(first)], "--out", "input images"),
        (["segment", str(folder), "--out", str(folder)], "--out", "input images"),
    ]
    tifffile.imwrite(folder / "x_anomaly_map.tif", np.zeros((8, 8), np.float32))
    tifffile.imwrite(folder / "x_labels.tif", np.zeros((8, 8), np.uint16))
    (folder / "x.png").write_bytes(before)
    for args, option, expect in cases:
        assert main(args) == 2, args
        line = _error_line(capsys)
        assert option in line and expect in line, line
    assert first.read_bytes() == before
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.json"))


def test_outputs_replaced_are_named_and_kept_with_resume(
        workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = str(workspace["root"] / "test_normal")
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    args = ["score", str(workspace["model"]), images, "--csv", str(out), "--heatmaps",
            str(maps), "--quiet"]
    assert main(args) == 0
    assert "replacing" not in capsys.readouterr().err  # nothing there before
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"replacing 1 existing results CSV(s) ('{out}')" in err
    assert "--resume keeps their rows" in err
    assert "replacing 10 existing heatmap file(s)" in err
    assert main([*args, "--resume"]) == 0  # keeps the rows, scores nothing anew
    assert "replacing" not in capsys.readouterr().err
    labels = tmp_path / "labels"
    for _ in range(2):
        assert main(["segment", images, "--out", str(labels), "--quiet"]) == 0
    assert "replacing 10 existing label image(s)" in capsys.readouterr().err


def test_train_says_it_replaces_a_model_and_shows_no_bar_in_a_log(
        workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"an older model")
    # Not --quiet, but stderr is not a terminal here (as in a log file or a pipe): no
    # progress bar redrawn with carriage returns hundreds of times.
    assert main(["train", str(workspace["root"] / "test_normal"), "--out", str(model),
                 "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert f"replacing 1 existing file(s) ('{model}') when training ends" in err
    assert "\r" not in err and "step/s" not in err
    assert AnomalyDetector.load(model).provenance["n_images"] == 10


_REUSE_SCRIPT = """
import resource, sys
import numpy as np
from napari_cell_anomaly._cli.common import keep_freed_memory

if sys.argv[1] == "keep":
    assert keep_freed_memory()


def faults_of_a_fresh_array():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(24 << 20, dtype=np.float32)  # 96 MiB, over glibc's default mmap threshold
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


first = faults_of_a_fresh_array()
print(first, faults_of_a_fresh_array())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_lets_the_process_reuse_freed_blocks() -> None:
    faults = {}
    for mode in ("default", "keep"):
        proc = subprocess.run([sys.executable, "-c", _REUSE_SCRIPT, mode], capture_output=True,
                              text=True)
        if mode == "keep" and "AssertionError" in proc.stderr:
            pytest.skip("mallopt not available (not glibc)")
        assert proc.returncode == 0, proc.stderr
        faults[mode] = [int(v) for v in proc.stdout.split()]
    # By default the freed array goes back to the system and the next one faults its pages in
    # again; kept, the second array reuses the first one's pages.
    assert faults["default"][1] > 0.5 * faults["default"][0] > 0
    assert faults["keep"][1] < 0.1 * faults["keep"][0]
