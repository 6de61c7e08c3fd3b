"""The sandbox as grading uses it: it fails closed, bounds the work dir and the grader's
own measurement, and leaves no process behind when the grader is killed."""
from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from conftest import TINY_LAB_TOML, notebook, processes_matching, read_grades
from grader.measure import measure_models
from grader.sandbox import Limits, MiB, resolve
from reference.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def grader(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grader.cli", *args], capture_output=True,
                          text=True, env=env, **kw)


def path_without(tmp_path: Path, *missing: str) -> dict:
    """An environment whose PATH holds this machine's tools except ``missing``."""
    bin_dir = tmp_path / ("bin-without-" + "-".join(missing))
    bin_dir.mkdir(exist_ok=True)
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name not in missing and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(os.path.join(folder, name))
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{bin_dir}")


def class_of(folder: Path, n: int, *cells: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        nbformat.write(notebook(f"answer = {40 + i}", *cells, group=(f"Student S{i}",)),
                       folder / f"s{i}_lab_07.ipynb")
    return folder


# ---------------------------------------------------------------- fails closed

def test_auto_refuses_to_grade_without_bubblewrap(tiny_lab, tmp_path, physionet):
    subs = class_of(tmp_path / "subs", 3)
    env = path_without(tmp_path, "bwrap")
    out = tmp_path / "out"
    r = grader("grade", str(subs), "--lab", str(tiny_lab), "--out", str(out), "--data-dir",
               str(physionet), env=env)
    assert r.returncode == 1, r.stderr
    assert "error: bubblewrap cannot build the sandbox here (not installed: bwrap)" in r.stderr
    for fix in ("apt-get install bubblewrap", "unprivileged user namespaces", "--sandbox unshare"):
        assert fix in r.stderr
    assert "Traceback" not in r.stderr
    # nothing ran, nothing was written as if it had
    assert not (out / "grades.csv").exists() and not (out / "executed").exists()

    # a weaker sandbox runs when named, and every row and report says which one
    r = grader("grade", str(subs), "--lab", str(tiny_lab), "--out", str(out), "--data-dir",
               str(physionet), "--sandbox", "unshare", env=env)
    assert r.returncode == 0, r.stderr
    rows = read_grades(out)
    assert {row["sandbox"] for row in rows.values()} == {"unshare"}
    assert {row["total"] for row in rows.values()} == {"0", "2"}
    from pypdf import PdfReader

    pdfs = sorted((out / "feedback").glob("*.pdf"))
    assert pdfs
    for pdf in pdfs:
        if pdf.name == "summary.pdf":
            continue
        text = " ".join(p.extract_text() for p in PdfReader(pdf).pages)
        assert "unshare: no network" in " ".join(text.split()), pdf.name


def test_validate_refuses_without_bubblewrap(tmp_path, physionet):
    r = grader("validate", str(ROOT / "assignments" / "lab01"), "--data-dir", str(physionet),
               env=path_without(tmp_path, "bwrap"), timeout=300)
    assert r.returncode == 1
    assert r.stderr.startswith("error: bubblewrap cannot build the sandbox here"), r.stderr
    assert "nothing was run" in r.stderr and "grader validate" not in r.stdout


# ---------------------------------------------------------------- bounded resources

FILL_DISK = """
import errno, os
written = 0
try:
    for i in range(64):
        with open(f"f{i}", "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, 8 * 2**20)
        written += 8 * 2**20
    print("not stopped", written // 2**20)
except OSError as e:
    print("stopped", errno.errorcode[e.errno], written // 2**20)
try:   # and every last byte
    with open("f-rest", "wb", buffering=0) as fh:
        while True:
            fh.write(b"x" * 4096)
except OSError:
    pass
if CLEAN_UP:
    for name in os.listdir("."):
        if name.startswith("f"):
            os.remove(name)
"""


def test_a_notebook_cannot_fill_the_disk(tiny_lab, tmp_path, physionet):
    if os.geteuid() != 0:
        pytest.skip("the work dir's size limit is a tmpfs mount, which needs root")
    (tiny_lab / "assignment.toml").write_text(
        TINY_LAB_TOML.replace("notebook_timeout = 60", 'notebook_timeout = 60\ndisk = "40MiB"'))
    subs = tmp_path / "subs"
    subs.mkdir()
    for name, clean in (("tidy", True), ("messy", False)):
        nbformat.write(notebook(f"CLEAN_UP = {clean}", FILL_DISK, "answer = 42",
                                group=(f"Student {name}",)), subs / f"{name}_lab_07.ipynb")
    out = tmp_path / "out"
    r = grader("grade", str(subs), "--lab", str(tiny_lab), "--out", str(out), "--data-dir",
               str(physionet), "-j", "2")
    assert r.returncode == 0, r.stderr
    for name in ("tidy", "messy"):
        nb = nbformat.read(out / "executed" / f"{name}_lab_07.ipynb", as_version=4)
        printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
        words = printed.split()
        assert words[:2] == ["stopped", "ENOSPC"], printed
        assert 24 <= int(words[2]) <= 40   # of the 512 MiB asked for
    g = read_grades(out)
    # a group that makes room again is graded as usual; one that leaves its disk full
    # is told why its answers are missing
    assert g["tidy_lab_07.ipynb"]["total"] == "2"
    assert g["messy_lab_07.ipynb"]["total"] == "0"
    assert "work dir was full (at most 40 MiB in all" in g["messy_lab_07.ipynb"]["status"]
    # nothing of it is left on disk or mounted
    assert not (out / ".work").exists()
    assert str(out) not in Path("/proc/self/mountinfo").read_text()


def _models(work: Path) -> None:
    folder = work / "grader_models"
    folder.mkdir(parents=True)
    for name, hidden in (("small", [32]), ("big", [4096, 4096]), ("huge", [4096] * 16)):
        if name == "huge":   # only its config: the size bound comes before the weights
            m = build_model("mlp", 20, 12, 2, hidden=[1])
            config = dict(m.config, kwargs={"hidden": hidden})
        else:
            m = build_model("mlp", 20, 12, 2, hidden=hidden)
            config = m.config
            torch.save(m.state_dict(), folder / f"{name}.pt")
        (folder / f"{name}.json").write_text(json.dumps(config))


class Lab:
    def __init__(self, *names: str):
        self.measurements = [(n, "gait_binary", 0) for n in names]


@pytest.fixture
def models_in_a_work_dir(tmp_path):
    """A group's work dir holding three exported models, the bwrap sandbox granted it,
    and an empty folder for the measurement's scratch dirs."""
    work, root = tmp_path / "work", tmp_path / "root"
    root.mkdir()
    _models(work)
    os.chmod(tmp_path, 0o755)
    iso = resolve("bwrap")
    iso.grant(work)
    return work, iso, root


def test_measurement_runs_in_the_sandbox_within_its_limits(models_in_a_work_dir, physionet):
    work, iso, root = models_in_a_work_dir
    t0 = time.monotonic()
    m = measure_models(work, Lab("small", "big", "huge"), physionet, isolation=iso,
                       limits=Limits(memory=500 * MiB, notebook_timeout=120), work_root=root)
    assert time.monotonic() - t0 < 100
    assert "metrics" in m["small|gait_binary|0"], m["small|gait_binary|0"]
    # 16.8 M weights fit the size bound but not the memory cap: a message, not a crash
    assert "can't allocate memory" in m["big|gait_binary|0"]["error"]
    # 253 M weights are refused from the config, before anything is allocated
    assert "asks for 252,715,010 parameters" in m["huge|gait_binary|0"]["error"]
    assert list(root.iterdir()) == []    # its scratch folder is gone


def test_measurement_over_its_time_limit_ends_with_a_message(models_in_a_work_dir, physionet):
    work, iso, root = models_in_a_work_dir
    m = measure_models(work, Lab("small"), physionet, isolation=iso,
                       limits=Limits(memory=2048 * MiB, notebook_timeout=1), work_root=root)
    assert "did not finish within 1 s" in m["small|gait_binary|0"]["error"]


# ---------------------------------------------------------------- no orphans

@pytest.mark.parametrize("sandbox", ["bwrap", "unshare"])
def test_killing_the_grader_at_random_moments_leaves_no_process(tiny_lab, tmp_path, physionet,
                                                                 sandbox):
    """SIGKILL 10 times per sandbox at random moments of a batch (starting up, kernels
    booting ahead, cells running, storing): 2 s later nothing of it runs."""
    subs = class_of(tmp_path / "subs", 6, "import time; time.sleep(1.5)")
    marker = Path(os.environ.get("GRADER_TEST_TMP", "/tmp")) / f"kill-{sandbox}"
    marker.mkdir()
    env = dict(os.environ, TMPDIR=str(marker))
    rng = random.Random(28)
    cmd = [sys.executable, "-m", "grader.cli", "grade", str(subs), "--lab", str(tiny_lab),
           "-j", "2", "--data-dir", str(physionet), "--sandbox", sandbox]
    out = tmp_path / "out"
    try:
        # once whole: the grades to compare with, and the parsed data cached
        whole = subprocess.run(cmd + ["--out", str(tmp_path / "whole")], capture_output=True,
                               text=True, env=env)
        assert whole.returncode == 0, whole.stderr
        seen_running = 0
        for _ in range(10):
            proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env)
            time.sleep(rng.uniform(0.3, 6.0))
            seen_running += bool(processes_matching(str(marker).encode()))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(2)
            left = processes_matching(str(marker).encode())
            assert left == [], left
        assert seen_running >= 3    # the kills did land while kernels ran
        # and the batch still completes, with the grades of an uninterrupted run
        r = subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        assert read_grades(out) == read_grades(tmp_path / "whole")
        assert sorted(row["total"] for row in read_grades(out).values()) == ["0"] * 5 + ["2"]
    finally:
        shutil.rmtree(marker, ignore_errors=True)


# ---------------------------------------------------------------- not root

USER = "grader-nonroot-test"

READ_KEY = """
import os
try:
    open({key!r}).read(); print("KEY READ")
except OSError as e:
    print("key:", type(e).__name__)
print("uid", os.getuid())
"""


def _first_closed_ancestor(path: str, uid: int) -> str | None:
    """The outermost folder on the way to ``path`` that user ``uid`` may not pass."""
    cur = "/"
    for part in Path(path).parts[1:]:
        cur = os.path.join(cur, part)
        st = os.stat(cur)
        if st.st_uid != uid and not st.st_mode & 0o001:
            return cur
    return None


def test_grading_as_an_ordinary_user_with_bubblewrap(tiny_lab, tmp_path, physionet):
    """An instructor who is not root: bwrap makes its own user namespace, and the key stays
    out of reach. The test makes that user itself (so it needs root to begin with)."""
    if os.geteuid() != 0:
        pytest.skip("the test creates its user with useradd, which needs root")
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        USER], check=True)
    uid = int(subprocess.run(["id", "-u", USER], capture_output=True, text=True).stdout)
    # A folder that user owns, holding the lab, the class and the output.
    home = Path(os.environ.get("GRADER_TEST_TMP", "/tmp")) / "nonroot"
    lab = home / "lab07"
    shutil.copytree(tiny_lab, lab)
    subs = class_of(home / "subs", 3)
    nbformat.write(notebook(READ_KEY.format(key=str(lab / "key.json")), group=("Eve Spy",)),
                   subs / "spy_lab_07.ipynb")
    subprocess.run(["chown", "-R", f"{uid}:{uid}", str(home)], check=True)
    os.chmod(home, 0o755)
    out = home / "out"
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(home),
           "GRADER_CACHE": str(home / "cache"), "TMPDIR": str(home)}
    grade = [sys.executable, "-m", "grader.cli", "grade", str(subs), "--lab", str(lab),
             "--out", str(out), "-j", "2", "--data-dir", str(physionet)]
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    # This machine's Python may live in root's home (pyenv), the checkout in a folder no
    # other user may enter: in a mount namespace of the test's own, show that user these
    # folders alone there, as they would be in a real user's own install.
    import grader as grader_pkg
    import reference
    import reports

    needed = sorted({os.path.realpath(p) for p in (
        sys.base_prefix, sys.prefix, Path(grader_pkg.__file__).parent,
        Path(reference.__file__).parent, Path(reports.__file__).parent, physionet)})
    blocked = {p: _first_closed_ancestor(p, uid) for p in needed}
    blocked = {p: a for p, a in blocked.items() if a is not None}
    tops = sorted({a for a in blocked.values()
                   if not any(a != b and a.startswith(b + "/") for b in blocked.values())})
    steps = []
    for i, p in enumerate(blocked):
        (home / f"stash{i}").mkdir()
        steps.append(f"mount --bind {shlex.quote(p)} {shlex.quote(str(home / f'stash{i}'))}")
    steps += [f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(a)}" for a in tops]
    for i, p in enumerate(blocked):
        steps += [f"mkdir -p {shlex.quote(p)}",
                  f"mount --bind {shlex.quote(str(home / f'stash{i}'))} {shlex.quote(p)}"]
    script = " && ".join(steps + ["exec " + shlex.join(drop + grade)])
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                       capture_output=True, text=True, env=env, cwd=home)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "isolation: bwrap" in r.stderr
    g = read_grades(out)
    assert {row["sandbox"] for row in g.values()} == {"bwrap"}
    assert sorted(row["total"] for row in g.values()) == ["0", "0", "0", "2"]
    nb = nbformat.read(out / "executed" / "spy_lab_07.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert printed.split() == ["key:", "FileNotFoundError", "uid", str(uid)], printed
    assert os.stat(out / "grades.csv").st_uid == uid
    assert len([p for p in (out / "feedback").glob("*.pdf") if p.name != "summary.pdf"]) == 4


def test_an_onnx_export_is_bounded_before_onnxruntime_allocates(tmp_path, monkeypatch):
    import grader.measure as measure

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(20 * 12, 2))
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(1, 20, 12),), str(path), dynamo=False)

    class Data:
        task, n_classes = "gait_binary", 2

    _, ops = measure.load_onnx(path, "m", Data())       # 482 weights: within the bound
    assert "Gemm" in ops or "MatMul" in ops
    monkeypatch.setattr(measure, "MAX_PARAMS", 100)
    with pytest.raises(measure.MeasureError, match="holds 482 weights, more than the 100"):
        measure.load_onnx(path, "m", Data())


def test_the_measurement_reads_the_cache_the_grader_warmed(models_in_a_work_dir, physionet,
                                                            monkeypatch, tmp_path):
    # The grader's own environment need not name the cache (only its kernels' does): the
    # measurement must still be pointed at it, and see it through its sandbox.
    import grader.measure as measure
    from reference.paths import cache_dir

    monkeypatch.delenv("GRADER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = cache_dir()
    cache.mkdir(parents=True)
    seen = {}

    def run(argv, **kw):
        seen.update(argv=argv, env=kw["env"], cwd=kw["cwd"])
        raise subprocess.TimeoutExpired(argv, 1)

    monkeypatch.setattr(measure.subprocess, "run", run)
    work, iso, root = models_in_a_work_dir
    measure_models(work, Lab("small"), physionet, isolation=iso, work_root=root)
    assert seen["env"]["GRADER_CACHE"] == str(cache)
    assert f"--ro-bind {cache} {cache}" in " ".join(seen["argv"])
    # and its working folder is an empty one of its own, never the checkout
    assert Path(seen["cwd"]).parent == root


def test_onnx_external_data_is_refused_in_every_graph(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    import grader.measure as measure

    (tmp_path / "secret.bin").write_bytes(b"KEY" * 4)
    hidden = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3])
    hidden.data_location = TensorProto.EXTERNAL
    entry = hidden.external_data.add()
    entry.key, entry.value = "location", "secret.bin"
    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "then", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                               initializer=[hidden])
    other = helper.make_graph([helper.make_node("Constant", [], ["y"], value=helper.make_tensor(
        "z", TensorProto.FLOAT, [3], [0, 0, 0]))], "else", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))

    class Data:
        task, n_classes = "af", 2

    with pytest.raises(measure.MeasureError, match="refers to external data"):
        measure.load_onnx(path, "m", Data())


def test_evidence_is_read_without_following_a_link_swapped_in(tmp_path):
    from grader.evidence import read_no_link

    secret = tmp_path / "secret.json"
    secret.write_text('{"key": 42}')
    (tmp_path / "ev.json").write_text('{"answers": {}}')
    assert read_no_link(tmp_path / "ev.json", 100) == '{"answers": {}}'
    (tmp_path / "ev.json").unlink()
    (tmp_path / "ev.json").symlink_to(secret)   # swapped in after the check looked
    with pytest.raises(OSError):
        read_no_link(tmp_path / "ev.json", 100)
    with pytest.raises(OSError):
        read_no_link(secret, 5)                  # and bounded in size
