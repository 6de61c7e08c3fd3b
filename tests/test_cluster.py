"""Grading through a real Dask cluster (``grader.cluster``), worker deaths included.

Dask comes with the dev extra: these tests do not skip without it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import nbformat
import pytest
from distributed import LocalCluster
from nbformat.v4 import new_code_cell, new_notebook

from grader.assignment import load_assignment
from grader.cluster import MISSING_DASK, ClusterExecutor, ClusterFuture, as_completed
from grader.grade import _limits, run_one, warm_data_cache
from grader.sandbox import resolve
from grader.score import score

TOML = """
[lab]
number = 7
title = "tiny"
notebook = "lab07.ipynb"

[limits]
cell_timeout = 20
notebook_timeout = 60

[[question]]
id = "answer"
points = 2
kind = "integer"
prompt = "six times seven"
answer = "answer"

[[question]]
id = "why"
points = 3
kind = "text"
prompt = "why"
cell = "why"
"""


def notebook(*sources: str, group=("Ada Lovelace",)) -> nbformat.NotebookNode:
    group_cell = new_code_cell(f"GROUP = {list(group)!r}")
    group_cell.metadata["grader"] = {"group": True}
    return new_notebook(cells=[group_cell, *[new_code_cell(s) for s in sources]])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, physionet):
    """Two worker processes on 127.0.0.1, sharing the session's parsed-data cache."""
    cache = tmp_path_factory.getbasetemp() / "cache"  # the one conftest gives every test
    old = os.environ.get("GRADER_CACHE")
    os.environ["GRADER_CACHE"] = str(cache)           # inherited by the worker processes
    warm_data_cache(physionet)                        # so the workers only read it
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as c:
            yield c
    finally:
        if old is None:
            os.environ.pop("GRADER_CACHE", None)
        else:
            os.environ["GRADER_CACHE"] = old


@pytest.fixture
def batch(tmp_path, physionet):
    """A tiny lab, 6 notebooks (g3 fails a cell), and run_one's arguments as grade() makes them."""
    lab = tmp_path / "lab07"
    lab.mkdir()
    (lab / "assignment.toml").write_text(TOML)
    nbformat.write(notebook("answer = 6 * 7"), lab / "lab07.ipynb")
    (lab / "key.json").write_text(json.dumps({"questions": {"answer": {"expected": 42}}}))
    subs = tmp_path / "subs"
    subs.mkdir()
    paths = []
    for i in range(6):
        cells = [f"answer = {40 + i}"] + (["1/0"] if i == 3 else [])
        nb = notebook(*cells, group=(f"Student G{i}",))
        paths.append(subs / f"g{i}_lab_07.ipynb")
        nbformat.write(nb, paths[-1])
    assignment = load_assignment(lab)
    out = tmp_path / "out"
    kwargs = dict(assignment=assignment, limits=_limits(assignment, None, None),
                  isolation=resolve("auto"), data_dir=physionet, work_root=tmp_path / "nowhere",
                  hidden=[lab, subs, out], executed_dir=out / "executed", threads=1,
                  env={"GRADER_CACHE": os.environ["GRADER_CACHE"]})
    return {"assignment": assignment, "paths": paths, "kwargs": kwargs, "out": out,
            "key": assignment.load_key()}


def grade_all(pool, fn, batch) -> dict[str, dict]:
    futures = {pool.submit(fn, p, **batch["kwargs"]): p.name for p in batch["paths"]}
    assert all(isinstance(f, ClusterFuture) for f in futures)
    got = {}
    for fut in as_completed(futures):
        assert futures[fut] not in got
        got[futures[fut]] = fut.result()
    return got


def check_graded(evidence: dict, i: int, batch) -> None:
    assert evidence["status"] == ("errors" if i == 3 else "ok"), evidence
    assert evidence["group"] == [f"Student G{i}"]
    total = score(batch["assignment"], evidence, batch["key"], {}).total
    assert total == (2 if i == 2 else 0)
    assert (batch["out"] / "executed" / f"g{i}_lab_07.ipynb").exists()


def test_a_batch_runs_on_the_cluster_like_locally(cluster, batch):
    with ClusterExecutor(cluster.scheduler_address) as pool:
        assert "2 Dask worker(s)" in pool.describe()
        info = pool.workers()
        assert len(info) == 2
        assert all(w["data"] and w["sandbox"] for w in info.values())
        got = grade_all(pool, run_one, batch)
    assert sorted(got) == [p.name for p in batch["paths"]]
    for i in range(6):
        check_graded(got[f"g{i}_lab_07.ipynb"], i, batch)
    # The worker ran the same sandbox as this machine would, and ran g3's error for real.
    local = batch["kwargs"]["isolation"].description
    assert got["g0_lab_07.ipynb"]["isolation"].startswith(local), (local, got["g0_lab_07.ipynb"]["isolation"])
    assert got["g3_lab_07.ipynb"]["errors"][0]["ename"] == "ZeroDivisionError"
    # Executed notebooks came back with their outputs.
    executed = nbformat.read(batch["out"] / "executed" / "g3_lab_07.ipynb", as_version=4)
    assert any(o.get("ename") == "ZeroDivisionError" for c in executed.cells for o in c.get("outputs", []))


def killer(markers: Path, victim: str, kills: int):
    """run_one, except that it kills its own worker process the first ``kills`` times
    it is given ``victim`` (marker files count the attempts across worker processes)."""

    def run(nb_path, **kwargs):
        if nb_path.name == victim:
            seen = sorted(markers.glob("kill-*"))
            if len(seen) < kills:
                (markers / f"kill-{len(seen)}-{os.getpid()}").touch()
                os.kill(os.getpid(), signal.SIGKILL)
            (markers / f"ran-{os.getpid()}").touch()
        return run_one(nb_path, **kwargs)

    return run


def test_a_lost_worker_means_one_rerun_elsewhere(cluster, batch, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    with ClusterExecutor(cluster.scheduler_address) as pool:
        got = grade_all(pool, killer(markers, "g2_lab_07.ipynb", kills=1), batch)
    for i in range(6):
        check_graded(got[f"g{i}_lab_07.ipynb"], i, batch)
    kills, ran = list(markers.glob("kill-*")), list(markers.glob("ran-*"))
    assert len(kills) == 1 and len(ran) == 1, (kills, ran)
    assert kills[0].name.split("-")[-1] != ran[0].name.split("-")[-1]  # another process


def test_a_notebook_that_loses_two_workers_is_an_error_not_a_loop(cluster, batch, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    with ClusterExecutor(cluster.scheduler_address) as pool:
        got = grade_all(pool, killer(markers, "g2_lab_07.ipynb", kills=5), batch)
    bad = got.pop("g2_lab_07.ipynb")
    assert bad["status"] == "grader-error"
    assert "died" in bad["message"]
    assert score(batch["assignment"], bad, batch["key"], {}).total == 0
    assert len(list(markers.glob("kill-*"))) == 2 and not list(markers.glob("ran-*"))
    for i in (0, 1, 3, 4, 5):
        check_graded(got[f"g{i}_lab_07.ipynb"], i, batch)


def test_without_dask_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match="pip install 'grader\\[dask\\]'") as info:
        ClusterExecutor("tcp://127.0.0.1:1")
    assert str(info.value) == MISSING_DASK
