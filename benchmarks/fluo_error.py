"""Which per-pixel error suits fluorescence: L*a*b*, squared error, 1 - SSIM or their mix.

Data: the 256 x 256 fields of DSB 2018 fluorescence nuclei (``../shared/data/dsb2018-fluo``,
uint8 grayscale, with instance labels). Fields are split by sorted id: every other field
trains (normal), the rest are held out. In each held-out field three labelled nuclei get a
planted change, with its pixel mask: ``bright`` (the nucleus 2.5 times brighter),
``micronucleus`` (a small disc of the nucleus' brightness just outside it) or ``fragment``
(a dark cut 2 px wide through the nucleus). Image AUROC: held-out fields as they are (normal)
against the same fields with the planted changes; pixel AUROC over the planted fields.

One patch-mode model (size 64) is trained with the automatic error choice; the error does not
change training, only the map behind scores and heatmaps, so the other kinds score with the
same network and density (their calibration is the trained model's, so only the error-only
image AUROC and the pixel AUROC compare the kinds; the calibrated combined score is given for
the trained model).

``--synthetic``: the same comparison on 2-channel 16-bit fields of
:func:`~napari_cell_anomaly.core.sample_fluo.make_fluo_field` (normal fields against fields with
planted micronuclei, fragmented, bright and large nuclei; ``lab`` does not apply to 2 channels).

Run: ``python benchmarks/fluo_error.py [--epochs N] [--kinds lab,mse,ssim,mix] [--limit N]
[--synthetic [--fields N]]``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_cell_anomaly.core.detector import AnomalyDetector
from napari_cell_anomaly.core.images import read_image
from napari_cell_anomaly.core.metrics import image_auroc, pixel_auroc
from napari_cell_anomaly.core.training import TrainConfig, run_training

DSB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018-fluo"
CHANGES = ("bright", "micronucleus", "fragment")


def load_fields(limit: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The 256 x 256 fields and their label images, sorted by id."""
    images, labels = [], []
    for path in sorted((DSB / "images").glob("*.png")):
        img = read_image(path)
        if img.shape != (256, 256):
            continue
        images.append(img)
        labels.append(read_image(DSB / "labels" / f"{path.stem}_labels.tif"))
        if limit and len(images) >= limit:
            break
    return images, labels


def plant(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """Three changed nuclei and the mask of the changed pixels."""
    out = image.astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    big = ids[areas >= 40]
    background = float(np.median(image[labels == 0])) if (labels == 0).any() else 0.0
    for k, lab in enumerate(rng.permutation(big)[:3]):
        own = labels == lab
        change = CHANGES[k % len(CHANGES)]
        ys, xs = np.nonzero(own)
        cy, cx = ys.mean(), xs.mean()
        radius = np.sqrt(own.sum() / np.pi)
        if change == "bright":
            out[own] = out[own] * 2.5
            mask |= own
        elif change == "micronucleus":
            angle = rng.uniform(0, 2 * np.pi)
            r = max(2.0, 0.35 * radius)
            py, px = cy + (radius + r + 2) * np.sin(angle), cx + (radius + r + 2) * np.cos(angle)
            yy, xx = np.ogrid[:image.shape[0], :image.shape[1]]
            disc = (yy - py) ** 2 + (xx - px) ** 2 <= r * r
            out[disc] = max(float(np.median(image[own])), background + 1)
            mask |= disc
        else:
            angle = rng.uniform(0, np.pi)
            yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
            dist = np.abs((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle))
            cut = own & (dist <= 1.0)
            out[cut] = background
            mask |= cut
    mask = ndi.binary_dilation(mask, iterations=1) & (mask | (np.abs(out - image) > 0))
    return np.clip(out, 0, 255).astype(image.dtype), mask


def _with_error(det: AnomalyDetector, kind: str, normals: list[np.ndarray]) -> AnomalyDetector:
    """The same network and density scoring with another error map (``mix`` takes its map
    scales from ``normals``, training fields, as training takes them from validation
    images)."""
    other = copy.copy(det)
    other.scoring = dataclasses.replace(det.scoring, error=kind)
    other.provenance = dict(det.provenance)
    if kind == "mix":
        maps = [_with_error(det, "mse", normals).score(im) for im in normals]
        other.provenance["map_scales"] = {
            "mse": float(np.median([np.median(r.error_map) for r in maps])) or 1.0,
            "ssim": float(np.median([np.median(r.ssim_map) for r in maps])) or 1.0}
    return other


def synthetic(args: argparse.Namespace) -> None:
    """The kinds that apply to 2 channels (not ``lab``) on ``make_fluo_field`` fields:
    16-bit DNA + cytoplasm, planted micronuclei, fragmented, bright and large nuclei."""
    from napari_cell_anomaly.core.sample_fluo import make_fluo_field

    def field(seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        f = make_fluo_field((256, 256), n_nuclei=30, n_channels=2, anomaly_fraction=fraction,
                            seed=seed)
        return f.image, f.mask

    train = [field(100 + i, 0.0)[0] for i in range(args.fields)]
    normal = [field(200 + i, 0.0)[0] for i in range(args.fields)]
    planted = [field(300 + i, 0.3) for i in range(args.fields)]
    t0 = time.perf_counter()
    det = run_training(train, TrainConfig(epochs=args.epochs, mode="patch", size=64,
                                          seed=args.seed), device="cpu")
    print(f"synthetic 2-channel 16-bit fields: {len(train)} training, {len(normal)} normal + "
          f"{len(planted)} with anomalies; trained in {time.perf_counter() - t0:.0f} s; "
          f"{det.provenance['error_choice']}")
    _compare(det, normal, planted, [k for k in args.kinds.split(",") if k != "lab"], train)


def _compare(det: AnomalyDetector, normal: list[np.ndarray],
             planted: list[tuple[np.ndarray, np.ndarray]], kinds: list[str],
             train: list[np.ndarray]) -> None:
    y = np.r_[np.zeros(len(normal)), np.ones(len(planted))]
    print(f"{'error':>11} {'error-only image AUROC':>23} {'pixel AUROC':>12} "
          f"{'image AUROC (calibrated score)':>31}")
    for kind in kinds:
        scorer = det if kind == det.scoring.error else _with_error(det, kind, train[:8])
        normal_res = [scorer.score(im) for im in normal]
        anomalous = [scorer.score(im) for im, _ in planted]
        err = image_auroc(y, [r.recon_error for r in normal_res + anomalous])
        pix = pixel_auroc([m for _, m in planted], [r.error_map for r in anomalous])
        combined = (f"{image_auroc(y, [r.score for r in normal_res + anomalous]):31.3f}"
                    if scorer is det else f"{'-':>31}")
        tag = f"{kind}{' (auto)' if scorer is det else ''}"
        print(f"{tag:>11} {err:23.3f} {pix:12.3f} {combined}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--kinds", default="lab,mse,ssim,mix")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N fields")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic", action="store_true",
                        help="2-channel 16-bit synthetic fields (core.sample_fluo) instead")
    parser.add_argument("--fields", type=int, default=8,
                        help="--synthetic: training, normal and anomalous fields each")
    args = parser.parse_args()
    if args.synthetic:
        synthetic(args)
        return

    if not DSB.is_dir():
        raise SystemExit(f"no DSB 2018 data at {DSB}")
    images, labels = load_fields(args.limit)
    train, test, test_labels = images[0::2], images[1::2], labels[1::2]
    rng = np.random.default_rng(args.seed)
    planted = [plant(im, lab, rng) for im, lab in zip(test, test_labels, strict=True)]
    t0 = time.perf_counter()
    cfg = TrainConfig(epochs=args.epochs, mode="patch", size=64, seed=args.seed)
    det = run_training(train, cfg, device="cpu")
    print(f"{len(train)} training fields, {len(test)} held-out fields (+ planted copies); "
          f"trained in {time.perf_counter() - t0:.0f} s; {det.provenance['error_choice']}")
    _compare(det, test, planted, args.kinds.split(","), train)


if __name__ == "__main__":
    main()
