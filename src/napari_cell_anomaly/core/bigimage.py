"""Images larger than memory: patch-mode scoring streamed tile by tile from disk.

:meth:`AnomalyDetector.score <.detector.AnomalyDetector.score>` holds the whole preprocessed
image and all its maps in memory (about 30 bytes per pixel for an RGB field). For a slide of
20,000 x 20,000 pixels that is far too much. :func:`score_streaming` computes the same numbers
while holding only a band of tiles at a time:

* the image is read lazily, region by region (:func:`open_image`: a tiled TIFF through
  tifffile's zarr view, an OME-Zarr / zarr store, or any array that can be sliced), and each
  region is preprocessed on its own (:func:`preprocess_block`, the same arithmetic as
  :class:`.preprocessing.Preprocessing`);
* the network runs on exactly the tiles, in exactly the batches, that
  :func:`.tiling.predict_tiled` uses for the whole image (same plan, same alignment padding),
  so the heatmap is the in-memory heatmap;
* as soon as a band of heatmap rows is complete, the model-size windows it covers are measured
  (the same windows, masks and density batches as :meth:`AnomalyDetector.analyse_field`), and
  the band is written to the heatmap file (:func:`write_heatmap`) and dropped;
* the image's numbers are those of its most anomalous window, as in memory.

The heatmap is written as a tiled, zlib-compressed BigTIFF (or, for a name ending in
``.zarr``, an OME-Zarr folder: :func:`write_heatmap_zarr`) under a temporary name in the
target folder and renamed only when complete: an error (a full disk included) leaves no
partial file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .images import MAX_CHANNELS, ImageError, _label
from .preprocessing import Preprocessing, _match_channels
from .scoring import DEFAULT_FPR, reduce_map
from .tiling import PredictionStopped, _axis_plan, _fit_tile, _pad_to_multiple, _validate

__all__ = ["STREAM_PIXELS", "HeatmapWriteError", "LazyImage", "StreamedScore", "as_lazy_image",
           "iter_score_streaming", "open_image", "preprocess_block", "score_file",
           "score_streaming", "should_stream", "write_heatmap", "write_heatmap_zarr"]

#: Patch-mode images with at least this many pixels (or stored in tiles) are scored by
#: :func:`score_streaming` in the command line: above it the in-memory path needs gigabytes.
STREAM_PIXELS = 4096 * 4096
#: Side of the square tiles of heatmap files written by :func:`write_heatmap`.
HEATMAP_TILE = 256
#: Windows encoded per batch (as in :meth:`AnomalyDetector.analyse_field`).
WINDOW_BATCH = 64

ProgressFn = Callable[[int, int], None]


class HeatmapWriteError(OSError):
    """Writing a heatmap file failed (e.g. the disk is full); nothing was left under its name.

    An ``OSError`` with the failing file as ``filename``: not a fault of the image scored, so
    a batch stops rather than skip the image.
    """


# ------------------------------------------------------------------------------------------
# lazy images
# ------------------------------------------------------------------------------------------
@dataclass
class LazyImage:
    """A 2-D image read region by region.

    Attributes
    ----------
    array : array_like
        Anything sliceable with NumPy semantics that returns arrays: a zarr array (e.g.
        tifffile's ``aszarr`` view of a TIFF), a dask array, a ``numpy.memmap``, an array.
    channel_axis : {None, 0, 2}
        None for ``(H, W)``, 2 for ``(H, W, C)``, 0 for ``(C, H, W)``.
    closer : callable, optional
        Called by :meth:`close` (e.g. to close the TIFF file).
    name : str
        How the image is called in error messages (e.g. its file name).
    """

    array: Any
    channel_axis: int | None
    closer: Callable[[], None] | None = None
    name: str = "image"

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        s = tuple(int(v) for v in self.array.shape)
        return (s[1], s[2]) if self.channel_axis == 0 else (s[0], s[1])

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Raw pixels of rows ``y0:y1`` and columns ``x0:x1`` as ``(h, w)`` or ``(h, w, C)``.

        Raises
        ------
        ImageError
            If the region cannot be read or decoded (one line naming the image).
        """
        try:
            if self.channel_axis == 0:
                return np.moveaxis(np.asarray(_compute(self.array[:, y0:y1, x0:x1])), 0, -1)
            return np.asarray(_compute(self.array[y0:y1, x0:x1]))
        except Exception as exc:  # stores and decoders raise many types; report them alike
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ImageError(f"cannot read {_label(self.name)} at rows {y0}:{y1}, columns "
                             f"{x0}:{x1}: {reason or type(exc).__name__}") from exc

    def close(self) -> None:
        """Release the file behind the image, if any."""
        if self.closer is not None:
            self.closer()
            self.closer = None

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compute(block: Any) -> Any:
    """A dask block -> its values (synchronously: this may run inside a dask task)."""
    if hasattr(block, "dask") and hasattr(block, "compute"):
        return block.compute(scheduler="synchronous")
    return block


def as_lazy_image(array: Any, *, channel_axis: int | None = None,
                  name: str = "image") -> LazyImage:
    """Wrap a sliceable 2-D image array without reading its pixels.

    Channels last, as everywhere in the package: ``(H, W)`` or ``(H, W, C)`` with ``C <=``
    :data:`.images.MAX_CHANNELS`; a channels-first ``(C, H, W)`` array needs
    ``channel_axis=0``. Leading axes of length 1 are dropped.

    Raises
    ------
    ImageError
        For another number of dimensions, too many channels or a non-numeric dtype.
    """
    label = _label(name)
    while len(array.shape) > 3 and int(array.shape[0]) == 1:
        array = array[0]
    shape = tuple(int(v) for v in array.shape)
    if np.dtype(array.dtype).kind not in "biuf":
        raise ImageError(f"{label} has dtype {array.dtype}; expected a numeric pixel array")
    if len(shape) == 2:
        return LazyImage(array, None, name=name)
    axis = None if channel_axis is None else channel_axis % max(len(shape), 1)
    if len(shape) == 3 and axis == 0:
        return LazyImage(array, 0, name=name)
    if len(shape) == 3 and axis in (None, 2) and shape[-1] <= MAX_CHANNELS:
        return LazyImage(array, 2, name=name)
    raise ImageError(f"{label} has shape {shape}; expected a 2-D image (H, W) or (H, W, C) "
                     f"with at most {MAX_CHANNELS} channels (give channel_axis=0 for "
                     "(C, H, W))")


def open_image(path: str | os.PathLike[str]) -> LazyImage:
    """Open a large image for reading region by region (nothing is read yet).

    Parameters
    ----------
    path : str or path-like
        A TIFF file (tiled or striped; the full-resolution level of a pyramidal TIFF), or a
        zarr / OME-Zarr folder (the first dataset of its ``multiscales`` metadata, i.e. the
        full resolution, or the array itself).

    Returns
    -------
    LazyImage
        Close it (or use it as a context manager) to release the file.

    Raises
    ------
    ImageError
        If the file cannot be opened as an image.
    """
    import zarr

    p = Path(path)
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                axes = tif.series[0].axes
            store = tifffile.imread(p, aszarr=True, level=0)
            node = zarr.open(store, mode="r")
            axes = axes[-len(node.shape):] if len(axes) >= len(node.shape) else ""
            first = len(node.shape) == 3 and axes[:1] in ("S", "C")
            lazy = as_lazy_image(node, channel_axis=0 if first else None, name=p.name)
            lazy.closer = store.close
            return lazy
        if not p.is_dir():
            raise ImageError(f"cannot read image {p.name!r}: expected a TIFF file or a zarr "
                             "folder")
        node = zarr.open(str(p), mode="r")
        if not hasattr(node, "shape"):  # a group: OME-Zarr multiscales, else array "0"
            attrs = dict(node.attrs)
            multi = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
            key = multi[0]["datasets"][0]["path"] if multi else "0"
            names = [str(a.get("name", a) if isinstance(a, dict) else a).lower()
                     for a in (multi[0].get("axes", []) if multi else [])]
            node = node[key]
            if "c" in names:  # OME-Zarr: channels first (c, [z,] y, x), singleton axes dropped
                lead = names.index("c") - (len(names) - len(node.shape))
                return as_lazy_image(node, channel_axis=0 if lead <= 0 else None,
                                     name=p.name)
        return as_lazy_image(node, name=p.name)
    except ImageError:
        raise
    except Exception as exc:  # decoders and stores raise many types; report them alike
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"cannot read image {p.name!r}: {reason}") from exc


def should_stream(path: str | os.PathLike[str], *, pixels: int = STREAM_PIXELS) -> bool:
    """Whether the command line scores ``path`` by :func:`score_streaming` (given a
    patch-mode model): a TIFF of at least ``pixels`` pixels or stored in tiles.

    Only the TIFF header is read. Other formats (PNG, JPEG) cannot be read region by region
    and always go through memory.
    """
    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            page = tif.pages[0]
            shape = series.shape
            axes = series.axes
            tiled = bool(getattr(page, "is_tiled", False))
    except Exception:  # unreadable: leave it to the in-memory path, which reports it
        return False
    n = 1
    for ax, side in zip(axes, shape, strict=True):
        if ax in "YX":
            n *= int(side)
    return tiled or n >= pixels


# ------------------------------------------------------------------------------------------
# preprocessing one region
# ------------------------------------------------------------------------------------------
def preprocess_block(pre: Preprocessing, block: np.ndarray, *, name: str = "image",
                     clip: bool = True) -> np.ndarray:
    """Preprocess one region of an image exactly as :meth:`.preprocessing.Preprocessing.transform`
    does the whole image (channels, intensity range, clipping), without the whole-image
    checks (size, constant image) that make no sense for a region.

    Parameters
    ----------
    pre : Preprocessing
        The model's preprocessing.
    block : np.ndarray
        ``(h, w)`` or ``(h, w, C)`` raw pixels, channels last.
    name : str
        Used in error messages.
    clip : bool
        Clip to [0, 1] (False: leave it to the caller, e.g. to count clipped values).

    Returns
    -------
    np.ndarray
        float32 ``(h, w, pre.n_channels)``, in [0, 1] when clipped.

    Raises
    ------
    ImageError
        For NaN or infinite pixels, or channels the model cannot take.
    """
    label = _label(name)
    arr = np.asarray(block)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ImageError(f"{label} contains NaN or infinite pixels; expected finite pixel "
                         "values")
    out = pre.scale(_match_channels(arr.astype(np.float32), pre, label))
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def _pad_index(length: int, align: int) -> np.ndarray:
    """Source index of every position of an axis padded to a multiple of ``align`` the way
    :func:`.tiling.predict_tiled` pads the whole image (so a tile read through it equals the
    tile cut from the padded image)."""
    return _pad_to_multiple(np.arange(length).reshape(1, length, 1), align)[0, :, 0]


# ------------------------------------------------------------------------------------------
# streaming the field
# ------------------------------------------------------------------------------------------
@dataclass
class StreamedScore:
    """The image-level numbers of a streamed score (no maps: the heatmap went to disk).

    Attributes
    ----------
    score, recon_error, log_density, percentile, is_anomaly, threshold, n_windows
        As in :class:`.detector.ScoreResult` (the most anomalous window's numbers).
    shape : tuple of int
        ``(H, W)`` of the image.
    heatmap : Path or None
        Where the heatmap was written.
    clipped_fraction, range_warning
        As in :class:`.detector.ScoreResult`.
    """

    score: float
    recon_error: float
    log_density: float
    percentile: float
    is_anomaly: bool
    threshold: float
    n_windows: int
    shape: tuple[int, int]
    heatmap: Path | None = None
    clipped_fraction: float = 0.0
    range_warning: str | None = None

    def as_row(self) -> dict[str, float | int]:
        """The numbers of this result, as written to a CSV row (the same columns as
        :meth:`.detector.ScoreResult.as_row`, which reads only these attributes)."""
        from .detector import ScoreResult

        return ScoreResult.as_row(self)  # type: ignore[arg-type]


class _Windows:
    """Measures the model-size windows of a field from heatmap bands arriving top to bottom,
    with the same windows, masks and encoder batches as ``analyse_field``."""

    def __init__(self, detector: Any, height: int, width: int,
                 stop: Callable[[], bool] | None) -> None:
        from .mappass import window_origins

        self.det = detector
        self.size = detector.size
        self.windows = window_origins(height, width, self.size)
        # New models read each window's latent code from the map pass (packed in a code
        # plane, as analyse_field does); older ones encode each window on its own.
        self.align = detector.network.align
        self.codes = field_codes(detector)
        self.c = np.zeros((0, width), np.float32)
        self.next = 0
        self.y0 = 0  # first row held in the buffers
        self.err = np.zeros((0, width), np.float32)
        self.x = np.zeros((0, width, detector.preprocessing.n_channels), np.float32)
        self.queue: list[np.ndarray] = []
        self.errs: list[float] = []
        self.logds: list[np.ndarray] = []
        self.stop = stop

    def add(self, err_rows: np.ndarray, x_rows: np.ndarray,
            code_rows: np.ndarray | None = None) -> None:
        """Take the next band of heatmap rows, preprocessed image rows and (when the windows'
        codes come from the map pass) code-plane rows."""
        from .mappass import unpack_codes

        self.err = np.concatenate([self.err, err_rows])
        self.x = np.concatenate([self.x, x_rows])
        if self.codes:
            self.c = np.concatenate([self.c, code_rows])
        end = self.y0 + len(self.err)
        s = self.size
        while self.next < len(self.windows) and self.windows[self.next][0] + s <= end:
            r, q = self.windows[self.next]
            crop = self.x[r - self.y0:r - self.y0 + s, q:q + s]
            m = self.err[r - self.y0:r - self.y0 + s, q:q + s]
            mask = self.det._region(crop)
            self.errs.append(reduce_map(m, self.det.scoring.reduce, mask))
            if self.codes:  # the latent block under the window (origin rounded down)
                a = self.align
                r0, q0 = r - r % a, q - q % a
                plane = self.c[r0 - self.y0:r0 - self.y0 + s, q0:q0 + s]
                self.queue.append(unpack_codes(plane, a, self.det.network.config.latent_channels
                                               ).reshape(-1))
            else:
                self.queue.append(crop.copy())
            self.next += 1
            if len(self.queue) == WINDOW_BATCH:
                self._flush()
        keep = self.windows[self.next][0] if self.next < len(self.windows) else end
        keep -= keep % self.align
        if keep > self.y0:
            self.err = self.err[keep - self.y0:].copy()
            self.x = self.x[keep - self.y0:].copy()
            if self.codes:
                self.c = self.c[keep - self.y0:].copy()
            self.y0 = keep

    def _flush(self) -> None:
        from .mappass import encode_units

        if not self.queue:
            return
        if self.stop is not None and self.stop():
            raise PredictionStopped(f"stopped after {len(self.errs)} of {len(self.windows)} "
                                    "windows")
        units = np.stack(self.queue)
        self.queue = []
        codes = units if self.codes else encode_units(self.det.network, units)
        self.logds.append(self.det.density.log_density(codes))

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """``(recon_error, log_density)`` per window, once every band has arrived."""
        self._flush()
        assert self.next == len(self.windows), "not every window was measured"
        return np.asarray(self.errs), np.concatenate(self.logds)


def field_codes(detector: Any) -> bool:
    """Whether ``analyse_field`` reads the windows' codes from the map pass (see
    ``ScoringConfig.window_codes``)."""
    a = detector.network.align
    return bool(detector.scoring.window_codes == "field" and detector.size % a == 0
                and detector.network.config.latent_channels <= a * a)


def _tile_fn(detector: Any, codes: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network + error maps that ``analyse_field`` runs on every tile, giving the primary
    heatmap's two ingredients (squared error and 1 - SSIM, zeros when the error does not use
    it), ``(N, 2, h, w)``, and with ``codes`` the packed latent code plane as a third."""
    from .mappass import pack_codes

    net = detector.network
    device = detector.device
    ssim = detector.uses_ssim

    def fn(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        z = net.encode(t)
        y = net.decode(z)
        se, dssim = detector._maps(t, y, with_ssim=ssim)
        parts = [se, dssim, pack_codes(z, net.align)] if codes else [se, dssim]
        return torch.cat(parts, dim=1)

    return fn


def iter_heatmap_bands(detector: Any, image: LazyImage, *, windows: _Windows | None = None,
                       tile: int | None = None, margin: int | None = None,
                       batch_size: int = 4, name: str = "image",
                       progress: ProgressFn | None = None,
                       stop: Callable[[], bool] | None = None,
                       clipped: list[int] | None = None
                       ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield the patch-mode heatmap of a lazily read image as ``(first_row, rows)`` bands,
    top to bottom, with the tiles and batches :func:`.tiling.predict_tiled` uses in memory.

    ``windows`` (internal) receives every band with its preprocessed pixels. ``progress`` is
    called as ``progress(done_tiles, total_tiles)`` after each batch; ``stop`` before each.
    ``clipped`` (a one-item list) accumulates the number of values the intensity range clips.
    """
    clipped = [0] if clipped is None else clipped
    from . import mappass

    tile = mappass.TILE if tile is None else tile
    margin = mappass.TILE_MARGIN if margin is None else margin
    align = detector.network.align
    _validate(tile, margin, align, batch_size)
    height, width = image.shape
    iy, ix = _pad_index(height, align), _pad_index(width, align)
    tile_y = _fit_tile(len(iy), tile, margin, align)
    tile_x = _fit_tile(len(ix), tile, margin, align)
    ys, xs = _axis_plan(len(iy), tile_y, margin), _axis_plan(len(ix), tile_x, margin)
    th, tw = min(tile_y, len(iy)), min(tile_x, len(ix))
    tiles = [(a, b) for a in range(len(ys)) for b in range(len(xs))]
    total = len(tiles)
    codes = windows is not None and windows.codes
    fn = _tile_fn(detector, codes)
    pre = detector.preprocessing
    n_ch = pre.n_channels
    bands: dict[int, tuple[np.ndarray, np.ndarray, list[int], np.ndarray]] = {}
    next_band = 0
    done = 0
    with torch.inference_mode():
        for first in range(0, total, batch_size):
            if stop is not None and stop():
                raise PredictionStopped(f"stopped after {done} of {total} tiles")
            index = tiles[first:first + batch_size]
            inputs = []
            for a, b in index:
                rows, cols = iy[ys[a][0]:ys[a][0] + th], ix[xs[b][0]:xs[b][0] + tw]
                r0, c0 = int(rows.min()), int(cols.min())
                raw = image.read(r0, int(rows.max()) + 1, c0, int(cols.max()) + 1)
                raw = raw[rows - r0][:, cols - c0]
                inputs.append(preprocess_block(pre, raw, name=name, clip=False))
            for j, (a, b) in enumerate(index):  # count each pixel once: the kept centre
                (oy, y0, y1), (ox, x0, x1) = ys[a], xs[b]
                centre = inputs[j][y0 - oy:min(y1, height) - oy, x0 - ox:min(x1, width) - ox]
                clipped[0] += np.count_nonzero(centre < 0.0) + np.count_nonzero(centre > 1.0)
                np.clip(inputs[j], 0.0, 1.0, out=inputs[j])
            batch = np.ascontiguousarray(np.stack(inputs).transpose(0, 3, 1, 2))
            res = fn(torch.from_numpy(batch).contiguous(memory_format=torch.channels_last))
            res_np = res.detach().to(device="cpu", dtype=torch.float32).numpy()
            for j, (a, b) in enumerate(index):
                (oy, y0, y1), (ox, x0, x1) = ys[a], xs[b]
                y1, x1 = min(y1, height), min(x1, width)
                if a not in bands:
                    h = max(y1 - y0, 0)
                    bands[a] = (np.empty((h, width), np.float32),
                                np.empty((h, width, n_ch), np.float32), [0],
                                np.empty((h, width) if codes else (0, 0), np.float32))
                err, xb, count, cb = bands[a]
                count[0] += 1
                if y0 < y1 and x0 < x1:
                    se = res_np[j, 0, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
                    dssim = res_np[j, 1, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
                    err[:, x0:x1] = detector._primary(se, dssim)
                    xb[:, x0:x1] = inputs[j][y0 - oy:y1 - oy, x0 - ox:x1 - ox]
                    if codes:
                        cb[:, x0:x1] = res_np[j, 2, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
            done += len(index)
            if progress is not None:
                progress(done, total)
            while next_band in bands and bands[next_band][2][0] == len(xs):
                err, xb, _, cb = bands.pop(next_band)
                start = ys[next_band][1]
                next_band += 1
                if len(err) == 0:
                    continue
                if windows is not None:
                    windows.add(err, xb, cb if codes else None)
                yield start, err


def _tiles_of(bands: Iterable[tuple[int, np.ndarray]], width: int, tile: int
              ) -> Iterator[np.ndarray]:
    """Regroup row bands (top to bottom) into ``tile x tile`` tiles in row-major order, edge
    tiles padded with zeros (the layout tifffile writes from an iterator)."""
    pending = np.zeros((0, width), np.float32)
    n_x = -(-width // tile)

    def emit(rows: np.ndarray) -> Iterator[np.ndarray]:
        for k in range(n_x):
            out = np.zeros((tile, tile), np.float32)
            part = rows[:, k * tile:(k + 1) * tile]
            out[:part.shape[0], :part.shape[1]] = part
            yield out

    for _, rows in bands:
        pending = np.concatenate([pending, rows])
        while len(pending) >= tile:
            yield from emit(pending[:tile])
            pending = pending[tile:]
    if len(pending):
        yield from emit(pending)


def write_heatmap(path: str | os.PathLike[str], bands: Iterable[tuple[int, np.ndarray]],
                  shape: tuple[int, int], *, tile: int = HEATMAP_TILE) -> Path:
    """Write a float32 heatmap arriving as row bands to a tiled, zlib-compressed BigTIFF,
    without holding it whole.

    The file is written under a temporary name in the same folder and renamed to ``path``
    only when complete; on any error (a full disk, a failing band iterator, a stop) the
    temporary file is removed and nothing exists under ``path`` that was not there before.
    A failure of the writing itself is raised as :class:`HeatmapWriteError`; errors of the
    ``bands`` iterator pass through unchanged.

    Parameters
    ----------
    path : str or path-like
        The ``.tif`` file to write (replaced if it exists, only on success).
    bands : iterable of (int, np.ndarray)
        ``(first_row, rows)`` with ``rows`` ``(h, W)`` float32, top to bottom, covering
        ``shape``.
    shape : tuple of int
        ``(H, W)``.
    tile : int
        Tile side in the file (a multiple of 16).

    Returns
    -------
    Path
        ``path``.
    """
    import tifffile

    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tifffile.imwrite(tmp, _tiles_of(bands, shape[1], tile), shape=tuple(shape),
                         dtype=np.float32, tile=(tile, tile), bigtiff=True,
                         compression="zlib", photometric="minisblack", maxworkers=1)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, HeatmapWriteError):
            raise
        raise HeatmapWriteError(exc.errno, exc.strerror or str(exc), str(target)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_heatmap_zarr(path: str | os.PathLike[str], bands: Iterable[tuple[int, np.ndarray]],
                       shape: tuple[int, int], *, chunk: int = HEATMAP_TILE) -> Path:
    """Write a float32 heatmap arriving as row bands to an OME-Zarr folder (OME-NGFF 0.4:
    zarr format 2, one ``multiscales`` level ``"0"`` with axes ``y``, ``x``; ``chunk`` x
    ``chunk`` compressed chunks), without holding it whole.

    The folder is written under a temporary name in the same folder and renamed to ``path``
    only when complete (an existing ``path`` is moved aside first and removed after the
    rename); on any error the temporary folder is removed and ``path`` is as it was. A
    failure of the writing itself is raised as :class:`HeatmapWriteError`; errors of the
    ``bands`` iterator pass through unchanged.

    Parameters
    ----------
    path : str or path-like
        The ``.ome.zarr`` folder to write.
    bands : iterable of (int, np.ndarray)
        ``(first_row, rows)`` with ``rows`` ``(h, W)`` float32, top to bottom, covering
        ``shape``.
    shape : tuple of int
        ``(H, W)``.
    chunk : int
        Chunk side.

    Returns
    -------
    Path
        ``path``.
    """
    import shutil
    import tempfile

    import zarr

    target = Path(path)

    def failed(exc: OSError) -> HeatmapWriteError:
        return HeatmapWriteError(exc.errno, exc.strerror or str(exc), str(target))

    try:
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".tmp"))
    except OSError as exc:
        raise failed(exc) from exc
    try:
        try:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
            root.attrs["multiscales"] = [{
                "version": "0.4", "name": target.name.removesuffix(".ome.zarr"),
                "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [{"path": "0", "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, 1.0]}]}]}]
            arr = root.create_array("0", shape=tuple(int(n) for n in shape), dtype="float32",
                                    chunks=(chunk, chunk), fill_value=0.0)
        except OSError as exc:
            raise failed(exc) from exc
        held = np.zeros((0, int(shape[1])), np.float32)  # rows short of a whole chunk row
        y_held = 0
        for y0, rows in bands:
            if y0 != y_held + len(held):
                raise ValueError(f"heatmap band at row {y0}; expected row {y_held + len(held)}"
                                 " (bands top to bottom, without gaps)")
            held = np.concatenate([held, np.asarray(rows, np.float32)])
            end = y_held + len(held)
            full = (end - y_held) // chunk * chunk if end < shape[0] else end - y_held
            if full:
                try:
                    arr[y_held:y_held + full] = held[:full]
                except OSError as exc:
                    raise failed(exc) from exc
                held, y_held = held[full:], y_held + full
        if y_held + len(held) != shape[0] or len(held):
            raise ValueError(f"the heatmap bands covered {y_held + len(held)} of {shape[0]} "
                             "rows")
        try:
            _replace_folder(tmp, target)
        except OSError as exc:
            raise failed(exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _replace_folder(new: Path, target: Path) -> None:
    """Rename folder ``new`` to ``target``; an existing ``target`` (which a rename cannot
    replace) is moved aside first, put back if the rename fails, and removed after."""
    import shutil
    import tempfile

    aside = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.",
                                      suffix=".old"))
        os.replace(target, aside / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        if aside is not None:
            os.replace(aside / target.name, target)
            aside.rmdir()
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def score_streaming(detector: Any, image: LazyImage | Any, *, fpr: float | None = None,
                    heatmap: str | os.PathLike[str] | None = None, name: str = "image",
                    tile: int | None = None, margin: int | None = None, batch_size: int = 4,
                    progress: ProgressFn | None = None,
                    stop: Callable[[], bool] | None = None) -> StreamedScore:
    """Score a patch-mode image too large for memory, reading and writing it tile by tile.

    The numbers equal those of ``detector.score(image)`` on an image that fits in memory
    (same tiles, batches and windows; see the module docstring), and the heatmap written
    equals its ``error_map``. Peak memory is a band of tiles across the image's width: about
    ``tile x W x 40`` bytes for an RGB image (0.4 GB for W = 20,000 with 512 px tiles).

    Parameters
    ----------
    detector : AnomalyDetector
        A patch-mode detector.
    image : LazyImage or array_like
        From :func:`open_image`, or any sliceable 2-D image array (wrapped by
        :func:`as_lazy_image`).
    fpr : float, optional
        Target false-alarm rate of the verdict (default 5%).
    heatmap : str or path-like, optional
        Write the heatmap here: an OME-Zarr folder for a name ending in ``.zarr``
        (:func:`write_heatmap_zarr`), else a tiled BigTIFF (:func:`write_heatmap`).
    name : str
        Used in error messages.
    tile, margin, batch_size : int, optional
        Tiling (default: the detector's patch-mode tiling).
    progress : callable, optional
        ``progress(done_tiles, total_tiles)``.
    stop : callable, optional
        Asked before each batch; True ends scoring with
        :class:`~.tiling.PredictionStopped` (and no heatmap file).

    Returns
    -------
    StreamedScore

    Raises
    ------
    ValueError
        If the detector is not a patch-mode one.
    ImageError
        If the image is smaller than the model's window, or its pixels or channels are not
        usable.
    """
    if detector.mode != "patch":
        raise ValueError(f"streamed scoring needs a patch-mode model; this one is in "
                         f"{detector.mode} mode")
    lazy = image if isinstance(image, LazyImage) else as_lazy_image(image, name=name)
    height, width = lazy.shape
    if min(height, width) < detector.size:
        label = "image" if name == "image" else f"image {name!r}"
        raise ImageError(f"{label} is {height}x{width} pixels; this patch-mode model needs "
                         f"at least {detector.size} pixels per side")
    fpr = DEFAULT_FPR if fpr is None else fpr
    windows = _Windows(detector, height, width, stop)
    clipped = [0]
    bands = iter_heatmap_bands(detector, lazy, windows=windows, tile=tile, margin=margin,
                               batch_size=batch_size, name=name, progress=progress, stop=stop,
                               clipped=clipped)
    if heatmap is not None and str(heatmap).endswith(".zarr"):
        write_heatmap_zarr(heatmap, bands, (height, width))
    elif heatmap is not None:
        write_heatmap(heatmap, bands, (height, width))
    else:
        for _ in bands:
            pass
    return _streamed_score(detector, lazy, windows, clipped[0], fpr, name, heatmap)


def iter_score_streaming(detector: Any, image: LazyImage | Any, *, fpr: float | None = None,
                         name: str = "image",
                         on_band: Callable[[int, np.ndarray], None] | None = None,
                         stop: Callable[[], bool] | None = None
                         ) -> Iterator[tuple[int, int]]:
    """:func:`score_streaming` (no heatmap file) as a generator, for a caller that shows
    progress or keeps the heatmap: it yields ``(rows_done, height)`` after each band of the
    heatmap, passes each band to ``on_band(first_row, rows)`` first, and returns the
    :class:`StreamedScore` (``StopIteration.value``; ``yield from`` gives it).

    Raises
    ------
    ValueError, ImageError
        As :func:`score_streaming`.
    PredictionStopped
        When ``stop()`` says so (asked before each batch of tiles).
    """
    if detector.mode != "patch":
        raise ValueError(f"streamed scoring needs a patch-mode model; this one is in "
                         f"{detector.mode} mode")
    lazy = image if isinstance(image, LazyImage) else as_lazy_image(image, name=name)
    height, width = lazy.shape
    if min(height, width) < detector.size:
        label = "image" if name == "image" else f"image {name!r}"
        raise ImageError(f"{label} is {height}x{width} pixels; this patch-mode model needs "
                         f"at least {detector.size} pixels per side")
    windows = _Windows(detector, height, width, stop)
    clipped = [0]
    for y0, rows in iter_heatmap_bands(detector, lazy, windows=windows, name=name, stop=stop,
                                       clipped=clipped):
        if on_band is not None:
            on_band(y0, rows)
        yield y0 + len(rows), height
    return _streamed_score(detector, lazy, windows, clipped[0],
                           DEFAULT_FPR if fpr is None else fpr, name, None)


def _streamed_score(detector: Any, lazy: LazyImage, windows: _Windows, clipped: int,
                    fpr: float, name: str, heatmap: str | os.PathLike[str] | None
                    ) -> StreamedScore:
    """The image-level numbers once every band went through ``windows``."""
    height, width = lazy.shape
    errs, logds = windows.finish()
    scores = detector.calibration.combine(errs, logds)
    worst = int(np.argmax(scores))
    empty = np.zeros((0, 0), np.float32)
    res = detector._finish(errs[worst], logds[worst], fpr, empty, empty, empty,
                           n_windows=len(scores))
    fraction = clipped / (height * width * detector.preprocessing.n_channels)
    res = detector._note_range(res, fraction, np.dtype(lazy.array.dtype), name)
    return StreamedScore(score=res.score, recon_error=res.recon_error,
                         log_density=res.log_density, percentile=res.percentile,
                         is_anomaly=res.is_anomaly, threshold=res.threshold,
                         n_windows=res.n_windows, shape=(height, width),
                         heatmap=None if heatmap is None else Path(heatmap),
                         clipped_fraction=res.clipped_fraction,
                         range_warning=res.range_warning)


def score_file(detector: Any, path: str | os.PathLike[str], *, fpr: float | None = None,
               heatmap: str | os.PathLike[str] | None = None,
               progress: ProgressFn | None = None,
               stop: Callable[[], bool] | None = None) -> StreamedScore:
    """:func:`score_streaming` on the image file (TIFF or zarr folder) at ``path``, opened by
    :func:`open_image` and closed afterwards."""
    with open_image(path) as lazy:
        return score_streaming(detector, lazy, fpr=fpr, heatmap=heatmap, name=Path(path).name,
                               progress=progress, stop=stop)
