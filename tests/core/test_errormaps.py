"""Tests for ``napari_cell_anomaly.core.errormaps``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_cell_anomaly.core import errormaps
from napari_cell_anomaly.core.errormaps import (
    SSIM_SIGMA,
    gaussian_blur,
    per_sample_error,
    reconstruction_loss,
    squared_error_map,
    ssim_map,
)

LOSSES = ("mse", "ssim", "mix")


def _smooth_image(seed: int, shape: tuple[int, ...] = (2, 3, 48, 40)) -> torch.Tensor:
    """Image-like tensors in [0, 1] with structure at several scales."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random(shape), sigma=(0, 0, 2, 2))
    x = (x - x.min()) / (x.max() - x.min())
    return torch.from_numpy(x.astype(np.float32))


def _reference_ssim(x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """SSIM (Wang et al. 2004, K1 = 0.01, K2 = 0.03, range 1) with scipy's Gaussian filter.

    The window is truncated at ``round(3 sigma)`` pixels with mirror borders, as documented for
    :func:`gaussian_blur`.
    """
    radius = max(1, round(3.0 * sigma))

    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=(0, 0, sigma, sigma), mode="mirror",
                                       truncate=radius / sigma)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(axis=1, keepdims=True)


def test_ssim_of_identical_images_is_one() -> None:
    x = _smooth_image(0)
    s = ssim_map(x, x)
    assert s.shape == (2, 1, 48, 40)
    torch.testing.assert_close(s, torch.ones_like(s), rtol=0, atol=1e-5)


def test_ssim_is_symmetric() -> None:
    x, y = _smooth_image(1), _smooth_image(2)
    torch.testing.assert_close(ssim_map(x, y), ssim_map(y, x), rtol=0, atol=1e-6)


def test_ssim_decreases_with_noise() -> None:
    x = _smooth_image(3)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    means = [float(ssim_map(x, (x + level * noise).clamp(0, 1)).mean())
             for level in (0.0, 0.02, 0.05, 0.1, 0.2)]
    assert means[0] == pytest.approx(1.0, abs=1e-5)
    assert all(a > b for a, b in itertools.pairwise(means)), means
    assert means[-1] < 0.8


def test_ssim_matches_independent_reference() -> None:
    x, y = _smooth_image(4), _smooth_image(5)
    y = 0.5 * x + 0.5 * y  # partly similar
    ref = _reference_ssim(x.double().numpy(), y.double().numpy(), SSIM_SIGMA)
    np.testing.assert_allclose(ssim_map(x, y).numpy(), ref, atol=1e-4)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.5, 3.0])
@pytest.mark.parametrize("hw", [(32, 24), (3, 5)])  # (3, 5) is below the kernel radius
def test_gaussian_blur_preserves_a_constant(sigma: float, hw: tuple[int, int]) -> None:
    x = torch.full((1, 2, *hw), 0.37)
    y = gaussian_blur(x, sigma)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 1.5, 3.0])
def test_gaussian_blur_preserves_mass_and_matches_scipy(sigma: float) -> None:
    x = torch.zeros(1, 1, 41, 41)
    x[0, 0, 20, 20] = 1.0  # interior impulse: the kernel never touches the border
    x[0, 0, 17, 24] = 2.5
    y = gaussian_blur(x, sigma)
    assert float(y.sum()) == pytest.approx(float(x.sum()), rel=1e-5)
    assert float(y.max()) < 1.0  # actually spread out
    radius = max(1, round(3.0 * sigma))
    ref = ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma),
                                  mode="mirror", truncate=radius / sigma)
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-6)


def test_gaussian_blur_zero_sigma_is_identity() -> None:
    x = _smooth_image(6)
    assert gaussian_blur(x, 0) is x


def test_squared_error_map_averages_channels() -> None:
    x = torch.zeros(1, 3, 8, 8)
    y = x.clone()
    y[0, 0, 2, 3] = 0.5
    y[0, 2, 2, 3] = -0.25
    m = squared_error_map(x, y)
    assert m.shape == (1, 1, 8, 8)
    assert float(m[0, 0, 2, 3]) == pytest.approx((0.25 + 0.0625) / 3)
    assert float(m.sum()) == pytest.approx((0.25 + 0.0625) / 3)


@pytest.mark.parametrize("kind", LOSSES)
def test_losses_zero_for_identical_inputs(kind: str) -> None:
    x = _smooth_image(7)
    assert float(reconstruction_loss(x, x, kind)) == pytest.approx(0.0, abs=1e-5)
    assert float(reconstruction_loss(x, x, kind, torch.tensor([1.0, 3.0]))) == pytest.approx(
        0.0, abs=1e-5)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert float(reconstruction_loss(x, y, kind)) > 1e-3


@pytest.mark.parametrize("kind", LOSSES)
def test_loss_weights_select_samples(kind: str) -> None:
    x = _smooth_image(8)
    y = x.clone()
    y[1] = (y[1] + 0.2).clamp(0, 1)  # only sample 1 differs
    per = per_sample_error(x, y, kind)
    assert per.shape == (2,)
    assert float(per[0]) == pytest.approx(0.0, abs=1e-5) and float(per[1]) > 1e-3
    assert float(reconstruction_loss(x, y, kind, torch.tensor([1.0, 0.0]))) == pytest.approx(
        0.0, abs=1e-5)
    torch.testing.assert_close(reconstruction_loss(x, y, kind, torch.tensor([0.0, 2.0])),
                               per[1])
    torch.testing.assert_close(reconstruction_loss(x, y, kind), per.mean())


def test_mse_loss_is_mean_squared_error() -> None:
    x, y = _smooth_image(9), _smooth_image(10)
    torch.testing.assert_close(reconstruction_loss(x, y, "mse"), ((x - y) ** 2).mean())


def test_unknown_loss_raises_value_error() -> None:
    x = _smooth_image(11)
    with pytest.raises(ValueError, match="unknown loss 'l2'"):
        reconstruction_loss(x, x, "l2")
    with pytest.raises(ValueError, match="unknown loss"):
        errormaps.per_sample_error(x, x, "")


def _colours(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """RGB values over the whole range, a quarter of them dark (below the sRGB and CIE ``f``
    linear-segment thresholds), a few outside [0, 1] (clamped by the conversion)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    dark = torch.rand(shape, generator=gen) < 0.25
    x = torch.where(dark, 0.03 * x, x)
    x[..., 0, 0] = torch.tensor([-0.1, 1.2, 0.5])[: shape[1]].view(1, -1)
    return x


def test_rgb_to_lab_matches_skimage() -> None:
    from skimage.color import rgb2lab

    x = _colours(10, (2, 3, 16, 12)).clamp(0, 1)
    ref = rgb2lab(x.double().permute(0, 2, 3, 1).numpy()).transpose(0, 3, 1, 2) / 100.0
    np.testing.assert_allclose(errormaps.rgb_to_lab(x).numpy(), ref, atol=2e-5)


def _lab_error_by_definition(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return squared_error_map(errormaps.rgb_to_lab(x.double()), errormaps.rgb_to_lab(y.double()))


@pytest.mark.parametrize("chunk", [None, 2000])  # 2000 values: chunks of 1 and 22 rows
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("shape", "channels_last"),  # the second: 3 row bands on 3 threads
                         [((1, 3, 37, 29), False), ((4, 3, 131, 130), True)])
def test_lab_error_map_numpy_path_matches_the_definition(
        threads: int, shape: tuple[int, ...], channels_last: bool, chunk: int | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk is not None:
        monkeypatch.setattr(errormaps, "_CHUNK_ELEMENTS", chunk)
    x, y = _colours(11, shape), _colours(12, shape)
    y = torch.where(torch.rand(shape, generator=torch.Generator().manual_seed(3)) < 0.5, x, y)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        y = y.contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            fast = errormaps.lab_error_map(x, y)
    finally:
        torch.set_num_threads(before)
    assert errormaps._numpy_lab_applies(x, y)
    assert fast.shape == (shape[0], 1, *shape[2:]) and fast.dtype == torch.float32
    exact = _lab_error_by_definition(x, y)
    # float32 rounding of L*a*b* values near 1 (differences of nearly equal numbers)
    np.testing.assert_allclose(fast.double().numpy(), exact.numpy(), rtol=1e-5, atol=1e-6)
    assert float(exact.max()) > 0.1 and (exact == 0).any()  # large errors and equal pixels


def test_lab_error_map_keeps_gradients_in_torch() -> None:
    x = _colours(13, (1, 3, 8, 8)).clamp(0.1, 0.9).requires_grad_(True)
    y = _colours(14, (1, 3, 8, 8))
    assert not errormaps._numpy_lab_applies(x, y)
    m = errormaps.lab_error_map(x, y)
    m.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    np.testing.assert_allclose(m.detach().double().numpy(),
                               _lab_error_by_definition(x.detach(), y).numpy(), atol=1e-6)
