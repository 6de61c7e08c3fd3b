"""Seconds per notebook: ``grade(jobs=2)`` vs ``grade(scheduler=...)`` on a 2-worker Dask LocalCluster.

    python benchmarks/cluster_bench.py [-n 8] [--sandbox auto]

N distinct copies of one small PyTorch notebook (those of benchmarks/grade_bench.py) are
graded end to end by :func:`grader.grade.grade` (ingest, execution, store, scores,
PDFs) three times, each into a fresh output folder: locally with ``jobs=2``, then with
``scheduler=`` the address of a ``LocalCluster(n_workers=2, threads_per_worker=1)`` on
this machine, then locally again (the order must not decide). The cluster's start-up is
timed apart from the batch. The difference per notebook is what Dask adds: shipping
the notebook, the evidence and the executed notebook, the scheduler, the workers' probe,
each worker's sandbox check and data-cache check. Both sides run the same number of
kernels at a time; a worker of a LocalCluster counts the whole machine's cores, so its
kernels get 2 threads where the local ones get 1 (no difference for this notebook).
Needs the dask extra and GRADER_DATA. A figure to quote, not a test.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grade_bench import make  # noqa: E402


def timed_grade(subs: Path, lab: Path, out: Path, sandbox: str, **kw) -> tuple[float, dict]:
    from rich.console import Console

    from grader.grade import grade

    t = time.perf_counter()
    rows = grade(subs, lab, out, sandbox=sandbox, console=Console(stderr=True, quiet=True), **kw)
    seconds = time.perf_counter() - t
    statuses: dict[str, int] = {}
    for r in rows:
        status = r["evidence"].get("status")
        statuses[status] = statuses.get(status, 0) + 1
    return seconds, statuses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--sandbox", default="auto")
    args = ap.parse_args()

    from distributed import LocalCluster

    from grader.grade import rescore, warm_data_cache
    from grader.sandbox import resolve
    from reference.paths import data_dir

    root = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        lab, subs = make(root, args.n)
        warm = root / "warm"
        warm.mkdir()
        shutil.copy(sorted(subs.glob("*.ipynb"))[0], warm)
        warm_data_cache(data_dir(None).resolve())
        # warm-up: page cache, sandbox probe, torch import, WeasyPrint
        timed_grade(warm, lab, root / "out-warm", args.sandbox, jobs=1)

        local1, local_status = timed_grade(subs, lab, root / "out-local1", args.sandbox, jobs=2)
        t = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as lc:
            lc.wait_for_workers(2)
            startup = time.perf_counter() - t
            remote, remote_status = timed_grade(subs, lab, root / "out-cluster", args.sandbox,
                                                scheduler=lc.scheduler_address)
        local2, _ = timed_grade(subs, lab, root / "out-local2", args.sandbox, jobs=2)
        local = min(local1, local2)
        t = time.perf_counter()
        rescore(root / "out-local2")
        scoring = time.perf_counter() - t

        n = args.n
        print(f"{n} notebooks, {os.cpu_count()} cores ({platform.machine()}), "
              f"sandbox {resolve(args.sandbox).mode}; grade() end to end, s per notebook")
        print(f"{'local, jobs=2, before / after':48s} {local1 / n:7.2f} / {local2 / n:5.2f}"
              f"   {local_status}")
        print(f"{'scheduler=, LocalCluster 2 workers x 1 thread':48s} {remote / n:15.2f}   "
              f"{remote_status}")
        print(f"of which scores + PDFs (rescore), both sides: {scoring / n:.2f}")
        print(f"cluster start-up (scheduler + 2 workers): {startup:.1f} s, once per batch")
        print(f"overhead per notebook vs the faster local run: {(remote - local) / n:+.2f} s "
              f"({100 * (remote / local - 1):+.0f}%)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
