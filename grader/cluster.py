"""Grading on a Dask distributed cluster (``grader grade --scheduler tcp://HOST:PORT``).

:class:`ClusterExecutor` has the shape that :func:`grader.grade.grade` needs from a
pool: ``submit(run_one, nb_path, **kwargs) -> future`` and ``as_completed(futures)``;
``future.result()`` is the evidence dict, exactly as with a local
``ThreadPoolExecutor``. The store, resume and rescore stay on the instructor's
machine: only execution moves.

What travels, and what each worker finds for itself:

* **the notebook's bytes**, not its path: the worker writes them to a temporary
  folder of its own (under the same file name) and runs ``run_one`` there;
* the :class:`~grader.assignment.Assignment` (a picklable frozen dataclass: the
  epilogue, the evidence and the measurements need only its questions), the
  :class:`~grader.sandbox.Limits`, the ``hidden`` paths (those that exist on the
  worker are hidden there too) and ``env``;
* the sandbox: the worker resolves the same ``--sandbox`` choice itself and refuses
  (error evidence) to run with a weaker one than the instructor's machine found
  (bwrap > unshare > none); the evidence's ``isolation`` says what ran;
* the data: the worker's own ``GRADER_DATA`` (else the instructor's ``--data-dir``
  if that path exists on the worker, else the worker user's cache); the parsed-array
  cache is the worker's ``GRADER_CACHE``, warmed once per worker process;
* the kernel's threads: ``cores // worker threads`` of the worker (or ``threads=``
  given to :class:`ClusterExecutor`); ``CUDA_VISIBLE_DEVICES`` of the worker, when
  set, is passed on to the kernel.

What comes back: the evidence plus the executed notebook, which the instructor's
machine writes to ``OUT/executed/`` as a local run would.

A lost worker: a worker that dies while running a notebook makes the scheduler
run that task again on another worker. The task itself counts, on the scheduler, the
workers that died running it (a task only queued on a dead worker is not counted) and,
from the second death on, returns an error evidence
(``status = "grader-error"``) instead of running the notebook a third time; the
scheduler's own ``distributed.scheduler.allowed-failures`` (default 3) only bounds it
from above (and when it is 0 there is no rerun: ``KilledWorker`` becomes the error
evidence). An exception in the task's own set-up is retried once (``retries=1``).

Workers must have the project installed (``pip install 'grader[dask]'``, same
version as the instructor's; ``sandbox`` system packages such as bubblewrap too) and
the PhysioNet data under their ``GRADER_DATA``. Starting them::

    # the instructor's machine (or any host the workers reach)
    dask scheduler --port 8786
    # each worker machine: 2 notebooks at a time, each kernel gets cores // 2 threads
    GRADER_DATA=/data/physionet dask worker tcp://HOST:8786 --nthreads 2 --nworkers 1
    # then
    grader grade submissions/ --lab assignments/lab01 --out out/ --scheduler tcp://HOST:8786

GPU workers: one worker process per GPU, each seeing only its GPU, with one
notebook at a time (``--nthreads 1``)::

    dask-cuda-worker tcp://HOST:8786 --nthreads 1             # pip install dask-cuda
    # or by hand, one per GPU:
    CUDA_VISIBLE_DEVICES=0 dask worker tcp://HOST:8786 --nthreads 1 --name gpu0 &
    CUDA_VISIBLE_DEVICES=1 dask worker tcp://HOST:8786 --nthreads 1 --name gpu1 &

The worker's ``CUDA_VISIBLE_DEVICES`` is handed to the kernel (its environment is
otherwise built from scratch). The grader's own measurements of the models run on
CPU (``grader.measure`` hides the GPUs), so scores do not depend on the card.

On an HPC cluster with SLURM (``pip install dask-jobqueue``), from a login node::

    from dask_jobqueue import SLURMCluster
    cluster = SLURMCluster(queue="gpu", cores=8, processes=1, memory="32GB",
                           walltime="02:00:00", job_extra_directives=["--gres=gpu:1"],
                           job_script_prologue=["source ~/grader/.venv/bin/activate",
                                                "export GRADER_DATA=/scratch/physionet"],
                           worker_extra_args=["--nthreads", "1"])
    cluster.scale(jobs=4)
    print(cluster.scheduler_address)   # -> grader grade ... --scheduler tcp://...

Example::

    from grader.cluster import ClusterExecutor
    from grader.grade import run_one
    with ClusterExecutor("tcp://10.0.0.5:8786") as pool:
        futures = {pool.submit(run_one, path, assignment=lab, limits=lim, isolation=iso,
                               data_dir=data, work_root=work, hidden=hidden,
                               executed_dir=out / "executed", threads=1, env=env): path
                   for path in paths}
        for fut in pool.as_completed(futures):
            evidence = fut.result()          # never raises; executed notebook written
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .evidence import empty_evidence

log = logging.getLogger(__name__)

MISSING_DASK = "grading on a cluster needs the dask extra: pip install 'grader[dask]'"


class ClusterError(RuntimeError):
    """The cluster cannot be used: no dask installed, a bad or unreachable scheduler."""

#: Strength of the sandboxes: a worker may not run a weaker one than the instructor's.
_STRENGTH = {"none": 0, "unshare": 1, "bwrap": 2}

#: A task that has seen this many of its workers die is not run again.
MAX_WORKER_DEATHS = 2


def _distributed():
    try:
        import distributed
    except ImportError as exc:  # the optional extra is missing
        raise ImportError(MISSING_DASK) from exc
    return distributed


def _grader_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("grader")
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------

_warm_lock = threading.Lock()
_warmed: set[tuple[str, str]] = set()


def _worker_data_dir(instructor_dir: Any) -> Path:
    from reference.paths import ENV_DATA, data_dir

    if not os.environ.get(ENV_DATA) and instructor_dir and Path(instructor_dir).is_dir():
        return Path(instructor_dir).resolve()
    return data_dir(None).resolve()


def _warm(data_dir: Path) -> Path:
    """Parse the PhysioNet files once per worker process (as grade() does locally)."""
    from reference.paths import cache_dir

    from .grade import warm_data_cache

    key = (str(data_dir), str(cache_dir()))
    with _warm_lock:
        if key not in _warmed:
            warm_data_cache(data_dir)
            _warmed.add(key)
    return cache_dir()


def _starts(key: str, delta: int) -> int:
    """Add ``delta`` to the scheduler's count of unfinished runs of task ``key``; return
    the count before. A run that ends (result or exception) takes itself off again; a run
    whose worker died never does. So at the start of a run, the count is the number of
    workers that died *running* this notebook. Dask's own ``suspicious`` count will not
    do: it also counts tasks that were only queued on the dead worker."""
    distributed = _distributed()

    def count(dask_scheduler, key, delta):
        runs = dask_scheduler.__dict__.setdefault("_grader_unfinished_runs", {})
        before = runs.get(key, 0)
        after = max(0, before + delta)
        if after:
            runs[key] = after
        else:  # no run left: forget the task (the scheduler lives long, tasks are many)
            runs.pop(key, None)
        return before

    return int(distributed.get_client().run_on_scheduler(count, key=key, delta=delta))


def _worker_deaths(key: str) -> int:
    """How many workers died while running task ``key``; counts this run as started."""
    try:
        return _starts(key, +1)
    except Exception as exc:  # e.g. a scheduler that refuses pickled functions
        log.warning("cannot ask the scheduler how often %s was lost: %s", key, exc)
        return 0


def _run_ended(key: str) -> None:
    try:
        _starts(key, -1)
    except Exception as exc:
        log.warning("cannot tell the scheduler that %s ended: %s", key, exc)


def _worker_threads(override: int | None) -> int:
    if override:
        return max(1, int(override))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    nthreads = _distributed().get_worker().state.nthreads or 1
    return max(1, cores // nthreads)


def remote_run(fn: Callable[..., dict], name: str, notebook: bytes, kwargs: dict,
               threads: int | None = None) -> dict:
    """The task run on a worker: ``fn`` (``run_one``) on a local copy of the notebook.

    Returns ``{"evidence", "executed" (notebook JSON text or None), "worker"}``.
    Raises only for set-up failures (the data, a temporary folder), which Dask retries.
    """
    worker = _distributed().get_worker().address
    key = _distributed().get_worker().get_current_task()
    deaths = _worker_deaths(key)
    try:
        return _remote_run(fn, name, notebook, kwargs, threads, worker, deaths)
    finally:
        _run_ended(key)  # not reached when the worker dies: that is what is counted


def _remote_run(fn, name, notebook, kwargs, threads, worker, deaths) -> dict:
    from .sandbox import SandboxUnavailable, resolve

    if deaths >= MAX_WORKER_DEATHS:
        return {"evidence": empty_evidence("grader-error", 
                    f"{deaths} cluster workers died while running this notebook; not run again "
                    "(a notebook that kills its kernel gets 'dead', so suspect the worker: "
                    "memory, GPU, node failure)"),
                "executed": None, "worker": worker}
    local = kwargs["isolation"]
    try:
        isolation = resolve(local.requested or "auto")
    except SandboxUnavailable as exc:
        return {"evidence": empty_evidence("grader-error", f"worker {worker}: {exc}"), "executed": None,
                "worker": worker}
    if _STRENGTH[isolation.mode] < _STRENGTH[local.mode]:
        return {"evidence": empty_evidence("grader-error", 
                    f"worker {worker}: sandbox {isolation.mode!r} is weaker than the "
                    f"instructor's {local.mode!r}; install bubblewrap there or pass --sandbox"),
                "executed": None, "worker": worker}
    data_dir = _worker_data_dir(kwargs.get("data_dir"))
    cache = _warm(data_dir)
    root = Path(tempfile.mkdtemp(prefix="grader-task-"))
    try:
        os.chmod(root, 0o755)
        for sub in ("in", "work", "executed"):
            (root / sub).mkdir()
            os.chmod(root / sub, 0o755)
        nb_path = root / "in" / name
        nb_path.write_bytes(notebook)
        env = dict(kwargs.get("env") or {})
        env["GRADER_CACHE"] = str(cache)
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
        args = dict(kwargs, isolation=isolation, data_dir=data_dir, work_root=root / "work",
                    hidden=[*kwargs.get("hidden", ()), root / "in", root / "work",
                            root / "executed"],
                    executed_dir=root / "executed", threads=_worker_threads(threads), env=env)
        evidence = fn(nb_path, **args)
        executed = root / "executed" / name
        return {"evidence": evidence, "worker": worker,
                "executed": executed.read_text(encoding="utf-8") if executed.exists() else None}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _probe_worker(sandbox: str, instructor_data: str | None = None) -> dict:
    """What one worker offers: grader version, sandbox, data, GPUs (see workers())."""
    from .sandbox import resolve

    info: dict[str, Any] = {"grader": _grader_version(),
                            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        iso = resolve(sandbox)  # type: ignore[arg-type]
        info.update(sandbox=iso.mode, degraded=iso.degraded, isolation=iso.description)
    except Exception as exc:
        info.update(sandbox=None, degraded=True, isolation=f"{type(exc).__name__}: {exc}")
    d = _worker_data_dir(instructor_data)  # as remote_run will find it
    info["data"] = str(d) if (d / "afdb" / "RECORDS").exists() else None
    return info


# --------------------------------------------------------------------------
# Instructor side
# --------------------------------------------------------------------------

class ClusterFuture:
    """One submission on the cluster. ``result()`` is the evidence and never raises."""

    def __init__(self, dask_future, name: str, executed_dir: Path | None):
        self.dask_future = dask_future
        self.name = name
        self.executed_dir = executed_dir
        self.worker: str | None = None
        self._evidence: dict | None = None
        self._lock = threading.Lock()

    def done(self) -> bool:
        return self._evidence is not None or self.dask_future.done()

    def cancel(self) -> bool:
        self.dask_future.cancel()
        return True

    def result(self, timeout: float | None = None) -> dict:
        with self._lock:
            if self._evidence is None:
                self._evidence = self._finish(timeout)
            return self._evidence

    def _finish(self, timeout: float | None) -> dict:
        distributed = _distributed()
        try:
            out = self.dask_future.result(timeout=timeout)
        except distributed.TimeoutError:
            raise
        except distributed.client.FutureCancelledError as exc:
            return empty_evidence("grader-error", f"cancelled on the cluster: {exc}")
        except Exception as exc:  # KilledWorker, set-up failures after the retry, unpickling
            why = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ == "KilledWorker":
                why = f"cluster workers died while running this notebook ({why})"
            return empty_evidence("grader-error", why[:2000])
        finally:
            self.dask_future.release()
        self.worker = out.get("worker")
        if out.get("executed") is not None and self.executed_dir is not None:
            from .grade import executed_path

            path = executed_path(self.executed_dir, self.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(out["executed"], encoding="utf-8")
        return out["evidence"]


class ClusterExecutor:
    """``submit``/``as_completed`` on a Dask scheduler, for ``run_one``-shaped tasks.

    ``address``: ``tcp://HOST:PORT`` of a running scheduler (or a Dask cluster
    object, e.g. a ``LocalCluster``). ``threads``: kernel threads per notebook
    (default: the worker's cores // its ``--nthreads``).
    ``timeout``: seconds to wait for the scheduler (default: Dask's
    ``distributed.comm.timeouts.connect``, 30 s).

    Raises :class:`ClusterError` for a malformed or unreachable address (naming it),
    ``ImportError`` (:data:`MISSING_DASK`) without the dask extra.

    ``submit(fn, nb_path, **kwargs)`` needs ``fn`` with the signature of
    :func:`grader.grade.run_one`, importable or picklable on the workers; the
    worker calls it with worker-local paths (see the module doc).
    """

    def __init__(self, address, *, threads: int | None = None, timeout: float | None = None):
        distributed = _distributed()
        self.threads = threads
        if isinstance(address, str):
            try:  # before Client(): a malformed address would leave a half-made client
                distributed.comm.get_address_host_port(address)
            except ValueError as exc:
                raise ClusterError(f"--scheduler {address!r}: {exc} "
                                   "(expected tcp://HOST:PORT)") from exc
        extra = {} if timeout is None else {"timeout": timeout}
        try:
            self.client = distributed.Client(address, set_as_default=False, **extra)
        except OSError as exc:  # refused, unknown host, timed out
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc

    # -- the pool interface grade() uses -------------------------------------------------
    def submit(self, fn: Callable[..., dict], nb_path, /, **kwargs) -> ClusterFuture:
        nb_path = Path(nb_path)
        executed_dir = kwargs.get("executed_dir")
        # the worker writes the notebook under its file name; it lands here under this one
        executed_name = kwargs.pop("executed_name", None) or nb_path.name
        kwargs = {**kwargs, "executed_dir": None}  # replaced on the worker
        fut = self.client.submit(remote_run, fn, nb_path.name, nb_path.read_bytes(), kwargs,
                                 self.threads, pure=False, retries=1,
                                 key=f"grade-{nb_path.stem[:60]}-{os.urandom(6).hex()}")
        return ClusterFuture(fut, executed_name, Path(executed_dir) if executed_dir else None)

    def as_completed(self, futures: Iterable[ClusterFuture]) -> Iterator[ClusterFuture]:
        """The futures as they finish (any order); ``result()`` then does not block."""
        return _cluster_as_completed(futures)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.client.close()

    def __enter__(self) -> ClusterExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- what grade() may print ----------------------------------------------------------
    def workers(self, sandbox: str = "auto", data_dir=None) -> dict[str, dict]:
        """Per worker: grader version, resolved sandbox, data folder (None: missing), GPUs.

        ``data_dir``: the instructor's data folder, which a worker without
        ``GRADER_DATA`` uses when the same path exists there.
        """
        return self.client.run(_probe_worker, sandbox, str(data_dir) if data_dir else None)

    def warnings(self, isolation, data_dir=None) -> list[str]:
        """What is wrong with the workers, one line each (empty: nothing).

        ``isolation``: the instructor's resolved sandbox; a worker with a weaker one
        would turn every notebook it gets into a grader error.
        """
        mine = _grader_version()
        try:
            info = self.workers(isolation.requested or "auto", data_dir)
        except Exception as exc:  # e.g. grader not importable on a worker
            return [f"cannot probe the workers ({type(exc).__name__}: {exc}); is grader "
                    "installed on them?"]
        if not info:
            return ["no worker has joined the scheduler yet: the notebooks wait until one does"]
        out = []
        for addr, w in sorted(info.items()):
            if w.get("grader") != mine:
                out.append(f"worker {addr}: grader {w.get('grader')}, here {mine}")
            if not w.get("data"):
                out.append(f"worker {addr}: no PhysioNet data (set GRADER_DATA there)")
            mode = w.get("sandbox")
            if mode is None or _STRENGTH[mode] < _STRENGTH[isolation.mode]:
                out.append(f"worker {addr}: sandbox {mode!r} is weaker than {isolation.mode!r} "
                           f"here ({w.get('isolation')}); its notebooks become grader errors")
            elif w.get("degraded"):
                out.append(f"worker {addr}: {w.get('isolation')}")
        return out

    def describe(self) -> str:
        info = self.client.scheduler_info()
        ws = info.get("workers", {})
        return (f"{len(ws)} Dask worker(s), {sum(w.get('nthreads', 0) for w in ws.values())} "
                f"notebook slot(s) at {self.client.scheduler.address}")


def as_completed(futures: Iterable) -> Iterator:
    """``concurrent.futures.as_completed`` that also takes :class:`ClusterFuture` s."""
    futures = list(futures)
    if futures and isinstance(futures[0], ClusterFuture):
        yield from _cluster_as_completed(futures)
    else:
        yield from concurrent.futures.as_completed(futures)


def _cluster_as_completed(futures: Iterable[ClusterFuture]) -> Iterator[ClusterFuture]:
    distributed = _distributed()
    by_key = {f.dask_future.key: f for f in futures}
    if not by_key:
        return
    first = next(iter(by_key.values())).dask_future
    for done in distributed.as_completed([f.dask_future for f in by_key.values()],
                                         loop=first.client.loop):
        yield by_key[done.key]
