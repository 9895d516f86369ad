"""The architecture of an autoencoder as a small, serialisable config (no torch needed).

:class:`ModelConfig` is what a model file records about its network; :mod:`.model` builds the
network from it. Kept free of torch so that the command line and settings can read presets
and defaults without loading torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PRESETS = ("default", "seed")
#: Design revisions of the ``default`` preset (see the module docstring); the last is current.
VERSIONS = (1, 2)


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
        Channels per resolution level, from the finest down (full resolution in version 1,
        half resolution in version 2). The number of levels is the depth; the input is
        downsampled by ``2 ** len(widths)``.
    latent_channels : int
        Channels of the latent code map (the bottleneck).
    version : int
        Design revision of the ``default`` preset: 2 (current) has no convolution at full
        resolution, ``widths[i]`` being the channels at ``1 / 2 ** (i + 1)`` of the input
        resolution; 1 (older model files, which record no version) has a full-resolution
        stem and output, ``widths[i]`` at ``1 / 2 ** i``. The ``seed`` preset has one design
        and is always version 1.
    """

    preset: str = "default"
    in_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 8
    version: int = 2

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown model preset {self.preset!r}; expected one of {PRESETS}")
        if not 1 <= self.in_channels <= 16:  # images.MAX_CHANNELS
            raise ValueError(f"in_channels must be 1 to 16, got {self.in_channels}")
        if not self.widths or min(self.widths) < 1 or self.latent_channels < 1:
            raise ValueError("widths and latent_channels must be positive")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.version not in VERSIONS:
            raise ValueError(f"unknown model version {self.version!r}; expected one of "
                             f"{VERSIONS}")
        if self.preset == "seed":
            object.__setattr__(self, "version", 1)

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
                   latent_channels=int(d["latent_channels"]),
                   # Files written before versions were recorded hold version 1.
                   version=int(d.get("version", 1)))
