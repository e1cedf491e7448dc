"""Per-slide jobs on Dask distributed.

One job per slide: a ``LocalCluster`` of ``workers`` processes by default, or an existing
cluster given by its scheduler address. A job that raises does not stop the others: its
error is captured in its :class:`JobResult` and reported. A job whose worker process dies
(SIGKILL, out of memory, a crash in C code) is re-run by Dask on a fresh worker, up to
``distributed.scheduler.allowed-failures`` times (3 by default); after that it is reported
as failed, saying so. Every job comes back as a :class:`JobResult`: none is dropped.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import HistoscopeError

__all__ = ["JobResult", "run_jobs"]

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    """Outcome of one job: ``value`` when it succeeded, ``error`` (one line) when it failed."""

    item: Any
    ok: bool
    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    detail: str | None = field(default=None, repr=False)


def _guarded(func: Callable[..., Any], item: Any, kwargs: dict[str, Any]) -> JobResult:
    t0 = time.perf_counter()
    try:
        value = func(item, **kwargs)
        return JobResult(item, True, value=value, seconds=time.perf_counter() - t0)
    except HistoscopeError as exc:
        return JobResult(item, False, error=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:  # an unexpected bug: keep the traceback for the log
        return JobResult(
            item,
            False,
            error=f"{type(exc).__name__}: {exc}",
            seconds=time.perf_counter() - t0,
            detail=traceback.format_exc(),
        )


def run_jobs(
    func: Callable[..., Any],
    items: Sequence[Any],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    verbose: bool = True,
    desc: str = "slides",
    **kwargs: Any,
) -> list[JobResult]:
    """Run ``func(item, **kwargs)`` for every item, in parallel on Dask, and collect the outcomes.

    Parameters
    ----------
    func : callable
        A picklable, module-level function.
    items : sequence
        One job per item (typically slide paths).
    workers : int, optional
        Worker processes of the LocalCluster (default: ``min(len(items), cpu count)``).
        ``workers=1`` with no scheduler runs in this process, without Dask.
    scheduler : str, optional
        Address of an existing Dask scheduler (``tcp://host:8786``); ``workers`` is then
        ignored.
    verbose : bool
        Progress bar over jobs.

    Returns
    -------
    list of JobResult
        In the order of ``items``.
    """
    from tqdm.auto import tqdm

    items = list(items)
    if not items:
        return []
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if scheduler is None and (workers == 1 or (workers is None and len(items) == 1)):
        results = []
        for item in tqdm(items, desc=desc, unit="slide", disable=not verbose or len(items) == 1):
            results.append(_guarded(func, item, kwargs))
        return results

    try:
        from distributed import Client, LocalCluster, as_completed
        from distributed.scheduler import KilledWorker
    except ImportError as exc:  # pragma: no cover - dask is a dependency
        raise ImportError("parallel runs need Dask distributed: pip install 'dask[distributed]'") from exc

    import os

    import dask

    n = workers or min(len(items), os.cpu_count() or 1)
    cluster = None
    quiet_logs = {"logging.distributed": "error", "distributed.admin.system-monitor.gil.enabled": False}
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if scheduler is None:
        with dask.config.set(quiet_logs):
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise HistoscopeError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None
    allowed = int(dask.config.get("distributed.scheduler.allowed-failures"))
    try:
        futures = [client.submit(_guarded, func, item, kwargs, pure=False, key=f"job-{i}") for i, item in enumerate(items)]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[JobResult | None] = [None] * len(items)
        with tqdm(total=len(items), desc=desc, unit="slide", disable=not verbose) as bar:
            for fut in as_completed(futures):
                i = index[fut.key]
                try:
                    results[i] = fut.result()
                except KilledWorker as exc:  # Dask re-ran it on fresh workers and they died too
                    results[i] = JobResult(items[i], False, error=f"the worker running this job died {allowed + 1} times (killed, out of memory or crashed); Dask retried it {allowed} times and gave up ({exc})")
                except Exception as exc:  # the scheduler lost it, a cancelled future, ...
                    results[i] = JobResult(items[i], False, error=f"worker failed: {type(exc).__name__}: {exc}")
                bar.update(1)
        missing = [items[i] for i, r in enumerate(results) if r is None]
        if missing:  # never drop a job silently
            raise HistoscopeError(f"{len(missing)} job(s) never reported back from Dask: {missing}")
        return results  # type: ignore[return-value]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
