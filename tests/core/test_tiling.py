"""Tests for ``napari_cell_anomaly.core.tiling``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_cell_anomaly.core.tiling import PredictionStopped, predict_tiled


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class _Recorder:
    """Wrap a function and record the shape and memory format of every batch it receives."""

    def __init__(self, fn):
        self.fn = fn
        self.shapes: list[tuple[int, ...]] = []
        self.channels_last: list[bool] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.fn(x)


class _SmallNet(nn.Module):
    """Fully convolutional net with one stride-2 down-sampling and a nearest up-sampling.

    Receptive field, reasoned layer by layer (radius in input pixels, ``j`` = jump):

    1. conv 3x3, stride 1: radius 1, j = 1.
    2. conv 3x3, stride 2 (padding 1): half-res pixel ``i`` reads inputs ``2i-1 .. 2i+1``,
       so radius 2 around ``2i``; j = 2.
    3. conv 3x3, stride 1 at half resolution: reads half-res ``i-1 .. i+1``: radius 2 + 1*2 = 4
       around ``2i``, i.e. inputs ``2i-4 .. 2i+4``.
    4. nearest up-sampling: full-res ``q`` copies half-res ``q // 2``, so ``q`` depends on
       ``2(q//2)-4 .. 2(q//2)+4``, within ``q-5 .. q+4``.
    5. conv 3x3, stride 1 at full resolution: output ``p`` reads ``q = p-1 .. p+1``, hence inputs
       ``2((p-1)//2)-4 >= p-6`` to ``2((p+1)//2)+4 <= p+5``.

    The receptive field is therefore ``p-6 .. p+5``: radius 6. Whenever it lies inside a tile,
    no zero padding of any layer is involved either (every intermediate position touched is
    computed from inputs inside the tile), so a margin >= 6 makes tiling exact. The net needs
    sides that are multiples of 2 and tile origins on the even grid (``align`` >= 2).
    """

    receptive_radius = 6

    def __init__(self, c_in: int = 3, c_out: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(8, c_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _small_net(c_in: int = 3, c_out: int = 2) -> nn.Module:
    torch.manual_seed(0)
    net = _SmallNet(c_in, c_out).eval()
    # Double precision inside the net keeps the comparison about tiling, not float summation
    # order; the tiler still hands float32 tensors in and gets float32 results out.
    net.double()
    return net


def _as_fn(net: nn.Module):
    def fn(x: torch.Tensor) -> torch.Tensor:
        return net(x.double()).float()

    return fn


def _untiled_reference(net: nn.Module, image: np.ndarray, align: int) -> np.ndarray:
    """Run ``net`` once on the whole image, padded by reflection to a multiple of ``align``."""
    _, h, w = image.shape
    padded = np.pad(image, ((0, 0), (0, -h % align), (0, -w % align)), mode="reflect")
    with torch.inference_mode():
        out = net(torch.from_numpy(padded)[None].double())[0].float().numpy()
    return out[:, :h, :w]


@pytest.mark.parametrize("shape", [(1, 37, 1001), (3, 37, 1001), (2, 1001, 37), (1, 129, 127)])
def test_identity_returns_image_exactly(shape):
    rng = np.random.default_rng(0)
    image = rng.standard_normal(shape).astype(np.float32)
    rec = _Recorder(_identity)
    out = predict_tiled(rec, image, tile=64, margin=8, align=8, batch_size=3)
    assert out.dtype == np.float32
    assert out.shape == shape
    np.testing.assert_array_equal(out, image)
    assert len(rec.shapes) > 1  # the tiled path was really taken
    for _n, c, h, w in rec.shapes:
        assert c == shape[0]
        assert h % 8 == 0 and w % 8 == 0
        assert h <= 64 and w <= 64


def test_identity_untiled_path_calls_fn_once():
    image = np.arange(3 * 37 * 45, dtype=np.float32).reshape(3, 37, 45)
    rec = _Recorder(_identity)
    out = predict_tiled(rec, image, tile=512, margin=32, align=8)
    np.testing.assert_array_equal(out, image)
    assert rec.shapes == [(1, 3, 40, 48)]


def test_fn_sees_reflection_padded_image():
    image = np.arange(2 * 13 * 10, dtype=np.float32).reshape(2, 13, 10)
    seen = []

    def fn(x):
        seen.append(x.numpy().copy())
        return x

    predict_tiled(fn, image, tile=64, margin=8, align=8)
    expected = np.pad(image, ((0, 0), (0, 3), (0, 6)), mode="reflect")
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0][0], expected)


@pytest.mark.parametrize(
    ("shape", "tile", "margin", "align"),
    [
        ((3, 150, 230), 64, 8, 8),  # many tiles, both axes tiled
        ((3, 101, 77), 32, 8, 8),  # odd sizes, alignment padding in both axes
        ((1, 61, 300), 64, 16, 16),  # one axis fits in a tile, the other does not
        ((3, 90, 90), 24, 8, 2),  # small tiles, tight margin: 8 >= receptive radius 6
    ],
)
def test_small_net_tiled_equals_untiled(shape, tile, margin, align):
    net = _small_net(c_in=shape[0], c_out=2)
    assert margin >= _SmallNet.receptive_radius
    rng = np.random.default_rng(1)
    image = rng.random(shape, dtype=np.float32)
    rec = _Recorder(_as_fn(net))
    tiled = predict_tiled(rec, image, tile=tile, margin=margin, align=align, batch_size=2)
    assert len(rec.shapes) > 1
    untiled_fn = predict_tiled(_as_fn(net), image, tile=1024, margin=margin, align=align)
    reference = _untiled_reference(net, image, align)
    assert tiled.shape == (2, *shape[1:])
    np.testing.assert_allclose(untiled_fn, reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(tiled, untiled_fn, rtol=0, atol=1e-5)


def test_small_net_float32_tiled_close_to_untiled():
    # The same net in plain float32, as a model would normally run.
    torch.manual_seed(0)
    net = _SmallNet(3, 4).eval()
    image = np.random.default_rng(2).random((3, 140, 100), dtype=np.float32)
    tiled = predict_tiled(net, image, tile=48, margin=8, align=8)
    untiled = predict_tiled(net, image, tile=256, margin=8, align=8)
    assert tiled.shape == (4, 140, 100)
    np.testing.assert_allclose(tiled, untiled, rtol=0, atol=1e-5)


def test_margin_smaller_than_receptive_field_shows_seams():
    # Sanity check of the test above: without a margin the tile borders do change the result.
    net = _small_net(3, 2)
    image = np.random.default_rng(3).random((3, 80, 80), dtype=np.float32)
    tiled = predict_tiled(_as_fn(net), image, tile=16, margin=0, align=2)
    untiled = predict_tiled(_as_fn(net), image, tile=128, margin=0, align=2)
    assert np.abs(tiled - untiled).max() > 1e-3


def test_output_channels_differ_from_input():
    image = np.random.default_rng(4).random((3, 70, 90), dtype=np.float32)

    def fn(x):
        return torch.cat([x.sum(dim=1, keepdim=True), 2 * x[:, :1], -x[:, 2:], x[:, 1:2]], dim=1)

    out = predict_tiled(fn, image, tile=32, margin=8, align=8)
    expected = np.concatenate([image.sum(0, keepdims=True), 2 * image[:1], -image[2:], image[1:2]])
    assert out.shape == (4, 70, 90)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 7), (2, 5, 3), (1, 4, 4), (1, 8, 1)])
def test_sizes_smaller_than_align(shape):
    image = np.random.default_rng(5).random(shape, dtype=np.float32)
    rec = _Recorder(_identity)
    out = predict_tiled(rec, image, tile=64, margin=8, align=8)
    np.testing.assert_array_equal(out, image)
    assert rec.shapes == [(1, shape[0], 8, 8)]


def test_small_image_with_net():
    net = _small_net(1, 1)
    image = np.random.default_rng(6).random((1, 3, 5), dtype=np.float32)
    out = predict_tiled(_as_fn(net), image, tile=64, margin=8, align=8)
    assert out.shape == (1, 3, 5)
    assert np.isfinite(out).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile": 100, "align": 8}, "tile .*multiple of align"),
        ({"margin": 12, "align": 8}, "margin .*multiple of align"),
        ({"tile": 64, "margin": 32}, "larger than 2 \\* margin"),
        ({"tile": 64, "margin": 40}, "larger than 2 \\* margin"),
        ({"tile": 0}, "tile must be >= 1"),
        ({"margin": -8}, "margin must be >= 0"),
        ({"align": 0}, "align must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"tile": 64.0}, "tile must be an integer"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    image = np.zeros((1, 10, 10), np.float32)
    with pytest.raises(ValueError, match=match):
        predict_tiled(_identity, image, **kwargs)


@pytest.mark.parametrize("shape", [(10, 10), (1, 1, 10, 10), (1, 0, 10), (0, 5, 5)])
def test_bad_image_shape_raises(shape):
    with pytest.raises(ValueError, match="image must be a \\(C, H, W\\) array"):
        predict_tiled(_identity, np.zeros(shape, np.float32))


def test_fn_with_wrong_output_shape_raises():
    image = np.zeros((1, 100, 100), np.float32)
    with pytest.raises(ValueError, match="fn must map"):
        predict_tiled(lambda x: x[:, :, ::2, ::2], image, tile=32, margin=8, align=8)
    with pytest.raises(ValueError, match="fn must map"):
        predict_tiled(lambda x: x.numpy(), image, tile=32, margin=8, align=8)


def test_progress_reports_every_batch_with_the_right_total():
    # Padded side 104; tile 32, margin 8 -> stride 16, origins 0, 16, 32, 48, 64 and the last
    # tile at 104 - 32 = 72: 6 tiles per axis, 36 in all.
    image = np.zeros((1, 100, 100), np.float32)
    calls = []
    rec = _Recorder(_identity)
    predict_tiled(
        rec,
        image,
        tile=32,
        margin=8,
        align=8,
        batch_size=5,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(5, 36), (10, 36), (15, 36), (20, 36), (25, 36), (30, 36), (35, 36), (36, 36)]
    assert sum(s[0] for s in rec.shapes) == 36


def test_progress_untiled_path():
    calls = []
    predict_tiled(
        _identity,
        np.zeros((1, 20, 20), np.float32),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 1)]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_fn_never_gets_more_than_batch_size_tiles(batch_size):
    image = np.random.default_rng(7).random((2, 200, 150), dtype=np.float32)
    rec = _Recorder(_identity)
    out = predict_tiled(rec, image, tile=48, margin=8, align=8, batch_size=batch_size)
    np.testing.assert_array_equal(out, image)
    assert max(s[0] for s in rec.shapes) <= batch_size
    assert all(s[0] == batch_size for s in rec.shapes[:-1])
    assert all(rec.channels_last)


def test_accepts_non_float32_input():
    image = np.arange(2 * 9 * 11).reshape(2, 9, 11)  # int64
    out = predict_tiled(_identity, image, tile=16, margin=0, align=8)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image.astype(np.float32))


def test_stop_ends_the_prediction_between_tile_batches():
    # 36 tiles in batches of 5 (see above); stop turns True after the second batch ran.
    image = np.zeros((1, 100, 100), np.float32)
    rec = _Recorder(_identity)
    checks = []

    def stop() -> bool:
        checks.append(len(rec.shapes))
        return len(rec.shapes) >= 2

    with pytest.raises(PredictionStopped, match="10 of 36 tiles"):
        predict_tiled(rec, image, tile=32, margin=8, align=8, batch_size=5, stop=stop)
    assert len(rec.shapes) == 2  # no batch ran after stop() said so
    assert checks == [0, 1, 2]  # asked before every batch
    assert not issubclass(PredictionStopped, ValueError)  # a cancel, not a bad input


def test_stop_that_never_fires_changes_nothing():
    image = np.random.default_rng(3).random((2, 90, 70), dtype=np.float32)
    calls = []
    out = predict_tiled(_identity, image, tile=32, margin=8, align=8, batch_size=3,
                        stop=lambda: calls.append(1) is not None)
    np.testing.assert_array_equal(out, image)
    assert len(calls) > 1
