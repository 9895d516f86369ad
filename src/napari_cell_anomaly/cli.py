"""``cell-anomaly``: train, score, segment, evaluate and demo from a terminal.

A thin layer over :mod:`napari_cell_anomaly.core`. Every error caused by bad input ends the
program with one clear line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from ._cli.arguments import (
    AUTO_PRECISION,
    DEVICES_FOUND,
    PRECISIONS,
    STREAM_SIDE,
    HelpFormatter,
    channel_axis_arg,
    fpr_arg,
    positive_arg,
    positive_float_arg,
)
from ._cli.common import EXIT_BAD_INPUT, CliError, say
from ._cli.evaluate import cmd_demo, cmd_evaluate
from ._cli.score import cmd_score
from ._cli.segment import cmd_segment
from ._cli.train import cmd_train


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
                   f"not stored in the model (default: auto; this machine: {DEVICES_FOUND})")
    precision_help = ("precision of the network's forward pass (PyTorch autocast; error maps, "
                      "latent density and calibration stay float32/float64): auto = bf16 on a "
                      "CPU that computes bfloat16 natively (PyTorch's oneDNN check: AVX-512 "
                      "BF16 or AMX) and on a CUDA GPU of compute capability 8.0 or later, "
                      "else fp32, and fp32 for a cells-mode model; fp16 on CUDA only; not "
                      "stored in the model (default: auto; "
                      f"this machine: {AUTO_PRECISION})")
    t = sub.add_parser("train", help="train a model on images of normal cells",
                       formatter_class=HelpFormatter)
    t.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS",
                   help="image files, folders or glob patterns (PNG, TIFF, JPEG; each plane "
                        "of a multi-page TIFF stack is one training image)")
    t.add_argument("--out", required=True, metavar="MODEL", help="model file to write")
    t.add_argument("--epochs", type=positive_arg, default=d.epochs,
                   help=f"training epochs (default: {d.epochs})")
    t.add_argument("--size", type=positive_arg, default=d.size,
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
    orient = t.add_mutually_exclusive_group()
    orient.add_argument("--orient", dest="orient", action="store_true", default=d.orient,
                        help="cells mode: the network sees each cell's window turned so the "
                             "cell is centred and its major axis runs along the columns, in "
                             "training and in scoring (stored in the model); the training "
                             "augmentation then only flips. Whole and patch modes ignore it "
                             f"(default: {'on' if d.orient else 'off'})")
    orient.add_argument("--no-orient", dest="orient", action="store_false",
                        help="cells mode: the network sees each cell as it lies in the field "
                             "(the training augmentation also turns windows by 90 degrees)")
    t.add_argument("--robust", action="store_true",
                   help="give zero weight to the training images (whole mode) or cells "
                        "(cells mode) with the most anomalous reconstruction error, and drop "
                        "such units from calibration")
    t.add_argument("--rejected-csv", metavar="CSV",
                   help="write the training images rejected by --robust to this CSV")
    t.add_argument("--batch-size", type=positive_arg, default=d.batch_size,
                   help=f"batch size (default: {d.batch_size})")
    t.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")
    t.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help=device_help)
    t.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help=precision_help + "; in training it is that of the forward passes "
                   "that fit the latent density and the calibration (and of the training "
                   "steps when bf16)")
    t.add_argument("--error", choices=("auto", *ERROR_KINDS), default=d.scoring.error,
                   help="per-pixel error behind scores and heatmaps: lab = squared error in "
                        "CIE L*a*b*, mse = squared error of the normalised channel "
                        "intensities, ssim = 1 - SSIM, mix = both; auto = lab for RGB "
                        f"brightfield images, else mse (default: {d.scoring.error})")
    t.add_argument("--channel-axis", type=channel_axis_arg, metavar="N|none",
                   help=channel_help)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="score images with a trained model",
                       formatter_class=HelpFormatter)
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
                        f"{STREAM_SIDE} x {STREAM_SIDE} pixels)")
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
                        "then holds each image's (each plane's) worst judged cell, its score "
                        "adjusted for the number of cells judged")
    s.add_argument("--fpr", type=fpr_arg, help=f"target false-alarm rate (default: {DEFAULT_FPR})")
    s.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help=device_help + "; with --scheduler, resolved on each worker")
    s.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help=precision_help + "; with --scheduler, resolved on each worker")
    s.add_argument("--resume", action="store_true",
                   help="keep the scored rows of an existing --csv (and --cells-csv) and "
                        "score only the images not in it (rows holding an error are tried "
                        "again, and images whose label file in --labels DIR changed since); "
                        "refused if its rows were scored with another model file, --fpr, "
                        "--labels or --channel-axis, or per cell differently, or written "
                        "with another --heatmaps folder, --heatmap-format, --precision or "
                        "--cells-csv choice, as recorded in OUT.csv.run.json (or if that record is "
                        "missing)")
    s.add_argument("--workers", type=positive_arg, metavar="N",
                   help="score on a dask cluster of N worker processes started on this "
                        "machine (one thread each); the images a dying worker held are "
                        "scored again or reported in their rows, one line each on stderr")
    s.add_argument("--scheduler", metavar="ADDRESS",
                   help="score on a running dask.distributed cluster (tcp://host:8786); its "
                        "workers must see the images and the --heatmaps folder at the same "
                        "paths")
    s.add_argument("--connect-timeout", type=positive_float_arg, default=CONNECT_TIMEOUT,
                   metavar="SECONDS",
                   help=f"give up on a --scheduler that does not answer within this time "
                        f"(default: {CONNECT_TIMEOUT:g})")
    s.add_argument("--channel-axis", type=channel_axis_arg, metavar="N|none",
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
    g.add_argument("--diameter", type=positive_float_arg, metavar="D",
                   help="typical cell diameter in pixels (default: estimated per image)")
    g.add_argument("--channel-axis", type=channel_axis_arg, metavar="N|none",
                   help=channel_help)
    g.add_argument("--channel", type=int, metavar="K",
                   help="segment on channel K only (0-based; default: all channels, each "
                        "scaled to its own range, averaged)")
    g.add_argument("--quiet", action="store_true", help="no progress line")
    g.set_defaults(func=cmd_segment)

    e = sub.add_parser("evaluate", help="AUROC/AUPRC and the false-alarm rate observed on "
                                        "the normals next to the nominal one, as JSON",
                       formatter_class=HelpFormatter)
    e.add_argument("model", metavar="MODEL")
    e.add_argument("--normal", required=True, metavar="DIR")
    e.add_argument("--anomalous", required=True, metavar="DIR")
    e.add_argument("--fpr", type=fpr_arg, help=f"target false-alarm rate (default: {DEFAULT_FPR})")
    e.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                   help=device_help)
    e.add_argument("--precision", default="auto", choices=PRECISIONS, help=precision_help)
    e.add_argument("--channel-axis", type=channel_axis_arg, metavar="N|none",
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
        say(f"cell-anomaly: error: {str(err).splitlines()[0] if str(err) else repr(err)}")
        return EXIT_BAD_INPUT
    except OSError as err:
        say(f"cell-anomaly: error: {err.strerror or err}"
             + (f": '{err.filename}'" if err.filename else ""))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        say("cell-anomaly: interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
