"""The main job on the project's own synthetic sample data (``cell-anomaly demo``).

No input and no downloads: generate normal training cells and a test set with planted
parasite-like anomalies, train a small model, score, and write the model, heatmaps, a CSV, a
figure and a summary with AUROC.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .core.metrics import image_auroc, pixel_auroc, rates_at_threshold
from .core.sample import make_cells
from .core.training import TrainConfig, run_training
from .figures import overview_figure

N_TRAIN = 600
N_TEST = 200
EPOCHS = 10


def run_demo(out: Path, *, quiet: bool = False, n_train: int = N_TRAIN, n_test: int = N_TEST,
             epochs: int = EPOCHS, seed: int = 0) -> dict[str, Any]:
    """Train and score on synthetic cells, writing every output into ``out``.

    Parameters
    ----------
    out : Path
        Existing, writable output folder.
    quiet : bool
        No progress output.
    n_train, n_test : int
        Number of normal training crops and of test crops (half of them anomalous).
    epochs : int
        Training epochs.
    seed : int
        Seed of the data and the training.

    Returns
    -------
    dict
        Summary: AUROC, pixel AUROC, rates at the calibrated threshold, timings, files.
    """
    import tifffile
    from skimage.io import imsave

    t0 = time.perf_counter()
    train_set = make_cells(n_train, seed=seed)
    test_set = make_cells(n_test, anomaly_fraction=0.5, seed=seed + 1)

    def progress(ev: Any) -> None:
        if not quiet and (ev.step % 10 == 0 or ev.phase != "train"):
            val = f"{ev.val_loss:.5f}" if ev.val_loss is not None else "-"
            print(f"\r[demo] epoch {ev.epoch}/{ev.epochs} step {ev.step}/{ev.steps} "
                  f"loss {ev.train_loss:.5f} val {val} eta {ev.eta:4.0f}s   ", end="",
                  file=sys.stderr, flush=True)

    detector = run_training(train_set.images, TrainConfig(epochs=epochs, seed=seed),
                            callback=progress)
    if not quiet:
        print(file=sys.stderr)
    t_train = time.perf_counter() - t0
    detector.save(out / "model.safetensors")

    images_dir = out / "test_images"
    maps_dir = out / "heatmaps"
    images_dir.mkdir(exist_ok=True)
    maps_dir.mkdir(exist_ok=True)
    results = []
    with open(out / "scores.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "score", "recon_error", "log_density", "is_anomaly", "percentile",
                    "truly_anomalous"])
        for i, (img, label) in enumerate(zip(test_set.images, test_set.labels, strict=True)):
            name = f"cell_{i:03d}.png"
            imsave(images_dir / name, img, check_contrast=False)
            r = detector.score(img)
            results.append(r)
            tifffile.imwrite(maps_dir / f"cell_{i:03d}_anomaly_map.tif", r.error_map)
            w.writerow([str(images_dir / name), f"{r.score:.6g}", f"{r.recon_error:.6g}",
                        f"{r.log_density:.6g}", int(r.is_anomaly), f"{r.percentile:.2f}",
                        int(label)])

    labels = test_set.labels
    scores = np.array([r.score for r in results])
    tpr, fpr = rates_at_threshold(labels, scores, results[0].threshold)
    anomalous = np.flatnonzero(labels)
    summary: dict[str, Any] = {
        "train_images": n_train, "test_images": n_test, "test_anomalous": int(labels.sum()),
        "auroc": round(image_auroc(labels, scores), 4),
        "auroc_recon_error": round(image_auroc(labels, [r.recon_error for r in results]), 4),
        "auroc_log_density": round(image_auroc(labels, [-r.log_density for r in results]), 4),
        "pixel_auroc": round(pixel_auroc([test_set.masks[i] for i in anomalous],
                                         [results[i].error_map for i in anomalous]), 4),
        "threshold_fpr_target": 0.05,
        "tpr_at_threshold": round(tpr, 4), "fpr_at_threshold": round(fpr, 4),
        "train_seconds": round(t_train, 1),
    }

    order = np.argsort(scores)
    normal_idx = [i for i in order if not labels[i]][:3]
    anomalous_idx = [i for i in order[::-1] if labels[i]][:3] + \
        [i for i in order if labels[i]][:1]
    picks = normal_idx + anomalous_idx
    x = [detector.preprocessing(test_set.images[i]) for i in picks]
    fig = overview_figure(
        x, [results[i].reconstruction for i in picks], [results[i].error_map for i in picks],
        [("anomalous" if labels[i] else "normal") + f"\nscore {scores[i]:.1f}" for i in picks],
        scores[~labels], scores[labels], results[0].threshold, out / "demo.png",
        map_range=detector.calibration.display_range())
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    summary["files"] = {"model": str(out / "model.safetensors"), "figure": str(fig),
                        "scores": str(out / "scores.csv"), "heatmaps": str(maps_dir),
                        "test_images": str(images_dir)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
