"""``cell-anomaly train``."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from ..core.atomicwrite import atomic_text
from .common import (
    CliError,
    check_outputs_apart,
    check_writable_file,
    label_source,
    load_inputs,
    note_replacing,
    pick_device,
    pick_precision,
    say,
)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model on normal images and save it."""
    from tqdm import tqdm

    from ..core.scoring import ScoringConfig
    from ..core.training import TrainConfig, train

    out = Path(args.out)
    check_writable_file(out)
    device = pick_device(args.device)
    pick_precision(args.precision, device)  # checked before the images are read
    if args.rejected_csv:
        check_writable_file(Path(args.rejected_csv))
    config = TrainConfig(
        epochs=args.epochs, size=args.size, loss=args.loss, preset=args.preset, seed=args.seed,
        mode=args.mode, robust=args.robust, batch_size=args.batch_size, orient=args.orient,
        scoring=ScoringConfig(density=args.density, error=args.error),
    )
    loaded = load_inputs(args.inputs, args.channel_axis)
    images, paths, names, planes = loaded.images, loaded.paths, loaded.names, loaded.planes
    check_outputs_apart([("--out", out)] + ([("--rejected-csv", Path(args.rejected_csv))]
                                            if args.rejected_csv else []), paths)
    if all(a.endswith("S") for a in loaded.axes):
        config.channels = "rgb"  # the files say their channels are RGB colour samples
    labels = None
    sources = label_source(args.labels, paths)
    if sources is not None:
        from ..core.cells import read_labels

        missing = [p for p in paths if args.labels != "auto" and sources.get(p) is None]
        if missing:
            say(f"skipped {len(missing)} image(s) without a label image in {args.labels} "
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
            say("--labels auto: cells found by the built-in segmentation; robust training "
                 "on (some cells of a normal field are not)")
        if args.mode == "auto":
            config.mode = "cells"
    note_replacing([out] + ([Path(args.rejected_csv)] if args.rejected_csv else []),
                   "file(s)", " when training ends")
    # for the mode known now (auto is fp32 in cells mode: core.device.FP32_AUTO_MODES)
    precision = pick_precision(args.precision, device, config.mode)
    say(f"training on {len(images)} images on {device} in {precision}")
    gen = train(images, config, labels=labels, names=names, device=device,
                precision=precision)
    bar = tqdm(total=None, unit="step", disable=args.quiet or not sys.stderr.isatty(),
               file=sys.stderr, dynamic_ncols=True)
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
    say(detector.summary())
    say(f"saved model to {out}")
    return 0

