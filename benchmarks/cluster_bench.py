"""Seconds per notebook: 2 local threads vs a 2-worker Dask LocalCluster (grader.cluster).

    python benchmarks/cluster_bench.py [-n 8] [--sandbox auto]

N distinct copies of one small PyTorch notebook (those of benchmarks/grade_bench.py)
run through ``grader.grade.run_one`` twice, as ``grade()`` runs them: in a local
``ThreadPoolExecutor(2)``, then through :class:`grader.cluster.ClusterExecutor` on a
``LocalCluster(n_workers=2, threads_per_worker=1)`` on this machine (one kernel thread
per notebook in both). The cluster's start-up is timed apart from the batch. The
difference per notebook is what Dask adds: shipping the notebook and the evidence,
the scheduler, each worker's sandbox probe and data-cache check. Needs the dask extra
and GRADER_DATA. A figure to quote, not a test.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grade_bench import make  # noqa: E402


def batch(pool, paths, kwargs, as_completed) -> tuple[float, dict]:
    t = time.perf_counter()
    futures = {pool.submit(run_one, p, **kwargs): p for p in paths}
    statuses: dict[str, int] = {}
    for fut in as_completed(futures):
        status = fut.result().get("status")
        statuses[status] = statuses.get(status, 0) + 1
    return time.perf_counter() - t, statuses


def main() -> int:
    global run_one
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--sandbox", default="auto")
    args = ap.parse_args()

    import concurrent.futures

    from distributed import LocalCluster

    from grader import cluster
    from grader.assignment import load_assignment
    from grader.grade import _limits, run_one, warm_data_cache
    from grader.sandbox import resolve
    from reference.paths import cache_dir, data_dir

    root = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        lab, subs = make(root, args.n)
        paths = sorted(subs.glob("*.ipynb"))
        assignment = load_assignment(lab)
        data = data_dir(None).resolve()
        warm_data_cache(data)
        work = root / "work"
        work.mkdir()
        os.chmod(work, 0o755)
        kwargs = dict(assignment=assignment, limits=_limits(assignment, None, None),
                      isolation=resolve(args.sandbox), data_dir=data, work_root=work,
                      hidden=[lab, subs, root / "out"], executed_dir=root / "out" / "executed",
                      threads=1, env={"GRADER_CACHE": str(cache_dir())})

        run_one(paths[0], **kwargs)  # warm-up: page cache, sandbox probe, torch import
        with ThreadPoolExecutor(max_workers=2) as pool:
            local1, local_status = batch(pool, paths, kwargs, concurrent.futures.as_completed)

        t = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as lc, \
                cluster.ClusterExecutor(lc.scheduler_address, threads=1) as pool:
            pool.client.wait_for_workers(2)
            startup = time.perf_counter() - t
            remote, remote_status = batch(pool, paths, kwargs, pool.as_completed)
        with ThreadPoolExecutor(max_workers=2) as pool:  # again: the order must not decide
            local2, _ = batch(pool, paths, kwargs, concurrent.futures.as_completed)
        local = min(local1, local2)

        n = args.n
        print(f"{n} notebooks, {os.cpu_count()} cores, sandbox {kwargs['isolation'].mode}")
        print(f"{'what':48s} {'s per notebook':>15s}")
        print(f"{'local ThreadPoolExecutor(2), before / after':48s} {local1 / n:7.2f} / {local2 / n:5.2f}"
              f"   {local_status}")
        print(f"{'Dask LocalCluster, 2 workers x 1 thread':48s} {remote / n:15.2f}   {remote_status}")
        print(f"cluster start-up (scheduler + 2 workers): {startup:.1f} s, once per batch")
        print(f"overhead per notebook vs the faster local run: {(remote - local) / n:+.2f} s "
              f"({100 * (remote / local - 1):+.0f}%)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
