"""Run one student notebook in a fresh, sandboxed Jupyter kernel.

The execution layer of the grader: it reads a notebook, starts a kernel
inside the sandbox of :mod:`grader.sandbox`, runs every cell (going on after
a failing cell), enforces the per-cell and per-notebook time limits, keeps
the outputs within a size budget, optionally runs an *epilogue* (grader code
that exports answers and models into the work dir), and always kills the
kernel at the end.  It never scores anything.

Example::

    from grader.execute import execute_notebook
    from grader.sandbox import Limits, resolve

    result = execute_notebook("group1_lab_01.ipynb", workdir="work/group1",
                              limits=Limits(cell_timeout=300), isolation=resolve("auto"),
                              data_dir="../shared/data", hidden=["assignments/lab01"])
    print(result.status, [e.ename for e in result.errors])

A kernel can also be started ahead with :func:`start_kernel` and handed to
``execute_notebook(nb, kernel=...)`` later, so that its start-up (Python,
ipykernel, the sandbox) overlaps other work, as ``grader grade`` does.

The kernel talks to the grader over Unix sockets (``transport="ipc"``) in a
private runtime folder bound into the sandbox: with no network namespace, the
usual TCP ports on 127.0.0.1 are unreachable from inside.

Functional core (notebook loading, output budget, error extraction, kernel
environment) and imperative shell (:class:`_Run`) are kept apart.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from traitlets import Any as AnyTrait

from .sandbox import Isolation, Limits, format_size, resolve

log = logging.getLogger(__name__)
# nbclient logs a student's timeout or crash at ERROR level; the result
# records them, so keep its messages out of the grader's console.
_nbclient_log = log.getChild("nbclient")
_nbclient_log.setLevel(logging.CRITICAL)

Status = Literal["ok", "errors", "timeout", "dead", "invalid"]

TRUNCATION_NOTE = "[output truncated by grader"
MAX_NOTEBOOK_BYTES = 100 * 1024 * 1024  # a bigger upload is not a lab notebook
TRACEBACK_LINES = 25
EPILOGUE_OUTPUT_CAP = 64 * 1024
#: Seconds the grader's own code (the snapshot after a cell, the epilogue) may run in the
#: kernel, beyond the notebook's time limit at most once: a snapshot that takes longer
#: (a group's hook, a huge model) stops the notebook with status ``timeout``.
COLLECT_ALLOWANCE = 15.0

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]")


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------

@dataclass
class CellError:
    """A cell that failed: the exception, as the kernel reported it.

    ``cell_index`` is the position in ``notebook.cells`` (``None`` when the
    kernel failed before any cell), ``traceback`` the last lines of the
    traceback without colour codes.
    """

    cell_index: int | None
    execution_count: int | None
    ename: str
    evalue: str
    traceback: str = ""

    def __str__(self) -> str:
        where = "kernel" if self.cell_index is None else f"cell {self.cell_index}"
        return f"{where}: {self.ename}: {self.evalue}"


@dataclass
class ExecutionResult:
    """What running one notebook gave.

    ``status``: ``ok`` (no cell failed), ``errors`` (some cells raised, all
    ran), ``timeout`` (a cell or the whole notebook ran out of time; the
    kernel was killed there), ``dead`` (the kernel died: ``os._exit``,
    segfault, out of memory, failed start), ``invalid`` (the file is not a
    readable notebook; ``message`` says why).  ``cell_seconds[i]`` is the
    run time of cell ``i`` (``None``: not run).  ``stopped_cell``: the cell
    that stopped a ``timeout`` or ``dead`` run (``None``: the kernel never
    started, or the run went to its end).  ``snapshot_cell``: the last cell
    after which the ``snapshot`` code ran to its end (``None``: never);
    ``snapshot_seconds`` the time all snapshots took.
    """

    notebook: NotebookNode
    status: Status
    errors: list[CellError] = field(default_factory=list)
    cell_seconds: list[float | None] = field(default_factory=list)
    seconds: float = 0.0
    startup_seconds: float | None = None
    isolation: str = ""
    epilogue_error: str | None = None
    epilogue_output: str = ""
    message: str | None = None
    truncated_cells: list[int] = field(default_factory=list)
    stopped_cell: int | None = None
    snapshot_cell: int | None = None
    snapshot_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self, *, include_notebook: bool = True) -> dict[str, Any]:
        """A JSON-safe dict (the notebook as plain nbformat JSON)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "notebook"}
        out["errors"] = [asdict(e) for e in self.errors]
        out["cell_seconds"] = list(self.cell_seconds)
        out["truncated_cells"] = list(self.truncated_cells)
        if include_notebook:
            out["notebook"] = json.loads(json.dumps(self.notebook))
        return out


# --------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------

def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def traceback_tail(lines: Iterable[str], n: int = TRACEBACK_LINES) -> str:
    """The last ``n`` lines of an IPython traceback, without colour codes."""
    flat = strip_ansi("\n".join(lines)).splitlines()
    return "\n".join(flat[-n:])


def load_notebook(nb: NotebookNode | Mapping | str | os.PathLike) -> tuple[NotebookNode | None, str | None]:
    """Read (a copy of) a notebook: ``(notebook, None)`` or ``(None, why not)``.

    Never raises for bad input.  Accepts a path, a NotebookNode or a dict;
    older formats are converted to v4; a byte-order mark is tolerated.
    """
    try:
        if isinstance(nb, Mapping):
            text = json.dumps(nb)
            name = "notebook"
        else:
            path = Path(nb)
            name = path.name
            if path.stat().st_size > MAX_NOTEBOOK_BYTES:
                return None, f"{name}: larger than {MAX_NOTEBOOK_BYTES // 2**20} MiB"
            text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except (OSError, TypeError, ValueError) as exc:
        return None, f"cannot read notebook: {exc}"
    try:
        node = nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat raises many types for junk input
        # Strict schema checks reject notebooks some editors write (a cell
        # without metadata, say): run any v4-shaped JSON we can repair.
        node = _repair_v4(text)
        if node is None:
            return None, f"{name}: not a Jupyter notebook ({type(exc).__name__}: {exc})"
    cells = node.get("cells")
    if not isinstance(cells, list):
        return None, f"{name}: not a Jupyter notebook (no list of cells)"
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or not isinstance(cell.get("source", ""), str):
            return None, f"{name}: cell {i} is malformed"
        cell.setdefault("metadata", NotebookNode())
        cell.setdefault("source", "")
        cell.setdefault("cell_type", "raw")
    return node, None


def _repair_v4(text: str) -> NotebookNode | None:
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("nbformat") != 4 or not isinstance(raw.get("cells"), list):
        return None
    raw.setdefault("metadata", {})
    raw.setdefault("nbformat_minor", 4)
    for cell in raw["cells"]:
        if not isinstance(cell, dict):
            return None
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(s, str) for s in source):
            cell["source"] = "".join(source)
        if not isinstance(cell.get("metadata"), dict):
            cell["metadata"] = {}
    return nbformat.from_dict(raw)


def clear_outputs(nb: NotebookNode) -> NotebookNode:
    """Drop the outputs the student uploaded, so nothing in the executed
    notebook (e.g. a forged accuracy in a cell never reached) is theirs."""
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
            cell["metadata"].pop("execution", None)
    return nb


def output_size(out: Mapping) -> int:
    """Roughly the bytes an output takes in the stored notebook."""
    kind = out.get("output_type")
    if kind == "stream":
        return len(str(out.get("text", "")).encode()) + 64
    if kind == "error":
        return sum(len(str(x).encode()) for x in [out.get("ename", ""), out.get("evalue", "")]
                   + list(out.get("traceback", []))) + 64
    size = 64
    for value in dict(out.get("data", {})).values():
        size += len(value.encode()) if isinstance(value, str) else len(json.dumps(value))
    return size


#: Windows variables a Python process needs (SYSTEMROOT: sockets and random numbers).
_WINDOWS_VARS = ("SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "PROGRAMDATA", "APPDATA",
                 "LOCALAPPDATA")

#: zmq's ipc transport (Unix sockets, no TCP port open) is POSIX only.
KERNEL_TRANSPORT = "ipc" if os.name == "posix" else "tcp"


def kernel_env(
    *,
    workdir: str | Path,
    runtime_dir: str | Path,
    data_dir: str | Path | None = None,
    threads: int = 1,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The kernel's whole environment: built from scratch, so none of the
    grader's variables (tokens, passwords) reach student code.

    Caches and config go to the runtime dir, not the work dir, and die with
    the run: nothing one group writes there can affect the next group.
    """
    rt = Path(runtime_dir)
    n = str(max(1, int(threads)))
    env = {
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin",
                                 "/bin"]),
        "HOME": str(workdir),
        "USER": "student",
        "LOGNAME": "student",
        "LANG": "C.UTF-8",
        "TMPDIR": str(rt / "tmp"),
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "NUMEXPR_NUM_THREADS": n,
        "VECLIB_MAXIMUM_THREADS": n,
        # Inline backend, not Agg: figures end up in the notebook's outputs
        # (needs no display either).  ipykernel would pick it too, unless set.
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "MPLCONFIGDIR": str(rt / "mpl"),
        "IPYTHONDIR": str(rt / "ipython"),
        "XDG_CACHE_HOME": str(rt / "cache"),
        "XDG_CONFIG_HOME": str(rt / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # silences debugpy's frozen-modules warning
        # Tells the notebook it runs under the grader (its self-check cell then skips,
        # rather than run the notebook again inside itself).
        "GRADER_KERNEL": "1",
    }
    if os.name == "nt":  # `grader check` on Windows: Python cannot start without these
        env.update({k: os.environ[k] for k in _WINDOWS_VARS if k in os.environ})
        env.update(USERPROFILE=str(workdir), TEMP=env["TMPDIR"], TMP=env["TMPDIR"],
                   PATH=os.pathsep.join([os.path.dirname(sys.executable),
                                         os.environ.get("PATH", "")]))
    if data_dir is not None:
        env["GRADER_DATA"] = str(data_dir)
    env.update(extra or {})
    return env


def collapse_carriage_returns(text: str) -> str:
    """What a terminal shows of progress bars: per line, the text after the
    last ``\\r``, with backspaces applied.  Linear time (nbclient's regexes
    take minutes on one long line)."""
    if "\r" not in text and "\b" not in text:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if "\r" in line:
            line = line.rstrip("\r").rsplit("\r", 1)[-1]
        if "\b" in line:
            kept: list[str] = []
            for ch in line:
                if ch == "\b":
                    if kept:
                        kept.pop()
                else:
                    kept.append(ch)
            line = "".join(kept)
        lines[i] = line
    return "\n".join(lines)


def coalesce_streams(outputs: list) -> list:
    """Merge runs of consecutive stream outputs of the same name into one,
    keeping their order relative to figures and results."""
    merged: list = []
    run: list[str] = []

    def flush() -> None:
        if run:
            merged[-1]["text"] = collapse_carriage_returns("".join(run))
            run.clear()

    for out in outputs:
        if out.get("output_type") == "stream":
            if run and merged[-1].get("name") == out.get("name"):
                run.append(out.get("text", ""))
                continue
            flush()
            merged.append(out)
            run.append(out.get("text", ""))
        else:
            flush()
            merged.append(out)
    flush()
    return merged


def _stream(name: str, text: str) -> NotebookNode:
    # not nbformat.v4.new_output: it validates, which is slow on big texts
    return NotebookNode(output_type="stream", name=name, text=text)


@dataclass
class _CellBudget:
    used: int = 0
    dropped: int = 0
    dropped_outputs: int = 0
    tail: str = ""
    truncated: bool = False


class OutputBudget:
    """Keeps the outputs of a notebook under ``total`` bytes and each cell's
    under ``per_cell``.

    Past its share, a cell keeps the start of its text output, then a note
    ``[output truncated by grader ...]`` and the last ``tail`` characters
    (where a training loop prints its final accuracy).  Errors are always
    kept, with their traceback shortened.  ``clear_output()`` frees a cell's
    share (live plots that redraw every epoch).

    Example::

        b = OutputBudget(total=1000, per_cell=500)
        kept = b.admit(0, outs, out)   # ``out`` is in ``outs`` iff kept
        b.finish(0, outs)              # appends the note if needed
    """

    def __init__(self, total: int, per_cell: int, tail: int = 2048):
        self.total, self.per_cell, self.tail = int(total), int(per_cell), int(tail)
        self.reserve = tail + 256  # room always left for the note and the tail
        self.done = 0
        self.cells: dict[int, _CellBudget] = {}

    def _cell(self, index: int) -> _CellBudget:
        return self.cells.setdefault(index, _CellBudget())

    def room(self, index: int) -> int:
        c = self._cell(index)
        return max(0, min(self.per_cell - c.used, self.total - self.done - c.used) - self.reserve)

    def admit(self, index: int, outs: list, out: NotebookNode) -> NotebookNode | None:
        c = self._cell(index)
        if out.get("output_type") == "error":
            tb = list(out.get("traceback", []))
            if len(tb) > 2 * TRACEBACK_LINES:
                out["traceback"] = tb[:5] + ["..."] + tb[-TRACEBACK_LINES:]
            out["traceback"] = [line[:4000] for line in out["traceback"]]
            c.used += output_size(out)
            return out
        size = output_size(out)
        if not c.truncated and size <= self.room(index):
            c.used += size
            return out
        if outs and outs[-1] is out:
            outs.pop()
        c.truncated = True
        if out.get("output_type") == "stream":
            text = out.get("text", "")
            keep = ""
            room = self.room(index)
            if room > 64 and not c.tail and not c.dropped:
                keep = text[: room - 64]
                # a byte budget on characters: trim until the bytes fit
                while len(keep.encode()) > room - 64:
                    keep = keep[: len(keep) // 2]
                if keep:
                    outs.append(_stream(out.get("name", "stdout"), keep))
                    c.used += output_size(outs[-1])
            rest = text[len(keep):]
            c.dropped += len(rest.encode())
            c.tail = (c.tail + rest)[-self.tail:]
        else:
            c.dropped += size
            c.dropped_outputs += 1
        return None

    def recount(self, index: int, outs: list) -> None:
        """After ``clear_output``: the cell's share is what is left."""
        if not outs:
            self.cells[index] = _CellBudget()
        else:
            self._cell(index).used = sum(output_size(o) for o in outs)

    def finish(self, index: int, outs: list) -> bool:
        """Close the cell's account; returns whether it was truncated."""
        c = self.cells.pop(index, _CellBudget())
        if c.truncated:
            what = f"{format_size(c.dropped)} of output"
            if c.dropped_outputs:
                what += f" and {c.dropped_outputs} display(s)"
            note = f"\n{TRUNCATION_NOTE}: {what} not kept"
            tail = c.tail
            if tail:
                # start the tail at a line boundary when there is one
                cut = tail.find("\n")
                tail = tail[cut + 1:] if 0 <= cut < len(tail) - 1 else tail
                note += "; the last lines were:]\n" + tail
            else:
                note += "]\n"
            outs.append(_stream("stdout", note))
            c.used += output_size(outs[-1])
        self.done += c.used
        return c.truncated

    def discard(self, index: int) -> None:
        self.cells.pop(index, None)


def _exit_description(code: int | None, namespaced: bool) -> str:
    if code is None:
        return "exit status unknown"
    sig = -code if code < 0 else (code - 128 if namespaced and code > 128 else None)
    if sig:
        try:
            return f"killed by {signal.Signals(sig).name}" + (
                " (out of memory?)" if sig == getattr(signal, "SIGKILL", 9) else "")
        except ValueError:
            pass
    return f"exit status {code}"


def _error_output(ename: str, evalue: str, lines: list[str]) -> NotebookNode:
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue,
                                  traceback=[f"{ename}: {evalue}"] + lines)


# --------------------------------------------------------------------------
# Jupyter plumbing
# --------------------------------------------------------------------------

def without_debugger(argv: Iterable[str]) -> list[str]:
    """ipykernel's command with :mod:`grader.kernel_launcher` in place of
    ``ipykernel_launcher`` (the same kernel, without debugpy), when it runs this
    interpreter (jupyter_client puts ``sys.executable`` for a kernelspec's ``python``);
    a kernelspec of another Python, which may lack the grader, or another kernel: as it is.

    >>> import sys
    >>> without_debugger([sys.executable, "-m", "ipykernel_launcher", "-f", "k.json"])[1:]
    ['-m', 'grader.kernel_launcher', '-f', 'k.json']
    """
    argv = list(argv)
    if not argv or os.path.abspath(argv[0]) != os.path.abspath(sys.executable):
        return argv
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "ipykernel_launcher":
            argv[i + 1] = "grader.kernel_launcher"
    return argv


class SandboxedKernelManager(AsyncKernelManager):
    """An :class:`AsyncKernelManager` whose kernel command runs in a sandbox.

    ``wrap`` turns the kernel's argv into the sandboxed one; ``owner`` (a
    uid) receives the connection file, which jupyter_client writes 0600 and
    a kernel under another uid could not read.

    Example::

        km = SandboxedKernelManager(kernel_name="python3", transport="ipc",
                                    wrap=lambda argv: ["prlimit", "--nproc=64", "--"] + argv)
    """

    wrap = AnyTrait(None, allow_none=True)
    owner = AnyTrait(None, allow_none=True)

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = without_debugger(super().format_kernel_cmd(extra_arguments))
        return list(self.wrap(cmd)) if self.wrap is not None else cmd

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        if self.owner is not None:
            os.chown(self.connection_file, self.owner, self.owner)


class GraderClient(NotebookClient):
    """A :class:`NotebookClient` that keeps outputs within an
    :class:`OutputBudget` and remembers each cell's execute reply."""

    def __init__(self, nb: NotebookNode, km: AsyncKernelManager, *, budget: OutputBudget,
                 **kw: Any):
        super().__init__(nb, km=km, **kw)
        self.budget = budget
        self.replies: dict[int, dict] = {}
        self.on_cell_executed = self._remember_reply

    def _remember_reply(self, cell: NotebookNode, cell_index: int, execute_reply: dict) -> None:
        self.replies[cell_index] = execute_reply

    def output(self, outs: list, msg: dict, display_id: str | None, cell_index: int):
        pending_clear = self.clear_before_next_output
        n_before = len(outs)
        out = super().output(outs, msg, display_id, cell_index)
        if pending_clear and not self.clear_before_next_output:
            self.budget.recount(cell_index, outs[:-1] if out is not None else outs)
        if out is None:
            return None
        kept = self.budget.admit(cell_index, outs, out)
        if kept is None and display_id:
            # the display-id map points at the dropped output's slot
            slots = self._display_id_map.get(display_id, {}).get(cell_index, [])
            if len(outs) <= n_before and slots and slots[-1] >= len(outs):
                slots.pop()
        return kept

    def clear_output(self, outs: list, msg: dict, cell_index: int) -> None:
        super().clear_output(outs, msg, cell_index)
        self.budget.recount(cell_index, outs)


# --------------------------------------------------------------------------
# Imperative shell
# --------------------------------------------------------------------------

@dataclass(eq=False)
class Kernel:
    """A sandboxed kernel started by :func:`start_kernel`, waiting for its notebook.

    Its sandbox, work dir, limits and environment were fixed at launch (the
    work dir is bound into the sandbox then).  ``execute_notebook(nb,
    kernel=k)`` runs one notebook on it and shuts it down; a kernel never
    used must get :meth:`shutdown`, which kills its process group and removes
    its runtime dir (idempotent).  ``error``: why it could not be launched
    (the notebook run on it then gets ``dead``).  One use only.

    The sandbox dies with the *thread* that started it (bwrap's
    ``--die-with-parent`` is ``PR_SET_PDEATHSIG``): start a kernel in the
    thread that will run its notebook.
    """

    workdir: Path
    runtime_dir: Path
    limits: Limits
    isolation: Isolation
    description: str = ""
    km: SandboxedKernelManager | None = None
    error: str | None = None
    used: bool = False

    @property
    def log_path(self) -> Path:
        return self.runtime_dir / "kernel.log"

    async def shutdown_async(self) -> None:
        """Kill the kernel (no graceful shutdown: it costs seconds) and free
        the sockets; the sandbox's PID namespace takes its children along."""
        km, self.km = self.km, None
        if km is not None:
            try:
                await km.shutdown_kernel(now=True)
            except Exception:
                log.debug("shutdown_kernel failed", exc_info=True)
                try:
                    await km.cleanup_resources()
                except Exception:  # pragma: no cover - best effort
                    log.debug("cleanup_resources failed", exc_info=True)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

    def shutdown(self) -> None:
        """:meth:`shutdown_async` from synchronous code (no event loop running)."""
        asyncio.run(self.shutdown_async())


async def start_kernel_async(
    *,
    workdir: str | os.PathLike,
    limits: Limits | None = None,
    isolation: Isolation | None = None,
    data_dir: str | os.PathLike | None = None,
    hidden: Iterable[str | os.PathLike] = (),
    readonly: Iterable[str | os.PathLike] = (),
    env: Mapping[str, str] | None = None,
    kernel_name: str = "python3",
    threads: int = 1,
    devices: Iterable[str | os.PathLike] = (),
) -> Kernel:
    """Launch a sandboxed kernel for a notebook to come, without waiting for it.

    Returns at once (the sandboxed Python boots in its own process, while the
    caller does other work); :func:`execute_notebook` with ``kernel=`` waits
    for it to be ready, runs the notebook and shuts it down.  The arguments
    are :func:`execute_notebook_async`'s launch arguments; ``workdir`` should be
    fresh and empty, since the kernel sees it from now on.  ``devices``: device
    nodes to pass into the sandbox (the GPUs, :func:`grader.sandbox.nvidia_devices`).
    From synchronous code use :func:`start_kernel`.

    Example::

        k = await start_kernel_async(workdir=tmp / "g2", limits=Limits(cell_timeout=60),
                                     isolation=resolve("bwrap"), hidden=[key_dir])
        ...                                              # run the previous notebook meanwhile
        r = await execute_notebook_async(nb, kernel=k)   # k is shut down afterwards
    """
    limits = limits or Limits()
    isolation = isolation or resolve("auto")
    hidden = [os.fspath(h) for h in hidden]
    readonly = [os.fspath(p) for p in readonly]
    devices = [os.fspath(d) for d in devices]
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # Short path under /tmp: the kernel's Unix sockets live here.
    rt = Path(tempfile.mkdtemp(prefix="grader-"))
    kernel = Kernel(workdir, rt, limits, isolation)
    try:
        os.chmod(rt, 0o755)
        for sub in ("tmp", "mpl", "ipython", "cache", "config"):
            (rt / sub).mkdir()
        isolation.grant(workdir, rt)
        kenv = kernel_env(workdir=workdir, runtime_dir=rt, data_dir=data_dir, threads=threads,
                          extra=env)
        kernel.description = (isolation.describe(limits, hidden, devices)
                              + f"; grader's collection: up to {COLLECT_ALLOWANCE:g} s after a cell")
        if kenv.get("CUDA_VISIBLE_DEVICES"):
            kernel.description += f"; CUDA_VISIBLE_DEVICES={kenv['CUDA_VISIBLE_DEVICES']}"

        def wrap(argv: list[str]) -> list[str]:
            return isolation.command(argv, workdir=workdir, runtime_dir=rt, limits=limits,
                                     hidden=hidden, data_dir=data_dir, readonly=readonly,
                                     devices=devices)

        km = SandboxedKernelManager(
            kernel_name=kernel_name, transport=KERNEL_TRANSPORT,
            connection_file=str(rt / "k.json"),  # short: Unix socket paths max 107 bytes
            wrap=wrap, owner=isolation.uid, log=_nbclient_log,
        )
        km.kernel_spec  # an unknown kernel_name is the grader's bug: raise NoSuchKernel now
        kernel.km = km
        try:
            with open(kernel.log_path, "wb") as kernel_log:
                # The kernel's own stdout/stderr go to a file, not to the
                # grader's terminal (C libraries write there directly).
                await km.start_kernel(
                    cwd=str(workdir), env=kenv, stdout=kernel_log, stderr=kernel_log,
                    extra_arguments=["--HistoryManager.hist_file=:memory:"],
                )
        except Exception as exc:  # sandbox refused, bwrap missing, ...
            kernel.error = str(exc)
            log.debug("kernel did not start in %s: %s", workdir, exc)
    except BaseException:
        await kernel.shutdown_async()
        raise
    return kernel


def start_kernel(**kw: Any) -> Kernel:
    """Launch a sandboxed kernel for a notebook to come, without waiting for it:
    :func:`start_kernel_async` run from synchronous code (no event loop
    running); same arguments as :func:`start_kernel_async`, which documents them.

    Example::

        k = start_kernel(workdir=tmp / "g2", limits=Limits(cell_timeout=60),
                         isolation=resolve("bwrap"), hidden=[key_dir])
        ...                                   # run the previous notebook meanwhile
        r = execute_notebook(nb, kernel=k)    # k is shut down afterwards
    """
    return asyncio.run(start_kernel_async(**kw))


start_kernel.__signature__ = inspect.signature(start_kernel_async)  # type: ignore[attr-defined]


class _Run:
    """One execution on a started kernel: connect, cells, epilogue, kill."""

    def __init__(self, nb: NotebookNode, kernel: Kernel, epilogue: str | None,
                 snapshot: str | None = None):
        self.nb, self.kernel, self.epilogue, self.snapshot = nb, kernel, epilogue, snapshot
        self.workdir = kernel.workdir
        self.limits, self.isolation = kernel.limits, kernel.isolation
        self.client = GraderClient(
            nb, kernel.km, budget=OutputBudget(self.limits.output_cap, self.limits.cell_output_cap),
            allow_errors=True, timeout_func=self._timeout, shutdown_kernel="immediate",
            startup_timeout=60, record_timing=False, coalesce_streams=False,
            kernel_name=kernel.km.kernel_name, log=_nbclient_log,
        )
        self.deadline: float | None = None
        self.in_epilogue = False
        self.status: Status = "ok"
        self.errors: list[CellError] = []
        self.cell_seconds: list[float | None] = [None] * len(nb.cells)
        self.truncated: list[int] = []
        self.epilogue_error: str | None = None
        self.epilogue_output = ""
        self.startup_seconds: float | None = None
        self.stopped_cell: int | None = None
        self.snapshot_cell: int | None = None
        self.snapshot_seconds = 0.0
        self._limit_hit = ""

    def _timeout(self, cell: NotebookNode) -> float | None:
        """nbclient's per-cell timeout: the cell limit, or what is left of
        the notebook's time if less."""
        cell_limit = self.limits.cell_timeout or None
        if self.in_epilogue:
            self._limit_hit = "collect"
            return COLLECT_ALLOWANCE
        if self.deadline is None:
            self._limit_hit = "cell"
            return cell_limit
        left = max(self.deadline - time.monotonic(), 0.01)
        if cell_limit is None or left < cell_limit:
            self._limit_hit = "notebook"
            return left
        self._limit_hit = "cell"
        return cell_limit

    async def run(self) -> None:
        t0 = time.monotonic()
        log_path = self.kernel.log_path
        try:
            try:
                if self.kernel.error is not None:
                    raise RuntimeError(self.kernel.error)
                # A kernel started ahead is ready by now, or nearly.
                await self.client.async_start_new_kernel_client()
            except Exception as exc:  # sandbox refused, kernel crashed at import, hung, ...
                self.status = "dead"
                self.errors.append(CellError(None, None, "KernelStartError",
                                             f"the kernel did not start: {exc}",
                                             self._log_tail(log_path)))
                log.warning("kernel did not start in %s: %s", self.workdir, exc)
                return
            self.startup_seconds = time.monotonic() - t0
            if self.limits.notebook_timeout:
                self.deadline = time.monotonic() + self.limits.notebook_timeout
            await self._run_cells(log_path)
            if self.epilogue and self.status in ("ok", "errors"):
                await self._run_epilogue()
        finally:
            await self._stop()

    async def _run_cells(self, log_path: Path) -> None:
        client = self.client
        for index, cell in enumerate(self.nb.cells):
            if cell.get("cell_type") != "code" or not cell.source.strip():
                continue
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self._mark_timeout(index, cell, "notebook")
                return
            started = time.monotonic()
            try:
                await client.async_execute_cell(cell, index,
                                                execution_count=client.code_cells_executed + 1)
            except CellTimeoutError:
                self._mark_timeout(index, cell, self._limit_hit)
                return
            except DeadKernelError:
                self._mark_dead(index, cell, log_path)
                return
            finally:
                self.cell_seconds[index] = round(time.monotonic() - started, 3)
                if client.budget.finish(index, cell.outputs):
                    self.truncated.append(index)
                cell.outputs = coalesce_streams(cell.outputs)
            reply = client.replies.pop(index, None) or {}
            content = reply.get("content", {})
            if content.get("status") == "error":
                self.status = "errors"
                self.errors.append(CellError(
                    index, cell.get("execution_count"), content.get("ename", "Error"),
                    content.get("evalue", ""), traceback_tail(content.get("traceback", []))))
            if self.snapshot and not await self._run_snapshot(index, cell, log_path):
                return

    async def _run_snapshot(self, index: int, cell: NotebookNode, log_path: Path) -> bool:
        """Run the snapshot code after cell ``index``; False if it stopped the run.

        What the grader keeps of a notebook that later dies or times out is the last
        snapshot: the state after the last cell that finished, never a half-run cell's."""
        started = time.monotonic()
        error = await self._run_hidden(self.snapshot)
        self.snapshot_seconds += time.monotonic() - started
        if error is None:
            self.snapshot_cell = index
            return True
        if error.startswith(("Timeout:", "DeadKernel:")):
            stopped = error.split(":", 1)[0]
            evalue = (f"the grader's collection after this cell did not finish within "
                      f"{COLLECT_ALLOWANCE:g} s" if stopped == "Timeout" else
                      "the kernel died while the grader collected the answers after this cell")
            self.status = "timeout" if stopped == "Timeout" else "dead"
            self.stopped_cell = index
            cell.outputs.append(_error_output(stopped, evalue, ["[stopped by grader]"]))
            self.errors.append(CellError(index, cell.get("execution_count"), stopped, evalue,
                                         self._log_tail(log_path) if stopped == "DeadKernel" else ""))
            self.epilogue_error = error
            return False
        self.epilogue_error = error
        return True

    def _mark_timeout(self, index: int, cell: NotebookNode, which: str) -> None:
        self.status = "timeout"
        self.stopped_cell = index
        if which == "notebook":
            evalue = f"the notebook did not finish within {self.limits.notebook_timeout:g} s"
        else:
            evalue = f"the cell did not finish within {self.limits.cell_timeout:g} s"
        cell.outputs.append(_error_output("Timeout", evalue, ["[stopped by grader]"]))
        self.errors.append(CellError(index, cell.get("execution_count"), "Timeout", evalue))

    def _mark_dead(self, index: int, cell: NotebookNode, log_path: Path) -> None:
        self.status = "dead"
        self.stopped_cell = index
        process = getattr(self.kernel.km.provisioner, "process", None)
        code = process.poll() if process is not None else None
        evalue = ("the kernel died while running this cell ("
                  + _exit_description(code, self.isolation.mode != "none") + ")")
        tail = self._log_tail(log_path)
        cell.outputs.append(_error_output("DeadKernel", evalue, tail.splitlines()))
        self.errors.append(CellError(index, cell.get("execution_count"), "DeadKernel", evalue, tail))

    async def _run_epilogue(self) -> None:
        error = await self._run_hidden(self.epilogue)
        if error is not None:
            self.epilogue_error = error

    async def _run_hidden(self, code: str) -> str | None:
        """Run the grader's ``code`` in the kernel as a cell that is not the notebook's
        (no history, outputs kept apart), within :data:`COLLECT_ALLOWANCE` seconds; the
        error it gave (``Timeout: ...``, ``DeadKernel: ...``, ``<ename>: ...``) or None."""
        cell = nbformat.v4.new_code_cell(code)
        self.nb.cells.append(cell)
        index = len(self.nb.cells) - 1
        self.in_epilogue = True
        error = None
        try:
            await self.client.async_execute_cell(cell, index, execution_count=None,
                                                 store_history=False)
            content = (self.client.replies.pop(index, None) or {}).get("content", {})
            if content.get("status") == "error":
                error = (f"{content.get('ename')}: {content.get('evalue')}\n"
                         + traceback_tail(content.get("traceback", [])))
        except CellTimeoutError:
            error = f"Timeout: the grader's code did not finish within {COLLECT_ALLOWANCE:g} s"
        except DeadKernelError:
            error = "DeadKernel: the kernel died while the grader's code ran"
        finally:
            self.in_epilogue = False
            self.client.budget.discard(index)
            self.nb.cells.pop()
            text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
            self.epilogue_output = text[:EPILOGUE_OUTPUT_CAP]
        return error

    async def _stop(self) -> None:
        """Close the client's channels, then kill the kernel."""
        kc, self.client.kc = self.client.kc, None
        try:
            if kc is not None:
                kc.stop_channels()
        except Exception:  # pragma: no cover - best effort
            log.debug("stop_channels failed", exc_info=True)
        await self.kernel.shutdown_async()

    @staticmethod
    def _log_tail(path: Path, n: int = 15) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(strip_ansi(text).splitlines()[-n:])


async def execute_notebook_async(
    nb: NotebookNode | Mapping | str | os.PathLike,
    *,
    workdir: str | os.PathLike | None = None,
    kernel: Kernel | None = None,
    limits: Limits | None = None,
    isolation: Isolation | None = None,
    data_dir: str | os.PathLike | None = None,
    hidden: Iterable[str | os.PathLike] = (),
    readonly: Iterable[str | os.PathLike] = (),
    env: Mapping[str, str] | None = None,
    epilogue: str | None = None,
    snapshot: str | None = None,
    kernel_name: str = "python3",
    threads: int = 1,
    devices: Iterable[str | os.PathLike] = (),
) -> ExecutionResult:
    """Run a notebook in a fresh sandboxed kernel and return what happened.

    ``nb``: a path, a NotebookNode or a dict (not modified).  ``workdir``:
    the submission's folder, the kernel's cwd and ``$HOME``, the only place
    it may write (created if missing; made the sandbox uid's).  ``hidden``:
    folders (or files) the kernel must not see, e.g. the assignment folder
    with the key, the submissions, the output folder, the class's work root
    (the work dir stays reachable inside it).  ``readonly``: extra folders
    under the grader's home to show read-only (the home is hidden).
    ``env``: extra variables for the kernel (its environment is otherwise
    built from scratch, see :func:`kernel_env`).  ``devices``: device nodes
    passed into the sandbox (GPUs).  ``epilogue``: code run in the same
    kernel after the cells, unless the kernel timed out or died; its failure
    goes to ``epilogue_error``, not to ``errors``.  ``snapshot``: code run in
    the kernel after every cell that finished (raising or not), e.g. the
    evidence export of :func:`grader.evidence.epilogue_code`; a cell that times
    out or kills the kernel gets none, so what the last snapshot wrote is the
    state after the last finished cell.  The epilogue and each snapshot have
    :data:`COLLECT_ALLOWANCE` seconds; a snapshot that takes longer, or kills
    the kernel, stops the run (``timeout``/``dead``).  ``threads``:
    OpenMP/MKL/torch threads of the kernel.

    ``kernel``: a kernel from :func:`start_kernel` (started ahead, while
    something else ran) to use instead of starting one; the launch arguments
    (``workdir`` to ``threads``, ``devices``) are then the kernel's and those
    given here are ignored.  Either way the kernel is shut down at the end.

    Bad input gives ``status="invalid"``; a failing, hanging or dying
    notebook gives ``errors``/``timeout``/``dead``; none of them raise.

    From synchronous code use :func:`execute_notebook`.

    Example::

        r = await execute_notebook_async(
            nb, workdir=tmp / "g1", limits=Limits(cell_timeout=60),
            isolation=resolve("bwrap"), hidden=[key_dir],
            epilogue="import json; json.dump(answers, open('answers.json', 'w'))")
        assert r.status in ("ok", "errors"), r.errors
    """
    t0 = time.monotonic()
    if kernel is None and workdir is None:
        raise TypeError("execute_notebook needs workdir= or kernel=")
    if kernel is not None:
        if kernel.used:
            raise ValueError("this kernel already ran a notebook")
        if workdir is not None and Path(workdir).resolve() != kernel.workdir:
            raise ValueError(f"workdir {workdir} is not the kernel's ({kernel.workdir})")
        kernel.used = True
    node, problem = load_notebook(nb)
    if node is None:
        if kernel is not None:
            description = kernel.description
            await kernel.shutdown_async()
        elif isolation is not None:
            description = isolation.describe(limits or Limits(), hidden, devices)
        else:  # no resolve("auto"): its probes run sandboxes, for a file never run
            description = "not run, no sandbox chosen; limits: " + (limits or Limits()).describe()
        return ExecutionResult(nbformat.v4.new_notebook(), "invalid", message=problem,
                               isolation=description, seconds=round(time.monotonic() - t0, 3))
    clear_outputs(node)
    if kernel is None:
        kernel = await start_kernel_async(
            workdir=workdir, limits=limits, isolation=isolation, data_dir=data_dir,
            hidden=hidden, readonly=readonly, env=env, kernel_name=kernel_name,
            threads=threads, devices=devices)
        kernel.used = True
    try:
        run = _Run(node, kernel, epilogue, snapshot)
        await run.run()
    finally:
        await kernel.shutdown_async()  # a no-op after the run's own stop
    return ExecutionResult(
        notebook=node, status=run.status, errors=run.errors, cell_seconds=run.cell_seconds,
        seconds=round(time.monotonic() - t0, 3),
        startup_seconds=None if run.startup_seconds is None else round(run.startup_seconds, 3),
        isolation=kernel.description, epilogue_error=run.epilogue_error,
        epilogue_output=run.epilogue_output, truncated_cells=run.truncated,
        message=_message(run.status, run.errors), stopped_cell=run.stopped_cell,
        snapshot_cell=run.snapshot_cell, snapshot_seconds=round(run.snapshot_seconds, 3),
    )


def _message(status: str, errors: list[CellError]) -> str | None:
    """One line for the grades list: why the run stopped, or which cells failed."""
    if status in ("dead", "timeout") and errors:
        last = errors[-1]
        if last.cell_index is None:
            return last.evalue
        return f"stopped in cell {last.cell_index}: {last.evalue}"
    if status == "errors" and errors:
        first = errors[0]
        evalue = " ".join(first.evalue.split())
        evalue = evalue if len(evalue) <= 160 else evalue[:159] + "…"
        n = len(errors)
        return (f"{n} cell{'s' if n > 1 else ''} raised an error; the first, cell "
                f"{first.cell_index}: {first.ename}: {evalue}").rstrip(": ")
    return None


def execute_notebook(nb: NotebookNode | Mapping | str | os.PathLike,
                     **kw: Any) -> ExecutionResult:
    """Run a notebook in a fresh sandboxed kernel and return what happened:
    :func:`execute_notebook_async` run from synchronous code; same arguments
    as :func:`execute_notebook_async`, which documents them.

    Safe to call from several threads at once (one event loop each); inside
    a running event loop use :func:`execute_notebook_async`.

    Example::

        r = execute_notebook(nb, workdir=tmp / "g1", limits=Limits(cell_timeout=60),
                             isolation=resolve("bwrap"), hidden=[key_dir],
                             epilogue="import json; json.dump(answers, open('answers.json', 'w'))")
        assert r.status in ("ok", "errors"), r.errors
    """
    return asyncio.run(execute_notebook_async(nb, **kw))


execute_notebook.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    execute_notebook_async)
