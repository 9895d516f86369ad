"""The fluorescence sample data, opened through napari's sample menu in a real viewer."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels

from conftest import PLUGIN
from napari_cell_anomaly.core.sample_fluo import ANOMALY_KINDS, DARK_OFFSET
from napari_cell_anomaly.widgets._channel_layers import group_channel_layers


def test_fluorescence_samples_open_as_channel_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "normal_nuclei")
    viewer.open_sample(PLUGIN, "anomalous_nuclei")
    names = [layer.name for layer in viewer.layers]
    assert names == [
        "nuclei: DNA", "nuclei: cytoplasm", "nuclei: nuclei (ground truth)",
        "nuclei with anomalies: DNA", "nuclei with anomalies: cytoplasm",
        "nuclei with anomalies: nuclei (ground truth)",
        "planted nuclear anomalies (ground truth)",
    ]
    channels = [viewer.layers[n] for n in names if n.endswith(("DNA", "cytoplasm"))]
    for layer in channels:
        # one single-channel 16-bit layer per channel, as napari opens a file with channel_axis
        assert isinstance(layer, Image) and not layer.rgb
        assert layer.data.dtype == np.uint16 and layer.data.shape == (512, 512)
        assert layer.contrast_limits[0] == DARK_OFFSET
        assert layer.contrast_limits[1] > DARK_OFFSET + 50
    assert [ly.colormap.name for ly in channels] == ["magenta", "green"] * 2
    assert [ly.blending for ly in channels] == ["translucent_no_depth", "additive"] * 2
    # the plugin's widgets take each sample's two channel layers as one two-channel image
    images = group_channel_layers([ly for ly in viewer.layers if isinstance(ly, Image)])
    assert [img.channel_names for img in images] == [
        ("nuclei: DNA", "nuclei: cytoplasm"),
        ("nuclei with anomalies: DNA", "nuclei with anomalies: cytoplasm")]
    assert images[1].data.shape == (512, 512, 2) and images[1].data.dtype == np.uint16
    # the two fields differ (other seeds), the normal one has no planted anomalies
    assert not np.array_equal(channels[0].data, channels[2].data)

    nuclei = viewer.layers["nuclei with anomalies: nuclei (ground truth)"]
    truth = viewer.layers["planted nuclear anomalies (ground truth)"]
    assert isinstance(nuclei, Labels) and isinstance(truth, Labels)
    assert not nuclei.visible and truth.visible
    assert truth.data.shape == nuclei.data.shape == (512, 512)
    codes = np.unique(truth.data)
    assert codes.tolist() == list(range(len(ANOMALY_KINDS) + 1))  # every kind is planted
    assert 0 < np.count_nonzero(truth.data) < 0.05 * truth.data.size
    # each anomaly pixel lies on a nucleus; the features table names the kinds
    assert np.all(nuclei.data[truth.data > 0] > 0)
    table = truth.features.set_index("index")["anomaly"]
    assert [table[c] for c in codes] == ["none", *ANOMALY_KINDS]
    # in the planted field, bright nuclei are brighter than the normal ones
    dna = viewer.layers["nuclei with anomalies: DNA"].data.astype(float)
    bright = truth.data == ANOMALY_KINDS.index("bright") + 1
    normal = (nuclei.data > 0) & (truth.data == 0)
    assert np.median(dna[bright]) > 2 * np.median(dna[normal])
