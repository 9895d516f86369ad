"""Channel layouts, per-channel ranges and bit depth in core.preprocessing.Preprocessing."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from napari_cell_anomaly.core.images import ImageError
from napari_cell_anomaly.core.preprocessing import CLIPPED_WARN_FRACTION, Preprocessing


def _fluo(channels: int, dtype=np.uint16, seed: int = 0, scale: float = 1000.0,
          shape=(32, 40)) -> np.ndarray:
    """Channels of very different brightness: channel k spans about scale * (k + 1)."""
    rng = np.random.default_rng(seed)
    out = np.stack([rng.gamma(2.0, scale * (k + 1) / 4, size=shape) for k in range(channels)],
                   axis=-1)
    if np.dtype(dtype).kind in "iu":
        out = np.clip(out, 0, np.iinfo(dtype).max)
    return out.astype(dtype)


@pytest.mark.parametrize("channels", [2, 5])
def test_fit_multi_gives_one_range_per_channel(channels):
    images = [_fluo(channels, seed=s) for s in range(3)]
    prep = Preprocessing.fit(images)
    assert prep.channels == "multi" and prep.n_channels == channels
    assert prep.dtype == "uint16"
    pooled = np.concatenate([im.reshape(-1, channels) for im in images])
    for k in range(channels):
        low, high = np.percentile(pooled[:, k].astype(np.float32), [0.5, 99.5])
        assert prep.low[k] == pytest.approx(low) and prep.high[k] == pytest.approx(high)
    assert prep.high[-1] > 2 * prep.high[0]  # per channel, not pooled
    x = prep(images[0])
    assert x.shape == (32, 40, channels) and x.min() >= 0 and x.max() <= 1
    # every channel uses its own range: each reaches close to 1 somewhere
    assert np.all(x.reshape(-1, channels).max(axis=0) > 0.9)


def test_fit_uint8_multi_keeps_full_range_and_names():
    images = [_fluo(2, np.uint8, scale=100, seed=s) for s in range(2)]
    prep = Preprocessing.fit(images, names=["DAPI", "GFP"])
    assert prep == Preprocessing("multi", (0.0, 0.0), (255.0, 255.0), ("DAPI", "GFP"), "uint8")


def test_three_uint16_channels_are_separate_channels_not_rgb():
    prep = Preprocessing.fit([_fluo(3)])
    assert prep.channels == "multi" and prep.n_channels == 3
    assert Preprocessing.fit([_fluo(3)], channels="rgb").channels == "rgb"


def test_multi_model_refuses_other_channel_counts_in_one_line():
    prep = Preprocessing.fit([_fluo(2)], names=["DAPI", "GFP"])
    rgb = np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)
    with pytest.raises(ImageError) as info:
        prep(rgb, name="cells.png")
    assert str(info.value) == ("image 'cells.png': model expects 2 channels (DAPI, GFP); got "
                               "an RGB or 3-channel image")
    with pytest.raises(ImageError, match=r"expects 2 channels.*grayscale"):
        prep(_fluo(1)[..., 0])


def test_gray_model_converts_rgb_and_logs_it(caplog):
    prep = Preprocessing("gray", 0.0, 255.0)
    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    with caplog.at_level(logging.INFO, logger="napari_cell_anomaly.core.preprocessing"):
        assert prep(rgb).shape == (16, 16, 1)
    assert "converted to luminosity" in caplog.text
    with pytest.raises(ImageError, match=r"expects grayscale images.*2-channel"):
        prep(_fluo(2))


def test_old_model_dicts_load_unchanged_and_new_ones_round_trip():
    old = {"channels": "rgb", "low": 0.0, "high": 255.0}
    prep = Preprocessing.from_dict(old)
    assert prep.to_dict() == old  # nothing added to what old files hold
    new = Preprocessing.fit([_fluo(3, seed=1)], names=["a", "b", "c"])
    assert Preprocessing.from_dict(new.to_dict()) == new
    with pytest.raises(ValueError, match="unknown colour"):
        Preprocessing.from_dict({**old, "colour": 1})


def test_multi_needs_per_channel_bounds():
    with pytest.raises(ValueError, match="one value per channel"):
        Preprocessing("multi", 0.0, 1.0)
    with pytest.raises(ValueError, match="high must be greater"):
        Preprocessing("multi", (0.0, 5.0), (1.0, 2.0))
    with pytest.raises(ValueError, match="2 channel names for 3"):
        Preprocessing("multi", (0.0,) * 3, (1.0,) * 3, names=("a", "b"))


def test_uint16_image_and_its_float32_copy_preprocess_identically():
    prep = Preprocessing.fit([_fluo(2, seed=s) for s in range(2)])
    img = _fluo(2, seed=5)
    a, clip_a = prep.transform(img)
    b, clip_b = prep.transform(img.astype(np.float32))
    np.testing.assert_array_equal(a, b)
    assert clip_a == clip_b


def test_clipped_fraction_and_range_warning_for_16_bit_to_8_bit_model():
    prep = Preprocessing.fit([_fluo(1, np.uint8, scale=100, seed=s)[..., 0] for s in range(2)])
    assert prep.dtype == "uint8" and (prep.low, prep.high) == (0.0, 255.0)
    _, clipped = prep.transform(_fluo(1, np.uint8, scale=100, seed=9)[..., 0])
    assert clipped == 0.0
    assert prep.range_warning(clipped, np.uint8) is None
    sixteen = _fluo(1, np.uint16, scale=20000, seed=9)[..., 0]
    _, clipped = prep.transform(sixteen)
    assert clipped > 0.5
    msg = prep.range_warning(clipped, sixteen.dtype, name="a.tif")
    assert msg is not None and "\n" not in msg
    assert "outside the model's training range" in msg and "uint16" in msg and "uint8" in msg


def test_8_bit_image_to_16_bit_model_warns_by_dtype():
    prep = Preprocessing.fit([_fluo(1, seed=s)[..., 0] for s in range(2)])
    eight = _fluo(1, np.uint8, scale=100, seed=3)[..., 0]
    _, clipped = prep.transform(eight)
    msg = prep.range_warning(clipped, eight.dtype)
    assert msg is not None and "it is uint8 but the model was trained on uint16" in msg
    # a float copy of the model's own kind of image is not a bit-depth change
    assert prep.range_warning(0.0, np.float32) is None
    assert prep.range_warning(CLIPPED_WARN_FRACTION + 0.01, None) is not None


@pytest.mark.parametrize("shape", [(37, 53, 3), (2, 19, 23, 2), (41, 29, 4)])
def test_per_channel_scaling_is_the_plain_formula_bit_for_bit(shape) -> None:
    """The row-wise fast path of Preprocessing.scale gives exactly (x - low) / (high - low)
    per channel, for contiguous and non-contiguous arrays alike."""

    rng = np.random.default_rng(len(shape))
    c = shape[-1]
    low = tuple(float(v) for v in rng.uniform(0, 50, c))
    high = tuple(lo + float(v) for lo, v in zip(low, rng.uniform(10, 200, c), strict=True))
    prep = Preprocessing.fit([rng.uniform(0, 255, shape[-3:]).astype(np.float32)],
                             channels="multi")
    prep = dataclasses.replace(prep, low=low, high=high)
    x = rng.uniform(-10, 300, shape).astype(np.float32)
    span = (np.asarray(high, np.float64) - np.asarray(low, np.float64)).astype(np.float32)
    expected = x - np.asarray(low, np.float32)
    expected /= span
    np.testing.assert_array_equal(prep.scale(x), expected)
    flipped = x[..., ::-1, :]  # not C-contiguous: the plain path
    np.testing.assert_array_equal(prep.scale(flipped), expected[..., ::-1, :])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_transform_never_changes_the_callers_array(dtype) -> None:
    """transform scales its own float32 copy in place, never the caller's array (a float32
    input is the case where a copy is not made by the conversion)."""
    rng = np.random.default_rng(3)
    raw = (rng.uniform(0, 200, (24, 31, 3))).astype(dtype)
    prep = Preprocessing.fit([raw], channels="multi")
    before = raw.copy()
    x, _ = prep.transform(raw)
    np.testing.assert_array_equal(raw, before)
    expected = prep.scale(raw.astype(np.float32))
    np.testing.assert_array_equal(x, np.clip(expected, 0.0, 1.0))
