"""Evidence: what a run of a student notebook left behind, in JSON-safe form.

Two halves, on either side of the trust boundary:

* :func:`epilogue_code` is Python source that :func:`grader.execute.execute_notebook`
  runs (``epilogue=...``) in the *student's* kernel after the last cell.  It reads the
  answer variables, encodes them (see below) and exports the models the grader must
  measure (``grader_models/<var>.pt`` state dict on CPU + ``grader_models/<var>.json``
  config) into the work dir, then writes ``grader_evidence.json`` there.
* :func:`collect` runs in the grader: it reads that file back, *re-validates* every
  answer (the kernel is untrusted: the file may be forged), and adds what the executed
  notebook shows (free-text answers, group, errors, timings, figures).

The grader measures the models itself, in a clean process: see :mod:`grader.measure`;
the lead puts its result under ``evidence["measurements"]``.

Encoding of an answer value (JSON-safe, unambiguous)
----------------------------------------------------
* ``None``, ``bool``, ``int``, ``str``, finite ``float``: as is.  Subclasses of
  ``int``/``float``/``str`` (an ``IntEnum``...) are reduced to the plain value.
* non-finite float: ``{"float": "nan" | "inf" | "-inf"}``.
* numpy / torch scalars: the plain Python number (or bool); 0-d arrays/tensors too.
* numpy arrays, torch tensors: nested lists (at most :data:`MAX_ELEMENTS` elements).
* ``list``: list.  ``tuple`` (also ``torch.Size``, namedtuples): ``{"tuple": [...]}``.
* ``set``/``frozenset``: ``{"set": [...]}`` (sorted by JSON text).
* ``dict`` with ``str`` keys: ``{"dict": {...}}`` (wrapped, so that a student's dict
  can never pass for one of these markers).
* anything else (complex, objects with a custom ``__eq__``, a model...):
  ``{"refused": "<type name>"}`` optionally with ``"why"``; never compared.
* a missing variable is absent from ``answers``.

:func:`decode_value` turns an encoded value back into Python (``tuple``,
``frozenset``, ``float('nan')``, :class:`Refused`).
"""
from __future__ import annotations

import ast
import json
import math
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep this module light: score.py imports decode_value
    from .assignment import Assignment
    from .execute import ExecutionResult

EVIDENCE_FILE = "grader_evidence.json"
MODELS_DIR = "grader_models"
MAX_ELEMENTS = 10_000              # per array/tensor, in the kernel
MAX_ANSWER_BYTES = 1_000_000       # per answer, JSON text, checked by the grader
MAX_EVIDENCE_BYTES = 16_000_000    # the whole evidence file
MAX_DEPTH = 32
MAX_FIGURES = 12
MAX_FIGURE_BYTES = 1_000_000       # base64 text of one PNG
MAX_TEXT_CHARS = 20_000            # one free-text answer
#: A model's input, (window, channels), per task (reference.data's defaults): the dummy
#: batch that traces a hand-written module into ONNX.
TASK_INPUT = {"af": (30, 1), "gait_binary": (20, 12), "gait_4class": (20, 12)}


# --------------------------------------------------------------------------
# Kernel side
# --------------------------------------------------------------------------

# Runs with exec() in a namespace of its own (only _USER_NS, _VARS, _MODELS given), so
# that a student's global named `list`, `json` or `max` cannot break it, and nothing of
# it is left in the student's namespace afterwards.
_KERNEL_BODY = r'''
import json, math, os, sys

MAX_ELEMENTS = %(max_elements)d
MAX_DEPTH = %(max_depth)d
EVIDENCE_FILE = %(evidence_file)r
MODELS_DIR = %(models_dir)r
# The genuine descriptors of a class's name and module: a metaclass cannot replace them.
QUALNAME = type.__dict__["__qualname__"].__get__
MODULE = type.__dict__["__module__"].__get__


class Refuse(Exception):
    def __init__(self, tname, why=None):
        Exception.__init__(self, tname)
        self.tname, self.why = tname, why


def tname(v):
    t = type(v)
    try:
        mod, name = MODULE(t), QUALNAME(t)
    except Exception:
        return "object"
    mod = mod if type(mod) is str else ""
    name = name if type(name) is str else "object"
    return name if mod in ("builtins", "__main__", "") else mod + "." + name


def num(x):
    if type(x) is float and not math.isfinite(x):
        return {"float": "nan" if x != x else ("inf" if x > 0 else "-inf")}
    return x


class no_torch_overrides:
    """No __torch_function__ or dispatch mode that a notebook left active runs while
    the grader reads tensors."""

    def __init__(self, torch):
        self.a = torch._C.DisableTorchFunction()
        self.b = torch.utils._python_dispatch._disable_current_modes()

    def __enter__(self):
        self.a.__enter__()
        self.b.__enter__()

    def __exit__(self, *exc):
        self.b.__exit__(*exc)
        self.a.__exit__(*exc)


def numpy_scalar_types(np):
    return {t for t in np.sctypeDict.values() if isinstance(t, type)}


# Every value is read through the real classes' own functions (tuple.__iter__,
# np.ndarray.tolist, torch.Tensor.tolist...), on objects whose type is exactly one of
# numpy's or torch's: a group's subclass could override any method it is asked for.
def conv(v, depth=0):
    if depth > MAX_DEPTH:
        raise Refuse(tname(v), "nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is str:
        return v
    if t is float:
        return num(v)
    np = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    if np is not None and issubclass(t, np.generic):
        if t not in numpy_scalar_types(np):
            raise Refuse(tname(v), "a subclass of a numpy scalar")
        x = np.generic.item(v)
        if type(x) in (bool, int, str):
            return x
        if type(x) is float:
            return num(x)
        raise Refuse(tname(v))
    if np is not None and issubclass(t, np.ndarray):
        if t is not np.ndarray:
            raise Refuse(tname(v), "a subclass of numpy.ndarray")
        size = np.ndarray.__dict__["size"].__get__(v)
        if size > MAX_ELEMENTS:
            raise Refuse(tname(v), "%%d elements, more than %%d" %% (size, MAX_ELEMENTS))
        kind = np.ndarray.__dict__["dtype"].__get__(v).kind
        if kind not in "biufUO":
            raise Refuse(tname(v), "dtype kind " + str(kind))
        return conv(np.ndarray.tolist(v), depth + 1)
    if torch is not None and issubclass(t, torch.Tensor):
        if t is not torch.Tensor and t is not torch.nn.Parameter:
            raise Refuse(tname(v), "a subclass of torch.Tensor")
        TB = torch._C.TensorBase.__dict__   # a C type: its methods cannot be replaced
        with no_torch_overrides(torch):
            n = TB["numel"](v)
            if n > MAX_ELEMENTS:
                raise Refuse(tname(v), "%%d elements, more than %%d" %% (n, MAX_ELEMENTS))
            if TB["is_complex"](v):
                raise Refuse(tname(v), "complex")
            x = TB["cpu"](TB["detach"](v))
            if TB["is_sparse"].__get__(x):
                x = TB["to_dense"](x)
            items = TB["tolist"](x)
        return conv(items, depth + 1)
    if issubclass(t, int):
        return int.__add__(v, 0)
    if issubclass(t, float):
        return num(float.__add__(v, 0.0))
    if issubclass(t, str):
        return str.__add__(v, "")
    if issubclass(t, tuple):
        return {"tuple": [conv(x, depth + 1) for x in tuple.__iter__(v)]}
    if issubclass(t, list):
        return [conv(x, depth + 1) for x in list.__iter__(v)]
    if issubclass(t, (set, frozenset)):
        it = set.__iter__(v) if issubclass(t, set) else frozenset.__iter__(v)
        items = [conv(x, depth + 1) for x in it]
        return {"set": sorted(items, key=lambda x: json.dumps(x, sort_keys=True))}
    if issubclass(t, dict):
        out = {}
        for k, x in dict.items(v):
            if type(k) is not str:
                raise Refuse(tname(v), "a key is not a str")
            out[k] = conv(x, depth + 1)
        return {"dict": out}
    raise Refuse(tname(v))


def encode(v):
    try:
        out = conv(v)
        json.dumps(out, allow_nan=False)
        return out
    except Refuse as exc:
        r = {"refused": exc.tname}
        if exc.why:
            r["why"] = str(exc.why)[:200]
        return r
    except RecursionError:
        return {"refused": tname(v), "why": "nested too deeply"}
    except Exception as exc:
        return {"refused": tname(v), "why": ("reading it raised " + tname(exc))[:200]}


def plain(v, depth=0):
    """A copy of JSON-like data made only of the exact built-in types, else Refuse."""
    t = type(v)
    if depth > MAX_DEPTH:
        raise Refuse("config", "nested too deeply")
    if v is None or t in (bool, int, str):
        return v
    if t is float:
        if not math.isfinite(v):
            raise Refuse("config", "a non-finite number")
        return v
    if t in (list, tuple):
        return [plain(x, depth + 1) for x in (list.__iter__(v) if t is list else tuple.__iter__(v))]
    if t is dict:
        out = {}
        for k, x in dict.items(v):
            if type(k) is not str:
                raise Refuse("config", "a key is not a str")
            out[k] = plain(x, depth + 1)
        return out
    raise Refuse("config", "holds a " + tname(v))


def module_tensors(torch, obj):
    """{state-dict name: tensor} of a real nn.Module, read from the modules' own tables
    (_parameters, _buffers, _modules), as Module.state_dict does without its hooks: no
    method of the group's classes is called."""
    Module = torch.nn.Module
    mdict = Module.__dict__["__dict__"].__get__
    out, seen, stack = {}, set(), [("", obj)]
    while stack:
        prefix, m = stack.pop(0)
        if id(m) in seen:
            continue
        seen.add(id(m))
        d = mdict(m)
        params, buffers, children = (dict.get(d, "_parameters"), dict.get(d, "_buffers"),
                                      dict.get(d, "_modules"))
        skip = dict.get(d, "_non_persistent_buffers_set") or set()
        if not all(issubclass(type(x), dict) for x in (params, buffers, children)) or \
                type(skip) is not set:
            raise Refuse(tname(m), "not an intact torch.nn.Module")
        for table, kind in ((params, "parameter"), (buffers, "buffer")):
            for name, t in dict.items(table):
                if t is None or (table is buffers and name in skip):
                    continue
                if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
                    raise Refuse(tname(t), "the %%s %%s%%s is not a plain tensor" %% (kind, prefix, name))
                out[prefix + name] = t
        for name, child in dict.items(children):
            if child is None:
                continue
            if not issubclass(type(child), Module):
                raise Refuse(tname(child), "submodule %%s%%s is not a torch.nn.Module" %% (prefix, name))
            stack.append((prefix + name + ".", child))
    return out


def module_list(torch, obj):
    """Every module of ``obj``'s tree, read from the ``_modules`` tables."""
    mdict = torch.nn.Module.__dict__["__dict__"].__get__
    out, seen, stack = [], set(), [obj]
    while stack:
        m = stack.pop()
        if id(m) in seen or not issubclass(type(m), torch.nn.Module):
            continue
        seen.add(id(m))
        out.append(m)
        children = dict.get(mdict(m), "_modules")
        if issubclass(type(children), dict):
            stack += [c for c in dict.values(children) if c is not None]
    return out


def fingerprint(obj, tensors):
    # A tensor's _version grows with every in-place change (an optimizer step), so an
    # unchanged fingerprint means unchanged weights: no need to save them again.
    version = sys.modules["torch"]._C.TensorBase.__dict__["_version"].__get__
    return [id(obj)] + [[k, id(t), version(t)] for k, t in tensors.items()]


def write_atomic(path, write):
    tmp = path + ".tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    write(tmp)
    os.replace(tmp, path)


def remove(*paths):
    for p in paths:
        if os.path.lexists(p):
            os.remove(p)


# What a traced forward cannot keep, by the tracer's words: the construct and how to
# write it instead.
TRACER_HINTS = (
    ("Python boolean", "an `if` or `while` on a tensor's value", "torch.where or a mask"),
    ("Python index", "a tensor used as a Python index or range", "tensor indexing or slicing"),
    ("Python number", "`.item()`, `float()` or `int()` of a tensor",
     "tensor operations throughout"),
    ("Python value", "a tensor turned into a Python value", "tensor operations throughout"),
    ("iterating over a tensor", "a Python loop over a tensor", "batched tensor operations"),
)


def export_onnx(var, obj, shape, before):
    """A hand-written module (no build_model config) as ONNX: the graph of operators and
    its weights, data that the grader runs with onnxruntime, never as Python.  Tracing runs
    the group's forward here, in the kernel, inside the sandbox and the allowance."""
    torch = sys.modules["torch"]
    import warnings
    tensors = module_tensors(torch, obj)
    with no_torch_overrides(torch):
        fp = ["onnx", shape] + fingerprint(obj, tensors)
    path = os.path.join(MODELS_DIR, var + ".onnx")
    if before is not None and dict.get(before, "fingerprint") == fp and os.path.isfile(path):
        return before
    os.makedirs(MODELS_DIR, exist_ok=True)
    remove(os.path.join(MODELS_DIR, var + ".pt"), os.path.join(MODELS_DIR, var + ".json"))
    # eval mode for the trace (dropout off, batch norm on its running statistics), each
    # module's own flag put back afterwards
    mdict = torch.nn.Module.__dict__["__dict__"].__get__
    modes = []
    for m in module_list(torch, obj):
        d = mdict(m)
        modes.append((d, dict.get(d, "training", False)))
        d["training"] = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            def write(p):
                # batch 1: an LSTM traced on more would fix its batch size in the graph
                torch.onnx.export(obj, (torch.zeros([1] + list(shape)),), p, dynamo=False,
                                  input_names=["x"], output_names=["logits"],
                                  dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
            try:
                write_atomic(path, write)
            except Exception as exc:
                remove(path, path + ".tmp")
                why = "; ".join(a for a in BaseException.__dict__["args"].__get__(exc)
                                if type(a) is str).splitlines()
                raise Refuse(tname(obj), "torch.onnx.export failed (%%s: %%s)"
                             %% (tname(exc), why[0][:300] if why else ""))
    finally:
        for d, mode in modes:
            d["training"] = mode
    # A forward that trains while it is traced would hand in weights made after the
    # notebook's time: the weights must be those the snapshot saw.
    with no_torch_overrides(torch):
        after = ["onnx", shape] + fingerprint(obj, module_tensors(torch, obj))
    if after != fp:
        remove(path)
        raise Refuse(tname(obj), "its forward changed the model's weights while the grader "
                     "exported it; a forward must only compute the output")
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    for w in caught:
        # torch's own modules (nn.LSTM) check their inputs in Python: only the group's
        # code counts
        if issubclass(w.category, torch.jit.TracerWarning) and \
                not str(w.filename).startswith(torch_dir):
            remove(path)
            m = w.message
            text = BaseException.__str__(m) if isinstance(m, BaseException) else str(m)
            for key, construct, instead in TRACER_HINTS:
                if key in text:
                    break
            else:
                construct, instead = "Python control flow on tensor values", "tensor operations"
            raise Refuse(tname(obj), "its forward uses %%s, which an exported graph cannot "
                         "follow (it keeps the one path taken on a dummy input); write it with "
                         "%%s instead" %% (construct, instead))
    return {"onnx": path, "fingerprint": fp}


def export_model(var, obj, before):
    torch = sys.modules.get("torch")
    if torch is None:
        return {"error": "torch was never imported, so %%r cannot be a PyTorch model" %% var}
    if not issubclass(type(obj), torch.nn.Module):
        return {"error": "%%r is a %%s, not a model (a torch.nn.Module)" %% (var, tname(obj))}
    attrs = torch.nn.Module.__dict__["__dict__"].__get__(obj)
    config = dict.get(attrs, "config") if issubclass(type(attrs), dict) else None
    if config is None:
        return export_onnx(var, obj, _SHAPES[var], before)
    try:
        config_text = json.dumps(plain(config), allow_nan=False)
    except Refuse as exc:
        return {"error": "the config of %%r is not plain JSON (%%s)" %% (var, exc.why)}
    tensors = module_tensors(torch, obj)
    with no_torch_overrides(torch):
        fp = [config_text] + fingerprint(obj, tensors)
    pt = os.path.join(MODELS_DIR, var + ".pt")
    cf = os.path.join(MODELS_DIR, var + ".json")
    if before is not None and dict.get(before, "fingerprint") == fp and \
            os.path.isfile(pt) and os.path.isfile(cf):
        return before
    os.makedirs(MODELS_DIR, exist_ok=True)
    remove(os.path.join(MODELS_DIR, var + ".onnx"))
    TB = torch._C.TensorBase.__dict__
    with no_torch_overrides(torch):
        state = {k: TB["cpu"](TB["detach"](t)) for k, t in tensors.items()}
        write_atomic(pt, lambda p: torch.save(state, p))

    def write_config(p):
        with open(p, "w") as f:
            f.write(config_text)
    write_atomic(cf, write_config)
    return {"state": pt, "config": cf, "fingerprint": fp}


def previous():
    try:
        with open(EVIDENCE_FILE) as f:
            old = json.load(f)
        return old if type(old) is dict and type(old.get("models")) is dict else {"models": {}}
    except Exception:
        return {"models": {}}


def main():
    old = previous()
    answers, models = {}, {}
    for var in _VARS:
        if var in _USER_NS:
            answers[var] = encode(_USER_NS[var])
    for var in _MODELS:
        if var not in _USER_NS:
            models[var] = {"error": "no variable %%r in the notebook" %% var, "missing": True}
            continue
        before = old["models"].get(var)
        try:
            models[var] = export_model(var, _USER_NS[var], before if type(before) is dict else None)
        except Refuse as exc:
            models[var] = {"error": ("%%r cannot be exported: %%s (%%s)" %% (var, exc.why, exc.tname))[:500]}
        except Exception as exc:
            why = "; ".join(a for a in BaseException.__dict__["args"].__get__(exc) if type(a) is str)
            models[var] = {"error": ("exporting %%r failed: %%s: %%s" %% (var, tname(exc), why))[:500]}
    data = {"version": 2, "answers": answers, "models": models}

    def write(p):
        with open(p, "w") as f:
            json.dump(data, f, allow_nan=False)
    write_atomic(EVIDENCE_FILE, write)


main()
'''


def epilogue_code(assignment: "Assignment") -> str:
    """Source to run in the student's kernel after the notebook (see the module doc).

    Leaves no name behind in the student's namespace (one temporary name,
    ``_grader_builtins_``, is deleted) and imports torch/numpy only if the notebook did.
    """
    body = _KERNEL_BODY % dict(max_elements=MAX_ELEMENTS, max_depth=MAX_DEPTH,
                               evidence_file=EVIDENCE_FILE, models_dir=MODELS_DIR)
    variables = list(assignment.answer_variables)
    models = list(dict.fromkeys(m[0] for m in assignment.measurements))
    shapes: dict[str, list[int]] = {}
    for var, task, _fold in assignment.measurements:
        shapes.setdefault(var, list(TASK_INPUT[task]))
    return (
        "import builtins as _grader_builtins_\n"
        "try:\n"
        f"    _grader_builtins_.exec({body!r}, {{'__builtins__': _grader_builtins_, "
        f"'__name__': 'grader_epilogue', '_USER_NS': _grader_builtins_.globals(), "
        f"'_VARS': {variables!r}, '_MODELS': {models!r}, '_SHAPES': {shapes!r}}})\n"
        "finally:\n"
        "    del _grader_builtins_\n"
    )


# --------------------------------------------------------------------------
# Grader side: validation and decoding of answers (pure)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Refused:
    """An answer that is not a plain value: never compared."""
    type_name: str
    why: str | None = None


def check_value(v: Any, depth: int = 0) -> str | None:
    """``None`` if ``v`` is a well-formed encoded value, else what is wrong."""
    if depth > MAX_DEPTH:
        return "nested too deeply"
    if v is None or isinstance(v, (bool, str)):
        return None
    if isinstance(v, int):
        return None
    if isinstance(v, float):
        return None if math.isfinite(v) else "a bare non-finite float"
    if isinstance(v, list):
        for x in v:
            why = check_value(x, depth + 1)
            if why:
                return why
        return None
    if isinstance(v, dict):
        if len(v) == 2 and set(v) == {"refused", "why"} or len(v) == 1 and "refused" in v:
            ok = isinstance(v["refused"], str) and isinstance(v.get("why", ""), str)
            return None if ok else "a malformed refusal"
        if len(v) != 1:
            return "an unknown object"
        (k, x), = v.items()
        if k in ("tuple", "set"):
            return check_value(x, depth + 1) if isinstance(x, list) else f"a malformed {k}"
        if k == "float":
            return None if x in ("nan", "inf", "-inf") else "a malformed float"
        if k == "dict":
            if not isinstance(x, dict):
                return "a malformed dict"
            for y in x.values():
                why = check_value(y, depth + 1)
                if why:
                    return why
            return None
        return "an unknown object"
    return f"a {type(v).__name__}"


def validate_answer(v: Any) -> Any:
    """The encoded answer if it is well-formed and small enough, else a refusal."""
    try:
        size = len(json.dumps(v, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        return {"refused": "unreadable", "why": f"not JSON: {exc}"[:200]}
    if size > MAX_ANSWER_BYTES:
        return {"refused": "unreadable", "why": f"{size} bytes, more than {MAX_ANSWER_BYTES}"}
    try:
        why = check_value(v)
    except RecursionError:
        why = "nested too deeply"
    return v if why is None else {"refused": "unreadable", "why": why}


def decode_value(v: Any) -> Any:
    """Encoded (validated) value -> Python: tuple, frozenset, nan/inf, dict, :class:`Refused`."""
    if isinstance(v, list):
        return [decode_value(x) for x in v]
    if isinstance(v, dict):
        if "refused" in v:
            return Refused(str(v["refused"]), v.get("why"))
        (k, x), = v.items()
        if k == "tuple":
            return tuple(decode_value(y) for y in x)
        if k == "set":
            items = [decode_value(y) for y in x]
            try:
                return frozenset(items)
            except TypeError:  # unhashable members (lists): keep the list
                return Refused("set", "unhashable members")
        if k == "float":
            return float(x)
        if k == "dict":
            return {kk: decode_value(y) for kk, y in x.items()}
    return v


# --------------------------------------------------------------------------
# Grader side: collect
# --------------------------------------------------------------------------

def read_no_link(path: Path, max_bytes: int) -> str:
    """The text of the regular file ``path``, opened without following a link (one swapped
    in after :func:`regular_file_problem` looked, by a process the sandbox left behind)
    and read up to ``max_bytes``; OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            raise OSError(f"{path.name}: not a regular file of at most {max_bytes} bytes")
        return fh.read(max_bytes + 1)[:max_bytes].decode("utf-8")


def regular_file_problem(path: Path, root: Path, max_bytes: int) -> str | None:
    """Why ``path`` must not be read (a link, outside ``root``, too big...), or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot stat: {exc}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a link?)"
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            return "outside the work dir"
    except OSError as exc:
        return f"cannot resolve: {exc}"
    if st.st_size > max_bytes:
        return f"{st.st_size} bytes, more than {max_bytes}"
    return None


def _group(nb) -> tuple[list[str] | None, str | None]:
    cells = [c for c in nb.get("cells", [])
             if isinstance(c.get("metadata", {}).get("grader"), dict)
             and c["metadata"]["grader"].get("group")]
    if not cells:
        return None, "no group cell (metadata grader.group) in the notebook"
    source = cells[0].get("source", "")
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return None, f"the group cell is not valid Python ({exc.msg}, line {exc.lineno})"
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "GROUP"):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None, "GROUP is not a plain list of names"
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
                return None, "GROUP is not a list of names (strings)"
            return [" ".join(x.split()) for x in value if x.strip()][:10], None
    return None, "the group cell has no `GROUP = [...]`"


def _texts(nb, assignment: "Assignment") -> dict[str, str]:
    wanted = {q.cell for q in assignment.questions if q.kind == "text" and q.cell}
    found: dict[str, list[str]] = {}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("grader")
        if cell.get("cell_type") != "markdown" or not isinstance(meta, dict):
            continue
        tag = meta.get("answer")
        if isinstance(tag, str) and tag in wanted:
            found.setdefault(tag, []).append(str(cell.get("source", "")))
    return {tag: "\n\n".join(parts)[:MAX_TEXT_CHARS] for tag, parts in found.items()}


def _figures(nb) -> tuple[list[dict], int]:
    figures, skipped = [], 0
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            png = (out.get("data") or {}).get("image/png") if isinstance(out, dict) else None
            if png is None:
                continue
            if isinstance(png, list):
                png = "".join(png)
            png = "".join(str(png).split())
            if len(figures) >= MAX_FIGURES or len(png) > MAX_FIGURE_BYTES:
                skipped += 1
                continue
            figures.append({"cell": i, "png": png})
    return figures, skipped


def empty_evidence(status: str, message: str | None = None) -> dict[str, Any]:
    """Evidence of a notebook that left none (not run, unreadable, a grader error): no
    answers, texts, errors or measurements; ``status`` and ``message`` say why."""
    return {"status": status, "message": message, "answers": {}, "texts": {}, "errors": [],
            "measurements": {}}


def collect(result: "ExecutionResult", workdir: str | os.PathLike,
            assignment: "Assignment") -> dict[str, Any]:
    """The evidence of one run, JSON-safe.  Never raises for bad input.

    Keys: ``status``, ``message``, ``seconds``, ``startup_seconds``, ``cell_seconds``,
    ``isolation``, ``errors`` (cell, ename, evalue, traceback tail), ``epilogue_error``,
    ``answers`` (var -> encoded value, validated; absent: no such variable),
    ``evidence_error`` (why the evidence file could not be used, or None), ``texts``
    (text question cell tag -> markdown source), ``group`` (list of names or None),
    ``group_error``, ``figures`` (``[{"cell", "png"}]`` base64), ``figures_skipped``,
    ``models`` (var -> ``{"state", "config"}`` or ``{"onnx"}`` absolute paths, or ``{"error"}``).
    """
    root = Path(workdir)
    nb = result.notebook if result.notebook is not None else {}
    ev: dict[str, Any] = {
        "status": result.status,
        "message": result.message,
        "seconds": result.seconds,
        "snapshot_seconds": result.snapshot_seconds,
        "startup_seconds": result.startup_seconds,
        "cell_seconds": list(result.cell_seconds),
        "isolation": result.isolation,
        "errors": [asdict(e) for e in result.errors],
        "epilogue_error": result.epilogue_error,
        "truncated_cells": list(result.truncated_cells),
        "answers": {},
        "models": {},
        "evidence_error": None,
    }
    not_reached = None
    if result.status in ("timeout", "dead") and result.stopped_cell is not None:
        ev["stopped"] = {"cell": result.stopped_cell, "snapshot_cell": result.snapshot_cell,
                         "why": "timeout" if result.status == "timeout" else "kernel died"}
        not_reached = stopped_note(ev)
    group, why = _group(nb)
    ev["group"], ev["group_error"] = group, why
    ev["texts"] = _texts(nb, assignment)
    ev["figures"], ev["figures_skipped"] = _figures(nb)

    model_vars = list(dict.fromkeys(m[0] for m in assignment.measurements))
    raw: dict = {}
    why = regular_file_problem(root / EVIDENCE_FILE, root, MAX_EVIDENCE_BYTES)
    if why is None:
        try:
            raw = json.loads(read_no_link(root / EVIDENCE_FILE, MAX_EVIDENCE_BYTES))
            if not isinstance(raw, dict):
                raw, why = {}, "not a JSON object"
        except (OSError, ValueError, RecursionError) as exc:
            raw, why = {}, f"not readable JSON ({type(exc).__name__}: {exc})"[:300]
    if why is not None:
        ev["evidence_error"] = (f"{EVIDENCE_FILE}: {why}"
                                + (f" (epilogue: {result.epilogue_error.splitlines()[0]})"
                                   if result.epilogue_error else ""))
    answers = raw.get("answers") if isinstance(raw.get("answers"), dict) else {}
    for var in assignment.answer_variables:
        if var in answers:
            ev["answers"][var] = validate_answer(answers[var])
    models = raw.get("models") if isinstance(raw.get("models"), dict) else {}
    for var in model_vars:
        entry = models.get(var)
        if not_reached and (not isinstance(entry, dict) or entry.get("missing")):
            ev["models"][var] = {"error": not_reached}
        elif not isinstance(entry, dict):
            ev["models"][var] = {"error": ev["evidence_error"] or "the model was not exported"}
        elif "error" in entry:
            ev["models"][var] = {"error": str(entry["error"])[:500]}
        elif "onnx" in entry:
            ev["models"][var] = {"onnx": str(root / MODELS_DIR / f"{var}.onnx")}
        else:
            # Never trust the paths the kernel wrote: the grader knows where they go.
            ev["models"][var] = {"state": str(root / MODELS_DIR / f"{var}.pt"),
                                 "config": str(root / MODELS_DIR / f"{var}.json")}
    if not ev["message"] and result.status in ("ok", "errors"):
        ev["message"] = _notes(ev) or None
    return ev


def stopped_note(evidence: dict[str, Any]) -> str | None:
    """"not reached: the notebook stopped in cell N (timeout | kernel died)" for the
    evidence of a run that stopped early, else None."""
    stopped = evidence.get("stopped")
    if not isinstance(stopped, dict):
        return None
    return f"not reached: the notebook stopped in cell {stopped.get('cell')} ({stopped.get('why')})"


def _notes(ev: dict[str, Any]) -> str:
    """What a run that finished still got wrong, in one line: answers refused, models
    not exported, no evidence at all."""
    notes = []
    if ev.get("evidence_error"):
        notes.append(ev["evidence_error"])
    for var, v in ev.get("answers", {}).items():
        if isinstance(v, dict) and "refused" in v:
            why = f" ({v['why']})" if v.get("why") else ""
            notes.append(f"answer {var!r} refused: a {v['refused']}, not a plain value{why}")
    for var, m in ev.get("models", {}).items():
        if "error" in m and m["error"] != ev.get("evidence_error"):
            notes.append(f"model {var!r} not exported: {m['error']}")
    text = "; ".join(notes)
    return text if len(text) <= 500 else text[:499] + "…"
