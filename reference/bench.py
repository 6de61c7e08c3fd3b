"""Train every model of every task and print what each reaches.

Usage::

    python -m reference.bench --profile quick --json results.json
    python -m reference.bench --profile full --tasks af --models cnn,bigru
    python -m reference.bench --profile full --jobs 8 --json full.json   # on a GPU

The JSON is a list with one object per (task, model): ``task``, ``model``,
``params``, ``device``, ``seconds`` and ``metrics`` (``accuracy``,
``balanced_accuracy``, ``f1``, ``sensitivity``, ``specificity``, ``roc_auc``;
for gait also ``subject_accuracy`` and ``subject_balanced_accuracy``, the
subject-level figures of a majority vote, averaged over the folds).
AF is measured on the held-out test records; gait on each fold's test subjects.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from . import data
from .models import MODELS, build_model, count_parameters
from .training import evaluate, fit, pick_device, profile_settings, set_seed

TASKS = ("af", "gait_binary", "gait_4class")
AVERAGED = ("accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity", "roc_auc",
            "subject_accuracy", "subject_balanced_accuracy")


def run_fold(task: str, model_name: str, profile: str, fold: int, *, device=None,
             seed: int = 0, data_dir=None, threads: int | None = None) -> dict:
    """Train ``model_name`` on one fold of ``task`` and evaluate it on that fold's test split."""
    if threads:
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    dev = pick_device(device)
    windows = data.load_task(task, fold=fold, data_dir=data_dir)
    settings = profile_settings(profile, task, model_name)
    set_seed(seed + fold)
    model = build_model(model_name, windows.window, windows.channels, windows.n_classes,
                        **settings["model"])
    fit(model, windows, device=dev, seed=seed + fold, **settings["fit"])
    metrics = evaluate(model, windows.test, windows.n_classes, by_subject=task != "af")
    return {"task": task, "model": model_name, "fold": fold, "params": count_parameters(model),
            "device": str(dev), "seconds": time.perf_counter() - start, "metrics": metrics}


def folds_of(task: str, n_folds: int = 5) -> list[int]:
    """AF has one fixed record-wise split; gait is averaged over subject folds."""
    return [0] if task == "af" else list(range(n_folds))


def combine(parts: list[dict]) -> dict:
    """One result per (task, model) from its folds: metrics averaged, seconds summed."""
    parts = sorted(parts, key=lambda r: r["fold"])
    first = parts[0]
    metrics = {}
    for key in AVERAGED:
        values = [r["metrics"][key] for r in parts if r["metrics"].get(key) is not None]
        if values:
            metrics[key] = float(np.mean(values))
    if first["task"] == "af":
        metrics["confusion_matrix"] = first["metrics"]["confusion_matrix"]
    return {"task": first["task"], "model": first["model"], "params": int(first["params"]),
            "device": first["device"], "seconds": round(sum(r["seconds"] for r in parts), 2),
            "folds": len(parts), "metrics": metrics}


def run_one(task: str, model_name: str, profile: str, *, device=None, seed: int = 0,
            n_folds: int = 5, data_dir=None) -> dict:
    """Train and evaluate one model on one task; gait is averaged over the folds."""
    return combine([run_fold(task, model_name, profile, fold, device=device, seed=seed,
                             data_dir=data_dir) for fold in folds_of(task, n_folds)])


def run_parallel(units: list[tuple[str, str]], profile: str, *, jobs: int, device=None,
                 seed: int = 0, data_dir=None, on_done=None) -> list[dict]:
    """Every fold of every (task, model) in ``units``, ``jobs`` processes at a time.

    Small models leave a GPU mostly idle between kernel launches: several
    processes sharing it keep it busy. Each process gets ``cores // jobs`` threads.
    Results are those of the serial run (same seeds per fold).
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    for task in {t for t, _ in units}:  # parse the files once, here, not in every process
        data.load_task(task, fold=0, data_dir=data_dir)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    work = [(t, m, f) for t, m in units for f in folds_of(t)]
    # Longest first (AF windows outnumber gait's 30 to 1; recurrent models cost most).
    work.sort(key=lambda u: (u[0] != "af", u[1] in ("mlp", "cnn")))
    parts: dict[tuple[str, str], list[dict]] = {u: [] for u in units}
    results: dict[tuple[str, str], dict] = {}
    # spawn, not fork: CUDA cannot be used in a forked child.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(run_fold, t, m, profile, f, device=device, seed=seed,
                               data_dir=data_dir, threads=threads) for t, m, f in work]
        for fut in as_completed(futures):
            r = fut.result()
            key = (r["task"], r["model"])
            parts[key].append(r)
            if len(parts[key]) == len(folds_of(key[0])):
                results[key] = combine(parts[key])
                if on_done:
                    on_done(results[key])
    return [results[u] for u in units]


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=("quick", "full"), default="quick")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, of: " + ", ".join(TASKS))
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS))
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best there is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", dest="json_path", default=None, help="write the results here")
    ap.add_argument("--jobs", "-j", type=int, default=1,
                    help="folds trained at once, each in its own process (on a GPU, 8 keep it busy)")
    args = ap.parse_args(argv)

    tasks = [t for t in args.tasks.split(",") if t]
    models = [m for m in args.models.split(",") if m]
    for t in tasks:
        if t not in TASKS:
            ap.error(f"unknown task {t!r}")
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}")

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    console.print(f"reference bench, profile [bold]{args.profile}[/], on {machine()}")
    results, start = [], time.perf_counter()

    def show(r: dict) -> None:
        m = r["metrics"]
        console.print(f"  {r['task']:12s} {r['model']:7s} acc {m['accuracy']:.3f}  "
                      f"bal {m['balanced_accuracy']:.3f}  f1 {m['f1']:.3f}  {r['seconds']:6.1f} s")

    units = [(t, m) for t in tasks for m in models]
    if args.jobs > 1:
        console.print(f"{sum(len(folds_of(t)) for t, _ in units)} trainings, {args.jobs} at a time")
        results = run_parallel(units, args.profile, jobs=args.jobs, device=args.device,
                               seed=args.seed, data_dir=args.data_dir, on_done=show)
    else:
        for task, name in units:
            with console.status(f"{task} / {name} ..."):
                r = run_one(task, name, args.profile, device=args.device, seed=args.seed,
                            data_dir=args.data_dir)
            show(r)
            results.append(r)
    total = time.perf_counter() - start

    table = Table(title=f"reference bench ({args.profile}, {machine()}, {total:.0f} s in all)")
    for col in ("task", "model", "params", "accuracy", "bal. acc.", "F1", "subject acc.",
                "subject bal. acc.", "seconds"):
        table.add_column(col, justify="left" if col in ("task", "model") else "right")
    fmt = lambda v: "" if v is None else f"{v:.3f}"
    for r in results:
        m = r["metrics"]
        table.add_row(r["task"], r["model"], str(r["params"]), fmt(m["accuracy"]),
                      fmt(m["balanced_accuracy"]), fmt(m["f1"]), fmt(m.get("subject_accuracy")),
                      fmt(m.get("subject_balanced_accuracy")), f"{r['seconds']:.1f}")
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(results, fh, indent=2)
        console.print(f"results written to {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
