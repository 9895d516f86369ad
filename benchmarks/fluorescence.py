"""Synthetic fluorescence benchmark: planted nuclear anomalies in 16-bit Poisson-noise fields.

Data (``core.sample_fluo.make_fluo_field``, 256 x 256 fields, 16 nuclei of radius 8-12 px,
uint16 with a dark offset and shot noise): the model trains on normal fields only, then scores
new normal fields and new fields in which a fifth of the nuclei carry a planted anomaly
(micronuclei, fragmented, abnormally bright or large nuclei; every kind dealt out in turn),
and, per kind, fields whose anomalies are all of that kind. No test field is trained on.

Measured, for each error kind of the scoring (``ScoringConfig.error``; ``auto`` is the
model's own choice from the image kind where the installed package makes one, else the
default):

* image AUROC: each field's score, anomalous fields against normal fields;
* pixel AUROC: every pixel of every test field (normal fields included), the anomaly map
  against the planted anomaly mask;
* with ``--cells``: a cells-mode model trained on the normal fields' ground-truth nuclei,
  scoring the test fields per cell with their ground-truth nuclei and with the built-in
  segmentation: image AUROC (a field is its worst cell), pixel AUROC (per-cell error map) and
  per-cell AUROC over all nuclei of the test fields.

Patch mode (the fields are larger than four model sizes) with the training defaults
(``TrainConfig()``), except where an option says otherwise. Prints one Markdown table with
the targets of issue 9 (image AUROC >= 0.98, pixel AUROC >= 0.95).

Also printed: the image AUROC of each criterion alone (the largest window error, the lowest
window latent log-density; the image score is the largest of their calibrated z-scores, as
``AnomalyDetector.score`` computes it in patch mode), how well the reconstruction follows the
input on normal fields (its correlation with it), and a reference without any model (the DNA
channel's counts as map, their 99.9th percentile as score), the floor to beat: bright, large
and fragmented nuclei are bright.

Run: ``python benchmarks/fluorescence.py [--errors auto,mse,lab,ssim] [--channels 1|2]
[--epochs N] [--loss mse|ssim|mix] [--cells] [--quick] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_cell_anomaly.core.metrics import image_auroc, pixel_auroc
from napari_cell_anomaly.core.sample_fluo import ANOMALY_KINDS, FluoField, make_fluo_field
from napari_cell_anomaly.core.scoring import ERROR_KINDS, ScoringConfig
from napari_cell_anomaly.core.segmentation import segment_cells
from napari_cell_anomaly.core.training import TrainConfig, run_training

SHAPE = (256, 256)
N_NUCLEI = 16
FRACTION = 0.2
TARGET_IMAGE = 0.98
TARGET_PIXEL = 0.95


def field(seed: int, fraction: float, n_channels: int,
          kinds: tuple[str, ...] = ANOMALY_KINDS) -> FluoField:
    return make_fluo_field(SHAPE, n_nuclei=N_NUCLEI, n_channels=n_channels,
                           anomaly_fraction=fraction, kinds=kinds, seed=seed)


def pixels(f: FluoField) -> np.ndarray:
    """What the model is given: the DNA channel alone, or all channels (channels last)."""
    return f.image[..., 0] if f.image.shape[-1] == 1 else f.image


def test_sets(n: int, n_channels: int) -> dict[str, list[FluoField]]:
    sets = {"normal": [field(1000 + s, 0.0, n_channels) for s in range(n)],
            "mixed": [field(2000 + s, FRACTION, n_channels) for s in range(n)]}
    for k, kind in enumerate(ANOMALY_KINDS):
        sets[kind] = [field(3000 + 100 * k + s, FRACTION, n_channels, (kind,))
                      for s in range(n)]
    return sets


def scoring_for(error: str) -> dict[str, Any]:
    """TrainConfig keyword for an error kind; ``auto`` leaves the package's choice."""
    if error == "auto":
        return {}
    return {"scoring": ScoringConfig(error=error)}


def intensity_reference(f: FluoField) -> tuple[float, np.ndarray]:
    """No model: the DNA channel's counts as the map, its 99.9th percentile as the score.

    The floor to beat: bright, large and fragmented (condensed) nuclei are bright."""
    x = f.image[..., 0].astype(np.float32)
    return float(np.percentile(x, 99.9)), x


def evaluate(det: Any, sets: dict[str, list[FluoField]], reference: bool = False
             ) -> dict[str, float]:
    """Image and pixel AUROCs; per image also the error criterion alone (the largest window
    error) and the density criterion alone (the lowest window log-density)."""
    scores: dict[str, dict[str, list[float]]] = {}
    maps: dict[str, list[np.ndarray]] = {}
    corr = []
    for name, fs in sets.items():
        scores[name] = {"": [], "error_only_": [], "density_only_": []}
        maps[name] = []
        for f in fs:
            if reference:
                score, error_map = intensity_reference(f)
                scores[name][""].append(score)
                maps[name].append(error_map)
                continue
            x = det.preprocessing(pixels(f))
            res = det.analyse_field(x)  # what det.score does in patch mode, per window
            scores[name][""].append(float(det.calibration.combine(
                res["recon_error"], res["log_density"]).max()))
            scores[name]["error_only_"].append(float(res["recon_error"].max()))
            scores[name]["density_only_"].append(float(-res["log_density"].min()))
            maps[name].append(res["error_map"])
            if name == "normal":  # does the network reconstruct, or output a constant?
                y = res["recon"].ravel()
                corr.append(np.corrcoef(x.ravel(), y)[0, 1] if y.std() > 0 else 0.0)
    out: dict[str, float] = {"recon_corr": float(np.mean(corr)) if corr else float("nan")}
    normal_masks = [f.mask for f in sets["normal"]]
    for name in ["mixed", *ANOMALY_KINDS]:
        y = np.r_[np.zeros(len(sets["normal"])), np.ones(len(sets[name]))]
        for part, values in scores[name].items():
            if values:
                out[f"{part}image_auroc_{name}"] = image_auroc(
                    y, scores["normal"][part] + values)
        out[f"pixel_auroc_{name}"] = pixel_auroc(normal_masks + [f.mask for f in sets[name]],
                                                 maps["normal"] + maps[name])
    return out


def found_nuclei(f: FluoField) -> np.ndarray:
    """The built-in segmentation's nuclei: on the DNA channel (on the mean of two channels
    it would find the cell bodies)."""
    image = pixels(f)
    return segment_cells(image) if image.ndim == 2 else segment_cells(image, channel=0)


def cells_mode(error: str, train: list[FluoField], sets: dict[str, list[FluoField]],
               args: argparse.Namespace) -> dict[str, Any]:
    """A cells-mode model trained on the normal fields' ground-truth nuclei; each test field
    scored per cell with its ground-truth labels (``truth``) and with the built-in
    segmentation of the DNA channel (``found``): image AUROC (a field's score is its worst
    cell's), pixel AUROC (the per-cell error map) and per-cell AUROC (a found object takes
    the kind of the ground-truth nucleus it mostly covers)."""
    det = run_training([pixels(f) for f in train],
                       TrainConfig(mode="cells", epochs=args.epochs, seed=args.seed,
                                   loss=args.loss, **scoring_for(error)),
                       labels=[f.labels for f in train])
    out: dict[str, Any] = {"cells_error_used": det.scoring.error}
    for source in ("truth", "found"):
        per_set: dict[str, tuple[list, list, list, list]] = {}
        for name, fs in sets.items():
            field_scores, maps, cell_y, cell_s = [], [], [], []
            for f in fs:
                labels = f.labels if source == "truth" else found_nuclei(f)
                result, cells = det.score_field(pixels(f), labels, include_border=True)
                field_scores.append(result.score)
                maps.append(result.error_map)
                for k, score in zip(cells.table["label"], cells.table["score"], strict=True):
                    gt = f.labels[cells.labels == k]
                    gt = gt[gt > 0]
                    cell_y.append(bool(gt.size) and bool(f.anomalous[np.bincount(gt).argmax() - 1]))
                    cell_s.append(score)
            per_set[name] = (field_scores, maps, cell_y, cell_s)
        normal = per_set["normal"]
        for name in ["mixed", *ANOMALY_KINDS]:
            bad = per_set[name]
            y = np.r_[np.zeros(len(normal[0])), np.ones(len(bad[0]))]
            key = f"cells_{source}_"
            out[key + f"image_auroc_{name}"] = image_auroc(y, normal[0] + bad[0])
            out[key + f"pixel_auroc_{name}"] = pixel_auroc(
                [f.mask for f in sets["normal"] + sets[name]], normal[1] + bad[1])
            out[key + f"cell_auroc_{name}"] = image_auroc(np.asarray(normal[2] + bad[2]),
                                                          np.asarray(normal[3] + bad[3]))
    return out


def auto_error_available() -> bool:
    """Whether the installed package chooses the error from the image kind itself."""
    return "auto" in ERROR_KINDS or any(f.name == "error" and f.default in (None, "auto")
                                        for f in dataclass_fields(ScoringConfig))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--errors", default="auto,mse,lab,ssim",
                   help="comma-separated error kinds (auto = the package's own choice)")
    p.add_argument("--channels", type=int, choices=(1, 2), default=1,
                   help="1: the DNA channel; 2: DNA + cytoplasm (needs N-channel models)")
    p.add_argument("--epochs", type=int, default=TrainConfig().epochs)
    p.add_argument("--loss", default=TrainConfig().loss, help="training loss (mse|ssim|mix)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-fields", type=int, default=6)
    p.add_argument("--test-fields", type=int, default=12, help="fields per test set")
    p.add_argument("--cells", action="store_true",
                   help="also cells mode (ground-truth nuclei and built-in segmentation)")
    p.add_argument("--no-patch", action="store_true", help="skip the patch-mode model")
    p.add_argument("--quick", action="store_true", help="4 test fields per set, 3 epochs")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args()
    if args.quick:
        args.test_fields, args.epochs = 4, 3
    train = [field(s, 0.0, args.channels) for s in range(args.train_fields)]
    sets = test_sets(args.test_fields, args.channels)
    auto = auto_error_available()
    report: dict[str, Any] = {"settings": {**vars(args), "json": None, "auto_error": auto}}
    for error in args.errors.split(","):
        row: dict[str, Any] = {}
        if not args.no_patch:
            t0 = time.perf_counter()
            det = run_training([pixels(f) for f in train],
                               TrainConfig(mode="patch", epochs=args.epochs, seed=args.seed,
                                           loss=args.loss, **scoring_for(error)))
            row.update(error_used=det.scoring.error,
                       train_s=round(time.perf_counter() - t0, 1))
            row.update(evaluate(det, sets))
        if args.cells:
            row.update(cells_mode(error, train, sets, args))
        report[error] = row
        print(json.dumps({error: row}), flush=True)
    if not args.no_patch:
        report["intensity"] = {"error_used": "no model", **evaluate(det, sets, reference=True)}
    print_table(report, args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def print_table(report: dict[str, Any], args: argparse.Namespace) -> None:
    errors = [e for e in report if e != "settings"]
    auto = ("the package's choice" if report["settings"]["auto_error"]
            else "the default (this version makes no automatic choice)")
    print(f"\nSynthetic fluorescence, {args.channels} channel(s), {args.train_fields} normal "
          f"training fields, {args.test_fields} test fields per set, {args.epochs} epochs; "
          f"'auto' = {auto}\n")
    head = ("| error | anomalies | image AUROC | error alone | density alone | pixel AUROC "
            "| recon. corr. |")
    if not args.no_patch:
        print_patch_table(report, errors, head)
    if args.cells:
        print_cells_table(report, errors)
    print(f"\nloss {args.loss}; recon. corr. = correlation of the reconstruction with the "
          "input on the normal test fields (about 0: the network outputs a constant, and the "
          "maps are the intensity itself); 'intensity' = no model, the DNA channel's counts as "
          "map and its 99.9th percentile as score (the floor to beat); 'error alone' / 'density "
          "alone': image AUROC of the largest window error / lowest window log-density")


def print_patch_table(report: dict[str, Any], errors: list[str], head: str) -> None:
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for error in errors:
        row = report[error]
        if "pixel_auroc_mixed" not in row:
            continue
        for name in ["mixed", *ANOMALY_KINDS]:
            parts = " | ".join(f"{row.get(f'{p}image_auroc_{name}', float('nan')):.3f}"
                               for p in ("", "error_only_", "density_only_"))
            line = (f"| {error} ({row['error_used']}) | {name} | {parts} | "
                    f"{row[f'pixel_auroc_{name}']:.3f} | {row['recon_corr']:.2f} |")
            print(line)
    print(f"| target | planted anomalies | >= {TARGET_IMAGE} | | | >= {TARGET_PIXEL} | |")


def print_cells_table(report: dict[str, Any], errors: list[str]) -> None:
    print("\nCells mode (trained on the ground-truth nuclei of the normal fields):\n")
    print("| error | cells from | anomalies | image AUROC | pixel AUROC | per-cell AUROC |")
    print("|" + " --- |" * 6)
    for error in errors:
        row = report[error]
        for source in ("truth", "found"):
            for name in ["mixed", *ANOMALY_KINDS]:
                key = f"cells_{source}_"
                if key + f"image_auroc_{name}" not in row:
                    continue
                where = "ground truth" if source == "truth" else "segment_cells (DNA)"
                print(f"| {error} ({row['cells_error_used']}) | {where} | "
                      f"{name} | {row[key + f'image_auroc_{name}']:.3f} | "
                      f"{row[key + f'pixel_auroc_{name}']:.3f} | "
                      f"{row[key + f'cell_auroc_{name}']:.3f} |")


if __name__ == "__main__":
    main()
