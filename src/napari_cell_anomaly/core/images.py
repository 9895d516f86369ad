"""Image validation, channel handling, intensity scaling, resizing, patches and file I/O.

Everything that touches raw pixels goes through this module first, so the rest of the
package can rely on one representation: ``float32`` arrays of shape ``(H, W, C)``, channels
last (see :func:`as_float_image` for the array conventions and :class:`Preprocessing` for the
channel layouts of a model: RGB, grayscale or any number of channels).

Functions that validate input raise :class:`ImageError`, whose message is a single line
saying what was expected and what was given.
"""

from __future__ import annotations

import glob
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import imageio.v3 as iio
import numpy as np
import tifffile
from skimage.transform import resize as _sk_resize

__all__ = [
    "CHANNEL_LAYOUTS",
    "CLIPPED_WARN_FRACTION",
    "IMAGE_SUFFIXES",
    "MAX_CHANNELS",
    "MIN_SIDE",
    "ImageError",
    "LoadedImages",
    "Preprocessing",
    "as_float_image",
    "check_image_file",
    "find_images",
    "load_images",
    "luminosity",
    "random_patches",
    "read_image",
    "resize",
]

#: Smallest accepted image side, in pixels.
MIN_SIDE = 8

#: Most channels an image may have: a longer last axis is not read as channels.
MAX_CHANNELS = 16

#: File suffixes (lower case) recognised as images by :func:`find_images`.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

#: Channel layouts of :class:`Preprocessing`.
CHANNEL_LAYOUTS = ("rgb", "gray", "multi")

#: :meth:`Preprocessing.range_warning` warns when more than this fraction of an image's
#: values lie outside the training range (the training images have at most about 1 %).
CLIPPED_WARN_FRACTION = 0.05

#: At most this many pixel values are pooled by :meth:`Preprocessing.fit`.
_FIT_MAX_VALUES = 2_000_000

_EXPECTED_SHAPES = ("expected a 2-D image (H, W) or (H, W, C), channels last, C <= "
                    f"{MAX_CHANNELS}")
_LUMA_WEIGHTS = np.array([0.21, 0.72, 0.07], dtype=np.float32)
_GLOB_CHARS = frozenset("*?[")

logger = logging.getLogger(__name__)


class ImageError(ValueError):
    """Bad image input.

    ``str(err)`` is one line that says what was expected and what was given.
    """


def _label(name: str) -> str:
    """Return how an image is referred to in messages, e.g. ``image 'cell.png'``."""
    return "image" if name == "image" else f"image {name!r}"


def _fmt_value(value: float) -> str:
    """Format a pixel value for a message (``7.0``, ``0.25``, ``1e+06``)."""
    return repr(float(value)) if abs(value) < 1e6 else f"{value:.6g}"


# --------------------------------------------------------------------------------------
# validation and conversion
# --------------------------------------------------------------------------------------


def _to_channels_last(arr: np.ndarray, channel_axis: int | None, label: str) -> np.ndarray:
    """``(H, W)`` / ``(H, W, C)`` / any 3-D array with ``channel_axis`` -> ``(H, W, C)``."""
    if channel_axis is not None:
        if arr.ndim != 3:
            raise ImageError(f"{label} has shape {arr.shape}; channel_axis={channel_axis} "
                             "needs a 3-D array (two image axes and one channel axis)")
        try:
            axis = int(channel_axis)
        except (TypeError, ValueError):
            raise ImageError(f"channel_axis must be an axis index; got "
                             f"{channel_axis!r}") from None
        if not -3 <= axis < 3:
            raise ImageError(f"channel_axis={axis} is out of range for {label} of shape "
                             f"{arr.shape}")
        arr = np.moveaxis(arr, axis, -1)
        if arr.shape[-1] > MAX_CHANNELS:
            raise ImageError(f"{label} has {arr.shape[-1]} entries along channel_axis="
                             f"{axis}; expected at most {MAX_CHANNELS} channels")
        return arr
    if arr.ndim == 2:
        return arr[:, :, np.newaxis]
    if arr.ndim != 3:
        raise ImageError(f"{label} is a {arr.ndim}-D array of shape {arr.shape}; "
                         f"{_EXPECTED_SHAPES}")
    if arr.shape[-1] <= MAX_CHANNELS:
        return arr
    if arr.shape[0] <= MAX_CHANNELS:
        raise ImageError(
            f"{label} has shape {arr.shape}: channels first or a 3-D stack of {arr.shape[0]} "
            "planes? Expected channels last (H, W, C): pass channel_axis=0 if axis 0 holds "
            "channels, or score the planes one by one")
    raise ImageError(f"{label} is a 3-D stack of shape {arr.shape}; {_EXPECTED_SHAPES}")


def as_float_image(image: Any, *, name: str = "image",
                   channel_axis: int | None = None) -> np.ndarray:
    """Validate a 2-D image and convert it to ``float32`` ``(H, W, C)``.

    Array convention: channels last. ``(H, W)`` is one channel; ``(H, W, C)`` is ``C``
    channels, ``1 <= C <= MAX_CHANNELS`` (16), whatever ``C`` is: ``(H, W, 2)`` is two
    channels (not grey + alpha) and ``(H, W, 4)`` four channels (whether an RGB model reads
    them as RGBA is :class:`Preprocessing`'s business). A 3-D array whose last axis is longer
    than 16 but whose first is not, such as ``(3, H, W)``, is ambiguous (channels first, or a
    stack of planes?) and refused unless ``channel_axis`` says which axis holds the channels.

    Parameters
    ----------
    image : array_like
        ``(H, W)`` or ``(H, W, C)``; with ``channel_axis``, any 3-D array. Any integer,
        unsigned, floating or boolean dtype.
    name : str, optional
        How the image is called in error messages, e.g. its file name.
    channel_axis : int, optional
        The axis that holds the channels (moved last).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(H, W, C)``, every channel kept. Values are the raw
        intensities, not rescaled (``True`` becomes 1.0).

    Raises
    ------
    ImageError
        If the array is not numeric, is not a 2-D image (for example a 3-D stack
        ``(Z, H, W)``, or an ambiguous ``(C, H, W)``), has a side shorter than
        :data:`MIN_SIDE`, contains NaN or infinite pixels, or is constant.
    """
    label = _label(name)
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise ImageError(f"{label} has dtype {arr.dtype}; expected a numeric (integer, "
                         "float or bool) pixel array")
    arr = _to_channels_last(arr, channel_axis, label)

    height, width, _ = arr.shape
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"{label} is {height}x{width} pixels; expected at least "
                         f"{MIN_SIDE} pixels per side (MIN_SIDE = {MIN_SIDE})")

    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ImageError(f"{label} contains {bad} NaN or infinite pixels; expected "
                             "finite pixel values")
        biggest = float(np.abs(arr).max())
        if biggest > np.finfo(np.float32).max:
            raise ImageError(f"{label} has values beyond the float32 range (largest "
                             f"magnitude {_fmt_value(biggest)}); expected finite float32 "
                             "pixel values")
    out = arr.astype(np.float32)  # always a new array

    first = out[0, 0]
    if np.all(out == first):
        if out.shape[2] == 1:
            value = _fmt_value(first[0])
        else:
            value = "(" + ", ".join(_fmt_value(v) for v in first) + ")"
        raise ImageError(f"{label} is constant (every pixel is {value}): nothing to analyse")
    return out


def luminosity(rgb: np.ndarray) -> np.ndarray:
    """Convert an RGB image to luminosity, ``0.21 R + 0.72 G + 0.07 B``.

    Parameters
    ----------
    rgb : numpy.ndarray
        Array of shape ``(H, W, 3)`` (a 4th alpha channel is ignored). An ``(H, W, 1)``
        array is returned unchanged (as ``float32``).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(H, W, 1)``.

    Raises
    ------
    ImageError
        If the array is not ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageError(f"luminosity needs an (H, W, 3) RGB image; got shape {arr.shape}")
    if arr.shape[-1] == 1:
        return arr.astype(np.float32, copy=False)
    rgb32 = arr[:, :, :3].astype(np.float32, copy=False)
    return (rgb32 @ _LUMA_WEIGHTS)[:, :, np.newaxis]


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
# preprocessing
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

    def scale(self, image: np.ndarray) -> np.ndarray:
        """Map the raw intensities of a channel-matched ``(..., C)`` float32 array to the
        model's ``[0, 1]`` range, unclipped (``(x - low) / (high - low)`` per channel)."""
        if isinstance(self.low, tuple):
            low = np.asarray(self.low, dtype=np.float32)
            span = (np.asarray(self.high, dtype=np.float64)
                    - np.asarray(self.low, dtype=np.float64)).astype(np.float32)
        else:
            low, span = np.float32(self.low), np.float32(self.high - self.low)
        return (image - low) / span

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
        out = self.scale(img)
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

# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (height, width); got {shape!r}") from None
    if height < 1 or width < 1 or (height, width) != tuple(shape):
        raise ValueError(f"shape must be two positive integers; got {tuple(shape)!r}")
    return height, width


def resize(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize an image with bilinear interpolation, anti-aliased when shrinking.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` or ``(H, W)`` array.
    shape : tuple of int
        Output ``(height, width)``.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(height, width, C)`` (or ``(height, width)`` for a 2-D
        input); the value range is preserved (not rescaled).
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ImageError(f"resize needs an (H, W) or (H, W, C) image; got shape {arr.shape}")
    height, width = _check_shape(shape)
    if (height, width) == arr.shape[:2]:
        return arr.astype(np.float32, copy=True)
    downscale = height < arr.shape[0] or width < arr.shape[1]
    out = _sk_resize(
        arr.astype(np.float32, copy=False),
        (height, width, *arr.shape[2:]),
        order=1,
        mode="reflect",
        anti_aliasing=downscale,
        preserve_range=True,
    )
    return out.astype(np.float32, copy=False)


def random_patches(
    image: np.ndarray,
    size: int,
    count: int,
    rng: np.random.Generator | int | None,
) -> np.ndarray:
    """Cut square patches at uniformly random positions.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` (or ``(H, W)``, treated as one channel) with ``H, W >= size``.
    size : int
        Patch side in pixels.
    count : int
        Number of patches.
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for one.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(count, size, size, C)`` with the image's dtype.

    Raises
    ------
    ImageError
        If the image is smaller than ``size`` on either side.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    if arr.ndim != 3:
        raise ImageError(f"random_patches needs an (H, W, C) image; got shape {arr.shape}")
    size, count = int(size), int(count)
    if size < 1 or count < 0:
        raise ValueError(f"size must be >= 1 and count >= 0; got size={size}, count={count}")
    height, width = arr.shape[:2]
    if height < size or width < size:
        raise ImageError(f"image is {height}x{width} pixels; patches of {size}x{size} need "
                         f"at least {size} pixels per side")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ys = gen.integers(0, height - size + 1, size=count)
    xs = gen.integers(0, width - size + 1, size=count)
    windows = np.lib.stride_tricks.sliding_window_view(arr, (size, size), axis=(0, 1))
    # windows: (H - size + 1, W - size + 1, C, size, size)
    return np.ascontiguousarray(np.moveaxis(windows[ys, xs], 1, -1))


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------


def check_image_file(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a Path; raise :class:`ImageError` if it is missing or a folder."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"cannot read image {p.name!r}: no such file ({str(p)!r})")
    if p.is_dir():
        raise ImageError(f"cannot read image {p.name!r}: it is a directory, expected a file")
    return p


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as it is stored (no conversion).

    Parameters
    ----------
    path : str or os.PathLike
        ``.tif``/``.tiff`` files are read with tifffile, anything else with imageio.

    Returns
    -------
    numpy.ndarray
        The pixel array as read.

    Raises
    ------
    ImageError
        If the file is missing or cannot be decoded; the message names the file and the
        reason.
    """
    p = check_image_file(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            data = tifffile.imread(p)
        else:
            data = iio.imread(p)
    except Exception as exc:  # decoders raise many types; report them all the same way
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"cannot read image {p.name!r}: {reason} "
                         f"({type(exc).__name__})") from exc
    arr = np.asarray(data)
    if arr.size == 0:
        raise ImageError(f"cannot read image {p.name!r}: the file holds no pixel data "
                         f"(decoded shape {arr.shape})")
    return arr


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def find_images(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, directories and glob patterns into a list of image files.

    Parameters
    ----------
    inputs : path-like or iterable of path-like
        Image files, directories (their image files, not recursive) and glob patterns
        (``*``, ``?``, ``[...]``; ``**`` recurses).

    Returns
    -------
    list of pathlib.Path
        Image files (suffix in :data:`IMAGE_SUFFIXES`, case-insensitive) in the order of
        ``inputs``, each directory's and pattern's matches sorted; duplicates (same resolved
        file) are kept only once.

    Raises
    ------
    ImageError
        If an input path does not exist, a named file is not an image file, or nothing is
        found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items = [Path(i) for i in inputs]
    if not items:
        raise ImageError("no images found: expected files, directories or glob patterns; "
                         "got no inputs")
    found: list[Path] = []
    for item in items:
        text = str(item)
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if _is_image_file(p)))
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageError(f"{text!r} is not an image file; expected one of "
                                 f"{', '.join(IMAGE_SUFFIXES)}")
            found.append(item)
        elif _GLOB_CHARS & set(text):
            found.extend(sorted(Path(m) for m in glob.glob(text, recursive=True)
                                if _is_image_file(Path(m))))
        else:
            raise ImageError(f"no such file or directory: {text!r}")

    unique: list[Path] = []
    seen: set[Path] = set()
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        where = ", ".join(repr(str(i)) for i in items)
        raise ImageError(f"no images found in {where} (looked for "
                         f"{', '.join(IMAGE_SUFFIXES)} files)")
    return unique


@dataclass
class LoadedImages:
    """Result of :func:`load_images`.

    Attributes
    ----------
    images : list of numpy.ndarray
        Raw arrays of the readable, valid images, ``(H, W, C)`` channels last (dtype as
        stored; see :func:`.axes.read_2d_image`).
    paths : list of pathlib.Path
        Path of each entry of ``images``.
    failures : list of (pathlib.Path, str)
        Files that could not be read or are not valid images, with the reason.
    axes : list of str
        Axes of each entry of ``images``: ``"YXC"``, or ``"YXS"`` for RGB colour samples.
    """

    images: list[np.ndarray] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    axes: list[str] = field(default_factory=list)


def load_images(paths: Iterable[str | os.PathLike[str]],
                channel_axis: int | str | None = None) -> LoadedImages:
    """Read and validate image files, collecting failures instead of raising.

    Parameters
    ----------
    paths : iterable of path-like
        Image files, e.g. from :func:`find_images`.
    channel_axis : int or "none", optional
        For files whose metadata leaves the channel axis ambiguous (see
        :func:`.axes.read_image_axes`).

    Returns
    -------
    LoadedImages
        The arrays (read with :func:`.axes.read_2d_image`: channels last, alpha dropped where
        the file says it is alpha; validated with :func:`as_float_image` but not converted),
        their paths and axes, and ``(path, reason)`` for every file that failed (stacks and
        ambiguous channel axes included).
    """
    from .axes import read_2d_image

    result = LoadedImages()
    for path in paths:
        p = Path(path)
        try:
            data, axes = read_2d_image(p, channel_axis)
            as_float_image(data, name=p.name)
        except ImageError as err:
            result.failures.append((p, str(err)))
            continue
        result.images.append(data)
        result.paths.append(p)
        result.axes.append(axes)
    return result
