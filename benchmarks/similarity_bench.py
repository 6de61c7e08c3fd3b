"""Seconds of ``grader similarity`` on synthetic classes of 100, 300 and 1,000 groups.

    python benchmarks/similarity_bench.py [-n 100 300 1000]

Each class is built as tests/similarity_class.py builds the test's (lab 01's reference
solution, each group with its own texts, extra cells and common wrong answers, plus one
copy and one pair sharing unusual wrong answers), written into a real store under a
temporary folder; only :func:`grader.similarity.similarity` is timed (reading the store
and the notebooks, fingerprinting, the indexes, the evidence of the pairs found).  Also
prints how many pairs the indexes handed to the full comparison, against all pairs.
Writes nothing outside the temporary folder.  A figure to quote, not a test.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from similarity_class import build_class  # noqa: E402

from grader.similarity import similarity  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, nargs="+", default=[100, 300, 1000])
    args = ap.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'groups':>7} {'build s':>8} {'similarity s':>13} {'pairs compared':>15} "
          f"{'all pairs':>10} {'listed':>7} {'top two = copy, wrong?':>23}")
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            t0 = time.perf_counter()
            info = build_class(out, honest=n - 2, seed=11)
            built = time.perf_counter() - t0
            t0 = time.perf_counter()
            rep = similarity(out)
            seconds = time.perf_counter() - t0
            top = {frozenset((p["a"], p["b"])) for p in rep["pairs"][:2]}
            ok = top == {frozenset(info["copy"]), frozenset(info["wrong"])}
            print(f"{n:7d} {built:8.1f} {seconds:13.2f} {rep['candidates']:15d} "
                  f"{n * (n - 1) // 2:10d} {len(rep['pairs']):7d} {str(ok):>23}", flush=True)


if __name__ == "__main__":
    main()
