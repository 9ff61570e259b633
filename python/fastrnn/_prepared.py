# SPDX-License-Identifier: MIT
"""Prepared networks: `fastrnn.prepare(...)` for serving, streaming and generation.

What this file is: the object that checks a network's weights once, keeps its own copy of
them (and, in the compiled engine, their packed form) and then runs inference over whole
sequences (`net(x)`) or one time step at a time (`net.step(x_t, h, c)`) with only the checks a
call's own arrays need. What it is not: training (use the functional API or fastrnn.torch),
or the CUDA path.

The maths, layouts and errors are the functional API's (`fastrnn.lstm_forward` etc.):
`net(x, ...)` gives what `*_forward(x, weights, ..., training=False)` gives, and stepping over
the T steps of a sequence gives, bit for bit at the same thread count, what one call over
the T steps gives (both run the same engine code, one step after another).
"""

import numpy as np

from . import _api, _backends

_CELL_NAMES = ("lstm", "gru", "rnn")


def prepare(cell, weights, *, num_layers=1, bidirectional=False, proj_size=0,
            weights_dtype=None, linear_before_reset=True, nonlinearity="tanh", backend=None):
    """A prepared network: weights checked and copied once, for inference calls and steps.

    cell       "lstm" | "gru" | "rnn"
    weights    the functional API's flat list (torch.nn._flat_weights order): for each layer
               and direction w_ih (G*H, I_l), w_hh (G*H, Hout), [b_ih, b_hh (G*H,)],
               [w_hr (P, H)]; float32 or float64, all one dtype, which the network keeps
    num_layers, bidirectional, proj_size (LSTM only)   as in the functional API
    linear_before_reset (GRU only), nonlinearity (RNN only)   as in the functional API
    weights_dtype  None: the weights' own dtype; or, for float32 networks, what the weight
               matrices (w_ih, w_hh, w_hr; not the biases) are stored as, which the compiled
               engine then reads in place of float32 (activations, states and sums stay
               float32): "bfloat16", each value rounded to the nearest bfloat16 (16 bits a
               value: half the bytes a step moves); "int8", each row quantized symmetrically
               (scale s = max|row| / 127, values round(w / s) in [-127, 127], as PyTorch's
               dynamic quantization does; a quarter of the bytes). The error this costs is
               in the serving guide.
    backend    None (the compiled engine, else the NumPy reference) | "cpu" | "reference"

    The network owns a copy of the weights: writing into the arrays given afterwards does
    not change it (prepare again to use new weights). Returns a PreparedNetwork.
    """
    if not isinstance(cell, str) or cell not in _CELL_NAMES:
        raise ValueError(f"cell: expected one of {_CELL_NAMES}, got {cell!r}")
    if weights_dtype not in _WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype: expected None (the weights' own dtype), 'bfloat16' or "
                         f"'int8', got {weights_dtype!r}")
    if cell == "lstm":
        spec = _api._LSTM
    elif cell == "gru":
        spec = _api._GRU[_api._bool_option(linear_before_reset, "linear_before_reset")]
    else:
        if nonlinearity not in _api._RNN:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        spec = _api._RNN[nonlinearity]
    if cell != "lstm" and proj_size != 0:
        raise ValueError(f"proj_size: only the LSTM has a projection, got {proj_size} for {cell}")
    return PreparedNetwork(spec, weights, num_layers, bidirectional, proj_size, backend,
                           weights_dtype)


_WEIGHTS_DTYPES = (None, "bfloat16", "int8")
# what the compiled engine's panels keep of a float32 network's matrices (bindings.cpp)
_NARROW = {None: 0, "bfloat16": 1, "int8": 2}


def _quantize_rows_int8(w, name):
    """float32 matrix w quantized row by row, in place: s = max|row| / 127 (in float32), row =
    round(row / s)·s, round(row / s) in [-127, 127] (a zero row stays zero). The engine reads
    back the integers and s from these values (cpu/engine.cpp, narrow_panels)."""
    if not np.isfinite(w).all():
        raise ValueError(f"{name}: int8 weights must be finite, got a NaN or an infinity")
    scale = np.abs(w).max(axis=1, keepdims=True) / np.float32(127)
    safe = np.where(scale > 0, scale, np.float32(1))
    w[...] = np.clip(np.rint(w / safe), -127, 127) * scale
    return w


def _round_to_bfloat16(w):
    """float32 array w with every value rounded to the nearest bfloat16 value (ties to even),
    in place: the upper 16 bits of a float32 are a bfloat16. NaN stays NaN."""
    bits = w.view(np.uint32)
    nan = np.isnan(w)
    with np.errstate(over="ignore"):  # uint32 arithmetic: +0x7FFF may carry into the exponent
        bits += np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    bits &= np.uint32(0xFFFF0000)
    w[nan] = np.nan
    return w


class PreparedNetwork:
    """An RNN ready for inference: `net(x)` over whole sequences, `net.step(x_t, h, c)` one
    time step at a time. Made by `fastrnn.prepare`; see there for what it keeps.

    Attributes: cell ("lstm" | "gru" | "rnn"), dtype, weights_dtype (None | "bfloat16" | "int8"),
    input_size (I), hidden_size (H), proj_size (P, 0 = none), output_size (Hout: P or H),
    num_layers (L), bidirectional, backend ("cpu" | "reference"). Calls from several threads at once are safe (they take
    turns on one network) and release the GIL.
    """

    def __init__(self, spec, weights, num_layers, bidirectional, proj_size, backend,
                 weights_dtype=None):
        L = _api._int_option(num_layers, "num_layers", 1)
        D = 2 if _api._bool_option(bidirectional, "bidirectional") else 1
        P = _api._int_option(proj_size, "proj_size", 0)
        self.backend = _backends.resolve(backend)
        if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
            raise TypeError(f"weights: expected a list or tuple of arrays in torch "
                            f"_flat_weights order, got {type(weights).__name__}")
        if not weights:
            raise ValueError("weights: expected at least w_ih and w_hh of layer 0, got an empty "
                             f"{type(weights).__name__}")
        w0 = _api._float_array(weights[0], "weights[0]")
        if w0.ndim != 2:
            raise ValueError(f"weights[0] (w_ih of layer 0): expected 2 dimensions "
                             f"({spec.gates}*hidden_size, input_size), got shape {w0.shape}")
        self.dtype = w0.dtype
        self.input_size = int(w0.shape[1])
        layers, H, has_bias = _api._split_weights(weights, spec, L, D, P, self.input_size,
                                                  self.dtype, copy=True)
        if weights_dtype is not None:
            if self.dtype != np.float32:
                raise TypeError(
                    f"weights_dtype: {weights_dtype!r} stores the weights of a float32 network "
                    f"(float32 activations and states), got {self.dtype} weights: cast them to "
                    f"float32")
            for n, lw in enumerate(layers):  # the matrices; biases stay float32
                for w, what in ((lw[0], "w_ih"), (lw[1], "w_hh"), (lw[4], "w_hr")):
                    if w is None:
                        continue
                    if weights_dtype == "bfloat16":
                        _round_to_bfloat16(w)
                    else:
                        _quantize_rows_int8(w, f"weights ({what} of layer {n // D}"
                                               + (", reverse direction)" if n % D else ")"))
        self.weights_dtype = weights_dtype
        self._spec, self._layers, self._has_bias = spec, layers, has_bias
        self.cell = spec.name
        self.hidden_size, self.proj_size, self.output_size = H, P, P or H
        self.num_layers, self.bidirectional = L, D == 2
        self._D = D
        self._flat = [w for lw in layers for w in lw if w is not None]  # owned copies
        for w in self._flat:
            w.setflags(write=False)
        self._plan = None
        if self.backend == "cpu":
            plan_type = (_backends._core.PreparedFloat32 if self.dtype == np.float32
                         else _backends._core.PreparedFloat64)
            self._plan = plan_type(spec.kind, self._flat, self.input_size, H, P, has_bias, L, D,
                                   _NARROW[weights_dtype])

    def __repr__(self):
        extra = f", proj_size={self.proj_size}" if self.proj_size else ""
        if self.weights_dtype:
            extra += f", weights_dtype={self.weights_dtype}"
        return (f"<fastrnn PreparedNetwork {self.cell} input_size={self.input_size} "
                f"hidden_size={self.hidden_size}{extra} num_layers={self.num_layers} "
                f"bidirectional={self.bidirectional} {self.dtype} on {self.backend!r}>")

    # ------------------------------------------------------------------------------------------
    # whole sequences

    def __call__(self, x, h0=None, c0=None, *, lengths=None, batch_first=False):
        """Inference over whole sequences: what `*_forward(x, weights, h0, c0, lengths=...,
        batch_first=..., training=False)` returns, as RNNOutput(y, h_n, c_n, None). x (T, B, I),
        or (B, T, I) with batch_first, of the network's dtype; h0 (D*L, B, Hout), c0 (D*L, B, H)
        (LSTM only), None = zeros; lengths (B,) in [0, T]."""
        batch_first = _api._bool_option(batch_first, "batch_first")
        xs = _api._time_major(x, batch_first, self.dtype)
        T, B, I = xs.shape
        if I != self.input_size:
            raise ValueError(f"x: expected input size {self.input_size} (the prepared weights' "
                             f"w_ih), got shape {tuple(np.shape(x))}")
        LD, Ho, H = self.num_layers * self._D, self.output_size, self.hidden_size
        h0 = self._state(h0, "h0", (LD, B, Ho))
        c0 = self._state(c0, "c0", (LD, B, H)) if self.cell == "lstm" else self._no_c(c0, "c0")
        lengths = _api._lengths_array(lengths, T, B)
        xs = np.ascontiguousarray(xs)
        if self._plan is not None:
            y, h_n, c_n = self._plan.forward(xs, h0, c0, lengths)
        else:
            y, h_n, c_n, _ = _api._stack_forward("reference", self._spec, xs, self._layers, h0,
                                                 c0, lengths, self.num_layers, self._D, 0.0, 0,
                                                 False, H, self.proj_size, self._has_bias)
        if batch_first:
            y = y.transpose(1, 0, 2)
        return _api.RNNOutput(_api._wrap_like(y, x), _api._wrap_like(h_n, x),
                              _api._wrap_like(c_n, x), None)

    # ------------------------------------------------------------------------------------------
    # one step

    def step(self, x_t, h, c=None, *, out=None):
        """One time step of every layer: returns the new state (h, c) (c is None for GRU and
        RNN). x_t (B, I); h (L, B, Hout); c (L, B, H) for the LSTM. The last layer's output
        y_t is the returned h[-1].

        out=(h_out, c_out) (c_out None for GRU/RNN): C-contiguous writable arrays of the
        network's dtype and the state's shapes to write the new state into, and return; they
        may be h and c themselves (the state is then updated in place), so a loop allocates
        nothing per step. Unidirectional networks only (a reverse direction needs the whole
        sequence)."""
        if self._D != 1:
            raise ValueError("step: a bidirectional network cannot run one step at a time "
                             "(its reverse direction reads the sequence from its end); call it "
                             "on the whole sequence")
        dtype = self.dtype
        # the common case, checked cheaply: C-contiguous NumPy arrays of the network's dtype
        if not (type(x_t) is np.ndarray and x_t.dtype == dtype and x_t.flags.c_contiguous
                and x_t.ndim == 2 and x_t.shape[1] == self.input_size):
            x_t = self._step_input(x_t)
        B = x_t.shape[0]
        L, Ho, H = self.num_layers, self.output_size, self.hidden_size
        if not (type(h) is np.ndarray and h.dtype == dtype and h.flags.c_contiguous
                and h.shape == (L, B, Ho)):
            h = np.ascontiguousarray(self._state(h, "h", (L, B, Ho)))
        if self.cell == "lstm":
            if not (type(c) is np.ndarray and c.dtype == dtype and c.flags.c_contiguous
                    and c.shape == (L, B, H)):
                if c is None:
                    raise ValueError(f"c: expected the LSTM's cell state, shape ({L}, {B}, {H}), "
                                     "got None")
                c = np.ascontiguousarray(self._state(c, "c", (L, B, H)))
        else:
            self._no_c(c, "c")
        if out is None:
            h_out = np.empty((L, B, Ho), dtype)
            c_out = np.empty((L, B, H), dtype) if self.cell == "lstm" else None
        else:
            h_out, c_out = self._out(out, L, B, Ho, H)
        if self._plan is not None:
            self._plan.step(x_t, h, c, h_out, c_out)
        else:
            y, h_n, c_n, _ = _api._stack_forward("reference", self._spec, x_t[None], self._layers,
                                                 h, c, None, L, 1, 0.0, 0, False, H,
                                                 self.proj_size, self._has_bias)
            h_out[...] = h_n
            if c_out is not None:
                c_out[...] = c_n
        return h_out, c_out

    # ------------------------------------------------------------------------------------------
    # checks (the functional API's messages)

    def _step_input(self, x_t):
        arr = _api._float_array(x_t, "x_t", self.dtype)
        if arr.ndim != 2 or arr.shape[1] != self.input_size:
            raise ValueError(f"x_t: expected shape (B, {self.input_size}) (one time step; the "
                             f"prepared weights' input size is {self.input_size}), got "
                             f"{tuple(arr.shape)}")
        return np.ascontiguousarray(arr)

    def _state(self, a, name, shape):
        if a is None:
            return np.zeros(shape, self.dtype)
        arr = _api._float_array(a, name, self.dtype)
        _api._expect_shape(arr, shape, name)
        return np.ascontiguousarray(arr)

    def _no_c(self, c, name):
        if c is not None:
            raise ValueError(f"{name}: expected None (a {self.cell.upper()} has no cell state), "
                             f"got {type(c).__name__}")
        return None

    def _out(self, out, L, B, Ho, H):
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"out: expected a pair (h_out, c_out), got {type(out).__name__}")
        shapes = [("out[0]", out[0], (L, B, Ho))]
        if self.cell == "lstm":
            shapes.append(("out[1]", out[1], (L, B, H)))
        elif out[1] is not None:
            raise ValueError(f"out[1]: expected None (a {self.cell.upper()} has no cell state), "
                             f"got {type(out[1]).__name__}")
        for name, a, shape in shapes:
            if type(a) is not np.ndarray:
                raise TypeError(f"{name}: expected a NumPy array to write into, got "
                                f"{type(a).__name__}")
            if a.dtype != self.dtype:
                raise TypeError(f"{name}: expected dtype {self.dtype} (the network's), got "
                                f"{a.dtype}")
            _api._expect_shape(a, shape, name)
            if not a.flags.c_contiguous or not a.flags.writeable:
                raise ValueError(f"{name}: expected a C-contiguous writable array, got "
                                 f"{'a read-only' if not a.flags.writeable else 'a strided'} one")
        return out[0], (out[1] if self.cell == "lstm" else None)
