# SPDX-License-Identifier: MIT
"""The public functional API: lstm/gru/rnn forward and backward.

This module owns every parameter decision: validation with messages that name the argument,
defaults (zero initial states), `batch_first`, the flat weight list and its order, layers,
directions, inter-layer dropout, and the choice of engine. The engines themselves (the compiled
`_core`, or `reference.py`) see one layer and one direction at a time, with dense arrays of one
dtype. Nothing here writes into an array the caller passed.

Shapes follow the legend of docs/design.md (T, B, I, H, P, G, D, L); Hout = P if P > 0 else H.
"""

import collections
import contextlib
import numbers
import secrets

import numpy as np

from . import _backends, _device, reference

__all__ = [
    "RNNOutput",
    "RNNGrads",
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
    "rnn_forward",
    "rnn_backward",
]

RNNOutput = collections.namedtuple("RNNOutput", ["y", "h_n", "c_n", "saved"])
RNNOutput.__doc__ = """Result of a forward call.

y      (T, B, D*Hout), or (B, T, D*Hout) with batch_first
h_n    (D*L, B, Hout): final hidden state, layer-major then direction, as torch
c_n    (D*L, B, H): final cell state (LSTM; None for GRU and RNN)
saved  what backward needs (only when training=True, else None); opaque
"""
RNNGrads = collections.namedtuple("RNNGrads", ["dx", "dh0", "dc0", "dweights"])
RNNGrads.__doc__ = """Result of a backward call: gradients of x, h0, c0 (LSTM; else None) and
of every weight, in the order and shapes of the `weights` given to forward."""


# ----------------------------------------------------------------------------------------------
# Cells: what differs between LSTM, GRU and RNN at the API level


class _Cell:
    """One cell variant: its gate count, its engine id, and its reference functions."""

    def __init__(self, name, gates, kind, **reference_kwargs):
        self.name = name  # "lstm" | "gru" | "rnn"
        self.gates = gates  # G
        self.kind = kind  # fastrnn._core.CellKind value
        self.has_c = name == "lstm"
        self.reference_kwargs = reference_kwargs

    def reference_forward(self, x, w, h0, c0, lengths, reverse):
        w_ih, w_hh, b_ih, b_hh, w_hr = w
        if self.has_c:
            return reference.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, w_hr)
        fn = reference.gru_forward if self.name == "gru" else reference.rnn_forward
        y, h_n, cache = fn(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, **self.reference_kwargs)
        return y, h_n, None, cache

    def reference_backward(self, cache, dy, dh_n, dc_n):
        if self.has_c:
            dx, dh0, dc0, *dw = reference.lstm_backward(dy, dh_n, dc_n, cache)
            return dx, dh0, dc0, dw
        fn = reference.gru_backward if self.name == "gru" else reference.rnn_backward
        dx, dh0, *dw = fn(dy, dh_n, cache)
        return dx, dh0, None, dw + [None]


_LSTM = _Cell("lstm", 4, 0)
_GRU = {True: _Cell("gru", 3, 1, linear_before_reset=True),
        False: _Cell("gru", 3, 2, linear_before_reset=False)}
_RNN = {"tanh": _Cell("rnn", 1, 3, nonlinearity="tanh"),
        "relu": _Cell("rnn", 1, 4, nonlinearity="relu")}


# ----------------------------------------------------------------------------------------------
# Argument checks. Each message names the argument, what was expected and what was received.


def _to_numpy(a, name):
    """A NumPy view of an array-like (buffer protocol, __array__ or DLPack) on the CPU."""
    if isinstance(a, np.ndarray):
        return a
    device = getattr(a, "__dlpack_device__", None)
    if callable(device):
        try:
            kind, index = device()
        except Exception:  # noqa: BLE001 - an object that cannot say is treated as a host array
            kind, index = 1, 0
        if int(kind) not in (1, 3):  # kDLCPU, kDLCUDAHost
            raise TypeError(
                f"{name}: expected an array in host memory (the CPU engine and the reference run "
                f"there; this build has no CUDA path), got {type(a).__name__} on DLPack device "
                f"type {int(kind)}:{index}"
            )
    try:
        if hasattr(a, "__array__") or hasattr(a, "__array_interface__"):
            return np.asarray(a)
        if hasattr(a, "__dlpack__"):
            return np.from_dlpack(a)
        memoryview(a)  # the buffer protocol
        return np.asarray(a)
    except TypeError as exc:
        raise TypeError(
            f"{name}: expected an array (NumPy, or an object with the buffer protocol, "
            f"__array__ or __dlpack__), got {type(a).__name__}"
            + ("" if str(exc).startswith("memoryview") else f" ({exc})")
        ) from None
    except (RuntimeError, ValueError, BufferError) as exc:
        raise TypeError(f"{name}: cannot be read as a host array: {exc}") from None


def _float_array(a, name, dtype=None):
    """`a` as a NumPy float32/float64 array of the given dtype (the call's dtype, set by x)."""
    arr = _to_numpy(a, name)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {arr.dtype}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(
            f"{name}: expected dtype {np.dtype(dtype)} (all floating inputs of a call share x's "
            f"dtype), got {arr.dtype}"
        )
    return arr


def _time_major(x, batch_first, dtype=None):
    """x as a NumPy float array (T, B, I) of `dtype` (None: its own), a view where it can be;
    x is (B, T, I) with batch_first."""
    xs = _float_array(x, "x", dtype)
    if xs.ndim != 3:
        want = "(B, T, I) with batch_first" if batch_first else "(T, B, I)"
        raise ValueError(f"x: expected 3 dimensions {want}, got shape {xs.shape}")
    return xs.transpose(1, 0, 2) if batch_first else xs


def _expect_shape(arr, shape, name):
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(arr.shape)}")


def _int_option(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _bool_option(value, name):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {value!r}")


def _dropout_option(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"dropout: expected a float in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1], got {value}")
    return float(value)


def _lengths_array(lengths, T, B):
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        # [] is the lengths of B = 0 sequences (NumPy alone would make it float64); a ragged
        # list is no array at all (NumPy raises a ValueError that names nothing)
        try:
            lengths = np.asarray(lengths) if len(lengths) else np.zeros(0, np.int64)
        except ValueError as exc:
            raise TypeError(f"lengths: expected a flat list of ints, got a ragged "
                            f"{type(lengths).__name__} ({exc})") from None
    arr = _to_numpy(lengths, "lengths")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected an integer array, got dtype {arr.dtype}")
    _expect_shape(arr, (B,), "lengths")
    if B and (arr.min() < 0 or arr.max() > T):
        bad = int(np.flatnonzero((arr < 0) | (arr > T))[0])
        raise ValueError(f"lengths: expected values in [0, {T}] (T), got lengths[{bad}]={arr[bad]}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _host_dense(a, copy):
    return np.array(a, order="C", copy=True) if copy else np.ascontiguousarray(a)


def _human_bytes(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


@contextlib.contextmanager
def _memory_for(call, sizes, parts, itemsize):
    """Turn a failed allocation inside the block into a MemoryError that names the call, its
    sizes and the arrays it needs (parts: name -> element count, exact Python ints, so sizes
    past 64 bits are reported rather than overflowing), instead of NumPy's or C++'s bare
    message. Nothing is left half-written: outputs are only returned from a finished block."""
    try:
        yield
    except MemoryError as exc:
        need = ", ".join(f"{name} {_human_bytes(n * itemsize)}" for name, n in parts.items() if n)
        shape = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise MemoryError(
            f"{call}: not enough memory for {shape}: it needs about {need} "
            f"(allocation failed: {exc or type(exc).__name__})"
        ) from None


# The weight list: its layout, and messages that say what a wrong one most likely is. H (the
# hidden size) is not an argument: it is read from an array, so every message about a size that
# depends on H says which array and axis it came from, and a list that fits another layout
# (another num_layers, bidirectional, bias or proj_size, or another cell) says which.

_GATES_SAID = {"lstm": "lstm has 4 gates (i, f, g, o)", "gru": "gru has 3 gates (r, z, n)",
               "rnn": "rnn has 1 gate"}
_AN = {"lstm": "an lstm", "gru": "a gru", "rnn": "an rnn"}
_CELL_OF_GATES = {4: "lstm", 3: "gru", 1: "rnn"}


def _shape_of(w):
    """The shape of an array-like without converting it (None for a list, a scalar, ...)."""
    shape = getattr(w, "shape", None)
    try:
        return tuple(int(n) for n in shape) if shape is not None else None
    except (TypeError, ValueError):
        return None


def _layout(G, I, H, L, D, bias, P):
    """The (name, shape) of each array of a valid flat weight list, torch _flat_weights order."""
    Hout = P or H
    out = []
    for layer in range(L):
        I_l = I if layer == 0 else D * Hout
        for _ in range(D):
            out += [("w_ih", (G * H, I_l)), ("w_hh", (G * H, Hout))]
            out += [("b_ih", (G * H,)), ("b_hh", (G * H,))] if bias else []
            out += [("w_hr", (P, H))] if P else []
    return out


def _layouts_that_fit(shapes, G, I):
    """Every (num_layers, bidirectional, bias, proj_size) under which `shapes` is a valid weight
    list for a cell of G gates and input size I (H read from weights[0]). Only for messages."""
    s0 = shapes[0] if shapes else None
    if s0 is None or len(s0) != 2 or s0[1] != I or s0[0] == 0 or s0[0] % G:
        return []
    H, n, fits = s0[0] // G, len(shapes), []
    for D in (1, 2):
        for bias in (True, False):
            for proj in (False, True):
                per = 2 + 2 * bias + proj
                if n % (D * per):
                    continue
                P = shapes[per - 1][0] if proj and shapes[per - 1] and len(shapes[per - 1]) == 2 else 0
                if proj and not 0 < P < H:
                    continue
                if [s for _, s in _layout(G, I, H, n // (D * per), D, bias, P)] == list(shapes):
                    fits.append((n // (D * per), D == 2, bias, P))
    return fits


def _said(fits):
    return " or ".join(f"num_layers={L}, bidirectional={bd}, bias={b}, proj_size={P}"
                       for L, bd, b, P in fits)


def _other_cell_hint(shapes, cell, proj_size):
    """When w_hh (weights[1]) is shaped like another cell's (its rows a multiple of its columns
    by that cell's gate count), say so: the commonest cause of a mismatch in H."""
    s = shapes[1] if len(shapes) > 1 else None
    if proj_size or s is None or len(s) != 2 or s[1] == 0 or s[0] % s[1]:
        return ""
    other = _CELL_OF_GATES.get(s[0] // s[1])
    if other is None or other == cell.name:
        return ""
    return (f"; weights[1] of shape {s} has {s[0] // s[1]} x {s[1]} rows, as {_AN[other]} w_hh "
            f"of H={s[1]} ({_GATES_SAID[other]}): {other} weights passed to {cell.name}_forward?")


def _transposed_hint(got, expected):
    if len(got) == 2 and got[::-1] == tuple(expected) and got != tuple(expected):
        return ("; it looks transposed: fastrnn takes torch's layout, (gates*H, in_features); "
                "Keras and TensorFlow kernels are (in_features, gates*H): fastrnn.convert "
                "converts them")
    return ""


def _count_error(weights, cell, L, D, proj_size, I):
    """The ValueError for a weight list of the wrong length, naming the layouts it does fit."""
    n, G, P = len(weights), cell.gates, proj_size
    per_bias, per_no_bias = 4 + (P > 0), 2 + (P > 0)
    unit = "w_ih, w_hh, [b_ih, b_hh]" + (", w_hr" if P else "")
    message = (f"weights: expected {L * D * per_bias} or {L * D * per_no_bias} arrays (num_layers={L} "
               f"x directions={D} x ({per_bias} with biases or {per_no_bias} without: {unit})), got {n}")
    shapes = [_shape_of(w) for w in weights]
    fits = _layouts_that_fit(shapes, G, I)
    if fits:
        H = shapes[0][0] // G
        if P >= H and any(f[:2] == (L, D == 2) and f[3] == 0 for f in fits):
            # the list is right for num_layers and bidirectional, without w_hr: proj_size is wrong
            return ValueError(
                f"proj_size: expected 0 (no projection: the weights have no w_hr) or < "
                f"hidden_size={H} with a w_hr per layer and direction, got {P}; H={H} from "
                f"weights[0] (w_ih of layer 0) axis 0 ({G * H} rows: {_GATES_SAID[cell.name]}); "
                f"the {n} arrays given fit {_said(fits)}")
        message += f"; the {n} arrays given fit {_said(fits)}"
        if P and all(f[3] == 0 for f in fits):
            message += (f" (with proj_size={P}, each layer and direction needs a w_hr of shape "
                        f"({P}, {H}) after its biases)")
        return ValueError(message)
    for other_G, other in _CELL_OF_GATES.items():
        other_fits = [] if other_G == G else _layouts_that_fit(shapes, other_G, I)
        if other_fits:
            return ValueError(f"{message}; they fit no layout of {cell.name} weights "
                              f"({_GATES_SAID[cell.name]}), but fit {other} weights "
                              f"({_GATES_SAID[other]}) with {_said(other_fits)}")
    return ValueError(f"{message}; they fit no combination of num_layers, bidirectional, bias and "
                      f"proj_size for {cell.name} ({_GATES_SAID[cell.name]}) and x's I={I}")


def _split_weights(weights, cell, L, D, proj_size, I, dtype, copy, as_array=None,
                   dense=_host_dense):
    """Check the flat torch-order weight list; return per (layer, direction) tuples
    (w_ih, w_hh, b_ih, b_hh, w_hr) of dense arrays (None where absent), H and has_bias.
    copy=True returns arrays that never share memory with the caller's. as_array(w, name) and
    dense(a, copy) adapt it to device arrays (default: NumPy of the given dtype).

    H comes from w_ih's rows (weights[0] axis 0, G*H), or, when w_ih itself is wrong, from
    w_hh's rows (weights[1] axis 0); I of layer 0 from x."""
    if as_array is None:
        def as_array(w, name):
            return _float_array(w, name, dtype)
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(
            f"weights: expected a list or tuple of arrays in torch _flat_weights order, "
            f"got {type(weights).__name__}"
        )
    proj = 1 if proj_size > 0 else 0
    per_no_bias, per_bias = 2 + proj, 4 + proj
    n = len(weights)
    if n == L * D * per_bias:
        has_bias = True
    elif n == L * D * per_no_bias:
        has_bias = False
    else:
        raise _count_error(weights, cell, L, D, proj_size, I)
    arrays = [as_array(w, f"weights[{k}]") for k, w in enumerate(weights)]
    shapes = [tuple(a.shape) for a in arrays]

    G, gates = cell.gates, _GATES_SAID[cell.name]
    w0 = shapes[0]
    w0_rows_ok = len(w0) == 2 and w0[0] > 0 and w0[0] % G == 0
    if not w0_rows_ok or w0[1] != I:
        # w_ih is wrong, so its rows may be too (transposed, another cell's): say what w_hh's
        # rows (weights[1] axis 0) make of H when they can
        w1 = shapes[1]
        H = w1[0] // G if len(w1) == 2 and w1[0] and w1[0] % G == 0 else None
        from_w_hh = f"H={H} from weights[1] (w_hh of layer 0) axis 0" if H else ""
        if not w0_rows_ok:
            raise ValueError(
                f"weights[0] (w_ih of layer 0): expected shape ({G}*hidden_size, {I}) with "
                f"hidden_size > 0, got {w0}; {gates}: w_ih must have {G}*H rows"
                + (f", and {w0[0]} is not a multiple of {G}" if len(w0) == 2 and w0[0] else "")
                + (f"; {from_w_hh} ({G * H} rows) gives ({G * H}, {I})"
                   + _transposed_hint(w0, (G * H, I))
                   if H else "")
                + _other_cell_hint(shapes, cell, proj_size))
        H = H or w0[0] // G
        raise ValueError(
            f"weights[0] (w_ih of layer 0): expected shape ({G * H}, {I}), got {w0}; I={I} from "
            f"x's last axis, "
            + (from_w_hh or f"H={H} from its own axis 0") + f" ({G * H} rows = {G}*H: {gates})"
            + _transposed_hint(w0, (G * H, I)))
    H, H_from = w0[0] // G, "weights[0] (w_ih of layer 0) axis 0"
    said_H = f"H={H} from {H_from} ({G * H} rows = {G}*H: {gates})"
    if proj_size >= H and proj_size > 0:
        raise ValueError(f"proj_size: expected < hidden_size={H}, got {proj_size}; {said_H}")
    layout = _layout(G, I, H, L, D, has_bias, proj_size)
    per = per_bias if has_bias else per_no_bias
    layers = []
    for layer in range(L):
        for d in range(D):
            got = {}
            for k in range((layer * D + d) * per, (layer * D + d + 1) * per):
                nm, expected = layout[k]
                if shapes[k] != expected:
                    raise _shape_error(k, nm, layer, d, expected, shapes, cell, L, D, has_bias,
                                       proj_size, I, H, said_H)
                got[nm] = dense(arrays[k], copy)
            layers.append(tuple(got.get(nm) for nm in ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")))
    return layers, H, has_bias


def _shape_error(k, nm, layer, d, expected, shapes, cell, L, D, has_bias, proj_size, I, H, said_H):
    """The ValueError for weights[k] of the wrong shape: where each size came from, or, when the
    list's arrays have the dimensions of another layout that they fit, which layout."""
    layout = _layout(cell.gates, I, H, L, D, has_bias, proj_size)
    if [len(s) for s in shapes] != [len(s) for _, s in layout]:
        fits = _layouts_that_fit(shapes, cell.gates, I)
        if fits:
            names = "w_ih, w_hh" + (", b_ih, b_hh" if has_bias else "") + (", w_hr" if proj_size else "")
            return ValueError(
                f"weights: expected num_layers={L} x directions={D} x ({names}) = {len(shapes)} "
                f"arrays ({'with' if has_bias else 'without'} biases, proj_size={proj_size}), got "
                f"{len(shapes)} arrays of {', '.join(str(len(s)) for s in shapes)} dimensions "
                f"(1-D ones are biases), which fit {_said(fits)}: check num_layers, "
                f"bidirectional and proj_size")
    fits = [f for f in _layouts_that_fit(shapes, cell.gates, I)
            if f != (L, D == 2, has_bias, proj_size)]
    Hout = proj_size or H
    why = {"w_ih": said_H if layer == 0 else
           f"{said_H}; layer {layer} reads layer {layer - 1}'s output: "
           f"{D} direction(s) x {'proj_size' if proj_size else 'H'}={Hout}",
           "w_hh": said_H + (f"; columns = proj_size={proj_size}" if proj_size else ""),
           "b_ih": said_H, "b_hh": said_H,
           "w_hr": f"(proj_size, H), {said_H}"}[nm]
    where = f"weights[{k}] ({nm} of layer {layer}{', reverse' if d else ''})"
    hint = _other_cell_hint(shapes, cell, proj_size) if nm in ("w_hh", "b_ih", "b_hh") else ""
    if fits:
        hint += f"; the {len(shapes)} arrays as a whole fit {_said(fits)}"
    return ValueError(f"{where}: expected shape {tuple(expected)}, got {shapes[k]}; {why}"
                      + _transposed_hint(shapes[k], expected) + hint)


def _wrap_like(arr, like):
    """Return arr as the caller's array type: NumPy for NumPy (and buffer) input; for another
    array library on the host, that library's array through DLPack when it offers from_dlpack.
    The library is the top module of the array's type (torch.Tensor: `torch`), except for JAX,
    whose arrays are `jaxlib` types and whose from_dlpack is `jax.numpy`'s."""
    if arr is None or isinstance(like, np.ndarray) or not hasattr(like, "__dlpack__"):
        return arr
    module = type(like).__module__.split(".")[0]
    try:
        import importlib

        if module in ("jax", "jaxlib"):  # jaxlib is only ever imported by jax: jax is loaded
            module = "jax.numpy"
        from_dlpack = getattr(importlib.import_module(module), "from_dlpack", None)
        return from_dlpack(np.ascontiguousarray(arr)) if from_dlpack else arr
    except Exception:  # noqa: BLE001 - any failure leaves the NumPy result
        return arr


# ----------------------------------------------------------------------------------------------
# One layer and direction on the chosen engine


class _Saved:
    """What backward needs from a training forward. Opaque to callers.

    engine "cpu": `state` is the engine's one reserve array (per layer-direction gate
    activations and states, and the inputs of layers 1..L-1); engine "reference": the list of
    per layer-direction caches of reference.py. Both keep their own copies of x and weights.
    """

    __slots__ = ("cell", "engine", "state", "x", "weights", "lengths", "num_layers", "D",
                 "dropout", "seed", "dtype", "shape", "batch_first", "has_bias", "proj_size",
                 "H", "like")

    def __repr__(self):
        return f"<fastrnn saved state of a {self.cell.name} forward on {self.engine!r}>"


def _stack_forward(engine, cell, x, layers, h0, c0, lengths, L, D, dropout, seed, training,
                   H, proj_size, has_bias):
    """All layers and directions. Returns (y, h_n, c_n, state for backward or None)."""
    if engine == "cpu":
        flat = [w for lw in layers for w in lw if w is not None]  # torch _flat_weights order
        return _backends._core.forward(cell.kind, x, flat, H, proj_size, has_bias, h0, c0,
                                       lengths, L, D, dropout, seed, training)
    # the reference has one layer and direction per call: stack them here, as the engine does
    inp, h_n, c_n, caches = x, [], [], []
    for layer in range(L):
        outs = []
        for d in range(D):
            k = layer * D + d
            y_d, h_d, c_d, cache = cell.reference_forward(
                inp, layers[k], h0[k], c0[k] if cell.has_c else None, lengths, d == 1)
            outs.append(y_d)
            h_n.append(h_d)
            c_n.append(c_d)
            caches.append(cache)
        y = outs[0] if D == 1 else np.concatenate(outs, axis=2)  # T,B,D*Hout
        if training and dropout > 0 and layer < L - 1:
            y = y * reference.dropout_mask(seed, layer, y.shape, dropout, y.dtype)
        inp = y
    return inp, np.stack(h_n), (np.stack(c_n) if cell.has_c else None), (caches if training else None)


def _stack_backward(saved, dy, dh_n, dc_n):
    """Returns (dx, dh0, dc0, flat list of weight gradients in the order of `weights`)."""
    cell, L, D = saved.cell, saved.num_layers, saved.D
    if saved.engine == "cpu":
        dx, dh0, dc0, dweights = _backends._core.backward(
            cell.kind, saved.x, saved.weights, saved.H, saved.proj_size, saved.has_bias,
            saved.state, saved.lengths, L, D, saved.dropout, saved.seed, dy, dh_n, dc_n)
        return dx, dh0, dc0, list(dweights)
    Hout = saved.proj_size or saved.H
    dweights = [None] * (L * D)
    dh0, dc0 = [None] * (L * D), [None] * (L * D)
    d_out = dy  # dL/d(output of the current layer), T,B,D*Hout
    for layer in reversed(range(L)):
        d_in = None
        for d in range(D):
            k = layer * D + d
            dy_d = np.ascontiguousarray(d_out[:, :, d * Hout:(d + 1) * Hout])
            dx_d, dh0[k], dc0[k], dweights[k] = cell.reference_backward(
                saved.state[k], dy_d, None if dh_n is None else dh_n[k],
                None if dc_n is None else dc_n[k])
            d_in = dx_d if d_in is None else d_in + dx_d  # both directions read this input
        if layer > 0 and saved.dropout > 0:
            d_in = d_in * reference.dropout_mask(saved.seed, layer - 1, d_in.shape,
                                                 saved.dropout, d_in.dtype)
        d_out = d_in
    flat = [g for dw in dweights for g in dw[:2] + (dw[2:4] if saved.has_bias else [])
            + (dw[4:] if saved.proj_size else [])]
    return d_out, np.stack(dh0), (np.stack(dc0) if cell.has_c else None), flat


# ----------------------------------------------------------------------------------------------
# Forward and backward, shared by the three cells


def _inference_fast(cell, x, weights, h0, c0, L, bidirectional, batch_first, lengths, dropout,
                    seed, proj_size, training, backend):
    """The commonest call, an inference call with NumPy arrays already as the engine takes
    them, checked in a few microseconds: the full path's checks cost ~20 us a call, which a
    one-step call (T = 1, serving) felt. Returns None, and the full path runs (with its
    messages), for anything else: another array type, layout or option, lengths, training,
    or any argument that is off."""
    if (training is not False or lengths is not None or batch_first is not False
            or seed is not None or not (dropout == 0.0 and type(dropout) in (float, int))
            or (backend is not None and backend != "cpu") or _backends._core is None
            or type(L) is not int or L < 1 or type(bidirectional) is not bool
            or type(proj_size) is not int or proj_size < 0
            or type(x) is not np.ndarray or x.ndim != 3 or not x.flags.c_contiguous
            or type(weights) not in (list, tuple) or not weights
            or type(weights[0]) is not np.ndarray or weights[0].ndim != 2):
        return None
    dtype = x.dtype
    if dtype != np.float32 and dtype != np.float64:
        return None
    T, B, I = x.shape
    D = 2 if bidirectional else 1
    G = cell.gates
    GH = weights[0].shape[0]
    H = GH // G
    if H == 0 or GH != G * H or (proj_size and (not cell.has_c or proj_size >= H)):
        return None
    Hout = proj_size or H
    per = len(weights) // (L * D)
    has_bias = per == 4 + (proj_size > 0)
    if per * L * D != len(weights) or per not in (2 + (proj_size > 0), 4 + (proj_size > 0)):
        return None
    for k, w in enumerate(weights):
        layer, j = divmod(k, per * D)
        j %= per
        want = ((GH, I if layer == 0 else D * Hout) if j == 0 else (GH, Hout) if j == 1
                else (GH,) if has_bias and j < 4 else (proj_size, H))
        if (type(w) is not np.ndarray or w.dtype != dtype or not w.flags.c_contiguous
                or w.shape != want):
            return None
    for a, shape in ((h0, (L * D, B, Hout)), (c0, (L * D, B, H) if cell.has_c else None)):
        if a is not None and (shape is None or type(a) is not np.ndarray or a.dtype != dtype
                              or not a.flags.c_contiguous or a.shape != shape):
            return None
    if h0 is None:
        h0 = np.zeros((L * D, B, Hout), dtype)
    if cell.has_c and c0 is None:
        c0 = np.zeros((L * D, B, H), dtype)
    try:
        y, h_n, c_n, _ = _backends._core.forward(cell.kind, x, weights, H, proj_size, has_bias,
                                                 h0, c0, None, L, D, 0.0, 0, False)
    except MemoryError:  # the full path says which call needed what
        return None
    return RNNOutput(y, h_n, c_n, None)


def _forward(cell, x, weights, h0, c0, num_layers, bidirectional, batch_first, lengths, dropout,
             seed, proj_size, training, backend):
    fast = _inference_fast(cell, x, weights, h0, c0, num_layers, bidirectional, batch_first,
                           lengths, dropout, seed, proj_size, training, backend)
    if fast is not None:
        return fast
    engine = _backends.resolve(backend, _device.is_device_array(x))
    L = _int_option(num_layers, "num_layers", 1)
    D = 2 if _bool_option(bidirectional, "bidirectional") else 1
    batch_first = _bool_option(batch_first, "batch_first")
    training = _bool_option(training, "training")
    dropout = _dropout_option(dropout)
    proj_size = _int_option(proj_size, "proj_size", 0)
    if seed is not None:
        seed = _int_option(seed, "seed", 0)
        if seed >= 2**64:
            raise ValueError(f"seed: expected an int in [0, 2**64), got {seed}")
    elif training and dropout > 0 and L > 1:
        seed = secrets.randbits(63)  # fresh masks each call
    else:
        seed = 0  # no dropout is applied, so no mask is drawn: a fresh seed (20 us) is wasted

    if engine == "cuda":
        return _forward_cuda(cell, x, weights, h0, c0, L, D, batch_first, lengths, dropout, seed,
                             proj_size, training)
    like = x
    xs = _time_major(x, batch_first)
    dtype = xs.dtype
    T, B, I = xs.shape
    layers, H, has_bias = _split_weights(weights, cell, L, D, proj_size, I, dtype, copy=training)
    Hout = proj_size if proj_size > 0 else H
    lengths = _lengths_array(lengths, T, B)

    # When training, saved must own what backward reads: the caller may change x or a weight
    # in place between forward and backward (torch catches that with version counters; NumPy
    # cannot), so x and the weights are copied (once: the copy is also the dense layout the
    # engines need).
    sizes = dict(T=T, B=B, I=I, H=H, num_layers=L, directions=D)
    parts = {"a dense copy of x": T * B * I if training or not xs.flags.c_contiguous else 0,
             "y": T * B * D * Hout,
             # an estimate in Python ints (gate activations + states): the engine's exact
             # count (_core.reserve_elements) is int64 and would overflow at such sizes
             "the training reserve": T * B * L * D * (cell.gates + 2) * H if training else 0}
    with _memory_for(f"{cell.name}_forward", sizes, parts, dtype.itemsize):
        if h0 is None:
            h0 = np.zeros((L * D, B, Hout), dtype)
        else:
            h0 = _float_array(h0, "h0", dtype)
            _expect_shape(h0, (L * D, B, Hout), "h0")
        if cell.has_c:
            if c0 is None:
                c0 = np.zeros((L * D, B, H), dtype)
            else:
                c0 = _float_array(c0, "c0", dtype)
                _expect_shape(c0, (L * D, B, H), "c0")
        h0 = np.ascontiguousarray(h0)
        c0 = np.ascontiguousarray(c0) if cell.has_c else None
        xs = np.array(xs, order="C", copy=True) if training else np.ascontiguousarray(xs)
        y, h_n, c_n, state = _stack_forward(engine, cell, xs, layers, h0, c0, lengths, L, D,
                                            dropout, seed, training, H, proj_size, has_bias)
    saved = None
    if training:
        saved = _Saved()
        saved.cell, saved.engine, saved.state, saved.x = cell, engine, state, xs
        saved.weights = [w for lw in layers for w in lw if w is not None]
        saved.lengths, saved.num_layers, saved.D, saved.dtype = lengths, L, D, dtype
        saved.dropout, saved.seed, saved.shape = dropout, seed, (T, B, I)
        saved.batch_first, saved.has_bias, saved.proj_size, saved.H = batch_first, has_bias, proj_size, H
        saved.like = like if not isinstance(like, np.ndarray) else None
    if batch_first:
        y = y.transpose(1, 0, 2)
    return RNNOutput(_wrap_like(y, like), _wrap_like(h_n, like), _wrap_like(c_n, like), saved)


def _backward(cell, saved, dy, dh_n, dc_n):
    if not isinstance(saved, _Saved):
        raise TypeError(
            f"saved: expected the .saved of a {cell.name}_forward(..., training=True) result, "
            f"got {type(saved).__name__}"
        )
    if saved.cell.name != cell.name:
        raise ValueError(f"saved: expected the state of a {cell.name} forward, got one of a "
                         f"{saved.cell.name} forward")
    if saved.engine == "cuda":
        return _backward_cuda(saved, dy, dh_n, dc_n)
    L, D, dtype, H = saved.num_layers, saved.D, saved.dtype, saved.H
    T, B, I = saved.shape
    Hout = saved.proj_size if saved.proj_size > 0 else H
    like = saved.like if saved.like is not None else dy
    dy = _float_array(dy, "dy", dtype)
    want = (B, T, D * Hout) if saved.batch_first else (T, B, D * Hout)
    _expect_shape(dy, want, "dy")
    if saved.batch_first:
        dy = dy.transpose(1, 0, 2)
    dy = np.ascontiguousarray(dy)
    if dh_n is not None:
        dh_n = _float_array(dh_n, "dh_n", dtype)
        _expect_shape(dh_n, (L * D, B, Hout), "dh_n")
        dh_n = np.ascontiguousarray(dh_n)
    if dc_n is not None:
        if not cell.has_c:
            raise ValueError(f"dc_n: a {cell.name} has no cell state, expected None")
        dc_n = _float_array(dc_n, "dc_n", dtype)
        _expect_shape(dc_n, (L * D, B, H), "dc_n")
        dc_n = np.ascontiguousarray(dc_n)

    sizes = dict(T=T, B=B, I=I, H=H, num_layers=L, directions=D)
    parts = {"dx": T * B * I, "scratch": T * B * D * (cell.gates * H + Hout)}
    with _memory_for(f"{cell.name}_backward", sizes, parts, dtype.itemsize):
        dx, dh0, dc0, flat = _stack_backward(saved, dy, dh_n, dc_n)
    if saved.batch_first:
        dx = dx.transpose(1, 0, 2)
    return RNNGrads(_wrap_like(dx, like), _wrap_like(dh0, like), _wrap_like(dc0, like),
                    [_wrap_like(w, like) for w in flat])


# ----------------------------------------------------------------------------------------------
# The CUDA path: the same rules, on device arrays viewed as torch tensors (see _device.py)


def _device_float(a, name, dtype, device):
    t = _device.as_tensor(a, name)
    if _device.dtype_name(t) not in _device.DTYPES:
        raise TypeError(f"{name}: expected a float32, float64, float16 or bfloat16 array, got "
                        f"dtype {_device.dtype_name(t)}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {_device.dtype_name_of(dtype)} (all floating "
                        f"inputs of a call share x's dtype), got {_device.dtype_name(t)}")
    if device is not None and t.device != device:
        raise TypeError(f"{name}: expected an array on {device} like x, got one on {t.device}")
    return t


def _forward_cuda(cell, x, weights, h0, c0, L, D, batch_first, lengths, dropout, seed, proj_size,
                  training):
    torch = _device.torch_module()
    like = x
    xt = _device_float(x, "x", None, None)
    dtype, device = xt.dtype, xt.device
    if xt.dim() != 3:
        want = "(B, T, I) with batch_first" if batch_first else "(T, B, I)"
        raise ValueError(f"x: expected 3 dimensions {want}, got shape {tuple(xt.shape)}")
    if batch_first:
        xt = xt.transpose(0, 1)
    T, B, I = xt.shape
    layers, H, has_bias = _split_weights(
        weights, cell, L, D, proj_size, I, dtype, copy=training,
        as_array=lambda w, name: _device_float(w, name, dtype, device),
        dense=lambda a, copy: a.clone(memory_format=torch.contiguous_format) if copy else a.contiguous())
    Hout = proj_size if proj_size > 0 else H
    if lengths is not None and _device.is_device_array(lengths):
        lengths = _device.as_tensor(lengths, "lengths").cpu().numpy()
    lengths = _lengths_array(lengths, T, B)
    lengths_dev = None if lengths is None else torch.as_tensor(lengths, device=device)

    def state(a, name, shape):
        if a is None:
            return torch.zeros(shape, dtype=dtype, device=device)
        a = _device_float(a, name, dtype, device)
        _expect_shape(a, shape, name)
        return a.contiguous()

    h0 = state(h0, "h0", (L * D, B, Hout))
    c0 = state(c0, "c0", (L * D, B, H)) if cell.has_c else None
    xt = xt.clone(memory_format=torch.contiguous_format) if training else xt.contiguous()
    flat = [w for lw in layers for w in lw if w is not None]

    cuda = _backends.cuda_module()[0]
    name = _device.dtype_name(xt)
    shape = cuda.Shape(cell.kind, L, D, T, B, I, H, proj_size, has_bias)
    y = torch.empty((T, B, D * Hout), dtype=dtype, device=device)
    h_n = torch.empty((L * D, B, Hout), dtype=dtype, device=device)
    c_n = torch.empty((L * D, B, H), dtype=dtype, device=device) if cell.has_c else None
    reserve = (torch.empty(cuda.reserve_bytes(name, shape), dtype=torch.uint8, device=device)
               if training else None)
    P = _device.pointer
    cuda.forward(name, device.index, _device.current_stream(like, device), shape, P(xt),
                 [P(w) for w in flat], P(h0), P(c0), P(lengths_dev), dropout, seed, P(y), P(h_n),
                 P(c_n), P(reserve))
    saved = None
    if training:
        saved = _Saved()
        saved.cell, saved.engine, saved.state, saved.x, saved.weights = cell, "cuda", reserve, xt, flat
        saved.lengths, saved.num_layers, saved.D, saved.dtype = lengths_dev, L, D, dtype
        saved.dropout, saved.seed, saved.shape = dropout, seed, (T, B, I)
        saved.batch_first, saved.has_bias, saved.proj_size, saved.H = batch_first, has_bias, proj_size, H
        saved.like = like
    if batch_first:
        y = y.transpose(0, 1)
    wrap = _device.wrap_like
    return RNNOutput(wrap(y, like), wrap(h_n, like), wrap(c_n, like), saved)


def _backward_cuda(saved, dy, dh_n, dc_n):
    torch = _device.torch_module()
    cell, L, D, dtype, H = saved.cell, saved.num_layers, saved.D, saved.dtype, saved.H
    T, B, I = saved.shape
    Hout = saved.proj_size if saved.proj_size > 0 else H
    device = saved.x.device
    dyt = _device_float(dy, "dy", dtype, device)
    _expect_shape(dyt, (B, T, D * Hout) if saved.batch_first else (T, B, D * Hout), "dy")
    if saved.batch_first:
        dyt = dyt.transpose(0, 1)
    dyt = dyt.contiguous()
    if dh_n is not None:
        dh_n = _device_float(dh_n, "dh_n", dtype, device)
        _expect_shape(dh_n, (L * D, B, Hout), "dh_n")
        dh_n = dh_n.contiguous()
    if dc_n is not None:
        if not cell.has_c:
            raise ValueError(f"dc_n: a {cell.name} has no cell state, expected None")
        dc_n = _device_float(dc_n, "dc_n", dtype, device)
        _expect_shape(dc_n, (L * D, B, H), "dc_n")
        dc_n = dc_n.contiguous()
    cuda = _backends.cuda_module()[0]
    shape = cuda.Shape(cell.kind, L, D, T, B, I, H, saved.proj_size, saved.has_bias)
    dx = torch.empty((T, B, I), dtype=dtype, device=device)
    dh0 = torch.empty((L * D, B, Hout), dtype=dtype, device=device)
    dc0 = torch.empty((L * D, B, H), dtype=dtype, device=device) if cell.has_c else None
    dweights = [torch.empty_like(w) for w in saved.weights]
    P = _device.pointer
    cuda.backward(_device.dtype_name(saved.x), device.index,
                  _device.current_stream(saved.like, device), shape, P(saved.x),
                  [P(w) for w in saved.weights], P(saved.state), P(saved.lengths), saved.dropout,
                  saved.seed, P(dyt), P(dh_n), P(dc_n), P(dx), P(dh0), P(dc0),
                  [P(w) for w in dweights])
    if saved.batch_first:
        dx = dx.transpose(0, 1)
    wrap = _device.wrap_like
    like = saved.like
    return RNNGrads(wrap(dx, like), wrap(dh0, like), wrap(dc0, like), [wrap(w, like) for w in dweights])


# ----------------------------------------------------------------------------------------------
# Public functions


def lstm_forward(x, weights, h0=None, c0=None, *, num_layers=1, bidirectional=False,
                 batch_first=False, lengths=None, dropout=0.0, seed=None, proj_size=0,
                 training=False, backend=None):
    """LSTM forward (PyTorch/cuDNN maths, gate order i, f, g, o).

    x        (T, B, I), or (B, T, I) with batch_first; float32 or float64
    weights  flat list in torch.nn.LSTM._flat_weights order: for each layer, for each
             direction: w_ih (4H, I_l), w_hh (4H, Hout), [b_ih (4H,), b_hh (4H,)], [w_hr (P, H)]
    h0, c0   (D*L, B, Hout) and (D*L, B, H); None = zeros
    lengths  (B,) valid steps per sequence in [0, T]; padded steps output 0 and keep the state
    dropout  between layers, only when training; `seed` makes its masks reproducible
    proj_size  P > 0 adds w_hr and makes Hout = P
    training  keep what lstm_backward needs in the result's .saved
    backend  None (compiled engine, else the reference with a warning) | "cpu" | "reference"

    Returns RNNOutput(y, h_n, c_n, saved).
    """
    return _forward(_LSTM, x, weights, h0, c0, num_layers, bidirectional, batch_first, lengths,
                    dropout, seed, proj_size, training, backend)


def lstm_backward(saved, dy, dh_n=None, dc_n=None):
    """Gradients of an LSTM forward run with training=True, given dL/dy (the shape of y) and
    optionally dL/dh_n, dL/dc_n (None = zeros). Returns RNNGrads(dx, dh0, dc0, dweights)."""
    return _backward(_LSTM, saved, dy, dh_n, dc_n)


def gru_forward(x, weights, h0=None, *, num_layers=1, bidirectional=False, batch_first=False,
                lengths=None, dropout=0.0, seed=None, training=False, backend=None,
                linear_before_reset=True):
    """GRU forward (gate order r, z, n). linear_before_reset=True is the cuDNN/PyTorch GRU,
    n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn)); False resets before the matmul (ONNX default,
    Keras reset_after=False), n = tanh(W_in x + b_in + W_hn (r⊙h) + b_hn). weights: for each
    layer and direction w_ih (3H, I_l), w_hh (3H, H), [b_ih, b_hh (3H,)]. Other arguments as
    lstm_forward. Returns RNNOutput(y, h_n, None, saved)."""
    cell = _GRU.get(_bool_option(linear_before_reset, "linear_before_reset"))
    return _forward(cell, x, weights, h0, None, num_layers, bidirectional, batch_first, lengths,
                    dropout, seed, 0, training, backend)


def gru_backward(saved, dy, dh_n=None):
    """Gradients of a GRU forward run with training=True. Returns RNNGrads(dx, dh0, None, dweights)."""
    cell = saved.cell if isinstance(saved, _Saved) and saved.cell.name == "gru" else _GRU[True]
    return _backward(cell, saved, dy, dh_n, None)


def rnn_forward(x, weights, h0=None, *, num_layers=1, bidirectional=False, batch_first=False,
                lengths=None, dropout=0.0, seed=None, training=False, backend=None,
                nonlinearity="tanh"):
    """Elman RNN forward, h' = act(W_ih x + b_ih + W_hh h + b_hh), act = nonlinearity ("tanh" or
    "relu"). weights: for each layer and direction w_ih (H, I_l), w_hh (H, H), [b_ih, b_hh (H,)].
    Other arguments as lstm_forward. Returns RNNOutput(y, h_n, None, saved)."""
    if not isinstance(nonlinearity, str) or nonlinearity not in _RNN:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    return _forward(_RNN[nonlinearity], x, weights, h0, None, num_layers, bidirectional,
                    batch_first, lengths, dropout, seed, 0, training, backend)


def rnn_backward(saved, dy, dh_n=None):
    """Gradients of an RNN forward run with training=True. Returns RNNGrads(dx, dh0, None, dweights)."""
    cell = saved.cell if isinstance(saved, _Saved) and saved.cell.name == "rnn" else _RNN["tanh"]
    return _backward(cell, saved, dy, dh_n, None)


# ----------------------------------------------------------------------------------------------
# --- serialisation of saved, for adapters (fastrnn.torch, fastrnn.jax)
#
# A framework that traces graphs (torch.compile, jax.jit) can carry only arrays and plain values
# from a forward to its backward, not a Python object. These two helpers turn the `_Saved` of a
# training forward into (meta, arrays) and back, without copying any array:
#   meta    plain data: nested lists and dicts of None, bool, int, float and str (JSON-able);
#           each array appears in it as ["array", k], an index into `arrays`
#   arrays  the arrays `saved` holds (NumPy; torch CUDA tensors on the CUDA path), each once
#           (an array held twice is listed once)
# The adapters' shape functions rely on this: the number of arrays and their dtypes depend only
# on the forward's options (cell, num_layers, bidirectional, biases, proj_size > 0, lengths
# given or not, dropout > 0, dtype, engine), never on the sizes T, B, I, H.
# `saved.like` (the caller's array type, used only to wrap results) is not carried: adapters
# pass NumPy arrays (or torch CUDA tensors), and backward returns the same kind.


def _saved_to_arrays(saved):
    """(meta, arrays) of a forward's `.saved`; `_saved_from_arrays(meta, arrays)` rebuilds it."""
    if not isinstance(saved, _Saved):
        raise TypeError(f"saved: expected the .saved of a training forward, got {type(saved).__name__}")
    arrays, index = [], {}

    def encode(v):
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, np.ndarray) or hasattr(v, "__dlpack__"):
            if id(v) not in index:
                index[id(v)] = len(arrays)
                arrays.append(v)
            return ["array", index[id(v)]]
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            return float(v)
        if isinstance(v, (tuple, list)):
            return ["tuple" if isinstance(v, tuple) else "list", [encode(e) for e in v]]
        if isinstance(v, dict):
            return ["dict", [[str(k), encode(e)] for k, e in v.items()]]
        if isinstance(v, np.dtype):
            return ["dtype", v.str]
        if type(v).__module__ == "torch" and type(v).__name__ == "dtype":  # the CUDA path's
            return ["torch_dtype", str(v).replace("torch.", "")]
        if isinstance(v, _Cell):
            return ["cell", v.kind]
        if isinstance(v, reference.Activation):  # the reference's per-cache activations
            return ["activation", [v.name, encode(v.alpha), encode(v.beta)]]
        raise TypeError(f"saved: cannot serialise a {type(v).__name__} held in it")

    unset = object()
    meta = {}
    for slot in _Saved.__slots__:
        value = None if slot == "like" else getattr(saved, slot, unset)
        meta[slot] = ["unset", None] if value is unset else encode(value)
    return meta, arrays


def _saved_from_arrays(meta, arrays):
    """The `_Saved` that `_saved_to_arrays` turned into (meta, arrays); shares the arrays."""
    cells = {c.kind: c for c in (_LSTM, *_GRU.values(), *_RNN.values())}

    def decode(v):
        if not isinstance(v, list):
            return v
        tag, payload = v
        if tag == "array":
            return arrays[payload]
        if tag in ("tuple", "list"):
            items = [decode(e) for e in payload]
            return tuple(items) if tag == "tuple" else items
        if tag == "dict":
            return {k: decode(e) for k, e in payload}
        if tag == "dtype":
            return np.dtype(payload)
        if tag == "torch_dtype":
            return getattr(_device.torch_module(), payload)
        if tag == "cell":
            return cells[payload]
        if tag == "activation":
            return reference.Activation(tuple(payload))
        raise ValueError(f"meta: unknown tag {tag!r}")

    saved = _Saved()
    for slot in _Saved.__slots__:
        if meta[slot] != ["unset", None]:
            setattr(saved, slot, decode(meta[slot]))
    return saved
