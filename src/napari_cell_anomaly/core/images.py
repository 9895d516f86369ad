"""Image validation, channel handling, resizing, patches and file I/O.

Everything that touches raw pixels goes through this module first, so the rest of the
package can rely on one representation: ``float32`` arrays of shape ``(H, W, C)``, channels
last (see :func:`as_float_image` for the array conventions, and
:class:`.preprocessing.Preprocessing` for the channel layouts of a model and its intensity
scaling: RGB, grayscale or any number of channels).

Functions that validate input raise :class:`ImageError`, whose message is a single line
saying what was expected and what was given.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

_EXPECTED_SHAPES = ("expected a 2-D image (H, W) or (H, W, C), channels last, C <= "
                    f"{MAX_CHANNELS}")
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
    them as RGBA is :class:`.preprocessing.Preprocessing`'s business). A 3-D array whose
    last axis is longer than 16 but whose first is not, such as ``(3, H, W)``, is ambiguous
    (channels first, or a stack of planes?) and refused unless ``channel_axis`` says which
    axis holds the channels.

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
    # Nearly every image differs from its first pixel within its first row or column; only
    # one that does not pays for the image-sized comparison.
    if (not ((out[0] != first).any() or (out[:, 0] != first).any())
            and np.all(out == first)):
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
        raise unreadable(p, exc) from exc
    arr = np.asarray(data)
    if arr.size == 0:
        raise ImageError(f"cannot read image {p.name!r}: the file holds no pixel data "
                         f"(decoded shape {arr.shape})")
    return arr


def unreadable(path: Path, exc: Exception) -> ImageError:
    """The one-line error for a file that no decoder could read: the decoder's first line,
    or, where imageio found no decoder for the content at all, what that means."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Could not find a backend" in reason:  # imageio: no plugin recognised the bytes
        reason = (f"its content is not a {path.suffix.lstrip('.').upper()} image (nor any "
                  "format the installed decoders read)")
    return ImageError(f"cannot read image {path.name!r}: {reason} ({type(exc).__name__})")


def _is_image_file(path: Path) -> bool:
    # A link to a file that is gone is kept: reading it then says so, instead of the file
    # silently missing from a folder's images.
    return path.suffix.lower() in IMAGE_SUFFIXES and (
        path.is_file() or (path.is_symlink() and not path.exists()))


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
