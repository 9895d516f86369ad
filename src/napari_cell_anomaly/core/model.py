"""Fully convolutional autoencoders built from a small, serialisable config.

Two presets:

``default``
    Designed for a 2-core CPU: strided convolutions whose channel count grows as the resolution
    falls, transposed-convolution upsampling, and a narrow 1x1 bottleneck. Version 2 (current)
    has no convolution at full resolution: a 2x2 pixel-unshuffle stem (space-to-depth) reads
    each 2x2 block as 4C channels at half resolution, and the output is a convolution at half
    resolution followed by a pixel shuffle (depth-to-space). Version 1 (model files written
    before it; read without a ``version``) had a 3x3 convolution stem and a transposed
    convolution to a 3x3 output convolution at full resolution, about twice the time per pixel.
    Run in ``channels_last`` memory format (about 2x faster on CPU).
``seed``
    The published Keras design the project started from: conv 64-32-16 with max-pooling, a
    mirrored decoder with nearest-neighbour upsampling and a sigmoid output. Kept so users and
    benchmarks can compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .modelconfig import PRESETS, VERSIONS, ModelConfig

__all__ = ["PRESETS", "VERSIONS", "Autoencoder", "ModelConfig", "build_model"]


def _autocast_on(device_type: str) -> bool:
    """Whether an autocast context is active for ``device_type`` ("cpu", "cuda", ...)."""
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4 takes no device type
        if device_type == "cpu":
            return bool(torch.is_autocast_cpu_enabled())
        return bool(torch.is_autocast_enabled())


@dataclass
class _Parts:
    encoder: nn.Module
    decoder: nn.Module
    extra: dict[str, Any] = field(default_factory=dict)


def _default_parts(cfg: ModelConfig) -> _Parts:
    """Version 1 of ``default``: a full-resolution stem and output (older model files)."""
    def act() -> nn.Module:
        # In place: saves a full-size memory pass per layer (ReLU follows a conv whose
        # output autograd does not need).
        return nn.ReLU(inplace=True)

    w = cfg.widths
    enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, w[0], 3, padding=1), act()]
    prev = w[0]
    for i, width in enumerate(w):
        nxt = w[i + 1] if i + 1 < len(w) else width
        enc += [nn.Conv2d(prev, nxt, 3, stride=2, padding=1), act()]
        if i + 1 < len(w):
            enc += [nn.Conv2d(nxt, nxt, 3, padding=1), act()]
        prev = nxt
    enc += [nn.Conv2d(prev, cfg.latent_channels, 1)]

    dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, prev, 1), act()]
    for i in reversed(range(len(w))):
        out = w[i]
        dec += [nn.ConvTranspose2d(prev, out, 2, stride=2), act()]
        if i > 0:
            dec += [nn.Conv2d(out, out, 3, padding=1), act()]
        prev = out
    dec += [nn.Conv2d(prev, cfg.in_channels, 3, padding=1), nn.Sigmoid()]
    return _Parts(nn.Sequential(*enc), nn.Sequential(*dec))


def _shuffle_parts(cfg: ModelConfig) -> _Parts:
    """Version 2 of ``default``: every convolution at half resolution or below."""
    def act() -> nn.Module:
        return nn.ReLU(inplace=True)

    w = cfg.widths
    # Space-to-depth: each 2x2 block of the input becomes 4 * C channels at half resolution.
    enc: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(4 * cfg.in_channels, w[0], 3,
                                                            padding=1), act(),
                            nn.Conv2d(w[0], w[0], 3, padding=1), act()]
    for i in range(1, len(w)):
        enc += [nn.Conv2d(w[i - 1], w[i], 3, stride=2, padding=1), act()]
        if i + 1 < len(w):
            enc += [nn.Conv2d(w[i], w[i], 3, padding=1), act()]
    enc += [nn.Conv2d(w[-1], cfg.latent_channels, 1)]

    dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, w[-1], 1), act()]
    for i in reversed(range(1, len(w))):
        dec += [nn.ConvTranspose2d(w[i], w[i - 1], 2, stride=2), act(),
                nn.Conv2d(w[i - 1], w[i - 1], 3, padding=1), act()]
    # Depth-to-space: 4 * C channels at half resolution become the C-channel image.
    dec += [nn.Conv2d(w[0], 4 * cfg.in_channels, 3, padding=1), nn.PixelShuffle(2),
            nn.Sigmoid()]
    return _Parts(nn.Sequential(*enc), nn.Sequential(*dec))


def _seed_parts(cfg: ModelConfig) -> _Parts:
    enc: list[nn.Module] = []
    prev = cfg.in_channels
    for width in cfg.widths:
        enc += [nn.Conv2d(prev, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        prev = width
    enc += [nn.Conv2d(prev, cfg.latent_channels, 1)]
    dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, prev, 1), nn.ReLU()]
    for width in reversed(cfg.widths):
        dec += [nn.Conv2d(prev, width, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2)]
        prev = width
    dec += [nn.Conv2d(prev, cfg.in_channels, 3, padding=1), nn.Sigmoid()]
    return _Parts(nn.Sequential(*enc), nn.Sequential(*dec))


class Autoencoder(nn.Module):
    """A fully convolutional autoencoder.

    Parameters
    ----------
    config : ModelConfig
        Architecture.

    Notes
    -----
    Inputs are float tensors ``(N, C, H, W)`` in [0, 1] with ``H`` and ``W`` multiples of
    :attr:`align`; outputs have the same shape. The latent code is a map
    ``(N, latent_channels, H / align, W / align)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.preset == "seed":
            parts = _seed_parts(config)
        elif config.version == 1:
            parts = _default_parts(config)
        else:
            parts = _shuffle_parts(config)
        self.encoder = parts.encoder
        self.decoder = parts.decoder

    @property
    def align(self) -> int:
        """Input sides must be multiples of this number."""
        return self.config.align

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to latent code maps.

        Under a reduced-precision :func:`torch.autocast` (see :func:`.device.autocast`) the
        last layer, the 1 x 1 projection to the latent channels, runs in float32 on its
        float32-cast input, so the codes the latent density reads carry no bfloat16 rounding
        of their own (on a patch-mode model trained 5 epochs on synthetic fields, the
        windows' log-density moved from fp32 by a median 0.49 and at most 2.1, against 0.62
        and 5.0 with the projection in bfloat16); it costs a 1 x 1 convolution at
        1 / ``align`` of the resolution.
        """
        if not _autocast_on(x.device.type):
            return self.encoder(x)
        h = self.encoder[:-1](x)
        with torch.autocast(x.device.type, enabled=False):
            return self.encoder[-1](h.float())

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map latent code maps back to images."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``."""
        return self.decoder(self.encoder(x))

    def init_output_bias(self, mean: Sequence[float]) -> None:
        """Start the output of some channels at a given mean intensity.

        Sets the bias of the last convolution (before the sigmoid, and before the pixel
        shuffle in version 2) of each channel whose ``mean`` is not NaN to ``logit(mean)``,
        ``mean`` clipped to ``[0.01, 0.99]``; NaN channels keep their random start.

        Parameters
        ----------
        mean : sequence of float
            Starting output intensity (in ``[0, 1]``) of each channel, or NaN.
        """
        values = np.asarray(mean, dtype=np.float64)
        if values.shape != (self.config.in_channels,):
            raise ValueError(f"expected {self.config.in_channels} channel means; got "
                             f"shape {values.shape}")
        last = [m for m in self.decoder.modules() if isinstance(m, nn.Conv2d)][-1]
        repeat = last.out_channels // self.config.in_channels  # 4 before a pixel shuffle
        clipped = np.clip(values, 0.01, 0.99)
        with torch.no_grad():
            for c in np.flatnonzero(np.isfinite(values)):
                logit = float(np.log(clipped[c] / (1.0 - clipped[c])))
                last.bias[c * repeat:(c + 1) * repeat] = logit

    def flops_per_pixel(self) -> float:
        """Multiply-add FLOPs (x2) of one forward pass per input pixel.

        Counted analytically from the layers, for the benchmark's GFLOP/s figure.
        """
        side = 8 * self.align
        param = next(self.parameters())
        x = torch.zeros(1, self.config.in_channels, side, side, device=param.device,
                        dtype=param.dtype)
        total = 0.0

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            nonlocal total
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                total += 2.0 * k * module.in_channels / module.groups * out.numel()
            elif isinstance(module, nn.ConvTranspose2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                total += 2.0 * k * module.out_channels * inputs[0].numel()

        handles = [m.register_forward_hook(hook) for m in self.modules()
                   if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        try:
            with torch.inference_mode():
                self.forward(x)
        finally:
            for h in handles:
                h.remove()
        return total / (side * side)


def build_model(config: ModelConfig) -> Autoencoder:
    """Build an autoencoder in ``channels_last`` memory format.

    Parameters
    ----------
    config : ModelConfig
        Architecture.

    Returns
    -------
    Autoencoder
        A freshly initialised network (use ``torch.manual_seed`` first for reproducibility).
    """
    return Autoencoder(config).to(memory_format=torch.channels_last)
