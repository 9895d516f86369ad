"""Calibration benchmark: is "false alarms: 5%" true on normals the model has never seen?

Run from the project root (``nice -n 10`` on a shared machine)::

    python benchmarks/calibration.py                      # synthetic (20 seeds) + malaria
    python benchmarks/calibration.py --skip-malaria       # synthetic only
    python benchmarks/calibration.py --seeds 5 --malaria-max-steps 300

For each nominal rate (1%, 5%, 10%) it prints the false-alarm rate observed on normals never
used in training, checkpoint choice or calibration, and the detection rate (TPR) on anomalies,
at the thresholds the model states (``Calibration.threshold``):

* **synthetic**: for each of ``--seeds`` seeds, a small model (``--size`` px crops,
  ``--max-steps`` steps, otherwise ``TrainConfig`` defaults: 10% of the images held out to
  choose the checkpoint, 10% to calibrate) is trained on ``--n-train`` fresh normal crops of
  :func:`napari_cell_anomaly.core.sample.make_cells`, and tested on ``--n-test`` fresh normals
  and ``--n-anomalous`` fresh crops with planted stains. The rates are pooled over seeds.
* **malaria**: trained on ``train/Uninfected`` with the defaults (``--malaria-max-steps``
  caps the steps), tested on ``val/Uninfected`` and ``val/Parasitized`` (other slides, so new
  normals are not strictly exchangeable with the calibration normals).

Next to each observed rate: the binomial 95% interval around the nominal rate for that many
test normals (the target: observed <= its upper end), and, for the synthetic pool, the 95%
range expected from a correct conformal threshold, which adds the calibration sets'
randomness (each seed's rate is ``Beta(n + 1 - k, k)``; simulated). ``old rule`` is the rate
the previous threshold (the plain empirical quantile of the same calibration scores) would
give. Numbers print as Markdown tables (pasted into ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from scipy import stats

from napari_cell_anomaly.core.conformal import conformal_rank, upper_quantile
from napari_cell_anomaly.core.images import find_images, load_images
from napari_cell_anomaly.core.sample import make_cells
from napari_cell_anomaly.core.training import TrainConfig, run_training

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "malaria"
FPRS = (0.01, 0.05, 0.10)


def binomial_interval(fpr: float, n: int) -> tuple[float, float]:
    """Central 95% range of the observed rate among ``n`` normals when the true rate is
    ``fpr``."""
    lo, hi = stats.binom.ppf([0.025, 0.975], n, fpr)
    return float(lo) / n, float(hi) / n


def pooled_range(fpr: float, n_cal: list[int], n_test: int, sims: int = 20000,
                 seed: int = 0) -> tuple[float, float]:
    """95% range of the pooled observed rate over seeds with a correct conformal threshold:
    each seed's true rate ~ Beta(n + 1 - k, k), its count ~ Binomial(n_test, rate)."""
    rng = np.random.default_rng(seed)
    total = np.zeros(sims)
    for n in n_cal:
        k = conformal_rank(n, fpr)
        rate = rng.beta(n + 1 - k, k, sims) if k <= n else np.full(sims, np.nan)
        total += rng.binomial(n_test, np.nan_to_num(rate, nan=fpr))
    lo, hi = np.quantile(total / (n_test * len(n_cal)), [0.025, 0.975])
    return float(lo), float(hi)


def _rates(det, normals: list[np.ndarray], anomalies: list[np.ndarray]) -> dict:
    cal = det.calibration
    s_norm = np.array([det.score(im).score for im in normals])
    s_anom = np.array([det.score(im).score for im in anomalies])
    out = {"n_cal": cal.size, "n_test": len(normals), "n_anom": len(anomalies)}
    for f in FPRS:
        t = cal.threshold(f)
        old = upper_quantile(cal.scores, f)
        out[f] = {"fa": int(np.sum(s_norm > t)), "tp": int(np.sum(s_anom > t)),
                  "fa_old": int(np.sum(s_norm > old)), "tp_old": int(np.sum(s_anom > old)),
                  "certified": bool(cal.certified(f)), "interval": cal.rate_interval(f)}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def synthetic(args: argparse.Namespace) -> None:
    runs = []
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        train = make_cells(args.n_train, size=args.size, seed=10_000 + seed).images
        det = run_training(train, TrainConfig(size=args.size, max_steps=args.max_steps,
                                              epochs=30, seed=seed))
        normals = make_cells(args.n_test, size=args.size, seed=20_000 + seed).images
        anomalies = make_cells(args.n_anomalous, size=args.size, anomaly_fraction=1.0,
                               seed=30_000 + seed).images
        runs.append(_rates(det, normals, anomalies))
        r = runs[-1]
        print(f"  seed {seed}: n_cal {r['n_cal']}, "
              + ", ".join(f"{100 * f:g}%: FPR {r[f]['fa'] / r['n_test']:.3f} "
                          f"TPR {r[f]['tp'] / r['n_anom']:.3f}" for f in FPRS)
              + f"  [{time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    n_test = sum(r["n_test"] for r in runs)
    n_anom = sum(r["n_anom"] for r in runs)
    n_cal = [r["n_cal"] for r in runs]
    print(f"\n### Synthetic crops: {args.seeds} seeds, pooled\n")
    print(f"Per seed: {args.n_train} training normals ({args.size} px; {n_cal[0]} of them "
          f"held out for calibration), {args.max_steps} steps; tested on {args.n_test} fresh "
          f"normals and {args.n_anomalous} fresh anomalous crops. Pooled: {n_test} normals, "
          f"{n_anom} anomalies.\n")
    print("| nominal | observed FPR | binomial 95% interval | expected range (with "
          "calibration noise) | per-seed FPR min-max | TPR | old rule: FPR / TPR |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for f in FPRS:
        fa = sum(r[f]["fa"] for r in runs) / n_test
        tp = sum(r[f]["tp"] for r in runs) / n_anom
        fa_old = sum(r[f]["fa_old"] for r in runs) / n_test
        tp_old = sum(r[f]["tp_old"] for r in runs) / n_anom
        per = [r[f]["fa"] / r["n_test"] for r in runs]
        lo, hi = binomial_interval(f, n_test)
        plo, phi = pooled_range(f, n_cal, runs[0]["n_test"])
        cert = "" if all(r[f]["certified"] for r in runs) else " (not certified)"
        print(f"| {100 * f:g}%{cert} | **{_pct(fa)}** | {_pct(lo)}-{_pct(hi)} | "
              f"{_pct(plo)}-{_pct(phi)} | {_pct(min(per))}-{_pct(max(per))} | {tp:.3f} | "
              f"{_pct(fa_old)} / {tp_old:.3f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s on a loaded 2-core machine)")


def _load(folder: Path) -> list[np.ndarray]:
    return [np.asarray(im)[..., :3] for im in load_images(find_images(folder)).images]


def malaria(args: argparse.Namespace) -> None:
    if not DATA.is_dir():
        print(f"\nmalaria data not found at {DATA}; skipped", file=sys.stderr)
        return
    t0 = time.perf_counter()
    train = _load(DATA / "train" / "Uninfected")
    normals = _load(DATA / "val" / "Uninfected")
    anomalies = _load(DATA / "val" / "Parasitized")
    rows = []
    for seed in range(args.malaria_seeds):
        det = run_training(train, TrainConfig(seed=seed, max_steps=args.malaria_max_steps))
        r = _rates(det, normals, anomalies)
        r["seed"], r["steps"] = seed, det.provenance["steps"]
        rows.append(r)
        print(f"  malaria seed {seed}: {det.provenance['steps']} steps, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print("\n### NIH malaria: train/Uninfected -> val/Uninfected (normals), "
          "val/Parasitized (anomalies)\n")
    steps = ", ".join(str(r["steps"]) for r in rows)
    print(f"Defaults (`TrainConfig()`), {len(train)} training images of which "
          f"{rows[0]['n_cal']} held out for calibration; steps: {steps}"
          f"{' (capped by --malaria-max-steps)' if args.malaria_max_steps else ''}; "
          f"tested on {len(normals)} normals and {len(anomalies)} parasitized cells.\n")
    print("| seed | nominal | observed FPR | binomial 95% interval | stated true-rate "
          "interval | TPR | old rule: FPR / TPR |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        for f in FPRS:
            lo, hi = binomial_interval(f, r["n_test"])
            ilo, ihi = r[f]["interval"]
            cert = "" if r[f]["certified"] else " (not certified)"
            print(f"| {r['seed']} | {100 * f:g}%{cert} | **{_pct(r[f]['fa'] / r['n_test'])}** "
                  f"| {_pct(lo)}-{_pct(hi)} | {_pct(ilo)}-{_pct(ihi)} | "
                  f"{r[f]['tp'] / r['n_anom']:.3f} | {_pct(r[f]['fa_old'] / r['n_test'])} / "
                  f"{r[f]['tp_old'] / r['n_anom']:.3f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s on a loaded 2-core machine)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--n-train", type=int, default=1500)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-anomalous", type=int, default=200)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--skip-malaria", action="store_true")
    p.add_argument("--malaria-seeds", type=int, default=1)
    p.add_argument("--malaria-max-steps", type=int, default=None)
    args = p.parse_args()
    if not args.skip_synthetic:
        synthetic(args)
    if not args.skip_malaria:
        malaria(args)


if __name__ == "__main__":
    main()
