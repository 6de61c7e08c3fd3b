"""Train every model of every task and print what each reaches.

Usage::

    python -m reference.bench --profile quick --json results.json
    python -m reference.bench --profile full --tasks af --models cnn,bigru

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


def run_one(task: str, model_name: str, profile: str, *, device=None, seed: int = 0,
            n_folds: int = 5, data_dir=None) -> dict:
    """Train and evaluate one model on one task; gait is averaged over the folds."""
    folds = [0] if task == "af" else list(range(n_folds))
    per_fold, params, start = [], 0, time.perf_counter()
    dev = pick_device(device)
    for fold in folds:
        windows = data.load_task(task, fold=fold, data_dir=data_dir)
        settings = profile_settings(profile, task, model_name)
        set_seed(seed + fold)
        model = build_model(model_name, windows.window, windows.channels, windows.n_classes,
                            **settings["model"])
        params = count_parameters(model)
        fit(model, windows, device=dev, seed=seed + fold, **settings["fit"])
        per_fold.append(evaluate(model, windows.test, windows.n_classes,
                                 by_subject=task != "af"))
    metrics = {}
    for key in AVERAGED:
        values = [m[key] for m in per_fold if m.get(key) is not None]
        if values:
            metrics[key] = float(np.mean(values))
    if task == "af":
        metrics["confusion_matrix"] = per_fold[0]["confusion_matrix"]
    return {"task": task, "model": model_name, "params": int(params), "device": str(dev),
            "seconds": round(time.perf_counter() - start, 2), "folds": len(folds),
            "metrics": metrics}


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
    for task in tasks:
        for name in models:
            with console.status(f"{task} / {name} ..."):
                r = run_one(task, name, args.profile, device=args.device, seed=args.seed,
                            data_dir=args.data_dir)
            m = r["metrics"]
            console.print(f"  {task:12s} {name:7s} acc {m['accuracy']:.3f}  bal {m['balanced_accuracy']:.3f}"
                          f"  f1 {m['f1']:.3f}  {r['seconds']:6.1f} s")
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
    Console().print(table)
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(results, fh, indent=2)
        console.print(f"results written to {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
