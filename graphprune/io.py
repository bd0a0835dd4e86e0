"""Reading and writing ONNX models (and reports) safely.

Loading validates everything a user can get wrong and turns each failure into an
:class:`~graphprune.errors.InputError` with a one-line message.  The input file and
its external data are only ever opened for reading.

Saving is atomic: bytes go to a hidden temporary file in the target folder, are
fsynced, and are then renamed onto the target, so a crash or a failure never leaves
a half-written model behind.  Serialization is deterministic: the same model gives
the same bytes.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from .errors import InputError, OutputError, UsageError

# Highest IR version the onnxruntime this project targets (1.31) reads; onnx 1.23
# writes IR 14 by default, which it refuses.
ORT_MAX_IR = 13
# IR version every supported onnxruntime (>= 1.18) reads; good for opsets <= 21.
_SAFE_IR = 10

# A protobuf message cannot exceed 2 GiB; above this size we switch to external data.
MAX_PROTOBUF_BYTES = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = int(1.8e9)
# Tensors smaller than this stay inside the model file when external data is used.
_EXTERNAL_MIN_BYTES = 1024
# Large tensors are aligned in the sidecar so that it can be memory-mapped.
_ALIGN_MIN_BYTES = 1 << 20
_ALIGN = 1 << 16

# Bits per element of the sub-byte tensor types whose packing is one element
# after another (no padding between elements).
_SUBBYTE_BITS = {
    onnx.TensorProto.UINT4: 4,
    onnx.TensorProto.INT4: 4,
    onnx.TensorProto.FLOAT4E2M1: 4,
}
for _name, _bits in (("UINT2", 2), ("INT2", 2)):
    if hasattr(onnx.TensorProto, _name):
        _SUBBYTE_BITS[getattr(onnx.TensorProto, _name)] = _bits


# --------------------------------------------------------------------------- helpers


def _one_line(text: str) -> str:
    """Collapse ``text`` to a single line (messages are shown to users as-is)."""
    return " ".join(str(text).split("\n")).replace("\r", " ").strip()


def first_line(text: str) -> str:
    """The first non-blank line of ``text`` (an exception's message: one line for the user)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip() or "unknown error"


def _checker_message(e: BaseException, limit: int = 400) -> str:
    """The checker's message as one line: a first line that ends mid-sentence (``... of node:``
    followed by the node on the next lines) continues with the lines after it."""
    text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    text = " ".join(text.split())
    return (text[:limit - 3] + "...") if len(text) > limit else (text or "unknown error")


def _in_error(path: str, reason: str) -> InputError:
    return InputError(_one_line(f"cannot load model {path}: {reason}"))


def _out_error(path: str, reason: str) -> OutputError:
    return OutputError(_one_line(f"cannot write {path}: {reason}"))


def _iter_graph_tensors(graph: onnx.GraphProto, sparse: bool = True) -> Iterator[onnx.TensorProto]:
    """Every TensorProto held by ``graph`` and its subgraphs (initializers,
    sparse initializers when ``sparse``, attribute tensors)."""
    yield from graph.initializer
    if sparse:
        for sp in graph.sparse_initializer:
            yield sp.values
            yield sp.indices
    for node in graph.node:
        yield from _iter_node_tensors(node, sparse)


def _iter_node_tensors(node: onnx.NodeProto, sparse: bool = True) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if sparse:
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sp in attr.sparse_tensors:
                yield sp.values
                yield sp.indices
        if attr.HasField("g"):
            yield from _iter_graph_tensors(attr.g, sparse)
        for g in attr.graphs:
            yield from _iter_graph_tensors(g, sparse)


def iter_model_tensors(model: onnx.ModelProto, sparse: bool = True) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in ``model``: graph, subgraphs and local functions
    (including the values and indices of sparse tensors when ``sparse``)."""
    yield from _iter_graph_tensors(model.graph, sparse)
    for fn in model.functions:
        for node in fn.node:
            yield from _iter_node_tensors(node, sparse)


def approx_model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of ``model`` estimated without serializing it (upb's ``ByteSize``
    encodes the whole message, a transient copy of every weight): inline tensor data from
    their dims, plus a generous allowance for the graph structure."""
    total = 0
    for t in iter_model_tensors(model):
        if uses_external_data(t):
            continue
        n = expected_nbytes(t)
        total += (n if n is not None else t.ByteSize()) + 64 + 16 * len(t.dims)
    nodes = len(model.graph.node) + sum(len(f.node) for f in model.functions)
    return total + 512 * nodes + 4096


def expected_nbytes(t: onnx.TensorProto) -> int | None:
    """Bytes the raw data of ``t`` must have, or None where unknown."""
    n = 1
    for d in t.dims:
        n *= int(d)
    if t.data_type in _SUBBYTE_BITS:
        return (n * _SUBBYTE_BITS[t.data_type] + 7) // 8
    if t.data_type in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:  # unknown or exotic type: only bounds are checked
        return None
    if t.data_type in (getattr(onnx.TensorProto, "FLOAT6E2M3", -1),
                       getattr(onnx.TensorProto, "FLOAT6E3M2", -1)):
        return None  # packing not settled; bounds check only
    return n * itemsize


def _is_inside(child: str, folder: str) -> bool:
    child = os.path.normcase(child)
    folder = os.path.normcase(folder)
    return child == folder or child.startswith(folder.rstrip(os.sep) + os.sep)


def _check_external_location(path: str, folder: str, t: onnx.TensorProto) -> None:
    """Validate the external-data reference of ``t`` (model at ``path`` in
    ``folder``); raise InputError when it is unsafe, missing or truncated."""
    info: dict[str, str] = {}
    for entry in t.external_data:
        info[entry.key] = entry.value
    name = t.name or "<unnamed>"
    loc = info.get("location", "")
    if not loc:
        raise _in_error(path, f"tensor {name!r} uses external data but has no location")
    if "\x00" in loc:
        raise _in_error(path, f"tensor {name!r}: invalid external data location")
    if (
        os.path.isabs(loc)
        or loc.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", loc)
    ):
        raise _in_error(
            path, f"tensor {name!r}: external data location {loc!r} is an absolute path (refused)"
        )
    if ".." in re.split(r"[\\/]+", loc):
        raise _in_error(
            path,
            f"tensor {name!r}: external data location {loc!r} points outside the model's folder (refused)",
        )
    full = os.path.join(folder, loc)
    if not _is_inside(os.path.realpath(full), os.path.realpath(folder)):
        raise _in_error(
            path,
            f"tensor {name!r}: external data location {loc!r} resolves outside the model's folder (refused)",
        )
    if not os.path.exists(full):
        raise _in_error(path, f"external data file {loc!r} (tensor {name!r}) not found")
    if not os.path.isfile(full):
        raise _in_error(path, f"external data file {loc!r} (tensor {name!r}) is not a regular file")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise _in_error(path, f"tensor {name!r}: malformed external data offset or length") from None
    if offset < 0 or (length is not None and length < 0):
        raise _in_error(path, f"tensor {name!r}: negative external data offset or length")
    size = os.path.getsize(full)
    expected = expected_nbytes(t)
    if length is None:
        available = size - offset
        if available < 0 or (expected is not None and available < expected):
            raise _in_error(
                path, f"external data file {loc!r} is truncated (tensor {name!r} needs {expected} bytes at offset {offset}, file has {size})"
            )
        if expected is not None and available != expected:
            raise _in_error(
                path, f"external data for tensor {name!r} in {loc!r} has {available} bytes, expected {expected}"
            )
    else:
        if offset + length > size:
            raise _in_error(
                path, f"external data file {loc!r} is truncated (tensor {name!r} needs bytes {offset}..{offset + length}, file has {size})"
            )
        if expected is not None and length != expected:
            raise _in_error(
                path, f"external data for tensor {name!r} has length {length}, expected {expected} for its shape and type"
            )


# --------------------------------------------------------------------------- loading


LAZY_EXTERNAL_BYTES = 1 << 30  # external data above this stays on disk (read on demand)


def _names_read(node: onnx.NodeProto) -> list[str]:
    """Inputs of ``node`` plus every name its subgraphs read (outer-scope names included)."""
    names = [x for x in node.input if x]
    for a in node.attribute:
        for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            for n in g.node:
                names += _names_read(n)
            names += [o.name for o in g.output]
    return names


def sort_nodes(graph: onnx.GraphProto) -> bool:
    """Put the nodes of ``graph`` (and of its subgraphs) in topological order, in place, keeping
    the given order wherever it already works. onnxruntime runs unsorted graphs; the ONNX checker
    and graphprune's passes want them sorted. Names no node of the graph makes (inputs,
    initializers, outer scope) are available from the start. Returns whether anything moved;
    a graph with a cycle is left as it is (the checker then says why)."""
    import heapq

    moved = False
    for n in graph.node:
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                moved = sort_nodes(g) or moved
    nodes = list(graph.node)
    maker = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                maker.setdefault(o, i)
    waits = [0] * len(nodes)
    after: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        deps = {maker[x] for x in _names_read(n) if x in maker and maker[x] != i}
        waits[i] = len(deps)
        for j in deps:
            after[j].append(i)
    ready = [i for i, w in enumerate(waits) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in after[i]:
            waits[j] -= 1
            if waits[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes) or order == list(range(len(nodes))):
        return moved
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return True


def initializer_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the graph inputs that are also initializers (IR < 4 models list every weight
    as an input; some old exporters do it at any IR)."""
    inits = {t.name for t in model.graph.initializer} | {t.values.name for t in model.graph.sparse_initializer}
    return [i.name for i in model.graph.input if i.name in inits]


def drop_initializer_inputs(model: onnx.ModelProto) -> list[str]:
    """Treat initializers that are also graph inputs as constants, in place: drop them from the
    inputs (onnxruntime uses the initializer unless such an input is fed) and raise the IR
    version to 4, from which initializers need not be inputs. Returns the names dropped."""
    names = initializer_inputs(model)
    if names:
        drop = set(names)
        keep = [i for i in model.graph.input if i.name not in drop]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        if model.ir_version < 4:
            model.ir_version = 4
    return names


def _check_in(folder: str, model: onnx.ModelProto) -> None:
    """The ONNX checker on an in-memory model whose external data lives in ``folder``."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        onnx.checker.check_model(model)
    finally:
        os.chdir(here)


def load_model(path: str | os.PathLike, lazy: bool | None = None, notes: list | None = None) -> onnx.ModelProto:
    """Read, validate and return the ONNX model at ``path`` with all external
    data loaded into memory — or, when ``lazy`` (default: external data over 1 GiB),
    left on disk: each external tensor then refers to its file by absolute path and is
    read on demand (:func:`read_tensor`) and copied, streaming, by :func:`save_model`.

    Raises InputError (one-line message) when the file is missing, a folder, empty,
    not an ONNX protobuf, truncated, not a model (no graph / no nodes), fails the
    ONNX checker, or when its external data is missing, truncated, or located
    outside the model's folder.  Neither the file nor its external data is modified.
    Nodes out of topological order are sorted (onnxruntime runs such models); ``notes`` (a
    list) receives a line saying so.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _in_error(path, "file not found")
    if os.path.isdir(path):
        raise _in_error(path, "is a directory, not a model file")
    if not os.path.isfile(path):
        raise _in_error(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _in_error(path, e.strerror or str(e)) from None
    if not data:
        raise _in_error(path, "file is empty")
    if len(data) > MAX_PROTOBUF_BYTES:
        raise _in_error(path, "file is larger than 2 GiB, too large to be an ONNX protobuf")

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        raise _in_error(path, "not an ONNX model (not a valid protobuf, or the file is truncated)") from None
    del data
    if not model.HasField("graph"):
        raise _in_error(path, "not an ONNX model (the protobuf has no graph)")
    if len(model.graph.node) == 0:
        raise _in_error(path, "not an ONNX model (the graph has no nodes)")

    folder = os.path.dirname(os.path.abspath(path))
    external = [t for t in iter_model_tensors(model) if uses_external_data(t)]
    for t in external:
        _check_external_location(path, folder, t)

    resorted = sort_nodes(model.graph)
    if resorted and notes is not None:
        notes.append("the graph's nodes were not in topological order: sorted them (as onnxruntime does)")
    # The checker resolves external-data locations relative to the model's folder
    # only when it is given the path; in memory it would look in the cwd (a sorted copy
    # with external data is checked from the model's folder).
    try:
        if external and resorted:
            _check_in(folder, model)
        else:
            onnx.checker.check_model(path if external else model)
    except Exception as e:
        raise _in_error(path, f"fails the ONNX checker: {_checker_message(e)}") from None

    if external and lazy is None:
        lazy = sum(expected_nbytes(t) or 0 for t in external) > LAZY_EXTERNAL_BYTES
    if external and lazy:
        for t in external:
            for e in t.external_data:
                if e.key == "location":
                    e.value = os.path.realpath(os.path.join(folder, e.value))
        return model
    if external:
        try:
            external_data_helper.load_external_data_for_model(model, folder)
            # onnx's helper skips sparse tensors; load whatever is left.
            for t in iter_model_tensors(model):
                if uses_external_data(t):
                    external_data_helper.load_external_data_for_tensor(t, folder)
            # Loaded tensors look exactly like tensors that were always inline.
            for t in external:
                t.ClearField("data_location")
        except InputError:
            raise
        except Exception as e:
            raise _in_error(path, f"cannot read external data: {first_line(e)}") from None
    return model


def with_static_batch(model: onnx.ModelProto, n: int) -> onnx.ModelProto:
    """A copy of ``model`` whose symbolic batch dimension is ``n`` on every graph input and output
    (``--static-batch``). The batch is the symbol the inputs name like one or use only on their
    first axis (tf2onnx: ``unk__N``). Channels merged into a symbolic batch (tf2onnx's batched
    Einsum: Reshape [B, heads, T, D] -> [B*heads, T, D]) cannot be followed; with a static batch
    they can. Intermediate shapes (``value_info``) are dropped and inferred again."""
    from .inputs import batch_symbols

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"--static-batch must be an integer >= 1, got {n!r}")
    syms = batch_symbols(model)
    if not syms:
        raise UsageError("--static-batch: the graph inputs have no symbolic batch dimension")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in list(out.graph.input) + list(out.graph.output):
        if not vi.type.HasField("tensor_type"):
            continue
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in syms:
                d.Clear()
                d.dim_value = n
    del out.graph.value_info[:]
    return out


def _ext_info(t: onnx.TensorProto) -> dict:
    return {e.key: e.value for e in t.external_data}


def is_lazy(t: onnx.TensorProto) -> bool:
    """An external tensor left on disk by a lazy load (its location is absolute)."""
    return uses_external_data(t) and os.path.isabs(_ext_info(t).get("location", ""))


def read_tensor(t: onnx.TensorProto) -> np.ndarray:
    """The tensor's value, reading lazily loaded external data from its file."""
    if not is_lazy(t):
        return numpy_helper.to_array(t)
    info = _ext_info(t)
    dtype = helper_np_dtype(t.data_type)
    count = int(np.prod(t.dims)) if len(t.dims) else 1
    with open(info["location"], "rb") as f:
        f.seek(int(info.get("offset", "0")))
        arr = np.fromfile(f, dtype=dtype, count=count)
    return arr.reshape(tuple(t.dims))


def helper_np_dtype(data_type: int):
    return onnx.helper.tensor_dtype_to_np_dtype(data_type)


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, inline or external."""
    if uses_external_data(t):
        return expected_nbytes(t) or int(_ext_info(t).get("length", "0"))
    return _tensor_bytes(t)


# --------------------------------------------------------------------------- IR version


def _required_ir(model: onnx.ModelProto) -> int:
    """Smallest IR version the onnx release table pairs with the model's opsets."""
    need = 3
    for imp in model.opset_import:
        dom = imp.domain or "ai.onnx"
        if dom not in ("ai.onnx", "ai.onnx.ml"):
            continue
        col = 2 if dom == "ai.onnx" else 3
        candidates = [row[1] for row in onnx.helper.VERSION_TABLE if row[col] >= imp.version]
        need = max(need, min(candidates) if candidates else onnx.IR_VERSION)
    return need


def target_ir_version(model: onnx.ModelProto) -> int:
    """The IR version :func:`pin_ir_version` would set (the model is not changed)."""
    want = min(max(_SAFE_IR, _required_ir(model)), ORT_MAX_IR)
    cur = int(model.ir_version)
    return min(cur, want) if cur > 0 else want


def pin_ir_version(model: onnx.ModelProto) -> int:
    """Lower ``model.ir_version`` in place to one onnxruntime reads: the smallest of
    the current version, ORT_MAX_IR and max(10, the version the opset needs).
    A model already at or below that is left alone.  Returns the new version."""
    v = target_ir_version(model)
    model.ir_version = v
    return v


# --------------------------------------------------------------------------- saving


def model_to_bytes(model: onnx.ModelProto) -> bytes:
    """Deterministic serialization (same model -> same bytes).  Raises OutputError
    for models too large for one protobuf (save them with external data)."""
    err = OutputError(
        "model is larger than 2 GiB and cannot be serialized into one buffer; save it with external data")
    if approx_model_bytes(model) > MAX_PROTOBUF_BYTES:
        raise err
    try:
        return model.SerializeToString(deterministic=True)
    except ValueError as e:                           # the estimate was low: protobuf's own limit
        raise err from e


def _default_mode(target: str) -> int:
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


def _check_target(path: str) -> tuple[str, str]:
    """(folder, name) of ``path``; OutputError if it cannot be a file target."""
    if not path:
        raise OutputError("cannot write: empty output path")
    absolute = os.path.abspath(path)
    folder, name = os.path.split(absolute)
    if not name or os.path.isdir(absolute):
        raise _out_error(path, "the path is a directory")
    if not os.path.exists(folder):
        raise _out_error(path, f"folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise _out_error(path, f"{folder} is not a folder")
    return folder, name


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_many(jobs: list[tuple[str, Callable[[Any], None]]]) -> None:
    """Write each (path, writer) to a temp file beside ``path``, fsync them all,
    then rename them onto their targets in order.  On failure every temp file is
    removed and OutputError is raised."""
    temps: list[str] = []
    current = jobs[0][0] if jobs else ""
    try:
        staged = []
        for path, writer in jobs:
            current = path
            folder, name = _check_target(path)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + name + ".", suffix=".tmp")
            temps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _default_mode(os.path.abspath(path)))
            staged.append((tmp, os.path.abspath(path)))
        for tmp, target in staged:
            current = target
            os.replace(tmp, target)
            temps.remove(tmp)
        for folder in dict.fromkeys(os.path.dirname(t) for _, t in staged):
            _fsync_dir(folder)
    except OutputError:
        _remove_all(temps)
        raise
    except BaseException as e:
        _remove_all(temps)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(e, OSError):
            reason = e.strerror or str(e)
        else:
            reason = first_line(e)
        raise _out_error(current, reason) from None


def _remove_all(paths: Iterable[str]) -> None:
    for p in list(paths):
        try:
            os.unlink(p)
        except OSError:
            pass


def save_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """Atomically write ``data`` to ``path`` (temp file, fsync, rename)."""
    path = os.fspath(path)
    _atomic_write_many([(path, lambda f: f.write(data))])


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def save_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Atomically write ``obj`` as JSON: insertion order kept, indent 2, trailing
    newline.  numpy scalars and arrays are converted."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    save_bytes_atomic(text.encode("utf-8"), path)


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    n = expected_nbytes(t)
    return n if n is not None else 0


def save_model(
    model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None
) -> None:
    """Atomically and deterministically write ``model`` to ``path``.

    ``external_data``: None -> automatic (external when the model is over 1.8 GB),
    True -> tensors of 1 KiB and more go to the sidecar ``<name>.data`` beside the
    model, False -> everything inline.  With external data the sidecar is written
    first, then the model, each through a temp file and a rename.  ``model`` is
    left as it was.  Raises OutputError (one line) on any failure, leaving no
    temporary files behind.
    """
    path = os.fspath(path)
    folder, name = _check_target(path)
    lazy_bytes = 0
    for t in iter_model_tensors(model):
        if uses_external_data(t):
            if not is_lazy(t):
                raise _out_error(
                    path, f"tensor {t.name!r} still refers to external data that was not loaded"
                )
            lazy_bytes += tensor_nbytes(t)
    size = approx_model_bytes(model) + lazy_bytes
    if lazy_bytes and external_data is False:
        raise _out_error(path, "model data is on disk (lazy load); it must be saved with external data")
    use_external = size > EXTERNAL_DATA_THRESHOLD if external_data is None else bool(external_data)
    if not use_external:
        if size > MAX_PROTOBUF_BYTES:
            raise _out_error(path, "model is larger than 2 GiB; it needs external data")
        data = model.SerializeToString(deterministic=True)
        _atomic_write_many([(path, lambda f: f.write(data))])
        return
    _save_with_external_data(model, os.path.join(folder, name), name + ".data")


class _FileSlice:
    """Bytes of a lazily loaded tensor, copied from its file in chunks when saving."""

    CHUNK = 64 << 20

    def __init__(self, path: str, offset: int, length: int):
        self.path, self.offset, self.length = path, offset, length

    def __len__(self) -> int:
        return self.length

    def copy_to(self, f: Any) -> None:
        with open(self.path, "rb") as src:
            src.seek(self.offset)
            left = self.length
            while left > 0:
                chunk = src.read(min(self.CHUNK, left))
                if not chunk:
                    raise OSError(f"{self.path} is shorter than expected")
                f.write(chunk)
                left -= len(chunk)


def _save_with_external_data(model: onnx.ModelProto, path: str, data_name: str) -> None:
    data_path = os.path.join(os.path.dirname(path), data_name)
    # Pick tensors in a deterministic order (graph walk order); dedupe by identity.
    # Sparse tensors stay inline (onnx's own loader does not read them externally).
    movers: list[onnx.TensorProto] = []
    for t in iter_model_tensors(model, sparse=False):
        if t.data_type == onnx.TensorProto.STRING:
            continue
        if is_lazy(t) or _tensor_bytes(t) >= _EXTERNAL_MIN_BYTES:
            movers.append(t)

    # Lay the sidecar out: (tensor, bytes, offset).
    layout: list[tuple[onnx.TensorProto, bytes, int]] = []
    offset = 0
    for t in movers:
        if is_lazy(t):
            info = _ext_info(t)
            raw = _FileSlice(info["location"], int(info.get("offset", "0")), tensor_nbytes(t))
        else:
            raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
        if len(raw) >= _ALIGN_MIN_BYTES and offset % _ALIGN:
            offset += _ALIGN - offset % _ALIGN
        layout.append((t, raw, offset))
        offset += len(raw)

    def write_data(f: Any) -> None:
        pos = 0
        for _, raw, off in layout:
            if off > pos:
                f.write(b"\0" * (off - pos))
            if isinstance(raw, _FileSlice):
                raw.copy_to(f)
            else:
                f.write(raw)
            pos = off + len(raw)

    # Point the tensors at the sidecar, serialize, and restore them exactly.
    backups: list[tuple[onnx.TensorProto, onnx.TensorProto | None, bytes | None]] = []
    try:
        for t, raw, off in layout:
            if isinstance(raw, _FileSlice):
                orig = onnx.TensorProto()
                orig.CopyFrom(t)
                backups.append((t, orig, None))
            elif t.HasField("raw_data"):
                backups.append((t, None, raw))
                t.ClearField("raw_data")
            else:
                orig = onnx.TensorProto()
                orig.CopyFrom(t)
                backups.append((t, orig, None))
                for field in ("float_data", "int32_data", "string_data", "int64_data",
                              "double_data", "uint64_data"):
                    t.ClearField(field)
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            for k, v in (("location", data_name), ("offset", str(off)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
        if model.ByteSize() > MAX_PROTOBUF_BYTES:
            raise _out_error(path, "model is larger than 2 GiB even with its tensors in external data")
        model_bytes = model.SerializeToString(deterministic=True)
    finally:
        for t, orig, raw in backups:
            if orig is not None:
                t.CopyFrom(orig)
            else:
                del t.external_data[:]
                t.ClearField("data_location")
                t.raw_data = raw
    _atomic_write_many([(data_path, write_data), (path, lambda f: f.write(model_bytes))])


# --------------------------------------------------------------------------- paths


def _same_path(a: str, b: str) -> bool:
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _external_files(model_path: str) -> list[str]:
    """Paths of the external-data files the model at ``model_path`` refers to
    (best effort; unreadable models give [])."""
    try:
        m = onnx.load(model_path, load_external_data=False)
    except Exception:
        return []
    folder = os.path.dirname(os.path.abspath(model_path))
    out = []
    for t in iter_model_tensors(m):
        if uses_external_data(t):
            for e in t.external_data:
                if e.key == "location":
                    out.append(os.path.join(folder, e.value))
    return list(dict.fromkeys(out))


def check_output_path(out: str | os.PathLike, inp: str | os.PathLike | None = None) -> None:
    """Refuse output paths that would overwrite the input or cannot be written.

    UsageError when ``out`` (or its sidecar ``<out>.data``) is the input model or
    one of its external-data files; OutputError when ``out`` is a directory or its
    folder is missing or not writable.
    """
    out = os.fspath(out)
    if inp is not None:
        inp = os.fspath(inp)
        if _same_path(out, inp):
            raise UsageError(_one_line(f"output path {out} is the input model; choose another output path"))
        sidecar = out + ".data"
        if os.path.exists(sidecar):
            for f in [inp] + _external_files(inp):
                if os.path.exists(f) and _same_path(sidecar, f):
                    raise UsageError(
                        _one_line(f"the external data file {sidecar} of output {out} would overwrite the input's data; choose another output path")
                    )
    folder, _ = _check_target(out)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _out_error(out, f"folder {folder} is not writable")
