# SPDX-License-Identifier: MIT
"""Which engines this installation has, and the choice between them.

Imports the compiled extension defensively: a missing or broken `_core` means the NumPy
reference is used (with one warning) and `backends()` says why; it never means a failed
`import fastrnn`. Not here: argument handling (that is `_api.py`).
"""

import importlib
import numbers
import os
import warnings

try:
    # scipy_openblas32 loads libscipy_openblas.so into the process; an editable install's
    # extension finds it that way (a wheel's finds it through its RPATH as well).
    import scipy_openblas32  # noqa: F401

    from . import _core
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _core = None
    _core_error = f"{type(exc).__name__}: {exc}"
else:
    _core_error = None

_NAMES = ("cpu", "cuda", "reference")
_warned_fallback = False
_cuda_state = None  # (module or None, reason) once looked up


def cuda_module():
    """The compiled CUDA module, imported on first use (CPU users never load CUDA libraries),
    and why it is unavailable when it is: returns (module or None, reason or None)."""
    global _cuda_state
    if _cuda_state is None:
        try:
            _cuda = importlib.import_module(f"{__package__}._cuda")
        except ImportError as exc:
            _cuda_state = (None, _cuda_import_failure(exc))
        else:
            _cuda_state = (_cuda, None if _cuda.devices() else "no CUDA device is visible")
    return _cuda_state


NO_CUDA_PATH = ("this build has no CUDA path (built without nvcc/cuBLAS, or with FASTRNN_CUDA=OFF); "
                "to build it: FASTRNN_CUDA=ON pip install \".[cuda]\" (README.md, CUDA)")


def _cuda_import_failure(exc):
    """Why `fastrnn._cuda` did not import, for backends()["cuda"]["reason"]. No module file at
    all is the normal state of a CPU-only build and is said plainly; a compiled module that
    fails to load (a missing libcublas.so.13, an undefined symbol) keeps its exception, since
    that is a broken installation the user has to see."""
    if isinstance(exc, ModuleNotFoundError) and exc.name == f"{__package__}._cuda":
        return NO_CUDA_PATH
    return f"the compiled CUDA module fastrnn._cuda failed to import: {type(exc).__name__}: {exc}"


def _available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def set_num_threads(n):
    """Set the number of threads the CPU engine uses (default: the cores available to this
    process, or the environment variable FASTRNN_NUM_THREADS)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"set_num_threads: expected an int n >= 1, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: expected n >= 1, got {n}")
    if _core is not None:
        _core.set_num_threads(int(n))


def _threads_from_env():
    value = os.environ.get("FASTRNN_NUM_THREADS")
    if value is None:
        return _available_cores()
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"FASTRNN_NUM_THREADS: expected an integer >= 1, got {value!r}")
    return n


if _core is not None:
    set_num_threads(_threads_from_env())


def backends():
    """What this installation can run: {"cpu": {...}, "cuda": {...}, "reference": {...}}.

    Each entry has "available". "cpu" also reports the pointwise kernels' instruction set
    ("simd"), the BLAS ("blas") and the thread count ("threads"); "cuda" reports "compiled"
    and "devices"; an unavailable engine says why under "reason".
    """
    if _core is not None:
        cpu = {
            "available": True,
            "simd": _core.simd_level(),
            "blas": _core.blas_info(),
            "threads": _core.num_threads(),
            "dtypes": ["float32", "float64"],
        }
    else:
        cpu = {"available": False, "reason": _core_error}
    return {
        "cpu": cpu,
        "cuda": _cuda_report(),
        "reference": {"available": True, "dtypes": ["float32", "float64"]},
    }


def _cuda_report():
    module, why = cuda_module()
    report = {"available": module is not None and why is None, "compiled": module is not None,
              "devices": module.devices() if module is not None else []}
    if module is not None:
        report["dtypes"] = ["float32", "float64", "float16", "bfloat16"]
        report["runtime_version"] = module.runtime_version()
    if why:
        report["reason"] = why
    return report


def resolve(backend, on_device=False):
    """The engine name to run for `backend` (None, "cpu", "cuda" or "reference") when x is
    (on_device=True) or is not a CUDA array."""
    global _warned_fallback
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend: expected None or one of {_NAMES}, got {type(backend).__name__}")
    if backend is not None and backend not in _NAMES:
        raise ValueError(f"backend: expected None or one of {_NAMES}, got {backend!r}")
    if backend == "cuda" or (backend is None and on_device):
        module, why = cuda_module()
        if why is not None:
            if backend == "cuda":
                raise ValueError(f"backend: 'cuda' is not available: {why}")
            raise TypeError(f"x: a CUDA array, but the CUDA path is not available ({why}); "
                            "move the arrays to the host or install a CUDA build")
        if not on_device:
            raise TypeError("x: expected a CUDA array for backend='cuda', got a host array")
        return "cuda"
    if on_device:
        raise TypeError(f"x: expected a host array for backend={backend!r}, got a CUDA array")
    if backend is None:
        if _core is not None:
            return "cpu"
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(
                f"fastrnn: the compiled engine is not available ({_core_error}); "
                "using the NumPy reference, which is much slower",
                RuntimeWarning,
                stacklevel=3,
            )
        return "reference"
    if backend == "cpu" and _core is None:
        raise ValueError(f"backend: 'cpu' is not available in this installation ({_core_error})")
    return backend
