"""How far can the per-cell features go on Chula RBC-12? A diagnostic, not the product.

The product is unsupervised: it fits densities on normal cells only. This script asks what the
same per-cell numbers reach when a classifier *sees labelled anomalies* (the ceiling of these
features), and what one-class models over the same numbers reach with normals only.

It reuses one model of ``benchmarks/cells_variants.py`` (its cache: ``--cache DIR --name
NAME``; trained there if absent) and measures every classed cell (all classes but 10) of the
175 training fields of the seed-0 split once (cached in ``CACHE/<name>.ceiling.npz``); the dev
cells come from ``CACHE/<name>.cells.npz`` (``cells_variants.py``). Per cell: the morphometry
columns (``shape_features``), the code (PCA fitted on the training fields' normal cells), the
log reconstruction error and the latent log-density.

Supervised classifiers (logistic regression, gradient boosting, random forest) train on the
training fields' cells of every class (anomalous = 1-9, 11, 12) and are scored on the dev
cells. The training fields' normal cells include the ones the autoencoder was trained on,
whose error and latent density are lower than those of unseen normals; the rows "normals of
held-out fields only" train on the normal cells of the model's validation and calibration
fields only (and every anomalous cell), which removes that bias. One-class models fit the
training and validation fields' normal cells. Only dev fields are scored.

Run: ``python benchmarks/cells_ceiling.py --cache /tmp/chula --name orient``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import CLASS_NAMES, auroc_table, split_fields
from cells_variants import WEAK, measure, segmented, train_model


def train_field_cells(cache: Path, name: str, det, info: dict, split: dict) -> dict:
    """Per-cell arrays of every classed cell of the training fields (cached)."""
    out = cache / f"{name}.ceiling.npz"
    if out.exists():
        return dict(np.load(out))
    part_of = {s: p for p in ("train", "val", "cal") for s in info[p]}
    parts: dict[str, list] = {}
    for stem in split["train"]:
        image, labels, classes = segmented(cache, stem)
        ids = [k for k, c in classes.items() if c != 10]
        if not ids:
            continue
        m = measure(det, image, labels, ids, 1)
        m["cls"] = np.asarray([classes[k] for k in m["id"]])
        m["part"] = np.asarray([part_of.get(stem, "other")] * len(m["id"]))
        m["field"] = np.asarray([stem] * len(m["id"]))
        for k, v in m.items():
            parts.setdefault(k, []).append(v)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    np.savez(out, **arrays)
    return arrays


def feature_sets(tr: dict, dev: dict, n_pca: int = 16) -> dict[str, tuple[np.ndarray, ...]]:
    """Named (train, dev) feature matrices."""
    from sklearn.decomposition import PCA

    normal = (tr["cls"] == 0) & np.isin(tr["part"], ("train", "val"))
    pca = PCA(n_pca, whiten=True, random_state=0).fit(tr["codes"][normal, 0])

    def cols(d: dict) -> dict[str, np.ndarray]:
        return {"M": d["shape"], "P": pca.transform(d["codes"][:, 0]),
                "E": np.log(d["E"][:, :1]), "K": -d["K"][:, :1]}

    a, b = cols(tr), cols(dev)
    sets = {"morphometry": "M", "code PCA": "P", "error + latent": "EK",
            "morphometry + code PCA + error + latent": "MPEK"}
    return {n: (np.column_stack([a[c] for c in s]), np.column_stack([b[c] for c in s]))
            for n, s in sets.items()}


def supervised(x: np.ndarray, y: np.ndarray, xt: np.ndarray, seed: int
               ) -> dict[str, np.ndarray]:
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    models = {
        "logistic regression": make_pipeline(
            StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)),
        "gradient boosting": HistGradientBoostingClassifier(class_weight="balanced",
                                                            random_state=seed),
        "random forest": RandomForestClassifier(300, min_samples_leaf=2, n_jobs=1,
                                                class_weight="balanced", random_state=seed),
    }
    return {n: m.fit(x, y).predict_proba(xt)[:, 1] for n, m in models.items()}


def one_class(x: np.ndarray, xt: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    from sklearn.covariance import LedoitWolf
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import NearestNeighbors

    mu, sd = x.mean(0), x.std(0) + 1e-9
    z, zt = (x - mu) / sd, (xt - mu) / sd
    nn = NearestNeighbors(n_neighbors=10).fit(z)
    return {
        "Gaussian (Ledoit-Wolf, standardized)": LedoitWolf().fit(z).mahalanobis(zt),
        "10-nearest-neighbour distance (standardized)": nn.kneighbors(zt)[0].mean(1),
        "isolation forest": -IsolationForest(n_estimators=300, random_state=seed).fit(
            z).score_samples(zt),
    }


def product_gaussian(x: np.ndarray, xt: np.ndarray) -> np.ndarray:
    """Mahalanobis distance under a Ledoit-Wolf Gaussian on raw columns (as ShapeDensity)."""
    from sklearn.covariance import LedoitWolf

    return LedoitWolf().fit(x).mahalanobis(xt)


def data_limits(tr: dict, dev: dict, seed: int) -> list[tuple[str, dict]]:
    """Is the one-class morphometry Gaussian limited by how many fields' normals it sees, and
    does a classifier generalise to an anomaly class it never saw?"""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rows = []
    m, mt, cls, dcls = tr["shape"], dev["shape"], tr["cls"], dev["cls"]
    normal = cls == 0
    rows.append(("one-class Gaussian on raw morphometry (as the product), training fields' "
                 "normals", auroc_table(dcls, product_gaussian(m[normal], mt))))
    fields = np.unique(tr["field"][normal])
    half = np.random.default_rng(seed).permutation(fields)[: len(fields) // 2]
    sel = normal & np.isin(tr["field"], half)
    rows.append(("the same, normals of half the training fields",
                 auroc_table(dcls, product_gaussian(m[sel], mt))))
    out = np.zeros(len(mt))
    for f in np.unique(dev["field"]):
        own = dev["field"] == f
        extra = mt[(dcls == 0) & ~own]
        out[own] = product_gaussian(np.vstack([m[normal], extra]), mt[own])
    rows.append(("the same, plus the normals of the other dev fields (one dev field left out "
                 "at a time)", auroc_table(dcls, out)))
    loco: dict[str, float] = {}
    for c in np.unique(cls[~normal]):
        keep = cls != c
        gb = HistGradientBoostingClassifier(class_weight="balanced", random_state=seed)
        s = gb.fit(m[keep], ~normal[keep]).predict_proba(mt)[:, 1]
        t = auroc_table(dcls, s)
        if CLASS_NAMES[int(c)] in t:
            loco[CLASS_NAMES[int(c)]] = t[CLASS_NAMES[int(c)]]
    rows.append(("supervised gradient boosting, morphometry, each class left out of training "
                 "(that class against the normals)", loco))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--name", default="orient")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", nargs="*", default=[], help="TrainConfig overrides k=json")
    args = p.parse_args()
    from cells_variants import collect, parse_train

    split = split_fields(0)
    det, info = train_model(args.cache, args.name, parse_train(args.train), split, args.seed)
    if not (args.cache / f"{args.name}.cells.npz").exists():
        collect(args.cache, args.name, det, info, split, 1)
    allc = dict(np.load(args.cache / f"{args.name}.cells.npz"))
    dev = {k: v[allc["part"] == "dev"] for k, v in allc.items()}
    tr = train_field_cells(args.cache, args.name, det, info, split)
    anomalous = tr["cls"] != 0
    held = np.isin(tr["part"], ("val", "cal")) | anomalous
    print(f"training fields: {int((~anomalous).sum())} normal, {int(anomalous.sum())} "
          f"anomalous cells; dev: {int((dev['cls'] == 0).sum())} normal, "
          f"{int((dev['cls'] != 0).sum())} anomalous", flush=True)
    fit_normal = ~anomalous & np.isin(tr["part"], ("train", "val"))
    rows: list[tuple[str, dict]] = []
    for fname, (x, xt) in feature_sets(tr, dev).items():
        for mname, s in supervised(x, anomalous, xt, args.seed).items():
            rows.append((f"supervised {mname}, {fname}", auroc_table(dev["cls"], s)))
        if fname != "morphometry":
            for mname, s in supervised(x[held], anomalous[held], xt, args.seed).items():
                rows.append((f"supervised {mname}, {fname}, normals of held-out fields only",
                             auroc_table(dev["cls"], s)))
        for mname, s in one_class(x[fit_normal], xt, args.seed).items():
            rows.append((f"one-class {mname}, {fname}", auroc_table(dev["cls"], s)))
    rows.extend(data_limits(tr, dev, args.seed))
    cols = ("overall", *WEAK)
    print("dev per-cell AUROC | " + " | ".join(cols))
    for label, t in rows:
        print(f"{label} | " + " | ".join(f"{t[c]:.3f}" if c in t else "-" for c in cols))
    named = [r for r in rows if r[0].startswith("one-class Gaussian on raw")]
    best = max((r for r in rows if r[0].startswith("supervised") and "+ error" in r[0]),
               key=lambda r: r[1]["overall"])
    print("per class (that class against the normals):")
    for label, t in (*named, rows[-1], best):
        print(f"{label}: " + ", ".join(f"{CLASS_NAMES[c]} {t[CLASS_NAMES[c]]:.2f}"
                                       for c in CLASS_NAMES if c and CLASS_NAMES[c] in t))

if __name__ == "__main__":
    main()
