"""Field-aware calibration in cells mode: false alarms on normal cells of fields never seen.

Compares the pooled conformal rule (every calibration cell independent: model files without
``calibration.groups``) with the field-aware rule (``Calibration(groups=...)``,
:mod:`napari_cell_anomaly.core.fieldconformal`) at nominal 1%, 5% and 10%:

* ``--cache DIR NAME ...`` (Chula RBC-12, the per-cell arrays that ``cells_variants.py``
  cached, one model per seed): calibration on the model's own calibration cells (those of its
  held-out calibration fields not cut by the image edge, with their fields, as the cache
  scored them: within a few percent of the model file's own numbers), the share of judged dev
  normal cells flagged, the interval each rule states, and the dev per-cell AUROC over every
  dev cell (the rules share the z-scaling, so it is the same for both).
* ``--resample R`` (same caches): R draws of 9 dev fields as calibration fields, the
  rate realised on the normal cells of the other dev fields: its mean and how often it falls
  above the stated interval (target about 2.5%) or outside it (target about 5%).
* ``--synthetic R`` (no data needed): R draws of 9 fields of Gaussian scores with a field
  effect of standard deviation ``tau`` (cells: 1), field sizes like those of the Chula
  calibration fields; the true rate on new fields is exact.

* ``--few-fields N ...`` (Chula, segmentations cached under ``--cache``): models trained on N
  random training fields (``--draws`` draws), each with 10% of the fields calibrating (the
  default) and with at least 5, on the same draw and seed; per-cell AUROC and rates on the
  cells found in ``--dev-fields`` dev fields, calibration fields and cells, ``n_eff``,
  warning, certification.

* ``--fields SEEDS`` (no data needed): cells-mode models trained on ``--n-fields`` normal
  synthetic fields (:func:`make_cell_field`, 384 x 384, ground-truth labels, ``--max-steps``
  steps, 20% of the fields calibrate) whose colour channels are raised per field to the
  power ``exp(stain * N(0, 1))`` (``--stains``: 0 and 0.15 by default, a stand-in for stain
  differences), tested on the cells of 20 new normal fields from the same generator.

Dev fields guided the choice of rule (and of the confidence of the lower bound on the
fields' correlation, ``--rho-confidence``: 0.8 is the library's; ``none`` for the point
estimate), so the dev numbers are optimistic for it.

Run: ``python benchmarks/cells_calibration.py --cache /tmp/chula orient orient_s1 orient_s2
--resample 300 --synthetic 2000``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import auroc_table
from napari_cell_anomaly.core.scoring import Calibration

RATES = (0.01, 0.05, 0.10)
#: Calibration fields per draw, as a default cells-mode model has (10% of ~90 fields).
N_FIELDS = 9


def calibrations(err: np.ndarray, logd: np.ndarray, shape: np.ndarray | None,
                 groups: np.ndarray) -> tuple[Calibration, Calibration]:
    """The pooled (old) and field-aware (new) calibration of the same cells."""
    ones = np.ones(len(err))
    old = Calibration(err, logd, ones, shape_log_densities=shape)
    new = Calibration(err, logd, ones, shape_log_densities=shape, groups=groups)
    return old, new


def cached(cache: Path, names: list[str]) -> None:
    """Each cached model's own calibration fields against its dev normal cells."""
    print("| model | calibration cells / fields | rho | n_eff | dev AUROC | nominal | "
          "dev normals flagged, old | stated, old | flagged, new | stated, new |")
    print("| --- |" + " --- |" * 9)
    for name in names:
        d = dict(np.load(cache / f"{name}.cells.npz"))
        part, cls, field, border = d["part"], d["cls"], d["field"], d["border"]
        # Cells cut by the image edge neither calibrate nor get a verdict (as in the product).
        cal, dev = (part == "cal") & ~border, part == "dev"
        old, new = calibrations(d["E"][cal, 0], d["K"][cal, 0], d["S"][cal], field[cal])
        scores = new.combine(d["E"][:, 0], d["K"][:, 0], d["S"])
        auroc = auroc_table(cls[dev], scores[dev])["overall"]  # every dev cell, as cells.py
        normals = scores[dev & (cls == 0) & ~border]
        for fpr in RATES:
            row = [f"{100 * np.mean(normals > c.threshold(fpr)):.1f}% | "
                   + "-".join(f"{100 * x:.1f}" for x in c.rate_interval(fpr))
                   + ("%" if c.certified(fpr) else "% (not certified)") for c in (old, new)]
            print(f"| {name} | {cal.sum()} / {new.n_fields} | {new.field_rho:.2f} | "
                  f"{new.effective_size:.0f} | {auroc:.3f} | {100 * fpr:g}% | "
                  + " | ".join(row) + " |")


def summarise(label: str, realised: np.ndarray, intervals: np.ndarray) -> str:
    """One table row: mean realised rate, share above / outside the stated interval."""
    above = np.mean(realised > intervals[..., 1], axis=0)
    outside = above + np.mean(realised < intervals[..., 0], axis=0)
    return (f"| {label} | " + " | ".join(
        f"{100 * r:.1f}% / {100 * a:.0f}% / {100 * o:.0f}%"
        for r, a, o in zip(realised.mean(0), above, outside, strict=True)) + " |")


def resample(cache: Path, names: list[str], draws: int, seed: int = 0) -> None:
    """Draws of dev fields as calibration fields, rates on the other dev fields' normals."""
    print("| model, rule | " + " | ".join(f"nominal {100 * f:g}%: mean rate / above / "
                                            "outside" for f in RATES) + " |")
    print("| --- |" + " --- |" * len(RATES))
    rng = np.random.default_rng(seed)
    for name in names:
        d = dict(np.load(cache / f"{name}.cells.npz"))
        dev = (d["part"] == "dev") & (d["cls"] == 0) & ~d["border"]
        err, logd, shape, field = d["E"][dev, 0], d["K"][dev, 0], d["S"][dev], d["field"][dev]
        names_f, counts = np.unique(field, return_counts=True)
        pool = names_f[counts >= 2]
        out = {r: (np.zeros((draws, len(RATES))), np.zeros((draws, len(RATES), 2)))
               for r in ("old", "new")}
        for i in range(draws):
            pick = np.isin(field, rng.choice(pool, N_FIELDS, replace=False))
            cals = calibrations(err[pick], logd[pick], shape[pick], field[pick])
            test = cals[1].combine(err[~pick], logd[~pick], shape[~pick])
            for rule, c in zip(("old", "new"), cals, strict=True):
                for j, fpr in enumerate(RATES):
                    out[rule][0][i, j] = np.mean(test > c.threshold(fpr))
                    out[rule][1][i, j] = c.rate_interval(fpr)
        for rule in ("old", "new"):
            print(summarise(f"{name}, {rule}", *out[rule]))


def synthetic(draws: int, taus: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0), seed: int = 0
              ) -> None:
    """Gaussian scores with a field effect: exact rates on new fields."""
    from scipy.special import ndtr

    sizes = np.array([102, 10, 1, 47, 8, 3, 1, 2, 1, 11, 21, 1, 1, 2, 3, 2, 3, 10, 56, 9])
    print("| field effect sd | rule | " + " | ".join(
        f"nominal {100 * f:g}%: mean rate / above / outside" for f in RATES) + " |")
    print("| --- | --- |" + " --- |" * len(RATES))
    rng = np.random.default_rng(seed)
    for tau in taus:
        out = {r: (np.zeros((draws, len(RATES))), np.zeros((draws, len(RATES), 2)))
               for r in ("old", "new")}
        for i in range(draws):
            n_k = rng.choice(sizes, N_FIELDS)
            groups = np.repeat(np.arange(N_FIELDS), n_k)
            s = rng.normal(size=groups.size) + tau * rng.normal(size=N_FIELDS)[groups]
            # The score is the error itself: a constant density has z-score 0 throughout.
            cals = calibrations(s, np.zeros(s.size), None, groups)
            for rule, c in zip(("old", "new"), cals, strict=True):
                for j, fpr in enumerate(RATES):
                    t = c.criteria(fpr)["recon_error"]
                    out[rule][0][i, j] = 1.0 - ndtr(t / np.sqrt(1.0 + tau ** 2))
                    out[rule][1][i, j] = c.rate_interval(fpr)
        for rule in ("old", "new"):
            print(summarise(f"{tau:g} | {rule}", *out[rule]))


def stained(image: np.ndarray, stain: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 RGB) with each channel raised to the power ``exp(stain * N(0, 1))``
    (a change of stain contrast that the field balance by background colour cannot undo, as
    it could a plain scaling)."""
    gamma = np.exp(stain * rng.normal(size=3))
    return np.clip(np.rint(255.0 * (image / 255.0) ** gamma), 0, 255).astype(np.uint8)


def fields(seeds: int, n_fields: int, stains: tuple[float, ...], max_steps: int) -> None:
    """Cells-mode models on synthetic fields with per-field colour differences."""
    from napari_cell_anomaly.core.sample import make_cell_field
    from napari_cell_anomaly.core.training import TrainConfig, run_training

    print("| stain sd | seed | calibration cells / fields | rho | n_eff | nominal | "
          "new-field cells flagged, old | stated, old | flagged, new | stated, new |")
    print("| --- |" + " --- |" * 9)
    for stain in stains:
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            train = [make_cell_field((384, 384), n_cells=50, anomaly_fraction=0.0,
                                     seed=1000 * seed + i) for i in range(n_fields)]
            det = run_training([stained(f.image, stain, rng) for f in train],
                               TrainConfig(max_steps=max_steps, calibration_fraction=0.2,
                                           seed=seed),
                               labels=[f.labels for f in train])
            new = det.calibration
            old = Calibration(new.errors, new.log_densities, new.map_maxima,
                              n_trimmed=new.n_trimmed,
                              shape_log_densities=new.shape_log_densities)
            scores = []
            for i in range(20):
                f = make_cell_field((384, 384), n_cells=50, anomaly_fraction=0.0,
                                    seed=1000 * seed + 500 + i)
                cells = det.score_cells(stained(f.image, stain, rng), f.labels)
                scores.append(cells.table["score"][cells.judged()])
            s = np.concatenate(scores)
            for fpr in RATES:
                row = [f"{100 * np.mean(s > c.threshold(fpr)):.1f}% | "
                       + "-".join(f"{100 * x:.1f}" for x in c.rate_interval(fpr))
                       + ("%" if c.certified(fpr) else "% (not certified)")
                       for c in (old, new)]
                print(f"| {stain:g} | {seed} | {new.size} / {new.n_fields} | "
                      f"{new.field_rho:.2f} | {new.effective_size:.0f} | {100 * fpr:g}% | "
                      + " | ".join(row) + " |", flush=True)


def _interval(cal: Calibration, fpr: float) -> str:
    return "-".join(f"{100 * x:.1f}" for x in cal.rate_interval(fpr)) + "%"


def few_fields(cache: Path, sizes: tuple[int, ...], draws: int, n_dev: int) -> None:
    """Chula models trained on few fields: 10% of them calibrating (the default) against at
    least ``MIN_CALIBRATION_FIELDS`` (5), on the same draws of fields and seeds (the
    5-field split moves 2 or 3 training fields to calibration; the rest is the same)."""
    from cells import split_fields
    from cells_variants import segmented
    from napari_cell_anomaly.core.fieldconformal import MIN_CALIBRATION_FIELDS
    from napari_cell_anomaly.core.training import TrainConfig, run_training

    split = split_fields(0)
    dev = [segmented(cache, stem) for stem in split["dev"][:n_dev]]
    train = {}
    for stem in split["train"]:
        image, labels, classes = segmented(cache, stem)
        keep = [k for k, c in classes.items() if c == 0]
        if keep:
            train[stem] = (image, np.where(np.isin(labels, keep), labels, 0))
    print("| fields given | calibration | draw | cal. fields / cells | n_eff | dev AUROC | "
          "warned | certified 1% | " + " | ".join(
              f"dev normals flagged at {100 * f:g}% (stated)" for f in RATES) + " |")
    print("| --- |" + " --- |" * (7 + len(RATES)))
    rng = np.random.default_rng(0)
    summary: dict = {}
    for n in sizes:
        for draw in range(draws):
            stems = rng.choice(sorted(train), n, replace=False)
            for rule, frac in (("10%", 0.1), (f">= {MIN_CALIBRATION_FIELDS} fields",
                                              max(0.1, MIN_CALIBRATION_FIELDS / n))):
                det = run_training([train[s][0] for s in stems],
                                   TrainConfig(seed=draw, calibration_fraction=frac),
                                   labels=[train[s][1] for s in stems], device="cpu")
                cal = det.calibration
                y, sc, judged = [], [], []
                for image, labels, classes in dev:
                    cells = det.score_cells(image, labels)
                    t = cells.table
                    y += [classes.get(int(k), 10) for k in t["label"]]
                    sc += list(t["score"])
                    judged += list(cells.judged())
                y, sc, judged = np.asarray(y), np.asarray(sc), np.asarray(judged)
                auroc = float(auroc_table(y, sc)["overall"])
                normals = sc[(y == 0) & judged]
                rates = [float(np.mean(normals > cal.threshold(f))) for f in RATES]
                warned = cal.warning(0.05) is not None
                row = summary.setdefault((n, rule), [])
                row.append((auroc, warned, cal.certified(0.01), cal.n_fields, cal.size,
                            cal.effective_size, *rates))
                print(f"| {n} | {rule} | {draw} | {cal.n_fields} / {cal.size} | "
                      f"{cal.effective_size:.0f} | {auroc:.3f} | {'yes' if warned else 'no'} | "
                      f"{'yes' if cal.certified(0.01) else 'no'} | " + " | ".join(
                          f"{100 * r:.1f}% ({_interval(cal, f)})"
                          for r, f in zip(rates, RATES, strict=True)) + " |", flush=True)
    print()
    print("| fields given | calibration | mean dev AUROC | warned | certified 1% | mean n_eff | "
          + " | ".join(f"mean flagged at {100 * f:g}%" for f in RATES) + " |")
    print("| --- |" + " --- |" * (5 + len(RATES)))
    for (n, rule), rows in summary.items():
        a = np.asarray(rows, dtype=np.float64)
        print(f"| {n} | {rule} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.0%} | "
              f"{a[:, 2].mean():.0%} | {a[:, 5].mean():.0f} | "
              + " | ".join(f"{100 * x:.1f}%" for x in a[:, 6:].mean(0)) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path)
    p.add_argument("names", nargs="*", help="cached models (cells_variants.py --name)")
    p.add_argument("--resample", type=int, default=0, help="draws of dev fields")
    p.add_argument("--synthetic", type=int, default=0, help="draws of synthetic fields")
    p.add_argument("--rho-confidence", default=None,
                   help="confidence of the lower bound on rho (default: the library's "
                   "RHO_CONFIDENCE), or 'none' for the point estimate")
    p.add_argument("--fields", type=int, default=0, help="seeds of synthetic cells models")
    p.add_argument("--n-fields", type=int, default=50)
    p.add_argument("--stains", type=float, nargs="+", default=[0.0, 0.15])
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--few-fields", type=int, nargs="*", default=[],
                   help="numbers of Chula training fields to compare 10%% of them "
                   "calibrating with at least 5 (needs --cache)")
    p.add_argument("--draws", type=int, default=3, help="draws of fields per --few-fields")
    p.add_argument("--dev-fields", type=int, default=40, help="dev fields to score")
    args = p.parse_args()
    if args.rho_confidence is not None:
        # Benchmark-only switch: the rule with another bound on the fields' correlation.
        import functools

        from napari_cell_anomaly.core import fieldconformal, scoring

        level = None if args.rho_confidence == "none" else float(args.rho_confidence)
        scoring.field_correlation = functools.partial(  # type: ignore[assignment]
            fieldconformal.field_correlation, confidence=level)
    if args.cache and args.names:
        cached(args.cache, args.names)
        if args.resample:
            print()
            resample(args.cache, args.names, args.resample)
    if args.synthetic:
        print()
        synthetic(args.synthetic)
    if args.fields:
        print()
        fields(args.fields, args.n_fields, tuple(args.stains), args.max_steps)
    if args.few_fields:
        print()
        few_fields(args.cache, tuple(args.few_fields), args.draws, args.dev_fields)


if __name__ == "__main__":
    main()
