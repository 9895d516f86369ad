"""Images larger than memory: patch-mode scoring streamed tile by tile from disk.

:meth:`AnomalyDetector.score <.detector.AnomalyDetector.score>` holds the whole preprocessed
image and all its maps in memory (about 30 bytes per pixel for an RGB field). For a slide of
20,000 x 20,000 pixels that is far too much. :func:`score_streaming` computes the same numbers
while holding only a band of tiles at a time:

* the image is read lazily, region by region (:func:`.lazyimage.open_image`: a tiled TIFF
  through tifffile's zarr view, an OME-Zarr / zarr store, or any array that can be sliced), and
  each region is preprocessed on its own (:func:`preprocess_block`, the same arithmetic as
  :class:`.preprocessing.Preprocessing`);
* the network runs on exactly the tiles, in exactly the batches, that
  :func:`.tiling.predict_tiled` uses for the whole image (same plan, same alignment padding),
  so the heatmap is the in-memory heatmap;
* as soon as a band of heatmap rows is complete, the model-size windows it covers are measured
  (the same windows, masks and density batches as :meth:`AnomalyDetector.analyse_field`), and
  the band is written to the heatmap file (:func:`.heatmapfiles.write_heatmap`) and dropped;
* the image's numbers are those of its most anomalous window, as in memory.

The heatmap is written as a tiled, zlib-compressed BigTIFF (or, for a name ending in
``.zarr``, an OME-Zarr folder: :func:`.heatmapfiles.write_heatmap_zarr`) under a temporary
name in the target folder and renamed only when complete: an error (a full disk included)
leaves no partial file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .heatmapfiles import write_heatmap, write_heatmap_zarr
from .images import ImageError, _label
from .lazyimage import LazyImage, as_lazy_image, open_image
from .preprocessing import Preprocessing, _match_channels
from .scoring import DEFAULT_FPR, reduce_map
from .tiling import PredictionStopped, _axis_plan, _fit_tile, _pad_to_multiple, _validate

__all__ = ["StreamedScore", "iter_score_streaming", "preprocess_block", "score_file",
           "score_streaming"]

#: Windows encoded per batch (as in :meth:`AnomalyDetector.analyse_field`).
WINDOW_BATCH = 64

ProgressFn = Callable[[int, int], None]


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
        codes = units if self.codes else encode_units(self.det.network, units,
                                                      precision=self.det.run_precision)
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
        with detector.autocast():
            z = net.encode(t)
            y = net.decode(z)
        z, y = z.float(), y.float()  # no copy in fp32
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



def _stream_source(detector: Any, image: LazyImage | Any, name: str) -> LazyImage:
    """``image`` as a :class:`LazyImage`, checked for streamed scoring by ``detector``
    (a patch-mode model, an image at least one window on each side)."""
    if detector.mode != "patch":
        raise ValueError(f"streamed scoring needs a patch-mode model; this one is in "
                         f"{detector.mode} mode")
    lazy = image if isinstance(image, LazyImage) else as_lazy_image(image, name=name)
    height, width = lazy.shape
    if min(height, width) < detector.size:
        label = "image" if name == "image" else f"image {name!r}"
        raise ImageError(f"{label} is {height}x{width} pixels; this patch-mode model needs "
                         f"at least {detector.size} pixels per side")
    return lazy


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
    lazy = _stream_source(detector, image, name)
    height, width = lazy.shape
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
    lazy = _stream_source(detector, image, name)
    height, width = lazy.shape
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
