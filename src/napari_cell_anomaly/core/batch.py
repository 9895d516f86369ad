"""Scoring a batch of image files as a stream: one image at a time, results written as they come.

The engine behind ``cell-anomaly score``, in three small pieces:

- :func:`make_tasks` and :func:`score_task`: one :class:`ImageTask` (a path and its label
  image) -> one :class:`ImageOutcome` (its CSV row, its per-cell rows, counts). The image is
  read, scored and its heatmaps written (atomically) inside :func:`score_task`, so nothing
  but a few strings outlives it: memory does not grow with the number of images.
- :func:`iter_outcomes`: the tasks scored one after another in this process (a generator).
  :mod:`.cluster` does the same on a ``dask.distributed`` cluster, yielding the same outcomes.
- :class:`ResultsWriter`: the results CSV (and per-cell CSV) written row by row, flushed as
  each image finishes, so a crash keeps every finished row and leaves a valid CSV;
  ``resume=True`` reads such a CSV back, keeps its scored rows and scores only the rest.

An image is *done* when its row in the results CSV holds a score. Its per-cell rows and its
heatmaps are written before that row, so a done image has all of its outputs; rows of an image
that did not get that far (a crash in between) are dropped when resuming.

Nothing here imports torch: the detector is passed in (or, on a cluster, loaded by the workers).
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomicwrite import atomic_path, atomic_text

if TYPE_CHECKING:
    from .detector import AnomalyDetector

#: Results CSV (``score --csv``): one row per image; ``error`` is empty for a scored image.
CSV_COLUMNS = ("path", "score", "recon_error", "log_density", "is_anomaly", "percentile",
               "threshold", "error", "clipped_fraction", "plane")
#: Per-cell CSV (``score --cells-csv``): these first columns are fixed (scripts rely on them).
CELLS_CSV_COLUMNS = ("path", "cell_id", "centroid_y", "centroid_x", "area", "score",
                     "recon_error", "log_density", "is_anomaly", "percentile", "at_border",
                     "shape_log_density", "plane")
#: Seconds to wait for a dask scheduler to answer before giving up (``--connect-timeout``;
#: used by :mod:`.cluster`, defined here so that the CLI need not import dask to show it).
CONNECT_TIMEOUT = 10.0
#: Seconds between forced writes of the CSVs to disk (``os.fsync``); every row is flushed to
#: the operating system as soon as it is written, which survives a crash of the program.
FSYNC_EVERY = 2.0


class ResumeError(ValueError):
    """An existing CSV cannot be resumed; ``str(err)`` is one line saying why."""


@dataclass(frozen=True)
class BatchSettings:
    """What every image of a batch is scored with.

    Attributes
    ----------
    fpr : float or None
        False-alarm rate of the verdicts (None: the default).
    per_cell : bool
        Score the cells of each image (``score_field``) instead of the image as a whole.
    labels_spec : str or None
        The ``--labels`` given (a folder, ``"auto"`` or None), for messages: an image without
        a label file is an error only when a folder was given.
    heatmaps : Path or None
        Folder for ``<stem>_anomaly_map.tif`` (and ``<stem>_labels.tif`` per cell).
    cells_csv : bool
        Whether per-cell rows are wanted.
    channel_axis : int, str or None
        The files' channel axis (``--channel-axis``; None: from their metadata).
    heatmap_format : str
        ``"tiff"`` or ``"ome-zarr"`` (``--heatmap-format``): the format of the heatmaps of
        images scored by streaming (``<stem>_anomaly_map.tif``, a tiled BigTIFF, or
        ``<stem>_anomaly_map.ome.zarr``, an OME-Zarr folder); other heatmaps are TIFFs.
    """

    fpr: float | None = None
    per_cell: bool = False
    labels_spec: str | None = None
    heatmaps: Path | None = None
    cells_csv: bool = False
    channel_axis: int | str | None = None
    heatmap_format: str = "tiff"


#: ``--heatmap-format`` choices -> the name ending of a streamed image's heatmap.
HEATMAP_SUFFIXES = {"tiff": ".tif", "ome-zarr": ".ome.zarr"}


@dataclass(frozen=True)
class ImageTask:
    """One image of a batch: its place, its file, its label file (None: segment it or score
    the whole image) and the path as written in the CSV (the path as found)."""

    index: int
    path: Path
    labels: Path | None = None
    name: str = ""

    @property
    def csv_path(self) -> str:
        return self.name or str(self.path)


@dataclass
class ImageOutcome:
    """What scoring one image file gave: its rows for the CSVs (one per plane of a z/t
    stack, else one) and counts for the summary. ``error`` is the first plane's error (None
    when every plane was scored). On a cluster (:mod:`.cluster`): ``retries`` counts the
    workers that died while holding it before it was scored elsewhere, ``lost`` says that
    dask gave up on it (its workers kept dying; ``error`` says so), and ``notice`` is a line
    for the user about either (None otherwise)."""

    index: int
    rows: list[list[str]]
    cell_rows: list[list[str]] = field(default_factory=list)
    error: str | None = None
    n_scored: int = 0
    n_flagged: int = 0
    is_stack: bool = False
    range_warning: str | None = None
    n_out_of_range: int = 0
    n_cells: int = 0
    n_cells_flagged: int = 0
    n_skipped: int = 0
    retries: int = 0
    lost: bool = False
    notice: str | None = None


def make_tasks(paths: Sequence[Path], labels: Mapping[Path, Path | None] | None = None
               ) -> list[ImageTask]:
    """One task per image path, with its matched label file from ``labels`` (if any)."""
    return [ImageTask(i, Path(p), (labels or {}).get(p), str(p)) for i, p in enumerate(paths)]


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def error_outcome(task: ImageTask, message: str) -> ImageOutcome:
    """The outcome of an image that could not be scored: a row holding only the error."""
    return ImageOutcome(task.index, [_error_row(task.csv_path, message)], error=message)


def _error_row(path: str, message: str | None, plane: int | str = "") -> list[str]:
    return [path, "", "", "", "", "", "", message or "", "", str(plane)]


def score_task(detector: AnomalyDetector, task: ImageTask, settings: BatchSettings, *,
               tiles: Callable[[str, int, int], None] | None = None) -> ImageOutcome:
    """Read, score and (if asked) write the heatmaps of one image file (each plane of a z/t
    stack, its maps in one file).

    Bad input (an unreadable file, an image the model cannot score, a missing label image)
    gives an outcome with ``error`` set, never an exception; anything else propagates.
    An image larger than memory (a patch-mode model, a TIFF stored in tiles or of at least
    ``STREAM_PIXELS``, its channels from its own metadata) is read, scored and its heatmap
    written tile by tile (:func:`.bigimage.score_file`); ``tiles(name, done, total)`` hears
    of its progress.
    """
    import itertools

    from .bigimage import score_file
    from .heatmapfiles import HeatmapWriteError
    from .images import ImageError
    from .lazyimage import should_stream
    from .stackio import Stack, read_stack
    from .stacks import MapStack, PlaneScore, score_stack

    streamed = (not settings.per_cell and detector.mode == "patch"
                and settings.channel_axis is None and should_stream(task.path))
    try:
        if streamed:
            suffix = HEATMAP_SUFFIXES[settings.heatmap_format]
            heat_file = (settings.heatmaps / f"{task.path.stem}_anomaly_map{suffix}"
                         if settings.heatmaps is not None else None)
            name = task.path.name
            progress = ((lambda d, t: tiles(name, d, t)) if tiles is not None else None)
            result = score_file(detector, task.path, fpr=settings.fpr, heatmap=heat_file,
                                progress=progress)
            image = Stack.single(None, name)  # one plane, its map already written
            planes, first = iter(()), PlaneScore(0, name, result)
        else:
            image = read_stack(task.path, settings.channel_axis)  # 2-D: one plane
            labels = (_matched_labels(task, settings, image.is_stack) if settings.per_cell
                      else None)
            planes = score_stack(detector, image, fpr=settings.fpr,
                                 per_cell=settings.per_cell, labels=labels)
            first = next(planes)
    except HeatmapWriteError:
        raise  # a full disk is no fault of the image: stop the batch
    except (ImageError, OSError) as err:
        return error_outcome(task, _one_line(err))
    out = ImageOutcome(task.index, [], is_stack=image.is_stack)
    heat = settings.heatmaps
    maps = MapStack(len(image), image.plane_shape) if image.is_stack else None
    cell_maps = (MapStack(len(image), image.plane_shape, np.uint32)
                 if maps is not None and settings.per_cell else None)
    for ps in itertools.chain([first], planes):
        plane = ps.index if image.is_stack else ""
        result, cells = ps.result, ps.cells
        if result is None:
            out.error = out.error or ps.error or ""
            out.rows.append(_error_row(task.csv_path, ps.error, plane))
            continue
        r = result.as_row()
        out.rows.append([task.csv_path, f"{r['score']:.6g}", f"{r['recon_error']:.6g}",
                         f"{r['log_density']:.6g}", str(r["is_anomaly"]),
                         f"{r['percentile']:.2f}", f"{result.threshold:.6g}", "",
                         f"{result.clipped_fraction:.4g}", str(plane)])
        if result.range_warning:
            out.range_warning = out.range_warning or result.range_warning
            out.n_out_of_range += 1
        out.n_scored += 1
        out.n_flagged += int(result.is_anomaly)
        if cells is not None:
            out.n_cells += len(cells)
            out.n_skipped += int(cells.skipped)
            out.n_cells_flagged += int(cells.table["is_anomaly"].sum())
            if settings.cells_csv:
                out.cell_rows += cell_rows(task.csv_path, cells, plane)
        # Heatmaps are written before the rows; a failure to write ends the batch.
        if maps is not None:
            maps.put(ps.index, result.error_map)
            if cell_maps is not None and cells is not None:
                cell_maps.put(ps.index, cells.labels)
        elif heat is not None and not streamed:
            write_tiff_atomic(heat / f"{task.path.stem}_anomaly_map.tif", result.error_map)
            if cells is not None:
                write_tiff_atomic(heat / f"{task.path.stem}_labels.tif",
                                  label_dtype(cells.labels))
    image.close()  # a TIFF stack read plane by plane: its file
    if heat is not None and maps is not None and out.n_scored:
        # a stack: its planes' maps in one file
        axes = {"axes": f"{image.axis if image.axis in 'ZT' else 'Q'}YX"}
        write_tiff_atomic(heat / f"{task.path.stem}_anomaly_map.tif", maps.data, axes)
        if cell_maps is not None:
            write_tiff_atomic(heat / f"{task.path.stem}_labels.tif",
                              label_dtype(cell_maps.data), axes)
    return out


def _matched_labels(task: ImageTask, settings: BatchSettings, stack: bool
                    ) -> np.ndarray | None:
    """The label image of ``task`` (None: segment it), or an error when a labels folder was
    given and holds none for it. For a stack, the label file as stored (one label plane per
    image plane, checked by ``score_stack``)."""
    from .cells import read_labels
    from .images import ImageError, read_image

    if task.labels is None:
        if settings.labels_spec not in (None, "auto"):
            raise ImageError(f"no label image for {task.path.name} in {settings.labels_spec} "
                             f"(expected {task.path.stem}.tif or {task.path.stem}_labels.tif)")
        return None
    return read_image(task.labels) if stack else read_labels(task.labels)


def cell_rows(path: str, cells: Any, plane: int | str = "") -> list[list[str]]:
    """The per-cell CSV rows (:data:`CELLS_CSV_COLUMNS`) of one image's ``CellScores``."""
    t = cells.table
    return [[path, str(int(t["label"][i])), f"{t['centroid_y'][i]:.1f}",
             f"{t['centroid_x'][i]:.1f}", str(int(t["area"][i])), f"{t['score'][i]:.6g}",
             f"{t['recon_error'][i]:.6g}", f"{t['log_density'][i]:.6g}",
             str(int(t["is_anomaly"][i])), f"{t['percentile'][i]:.2f}",
             str(int(t["at_border"][i])), f"{t['shape_log_density'][i]:.6g}", str(plane)]
            for i in range(len(cells))]


def iter_outcomes(detector: AnomalyDetector, tasks: Iterable[ImageTask],
                  settings: BatchSettings, *,
                  tiles: Callable[[str, int, int], None] | None = None
                  ) -> Iterator[ImageOutcome]:
    """Score the tasks one after another in this process, in order (a generator);
    ``tiles`` as for :func:`score_task`."""
    for task in tasks:
        yield score_task(detector, task, settings, tiles=tiles)


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
def label_dtype(labels: np.ndarray) -> np.ndarray:
    """uint16 label images where the ids fit, else uint32."""
    return labels.astype(np.uint16 if int(labels.max()) < 2**16 else np.uint32)


def write_tiff_atomic(path: Path, data: np.ndarray, metadata: dict | None = None) -> None:
    """Write a TIFF atomically: float maps as float32, integer (label) images as they are;
    ``metadata`` (e.g. ``{"axes": "ZYX"}`` for a stack) goes into the file's description.

    The data go to a uniquely named temporary file in the same folder, renamed to ``path``
    once complete, so ``path`` never holds a half-written file (not even when several
    processes write into the folder at once) and a failure leaves nothing behind.
    """
    import tifffile

    if data.dtype.kind == "f":
        data = data.astype(np.float32, copy=False)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, photometric="minisblack", metadata=metadata or {})


def _read_rows(path: Path, columns: Sequence[str]) -> list[list[str]]:
    """The complete rows of a CSV this module wrote (header checked; a last line cut short
    by a crash is left out)."""
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]  # a row cut short by a crash
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return []
    if tuple(rows[0]) != tuple(columns):
        raise ResumeError(f"cannot resume '{path}': its columns are not those of this "
                          f"version's {'per-cell ' if 'cell_id' in columns else ''}results "
                          f"(first line {','.join(rows[0])[:60]!r})")
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(columns):
            raise ResumeError(f"cannot resume '{path}': line {n} has {len(row)} fields, "
                              f"expected {len(columns)}")
    return rows[1:]


def _write_rows_atomic(path: Path, columns: Sequence[str], rows: Iterable[list[str]]) -> None:
    with atomic_text(path, fsync=True) as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows(rows)


def _write_now(fh: Any, rows: list[list[str]]) -> None:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    fh.write(buf.getvalue())
    fh.flush()


class ResultsWriter:
    """The results CSV (and optional per-cell CSV), written one image at a time.

    Each image's per-cell rows, then its row in the results CSV, are written and flushed as
    soon as it is scored (and forced to disk every :data:`FSYNC_EVERY` seconds), so after a
    crash the CSVs hold every image finished before it, and each is a valid CSV (a row cut
    short by the crash is dropped by the next ``resume``).

    Parameters
    ----------
    csv_path : Path
        The results CSV (:data:`CSV_COLUMNS`).
    cells_path : Path or None
        The per-cell CSV (:data:`CELLS_CSV_COLUMNS`), if wanted.
    resume : bool
        Keep the rows of the images scored in an existing ``csv_path`` (those with at least
        one row holding a score; a stack has one row per plane) and their per-cell rows, and
        append to it: :attr:`done` holds their paths. Images whose rows all hold an error, and
        per-cell rows of images without a scored row, are dropped (scored again). Without
        ``resume`` (or when ``csv_path`` does not exist) the files are started anew.
    threshold : str or None
        This run's decision threshold as written in the ``threshold`` column; resuming a CSV
        whose rows were scored at another threshold (another model or false-alarm rate)
        raises :class:`ResumeError`.
    record : mapping or None
        What this run scores with and writes (:func:`.batchrecord.run_record`: model file
        digest, false-alarm rate, labels, channel axis, per-cell, heatmap folder and format,
        per-cell CSV, each image's label file). :meth:`open` keeps it next to the CSV
        (:func:`.batchrecord.write_record`); resuming a CSV that has rows checks it against
        the one kept there (:func:`.batchrecord.resume_record`: refused when a setting
        differs or none is kept; images whose label file changed since they were scored are
        dropped, :attr:`rescored`, and scored again). None: nothing recorded or checked.

    Raises
    ------
    ResumeError
        When the existing files cannot be resumed (other columns, other threshold, other
        recorded settings, a per-cell CSV missing for a results CSV with scored rows).

    Notes
    -----
    Construction only reads and checks; :meth:`open` writes. Use it as a context manager.
    """

    def __init__(self, csv_path: Path, cells_path: Path | None = None, *, resume: bool = False,
                 threshold: str | None = None, record: Mapping[str, Any] | None = None
                 ) -> None:
        self.csv_path, self.cells_path = Path(csv_path), cells_path
        self.record = record
        self._rows: list[list[str]] = []
        self._cell_rows: list[list[str]] = []
        #: Images the CSV held scored rows of, dropped to be scored again because their label
        #: file changed since (``resume``).
        self.rescored: set[str] = set()
        self.resumed = resume and self.csv_path.is_file()
        if self.resumed:
            rows = _read_rows(self.csv_path, CSV_COLUMNS)
            scored = {r[0] for r in rows if r[1] != ""}
            if record is not None and rows:
                from .batchrecord import resume_record

                self.record, self.rescored = resume_record(self.csv_path, record, scored)
                scored -= self.rescored
            self._rows = [r for r in rows if r[0] in scored]
            seen = {r[6] for r in self._rows if r[1] != ""}
            if threshold is not None and seen - {threshold}:
                raise ResumeError(
                    f"cannot resume '{self.csv_path}': its rows were scored at threshold "
                    f"{sorted(seen)[0]}, this model and false-alarm rate give {threshold} "
                    "(another model or --fpr); score into a new CSV")
            done = {r[0] for r in self._rows}
            if cells_path is not None:
                if cells_path.is_file():
                    self._cell_rows = [r for r in _read_rows(cells_path, CELLS_CSV_COLUMNS)
                                       if r[0] in done]
                elif self._rows:
                    raise ResumeError(f"cannot resume: '{self.csv_path}' has scored rows but "
                                      f"the per-cell CSV '{cells_path}' does not exist")
        #: CSV paths of the images already scored (``resume``); skip these.
        self.done: set[str] = {r[0] for r in self._rows}
        self._files: list[Any] = []
        self._last_sync = time.monotonic()

    def open(self) -> ResultsWriter:
        """Create (or rewrite, keeping the resumed rows) the files, keep the record next to
        them and open them to append.

        The CSVs are rewritten before the record and rows appended only after it, so the
        rows on disk always agree with the record on disk, whatever is interrupted: the rows
        kept agree with the old record and the new one, and rows dropped (another run, label
        files changed) are gone before the new record is written.
        """
        targets = [(self.csv_path, CSV_COLUMNS, self._rows)]
        if self.cells_path is not None:
            targets.insert(0, (self.cells_path, CELLS_CSV_COLUMNS, self._cell_rows))
        for path, columns, rows in targets:
            _write_rows_atomic(path, columns, rows)
        if self.record is not None:
            from .batchrecord import write_record

            write_record(self.csv_path, self.record)
        self._rows, self._cell_rows = [], []
        fhs = [open(p, "a", newline="", encoding="utf-8") for p, _, _ in targets]
        self._files = fhs
        self._cells = csv.writer(fhs[0]) if self.cells_path is not None else None
        return self

    def __enter__(self) -> ResultsWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, outcome: ImageOutcome) -> None:
        """Write one image's per-cell rows, then its results rows, each file in one write
        call and flushed."""
        if self._cells is not None and outcome.cell_rows:
            _write_now(self._files[0], outcome.cell_rows)
        _write_now(self._files[-1], outcome.rows)
        if time.monotonic() - self._last_sync > FSYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        """Force what was written to disk."""
        for fh in self._files:
            fh.flush()
            os.fsync(fh.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Force the files to disk and close them."""
        if self._files:
            try:
                self.sync()
            finally:
                for fh in self._files:
                    fh.close()
                self._files = []
