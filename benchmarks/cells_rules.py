"""Per-cell criteria and combination rules on Chula RBC-12 dev fields, compared over seeds.

Reads the per-cell arrays that ``benchmarks/cells_variants.py`` cached for several models
(``CACHE/<name>.cells.npz``, one model per seed, same settings) and prints one dev AUROC per
model for each rule, their mean and the share of dev normals above the calibration cells' 95th
percentile (nominal 5%). Every refitted density is fitted on the training and validation
fields' normal cells, every z-score taken against the model's calibration cells (robust: median
and MAD), as in ``cells_variants.py``. E is the reconstruction error, K the latent
log-density, S the model's morphometry log-density (all as the detector computes them).

``--stain`` also re-measures the morphometry of the first model's cells after a per-field
stain-intensity normalisation (optical density, taken after the field's background balance,
scaled so the field's q-th percentile over all its cell pixels equals the training fields'
median of it) and prints the dev AUROC of the morphometry Gaussian for a few q (no network
involved: the morphometry is read from the windows).

The per-field colour normalisation rows also need ``CACHE/<name>.ceiling.npz``
(``benchmarks/cells_ceiling.py``: every classed cell of the training fields), since a field's
median cell is taken over all its cells, normal or not; they are left out where it is absent.

Only dev fields are read. Every number printed guided choices, so it is optimistic.

Run: ``python benchmarks/cells_rules.py --cache /tmp/chula orient orient_s1 orient_s2``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import auroc_table
from cells_variants import rz, segmented

#: Columns of ``shape_features`` for three colour channels: the mean colour and the contrast
#: profile (the columns that depend on the stain).
COLOUR_COLUMNS = [5, 6, 7, 9, 10, 11, 12]


def gaussian(train: np.ndarray, test: np.ndarray, *, standardize: bool = False,
             shrinkage: float | None = None) -> np.ndarray:
    """Mahalanobis distance of ``test`` under a Gaussian fitted on ``train`` (Ledoit-Wolf
    shrinkage unless ``shrinkage`` is given)."""
    from sklearn.covariance import LedoitWolf, ShrunkCovariance

    mu = train.mean(0)
    sd = train.std(0) + 1e-9 if standardize else np.ones(train.shape[1])
    est = LedoitWolf() if shrinkage is None else ShrunkCovariance(shrinkage=shrinkage)
    return est.fit((train - mu) / sd).mahalanobis((test - mu) / sd)


def field_normalised(shape: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Colour columns minus their median over the field's cells (all classes)."""
    out = shape.copy()
    for f in np.unique(field):
        own = field == f
        out[np.ix_(own, COLOUR_COLUMNS)] -= np.median(shape[np.ix_(own, COLOUR_COLUMNS)], 0)
    return out


def criteria(d: dict, ceiling: dict | None) -> dict[str, np.ndarray]:
    """Per-cell anomaly scores (higher = more anomalous) of one model's cells."""
    from sklearn.decomposition import PCA

    part = d["part"]
    fit = (part == "train") | (part == "val")
    m, codes = d["shape"], d["codes"][:, 0].astype(np.float64)
    err, k = d["E"][:, 0], -d["K"][:, 0]
    out = {"E": err, "log E": np.log(err), "K": k, "S": -d["S"]}
    pcs = {n: PCA(n, whiten=True, random_state=0).fit(codes[fit]).transform(codes)
           for n in (4, 8)}
    out["S standardized"] = gaussian(m[fit], m, standardize=True)
    out["S shrinkage 0.1"] = gaussian(m[fit], m, shrinkage=0.1)
    no_colour = np.delete(m, [5, 6, 7], axis=1)
    out["S without mean colour"] = gaussian(no_colour[fit], no_colour)
    joint = np.column_stack([m, pcs[4]])
    out["J4"] = gaussian(joint[fit], joint, standardize=True)
    out["L8"] = gaussian(pcs[8][fit], pcs[8])
    both = np.column_stack([m, pcs[4], np.log(err), k])
    out["J4 + log E + K"] = gaussian(both[fit], both, standardize=True)
    if ceiling is not None:
        dev = part == "dev"
        normal = ceiling["cls"] == 0
        train = field_normalised(ceiling["shape"], ceiling["field"])[normal]
        s = np.full(len(m), np.nan)
        s[dev] = gaussian(train, field_normalised(m[dev], d["field"][dev]))
        out["S, colour per field"] = s
    return out


RULES: dict[str, Callable[[dict], np.ndarray]] = {
    "model's rule: largest z of E, K, S (default)": lambda z: np.maximum.reduce(
        [z["E"], z["K"], z["S"]]),
    "S alone": lambda z: z["S"],
    "largest z of log E, K, S": lambda z: np.maximum.reduce([z["log E"], z["K"], z["S"]]),
    "largest z of E, S (no latent)": lambda z: np.maximum(z["E"], z["S"]),
    "largest z of log E, S (no latent)": lambda z: np.maximum(z["log E"], z["S"]),
    "largest z of K, S (no error)": lambda z: np.maximum(z["K"], z["S"]),
    "sum of z of E, K, S": lambda z: z["E"] + z["K"] + z["S"],
    "J4 alone (standardized morphometry + 4 whitened code components)": lambda z: z["J4"],
    "largest z of E, J4": lambda z: np.maximum(z["E"], z["J4"]),
    "largest z of E, K, J4": lambda z: np.maximum.reduce([z["E"], z["K"], z["J4"]]),
    "largest z of log E, J4": lambda z: np.maximum(z["log E"], z["J4"]),
    "J4 + log E + K in one Gaussian": lambda z: z["J4 + log E + K"],
    "largest z of E, L8, S (L8: Gaussian on 8 code components)": lambda z: np.maximum.reduce(
        [z["E"], z["L8"], z["S"]]),
    "S standardized alone": lambda z: z["S standardized"],
    "largest z of E, K, S standardized": lambda z: np.maximum.reduce(
        [z["E"], z["K"], z["S standardized"]]),
    "S shrinkage 0.1 alone": lambda z: z["S shrinkage 0.1"],
    "largest z of E, K, S shrinkage 0.1": lambda z: np.maximum.reduce(
        [z["E"], z["K"], z["S shrinkage 0.1"]]),
    "S without mean colour alone": lambda z: z["S without mean colour"],
    "largest z of E, K, S without mean colour": lambda z: np.maximum.reduce(
        [z["E"], z["K"], z["S without mean colour"]]),
    "S, colour columns minus the field's median cell, alone": lambda z: z.get(
        "S, colour per field"),
}


def stain_rows(cache: Path, name: str, quantiles: tuple[int, ...] = (50, 90, 99)) -> None:
    """Print the morphometry Gaussian's dev AUROC with and without stain normalisation."""
    from napari_cell_anomaly.core.cells import measure_cells
    from napari_cell_anomaly.core.cellunits import (
        BRIGHTFIELD_LEVEL,
        balance_field,
        cut_units,
        shape_features,
        take_cells,
    )
    from napari_cell_anomaly.core.detector import AnomalyDetector

    det = AnomalyDetector.load(cache / f"{name}.model", device="cpu")
    tr = dict(np.load(cache / f"{name}.ceiling.npz"))
    d = dict(np.load(cache / f"{name}.cells.npz"))
    dev = {k: v[d["part"] == "dev"] for k, v in d.items()}

    def field(stem: str) -> tuple:
        image, labels, _ = segmented(cache, stem)
        x, fill = balance_field(det.preprocessing.transform(image)[0], labels)
        log_rel = np.log(np.clip(x, 1e-3, 1.0) / BRIGHTFIELD_LEVEL)  # -optical density
        return x, fill, labels, log_rel, -log_rel.mean(-1)[labels > 0]

    ref = {q: float(np.median([np.percentile(field(f)[4], q) for f in np.unique(tr["field"])]))
           for q in quantiles}
    feats: dict[str, dict] = {}
    for key, a in (("train", tr), ("dev", dev)):
        out = {q: np.zeros((len(a["id"]), d["shape"].shape[1])) for q in (None, *quantiles)}
        for stem in np.unique(a["field"]):
            sel = np.flatnonzero(a["field"] == stem)
            x, fill, labels, log_rel, od = field(stem)
            table = measure_cells(labels)
            row = {int(k): i for i, k in enumerate(table.label)}
            table = take_cells(table, np.asarray([row[int(k)] for k in a["id"][sel]]))
            for q in out:
                xq = x if q is None else np.clip(
                    BRIGHTFIELD_LEVEL * np.exp(log_rel * (ref[q] / np.percentile(od, q))),
                    0.0, 1.0).astype(np.float32)
                out[q][sel] = shape_features(cut_units(xq, labels, table, det.size, fill=fill))
        feats[key] = out
    normal = tr["cls"] == 0
    for q in feats["dev"]:
        s = gaussian(feats["train"][q][normal], feats["dev"][q])
        label = "none (background balance only)" if q is None else f"percentile {q}"
        print(f"| stain normalisation: {label} | {auroc_table(dev['cls'], s)['overall']:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("names", nargs="+", help="cached models (cells_variants.py --name)")
    p.add_argument("--stain", action="store_true",
                   help="also the stain normalisation rows (first model; needs its "
                   ".ceiling.npz)")
    args = p.parse_args()
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for name in args.names:
        d = dict(np.load(args.cache / f"{name}.cells.npz"))
        ceiling_path = args.cache / f"{name}.ceiling.npz"
        ceiling = dict(np.load(ceiling_path)) if ceiling_path.exists() else None
        part, cls = d["part"], d["cls"]
        dev, cal = part == "dev", part == "cal"
        scores = criteria(d, ceiling)
        z = {n: rz(v, v[cal]) if np.isfinite(v[cal]).all() else v for n, v in scores.items()}
        for label, rule in RULES.items():
            s = rule(z)
            if s is None:
                continue
            auroc = auroc_table(cls[dev], s[dev])["overall"]
            fpr = (float(np.mean(s[dev & (cls == 0)] > np.quantile(s[cal], 0.95)))
                   if np.isfinite(s[cal]).all() else float("nan"))
            table.setdefault(label, {})[name] = (auroc, fpr)
    print("| rule (dev fields) | " + " | ".join(args.names) + " | mean |")
    print("| --- |" + " --- |" * (len(args.names) + 1))
    for label, vals in table.items():
        cells = [("-" if n not in vals else f"{vals[n][0]:.3f} ({100 * vals[n][1]:.1f}%)"
                  if np.isfinite(vals[n][1]) else f"{vals[n][0]:.3f}") for n in args.names]
        mean = np.mean([a for a, _ in vals.values()])
        print(f"| {label} | " + " | ".join(cells) + f" | {mean:.3f} |")
    if args.stain:
        stain_rows(args.cache, args.names[0])


if __name__ == "__main__":
    main()
