"""Per-slide jobs on a real 2-worker Dask LocalCluster; a failing slide does not stop the others."""

from __future__ import annotations

import pytest

from histoscope.distributed import run_jobs
from histoscope.slide import slide_info


def test_local_cluster_two_workers(tmp_path, cmu_svs, tcga_svs):
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    items = [str(cmu_svs), str(bad), str(tcga_svs)]
    results = run_jobs(slide_info, items, workers=2, verbose=False)
    assert [r.item for r in results] == items
    assert [r.ok for r in results] == [True, False, True]
    assert results[0].value["dimensions"] == [2220, 2967]
    assert results[2].value["level_count"] == 2
    assert "broken.svs" in results[1].error and "text file" in results[1].error


def test_existing_scheduler_address(cmu_svs):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        results = run_jobs(slide_info, [str(cmu_svs)], scheduler=cluster.scheduler_address, verbose=False)
    assert results[0].ok and results[0].value["mpp"] == [0.499, 0.499]


def test_in_process_and_validation(cmu_svs):
    results = run_jobs(slide_info, [str(cmu_svs)], workers=1, verbose=False)
    assert results[0].ok
    assert run_jobs(slide_info, [], verbose=False) == []
    with pytest.raises(ValueError, match="workers"):
        run_jobs(slide_info, [str(cmu_svs)], workers=0)


def test_unreachable_scheduler(cmu_svs):
    from histoscope.exceptions import HistoscopeError

    with pytest.raises(HistoscopeError, match="cannot connect"):
        run_jobs(slide_info, [str(cmu_svs)], scheduler="tcp://127.0.0.1:9", verbose=False)




def test_a_killed_worker_is_retried_and_a_job_that_always_kills_is_reported(tmp_path):
    """SIGKILL inside Dask workers: a job whose worker died runs again on a fresh worker; one
    that kills every worker is reported as failed with the reason; none is dropped.

    (A job waiting on a worker that dies counts as a failure too, Dask's rule: with the default
    3 allowed failures the jobs queued behind a killed one still finish.)"""
    import dask

    from fuzz.faults import killing_job

    items = ["once:a", "c", "once:d", "e"]
    results = run_jobs(killing_job, items, workers=2, verbose=False, marker_dir=str(tmp_path))
    assert [r.item for r in results] == items
    assert all(r.ok for r in results), [r.error for r in results]
    for r in (results[0], results[2]):  # ran again, in another process than the one that died
        first = int((tmp_path / f"{r.item.replace(':', '-')}.died").read_text())
        assert r.value.startswith(f"{r.item} done by ") and int(r.value.split()[-1]) != first

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        results = run_jobs(killing_job, ["always:b"], workers=2, verbose=False, marker_dir=str(tmp_path))
    assert len(results) == 1 and not results[0].ok
    assert "died 2 times" in results[0].error and "retried it 1 times" in results[0].error
