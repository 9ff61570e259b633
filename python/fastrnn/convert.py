# SPDX-License-Identifier: MIT
"""Weight layouts of other frameworks, to and from fastrnn's canonical (PyTorch/cuDNN) layout.

    weights = fastrnn.convert.from_keras("lstm", kernel, recurrent_kernel, bias)
    weights = fastrnn.convert.from_onnx("gru", W, R, B)           # all directions of the op
    weights = fastrnn.convert.from_tf_lstm_cell(kernel, bias, input_size=I)
    kernel, recurrent_kernel, bias = fastrnn.convert.to_keras("lstm", weights)
    W, R, B = fastrnn.convert.to_onnx("lstm", weights, bidirectional=False)

`weights` is the flat list of docs/design.md (`torch.nn.LSTM._flat_weights` order) for ONE layer:
`w_ih (G*H, I), w_hh (G*H, H), [b_ih (G*H,), b_hh (G*H,)]`, and for a bidirectional ONNX op
the same again for the reverse direction. Canonical gate order: LSTM i, f, g, o; GRU r, z, n;
RNN one block. Bias-free weights (2 arrays per direction) correspond to Keras `use_bias=False`
and to an ONNX op without `B`.

What this module is not: it converts arrays, it does not read model files, and it has no
activations other than the standard ones (sigmoid gates, tanh / relu): a model with other
activations, peepholes, projections inside Keras, or ONNX `clip` / `input_forget` is a different
model. Every result is a new, C-contiguous array of the input's floating dtype; nothing here
keeps or writes into the caller's arrays. Bad input raises ValueError (shapes, values) or
TypeError (types, dtypes) naming the argument, with the expected and received values.

GRU variants: fastrnn's `linear_before_reset=True` (the default, cuDNN/PyTorch) is Keras
`reset_after=True` and ONNX `linear_before_reset=1`; `linear_before_reset=False` is Keras
`reset_after=False` and ONNX `linear_before_reset=0` (ONNX's default). The weights do not record
the variant: run what these functions return with the matching `linear_before_reset`.
"""

import numbers

import numpy as np

__all__ = ["from_keras", "to_keras", "from_onnx", "to_onnx", "from_tf_lstm_cell"]

_GATES = {"lstm": 4, "gru": 3, "rnn": 1}

# Source block k of the canonical order comes from block PERM[k] of the other layout.
_KERAS_PERM = {"lstm": [0, 1, 2, 3],  # Keras i, f, c, o == canonical i, f, g, o
               "gru": [1, 0, 2],      # Keras z, r, h -> canonical r, z, n
               "rnn": [0]}
_ONNX_PERM = {"lstm": [0, 2, 3, 1],   # ONNX i, o, f, c -> canonical i, f, g, o
              "gru": [1, 0, 2],       # ONNX z, r, h -> canonical r, z, n
              "rnn": [0]}
_TF_PERM = [0, 2, 1, 3]               # TF1 i, j, f, o -> canonical i, f, g(=j), o


# ----------------------------------------------------------------------------------------------
# Checks: each message names the argument, what was expected and what was received


def _cell(cell):
    if not isinstance(cell, str):
        raise TypeError(f"cell: expected 'lstm', 'gru' or 'rnn', got {type(cell).__name__}")
    if cell not in _GATES:
        raise ValueError(f"cell: expected 'lstm', 'gru' or 'rnn', got {cell!r}")
    return cell, _GATES[cell]


def _float(a, name, dtype=None):
    """`a` as a NumPy floating array (dtype kept); all arrays of a call share one dtype."""
    try:
        arr = np.asarray(a)
    except Exception as exc:  # noqa: BLE001 - any failure to read it is a type error here
        raise TypeError(f"{name}: expected an array, got {type(a).__name__} ({exc})") from None
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array, got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (all arrays of a call share one dtype), "
                        f"got {arr.dtype}")
    return arr


def _shape(arr, shape, name, what=""):
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}{what}, got {tuple(arr.shape)}")


def _bool(value, name):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {value!r}")


def _blocks(a, G, perm, axis=0):
    """Reorder the G gate blocks of `a` along `axis` (block k of the result = block perm[k])."""
    parts = np.split(a, G, axis=axis)
    return np.concatenate([parts[p] for p in perm], axis=axis)


def _unperm(perm):
    return list(np.argsort(perm))


def _new(a):
    return np.array(a, order="C", copy=True)


def _canonical(weights, G, D):
    """Check a canonical flat list of one layer with D directions; returns (per-direction
    tuples (w_ih, w_hh, b_ih, b_hh) with None for absent biases, H, I, dtype)."""
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights: expected a list or tuple of arrays in torch _flat_weights "
                        f"order, got {type(weights).__name__}")
    if len(weights) not in (2 * D, 4 * D):
        raise ValueError(f"weights: expected {4 * D} arrays (w_ih, w_hh, b_ih, b_hh per "
                         f"direction, {D} direction{'s' if D > 1 else ''}) or {2 * D} without "
                         f"biases, got {len(weights)}")
    per = len(weights) // D
    w0 = _float(weights[0], "weights[0]")
    if w0.ndim != 2 or w0.shape[0] == 0 or w0.shape[0] % G:
        raise ValueError(f"weights[0] (w_ih): expected shape ({G}*hidden_size, input_size) with "
                         f"hidden_size > 0, got {tuple(w0.shape)}")
    H, I = w0.shape[0] // G, w0.shape[1]
    shapes = [(G * H, I), (G * H, H), (G * H,), (G * H,)]
    names = ["w_ih", "w_hh", "b_ih", "b_hh"]
    dirs = []
    for d in range(D):
        got = []
        for k in range(per):
            where = f"weights[{d * per + k}] ({names[k]}{', reverse' if d else ''})"
            a = _float(weights[d * per + k], where, w0.dtype)
            _shape(a, shapes[k], where)
            got.append(a)
        dirs.append(tuple(got) + (None, None) * (per == 2))
    return dirs, H, I, w0.dtype


# ----------------------------------------------------------------------------------------------
# Keras 3


def from_keras(cell, kernel, recurrent_kernel, bias=None, *, reset_after=True):
    """Canonical weights [w_ih, w_hh, b_ih, b_hh] (or [w_ih, w_hh] when bias is None) of a
    Keras 3 LSTM, GRU or SimpleRNN layer (`layer.get_weights()` order; Keras computes
    `x @ kernel`, so kernels are (in, gates*units) and the results transposed).

    cell="lstm", keras.layers.LSTM: kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,); gate
        order i, f, c, o (= canonical i, f, g, o)
            i = σ(x K_i + h U_i + b_i), f = σ(x K_f + h U_f + b_f), c~ = tanh(x K_c + h U_c + b_c),
            o = σ(x K_o + h U_o + b_o), c' = f⊙c + i⊙c~, h' = o⊙tanh(c')
        b_ih = bias, b_hh = 0.
    cell="gru", keras.layers.GRU: kernel (I, 3H), recurrent_kernel (H, 3H); gate order z, r, h
        (canonical r, z, n); h' = z⊙h + (1−z)⊙h~ (the same as canonical (1−z)⊙n + z⊙h)
        reset_after=True: bias (2, 3H) = [input bias, recurrent bias];
            z = σ(x K_z + b_z + h U_z + b'_z), r likewise,
            h~ = tanh(x K_h + b_h + r⊙(h U_h + b'_h))
            -> b_ih = bias[0], b_hh = bias[1]; run with linear_before_reset=True.
        reset_after=False: bias (3H,);  z = σ(x K_z + h U_z + b_z), r likewise,
            h~ = tanh(x K_h + (r⊙h) U_h + b_h)
            -> b_ih = bias, b_hh = 0; run with linear_before_reset=False.
    cell="rnn", keras.layers.SimpleRNN: kernel (I, H), recurrent_kernel (H, H), bias (H,);
            h' = act(x K + h U + b), act tanh (default) or relu -> b_ih = bias, b_hh = 0.
    """
    cell, G = _cell(cell)
    reset_after = _bool(reset_after, "reset_after")
    k = _float(kernel, "kernel")
    if k.ndim != 2 or k.shape[1] == 0 or k.shape[1] % G:
        raise ValueError(f"kernel: expected shape (input_size, {G}*units) with units > 0, got "
                         f"{tuple(k.shape)}")
    I, H = k.shape[0], k.shape[1] // G
    rk = _float(recurrent_kernel, "recurrent_kernel", k.dtype)
    _shape(rk, (H, G * H), "recurrent_kernel", f" (units={H} from kernel)")
    perm = _KERAS_PERM[cell]
    weights = [_new(_blocks(k, G, perm, axis=1).T), _new(_blocks(rk, G, perm, axis=1).T)]
    if bias is None:
        return weights
    b = _float(bias, "bias", k.dtype)
    if cell == "gru" and reset_after:
        _shape(b, (2, G * H), "bias", " (GRU with reset_after=True: [input bias, recurrent bias])")
        return weights + [_new(_blocks(b[0], G, perm)), _new(_blocks(b[1], G, perm))]
    _shape(b, (G * H,), "bias")
    return weights + [_new(_blocks(b, G, perm)), np.zeros(G * H, k.dtype)]


def to_keras(cell, weights, *, reset_after=True):
    """(kernel, recurrent_kernel, bias) for a Keras 3 LSTM / GRU / SimpleRNN layer
    (`layer.set_weights([...])`) from canonical weights [w_ih, w_hh, b_ih, b_hh] (bias None for
    [w_ih, w_hh]); the inverse of `from_keras`, whose docstring gives the Keras equations.

    Keras keeps one bias where fastrnn has two, except for a GRU with reset_after=True, so
    `b_ih + b_hh` is stored. That is exact for the LSTM, the RNN and the GRU's r and z gates; for
    a GRU with reset_after=False it is exact because that variant (linear_before_reset=False)
    adds b_hn outside r⊙(...). Converting weights trained with linear_before_reset=True to
    reset_after=False (or the reverse) is a different model, as it is between those frameworks.
    """
    cell, G = _cell(cell)
    reset_after = _bool(reset_after, "reset_after")
    [(w_ih, w_hh, b_ih, b_hh)], H, _, dtype = _canonical(weights, G, 1)
    back = _unperm(_KERAS_PERM[cell])
    kernel = _new(_blocks(w_ih, G, back).T)
    recurrent_kernel = _new(_blocks(w_hh, G, back).T)
    if b_ih is None:
        return kernel, recurrent_kernel, None
    if cell == "gru" and reset_after:
        bias = np.stack([_blocks(b_ih, G, back), _blocks(b_hh, G, back)])
    else:
        bias = _blocks(b_ih + b_hh, G, back)
    return kernel, recurrent_kernel, _new(bias.astype(dtype, copy=False))


# ----------------------------------------------------------------------------------------------
# ONNX


def from_onnx(cell, W, R, B=None, *, P=None):
    """Canonical weights of an ONNX LSTM, GRU or RNN operator (opset 7+, default
    activations): for each direction (forward, then reverse), w_ih, w_hh[, b_ih, b_hh].
    D = W.shape[0] directions (1, or 2 for direction="bidirectional"; "reverse" is one direction
    run backwards: pass those weights with bidirectional=False and reverse the sequence).

    cell="lstm": W (D, 4H, I), R (D, 4H, H), B (D, 8H) = [Wb, Rb], gate order i, o, f, c:
            i = σ(X Wi^T + H Ri^T + Wbi + Rbi), o, f likewise, c~ = tanh(X Wc^T + H Rc^T + Wbc + Rbc),
            C' = f⊙C + i⊙c~, H' = o⊙tanh(C')
        Peepholes (the P input, P⊙C terms in i, f, o) have no fastrnn equivalent: a P with any
        non-zero value is a ValueError.
    cell="gru": W (D, 3H, I), R (D, 3H, H), B (D, 6H) = [Wb, Rb], gate order z, r, h:
            z = σ(X Wz^T + H Rz^T + Wbz + Rbz), r likewise, H' = (1−z)⊙h~ + z⊙H
            linear_before_reset=0 (ONNX default): h~ = tanh(X Wh^T + (r⊙H) Rh^T + Rbh + Wbh)
                -> run with linear_before_reset=False (b_hn = Rbh is outside r⊙, as there)
            linear_before_reset=1: h~ = tanh(X Wh^T + r⊙(H Rh^T + Rbh) + Wbh)
                -> run with linear_before_reset=True
    cell="rnn": W (D, H, I), R (D, H, H), B (D, 2H): H' = f(X Wi^T + H Ri^T + Wbi + Rbi), f = Tanh
        (default; "Relu" is nonlinearity="relu").
    b_ih = Wb, b_hh = Rb with the gates reordered; B=None gives the bias-free list.
    """
    cell, G = _cell(cell)
    w = _float(W, "W")
    if w.ndim != 3 or w.shape[0] not in (1, 2) or w.shape[1] == 0 or w.shape[1] % G:
        raise ValueError(f"W: expected shape (num_directions in {{1, 2}}, {G}*hidden_size, "
                         f"input_size), got {tuple(w.shape)}")
    D, H, I = w.shape[0], w.shape[1] // G, w.shape[2]
    r = _float(R, "R", w.dtype)
    _shape(r, (D, G * H, H), "R", f" (num_directions={D}, hidden_size={H} from W)")
    b = None
    if B is not None:
        b = _float(B, "B", w.dtype)
        _shape(b, (D, 2 * G * H), "B", " ([Wb, Rb] per direction)")
    if P is not None:
        if cell != "lstm":
            raise ValueError(f"P: peepholes exist only for the ONNX LSTM, got P for cell={cell!r}")
        p = _float(P, "P", w.dtype)
        if np.any(p != 0):
            raise ValueError("P: ONNX LSTM peepholes are not supported (fastrnn's LSTM has no "
                             "peephole terms); expected None or all zeros, got non-zero values")
    perm = _ONNX_PERM[cell]
    weights = []
    for d in range(D):
        weights += [_new(_blocks(w[d], G, perm)), _new(_blocks(r[d], G, perm))]
        if b is not None:
            weights += [_new(_blocks(b[d, :G * H], G, perm)), _new(_blocks(b[d, G * H:], G, perm))]
    return weights


def _onnx_gate_order(cell):
    """The canonical gate block at each position of ONNX's order (ONNX block k is canonical
    block order[k]): to_onnx's reordering, and fastrnn.torch's ONNX export's
    (python/fastrnn/_torch_onnx.py, which applies it to tensors while torch.export traces)."""
    return _unperm(_ONNX_PERM[cell])


def to_onnx(cell, weights, *, bidirectional=False):
    """(W, R, B) for an ONNX LSTM / GRU / RNN operator from canonical weights of one layer
    (two directions with bidirectional=True, for direction="bidirectional"); the inverse of
    `from_onnx`, whose docstring gives the ONNX equations and gate orders. B is None for
    bias-free weights (omit the ONNX input). For a GRU, set the operator's linear_before_reset
    to the variant the weights were trained with (1 for fastrnn's default / PyTorch)."""
    cell, G = _cell(cell)
    D = 2 if _bool(bidirectional, "bidirectional") else 1
    dirs, H, _, dtype = _canonical(weights, G, D)
    back = _onnx_gate_order(cell)
    W = np.stack([_blocks(w_ih, G, back) for w_ih, _, _, _ in dirs])
    R = np.stack([_blocks(w_hh, G, back) for _, w_hh, _, _ in dirs])
    if dirs[0][2] is None:
        return _new(W), _new(R), None
    B = np.stack([np.concatenate([_blocks(b_ih, G, back), _blocks(b_hh, G, back)])
                  for _, _, b_ih, b_hh in dirs])
    return _new(W), _new(R), _new(B)


# ----------------------------------------------------------------------------------------------
# TensorFlow 1


def from_tf_lstm_cell(kernel, bias, *, input_size, forget_bias=1.0):
    """Canonical LSTM weights [w_ih, w_hh, b_ih, b_hh] of a TF1 `tf.nn.rnn_cell.BasicLSTMCell`
    or `LSTMCell` (without peepholes or num_proj), whose variables are `kernel` (I+H, 4H),
    applied to concat([x, h]), and `bias` (4H,), gate order i, j, f, o:
        i, j, f, o = split(concat([x, h]) @ kernel + bias, 4)
        c' = c⊙σ(f + forget_bias) + σ(i)⊙tanh(j),  h' = tanh(c')⊙σ(o)
    forget_bias is added at run time and not stored in the checkpoint, so it is folded into the
    forget gate's b_ih here (BasicLSTMCell's default 1.0; LSTMCell's default is also 1.0; pass
    what the model was built with). input_size (I) says where x's rows of the kernel end.
    """
    k = _float(kernel, "kernel")
    if isinstance(input_size, (bool, np.bool_)) or not isinstance(input_size, (int, np.integer)):
        raise TypeError(f"input_size: expected an int, got {type(input_size).__name__}")
    if k.ndim != 2 or k.shape[1] == 0 or k.shape[1] % 4:
        raise ValueError(f"kernel: expected shape (input_size + num_units, 4*num_units), got "
                         f"{tuple(k.shape)}")
    H = k.shape[1] // 4
    if input_size < 0 or k.shape[0] != input_size + H:
        raise ValueError(f"kernel: expected shape ({input_size} + {H}, {4 * H}) (input_size + "
                         f"num_units rows), got {tuple(k.shape)}")
    b = _float(bias, "bias", k.dtype)
    _shape(b, (4 * H,), "bias", f" (4*num_units, num_units={H} from kernel)")
    if isinstance(forget_bias, (bool, np.bool_)) or not isinstance(forget_bias, numbers.Real):
        raise TypeError(f"forget_bias: expected a float, got {forget_bias!r}")
    b_ih = _blocks(b, 4, _TF_PERM).copy()
    b_ih[H:2 * H] += forget_bias  # canonical f block
    return [_new(_blocks(k[:input_size].T, 4, _TF_PERM)), _new(_blocks(k[input_size:].T, 4, _TF_PERM)),
            _new(b_ih), np.zeros(4 * H, k.dtype)]
