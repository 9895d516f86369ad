"""Overlap-tile inference for fully convolutional networks on images of any size.

A fully convolutional network can in principle be applied to a whole image at once, but memory
grows with the image. :func:`predict_tiled` instead cuts the image into overlapping tiles, runs the
network on small batches of tiles and keeps only the centre of every tile (the overlap-tile strategy
of U-Net, Ronneberger et al. 2015). Pixels closer than ``margin`` to an interior tile border are
discarded, so as long as the network's receptive field fits within the margin, every kept pixel
has seen exactly the same context as in an untiled run: the tiled result equals the untiled one,
without seams and without blending.

Two details make this exact for networks with down- and up-sampling:

* the image is padded (by reflection) to a multiple of ``align`` so every tile side is a valid
  input size, and the padding is cropped from the result;
* tile origins are multiples of ``align``, so the down-sampling grid of every tile coincides with
  the grid of the whole image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

__all__ = ["PredictionStopped", "predict_tiled"]

TileFn = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]
StopFn = Callable[[], bool]


class PredictionStopped(Exception):
    """:func:`predict_tiled` was asked to stop (its ``stop`` callable returned True).

    Not a ``ValueError``: nothing is wrong with the input, the caller cancelled the work.
    """


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an ``int`` or raise ``ValueError`` if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _validate(tile: object, margin: object, align: object, batch_size: object) -> None:
    """Check the tiling parameters; raise ``ValueError`` with a clear message if inconsistent."""
    tile = _check_int("tile", tile, 1)
    margin = _check_int("margin", margin, 0)
    align = _check_int("align", align, 1)
    _check_int("batch_size", batch_size, 1)
    if tile % align:
        raise ValueError(f"tile ({tile}) must be a multiple of align ({align})")
    if margin % align:
        raise ValueError(f"margin ({margin}) must be a multiple of align ({align})")
    if tile <= 2 * margin:
        raise ValueError(
            f"tile ({tile}) must be larger than 2 * margin ({2 * margin}), "
            "otherwise tiles have no central region to keep"
        )


def _pad_to_multiple(image: np.ndarray, align: int) -> np.ndarray:
    """Pad the two last axes of ``image`` at their end up to a multiple of ``align``.

    Reflection padding is used when the side is long enough (``pad <= side - 1``); otherwise
    symmetric padding (``pad <= side``) and, for still smaller sides, edge padding.
    """
    out = image
    for axis in (1, 2):
        side = out.shape[axis]
        pad = -side % align
        if pad == 0:
            continue
        if pad <= side - 1:
            mode = "reflect"
        elif pad <= side:
            mode = "symmetric"
        else:
            mode = "edge"
        widths = [(0, 0)] * out.ndim
        widths[axis] = (0, pad)
        out = np.pad(out, widths, mode=mode)
    return out


def _axis_plan(length: int, tile: int, margin: int) -> list[tuple[int, int, int]]:
    """Plan the tiles along one axis of (padded) size ``length``.

    Parameters
    ----------
    length : int
        Side of the padded image, a multiple of ``align``.
    tile : int
        Tile side (a multiple of ``align``).
    margin : int
        Pixels discarded on tile sides that are interior to the image.

    Returns
    -------
    list of (origin, start, stop)
        The tile spans ``[origin, origin + min(tile, length))`` and contributes the output range
        ``[start, stop)``. The output ranges partition ``[0, length)`` and each lies at least
        ``margin`` pixels away from any tile border that is interior to the image.
    """
    if length <= tile:
        return [(0, 0, length)]
    stride = tile - 2 * margin
    origins = list(range(0, length - tile, stride))
    origins.append(length - tile)
    plan = []
    start = 0
    for i, origin in enumerate(origins):
        stop = length if i == len(origins) - 1 else origin + tile - margin
        plan.append((origin, start, stop))
        start = stop
    return plan


def _fit_tile(length: int, tile: int, margin: int, align: int) -> int:
    """The smallest aligned tile side that covers ``length`` with as few tiles as ``tile``.

    With a fixed tile side the last tile mostly overlaps its neighbour (a 2048 px side in
    512 px tiles with 32 px margins computes 2560 px); shrinking every tile to the least side
    that needs no more tiles computes close to ``length`` plus the margins.
    """
    if length <= tile:
        return tile
    inner = length - 2 * margin
    n = -(-inner // (tile - 2 * margin))
    side = -(-inner // n) + 2 * margin
    side = -(-side // align) * align
    return min(tile, max(side, 2 * margin + align))


def _batches(n: int, batch_size: int) -> Iterator[range]:
    """Yield consecutive index ranges of at most ``batch_size`` covering ``range(n)``."""
    for first in range(0, n, batch_size):
        yield range(first, min(first + batch_size, n))


def predict_tiled(
    fn: TileFn,
    image: np.ndarray,
    *,
    tile: int = 512,
    margin: int = 32,
    align: int = 8,
    batch_size: int = 4,
    progress: ProgressFn | None = None,
    stop: StopFn | None = None,
) -> np.ndarray:
    """Apply a fully convolutional function to an image of any size, tile by tile.

    The image is padded by reflection to a multiple of ``align``. If the padded image fits in a
    single tile, ``fn`` is called once on it. Otherwise the overlap-tile strategy is used: tiles
    of ``tile`` x ``tile`` pixels at origins that are multiples of ``align``, overlapping by
    ``2 * margin``; each tile contributes only its central region (``margin`` pixels are
    discarded on every side that is interior to the image). The result therefore equals the
    untiled result wherever the receptive field of ``fn`` fits within ``margin``.

    Memory is bounded by the tile batch: tiles are cut, run and written into a preallocated
    output ``batch_size`` at a time, under :func:`torch.inference_mode`.

    Parameters
    ----------
    fn : callable
        Maps a float32 tensor ``(N, C, h, w)`` (``h`` and ``w`` multiples of ``align``, in
        ``torch.channels_last`` memory format, on the CPU) to a tensor ``(N, K, h, w)``; ``K``
        may differ from ``C``. It must be translation-equivariant (fully convolutional) for the
        tiled result to match the untiled one, and should move the batch to its own device.
    image : numpy.ndarray
        Image ``(C, H, W)`` with ``H, W >= 1``; converted to float32. May be a view such as
        ``x.transpose(2, 0, 1)`` of a channels-last ``(H, W, C)`` image, which the tiles are
        then cut from without any copy of the whole image.
    tile : int, optional
        Tile side in pixels, a multiple of ``align``. Default 512.
    margin : int, optional
        Pixels discarded at interior tile borders, a multiple of ``align``, with
        ``tile > 2 * margin``. Should be at least the receptive-field radius of ``fn``.
        Default 32.
    align : int, optional
        Input sides and tile origins are multiples of this (e.g. ``2 ** depth`` for a network
        that down-samples ``depth`` times by 2). Default 8.
    batch_size : int, optional
        Maximum number of tiles passed to ``fn`` in one call. Default 4.
    progress : callable, optional
        Called as ``progress(done_tiles, total_tiles)`` after every batch.
    stop : callable, optional
        Called without arguments before every batch of tiles; when it returns True the
        prediction ends at once by raising :class:`PredictionStopped` (so a GUI can cancel a
        large image within one batch, e.g. when its window closes).

    Returns
    -------
    numpy.ndarray
        Float32 array ``(K, H, W)``.

    Raises
    ------
    ValueError
        If the parameters are inconsistent (``tile`` or ``margin`` not a multiple of ``align``,
        ``tile <= 2 * margin``, non-positive sizes), if ``image`` is not ``(C, H, W)`` with
        positive sides, or if ``fn`` returns a tensor of the wrong shape.
    PredictionStopped
        If ``stop()`` returned True before the last batch.

    Examples
    --------
    >>> import numpy as np, torch
    >>> net = torch.nn.Conv2d(3, 1, 3, padding=1).eval()
    >>> out = predict_tiled(net, np.zeros((3, 700, 900), np.float32), tile=256, margin=16)
    >>> out.shape
    (1, 700, 900)
    """
    _validate(tile, margin, align, batch_size)
    tile, margin, align, batch_size = int(tile), int(margin), int(align), int(batch_size)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(
            f"image must be a (C, H, W) array with C, H, W >= 1, got shape {image.shape}"
        )
    _, height, width = image.shape
    padded = _pad_to_multiple(image, align)
    tile_y = _fit_tile(padded.shape[1], tile, margin, align)
    tile_x = _fit_tile(padded.shape[2], tile, margin, align)
    ys = _axis_plan(padded.shape[1], tile_y, margin)
    xs = _axis_plan(padded.shape[2], tile_x, margin)
    th, tw = min(tile_y, padded.shape[1]), min(tile_x, padded.shape[2])
    tiles = [(y, x) for y in ys for x in xs]  # coordinates only, never pixel data
    total = len(tiles)
    out: np.ndarray | None = None
    done = 0
    with torch.inference_mode():
        for index in _batches(total, batch_size):
            if stop is not None and stop():
                raise PredictionStopped(f"stopped after {done} of {total} tiles")
            origins = [(tiles[i][0][0], tiles[i][1][0]) for i in index]
            # Cut the tiles channels-last, (N, h, w, C) in memory, which is the
            # torch.channels_last layout of an (N, C, h, w) tensor: one copy of the pixels
            # (from a channels-last image, a view of its (C, H, W) transpose, a plain copy).
            batch = np.stack([padded[:, oy : oy + th, ox : ox + tw].transpose(1, 2, 0)
                              for oy, ox in origins])
            inp = torch.from_numpy(batch).permute(0, 3, 1, 2)
            inp = inp.contiguous(memory_format=torch.channels_last)  # no copy: already so
            res = fn(inp)
            if (
                not isinstance(res, torch.Tensor)
                or res.ndim != 4
                or res.shape[0] != len(index)
                or tuple(res.shape[2:]) != (th, tw)
            ):
                got = tuple(res.shape) if isinstance(res, torch.Tensor) else type(res).__name__
                raise ValueError(
                    f"fn must map a ({len(index)}, C, {th}, {tw}) tensor to a "
                    f"({len(index)}, K, {th}, {tw}) tensor, got {got}"
                )
            if out is None:
                out = np.empty((res.shape[1], height, width), dtype=np.float32)
            elif res.shape[1] != out.shape[0]:
                raise ValueError(
                    f"fn returned {res.shape[1]} channels for one batch and {out.shape[0]} "
                    "for another"
                )
            res_np = res.detach().to(device="cpu", dtype=torch.float32).numpy()
            for j, i in enumerate(index):
                (oy, y0, y1), (ox, x0, x1) = tiles[i]
                y1, x1 = min(y1, height), min(x1, width)  # crop the alignment padding
                if y0 >= y1 or x0 >= x1:
                    continue
                out[:, y0:y1, x0:x1] = res_np[j, :, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
            done += len(index)
            if progress is not None:
                progress(done, total)
    assert out is not None  # total >= 1 because H, W >= 1
    return out
