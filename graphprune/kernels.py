"""graphprune's sparse custom ops for onnxruntime: build, load, and the canonical CSR format.

The C sources live in ``kernels/`` (next to this package in a source checkout; ``kernels/README.md``
is the contract). ``library_path()`` compiles them with the system C compiler on first use into a
cache directory keyed by a hash of the sources, flags and compiler, and returns the shared library's
path; ``session_options()`` gives onnxruntime SessionOptions with the ops registered.

    so = kernels.session_options(threads=1)
    sess = onnxruntime.InferenceSession("model.sparse.onnx", so)

Environment:
  GRAPHPRUNE_CACHE          cache root (default: $XDG_CACHE_HOME/graphprune or ~/.cache/graphprune)
  GRAPHPRUNE_KERNELS_SRC    directory holding the C sources (default: ../kernels next to this package)
  CC                        C compiler (default: cc, gcc or clang, the first found)
  GRAPHPRUNE_KERNELS_ISA    portable | avx2 | avx512: cap the instruction set the kernels use (read when a
                            session creates its kernels; default: the best this CPU has)
  GRAPHPRUNE_KERNELS_LAYOUT csr | sell | nm24 | blkn: force a packed layout when the data allow it
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

from .errors import GraphpruneError

DOMAIN = "ai.graphprune"
OPSET = 1
OPS = ("SparseMatMul", "SparseConv")
LIB_NAME = "libgraphprune_kernels.so"
SOURCES = ("gp_ort.h", "gp_common.h", "gp_kernels.h", "gp_simd.h", "gp_ops.c", "gp_portable.c", "gp_avx2.c", "gp_avx512.c")
CFLAGS = ("-O3", "-std=c11", "-D_GNU_SOURCE", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall")
LDFLAGS = ("-lpthread",)


class KernelsError(GraphpruneError):
    """The sparse-kernel library cannot be built or loaded."""
    exit_code = 1


# ---------------------------------------------------------------------------------------- build

def source_dir() -> Path:
    """Directory holding the C sources (kernels/ of the source tree)."""
    env = os.environ.get("GRAPHPRUNE_KERNELS_SRC")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parent / "kernels", here / "_kernels"]
    for c in candidates:
        if all((c / s).is_file() for s in SOURCES):
            return c
    raise KernelsError(
        "graphprune's sparse-kernel C sources were not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); install graphprune from a source checkout (pip install -e .) or set GRAPHPRUNE_KERNELS_SRC "
          "to its kernels/ directory")


def cache_root() -> Path:
    env = os.environ.get("GRAPHPRUNE_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "graphprune"


def find_compiler() -> str:
    cands = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for c in cands:
        p = shutil.which(c)
        if p:
            return p
    raise KernelsError(
        f"no C compiler found (tried {', '.join(cands)}): graphprune's sparse kernels are built from C "
        "sources on first use; install gcc (e.g. apt-get install gcc) or set CC")


def _compiler_id(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return cc + "\n" + (out.splitlines()[0] if out else "")


def _cached_build(key: bytes, lib_name: str, cache: Optional[os.PathLike], what: str, tool: str, compile_fn) -> Path:
    """Runs ``compile_fn(tmp_path, scratch_dir)`` unless the cache holds a build with this key; the result is
    renamed into ``<cache>/kernels/<hash>/<lib_name>`` so concurrent builders never see a partial library."""
    out_dir = (Path(cache) if cache is not None else cache_root()) / "kernels" / hashlib.sha256(key).hexdigest()[:16]
    lib = out_dir / lib_name
    if lib.is_file():
        return lib
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KernelsError(f"cannot create the kernel cache directory {out_dir}: {e.strerror}") from None
    print(f"graphprune: building the {what} with {tool} into {lib}", file=sys.stderr, flush=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix=".obj-", dir=out_dir) as scratch:
            compile_fn(tmp, scratch)
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _run_compiler(cmd: Sequence[str], what: str) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip().splitlines()
        first = next((line for line in err if "error" in line), err[0] if err else "")
        raise KernelsError(f"building the {what} failed ({os.path.basename(cmd[0])} exit {r.returncode}): {first}")


def _source_key(src: Path, files: Iterable[str]) -> bytes:
    h = hashlib.sha256()
    for s in files:
        h.update(s.encode() + b"\0" + (src / s).read_bytes() + b"\0")
    return h.digest()


def build(defines: Sequence[str] = (), cache: Optional[os.PathLike] = None, opt: str = "-O3") -> Path:
    """Compile the CPU library (unless the cache already holds this exact build); returns its path.

    ``defines``: extra ``NAME=VALUE`` preprocessor definitions (tests use ``GP_ORT_API_VERSION``).
    ``cache``: cache root instead of :func:`cache_root`. ``opt``: the optimization flag (tests build -O0).
    """
    src = source_dir()
    cc = find_compiler()
    flags = [opt if f == "-O3" else f for f in CFLAGS] + [f"-D{d}" for d in defines]
    key = _source_key(src, SOURCES) + "\0".join(flags + list(LDFLAGS)).encode() + _compiler_id(cc).encode()

    def compile_fn(tmp, scratch):
        _run_compiler([cc, *flags, "-o", tmp, *[str(src / s) for s in SOURCES if s.endswith(".c")], *LDFLAGS],
                      "sparse kernels")
    return _cached_build(key, LIB_NAME, cache, "sparse kernels", os.path.basename(cc), compile_fn)


CUDA_SOURCES = ("cuda/gp_cuda.cu",)
CUDA_LIB_NAME = "libgraphprune_kernels_cuda.so"
# sm_80 (A100) and sm_90 (H100/H200) code, plus PTX that newer GPUs compile at load
CUDA_ARCH = ("-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=[sm_90,compute_90]")


def find_nvcc() -> str:
    cands = [os.environ["NVCC"]] if os.environ.get("NVCC") else ["nvcc", "/usr/local/cuda/bin/nvcc"]
    for c in cands:
        p = shutil.which(c)
        if p:
            return p
    raise KernelsError(f"nvcc not found (tried {', '.join(cands)}): the CUDA kernels need the CUDA toolkit; "
                       "the CPU kernels (graphprune.kernels.library_path()) do not")


def build_cuda(cache: Optional[os.PathLike] = None) -> Path:
    """Compile the CUDA library: the CPU ops plus the same ops for CUDAExecutionProvider, in one library
    (register it instead of the CPU one). Needs nvcc (and a C compiler); running needs an NVIDIA GPU and
    onnxruntime-gpu. cudart is linked statically."""
    src = source_dir()
    cc = find_compiler()
    nvcc = find_nvcc()
    for s in CUDA_SOURCES:
        if not (src / s).is_file():
            raise KernelsError(f"CUDA kernel source {src / s} not found")
    cflags = [f for f in CFLAGS if f != "-shared"] + ["-DGP_WITH_CUDA", "-c"]
    arch = tuple(os.environ["GRAPHPRUNE_CUDA_ARCH"].split()) if os.environ.get("GRAPHPRUNE_CUDA_ARCH") else CUDA_ARCH
    nvflags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden", *arch, "-c"]
    key = (_source_key(src, SOURCES + CUDA_SOURCES) + "\0".join(cflags + nvflags).encode()
           + _compiler_id(cc).encode() + _compiler_id(nvcc).encode())

    def compile_fn(tmp, scratch):
        objs = []
        for s in SOURCES:
            if s.endswith(".c"):
                o = os.path.join(scratch, s[:-2] + ".o")
                _run_compiler([cc, *cflags, "-o", o, str(src / s)], "CUDA kernels (host part)")
                objs.append(o)
        for s in CUDA_SOURCES:
            o = os.path.join(scratch, os.path.basename(s)[:-3] + ".o")
            _run_compiler([nvcc, *nvflags, "-o", o, str(src / s)], "CUDA kernels")
            objs.append(o)
        _run_compiler([nvcc, "-shared", "-cudart", "static", "-o", tmp, *objs, "-lpthread"], "CUDA kernels (link)")
    return _cached_build(key, CUDA_LIB_NAME, cache, "CUDA sparse kernels", "nvcc", compile_fn)


_LIB: Optional[Path] = None
_CUDA_LIB: Optional[Path] = None


def library_path(cuda: bool = False) -> str:
    """Path of the compiled custom-op library (built on first use); ``cuda=True``: the CUDA one."""
    global _LIB, _CUDA_LIB
    if cuda:
        if _CUDA_LIB is None or not _CUDA_LIB.is_file():
            _CUDA_LIB = build_cuda()
        return str(_CUDA_LIB)
    if _LIB is None or not _LIB.is_file():
        _LIB = build()
    return str(_LIB)


def register(so, path: Optional[str] = None):
    """Register the ops on an existing onnxruntime SessionOptions; returns it."""
    try:
        so.register_custom_ops_library(path or library_path())
    except Exception as e:  # onnxruntime raises its own exception types
        raise KernelsError(f"loading the sparse kernels failed: {' '.join(str(e).split())}") from None
    return so


def session_options(threads: int = 1, so=None, cuda: bool = False):
    """onnxruntime SessionOptions with graphprune's ops registered. A new one gets intra-op threads =
    ``threads`` (the ops run multi-threaded on that same pool); a given ``so`` is registered on and
    returned with its own settings kept. ``cuda=True`` registers the CUDA library (CPU and
    CUDAExecutionProvider kernels); create the session with providers=["CUDAExecutionProvider", ...]."""
    import onnxruntime as ort
    if so is None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return register(so, library_path(cuda=cuda))


def explain_load_error(exc: BaseException) -> Optional[str]:
    """If onnxruntime failed because the model uses graphprune's ops and they were not registered,
    return a message that says how to load them; otherwise None."""
    msg = " ".join(str(exc).split())
    if DOMAIN in msg or any(op in msg for op in OPS):
        return (f"this model uses graphprune's sparse ops (domain {DOMAIN}), which onnxruntime does not know "
                f"by itself: create the session with graphprune.kernels.session_options(), or call "
                f"SessionOptions.register_custom_ops_library(path) with the path `graphprune kernels` prints "
                f"(or run `graphprune densify` to get a standard ONNX model). onnxruntime said: {msg}")
    return None


def uses_kernels(model) -> bool:
    """True when an onnx ModelProto (or its graph) has a node in graphprune's domain."""
    g = getattr(model, "graph", model)
    return any(n.domain == DOMAIN for n in g.node)


def library_info(path: Optional[str] = None) -> str:
    """The instruction set the kernels choose on this CPU and the C API version they need."""
    import ctypes
    lib = ctypes.CDLL(path or library_path())
    lib.GraphpruneKernelsInfo.restype = ctypes.c_char_p
    return lib.GraphpruneKernelsInfo().decode()


# ---------------------------------------------------------------------------------------- format

def pack_csr(w_rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense ``[N, K]`` weight (one row per output; zeros are pruned) -> canonical CSR over the outputs:
    ``values`` float32 [nnz], ``indices`` int32 [nnz] (ascending within an output), ``indptr`` int32 [N+1]."""
    w = np.asarray(w_rows)
    if w.ndim != 2:
        raise ValueError(f"pack_csr expects a 2-D [N, K] array, got shape {w.shape}")
    nz = w != 0
    rows, cols = np.nonzero(nz)  # row-major order: outputs in order, k ascending within one
    indptr = np.zeros(w.shape[0] + 1, dtype=np.int64)
    np.cumsum(nz.sum(axis=1), out=indptr[1:])
    if indptr[-1] > np.iinfo(np.int32).max:
        raise ValueError("too many nonzeros for int32 indices")
    return (w[rows, cols].astype(np.float32), cols.astype(np.int32), indptr.astype(np.int32))


def unpack_csr(values: np.ndarray, indices: np.ndarray, indptr: np.ndarray, K: int) -> np.ndarray:
    """Canonical CSR -> dense ``[N, K]`` float32 (one row per output)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    n = len(indptr) - 1
    w = np.zeros((n, int(K)), dtype=np.float32)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    w[rows, np.asarray(indices, dtype=np.int64)] = np.asarray(values, dtype=np.float32)
    return w


def single_op_model(op: str, w_rows: np.ndarray, bias: Optional[np.ndarray] = None, x_shape: Sequence = ("M", None),
                    pattern: int = 0, pattern_n: int = 0, pattern_m: int = 0, block_k: int = 1, block_n: int = 1,
                    repeat: int = 1, weights_as_inputs: bool = False):
    """A model with one graphprune op (``repeat`` times on the same input, outputs summed into one when
    > 1; benchmarks use that to amortize sess.run overhead). ``w_rows`` is the dense [N, K] weight.
    ``x_shape``: X's shape, None standing for K (MatMul: last dim; Conv: dim 1).
    ``weights_as_inputs``: values/indices/indptr/bias become graph inputs instead of initializers."""
    from onnx import TensorProto, helper, numpy_helper
    N, K = w_rows.shape
    vals, idx, ptr = pack_csr(w_rows)
    b = np.zeros(N, np.float32) if bias is None else np.asarray(bias, np.float32)
    xs = [K if d is None else d for d in x_shape]
    ys = list(xs)
    ys[-1 if op == "SparseMatMul" else 1] = N
    tensors = {"values": vals, "indices": idx, "indptr": ptr, "bias": b}
    inits = [] if weights_as_inputs else [numpy_helper.from_array(v, k) for k, v in tensors.items()]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, xs)]
    if weights_as_inputs:
        for k, v in tensors.items():
            et = TensorProto.FLOAT if v.dtype == np.float32 else TensorProto.INT32
            inputs.append(helper.make_tensor_value_info(k, et, list(v.shape)))
    nodes, outs = [], []
    for r in range(repeat):
        o = "Y" if repeat == 1 else f"Y{r}"
        nodes.append(helper.make_node(op, ["X", "values", "indices", "indptr", "bias"], [o], domain=DOMAIN,
                                      K=K, N=N, pattern=pattern, pattern_n=pattern_n, pattern_m=pattern_m,
                                      block_k=block_k, block_n=block_n))
        outs.append(o)
    if repeat > 1:
        nodes.append(helper.make_node("Sum", outs, ["Y"]))
    g = helper.make_graph(nodes, f"{op}_test", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ys)],
                          initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OPSET)],
                             ir_version=8)
