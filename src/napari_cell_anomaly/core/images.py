"""Image validation, channel handling, intensity scaling, resizing, patches and file I/O.

Everything that touches raw pixels goes through this module first, so the rest of the
package can rely on one representation: ``float32`` arrays of shape ``(H, W, C)`` with
``C in {1, 3}``.

Functions that validate input raise :class:`ImageError`, whose message is a single line
saying what was expected and what was given.
"""

from __future__ import annotations

import glob
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
    "IMAGE_SUFFIXES",
    "MAX_CHANNELS",
    "MIN_SIDE",
    "ImageError",
    "LoadedImages",
    "Preprocessing",
    "as_float_image",
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

#: At most this many pixel values are pooled by :meth:`Preprocessing.fit`.
_FIT_MAX_VALUES = 2_000_000

_EXPECTED_SHAPES = "expected a 2-D image (H, W), (H, W, 3) or (H, W, 4)"
_LUMA_WEIGHTS = np.array([0.21, 0.72, 0.07], dtype=np.float32)
_GLOB_CHARS = frozenset("*?[")


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


def as_float_image(image: Any, *, name: str = "image") -> np.ndarray:
    """Validate a 2-D image and convert it to ``float32`` ``(H, W, C)``.

    Parameters
    ----------
    image : array_like
        A 2-D image: ``(H, W)`` grayscale, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA. Also
        accepted: ``(H, W, 1)`` grayscale, ``(H, W, 2)`` grayscale + alpha, and
        channels-first ``(3, H, W)`` / ``(4, H, W)`` colour images (as some TIFF files are
        stored). Any integer, unsigned, floating or boolean dtype.
    name : str, optional
        How the image is called in error messages, e.g. its file name.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(H, W, C)`` with ``C`` 1 (grayscale) or 3 (RGB). Alpha
        is dropped. Values are the raw intensities, not rescaled (``True`` becomes 1.0).

    Raises
    ------
    ImageError
        If the array is not numeric, is not a 2-D image (for example a 3-D stack
        ``(Z, H, W)``), has a side shorter than :data:`MIN_SIDE`, contains NaN or infinite
        pixels, or is constant.
    """
    label = _label(name)
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise ImageError(f"{label} has dtype {arr.dtype}; expected a numeric (integer, "
                         "float or bool) pixel array")
    if arr.ndim == 3:
        if arr.shape[-1] in (1, 2, 3, 4):
            pass
        elif arr.shape[0] in (3, 4):
            arr = np.moveaxis(arr, 0, -1)  # channels-first colour image
        else:
            raise ImageError(f"{label} is a 3-D stack of shape {arr.shape}; {_EXPECTED_SHAPES}")
    elif arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    else:
        raise ImageError(f"{label} is a {arr.ndim}-D array of shape {arr.shape}; "
                         f"{_EXPECTED_SHAPES}")

    height, width, channels = arr.shape
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"{label} is {height}x{width} pixels; expected at least "
                         f"{MIN_SIDE} pixels per side (MIN_SIDE = {MIN_SIDE})")

    if channels == 2:  # grayscale + alpha
        arr = arr[:, :, :1]
    elif channels == 4:  # RGBA
        arr = arr[:, :, :3]

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


def _match_channels(image: np.ndarray, channels: str, label: str) -> np.ndarray:
    """Convert a ``(H, W, C)`` float image to the channel layout of a model."""
    if channels == "rgb":
        if image.shape[2] != 3:
            prefix = "" if label == "image" else f"{label}: "
            raise ImageError(f"{prefix}model expects RGB images; got a grayscale image")
        return image
    if image.shape[2] == 3:
        return luminosity(image)
    return image


# --------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------


def _is_real_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


@dataclass(frozen=True)
class Preprocessing:
    """Channel layout and intensity range that map raw images to the model's input.

    Parameters
    ----------
    channels : {"rgb", "gray"}
        Channel layout the model expects: 3 colour channels or 1 luminosity channel.
    low, high : float
        Raw intensities mapped to 0 and 1; values outside are clipped. ``high > low``.

    Examples
    --------
    >>> import numpy as np
    >>> prep = Preprocessing.fit([np.arange(64, dtype=np.uint8).reshape(8, 8)])
    >>> prep
    Preprocessing(channels='gray', low=0.0, high=255.0)
    >>> prep(np.full((8, 8), 255, np.uint8) - np.eye(8, dtype=np.uint8)).shape
    (8, 8, 1)
    """

    channels: Literal["rgb", "gray"]
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.channels not in ("rgb", "gray"):
            raise ValueError(f"channels must be 'rgb' or 'gray'; got {self.channels!r}")
        for key in ("low", "high"):
            value = getattr(self, key)
            if not _is_real_number(value) or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number; got {value!r}")
            object.__setattr__(self, key, float(value))
        if not self.high > self.low:
            raise ValueError(f"high must be greater than low; got low={self.low!r}, "
                             f"high={self.high!r}")

    @property
    def n_channels(self) -> int:
        """Number of channels of a preprocessed image (3 for ``"rgb"``, 1 for ``"gray"``)."""
        return 3 if self.channels == "rgb" else 1

    @classmethod
    def fit(
        cls,
        images: Iterable[Any],
        channels: Literal["rgb", "gray"] | None = None,
    ) -> Preprocessing:
        """Choose the channel layout and intensity range from training images.

        Parameters
        ----------
        images : iterable of array_like
            Raw images (anything :func:`as_float_image` accepts).
        channels : {"rgb", "gray"}, optional
            Force a channel layout. By default ``"rgb"`` if any image has colour channels,
            else ``"gray"``.

        Returns
        -------
        Preprocessing
            ``low, high = 0, 255`` if every image is ``uint8``; otherwise the pooled 0.5 and
            99.5 percentiles of the (channel-converted) pixel values. The pool is a
            deterministic random subsample of at most about two million values.

        Raises
        ------
        ImageError
            If there are no images, an image is invalid, or a grayscale image is given while
            the layout is ``"rgb"``.
        ValueError
            If ``channels`` is not ``"rgb"``, ``"gray"`` or ``None``.
        """
        raw = list(images)
        if not raw:
            raise ImageError("cannot fit preprocessing: expected at least one image; got none")
        if channels not in (None, "rgb", "gray"):
            raise ValueError(f"channels must be 'rgb', 'gray' or None; got {channels!r}")
        floats = [as_float_image(img, name=f"image {i}") for i, img in enumerate(raw)]
        if channels is None:
            channels = "rgb" if any(f.shape[2] == 3 for f in floats) else "gray"
        converted = [
            _match_channels(f, channels, _label(f"image {i}")) for i, f in enumerate(floats)
        ]
        if all(np.asarray(img).dtype == np.uint8 for img in raw):
            return cls(channels=channels, low=0.0, high=255.0)

        total = sum(c.size for c in converted)
        rng = np.random.default_rng(0)
        pool = []
        for c in converted:
            flat = c.reshape(-1)
            if total > _FIT_MAX_VALUES:
                k = max(1, math.ceil(flat.size * _FIT_MAX_VALUES / total))
                flat = flat[rng.integers(0, flat.size, size=k)]
            pool.append(flat)
        values = np.concatenate(pool)
        low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
        if not high > low:
            low, high = float(values.min()), float(values.max())
        if not high > low:
            high = low + 1.0
        return cls(channels=channels, low=low, high=high)

    def __call__(self, image: Any, *, name: str = "image") -> np.ndarray:
        """Preprocess one raw image for the model.

        Parameters
        ----------
        image : array_like
            Raw image (anything :func:`as_float_image` accepts).
        name : str, optional
            How the image is called in error messages.

        Returns
        -------
        numpy.ndarray
            ``float32`` ``(H, W, C)`` in ``[0, 1]`` with ``C`` = :attr:`n_channels`.

        Raises
        ------
        ImageError
            If the image is invalid or is grayscale while the model expects RGB. (RGB
            images given to a grayscale model are converted to luminosity.)
        """
        img = _match_channels(as_float_image(image, name=name), self.channels, _label(name))
        out = (img - np.float32(self.low)) / np.float32(self.high - self.low)
        np.clip(out, 0.0, 1.0, out=out)
        return out.astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description, inverse of :meth:`from_dict`."""
        return {"channels": self.channels, "low": float(self.low), "high": float(self.high)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output.

        Parameters
        ----------
        data : Mapping
            Exactly the keys ``"channels"``, ``"low"`` and ``"high"``.

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
        missing = sorted(expected - set(data))
        unknown = sorted(str(k) for k in set(data) - expected)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown {', '.join(unknown)}")
            raise ValueError(f"bad preprocessing settings ({'; '.join(parts)}); expected "
                             "keys channels, low, high")
        return cls(channels=data["channels"], low=data["low"], high=data["high"])


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
    p = Path(path)
    if not p.exists():
        raise ImageError(f"cannot read image {p.name!r}: no such file ({str(p)!r})")
    if p.is_dir():
        raise ImageError(f"cannot read image {p.name!r}: it is a directory, expected a file")
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
        Raw arrays of the readable, valid images, as read from disk.
    paths : list of pathlib.Path
        Path of each entry of ``images``.
    failures : list of (pathlib.Path, str)
        Files that could not be read or are not valid images, with the reason.
    """

    images: list[np.ndarray] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)


def load_images(paths: Iterable[str | os.PathLike[str]]) -> LoadedImages:
    """Read and validate image files, collecting failures instead of raising.

    Parameters
    ----------
    paths : iterable of path-like
        Image files, e.g. from :func:`find_images`.

    Returns
    -------
    LoadedImages
        The raw arrays (as read; validated with :func:`as_float_image` but not converted),
        their paths, and ``(path, reason)`` for every file that failed.
    """
    result = LoadedImages()
    for path in paths:
        p = Path(path)
        try:
            data = read_image(p)
            as_float_image(data, name=p.name)
        except ImageError as err:
            result.failures.append((p, str(err)))
            continue
        result.images.append(data)
        result.paths.append(p)
    return result
