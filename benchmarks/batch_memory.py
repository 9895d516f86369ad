"""Memory of ``cell-anomaly score`` over folders of growing size: it should not grow.

Run from the project root::

    python benchmarks/batch_memory.py [--counts 250,2000] [--workers 2] [--keep DIR]

Writes ``max(counts)`` small PNG cells (64 x 64 RGB from
:func:`napari_cell_anomaly.core.sample.make_cells`: 200 distinct crops, repeated under new
names) into a temporary folder, then runs ``cell-anomaly score`` with the shipped default model
(``--device cpu --heatmaps``) as a separate process on the first N files for each N, and prints
the peak resident memory (``ru_maxrss`` from ``os.wait4``: the largest of that process and
the processes it waited for) and the rows written. With ``--workers N`` it also scores the
largest folder on a local dask cluster; the peak then covers the ``score`` process and its dask
worker processes (the largest of them).

A script that prints numbers, never a timed test. Timings on a shared machine vary with its
load, which is printed alongside; the memory numbers do not.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skimage.io import imsave

from napari_cell_anomaly.core.detector import default_model_path
from napari_cell_anomaly.core.sample import make_cells

DISTINCT = 200


def write_images(folder: Path, n: int) -> None:
    """``n`` PNG files of 64 x 64 RGB cells (``DISTINCT`` crops, 10% with planted stains)."""
    folder.mkdir(parents=True, exist_ok=True)
    crops = make_cells(DISTINCT, size=64, anomaly_fraction=0.1, seed=0).images
    for i in range(n):
        path = folder / f"cell_{i:05d}.png"
        if i < DISTINCT:
            imsave(path, crops[i], check_contrast=False)
        else:
            os.link(folder / f"cell_{i % DISTINCT:05d}.png", path)


def run_score(images: list[Path], out: Path, extra: list[str]) -> tuple[float, float, int]:
    """Score ``images`` in a child ``cell-anomaly score``: (peak RSS in MiB, seconds, rows)."""
    model = default_model_path()
    if model is None:
        raise SystemExit("the shipped default model is missing")
    csv_path, maps = out / "scores.csv", out / "maps"
    cmd = [sys.executable, "-m", "napari_cell_anomaly.cli", "score", str(model),
           *map(str, images), "--csv", str(csv_path), "--heatmaps", str(maps), "--quiet",
           "--device", "cpu", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"score failed ({proc.returncode}):\n{err}")
    with open(csv_path, newline="") as fh:
        rows = sum(1 for r in csv.DictReader(fh) if r["score"])
    return usage.ru_maxrss / 1024, seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="250,2000",
                        help="folder sizes to score, comma-separated (default: 250,2000)")
    parser.add_argument("--workers", type=int, default=0,
                        help="also score the largest folder with --workers N (default: off)")
    parser.add_argument("--keep", type=Path, help="write the images here and keep them")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        folder = root / "images"
        if not (folder / f"cell_{counts[-1] - 1:05d}.png").exists():
            write_images(folder, counts[-1])
        paths = sorted(folder.glob("cell_*.png"))
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print("| images | mode | peak RSS (MiB) | seconds | rows with a score |")
        print("| --- | --- | --- | --- | --- |")
        runs = [(n, []) for n in counts]
        if args.workers:
            runs.append((counts[-1], ["--workers", str(args.workers)]))
        for n, extra in runs:
            with tempfile.TemporaryDirectory(dir=root) as out:
                rss, seconds, rows = run_score(paths[:n], Path(out), extra)
            mode = f"--workers {args.workers} (largest process)" if extra else "one process"
            print(f"| {n} | {mode} | {rss:.0f} | {seconds:.1f} | {rows} |", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
