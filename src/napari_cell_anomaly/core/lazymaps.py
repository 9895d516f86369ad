"""Lazy patch-mode heatmaps of big images: computed chunk by chunk when they are looked at.

:class:`LazyAnomalyMap` presents the heatmap of a large (dask-, zarr- or file-backed) image as
a dask array whose chunks are computed only when something asks for them, as napari does for
the part of a slide in view. Each chunk is computed from the image region it covers plus a
margin of ``TILE_MARGIN`` pixels on every side that is interior to the image (the margin
patch-mode tiling discards at tile borders, larger than the network's receptive field), with
the same alignment as the whole-image tiling, so neighbouring chunks join without seams and
equal the in-memory map to float rounding. Computed chunks are kept, so panning back costs
nothing and :meth:`LazyAnomalyMap.compute_all` fills in the whole map (with progress) for
every view.

:meth:`LazyAnomalyMap.levels` gives lower-resolution levels for a multiscale display: each
shows the chunks computed so far, subsampled, and zeros elsewhere; looking at a coarse level
never triggers the full-resolution computation of the whole slide.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .bigimage import _tile_fn, preprocess_block
from .lazyimage import LazyImage, as_lazy_image
from .tiling import PredictionStopped, predict_tiled

__all__ = ["LazyAnomalyMap"]


class _Level:
    """Array-like view of a :class:`LazyAnomalyMap` subsampled by ``factor``, showing only the
    chunks computed so far (zeros elsewhere); read by dask one chunk at a time."""

    def __init__(self, owner: LazyAnomalyMap, factor: int) -> None:
        self.owner = owner
        self.factor = factor
        h, w = owner.shape
        self.shape = (-(-h // factor), -(-w // factor))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        f, owner = self.factor, self.owner
        ys, xs = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        out = np.zeros((len(range(*ys)), len(range(*xs))), np.float32)
        c = owner.chunk
        for i in range(ys[0] * f // c, min(-(-ys[1] * f // c), owner.grid[0])):
            for j in range(xs[0] * f // c, min(-(-xs[1] * f // c), owner.grid[1])):
                block = owner.cached(i, j)
                if block is None:
                    continue
                sub = block[::f, ::f]  # rows i*c/f ... of this level (c is a multiple of f)
                r0, q0 = i * c // f, j * c // f
                a0, a1 = max(ys[0], r0), min(ys[1], r0 + sub.shape[0])
                b0, b1 = max(xs[0], q0), min(xs[1], q0 + sub.shape[1])
                if a0 < a1 and b0 < b1:
                    out[a0 - ys[0]:a1 - ys[0], b0 - xs[0]:b1 - xs[0]] = \
                        sub[a0 - r0:a1 - r0, b0 - q0:b1 - q0]
        return out


class LazyAnomalyMap:
    """The patch-mode heatmap of a large image, computed chunk by chunk on demand.

    Parameters
    ----------
    detector : AnomalyDetector
        A patch-mode detector.
    image : LazyImage or array_like
        The full-resolution image: ``(H, W)`` or ``(H, W, C)`` (``(C, H, W)`` with
        ``channel_axis=0``), any sliceable array (dask, zarr, ``numpy.memmap``, NumPy) or a
        :class:`.lazyimage.LazyImage`.
    chunk : int, optional
        Chunk side of the map (rounded down to a multiple of the network's alignment).
        Default: the patch-mode tile side minus its two margins (448 px), so each chunk with
        its margins is one network call.
    channel_axis : int, optional
        0 for a channels-first array (see :func:`.lazyimage.as_lazy_image`).
    name : str
        Used in error messages.

    Attributes
    ----------
    shape : tuple of int
        ``(H, W)``.
    chunk : int
        Chunk side.
    grid : tuple of int
        Number of chunks along each axis.

    Raises
    ------
    ValueError
        If the detector is not a patch-mode one.
    ImageError
        If the image is not a 2-D image array.

    Examples
    --------
    >>> heat = LazyAnomalyMap(detector, dask_image)      # doctest: +SKIP
    >>> heat.array[1000:1500, 2000:2600].compute()       # computes 2 x 2 chunks only
    """

    def __init__(self, detector: Any, image: LazyImage | Any, *, chunk: int | None = None,
                 channel_axis: int | None = None, name: str = "image") -> None:
        from . import mappass

        if detector.mode != "patch":
            raise ValueError(f"lazy heatmaps need a patch-mode model; this one is in "
                             f"{detector.mode} mode")
        self.detector = detector
        self.image = (image if isinstance(image, LazyImage)
                      else as_lazy_image(image, channel_axis=channel_axis, name=name))
        self.name = name
        self.shape = self.image.shape
        align = detector.network.align
        self.tile = mappass.TILE
        self.margin = mappass.TILE_MARGIN
        side = self.tile - 2 * self.margin if chunk is None else int(chunk)
        self.chunk = max(align, side // align * align)
        self.grid = tuple(-(-n // self.chunk) for n in self.shape)
        self._fn = _tile_fn(detector)
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()
        self._array: Any = None
        self._rows = np.zeros((0, self.shape[1]), np.float32)  # streamed rows not yet cut
        self._rows_y0 = 0
        #: The image's score once :meth:`iter_score` has run to its end, else None.
        self.score: Any = None

    # -- chunks --------------------------------------------------------------------------------
    def _bounds(self, i: int, j: int) -> tuple[int, int, int, int]:
        h, w = self.shape
        c = self.chunk
        return i * c, min((i + 1) * c, h), j * c, min((j + 1) * c, w)

    def cached(self, i: int, j: int) -> np.ndarray | None:
        """Chunk ``(i, j)`` if it has been computed, else None (never computes)."""
        with self._lock:
            return self._cache.get((i, j))

    def block(self, i: int, j: int) -> np.ndarray:
        """Chunk ``(i, j)`` of the map (rows ``i * chunk ...``), computed once and kept.

        Returns
        -------
        np.ndarray
            float32 ``(h, w)``.
        """
        found = self.cached(i, j)
        if found is not None:
            return found
        y0, y1, x0, x1 = self._bounds(i, j)
        h, w = self.shape
        m = self.margin
        ey0, ey1, ex0, ex1 = max(0, y0 - m), min(h, y1 + m), max(0, x0 - m), min(w, x1 + m)
        raw = self.image.read(ey0, ey1, ex0, ex1)
        x = preprocess_block(self.detector.preprocessing, raw, name=self.name)
        chw = np.ascontiguousarray(x.transpose(2, 0, 1))
        out = predict_tiled(self._fn, chw, tile=self.tile, margin=m,
                            align=self.detector.network.align)
        heat = self.detector._primary(out[0], out[1]).astype(np.float32)
        block = np.ascontiguousarray(heat[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0])
        with self._lock:
            self._cache[(i, j)] = block
        return block

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        """Any 2-D slice of the map (steps allowed), computing the chunks it touches."""
        ys, xs = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        rows, cols = np.arange(*ys), np.arange(*xs)
        out = np.zeros((len(rows), len(cols)), np.float32)
        c = self.chunk
        for i in np.unique(rows // c):
            for j in np.unique(cols // c):
                r, q = rows // c == i, cols // c == j
                block = self.block(int(i), int(j))
                out[np.ix_(r, q)] = block[np.ix_(rows[r] - i * c, cols[q] - j * c)]
        return out

    @property
    def n_blocks(self) -> int:
        """Number of chunks."""
        return self.grid[0] * self.grid[1]

    @property
    def n_computed(self) -> int:
        """Number of chunks computed so far."""
        with self._lock:
            return len(self._cache)

    # -- dask views -----------------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        """float32."""
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        """2."""
        return 2

    @property
    def array(self) -> Any:
        """The map as a ``(H, W)`` float32 dask array; computing a region computes (and keeps)
        only the chunks it overlaps."""
        if self._array is None:
            import dask.array as da

            self._array = da.from_array(self, chunks=(self.chunk, self.chunk), asarray=False,
                                        fancy=False, lock=False,
                                        name=f"anomaly-map-{id(self):x}")
        return self._array

    def levels(self, factors: Sequence[int]) -> list[Any]:
        """Dask arrays for a multiscale display: the map itself for factor 1, and for each
        other factor the chunks computed so far subsampled by it (zeros where nothing was
        computed yet). Factors that do not divide :attr:`chunk` are left out."""
        import dask.array as da

        out = []
        for f in factors:
            f = int(f)
            if f == 1:
                out.append(self.array)
            elif f > 1 and self.chunk % f == 0:
                out.append(da.from_array(_Level(self, f), chunks=(self.chunk // f,) * 2,
                                         asarray=False, fancy=False, lock=False,
                                         name=f"anomaly-map-{id(self):x}-{f}"))
        return out

    def fill_rows(self, y0: int, rows: np.ndarray) -> None:
        """Take heatmap rows ``y0 ...`` computed elsewhere (bands of a streamed score, top to
        bottom): each row of chunks they complete goes into the cache, except chunks already
        computed, which are kept."""
        if y0 == 0 or y0 != self._rows_y0 + len(self._rows):  # a new stream
            self._rows, self._rows_y0 = np.zeros((0, self.shape[1]), np.float32), y0
        self._rows = np.concatenate([self._rows, np.asarray(rows, np.float32)])
        c, h = self.chunk, self.shape[0]
        while True:
            i = -(-self._rows_y0 // c)  # first chunk row starting at or after the buffer
            start, end = i * c, min((i + 1) * c, h)
            if start >= h or self._rows_y0 + len(self._rows) < end:
                break
            band = self._rows[start - self._rows_y0:end - self._rows_y0]
            with self._lock:
                for j in range(self.grid[1]):
                    if (i, j) not in self._cache:
                        self._cache[(i, j)] = np.ascontiguousarray(band[:, j * c:(j + 1) * c])
            self._rows = self._rows[end - self._rows_y0:]
            self._rows_y0 = end

    def iter_score(self, *, fpr: float | None = None, stop: Callable[[], bool] | None = None
                   ) -> Iterator[tuple[int, int]]:
        """Score the whole image in one streamed pass (:func:`.bigimage.iter_score_streaming`)
        and fill in the map's chunks not computed yet from the same pass, yielding
        ``(rows_done, height)``; returns the :class:`~.bigimage.StreamedScore`, also kept in
        :attr:`score`.

        The filled chunks come from the streamed tiling, which equals the chunk-by-chunk
        computation to float rounding (both equal the in-memory map within ``rtol=1e-4``).
        ``stop()`` ends it with :class:`~.tiling.PredictionStopped` (the chunks filled so far
        are kept; no score).
        """
        from .bigimage import iter_score_streaming

        self.score = yield from iter_score_streaming(self.detector, self.image, fpr=fpr,
                                                     name=self.name, on_band=self.fill_rows,
                                                     stop=stop)
        return self.score

    def iter_compute(self) -> Iterator[tuple[int, int]]:
        """Compute every chunk not computed yet, row by row, yielding ``(done, total)``
        chunks after each (chunks computed before count as done at once)."""
        total = self.n_blocks
        for k in range(total):
            self.block(*divmod(k, self.grid[1]))
            yield k + 1, total

    def compute_all(self, progress: Callable[[int, int], None] | None = None,
                    stop: Callable[[], bool] | None = None) -> None:
        """Compute every chunk not computed yet (see :meth:`iter_compute`).

        Parameters
        ----------
        progress : callable, optional
            ``progress(done_chunks, total_chunks)`` after each chunk.
        stop : callable, optional
            Asked before each chunk; True ends it with :class:`~.tiling.PredictionStopped`
            (the chunks computed so far are kept).
        """
        steps = self.iter_compute()
        done, total = 0, self.n_blocks
        while done < total:
            if stop is not None and stop():
                raise PredictionStopped(f"stopped after {done} of {total} chunks")
            done, total = next(steps)
            if progress is not None:
                progress(done, total)
