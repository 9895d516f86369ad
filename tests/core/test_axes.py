"""Tests for napari_cell_anomaly.core.axes: files -> (*planes, H, W, C) with named axes."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_cell_anomaly.core.axes import read_image_axes, resolve_axes
from napari_cell_anomaly.core.images import ImageError


def _stack(shape, dtype=np.uint16, seed=0):
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(dtype)


def test_grayscale_png_is_one_channel(tmp_path):
    img = _stack((20, 24), np.uint8)
    iio.imwrite(tmp_path / "g.png", img)
    arr, axes = read_image_axes(tmp_path / "g.png")
    assert axes == "YXC" and arr.shape == (20, 24, 1)
    np.testing.assert_array_equal(arr[..., 0], img)


def test_rgba_png_drops_alpha_and_is_rgb(tmp_path):
    img = _stack((20, 24, 4), np.uint8)
    iio.imwrite(tmp_path / "c.png", img)
    arr, axes = read_image_axes(tmp_path / "c.png")
    assert axes == "YXS" and arr.shape == (20, 24, 3)
    np.testing.assert_array_equal(arr, img[..., :3])


def test_grey_alpha_png_keeps_the_grey(tmp_path):
    img = _stack((20, 24, 2), np.uint8)
    iio.imwrite(tmp_path / "la.png", img)
    arr, axes = read_image_axes(tmp_path / "la.png")
    assert axes == "YXC" and arr.shape == (20, 24, 1)
    np.testing.assert_array_equal(arr[..., 0], img[..., 0])


def test_imagej_hyperstack_channels_last_planes_first(tmp_path):
    img = _stack((3, 2, 20, 24))  # Z, C, Y, X
    tifffile.imwrite(tmp_path / "h.tif", img, imagej=True, metadata={"axes": "ZCYX"})
    arr, axes = read_image_axes(tmp_path / "h.tif")
    assert axes == "ZYXC" and arr.shape == (3, 20, 24, 2)
    np.testing.assert_array_equal(arr, np.moveaxis(img, 1, -1))


def test_ome_channels_first(tmp_path):
    img = _stack((5, 20, 24))
    tifffile.imwrite(tmp_path / "o.ome.tif", img, ome=True, metadata={"axes": "CYX"})
    arr, axes = read_image_axes(tmp_path / "o.ome.tif")
    assert axes == "YXC" and arr.shape == (20, 24, 5)
    np.testing.assert_array_equal(arr, np.moveaxis(img, 0, -1))


def test_tiff_two_samples_are_two_channels(tmp_path):
    img = _stack((20, 24, 2))
    tifffile.imwrite(tmp_path / "s.tif", img, photometric="minisblack", planarconfig="contig",
                     metadata=None)
    arr, axes = read_image_axes(tmp_path / "s.tif")
    assert axes == "YXC" and arr.shape == (20, 24, 2)


def test_rgb_tiff_is_rgb(tmp_path):
    img = _stack((20, 24, 3), np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", img, photometric="rgb")
    arr, axes = read_image_axes(tmp_path / "rgb.tif")
    assert axes == "YXS" and arr.shape == (20, 24, 3)


def _pages(path, n):
    with tifffile.TiffWriter(path) as w:
        for i in range(n):
            w.write(_stack((20, 24), seed=i), metadata=None)


def test_unnamed_short_axis_is_ambiguous_and_channel_axis_settles_it(tmp_path):
    _pages(tmp_path / "p.tif", 3)
    with pytest.raises(ImageError, match=r"axis 0 \(length 3\).*--channel-axis 0") as info:
        read_image_axes(tmp_path / "p.tif")
    assert "\n" not in str(info.value)
    arr, axes = read_image_axes(tmp_path / "p.tif", channel_axis=0)
    assert axes == "YXC" and arr.shape == (20, 24, 3)
    arr, axes = read_image_axes(tmp_path / "p.tif", channel_axis="none")
    assert axes == "IYXC" and arr.shape == (3, 20, 24, 1)


def test_unnamed_long_axis_is_planes(tmp_path):
    _pages(tmp_path / "long.tif", 20)
    arr, axes = read_image_axes(tmp_path / "long.tif")
    assert axes == "IYXC" and arr.shape == (20, 20, 24, 1)


def test_channel_axis_cannot_contradict_metadata(tmp_path):
    img = _stack((3, 2, 20, 24))
    tifffile.imwrite(tmp_path / "h.tif", img, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(ImageError, match="names axis 1 as channels"):
        read_image_axes(tmp_path / "h.tif", channel_axis=0)
    with pytest.raises(ImageError, match="its Y axis"):
        read_image_axes(tmp_path / "h.tif", channel_axis=2)
    with pytest.raises(ImageError, match="out of range"):
        read_image_axes(tmp_path / "h.tif", channel_axis=7)


def test_resolve_axes_drops_length_one_axes():
    data = np.zeros((1, 4, 20, 24, 1))
    arr, axes = resolve_axes(data, "TZYXC")
    assert axes == "ZYXC" and arr.shape == (4, 20, 24, 1)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read_image_axes(tmp_path / "nothing.tif")
