"""The Score widget's job planning: the chosen images -> one worker's items, and its worker.

A 2-D image is one job item; a stack (a 3-D layer) is one item per plane, its results shown by
:mod:`._stack_results` (per cell: the planes' cells merged into one
:class:`~..core.stacks.StackCells`). In-memory data is snapshotted as
:func:`._common.snapshot_planes` says; lazy planes are read by the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from ._common import JobControl, image_hw, layer_key, layer_planes, snapshot_planes
from ._score_job import score_cells_job, score_job

if TYPE_CHECKING:
    from napari.layers import Layer

    from ..core.detector import AnomalyDetector
    from ._cells_source import CellsSourceBox
    from ._channel_layers import ChannelImage
    from ._stack_results import StackResults

__all__ = ["ScorePlan", "plan_job", "plane_items", "start_worker"]


@dataclass
class ScorePlan:
    """What one Score click runs.

    Attributes
    ----------
    job : tuple
        The worker function and its positional arguments.
    layers : list of Layer
        For each job item, the layer its results are shown on (an image's first channel).
    planes : list of int or None
        For each job item, its plane index in its stack layer (None: a 2-D layer).
    stack_cells : dict
        Per cell: layer key -> :class:`~..core.stacks.StackCells` of each stack of the job.
    """

    job: tuple
    layers: list[Layer]
    planes: list[int | None]
    stack_cells: dict[str, Any] = field(default_factory=dict)


def plane_items(images: list[ChannelImage], stack_results: StackResults | None,
                stack_cells: dict[str, Any] | None
                ) -> tuple[list[tuple[str, Any]], list[int | None], list[Layer]]:
    """A job's items: one per 2-D image, one per plane of a stack (lazy planes are read
    one at a time, in the worker).

    Parameters
    ----------
    images : list of ChannelImage
        The images to score.
    stack_results : StackResults or None
        Per image: each stack's results are started here (its table rows). None per cell.
    stack_cells : dict or None
        Per cell: filled with a :class:`~..core.stacks.StackCells` per stack. None per image.

    Returns
    -------
    tuple
        ``(name, data)`` items, each item's plane index (None: a 2-D image) and the layer its
        results are shown on (the first channel).
    """
    named: list[tuple[str, Any]] = []
    planes: list[int | None] = []
    targets: list[Layer] = []
    for image in images:
        layer = image.first
        stacked = len(image_hw(image)) == 3
        items = list(layer_planes(image))
        if stacked and stack_cells is not None:
            from ..core.stacks import StackCells

            stack_cells[layer_key(layer)] = StackCells(len(items), image_hw(layer)[-2:])
        elif stacked and stack_results is not None:
            stack_results.begin(layer, [name for name, _ in items])
        for index, item in enumerate(items):
            named.append(item)
            planes.append(index if stacked else None)
            targets.append(layer)
    return named, planes, targets


def plan_job(images: list[ChannelImage], detector: AnomalyDetector, fpr: float,
             cells_box: CellsSourceBox, stack_results: StackResults) -> ScorePlan | None:
    """The job for ``images``: per image, or per cell as ``cells_box`` says.

    Returns None (an error notified) when the cells options do not fit the images (a
    Labels layer or a patch-mode model for a stack's cells, a Labels layer of another shape).
    """
    stacks = [im for im in images if len(image_hw(im)) == 3]
    if cells_box.per_cell() and not stacks:
        items = cells_box.job_items(detector, images)
        if items is None:
            return None
        return ScorePlan((score_cells_job, detector, items, fpr, cells_box.include_border()),
                         [im.first for im in images],  # results shown on the first channel
                         [None] * len(images))
    if cells_box.per_cell():
        # The cells of each plane of a stack, found by the built-in segmentation.
        if detector.mode == "patch" or cells_box.labels_layer() is not None:
            show_error(f"{stacks[0].name!r} is a stack: per cell, the cells of each of its "
                       "planes are found automatically, with a model that scores cells "
                       "(cells mode, or trained on cell crops): choose 'find cells "
                       "automatically', or untick 'Per cell'.")
            return None
        stack_cells: dict[str, Any] = {}
        named, planes, layers = plane_items(images, None, stack_cells)
        return ScorePlan((score_cells_job, detector,
                          [(plane, None) for plane in snapshot_planes(named)], fpr,
                          cells_box.include_border()), layers, planes, stack_cells)
    named, planes, layers = plane_items(images, stack_results, None)
    return ScorePlan((score_job, detector, snapshot_planes(named), fpr), layers, planes)


def start_worker(plan: ScorePlan, control: JobControl, device: str,
                 on_event: Callable[[Any], None], on_error: Callable[[BaseException], None],
                 on_finished: Callable[[], None]) -> Any:
    """Create and start the worker of ``plan``; ``control.worker`` is set to it.

    ``on_event`` gets each event the job yields, ``on_error`` an exception it raised,
    ``on_finished`` is called once it has ended (all on the GUI thread).
    """
    args = plan.job
    if args[0] is score_job:
        args += (control,)  # its stop flag cancels between batches of tiles
    worker = create_worker(*args, device=device, _ignore_errors=True, _start_thread=False)
    control.worker = worker
    worker.errored.connect(on_error)
    worker.finished.connect(on_finished)
    worker.yielded.connect(on_event)
    worker.start()
    return worker
