"""How well does the built-in segmentation (core.segmentation.segment_cells) find cells?

Prints numbers for three data sets:

* synthetic fields (``make_cell_field``): fraction of planted cells matched by an object at
  IoU >= 0.5, and the time to segment a 2048 x 2048 field with 1,000 cells;
* ``../shared/data/chula-rbc`` (brightfield smears, one annotated point per cell):
  "found" = fraction of annotated points inside an object, "merged" = fraction of objects
  that hold more than one annotated point, objects per field, and the fraction of points
  whose object touches the image edge;
* ``../shared/data/dsb2018-fluo`` (fluorescence nuclei, instance labels): F1 at IoU 0.5,
  as the mean over images and pooled over all objects, next to a plain baseline (Otsu
  threshold + distance-transform watershed with fixed settings), and on a 16-bit copy of
  each image (``x * 16 + 100``, as a 12-bit camera with a dark offset would record it);
* synthetic fluorescence fields (``make_fluo_field``, 16-bit, Poisson noise, normal nuclei):
  F1 at IoU 0.5 against the generator's instance labels.

The segmentation's constants were tuned on the odd-numbered chula fields and the
even-positioned dsb images (sorted by name); the other halves are reported apart as held
out. Numbers on the tuning halves are optimistic.

Usage::

    python benchmarks/segmentation.py            # everything
    python benchmarks/segmentation.py --quick    # a subset (about a tenth), faster
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_cell_anomaly.core.cells import measure_cells
from napari_cell_anomaly.core.images import read_image
from napari_cell_anomaly.core.metrics import instance_f1 as f1
from napari_cell_anomaly.core.metrics import match_instances as iou_matches
from napari_cell_anomaly.core.sample import make_cell_field
from napari_cell_anomaly.core.sample_fluo import DARK_OFFSET, make_fluo_field
from napari_cell_anomaly.core.segmentation import segment_cells

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def baseline(gray: np.ndarray, min_distance: int = 5) -> np.ndarray:
    """Plain Otsu threshold + distance-transform watershed (fixed settings)."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    mask = gray > threshold_otsu(gray)
    dist = ndi.distance_transform_edt(mask)
    comp, _ = ndi.label(mask)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=comp, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=mask)


# ------------------------------------------------------------------------------------------
def bench_synthetic(quick: bool) -> None:
    print("== synthetic fields (make_cell_field) ==")
    seeds = range(3 if quick else 10)
    m = nt = npred = 0
    for seed in seeds:
        f = make_cell_field((512, 512), n_cells=80, seed=seed)
        r = iou_matches(f.labels, segment_cells(f.image))
        m, nt, npred = m + r[0], nt + r[1], npred + r[2]
    print(f"512x512, 80 cells requested, {len(seeds)} fields: planted cells matched at IoU>=0.5 "
          f"{m / nt:.3f} ({m}/{nt}); objects {npred}; F1 {f1(m, nt, npred):.3f}")
    big = make_cell_field((2048, 2048), n_cells=1000, radius=(14, 20), seed=0)
    segment_cells(big.image)  # warm-up (imports)
    times, cpu = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        lab = segment_cells(big.image)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    r = iou_matches(big.labels, lab)
    print(f"2048x2048, {r[1]} planted cells: matched {r[0] / r[1]:.3f}, objects {r[2]}; "
          f"wall time median {np.median(times):.3f} s (min {min(times):.3f}), process CPU "
          f"time median {np.median(cpu):.3f} s, over 3 runs")


def _chula_points(path: Path) -> np.ndarray:
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    return np.array([[float(x), float(y), int(c)] for x, y, c in rows]).reshape(-1, 3)


def bench_chula(quick: bool) -> None:
    root = DATA / "chula-rbc"
    if not root.is_dir():
        print("== chula-rbc: absent, skipped ==")
        return
    print("== chula-rbc (brightfield smears, annotated points) ==")
    ids = sorted(int(p.stem) for p in (root / "images").glob("*.jpg"))
    if quick:
        ids = ids[::10]
    parts: dict[str, dict[str, float]] = {}
    by_class: dict[int, list[int]] = {}
    t_total = 0.0
    for fid in ids:
        pts = _chula_points(root / "points" / f"{fid}.txt")
        img = read_image(root / "images" / f"{fid}.jpg")
        t0 = time.perf_counter()
        lab = segment_cells(img)
        t_total += time.perf_counter() - t0
        part = "tuned (odd fields)" if fid % 2 else "held out (even fields)"
        acc = parts.setdefault(part, dict.fromkeys(
            ("fields", "points", "found", "objects", "objects_with_points", "merged",
             "at_border", "empty_fields"), 0.0))
        acc["fields"] += 1
        acc["objects"] += int(lab.max())
        acc["empty_fields"] += int(lab.max() == 0)
        if not len(pts):
            continue
        h, w = lab.shape
        xs = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
        ys = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
        hit = lab[ys, xs]
        table = measure_cells(lab)
        border = np.zeros(int(lab.max()) + 1, bool)
        border[table.label] = table.at_border
        counts = np.bincount(hit[hit > 0], minlength=int(lab.max()) + 1)
        acc["points"] += len(pts)
        acc["found"] += int((hit > 0).sum())
        acc["at_border"] += int(border[hit[hit > 0]].sum())
        acc["objects_with_points"] += int((counts > 0).sum())
        acc["merged"] += int((counts > 1).sum())
        for cls, h in zip(pts[:, 2].astype(int), hit, strict=True):
            by_class.setdefault(int(cls), [0, 0])
            by_class[int(cls)][0] += 1
            by_class[int(cls)][1] += int(h > 0)
    for part, a in sorted(parts.items(), reverse=True):
        print(f"{part}: {int(a['fields'])} fields, {int(a['points'])} points: "
              f"found {a['found'] / max(a['points'], 1):.3f}, "
              f"merged {a['merged'] / max(a['objects_with_points'], 1):.3f} of "
              f"{int(a['objects_with_points'])} objects holding a point, "
              f"{a['objects'] / a['fields']:.1f} objects/field, "
              f"found points in edge objects {a['at_border'] / max(a['found'], 1):.3f}, "
              f"fields with no object {int(a['empty_fields'])}")
    print("found by class (all fields): " + ", ".join(
        f"{c}: {f / n:.2f} (n={n})" for c, (n, f) in sorted(by_class.items())))
    print(f"mean time per 640x480 field: {t_total / len(ids) * 1000:.0f} ms")


def bench_dsb(quick: bool) -> None:
    root = DATA / "dsb2018-fluo"
    if not root.is_dir():
        print("== dsb2018-fluo: absent, skipped ==")
        return
    print("== dsb2018-fluo (fluorescence nuclei, instance labels), F1 at IoU 0.5 ==")
    paths = sorted((root / "images").glob("*.png"))
    picked = list(enumerate(paths))
    if quick:
        picked = picked[::10]
    res: dict[str, dict[str, list]] = {}
    for i, path in picked:
        import tifffile

        truth = tifffile.imread(root / "labels" / f"{path.stem}_labels.tif")
        img = read_image(path)
        gray = img if img.ndim == 2 else img[..., :3].mean(-1)
        part = "tuned (even positions)" if i % 2 == 0 else "held out (odd positions)"
        acc = res.setdefault(part, {"ours": [], "base": [], "16bit": [], "same": []})
        ours = segment_cells(img)
        acc["ours"].append(iou_matches(truth, ours))
        acc["base"].append(iou_matches(truth, baseline(gray.astype(np.float32))))
        ours16 = segment_cells(img.astype(np.uint16) * 16 + DARK_OFFSET)
        acc["16bit"].append(iou_matches(truth, ours16))
        acc["same"].append([np.array_equal(ours, ours16)])
    for part, acc in sorted(res.items(), reverse=True):
        print(f"{part}: 16-bit copy segmented exactly as the 8-bit image in "
              f"{int(np.sum(acc['same']))} of {len(acc['same'])} images")
        for name, label in (("ours", "segment_cells"), ("16bit", "segment_cells, 16-bit copy"),
                            ("base", "Otsu+watershed baseline")):
            rows = np.array(acc[name])
            per_image = [f1(*r) for r in rows]
            pooled = f1(*rows.sum(0))
            print(f"{part}, {len(rows)} images, {label}: F1 mean of images "
                  f"{np.mean(per_image):.3f} (median {np.median(per_image):.3f}), "
                  f"pooled {pooled:.3f}")


def bench_fluo_synthetic(quick: bool) -> None:
    print("== synthetic fluorescence fields (make_fluo_field, normal nuclei), F1 at IoU 0.5 ==")
    rows = []
    for seed in range(3 if quick else 10):
        f = make_fluo_field((512, 512), n_nuclei=60, anomaly_fraction=0.0, seed=seed)
        rows.append(iou_matches(f.labels, segment_cells(f.channel("DNA"))))
    per_image = [f1(*r) for r in rows]
    m, nt, npred = np.sum(rows, axis=0)
    print(f"512x512, 16-bit, {len(rows)} fields, {nt} nuclei: F1 mean of images "
          f"{np.mean(per_image):.3f} (min {np.min(per_image):.3f}), pooled {f1(m, nt, npred):.3f}, "
          f"objects {npred}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset of each data set")
    parser.add_argument("--only", choices=("synthetic", "chula", "dsb", "fluo-synthetic"),
                        help="run one data set only")
    args = parser.parse_args()
    for name, fn in (("synthetic", bench_synthetic), ("chula", bench_chula),
                     ("dsb", bench_dsb), ("fluo-synthetic", bench_fluo_synthetic)):
        if args.only in (None, name):
            fn(args.quick)


if __name__ == "__main__":
    main()
