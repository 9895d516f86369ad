"""napari sample data: synthetic thin-smear fields of view from :mod:`.core.sample`.

The two samples are made for the plugin's quick-start workflow: train on "Synthetic normal
cells" (a field of healthy red blood cells, trained on random patches), then score "Synthetic
cells with anomalies" (a field from the same generator in which some cells carry parasite-like
stains) and compare the anomaly map with the ground-truth mask. Both fields have the same size
so the cells look alike; they use different seeds, so the scored field was never seen in
training.
"""

from __future__ import annotations

from typing import Any

from .core.sample import make_field

__all__ = ["anomalous_cells", "normal_cells"]

FIELD_SHAPE = (512, 512)
N_CELLS = 60
NORMAL_SEED = 1
ANOMALOUS_SEED = 2
ANOMALY_FRACTION = 0.25

LayerData = tuple[Any, dict[str, Any], str]


def normal_cells() -> list[LayerData]:
    """A 512 x 512 RGB field of about 60 normal red blood cells (train on this)."""
    image, _ = make_field(FIELD_SHAPE, n_cells=N_CELLS, anomaly_fraction=0.0, seed=NORMAL_SEED)
    return [(image, {"name": "normal cells", "rgb": True}, "image")]


def anomalous_cells() -> list[LayerData]:
    """A 512 x 512 RGB field in which a quarter of the cells carry parasite-like stains.

    Returns the image and a Labels layer (half transparent) with the planted stain pixels,
    the ground truth to compare the anomaly map with.
    """
    image, mask = make_field(FIELD_SHAPE, n_cells=N_CELLS, anomaly_fraction=ANOMALY_FRACTION,
                             seed=ANOMALOUS_SEED)
    return [
        (image, {"name": "cells with anomalies", "rgb": True}, "image"),
        (mask.astype("uint8"), {"name": "planted anomalies (ground truth)",
                                "opacity": 0.5}, "labels"),
    ]
