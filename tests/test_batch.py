"""Streaming batch scoring (``core.batch``): rows written as images finish, a crash keeps them,
``--resume`` finishes the job; and the same batch on a local dask cluster (``core.cluster``):
the same rows, workers killed mid-batch, a scheduler that does not answer.

Everything is real: a briefly trained model, PNG files, a ``cell-anomaly score`` process killed
with SIGKILL, a 2-process ``dask.distributed`` cluster whose worker processes are killed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from napari_cell_anomaly.cli import main
from napari_cell_anomaly.core.batch import (
    CELLS_CSV_COLUMNS,
    CSV_COLUMNS,
    BatchSettings,
    ImageOutcome,
    ResultsWriter,
    ResumeError,
    iter_outcomes,
    make_tasks,
)
from napari_cell_anomaly.core.batchrecord import file_sha256, record_path, run_record
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.images import find_images
from napari_cell_anomaly.core.sample import make_cells
from napari_cell_anomaly.core.scoring import DEFAULT_FPR
from napari_cell_anomaly.core.training import TrainConfig, run_training

N_IMAGES = 160
#: Columns holding numbers (compared to float precision between processes).
NUMERIC = ("score", "recon_error", "log_density", "percentile", "threshold")


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny whole-mode model (a few training steps) and a folder of 32 x 32 cells, a few
    with planted anomalies, plus one file that is not an image."""
    root = tmp_path_factory.mktemp("batch")
    model = root / "model.safetensors"
    detector = run_training(make_cells(48, size=32, seed=1).images,
                            TrainConfig(max_steps=4, size=32, batch_size=8, seed=0))
    detector.save(model)
    images = root / "images"
    images.mkdir()
    for i, img in enumerate(make_cells(N_IMAGES, size=32, anomaly_fraction=0.3,
                                       seed=2).images):
        imsave(images / f"cell_{i:03d}.png", img, check_contrast=False)
    (images / "zz_broken.png").write_bytes(b"not a png")
    return {"root": root, "model": model, "images": images}


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "one row per image"
    return by_path


def _assert_same_rows(got: dict[str, dict[str, str]], want: dict[str, dict[str, str]]) -> None:
    """Same paths, same numbers (to float precision), same verdicts and errors."""
    assert got.keys() == want.keys()
    for path, row in want.items():
        for col in CSV_COLUMNS[1:]:
            if col in NUMERIC and row[col] != "":
                assert float(got[path][col]) == pytest.approx(float(row[col]), rel=1e-5), \
                    (path, col)
            else:
                assert got[path][col] == row[col], (path, col)


@pytest.fixture(scope="module")
def reference(batch: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Path]:
    """An uninterrupted single-process run: its CSV and heatmaps."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["score", str(batch["model"]), str(batch["images"]), "--csv",
                 str(out / "scores.csv"), "--heatmaps", str(out / "maps"), "--quiet"]) == 0
    return {"csv": out / "scores.csv", "maps": out / "maps"}


def test_a_run_writes_one_row_per_image_and_reports_the_bad_file(
        batch: dict[str, Path], reference: dict[str, Path]) -> None:
    rows = _rows(reference["csv"])
    assert len(rows) == N_IMAGES + 1
    broken = rows[str(batch["images"] / "zz_broken.png")]
    assert broken["score"] == "" and "cannot read image" in broken["error"]
    scored = [r for r in rows.values() if r["score"] != ""]
    assert len(scored) == N_IMAGES
    assert len(list(reference["maps"].glob("*_anomaly_map.tif"))) == N_IMAGES
    assert not list(reference["maps"].glob(".*"))  # no temporary file left behind


def test_a_killed_run_keeps_its_finished_rows_and_resume_completes_it(
        batch: dict[str, Path], reference: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    folder = batch["images"]
    total = N_IMAGES + 1
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    args = ["score", str(batch["model"]), str(folder), "--csv", str(out), "--heatmaps",
            str(maps), "--quiet", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "napari_cell_anomaly.cli", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") > 20:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = _rows(out)  # a valid CSV: every line parses into a full row
    assert 20 <= len(kept) < total
    assert all(r["error"] != "" or r["score"] != "" for r in kept.values())
    # Every image with a row has its heatmap; no half-written file under a final name.
    for path, row in kept.items():
        if row["score"]:
            tifffile.imread(maps / f"{Path(path).stem}_anomaly_map.tif")
    finished = {p for p, r in kept.items() if r["score"]}

    # Resume: the finished rows are kept as they are, only the rest is scored.
    assert main([*args, "--resume"]) == 0
    final = _rows(out)
    assert len(final) == total
    assert {p: final[p] for p in finished} == {p: kept[p] for p in finished}
    _assert_same_rows(final, _rows(reference["csv"]))
    assert len(list(maps.glob("*_anomaly_map.tif"))) == N_IMAGES
    assert not list(maps.glob(".*")) and not list(tmp_path.glob(".*"))
    # Another heatmap format (or folder) would mix maps: refused in one line, nothing changed.
    before = out.read_bytes()
    for extra, named in ((["--heatmap-format", "ome-zarr"], "--heatmap-format tiff"),
                         (["--heatmaps", str(tmp_path / "other")], f"--heatmaps {maps.resolve()}")):
        capsys.readouterr()
        assert main([*args, *extra, "--resume"]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"cell-anomaly: error: cannot resume '{out}': its rows were "
                               f"scored with {named}, this run has ")
        assert out.read_bytes() == before


def test_resume_tries_error_rows_again_and_refuses_other_settings(
        batch: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(batch["images"].glob("cell_00*.png")):
        os.link(p, folder / p.name)
    (folder / "late.png").write_bytes(b"not yet")
    out = tmp_path / "s.csv"
    args = ["score", str(batch["model"]), str(folder), "--csv", str(out), "--quiet"]
    assert main(args) == 0
    assert _rows(out)[str(folder / "late.png")]["score"] == ""
    first = _rows(out)
    # The broken file is replaced by a good one; resume scores it and keeps the others.
    (folder / "late.png").unlink()
    os.link(batch["images"] / "cell_020.png", folder / "late.png")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{len(first) - 1} images already scored, 1 to go" in err
    second = _rows(out)
    assert second[str(folder / "late.png")]["score"] != ""
    assert {p: r for p, r in second.items() if "late" not in p} == \
        {p: r for p, r in first.items() if "late" not in p}
    # Another false-alarm rate means another threshold: refused, the CSV left as it was.
    before = out.read_bytes()
    assert main([*args, "--resume", "--fpr", "0.3"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("cell-anomaly: error: cannot resume") and "--fpr" in line
    assert out.read_bytes() == before


def test_resume_refuses_a_csv_scored_with_other_options_or_another_model_file(
        batch: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The record next to the CSV holds what its rows were scored with; --resume with other
    --labels, --channel-axis or another model file is refused in one line (the CSV left as
    it was), the same model under another name is accepted, and a fresh run replaces it."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(batch["images"].glob("cell_00[0-5].png")):
        os.link(p, folder / p.name)
    out = tmp_path / "s.csv"
    record = record_path(out)
    assert record.name == "s.csv.run.json"
    base = ["score", str(folder), "--csv", str(out), "--quiet", "--device", "cpu",
            "--precision", "fp32"]
    assert main([base[0], str(batch["model"]), *base[1:]]) == 0
    kept = json.loads(record.read_text())
    assert kept == {"version": 2, "model_sha256": file_sha256(batch["model"]), "fpr": 0.05,
                    "labels": None, "channel_axis": None, "per_cell": False,
                    "heatmaps": None, "heatmap_format": None, "cells_csv": False,
                    "precision": "fp32", "label_files": {}}
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    before = out.read_bytes()
    other = tmp_path / "other.safetensors"
    run_training(make_cells(16, size=32, seed=5).images,
                 TrainConfig(max_steps=1, size=32, batch_size=8, seed=3)).save(other)
    capsys.readouterr()
    for model, extra, named in ((batch["model"], ["--channel-axis", "2"], "--channel-axis"),
                                (batch["model"], ["--labels", "auto"], "--labels"),
                                (batch["model"], ["--precision", "bf16"], "--precision"),
                                (other, [], "model file")):
        assert main([base[0], str(model), *base[1:], *extra, "--resume"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"cell-anomaly: error: cannot resume '{out}': its rows "
                                    f"were scored with {named} ")
        assert "run without --resume to start afresh" in lines[-1]
        assert not any("Traceback" in line for line in lines)
        assert out.read_bytes() == before and json.loads(record.read_text()) == kept
    # The heatmaps: a folder not given before, or given in another format, are refused too
    # (a resumed run would leave some images' maps elsewhere, or in another format).
    maps = tmp_path / "maps"
    heat = [base[0], str(batch["model"]), *base[1:], "--heatmaps", str(maps)]
    assert main([*heat, "--resume"]) == 2
    assert "scored with --heatmaps none, this run has " in capsys.readouterr().err
    assert out.read_bytes() == before and not maps.exists()
    # The same model file under another name: the same bytes, resumed.
    same = tmp_path / "copy.safetensors"
    same.write_bytes(batch["model"].read_bytes())
    assert main([base[0], str(same), *base[1:], "--resume"]) == 0
    assert "6 images already scored, 0 to go" in capsys.readouterr().err
    # No record (a CSV from elsewhere): refused; a fresh run replaces CSV and record.
    record.unlink()
    assert main([base[0], str(same), *base[1:], "--resume"]) == 2
    assert "no readable record" in capsys.readouterr().err
    assert main([base[0], str(other), *base[1:], "--channel-axis", "2"]) == 0
    assert json.loads(record.read_text())["channel_axis"] == 2
    assert json.loads(record.read_text())["model_sha256"] == file_sha256(other)
    assert main([base[0], str(other), *base[1:], "--channel-axis", "2", "--resume"]) == 0


def _outcome(index: int, path: str, cells: int) -> ImageOutcome:
    row = [path, "1.5", "0.1", "-3", "0", "50.00", "2", "", "0", ""]
    cell_rows = [[path, str(c + 1), "1.0", "2.0", "30", "0.5", "0.1", "-2", "0", "40.00", "0",
                  "-1", ""] for c in range(cells)]
    return ImageOutcome(index, [row], cell_rows)


def test_resume_drops_rows_of_an_image_cut_short_by_a_crash(tmp_path: Path) -> None:
    scores, cells = tmp_path / "s.csv", tmp_path / "c.csv"
    with ResultsWriter(scores, cells) as out:
        out.write(_outcome(0, "a.png", 2))
        out.write(_outcome(1, "b.png", 3))
    # What a crash can leave: the per-cell rows of an image whose own row was never written,
    # and a line cut in the middle.
    with open(cells, "a", encoding="utf-8") as fh:
        fh.write("c.png,1,1.0,2.0,30,0.5,0.1,-2,0,40.00,0,-1,\nc.png,2,1.0")
    with open(scores, "a", encoding="utf-8") as fh:
        fh.write("d.png,1.2,0.")
    resumed = ResultsWriter(scores, cells, resume=True, threshold="2")
    assert resumed.done == {"a.png", "b.png"}
    with resumed:
        resumed.write(_outcome(2, "c.png", 1))
    with open(scores, newline="") as fh:
        assert [r[0] for r in csv.reader(fh)] == ["path", "a.png", "b.png", "c.png"]
    with open(cells, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CELLS_CSV_COLUMNS
    assert [(r[0], r[1]) for r in rows[1:]] == [("a.png", "1"), ("a.png", "2"), ("b.png", "1"),
                                                ("b.png", "2"), ("b.png", "3"), ("c.png", "1")]
    # Another threshold, a foreign CSV or a missing per-cell CSV: refused, one line each.
    with pytest.raises(ResumeError, match="threshold 2, this model"):
        ResultsWriter(scores, cells, resume=True, threshold="3")
    cells.unlink()
    with pytest.raises(ResumeError, match="does not exist"):
        ResultsWriter(scores, cells, resume=True, threshold="2")
    scores.write_text("name,value\nx,1\n")
    with pytest.raises(ResumeError, match="columns"):
        ResultsWriter(scores, None, resume=True)


def test_resume_drops_the_rows_of_images_whose_label_file_changed(tmp_path: Path) -> None:
    """Label files are compared image by image: an image whose label file changed loses its
    rows (scored again), the others keep theirs, and the record kept afterwards is this run's
    with the entries of scored images it does not list carried over."""
    scores, cells = tmp_path / "s.csv", tmp_path / "c.csv"
    base = {"version": 2, "labels": "/labels"}
    with ResultsWriter(scores, cells, record={**base, "label_files": {
            "a.png": [10, 1], "b.png": [20, 2], "c.png": [30, 3]}}) as out:
        for i, name in enumerate(("a.png", "b.png", "c.png")):
            out.write(_outcome(i, name, 2))
    # b's label file changed; c is not in this run (another selection of the folder)
    now = {**base, "label_files": {"a.png": [10, 1], "b.png": [21, 5]}}
    resumed = ResultsWriter(scores, cells, resume=True, record=now)
    assert resumed.done == {"a.png", "c.png"} and resumed.rescored == {"b.png"}
    with resumed:
        resumed.write(_outcome(3, "b.png", 1))
    with open(scores, newline="") as fh:
        assert [r[0] for r in csv.reader(fh)] == ["path", "a.png", "c.png", "b.png"]
    with open(cells, newline="") as fh:
        assert [(r[0], r[1]) for r in list(csv.reader(fh))[1:]] == [
            ("a.png", "1"), ("a.png", "2"), ("c.png", "1"), ("c.png", "2"), ("b.png", "1")]
    kept = json.loads(record_path(scores).read_text())
    assert kept["label_files"] == {"a.png": [10, 1], "b.png": [21, 5], "c.png": [30, 3]}
    # the same again: nothing to score again
    again = ResultsWriter(scores, cells, resume=True, record=now)
    assert again.done == {"a.png", "b.png", "c.png"} and not again.rescored
    # another setting is still refused as a whole
    with pytest.raises(ResumeError, match="--labels /labels, this run has /other"):
        ResultsWriter(scores, cells, resume=True, record={**now, "labels": "/other"})


# ------------------------------------------------------------------------------------------------
# dask.distributed
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client() -> Iterator:
    """A local cluster of 2 worker processes, one thread each (as ``--workers 2``)."""
    pytest.importorskip("distributed")
    from napari_cell_anomaly.core.cluster import connect

    with connect(workers=2) as c:
        yield c


class WorkerKiller(threading.Thread):
    """Once ``started`` is set, SIGKILLs the process of a worker that has tasks (a real
    worker death in the middle of a batch), while the batch goes on in the main thread."""

    def __init__(self, client) -> None:
        super().__init__(daemon=True)
        self.client, self.pids = client, client.run(os.getpid)
        self.started, self.killed = threading.Event(), ""

    def run(self) -> None:
        self.started.wait(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.killed:
            busy = [w for w, keys in self.client.processing().items() if keys and w in self.pids]
            if busy:
                os.kill(self.pids[busy[0]], signal.SIGKILL)
                self.killed = busy[0]
            time.sleep(0.002)


def _score_killing_a_worker(client, model: Path, tasks: list, settings: BatchSettings,
                            out: Path) -> list[ImageOutcome]:
    from napari_cell_anomaly.core.cluster import iter_cluster_outcomes

    killer = WorkerKiller(client)
    killer.start()
    outcomes = []
    # recorded as the CLI records a run with these settings on a cluster (--scheduler: each
    # worker resolves the precision), so that the CLI can resume it
    record = run_record(model, settings, DEFAULT_FPR, precision="auto")
    with ResultsWriter(out, record=record) as writer:
        for k, outcome in enumerate(iter_cluster_outcomes(client, model, tasks, settings,
                                                          device="cpu")):
            assert outcome.index == k  # in input order
            writer.write(outcome)
            outcomes.append(outcome)
            if k == 2:
                killer.started.set()
    killer.join(60)
    assert killer.killed, "no worker was killed mid-batch: the batch ended first"
    return outcomes


def test_cluster_gives_the_single_process_rows_and_survives_a_killed_worker(
        batch: dict[str, Path], reference: dict[str, Path], client, tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    tasks = make_tasks(find_images([batch["images"]]))
    out = tmp_path / "scores.csv"
    outcomes = _score_killing_a_worker(client, batch["model"], tasks,
                                       BatchSettings(heatmaps=maps), out)
    # The killed worker's images were scored again elsewhere: nothing lost, and each of them
    # says so in one line.
    _assert_same_rows(_rows(out), _rows(reference["csv"]))
    retried = [o for o in outcomes if o.retries]
    assert retried and not any(o.lost for o in outcomes)
    for o in outcomes:
        assert (o.notice is not None) == (o.retries > 0)
    for o in retried:
        assert o.notice == (f"{tasks[o.index].csv_path}: a dask worker died while scoring it; "
                            "scored again on another worker")
    for ref in reference["maps"].glob("*.tif"):
        np.testing.assert_allclose(tifffile.imread(maps / ref.name), tifffile.imread(ref),
                                   rtol=1e-5, atol=1e-6)


def test_images_whose_workers_keep_dying_are_reported_then_resumed(
        batch: dict[str, Path], reference: dict[str, Path], client, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    def set_allowed_failures(n: int, dask_scheduler=None) -> None:
        dask_scheduler.allowed_failures = n

    client.wait_for_workers(2, timeout=120)
    tasks = make_tasks(find_images([batch["images"]]))
    out = tmp_path / "scores.csv"
    client.run_on_scheduler(set_allowed_failures, 0)  # no second chance after a death
    try:
        outcomes = _score_killing_a_worker(client, batch["model"], tasks, BatchSettings(), out)
    finally:
        client.run_on_scheduler(set_allowed_failures, 3)
    rows = _rows(out)
    assert len(rows) == len(tasks)  # every image has its row: scored or reported
    lost = [p for p, r in rows.items() if "dask workers scoring it died" in r["error"]]
    assert lost and all(rows[p]["score"] == "" for p in lost)
    assert sorted(tasks[o.index].csv_path for o in outcomes if o.lost) == sorted(lost)
    for o in outcomes:
        if o.lost:
            assert o.notice == f"{tasks[o.index].csv_path}: {o.error}"
    # The CLI resumes on the same cluster (--scheduler) and scores them.
    client.wait_for_workers(2, timeout=120)
    assert main(["score", str(batch["model"]), str(batch["images"]), "--csv", str(out),
                 "--resume", "--scheduler", client.scheduler.address, "--device", "cpu",
                 "--quiet"]) == 0
    assert "to go" in capsys.readouterr().err
    _assert_same_rows(_rows(out), _rows(reference["csv"]))


def _worker_processes(pid: int) -> list:
    """The dask worker processes started by process ``pid`` (spawned by multiprocessing)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            line = " ".join(child.cmdline())
            if "spawn_main" in line and "resource_tracker" not in line:
                found.append(child)
    return found


@pytest.mark.parametrize("allowed_failures", [3, 0])
def test_the_cli_reports_a_killed_worker_in_one_line_per_image_without_traceback(
        batch: dict[str, Path], reference: dict[str, Path], tmp_path: Path,
        allowed_failures: int) -> None:
    """``--workers 2`` run as a user would, one of its worker processes SIGKILLed mid-batch:
    the images the dead worker held are named one line each, scored again elsewhere (dask's
    default: 3 deaths allowed) or, when dask gives up at once (0 allowed), reported in their
    rows; the summary counts both, every other row is the single-process one, and stderr
    holds no traceback nor dask log line."""
    pytest.importorskip("distributed")
    pytest.importorskip("psutil")
    out = tmp_path / "scores.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(allowed_failures)}
    proc = subprocess.Popen([sys.executable, "-m", "napari_cell_anomaly.cli", "score",
                             str(batch["model"]), str(batch["images"]), "--csv", str(out),
                             "--workers", "2", "--device", "cpu", "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    killed = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and killed is None:
            if out.exists() and out.read_text().count("\n") > 5:
                workers = _worker_processes(proc.pid)
                if workers:
                    workers[0].kill()
                    killed = workers[0].pid
            time.sleep(0.005)
        err = proc.communicate(timeout=300)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no worker was killed mid-batch: the batch ended first"
    assert proc.returncode == 0, err
    lines = err.strip().splitlines()
    assert not any("Traceback" in line or "distributed." in line for line in lines), err
    died = [line for line in lines if "a dask worker died while scoring it" in line]
    lost = [line for line in lines if "not scored: the dask workers scoring it died" in line]
    assert all(line.endswith("scored again on another worker") for line in died)
    assert all(line.endswith("--resume tries it again") for line in lost)
    named = [line.split(": ")[0] for line in died + lost]
    assert named and len(set(named)) == len(named)  # one line per image
    rows, want = _rows(out), _rows(reference["csv"])
    lost_paths = {line.split(": ")[0] for line in lost}
    assert {p for p, r in rows.items() if "workers scoring it died" in r["error"]} == lost_paths
    if allowed_failures:  # (with none allowed, the images it held are lost, or scored
        assert not lost   # again if it had finished them: a race with the kill)
    _assert_same_rows({p: r for p, r in rows.items() if p not in lost_paths},
                      {p: r for p, r in want.items() if p not in lost_paths})
    summary = [line for line in lines if line.startswith("dask workers died mid-batch")]
    assert summary == [f"dask workers died mid-batch: {len(died)} image(s) scored again on "
                       f"another worker, {len(lost)} not scored (their rows say so; --resume "
                       "tries them again)"]


def test_a_scheduler_that_does_not_answer_is_one_line_within_seconds(
        batch: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("distributed")
    # A port that accepts connections but never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        out = tmp_path / "s.csv"
        start = time.monotonic()
        code = main(["score", str(batch["model"]), str(batch["images"]), "--csv", str(out),
                     "--scheduler", address, "--connect-timeout", "2", "--quiet"])
        elapsed = time.monotonic() - start
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"cell-anomaly: error: no dask scheduler answered at {address} "
                                "within 2 s")
    assert not any("Traceback" in line for line in lines)
    assert elapsed < 15
    assert not out.exists()


def test_workers_and_scheduler_exclude_each_other(batch: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.csv"
    assert main(["score", str(batch["model"]), str(batch["images"]), "--csv", str(out),
                 "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert not out.exists()


def test_single_process_outcomes_come_in_input_order(batch: dict[str, Path]) -> None:
    detector = AnomalyDetector.load(batch["model"], device="cpu")
    tasks = make_tasks(find_images([batch["images"]]))
    outcomes = list(iter_outcomes(detector, tasks, BatchSettings()))
    assert [o.index for o in outcomes] == list(range(len(tasks)))
    assert [o.rows[0][0] for o in outcomes] == [str(t.path) for t in tasks]
    assert sum(o.error is not None for o in outcomes) == 1


def test_cluster_scores_per_cell_like_a_single_process(
        cells_detector: AnomalyDetector, client, tmp_path: Path) -> None:
    """Per cell, with label files matched by stem: the same image and per-cell rows and label
    images from the cluster (``--scheduler``) as from one process."""
    from napari_cell_anomaly.core.sample import make_cell_field

    model, images, labels = tmp_path / "cells.safetensors", tmp_path / "fields", tmp_path / "lab"
    cells_detector.save(model)
    images.mkdir()
    labels.mkdir()
    for s in (10, 11):
        field = make_cell_field((256, 256), n_cells=20, anomaly_fraction=0.3, seed=s)
        imsave(images / f"field_{s}.png", field.image, check_contrast=False)
        tifffile.imwrite(labels / f"field_{s}_labels.tif", field.labels.astype(np.uint16))
    client.wait_for_workers(2, timeout=120)
    runs = {}
    for name, extra in (("one", []), ("dask", ["--scheduler", client.scheduler.address])):
        out = tmp_path / name
        out.mkdir()
        assert main(["score", str(model), str(images), "--labels", str(labels), "--csv",
                     str(out / "s.csv"), "--cells-csv", str(out / "c.csv"), "--heatmaps",
                     str(out / "maps"), "--device", "cpu", "--quiet", *extra]) == 0
        with open(out / "c.csv", newline="") as fh:
            runs[name] = (_rows(out / "s.csv"), list(csv.reader(fh)), out / "maps")
    (one, one_cells, one_maps), (dask_rows, dask_cells, dask_maps) = runs["one"], runs["dask"]
    _assert_same_rows(dask_rows, one)
    assert len(one_cells) > 20 and len(dask_cells) == len(one_cells)
    for a, b in zip(one_cells[1:], dask_cells[1:], strict=True):
        assert a[:2] == b[:2] and a[12:] == b[12:]  # same image, cell id, order and plane
        np.testing.assert_allclose(np.array(b[2:12], float), np.array(a[2:12], float),
                                   rtol=1e-4)
    for ref in one_maps.glob("*_labels.tif"):
        np.testing.assert_array_equal(tifffile.imread(dask_maps / ref.name), tifffile.imread(ref))


def test_a_stack_gives_one_row_per_plane_on_the_cluster_and_resumes_whole(
        batch: dict[str, Path], client, tmp_path: Path) -> None:
    """A z-stack is one task: its plane rows and its one heatmap file come back together,
    the same as from one process; --resume counts the file as done."""
    folder = tmp_path / "in"
    folder.mkdir()
    planes = np.stack(make_cells(3, size=32, anomaly_fraction=0.3, seed=7).images)
    tifffile.imwrite(folder / "z.tif", planes, metadata={"axes": "ZYXS"})
    os.link(batch["images"] / "cell_000.png", folder / "a.png")
    client.wait_for_workers(2, timeout=120)
    runs = {}
    for name, extra in (("one", []), ("dask", ["--scheduler", client.scheduler.address])):
        out = tmp_path / name
        out.mkdir()
        args = ["score", str(batch["model"]), str(folder), "--csv", str(out / "s.csv"),
                "--heatmaps", str(out / "maps"), "--device", "cpu", "--quiet", *extra]
        assert main(args) == 0
        with open(out / "s.csv", newline="") as fh:
            runs[name] = list(csv.DictReader(fh))
        assert main([*args, "--resume"]) == 0  # nothing left to do: the CSV is unchanged
        with open(out / "s.csv", newline="") as fh:
            assert list(csv.DictReader(fh)) == runs[name]
    one, dask_rows = runs["one"], runs["dask"]
    assert [(r["path"], r["plane"]) for r in one] == [(str(folder / "a.png"), "")] + [
        (str(folder / "z.tif"), str(i)) for i in range(3)]
    assert [(r["path"], r["plane"]) for r in dask_rows] == [(r["path"], r["plane"]) for r in one]
    for a, b in zip(one, dask_rows, strict=True):
        assert float(b["score"]) == pytest.approx(float(a["score"]), rel=1e-5)
    maps = [tifffile.imread(tmp_path / n / "maps" / "z_anomaly_map.tif") for n in runs]
    assert maps[0].shape == (3, 32, 32)
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-5, atol=1e-6)


def test_a_rerun_removes_the_temporary_maps_a_killed_run_left(
        batch: dict[str, Path], tmp_path: Path) -> None:
    """A run killed while writing a heatmap leaves it under a hidden temporary name (never
    the final one); the next run that writes that image's map removes it, and leaves other
    hidden files alone."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(batch["images"].glob("cell_00[0-2].png")):
        os.link(p, folder / p.name)
    maps = tmp_path / "maps"
    maps.mkdir()
    stale = [maps / ".cell_000_anomaly_map.tif.k3x9q2.tmp", maps / ".cell_001_anomaly_map.tif.tmp"]
    for p in stale:
        p.write_bytes(b"half a TIFF")
    (maps / ".cell_002_anomaly_map.ome.zarr.w8e1.tmp").mkdir()
    others = [maps / ".someone_else.tmp", maps / ".cell_000_notes.txt"]
    for p in others:
        p.write_text("keep")
    assert main(["score", str(batch["model"]), str(folder), "--csv", str(tmp_path / "s.csv"),
                 "--heatmaps", str(maps), "--quiet", "--device", "cpu"]) == 0
    assert sorted(p.name for p in maps.glob(".*")) == sorted(p.name for p in others)
    assert len(list(maps.glob("*_anomaly_map.tif"))) == 3
