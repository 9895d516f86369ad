"""What the ``cell-anomaly`` commands share: the user-facing error, messages on stderr,
checks of output paths, loading the inputs, the device and the model."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..core.detector import AnomalyDetector
    from ..core.stackio import LoadedPlanes

EXIT_BAD_INPUT = 2



class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_writable_file(path: Path) -> None:
    """Fail early, before any work, if ``path`` cannot be created."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise CliError(f"cannot write '{path}': folder '{parent}' does not exist")
    if path.is_dir():
        raise CliError(f"cannot write '{path}': it is a folder")
    if not os.access(parent, os.W_OK):
        raise CliError(f"cannot write '{path}': folder '{parent}' is not writable")


def note_replacing(paths: Iterable[Path], what: str, hint: str = "") -> None:
    """Say, in one line, which of ``paths`` (outputs about to be written) already exist and
    will be replaced, so that nothing is overwritten without a word."""
    existing = [p for p in paths if p.exists()]
    if existing:
        first = f"'{existing[0]}'" + (", ..." if len(existing) > 1 else "")
        say(f"replacing {len(existing)} existing {what} ({first}){hint}")


def check_unique_stems(paths: Sequence[Path], folder: Path, what: str) -> None:
    """Refuse inputs whose outputs in ``folder`` (named by file stem) would overwrite each
    other, e.g. ``plate1/A01.png`` and ``plate2/A01.png``."""
    seen: dict[str, Path] = {}
    for p in paths:
        other = seen.setdefault(p.stem, p)
        if other != p:
            raise CliError(f"'{other}' and '{p}' share the name '{p.stem}': their {what} in "
                           f"'{folder}' would overwrite each other; rename one, or run them "
                           "into separate output folders")


def check_outputs_apart(outputs: Iterable[tuple[str, Path]], inputs: Sequence[Path]) -> None:
    """Refuse, before any work, an output file that is one of the input images (writing it
    would destroy that image) or that two outputs share (their rows would be mixed).

    ``outputs`` holds ``(what, path)`` pairs, e.g. ``("--csv", Path("scores.csv"))``.
    """
    images = {p.resolve() for p in inputs}
    seen: dict[Path, str] = {}
    for what, path in outputs:
        key = path.resolve()
        if key in images:
            raise CliError(f"{what} '{path}' is one of the input images: writing it would "
                           "destroy that image; choose another file")
        if key in seen:
            raise CliError(f"{seen[key]} and {what} both name '{path}': their contents would "
                           "be mixed; choose two files")
        seen[key] = what


def remove_stale_temporaries(folder: Path, names: Iterable[str]) -> int:
    """Remove the temporary files (or folders) that a killed run left in ``folder`` while it
    wrote the outputs ``names`` (``.<name>.tmp`` or ``.<name>.<random>.tmp``: never a final
    name); returns how many. One listing of the folder, whatever the number of names."""
    import shutil

    wanted = set(names)
    removed = 0
    for entry in folder.iterdir():
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        core = name[1:-len(".tmp")]  # <name> or <name>.<random>
        if core in wanted or core.rsplit(".", 1)[0] in wanted:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def prepare_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create folder '{path}': {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise CliError(f"cannot write into folder '{path}': permission denied")


#: glibc ``mallopt`` parameters and the values :func:`keep_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30
MMAP_ABOVE_BYTES = 256 << 20


def keep_freed_memory() -> bool:
    """Let this process keep the memory it frees for reuse (glibc only; returns whether set).

    By default glibc hands large freed blocks (over 32 MiB, or whatever tops the heap beyond
    twice the last such size) back to the system, so that every batch of tiles touches fresh
    pages again: scoring a 2048 x 2048 field took about 100,000 page faults and a fifth of its
    CPU time for them. Here blocks up to ``MMAP_ABOVE_BYTES`` come from the heap and up to
    ``KEEP_FREED_BYTES`` of free heap stay mapped. A command-line process is short-lived and
    reuses what it keeps; the napari plugin, in the user's process, does not call this.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_ABOVE_BYTES)
                and mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


def load_inputs(inputs: Sequence[str], channel_axis: int | str | None = None
                 ) -> LoadedPlanes:
    """The images ``(H, W, C)`` of ``inputs`` (channel axis from each file's metadata or
    ``--channel-axis``): one entry per plane of a multi-page TIFF stack (its path repeated,
    ``names`` and ``planes`` telling the planes apart), with their ``axes``."""
    from ..core.images import find_images
    from ..core.stackio import load_planes

    paths = find_images(inputs)
    loaded = load_planes(paths, channel_axis)
    report_failures(loaded.failures)
    if not loaded.images:
        raise CliError(f"none of the {len(paths)} image files could be used "
                       f"(first problem: {loaded.failures[0][1]})")
    return loaded


def report_failures(failures: Sequence[tuple[Path, str]]) -> None:
    if failures:
        say(f"skipped {len(failures)} unusable image file(s); first: {failures[0][1]}")


def label_source(spec: str | None, paths: Sequence[Path]) -> dict[Path, Path | None] | None:
    """``--labels``: None (not given), every image segmented (``auto``: each path maps to
    None), or each image's label file found by stem in a folder."""
    if spec is None:
        return None
    if spec == "auto":
        return dict.fromkeys(paths)
    from ..core.cells import match_label_files

    return match_label_files(paths, Path(spec))


def pick_device(spec: str) -> torch.device:
    """``--device``, checked before any work: a DeviceError (one line, exit 2) when this
    machine lacks it."""
    from ..core.device import resolve_device

    return resolve_device(spec)


def pick_precision(spec: str, device: torch.device, mode: str | None = None) -> str:
    """``--precision`` on ``device`` for a model of ``mode`` (when known), checked before any
    work: a PrecisionError (one line, exit 2) when the device cannot run it; the resolved
    precision otherwise."""
    from ..core.device import resolve_precision

    return resolve_precision(spec, device, mode)


def load_detector(path: str, device: torch.device | str = "auto",
                  precision: str = "auto") -> AnomalyDetector:
    from ..core.detector import AnomalyDetector

    return AnomalyDetector.load(path, device=device, precision=precision)

