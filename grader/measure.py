"""The grader measures the students' models itself, in a clean process.

:func:`measure_models` (grader side) runs ``python -m grader.measure <json request>``
in a subprocess with a minimal environment.  That process, for every
``(model variable, task, fold)`` of ``assignment.measurements``:

1. reads ``<workdir>/grader_models/<var>.json`` (the model's ``config``) and checks it:
   a name of :data:`reference.models.MODELS`, whole numbers that match the task's data,
   plain keyword arguments of bounded size;
2. rebuilds the network with :func:`reference.models.from_config` (never the group's code);
3. loads ``<var>.pt`` with ``torch.load(weights_only=True, map_location="cpu")`` and
   ``load_state_dict(strict=True)``;
4. loads the test split itself (:func:`reference.data.load_task`, once per task and fold)
   and evaluates on CPU (:func:`reference.training.evaluate`, ``by_subject`` for gait).

Result: ``{"<var>|<task>|<fold>": {"metrics": {...}, "kinds": [...], "layers": "..."} |
{"error": "..."}}`` (``kinds``: :func:`model_kinds` of the rebuilt network).  Bad input
never raises: every problem becomes an ``error`` entry.

Example::

    from grader.measure import measure_models
    evidence["measurements"] = measure_models(workdir, lab, data_dir)
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from .evidence import MODELS_DIR, regular_file_problem
from .sandbox import format_size

MAX_STATE_BYTES = 512 * 2**20
MAX_PARAMS = 20_000_000   # lab models have 4k-11k; the biggest sensible one a few 100k
MAX_CONFIG_BYTES = 64 * 1024
MAX_INT = 4096            # any whole number in a model's kwargs (width, filters, layers...)
MAX_LIST = 16
_ROOT = Path(__file__).resolve().parents[1]


def measurement_key(var: str, task: str, fold: int) -> str:
    return f"{var}|{task}|{fold}"


# --------------------------------------------------------------------------
# Grader side
# --------------------------------------------------------------------------

def measure_models(workdir: str | os.PathLike, assignment, data_dir: str | os.PathLike | None,
                   timeout: float | None = None, threads: int = 2, *, isolation=None,
                   limits=None, work_root: str | os.PathLike | None = None) -> dict[str, dict]:
    """Measure every model of ``assignment.measurements`` in a subprocess; see module doc.

    With ``isolation`` (grading), that process runs in the same kind of sandbox as the
    kernels, under ``limits`` (default: ``assignment.limits.to_measure()``: memory and
    time): it sees the group's work dir read-only, the data and the course packages, and
    nothing else; its own scratch folder is made under ``work_root``. A limit hit ends
    this group's measurement with a message, never the batch. ``timeout`` overrides the
    limits' time.
    """
    from .sandbox import Limits

    items = [list(m) for m in assignment.measurements]
    keys = [measurement_key(*m) for m in assignment.measurements]
    if not items:
        return {}
    # No model exported at all: say so without paying for a Python that imports torch.
    folder = Path(workdir) / MODELS_DIR
    if not any(os.path.lexists(folder / f"{m[0]}.{ext}") for m in items for ext in ("json", "onnx")):
        return {k: {"error": f"the model {m[0]!r} was not exported (no {MODELS_DIR}/{m[0]}.json)"}
                for k, m in zip(keys, items)}
    if limits is None:
        to_measure = getattr(getattr(assignment, "limits", None), "to_measure", None)
        limits = to_measure() if to_measure else Limits(memory=None)
    if timeout is not None:
        limits = replace(limits, cell_timeout=timeout, notebook_timeout=timeout)
    seconds = limits.notebook_timeout or 600
    request = {"workdir": str(Path(workdir).resolve()), "items": items}
    n = str(max(1, int(threads)))
    env = {
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), "/usr/bin", "/bin"]),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
        "CUDA_VISIBLE_DEVICES": "",
    }
    if data_dir is not None:
        env["GRADER_DATA"] = str(Path(data_dir).resolve())
    elif os.environ.get("GRADER_DATA"):
        env["GRADER_DATA"] = os.environ["GRADER_DATA"]
    # The parsed data the grader warmed, named outright: in the sandbox the measurement's
    # own HOME is a scratch folder, where a default cache would be empty.
    from reference.paths import cache_dir

    cache = cache_dir()
    env["GRADER_CACHE"] = str(cache)
    argv = [sys.executable, "-m", "grader.measure", json.dumps(request)]
    # Its own empty working folder, sandbox or not: nothing a file names relative to the
    # current folder (an ONNX file's external data, say) finds anything there.
    scratch = Path(tempfile.mkdtemp(prefix="measure-", dir=work_root))
    try:
        os.chmod(scratch, 0o755)
        env.update(HOME=str(scratch), TMPDIR=str(scratch), MPLCONFIGDIR=str(scratch))
        if isolation is not None:
            isolation.grant(scratch)
            readonly = [Path(workdir).resolve()] + ([cache] if cache.is_dir() else [])
            argv = isolation.command(argv, workdir=scratch, runtime_dir=scratch, limits=limits,
                                     data_dir=env.get("GRADER_DATA"), readonly=readonly)
        cwd = str(scratch)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds, env=env,
                                  cwd=cwd)
        except subprocess.TimeoutExpired:
            return {k: {"error": f"the grader's measurement did not finish within {seconds:g} s "
                                 "(a model far larger or slower than the lab's?)"}
                    for k in keys}
        except OSError as exc:
            return {k: {"error": f"the grader's measurement could not start: {exc}"} for k in keys}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if not isinstance(out, dict):
            raise ValueError("not an object")
    except (ValueError, IndexError):
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        why = " | ".join(tail) or f"exit status {proc.returncode}"
        if "MemoryError" in why or proc.returncode in (-9, 137):
            why = (f"it ran out of its {format_size(limits.memory) if limits.memory else ''} of "
                   f"memory ({why})")
        return {k: {"error": f"the grader's measurement failed: {why}"[:500]} for k in keys}
    return {k: out.get(k, {"error": "not measured"}) for k in keys}


# --------------------------------------------------------------------------
# Measuring process
# --------------------------------------------------------------------------

class MeasureError(Exception):
    """A problem with one model, reported as its error entry."""


def _plain(v: Any) -> bool:
    if isinstance(v, bool) or v is None or isinstance(v, str) and len(v) <= 64:
        return True
    if isinstance(v, int):
        return 0 <= v <= MAX_INT
    if isinstance(v, float):
        return math.isfinite(v) and 0 <= v <= MAX_INT
    if isinstance(v, list):
        return len(v) <= MAX_LIST and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                          and _plain(x) for x in v)
    return False


def check_config(config: Any, data) -> dict:
    """The config if it can safely rebuild a model for ``data`` (a Windows), else MeasureError."""
    from reference.models import MODELS

    if not isinstance(config, dict):
        raise MeasureError("the model's config is not a JSON object")
    unknown = set(config) - {"name", "window", "channels", "n_classes", "kwargs"}
    if unknown:
        raise MeasureError(f"the model's config has unknown field {sorted(unknown)[0]!r}")
    name = config.get("name")
    if not isinstance(name, str) or name.lower() not in MODELS:
        raise MeasureError(f"the model's config names an unknown model {name!r} "
                           f"(known: {', '.join(MODELS)})")
    for field, want in (("window", data.window), ("channels", data.channels),
                        ("n_classes", data.n_classes)):
        v = config.get(field)
        if not isinstance(v, int) or isinstance(v, bool):
            raise MeasureError(f"the model's config field {field!r} is not a whole number")
        if v != want:
            raise MeasureError(f"the model was built for {field} = {v}, but the task "
                               f"{data.task!r} has {field} = {want}")
    kwargs = config.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise MeasureError("the model's config field 'kwargs' is not a table")
    for k, v in kwargs.items():
        if not _plain(v):
            raise MeasureError(f"the model's keyword argument {k}={v!r} is not allowed "
                               f"(plain numbers up to {MAX_INT}, short lists, strings)")
    return config


def _read_regular(path: Path, root: Path, max_bytes: int, what: str) -> Path:
    """``path``, if it may be read (see :func:`grader.evidence.regular_file_problem`),
    else :class:`MeasureError`."""
    why = regular_file_problem(path, root, max_bytes)
    if why == "missing":
        raise MeasureError(f"the {what} file {path.name} was not exported")
    if why is not None:
        raise MeasureError(f"the {what} file {path.name} cannot be read: {why}")
    return path


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "tolist"):
        return _jsonable(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def model_kinds(model) -> tuple[list[str], str]:
    """The kinds of ``model`` (see :data:`grader.assignment.MODEL_KINDS`) and its layer
    types, told from the modules of the network the grader built: recurrent if it has an
    RNN/LSTM/GRU layer, convolutional if it has a convolution, mlp if it has neither."""
    from torch import nn

    layers = [m for m in model.modules() if not list(m.children())]
    kinds = []
    if any(isinstance(m, nn.RNNBase) for m in layers):
        kinds.append("recurrent")
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in layers):
        kinds.append("convolutional")
    if not kinds and any(isinstance(m, nn.Linear) for m in layers):
        kinds.append("mlp")
    names = list(dict.fromkeys(type(m).__name__ for m in layers
                               if isinstance(m, (nn.RNNBase, nn.modules.conv._ConvNd, nn.Linear))))
    return kinds, ", ".join(names)


#: ONNX operators that make a model recurrent, convolutional, or an MLP's layers.
ONNX_KINDS = {"LSTM": "recurrent", "GRU": "recurrent", "RNN": "recurrent",
              "Conv": "convolutional", "ConvTranspose": "convolutional"}
ONNX_LINEAR = ("Gemm", "MatMul")


def onnx_kinds(ops) -> tuple[list[str], str]:
    """:func:`model_kinds` of an exported graph, from its operator types."""
    ops = list(dict.fromkeys(ops))
    kinds = [k for k in ("recurrent", "convolutional")
             if any(ONNX_KINDS.get(op) == k for op in ops)]
    if not kinds and any(op in ONNX_LINEAR for op in ops):
        kinds.append("mlp")
    return kinds, ", ".join(op for op in ops if op in ONNX_KINDS or op in ONNX_LINEAR)


def _onnx_ops(graph) -> list[str]:
    ops = []
    for node in graph.node:
        ops.append(node.op_type)
        for attr in node.attribute:          # If/Loop/Scan bodies
            for g in [attr.g] * attr.HasField("g") + list(attr.graphs):
                ops += _onnx_ops(g)
    return ops


def _onnx_tensors(graph) -> list:
    """Every dense tensor of an ONNX graph and of the graphs inside it: initializers,
    sparse initializers' values and indices, and tensor attributes of every node."""
    out = list(graph.initializer)
    for sp in graph.sparse_initializer:
        out += [sp.values, sp.indices]
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                out.append(a.t)
            out += list(a.tensors)
            if a.HasField("sparse_tensor"):
                out += [a.sparse_tensor.values, a.sparse_tensor.indices]
            for sp in a.sparse_tensors:
                out += [sp.values, sp.indices]
            if a.HasField("g"):
                out += _onnx_tensors(a.g)
            for g in a.graphs:
                out += _onnx_tensors(g)
    return out


def load_onnx(path: Path, var: str, data, threads: int = 1):
    """The exported graph of ``var`` as a callable torch module run by onnxruntime, and
    its operators; MeasureError when it is not a plain, self-contained ONNX model for
    ``data``'s input."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise MeasureError(f"the model file {path.name} is not a valid ONNX model "
                           f"({type(exc).__name__})") from None
    # Weights stored in other files would make onnxruntime read paths a group chose:
    # looked for in every graph (If/Loop/Scan bodies too) and every kind of tensor.
    tensors = _onnx_tensors(proto.graph)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise MeasureError(f"the model file {path.name} refers to external data")
    # Bounded from the export itself, before onnxruntime allocates anything for it.
    n_params = sum(math.prod(t.dims) for t in tensors)
    if n_params > MAX_PARAMS:
        raise MeasureError(f"the model file {path.name} holds {n_params:,} weights, more than "
                           f"the {MAX_PARAMS:,} the grader measures")
    domains = {n.domain for n in proto.graph.node} - {"", "ai.onnx"}
    if domains or proto.functions:
        raise MeasureError(f"the model file {path.name} uses custom operators "
                           f"({', '.join(sorted(domains)) or 'local functions'})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise MeasureError(f"onnxruntime cannot run {path.name} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise MeasureError(f"the model takes {len(inputs)} inputs, not one batch of windows")
    name = inputs[0].name

    class OnnxModel(torch.nn.Module):
        def forward(self, x):
            y = sess.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
            y = np.asarray(y, dtype=np.float32)
            if y.ndim != 2 or y.shape != (x.shape[0], data.n_classes):
                raise MeasureError(f"the model gives outputs of shape {tuple(y.shape)} for "
                                   f"{x.shape[0]} windows; the task {data.task!r} needs "
                                   f"({x.shape[0]}, {data.n_classes}): one score per class")
            return torch.from_numpy(y)

    return OnnxModel(), _onnx_ops(proto.graph)


def measure_one(workdir: Path, var: str, task: str, fold: int, data) -> dict:
    import torch
    from reference.models import from_config
    from reference.training import evaluate

    folder = workdir / MODELS_DIR
    if os.path.lexists(folder / f"{var}.onnx"):
        path = _read_regular(folder / f"{var}.onnx", workdir, MAX_STATE_BYTES, "model")
        model, ops = load_onnx(path, var, data, threads=torch.get_num_threads())
        try:
            metrics = evaluate(model, data.test, data.n_classes, by_subject=task != "af",
                               device="cpu")
        except MeasureError:
            raise
        except Exception as exc:
            raise MeasureError(f"running the exported model failed ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        kinds, layers = onnx_kinds(ops)
        return {"metrics": _jsonable(metrics), "kinds": kinds, "layers": layers}
    cfg_path = _read_regular(folder / f"{var}.json", workdir, MAX_CONFIG_BYTES, "config")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise MeasureError(f"the model's config is not valid JSON ({exc})") from None
    check_config(config, data)
    try:
        # Counted on the meta device first: a config that asks for billions of weights
        # is refused before a byte of them is allocated.
        with torch.device("meta"):
            n_params = sum(p.numel() for p in from_config(config).parameters())
        if n_params > MAX_PARAMS:
            raise MeasureError(f"the model's config asks for {n_params:,} parameters, more than "
                               f"the {MAX_PARAMS:,} the grader measures")
        model = from_config(config)
    except MeasureError:
        raise
    except Exception as exc:
        raise MeasureError(f"the model cannot be rebuilt from its config "
                           f"({type(exc).__name__}: {exc})") from None
    pt = _read_regular(folder / f"{var}.pt", workdir, MAX_STATE_BYTES, "weights")
    try:
        state = torch.load(pt, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise MeasureError(f"the weights file cannot be loaded ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if not isinstance(state, dict):
        raise MeasureError("the weights file does not hold a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise MeasureError(f"the weights do not fit the model ({type(exc).__name__}: "
                           f"{str(exc)[:300]})") from None
    model.eval()
    with torch.no_grad():
        metrics = evaluate(model, data.test, data.n_classes, by_subject=task != "af",
                           device="cpu")
    kinds, layers = model_kinds(model)
    return {"metrics": _jsonable(metrics), "kinds": kinds, "layers": layers}


def run_request(request: dict) -> dict:
    from reference.data import load_task

    workdir = Path(request["workdir"])
    cache: dict[tuple[str, int], Any] = {}
    out: dict[str, dict] = {}
    for var, task, fold in request["items"]:
        key = measurement_key(var, task, fold)
        try:
            if (task, fold) not in cache:
                try:
                    cache[(task, fold)] = load_task(task, fold=fold)
                except Exception as exc:
                    cache[(task, fold)] = exc
            data = cache[(task, fold)]
            if isinstance(data, Exception):
                raise MeasureError(f"the grader could not load the {task} data: "
                                   f"{type(data).__name__}: {data}")
            out[key] = measure_one(workdir, var, task, int(fold), data)
        except MeasureError as exc:
            out[key] = {"error": str(exc)}
        except Exception as exc:  # never let one model stop the others
            out[key] = {"error": f"measuring failed: {type(exc).__name__}: {str(exc)[:300]}"}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # anything printed by libraries stays off the result line
    try:
        request = json.loads(argv[0])
        import torch
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        result = run_request(request)
    finally:
        sys.stdout = real_stdout
    print(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
