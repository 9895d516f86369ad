"""Preprocessing: the channel layout and intensity range that map raw images to a model's input.

A model records one :class:`Preprocessing` (from :meth:`Preprocessing.fit` on its training
images): the channel layout (RGB, grayscale or any number of channels), the raw intensities
mapped to 0 and 1 (one range, or one per channel), the channel names and the training
images' dtype. :meth:`Preprocessing.transform` validates an image with
:func:`.images.as_float_image`, matches its channels to the layout, scales and clips it, and
measures the clipped fraction that :meth:`Preprocessing.range_warning` turns into a warning.

Functions that validate input raise :class:`.images.ImageError`, whose message is a single
line saying what was expected and what was given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .images import ImageError, _label, as_float_image, luminosity

__all__ = [
    "CHANNEL_LAYOUTS",
    "CLIPPED_WARN_FRACTION",
    "Preprocessing",
]

#: Channel layouts of :class:`Preprocessing`.
CHANNEL_LAYOUTS = ("rgb", "gray", "multi")

#: :meth:`Preprocessing.range_warning` warns when more than this fraction of an image's
#: values lie outside the training range (the training images have at most about 1 %).
CLIPPED_WARN_FRACTION = 0.05

#: At most this many pixel values are pooled by :meth:`Preprocessing.fit`.
_FIT_MAX_VALUES = 2_000_000

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# channel matching
# --------------------------------------------------------------------------------------


def _describe_channels(n: int) -> str:
    """``"a grayscale image"``, ``"an RGB image"``, ``"a 2-channel image"``..."""
    return {1: "a grayscale image (1 channel)", 3: "an RGB or 3-channel image"}.get(
        n, f"a {n}-channel image")


def _match_channels(image: np.ndarray, prep: Preprocessing, label: str) -> np.ndarray:
    """Convert a ``(H, W, C)`` float image to the channel layout of a model."""
    prefix = "" if label == "image" else f"{label}: "
    have = image.shape[2]
    if prep.channels == "rgb":
        if have == 3:
            return image
        if have == 4:  # an RGB model reads 4 channels as RGBA
            return image[:, :, :3]
        raise ImageError(f"{prefix}model expects RGB images (3 channels); got "
                         f"{_describe_channels(have)}")
    if prep.channels == "gray":
        if have == 1:
            return image
        if have in (3, 4):
            logger.info("%sRGB image converted to luminosity (0.21 R + 0.72 G + 0.07 B) for a "
                        "grayscale model", prefix)
            return luminosity(image)
        raise ImageError(f"{prefix}model expects grayscale images (1 channel); got "
                         f"{_describe_channels(have)}")
    if have != prep.n_channels:
        names = f" ({', '.join(prep.names)})" if prep.names else ""
        raise ImageError(f"{prefix}model expects {prep.n_channels} channels{names}; got "
                         f"{_describe_channels(have)}")
    return image



# --------------------------------------------------------------------------------------
# intensity range
# --------------------------------------------------------------------------------------


def _is_real_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _bounds(value: Any, key: str) -> float | tuple[float, ...]:
    """A finite float, or a tuple of finite floats (one per channel)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        items = tuple(value)
        if not items or not all(_is_real_number(v) and math.isfinite(v) for v in items):
            raise ValueError(f"{key} must be finite numbers; got {value!r}")
        return tuple(float(v) for v in items)
    if not _is_real_number(value) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number; got {value!r}")
    return float(value)


def _percentile_range(values: np.ndarray) -> tuple[float, float]:
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if not high > low:
        low, high = float(values.min()), float(values.max())
    if not high > low:
        high = low + 1.0
    return low, high


def _rgb_layout(raw: list[np.ndarray], floats: list[np.ndarray]) -> bool:
    """Training images read as RGB colour: 3 channels (or 4, RGBA) of uint8 each."""
    return all(f.shape[2] in (3, 4) and np.asarray(r).dtype == np.uint8
               for r, f in zip(raw, floats, strict=True))


@dataclass(frozen=True)
class Preprocessing:
    """Channel layout and intensity range that map raw images to the model's input.

    Parameters
    ----------
    channels : {"rgb", "gray", "multi"}
        ``"rgb"``: 3 colour channels (4-channel input is read as RGBA, alpha dropped;
        grayscale input is refused). ``"gray"``: 1 channel (RGB input is converted to
        luminosity, logged). ``"multi"``: ``len(low)`` channels in a fixed order, taken as
        they are (any other channel count is refused).
    low, high : float or tuple of float
        Raw intensities mapped to 0 and 1; values outside are clipped. One number for all
        channels (``"rgb"``, ``"gray"``), or one per channel (``"multi"``). ``high > low``.
    names : tuple of str, optional
        Channel names in the model's order (e.g. napari layer names), for messages.
    dtype : str, optional
        The training images' dtype(s), e.g. ``"uint16"`` (``None`` in old model files).

    Examples
    --------
    >>> import numpy as np
    >>> prep = Preprocessing.fit([np.arange(64, dtype=np.uint8).reshape(8, 8)])
    >>> prep
    Preprocessing(channels='gray', low=0.0, high=255.0, names=None, dtype='uint8')
    >>> prep(np.full((8, 8), 255, np.uint8) - np.eye(8, dtype=np.uint8)).shape
    (8, 8, 1)
    """

    channels: Literal["rgb", "gray", "multi"]
    low: float | tuple[float, ...]
    high: float | tuple[float, ...]
    names: tuple[str, ...] | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.channels not in CHANNEL_LAYOUTS:
            raise ValueError(f"channels must be one of {CHANNEL_LAYOUTS}; got "
                             f"{self.channels!r}")
        low, high = _bounds(self.low, "low"), _bounds(self.high, "high")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        per_channel = isinstance(low, tuple)
        if per_channel != isinstance(high, tuple) or (
                per_channel and len(low) != len(high)):  # type: ignore[arg-type]
            raise ValueError(f"low and high must both be numbers or both one per channel; got "
                             f"low={low!r}, high={high!r}")
        if self.channels == "multi" and not (per_channel and len(low) >= 2):  # type: ignore
            raise ValueError("channels='multi' needs low and high with one value per channel "
                             f"(at least 2); got low={low!r}")
        if self.channels != "multi" and per_channel and len(low) != self.n_channels:  # type: ignore
            raise ValueError(f"channels={self.channels!r} has {self.n_channels} channels; got "
                             f"{len(low)} low values")  # type: ignore[arg-type]
        if not np.all(np.asarray(high) > np.asarray(low)):
            raise ValueError(f"high must be greater than low; got low={low!r}, high={high!r}")
        if self.names is not None:
            names = tuple(str(n) for n in self.names)
            if len(names) != self.n_channels:
                raise ValueError(f"{len(names)} channel names for {self.n_channels} channels")
            object.__setattr__(self, "names", names)

    @property
    def n_channels(self) -> int:
        """Number of channels of a preprocessed image (3 ``"rgb"``, 1 ``"gray"``, else
        ``len(low)``)."""
        if self.channels == "multi":
            return len(self.low)  # type: ignore[arg-type]
        return 3 if self.channels == "rgb" else 1

    @classmethod
    def fit(
        cls,
        images: Iterable[Any],
        channels: Literal["rgb", "gray", "multi"] | None = None,
        names: Sequence[str] | None = None,
    ) -> Preprocessing:
        """Choose the channel layout and intensity range from training images.

        Parameters
        ----------
        images : iterable of array_like
            Raw images (anything :func:`as_float_image` accepts), all with the same number
            of channels.
        channels : {"rgb", "gray", "multi"}, optional
            Force a channel layout. By default ``"gray"`` for one channel; ``"rgb"`` when
            every image is ``uint8`` with 3 channels (or 4: RGBA, alpha dropped); else
            ``"multi"`` (so 3- and 4-channel images of other dtypes are separate channels).
        names : sequence of str, optional
            Channel names, recorded in the model.

        Returns
        -------
        Preprocessing
            ``low, high = 0, 255`` (for every channel) if every image is ``uint8``;
            otherwise the 0.5 and 99.5 percentiles of the pixel values, pooled over the
            channels for ``"rgb"`` (keeps the colour balance) and per channel for
            ``"multi"``. The pool is a deterministic random subsample of at most about two
            million values. ``dtype`` records the images' dtype(s).

        Raises
        ------
        ImageError
            If there are no images, an image is invalid, the images differ in channel
            count, or a grayscale image is given while the layout is ``"rgb"``.
        ValueError
            If ``channels`` is not one of the layouts or ``None``.
        """
        raw = [np.asarray(img) for img in images]
        if not raw:
            raise ImageError("cannot fit preprocessing: expected at least one image; got none")
        if channels not in (None, *CHANNEL_LAYOUTS):
            raise ValueError(f"channels must be one of {CHANNEL_LAYOUTS} or None; got "
                             f"{channels!r}")
        floats = [as_float_image(img, name=f"image {i}") for i, img in enumerate(raw)]
        counts = sorted({f.shape[2] for f in floats})
        if channels is None:
            if counts == [1]:
                channels = "gray"
            elif _rgb_layout(raw, floats):
                channels = "rgb"
            elif len(counts) == 1:
                channels = "multi"
            elif set(counts) <= {1, 3, 4}:
                channels = "rgb"  # grayscale among colour images: refused below
            else:
                raise ImageError(f"training images differ in channel count "
                                 f"({', '.join(map(str, counts))}); expected the same "
                                 "channels in every image")
        if channels == "multi" and (len(counts) != 1 or counts[0] < 2):
            raise ImageError(f"channels='multi' needs at least 2 channels, the same in every "
                             f"image; got {', '.join(map(str, counts))}")
        dtypes = ",".join(sorted({str(r.dtype) for r in raw}))
        probe = cls(channels=channels, low=0.0 if channels != "multi" else (0.0,) * counts[0],
                    high=1.0 if channels != "multi" else (1.0,) * counts[0])
        converted = [
            _match_channels(f, probe, _label(f"image {i}")) for i, f in enumerate(floats)
        ]
        n = probe.n_channels
        if names is not None and len(tuple(names)) != n:
            raise ImageError(f"{len(tuple(names))} channel names given for {n}-channel images")
        names_t = tuple(str(v) for v in names) if names is not None else None
        if all(r.dtype == np.uint8 for r in raw):
            if channels == "multi":
                return cls(channels, (0.0,) * n, (255.0,) * n, names_t, dtypes)
            return cls(channels, 0.0, 255.0, names_t, dtypes)

        total = sum(c.size for c in converted)
        rng = np.random.default_rng(0)
        pool = []
        for c in converted:
            flat = c.reshape(-1, n) if channels == "multi" else c.reshape(-1)
            if total > _FIT_MAX_VALUES:
                k = max(1, math.ceil(flat.size * _FIT_MAX_VALUES / total))
                flat = flat[rng.integers(0, flat.shape[0], size=k)]
            pool.append(flat)
        values = np.concatenate(pool)
        if channels == "multi":
            ranges = [_percentile_range(values[:, k]) for k in range(n)]
            return cls(channels, tuple(r[0] for r in ranges), tuple(r[1] for r in ranges),
                       names_t, dtypes)
        low, high = _percentile_range(values)
        return cls(channels, low, high, names_t, dtypes)

    def scale(self, image: np.ndarray, *, in_place: bool = False) -> np.ndarray:
        """Map the raw intensities of a channel-matched ``(..., C)`` float32 array to the
        model's ``[0, 1]`` range, unclipped (``(x - low) / (high - low)`` per channel); with
        ``in_place``, into ``image`` itself (which the caller owns), saving an image-sized
        buffer."""
        if isinstance(self.low, tuple):
            low = np.asarray(self.low, dtype=np.float32)
            span = (np.asarray(self.high, dtype=np.float64)
                    - np.asarray(self.low, dtype=np.float64)).astype(np.float32)
        else:
            low, span = np.float32(self.low), np.float32(self.high - self.low)
        if low.ndim == 1 and image.ndim >= 2 and image.flags.c_contiguous:
            # Per-channel constants broadcast along the last axis run NumPy's inner loop over
            # C (3) values at a time; repeated along a whole row they run over W * C (the
            # same operations, about 4x faster on a 2048 x 2048 RGB field).
            rows = image.reshape(*image.shape[:-2], image.shape[-2] * image.shape[-1])
            if in_place:
                rows -= np.tile(low, image.shape[-2])
                out = rows
            else:
                out = rows - np.tile(low, image.shape[-2])
            out /= np.tile(span, image.shape[-2])
            return out.reshape(image.shape)
        if in_place:
            image -= low
            image /= span
            return image
        out = image - low
        out /= span  # in place: one image-sized temporary fewer
        return out

    def transform(self, image: Any, *, name: str = "image",
                  channel_axis: int | None = None) -> tuple[np.ndarray, float]:
        """Preprocess one raw image and measure how much of it the range clips.

        Parameters
        ----------
        image : array_like
            Raw image (anything :func:`as_float_image` accepts).
        name : str, optional
            How the image is called in error messages.
        channel_axis : int, optional
            The axis holding the channels, for arrays that are not channels-last.

        Returns
        -------
        x : numpy.ndarray
            ``float32`` ``(H, W, C)`` in ``[0, 1]`` with ``C`` = :attr:`n_channels`.
        clipped_fraction : float
            Fraction of the values (pixels x channels) outside ``[low, high]``, set to 0 or
            1 by the clipping. The training images themselves have at most about 1 % (0 %
            for ``uint8`` ranges); far more means the image lies outside the training range.

        Raises
        ------
        ImageError
            If the image is invalid or its channels do not match the model (see the
            ``channels`` layouts).
        """
        img = _match_channels(as_float_image(image, name=name, channel_axis=channel_axis),
                              self, _label(name))
        # a float32 copy made here is scaled where it lies (no second image-sized buffer);
        # the caller's own array never is
        own = (isinstance(image, np.ndarray) and img.dtype == np.float32
               and not np.may_share_memory(img, image))
        out = self.scale(img, in_place=own)
        clipped = np.count_nonzero(out < 0.0) + np.count_nonzero(out > 1.0)
        np.clip(out, 0.0, 1.0, out=out)
        return out.astype(np.float32, copy=False), float(clipped / max(out.size, 1))

    def __call__(self, image: Any, *, name: str = "image",
                 channel_axis: int | None = None) -> np.ndarray:
        """Preprocess one raw image for the model (:meth:`transform` without the clipped
        fraction).

        Returns
        -------
        numpy.ndarray
            ``float32`` ``(H, W, C)`` in ``[0, 1]`` with ``C`` = :attr:`n_channels`.
        """
        return self.transform(image, name=name, channel_axis=channel_axis)[0]

    def range_warning(self, clipped_fraction: float, dtype: Any = None,
                      name: str = "image") -> str | None:
        """One line saying an image lies outside the training range, or None.

        Parameters
        ----------
        clipped_fraction : float
            From :meth:`transform`; above :data:`CLIPPED_WARN_FRACTION` warns.
        dtype : numpy dtype, optional
            The raw image's dtype: an integer dtype of another bit depth than the training
            images' (``uint8`` image, ``uint16`` model, or the reverse) warns too.
        name : str
            How the image is called.
        """
        parts = []
        if clipped_fraction > CLIPPED_WARN_FRACTION:
            parts.append(f"{100 * clipped_fraction:.0f}% of its pixel values lie outside the "
                         "model's training range and were clipped")
        trained = self.dtype.split(",") if self.dtype else []
        if dtype is not None and len(trained) == 1 and np.dtype(dtype).kind in "iu":
            mine = np.dtype(dtype)
            theirs = np.dtype(trained[0])
            if theirs.kind in "iu" and theirs.itemsize != mine.itemsize:
                parts.append(f"it is {mine} but the model was trained on {theirs} images")
        if not parts:
            return None
        return (f"{_label(name)}: {'; '.join(parts)} (scores of such images are not "
                "comparable with the training images')")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description, inverse of :meth:`from_dict` (the keys of
        old model files, plus ``names`` and ``dtype`` when set)."""
        def plain(v: float | tuple[float, ...]) -> float | list[float]:
            return [float(x) for x in v] if isinstance(v, tuple) else float(v)

        out: dict[str, Any] = {"channels": self.channels, "low": plain(self.low),
                               "high": plain(self.high)}
        if self.names is not None:
            out["names"] = list(self.names)
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output.

        Parameters
        ----------
        data : Mapping
            The keys ``"channels"``, ``"low"`` and ``"high"``, and optionally ``"names"``
            and ``"dtype"`` (absent in old model files).

        Returns
        -------
        Preprocessing

        Raises
        ------
        ValueError
            If keys are missing or unknown, or a value is invalid.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"preprocessing settings must be a mapping; got "
                             f"{type(data).__name__}")
        expected = {"channels", "low", "high"}
        optional = {"names", "dtype"}
        missing = sorted(expected - set(data))
        unknown = sorted(str(k) for k in set(data) - expected - optional)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown {', '.join(unknown)}")
            raise ValueError(f"bad preprocessing settings ({'; '.join(parts)}); expected "
                             "keys channels, low, high (and optionally names, dtype)")
        names = data.get("names")
        dtype = data.get("dtype")
        return cls(channels=data["channels"], low=data["low"], high=data["high"],
                   names=tuple(names) if names is not None else None,
                   dtype=str(dtype) if dtype is not None else None)
