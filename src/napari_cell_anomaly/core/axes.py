"""Reading image files into one documented axis layout: planes first, channels last.

:func:`read_image_axes` reads a file and returns its pixels as ``(*planes, H, W, C)`` with an
axes string naming every axis, e.g. ``"YXC"`` for a 2-D image, ``"ZYXC"`` for a z-stack,
``"TZYXC"`` for a time series of z-stacks. The last axis always holds the channels (length 1
for a single-channel image); its letter is ``"S"`` when they are the colour samples of an RGB
picture (TIFF photometric RGB; PNG, JPEG and BMP colour images) and ``"C"`` otherwise. Every
axis before ``Y`` is a plane axis, with the file's own letter (``Z``, ``T``; ``I`` for pages
of unknown meaning, ``Q`` for an axis tifffile could not name); ``arr.reshape(-1, H, W, C)``
gives the planes one after the other. Axes of length 1 other than ``Y``, ``X`` and the
channels are dropped.

Which axis holds the channels comes from the file's metadata (OME-TIFF and ImageJ hyperstack
axes, TIFF samples per pixel, the colour type of PNG/JPEG/BMP files), never from a guess:

- a ``C`` axis, or a ``S`` (samples) axis, holds the channels; an alpha channel is dropped
  where the file says it is one (TIFF photometric RGB with an extra sample; PNG grey + alpha
  and RGBA);
- ``Z``, ``T`` and the other named axes are planes;
- an axis the metadata leaves unnamed (``I``, ``Q``) is a plane axis when it is longer than
  :data:`MAX_CHANNELS` or when another axis holds the channels; otherwise it is ambiguous and
  :class:`~.images.ImageError` says so, unless ``channel_axis`` settles it.
"""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from .images import MAX_CHANNELS, ImageError, check_image_file, unreadable

__all__ = ["NO_CHANNEL_AXIS", "read_2d_image", "read_image_axes", "resolve_axes"]

#: ``channel_axis`` value that says the file has no channel axis (every unnamed axis is a
#: plane axis).
NO_CHANNEL_AXIS = "none"

_UNNAMED = frozenset("IQ")


def _tiff_axes(path: Path) -> tuple[np.ndarray, str, bool, bool]:
    """Pixels of a TIFF file's first series, its axes, whether the samples are RGB and
    whether the last sample is an alpha channel."""
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        data = series.asarray()
        axes = str(series.axes)
        page = series.keyframe
        rgb = int(page.photometric) == int(tifffile.PHOTOMETRIC.RGB)
        alpha = rgb and len(getattr(page, "extrasamples", ()) or ()) > 0
    return np.asarray(data), axes, rgb, alpha


def _other_axes(data: np.ndarray) -> tuple[str, bool, bool]:
    """Axes of an image decoded by imageio (PNG, JPEG, BMP, ...): ``YX`` or ``YXS`` (2
    samples = grey + alpha, 3 = RGB, 4 = RGBA, as these formats define them)."""
    if data.ndim == 2:
        return "YX", False, False
    if data.ndim == 3 and data.shape[-1] in (2, 3, 4):
        return "YXS", data.shape[-1] in (3, 4), data.shape[-1] in (2, 4)
    if data.ndim == 4 and data.shape[-1] in (3, 4):  # animated formats: frames of colour
        return "IYXS", True, data.shape[-1] == 4
    return "I" * (data.ndim - 2) + "YX", False, False


def resolve_axes(data: np.ndarray, axes: str, *, channel_axis: int | str | None = None,
                 rgb: bool = False, alpha: bool = False, name: str = "image"
                 ) -> tuple[np.ndarray, str]:
    """Bring an array whose axes are named by ``axes`` into ``(*planes, H, W, C)``.

    Parameters
    ----------
    data : numpy.ndarray
        The pixels as stored.
    axes : str
        One letter per axis of ``data`` (tifffile's letters): ``Y`` and ``X`` once each,
        ``C`` / ``S`` for channels or samples, ``I`` / ``Q`` for unnamed axes, anything else
        (``Z``, ``T``, ...) a plane axis.
    channel_axis : int or "none" or None
        Index (into ``data``'s axes; negative counts from the end) of the axis that holds the
        channels, overriding what ``axes`` leaves unnamed; ``"none"``: no channel axis. Not
        ``Y`` or ``X``, and not a different axis than one the metadata names as channels.
    rgb : bool
        The ``S`` axis holds RGB colour samples (output letter ``S``).
    alpha : bool
        The last sample of the ``S`` axis is an alpha channel, dropped.
    name : str
        How the image is called in messages.

    Returns
    -------
    (numpy.ndarray, str)
        The array, transposed (a view where possible) to ``(*planes, H, W, C)``, and its
        axes string (see the module docstring).

    Raises
    ------
    ImageError
        For an axis that stays ambiguous, a bad ``channel_axis`` or axes that do not match.
    """
    label = "image" if name == "image" else f"image {name!r}"
    axes = axes.upper()
    if len(axes) != data.ndim or axes.count("Y") != 1 or axes.count("X") != 1:
        raise ImageError(f"{label} has shape {data.shape} with axes {axes!r}; expected one "
                         "letter per axis with one Y and one X")
    letters = list(axes)
    named = [i for i, a in enumerate(letters) if a in "CS" and data.shape[i] > 1]
    if len(named) > 1:
        raise ImageError(f"{label} has several channel axes ({axes!r}, shape {data.shape}); "
                         "expected at most one C or S axis")
    if channel_axis is not None and str(channel_axis).lower() == NO_CHANNEL_AXIS:
        if named:
            raise ImageError(f"{label}: its metadata names axis {named[0]} as channels "
                             f"({axes!r}); channel axis 'none' contradicts it")
        chan: int | None = None
    elif channel_axis is not None:
        try:
            chan = int(channel_axis)
        except (TypeError, ValueError):
            raise ImageError(f"channel axis must be an axis index or 'none'; got "
                             f"{channel_axis!r}") from None
        if not -data.ndim <= chan < data.ndim:
            raise ImageError(f"channel axis {chan} is out of range for {label} of shape "
                             f"{data.shape} (axes {axes!r})")
        chan %= data.ndim
        if letters[chan] in "YX":
            raise ImageError(f"channel axis {chan} of {label} is its {letters[chan]} axis "
                             f"(axes {axes!r}, shape {data.shape}); expected another axis")
        if named and named[0] != chan:
            raise ImageError(f"{label}: its metadata names axis {named[0]} as channels "
                             f"({axes!r}); channel axis {chan} contradicts it")
        if data.shape[chan] > MAX_CHANNELS:
            raise ImageError(f"channel axis {chan} of {label} has {data.shape[chan]} entries; "
                             f"expected at most {MAX_CHANNELS} channels")
        if letters[chan] != "S":
            rgb = alpha = False
    else:
        chan = named[0] if named else None
        unnamed = [i for i, a in enumerate(letters)
                   if a in _UNNAMED and 1 < data.shape[i] <= MAX_CHANNELS]
        if chan is None and unnamed:
            i = unnamed[0]
            raise ImageError(
                f"{label} has shape {data.shape} and its metadata does not say whether axis "
                f"{i} (length {data.shape[i]}) holds channels or planes; pass channel_axis={i} "
                f"(--channel-axis {i}) for channels or channel_axis='none' (--channel-axis "
                "none) for planes")
    if chan is not None and data.shape[chan] == 1:
        chan = None

    if chan is not None and letters[chan] == "S" and alpha:
        data = np.take(data, np.arange(data.shape[chan] - 1), axis=chan)
    y, x = letters.index("Y"), letters.index("X")
    planes = [i for i in range(data.ndim) if i not in (y, x, chan) and data.shape[i] > 1]
    dropped = [i for i in range(data.ndim) if i not in (y, x, chan) and data.shape[i] == 1]
    if dropped:
        data = data.squeeze(axis=tuple(dropped))
        remap = [i for i in range(len(letters)) if i not in dropped]
        letters = [letters[i] for i in remap]
        y, x = remap.index(y), remap.index(x)
        planes = [remap.index(i) for i in planes]
        chan = remap.index(chan) if chan is not None else None
    if chan is None:
        out = data.transpose(*planes, y, x)[..., np.newaxis]
        last = "C"
    else:
        out = data.transpose(*planes, y, x, chan)
        last = "S" if (rgb and letters[chan] == "S" and out.shape[-1] == 3) else "C"
    plane_letters = "".join(letters[i] for i in planes)
    return out, plane_letters + "YX" + last


def read_image_axes(path: str | os.PathLike[str], channel_axis: int | str | None = None
                    ) -> tuple[np.ndarray, str]:
    """Read an image file into ``(*planes, H, W, C)`` with its axes resolved.

    Parameters
    ----------
    path : str or os.PathLike
        ``.tif``/``.tiff`` files are read with tifffile (first series; OME-TIFF and ImageJ
        axes, samples per pixel), anything else with imageio.
    channel_axis : int or "none" or None
        Settles what the metadata leaves ambiguous: the index, in the array as stored
        (:func:`~.images.read_image`'s shape), of the axis that holds the channels, or
        ``"none"`` when no axis does.

    Returns
    -------
    (numpy.ndarray, str)
        The pixels (dtype as stored) and their axes string, e.g. ``"YXC"``, ``"YXS"`` (RGB)
        or ``"ZYXC"``; see :mod:`.axes`.

    Raises
    ------
    ImageError
        If the file cannot be read, or which axis holds the channels stays ambiguous (the
        message says how to settle it).

    Examples
    --------
    >>> arr, axes = read_image_axes("cells.ome.tif")      # doctest: +SKIP
    >>> arr.shape, axes                                   # doctest: +SKIP
    ((12, 512, 512, 2), 'ZYXC')
    """
    p = check_image_file(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            data, axes, rgb, alpha = _tiff_axes(p)
        else:
            data = np.asarray(iio.imread(p))
            axes, rgb, alpha = _other_axes(data)
    except Exception as exc:  # decoders raise many types; report them all the same way
        raise unreadable(p, exc) from exc
    if data.size == 0:
        raise ImageError(f"cannot read image {p.name!r}: the file holds no pixel data "
                         f"(decoded shape {data.shape})")
    return resolve_axes(data, axes, channel_axis=channel_axis, rgb=rgb, alpha=alpha,
                        name=p.name)


def read_2d_image(path: str | os.PathLike[str], channel_axis: int | str | None = None
                  ) -> tuple[np.ndarray, str]:
    """Read one 2-D image file as ``(H, W, C)`` (see :func:`read_image_axes`).

    Returns
    -------
    (numpy.ndarray, str)
        The pixels and their axes, ``"YXC"`` or ``"YXS"`` (RGB colour samples).

    Raises
    ------
    ImageError
        As :func:`read_image_axes`, and for a file with plane axes (a z-stack or time series).
    """
    arr, axes = read_image_axes(path, channel_axis)
    if len(axes) > 3:
        raise ImageError(f"image {Path(path).name!r} is a stack (axes {axes!r}, shape "
                         f"{arr.shape}); expected one 2-D image (Y, X and channels)")
    return arr, axes
