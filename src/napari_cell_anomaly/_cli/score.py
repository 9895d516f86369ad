"""``cell-anomaly score``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from .common import (
    EXIT_BAD_INPUT,
    CliError,
    check_outputs_apart,
    check_unique_stems,
    check_writable_file,
    keep_freed_memory,
    label_source,
    load_detector,
    note_replacing,
    pick_device,
    pick_precision,
    prepare_dir,
    remove_stale_temporaries,
    say,
)


def cmd_score(args: argparse.Namespace) -> int:
    """Score images with a model: one CSV row per image (and per cell), optional heatmaps,
    written as each image finishes (``--resume`` goes on where a run stopped)."""
    from tqdm import tqdm

    from ..core.batch import BatchSettings, ResultsWriter, iter_outcomes, make_tasks
    from ..core.batchrecord import run_record
    from ..core.images import find_images
    from ..core.scoring import DEFAULT_FPR

    keep_freed_memory()

    csv_path = Path(args.csv)
    check_writable_file(csv_path)
    cells_path = Path(args.cells_csv) if args.cells_csv else None
    if cells_path is not None:
        check_writable_file(cells_path)
    if args.workers and args.scheduler:
        raise CliError("give --workers (a cluster on this machine) or --scheduler (a running "
                       "cluster), not both")
    heat_dir = Path(args.heatmaps) if args.heatmaps else None
    # With --scheduler the network runs on the workers; this process only reads the model.
    device = pick_device("cpu" if args.scheduler else args.device)
    if not args.scheduler:
        pick_precision(args.precision, device)  # checked before the model is read
    detector = load_detector(args.model, device, "auto" if args.scheduler else args.precision)
    # resolved for the model's mode (auto is fp32 in cells mode); each worker of a remote
    # cluster resolves "auto" itself
    precision = "auto" if args.scheduler else detector.run_precision
    paths = find_images(args.inputs)
    sources = label_source(args.labels, paths)
    per_cell = (sources is not None or cells_path is not None or detector.mode == "cells")
    if per_cell and detector.mode == "patch":
        asked = "--labels" if args.labels else "--cells-csv"
        raise CliError(f"{asked} scores per cell, but this patch-mode model is calibrated on "
                       "windows, not cells: drop it to score whole images, or train a "
                       "cells-mode model (or a whole-image model on cell crops)")
    if per_cell and sources is None:
        sources = dict.fromkeys(paths)  # built-in segmentation
    outputs = [("--csv", csv_path)] + ([("--cells-csv", cells_path)] if cells_path else [])
    # what --heatmaps writes per image (a TIFF map; --heatmap-format ome-zarr: a folder)
    heat_ends = ("_anomaly_map.tif",) + (("_labels.tif",) if per_cell else ())
    if heat_dir is not None:
        check_unique_stems(paths, heat_dir, "heatmaps")
        outputs += [("--heatmaps", heat_dir / f"{p.stem}{end}") for p in paths
                    for end in heat_ends]
    check_outputs_apart(outputs, paths)
    fpr = args.fpr or DEFAULT_FPR
    settings = BatchSettings(fpr=args.fpr, per_cell=per_cell, labels_spec=args.labels,
                             heatmaps=heat_dir, cells_csv=cells_path is not None,
                             channel_axis=args.channel_axis,
                             heatmap_format=args.heatmap_format)
    every = make_tasks(paths, sources)
    if not args.resume:
        note_replacing([p for p in (csv_path, cells_path) if p is not None], "results CSV(s)",
                       "; --resume keeps their rows and scores only the images not in them")
    out = ResultsWriter(csv_path, cells_path, resume=args.resume,
                        threshold=f"{detector.calibration.threshold(fpr):.6g}",
                        record=run_record(args.model, settings, fpr, every, precision))
    if heat_dir is not None:  # after the resume checks: a refused run creates nothing
        prepare_dir(heat_dir)
    tasks = [t for t in every if t.csv_path not in out.done]
    if heat_dir is not None:
        written = [heat_dir / f"{t.path.stem}{end}" for t in tasks
                   for end in (heat_ends[0], "_anomaly_map.ome.zarr", *heat_ends[1:])]
        note_replacing(written, "heatmap file(s)")
        # a killed run's half-written maps of these images (hidden temporary names)
        remove_stale_temporaries(heat_dir, (p.name for p in written))
    where = (f"on the dask cluster at {args.scheduler} (device {args.device}, precision "
             f"{args.precision} on each worker)" if args.scheduler
             else f"on {device} in {precision}" + (f", {args.workers} local dask workers"
                                                   if args.workers else ""))
    say(f"model: {detector.describe_rate(fpr)}; running {where}")
    if out.resumed:
        again = (f" ({len(out.rescored)} of them scored before with a label file that has "
                 f"changed since)" if out.rescored else "")
        say(f"resuming {csv_path}: {len(out.done)} images already scored, {len(tasks)} to "
            f"go{again}")
    first_failure, n_failed = "", 0
    first_out_of_range, n_out_of_range = "", 0
    n_flagged = n_ok = n_cells = n_cells_flagged = n_skipped = n_stacks = 0
    n_retried = n_lost = 0  # images whose dask workers died: scored elsewhere / given up
    with contextlib.ExitStack() as stack:
        if args.workers or args.scheduler:
            try:
                from ..core.cluster import connect, iter_cluster_outcomes
            except ImportError as err:
                raise CliError(f"--workers and --scheduler need dask.distributed ({err}); "
                               "pip install 'napari-cell-anomaly[dask]'") from None
            client = stack.enter_context(connect(args.scheduler, workers=args.workers,
                                                 timeout=args.connect_timeout))
            outcomes = iter_cluster_outcomes(client, args.model, tasks, settings,
                                             device=args.device if args.scheduler
                                             else str(device),
                                             precision=args.precision if args.scheduler
                                             else precision)
            stack.callback(outcomes.close)  # cancels what is in flight, before the client goes
        stack.enter_context(out)
        bar = stack.enter_context(tqdm(total=len(tasks), unit="image", file=sys.stderr,
                                       disable=args.quiet or not sys.stderr.isatty(),
                                       dynamic_ncols=True))
        if not (args.workers or args.scheduler):
            def tiles(name: str, done: int, total: int) -> None:  # a big image streams
                bar.set_postfix_str(f"{name}: {done}/{total} tiles")

            outcomes = iter_outcomes(detector, tasks, settings, tiles=tiles)
        for outcome in outcomes:
            out.write(outcome)
            bar.update()
            if outcome.notice:  # a dask worker died: one line per image it held
                bar.write(outcome.notice, file=sys.stderr)
            n_retried, n_lost = n_retried + (outcome.retries > 0), n_lost + outcome.lost
            if outcome.error is not None and not outcome.lost:
                first_failure, n_failed = first_failure or outcome.error, n_failed + 1
            first_out_of_range = first_out_of_range or outcome.range_warning or ""
            n_out_of_range += outcome.n_out_of_range
            n_stacks += int(outcome.is_stack)
            n_ok += outcome.n_scored
            n_flagged += outcome.n_flagged
            n_cells += outcome.n_cells
            n_cells_flagged += outcome.n_cells_flagged
            n_skipped += outcome.n_skipped
    if n_failed:
        say(f"skipped {n_failed} unusable image file(s); first: {first_failure}")
    if n_retried or n_lost:
        say(f"dask workers died mid-batch: {n_retried} image(s) scored again on another "
             f"worker, {n_lost} not scored (their rows say so; --resume tries them again)")
    if n_out_of_range:
        say(f"warning: {n_out_of_range} image(s) lie outside the model's training range "
             f"(see clipped_fraction in {csv_path}); first: {first_out_of_range}")
    rate = f"{100 * fpr:g}% false-alarm rate"
    before = f" (and {len(out.done)} files scored before)" if out.resumed else ""
    planes = f" (each plane of the {n_stacks} stack(s) counted as one)" if n_stacks else ""
    say(f"scored {n_ok} images{planes}{before}: {n_flagged} flagged anomalous at {rate}; "
         f"results in {csv_path}")
    if per_cell:
        say(f"scored {n_cells} cells: {n_cells_flagged} flagged anomalous (cells cut by the "
             f"image edge are not judged)" + (f"; per-cell rows in {cells_path}"
                                              if cells_path is not None else ""))
        if n_skipped:
            from ..core.cellunits import MIN_CELL_AREA

            say(f"left out {n_skipped} objects too small to be read as cells "
                 f"(under {MIN_CELL_AREA} pixels)")
    return 0 if n_ok or (out.done and not n_failed) else EXIT_BAD_INPUT

