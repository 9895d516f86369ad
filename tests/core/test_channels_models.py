"""Models on multi-channel fluorescence: network input = C channels, the error choice, bit
depth at scoring, old model files, per-cell scoring and the built-in segmentation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cell_anomaly.core.detector import AnomalyDetector, default_model_path
from napari_cell_anomaly.core.images import ImageError
from napari_cell_anomaly.core.sample import make_cells
from napari_cell_anomaly.core.scoring import ScoringConfig
from napari_cell_anomaly.core.segmentation import image_kind, segment_cells, segmentation_image
from napari_cell_anomaly.core.training import TrainConfig, run_training


def _nuclei_field(seed: int, channels: int = 2, side: int = 128, n: int = 12) -> np.ndarray:
    """(side, side, channels) uint16: round nuclei; channel k is (k + 1) x dimmer than
    channel 0 plus an offset, with noise (so the channels' ranges differ)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    nuc = np.zeros((side, side))
    for _ in range(n):
        cy, cx = rng.uniform(10, side - 10, 2)
        nuc = np.maximum(nuc, ((yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(20, 40)) * 1.0)
    chans = [nuc * 4000 / (k + 1) + 150 * (k + 1) + rng.normal(0, 25, nuc.shape)
             for k in range(channels)]
    return np.clip(np.stack(chans, axis=-1), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def five_channel_model() -> AnomalyDetector:
    fields = [_nuclei_field(s, channels=5, side=64, n=4) for s in range(10)]
    cfg = TrainConfig(epochs=1, size=32, mode="whole", batch_size=8, max_steps=4)
    return run_training(fields, cfg)


def test_five_channels_are_the_network_input_and_the_error_is_not_lab(five_channel_model):
    det = five_channel_model
    assert det.preprocessing.channels == "multi" and det.preprocessing.n_channels == 5
    assert det.network.config.in_channels == 5
    assert det.scoring.error == "mse"
    assert det.provenance["error_choice"] == "mse chosen for 5-channel images"
    assert len(det.preprocessing.low) == 5
    assert det.preprocessing.high[0] > 2 * det.preprocessing.high[4]  # per-channel ranges
    result = det.score(_nuclei_field(40, channels=5, side=64, n=4))
    assert np.isfinite(result.score) and result.reconstruction.shape == (64, 64, 5)


def test_model_file_round_trip_keeps_channels_and_scores(five_channel_model, tmp_path):
    path = tmp_path / "five.safetensors"
    five_channel_model.save(path)
    loaded = AnomalyDetector.load(path, device="cpu")
    assert loaded.preprocessing == five_channel_model.preprocessing
    img = _nuclei_field(41, channels=5, side=64, n=4)
    assert loaded.score(img).score == five_channel_model.score(img).score
    assert "5 channels" in loaded.summary()


def test_16_bit_image_and_its_float32_copy_score_the_same(five_channel_model):
    img = _nuclei_field(42, channels=5, side=64, n=4)
    a = five_channel_model.score(img)
    b = five_channel_model.score(img.astype(np.float32))
    assert a.score == b.score and a.clipped_fraction == b.clipped_fraction
    np.testing.assert_array_equal(a.error_map, b.error_map)
    assert a.range_warning is None and b.range_warning is None


def test_channels_first_array_needs_channel_axis(five_channel_model):
    img = _nuclei_field(43, channels=5, side=64, n=4)
    chw = np.moveaxis(img, -1, 0)
    with pytest.raises(ImageError, match="channel_axis=0"):
        five_channel_model.score(chw)
    assert five_channel_model.score(chw, channel_axis=0).score == \
        five_channel_model.score(img).score


def test_wrong_channel_counts_are_one_line(five_channel_model):
    with pytest.raises(ImageError, match=r"expects 5 channels; got a 2-channel image"):
        five_channel_model.score(_nuclei_field(1, channels=2, side=64))
    rgb = make_cells(1, size=64, seed=0).images[0]
    with pytest.raises(ImageError, match=r"expects 5 channels; got an RGB or 3-channel image"):
        five_channel_model.score(rgb)


def test_8_bit_model_warns_on_16_bit_image(caplog):
    cells = make_cells(12, size=32, seed=1).images
    det = run_training(cells, TrainConfig(epochs=1, size=32, mode="whole", max_steps=2))
    assert det.scoring.error == "lab"  # RGB brightfield keeps L*a*b*
    assert det.provenance["error_choice"] == "lab chosen for RGB brightfield images"
    sixteen = cells[0].astype(np.uint16) * 257
    with caplog.at_level("WARNING", logger="napari_cell_anomaly.core.detector"):
        result = det.score(sixteen)
    assert result.clipped_fraction > 0.3  # every non-black pixel is clipped
    assert result.range_warning and "uint16 but the model was trained on uint8" in \
        result.range_warning
    assert result.range_warning in caplog.text
    assert det.score(cells[1]).range_warning is None


def test_rgb_fluorescence_composite_gets_the_channel_error():
    from napari_cell_anomaly.core.errorchoice import choose_error
    from napari_cell_anomaly.core.preprocessing import Preprocessing

    composites = [np.clip(_nuclei_field(s, channels=3) / 20, 0, 255).astype(np.uint8)
                  for s in range(3)]
    prep = Preprocessing.fit(composites)
    assert prep.channels == "rgb"
    assert choose_error(prep, composites) == ("mse", "RGB fluorescence images (mostly dark)")
    cells = make_cells(4, size=32, seed=2).images
    assert choose_error(Preprocessing.fit(cells), cells) == ("lab", "RGB brightfield images")


def test_explicit_error_overrides_the_choice():
    cells = make_cells(12, size=32, seed=1).images
    cfg = TrainConfig(epochs=1, size=32, mode="whole", max_steps=2,
                      scoring=ScoringConfig(error="ssim"))
    det = run_training(cells, cfg)
    assert det.scoring.error == "ssim" and det.provenance["error_choice"] == "set by the caller"
    with pytest.raises(ValueError, match="concrete error kind"):
        AnomalyDetector(det.network, det.preprocessing, det.mode, det.size,
                        ScoringConfig(), det.density, det.calibration)


@pytest.mark.skipif(default_model_path() is None, reason="no shipped default model")
def test_shipped_model_still_loads_as_rgb_with_lab():
    det = AnomalyDetector.load(default_model_path(), device="cpu")
    assert det.preprocessing.channels == "rgb" and det.preprocessing.dtype is None
    assert det.scoring.error == "lab"


def test_segmentation_of_two_and_five_channel_fluorescence():
    for channels in (2, 5):
        field = _nuclei_field(7, channels=channels)
        combined = segmentation_image(field)
        assert combined.shape == (128, 128, 1) and 0 <= combined.min() and combined.max() <= 1
        assert image_kind(field) == "fluorescence"
        labels = segment_cells(field)
        assert 6 <= labels.max() <= 16
        one = segment_cells(field, channel=channels - 1)
        assert one.max() >= 6
    with pytest.raises(ImageError, match="channel 5 does not exist"):
        segment_cells(_nuclei_field(7, channels=2), channel=5)


def test_cells_mode_on_two_channel_fluorescence_fields():
    fields = [_nuclei_field(s) for s in range(4)]
    cfg = TrainConfig(epochs=1, mode="cells", batch_size=16, max_steps=3)
    det = run_training(fields, cfg, labels=[None] * len(fields))
    assert det.mode == "cells" and det.network.config.in_channels == 2
    assert det.scoring.error == "mse"
    cells = det.score_cells(_nuclei_field(20))
    assert len(cells) >= 6 and np.all(np.isfinite(cells.table["score"]))
    assert cells.error_map.shape == (128, 128)
    result, _ = det.score_field(_nuclei_field(21))
    assert result.clipped_fraction < 0.05
