"""Scoring a batch on a ``dask.distributed`` cluster: a local one or one that already runs.

:func:`connect` gives a client: a :class:`distributed.LocalCluster` of ``workers`` processes
on this machine (one thread each), or a connection to the scheduler at an address, which fails
with one clear line (:class:`ClusterError`) when nothing answers within ``timeout`` seconds.

:func:`iter_cluster_outcomes` scores :class:`~.batch.ImageTask` s there and yields the same
:class:`~.batch.ImageOutcome` s as :func:`.batch.iter_outcomes` would, in the same order:

- The model file's bytes are sent to each worker once, in a worker plugin that loads the
  detector when the worker joins (workers joining later, or restarted, get it too); the tasks
  carry only a path and a few settings.
- Each worker reads its images and writes their heatmaps itself (atomically), so the image
  paths and the heatmap folder must mean the same on the workers as here (one machine, or a
  shared file system). Only the CSV rows come back.
- At most a few tasks per worker thread are in flight; results are yielded in input order as
  soon as they are contiguous, so memory here stays bounded however many images there are.
- A worker that dies while scoring an image: dask runs the image again on another worker, and
  its outcome says so (``retries``, and a one-line ``notice``); if workers keep dying on it
  (more than ``distributed.scheduler.allowed-failures`` times, 3 by default), its outcome is
  ``lost``: its row reports it (``error`` column) and the batch goes on. ``--resume`` tries
  it again. The deaths are heard from the scheduler's ``remove-worker`` events.
- ``distributed``'s own log lines (worker restarts, rescheduled keys, tracebacks of closed
  connections) are silenced while :func:`connect`'s client lives (``quiet=True``): what they
  tell is in the outcomes.

Requires the ``dask`` extra (``pip install napari-cell-anomaly[dask]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, as_completed, get_worker
from distributed.comm import connect as comm_connect
from distributed.utils import silence_logging_cmgr

from .batch import (
    CONNECT_TIMEOUT,
    BatchSettings,
    ImageOutcome,
    ImageTask,
    error_outcome,
    score_task,
)

#: Tasks in flight per worker thread (enough to keep the workers busy, few enough that the
#: results waiting to be written in order stay small).
TASKS_PER_THREAD = 4


class ClusterError(ConnectionError):
    """No cluster to score on (a scheduler that does not answer); one line."""


@contextmanager
def connect(scheduler: str | None = None, *, workers: int | None = None,
            timeout: float = CONNECT_TIMEOUT, quiet: bool = True) -> Iterator[Client]:
    """A ``dask.distributed`` client, closed (with its local cluster) on exit.

    Parameters
    ----------
    scheduler : str or None
        Address of a running scheduler (``tcp://host:8786``); None starts a local cluster.
    workers : int or None
        Local cluster only: the number of worker processes, one thread each (None: dask's
        default for this machine).
    timeout : float
        Seconds to wait for the scheduler to answer.
    quiet : bool
        Silence ``distributed``'s log lines below CRITICAL while the client lives, in this
        process and (local cluster) in the workers: a worker's death is reported in the
        outcomes of :func:`iter_cluster_outcomes`, not as log lines and tracebacks.

    Raises
    ------
    ClusterError
        When the scheduler does not answer within ``timeout`` seconds, or the address is not
        one (one line).
    """
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(silence_logging_cmgr(logging.CRITICAL))
        yield stack.enter_context(_client(scheduler, workers, timeout,
                                          logging.CRITICAL if quiet else logging.WARN))


@contextmanager
def _client(scheduler: str | None, workers: int | None, timeout: float, level: int
            ) -> Iterator[Client]:
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=level)
        try:
            with Client(cluster, set_as_default=False) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        asyncio.run(asyncio.wait_for(_handshake(scheduler, timeout), timeout))
        with dask.config.set({"distributed.comm.timeouts.connect": f"{timeout}s"}):
            client = Client(scheduler, timeout=timeout, set_as_default=False)
    except (ValueError, TypeError) as err:
        raise ClusterError(f"{scheduler!r} is not a dask scheduler address ({err}); expected "
                           "tcp://HOST:PORT") from None
    except (OSError, TimeoutError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClusterError(f"no dask scheduler answered at {scheduler} within {timeout:g} s "
                           f"({text})") from None
    try:
        yield client
    finally:
        client.close()


async def _handshake(address: str, timeout: float) -> None:
    """Open and close one connection to ``address``. Bounded by the caller's ``wait_for``:
    ``distributed`` bounds the TCP connect by its timeout but then waits for the peer's
    handshake without one, so a port that accepts connections and never answers would hang
    ``Client`` forever."""
    comm = await comm_connect(address, timeout=timeout)
    await comm.close()


class ModelPlugin(WorkerPlugin):
    """Carries a model file's bytes to each worker once and loads the detector there."""

    def __init__(self, data: bytes, device: str = "auto", precision: str = "auto") -> None:
        self.data, self.device, self.precision = data, device, precision
        self.detector: Any = None

    def setup(self, worker: Any) -> None:
        from .detector import AnomalyDetector

        fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=worker.local_directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.data)
            self.detector = AnomalyDetector.load(tmp, device=self.device,
                                                 precision=self.precision)
        finally:
            os.unlink(tmp)
        self.data = b""


def _score_on_worker(plugin: str, task: ImageTask, settings: BatchSettings) -> ImageOutcome:
    return score_task(get_worker().plugins[plugin].detector, task, settings)


class _Deaths:
    """How many times a worker died while holding each image of one run (by task index),
    from the scheduler's ``remove-worker`` events (topic ``"all"``): the images it was scoring
    and those it had scored but not yet handed over. Called in the client's event loop."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self._lock, self._counts = prefix, threading.Lock(), {}

    def __call__(self, event: tuple[float, Any]) -> None:
        msg = event[1]
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker" \
                or msg.get("expected"):  # a worker retired on purpose is no death
            return
        keys = set(msg.get("processing-tasks", ())) | set(msg.get("lost-computed-tasks", ()))
        with self._lock:
            for key in keys:
                if isinstance(key, str) and key.startswith(self.prefix):
                    k = int(key[len(self.prefix):])
                    self._counts[k] = self._counts.get(k, 0) + 1

    def pop(self, index: int) -> int:
        with self._lock:
            return self._counts.pop(index, 0)


def _with_deaths(outcome: ImageOutcome, task: ImageTask, deaths: int) -> ImageOutcome:
    """``outcome`` with the worker deaths it survived (``retries``, ``notice``)."""
    if deaths and not outcome.lost:
        outcome.retries = deaths
        times = f" ({deaths} times)" if deaths > 1 else ""
        outcome.notice = (f"{task.csv_path}: a dask worker died while scoring it{times}; "
                          "scored again on another worker")
    return outcome


class _Window:
    """Tasks to keep in flight: :data:`TASKS_PER_THREAD` per worker thread of the cluster as
    it is now (asked at most once a second: workers come and go)."""

    def __init__(self, client: Client) -> None:
        self.client, self.size, self.asked = client, TASKS_PER_THREAD, -1.0

    def __call__(self) -> int:
        if time.monotonic() - self.asked > 1.0:
            threads = sum(self.client.nthreads().values())
            self.size, self.asked = TASKS_PER_THREAD * max(1, threads), time.monotonic()
        return self.size


def iter_cluster_outcomes(client: Client, model: str | os.PathLike[str],
                          tasks: Sequence[ImageTask], settings: BatchSettings, *,
                          device: str = "auto", precision: str = "auto"
                          ) -> Iterator[ImageOutcome]:
    """Score ``tasks`` on the cluster behind ``client``, yielding outcomes in input order.

    Parameters
    ----------
    client : distributed.Client
        From :func:`connect` (or your own).
    model : path
        The model file; its bytes are sent to every worker once.
    tasks, settings
        As for :func:`.batch.iter_outcomes`. Relative paths are made absolute here.
    device : str
        Where each worker runs the network (resolved on the worker).
    precision : str
        The network's precision there (resolved on the worker; see
        :func:`.device.resolve_precision`).

    Raises
    ------
    ModelFileError, DeviceError
        From a worker loading the model.

    Notes
    -----
    An image whose worker died is scored again elsewhere: its outcome has ``retries`` (the
    deaths) and a ``notice`` line; one dask gives up on is ``lost``, with an ``error`` and a
    ``notice`` line. No image is left without an outcome.
    """
    data = Path(model).read_bytes()
    name = "cell-anomaly-model-" + hashlib.sha256(data).hexdigest()[:16]
    client.register_plugin(ModelPlugin(data, device, precision), name=name)
    del data
    if settings.heatmaps is not None:
        settings = replace(settings, heatmaps=settings.heatmaps.resolve())
    pending = as_completed(loop=client.loop)
    in_flight: dict[Any, int] = {}
    finished: dict[int, ImageOutcome] = {}
    next_submit = next_yield = 0
    run = uuid.uuid4().hex[:12]
    prefix = f"cell-anomaly-score-{run}-"
    deaths = _Deaths(prefix)
    client.subscribe_topic("all", deaths)
    window_size = _Window(client)

    def fill() -> None:
        nonlocal next_submit
        window = window_size()
        while next_submit < len(tasks) and next_submit < next_yield + window:
            t = tasks[next_submit]
            t = replace(t, path=t.path.resolve(),
                        labels=t.labels.resolve() if t.labels is not None else None)
            fut = client.submit(_score_on_worker, name, t, settings, pure=False,
                                key=f"{prefix}{next_submit}")
            in_flight[fut] = next_submit
            pending.add(fut)
            next_submit += 1

    try:
        fill()
        for fut in pending:
            k = in_flight.pop(fut)
            try:
                finished[k] = _with_deaths(fut.result(), tasks[k], deaths.pop(k))
            except KilledWorker:
                n = deaths.pop(k)
                times = f" {n} times" if n > 1 else ""
                lost = error_outcome(tasks[k], f"not scored: the dask workers scoring it died"
                                               f"{times}; --resume tries it again")
                lost.lost, lost.notice = True, f"{tasks[k].csv_path}: {lost.error}"
                finished[k] = lost
            fut.release()
            while next_yield in finished:
                yield finished.pop(next_yield)
                next_yield += 1
            fill()
    finally:
        for fut in in_flight:
            fut.cancel()
        with contextlib.suppress(Exception):  # best effort: the cluster may be gone
            client.unsubscribe_topic("all")
        with contextlib.suppress(Exception):
            client.unregister_worker_plugin(name)
