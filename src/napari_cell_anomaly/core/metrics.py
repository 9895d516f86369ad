"""Evaluation metrics for image-level and pixel-level anomaly detection.

* :func:`image_auroc`, :func:`image_auprc`: ranking quality of per-image scores.
* :func:`pixel_auroc`: ranking quality of anomaly maps over all pixels.
* :func:`aupro`: area under the per-region-overlap curve (as in anomalib / MVTec AD), which
  weights every anomalous region equally regardless of its size.
* :func:`rates_at_threshold`: detection and false-alarm rates of a fixed threshold.
* :func:`match_instances`, :func:`instance_f1`: segmentation quality, objects matched by IoU.

Convention: higher scores mean "more anomalous"; labels and masks are True for anomalies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.measure import label as _label_regions
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "PIXEL_AUROC_MAX_PIXELS",
    "aupro",
    "image_auprc",
    "image_auroc",
    "instance_f1",
    "match_instances",
    "pixel_auroc",
    "rates_at_threshold",
]

#: :func:`pixel_auroc` subsamples (deterministically, per class) above this many pixels.
PIXEL_AUROC_MAX_PIXELS = 5_000_000


def _labels_scores(labels: Any, scores: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten image labels and scores."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"{what}: labels and scores must be 1-D; got shapes {y.shape} and "
                         f"{s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"{what}: labels and scores must have the same length; got "
                         f"{y.size} labels and {s.size} scores")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{what}: labels must be boolean or 0/1; got values "
                             f"{np.unique(y)[:5].tolist()}")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError(f"{what}: scores contain {int(np.count_nonzero(~np.isfinite(s)))} "
                         "NaN or infinite values")
    return y, s


def _need_both_classes(y: np.ndarray, what: str, unit: str = "examples") -> None:
    n_pos = int(np.count_nonzero(y))
    n_neg = int(y.size) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{what} needs both normal and anomalous {unit}; got {n_neg} normal "
                         f"and {n_pos} anomalous")


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of image scores.

    Parameters
    ----------
    labels : array_like of bool, shape (n,)
        True (or 1) for anomalous images.
    scores : array_like of float, shape (n,)
        Anomaly scores; higher = more anomalous.

    Returns
    -------
    float
        AUROC in [0, 1]: 1.0 when every anomaly scores above every normal image, 0.5 for
        chance, 0.0 when the order is exactly reversed. Ties count half.

    Raises
    ------
    ValueError
        If lengths differ, scores are not finite, or only one class is present.
    """
    y, s = _labels_scores(labels, scores, "image AUROC")
    _need_both_classes(y, "image AUROC", "images")
    return float(roc_auc_score(y, s))


def image_auprc(labels: Any, scores: Any) -> float:
    """Area under the precision-recall curve (average precision) of image scores.

    Parameters
    ----------
    labels : array_like of bool, shape (n,)
        True (or 1) for anomalous images.
    scores : array_like of float, shape (n,)
        Anomaly scores; higher = more anomalous.

    Returns
    -------
    float
        Average precision in [0, 1]; the chance level is the fraction of anomalies.

    Raises
    ------
    ValueError
        If lengths differ, scores are not finite, or only one class is present.
    """
    y, s = _labels_scores(labels, scores, "image AUPRC")
    _need_both_classes(y, "image AUPRC", "images")
    return float(average_precision_score(y, s))


def _as_list(arrays: Any) -> list[np.ndarray]:
    """Accept one array, a stacked array or a sequence of arrays."""
    if isinstance(arrays, np.ndarray):
        return [arrays] if arrays.ndim <= 2 else list(arrays)
    return [np.asarray(a) for a in arrays]


def _masks_maps(masks: Any, maps: Any, what: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate pairs of ground-truth masks and anomaly maps."""
    mask_list, map_list = _as_list(masks), _as_list(maps)
    if len(mask_list) != len(map_list):
        raise ValueError(f"{what}: got {len(mask_list)} masks but {len(map_list)} maps")
    if not mask_list:
        raise ValueError(f"{what}: expected at least one mask and map; got none")
    out_masks, out_maps = [], []
    for i, (m, a) in enumerate(zip(mask_list, map_list, strict=True)):
        m = np.asarray(m)
        a = np.asarray(a)
        if a.dtype.kind != "f":
            a = a.astype(np.float64)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if m.ndim != 2 or m.shape != a.shape:
            raise ValueError(f"{what}: mask {i} has shape {m.shape} but map {i} has shape "
                             f"{a.shape}; expected equal 2-D shapes")
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: map {i} contains NaN or infinite values")
        out_masks.append(m.astype(bool, copy=False))
        out_maps.append(a)
    return out_masks, out_maps


def pixel_auroc(masks: Any, maps: Any) -> float:
    """AUROC over all pixels of all images.

    Parameters
    ----------
    masks : sequence of array_like of bool, each (H, W)
        Ground truth, True on anomalous pixels. A single 2-D array or an ``(N, H, W)``
        array is also accepted.
    maps : sequence of array_like of float, each (H, W)
        Anomaly maps of the same shapes; higher = more anomalous.

    Returns
    -------
    float
        Pixel AUROC. With more than :data:`PIXEL_AUROC_MAX_PIXELS` pixels, each class is
        subsampled in proportion with a fixed seed (AUROC compares classes pairwise, so
        per-class subsampling keeps the estimate unbiased).

    Raises
    ------
    ValueError
        If shapes differ, maps are not finite, or no pixel (or every pixel) is anomalous.
    """
    mask_list, map_list = _masks_maps(masks, maps, "pixel AUROC")
    y = np.concatenate([m.ravel() for m in mask_list])
    s = np.concatenate([a.ravel() for a in map_list])
    _need_both_classes(y, "pixel AUROC", "pixels")
    if y.size > PIXEL_AUROC_MAX_PIXELS:
        rng = np.random.default_rng(0)
        keep = []
        for idx in (np.flatnonzero(y), np.flatnonzero(~y)):
            k = max(1, round(idx.size * PIXEL_AUROC_MAX_PIXELS / y.size))
            keep.append(rng.choice(idx, size=k, replace=False) if k < idx.size else idx)
        sel = np.concatenate(keep)
        y, s = y[sel], s[sel]
    return float(roc_auc_score(y, s))


def aupro(
    masks: Any,
    maps: Any,
    max_fpr: float = 0.3,
    num_thresholds: int = 200,
) -> float:
    """Normalised area under the per-region-overlap (PRO) curve up to ``max_fpr``.

    For each of ``num_thresholds`` thresholds evenly spaced between the smallest and the
    largest map value, pixels with ``map >= threshold`` are predicted anomalous. The PRO is
    the mean, over every connected anomalous region of every mask (8-connectivity), of the
    fraction of the region that is predicted; the FPR is the fraction of normal pixels that
    are predicted. The PRO-vs-FPR curve (starting at (0, 0)) is integrated with the
    trapezoid rule from FPR 0 to ``max_fpr`` (interpolating linearly at ``max_fpr``) and
    divided by ``max_fpr``, as in anomalib.

    Parameters
    ----------
    masks : sequence of array_like of bool, each (H, W)
        Ground truth, True on anomalous pixels.
    maps : sequence of array_like of float, each (H, W)
        Anomaly maps; higher = more anomalous.
    max_fpr : float, optional
        Upper FPR limit of the integration, in (0, 1].
    num_thresholds : int, optional
        Number of thresholds (at least 2).

    Returns
    -------
    float
        AUPRO in [0, 1]: 1.0 for a map that separates every region from every normal pixel.

    Raises
    ------
    ValueError
        If shapes differ, maps are not finite, there is no anomalous region or no normal
        pixel, or the parameters are out of range.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1]; got {max_fpr!r}")
    if int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be at least 2; got {num_thresholds!r}")
    mask_list, map_list = _masks_maps(masks, maps, "AUPRO")

    negatives = np.sort(np.concatenate([a[~m] for m, a in zip(mask_list, map_list,
                                                              strict=True)]))
    regions: list[np.ndarray] = []
    for m, a in zip(mask_list, map_list, strict=True):
        if m.any():
            lab = _label_regions(m, connectivity=2)
            order = np.argsort(lab.ravel(), kind="stable")
            sorted_lab = lab.ravel()[order]
            values = a.ravel()[order]
            bounds = np.searchsorted(sorted_lab, np.arange(1, lab.max() + 2))
            regions.extend(np.sort(values[bounds[i]:bounds[i + 1]])
                           for i in range(len(bounds) - 1))
    if not regions or negatives.size == 0:
        raise ValueError(f"AUPRO needs at least one anomalous region and one normal pixel; "
                         f"got {len(regions)} regions and {negatives.size} normal pixels")

    lo = min(negatives[0], min(r[0] for r in regions))
    hi = max(negatives[-1], max(r[-1] for r in regions))
    thresholds = np.linspace(hi, lo, int(num_thresholds))  # decreasing: FPR grows

    def frac_at_or_above(sorted_values: np.ndarray) -> np.ndarray:
        below = np.searchsorted(sorted_values, thresholds, side="left")
        return (sorted_values.size - below) / sorted_values.size

    fpr = frac_at_or_above(negatives)
    pro = np.mean([frac_at_or_above(r) for r in regions], axis=0)
    fpr = np.concatenate([[0.0], fpr])
    pro = np.concatenate([[0.0], pro])

    # Both are non-decreasing along decreasing thresholds; cut the curve at max_fpr.
    inside = fpr <= max_fpr
    f, p = fpr[inside], pro[inside]
    n_in = int(inside.sum())
    if n_in < fpr.size and f[-1] < max_fpr:
        f0, f1, p0, p1 = fpr[n_in - 1], fpr[n_in], pro[n_in - 1], pro[n_in]
        p_cut = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0)
        f = np.append(f, max_fpr)
        p = np.append(p, p_cut)
    area = float(np.sum((f[1:] - f[:-1]) * (p[1:] + p[:-1]) / 2.0))
    return area / max_fpr


def rates_at_threshold(
    labels: Any, scores: Any, threshold: float
) -> tuple[float, float]:
    """True- and false-positive rates when images with ``score > threshold`` are flagged.

    Parameters
    ----------
    labels : array_like of bool, shape (n,)
        True (or 1) for anomalous images.
    scores : array_like of float, shape (n,)
        Anomaly scores.
    threshold : float
        Images scoring strictly above it are flagged as anomalous.

    Returns
    -------
    tpr : float
        Fraction of anomalous images flagged (NaN if there are none).
    fpr : float
        Fraction of normal images flagged (NaN if there are none).
    """
    y, s = _labels_scores(labels, scores, "rates_at_threshold")
    flagged = s > float(threshold)
    n_pos = int(np.count_nonzero(y))
    n_neg = int(y.size) - n_pos
    tpr = float(np.count_nonzero(flagged & y)) / n_pos if n_pos else float("nan")
    fpr = float(np.count_nonzero(flagged & ~y)) / n_neg if n_neg else float("nan")
    return tpr, fpr


def binomial_interval(successes: int, n: int, confidence: float = 0.95
                      ) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval for a rate observed as ``successes`` out of ``n``.

    Parameters
    ----------
    successes, n : int
        Observed count and number of trials (``n >= 1``).
    confidence : float
        Coverage of the interval.

    Returns
    -------
    (float, float)
        Lower and upper ends, within [0, 1].
    """
    from scipy import stats

    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    tail = 0.5 * (1.0 - confidence)
    lo = float(stats.beta.ppf(tail, successes, n - successes + 1)) if successes else 0.0
    hi = float(stats.beta.ppf(1.0 - tail, successes + 1, n - successes)) if successes < n \
        else 1.0
    return lo, hi


def binomial_range(rate: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Central range of the rate observed among ``n`` trials when the true rate is ``rate``
    (binomial quantiles divided by ``n``)."""
    from scipy import stats

    tail = 0.5 * (1.0 - confidence)
    lo, hi = stats.binom.ppf([tail, 1.0 - tail], n, rate)
    return float(lo) / n, float(hi) / n


def match_instances(truth: Any, pred: Any, iou: float = 0.5) -> tuple[int, int, int]:
    """Match the objects of two label images by their intersection over union.

    Parameters
    ----------
    truth, pred : array_like
        Integer label images of the same shape (0 = background, one value per object).
    iou : float, optional
        Two objects match when their IoU is above this; with ``iou >= 0.5`` a match is
        unique on both sides.

    Returns
    -------
    tuple of int
        ``(matched, n_truth, n_pred)``: matched pairs, objects in ``truth``, in ``pred``.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {truth.shape} vs {pred.shape}")
    t_ids, t = np.unique(truth, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    t, p = t.ravel(), p.ravel()
    nt, np_ = len(t_ids), len(p_ids)
    inter = np.bincount(t * np_ + p, minlength=nt * np_).reshape(nt, np_)
    area_t, area_p = inter.sum(1), inter.sum(0)
    union = area_t[:, None] + area_p[None, :] - inter
    overlap = (inter / np.maximum(union, 1))[t_ids != 0][:, p_ids != 0]
    return int((overlap > iou).sum()), int((t_ids != 0).sum()), int((p_ids != 0).sum())


def instance_f1(matched: int, n_truth: int, n_pred: int) -> float:
    """F1 of a segmentation from :func:`match_instances`' counts (1.0 when both are empty)."""
    if n_truth + n_pred == 0:
        return 1.0
    return 2 * matched / (n_truth + n_pred)
