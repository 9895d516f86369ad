"""``cell-anomaly evaluate`` and ``cell-anomaly demo``: results printed as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import keep_freed_memory, load_detector, load_inputs, pick_device, prepare_dir


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Print detection metrics on a normal and an anomalous folder as JSON."""
    from ..core.evaluation import evaluate

    keep_freed_memory()
    device = pick_device(args.device)
    detector = load_detector(args.model, device, args.precision)
    normal = load_inputs([args.normal], args.channel_axis).images
    anomalous = load_inputs([args.anomalous], args.channel_axis).images
    report = evaluate(detector, normal, anomalous, fpr=args.fpr)
    print(json.dumps(report, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the whole job on the project's own synthetic sample data."""
    from ..demo import run_demo

    out = Path(args.out)
    prepare_dir(out)
    summary = run_demo(out, quiet=args.quiet)
    print(json.dumps(summary, indent=2))
    return 0

