"""Grading through a real Dask cluster (``grader.cluster``, ``grader grade --scheduler``),
worker deaths and resume included.

Dask comes with the dev extra: these tests do not skip without it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import dask
import nbformat
import pytest
from click.testing import CliRunner
from distributed import LocalCluster

import grader.grade
from conftest import notebook
from conftest import read_grades as grades
from grader.assignment import load_assignment
from grader.cli import main
from grader.cluster import MISSING_DASK, ClusterExecutor, ClusterFuture, as_completed
from grader.grade import run_one, warm_data_cache
from grader.sandbox import resolve
from grader.score import score


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory, physionet):
    """Two worker processes on 127.0.0.1, sharing the session's parsed-data cache."""
    cache = tmp_path_factory.getbasetemp() / "cache"  # the one conftest gives every test
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADER_CACHE", str(cache))         # inherited by the worker processes
        warm_data_cache(physionet)                    # so the workers only read it
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as c:
            yield c


@pytest.fixture
def cluster(module_cluster):
    """The module's cluster with both workers up (a test before may have killed one,
    and its nanny is still bringing it back)."""
    from distributed import Client

    with Client(module_cluster) as client:
        client.wait_for_workers(2, timeout=60)
    return module_cluster


@pytest.fixture
def batch(tiny_lab, tmp_path, physionet):
    """The tiny lab, 6 notebooks (g3 fails a cell), and run_one's arguments as grade() makes them."""
    lab = tiny_lab
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
    kwargs = dict(assignment=assignment, limits=assignment.limits.to_sandbox(),
                  isolation=resolve("auto"), data_dir=physionet, work_root=tmp_path / "nowhere",
                  hidden=[lab, subs, out], executed_dir=out / "executed", threads=1,
                  env={"GRADER_CACHE": os.environ["GRADER_CACHE"]})
    return {"assignment": assignment, "paths": paths, "kwargs": kwargs, "out": out,
            "key": assignment.load_key(), "lab": lab, "subs": subs}


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
    it is given ``victim`` (marker files count the attempts across worker processes).
    A ``ran-`` marker is left by a run that finished: Dask may start a rescheduled task
    on a worker that is itself being closed, a start that never gives a result."""

    def run(nb_path, **kwargs):
        if nb_path.name == victim:
            seen = sorted(markers.glob("kill-*"))
            if len(seen) < kills:
                (markers / f"kill-{len(seen)}-{os.getpid()}").touch()
                os.kill(os.getpid(), signal.SIGKILL)
        evidence = run_one(nb_path, **kwargs)
        if nb_path.name == victim:
            (markers / f"ran-{os.getpid()}").touch()
        return evidence

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


# ---------------------------------------------------------------- grader grade --scheduler

def grade_cli(batch, out: Path, *extra: str):
    """``grader grade`` of the batch's notebooks into ``out`` (in this process); ``.text``
    is its output with rich's line wrapping undone."""
    r = CliRunner().invoke(main, ["grade", str(batch["subs"]), "--lab", str(batch["lab"]),
                                  "--out", str(out),
                                  "--data-dir", str(batch["kwargs"]["data_dir"]), *extra])
    r.text = " ".join(r.output.split())
    return r


def finished(out: Path) -> dict[str, str]:
    """sha256 -> finished_at of every evidence in OUT's store."""
    with sqlite3.connect(out / "grader.db") as db:
        return dict(db.execute("SELECT sha256, finished_at FROM evidence"))


def check_batch_out(out: Path, batch) -> None:
    """OUT holds what a run of the whole batch leaves: 6 rows, 6 evidence, 6 executed."""
    g = grades(out)
    assert sorted(g) == [p.name for p in batch["paths"]]
    assert [g[f"g{i}_lab_07.ipynb"]["total"] for i in range(6)] == ["0", "0", "2", "0", "0", "0"]
    assert g["g3_lab_07.ipynb"]["status"].startswith("errors")
    assert all(g[f"g{i}_lab_07.ipynb"]["status"] == "ok" for i in (0, 1, 2, 4, 5))
    assert len(finished(out)) == 6
    assert sorted(p.name for p in (out / "executed").iterdir()) == [p.name for p in batch["paths"]]


def test_grade_with_scheduler_gives_what_a_local_run_gives(cluster, batch, tmp_path):
    remote, local = tmp_path / "remote", tmp_path / "local"
    r = grade_cli(batch, remote, "--scheduler", cluster.scheduler_address)
    assert r.exit_code == 0, r.output
    assert f"6 to run on the Dask cluster at {cluster.scheduler_address}" in r.text
    assert "2 Dask worker(s), 2 notebook slot(s)" in r.text
    assert "worker tcp://" not in r.text          # no warning about a worker
    check_batch_out(remote, batch)
    executed = nbformat.read(remote / "executed" / "g3_lab_07.ipynb", as_version=4)
    assert any(o.get("ename") == "ZeroDivisionError" for c in executed.cells
               for o in c.get("outputs", []))
    with sqlite3.connect(remote / "grader.db") as db:
        evidence = [json.loads(row[0]) for row in db.execute("SELECT json FROM evidence")]
    assert sorted(e["group"][0] for e in evidence) == [f"Student G{i}" for i in range(6)]
    assert all(e["isolation"].startswith("bubblewrap") == (batch["kwargs"]["isolation"].mode == "bwrap")
               for e in evidence)

    r = grade_cli(batch, local, "-j", "2")
    assert r.exit_code == 0, r.output
    assert grades(remote) == grades(local)
    assert finished(remote).keys() == finished(local).keys()
    # rescore works on what the cluster produced, from the local store alone
    r = CliRunner().invoke(main, ["rescore", str(remote)])
    assert r.exit_code == 0, r.output
    assert grades(remote) == grades(local)


def test_grade_with_scheduler_survives_a_lost_worker(cluster, batch, tmp_path, monkeypatch):
    """A worker dies in the middle of g2: every notebook is still graded exactly once."""
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setattr(grader.grade, "run_one", killer(markers, "g2_lab_07.ipynb", kills=1))
    out = tmp_path / "out"
    r = grade_cli(batch, out, "--scheduler", cluster.scheduler_address)
    assert r.exit_code == 0, r.output
    kills, ran = list(markers.glob("kill-*")), list(markers.glob("ran-*"))
    assert len(kills) == 1 and len(ran) == 1, (kills, ran)
    assert kills[0].name.split("-")[-1] != ran[0].name.split("-")[-1]  # another process
    check_batch_out(out, batch)
    for p in batch["paths"]:                     # one progress line per notebook
        assert r.text.count(f" {p.name} (") == 1, r.output


def test_grade_with_scheduler_resumes_without_running_twice(cluster, batch, tmp_path):
    from grader.store import Store

    out = tmp_path / "out"
    scheduler = ["--scheduler", cluster.scheduler_address]
    r = grade_cli(batch, out, *scheduler)
    assert r.exit_code == 0, r.output
    before = finished(out)
    # As if the batch had been killed before two notebooks were done.
    lost = sorted(before)[:2]
    with Store(out / "grader.db") as store:
        assert store.drop_evidence(lost) == 2
    for p in (out / "executed").iterdir():
        p.unlink()

    r = grade_cli(batch, out, *scheduler)
    assert r.exit_code == 0, r.output
    assert "4 already graded, 2 to run on the Dask cluster" in r.text
    after = finished(out)
    assert {h: after[h] for h in before if h not in lost} == \
        {h: before[h] for h in before if h not in lost}      # not run again
    assert all(after[h] != before[h] for h in lost)
    assert len(list((out / "executed").iterdir())) == 2
    g = grades(out)

    r = grade_cli(batch, out, *scheduler)
    assert r.exit_code == 0, r.output
    assert "6 already graded, 0 to run" in r.text
    assert "Dask worker(s)" not in r.text      # nothing to run: no cluster needed
    assert finished(out) == after and grades(out) == g


def test_grade_with_scheduler_errors_are_one_line(batch, tmp_path, monkeypatch):
    with socket.socket() as s:                   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        r = grade_cli(batch, tmp_path / "out1", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert f"error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in r.text
    assert "Traceback" not in r.text

    r = grade_cli(batch, tmp_path / "out2", "--scheduler", "nohost")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "'nohost'" in r.text and "tcp://HOST:PORT" in r.text

    monkeypatch.setitem(sys.modules, "distributed", None)
    r = grade_cli(batch, tmp_path / "out3", "--scheduler", "tcp://127.0.0.1:8786")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert f"error: {MISSING_DASK}" in r.text
