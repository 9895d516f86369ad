"""Per-cell anomaly detection on whole fields: Chula RBC-12 smears and synthetic fields.

Chula RBC-12 (``../shared/data/chula-rbc``): the 351 fields are split by field (never by
cell) into train (50%), dev (25%) and held-out (25%) fields with a fixed seed. The model
trains on the train fields' normal cells only: the built-in segmentation's objects that hold
exactly one annotated point, of class 0. Test fields are segmented the same way and every
object is scored; an object holding exactly one annotated point takes that point's class.
Per-cell AUROC of normal (0) against anomalous (1-9, 11, 12; 10 left out), overall and per
class (that class against the normals). Choices (context, defaults) were made looking at the
dev fields only; the held-out fields are reported separately and were not used for any
choice.

Reference: classic shape and colour features (area, perimeter, eccentricity, solidity, mean
colour, central pallor) with a Gaussian mixture fitted on the same training cells.

Synthetic (``make_cell_field``): per-cell AUROC of planted stained cells on new fields, and
the time to score a 2048 x 2048 field with ~1,000 cells (segmentation included).

Run: ``python benchmarks/cells.py [--epochs N] [--context isolate|keep] [--quick] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_cell_anomaly.core.cells import measure_cells
from napari_cell_anomaly.core.images import read_image
from napari_cell_anomaly.core.metrics import image_auroc
from napari_cell_anomaly.core.sample import make_cell_field
from napari_cell_anomaly.core.segmentation import segment_cells
from napari_cell_anomaly.core.training import TrainConfig, run_training

CHULA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chula-rbc"
ANOMALOUS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12)
CLASS_NAMES = {0: "normal", 1: "macrocyte", 2: "microcyte", 3: "spherocyte", 4: "target cell",
               5: "stomatocyte", 6: "ovalocyte", 7: "teardrop", 8: "burr cell",
               9: "schistocyte", 11: "hypochromia", 12: "elliptocyte"}


def read_points(path: Path) -> np.ndarray:
    """``(N, 3)`` int array of ``x, y, class`` rows."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return np.asarray([[int(float(v)) for v in r[:3]] for r in rows if len(r) >= 3],
                      dtype=np.int64).reshape(-1, 3)


def point_classes(labels: np.ndarray, points: np.ndarray) -> dict[int, int]:
    """Object id -> class, for the objects holding exactly one annotated point."""
    h, w = labels.shape
    ids: dict[int, list[int]] = {}
    for x, y, c in points:
        if 0 <= y < h and 0 <= x < w and labels[y, x]:
            ids.setdefault(int(labels[y, x]), []).append(int(c))
    return {k: v[0] for k, v in ids.items() if len(v) == 1}


def split_fields(seed: int = 0) -> dict[str, list[str]]:
    stems = sorted(p.stem for p in (CHULA / "images").glob("*.jpg"))
    order = np.random.default_rng(seed).permutation(len(stems))
    n = len(stems)
    parts = {"train": order[: n // 2], "dev": order[n // 2: 3 * n // 4],
             "held-out": order[3 * n // 4:]}
    return {k: [stems[i] for i in v] for k, v in parts.items()}


def features(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classic per-object features: area, perimeter, eccentricity, solidity, mean RGB and
    central pallor (mean brightness of the inner half minus the outer ring)."""
    from scipy import ndimage
    from skimage.measure import regionprops

    gray = image.astype(np.float64).mean(-1)
    dist = ndimage.distance_transform_edt(labels > 0)
    rows, ids = [], []
    for rp in regionprops(labels, intensity_image=image.astype(np.float64)):
        sl = rp.slice
        own = labels[sl] == rp.label
        d = dist[sl][own]
        inner = d > np.median(d)
        g = gray[sl][own]
        pallor = g[inner].mean() - g[~inner].mean() if inner.any() and (~inner).any() else 0.0
        rows.append([rp.area, rp.perimeter, rp.eccentricity, rp.solidity,
                     *rp.intensity_mean[:3], pallor])
        ids.append(rp.label)
    return np.asarray(ids), np.asarray(rows, dtype=np.float64)


def load_split(stems: list[str], limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray,
                                                                   dict[int, int], np.ndarray]]:
    out = []
    for stem in stems[:limit]:
        image = read_image(CHULA / "images" / f"{stem}.jpg")
        labels = segment_cells(image)
        classes = point_classes(labels, read_points(CHULA / "points" / f"{stem}.txt"))
        at_border = measure_cells(labels).at_border
        out.append((stem, image, labels, classes, at_border))
    return out


def auroc_table(y_class: np.ndarray, scores: np.ndarray) -> dict[str, float | int]:
    keep = y_class != 10
    y, s = y_class[keep], scores[keep]
    res: dict[str, float | int] = {"n_normal": int((y == 0).sum()),
                                   "n_anomalous": int(np.isin(y, ANOMALOUS).sum())}
    res["overall"] = image_auroc(np.isin(y, ANOMALOUS)[np.isin(y, (0, *ANOMALOUS))],
                                 s[np.isin(y, (0, *ANOMALOUS))])
    for c in ANOMALOUS:
        sel = (y == 0) | (y == c)
        if (y == c).sum() >= 5:
            res[CLASS_NAMES[c]] = image_auroc(y[sel] == c, s[sel])
    return res


def chula(args: argparse.Namespace) -> dict:
    if not (CHULA / "images").is_dir():
        return {"skipped": f"no Chula RBC-12 data at {CHULA}"}
    limit = 40 if args.quick else None
    split = split_fields(args.seed)
    t0 = time.perf_counter()
    train = load_split(split["train"], limit)
    normal_labels, n_normal = [], 0
    for _, _, labels, classes, _ in train:
        keep = [k for k, c in classes.items() if c == 0]
        normal_labels.append(np.where(np.isin(labels, keep), labels, 0))
        n_normal += len(keep)
    # Fields whose annotations mark no normal cell have nothing to train on.
    used = [i for i, lab in enumerate(normal_labels) if lab.any()]
    train = [train[i] for i in used]
    normal_labels = [normal_labels[i] for i in used]
    seg_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    config = TrainConfig(epochs=args.epochs, context=args.context, seed=args.seed,
                         **_scoring(args))
    detector = run_training([t[1] for t in train], config, labels=normal_labels)
    train_seconds = time.perf_counter() - t0
    out: dict = {"train_fields": len(train), "train_normal_cells": n_normal,
                 "window_side": detector.size, "context": args.context,
                 "calibration_cells": detector.calibration.size,
                 "segmentation_seconds_train": round(seg_seconds, 1),
                 "train_seconds": round(train_seconds, 1)}
    # Classic-feature reference, fitted on the same training cells.
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    feats = []
    for (_, image, _, _, _), lab in zip(train, normal_labels, strict=True):
        if lab.any():
            feats.append(features(image, lab)[1])
    scaler = StandardScaler().fit(np.concatenate(feats))
    gmm = GaussianMixture(n_components=4, covariance_type="full", random_state=0,
                          reg_covar=1e-3).fit(scaler.transform(np.concatenate(feats)))
    for part in ("dev", "held-out"):
        fields = load_split(split[part], limit)
        ys, ours, ours_inner, ref = [], [], [], []
        fpr_flags = []
        t0 = time.perf_counter()
        for _, image, labels, classes, _ in fields:
            if not classes:
                continue
            cells = detector.score_cells(image, labels, include_border=True)
            row = {int(k): i for i, k in enumerate(cells.table["label"])}
            ids, f = features(image, labels)
            fscore = -gmm.score_samples(scaler.transform(f))
            fidx = {int(k): i for i, k in enumerate(ids)}
            for k, c in classes.items():
                if k not in row or k not in fidx:
                    continue
                ys.append(c)
                ours.append(cells.table["score"][row[k]])
                ours_inner.append(not cells.table["at_border"][row[k]])
                ref.append(fscore[fidx[k]])
                if c == 0:
                    fpr_flags.append(bool(cells.table["is_anomaly"][row[k]]))
        secs = time.perf_counter() - t0
        y, s, r, inner = (np.asarray(v) for v in (ys, ours, ref, ours_inner))
        out[part] = {
            "fields": len(fields), "score_seconds_per_field": round(secs / len(fields), 3),
            "ours": auroc_table(y, s), "ours_whole_cells_only": auroc_table(y[inner], s[inner]),
            "features_gmm": auroc_table(y, r),
            "normals_flagged_at_5pct": round(float(np.mean(fpr_flags)), 3)
            if fpr_flags else None,
        }
    return out


def _scoring(args: argparse.Namespace) -> dict:
    """TrainConfig keywords for a non-default density (``--density``)."""
    if args.density is None:
        return {}
    from napari_cell_anomaly.core.scoring import ScoringConfig

    return {"scoring": ScoringConfig(density=args.density)}


def synthetic(args: argparse.Namespace) -> dict:
    train = [make_cell_field((512, 512), n_cells=70, anomaly_fraction=0.0, seed=s)
             for s in range(8)]
    det = run_training([f.image for f in train],
                       TrainConfig(epochs=args.epochs, context=args.context, seed=args.seed,
                                   **_scoring(args)),
                       labels=[f.labels for f in train])
    ys, ss = [], []
    for s in range(100, 106):
        f = make_cell_field((512, 512), n_cells=70, anomaly_fraction=0.2, seed=s)
        cells = det.score_cells(f.image)  # built-in segmentation
        for k, score in zip(cells.table["label"], cells.table["score"], strict=True):
            gt = f.labels[cells.labels == k]
            gt = gt[gt > 0]
            if gt.size:
                ys.append(bool(f.anomalous[np.bincount(gt).argmax() - 1]))
                ss.append(score)
    big = make_cell_field((2048, 2048), n_cells=1000, radius=(14, 20), seed=7)
    det.score_cells(big.image[:512, :512])  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        t_seg = time.perf_counter()
        labels = segment_cells(big.image, **det.segmentation)
        t_seg = time.perf_counter() - t_seg
        cells = det.score_cells(big.image, labels)
        times.append((time.perf_counter() - t0, t_seg))
    best = min(times)
    return {"per_cell_auroc": image_auroc(np.asarray(ys), np.asarray(ss)),
            "cells": len(ys), "field_2048_cells": len(cells),
            "field_2048_seconds": round(best[0], 2),
            "field_2048_segmentation_seconds": round(best[1], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    p.add_argument("--context", choices=("isolate", "keep"), default="isolate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--density", help="latent density kind (default: the model default)")
    p.add_argument("--quick", action="store_true", help="40 fields per split")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--skip-chula", action="store_true")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()
    report = {}
    if not args.skip_chula:
        report["chula"] = chula(args)
        print(json.dumps(report["chula"], indent=1))
    if not args.skip_synthetic:
        report["synthetic"] = synthetic(args)
        print(json.dumps(report["synthetic"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
