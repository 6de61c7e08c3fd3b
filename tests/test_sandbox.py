"""Tests of grader.sandbox: command building (pure) and the sandbox itself,
by running small Python processes in it (no Jupyter, so they are fast)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

import reference

from grader.sandbox import (
    GiB,
    Isolation,
    Limits,
    SandboxUnavailable,
    count_smi_gpus,
    gpu_for_worker,
    nvidia_devices,
    parse_visible_devices,
    python_roots,
    resolve,
    rlimit_prefix,
    sandbox_command,
    sandbox_mode,
    symlink_chain,
    visible_gpus,
    visible_paths,
)

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap (bwrap) is not installed")


# ---------------------------------------------------------------- pure parts

def test_limits_rlimits_and_description():
    lim = Limits(memory=2 * GiB, max_processes=64, max_file_size=GiB)
    assert lim.rlimits() == {"core": 0, "data": 2 * GiB, "nproc": 64, "fsize": GiB}
    assert Limits(memory=None, max_processes=None, max_file_size=None).rlimits() == {"core": 0}
    text = lim.describe()
    assert "memory 2 GiB" in text and "64 processes" in text


def test_rlimit_prefix_sets_soft_and_hard():
    pre = rlimit_prefix(Limits(memory=GiB, max_processes=10, max_file_size=None))
    assert pre[-1] == "--"
    assert f"--data={GiB}:{GiB}" in pre and "--nproc=10:10" in pre
    assert not any(p.startswith("--nproc") for p in rlimit_prefix(Limits(), nproc=False))


def test_none_command_is_only_rlimits(tmp_path):
    cmd = sandbox_command(Isolation("none"), ["python", "-V"], workdir=tmp_path,
                          runtime_dir=tmp_path, limits=Limits())
    # dies with the grader (and checks it is still there), then the rlimits, the command
    assert [os.path.basename(c) for c in cmd[:4]] == ["setpriv", "--pdeathsig", "KILL", "--"]
    assert cmd[7] == str(os.getpid())
    assert os.path.basename(cmd[8]) == "prlimit" and cmd[-2:] == ["python", "-V"]
    no_rl = sandbox_command(Isolation("none", rlimits=False), ["python"], workdir=tmp_path,
                            runtime_dir=tmp_path, limits=Limits())
    assert no_rl[8:] == ["python"]


def test_a_process_whose_grader_is_already_gone_does_not_start(tmp_path):
    # the guard compares its parent with the grader named at build time
    cmd = sandbox_command(Isolation("none", rlimits=False), ["echo", "started"],
                          workdir=tmp_path, runtime_dir=tmp_path, limits=Limits())
    assert subprocess.run(cmd, capture_output=True, text=True).stdout == "started\n"
    cmd[7] = "1"   # as if the grader had died before the guard ran: its parent is not it
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 125 and r.stdout == ""


def test_bwrap_command_is_an_allowlist(tmp_path):
    work_root = tmp_path / "work"
    work = work_root / "g1"
    key_dir, data, rt = tmp_path / "lab01", tmp_path / "data", tmp_path / "rt"
    for d in (work, key_dir, data, rt):
        d.mkdir(parents=True)
    key = tmp_path / "key.json"
    key.write_text("{}")
    iso = Isolation("bwrap", uid=4242, userns=True, nproc_enforced=True)
    cmd = sandbox_command(iso, ["python", "-m", "ipykernel_launcher"], workdir=work,
                          runtime_dir=rt, limits=Limits(), hidden=[key_dir, work_root, key],
                          data_dir=data)
    s = " ".join(cmd)
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--ro-bind /usr /usr",
                 f"--bind {work} {work}", f"--ro-bind {data} {data}", f"--bind {rt} {rt}",
                 f"--chdir {work}", "--reuid=4242", "--user", "--unsetenv JPY_PARENT_PID"):
        assert flag in s, flag
    # nothing of the host is there unless named: no "/" bound, no key folder, no work root
    assert "--ro-bind / /" not in s
    assert f" {key_dir} " not in s and f" {key} " not in s
    assert f"--bind {work_root} " not in s and f"--ro-bind {work_root} " not in s
    # the course packages alone, never the checkout holding them
    repo = Path(reference.__file__).resolve().parent.parent
    assert f"--ro-bind {repo / 'reference'} {repo / 'reference'}" in s
    assert f"--ro-bind {repo} {repo}" not in s and f" {repo / 'assignments'}" not in s
    # bwrap dies with the grader; the uid switch happens inside bwrap, the rlimits last,
    # then the kernel
    b = [i for i, c in enumerate(cmd) if c.endswith("bwrap")][0]
    assert "--pdeathsig" in cmd[:b]
    inner = cmd[b:]
    assert inner.index("--") < [i for i, c in enumerate(inner) if c.endswith("setpriv")][0]
    assert cmd[-3:] == ["python", "-m", "ipykernel_launcher"]


def test_bwrap_readonly_may_be_a_generator(tmp_path):
    cache, inner = tmp_path / "cache", tmp_path / "home" / "lib"
    for d in (cache, inner):
        d.mkdir(parents=True)
    iso = Isolation("bwrap", uid=4242, userns=True, nproc_enforced=True)
    cmd = sandbox_command(iso, ["python"], workdir=tmp_path / "w", runtime_dir=tmp_path / "rt",
                          limits=Limits(), readonly=(p for p in (inner, cache)))
    s = " ".join(cmd)
    assert f"--ro-bind {inner} {inner}" in s and f"--ro-bind {cache} {cache}" in s


def test_symlink_chain_recreates_links_on_the_way(tmp_path):
    real = tmp_path / "real dir" / "venv"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real dir")
    assert symlink_chain(tmp_path / "link" / "venv") == [(str(tmp_path / "real dir"),
                                                          str(tmp_path / "link"))]
    assert symlink_chain(real) == []


def test_the_root_is_never_bound_whatever_runs_python():
    # A Python started as /bin/python3 has "/" as its prefix: that must not bring the host
    assert "/" not in python_roots("/bin/python3")
    for argv0 in ("/bin/python3", "/usr/bin/python3", sys.executable):
        assert all(p != "/" for p, _ in visible_paths(argv0, runtime_dir="/tmp/r",
                                                      workdir="/tmp/w"))


@needs_bwrap
def test_a_hidden_folder_inside_an_allowed_one_is_masked_with_its_work_dir_kept(tmp_path):
    # Say the data cache lay around the output folder: the output's grader.db must stay
    # hidden while the work dir inside that output stays the kernel's.
    out = tmp_path / "out"
    work = out / ".work" / "sub-1"
    work.mkdir(parents=True)
    (out / "grader.db").write_text("every group's answers")
    os.chmod(tmp_path, 0o755)
    for d in (out, out / ".work"):
        os.chmod(d, 0o755)
    iso = resolve("bwrap")
    iso.grant(work)
    code = f"""
import os
try:
    open({str(out / 'grader.db')!r}).read(); print("readable")
except OSError as e:
    print(type(e).__name__)
open("mine.txt", "w").write("ok"); print("wrote")
"""
    cmd = iso.command([sys.executable, "-c", code], workdir=work, runtime_dir=work,
                      limits=Limits(), readonly=[tmp_path], hidden=[out])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=work,
                       env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["FileNotFoundError", "wrote"]
    assert (work / "mine.txt").read_text() == "ok"


FAKE_GPU_NODES = ["/dev/nvidia-caps", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0",
                  "/dev/nvidia1", "/dev/nvidiactl"]


def test_bwrap_command_passes_gpu_device_nodes(tmp_path):
    iso = Isolation("bwrap", uid=4242, userns=True, nproc_enforced=True)
    cmd = sandbox_command(iso, ["python"], workdir=tmp_path, runtime_dir=tmp_path,
                          limits=Limits(), devices=FAKE_GPU_NODES)
    s = " ".join(cmd)
    for dev in FAKE_GPU_NODES:
        assert f"--dev-bind {dev} {dev}" in s, dev
        # on top of bwrap's minimal /dev, and before the command itself
        assert s.index("--dev /dev") < s.index(f"--dev-bind {dev}") < s.index("--chdir")
    plain = sandbox_command(iso, ["python"], workdir=tmp_path, runtime_dir=tmp_path,
                            limits=Limits())
    assert "--dev-bind" not in plain
    # the other modes show the host's /dev: nothing to add
    for other in (Isolation("none"), Isolation("unshare")):
        assert sandbox_command(other, ["python"], workdir=tmp_path, runtime_dir=tmp_path,
                               limits=Limits(), devices=FAKE_GPU_NODES) == \
            sandbox_command(other, ["python"], workdir=tmp_path, runtime_dir=tmp_path,
                            limits=Limits())
    text = iso.describe(Limits(), ["/course"], FAKE_GPU_NODES[3:5])
    assert "GPU devices passed: /dev/nvidia0, /dev/nvidia1" in text
    assert "GPU" not in iso.describe(Limits(), ["/course"])


def test_nvidia_devices_lists_the_nodes_of_a_dev_folder(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "null", "tty"):
        (tmp_path / name).touch()
    (tmp_path / "nvidia-caps").mkdir()
    assert nvidia_devices(tmp_path) == [str(tmp_path / n) for n in (
        "nvidia-caps", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidia1", "nvidiactl")]
    assert nvidia_devices(tmp_path / "missing") == []


def test_visible_gpus_without_torch(tmp_path):
    # an existing CUDA_VISIBLE_DEVICES wins, as CUDA reads it
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert parse_visible_devices(" 1, GPU-8f2a ,-1,0") == ["1", "GPU-8f2a"]
    # else nvidia-smi -L, one line per GPU (MIG lines are indented)
    smi_out = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n"
               "  MIG 1g.10gb     Device  0: (UUID: MIG-a)\n"
               "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)\n")
    assert count_smi_gpus(smi_out) == 2
    fake_smi = tmp_path / "nvidia-smi"
    fake_smi.write_text(f"#!/bin/sh\nprintf '{smi_out}'\n")
    fake_smi.chmod(0o755)
    assert visible_gpus({}, smi=str(fake_smi), proc=tmp_path / "none") == ["0", "1"]
    # else the driver's /proc folder, one entry per GPU; nothing at all: no GPU
    proc = tmp_path / "gpus"
    for bus in ("0000:3b:00.0", "0000:5e:00.0", "0000:86:00.0"):
        (proc / bus).mkdir(parents=True)
    assert visible_gpus({}, smi=None, proc=proc) == ["0", "1", "2"]
    assert visible_gpus({}, smi=None, proc=tmp_path / "none") == []


def test_gpu_for_worker_round_robin():
    assert [gpu_for_worker(k, ["0", "1"]) for k in range(5)] == ["0", "1", "0", "1", "0"]
    assert [gpu_for_worker(k, ["3"]) for k in range(3)] == ["3", "3", "3"]
    assert gpu_for_worker(0, []) is None


def test_describe_says_what_is_hidden_or_not():
    hidden = ["/course/lab01"]
    assert "hidden among the rest: /course/lab01" in Isolation("bwrap").describe(Limits(), hidden)
    assert "everything else (answer key" in Isolation("bwrap").description
    assert "NOT hidden: /course/lab01" in Isolation("unshare").describe(Limits(), hidden)
    assert "NO isolation" in Isolation("none").description


def test_resolve_rejects_unknown_mode():
    with pytest.raises(ValueError):
        resolve("docker")  # type: ignore[arg-type]


def test_resolve_none_and_auto():
    none = resolve("none")
    assert none.mode == "none" and not none.degraded and none.requested == "none"
    auto = resolve("auto")
    assert auto.requested == "auto" and auto.mode == "bwrap" and not auto.degraded


def test_sandbox_mode_of_a_stored_description():
    assert [sandbox_mode(Isolation(m).description) for m in ("bwrap", "unshare", "none")] == \
        ["bwrap", "unshare", "none"]
    assert sandbox_mode(None) == sandbox_mode("") == ""


# ------------------------------------------------------ the sandbox, for real

def _run(iso, code, tmp_path, limits=None, **kw):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    os.chmod(tmp_path, 0o755)
    iso.grant(work)
    cmd = iso.command([sys.executable, "-c", code], workdir=work, runtime_dir=work,
                      limits=limits or Limits(), **kw)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=work,
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


@pytest.fixture
def listener():
    """A TCP listener on 127.0.0.1 in the grader's process; records connections."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    seen: list = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            seen.append(conn)
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1], seen
    stop.set()
    t.join(2)
    srv.close()


CONNECT = """
import socket, sys
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
    print("connected")
except OSError as e:
    print("refused", type(e).__name__)
"""


def test_without_sandbox_the_listener_is_reachable(tmp_path, listener):
    # control for the bwrap test below: the probe itself works
    port, seen = listener
    out = _run(resolve("none"), CONNECT.format(port=port), tmp_path)
    assert "connected" in out.stdout
    assert seen


@needs_bwrap
def test_bwrap_blocks_network(tmp_path, listener):
    port, seen = listener
    out = _run(resolve("bwrap"), CONNECT.format(port=port), tmp_path)
    assert "refused" in out.stdout, out.stderr
    assert not seen


@needs_bwrap
def test_bwrap_hides_folders_and_home(tmp_path):
    secret = tmp_path / "course"
    secret.mkdir()
    (secret / "key.json").write_text('{"answer": "s3cr3t-key"}')
    code = f"""
import os
for p in [{str(secret / 'key.json')!r}, os.path.expanduser('~root/.bashrc')]:
    try:
        print(open(p).read())
    except OSError as e:
        print(type(e).__name__)
print(os.path.exists({str(secret)!r}))
"""
    out = _run(resolve("bwrap"), code, tmp_path, hidden=[secret])
    assert out.returncode == 0, out.stderr
    assert "s3cr3t-key" not in out.stdout
    # not even named: the folder does not exist for the kernel
    assert out.stdout.split() == ["FileNotFoundError", "FileNotFoundError", "False"]


@needs_bwrap
def test_bwrap_kernel_imports_the_project_but_sees_nothing_else_of_the_checkout(tmp_path):
    # The course packages are bound alone: the checkout around them, with its labs (keys),
    # its history and a committed copy of a key elsewhere, does not exist in the sandbox.
    repo = Path(reference.__file__).resolve().parent.parent
    copies = [repo / "assignments" / "lab01" / "key.json",
              repo / "benchmarks" / "results" / "lab01-key-full-h200.json",
              repo / ".git", repo / "README.md"]   # .git: a folder, or a file in a worktree
    assert all(p.exists() for p in copies)
    code = f"""
import reference.data, grader.score
print("imported")
for p in {[str(p) for p in copies]!r}:
    try:
        os.stat(p); print("exists", p)
    except OSError as e:
        print(type(e).__name__)
"""
    out = _run(resolve("bwrap"), "import os\n" + code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["imported"] + ["FileNotFoundError"] * len(copies)


@needs_bwrap
def test_bwrap_sees_no_other_output_folder_nor_var_run_srv(tmp_path):
    # another run's grader.db beside this run's output, a key copy under /var/tmp
    old = tmp_path / "out-2025"
    old.mkdir()
    (old / "grader.db").write_bytes(b"SQLite format 3\0 every group's answers")
    var_copy = Path("/var/tmp") / f"grader-test-key-{os.getpid()}.json"
    var_copy.write_text('{"answer": 42}')
    try:
        code = f"""
import os
for p in [{str(old / 'grader.db')!r}, {str(var_copy)!r}]:
    try:
        open(p, "rb").read(); print("readable", p)
    except OSError as e:
        print(type(e).__name__)
print(sorted(d for d in ("/run", "/var", "/srv", "/home", "/opt", "/mnt") if os.path.exists(d)))
print(os.listdir("/root") if os.path.exists("/root") else [])
"""
        out = _run(resolve("bwrap"), code, tmp_path)
    finally:
        var_copy.unlink()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[:2] == ["FileNotFoundError", "FileNotFoundError"], out.stdout
    assert lines[2] == "[]"
    # the grader's home exists only when the Python lives there (pyenv): that alone
    home_python = [p.parts[2] for p in map(Path, python_roots()) if p.parts[1:2] == ("root",)]
    assert lines[3] == repr(sorted(set(home_python))), lines[3]


@needs_bwrap
def test_bwrap_no_host_unix_socket_is_reachable(tmp_path):
    import stat

    paths = [tmp_path / "srv.sock", Path("/var/tmp") / f"grader-test-{os.getpid()}.sock"]
    servers = []
    try:
        for path in paths:
            srv = socket.socket(socket.AF_UNIX)
            srv.bind(str(path))
            os.chmod(path, stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)  # world-writable
            srv.listen()
            servers.append(srv)
        abstract = socket.socket(socket.AF_UNIX)
        name = "\0grader-test-%d" % os.getpid()
        abstract.bind(name)
        abstract.listen()
        servers.append(abstract)
        code = f"""
import socket
for p in {[str(p) for p in paths] + [name]!r}:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(p); print("connected")
    except OSError as e:
        print(type(e).__name__)
"""
        control = _run(resolve("none"), code, tmp_path)
        assert control.stdout.split() == ["connected"] * 3, control.stdout + control.stderr
        out = _run(resolve("bwrap"), code, tmp_path)
    finally:
        for srv in servers:
            srv.close()
        paths[1].unlink(missing_ok=True)
    assert out.returncode == 0, out.stderr
    assert "connected" not in out.stdout.split(), out.stdout
    assert len(out.stdout.split()) == 3


@needs_bwrap
def test_bwrap_runs_a_venv_under_tmp_behind_a_link_in_a_path_with_a_space(tmp_path):
    # Where the grader is installed must not matter: under /tmp (the sandbox's /tmp is
    # private), behind a symbolic link, with a space in the path.
    real = tmp_path / "my clones" / "grader venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(real)], check=True)
    (tmp_path / "link").symlink_to(tmp_path / "my clones")
    python = tmp_path / "link" / "grader venv" / "bin" / "python"
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path / "my clones", 0o755)
    iso = resolve("bwrap")
    iso.grant(work)
    cmd = iso.command([str(python), "-c", "import sys; print(sys.prefix)"], workdir=work,
                      runtime_dir=work, limits=Limits())
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=work,
                         env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "link" / "grader venv")


@needs_bwrap
def test_bwrap_data_read_only_system_read_only_work_writable(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.txt").write_text("data")
    code = f"""
import os
print(open({str(data / 'x.txt')!r}).read())
for p in [{str(data / 'y.txt')!r}, "/usr/grader-test", "/etc/shadow"]:
    try:
        open(p, "w").write("x")
        print("wrote", p)
    except OSError as e:
        print(type(e).__name__)
open("mine.txt", "w").write("ok")
print(os.getcwd(), os.environ.get("JPY_PARENT_PID"))
"""
    out = _run(resolve("bwrap"), code, tmp_path, data_dir=data)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "data"
    assert "wrote" not in out.stdout
    assert (tmp_path / "work" / "mine.txt").read_text() == "ok"


FORK = """
import os, time, signal
pids = []
try:
    for i in range(200):
        p = os.fork()
        if p == 0:
            time.sleep(30)
            os._exit(0)
        pids.append(p)
except OSError as e:
    print("stopped", type(e).__name__)
for p in pids:
    os.kill(p, signal.SIGKILL)
    os.waitpid(p, 0)
print("forked", len(pids))
"""


@needs_bwrap
def test_bwrap_process_cap(tmp_path):
    iso = resolve("bwrap")
    if not iso.nproc_enforced:
        pytest.skip(f"process cap not enforceable here: {iso.description}")
    out = _run(iso, FORK, tmp_path, limits=Limits(max_processes=20))
    assert "stopped BlockingIOError" in out.stdout, out.stdout + out.stderr
    assert int(out.stdout.split()[-1]) < 20


@needs_bwrap
def test_bwrap_memory_and_file_size(tmp_path):
    code = """
try:
    b = bytearray(8 * 2**30)
    print("allocated")
except MemoryError:
    print("MemoryError")
try:
    open("big", "wb").write(b"x" * (2 * 2**20))
    print("written")
except OSError as e:
    print(e.errno)
"""
    out = _run(resolve("bwrap"), code, tmp_path,
               limits=Limits(memory=2 * GiB, max_file_size=2**20))
    assert out.stdout.split() == ["MemoryError", "27"], out.stdout + out.stderr  # 27: EFBIG


def test_explicit_unavailable_mode_raises(monkeypatch, caplog):
    import grader.sandbox as sb

    monkeypatch.setattr(sb, "_resolve_mode", lambda mode, uid: (None, "not installed: bwrap"))
    with pytest.raises(SandboxUnavailable, match="not installed"):
        sb.resolve("bwrap")
    # auto fails closed, with the cause and the three ways out
    with pytest.raises(SandboxUnavailable) as err:
        sb.resolve("auto")
    for words in ("not installed: bwrap", "apt-get install bubblewrap",
                  "unprivileged_userns_clone", "--sandbox unshare", "--sandbox none"):
        assert words in str(err.value)
    # only a student's own check may fall back
    auto = sb.resolve("auto", fail_closed=False)
    assert auto.mode == "none" and auto.degraded
    assert "NO SANDBOX" in caplog.text
