"""Merging a stack's per-plane cells as the planes come in (what the Score widget does after
each plane scored per cell): :func:`~napari_cell_anomaly.core.stacks.stack_cells` of all the
planes so far after each plane (the merge before) against
:class:`~napari_cell_anomaly.core.stacks.StackCells` (``put`` then ``cells``).

Run from the project root::

    python benchmarks/stack_cells_merge.py [--planes 25,50,100] [--side 512] [--cells 200]

Prints, for each number of planes, the total time of each way over the whole stack and their
ratio (synthetic planes: ``--cells`` square cells in a ``--side`` px plane). A script that
prints numbers, never a timed test; on a shared machine, compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_cell_anomaly.core.cellscores import CELL_COLUMNS, CellScores
from napari_cell_anomaly.core.stacks import StackCells, stack_cells


def _plane(seed: int, side: int, n: int) -> CellScores:
    rng = np.random.default_rng(seed)
    labels = np.zeros((side, side), np.int32)
    step = side // int(np.ceil(np.sqrt(n)))
    k = 0
    for y in range(0, side - step + 1, step):
        for x in range(0, side - step + 1, step):
            if k < n:
                k += 1
                labels[y + 1:y + step - 1, x + 1:x + step - 1] = k
    table = {c: rng.random(k) for c in CELL_COLUMNS}
    table["label"] = np.arange(1, k + 1)
    return CellScores(table, labels, rng.random((side, side)).astype(np.float32), 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planes", default="25,50,100")
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--cells", type=int, default=200)
    args = ap.parse_args()
    for n_planes in (int(p) for p in args.planes.split(",")):
        planes = [_plane(s, args.side, args.cells) for s in range(n_planes)]
        t0 = time.perf_counter()
        so_far: list = [None] * n_planes
        for p, c in enumerate(planes):
            so_far[p] = c
            whole = stack_cells(so_far, (args.side, args.side))
        t1 = time.perf_counter()
        merged = StackCells(n_planes, (args.side, args.side))
        for p, c in enumerate(planes):
            merged.put(p, c)
            last = merged.cells()
        t2 = time.perf_counter()
        assert np.array_equal(last.labels, whole.labels)
        print(f"{n_planes:4d} planes: stack_cells after each plane {t1 - t0:7.2f} s, "
              f"StackCells {t2 - t1:6.2f} s ({(t1 - t0) / (t2 - t1):.0f}x)")


if __name__ == "__main__":
    main()
