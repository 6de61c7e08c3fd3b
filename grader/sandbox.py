"""Sandboxes for running untrusted student kernels.

A student's notebook runs in its own Jupyter kernel, and that kernel runs
inside a sandbox whose command line this module builds.  Three kinds exist,
chosen once per grader run by :func:`resolve`:

``bwrap``
    bubblewrap: no network (own network namespace), own PID namespace (every
    process of the notebook dies with the kernel), read-only view of the
    system, private ``/tmp`` and ``/dev/shm``, the grader's home and every
    folder the caller names hidden behind empty tmpfs, only the submission's
    work dir writable and the data dir read-only.  Its ``/dev`` is minimal:
    GPUs are reachable only when the caller passes their device nodes
    (:func:`nvidia_devices`; which GPU a kernel uses is then up to its
    ``CUDA_VISIBLE_DEVICES``, see :func:`visible_gpus`).
``unshare``
    ``unshare``: no network and own PID namespace, but the whole file system
    stays visible (no hidden folders), so the answer key is readable.  A
    fallback for machines without bubblewrap.
``none``
    no isolation at all, only resource limits.  ``auto`` falls back to it
    with a loud warning.

On top of each, :class:`Limits` become rlimits (via ``prlimit``).

What was found on Linux 6.x, as root (the CI case), and why the command looks
the way it does:

* ``RLIMIT_NPROC`` is ignored for uid 0 (the kernel exempts ``INIT_USER`` and
  holders of ``CAP_SYS_RESOURCE``/``CAP_SYS_ADMIN``), and ``bwrap
  --unshare-user --uid N`` run by root still maps N to uid 0 outside, so the
  cap would not bite.  The kernel therefore drops to a real unprivileged uid
  (:data:`SANDBOX_UID`) with ``setpriv`` and then enters a user namespace of
  its own with ``unshare --user``.  Since Linux 5.14 ``RLIMIT_NPROC`` is
  counted per (user namespace, uid): with the limit set *inside* the new
  namespace, each sandbox has its own count, so parallel kernels of the same
  uid do not eat each other's budget.  A bounded fork loop then stops with
  ``BlockingIOError`` at the cap.  (Threads count as processes.)
* A non-root uid cannot read the grader's home (``/root`` is 0700), where
  the Python may live (pyenv).  bwrap puts an empty tmpfs over the home and
  binds back only the Python installation, which also hides the grader's own
  credentials.
* Privileged bwrap keeps *all* capabilities of root inside the sandbox;
  ``setpriv`` clears them (and the bounding set, and sets no_new_privs).
* Not root: bwrap makes a user namespace by itself and no uid switch is needed.
* ``unshare`` mode as root switches uid the same way only if the probe finds
  the very same Python working under that uid (a Python under ``/root``
  cannot be reached without bwrap's tmpfs trick); otherwise it keeps uid 0
  with all capabilities dropped (so no ``setns`` back to the host network)
  and the process cap is off.
* ``none`` mode never sets ``RLIMIT_NPROC``: without a user namespace of its
  own it would count every process of the grader's user (or none, as root).
* ipykernel quits when its parent looks gone (``JPY_PARENT_PID``); in a PID
  namespace its parent is pid 1, so the variable is removed there.
* ``RLIMIT_AS`` counts reserved address space (8 MiB per thread stack, glibc's
  64 MiB arenas, CUDA's huge reservations) and kills healthy torch code;
  ``RLIMIT_DATA`` (Linux >= 4.7) counts private writable memory, which is what
  tensors and ``bytearray`` take, so it is the memory limit used here.  It
  does not see shared memory (``/dev/shm``, capped in size separately).

Example::

    iso = resolve("auto")                 # tries bwrap, then unshare, then none
    print(iso.description)
    argv = iso.command(["python", "-c", "print(1)"], workdir="/tmp/w",
                       runtime_dir="/tmp/rt", limits=Limits(), hidden=["/course/key"])
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Uid the kernel runs as when the grader runs as root.  Not 65534: inside a
#: user namespace every unmapped owner (root included) shows as 65534, and
#: code comparing ``st_uid`` with ``getuid()`` would be fooled.
SANDBOX_UID = 65532

Mode = Literal["bwrap", "unshare", "none"]
SandboxChoice = Literal["auto", "bwrap", "unshare", "none"]
SANDBOX_CHOICES: tuple[str, ...] = ("auto", "bwrap", "unshare", "none")


class SandboxUnavailable(RuntimeError):
    """The sandbox asked for explicitly does not work on this machine."""


def format_size(n: int) -> str:
    """``n`` bytes for people: ``6 GiB``, ``1.18 MiB``, ``12 B``."""
    for unit, k in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= k:
            return f"{round(n / k, 2):g} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one notebook run.

    ``None`` leaves a limit off.  Times are seconds, sizes bytes.

    ``memory`` becomes ``RLIMIT_DATA`` (private writable memory: heap and
    anonymous mappings), not ``RLIMIT_AS`` (see the module doc).
    ``max_processes`` becomes ``RLIMIT_NPROC`` and counts threads too: an
    idle ipykernel has about 10, torch adds its thread pools.
    ``output_cap`` bounds the outputs stored in the executed notebook, and
    ``cell_output_cap`` those of any one cell, so a chatty training loop
    cannot crowd out the later cells.  ``disk`` bounds the work dir as a whole
    (:func:`limit_disk` puts it in force; ``None`` when it is not).

    Example::

        Limits(cell_timeout=120, memory=2 * GiB).describe()
    """

    cell_timeout: float | None = 600.0
    notebook_timeout: float | None = 3600.0
    memory: int | None = 4 * GiB
    max_processes: int | None = 256
    max_file_size: int | None = 1 * GiB
    output_cap: int = 10 * MiB
    cell_output_cap: int = 2 * MiB
    disk: int | None = None

    def rlimits(self) -> dict[str, int]:
        """The ``prlimit`` options (long names) these limits need."""
        out = {"core": 0}  # no core dumps of crashed kernels in the work dir
        if self.memory is not None:
            out["data"] = int(self.memory)
        if self.max_processes is not None:
            out["nproc"] = int(self.max_processes)
        if self.max_file_size is not None:
            out["fsize"] = int(self.max_file_size)
        return out

    def describe(self) -> str:
        parts = []
        if self.cell_timeout:
            parts.append(f"{self.cell_timeout:g} s per cell")
        if self.notebook_timeout:
            parts.append(f"{self.notebook_timeout:g} s per notebook")
        if self.memory is not None:
            parts.append(f"memory {format_size(self.memory)}")
        if self.max_processes is not None:
            parts.append(f"{self.max_processes} processes/threads")
        if self.max_file_size is not None:
            parts.append(f"files up to {format_size(self.max_file_size)}")
        if self.disk is not None:
            parts.append(f"work dir up to {format_size(self.disk)} in all")
        parts.append(f"output up to {format_size(self.output_cap)}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Isolation:
    """The sandbox in force, as found by :func:`resolve`.

    ``mode`` is what runs; ``requested`` what was asked for.  ``degraded`` is
    true when ``auto`` could not get bubblewrap: the caller should show it.
    ``uid`` is the uid the kernel switches to (``None``: it keeps the
    grader's).  ``nproc_enforced`` says whether ``max_processes`` bites.

    Example::

        iso = resolve("none")
        iso.command(["python", "-V"], workdir=".", runtime_dir="/tmp", limits=Limits())
        # ['/usr/bin/prlimit', '--core=0:0', '--data=4294967296:4294967296', ..., '--', 'python', '-V']
    """

    mode: Mode
    requested: str = "auto"
    degraded: bool = False
    uid: int | None = None
    nproc_enforced: bool = False
    userns: bool = False
    rlimits: bool = True
    notes: tuple[str, ...] = field(default=())

    @property
    def hides_paths(self) -> bool:
        return self.mode == "bwrap"

    @property
    def description(self) -> str:
        """One line saying what the sandbox does and does not do."""
        if self.mode == "bwrap":
            text = ("bubblewrap: the kernel sees only the system folders, the Python and its "
                    "venv, the course packages and the data (read-only), its own work dir and a "
                    "private /tmp; everything else (answer key, checkout, other groups, homes, "
                    "/run, /var, /srv) is hidden; no network, own PID namespace")
        elif self.mode == "unshare":
            text = ("unshare: no network, own PID namespace; NO hidden folders "
                    "(the file system, answer key included, is readable)")
        else:
            text = "none: NO isolation (network, files and processes of the host reachable)"
        if self.uid is not None:
            text += f", runs as uid {self.uid}"
        text += ", process cap " + ("enforced" if self.nproc_enforced else "NOT enforced")
        for note in self.notes:
            text += f"; {note}"
        return text

    def describe(self, limits: Limits | None = None, hidden: Iterable[str | Path] = (),
                 devices: Iterable[str | Path] = ()) -> str:
        """:attr:`description` plus the hidden folders, the GPU device nodes
        passed in (bwrap only: the others show the host's ``/dev``) and the
        limits of one run."""
        text = self.description
        hidden = [str(h) for h in hidden]
        if hidden:
            text += ("; hidden among the rest: " if self.hides_paths else "; NOT hidden: ") + ", ".join(hidden)
        devices = [str(d) for d in devices]
        if devices and self.mode == "bwrap":
            text += "; GPU devices passed: " + ", ".join(devices)
        if limits is not None:
            text += "; limits: " + limits.describe()
        return text

    def command(
        self,
        argv: Sequence[str],
        *,
        workdir: str | Path,
        runtime_dir: str | Path,
        limits: Limits,
        hidden: Iterable[str | Path] = (),
        data_dir: str | Path | None = None,
        readonly: Iterable[str | Path] = (),
        devices: Iterable[str | Path] = (),
    ) -> list[str]:
        """``argv`` wrapped in this sandbox: see :func:`sandbox_command`."""
        return sandbox_command(
            self, argv, workdir=workdir, runtime_dir=runtime_dir, limits=limits,
            hidden=hidden, data_dir=data_dir, readonly=readonly, devices=devices,
        )

    def grant(self, *paths: str | Path) -> None:
        """Give the sandbox uid ownership of ``paths`` (recursively).

        Needed when the kernel runs under :data:`SANDBOX_UID`: the work dir
        and runtime dir are created by the grader (root) and must be
        writable by the kernel.  A no-op when no uid switch happens.
        """
        if self.uid is None:
            return
        for path in paths:
            path = Path(path)
            os.chown(path, self.uid, self.uid, follow_symlinks=False)
            if path.is_dir() and not path.is_symlink():
                for root, dirs, files in os.walk(path):
                    for name in dirs + files:
                        os.chown(os.path.join(root, name), self.uid, self.uid, follow_symlinks=False)


def sandbox_mode(description: str | None) -> str:
    """The sandbox named by an :attr:`Isolation.description` (as stored in evidence):
    ``bwrap``, ``unshare`` or ``none``; ``""`` when nothing ran.

    >>> sandbox_mode("bubblewrap: allowlist file system, no network")
    'bwrap'
    """
    text = (description or "").strip()
    for prefix, mode in (("bubblewrap", "bwrap"), ("unshare", "unshare"), ("none", "none")):
        if text.startswith(prefix):
            return mode
    return ""


# --------------------------------------------------------------------------
# Pure command building
# --------------------------------------------------------------------------

def _abs(p: str | Path) -> str:
    return os.path.realpath(os.path.abspath(os.fspath(p)))


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def python_roots(argv0: str | None = None) -> list[str]:
    """Folders a Python needs to run: its prefixes, venv and real install.

    Used to bind back the interpreter when the home that holds it is hidden.
    """
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for exe in filter(None, [sys.executable, argv0]):
        if os.sep in exe:
            for path in (os.path.abspath(exe), os.path.realpath(exe)):
                prefix = os.path.dirname(os.path.dirname(path))
                # <prefix>/bin/python of an installation or venv; else the file alone
                # (a Python in ~/bin must not bring the whole home along)
                looks = os.path.isfile(os.path.join(prefix, "pyvenv.cfg")) or \
                    any(Path(prefix, "lib").glob("python3*"))
                roots.add(prefix if looks and prefix != "/" else path)
    return sorted(_abs(r) for r in roots if r and _abs(r) != "/")


def package_roots() -> list[str]:
    """The folders of the course library and of the grader, which kernels import.

    Bound back like the interpreter: a clone in the home with an editable install
    (``pip install -e .``) would otherwise vanish under the hidden home. Only the
    package folders, never the checkout: it holds the labs' keys and its history.
    """
    import reference

    import grader

    return sorted(_abs(Path(m.__file__).parent) for m in (reference, grader))


def rlimit_prefix(limits: Limits, *, nproc: bool = True) -> list[str]:
    """``prlimit --core=0 --data=N ... --`` (soft and hard limit equal, so
    the notebook cannot raise them again)."""
    opts = limits.rlimits()
    if not nproc:
        opts.pop("nproc", None)
    prlimit = shutil.which("prlimit") or "prlimit"
    return [prlimit] + [f"--{k}={v}:{v}" for k, v in sorted(opts.items())] + ["--"]


def sandbox_command(
    iso: Isolation,
    argv: Sequence[str],
    *,
    workdir: str | Path,
    runtime_dir: str | Path,
    limits: Limits,
    hidden: Iterable[str | Path] = (),
    data_dir: str | Path | None = None,
    readonly: Iterable[str | Path] = (),
    devices: Iterable[str | Path] = (),
) -> list[str]:
    """The full command line running ``argv`` under ``iso``.

    Pure: it looks at the file system only to follow links and to skip paths
    that do not exist.

    ``devices``: device nodes to pass into bwrap's minimal ``/dev`` (the
    GPUs: see :func:`nvidia_devices`); the other modes show the host's
    ``/dev`` anyway.

    bwrap builds the kernel's file system from an allowlist (:func:`allowlist`):
    an empty root, the system folders read-only (:data:`SYSTEM_DIRS`, a few
    entries of ``/etc``), the interpreter and its venv, the course packages,
    ``readonly`` extras and the data read-only, the runtime dir (connection
    file, sockets) and the work dir read-write, private ``/tmp`` and
    ``/dev/shm``. ``hidden`` paths matter only where they lie inside one of
    those (they are masked); everything else is absent anyway.

    Example::

        sandbox_command(resolve("bwrap"), ["python", "-m", "ipykernel_launcher"],
                        workdir="/w/g1", runtime_dir="/tmp/grader-x",
                        limits=Limits(), hidden=["/course/lab01", "/w"],
                        data_dir="/data")
    """
    argv = list(argv)
    workdir, runtime_dir = _abs(workdir), _abs(runtime_dir)
    readonly = [_abs(p) for p in readonly]  # once: it may be a generator
    rl = rlimit_prefix(limits, nproc=iso.nproc_enforced) if iso.rlimits else []
    death, guard = death_with_grader()
    if iso.mode == "none":
        return guard + rl + argv

    # Inside a PID namespace the kernel's parent is pid 1, so ipykernel's
    # parent poller (JPY_PARENT_PID) would think the grader died and quit.
    env_fix = [shutil.which("env") or "env", "-u", "JPY_PARENT_PID"]
    drop = []
    if iso.uid is not None:
        drop = [shutil.which("setpriv") or "setpriv", f"--reuid={iso.uid}", f"--regid={iso.uid}",
                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    elif os.geteuid() == 0:
        # Root that keeps its uid: at least no capabilities (else it could
        # setns() back into the host network).
        drop = [shutil.which("setpriv") or "setpriv", "--inh-caps=-all", "--bounding-set=-all",
                "--no-new-privs", "--"]
    userns = []
    if iso.userns and iso.uid is not None:
        # A user namespace of the sandbox's own: RLIMIT_NPROC set after it
        # is made counts only this sandbox's processes.
        userns = [shutil.which("unshare") or "unshare", "--user", "--map-current-user", "--"]

    if iso.mode == "unshare":
        ns = [shutil.which("unshare") or "unshare", "--net", "--pid", "--fork", "--kill-child",
              "--mount-proc"]
        if os.geteuid() != 0:
            ns[1:1] = ["--user", "--map-current-user"]
        # unshare dies with the grader (``guard``). The kernel is pid 1 of its
        # namespace (SIGTERM does nothing to it), and the uid switch and the user
        # namespace clear unshare's --kill-child: it asks again, last.
        return guard + ns + ["--"] + drop + userns + env_fix + death + rl + argv

    # bwrap: an allowlist. The root is an empty tmpfs; only what a kernel needs is bound
    # into it, each at its own path, so nothing else of the host exists for the kernel.
    cmd = guard + [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid",
           "--unshare-ipc", "--unshare-uts", "--hostname", "sandbox",
           "--dev", "/dev", "--proc", "/proc"]
    for dev in devices:
        cmd.extend(["--dev-bind", os.fspath(dev), os.fspath(dev)])
    if devices and os.path.isdir("/sys"):
        cmd.extend(["--ro-bind", "/sys", "/sys"])  # the CUDA driver reads the PCI tree
    tmp_size = limits.max_file_size or GiB  # tmpfs is memory RLIMIT_DATA does not see
    cmd.extend(["--perms", "1777", "--size", str(tmp_size), "--tmpfs", "/tmp",
                "--perms", "1777", "--size", str(tmp_size), "--tmpfs", "/dev/shm"])
    for spec in allowlist(argv[0] if argv else None, runtime_dir=runtime_dir, workdir=workdir,
                          data_dir=data_dir, readonly=readonly):
        cmd.extend(spec)
    # Belt and braces: a hidden path that lies inside an allowed one (a key copied into
    # the data folder, say) is masked as before.
    allowed = visible_paths(argv[0] if argv else None, runtime_dir=runtime_dir, workdir=workdir,
                            data_dir=data_dir, readonly=readonly)
    for h in sorted({_abs(h) for h in hidden}):
        # Only a hidden path that shows through an allowed folder needs masking.
        if h == "/" or not os.path.exists(h) or \
                not any(_within(h, a) and a != h for a, _ in allowed):
            continue
        if os.path.isdir(h):
            cmd.extend(["--perms", "0755", "--tmpfs", h])
            # the allowed paths inside it (a work dir in the output folder) on top again
            for a, how in allowed:
                if _within(a, h) and a != h:
                    for parent in reversed(Path(a).parents):
                        if _within(str(parent), h) and str(parent) != h:
                            cmd.extend(["--perms", "0755", "--dir", str(parent)])
                    cmd.extend(["--ro-bind" if how == "ro" else "--bind", a, a])
        else:
            cmd.extend(["--ro-bind", "/dev/null", h])
    cmd += ["--unsetenv", "JPY_PARENT_PID", "--chdir", workdir, "--"]
    return cmd + drop + userns + rl + argv


def death_with_grader() -> tuple[list[str], list[str]]:
    """Command prefixes that make a process die with the grader, a SIGKILLed one too.

    ``death`` (``setpriv --pdeathsig KILL``) asks the kernel for SIGKILL when the parent
    goes. ``guard`` does the same for a process the grader starts, and then checks that
    its parent is still this grader: one killed between ``fork`` and that request would
    otherwise leave the process (a sandbox starting up) orphaned for good, since the
    signal is only sent for a death that comes after it. bubblewrap's own
    ``--die-with-parent`` has the same gap. Both are empty where ``setpriv`` is missing
    (not Linux): there the kernel is an ordinary child.
    """
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return [], []
    death = [setpriv, "--pdeathsig", "KILL", "--"]
    sh = shutil.which("sh") or "/bin/sh"
    guard = death + [sh, "-c", '[ "$PPID" = "$0" ] || exit 125; exec "$@"', str(os.getpid())]
    return death, guard


#: The system folders a Python and its libraries need, read-only. The rest of ``/``
#: (homes, ``/run``, ``/var``, ``/srv``, ``/opt``, ``/mnt``, checkouts) does not exist
#: in the sandbox.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: Of ``/etc``, only these: the dynamic linker's cache, time zone, name-service switch and
#: the ``alternatives`` links that ``/usr/bin`` points through. No passwd, no secrets.
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
               "nsswitch.conf", "host.conf", "hosts", "alternatives", "os-release", "mime.types",
               "fonts", "ssl")


def symlink_chain(path: str | Path, _depth: int = 0) -> list[tuple[str, str]]:
    """``(target, link)`` for every symbolic link met while resolving ``path``.

    Recreated in the sandbox (``--symlink``), they make ``path`` resolve there as it does
    here: a checkout reached through a link, a venv whose ``python`` points elsewhere.
    """
    out: list[tuple[str, str]] = []
    if _depth > 8:
        return out
    cur = "/"
    for part in Path(os.path.abspath(os.fspath(path))).parts[1:]:
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            out.append((target, nxt))
            out.extend(symlink_chain(os.path.join(cur, target), _depth + 1))
            nxt = os.path.realpath(nxt)
        cur = nxt
    return out


def visible_paths(argv0: str | None, *, runtime_dir: str | Path, workdir: str | Path,
                  data_dir: str | Path | None = None,
                  readonly: Iterable[str | Path] = ()) -> list[tuple[str, str]]:
    """What a bwrap kernel sees besides the system folders: ``(real path, how)`` with
    ``how`` one of ``ro`` or ``rw``. Pure but for ``realpath``.

    The interpreter and its virtual environment, the course packages (their folders
    alone, never the checkout), ``readonly`` extras (the data cache), the data folder
    (read-only), the runtime dir (kernel sockets) and the work dir (read-write).
    """
    seen: dict[str, str] = {}
    for root in python_roots(argv0) + package_roots() + [_abs(p) for p in readonly]:
        # "/" (a Python in /bin: its prefix) would be the whole host again; the system
        # folders already hold such a Python.
        if root != "/" and os.path.exists(root) and not any(_within(root, s) for s in SYSTEM_DIRS):
            seen.setdefault(root, "ro")
    if data_dir is not None:
        seen[_abs(data_dir)] = "ro"
    seen[_abs(runtime_dir)] = "rw"
    seen[_abs(workdir)] = "rw"
    # Outer folders first: a bind inside another must come after it.
    return sorted(seen.items(), key=lambda kv: (kv[0].count("/"), kv[0]))


def allowlist(argv0: str | None, *, runtime_dir: str | Path, workdir: str | Path,
              data_dir: str | Path | None = None,
              readonly: Iterable[str | Path] = ()) -> list[list[str]]:
    """bwrap options, one list each, that build the sandbox's whole file system."""
    specs: list[list[str]] = [["--perms", "0755", "--dir", "/etc"]]
    made = {"/", "/etc"}
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            specs.append(["--symlink", os.readlink(d), d])
        elif os.path.isdir(d):
            specs.append(["--ro-bind", d, d])
    for name in ETC_ENTRIES:
        p = os.path.join("/etc", name)
        if os.path.islink(p):
            specs.append(["--symlink", os.readlink(p), p])
        elif os.path.exists(p):
            specs.append(["--ro-bind", p, p])
    links: dict[str, str] = {}
    for real, how in visible_paths(argv0, runtime_dir=runtime_dir, workdir=workdir,
                                   data_dir=data_dir, readonly=readonly):
        # bwrap makes missing parents mode 0700, which a kernel under another uid
        # cannot pass: make them 0755 first.
        for parent in reversed(Path(real).parents):
            a = str(parent)
            if a not in made and not any(_within(a, s) for s in SYSTEM_DIRS):
                specs.append(["--perms", "0755", "--dir", a])
                made.add(a)
        specs.append(["--ro-bind" if how == "ro" else "--bind", real, real])
    # The paths as the grader names them, when links lead there (argv[0], the venv).
    unresolved = [p for p in [argv0, sys.executable, sys.prefix, *[os.fspath(r) for r in readonly]]
                  if p and os.sep in p]
    bound = [real for real, _ in visible_paths(argv0, runtime_dir=runtime_dir, workdir=workdir,
                                               data_dir=data_dir, readonly=readonly)]
    for p in unresolved:
        for target, link in symlink_chain(p):
            if not any(_within(link, b) for b in [*SYSTEM_DIRS, *bound]) and link not in links:
                links[link] = target
    for link, target in links.items():
        specs.append(["--symlink", target, link])
    return specs


# --------------------------------------------------------------------------
# The work dir's size (imperative: mounts)
# --------------------------------------------------------------------------

def limit_disk(path: str | Path, size: int) -> str | None:
    """Bound everything written under the empty folder ``path`` to ``size`` bytes in all,
    by mounting a tmpfs of that size on it. ``None`` when done, else why not.

    ``RLIMIT_FSIZE`` bounds one file only; this bounds the whole work dir (many files,
    ``fallocate`` included). It needs root (``CAP_SYS_ADMIN``); as another user the work
    dir keeps only the per-file limit, and the kernel's description says so. The tmpfs
    lives in memory, outside the kernel's ``RLIMIT_DATA``: count ``disk`` with it.
    Undo with :func:`release_disk`.
    """
    if os.geteuid() != 0:
        return "needs root"
    mount = shutil.which("mount")
    if mount is None:
        return "mount not found"
    try:
        proc = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={int(size)},mode=0755,nosuid,nodev",
                               "grader-work", os.fspath(path)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def release_disk(path: str | Path) -> None:
    """Unmount what :func:`limit_disk` mounted on ``path`` (lazily: a process that still
    holds a file there cannot keep the mount busy). A no-op when nothing is mounted."""
    path = os.fspath(path)
    umount = shutil.which("umount")
    if umount and os.path.ismount(path):
        subprocess.run([umount, "-l", path], capture_output=True, timeout=30)


def release_disks_below(root: str | Path) -> None:
    """Unmount every work-dir tmpfs left under ``root`` (a killed run's), deepest first."""
    root = _abs(root)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    # mountinfo escapes spaces and the like as octal (\040)
    points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), ln.split()[4])
              for ln in lines if len(ln.split()) > 4]
    for point in sorted((p for p in points if _within(p, root) and p != root),
                        key=lambda p: -p.count("/")):
        release_disk(point)


# --------------------------------------------------------------------------
# GPUs
# --------------------------------------------------------------------------

def nvidia_devices(dev: str | Path = "/dev") -> list[str]:
    """The NVIDIA device nodes under ``dev`` (``nvidiactl``, ``nvidia-uvm``,
    ``nvidia-uvm-tools``, ``nvidia0``..``nvidiaN``, the ``nvidia-caps``
    folder): what a CUDA kernel needs inside bwrap's minimal ``/dev``."""
    try:
        names = os.listdir(dev)
    except OSError:
        return []
    return sorted(os.path.join(os.fspath(dev), n) for n in names if n.startswith("nvidia"))


def parse_visible_devices(value: str) -> list[str]:
    """The GPUs a ``CUDA_VISIBLE_DEVICES`` value names, in order: indices or
    UUIDs.  As CUDA does, the list stops at the first ``-1``."""
    gpus = []
    for item in value.split(","):
        item = item.strip()
        if not item or item == "-1":
            break
        gpus.append(item)
    return gpus


def count_smi_gpus(text: str) -> int:
    """The GPUs ``nvidia-smi -L`` lists (its MIG lines, indented, are not GPUs)."""
    return sum(1 for line in text.splitlines() if line.startswith("GPU "))


def visible_gpus(environ: Mapping[str, str] | None = None, *, smi: str | None = "nvidia-smi",
                 proc: str | Path = "/proc/driver/nvidia/gpus") -> list[str]:
    """The CUDA GPUs the grader may hand out, without importing torch.

    An existing ``CUDA_VISIBLE_DEVICES`` is honoured (``""``: none);
    otherwise ``nvidia-smi -L`` counts them, or else the driver's
    ``/proc`` folder.  Returns their ``CUDA_VISIBLE_DEVICES`` names
    (``["0", "1"]``); ``[]`` without GPU.
    """
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return parse_visible_devices(environ["CUDA_VISIBLE_DEVICES"])
    n = 0
    smi = shutil.which(smi) if smi else None
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
            n = count_smi_gpus(out.stdout) if out.returncode == 0 else 0
        except (OSError, subprocess.TimeoutExpired):
            n = 0
    if not n:
        try:
            n = len(os.listdir(proc))
        except OSError:
            n = 0
    return [str(i) for i in range(n)]


def gpu_for_worker(worker: int, gpus: Sequence[str]) -> str | None:
    """The GPU of worker ``worker`` (0, 1, ...): round robin over ``gpus``;
    ``None`` without GPU."""
    return gpus[worker % len(gpus)] if gpus else None


# --------------------------------------------------------------------------
# Detection (imperative: runs a probe once per mode and caches it)
# --------------------------------------------------------------------------

_PROBE = "import os, sys; print(os.getuid()); print(sys.version)"


def _is_root() -> bool:
    """Root on POSIX; never on Windows, which has no ``os.geteuid`` (``grader check``)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _candidates(mode: Mode, uid: int) -> list[Isolation]:
    """Variants of ``mode`` to try, strongest first."""
    root = _is_root()
    if mode == "none":
        # No namespace of its own: RLIMIT_NPROC would count every process of
        # the user (a desktop session has hundreds), or nothing for root.
        return [Isolation("none")]
    if not root:
        # bwrap and ``unshare --user`` make a user namespace by themselves.
        return [Isolation(mode, nproc_enforced=True, userns=True)]
    if mode == "bwrap":
        return [
            Isolation("bwrap", uid=uid, userns=True, nproc_enforced=True),
            # No unprivileged user namespaces: still drop to the uid, but the
            # process count would be shared by every sandbox of that uid.
            Isolation("bwrap", uid=uid, notes=("no user namespace: process cap off",)),
        ]
    # unshare cannot hide the home: the uid switch works only if the Python
    # is reachable by that uid (the probe checks it is the same Python).
    return [
        Isolation("unshare", uid=uid, userns=True, nproc_enforced=True),
        Isolation("unshare", notes=("runs as root without capabilities",)),
    ]


def _probe(iso: Isolation) -> str | None:
    """Run a tiny Python under ``iso``; ``None`` if fine, else why not."""
    tools = {"bwrap": ["bwrap"], "unshare": ["unshare"], "none": []}[iso.mode]
    if iso.uid is not None or (_is_root() and iso.mode != "none"):
        tools.append("setpriv")
    if iso.rlimits:
        tools.append("prlimit")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return "not installed: " + ", ".join(missing)
    with tempfile.TemporaryDirectory(prefix="grader-probe-") as tmp:
        os.chmod(tmp, 0o755)
        work = Path(tmp, "w")
        work.mkdir()
        iso.grant(work)
        argv = sandbox_command(iso, [sys.executable, "-c", _PROBE], workdir=work,
                               runtime_dir=work, limits=Limits())
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                       "LANG": "C.UTF-8"}, cwd=work)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    want = [str(iso.uid if iso.uid is not None else os.getuid()), sys.version]
    got = proc.stdout.strip().split("\n", 1)
    if got != want:
        # e.g. a Python under a home the uid cannot enter, which then loads
        # another libpython: refuse rather than run a different interpreter
        return f"probe printed {got!r}, expected {want!r}"
    return None


@functools.lru_cache(maxsize=None)
def _resolve_mode(mode: Mode, uid: int) -> tuple[Isolation | None, str]:
    why = ""
    for iso in _candidates(mode, uid):
        why = _probe(iso) or ""
        if not why:
            return iso, ""
        log.debug("sandbox %s variant %s failed: %s", mode, iso, why)
    return None, why


def fail_closed_message(why: str) -> str:
    """Why grading stops when bubblewrap does not work, and the three ways out."""
    return (f"bubblewrap cannot build the sandbox here ({why}), so the answer key and other "
            "groups' files could not be hidden from student code: nothing was run. Fix: install "
            "bubblewrap (`apt-get install bubblewrap`; `make` does it as root), or allow "
            "unprivileged user namespaces (`sysctl -w kernel.unprivileged_userns_clone=1`, or on "
            "Ubuntu `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`), or accept the "
            "risk by name: `--sandbox unshare` (no network, nothing hidden) or `--sandbox none`.")


def resolve(mode: SandboxChoice = "auto", *, uid: int = SANDBOX_UID,
            fail_closed: bool = True) -> Isolation:
    """The sandbox to use, checked by actually running Python in it once.

    ``auto`` is bubblewrap, and fails closed: when bubblewrap does not work it raises
    :class:`SandboxUnavailable` with the cause and the fix, never a weaker sandbox. A
    weaker one runs only when named (``unshare``, ``none``). ``fail_closed=False`` is for
    a student's own notebook on their own machine (``grader check``): ``auto`` then falls
    back to unshare, then none, with ``degraded=True`` and a warning. An explicit mode
    that does not work raises :class:`SandboxUnavailable`. Results are cached per process.

    Example::

        iso = resolve("auto")          # bubblewrap, or SandboxUnavailable
        print(iso.description)
    """
    if mode not in SANDBOX_CHOICES:
        raise ValueError(f"sandbox must be one of {', '.join(SANDBOX_CHOICES)}, not {mode!r}")
    if mode != "auto":
        iso, why = _resolve_mode(mode, uid)
        if iso is None:
            raise SandboxUnavailable(f"sandbox {mode!r} does not work here: {why}")
        return replace(iso, requested=mode)
    iso, why = _resolve_mode("bwrap", uid)
    if iso is not None:
        return replace(iso, requested="auto")
    if fail_closed:
        raise SandboxUnavailable(fail_closed_message(why))
    failures = [f"bwrap: {why}"]
    iso, why = _resolve_mode("unshare", uid)
    if iso is not None:
        log.warning("bubblewrap unavailable (%s); falling back to unshare: %s",
                    failures[-1], iso.description)
        return replace(iso, requested="auto", degraded=True)
    failures.append(f"unshare: {why}")
    iso, why = _resolve_mode("none", uid)
    if iso is None:  # even prlimit is missing: run with no limits at all
        iso = Isolation("none", rlimits=False, notes=(f"no resource limits ({why})",))
    log.warning("NO SANDBOX: student code runs unisolated (%s). %s", "; ".join(failures),
                iso.description)
    return replace(iso, requested="auto", degraded=True)
