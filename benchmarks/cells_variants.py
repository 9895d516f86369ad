"""Cells-mode variants on Chula RBC-12 dev fields, from cached segmentations and one model.

``benchmarks/cells.py`` trains and scores end to end; this script is for measuring many
variants of the per-cell criteria quickly. It segments the training and dev fields of the
seed-0 split once (cached under ``--cache``), trains one model per ``--name`` (cached; the
variant's settings go in ``--train``), then measures every classed dev cell and every
training-field normal cell (tagged train / validation / calibration by the model's own field
split) and writes per-cell arrays (error, latent and shape log-densities, codes,
morphometry, with and without test-time dihedral averaging) to ``CACHE/<name>.cells.npz``.
``--report`` prints dev AUROCs of the criteria and their combinations from that file.

Only dev fields are read; the held-out fields are left to ``benchmarks/cells.py``.

Run: ``python benchmarks/cells_variants.py --cache /tmp/chula --name base [--train orient=1]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import (
    CHULA,
    auroc_table,
    point_classes,
    read_points,
    split_fields,
)
from napari_cell_anomaly.core import trainingdata
from napari_cell_anomaly.core.cells import measure_cells, segment_cells
from napari_cell_anomaly.core.cellunits import (
    balance_field,
    readable,
    reduction_masks,
    shape_features,
    take_cells,
)
from napari_cell_anomaly.core.images import read_image

WEAK = ("microcyte", "stomatocyte", "spherocyte", "hypochromia", "burr cell")


def segmented(cache: Path, stem: str) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """The field's image, built-in labels and object classes (labels cached)."""
    image = read_image(CHULA / "images" / f"{stem}.jpg")
    path = cache / "seg" / f"{stem}.npy"
    try:
        labels = np.load(path)
    except (OSError, ValueError):
        labels = segment_cells(image)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{time.time_ns()}.npy")
        np.save(tmp, labels)
        tmp.replace(path)
    return image, labels, point_classes(labels, read_points(CHULA / "points" / f"{stem}.txt"))


def parse_train(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, v = item.split("=", 1)
        out[k] = json.loads(v)
    return out


def train_model(cache: Path, name: str, overrides: dict, split: dict, seed: int):
    from napari_cell_anomaly.core.detector import AnomalyDetector
    from napari_cell_anomaly.core.training import TrainConfig, run_training

    path = cache / f"{name}.model"
    info_path = cache / f"{name}.split.json"
    if path.exists() and info_path.exists():
        return AnomalyDetector.load(path, device="cpu"), json.loads(info_path.read_text())
    images, labs, stems = [], [], []
    for stem in split["train"]:
        image, labels, classes = segmented(cache, stem)
        keep = [k for k, c in classes.items() if c == 0]
        if keep:
            images.append(image)
            labs.append(np.where(np.isin(labels, keep), labels, 0))
            stems.append(stem)
    captured = []
    original = trainingdata.split_holdout

    def record(groups, *a, **k):
        res = original(groups, *a, **k)
        captured.append([sorted({int(g) for g in np.asarray(groups)[r]}) for r in res])
        return res

    trainingdata.split_holdout = record
    try:
        cfg = TrainConfig(seed=seed, **overrides)
        t0 = time.perf_counter()
        det = run_training(images, cfg, labels=labs, device="cpu")
        secs = time.perf_counter() - t0
    finally:
        trainingdata.split_holdout = original
    tr, va, ca = captured[-1]
    info = {"stems": stems, "train": [stems[i] for i in tr], "val": [stems[i] for i in va],
            "cal": [stems[i] for i in ca], "train_seconds": round(secs, 1),
            "overrides": overrides}
    det.save(path)
    info_path.write_text(json.dumps(info))
    return det, info


def dihedral(w: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 symmetries of the square on ``(N, S, S[, C])``."""
    v = w[:, :, ::-1] if k >= 4 else w
    return np.ascontiguousarray(np.rot90(v, k % 4, axes=(1, 2)))


def measure(det, image: np.ndarray, labels: np.ndarray, ids: list[int], tta: int) -> dict:
    """Per-cell arrays for the cells ``ids`` of one field (in that order)."""
    from napari_cell_anomaly.core import cellunits

    x, _ = det.preprocessing.transform(image)
    table = measure_cells(labels)
    table = take_cells(table, readable(table))
    row = {int(k): i for i, k in enumerate(table.label)}
    ids = [k for k in ids if k in row]
    table = take_cells(table, np.asarray([row[k] for k in ids], dtype=np.int64))
    fill = None
    if det.balance:
        x, fill = balance_field(x, labels)
    units = cellunits.cut_units(x, labels, table, det.size, context=det.context, fill=fill)
    net_units = units
    if det.orient:
        net_units = cellunits.orient_units(units, fill)
    shape = shape_features(units)
    wins = np.stack(net_units.windows)
    red = reduction_masks(net_units.masks, det.scoring.erode)
    masks = np.stack(red)
    errs, logds, codes = [], [], []
    kinds = [0, 2, 4, 6] if det.orient else list(range(8))  # oriented: the 4 flips
    for k in kinds[:tta]:
        res = det.analyse_units(dihedral(wins, k), list(dihedral(masks, k)), with_ssim=False)
        errs.append(res["recon_error"])
        logds.append(det.density.log_density(res["codes"]))
        codes.append(res["codes"].astype(np.float32))
    return {"id": np.asarray(ids), "E": np.stack(errs, 1), "K": np.stack(logds, 1),
            "codes": np.stack(codes, 1),
            "S": det.shape.log_density(shape) if det.shape is not None else np.zeros(len(ids)),
            "shape": shape, "border": np.asarray(table.at_border, bool),
            "area": np.asarray(table.area)}


def collect(cache: Path, name: str, det, info: dict, split: dict, tta: int) -> Path:
    out = cache / f"{name}.cells.npz"
    parts: dict[str, list] = {}
    part_of = {s: p for p in ("train", "val", "cal") for s in info[p]}
    jobs = [(s, part_of[s]) for s in info["stems"]] + [(s, "dev") for s in split["dev"]]
    for stem, part in jobs:
        image, labels, classes = segmented(cache, stem)
        ids = [k for k, c in classes.items() if (c == 0 if part != "dev" else c != 10)]
        if not ids:
            continue
        m = measure(det, image, labels, ids, tta)
        m["cls"] = np.asarray([classes[k] for k in m["id"]])
        m["part"] = np.asarray([part] * len(m["id"]))
        m["field"] = np.asarray([stem] * len(m["id"]))
        for k, v in m.items():
            parts.setdefault(k, []).append(v)
    np.savez(out, **{k: np.concatenate(v) for k, v in parts.items()})
    return out


# -- analysis -----------------------------------------------------------------------------
def rz(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    med = np.median(ref)
    mad = np.median(np.abs(ref - med)) * 1.4826 or 1.0
    return (x - med) / mad


def report(path: Path) -> dict:
    d = dict(np.load(path))
    part, cls = d["part"], d["cls"]
    dev, cal, fit = part == "dev", part == "cal", (part == "train") | (part == "val")
    rows = {}

    def add(label: str, score: np.ndarray) -> None:
        t = auroc_table(cls[dev], score[dev])
        rows[label] = {"overall": round(t["overall"], 3),
                       **{c: round(t[c], 3) for c in WEAK if c in t}}
        # false alarms at 5% on the dev normals, threshold from the calibration cells
        thr = np.quantile(score[cal], 0.95)
        rows[label]["fpr5"] = round(float(np.mean(score[dev & (cls == 0)] > thr)), 3)

    E1, K1, S = np.log(d["E"][:, 0]), -d["K"][:, 0], -d["S"]
    Em, Km = np.log(d["E"]).mean(1), -d["K"].mean(1)
    add("E", E1)
    add("K", K1)
    add("S", S)
    add("E tta", Em)
    add("K tta", Km)
    z = {n: rz(v, v[cal]) for n, v in
         {"E": E1, "K": K1, "S": S, "Et": Em, "Kt": Km}.items()}
    z_lin = rz(d["E"][:, 0], d["E"][cal, 0])  # the model's rule: z of the error itself
    add("max z E K S (model's rule)", np.maximum.reduce([z_lin, z["K"], z["S"]]))
    add("max z log E, K, S", np.maximum.reduce([z["E"], z["K"], z["S"]]))
    add("max z K S", np.maximum(z["K"], z["S"]))
    add("max z Et Kt S", np.maximum.reduce([z["Et"], z["Kt"], z["S"]]))
    add("max z Kt S", np.maximum(z["Kt"], z["S"]))
    add("sum z Kt S", z["Kt"] + z["S"])
    # refits on the training part (train + validation fields), z on the calibration cells
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    from napari_cell_anomaly.core.density import LatentDensity

    codes = d["codes"].astype(np.float64)
    c0 = codes[:, 0]
    kde = LatentDensity.fit(c0[fit], seed=0)
    add("K refit", -kde.log_density(c0))
    pooled = LatentDensity.fit(codes[fit].reshape(-1, codes.shape[-1])[::2], seed=0)
    kp = -np.mean([pooled.log_density(codes[:, t]) for t in range(codes.shape[1])], 0)
    add("K fit on all transforms, tta", kp)
    z["Kp"] = rz(kp, kp[cal])
    add("max z Kp S", np.maximum(z["Kp"], z["S"]))

    def gauss(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        mu, sd = train.mean(0), train.std(0) + 1e-9
        lw = LedoitWolf().fit((train - mu) / sd)
        return lw.mahalanobis((test - mu) / sd)

    for k in (2, 4, 8, 16):
        pca = PCA(k, whiten=True, random_state=0).fit(c0[fit])
        lat = pca.transform(c0)
        g = gauss(np.column_stack([d["shape"], lat])[fit], np.column_stack([d["shape"], lat]))
        add(f"Gauss shape + {k} PCA", g)
        if k == 16:
            gl = gauss(lat[fit], lat)
            add("Gauss 16 PCA", gl)
            z["L"] = rz(gl, gl[cal])
            add("max z L S", np.maximum(z["L"], z["S"]))
            add("sum z L S", z["L"] + z["S"])
    add("S refit", gauss(d["shape"][fit], d["shape"]))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--train", nargs="*", default=[], help="TrainConfig overrides k=json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tta", type=int, default=8, help="dihedral transforms averaged (1-8)")
    p.add_argument("--report", action="store_true", help="only print the report")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    out = args.cache / f"{args.name}.cells.npz"
    if not args.report or not out.exists():
        split = split_fields(0)
        det, info = train_model(args.cache, args.name, parse_train(args.train), split,
                                args.seed)
        print(f"model {args.name}: trained in {info['train_seconds']} s", flush=True)
        collect(args.cache, args.name, det, info, split, args.tta)
    rows = report(out)
    for k, v in rows.items():
        print(f"{k:24s} " + " ".join(f"{c[:6]}={x}" for c, x in v.items()))


if __name__ == "__main__":
    main()
