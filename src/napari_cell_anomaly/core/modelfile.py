"""One safe file per model: safetensors tensors + JSON metadata, a digest, atomic saves.

A model file is a plain `safetensors <https://github.com/huggingface/safetensors>`_ file. Its
string-only ``__metadata__`` header holds:

``format``
    Always :data:`FORMAT`.
``format_version``
    The integer :data:`FORMAT_VERSION` as a string; files from a newer version are refused.
``meta``
    The caller's metadata as canonical JSON (sorted keys, no spaces).
``digest``
    Hex SHA-256 over the ``meta`` JSON and, in sorted name order, every tensor's name, dtype,
    shape and bytes (see :func:`_digest`). It detects accidental corruption and edits; it is not
    a signature (anyone can recompute it).

Loading never executes code: no pickle and no ``torch.load``, only JSON and raw array bytes.
Saving is atomic: the file is written to a temporary file in the same folder, flushed to disk and
moved into place with :func:`os.replace`, so ``path`` always holds either the old complete file or
the new complete file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "load_file", "save_file"]

FORMAT = "napari-cell-anomaly"
FORMAT_VERSION = 1

_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header size
_RESERVED = "__metadata__"

PathLike = str | os.PathLike[str]


class ModelFileError(Exception):
    """A model file cannot be written or read.

    ``str(err)`` is a single line naming the file and the problem, suitable to show to users.

    Parameters
    ----------
    message : str
        Description of the problem, including the file name. Newlines are replaced by spaces.
    path : str or os.PathLike, optional
        The file concerned, kept as the ``path`` attribute.
    """

    def __init__(self, message: str, path: PathLike | None = None) -> None:
        message = " ".join(str(message).split())
        super().__init__(message)
        self.path = None if path is None else Path(path)


def _one_line(err: BaseException) -> str:
    """Return a one-line description of an exception (its message, else its type name)."""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    else:
        text = str(err)
    text = " ".join(text.split())
    return text or type(err).__name__


def _json_default(obj: object) -> Any:
    """Convert numpy scalars and arrays for :func:`json.dumps`; refuse anything else."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _canonical_json(meta: Mapping[str, Any]) -> str:
    """Serialise ``meta`` as canonical JSON: sorted keys, no whitespace, UTF-8 characters kept."""
    return json.dumps(
        meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


def _canonical_array(array: np.ndarray) -> np.ndarray:
    """Return ``array`` as a C-contiguous little-endian array (the safetensors layout)."""
    array = np.asarray(array)
    order = array.dtype.byteorder
    if order == ">" or (order == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
    return array if array.flags.c_contiguous else array.copy(order="C")


def _digest(meta_json: str, tensors: Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 over the metadata JSON and every tensor's name, dtype, shape and bytes.

    Each part is preceded by its length, so different contents can never produce the same byte
    stream. Tensors are hashed in sorted name order in their canonical (little-endian,
    C-contiguous) layout.
    """
    h = hashlib.sha256()

    def part(data: bytes) -> None:
        h.update(struct.pack("<Q", len(data)))
        h.update(data)

    part(f"{FORMAT} digest v{FORMAT_VERSION}".encode())
    part(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        array = _canonical_array(tensors[name])
        header = json.dumps([name, array.dtype.name, list(array.shape)], separators=(",", ":"))
        part(header.encode("utf-8"))
        part(array.tobytes())
    return h.hexdigest()


def _current_umask() -> int:
    """Return the process umask without changing it where possible."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Flush a directory entry to disk (best effort; not possible on every platform)."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:
        return
    try:
        fd = os.open(folder, os.O_RDONLY | flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_file(path: PathLike, tensors: dict[str, np.ndarray], meta: dict) -> None:
    """Write tensors and metadata to a model file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file. Its folder must exist. An existing file is replaced only once the new
        one is completely written; on failure it is left untouched.
    tensors : dict of str to numpy.ndarray
        Named arrays (bool, integer, float16/32/64). They are stored bit-exactly.
    meta : dict
        JSON-serialisable metadata (nested dicts, lists, str, numbers, bool, None; numpy scalars
        and arrays are converted to Python numbers and lists). Keys should be strings: JSON turns
        other keys into strings.

    Raises
    ------
    ModelFileError
        If the folder does not exist, the data cannot be serialised, or the file cannot be
        written (e.g. ``cannot write model file 'x.cna': Permission denied``). No partial file is
        left behind.
    """
    path = Path(path)
    where = f"cannot write model file '{path}'"
    folder = path.parent
    if not folder.is_dir():
        raise ModelFileError(f"{where}: folder '{folder}' does not exist", path)
    if not isinstance(meta, Mapping):
        raise ModelFileError(f"{where}: meta must be a dict, got {type(meta).__name__}", path)
    if not isinstance(tensors, Mapping):
        raise ModelFileError(f"{where}: tensors must be a dict, got {type(tensors).__name__}", path)
    arrays: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name or name == _RESERVED:
            raise ModelFileError(f"{where}: invalid tensor name {name!r}", path)
        if not isinstance(value, np.ndarray):
            raise ModelFileError(
                f"{where}: tensor '{name}' is a {type(value).__name__}, not a numpy array", path
            )
        arrays[name] = _canonical_array(value)
    try:
        meta_json = _canonical_json(meta)
    except (TypeError, ValueError) as err:
        raise ModelFileError(
            f"{where}: metadata is not JSON-serialisable ({_one_line(err)})", path
        ) from err
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "meta": meta_json,
        "digest": _digest(meta_json, arrays),
    }
    try:
        data = _st_save(arrays, metadata=header)
    except Exception as err:  # safetensors raises its own error types
        raise ModelFileError(f"{where}: {_one_line(err)}", path) from err

    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=folder, prefix=f".{path.name}.", suffix=".part", delete=False
        ) as tmp:
            tmp_name = tmp.name
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        # NamedTemporaryFile creates the file with mode 0600; give it the mode a plain open()
        # would have given it.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as err:
        raise ModelFileError(f"{where}: {_one_line(err)}", path) from err
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    _fsync_dir(folder)


def _read_bytes(path: Path) -> bytes:
    """Read the whole file, turning every failure into a one-line :class:`ModelFileError`."""
    if not path.exists():
        raise ModelFileError(f"model file '{path}' does not exist", path)
    if path.is_dir():
        raise ModelFileError(f"'{path}' is a folder, not a model file", path)
    try:
        return path.read_bytes()
    except OSError as err:
        raise ModelFileError(f"cannot read model file '{path}': {_one_line(err)}", path) from err


def _parse_header(path: Path, data: bytes) -> dict[str, Any]:
    """Check the safetensors framing and return the JSON header, with clear errors.

    Distinguishes files that are not safetensors files at all from truncated ones, so the user
    gets a useful message before safetensors itself parses the file.
    """
    not_ours = f"'{path}' is not a {FORMAT} model file"
    if not data:
        raise ModelFileError(f"model file '{path}' is empty", path)
    if len(data) < 8:
        raise ModelFileError(f"{not_ours} (only {len(data)} bytes)", path)
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > _MAX_HEADER:
        raise ModelFileError(not_ours, path)
    if 8 + n > len(data):
        if data[8:9] == b"{":
            raise ModelFileError(
                f"model file '{path}' is truncated ({len(data)} bytes, the header alone needs "
                f"{8 + n})",
                path,
            )
        raise ModelFileError(not_ours, path)
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ModelFileError(not_ours, path) from err
    if not isinstance(header, dict):
        raise ModelFileError(not_ours, path)
    end = 0
    for name, info in header.items():
        if name == _RESERVED:
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError) as err:
            raise ModelFileError(
                f"model file '{path}' is corrupt (bad tensor header)", path
            ) from err
    if 8 + n + end > len(data):
        raise ModelFileError(
            f"model file '{path}' is truncated ({len(data)} bytes, expected {8 + n + end})", path
        )
    return header


def load_file(path: PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read a model file written by :func:`save_file`, checking its integrity.

    Never executes code from the file: only JSON and raw array bytes are parsed.

    Parameters
    ----------
    path : str or os.PathLike
        The model file.

    Returns
    -------
    tensors : dict of str to numpy.ndarray
        The arrays, bit-exact and writable.
    meta : dict
        The metadata as saved (after a JSON round trip: tuples become lists).

    Raises
    ------
    ModelFileError
        With a one-line message naming the file, if it is missing, a folder, unreadable, empty,
        truncated, not a model file, written by a newer version, or modified or corrupted
        (checksum mismatch).
    """
    path = Path(path)
    data = _read_bytes(path)
    header = _parse_header(path, data)

    info = header.get(_RESERVED)
    if not isinstance(info, dict) or "format" not in info:
        raise ModelFileError(
            f"'{path}' is a safetensors file but not a {FORMAT} model file (no format metadata)",
            path,
        )
    if info["format"] != FORMAT:
        raise ModelFileError(
            f"'{path}' is not a {FORMAT} model file (format {info['format']!r})", path
        )
    try:
        version = int(info["format_version"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(
            f"model file '{path}' has invalid metadata (bad or missing format_version)", path
        ) from err
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"'{path}' was written by a newer napari-cell-anomaly (format {version}; "
            f"this version reads up to {FORMAT_VERSION})",
            path,
        )
    if version < 1:
        raise ModelFileError(
            f"model file '{path}' has invalid metadata (format_version {version})", path
        )
    meta_json = info.get("meta")
    digest = info.get("digest")
    if not isinstance(meta_json, str) or not isinstance(digest, str):
        raise ModelFileError(
            f"model file '{path}' has invalid metadata (missing meta or digest)", path
        )

    try:
        tensors = _st_load(data)
    except Exception as err:  # safetensors raises its own error types
        raise ModelFileError(f"model file '{path}' is corrupt: {_one_line(err)}", path) from err

    if _digest(meta_json, tensors) != digest:
        raise ModelFileError(
            f"model file '{path}' has been modified or corrupted (checksum mismatch)", path
        )
    try:
        meta = json.loads(meta_json)
    except ValueError as err:
        raise ModelFileError(
            f"model file '{path}' has invalid metadata ({_one_line(err)})", path
        ) from err
    if not isinstance(meta, dict):
        raise ModelFileError(f"model file '{path}' has invalid metadata (not an object)", path)
    tensors = {
        name: array if array.flags.writeable else array.copy() for name, array in tensors.items()
    }
    return tensors, meta
