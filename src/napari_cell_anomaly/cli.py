"""``cell-anomaly``: train, score, segment, evaluate and demo from a terminal.

A thin layer over :mod:`napari_cell_anomaly.core`. Every error caused by bad input ends the
program with one clear line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .core.atomicwrite import atomic_text
from .core.batch import CELLS_CSV_COLUMNS, CSV_COLUMNS  # noqa: F401 - the CSV formats

if TYPE_CHECKING:
    import torch

    from .core.detector import AnomalyDetector
    from .core.stackio import LoadedPlanes

EXIT_BAD_INPUT = 2



class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


#: Stand for the devices found and the side of the images scoring streams in help texts;
#: filled in only when the help is shown, as finding them imports torch
#: (``cell-anomaly --help`` and argument errors must not).
_DEVICES_FOUND = "<devices found>"
_STREAM_SIDE = "<stream side>"


class _HelpFormatter(argparse.HelpFormatter):
    """Fills in :data:`_DEVICES_FOUND` and :data:`_STREAM_SIDE` when a help text is
    formatted."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and _DEVICES_FOUND in text:
            from .core.device import describe_devices

            found = describe_devices().removeprefix("devices found: ").replace("%", "%%")
            text = text.replace(_DEVICES_FOUND, found)
        if text and _STREAM_SIDE in text:
            from .core.lazyimage import STREAM_PIXELS

            text = text.replace(_STREAM_SIDE, str(round(STREAM_PIXELS ** 0.5)))
        return text


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_writable_file(path: Path) -> None:
    """Fail early, before any work, if ``path`` cannot be created."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise CliError(f"cannot write '{path}': folder '{parent}' does not exist")
    if path.is_dir():
        raise CliError(f"cannot write '{path}': it is a folder")
    if not os.access(parent, os.W_OK):
        raise CliError(f"cannot write '{path}': folder '{parent}' is not writable")


def _prepare_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create folder '{path}': {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise CliError(f"cannot write into folder '{path}': permission denied")


def _write_tiff_atomic(path: Path, data: np.ndarray, metadata: dict | None = None) -> None:
    """Write a TIFF atomically: float maps as float32, integer (label) images as they are;
    ``metadata`` (e.g. ``{"axes": "ZYX"}`` for a stack) goes into the file's description."""
    from .core.batch import write_tiff_atomic

    write_tiff_atomic(path, data, metadata)


def _load_inputs(inputs: Sequence[str], channel_axis: int | str | None = None
                 ) -> LoadedPlanes:
    """The images ``(H, W, C)`` of ``inputs`` (channel axis from each file's metadata or
    ``--channel-axis``): one entry per plane of a multi-page TIFF stack (its path repeated,
    ``names`` and ``planes`` telling the planes apart), with their ``axes``."""
    from .core.images import find_images
    from .core.stackio import load_planes

    paths = find_images(inputs)
    loaded = load_planes(paths, channel_axis)
    _report_failures(loaded.failures)
    if not loaded.images:
        raise CliError(f"none of the {len(paths)} image files could be used "
                       f"(first problem: {loaded.failures[0][1]})")
    return loaded


def _report_failures(failures: Sequence[tuple[Path, str]]) -> None:
    if failures:
        _say(f"skipped {len(failures)} unusable image file(s); first: {failures[0][1]}")


def _label_source(spec: str | None, paths: Sequence[Path]) -> dict[Path, Path | None] | None:
    """``--labels``: None (not given), every image segmented (``auto``: each path maps to
    None), or each image's label file found by stem in a folder."""
    if spec is None:
        return None
    if spec == "auto":
        return dict.fromkeys(paths)
    from .core.cells import match_label_files

    return match_label_files(paths, Path(spec))


def _device(spec: str) -> torch.device:
    """``--device``, checked before any work: a DeviceError (one line, exit 2) when this
    machine lacks it."""
    from .core.device import resolve_device

    return resolve_device(spec)


def _detector(path: str, device: torch.device | str = "auto") -> AnomalyDetector:
    from .core.detector import AnomalyDetector

    return AnomalyDetector.load(path, device=device)


# ------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    """Train a model on normal images and save it."""
    from tqdm import tqdm

    from .core.scoring import ScoringConfig
    from .core.training import TrainConfig, train

    out = Path(args.out)
    _check_writable_file(out)
    device = _device(args.device)
    if args.rejected_csv:
        _check_writable_file(Path(args.rejected_csv))
    config = TrainConfig(
        epochs=args.epochs, size=args.size, loss=args.loss, preset=args.preset, seed=args.seed,
        mode=args.mode, robust=args.robust, batch_size=args.batch_size,
        scoring=ScoringConfig(density=args.density, error=args.error),
    )
    loaded = _load_inputs(args.inputs, args.channel_axis)
    images, paths, names, planes = loaded.images, loaded.paths, loaded.names, loaded.planes
    if all(a.endswith("S") for a in loaded.axes):
        config.channels = "rgb"  # the files say their channels are RGB colour samples
    labels = None
    sources = _label_source(args.labels, paths)
    if sources is not None:
        from .core.cells import read_labels

        missing = [p for p in paths if args.labels != "auto" and sources.get(p) is None]
        if missing:
            _say(f"skipped {len(missing)} image(s) without a label image in {args.labels} "
                 f"(matched by stem); first: {missing[0].name}")
        keep = [i for i, p in enumerate(paths) if p not in missing]
        if not keep:
            raise CliError(f"no label image in {args.labels} matches any of the "
                           f"{len(paths)} images (expected <stem>.tif or <stem>_labels.tif)")
        images, paths = [images[i] for i in keep], [paths[i] for i in keep]
        names, planes = [names[i] for i in keep], [planes[i] for i in keep]
        labels = [read_labels(sources[p]) if sources[p] is not None else None for p in paths]
        if args.labels == "auto" and not config.robust:
            config.robust = True
            _say("--labels auto: cells found by the built-in segmentation; robust training "
                 "on (some cells of a normal field are not)")
        if args.mode == "auto":
            config.mode = "cells"
    _say(f"training on {len(images)} images on {device}")
    gen = train(images, config, labels=labels, names=names, device=device)
    bar = tqdm(total=None, unit="step", disable=args.quiet, file=sys.stderr, dynamic_ncols=True)
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as done:
                detector = done.value
                break
            if bar.total is None:
                bar.total = ev.steps
            bar.n = ev.step
            val = f"{ev.val_loss:.5f}" if ev.val_loss is not None else "-"
            bar.set_description(f"epoch {ev.epoch}/{ev.epochs} ({ev.phase})")
            bar.set_postfix_str(f"loss {ev.train_loss:.5f} val {val}", refresh=False)
            bar.refresh()
    finally:
        bar.close()
    detector.save(out)
    if args.rejected_csv:
        with atomic_text(Path(args.rejected_csv)) as fh:
            w = csv.writer(fh)
            w.writerow(["path", "plane"])
            for i in detector.rejected:
                w.writerow([str(paths[i]), "" if planes[i] is None else planes[i]])
    _say(detector.summary())
    _say(f"saved model to {out}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Score images with a model: one CSV row per image (and per cell), optional heatmaps,
    written as each image finishes (``--resume`` goes on where a run stopped)."""
    from tqdm import tqdm

    from .core.batch import BatchSettings, ResultsWriter, iter_outcomes, make_tasks
    from .core.batchrecord import run_record
    from .core.images import find_images
    from .core.scoring import DEFAULT_FPR

    csv_path = Path(args.csv)
    _check_writable_file(csv_path)
    cells_path = Path(args.cells_csv) if args.cells_csv else None
    if cells_path is not None:
        _check_writable_file(cells_path)
    if args.workers and args.scheduler:
        raise CliError("give --workers (a cluster on this machine) or --scheduler (a running "
                       "cluster), not both")
    heat_dir = Path(args.heatmaps) if args.heatmaps else None
    # With --scheduler the network runs on the workers; this process only reads the model.
    device = _device("cpu" if args.scheduler else args.device)
    if heat_dir is not None:
        _prepare_dir(heat_dir)
    detector = _detector(args.model, device)
    paths = find_images(args.inputs)
    sources = _label_source(args.labels, paths)
    per_cell = (sources is not None or cells_path is not None or detector.mode == "cells")
    if per_cell and sources is None:
        sources = dict.fromkeys(paths)  # built-in segmentation
    fpr = args.fpr or DEFAULT_FPR
    settings = BatchSettings(fpr=args.fpr, per_cell=per_cell, labels_spec=args.labels,
                             heatmaps=heat_dir, cells_csv=cells_path is not None,
                             channel_axis=args.channel_axis,
                             heatmap_format=args.heatmap_format)
    out = ResultsWriter(csv_path, cells_path, resume=args.resume,
                        threshold=f"{detector.calibration.threshold(fpr):.6g}",
                        record=run_record(args.model, settings, fpr))
    tasks = [t for t in make_tasks(paths, sources) if t.csv_path not in out.done]
    where = (f"on the dask cluster at {args.scheduler} (device {args.device} on each worker)"
             if args.scheduler else f"on {device}" + (f", {args.workers} local dask workers"
                                                     if args.workers else ""))
    _say(f"model: {detector.describe_rate(fpr)}; running {where}")
    if out.resumed:
        _say(f"resuming {csv_path}: {len(out.done)} images already scored, {len(tasks)} to go")
    first_failure, n_failed = "", 0
    first_out_of_range, n_out_of_range = "", 0
    n_flagged = n_ok = n_cells = n_cells_flagged = n_skipped = n_stacks = 0
    n_retried = n_lost = 0  # images whose dask workers died: scored elsewhere / given up
    with contextlib.ExitStack() as stack:
        if args.workers or args.scheduler:
            try:
                from .core.cluster import connect, iter_cluster_outcomes
            except ImportError as err:
                raise CliError(f"--workers and --scheduler need dask.distributed ({err}); "
                               "pip install 'napari-cell-anomaly[dask]'") from None
            client = stack.enter_context(connect(args.scheduler, workers=args.workers,
                                                 timeout=args.connect_timeout))
            outcomes = iter_cluster_outcomes(client, args.model, tasks, settings,
                                             device=args.device if args.scheduler
                                             else str(device))
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
        _say(f"skipped {n_failed} unusable image file(s); first: {first_failure}")
    if n_retried or n_lost:
        _say(f"dask workers died mid-batch: {n_retried} image(s) scored again on another "
             f"worker, {n_lost} not scored (their rows say so; --resume tries them again)")
    if n_out_of_range:
        _say(f"warning: {n_out_of_range} image(s) lie outside the model's training range "
             f"(see clipped_fraction in {csv_path}); first: {first_out_of_range}")
    rate = f"{100 * fpr:g}% false-alarm rate"
    before = f" (and {len(out.done)} files scored before)" if out.resumed else ""
    planes = f" (each plane of the {n_stacks} stack(s) counted as one)" if n_stacks else ""
    _say(f"scored {n_ok} images{planes}{before}: {n_flagged} flagged anomalous at {rate}; "
         f"results in {csv_path}")
    if per_cell:
        _say(f"scored {n_cells} cells: {n_cells_flagged} flagged anomalous (cells cut by the "
             f"image edge are not judged)" + (f"; per-cell rows in {cells_path}"
                                              if cells_path is not None else ""))
        if n_skipped:
            from .core.cellunits import MIN_CELL_AREA

            _say(f"left out {n_skipped} objects too small to be read as cells "
                 f"(under {MIN_CELL_AREA} pixels)")
    return 0 if n_ok or (out.done and not n_failed) else EXIT_BAD_INPUT


def _label_dtype(labels: np.ndarray) -> np.ndarray:
    """uint16 label images where the ids fit, else uint32."""
    from .core.batch import label_dtype

    return label_dtype(labels)


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment the cells of each image: one ``<stem>_labels.tif`` per image."""
    from .core.axes import read_2d_image
    from .core.images import ImageError, find_images
    from .core.segmentation import segment_cells

    out = Path(args.out)
    _prepare_dir(out)
    paths = find_images(args.inputs)
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
            _say(f"warning: no cells found in {path.name}; writing an all-zero label image")
        _write_tiff_atomic(out / f"{path.stem}_labels.tif", _label_dtype(labels))
        n_ok += 1
        n_cells += count
        if show:
            print(f"\rsegmented {k}/{len(paths)}", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    _report_failures(failures)
    _say(f"segmented {n_ok} images: {n_cells} cells found; label images in {out}")
    return 0 if n_ok else EXIT_BAD_INPUT


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print detection metrics on a normal and an anomalous folder as JSON."""
    from .core.evaluation import evaluate

    detector = _detector(args.model, _device(args.device))
    normal = _load_inputs([args.normal], args.channel_axis).images
    anomalous = _load_inputs([args.anomalous], args.channel_axis).images
    report = evaluate(detector, normal, anomalous, fpr=args.fpr)
    print(json.dumps(report, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole job on the project's own synthetic sample data."""
    from .demo import run_demo

    out = Path(args.out)
    _prepare_dir(out)
    summary = run_demo(out, quiet=args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------
# Argument parsing
# ------------------------------------------------------------------------------------------------
def _fpr(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _channel_axis(text: str) -> int | str:
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an axis index or 'none', got {text!r}"
                                         ) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``cell-anomaly`` argument parser."""
    p = argparse.ArgumentParser(
        prog="cell-anomaly",
        description="Find abnormal cells in microscopy images: train on normal cells, "
                    "score new images with per-pixel error maps.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Help texts quote the library's defaults, so they cannot drift from them. Only torch-free
    # modules are imported here: the parser is built for every command, --help included.
    from .core.batch import CONNECT_TIMEOUT
    from .core.modelconfig import PRESETS
    from .core.scoring import DEFAULT_FPR, ERROR_KINDS, TRAINABLE_DENSITIES
    from .core.trainconfig import LOSSES, MODES, TrainConfig

    d = TrainConfig()
    channel_help = ("which axis of the files holds the channels, where their metadata (OME-TIFF "
                    "/ ImageJ axes, TIFF samples, PNG colour type) does not say: an axis index "
                    "of the array as stored, or 'none' (no channel axis); default: from the "
                    "metadata, an error when it is ambiguous")
    device_help = ("where the network runs: auto = a CUDA GPU, else Apple MPS, else the CPU; "
                   f"not stored in the model (default: auto; this machine: {_DEVICES_FOUND})")
    t = sub.add_parser("train", help="train a model on images of normal cells",
                       formatter_class=_HelpFormatter)
    t.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS",
                   help="image files, folders or glob patterns (PNG, TIFF, JPEG; each plane "
                        "of a multi-page TIFF stack is one training image)")
    t.add_argument("--out", required=True, metavar="MODEL", help="model file to write")
    t.add_argument("--epochs", type=_positive, default=d.epochs,
                   help=f"training epochs (default: {d.epochs})")
    t.add_argument("--size", type=_positive, default=d.size,
                   help=f"model input size in pixels (default: {d.size})")
    t.add_argument("--loss", choices=LOSSES, default=d.loss,
                   help=f"reconstruction loss (default: {d.loss})")
    t.add_argument("--preset", choices=PRESETS, default=d.preset,
                   help=f"network design (seed = the published Keras design; "
                        f"default: {d.preset})")
    t.add_argument("--mode", choices=MODES, default=d.mode,
                   help="whole cell crops, patches of large fields, or one window per cell of "
                        "a field; auto: cells when --labels is given, else whole or patch by "
                        f"image size (default: {d.mode})")
    t.add_argument("--density", choices=TRAINABLE_DENSITIES, default=d.scoring.density,
                   help="whole and patch modes: latent density over the code vectors of "
                        "single latent positions: kde = kernel density estimate, gmm = "
                        "Gaussian mixture (cells mode always uses a KDE over the whole code "
                        f"of the cell's centred window) (default: {d.scoring.density})")
    t.add_argument("--labels", metavar="DIR|auto",
                   help="cells mode: a folder of label images of the normal cells, matched to "
                        "the images by stem (<stem>.tif, <stem>_labels.tif, .png alike; only "
                        "labelled objects are used), or 'auto' to find the cells with the "
                        "built-in segmentation (turns on --robust)")
    t.add_argument("--robust", action="store_true",
                   help="give zero weight to the training images (whole mode) or cells "
                        "(cells mode) with the most anomalous reconstruction error, and drop "
                        "such units from calibration")
    t.add_argument("--rejected-csv", metavar="CSV",
                   help="write the training images rejected by --robust to this CSV")
    t.add_argument("--batch-size", type=_positive, default=d.batch_size,
                   help=f"batch size (default: {d.batch_size})")
    t.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")
    t.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help=device_help)
    t.add_argument("--error", choices=("auto", *ERROR_KINDS), default=d.scoring.error,
                   help="per-pixel error behind scores and heatmaps: lab = squared error in "
                        "CIE L*a*b*, mse = squared error of the normalised channel "
                        "intensities, ssim = 1 - SSIM, mix = both; auto = lab for RGB "
                        f"brightfield images, else mse (default: {d.scoring.error})")
    t.add_argument("--channel-axis", type=_channel_axis, metavar="N|none",
                   help=channel_help)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="score images with a trained model",
                       formatter_class=_HelpFormatter)
    s.add_argument("model", metavar="MODEL")
    s.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS",
                   help="image files, folders or glob patterns (PNG, TIFF, JPEG); a "
                        "multi-page TIFF stack (Z or T axis) is scored plane by plane")
    s.add_argument("--csv", required=True, metavar="OUT.csv",
                   help="results table to write: one row per image, one per plane of a stack "
                        "(its index in the last column, 'plane')")
    s.add_argument("--heatmaps", metavar="DIR",
                   help="write float32 TIFF error maps here, <stem>_anomaly_map.tif (a stack: "
                        "one multi-page TIFF of its planes' maps; per cell: also the label "
                        "image used, <stem>_labels.tif; a tiled, compressed BigTIFF, or an "
                        "OME-Zarr folder with --heatmap-format ome-zarr, for the images a "
                        "patch-mode model streams: TIFFs stored in tiles or of at least "
                        f"{_STREAM_SIDE} x {_STREAM_SIDE} pixels)")
    s.add_argument("--heatmap-format", choices=("tiff", "ome-zarr"), default="tiff",
                   help="format of the heatmaps of the images a patch-mode model streams: a "
                        "tiled, compressed BigTIFF <stem>_anomaly_map.tif, or an OME-Zarr "
                        "folder <stem>_anomaly_map.ome.zarr (256 px chunks); other heatmaps "
                        "are TIFFs (default: tiff)")
    s.add_argument("--labels", metavar="DIR|auto",
                   help="score per cell: a folder of label images matched by stem (a "
                        "stack's: one label plane per image plane), or 'auto' for the built-in "
                        "segmentation (a cells-mode model scores per cell and segments by "
                        "itself when this is absent)")
    s.add_argument("--cells-csv", metavar="CELLS.csv",
                   help="per-cell results to write: one row per cell (path, cell_id, "
                        "centroid_y, centroid_x, area, score, recon_error, log_density, "
                        "is_anomaly, percentile, at_border, shape_log_density, plane); --csv "
                        "then holds each image's (each plane's) worst cell")
    s.add_argument("--fpr", type=_fpr, help=f"target false-alarm rate (default: {DEFAULT_FPR})")
    s.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help=device_help + "; with --scheduler, resolved on each worker")
    s.add_argument("--resume", action="store_true",
                   help="keep the scored rows of an existing --csv (and --cells-csv) and "
                        "score only the images not in it (rows holding an error are tried "
                        "again); refused if its rows were scored with another model file, "
                        "--fpr, --labels or --channel-axis, or per cell differently, as "
                        "recorded in OUT.csv.run.json (or if that record is missing)")
    s.add_argument("--workers", type=_positive, metavar="N",
                   help="score on a dask cluster of N worker processes started on this "
                        "machine (one thread each); the images a dying worker held are "
                        "scored again or reported in their rows, one line each on stderr")
    s.add_argument("--scheduler", metavar="ADDRESS",
                   help="score on a running dask.distributed cluster (tcp://host:8786); its "
                        "workers must see the images and the --heatmaps folder at the same "
                        "paths")
    s.add_argument("--connect-timeout", type=_positive_float, default=CONNECT_TIMEOUT,
                   metavar="SECONDS",
                   help=f"give up on a --scheduler that does not answer within this time "
                        f"(default: {CONNECT_TIMEOUT:g})")
    s.add_argument("--channel-axis", type=_channel_axis, metavar="N|none",
                   help=channel_help)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_score)

    g = sub.add_parser("segment", help="find the cells of each image (built-in segmentation)")
    g.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS",
                   help="image files, folders or glob patterns (PNG, TIFF, JPEG)")
    g.add_argument("--out", required=True, metavar="DIR",
                   help="folder for <stem>_labels.tif (uint16, or uint32 above 65535 cells; "
                        "0 = background)")
    g.add_argument("--kind", choices=("auto", "brightfield", "fluorescence"), default="auto",
                   help="brightfield: cells darker or more saturated than the background; "
                        "fluorescence: cells brighter (default: auto, from the image)")
    g.add_argument("--diameter", type=_positive_float, metavar="D",
                   help="typical cell diameter in pixels (default: estimated per image)")
    g.add_argument("--channel-axis", type=_channel_axis, metavar="N|none",
                   help=channel_help)
    g.add_argument("--channel", type=int, metavar="K",
                   help="segment on channel K only (0-based; default: all channels, each "
                        "scaled to its own range, averaged)")
    g.add_argument("--quiet", action="store_true", help="no progress line")
    g.set_defaults(func=cmd_segment)

    e = sub.add_parser("evaluate", help="AUROC/AUPRC and the false-alarm rate observed on "
                                        "the normals next to the nominal one, as JSON",
                       formatter_class=_HelpFormatter)
    e.add_argument("model", metavar="MODEL")
    e.add_argument("--normal", required=True, metavar="DIR")
    e.add_argument("--anomalous", required=True, metavar="DIR")
    e.add_argument("--fpr", type=_fpr, help=f"target false-alarm rate (default: {DEFAULT_FPR})")
    e.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help=device_help)
    e.add_argument("--channel-axis", type=_channel_axis, metavar="N|none",
                   help=channel_help)
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train and score on built-in synthetic cells")
    d.add_argument("--out", default="demo-output", metavar="DIR",
                   help="output folder (default: ./demo-output)")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cell-anomaly`` command.

    Imports only what the command needs: ``--help`` and argument errors end before torch is
    imported, and scoring with a model never imports scikit-learn.
    """
    args = build_parser().parse_args(argv)
    from .core.images import ImageError
    from .core.modelfile import ModelFileError

    try:
        return int(args.func(args))
    except (CliError, ImageError, ModelFileError, ValueError) as err:
        _say(f"cell-anomaly: error: {str(err).splitlines()[0] if str(err) else repr(err)}")
        return EXIT_BAD_INPUT
    except OSError as err:
        _say(f"cell-anomaly: error: {err.strerror or err}"
             + (f": '{err.filename}'" if err.filename else ""))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _say("cell-anomaly: interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
