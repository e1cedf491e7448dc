"""Running per-slide jobs in parallel on Dask distributed (LocalCluster or a real cluster)."""

from .runner import JobResult, run_jobs

__all__ = ["JobResult", "run_jobs"]
