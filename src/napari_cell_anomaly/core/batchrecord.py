"""What a batch's results CSV was scored with, kept next to it so that ``--resume`` can check.

Rows of one results CSV must all be scored the same way, and its images' outputs written the
same way: the same model file, false-alarm rate, label images (``--labels``), channel axis and
per-cell choice, the same heatmap folder and format and per-cell CSV. :func:`run_record`
gives those of a run as a small JSON-able dict, :func:`write_record` keeps it next to the CSV
(``<name>.csv.run.json``, written atomically) and :func:`check_record` refuses, in one line
(:class:`~.batch.ResumeError`), to resume a CSV recorded with other settings (or without a
record) and says how to start afresh.

The model is recorded by the SHA-256 of its file's bytes, so a model retrained under the same
name (another error kind, another density, another calibration) is a different model. With a
labels folder, each image's label file is recorded by its size and modification time
(``label_files``); resuming scores again the images whose label file has changed since
(:func:`resume_record`), and keeps the others.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .atomicwrite import atomic_text
from .batch import BatchSettings, ImageTask, ResumeError

#: Version of the record's layout (a record of another version is treated as different).
RECORD_VERSION = 2
#: The record's file name is the CSV's name followed by this suffix.
RECORD_SUFFIX = ".run.json"
#: How each recorded setting is named in messages (as given to ``cell-anomaly score``).
_NAMES = {"model_sha256": "model file", "fpr": "--fpr", "labels": "--labels",
          "channel_axis": "--channel-axis", "per_cell": "per-cell scoring",
          "heatmaps": "--heatmaps", "heatmap_format": "--heatmap-format",
          "cells_csv": "--cells-csv", "precision": "--precision",
          "version": "record version"}
#: The record's per-image entry (checked image by image, never refused as a whole).
LABEL_FILES = "label_files"


def record_path(csv_path: str | os.PathLike[str]) -> Path:
    """The record kept next to ``csv_path``: ``scores.csv`` -> ``scores.csv.run.json``."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.name + RECORD_SUFFIX)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def label_file_id(path: str | os.PathLike[str] | None) -> list[int] | None:
    """A label file's identity as recorded: ``[size in bytes, modification time in ns]``
    (None: no file, or one that cannot be read)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def run_record(model: str | os.PathLike[str], settings: BatchSettings, fpr: float,
               tasks: Iterable[ImageTask] = (), precision: str = "fp32") -> dict[str, Any]:
    """What the rows of a run are scored with, and how its outputs are written.

    Parameters
    ----------
    model : path
        The model file (recorded by the SHA-256 of its bytes).
    settings : BatchSettings
        The run's settings: ``labels_spec`` (a folder is recorded as its absolute path, or
        ``"auto"``), ``channel_axis`` and ``per_cell`` change rows; ``heatmaps`` (the folder,
        absolute), ``heatmap_format`` (recorded only with a heatmap folder) and
        ``cells_csv`` change what is written for each image.
    fpr : float
        The false-alarm rate in effect (the default when none was given).
    tasks : iterable of ImageTask
        The run's images; with a labels folder, each image's label file is recorded
        (:func:`label_file_id`, None where it has none) under its CSV path.
    precision : str
        The network's precision for the run (``"fp32"``, ``"bf16"``, ...; ``"auto"`` where
        each worker of a remote cluster resolves it): scores differ slightly between
        precisions, so a resumed CSV must not mix them.

    Returns
    -------
    dict
        JSON-able: ``version``, ``model_sha256``, ``fpr``, ``labels``, ``channel_axis``,
        ``per_cell``, ``heatmaps``, ``heatmap_format``, ``cells_csv``, ``precision``,
        ``label_files`` (``{}`` without a labels folder).
    """
    labels = settings.labels_spec
    folder = labels not in (None, "auto")
    if folder:
        labels = str(Path(labels).resolve())
    heatmaps = settings.heatmaps
    return {"version": RECORD_VERSION, "model_sha256": file_sha256(model), "fpr": float(fpr),
            "labels": labels, "channel_axis": settings.channel_axis,
            "per_cell": bool(settings.per_cell),
            "heatmaps": str(Path(heatmaps).resolve()) if heatmaps is not None else None,
            "heatmap_format": settings.heatmap_format if heatmaps is not None else None,
            "cells_csv": bool(settings.cells_csv), "precision": str(precision),
            LABEL_FILES: ({t.csv_path: label_file_id(t.labels) for t in tasks} if folder
                          else {})}


def write_record(csv_path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Keep ``record`` next to ``csv_path`` (temporary file renamed: never half-written)."""
    path = record_path(csv_path)
    with atomic_text(path, fsync=True) as fh:
        json.dump(dict(record), fh, indent=1, sort_keys=True)
        fh.write("\n")


def read_record(csv_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The record next to ``csv_path``; None when there is none or it cannot be read."""
    try:
        data = json.loads(record_path(csv_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _shown(key: str, value: Any) -> str:
    if key == "model_sha256":
        return f"sha256 {str(value)[:12]}"
    if key == "per_cell":
        return "on" if value else "off"
    return "none" if value is None else str(value)


def check_record(csv_path: str | os.PathLike[str], record: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """Refuse to resume ``csv_path`` unless its record matches this run's ``record`` in every
    setting (the label files are compared image by image: :func:`resume_record`).

    Returns
    -------
    dict
        The record found next to ``csv_path``.

    Raises
    ------
    ResumeError
        One line: the first setting that differs (and how many more), or a missing record,
        and how to go on (a new CSV, or the same command without ``--resume``).
    """
    fresh = "score into a new --csv, or run without --resume to start afresh (replacing it)"
    found = read_record(csv_path)
    if found is None:
        raise ResumeError(f"cannot resume '{csv_path}': it has no readable record of what it "
                          f"was scored with ({record_path(csv_path).name}); {fresh}")
    differ = [k for k in record if k != LABEL_FILES and found.get(k) != record[k]]
    if not differ:
        return found
    k = differ[0]
    more = f" (and {len(differ) - 1} more setting(s))" if len(differ) > 1 else ""
    raise ResumeError(f"cannot resume '{csv_path}': its rows were scored with "
                      f"{_NAMES.get(k, k)} {_shown(k, found.get(k))}, this run has "
                      f"{_shown(k, record[k])}{more}; {fresh}")


def resume_record(csv_path: str | os.PathLike[str], record: Mapping[str, Any],
                  scored: Iterable[str]) -> tuple[dict[str, Any], set[str]]:
    """Check ``record`` against the one kept next to ``csv_path`` (:func:`check_record`) and
    find the images to score again.

    Parameters
    ----------
    csv_path : path
        The results CSV to resume.
    record : mapping
        This run's record (:func:`run_record`).
    scored : iterable of str
        CSV paths of the images the CSV holds scored rows of.

    Returns
    -------
    (dict, set of str)
        The record to keep for the resumed CSV (this run's, with the recorded label files of
        scored images that this run does not list carried over) and the scored images of this
        run whose label file differs from the one recorded when they were scored (their rows
        are to be dropped and the images scored again).
    """
    found = check_record(csv_path, record)
    old = found.get(LABEL_FILES) or {}
    new = record.get(LABEL_FILES) or {}
    scored = set(scored)
    changed = {p for p in scored if p in new and (p not in old or old[p] != new[p])}
    kept = {p: old[p] for p in sorted(scored - changed) if p in old and p not in new}
    return {**record, LABEL_FILES: {**kept, **new}}, changed
