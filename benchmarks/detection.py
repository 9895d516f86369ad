"""Detection benchmark on real microscopy: NIH malaria single-cell crops.

Run from the project root::

    python benchmarks/detection.py                   # default + seed preset, clean training
    python benchmarks/detection.py --contamination 0,0.01,0.05,0.1   # robustness sweep
    python benchmarks/detection.py --report          # also write docs/benchmarks.md + figures
    python benchmarks/detection.py --presets default --density kde,gmm   # density comparison

Trains with the defaults a user gets (``TrainConfig()`` / ``ScoringConfig()``; only the preset
differs for the ``seed`` row) on ``train/Uninfected`` and evaluates on ``val/`` (600 Uninfected
vs 600 Parasitized, different slides), through the same public API as the CLI
(``run_training`` on the decoded images, ``AnomalyDetector.score`` on each val image). It
prints and writes as JSON (``--json``, default ``benchmarks/detection.json``) per model: image
AUROC / AUPRC of the reconstruction error, the latent density and the combined score; the
detection (TPR) and false-alarm (FPR) rates of the calibrated 5% threshold; training time.

``--density kde,gmm`` trains one model per latent density with the same seed (hence the same
network: the benchmark checks that the weights are bit-identical, so the comparison isolates
the density), and also times each density's fit on the codes of all training images and its
scoring of the val images' codes, on that one network.

``--contamination`` mixes the given fractions of ``train/Parasitized`` (the contamination pool,
never evaluated) into the training normals and trains a plain and a robust
(``TrainConfig(robust=True)``) model for each, reporting how many rejected training images
really were contaminants.

The "green 1st percentile" row is a BENCHMARK-ONLY, hand-made, dataset-specific floor (the
darkest green inside the cell: parasites are purple) that the learned detector must beat; it is
not part of the package.

Skips with a message (exit code 0) when ``../shared/data/malaria`` is absent. A benchmark, not
a test: timings depend on the machine's load, which is printed alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

from napari_cell_anomaly.core.density import fit_density
from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.images import find_images, load_images, resize
from napari_cell_anomaly.core.mappass import encode_units, foreground_mask
from napari_cell_anomaly.core.metrics import image_auprc, image_auroc
from napari_cell_anomaly.core.scoring import ScoringConfig
from napari_cell_anomaly.core.training import TrainConfig, run_training

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "malaria"
FPR = 0.05


def _load(folder: Path) -> tuple[list[np.ndarray], list[str]]:
    loaded = load_images(find_images(folder))
    if loaded.failures:
        print(f"  skipped {len(loaded.failures)} unreadable files in {folder}", flush=True)
    return [np.asarray(im)[..., :3] for im in loaded.images], [p.name for p in loaded.paths]


def green_floor(image: np.ndarray) -> float:
    """BENCHMARK-ONLY hand-made baseline: minus the 1st percentile of green inside the cell."""
    x = np.asarray(image, dtype=np.float32)[..., :3] / 255.0
    mask = foreground_mask(x)
    g = x[..., 1][mask] if mask.any() else x[..., 1].ravel()
    return -float(np.percentile(g, 1))


def _rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = scores > threshold
    return {"tpr": float(flagged[labels].mean()), "fpr": float(flagged[~labels].mean())}


def evaluate(det: AnomalyDetector, images: list[np.ndarray], labels: np.ndarray
             ) -> dict[str, Any]:
    """Score ``images`` and measure every criterion; also returns the raw numbers."""
    results = [det.score(im, fpr=FPR) for im in images]
    err = np.array([r.recon_error for r in results])
    logd = np.array([r.log_density for r in results])
    score = np.array([r.score for r in results])
    crit = det.calibration.criteria(FPR)
    out: dict[str, Any] = {
        "recon_error": {"auroc": image_auroc(labels, err), "auprc": image_auprc(labels, err)},
        "latent_density": {"auroc": image_auroc(labels, -logd),
                           "auprc": image_auprc(labels, -logd)},
        "combined": {"auroc": image_auroc(labels, score), "auprc": image_auprc(labels, score)},
        "at_5pct": _rates(score, labels, det.calibration.threshold(FPR)),
        "error_only_at_5pct": _rates(err, labels, crit["recon_error"]),
    }
    return {"metrics": out, "raw": {"recon_error": err, "log_density": logd, "score": score},
            "results": results}


def _unit_codes(det: AnomalyDetector, images: list[np.ndarray]) -> np.ndarray:
    """Latent codes of whole-mode units (preprocessed, resized images), as at scoring time."""
    units = np.stack([resize(det.preprocessing(im), (det.size, det.size)) for im in images])
    return encode_units(det.network, units.astype(np.float32))


def density_timing(det: AnomalyDetector, kinds: list[str], train_imgs: list[np.ndarray],
                   val_imgs: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Seconds to fit each density kind on the codes of all ``train_imgs`` and to score the
    codes of ``val_imgs`` (milliseconds per image), all on ``det``'s network."""
    train_codes = _unit_codes(det, train_imgs)
    val_codes = _unit_codes(det, val_imgs)
    channels = det.network.config.latent_channels
    out = {}
    for kind in kinds:
        t0 = time.perf_counter()
        dens = fit_density(kind, train_codes, channels=channels, seed=0)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        dens.log_density(val_codes)
        score_s = time.perf_counter() - t0
        out[kind] = {"fit_s": round(fit_s, 2),
                     "score_ms_per_image": round(1000 * score_s / len(val_imgs), 3)}
        print(f"  density {kind}: fit {fit_s:.1f} s on {len(train_imgs)} images' codes, "
              f"score {1000 * score_s / len(val_imgs):.2f} ms/image", flush=True)
    return out


def run_one(label: str, train_imgs: list[np.ndarray], val_imgs: list[np.ndarray],
            val_labels: np.ndarray, cfg: TrainConfig, n_contaminants: int = 0
            ) -> dict[str, Any]:
    print(f"[{label}] training on {len(train_imgs)} images "
          f"({n_contaminants} contaminants) ...", flush=True)
    t0 = time.perf_counter()
    det = run_training(train_imgs, cfg)
    train_s = time.perf_counter() - t0
    ev = evaluate(det, val_imgs, val_labels)
    m = ev["metrics"]
    m["train_seconds"] = round(train_s, 1)
    m["epochs_run"] = det.provenance.get("epochs_run")
    m["scoring"] = det.scoring.to_dict()
    m["train_config"] = cfg.to_dict()
    if cfg.robust:
        rej = np.asarray(det.rejected, dtype=int)
        n_clean = len(train_imgs) - n_contaminants
        # The training/calibration split, as training.py makes it (whole mode).
        n = len(train_imgs)
        order = np.random.default_rng(cfg.seed).permutation(n)
        cal_idx = order[:max(1, round(cfg.val_fraction * n))]
        in_train = n_contaminants - int(np.count_nonzero(cal_idx >= n_clean))
        true_rej = int(np.count_nonzero(rej >= n_clean))
        m["rejected"] = {"n": int(rej.size), "contaminants": true_rej,
                         "contaminants_in_train": in_train,
                         "precision": true_rej / rej.size if rej.size else None,
                         "recall": true_rej / in_train if in_train else None}
        dropped = np.asarray(det.provenance.get("calibration_dropped_images", []), dtype=int)
        cal_cont = int(np.count_nonzero(cal_idx >= n_clean))
        m["calibration_dropped"] = {"n": int(dropped.size), "of": int(cal_idx.size),
                                    "contaminants": int(np.count_nonzero(dropped >= n_clean)),
                                    "contaminants_in_calibration": cal_cont}
        print(f"[{label}] rejected {rej.size} training images, {true_rej} of them contaminants "
              f"(of {in_train} in training); calibration dropped {dropped.size}/{cal_idx.size},"
              f" {m['calibration_dropped']['contaminants']} contaminants (of {cal_cont})",
              flush=True)
    print(f"[{label}] AUROC error {m['recon_error']['auroc']:.4f}  density "
          f"{m['latent_density']['auroc']:.4f}  combined {m['combined']['auroc']:.4f}  "
          f"TPR {m['at_5pct']['tpr']:.3f} FPR {m['at_5pct']['fpr']:.3f}  "
          f"train {train_s:.0f} s", flush=True)
    ev["detector"] = det
    return ev


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--presets", default="default,seed",
                    help="comma-separated model presets trained with otherwise default settings")
    ap.add_argument("--contamination", default=None,
                    help="comma-separated fractions of train/Parasitized mixed into training "
                         "(plain and robust model each); e.g. 0,0.01,0.05,0.1")
    ap.add_argument("--models", default="plain,robust",
                    help="with --contamination: which of plain,robust to train")
    ap.add_argument("--density", default=None,
                    help="comma-separated latent densities (kde,gmm): one model per density "
                         "and preset, same seed and network (default: ScoringConfig's)")
    ap.add_argument("--epochs", type=int, default=None, help="override (default: TrainConfig)")
    ap.add_argument("--prior-weight", type=float, default=None,
                    help="robust models: TrainConfig.prior_weight (0: no adversarial prior)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "detection.json")
    ap.add_argument("--report", action="store_true",
                    help="write docs/benchmarks.md and figures in docs/images/")
    args = ap.parse_args(argv)

    if not (args.data / "train" / "Uninfected").is_dir():
        print(f"SKIPPED: malaria data not found at {args.data} (expected the shared folder "
              "../shared/data/malaria beside the project); nothing measured.")
        return 0
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    train_u, _ = _load(args.data / "train" / "Uninfected")
    val_u, _ = _load(args.data / "val" / "Uninfected")
    val_p, _ = _load(args.data / "val" / "Parasitized")
    val_imgs = val_u + val_p
    labels = np.r_[np.zeros(len(val_u), bool), np.ones(len(val_p), bool)]
    base = {} if args.epochs is None else {"epochs": args.epochs}

    green = np.array([green_floor(im) for im in val_imgs])
    report: dict[str, Any] = {
        "data": {"train": f"{len(train_u)} train/Uninfected",
                 "val": f"{len(val_u)} val/Uninfected vs {len(val_p)} val/Parasitized"},
        "green_floor_benchmark_only": {"auroc": image_auroc(labels, green),
                                       "auprc": image_auprc(labels, green)},
        "models": {}, "contamination": {},
    }
    print(f"[green 1st percentile, benchmark-only hand-made floor] AUROC "
          f"{report['green_floor_benchmark_only']['auroc']:.4f}", flush=True)
    evs: dict[str, dict[str, Any]] = {}
    if args.contamination is None:
        kinds = ([k.strip() for k in args.density.split(",") if k.strip()]
                 if args.density else [ScoringConfig().density])
        for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
            nets = []
            for kind in kinds:
                name = preset if args.density is None else f"{preset}, {kind}"
                cfg = TrainConfig(preset=preset, scoring=ScoringConfig(density=kind), **base)
                ev = run_one(name, train_u, val_imgs, labels, cfg)
                report["models"][name] = ev["metrics"]
                evs[name] = ev
                nets.append(ev["detector"].network.state_dict())
            if len(kinds) > 1:
                same = all(torch.equal(nets[0][k], other[k]) for other in nets[1:]
                           for k in nets[0])
                print(f"[{preset}] networks bit-identical across densities: {same}",
                      flush=True)
                report["density_comparison"] = {
                    "preset": preset, "same_network": same,
                    "timing": density_timing(evs[f"{preset}, {kinds[0]}"]["detector"], kinds,
                                             train_u, val_imgs),
                    "load_average": os.getloadavg()[0]}
    else:
        pool, _ = _load(args.data / "train" / "Parasitized")
        for frac in [float(f) for f in args.contamination.split(",")]:
            k = round(frac * len(train_u) / (1.0 - frac))
            if k > len(pool):
                print(f"  contamination {frac} needs {k} > {len(pool)} pool images; skipped")
                continue
            imgs = train_u + pool[:k]
            wanted = {m.strip() for m in args.models.split(",")}
            for robust in [r for r in (False, True) if ("robust" if r else "plain") in wanted]:
                name = f"{frac:g} {'robust' if robust else 'plain'}"
                extra = ({"prior_weight": args.prior_weight}
                         if robust and args.prior_weight is not None else {})
                ev = run_one(name, imgs, val_imgs, labels,
                             TrainConfig(robust=robust, **base, **extra), n_contaminants=k)
                report["contamination"][name] = ev["metrics"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")
    print("\n".join(density_markdown(report)))
    if args.report:
        write_report(report, evs, val_imgs, labels, green)
    return 0


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def write_report(report: dict[str, Any], evs: dict[str, dict[str, Any]],
                 val_imgs: list[np.ndarray], labels: np.ndarray, green: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    img_dir = ROOT / "docs" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    # ROC curves
    fig, axes = plt.subplots(1, max(1, len(evs)), figsize=(5 * max(1, len(evs)), 4.5))
    axes = np.atleast_1d(axes)
    for ax, (name, ev) in zip(axes, evs.items(), strict=False):
        raw = ev["raw"]
        for key, s in (("combined", raw["score"]), ("recon error", raw["recon_error"]),
                       ("latent density", -raw["log_density"])):
            fpr, tpr, _ = roc_curve(labels, s)
            ax.plot(fpr, tpr, label=f"{key} ({image_auroc(labels, s):.3f})")
        fpr, tpr, _ = roc_curve(labels, green)
        ax.plot(fpr, tpr, "k:",
                label=f"green 1st pct, hand-made ({image_auroc(labels, green):.3f})")
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
        ax.set(title=f"preset {name}", xlabel="false-alarm rate", ylabel="detection rate")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(img_dir / "malaria_roc.png", dpi=110)
    plt.close(fig)
    # Score histograms
    fig, axes = plt.subplots(1, max(1, len(evs)), figsize=(5 * max(1, len(evs)), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (name, ev) in zip(axes, evs.items(), strict=False):
        s = ev["raw"]["score"]
        bins = np.linspace(np.percentile(s, 0.5), np.percentile(s, 99.5), 50)
        ax.hist(np.clip(s[~labels], bins[0], bins[-1]), bins, alpha=0.6, label="Uninfected")
        ax.hist(np.clip(s[labels], bins[0], bins[-1]), bins, alpha=0.6, label="Parasitized")
        ax.axvline(ev["detector"].calibration.threshold(FPR), color="k", ls="--",
                   label="calibrated 5% threshold")
        ax.set(title=f"combined score, preset {name}", xlabel="score", ylabel="cells")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img_dir / "malaria_scores.png", dpi=110)
    plt.close(fig)
    # Heatmaps over parasitized val cells (default preset)
    if "default" in evs:
        ev = evs["default"]
        det = ev["detector"]
        vmax = det.calibration.display_range()[1]
        idx = np.flatnonzero(labels)[:: max(1, labels.sum() // 6)][:6]
        fig, axes = plt.subplots(3, len(idx), figsize=(2.1 * len(idx), 6.6))
        for j, i in enumerate(idx):
            r = ev["results"][i]
            axes[0, j].imshow(val_imgs[i])
            axes[0, j].set_title(f"score {r.score:.1f}" + (" *" if r.is_anomaly else ""),
                                 fontsize=8)
            axes[1, j].imshow(np.clip(r.reconstruction, 0, 1))
            axes[2, j].imshow(r.error_map, cmap="inferno", vmin=0, vmax=vmax)
            for a in axes[:, j]:
                a.axis("off")
        axes[0, 0].set_ylabel("input")
        fig.suptitle("Parasitized val cells: input (* = flagged at 5%), reconstruction, "
                     "error map", fontsize=9)
        fig.tight_layout()
        fig.savefig(img_dir / "malaria_heatmaps.png", dpi=110)
        plt.close(fig)
    (ROOT / "docs" / "benchmarks.md").write_text(_markdown(report))
    print(f"wrote {ROOT / 'docs' / 'benchmarks.md'} and figures in {img_dir}")


def density_markdown(report: dict[str, Any]) -> list[str]:
    """Markdown table of a ``--density`` comparison (empty without one)."""
    comp = report.get("density_comparison")
    if not comp:
        return []
    preset = comp["preset"]
    lines = [f"| density (preset {preset}) | combined AUROC | combined AUPRC | density AUROC | "
             "density AUPRC | TPR @5% | FPR @5% | density fit s | density score ms/image |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, t in comp["timing"].items():
        m = report["models"][f"{preset}, {kind}"]
        lines.append(f"| {kind} | {m['combined']['auroc']:.4f} | {m['combined']['auprc']:.4f} | "
                     f"{m['latent_density']['auroc']:.4f} | {m['latent_density']['auprc']:.4f} "
                     f"| {m['at_5pct']['tpr']:.3f} | {m['at_5pct']['fpr']:.3f} | "
                     f"{t['fit_s']:.1f} | {t['score_ms_per_image']:.2f} |")
    lines += ["", f"Same network for every row: {comp['same_network']} (weights bit-identical). "
              f"Load average during the timing: {comp['load_average']:.1f}.", ""]
    return lines


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Detection benchmark: NIH malaria cells",
        "",
        "Generated by `python benchmarks/detection.py --report`. Data (not part of the project):",
        f"train on {report['data']['train']}; evaluate on {report['data']['val']} (slides",
        "disjoint from training). Defaults as a user gets them (`TrainConfig()`,",
        "`ScoringConfig()`); the `seed` row differs only by preset. Image AUROC / AUPRC; TPR / FPR",
        "of the combined score's threshold calibrated on held-out training normals for 5% false",
        "alarms. Training time on the benchmark machine (2-core CPU; shared load varies).",
        "",
        "| model | error AUROC | density AUROC | combined AUROC | combined AUPRC | TPR @5% |"
        " FPR @5% | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['recon_error']['auroc']:.4f} | "
                     f"{m['latent_density']['auroc']:.4f} | {m['combined']['auroc']:.4f} | "
                     f"{m['combined']['auprc']:.4f} | {m['at_5pct']['tpr']:.3f} | "
                     f"{m['at_5pct']['fpr']:.3f} | {m['train_seconds']:.0f} |")
    g = report["green_floor_benchmark_only"]
    lines += [
        f"| green 1st percentile (hand-made, benchmark-only floor) | | | {g['auroc']:.4f} | "
        f"{g['auprc']:.4f} | | | |",
        "| published Keras AE + KDE (reference, from the data README) | 0.69 | 0.60 | | | | | |",
        "",
    ]
    if report.get("density_comparison"):
        lines += ["## Latent density: KDE vs Gaussian mixture", "", *density_markdown(report)]
    if report["contamination"]:
        lines += ["## Contaminated training sets", "",
                  "| contamination / model | combined AUROC | error AUROC | TPR @5% | FPR @5% | "
                  "rejected (true contaminants) | precision | recall | calibration dropped |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, m in report["contamination"].items():
            rej, cal = m.get("rejected"), m.get("calibration_dropped")
            rtxt = ctxt = " | |"
            if rej:
                p_ = "" if rej["precision"] is None else f"{rej['precision']:.2f}"
                r_ = "" if rej["recall"] is None else f"{rej['recall']:.2f}"
                rtxt = f"{rej['n']} ({rej['contaminants']}) | {p_} | {r_}"
            if cal:
                ctxt = (f"{cal['n']}/{cal['of']} ({cal['contaminants']} of "
                        f"{cal['contaminants_in_calibration']})")
            lines.append(f"| {name} | {m['combined']['auroc']:.4f} | "
                         f"{m['recon_error']['auroc']:.4f} | {m['at_5pct']['tpr']:.3f} | "
                         f"{m['at_5pct']['fpr']:.3f} | {rtxt} | {ctxt} |")
        lines.append("")
    lines += ["![ROC curves](images/malaria_roc.png)", "",
              "![Combined-score histograms](images/malaria_scores.png)", "",
              "![Heatmaps over parasitized val cells](images/malaria_heatmaps.png)", ""]
    if report["models"]:
        s = next(iter(report["models"].values()))["scoring"]
        lines += ["Scoring used: `" + json.dumps(s) + "`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
