"""The command line on multi-channel fluorescence files: channel axis from the file's metadata,
--channel-axis, the error choice and the clipped_fraction column."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_cell_anomaly.cli import main
from napari_cell_anomaly.core.detector import AnomalyDetector


def _nuclei(seed: int, side: int = 64, bright: float = 1.0) -> np.ndarray:
    """(2, side, side) uint16: channel 0 nuclei (bright discs), channel 1 a dimmer stain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    nuc = np.zeros((side, side))
    for _ in range(4):
        cy, cx = rng.uniform(10, side - 10, 2)
        nuc += ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(16, 36)) * 3000
    other = 0.3 * nuc + 200
    chans = np.stack([nuc + 300, other]) * bright + rng.normal(0, 40, (2, side, side))
    return np.clip(chans, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def fluo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fluo")
    (root / "train").mkdir()
    for i in range(12):
        tifffile.imwrite(root / "train" / f"f{i:02d}.ome.tif", _nuclei(i), ome=True,
                         metadata={"axes": "CYX"})
    model = root / "model.safetensors"
    code = main(["train", str(root / "train"), "--out", str(model), "--epochs", "2",
                 "--size", "32", "--mode", "whole", "--quiet"])
    assert code == 0
    return {"root": root, "model": model}


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {Path(r["path"]).name: r for r in csv.DictReader(fh)}


def test_ome_channels_train_a_two_channel_model_with_the_channel_error(fluo):
    det = AnomalyDetector.load(fluo["model"])
    assert det.channels == "multi" and det.preprocessing.n_channels == 2
    assert det.network.config.in_channels == 2
    assert det.preprocessing.dtype == "uint16"
    assert det.scoring.error == "mse"
    assert det.provenance["error_choice"] == "mse chosen for 2-channel images"


def test_error_option_overrides_the_choice(fluo, tmp_path):
    model = tmp_path / "ssim.safetensors"
    assert main(["train", str(fluo["root"] / "train"), "--out", str(model), "--epochs", "1",
                 "--size", "32", "--mode", "whole", "--error", "ssim", "--quiet"]) == 0
    assert AnomalyDetector.load(model).scoring.error == "ssim"


def test_score_reads_axes_and_reports_clipped_fraction(fluo, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "ok.ome.tif", _nuclei(50), ome=True, metadata={"axes": "CYX"})
    tifffile.imwrite(inputs / "hot.ome.tif", _nuclei(51, bright=15.0), ome=True,
                     metadata={"axes": "CYX"})
    tifffile.imwrite(inputs / "last.tif", np.moveaxis(_nuclei(52), 0, -1),
                     photometric="minisblack", planarconfig="contig", metadata=None)
    tifffile.imwrite(inputs / "plain.tif", _nuclei(53), photometric="minisblack",
                     metadata=None)  # pages without axes: ambiguous
    tifffile.imwrite(inputs / "rgb.tif", np.full((64, 64, 3), 9, np.uint8) + np.eye(
        64, dtype=np.uint8)[..., None], photometric="rgb")
    out = tmp_path / "scores.csv"
    assert main(["score", str(fluo["model"]), str(inputs), "--csv", str(out), "--quiet"]) == 0
    rows = _rows(out)
    assert float(rows["ok.ome.tif"]["clipped_fraction"]) < 0.05
    assert float(rows["hot.ome.tif"]["clipped_fraction"]) > 0.3
    assert rows["last.tif"]["score"] and rows["last.tif"]["error"] == ""
    assert "--channel-axis 0" in rows["plain.tif"]["error"]
    assert "expects 2 channels" in rows["rgb.tif"]["error"]
    err = capsys.readouterr().err
    assert "1 image(s) lie outside the model's training range" in err
    # --channel-axis settles the ambiguous file
    out2 = tmp_path / "scores2.csv"
    assert main(["score", str(fluo["model"]), str(inputs / "plain.tif"), "--csv", str(out2),
                 "--channel-axis", "0", "--quiet"]) == 0
    assert _rows(out2)["plain.tif"]["score"]


def test_bad_channel_axis_is_one_line(fluo, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["score", str(fluo["model"]), str(fluo["root"] / "train"), "--csv",
              str(tmp_path / "x.csv"), "--channel-axis", "first"])
    assert info.value.code == 2
    assert "expected an axis index or 'none'" in capsys.readouterr().err


def test_segment_multichannel_file_on_combined_or_chosen_channel(fluo, tmp_path):
    src = fluo["root"] / "train" / "f00.ome.tif"
    for extra, name in (([], "combined"), (["--channel", "0"], "chan0")):
        out = tmp_path / name
        assert main(["segment", str(src), "--out", str(out), "--quiet", *extra]) == 0
        labels = tifffile.imread(out / "f00.ome_labels.tif")
        assert labels.shape == (64, 64) and labels.max() >= 2
