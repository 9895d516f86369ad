"""The Score widget's background job and the typed events it yields.

The job runs in a napari ``thread_worker``; it reads only the arrays it was given (snapshots
taken on the GUI thread) and talks to the widget through the small event classes below.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.detector import AnomalyDetector, ScoreResult
from ._common import JobFailure

__all__ = ["Failed", "Scored", "score_job"]


@dataclass
class Scored:
    """Event: image ``index`` of the job was scored."""

    index: int
    result: ScoreResult


@dataclass
class Failed:
    """Event: image ``index`` could not be scored (a one-line reason from the core)."""

    index: int
    name: str
    reason: str


def score_job(detector: AnomalyDetector, items: Sequence[tuple[str, Any]], fpr: float
              ) -> Generator[Scored | Failed, None, None]:
    """Worker body: score each image; a bad image is reported and the rest still scored.

    Parameters
    ----------
    detector : AnomalyDetector
        The model to score with.
    items : sequence of (str, array-like)
        ``(name, image)`` pairs; lazy arrays are read here, in the worker thread.
    fpr : float
        False-alarm rate of the verdicts stored in each result.

    Yields
    ------
    Scored or Failed
        One event per image, in order.
    """
    try:
        for index, (name, data) in enumerate(items):
            try:
                result = detector.score(np.asarray(data), fpr=fpr, name=name)
            except ValueError as exc:  # ImageError (wrong channels, constant image, ...)
                yield Failed(index, name, str(exc))
                continue
            yield Scored(index, result)
    except RuntimeError as exc:
        raise JobFailure(f"{type(exc).__name__}: {exc}") from exc
