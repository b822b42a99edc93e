"""The one runner behind ``population run``, ``kb diff`` and ``kb profile``: a list of
independent tasks, run in this process, in a local process pool, or on Dask ``distributed``
(a ``LocalCluster`` or an existing scheduler), with progress counted in patients.

A task is a picklable :class:`Task`: a module-level function, its arguments, how many
patients it covers, and an optional per-process set-up (load the knowledge base, compile the
rules) that runs once in each worker process whatever the backend. Results come back in task
order, so merging them gives the same result on any backend and any number of workers.

Dask workers are processes with one thread each (``threads_per_worker=1``): durable-rules
keeps one live session per process and is not thread-safe. When a Dask worker dies while
running a task (durable-rules can abort the whole process), the scheduler runs the task again
on another worker; after ``allowed-failures`` deaths it gives up with ``KilledWorker``, and the
runner submits the task once more, up to ``lost_worker_retries`` times. A task that must make
progress across such re-runs (the population's buckets) records its own progress; see
``movement_cds._population_run``.

Dask and the process pool are imported only when used: the ``population`` extra provides
Dask (``pip install 'movement-cds[population]'``); without it, asking for a scheduler fails
with :class:`RunnerError` naming the extra.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from movement_cds._errors import RunnerError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["POPULATION_EXTRA", "RunnerError", "Task", "Where", "dask_client", "run_tasks"]

T = TypeVar("T")
log = logging.getLogger("movement_cds.population")

POPULATION_EXTRA = "pip install 'movement-cds[population]'"
#: Worker deaths the scheduler of a LocalCluster we start tolerates per task before it gives
#: up (``distributed.scheduler.allowed-failures``; Dask's default is 3).
ALLOWED_FAILURES = 10
#: How long to wait for a scheduler to have at least one worker before giving up.
WAIT_FOR_WORKERS_S = 60
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Where:
    """Where the tasks run: ``scheduler``, a Dask scheduler address (``tcp://host:8786``);
    otherwise ``workers`` processes on this machine, in a Dask ``LocalCluster`` when ``dask``
    else a process pool (one process: this one, no pool at all)."""

    workers: int = 1
    scheduler: str | None = None
    dask: bool = False

    @property
    def in_process(self) -> bool:
        return self.scheduler is None and not self.dask and self.workers <= 1

    def describe(self) -> str:
        if self.scheduler is not None:
            return f"Dask scheduler {self.scheduler}"
        if self.dask:
            return f"Dask LocalCluster, {self.workers} worker process(es), 1 thread each"
        if self.workers <= 1:
            return "this process"
        return f"process pool, {self.workers} worker process(es)"


_READY: set[tuple[str, str, tuple[Any, ...]]] = set()  # set-ups done in this process


def _set_up_once(init: Callable[..., None], args: tuple[Any, ...]) -> None:
    key = (init.__module__, init.__qualname__, args)
    if key not in _READY:
        init(*args)
        _READY.add(key)


@dataclass(frozen=True)
class Task(Generic[T]):
    """``fn(*args)``, after ``init(*init_args)`` has run once in the executing process;
    ``size`` patients, for progress. ``fn`` and ``init`` must be module-level functions."""

    fn: Callable[..., T]
    args: tuple[Any, ...]
    size: int
    init: Callable[..., None] | None = None
    init_args: tuple[Any, ...] = field(default=())
    name: str = ""

    def __call__(self) -> T:
        if self.init is not None:
            _set_up_once(self.init, self.init_args)
        return self.fn(*self.args)


def run_tasks(
    tasks: Sequence[Task[T]],
    where: Where,
    progress: Progress | None = None,
    *,
    local: Sequence[Callable[[], T]] | None = None,
    lost_worker_retries: int = 0,
    on_ready: Callable[[], None] | None = None,
) -> list[T]:
    """Every task's result, in task order. ``local[i]`` (optional) replaces ``tasks[i]`` when
    running in this process (it may use objects already loaded here). ``progress(done,
    total)`` counts patients as tasks complete; ``on_ready()`` is called once the workers
    are started (a LocalCluster) or connected to (a scheduler), before the first task. Raises
    ``RunnerError`` naming a task that failed."""
    total = sum(t.size for t in tasks)
    if progress:
        progress(0, total)
    if not tasks:
        return []
    if where.in_process or (where.scheduler is None and not where.dask):
        if on_ready:
            on_ready()
    if where.in_process:
        out = []
        done = 0
        for i, t in enumerate(tasks):
            out.append(local[i]() if local is not None else t())
            done += t.size
            if progress:
                progress(done, total)
        return out
    if where.scheduler is None and not where.dask:
        return _run_pool(tasks, where.workers, progress, total)
    with dask_client(where) as client:
        if on_ready:
            on_ready()
        return _run_dask(client, tasks, progress, total, lost_worker_retries)


def _run_pool(tasks: Sequence[Task[T]], workers: int, progress: Progress | None,
              total: int) -> list[T]:
    parts: dict[int, T] = {}
    done = 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(t): i for i, t in enumerate(tasks)}
        for fut in as_completed(futures):
            i = futures[fut]
            parts[i] = fut.result()
            done += tasks[i].size
            if progress:
                progress(done, total)
    return [parts[i] for i in range(len(tasks))]


def _dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise RunnerError(f"Dask is not installed: {POPULATION_EXTRA}") from None
    return distributed


@contextmanager
def dask_client(where: Where) -> Iterator[Client]:
    """A Dask client: connected to ``where.scheduler``, or to a ``LocalCluster`` of
    ``where.workers`` processes (one thread each, loopback only, no dashboard) started here
    and stopped on the way out."""
    distributed = _dask()
    import dask

    if where.scheduler is not None:
        try:
            client = distributed.Client(where.scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise RunnerError(f"cannot connect to the Dask scheduler {where.scheduler}: "
                              f"{type(e).__name__}") from None
        with client:
            try:
                client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
            except TimeoutError:
                raise RunnerError(f"the Dask scheduler {where.scheduler} has no workers "
                                  f"(waited {WAIT_FOR_WORKERS_S} s)") from None
            yield client
        return
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        try:
            cluster = distributed.LocalCluster(
                n_workers=max(1, where.workers), threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR,
                # no dashboard; the scheduler's small HTTP server (health, metrics) on a
                # free loopback port, not 8787 (another cluster may hold it)
                scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
        except (RuntimeError, OSError) as e:
            raise RunnerError(f"cannot start the local Dask workers: {e}") from None
        with cluster, distributed.Client(cluster) as client:
            yield client


def _run_dask(client: Client, tasks: Sequence[Task[T]], progress: Progress | None,
              total: int, retries: int) -> list[T]:
    distributed = _dask()
    futures = {client.submit(t, pure=False, key=f"{t.name or 'task'}-{i}-0"): i
               for i, t in enumerate(tasks)}
    tries = dict.fromkeys(range(len(tasks)), 0)
    parts: dict[int, T] = {}
    done = 0
    pending = distributed.as_completed(list(futures))
    for fut in pending:
        i = futures.pop(fut)
        if fut.status == "error":
            err = fut.exception()
            if isinstance(err, distributed.KilledWorker) and tries[i] < retries:
                tries[i] += 1
                log.warning("task %s killed its workers; submitting it again (%d)",
                            tasks[i].name or i, tries[i])
                again = client.submit(tasks[i], pure=False,
                                      key=f"{tasks[i].name or 'task'}-{i}-{tries[i]}")
                futures[again] = i
                pending.add(again)
                continue
            for other in futures:
                other.cancel()  # type: ignore[no-untyped-call]
            raise RunnerError(f"task {tasks[i].name or i} failed: {type(err).__name__}: "
                              f"{err}") from None
        parts[i] = fut.result()
        done += tasks[i].size
        if progress:
            progress(done, total)
    return [parts[i] for i in range(len(tasks))]
