"""napari sample data: synthetic fields from :mod:`.core.sample` and :mod:`.core.sample_fluo`.

The two samples are made for the plugin's quick-start workflow: train on "Synthetic normal
cells" (a field of healthy red blood cells, trained on random patches), then score "Synthetic
cells with anomalies" (a field from the same generator in which some cells carry parasite-like
stains) and compare the anomaly map with the ground-truth mask. Both fields have the same size
so the cells look alike; they use different seeds, so the scored field was never seen in
training.

The two fluorescence samples follow the same pattern with stained nuclei: 16-bit, two
channels (DNA and cytoplasm) opened as napari opens a multi-channel file with
``channel_axis``: one layer per channel with its own colormap, the first translucent and the
second additive (so the plugin's widgets take the two as the channels of one image), plus the
ground truth as Labels layers (the nuclei, and the planted anomalies by kind).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .core.sample import make_field
from .core.sample_fluo import ANOMALY_KINDS, DARK_OFFSET, FluoField, make_fluo_field

__all__ = ["anomalous_cells", "anomalous_nuclei", "normal_cells", "normal_nuclei"]

FIELD_SHAPE = (512, 512)
N_CELLS = 60
NORMAL_SEED = 1
ANOMALOUS_SEED = 2
ANOMALY_FRACTION = 0.25

FLUO_SHAPE = (512, 512)
N_NUCLEI = 60
NUCLEI_ANOMALY_FRACTION = 0.2
#: Colormaps of the fluorescence channels, in channel order: napari's own choice for a
#: two-channel file opened with ``channel_axis``.
CHANNEL_COLORMAPS = ("magenta", "green")

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


def _fluo_layers(field: FluoField, prefix: str) -> list[LayerData]:
    """One Image layer per channel (blending as napari's ``channel_axis`` sets it: the first
    translucent, the others additive), then the nuclei as a (hidden) Labels layer."""
    layers: list[LayerData] = []
    for i, (channel, cmap) in enumerate(zip(field.channel_names, CHANNEL_COLORMAPS,
                                            strict=False)):
        data = field.channel(i)
        # the same display range with or without anomalies: from the normal nuclei only
        high = float(np.percentile(data[~field.mask], 99.9))
        layers.append((data, {"name": f"{prefix}: {channel}", "colormap": cmap,
                              "blending": "translucent_no_depth" if i == 0 else "additive",
                              "contrast_limits": [float(DARK_OFFSET), high]}, "image"))
    layers.append((field.labels, {"name": f"{prefix}: nuclei (ground truth)", "opacity": 0.4,
                                  "visible": False}, "labels"))
    return layers


def normal_nuclei() -> list[LayerData]:
    """A 512 x 512 16-bit two-channel fluorescence field of about 60 normal nuclei.

    Returns the DNA and cytoplasm channels (train on these) and the nuclei's instance labels
    (hidden; usable as the cells of a cells-mode model).
    """
    field = make_fluo_field(FLUO_SHAPE, n_nuclei=N_NUCLEI, n_channels=2, anomaly_fraction=0.0,
                            seed=NORMAL_SEED)
    return _fluo_layers(field, "nuclei")


def anomalous_nuclei() -> list[LayerData]:
    """A 512 x 512 16-bit two-channel fluorescence field in which a fifth of the nuclei are
    abnormal: micronuclei, fragmented, abnormally bright or abnormally large nuclei.

    Returns the two channels, the nuclei's instance labels (hidden) and a Labels layer of the
    planted anomaly pixels whose value is the anomaly kind (its ``features`` table names
    each kind).
    """
    field = make_fluo_field(FLUO_SHAPE, n_nuclei=N_NUCLEI, n_channels=2,
                            anomaly_fraction=NUCLEI_ANOMALY_FRACTION, seed=ANOMALOUS_SEED)
    features = {"index": np.arange(len(ANOMALY_KINDS) + 1),
                "anomaly": np.array(["none", *ANOMALY_KINDS])}
    return [*_fluo_layers(field, "nuclei with anomalies"),
            (field.kind_map(), {"name": "planted nuclear anomalies (ground truth)",
                                "opacity": 0.6, "features": features}, "labels")]
