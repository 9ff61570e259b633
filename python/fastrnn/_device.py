# SPDX-License-Identifier: MIT
"""Arrays on a CUDA device, for the CUDA path of the functional API.

Any CUDA array — a torch tensor, a CuPy array, a JAX array, anything with
__cuda_array_interface__ or a CUDA __dlpack__ — is viewed as a torch tensor without a copy;
outputs are allocated with torch on the same device and go back to the caller's array type
through DLPack. PyTorch is therefore what the CUDA path needs besides the compiled `_cuda`
module. Not here: argument rules (`_api.py`), kernels (`csrc/cuda/`).
"""

_KDL_CUDA, _KDL_CUDA_MANAGED = 2, 13
DTYPES = ("float32", "float64", "float16", "bfloat16")


def is_device_array(a):
    """True for an array that lives in CUDA device memory."""
    if type(a).__module__.split(".")[0] == "torch" and hasattr(a, "is_cuda"):
        return bool(a.is_cuda)
    if hasattr(a, "__cuda_array_interface__"):
        return True
    device = getattr(a, "__dlpack_device__", None)
    if callable(device):
        try:
            return int(device()[0]) in (_KDL_CUDA, _KDL_CUDA_MANAGED)
        except Exception:  # noqa: BLE001 - an object that cannot say is not a device array
            return False
    return False


def torch_module():
    try:
        import torch
    except ImportError:
        raise TypeError("the CUDA path needs PyTorch (pip install torch) to allocate its outputs; "
                        "it is not installed") from None
    return torch


def as_tensor(a, name):
    """A torch view of the CUDA array `a` (no copy), detached from autograd."""
    torch = torch_module()
    if isinstance(a, torch.Tensor):
        t = a
    elif hasattr(a, "__cuda_array_interface__"):
        t = torch.as_tensor(a, device="cuda")
    elif hasattr(a, "__dlpack__"):
        t = torch.from_dlpack(a)
    else:
        raise TypeError(f"{name}: expected a CUDA array (torch, CuPy, JAX or any object with "
                        f"__cuda_array_interface__ or __dlpack__), got {type(a).__name__}")
    if not t.is_cuda:
        raise TypeError(f"{name}: expected an array on a CUDA device like x, got one on {t.device}")
    return t.detach()


def dtype_name(t):
    return dtype_name_of(t.dtype)


def dtype_name_of(dtype):
    return str(dtype).replace("torch.", "")


def pointer(t):
    return 0 if t is None else int(t.data_ptr())


def current_stream(like, device):
    """The caller's current stream on `device`: CuPy's for CuPy arrays, else torch's."""
    if type(like).__module__.split(".")[0] == "cupy":
        import cupy

        return int(cupy.cuda.get_current_stream().ptr)
    return int(torch_module().cuda.current_stream(device).cuda_stream)


def wrap_like(t, like):
    """t (a torch tensor) as the caller's array type."""
    torch = torch_module()
    if t is None or isinstance(like, torch.Tensor):
        return t
    module = type(like).__module__.split(".")[0]
    try:
        import importlib

        if module in ("jax", "jaxlib"):  # JAX arrays are jaxlib types; jax.numpy converts
            import jax.numpy as jnp

            return jnp.from_dlpack(t)
        from_dlpack = getattr(importlib.import_module(module), "from_dlpack", None)
        return from_dlpack(t) if from_dlpack else t
    except Exception:  # noqa: BLE001 - anything else gets the torch tensor
        return t
