"""Tests of grader.execute with real Jupyter kernels and real notebooks."""
from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from grader.execute import (
    TRUNCATION_NOTE,
    ExecutionResult,
    OutputBudget,
    execute_notebook,
    load_notebook,
    start_kernel,
    without_debugger,
)
from grader.sandbox import GiB, MiB, Limits, resolve

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap (bwrap) is not installed")

FAST = Limits(cell_timeout=30, notebook_timeout=120)


def nb_of(*sources: str):
    return new_notebook(cells=[new_code_cell(s) for s in sources])


def run(tmp_path, *sources, sandbox="none", **kw) -> ExecutionResult:
    kw.setdefault("limits", FAST)
    return execute_notebook(nb_of(*sources), workdir=tmp_path / "work",
                            isolation=resolve(sandbox), **kw)


def texts(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


# ---------------------------------------------------------------- pure parts

def test_load_notebook_rejects_bad_input_without_raising(tmp_path):
    cases = {
        "junk.ipynb": b"this is not json",
        "half.ipynb": b'{"cells": [',
        "latin1.ipynb": "{\"cells\": \"\xe9\"}".encode("latin-1"),
        "nocells.ipynb": b'{"metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        nb, why = load_notebook(tmp_path / name)
        assert nb is None and why, name
    assert load_notebook(tmp_path / "missing.ipynb")[0] is None
    # a cell without metadata (some editors) is repaired, not rejected
    lax = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
           "cells": [{"cell_type": "code", "source": ["x = 1\n", "x"]}]}
    nb, why = load_notebook(lax)
    assert why is None and nb.cells[0].source == "x = 1\nx"
    good = tmp_path / "good.ipynb"
    nbformat.write(nb_of("1 + 1"), good)
    nb, why = load_notebook(good)
    assert why is None and nb.cells[0].source == "1 + 1"


def test_invalid_notebook_gives_status_invalid(tmp_path):
    bad = tmp_path / "g_lab_01.ipynb"
    bad.write_text('{"cells": [}')
    r = execute_notebook(bad, workdir=tmp_path / "w", isolation=resolve("none"))
    assert r.status == "invalid"
    assert "not a Jupyter notebook" in r.message
    json.dumps(r.to_dict())


def test_invalid_notebook_without_isolation_runs_no_sandbox_probe(tmp_path, monkeypatch):
    import grader.execute

    def no_probe(*a, **kw):
        raise AssertionError("resolve() called for a notebook that is not run")

    monkeypatch.setattr(grader.execute, "resolve", no_probe)
    r = execute_notebook({"cells": 3}, workdir=tmp_path / "w", limits=FAST)
    assert r.status == "invalid" and "limits: 30 s per cell" in r.isolation


def test_output_budget_keeps_head_note_and_tail():
    budget = OutputBudget(total=10_000, per_cell=5_000, tail=100)
    outs: list = []
    for i in range(200):
        out = nbformat.v4.new_output("stream", name="stdout", text=f"line {i}\n" * 10)
        outs.append(out)
        budget.admit(0, outs, out)
    assert budget.finish(0, outs)
    text = "".join(o.text for o in outs)
    assert text.startswith("line 0\n") and "line 199" in text
    assert TRUNCATION_NOTE in text and len(text) < 5_000


# ------------------------------------------------------------- plain kernels

def test_good_notebook_runs_and_stderr_is_not_an_error(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("# Lab 01"),
        new_code_cell("x = 20\nprint('hello')"),
        new_code_cell("import sys, warnings\nwarnings.warn('deprecated thing')\n"
                      "print('to stderr', file=sys.stderr)"),
        new_code_cell("x * 2 + 2"),
    ])
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="forged")]
    r = execute_notebook(nb, workdir=tmp_path / "w", isolation=resolve("none"), limits=FAST)
    assert r.status == "ok", r.errors
    assert r.errors == []
    cells = r.notebook.cells
    assert texts(cells[1]) == "hello\n"  # the uploaded output is gone
    assert "to stderr" in texts(cells[2]) and "deprecated thing" in texts(cells[2])
    assert cells[3].outputs[0].data["text/plain"] == "42"
    assert [c.execution_count for c in cells[1:]] == [1, 2, 3]
    assert r.cell_seconds[0] is None and all(s is not None for s in r.cell_seconds[1:])
    assert r.seconds > 0 and "NO isolation" in r.isolation
    assert nb.cells[1].outputs[0].text == "forged"  # the caller's notebook is untouched
    json.dumps(r.to_dict())


def test_failing_cell_is_recorded_and_later_cells_run(tmp_path):
    r = run(tmp_path, "a = 1", "1 / 0", "print('after', a)")
    assert r.status == "errors"
    [err] = r.errors
    assert (err.cell_index, err.execution_count, err.ename) == (1, 2, "ZeroDivisionError")
    assert "division by zero" in err.evalue
    assert "\x1b[" not in err.traceback and "ZeroDivisionError" in err.traceback
    assert texts(r.notebook.cells[2]) == "after 1\n"


def test_input_is_an_error_not_a_hang(tmp_path):
    r = run(tmp_path, "name = input('your name: ')", "print('next')")
    assert r.status == "errors"
    assert r.errors[0].ename == "StdinNotImplementedError"
    assert texts(r.notebook.cells[1]) == "next\n"


def test_cell_timeout_kills_the_kernel_and_skips_the_rest(tmp_path):
    marker = tmp_path / "work" / "epilogue-ran"
    t0 = time.monotonic()
    r = run(tmp_path, "print('start')", "import time\ntime.sleep(10**6)", "print('never')",
            limits=Limits(cell_timeout=2, notebook_timeout=60),
            epilogue=f"open({str(marker)!r}, 'w').close()")
    elapsed = time.monotonic() - t0
    assert r.status == "timeout"
    assert r.errors[-1].cell_index == 1 and r.errors[-1].ename == "Timeout"
    assert 2 <= r.cell_seconds[1] < 4
    assert elapsed < 2 + 8
    assert r.cell_seconds[2] is None and r.notebook.cells[2].outputs == []
    assert r.notebook.cells[1].outputs[-1].ename == "Timeout"
    assert not marker.exists()  # no epilogue after a timeout


def test_notebook_deadline(tmp_path):
    r = run(tmp_path, *["import time; time.sleep(0.7)"] * 6,
            limits=Limits(cell_timeout=30, notebook_timeout=2))
    assert r.status == "timeout"
    assert "notebook did not finish within 2 s" in r.errors[-1].evalue
    assert 1 <= r.errors[-1].cell_index <= 3
    assert r.seconds < 10


def test_dead_kernel(tmp_path):
    r = run(tmp_path, "print('ok')", "import os\nos._exit(1)", "print('never')")
    assert r.status == "dead"
    err = r.errors[-1]
    assert err.cell_index == 1 and err.ename == "DeadKernel"
    assert "died" in r.message
    assert r.notebook.cells[2].outputs == []


def test_output_is_capped(tmp_path):
    limits = Limits(cell_timeout=60, output_cap=1 * MiB, cell_output_cap=64 * 1024)
    r = run(tmp_path,
            "print('x' * 50_000_000)\nprint('FINAL ACCURACY 0.93')",
            "for i in range(3000):\n    print('epoch', i, 'loss', 1 / (i + 1))",
            "print('small and intact')",
            limits=limits)
    assert r.status == "ok", r.errors
    size = len(nbformat.writes(r.notebook))
    assert size < 1 * MiB
    first, second, third = (texts(c) for c in r.notebook.cells)
    assert TRUNCATION_NOTE in first and "FINAL ACCURACY 0.93" in first
    assert "epoch 0 " in second and "epoch 2999 " in second and TRUNCATION_NOTE in second
    assert third == "small and intact\n"
    assert r.truncated_cells == [0, 1]


def test_epilogue_runs_in_the_same_kernel_and_writes_into_workdir(tmp_path):
    r = run(tmp_path, "answers = {'q1': 42}", "1 / 0",
            epilogue="import json\njson.dump(answers, open('answers.json', 'w'))\nprint('dumped')")
    assert r.status == "errors"  # the epilogue ran although a cell failed
    assert r.epilogue_error is None and "dumped" in r.epilogue_output
    assert json.loads((tmp_path / "work" / "answers.json").read_text()) == {"q1": 42}
    assert len(r.notebook.cells) == 2  # the epilogue is not part of the notebook


def test_epilogue_error_is_separate(tmp_path):
    r = run(tmp_path, "x = 1", epilogue="raise ValueError('no answers')")
    assert r.status == "ok" and r.errors == []
    assert r.epilogue_error.startswith("ValueError: no answers")


def test_kernel_runs_without_a_debugger_in_its_own_folder(tmp_path):
    """Kernels boot through grader.kernel_launcher: ipykernel without debugpy (a third
    less start-up CPU), and, as with ipykernel_launcher, a notebook's own files import."""
    r = run(tmp_path, "import sys\nprint(sorted(m for m in ('debugpy', 'pydevd') "
                      "if sys.modules.get(m)), sys.argv[0].endswith('kernel_launcher.py'))",
            "open('mine.py', 'w').write('X = 7')\nimport mine\nprint(mine.X)")
    assert r.status == "ok", r.errors
    assert texts(r.notebook.cells[0]).split() == ["[]", "True"]
    assert texts(r.notebook.cells[1]).strip() == "7"


def test_only_ipykernels_command_on_this_python_changes():
    assert without_debugger([sys.executable, "-m", "ipykernel_launcher", "-f", "k.json"]) == \
        [sys.executable, "-m", "grader.kernel_launcher", "-f", "k.json"]
    # a user's kernelspec for another Python (which may not have the grader): as it is
    foreign = ["/opt/other-env/bin/python", "-m", "ipykernel_launcher", "-f", "k.json"]
    assert without_debugger(foreign) == foreign
    other = ["julia", "-i", "kernel.jl", "{connection_file}"]
    assert without_debugger(other) == other


def test_kernel_env_is_minimal(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADER_TEST_SECRET", "hunter2")
    r = run(tmp_path, "import os\nprint(sorted(os.environ))\nprint(os.environ['HOME'], "
                      "os.environ['OMP_NUM_THREADS'], os.environ['GRADER_DATA'], os.getcwd())",
            data_dir=tmp_path, threads=2, env={"EXTRA": "1"})
    out = texts(r.notebook.cells[0])
    assert "GRADER_TEST_SECRET" not in out and "hunter2" not in out and "'EXTRA'" in out
    home, threads, data, cwd = out.splitlines()[1].split()
    assert home == cwd == str((tmp_path / "work").resolve()) and threads == "2"
    assert data == str(tmp_path)


# ------------------------------------------------------- kernels started ahead

def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"  # a zombie is dead
    except FileNotFoundError:
        return True


def test_prestarted_kernel_runs_a_notebook_in_its_own_workdir(tmp_path):
    kernel = start_kernel(workdir=tmp_path / "g2", isolation=resolve("none"), limits=FAST,
                          env={"EXTRA": "1"}, threads=2)
    assert kernel.error is None and kernel.runtime_dir.is_dir()
    pid = kernel.km.provisioner.process.pid
    time.sleep(0.5)  # the caller does other work while the kernel boots
    r = execute_notebook(nb_of("import os\nprint(os.getcwd(), os.environ['EXTRA'], "
                               "os.environ['OMP_NUM_THREADS'])", "1 / 0"),
                         kernel=kernel, epilogue="open('answers.json', 'w').write('{}')")
    assert r.status == "errors" and r.errors[0].ename == "ZeroDivisionError"
    assert texts(r.notebook.cells[0]) == f"{(tmp_path / 'g2').resolve()} 1 2\n"
    assert (tmp_path / "g2" / "answers.json").exists() and r.startup_seconds is not None
    assert "NO isolation" in r.isolation
    # shut down at the end, like a kernel started by execute_notebook itself
    assert kernel.km is None and not kernel.runtime_dir.exists() and _gone(pid)
    with pytest.raises(ValueError):
        execute_notebook(nb_of("1"), kernel=kernel)  # one notebook per kernel


def test_prestarted_kernel_never_used_is_shut_down(tmp_path):
    kernel = start_kernel(workdir=tmp_path / "spare", isolation=resolve("none"), limits=FAST)
    pid = kernel.km.provisioner.process.pid
    assert not _gone(pid)
    kernel.shutdown()
    kernel.shutdown()  # idempotent
    assert _gone(pid) and not kernel.runtime_dir.exists()
    # an unreadable notebook given a prestarted kernel shuts it down too
    kernel = start_kernel(workdir=tmp_path / "bad", isolation=resolve("none"), limits=FAST)
    pid = kernel.km.provisioner.process.pid
    r = execute_notebook({"cells": 3}, kernel=kernel)
    assert r.status == "invalid" and _gone(pid) and not kernel.runtime_dir.exists()


def test_prestarted_kernel_that_could_not_launch_is_dead(tmp_path, monkeypatch):
    from grader.sandbox import Isolation

    monkeypatch.setattr(Isolation, "command",
                        lambda self, argv, **kw: ["/nonexistent/sandbox"] + list(argv))
    kernel = start_kernel(workdir=tmp_path / "w", isolation=Isolation("none", rlimits=False),
                          limits=FAST)
    assert kernel.error
    r = execute_notebook(nb_of("print(1)"), kernel=kernel)
    assert r.status == "dead" and r.errors[0].ename == "KernelStartError"
    assert not kernel.runtime_dir.exists()


# -------------------------------------------------------------- under bwrap

@pytest.fixture(scope="module")
def jail(tmp_path_factory):
    """One sandboxed notebook that tries to break out in every way."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    base = tmp_path_factory.mktemp("jail")
    course = base / "assignments" / "lab01"
    course.mkdir(parents=True)
    (course / "key.json").write_text('{"q1": "the-secret-answer-7731"}')
    data = base / "data"
    data.mkdir()
    (data / "afdb.txt").write_text("rr intervals")

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    seen: list = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                seen.append(srv.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    cells = {
        "net": f"import socket\nsocket.create_connection(('127.0.0.1', {srv.getsockname()[1]}), timeout=3)",
        "key": f"print(open({str(course / 'key.json')!r}).read())",
        "data_read": f"print(open({str(data / 'afdb.txt')!r}).read())",
        "data_write": f"open({str(data / 'mine.txt')!r}, 'w').write('x')",
        "memory": "b = bytearray(8 * 2**30)",
        "alive": "import os\nprint('still alive', os.getuid() != 0)",
        "fork": """
import os, time, signal
pids = []
try:
    for i in range(300):
        p = os.fork()
        if p == 0:
            time.sleep(30)
            os._exit(0)
        pids.append(p)
except OSError as e:
    print('stopped by', type(e).__name__)
for p in pids:
    os.kill(p, signal.SIGKILL)
    os.waitpid(p, 0)
print('forked', len(pids))
""",
        "work_write": "open('model.txt', 'w').write('weights')\nprint('saved')",
    }
    names = list(cells)
    result = execute_notebook(
        nb_of(*cells.values()), workdir=base / "work" / "g1", isolation=resolve("bwrap"),
        limits=Limits(cell_timeout=30, memory=2 * GiB, max_processes=48),
        data_dir=data, hidden=[course, base / "work"],
        epilogue="open('answers.json', 'w').write('{}')",
    )
    stop.set()
    thread.join(2)
    srv.close()
    by_name = {n: result.notebook.cells[i] for i, n in enumerate(names)}
    errors = {names[e.cell_index]: e for e in result.errors}
    return result, by_name, errors, seen, base


def test_bwrap_kernel_runs_sandboxed(jail):
    result, cells, errors, _, _ = jail
    assert result.status == "errors"
    assert result.isolation.startswith("bubblewrap")
    assert "hidden among the rest" in result.isolation and "everything else" in result.isolation
    assert texts(cells["alive"]).startswith("still alive")


def test_bwrap_no_network(jail):
    _, cells, errors, seen, _ = jail
    assert errors["net"].ename in {"OSError", "ConnectionRefusedError", "TimeoutError"}
    assert not seen


def test_bwrap_hidden_key(jail):
    result, cells, errors, _, _ = jail
    assert errors["key"].ename in {"FileNotFoundError", "PermissionError"}
    assert "the-secret-answer-7731" not in json.dumps(result.to_dict())


def test_bwrap_data_read_only(jail):
    _, cells, errors, _, base = jail
    assert texts(cells["data_read"]) == "rr intervals\n"
    assert errors["data_write"].ename in {"OSError", "PermissionError"}
    assert not (base / "data" / "mine.txt").exists()


def test_bwrap_memory_bomb(jail):
    _, _, errors, _, _ = jail
    assert errors["memory"].ename == "MemoryError"


def test_bwrap_fork_bomb_contained(jail):
    result, cells, errors, _, _ = jail
    out = texts(cells["fork"])
    if not resolve("bwrap").nproc_enforced:
        pytest.skip("process cap not enforceable here")
    assert "stopped by BlockingIOError" in out
    assert int(out.split()[-1]) < 48


def test_bwrap_workdir_and_epilogue(jail):
    result, cells, _, _, base = jail
    work = base / "work" / "g1"
    assert texts(cells["work_write"]) == "saved\n"
    assert (work / "model.txt").read_text() == "weights"
    assert result.epilogue_error is None and (work / "answers.json").exists()


@needs_bwrap
def test_bwrap_segfault_is_dead(tmp_path):
    r = run(tmp_path, "import ctypes\nctypes.string_at(0)", "print('never')", sandbox="bwrap")
    assert r.status == "dead"
    assert r.errors[0].cell_index == 0 and "SIGSEGV" in r.errors[0].evalue


@needs_bwrap
def test_bwrap_import_torch_under_4_gib(tmp_path):
    r = run(tmp_path, "import torch\nprint(float((torch.ones(100, 100) @ torch.ones(100, 100)).sum()))",
            sandbox="bwrap", limits=Limits(cell_timeout=60, memory=4 * GiB))
    assert r.status == "ok", r.errors
    assert texts(r.notebook.cells[0]) == "1000000.0\n"


@needs_bwrap
def test_parallel_sandboxed_runs(tmp_path):
    def one(i):
        return execute_notebook(nb_of(f"import os\nprint({i}, os.getcwd())"),
                                workdir=tmp_path / f"g{i}", isolation=resolve("bwrap"),
                                limits=FAST, hidden=[tmp_path])
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, range(2)))
    for i, r in enumerate(results):
        assert r.status == "ok", r.errors
        assert texts(r.notebook.cells[0]) == f"{i} {(tmp_path / f'g{i}').resolve()}\n"


def test_kernel_that_cannot_start_is_dead_not_an_exception(tmp_path, monkeypatch):
    from grader.sandbox import Isolation

    broken = Isolation("none", rlimits=False)
    monkeypatch.setattr(Isolation, "command", lambda self, argv, **kw: ["false"] + list(argv))
    r = execute_notebook(nb_of("print(1)"), workdir=tmp_path / "w", isolation=broken,
                         limits=FAST)
    assert r.status == "dead"
    assert r.errors[0].cell_index is None and r.errors[0].ename == "KernelStartError"


def test_unknown_kernel_name_is_the_graders_bug(tmp_path):
    from jupyter_client.kernelspec import NoSuchKernel

    with pytest.raises(NoSuchKernel):
        execute_notebook(nb_of("1"), workdir=tmp_path / "w", isolation=resolve("none"),
                         kernel_name="no-such-kernel")


# ---------------------------------------------------------------- snapshots after each cell

SNAP = "import json\njson.dump(sorted(k for k in globals() if k.startswith('v')), open('snap.json', 'w'))"


def test_snapshot_after_each_finished_cell_not_after_the_stopping_one(tmp_path):
    """The state kept is the one after the last cell that finished: a cell that dies
    halfway (after setting v3) leaves no trace in the snapshot."""
    r = run(tmp_path, "v1 = 1", "v2 = 2\n1 / 0", "v3 = 3\nimport os\nos._exit(1)", "v4 = 4",
            snapshot=SNAP)
    assert r.status == "dead"
    assert r.stopped_cell == 2 and r.snapshot_cell == 1
    assert json.loads((tmp_path / "work" / "snap.json").read_text()) == ["v1", "v2"]
    assert r.message.startswith("stopped in cell 2: the kernel died")
    assert len(r.notebook.cells) == 4  # the snapshots are not part of the notebook


def test_snapshot_after_the_last_cell_of_a_timeout(tmp_path):
    r = run(tmp_path, "v1 = 1", "v2 = 2\nimport time\ntime.sleep(60)",
            limits=Limits(cell_timeout=2, notebook_timeout=60), snapshot=SNAP)
    assert r.status == "timeout" and r.stopped_cell == 1 and r.snapshot_cell == 0
    assert json.loads((tmp_path / "work" / "snap.json").read_text()) == ["v1"]
    assert r.message == "stopped in cell 1: the cell did not finish within 2 s"


def test_a_slow_snapshot_is_cut_at_the_allowance(tmp_path, monkeypatch):
    """The grader's collection has a small fixed allowance, whatever the cell limit: a
    group that makes it slow (here by replacing json.dump, which it calls) stops there."""
    import grader.execute as ex

    monkeypatch.setattr(ex, "COLLECT_ALLOWANCE", 2.0)
    t0 = time.monotonic()
    r = run(tmp_path, "v1 = 1", "import json, time\njson.dump = lambda *a, **k: time.sleep(600)",
            "v3 = 3", limits=Limits(cell_timeout=300, notebook_timeout=600), snapshot=SNAP)
    assert time.monotonic() - t0 < 15
    assert r.status == "timeout" and r.stopped_cell == 1 and r.snapshot_cell == 0
    assert "collection after this cell did not finish within 2 s" in r.message
    assert r.cell_seconds[2] is None
