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
    resolve,
    rlimit_prefix,
    sandbox_command,
    visible_gpus,
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
    assert os.path.basename(cmd[0]) == "prlimit" and cmd[-2:] == ["python", "-V"]
    no_rl = sandbox_command(Isolation("none", rlimits=False), ["python"], workdir=tmp_path,
                            runtime_dir=tmp_path, limits=Limits())
    assert no_rl == ["python"]


def test_bwrap_command_layers(tmp_path):
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
                          data_dir=data, home=tmp_path / "home-missing")
    s = " ".join(cmd)
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--ro-bind / /",
                 f"--tmpfs {key_dir}", f"--tmpfs {work_root}", f"--ro-bind /dev/null {key}",
                 f"--bind {work} {work}", f"--ro-bind {data} {data}", f"--bind {rt} {rt}",
                 f"--chdir {work}", "--reuid=4242", "--user",
                 "--unsetenv JPY_PARENT_PID"):
        assert flag in s, flag
    # the work dir is bound after (on top of) the hidden work root
    assert s.index(f"--bind {work} {work}") > s.index(f"--tmpfs {work_root}")
    # the uid switch happens inside bwrap, the rlimits last, then the kernel
    assert cmd.index("--") < [i for i, c in enumerate(cmd) if c.endswith("setpriv")][0]
    assert cmd[-3:] == ["python", "-m", "ipykernel_launcher"]


def test_bwrap_readonly_may_be_a_generator(tmp_path):
    home, cache, inner = tmp_path / "home", tmp_path / "cache", tmp_path / "home" / "lib"
    for d in (cache, inner):
        d.mkdir(parents=True)
    iso = Isolation("bwrap", uid=4242, userns=True, nproc_enforced=True)
    cmd = sandbox_command(iso, ["python"], workdir=tmp_path, runtime_dir=tmp_path,
                          limits=Limits(), home=home, readonly=(p for p in (inner, cache)))
    s = " ".join(cmd)
    # one inside the hidden home, one outside it: both bound back read-only
    assert f"--tmpfs {home}" in s
    assert f"--ro-bind {inner} {inner}" in s and f"--ro-bind {cache} {cache}" in s


FAKE_GPU_NODES = ["/dev/nvidia-caps", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0",
                  "/dev/nvidia1", "/dev/nvidiactl"]


def test_bwrap_command_passes_gpu_device_nodes(tmp_path):
    iso = Isolation("bwrap", uid=4242, userns=True, nproc_enforced=True)
    cmd = sandbox_command(iso, ["python"], workdir=tmp_path, runtime_dir=tmp_path,
                          limits=Limits(), home=tmp_path / "home-missing", devices=FAKE_GPU_NODES)
    s = " ".join(cmd)
    for dev in FAKE_GPU_NODES:
        assert f"--dev-bind {dev} {dev}" in s, dev
        # on top of bwrap's minimal /dev, and before the command itself
        assert s.index("--dev /dev") < s.index(f"--dev-bind {dev}") < s.index("-- ")
    plain = sandbox_command(iso, ["python"], workdir=tmp_path, runtime_dir=tmp_path,
                            limits=Limits(), home=tmp_path / "home-missing")
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
    assert "hidden paths: /course/lab01" in Isolation("bwrap").describe(Limits(), hidden)
    assert "NOT hidden: /course/lab01" in Isolation("unshare").describe(Limits(), hidden)
    assert "NO isolation" in Isolation("none").description


def test_resolve_rejects_unknown_mode():
    with pytest.raises(ValueError):
        resolve("docker")  # type: ignore[arg-type]


def test_resolve_none_and_auto():
    none = resolve("none")
    assert none.mode == "none" and not none.degraded and none.requested == "none"
    auto = resolve("auto")
    assert auto.requested == "auto"
    assert auto.degraded == (auto.mode != "bwrap")


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
print(os.listdir({str(secret)!r}))
"""
    out = _run(resolve("bwrap"), code, tmp_path, hidden=[secret])
    assert out.returncode == 0, out.stderr
    assert "s3cr3t-key" not in out.stdout
    assert out.stdout.split()[:2] == ["FileNotFoundError", "FileNotFoundError"]
    assert "[]" in out.stdout


@needs_bwrap
def test_bwrap_kernel_imports_the_project_from_a_hidden_home(tmp_path):
    # A clone in the home with an editable install: the home is hidden, the packages
    # are bound back, the lab folders (keys) stay hidden.
    repo = Path(reference.__file__).resolve().parent.parent
    key = repo / "assignments" / "lab01" / "key.json"
    code = f"""
import reference.data, grader.score
print("imported")
try:
    open({str(key)!r}).read(); print("key readable")
except OSError as e:
    print(type(e).__name__)
"""
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(tmp_path, 0o755)
    # The sandbox's own uid could not reach this test's Python when it lives in the
    # real home (not hidden here): keep ours, the point is what the fake home hides.
    iso = replace(resolve("bwrap"), uid=None)
    cmd = sandbox_command(iso, [sys.executable, "-c", code], workdir=work, runtime_dir=work,
                          limits=Limits(), home=repo.parent,
                          hidden=[repo / "assignments", repo / ".git"])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=work,
                         env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["imported", "FileNotFoundError"]


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
    auto = sb.resolve("auto")
    assert auto.mode == "none" and auto.degraded
    assert "NO SANDBOX" in caplog.text
