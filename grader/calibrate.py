"""``grader calibrate``: run the reference solution with several seeds and write key.json.

Every run goes through the same execution, evidence and measurement as grading. From
the runs:

- exact kinds (integer, tuple, choice, multi): the value all runs agree on. A value
  that moves with the seed is a fault of the lab, reported, never hidden behind a
  tolerance;
- numbers: the median, with an absolute tolerance of the spread (at least the spec's);
- metrics measured by the grader: full credit from the lowest reference value less a
  margin, no credit at chance level, linear between.

Example::

    grader calibrate assignments/lab01 --seeds 3
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from reference.paths import cache_dir

from .assignment import Assignment, load_assignment
from .evidence import collect, decode_value, epilogue_code
from .execute import execute_notebook
from .measure import measure_models, measurement_key
from .sandbox import gpu_for_worker, nvidia_devices, resolve, visible_gpus

#: Full credit from the lowest reference value less this margin (the profile's spread
#: across seeds adds to it).
MARGINS = {"quick": 0.03, "full": 0.02}


class CalibrationError(RuntimeError):
    pass


def chance_level(task: str, metric: str, fold: int = 0, data_dir=None) -> float:
    """What guessing reaches: the majority share for accuracy, 1/k for balanced figures."""
    from reference.data import load_task

    w = load_task(task, fold=fold, data_dir=data_dir)
    y = w.test.y
    if metric in ("accuracy", "subject_accuracy"):
        if metric == "subject_accuracy":
            ys = {g: int(np.bincount(y[w.test.groups == g]).argmax()) for g in set(w.test.groups.tolist())}
            y = np.array(list(ys.values()))
        return float(np.bincount(y).max() / len(y))
    if metric == "roc_auc":
        return 0.5
    if metric in ("f1", "sensitivity", "specificity"):
        return 0.5 if w.n_classes == 2 else 1.0 / w.n_classes
    return 1.0 / w.n_classes


def run_reference(assignment: Assignment, seed: int, data_dir: Path, isolation, threads: int = 1,
                  gpus: list[str] | None = None) -> dict:
    """One run of the source notebook with ``LAB_SEED=seed``: its evidence and measurements.

    With ``gpus``, the run gets GPU ``seed mod len(gpus)`` (and the NVIDIA device nodes,
    which a bwrap sandbox otherwise hides).  The kernel reads the parsed data from the
    cache that :func:`calibrate` warms (read-only), as grading's kernels do."""
    gpu = gpu_for_worker(seed, gpus or [])
    cache = cache_dir()
    env = {"LAB_SEED": str(seed), "GRADER_CACHE": str(cache),
           **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}
    work = Path(tempfile.mkdtemp(prefix=f"calib-{seed}-"))
    os.chmod(work, 0o755)
    try:
        result = execute_notebook(
            assignment.notebook_path, workdir=work, isolation=isolation, data_dir=data_dir,
            limits=assignment.limits.to_sandbox(), env=env, readonly=[cache],
            snapshot=epilogue_code(assignment), threads=threads,
            devices=nvidia_devices() if gpu is not None else ())
        if result.status != "ok":
            first = result.errors[0] if result.errors else None
            where = f" (cell {first.cell_index}: {first.ename}: {first.evalue})" if first else ""
            raise CalibrationError(f"reference run with seed {seed} ended {result.status}{where}: "
                                   f"{result.message or ''}")
        evidence = collect(result, work, assignment)
        evidence["measurements"] = measure_models(work, assignment, data_dir)
        evidence["seconds"] = result.seconds
        return evidence
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_key(assignment: Assignment, runs: list[dict], profile: str,
              chance: Callable[[str, str, int], float]) -> tuple[dict, list[str]]:
    """key["questions"] from the runs' evidence; and the faults found. Pure but for ``chance``."""
    questions: dict[str, Any] = {}
    faults: list[str] = []
    for q in assignment.questions:
        if q.kind == "text":
            continue
        if q.kind == "metric":
            k = measurement_key(q.model, q.task, q.fold)
            values = []
            for r in runs:
                m = r["measurements"].get(k, {})
                if "error" in m or m.get("metrics", {}).get(q.metric) is None:
                    faults.append(f"{q.id}: the reference's model could not be measured "
                                  f"({m.get('error', 'no value')})")
                    break
                values.append(float(m["metrics"][q.metric]))
            if len(values) != len(runs):
                continue
            zero = round(chance(q.task, q.metric, q.fold), 4)
            full = round(min(values) - MARGINS[profile] - (max(values) - min(values)), 4)
            if full <= zero:
                faults.append(f"{q.id}: the reference ({min(values):.3f}..{max(values):.3f}) is not "
                              f"clear of chance ({zero:.3f})")
                full = round(zero + 0.01, 4)
            questions[q.id] = {"full": full, "zero": zero, "reference": [round(v, 4) for v in values],
                               "spread": round(max(values) - min(values), 4)}
            continue
        if q.kind == "consistency":
            questions[q.id] = {"abs_tol": q.tolerance.get("abs", 0.005)}
            continue
        values = [decode_value(r["answers"].get(q.answer)) if q.answer in r["answers"] else None
                  for r in runs]
        if any(v is None for v in values):
            faults.append(f"{q.id}: the reference notebook gives no answer in `{q.answer}`")
            continue
        if q.kind == "number":
            nums = [float(v) for v in values]
            spread = max(nums) - min(nums)
            questions[q.id] = {"expected": round(statistics.median(nums), 6),
                               "abs_tol": round(max(q.tolerance.get("abs", 0.0), 2 * spread), 6),
                               "spread": round(spread, 6)}
            continue
        norm = [sorted(v) if isinstance(v, (set, frozenset)) else list(v) if isinstance(v, tuple) else v
                for v in values]
        if any(n != norm[0] for n in norm):
            faults.append(f"{q.id}: meant to be exact, but the reference's answer moves with the seed: "
                          f"{norm}")
            continue
        questions[q.id] = {"expected": norm[0]}
    return questions, faults


def calibrate(folder: str | Path, seeds: int = 3, profile: str = "quick", jobs: int = 2,
              data_dir=None, sandbox: str = "auto", log=print, key_path=None) -> dict:
    """Run the reference ``seeds`` times and write ``<folder>/key.json`` (or ``key_path``)."""
    import torch
    from reference.paths import data_dir as resolve_data_dir

    assignment = load_assignment(folder)
    data_dir = resolve_data_dir(data_dir).resolve()
    isolation = resolve(sandbox)
    from .grade import warm_data_cache
    warm_data_cache(data_dir)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    log(f"calibrating {assignment.folder} with {seeds} seed(s), {jobs} at a time, "
        f"isolation {isolation.mode}")
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        gpus = visible_gpus()
        runs = list(pool.map(lambda s: run_reference(assignment, s, data_dir, isolation, threads, gpus),
                             range(seeds)))
    for s, r in enumerate(runs):
        log(f"  seed {s}: {r['seconds']:.0f} s")
    questions, faults = build_key(assignment, runs, profile,
                                  lambda t, m, f: chance_level(t, m, f, data_dir))
    import nbclient
    import sklearn
    key = {
        "lab": assignment.number, "profile": profile, "seeds": list(range(seeds)),
        "device": "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else
                  f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                     "nbclient": nbclient.__version__},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reference_seconds": [r["seconds"] for r in runs],
        "faults": faults,
        "questions": questions,
    }
    key_path = Path(key_path) if key_path else assignment.key_path
    key_path.write_text(json.dumps(key, indent=2) + "\n")
    log(f"wrote {key_path}")
    for f in faults:
        log(f"FAULT: {f}")
    return key
