"""``cell-anomaly segment``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    EXIT_BAD_INPUT,
    check_outputs_apart,
    check_unique_stems,
    note_replacing,
    prepare_dir,
    report_failures,
    say,
)


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment the cells of each image: one ``<stem>_labels.tif`` per image."""
    from ..core.axes import read_2d_image
    from ..core.batch import label_dtype, write_tiff_atomic
    from ..core.images import ImageError, find_images
    from ..core.segmentation import segment_cells

    out = Path(args.out)
    paths = find_images(args.inputs)
    check_unique_stems(paths, out, "label images")
    check_outputs_apart([("--out", out / f"{p.stem}_labels.tif") for p in paths], paths)
    prepare_dir(out)
    note_replacing([out / f"{p.stem}_labels.tif" for p in paths], "label image(s)")
    failures: list[tuple[Path, str]] = []
    n_ok = n_cells = 0
    show = not args.quiet and sys.stderr.isatty()
    for k, path in enumerate(paths, 1):
        try:
            labels = segment_cells(read_2d_image(path, args.channel_axis)[0], kind=args.kind,
                                   diameter=args.diameter, channel=args.channel)
        except ImageError as err:
            failures.append((path, str(err)))
            continue
        count = int(labels.max())
        if count == 0:
            say(f"warning: no cells found in {path.name}; writing an all-zero label image")
        write_tiff_atomic(out / f"{path.stem}_labels.tif", label_dtype(labels))
        n_ok += 1
        n_cells += count
        if show:
            print(f"\rsegmented {k}/{len(paths)}", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    report_failures(failures)
    say(f"segmented {n_ok} images: {n_cells} cells found; label images in {out}")
    return 0 if n_ok else EXIT_BAD_INPUT

