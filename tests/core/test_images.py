"""Tests for napari_cell_anomaly.core.images (and Preprocessing, core.preprocessing)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_cell_anomaly.core.images import (
    MIN_SIDE,
    ImageError,
    LoadedImages,
    as_float_image,
    find_images,
    load_images,
    luminosity,
    random_patches,
    read_image,
    resize,
)
from napari_cell_anomaly.core.preprocessing import Preprocessing


def _ramp(shape=(16, 16), dtype=np.uint8, scale=1):
    """A non-constant test image with distinct values."""
    n = int(np.prod(shape))
    return ((np.arange(n) % 200) * scale).reshape(shape).astype(dtype)


# ------------------------------------------------------------------ as_float_image


def test_min_side_is_8():
    assert MIN_SIDE == 8


def test_error_is_value_error():
    assert issubclass(ImageError, ValueError)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(np.uint8, 1), (np.uint16, 300), (np.int32, -5), (np.float32, 0.01), (np.float64, 1e3)],
)
def test_grayscale_dtypes_keep_raw_values(dtype, scale):
    img = _ramp((12, 10), dtype, scale)
    out = as_float_image(img)
    assert out.dtype == np.float32
    assert out.shape == (12, 10, 1)
    np.testing.assert_allclose(out[..., 0], img.astype(np.float64), rtol=1e-6)


def test_uint16_values_are_not_rescaled():
    img = np.zeros((9, 9), np.uint16)
    img[0, 0] = 65535
    out = as_float_image(img)
    assert out.max() == 65535.0
    assert out.min() == 0.0


def test_bool_image_becomes_zero_and_one():
    img = np.zeros((8, 8), bool)
    img[2:5, 3] = True
    out = as_float_image(img)
    assert out.dtype == np.float32
    assert out.shape == (8, 8, 1)
    assert set(np.unique(out).tolist()) == {0.0, 1.0}
    assert out.sum() == 3.0


def test_rgb_keeps_three_channels():
    img = np.stack([_ramp(), _ramp()[::-1], _ramp().T], axis=-1)
    out = as_float_image(img)
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out, img.astype(np.float32))


def test_four_channels_are_kept_and_an_rgb_model_reads_them_as_rgba():
    rgb = np.stack([_ramp(), _ramp()[::-1], _ramp().T], axis=-1)
    alpha = np.full((16, 16, 1), 255, np.uint8)
    alpha[0, 0] = 0
    rgba = np.concatenate([rgb, alpha], axis=-1)
    assert as_float_image(rgba).shape == (16, 16, 4)  # channels last: 4 channels
    out = Preprocessing("rgb", 0.0, 255.0)(rgba)
    np.testing.assert_array_equal(out, rgb.astype(np.float32) / 255.0)


@pytest.mark.parametrize("channels", [2, 5])
def test_any_channel_count_is_kept_channels_last(channels):
    img = np.stack([_ramp((12, 20), np.uint16, k + 1) for k in range(channels)], axis=-1)
    out = as_float_image(img)
    assert out.shape == (12, 20, channels)
    np.testing.assert_array_equal(out[..., 1], img[..., 1].astype(np.float32))


def test_channels_first_without_channel_axis_is_ambiguous():
    chw = np.stack([_ramp((10, 20)), _ramp((10, 20))[::-1], _ramp((10, 20))])
    chw = np.repeat(np.repeat(chw, 2, axis=1), 2, axis=2)  # (3, 20, 40)
    with pytest.raises(ImageError,
                       match=r"channels first or a 3-D stack.*channel_axis=0") as info:
        as_float_image(chw)
    assert "\n" not in str(info.value)
    out = as_float_image(chw, channel_axis=0)
    assert out.shape == (20, 40, 3)
    np.testing.assert_array_equal(out[..., 1], chw[1].astype(np.float32))


def test_result_does_not_alias_input():
    img = _ramp(dtype=np.float32)[..., None]
    out = as_float_image(img)
    out[:] = -1
    assert img.min() >= 0


def test_tiny_image_is_rejected_naming_min_side():
    with pytest.raises(ImageError, match=r"1x1 pixels.*at least 8.*MIN_SIDE"):
        as_float_image(np.array([[3]], np.uint8))


def test_one_short_side_is_rejected():
    with pytest.raises(ImageError, match="7x100 pixels"):
        as_float_image(_ramp((7, 100)))


def test_nan_and_inf_are_counted():
    img = _ramp(dtype=np.float32)
    img[0, :10] = np.nan
    img[1, :2] = np.inf
    with pytest.raises(ImageError, match="contains 12 NaN or infinite pixels"):
        as_float_image(img, name="x.tif")


def test_float64_overflowing_float32_is_rejected():
    img = _ramp(dtype=np.float64)
    img[0, 0] = 1e300
    with pytest.raises(ImageError, match="float32 range"):
        as_float_image(img)


def test_constant_image_reports_value():
    with pytest.raises(ImageError) as info:
        as_float_image(np.full((20, 20), 7, np.uint8), name="flat.png")
    assert str(info.value) == (
        "image 'flat.png' is constant (every pixel is 7.0): nothing to analyse"
    )


def test_constant_colour_image_is_rejected():
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 0] = 200
    with pytest.raises(ImageError, match=r"constant \(every pixel is \(200.0, 0.0, 0.0\)\)"):
        as_float_image(img)


def test_3d_stack_message():
    with pytest.raises(ImageError) as info:
        as_float_image(np.zeros((5, 64, 64)), name="x.png")
    assert str(info.value) == (
        "image 'x.png' has shape (5, 64, 64): channels first or a 3-D stack of 5 planes? "
        "Expected channels last (H, W, C): pass channel_axis=0 if axis 0 holds channels, or "
        "score the planes one by one"
    )
    with pytest.raises(ImageError, match="is a 3-D stack of shape"):
        as_float_image(np.zeros((20, 64, 64)), name="x.png")


@pytest.mark.parametrize("shape", [(100,), (2, 3, 16, 16), ()])
def test_wrong_ndim_is_rejected(shape):
    with pytest.raises(ImageError, match=r"expected a 2-D image"):
        as_float_image(np.ones(shape))


def test_non_numeric_is_rejected():
    with pytest.raises(ImageError, match="dtype"):
        as_float_image(np.full((10, 10), "a"))


def test_messages_are_one_line():
    bad_inputs = [np.zeros((1, 1)), np.zeros((5, 64, 64)), np.full((9, 9), 3.0)]
    for bad in bad_inputs:
        with pytest.raises(ImageError) as info:
            as_float_image(bad)
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------ luminosity


def test_luminosity_weights():
    rgb = np.zeros((8, 8, 3), np.float32)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100.0, 10.0, 1000.0
    out = luminosity(rgb)
    assert out.shape == (8, 8, 1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.21 * 100 + 0.72 * 10 + 0.07 * 1000, rtol=1e-6)


def test_luminosity_of_white_is_white():
    out = luminosity(np.full((8, 8, 3), 255, np.uint8))
    np.testing.assert_allclose(out, 255.0, rtol=1e-6)


def test_luminosity_rejects_two_channels():
    with pytest.raises(ImageError, match="RGB"):
        luminosity(np.zeros((8, 8, 2)))


# ------------------------------------------------------------------ Preprocessing


def _rgb(seed=0, shape=(16, 16), dtype=np.uint8, high=255):
    rng = np.random.default_rng(seed)
    return rng.integers(0, high, size=(*shape, 3), endpoint=True).astype(dtype)


def test_fit_uint8_rgb_uses_full_range():
    prep = Preprocessing.fit([_rgb(0), _rgb(1)])
    assert prep == Preprocessing("rgb", 0.0, 255.0, dtype="uint8")


def test_fit_grayscale_picks_gray():
    prep = Preprocessing.fit([_ramp(), _ramp((20, 9))])
    assert prep.channels == "gray"
    assert (prep.low, prep.high) == (0.0, 255.0)


def test_fit_mixed_colour_and_gray_picks_rgb_and_rejects_gray():
    with pytest.raises(ImageError, match=r"model expects RGB images .*got a grayscale image"):
        Preprocessing.fit([_rgb(0), _ramp()])


def test_fit_forced_gray_on_rgb_uses_luminosity():
    prep = Preprocessing.fit([_rgb(0)], channels="gray")
    out = prep(_rgb(0))
    assert out.shape == (16, 16, 1)
    expected = luminosity(_rgb(0).astype(np.float32)) / 255.0
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_fit_uint16_uses_pooled_percentiles():
    # values 0..999 repeated: the 0.5/99.5 percentiles are about 5 and 994
    a = (np.arange(10_000) % 1000).astype(np.uint16).reshape(100, 100)
    b = a.T.copy()
    prep = Preprocessing.fit([a, b])
    assert prep.channels == "gray"
    assert prep.low == pytest.approx(np.percentile(a, 0.5), abs=1.0)
    assert prep.high == pytest.approx(np.percentile(a, 99.5), abs=1.0)


def test_fit_mixed_uint8_and_float_is_not_0_255():
    a = _ramp()
    b = (_ramp() / 255.0).astype(np.float32)
    prep = Preprocessing.fit([a, b])
    assert prep.high < 255.0


def test_fit_large_input_is_subsampled_and_deterministic():
    rng = np.random.default_rng(3)
    imgs = [rng.normal(1000.0, 100.0, size=(1000, 1000)).astype(np.float32) for _ in range(3)]
    first = Preprocessing.fit(imgs)
    second = Preprocessing.fit(imgs)
    assert first == second
    # normal(1000, 100): 0.5/99.5 percentiles are 1000 -/+ 2.576 * 100
    assert first.low == pytest.approx(1000 - 257.6, abs=5)
    assert first.high == pytest.approx(1000 + 257.6, abs=5)


def test_fit_nearly_constant_images_keep_high_above_low():
    img = np.zeros((100, 100), np.float32)
    img[0, 0] = 1.0  # percentiles are both 0
    prep = Preprocessing.fit([img])
    assert prep.high > prep.low
    assert (prep.low, prep.high) == (0.0, 1.0)


def test_fit_empty_raises():
    with pytest.raises(ImageError, match="at least one image"):
        Preprocessing.fit([])


def test_fit_bad_channels_raises():
    with pytest.raises(ValueError, match="channels"):
        Preprocessing.fit([_ramp()], channels="cmyk")


def test_call_scales_and_clips_to_unit_range():
    prep = Preprocessing("gray", 100.0, 200.0)
    img = np.array([[50, 100, 150, 200, 250] * 2] * 10, dtype=np.uint16)
    out = prep(img)
    assert out.dtype == np.float32
    assert out.shape == (10, 10, 1)
    np.testing.assert_allclose(out[0, :5, 0], [0.0, 0.0, 0.5, 1.0, 1.0])


def test_call_rgb_model_rejects_grayscale():
    prep = Preprocessing("rgb", 0.0, 255.0)
    with pytest.raises(ImageError) as info:
        prep(_ramp())
    assert str(info.value) == ("model expects RGB images (3 channels); got a grayscale image "
                               "(1 channel)")


def test_call_rgb_model_accepts_rgba():
    prep = Preprocessing("rgb", 0.0, 255.0)
    rgba = np.concatenate([_rgb(2), np.full((16, 16, 1), 255, np.uint8)], axis=-1)
    out = prep(rgba)
    np.testing.assert_allclose(out, _rgb(2) / 255.0, atol=1e-6)


def test_call_validates_image_with_name():
    prep = Preprocessing("gray", 0.0, 1.0)
    with pytest.raises(ImageError, match=re.escape("image 'a.png' is 4x4 pixels")):
        prep(np.eye(4), name="a.png")


def test_dict_round_trip_through_json():
    prep = Preprocessing("gray", 12.5, 3000.25)
    data = json.loads(json.dumps(prep.to_dict()))
    assert Preprocessing.from_dict(data) == prep


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"channels": "rgb", "low": 0.0}, "missing high"),
        ({"channels": "rgb", "low": 0, "high": 1, "gamma": 2}, "unknown gamma"),
        ({"channels": "bgr", "low": 0, "high": 1}, "channels must be"),
        ({"channels": "rgb", "low": "0", "high": 1}, "low must be a finite number"),
        ({"channels": "rgb", "low": 0, "high": float("nan")}, "high must be a finite"),
        ({"channels": "rgb", "low": 5, "high": 5}, "greater than low"),
        ({"channels": "rgb", "low": True, "high": 5}, "low must be a finite number"),
        (["rgb", 0, 1], "must be a mapping"),
    ],
)
def test_from_dict_rejects_bad_content(data, message):
    with pytest.raises(ValueError, match=message):
        Preprocessing.from_dict(data)


def test_preprocessing_is_frozen():
    prep = Preprocessing("rgb", 0.0, 1.0)
    with pytest.raises(AttributeError):
        prep.low = 3.0  # type: ignore[misc]


# ------------------------------------------------------------------ resize / patches


def test_resize_downscale_is_antialiased():
    # 1-pixel checkerboard: anti-aliased shrinking gives ~ the mean, not a checkerboard
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[..., None]
    out = resize(board, (16, 16))
    assert out.shape == (16, 16, 1)
    assert out.dtype == np.float32
    assert np.abs(out - 0.5).max() < 0.1


def test_resize_keeps_value_range_and_ndim():
    img = np.linspace(0, 4000, 20 * 30, dtype=np.float64).reshape(20, 30)
    out = resize(img, (40, 60))
    assert out.shape == (40, 60)
    assert out.dtype == np.float32
    # raw range kept (not rescaled to [0, 1]); bilinear never overshoots
    assert 3900 < out.max() <= 4000
    assert 0 <= out.min() < 100


def test_resize_rgb_upscale_and_identity():
    img = _rgb(4).astype(np.float32)
    up = resize(img, (32, 24))
    assert up.shape == (32, 24, 3)
    same = resize(img, (16, 16))
    np.testing.assert_array_equal(same, img)
    same[0, 0, 0] = -1
    assert img[0, 0, 0] >= 0


def test_resize_bad_shape():
    with pytest.raises(ValueError, match="positive"):
        resize(np.zeros((8, 8)), (0, 8))


def test_random_patches_are_crops_of_the_image():
    img = np.arange(20 * 30 * 2, dtype=np.float32).reshape(20, 30, 2)
    patches = random_patches(img, 8, 5, np.random.default_rng(0))
    assert patches.shape == (5, 8, 8, 2)
    assert patches.dtype == np.float32
    for p in patches:
        # the top-left value encodes its position
        y, x = divmod(int(p[0, 0, 0]) // 2, 30)
        np.testing.assert_array_equal(p, img[y:y + 8, x:x + 8])


def test_random_patches_deterministic_and_seedable():
    img = _rgb(5, shape=(40, 40)).astype(np.float32)
    a = random_patches(img, 16, 10, 7)
    b = random_patches(img, 16, 10, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert random_patches(img, 16, 0, 0).shape == (0, 16, 16, 3)


def test_random_patches_too_small():
    with pytest.raises(ImageError, match="patches of 32x32"):
        random_patches(np.zeros((20, 40, 3), np.float32), 32, 1, 0)


# ------------------------------------------------------------------ files


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    iio.imwrite(tmp_path / "b.png", _rgb(1))
    iio.imwrite(tmp_path / "a.png", _ramp())
    iio.imwrite(tmp_path / "c.JPG", _rgb(2, shape=(32, 32)))
    tifffile.imwrite(tmp_path / "d.tif", _ramp(dtype=np.uint16, scale=300))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    iio.imwrite(tmp_path / "sub" / "e.png", _ramp())
    return tmp_path


def test_read_image_png_and_tiff_roundtrip(tmp_path):
    rgb = _rgb(3)
    iio.imwrite(tmp_path / "x.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), rgb)
    u16 = _ramp(dtype=np.uint16, scale=300)
    tifffile.imwrite(tmp_path / "y.tiff", u16)
    out = read_image(str(tmp_path / "y.tiff"))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, u16)


def test_read_image_corrupt_file_names_it(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match=re.escape("cannot read image 'broken.png'")) as info:
        read_image(bad)
    assert "\n" not in str(info.value)


def test_a_file_no_decoder_reads_is_named_plainly(tmp_path):
    from napari_cell_anomaly.core.axes import read_image_axes

    fake = tmp_path / "fake.png"
    fake.write_text("notes saved under an image name")
    for read in (read_image, read_image_axes):
        with pytest.raises(ImageError) as info:
            read(fake)
        message = str(info.value)
        assert message.startswith("cannot read image 'fake.png': its content is not a PNG "
                                  "image"), message
        assert "backend" not in message and "iomode" not in message and "\n" not in message


def test_read_image_corrupt_tiff(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(ImageError, match=re.escape("cannot read image 'broken.tif'")):
        read_image(bad)


def test_read_image_empty_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=re.escape("cannot read image 'empty.png'")):
        read_image(empty)


def test_read_image_missing_file(tmp_path):
    with pytest.raises(ImageError, match=re.escape("cannot read image 'nope.png': no such file")):
        read_image(tmp_path / "nope.png")


def test_find_images_directory_is_sorted_and_not_recursive(image_dir):
    found = find_images(image_dir)
    assert [p.name for p in found] == ["a.png", "b.png", "c.JPG", "d.tif"]


def test_find_images_glob_files_and_dedup(image_dir):
    found = find_images([image_dir / "b.png", str(image_dir / "*.png"), image_dir])
    assert [p.name for p in found] == ["b.png", "a.png", "c.JPG", "d.tif"]


def test_find_images_recursive_glob(image_dir):
    found = find_images(str(image_dir / "**" / "*.png"))
    assert sorted(p.name for p in found) == ["a.png", "b.png", "e.png"]


def test_find_images_empty_input_list():
    with pytest.raises(ImageError, match="no images found"):
        find_images([])


def test_find_images_directory_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ImageError, match=r"no images found in '.*'"):
        find_images(tmp_path)


def test_find_images_glob_without_matches(tmp_path):
    with pytest.raises(ImageError, match="no images found"):
        find_images(str(tmp_path / "*.png"))


def test_find_images_missing_path_is_named(tmp_path):
    missing = tmp_path / "missing_dir"
    with pytest.raises(ImageError, match="missing_dir"):
        find_images([missing])


def test_a_folder_s_broken_link_is_listed_and_named_when_read(image_dir, tmp_path):
    # A link whose file was moved or deleted must not vanish from the folder's images
    # without a word: it is listed, and reading it names it.
    (image_dir / "gone.png").symlink_to(tmp_path / "moved_away.png")
    found = find_images(image_dir)
    assert [p.name for p in found] == ["a.png", "b.png", "c.JPG", "d.tif", "gone.png"]
    with pytest.raises(ImageError, match=re.escape("cannot read image 'gone.png': no such")):
        read_image(found[-1])


def test_find_images_explicit_non_image_file(image_dir):
    with pytest.raises(ImageError, match=re.escape("notes.txt' is not an image file")):
        find_images(image_dir / "notes.txt")


def test_load_images_reports_bad_files_without_raising(image_dir):
    (image_dir / "corrupt.png").write_bytes(b"definitely not a png")
    iio.imwrite(image_dir / "flat.png", np.full((16, 16), 9, np.uint8))
    iio.imwrite(image_dir / "tiny.png", np.eye(4, dtype=np.uint8) * 255)
    paths = find_images(image_dir)
    result = load_images(paths)
    assert isinstance(result, LoadedImages)
    assert [p.name for p in result.paths] == ["a.png", "b.png", "c.JPG", "d.tif"]
    assert len(result.images) == 4
    failed = {p.name: reason for p, reason in result.failures}
    assert set(failed) == {"corrupt.png", "flat.png", "tiny.png"}
    assert "cannot read image 'corrupt.png'" in failed["corrupt.png"]
    assert "constant" in failed["flat.png"]
    assert "4x4 pixels" in failed["tiny.png"]


def test_load_images_returns_raw_arrays_channels_last(image_dir):
    rgba = np.concatenate([_rgb(6), np.full((16, 16, 1), 128, np.uint8)], axis=-1)
    iio.imwrite(image_dir / "rgba.png", rgba)
    result = load_images([image_dir / "d.tif", image_dir / "rgba.png"])
    assert result.failures == []
    assert result.images[0].dtype == np.uint16 and result.images[0].ndim == 3
    np.testing.assert_array_equal(result.images[1], rgba[..., :3])  # a PNG's alpha dropped
    assert result.axes == ["YXC", "YXS"]


def test_load_images_reports_ambiguous_channel_axis_and_takes_channel_axis(tmp_path):
    tifffile.imwrite(tmp_path / "chw.tif", np.stack([_ramp(scale=k + 1) for k in range(2)]),
                     photometric="minisblack", metadata=None)
    result = load_images([tmp_path / "chw.tif"])
    assert result.images == [] and "--channel-axis 0" in result.failures[0][1]
    result = load_images([tmp_path / "chw.tif"], channel_axis=0)
    assert result.images[0].shape == (16, 16, 2)


def test_load_images_missing_file_is_a_failure(tmp_path):
    result = load_images([tmp_path / "gone.png"])
    assert result.images == []
    assert result.paths == []
    assert len(result.failures) == 1
    assert result.failures[0][0] == tmp_path / "gone.png"


def test_an_image_constant_but_for_one_inner_pixel_is_not_constant():
    """The constancy check looks at the whole image, not only its first row and column."""
    img = np.full((40, 50, 3), 9, np.uint8)
    img[20, 30, 1] = 10
    assert as_float_image(img).shape == (40, 50, 3)
    with pytest.raises(ImageError, match="constant"):
        as_float_image(np.full((40, 50, 3), 9, np.uint8))
