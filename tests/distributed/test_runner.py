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
