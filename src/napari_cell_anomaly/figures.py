"""Static figures (matplotlib, no GUI): examples with their maps, and score histograms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def overview_figure(images: Sequence[np.ndarray], reconstructions: Sequence[np.ndarray],
                    maps: Sequence[np.ndarray], titles: Sequence[str],
                    normal_scores: np.ndarray, anomalous_scores: np.ndarray,
                    threshold: float, path: str | Path, *,
                    map_range: tuple[float, float] | None = None) -> Path:
    """Originals | reconstructions | heatmaps for a few examples, and a score histogram.

    Parameters
    ----------
    images, reconstructions : sequence of np.ndarray
        ``(H, W, C)`` float images in [0, 1] (C = 1 or 3).
    maps : sequence of np.ndarray
        ``(H, W)`` error maps, shown with the ``inferno`` colormap and a shared range.
    titles : sequence of str
        One caption per example.
    normal_scores, anomalous_scores : np.ndarray
        Scores of the two groups for the histogram.
    threshold : float
        The calibrated score threshold (vertical line).
    path : str or Path
        PNG file to write.
    map_range : (float, float), optional
        Heatmap colour limits; default the 99th percentile of all maps.

    Returns
    -------
    Path
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    vmin, vmax = map_range or (0.0, float(np.percentile(np.concatenate(
        [m.ravel() for m in maps]), 99.5)) or 1.0)
    fig = plt.figure(figsize=(2.0 * n + 5, 6.6), constrained_layout=True)
    grid = fig.add_gridspec(3, n + 3)
    rows = (("original", images), ("reconstruction", reconstructions), ("error map", maps))
    for r, (label, arrays) in enumerate(rows):
        for c, arr in enumerate(arrays):
            ax = fig.add_subplot(grid[r, c])
            if r == 2:
                ax.imshow(arr, cmap="inferno", vmin=vmin, vmax=vmax)
            else:
                a = np.clip(arr, 0, 1)
                ax.imshow(a[..., 0] if a.shape[-1] == 1 else a, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(label)
    ax = fig.add_subplot(grid[:, n:])
    allv = np.concatenate([normal_scores, anomalous_scores])
    bins = np.linspace(float(np.min(allv)), float(np.max(allv)), 40)
    ax.hist(normal_scores, bins=bins, alpha=0.6, label="normal", color="tab:blue")
    ax.hist(anomalous_scores, bins=bins, alpha=0.6, label="anomalous", color="tab:red")
    ax.axvline(threshold, color="k", ls="--", label="calibrated threshold")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("images")
    ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
