"""Memory of reading a multi-page TIFF stack plane by plane (``core.stackio.read_stack``, as
``cell-anomaly score`` reads stacks) against reading it whole (``tifffile.imread``).

Run from the project root::

    python benchmarks/stack_memory.py [--planes 48] [--side 1024]

Writes a ``(planes, side, side, 3)`` uint8 ZYXS stack of random pixels into a temporary
folder, then, in a separate process for each way, reads every plane (and takes its mean) and
prints the growth of the process's peak resident memory (``ru_maxrss``) over what it held
after importing the package, next to the size of the stack and of one plane. The plane-by-plane
growth includes what the first read imports (zarr, dask).

A script that prints numbers, never a timed test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_CHILD = r"""
import resource, sys
import numpy as np, tifffile
import napari_cell_anomaly.core.detector  # what the CLI holds when it reads
from napari_cell_anomaly.core.stackio import read_stack
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
path, how = sys.argv[1], sys.argv[2]
if how == "planes":
    s = read_stack(path)
    total = sum(float(s.plane(i).mean()) for i in range(len(s)))
else:
    d = tifffile.imread(path)
    total = sum(float(d[i].mean()) for i in range(len(d)))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, total)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planes", type=int, default=48)
    ap.add_argument("--side", type=int, default=1024)
    args = ap.parse_args()
    import tifffile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.tif"
        shape = (args.planes, args.side, args.side, 3)
        tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, shape, np.uint8),
                         metadata={"axes": "ZYXS"})
        mib = np.prod(shape) / 2**20
        print(f"stack {shape} uint8: {mib:.1f} MiB; one plane {mib / args.planes:.1f} MiB")
        totals = set()
        for how in ("planes", "whole"):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(path), how], check=True,
                                 capture_output=True, text=True).stdout.split()
            totals.add(out[1])
            print(f"{how:>6}: peak memory growth {float(out[0]):.1f} MiB")
        print("same pixels read both ways:", len(totals) == 1)


if __name__ == "__main__":
    main()
