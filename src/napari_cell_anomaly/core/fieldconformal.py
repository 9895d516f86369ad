"""What calibration units that come in groups (the cells of a field) are worth.

The cells of one field share its stain, focus and preparation, so they are not exchangeable
with the cells of another field: a threshold taken over the pooled cells of a few fields
inherits those fields' quirks, and its false-alarm rate on new fields varies far more than
the cell count suggests. Here the fields' agreement is measured and the conformal rule given
the number of independent units it really has (the design effect of cluster sampling):

* ``rho``, the intraclass correlation of the calibration scores between fields
  (:func:`field_correlation`): 0 when fields differ no more than their cells do, 1 when a
  field's cells are as alike as copies;
* a field of ``n_k`` calibration cells counts as ``n_k / (1 + (n_k - 1) rho)`` independent
  cells, and the calibration as ``n_eff``, their sum (:func:`effective_size`: ``N`` cells when
  ``rho = 0``, the number of fields when ``rho = 1``);
* the conformal rule (:class:`.conformal.WeightedConformal`) then runs with every cell
  weighing ``n_eff / N``: the p-value of a score ``s`` is ``(1 + n_eff F(s)) / (n_eff + 1)``,
  ``F(s)`` the share of calibration cells scoring at least ``s`` (trimmed ones above every
  score), and the threshold for rate ``fpr`` the first sorted calibration score whose weight
  up to it reaches ``(n_eff + 1) (1 - fpr)``.

With ``rho = 0`` every cell weighs 1: the plain conformal rule of independent normals; as fields
differ it raises the threshold (fewer independent units pin the tail) and, for rates below
``1 / (n_eff + 1)``, leaves the sample (not certified). Fields keep their weight by cell
count: the rate promised is the share of normal cells flagged over new fields. The rate a
calibration realises is stated as ``Beta(j, n_eff + 1 - j)``, ``j`` one plus the weight of
the positions above the threshold's: the pooled rule's interval with ``n_eff`` in place of
``N``. Weighting fields equally instead (the pooled per-field distributions of Dunn,
Wasserman & Ramdas, 2022) was measured and not adopted (``docs/benchmarks.md``).
"""

from __future__ import annotations

import numpy as np

#: Below this many calibration fields :meth:`.Calibration.describe` warns: the spread
#: between fields (``rho``) is estimated from ``K - 1`` degrees of freedom, and with fewer than
#: 5 fields one unusual field can neither be seen as unusual nor averaged out.
MIN_CALIBRATION_FIELDS = 5
#: The estimate of ``rho`` the rule uses (:func:`field_correlation`'s ``confidence``): None,
#: the point estimate. Measured against lower confidence bounds (80%, 95%) on synthetic
#: fields and Chula dev fields (``benchmarks/cells_calibration.py --rho-confidence``): the
#: point estimate keeps the stated interval honest where fields differ (its upper end
#: exceeded in at most 4% of draws, against up to 7% and 12%) and stays close to the pooled
#: rule where they do not (4.1% against 4.5% flagged at a nominal 5%).
RHO_CONFIDENCE: float | None = None


def field_correlation(scores: np.ndarray, groups: np.ndarray,
                      confidence: float | None = RHO_CONFIDENCE) -> float:
    """Intraclass correlation of ``scores`` between ``groups``, in [0, 1].

    One-way ANOVA on the normal scores of the mid-ranks (robust to the scores' scale and
    tails; infinite scores rank highest). With ``confidence``, the one-sided lower confidence bound
    of the correlation (Searle's F-based limit: the between/within mean-square ratio ``F``
    divided by the ``confidence`` quantile of its null F distribution), so fields count as
    differing only by as much as chance cannot explain; None: the point estimate. Clipped to
    [0, 1]; 0 where it cannot be estimated (one group, or one unit per group).
    """
    from scipy.special import ndtri

    s = np.asarray(scores, dtype=np.float64)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n, k = s.size, int(g.max()) + 1 if s.size else 0
    if k < 2 or n <= k:
        return 0.0
    # Mid-ranks (ties share their mean rank), as normal scores.
    _, tie, counts = np.unique(s, return_inverse=True, return_counts=True)
    mid = np.cumsum(counts) - 0.5 * counts
    y = ndtri(mid[tie.ravel()] / n)
    sizes = np.bincount(g, minlength=k).astype(np.float64)
    means = np.bincount(g, weights=y, minlength=k) / sizes
    grand = float(y.mean())
    msb = float(np.sum(sizes * (means - grand) ** 2)) / (k - 1)
    msw = float(np.sum((y - means[g]) ** 2)) / (n - k)
    n0 = (n - float(np.sum(sizes ** 2)) / n) / (k - 1)
    if msw <= 0:
        return 1.0 if msb > 0 else 0.0
    f = msb / msw
    if confidence is not None:
        from scipy.special import fdtri

        f = f / float(fdtri(k - 1, n - k, confidence))
    return float(np.clip((f - 1.0) / (f + n0 - 1.0), 0.0, 1.0))


def effective_size(groups: np.ndarray, rho: float) -> float:
    """Independent units worth of ``groups``: the sum over groups of
    ``n_k / (1 + (n_k - 1) rho)`` (Kish's design effect per group)."""
    _, counts = np.unique(np.asarray(groups), return_counts=True)
    counts = counts.astype(np.float64)
    return float(np.sum(counts / (1.0 + (counts - 1.0) * float(rho))))
