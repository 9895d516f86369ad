"""Larger-than-memory benchmark: score a big tiled RGB TIFF through ``cell-anomaly score``.

Run from the project root::

    nice -n 10 python benchmarks/bigimage.py [--side 20000] [--side 4000 ...] [--keep DIR]

For each ``--side`` (width; the height is the same, or ``--rows``) it

* trains a small patch-mode model for a few steps on two synthetic fields (its quality does
  not matter here, only the work per pixel, which is the same for any weights);
* writes a ``rows x side`` RGB uint8 TIFF in 512-pixel zlib tiles to a temporary folder, built
  tile by tile from flipped copies of one :func:`make_field` field (so writing it needs no
  memory either);
* runs ``python -m napari_cell_anomaly.cli score MODEL IMAGE --csv ... --heatmaps ...`` in a
  child process (the streamed path, since the TIFF is tiled) and prints its wall time, its
  peak resident memory (``ru_maxrss`` of the child) and the sizes of the input and heatmap
  files; the heatmap is checked to be a tiled BigTIFF of the image's size.

With several sides the script also prints the slope of peak memory per million pixels between
the smallest and the largest, so a side too large for the time at hand can be extrapolated.
The same peak for a CLI that only loads the model is printed as the floor (torch and the model).
This is a script that prints numbers, never a timed test; on a loaded machine the times are
inflated, the memory is not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
TILE = 512


def _child_peak(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd`` in a fresh child; return (wall seconds, peak RSS in MiB, stderr).

    ``ru_maxrss`` of RUSAGE_CHILDREN is the largest peak of the children waited for so far,
    so each measurement runs in its own grandchild-free helper process.
    """
    probe = ("import resource, subprocess, sys, time\n"
             "t = time.perf_counter()\n"
             "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "w = time.perf_counter() - t\n"
             "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
             "sys.stderr.write(p.stderr)\n"
             "print(w, rss, p.returncode)\n")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True)
    wall, rss, code = out.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}\n{out.stderr}")
    return float(wall), float(rss), out.stderr


def _write_big_tiff(path: Path, height: int, side: int, field: np.ndarray) -> None:
    """A height x side RGB tiled TIFF made of flipped copies of ``field`` (TILE x TILE x 3)."""
    variants = [field, field[::-1], field[:, ::-1], field[::-1, ::-1]]

    def tiles():
        for i in range(-(-height // TILE)):
            for j in range(-(-side // TILE)):
                yield variants[(i * 7 + j * 3) % 4]

    tifffile.imwrite(path, tiles(), shape=(height, side, 3), dtype=np.uint8,
                     tile=(TILE, TILE), photometric="rgb", compression="zlib", bigtiff=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, action="append",
                    help="image side in pixels (repeatable; default 20000)")
    ap.add_argument("--rows", type=int, metavar="H",
                    help="image height for every side (default: square images); the streamed "
                         "path's memory depends on the width only, which a strip of the full "
                         "width shows in a fraction of the time")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep its files")
    args = ap.parse_args()
    sides = sorted(args.side or [20000])
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(ROOT / "src"))
    from napari_cell_anomaly.core.sample import make_field
    from napari_cell_anomaly.core.training import TrainConfig, run_training

    env_path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONPATH"] = env_path
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bigimage-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"work folder {work}")
    fields = [make_field((384, 384), n_cells=40, anomaly_fraction=0.0, seed=s)[0]
              for s in (0, 1)]
    detector = run_training(fields, TrainConfig(max_steps=6, seed=0), device="cpu")
    model = work / "patch.safetensors"
    detector.save(model)
    field = make_field((TILE, TILE), n_cells=25, anomaly_fraction=0.2, seed=7)[0]
    cli = [sys.executable, "-m", "napari_cell_anomaly.cli"]

    wall0, floor, _ = _child_peak([*cli, "score", str(model), "--help"])
    print(f"floor: the CLI with torch imported (score --help): {floor:.0f} MiB peak RSS")
    rows = []
    for side in sides:
        height = args.rows or side
        image = work / f"field_{side}.tif"
        t = time.perf_counter()
        _write_big_tiff(image, height, side, field)
        t_write = time.perf_counter() - t
        heat = work / f"maps_{side}"
        wall, rss, _ = _child_peak([*cli, "score", str(model), str(image), "--csv",
                                      str(work / f"scores_{side}.csv"), "--heatmaps",
                                      str(heat), "--quiet", "--device", "cpu"])
        out = heat / f"field_{side}_anomaly_map.tif"
        with tifffile.TiffFile(out) as tif:
            page = tif.pages[0]
            assert tif.is_bigtiff and page.is_tiled and page.shape == (height, side), page.shape
        mpx = height * side / 1e6
        rows.append((side, mpx, rss, wall))
        print(f"{height} x {side} RGB ({mpx:.0f} Mpx; raw {3 * mpx:.0f} MB, file "
              f"{image.stat().st_size / 1e6:.0f} MB written in {t_write:.0f} s): "
              f"cell-anomaly score took {wall:.0f} s ({1e3 * wall / mpx:.0f} ms/Mpx), "
              f"peak RSS {rss:.0f} MiB ({rss - floor:.0f} MiB above the floor); heatmap "
              f"{out.stat().st_size / 1e6:.0f} MB tiled BigTIFF", flush=True)
        if not args.keep:
            image.unlink()
            out.unlink()
    if len(rows) > 1:
        (s0, m0, r0, _), (s1, m1, r1, _) = rows[0], rows[-1]
        print(f"peak memory slope between {s0} and {s1} px sides: "
              f"{(r1 - r0) / (m1 - m0):.2f} MiB per Mpx, {(r1 - r0) / (s1 - s0):.3f} MiB per "
              "column of width")
    print(f"(wall time of the floor command: {wall0:.1f} s)")


if __name__ == "__main__":
    main()
