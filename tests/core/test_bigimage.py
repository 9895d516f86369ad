"""Images larger than memory: streamed patch-mode scoring equals the in-memory path, heatmaps
are tiled BigTIFFs written without a partial file, and the command line picks the streamed
path for tiled or very large TIFFs.

Small "big" images (600 x 700) with 128-pixel tiles stand in for slides: the streamed path
must give the same numbers as :meth:`AnomalyDetector.score` bit for bit, which only holds if
it cuts the same tiles, runs the same batches and measures the same windows.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from skimage.io import imsave

from napari_cell_anomaly.cli import main
from napari_cell_anomaly.core import mappass
from napari_cell_anomaly.core.bigimage import score_file, score_streaming
from napari_cell_anomaly.core.heatmapfiles import (
    HeatmapWriteError,
    write_heatmap,
    write_heatmap_zarr,
)
from napari_cell_anomaly.core.images import ImageError
from napari_cell_anomaly.core.lazyimage import open_image, should_stream
from napari_cell_anomaly.core.sample import make_field
from napari_cell_anomaly.core.tiling import PredictionStopped

SHAPE = (600, 700)


@pytest.fixture(scope="module")
def field() -> np.ndarray:
    return make_field(SHAPE, n_cells=80, anomaly_fraction=0.3, seed=4)[0]


@pytest.fixture()
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> int:
    """128-pixel tiles (margin 32) for the in-memory and the streamed path alike: 5 x 6 tiles,
    several tiles per batch row, batches straddling tile rows."""
    monkeypatch.setattr(mappass, "TILE", 128)
    return 128


@pytest.fixture()
def in_memory(patch_detector, field, small_tiles):
    return patch_detector.score(field)


def _tiled_tiff(path: Path, image: np.ndarray, tile: int = 128) -> Path:
    tifffile.imwrite(path, image, tile=(tile, tile), photometric="rgb", compression="zlib")
    return path


def test_streamed_score_and_heatmap_equal_the_in_memory_ones(patch_detector, field, in_memory,
                                                             tmp_path) -> None:
    src = _tiled_tiff(tmp_path / "slide.tif", field)
    seen: list[tuple[int, int]] = []
    res = score_file(patch_detector, src, heatmap=tmp_path / "map.tif",
                     progress=lambda d, t: seen.append((d, t)))
    assert res.score == in_memory.score
    assert res.recon_error == in_memory.recon_error
    assert res.log_density == in_memory.log_density
    assert res.n_windows == in_memory.n_windows > 1
    assert (res.percentile, res.is_anomaly, res.threshold) == (
        in_memory.percentile, in_memory.is_anomaly, in_memory.threshold)
    assert res.shape == SHAPE
    assert res.clipped_fraction == pytest.approx(in_memory.clipped_fraction, abs=1e-12)
    assert res.range_warning == in_memory.range_warning
    with tifffile.TiffFile(tmp_path / "map.tif") as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and page.compression == 8  # zlib/deflate
        heat = page.asarray()
    assert heat.dtype == np.float32
    np.testing.assert_array_equal(heat, in_memory.error_map)
    assert seen[-1][0] == seen[-1][1] > 1
    assert not list(tmp_path.glob(".*tmp"))


def test_streamed_score_reads_arrays_channels_first_and_ome_zarr(patch_detector, field,
                                                                 in_memory, tmp_path) -> None:
    assert score_streaming(patch_detector, field).score == in_memory.score
    # An OME-Zarr-like store, channels first, with a half-resolution level: level 0 is scored.
    root = zarr.open_group(str(tmp_path / "slide.zarr"), mode="w")
    chw = np.ascontiguousarray(field.transpose(2, 0, 1))
    root.create_array("0", data=chw, chunks=(3, 100, 100))
    root.create_array("1", data=chw[:, ::2, ::2], chunks=(3, 100, 100))
    root.attrs["multiscales"] = [{"axes": [{"name": "c"}, {"name": "y"}, {"name": "x"}],
                                  "datasets": [{"path": "0"}, {"path": "1"}]}]
    with open_image(tmp_path / "slide.zarr") as lazy:
        assert lazy.shape == SHAPE
        res = score_streaming(patch_detector, lazy)
    assert res.score == in_memory.score and res.n_windows == in_memory.n_windows


def test_stop_and_bad_input_leave_no_heatmap(patch_detector, field, small_tiles,
                                             tmp_path) -> None:
    out = tmp_path / "map.tif"
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(PredictionStopped):
        score_streaming(patch_detector, field, heatmap=out, stop=stop)
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ImageError, match=r"60x700 pixels; this patch-mode model needs"):
        score_streaming(patch_detector, field[:60], heatmap=out)
    gray = field[..., 0]
    with pytest.raises(ImageError, match="model expects RGB images"):
        score_streaming(patch_detector, gray, heatmap=out)
    with pytest.raises(ImageError, match=r"cannot read image 'nothing\.tif'"):
        open_image(tmp_path / "nothing.tif")
    assert not list(tmp_path.iterdir())


def test_whole_mode_models_are_refused(patch_detector, field) -> None:
    whole = dataclasses.replace(patch_detector, mode="whole")
    with pytest.raises(ValueError, match="needs a patch-mode model; this one is in whole mode"):
        score_streaming(whole, field)


def test_a_writer_failing_mid_stream_leaves_no_file_under_the_final_name(tmp_path) -> None:
    old = tmp_path / "map.tif"
    tifffile.imwrite(old, np.ones((8, 8), np.float32))
    before = old.read_bytes()

    def bands():
        yield 0, np.zeros((300, 700), np.float32)
        raise OSError(28, "No space left on device")

    with pytest.raises(HeatmapWriteError, match="No space left on device"):
        write_heatmap(old, bands(), SHAPE, tile=128)
    assert old.read_bytes() == before  # the previous file is untouched
    new = tmp_path / "new.tif"
    with pytest.raises(HeatmapWriteError):
        write_heatmap(new, bands(), SHAPE, tile=128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif"]


def test_should_stream_tiled_or_large_tiffs_only(field, tmp_path) -> None:
    striped = tmp_path / "striped.tif"
    tifffile.imwrite(striped, field, photometric="rgb")
    png = tmp_path / "field.png"
    imsave(png, field, check_contrast=False)
    assert should_stream(_tiled_tiff(tmp_path / "tiled.tif", field))
    assert not should_stream(striped)
    assert should_stream(striped, pixels=SHAPE[0] * SHAPE[1])
    assert not should_stream(striped, pixels=SHAPE[0] * SHAPE[1] + 1)
    assert not should_stream(png, pixels=1)


def test_cli_scores_a_tiled_tiff_streamed(patch_detector, field, in_memory, tmp_path,
                                          capsys) -> None:
    model = tmp_path / "patch.safetensors"
    patch_detector.save(model)
    src = _tiled_tiff(tmp_path / "slide.tif", field)
    code = main(["score", str(model), str(src), "--csv", str(tmp_path / "s.csv"),
                 "--heatmaps", str(tmp_path / "maps"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    rows = (tmp_path / "s.csv").read_text().splitlines()
    assert rows[1].split(",")[1] == f"{in_memory.score:.6g}"
    with tifffile.TiffFile(tmp_path / "maps" / "slide_anomaly_map.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.pages[0].asarray(), in_memory.error_map)


def test_cli_writes_the_streamed_heatmap_as_ome_zarr(patch_detector, field, in_memory,
                                                     tmp_path, capsys) -> None:
    """--heatmap-format ome-zarr: an OME-Zarr folder (NGFF 0.4, one level, y/x axes, 256 px
    chunks) holding the in-memory map exactly, readable by open_image, replaced whole by a
    second run, no temporary folder left."""
    model = tmp_path / "patch.safetensors"
    patch_detector.save(model)
    src = _tiled_tiff(tmp_path / "slide.tif", field)
    maps = tmp_path / "maps"
    args = ["score", str(model), str(src), "--csv", str(tmp_path / "s.csv"), "--heatmaps",
            str(maps), "--heatmap-format", "ome-zarr", "--quiet"]
    for _ in range(2):  # the second run replaces the folder of the first
        assert main(args) == 0, capsys.readouterr().err
        assert sorted(p.name for p in maps.iterdir()) == ["slide_anomaly_map.ome.zarr"]
        root = zarr.open_group(str(maps / "slide_anomaly_map.ome.zarr"), mode="r")
        (ms,) = root.attrs["multiscales"]
        assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
        assert [d["path"] for d in ms["datasets"]] == ["0"]
        level = root["0"]
        assert level.shape == SHAPE and level.chunks == (256, 256) and level.dtype == np.float32
        np.testing.assert_array_equal(level[:], in_memory.error_map)
    with open_image(maps / "slide_anomaly_map.ome.zarr") as lazy:
        np.testing.assert_array_equal(lazy.read(0, 600, 0, 700).reshape(SHAPE),
                                      in_memory.error_map)


def test_a_failing_zarr_heatmap_leaves_the_previous_folder_as_it_was(tmp_path) -> None:
    target = tmp_path / "map.ome.zarr"
    write_heatmap_zarr(target, iter([(0, np.ones(SHAPE, np.float32))]), SHAPE)
    before = zarr.open_group(str(target), mode="r")["0"][:]

    def bands():
        yield 0, np.zeros((300, 700), np.float32)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        write_heatmap_zarr(target, bands(), SHAPE)
    np.testing.assert_array_equal(zarr.open_group(str(target), mode="r")["0"][:], before)
    with pytest.raises(ValueError, match="covered 300 of 600 rows"):
        write_heatmap_zarr(tmp_path / "short.ome.zarr",
                           iter([(0, np.zeros((300, 700), np.float32))]), SHAPE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.ome.zarr"]


def _limit_file_size() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_cli_disk_full_while_writing_the_heatmap(patch_detector, field, tmp_path) -> None:
    # A real write failure: the child may write at most 200 kB per file (RLIMIT_FSIZE; Python
    # ignores SIGXFSZ, so the write fails with EFBIG), less than the ~1.5 MB heatmap.
    model = tmp_path / "patch.safetensors"
    patch_detector.save(model)
    src = _tiled_tiff(tmp_path / "slide.tif", field)
    maps = tmp_path / "maps"
    maps.mkdir()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "napari_cell_anomaly.cli", "score", str(model), str(src),
         "--csv", str(tmp_path / "s.csv"), "--heatmaps", str(maps), "--quiet",
         "--device", "cpu"],
        capture_output=True, text=True, env=env, preexec_fn=_limit_file_size, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cell-anomaly: error: File too large")
    assert "slide_anomaly_map.tif" in last and "Traceback" not in proc.stderr
    assert list(maps.iterdir()) == []  # no partial heatmap, no temporary file
    # The results CSV is written row by row (a stopped batch keeps its finished rows): it
    # holds the header only, no row for the image whose heatmap could not be written.
    from napari_cell_anomaly.core.batch import CSV_COLUMNS

    assert (tmp_path / "s.csv").read_text().splitlines() == [",".join(CSV_COLUMNS)]
    assert not list(tmp_path.glob(".*tmp"))
