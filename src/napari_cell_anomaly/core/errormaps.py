"""Per-pixel reconstruction error maps: squared error, 1 - SSIM, Gaussian smoothing.

All functions work on torch tensors ``(N, C, H, W)`` so that the same code serves as a training
loss and as a scoring map, on any image size and on the input's own device (constants and
kernels are moved to it).
"""

from __future__ import annotations

import functools
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
_C1 = 0.01**2
_C2 = 0.03**2
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])


@functools.lru_cache(maxsize=32)
def _gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, round(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel with reflective borders.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, H, W)`` float tensor.
    sigma : float
        Standard deviation in pixels; ``0`` returns ``x`` unchanged.

    Returns
    -------
    torch.Tensor
        Blurred tensor of the same shape.
    """
    if sigma <= 0:
        return x
    taps = _gaussian_kernel1d(float(sigma)).tolist()
    r = len(taps) // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    h, w = x.shape[-2:]
    # Each pass is a weighted sum of shifted views: a few cheap elementwise passes, where a
    # depthwise 1-D convolution takes a slow path on the CPU (about 100x slower here).
    y = F.pad(x, (r, r, 0, 0), mode=mode)
    rows = y[..., 0:w] * taps[0]
    for i in range(1, len(taps)):
        rows.add_(y[..., i:i + w], alpha=taps[i])
    y = F.pad(rows, (0, 0, r, r), mode=mode)
    out = y[..., 0:h, :] * taps[0]
    for i in range(1, len(taps)):
        out.add_(y[..., i:i + h, :], alpha=taps[i])
    return out


def squared_error_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over channels, ``(N, 1, H, W)``."""
    return ((x - y) ** 2).mean(dim=1, keepdim=True)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """CIE L*a*b* (D65, 2-degree observer) of sRGB images in [0, 1], divided by 100.

    Matches :func:`skimage.color.rgb2lab` / 100. A single-channel image is treated as grey
    (R = G = B), so only its lightness ``L*`` is returned, ``(N, 1, H, W)``.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, 3, H, W)`` or ``(N, 1, H, W)`` in [0, 1].

    Returns
    -------
    torch.Tensor
        ``(N, 3, H, W)`` (L*, a*, b*) / 100, or ``(N, 1, H, W)`` L* / 100.
    """
    x = x.clamp(0.0, 1.0)
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)

    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t > 0.008856, t.clamp_min(1e-12) ** (1.0 / 3.0),
                           7.787 * t + 16.0 / 116.0)

    if x.shape[1] == 1:
        return (116.0 * f(lin) - 16.0) / 100.0
    m = _RGB_TO_XYZ.to(device=x.device, dtype=x.dtype)
    white = _WHITE_D65.to(device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,njhw->nihw", m, lin) / white
    fx, fy, fz = f(xyz[:, 0:1]), f(xyz[:, 1:2]), f(xyz[:, 2:3])
    return torch.cat([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1) / 100.0


def lab_error_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error in CIE L*a*b* (perceptual colour space) averaged over channels.

    Colour differences a viewer sees (a purple stain on a pink cell) weigh more than in RGB,
    small luminance ripples less. ``(N, 1, H, W)``: ``squared_error_map(rgb_to_lab(x),
    rgb_to_lab(y))``. On the CPU, for float32 RGB without gradients (scoring), the same sum is
    computed in NumPy (:func:`_lab_error_map_numpy`): its SIMD power and cube root cost a
    fraction of PyTorch's, so the map takes about a third of the CPU time; the two agree to
    float32 rounding.
    """
    if _numpy_lab_applies(x, y):
        return _lab_error_map_numpy(x, y)
    return squared_error_map(rgb_to_lab(x), rgb_to_lab(y))


#: RGB -> XYZ with the D65 white point divided out (the rows of ``_RGB_TO_XYZ`` over white).
_RGB_TO_XYZ_WHITE = (_RGB_TO_XYZ.double() / _WHITE_D65.double().view(3, 1)).numpy().astype(
    np.float32)
#: Input values per thread below which :func:`_lab_error_map_numpy` does not split the work.
_MIN_SPLIT_ELEMENTS = 1 << 16
#: Input values :func:`_lab_error_rows` converts at a time.
_CHUNK_ELEMENTS = 1 << 17


def _numpy_lab_applies(x: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether :func:`lab_error_map` may take its NumPy path: CPU float32 RGB tensors of
    one shape, no gradient wanted."""
    return (x.device.type == "cpu" and y.device.type == "cpu" and x.dtype == torch.float32
            and y.dtype == torch.float32 and x.dim() == 4 and x.shape[1] == 3
            and x.shape == y.shape
            and not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)))


def _lab_f(rgb: np.ndarray) -> np.ndarray:
    """The CIE ``f`` of X/Xn, Y/Yn, Z/Zn for planar sRGB values ``(3, ...)`` float32, which it
    overwrites; ``(3, ...)``. The steps of :func:`rgb_to_lab` before its last line."""
    f32 = np.float32
    np.clip(rgb, 0.0, 1.0, out=rgb)
    lin = rgb + f32(0.055)
    lin /= f32(1.055)
    np.power(lin, f32(2.4), out=lin)
    low = rgb <= f32(0.04045)
    if low.any():
        rgb /= f32(12.92)
        np.copyto(lin, rgb, where=low)
    m = _RGB_TO_XYZ_WHITE
    xyz = np.empty_like(lin)
    for i in range(3):
        np.multiply(lin[0], m[i, 0], out=xyz[i])
        xyz[i] += lin[1] * m[i, 1]
        xyz[i] += lin[2] * m[i, 2]
    f = np.cbrt(np.maximum(xyz, f32(1e-12), out=lin), out=lin)
    low = xyz <= f32(0.008856)
    if low.any():
        xyz *= f32(7.787)
        xyz += f32(16.0 / 116.0)
        np.copyto(f, xyz, where=low)
    return f


def _lab_error_rows(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """The L*a*b* squared error map of channels-last ``(N, h, W, 3)`` float32 images into
    ``out`` ``(N, h, W)``, a few rows at a time (about ``_CHUNK_ELEMENTS`` input values:
    the temporaries stay in the CPU cache and are reused, not paged in afresh)."""
    step = max(1, _CHUNK_ELEMENTS // max(1, x.shape[0] * x.shape[2] * x.shape[3]))
    for r in range(0, x.shape[1], step):
        _lab_error_chunk(x[:, r:r + step], y[:, r:r + step], out[:, r:r + step])


def _lab_error_chunk(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """:func:`_lab_error_rows` of one chunk of rows."""
    f32 = np.float32
    d = _lab_f(np.moveaxis(x, -1, 0).copy())
    d -= _lab_f(np.moveaxis(y, -1, 0).copy())
    dx, dy, dz = d  # differences of f(X), f(Y), f(Z)
    dx -= dy
    dx *= f32(5.0)  # a* / 100 = 5 (f(X) - f(Y))
    dz -= dy
    dz *= f32(2.0)  # -b* / 100 = 2 (f(Z) - f(Y))
    dy *= f32(1.16)  # L* / 100 = 1.16 f(Y) - 0.16
    np.multiply(dy, dy, out=out)
    out += dx * dx
    out += dz * dz
    out /= f32(3.0)


def _lab_error_map_numpy(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`lab_error_map` of CPU float32 RGB tensors computed with NumPy, in row bands
    on as many short-lived threads as PyTorch uses (NumPy releases the GIL)."""
    a = x.detach().permute(0, 2, 3, 1).numpy()  # a view for channels_last tensors
    b = y.detach().permute(0, 2, 3, 1).numpy()
    n, h, w = a.shape[:3]
    out = np.empty((n, h, w), dtype=np.float32)
    parts = max(1, min(torch.get_num_threads(), h, a.size // _MIN_SPLIT_ELEMENTS))
    bounds = [h * i // parts for i in range(parts + 1)]
    bands = [(slice(None), slice(r0, r1)) for r0, r1 in itertools.pairwise(bounds)]
    if parts == 1:
        _lab_error_rows(a, b, out)
    else:
        with ThreadPoolExecutor(parts - 1) as pool:
            others = [pool.submit(_lab_error_rows, a[s], b[s], out[s]) for s in bands[1:]]
            s = bands[0]
            _lab_error_rows(a[s], b[s], out[s])  # this thread takes the first band
            for band in others:
                band.result()  # re-raises a band's error here
    return torch.from_numpy(out).unsqueeze(1)


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Structural similarity map with a Gaussian window, averaged over channels.

    Follows Wang et al. (2004) with ``K1 = 0.01``, ``K2 = 0.03`` and data range 1.

    Parameters
    ----------
    x, y : torch.Tensor
        ``(N, C, H, W)`` images in [0, 1].
    sigma : float
        Standard deviation of the Gaussian window.

    Returns
    -------
    torch.Tensor
        ``(N, 1, H, W)`` SSIM values (1 = identical).
    """
    mu_x = gaussian_blur(x, sigma)
    mu_y = gaussian_blur(y, sigma)
    sxx = gaussian_blur(x * x, sigma) - mu_x**2
    syy = gaussian_blur(y * y, sigma) - mu_y**2
    sxy = gaussian_blur(x * y, sigma) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * sxy + _C2)
    den = (mu_x**2 + mu_y**2 + _C1) * (sxx + syy + _C2)
    return (num / den).mean(dim=1, keepdim=True)


def reconstruction_loss(x: torch.Tensor, y: torch.Tensor, kind: str,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """Training loss between input ``x`` and reconstruction ``y``.

    Parameters
    ----------
    x, y : torch.Tensor
        ``(N, C, H, W)``.
    kind : {"mse", "ssim", "mix"}
        Mean squared error, ``1 - SSIM``, or the SSIM + L1 mix of Zhao et al. (2017).
    weights : torch.Tensor, optional
        Per-sample weights ``(N,)`` (used by robust training); the loss is their weighted mean.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    per_sample = per_sample_error(x, y, kind)
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).sum() / weights.abs().sum().clamp_min(1e-8)


def per_sample_error(x: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean error of each sample, ``(N,)``; see :func:`reconstruction_loss`."""
    if kind == "mse":
        return squared_error_map(x, y).flatten(1).mean(1)
    if kind == "ssim":
        return (1.0 - ssim_map(x, y)).flatten(1).mean(1)
    if kind == "mix":
        # Zhao et al. (2017), "Loss functions for image restoration with neural networks":
        # 0.85 * (1 - SSIM) / 2 + 0.15 * L1.
        dssim = (1.0 - ssim_map(x, y)).flatten(1).mean(1)
        l1 = (x - y).abs().flatten(1).mean(1)
        return 0.85 * dssim / 2.0 + 0.15 * l1
    raise ValueError(f"unknown loss {kind!r}; expected 'mse', 'ssim' or 'mix'")
