"""Fully convolutional autoencoders built from a small, serialisable config.

Two presets:

``default``
    Designed for a 2-core CPU: a cheap full-resolution stem, strided convolutions whose channel
    count grows as the resolution falls, transposed-convolution upsampling, and a narrow 1x1
    bottleneck. Run in ``channels_last`` memory format (about 2x faster on CPU).
``seed``
    The published Keras design the project started from: conv 64-32-16 with max-pooling, a
    mirrored decoder with nearest-neighbour upsampling and a sigmoid output. Kept so users and
    benchmarks can compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

PRESETS = ("default", "seed")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an autoencoder.

    Parameters
    ----------
    preset : {"default", "seed"}
        Network family.
    in_channels : int
        Number of image channels (1 for grayscale, 3 for RGB, any number from 1 to
        ``images.MAX_CHANNELS`` for other channel sets).
    widths : tuple of int
        Channels per resolution level, from full resolution down. The number of levels is the
        depth; the input is downsampled by ``2 ** len(widths)``.
    latent_channels : int
        Channels of the latent code map (the bottleneck).
    """

    preset: str = "default"
    in_channels: int = 3
    widths: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 8

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; expected one of {PRESETS}")
        if not 1 <= self.in_channels <= 16:  # images.MAX_CHANNELS
            raise ValueError(f"in_channels must be 1 to 16, got {self.in_channels}")
        if not self.widths or min(self.widths) < 1 or self.latent_channels < 1:
            raise ValueError("widths and latent_channels must be positive")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    @classmethod
    def from_preset(cls, preset: str, in_channels: int = 3) -> ModelConfig:
        """Return the configuration of a named preset."""
        if preset == "seed":
            return cls(preset="seed", in_channels=in_channels, widths=(64, 32, 16),
                       latent_channels=16)
        return cls(preset=preset, in_channels=in_channels)

    @property
    def align(self) -> int:
        """Input sides must be multiples of this number."""
        return 2 ** len(self.widths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(preset=str(d["preset"]), in_channels=int(d["in_channels"]),
                   widths=tuple(int(w) for w in d["widths"]),
                   latent_channels=int(d["latent_channels"]))


@dataclass
class _Parts:
    encoder: nn.Module
    decoder: nn.Module
    extra: dict[str, Any] = field(default_factory=dict)


def _default_parts(cfg: ModelConfig) -> _Parts:
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
        parts = _seed_parts(config) if config.preset == "seed" else _default_parts(config)
        self.encoder = parts.encoder
        self.decoder = parts.decoder

    @property
    def align(self) -> int:
        """Input sides must be multiples of this number."""
        return self.config.align

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, C, H, W)`` to latent code maps."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map latent code maps back to images."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``."""
        return self.decoder(self.encoder(x))

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
