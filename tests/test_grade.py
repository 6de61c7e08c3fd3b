"""`grader grade` and `grader rescore` end to end, on real kernels."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import nbformat
from click.testing import CliRunner

from conftest import notebook, processes_matching
from conftest import read_grades as grades
from grader.cli import main


def write(folder: Path, name: str, nb) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(nb, (bytes, str)):
        path.write_bytes(nb if isinstance(nb, bytes) else nb.encode())
    else:
        nbformat.write(nb, path)
    return path


def wait_for_evidence(db_path: Path, n: int, timeout: float = 120) -> int:
    """Poll the store at ``db_path`` until it holds ``n`` evidence rows or ``timeout``
    seconds have passed; the last count seen."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        if db_path.exists():
            try:
                with closing(sqlite3.connect(db_path)) as db:
                    count = db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
            if count >= n:
                break
        time.sleep(0.1)
    return count


def test_grade_a_small_class(tiny_lab, tmp_path, physionet):
    subs = tmp_path / "subs"
    write(subs, "lovelace_turing_lab_07.ipynb", notebook("answer = 42", "ratio = 0.251"))
    write(subs, "curie_lab_07.ipynb", notebook("answer = 41", "1/0", "ratio = 0.3",
                                              group=("Marie Curie",)))
    write(subs, "noether_lab_07.ipynb", "{ not json")
    write(subs, "copy_of_lovelace.ipynb", (subs / "lovelace_turing_lab_07.ipynb").read_bytes())
    out = tmp_path / "out"
    stale = out / ".work" / "sub-left-by-a-killed-run" / "locked"
    stale.mkdir(parents=True)
    stale.chmod(0o000)
    result = CliRunner().invoke(main, ["grade", str(subs), "--lab", str(tiny_lab), "--out", str(out),
                                       "-j", "2", "--data-dir", str(physionet)])
    assert result.exit_code == 0, result.output
    assert not (out / ".work").exists()  # the work root, stale dirs and all, is gone
    g = grades(out)
    assert set(g) == {"lovelace_turing_lab_07.ipynb", "curie_lab_07.ipynb", "noether_lab_07.ipynb",
                      "copy_of_lovelace.ipynb"}
    assert g["lovelace_turing_lab_07.ipynb"]["total"] == "3"
    assert g["lovelace_turing_lab_07.ipynb"]["maximum"] == "6"
    assert g["curie_lab_07.ipynb"]["total"] == "0"
    assert g["curie_lab_07.ipynb"]["status"].startswith("errors")
    assert g["noether_lab_07.ipynb"]["total"] == "0"
    assert "noether_lab_07.ipynb" in g["noether_lab_07.ipynb"]["status"]
    assert "off the convention" in g["copy_of_lovelace.ipynb"]["flags"]
    assert (out / "executed" / "lovelace_turing_lab_07.ipynb").exists()
    # Identical notebooks were executed once.
    db = sqlite3.connect(out / "grader.db")
    assert db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0] == 2


def test_rescore_after_manual_scores_and_key_change(tiny_lab, tmp_path, physionet):
    subs = tmp_path / "subs"
    write(subs, "lovelace_turing_lab_07.ipynb", notebook("answer = 42", "ratio = 0.27"))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["grade", str(subs), "--lab", str(tiny_lab), "--out", str(out),
                                  "--data-dir", str(physionet)])
    assert r.exit_code == 0, r.output
    assert grades(out)["lovelace_turing_lab_07.ipynb"]["total"] == "2"
    manual = tmp_path / "manual.csv"
    manual.write_text("group,question,points,comment\nlovelace_turing,why,2.5,clear argument\n")
    key = json.loads((tiny_lab / "key.json").read_text())
    key["questions"]["ratio"]["abs_tol"] = 0.05        # a wider tolerance
    (tiny_lab / "key.json").write_text(json.dumps(key))
    before = (out / "executed" / "lovelace_turing_lab_07.ipynb").stat().st_mtime
    r = CliRunner().invoke(main, ["rescore", str(out), "--manual", str(manual)])
    assert r.exit_code == 0, r.output
    assert grades(out)["lovelace_turing_lab_07.ipynb"]["total"] == "5.5"
    assert (out / "executed" / "lovelace_turing_lab_07.ipynb").stat().st_mtime == before


def test_grades_stand_when_pdfs_cannot_be_rendered(tiny_lab, tmp_path, physionet, monkeypatch,
                                                   caplog):
    subs = tmp_path / "subs"
    write(subs, "lovelace_turing_lab_07.ipynb", notebook("answer = 42", "ratio = 0.27"))
    out = tmp_path / "out"

    def no_pango(*args, **kwargs):
        raise OSError("cannot load library 'libpango-1.0-0'")

    monkeypatch.setattr("grader.render.render_all", no_pango)
    r = CliRunner().invoke(main, ["grade", str(subs), "--lab", str(tiny_lab), "--out", str(out),
                                  "--data-dir", str(physionet)])
    assert r.exit_code == 0, r.output
    assert grades(out)["lovelace_turing_lab_07.ipynb"]["total"] == "2"
    assert not (out / "feedback").exists()
    assert "feedback PDFs not written" in caplog.text and "libpango" in caplog.text


def test_killed_batch_resumes_without_running_twice(tiny_lab, tmp_path, physionet):
    subs = tmp_path / "subs"
    for i in range(6):
        write(subs, f"g{i}_lab_07.ipynb", notebook(f"answer = {40 + i}", "import time; time.sleep(1)",
                                                   group=(f"Student G{i}",)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "grader.cli", "grade", str(subs), "--lab", str(tiny_lab),
           "--out", str(out), "-j", "1", "--data-dir", str(physionet)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db_path = out / "grader.db"
    wait_for_evidence(db_path, 2, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_killed = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM evidence").fetchone()[0]
    assert 2 <= n_killed < 6
    done = {r[0]: r[1] for r in sqlite3.connect(db_path).execute("SELECT sha256, finished_at FROM evidence")}

    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{n_killed} already graded" in r.stderr
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0] == 6
    assert db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 6
    # What was done before the kill was not run again.
    for sha, finished in done.items():
        assert db.execute("SELECT finished_at FROM evidence WHERE sha256 = ?", (sha,)).fetchone()[0] == finished
    g = grades(out)
    assert [g[f"g{i}_lab_07.ipynb"]["total"] for i in range(6)] == ["0", "0", "2", "0", "0", "0"]


def test_grade_refuses_a_lab_without_key(tiny_lab, tmp_path, physionet):
    (tiny_lab / "key.json").unlink()
    subs = tmp_path / "subs"
    write(subs, "a_lab_07.ipynb", notebook("answer = 42"))
    r = CliRunner().invoke(main, ["grade", str(subs), "--lab", str(tiny_lab), "--out",
                                  str(tmp_path / "out"), "--data-dir", str(physionet)])
    assert r.exit_code == 1
    assert "grader calibrate" in r.output


def test_killed_in_the_middle_of_a_long_cell_resumes(tiny_lab, tmp_path, physionet):
    """SIGKILL while a kernel runs a long cell: no kernel survives the grader, the rerun
    grades each group exactly once, with the grades of an uninterrupted run."""
    import shutil
    import tempfile

    subs = tmp_path / "subs"
    for i in range(4):
        write(subs, f"k{i}_lab_07.ipynb", notebook(f"answer = {41 + i}", "import time; time.sleep(4)",
                                                   "ratio = 0.25", group=(f"Student K{i}",)))
    tmp = Path(tempfile.mkdtemp(prefix="gk-", dir="/tmp"))
    env = dict(os.environ, TMPDIR=str(tmp))

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "grader.cli", "grade", str(subs), "--lab", str(tiny_lab),
                "--out", str(out), "-j", "1", "--data-dir", str(physionet)]

    try:
        out = tmp_path / "out"
        db_path = out / "grader.db"
        proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)
        wait_for_evidence(db_path, 1, timeout=120)
        time.sleep(2.5)     # the second notebook is now inside its 4 s cell
        # kernels name the folder in their command line (``-f <rt>/k.json``)
        assert processes_matching(str(tmp).encode()), "no kernel running at the time of the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1)
        assert processes_matching(str(tmp).encode()) == []  # the kernel died with the grader
        # A SIGKILLed grader cannot remove its temporary folders (work root, the kernel's
        # runtime dir): they stay; the later runs must add none.
        left_by_kill = set(tmp.iterdir())
        db = sqlite3.connect(db_path)
        done = dict(db.execute("SELECT sha256, finished_at FROM evidence"))
        assert 1 <= len(done) < 4

        r = subprocess.run(cmd(out), capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        assert f"{len(done)} already graded" in r.stderr
        db = sqlite3.connect(db_path)
        assert db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0] == 4
        assert db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 4
        for sha, finished in done.items():
            assert db.execute("SELECT finished_at FROM evidence WHERE sha256 = ?",
                              (sha,)).fetchone()[0] == finished

        whole = tmp_path / "whole"
        r = subprocess.run(cmd(whole), capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        resumed, uninterrupted = grades(out), grades(whole)
        assert resumed == uninterrupted
        assert [resumed[f"k{i}_lab_07.ipynb"]["total"] for i in range(4)] == ["1", "3", "1", "1"]
        assert processes_matching(str(tmp).encode()) == [] and set(tmp.iterdir()) == left_by_kill
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- kernels started ahead

class FakeKernel:
    def __init__(self, workdir: Path, worker: int, env: dict | None = None, devices=()):
        self.workdir, self.worker, self.env, self.devices = workdir, worker, env, list(devices)
        self.workdir.mkdir(parents=True)
        self.down = False

    def shutdown(self) -> None:
        self.down = True


def test_kernel_prestart_keeps_one_spare_per_worker(tmp_path):
    import threading

    from grader.grade import KernelPrestart

    launched: list[FakeKernel] = []
    names = iter(range(100))

    def launch(worker: int) -> FakeKernel:
        launched.append(FakeKernel(tmp_path / f"k{next(names)}", worker))
        return launched[-1]

    prestart = KernelPrestart(launch, todo=3)
    first = prestart.take()
    assert len(launched) == 2 and first is launched[0]   # the next one boots meanwhile
    second = prestart.take()
    assert second is launched[1] and len(launched) == 3
    third = prestart.take()
    assert third is launched[2] and len(launched) == 3   # nothing left: none started ahead
    prestart.close()
    assert not any(k.down for k in launched)             # run_one shuts down what it took

    # two workers: numbered 0 and 1; close() shuts down the unused spares, removes their dirs
    launched.clear()
    prestart = KernelPrestart(launch, todo=10)
    taken = []
    for _ in range(2):
        t = threading.Thread(target=lambda: taken.append(prestart.take()))
        t.start()
        t.join()
    assert sorted(k.worker for k in taken) == [0, 1] and len(launched) == 4
    spares = [k for k in launched if k not in taken]
    prestart.close()
    assert all(k.down and not k.workdir.exists() for k in spares)
    assert not any(k.down for k in taken)
    prestart.take()                                      # after close: nothing started ahead
    assert len(launched) == 5


def test_each_worker_gets_its_own_gpu(tmp_path, monkeypatch):
    import threading

    from rich.console import Console

    import grader.grade as g

    nodes = ["/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl"]
    monkeypatch.setattr(g, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(g, "nvidia_devices", lambda: nodes)
    names = iter(range(100))
    monkeypatch.setattr(g, "start_in_fresh_workdir", lambda root, *, env, devices, **kw:
                        FakeKernel(root / f"w{next(names)}", -1, env, devices))
    prestart = g._prestart(6, tmp_path, Console(file=open(os.devnull, "w")),
                           env={"GRADER_CACHE": "/c"}, limits=None)
    taken: dict[str, list] = {}

    def worker(name: str) -> None:
        for _ in range(3):
            taken.setdefault(name, []).append(prestart.take())

    for name in ("a", "b", "c"):          # a third worker shares GPU 0 with the first
        t = threading.Thread(target=worker, args=(name,))
        t.start()
        t.join()
    prestart.close()
    gpus = {name: {k.env["CUDA_VISIBLE_DEVICES"] for k in ks} for name, ks in taken.items()}
    assert gpus == {"a": {"0"}, "b": {"1"}, "c": {"0"}}
    assert all(k.devices == nodes and k.env["GRADER_CACHE"] == "/c"
               for ks in taken.values() for k in ks)

    # no GPU: no CUDA_VISIBLE_DEVICES, no device node
    monkeypatch.setattr(g, "visible_gpus", lambda: [])
    prestart = g._prestart(1, tmp_path, Console(file=open(os.devnull, "w")), env={})
    k = prestart.take()
    assert k.env == {} and k.devices == []


def test_same_file_name_in_two_folders_keeps_two_executed_notebooks(tiny_lab, tmp_path, physionet):
    """Two uploads named alike in different folders (two Moodle entries): each submission
    keeps its own executed notebook, holding its own run."""
    subs = tmp_path / "subs"
    write(subs / "Ada Lovelace_1_assignsubmission_file", "lovelace_lab_07.ipynb",
          notebook("print('run of ada')\nanswer = 42", group=("Ada Lovelace",)))
    write(subs / "Eve Other_2_assignsubmission_file", "lovelace_lab_07.ipynb",
          notebook("print('run of eve')\nanswer = 1", group=("Eve Other",)))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["grade", str(subs), "--lab", str(tiny_lab), "--out", str(out),
                                  "-j", "2", "--data-dir", str(physionet)])
    assert r.exit_code == 0, r.output
    for who, folder in (("ada", "Ada Lovelace_1"), ("eve", "Eve Other_2")):
        path = out / "executed" / f"{folder}_assignsubmission_file" / "lovelace_lab_07.ipynb"
        assert f"run of {who}" in path.read_text()
    assert not (out / "executed" / "lovelace_lab_07.ipynb").exists()


def test_hostile_moodle_download_leaves_honest_groups_their_grades(tiny_lab, tmp_path, physionet):
    """Issue 27, done when: a Moodle download holding a zip bomb, a lone surrogate in a
    group cell, markup in names, a formula, and a notebook claiming an honest group's
    member, beside two honest groups: exit 0, the honest groups get exactly the grades
    they get alone (manual score included), every hostile upload a clear status."""
    import zipfile

    from conftest import formula_cells

    def nb_bytes(*sources, group):
        return nbformat.writes(notebook(*sources, group=group)).encode()

    ada = nb_bytes("answer = 42", "ratio = 0.25", group=("Ada Lovelace",))
    alan = nb_bytes("answer = 42", "ratio = 0.3", group=("Alan Turing",))
    surrogate = json.loads(nb_bytes("answer = 42", group=("x",)))
    surrogate["cells"][0]["source"] = 'GROUP = ["Eve Sur\ud800rogate"]'
    honest = {"Ada Lovelace_1_assignsubmission_file/lovelace_lab_07.ipynb": ada,
              "Alan Turing_2_assignsubmission_file/turing_lab_07.ipynb": alan}
    hostile = {
        "Eve Bomb_3_assignsubmission_file/bomb_lab_07.ipynb": b"\0" * (101 * 2**20),
        "Eve Surrogate_4_assignsubmission_file/surrogate_lab_07.ipynb":
            json.dumps(surrogate).encode(),
        "Eve [bold]Markup_5_assignsubmission_file/markup[red]_lab_07.ipynb":
            nb_bytes("answer = 42", group=("[/]Eve [link=x]Markup",)),
        "=cmd Eve_6_assignsubmission_file/formula_lab_07.ipynb":
            nb_bytes("answer = 42", group=("=cmd Eve", '=HYPERLINK("http://evil.example")')),
        "Eve Claim_7_assignsubmission_file/lovelace_lab_07.ipynb":
            nb_bytes("answer = 42", "ratio = 0.25", "print('mine')", group=("Ada Lovelace",)),
    }
    manual = tmp_path / "manual.csv"
    manual.write_text("group,question,points,comment\nLovelace,why,2.5,clear\n")

    def run(files: dict, name: str) -> dict:
        zpath = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as z:
            for arc, data in files.items():
                z.writestr(arc, data)
        out = tmp_path / name
        r = CliRunner().invoke(main, ["grade", str(zpath), "--lab", str(tiny_lab), "--out",
                                      str(out), "-j", "2", "--data-dir", str(physionet),
                                      "--manual", str(manual)])
        assert r.exit_code == 0, r.output
        assert formula_cells(out / "grades.csv") == []
        return grades(out)

    alone = run(honest, "alone")
    batch = run({**honest, **hostile}, "batch")
    for file in honest:
        assert {k: batch[file][k] for k in ("status", "total", "answer", "ratio", "why")} == \
            {k: alone[file][k] for k in ("status", "total", "answer", "ratio", "why")}, file
    assert alone["Ada Lovelace_1_assignsubmission_file/lovelace_lab_07.ipynb"]["total"] == "5.5"
    bomb = batch["Eve Bomb_3_assignsubmission_file/bomb_lab_07.ipynb"]
    assert bomb["status"].startswith("invalid: batch.zip: ") and "refused" in bomb["status"]
    claim = batch["Eve Claim_7_assignsubmission_file/lovelace_lab_07.ipynb"]
    assert claim["why"] == "0" and "claims the same member" in claim["flags"]
    assert batch["Eve Surrogate_4_assignsubmission_file/surrogate_lab_07.ipynb"]["total"] == "2"
    assert batch["'=cmd Eve_6_assignsubmission_file/formula_lab_07.ipynb"]["total"] == "2"
    markup = batch["Eve [bold]Markup_5_assignsubmission_file/markup[red]_lab_07.ipynb"]
    assert markup["members"] == "[/]Eve [link=x]Markup" and markup["total"] == "2"
