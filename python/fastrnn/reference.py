# SPDX-License-Identifier: MIT
"""NumPy reference for fastrnn: forward and full BPTT backward of LSTM, GRU and Elman RNN.

T = sequence length (time steps)   B = batch size        I = input size
H = hidden size                    P = projection size (LSTM only; 0 = none, then the output size is H)
G = gates per cell (LSTM 4: i,f,g,o · GRU 3: r,z,n · RNN 1)
D = directions (1 or 2)            L = layers

What this file is: the maths of docs/design.md written once, by hand, for a human to check line
by line. It is the test oracle of the compiled kernels and the `backend="reference"` fallback of
the public API. Each cell has a `*_forward(...) -> (..., cache)` and a `*_backward(..., cache)`.

What it is not: fast, or a public entry point. It handles one layer and one direction per call
(the caller stacks layers and directions), does not validate its arguments (the API layer
does), and never writes into its inputs.

Conventions shared by every cell:
- Hout is the size of the hidden state that is output and fed back: P when P > 0, else H.
- Time-major arrays; weights in the PyTorch/cuDNN layout (gate blocks stacked along axis 0).
- Computation runs in the dtype of x; outputs have that dtype.
- lengths (PackedSequence semantics): step t of sequence b is valid iff t < lengths[b]. A padded
  step outputs y[t, b] = 0 and leaves the state unchanged; padded x and dy are never read (even
  NaN there changes nothing) and the gradient for padded x is 0. Because the mask only depends on t, the same mask also gives the reverse
  direction: walking t = T-1 .. 0, sequence b is frozen until t = lengths[b]-1, then runs down to
  0, which is torch's reverse direction (y[t] stays aligned with x[t]).
- Backward walks the steps in the opposite order, accumulating the gradients of the
  pre-activations per step, then forms the weight gradients with one contraction over all T.

ONNX options (keyword-only; their defaults leave the maths above bit for bit unchanged):
- activations: ONNX's f, g, h of the LSTM (default Sigmoid, Tanh, Tanh), f, g of the GRU
  (Sigmoid, Tanh) and f of the RNN (Tanh, or Relu for nonlinearity="relu"); each entry a name of
  ACTIVATIONS or (name, alpha) or (name, alpha, beta), None taking the ONNX default (Activation).
- clip: every gate's pre-activation is bounded to [-clip, clip] before its activation (ONNX
  `clip`); its gradient is 0 where clipped. The LSTM's h(c') is not clipped (as ONNX Runtime).
- LSTM peepholes (3H,) in fastrnn's gate order p_i, p_f, p_o (ONNX's P is p_i, p_o, p_f):
  i and f add p⊙c_{t-1} to their pre-activations, o adds p_o⊙c_t; the backward then returns a
  9th value, dpeepholes (3H,).
- LSTM input_forget (ONNX `input_forget=1`): the forget gate is coupled, f = 1 − i; the f rows
  of the weights and biases are then unused and get zero gradients.
"""

import numpy as np


# ----------------------------------------------------------------------------------------------
# shared helpers


def sigmoid(a):
    # σ(a) = 1 / (1 + e^-a), written as exp(-log(1 + e^-a)) so a large |a| cannot overflow
    return np.exp(-np.logaddexp(0, -a))  # same dtype as a


def _lengths(lengths, T, B):
    # None means every sequence has all T steps
    return np.full(B, T) if lengths is None else np.asarray(lengths)  # B


def _steps(T, reverse):
    # the order in which forward visits the time steps; backward walks it backwards
    return list(range(T - 1, -1, -1)) if reverse else list(range(T))


def _zero_padding(x, lengths):
    # padded x is never read, so even NaN there cannot reach an output or a gradient
    T = x.shape[0]
    valid = np.arange(T)[:, None] < lengths[None, :]  # T,B
    return np.where(valid[:, :, None], x, 0)  # T,B,I


def dropout_mask(seed, layer, shape, p, dtype):
    """The inverted-dropout mask the engines apply to the output of `layer` (the input of layer
    + 1) when training: 0 where dropped, 1/(1-p) where kept. A pure function of (seed, layer,
    element index), bit for bit the one in csrc/include/fastrnn/dropout.h."""
    phi = np.uint64(0x9E3779B97F4A7C15)
    element = np.arange(int(np.prod(shape)), dtype=np.uint64)  # flat index into T,B,D*Hout
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps around, as in C++
        z = (np.uint64(seed) ^ (phi * np.uint64(layer + 1))) + phi * (element + np.uint64(1))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    bits = z >> np.uint64(40)  # 24 uniform bits
    threshold = min(int(p * 16777216.0 + 0.5), 16777216)
    keep = (bits >= threshold).reshape(shape)
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0  # nothing is kept when p == 1
    return np.where(keep, scale, 0.0).astype(dtype)  # shape


def _bias(b, n, dt):
    # a missing bias acts as zeros
    return np.zeros(n, dt) if b is None else b  # n


# ----------------------------------------------------------------------------------------------
# ONNX activations and clip (the activations= and clip= options of every cell)

# ONNX's list (operator docs of LSTM/GRU/RNN). A missing alpha or beta takes, as ONNX says, the
# default of the ONNX operator of that name; Affine's is that of ONNX's experimental Affine
# operator and ScaledTanh's that of ONNX Runtime's contrib ScaledTanh. ONNX Runtime 1.32's
# LSTM/GRU/RNN kernels differ there: they run a missing alpha and beta of Affine, ScaledTanh and
# ThresholdedRelu as 0 (models that rely on a default need an explicit value to agree).
ACTIVATIONS = {  # name: (default alpha, default beta), None where the function has no such value
    "Sigmoid": (None, None), "Tanh": (None, None), "Relu": (None, None),
    "Affine": (1.0, 0.0), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None),
    "ScaledTanh": (1.0, 1.0), "HardSigmoid": (0.2, 0.5), "Elu": (1.0, None),
    "Softsign": (None, None), "Softplus": (None, None),
}


class Activation:
    """One ONNX activation: y = act(a), and dL/da = act.backward(dL/dy, a, y).

    Built from a name of ACTIVATIONS or a tuple (name, alpha) / (name, alpha, beta); alpha or
    beta None (or left out) takes the default. At a kink the derivative is the one of the flat
    piece where there is one, else of the left piece, as relu'(0) = 0 and like torch:
    Relu'(0) = 0, ThresholdedRelu'(alpha) = 0, HardSigmoid' = 0 on both bends, LeakyRelu'(0) =
    alpha, Elu'(0) = alpha."""

    def __init__(self, spec):
        name, *ab = (spec,) if isinstance(spec, str) else tuple(spec)
        if name not in ACTIVATIONS or len(ab) > 2:
            raise ValueError(f"activations: expected a name of {sorted(ACTIVATIONS)}, optionally "
                             f"with alpha and beta, got {spec!r}")
        ab = list(ab) + [None] * (2 - len(ab))
        self.name = name
        self.alpha, self.beta = (d if v is None else v for v, d in zip(ab, ACTIVATIONS[name]))

    def __call__(self, a):
        n, al, be = self.name, self.alpha, self.beta
        if n == "Sigmoid":
            return sigmoid(a)  # 1/(1 + e^-a)
        if n == "Tanh":
            return np.tanh(a)
        if n == "Relu":
            return np.maximum(a, 0)
        if n == "Affine":
            return al * a + be
        if n == "LeakyRelu":
            return np.where(a >= 0, a, al * a)
        if n == "ThresholdedRelu":
            return np.where(a >= al, a, 0)
        if n == "ScaledTanh":
            return al * np.tanh(be * a)
        if n == "HardSigmoid":
            return np.clip(al * a + be, 0, 1)
        if n == "Elu":
            return np.where(a >= 0, a, al * np.expm1(np.minimum(a, 0)))  # α(e^a − 1), no overflow
        if n == "Softsign":
            return a / (1 + np.abs(a))
        return np.logaddexp(0, a)  # Softplus: log(1 + e^a), no overflow

    def backward(self, dy, a, y):
        """dL/da from dL/dy, the input a and the output y = self(a)."""
        n, al, be = self.name, self.alpha, self.beta
        if n == "Sigmoid":
            return dy * y * (1 - y)  # σ'(a) = σ(1−σ)
        if n == "Tanh":
            return dy * (1 - y**2)  # tanh'(a) = 1 − tanh²
        if n == "Relu":
            return dy * (a > 0)  # relu'(a) = [a > 0], 0 at a = 0 like torch
        if n == "Affine":
            return dy * al
        if n == "LeakyRelu":
            return np.where(a > 0, dy, al * dy)
        if n == "ThresholdedRelu":
            return dy * (a > al)
        if n == "ScaledTanh":
            return dy * al * be * (1 - np.tanh(be * a)**2)
        if n == "HardSigmoid":
            return dy * al * ((0 < y) & (y < 1))  # α inside the ramp, 0 on the flat pieces
        if n == "Elu":
            return np.where(a > 0, dy, dy * al * np.exp(np.minimum(a, 0)))  # (α(e^a − 1))' = αe^a
        if n == "Softsign":
            return dy / (1 + np.abs(a))**2
        return dy * sigmoid(a)  # Softplus' = σ


def _activations(specs, defaults):
    # the cell's activation slots (LSTM f, g, h; GRU f, g; RNN f); None keeps the defaults
    specs = defaults if specs is None else list(specs)
    if len(specs) != len(defaults):
        raise ValueError(f"activations: expected {len(defaults)} (like {list(defaults)}), "
                         f"got {len(specs)}: {specs!r}")
    return [Activation(s) for s in specs]


def _clip(a, clip):
    # ONNX clip bounds the input of an activation to [-clip, clip]; None: no clip
    return a if clip is None else np.clip(a, -clip, clip)


def _gate_backward(act, dy, a, y, clip):
    # dL/da of y = act(clip(a)); the clip passes the gradient strictly inside (-clip, clip) and
    # stops it where it clips (on the bounds too: its flat piece wins, as for relu'(0) = 0)
    da = act.backward(dy, _clip(a, clip), y)
    return da if clip is None else da * (np.abs(a) < clip)


# ----------------------------------------------------------------------------------------------
# LSTM (gate order i, f, g, o; optional projection)


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths=None, reverse=False, w_hr=None, *,
                 peepholes=None, clip=None, input_forget=False, activations=None):
    """x (T,B,I); w_ih (4H,I); w_hh (4H,Hout); b_ih, b_hh (4H,) or None; h0 (B,Hout); c0 (B,H);
    lengths (B,) ints in [0,T] or None (= all T); w_hr (P,H) or None; Hout = P if w_hr is given else H.
    ONNX options (see the top of the file): peepholes (3H,) p_i, p_f, p_o or None; clip float or
    None; input_forget bool; activations [f, g, h] or None (= Sigmoid, Tanh, Tanh).
    Returns (y (T,B,Hout), h_n (B,Hout), c_n (B,H), cache)."""
    dt = x.dtype
    T, B, _ = x.shape
    H = w_ih.shape[0] // 4
    Hout = h0.shape[1]
    f_act, g_act, h_act = _activations(activations, ("Sigmoid", "Tanh", "Tanh"))
    lengths = _lengths(lengths, T, B)  # B
    x = _zero_padding(x, lengths)  # T,B,I
    xw = x @ w_ih.T + _bias(b_ih, 4 * H, dt)  # T,B,4H  input projection of all steps at once
    b_hh_ = _bias(b_hh, 4 * H, dt)  # 4H
    h = np.array(h0, dtype=dt)  # B,Hout  a copy: the caller's h0 is never written
    c = np.array(c0, dtype=dt)  # B,H
    y = np.zeros((T, B, Hout), dt)  # T,B,Hout
    h_prev = np.zeros((T, B, Hout), dt)  # T,B,Hout  state entering step t
    c_prev = np.zeros((T, B, H), dt)  # T,B,H
    c_next = np.zeros((T, B, H), dt)  # T,B,H  c' of step t (o's peephole and h's input)
    pre = np.zeros((T, B, 4 * H), dt)  # T,B,4H  pre-activations (with peepholes, before clip)
    gates = np.zeros((T, B, 4 * H), dt)  # T,B,4H  activated i, f, g, o
    tanh_c = np.zeros((T, B, H), dt)  # T,B,H  h(c'), tanh(c') by default
    for t in _steps(T, reverse):
        m = (t < lengths)[:, None]  # B,1  valid step?
        a = xw[t] + h @ w_hh.T + b_hh_  # B,4H  pre-activations
        a_i, a_f, a_g, a_o = (a[:, k * H:(k + 1) * H] for k in range(4))  # B,H each
        if peepholes is not None:
            a_i = a_i + peepholes[0 * H:1 * H] * c  # B,H  i and f look at c_{t-1}
            a_f = a_f + peepholes[1 * H:2 * H] * c  # B,H
        i = f_act(_clip(a_i, clip))  # B,H
        f = 1 - i if input_forget else f_act(_clip(a_f, clip))  # B,H  input_forget couples f = 1 − i
        g = g_act(_clip(a_g, clip))  # B,H
        c_new = f * c + i * g  # B,H  c' = f⊙c + i⊙g
        if peepholes is not None:
            a_o = a_o + peepholes[2 * H:3 * H] * c_new  # B,H  o looks at c_t
        o = f_act(_clip(a_o, clip))  # B,H
        tc = h_act(c_new)  # B,H  h(c'), tanh(c') by default
        h_new = o * tc  # B,H  h' = o⊙tanh(c')
        if w_hr is not None:
            h_new = h_new @ w_hr.T  # B,P  h' = W_hr(o⊙tanh(c'))
        h_prev[t], c_prev[t], c_next[t] = h, c, c_new  # B,Hout and B,H
        pre[t] = np.concatenate([a_i, a_f, a_g, a_o], axis=1)  # B,4H
        gates[t] = np.concatenate([i, f, g, o], axis=1)  # B,4H
        tanh_c[t] = tc  # B,H
        y[t] = np.where(m, h_new, 0)  # B,Hout  padded steps output 0
        h = np.where(m, h_new, h)  # B,Hout  ... and keep their state
        c = np.where(m, c_new, c)  # B,H
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, has_bias=b_ih is not None,
                 lengths=lengths, reverse=reverse, peepholes=peepholes, clip=clip,
                 input_forget=input_forget, activations=(f_act, g_act, h_act),
                 h_prev=h_prev, c_prev=c_prev, c_next=c_next, pre=pre, gates=gates, tanh_c=tanh_c)
    return y, h, c, cache


def lstm_backward(dy, dh_n, dc_n, cache):
    """dy (T,B,Hout); dh_n (B,Hout) or None (= zeros); dc_n (B,H) or None.
    Returns (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr); db_* are None when the biases were None,
    dw_hr None when there was no projection; when the forward had peepholes, dpeepholes (3H,)
    follows as a 9th value."""
    x, w_ih, w_hh, w_hr = cache["x"], cache["w_ih"], cache["w_hh"], cache["w_hr"]
    lengths, peepholes, clip = cache["lengths"], cache["peepholes"], cache["clip"]
    f_act, g_act, h_act = cache["activations"]
    dt = x.dtype
    T, B, _ = x.shape
    H = w_ih.shape[0] // 4
    Hout = w_hh.shape[1]
    dh = np.zeros((B, Hout), dt) if dh_n is None else np.array(dh_n, dtype=dt)  # B,Hout  dL/dh
    dc = np.zeros((B, H), dt) if dc_n is None else np.array(dc_n, dtype=dt)  # B,H  dL/dc
    da_all = np.zeros((T, B, 4 * H), dt)  # T,B,4H  dL/d(pre-activations)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr, dtype=dt)  # P,H
    for t in reversed(_steps(T, cache["reverse"])):
        m = (t < lengths)[:, None]  # B,1
        gates, pre = cache["gates"][t], cache["pre"][t]  # B,4H each
        i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))  # B,H each
        a_i, a_f, a_g, a_o = (pre[:, k * H:(k + 1) * H] for k in range(4))  # B,H each
        tc = cache["tanh_c"][t]  # B,H
        dh_new = np.where(m, dh + dy[t], 0)  # B,Hout  a padded step passes dh through untouched
        if w_hr is not None:
            dw_hr += dh_new.T @ (o * tc)  # P,H
            dm = dh_new @ w_hr  # B,H  dL/d(o⊙tanh(c'))
        else:
            dm = dh_new  # B,H
        do = dm * tc  # B,H
        da_o = _gate_backward(f_act, do, a_o, o, clip)  # B,H
        dc_new = np.where(m, dc, 0) + h_act.backward(dm * o, cache["c_next"][t], tc)  # B,H
        if peepholes is not None:
            dc_new = dc_new + da_o * peepholes[2 * H:3 * H]  # B,H  o's peephole on c'
        di = dc_new * g  # B,H
        df = dc_new * cache["c_prev"][t]  # B,H
        dg = dc_new * i  # B,H
        if cache["input_forget"]:
            di = di - df  # B,H  f = 1 − i
            da_f = np.zeros_like(df)  # B,H  a_f is not used
        else:
            da_f = _gate_backward(f_act, df, a_f, f, clip)  # B,H
        da_i = _gate_backward(f_act, di, a_i, i, clip)  # B,H
        da_g = _gate_backward(g_act, dg, a_g, g, clip)  # B,H
        da = np.concatenate([da_i, da_f, da_g, da_o], axis=1)  # B,4H
        da_all[t] = da  # zero on padded rows, so they add nothing below
        dc_prev = dc_new * f  # B,H
        if peepholes is not None:
            dc_prev = dc_prev + da_i * peepholes[0 * H:1 * H] + da_f * peepholes[1 * H:2 * H]  # B,H
        dh = np.where(m, da @ w_hh, dh)  # B,Hout
        dc = np.where(m, dc_prev, dc)  # B,H
    dx = da_all @ w_ih  # T,B,I
    dw_ih = np.einsum("tbg,tbi->gi", da_all, x)  # 4H,I
    dw_hh = np.einsum("tbg,tbh->gh", da_all, cache["h_prev"])  # 4H,Hout
    db = da_all.sum(axis=(0, 1)) if cache["has_bias"] else None  # 4H  b_ih and b_hh enter alike
    db_ih, db_hh = (None, None) if db is None else (db, db.copy())
    grads = (dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
    if peepholes is None:
        return grads
    dp = np.concatenate([np.einsum("tbh,tbh->h", da_all[:, :, 0 * H:1 * H], cache["c_prev"]),
                         np.einsum("tbh,tbh->h", da_all[:, :, 1 * H:2 * H], cache["c_prev"]),
                         np.einsum("tbh,tbh->h", da_all[:, :, 3 * H:4 * H], cache["c_next"])])  # 3H
    return grads + (dp,)


# ----------------------------------------------------------------------------------------------
# GRU (gate order r, z, n; linear_before_reset selects where r is applied)


def gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=None, reverse=False, linear_before_reset=True, *,
                clip=None, activations=None):
    """x (T,B,I); w_ih (3H,I); w_hh (3H,H); b_ih, b_hh (3H,) or None; h0 (B,H); lengths as LSTM.
    linear_before_reset=True:  n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn))   (PyTorch/cuDNN)
    linear_before_reset=False: n = tanh(W_in x + b_in + W_hn(r⊙h) + b_hn)    (ONNX default)
    ONNX options (see the top of the file): clip float or None; activations [f, g] or None
    (= Sigmoid, Tanh): r and z use f, n uses g.
    Returns (y (T,B,H), h_n (B,H), cache)."""
    dt = x.dtype
    T, B, _ = x.shape
    H = w_ih.shape[0] // 3
    f_act, g_act = _activations(activations, ("Sigmoid", "Tanh"))
    lengths = _lengths(lengths, T, B)  # B
    x = _zero_padding(x, lengths)  # T,B,I
    xw = x @ w_ih.T + _bias(b_ih, 3 * H, dt)  # T,B,3H
    b_hh_ = _bias(b_hh, 3 * H, dt)  # 3H
    h = np.array(h0, dtype=dt)  # B,H
    y = np.zeros((T, B, H), dt)  # T,B,H
    h_prev = np.zeros((T, B, H), dt)  # T,B,H
    pre = np.zeros((T, B, 3 * H), dt)  # T,B,3H  pre-activations of r, z, n (before clip)
    gates = np.zeros((T, B, 3 * H), dt)  # T,B,3H  activated r, z, n
    hn = np.zeros((T, B, H), dt)  # T,B,H  input of the n-gate's r: W_hn h + b_hn, or r⊙h
    for t in _steps(T, reverse):
        m = (t < lengths)[:, None]  # B,1
        a_rz = xw[t, :, :2 * H] + h @ w_hh[:2 * H].T + b_hh_[:2 * H]  # B,2H
        r = f_act(_clip(a_rz[:, :H], clip))  # B,H
        z = f_act(_clip(a_rz[:, H:], clip))  # B,H
        if linear_before_reset:
            hn[t] = h @ w_hh[2 * H:].T + b_hh_[2 * H:]  # B,H  W_hn h + b_hn
            a_n = xw[t, :, 2 * H:] + r * hn[t]  # B,H
        else:
            hn[t] = r * h  # B,H  r⊙h
            a_n = xw[t, :, 2 * H:] + hn[t] @ w_hh[2 * H:].T + b_hh_[2 * H:]  # B,H
        n = g_act(_clip(a_n, clip))  # B,H
        h_new = (1 - z) * n + z * h  # B,H  h' = (1−z)⊙n + z⊙h
        h_prev[t] = h  # B,H
        pre[t] = np.concatenate([a_rz, a_n], axis=1)  # B,3H
        gates[t] = np.concatenate([r, z, n], axis=1)  # B,3H
        y[t] = np.where(m, h_new, 0)  # B,H
        h = np.where(m, h_new, h)  # B,H
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, has_bias=b_ih is not None, lengths=lengths,
                 reverse=reverse, linear_before_reset=linear_before_reset, clip=clip,
                 activations=(f_act, g_act), h_prev=h_prev, pre=pre, gates=gates, hn=hn)
    return y, h, cache


def gru_backward(dy, dh_n, cache):
    """dy (T,B,H); dh_n (B,H) or None (= zeros).
    Returns (dx, dh0, dw_ih, dw_hh, db_ih, db_hh); db_* are None when the biases were None."""
    x, w_ih, w_hh = cache["x"], cache["w_ih"], cache["w_hh"]
    lengths, lbr, clip = cache["lengths"], cache["linear_before_reset"], cache["clip"]
    f_act, g_act = cache["activations"]
    dt = x.dtype
    T, B, _ = x.shape
    H = w_ih.shape[0] // 3
    dh = np.zeros((B, H), dt) if dh_n is None else np.array(dh_n, dtype=dt)  # B,H
    dax_all = np.zeros((T, B, 3 * H), dt)  # T,B,3H  dL/d(W_ih x + b_ih)
    dah_all = np.zeros((T, B, 3 * H), dt)  # T,B,3H  dL/d(recurrent pre-activations, see below)
    for t in reversed(_steps(T, cache["reverse"])):
        m = (t < lengths)[:, None]  # B,1
        gates, pre = cache["gates"][t], cache["pre"][t]  # B,3H each
        r, z, n = (gates[:, k * H:(k + 1) * H] for k in range(3))  # B,H each
        a_r, a_z, a_n = (pre[:, k * H:(k + 1) * H] for k in range(3))  # B,H each
        h_prev, hn = cache["h_prev"][t], cache["hn"][t]  # B,H
        dh_new = np.where(m, dh + dy[t], 0)  # B,H
        dz = dh_new * (h_prev - n)  # B,H
        dn = dh_new * (1 - z)  # B,H
        da_n = _gate_backward(g_act, dn, a_n, n, clip)  # B,H
        if lbr:
            dr = da_n * hn  # B,H  n-input is r⊙hn
            dah_n = da_n * r  # B,H  dL/d(W_hn h + b_hn)
            dh_via_n = dah_n @ w_hh[2 * H:]  # B,H
        else:
            drh = da_n @ w_hh[2 * H:]  # B,H  dL/d(r⊙h)
            dr = drh * h_prev  # B,H
            dah_n = da_n  # B,H  dL/d(W_hn(r⊙h) + b_hn)
            dh_via_n = drh * r  # B,H
        da_r = _gate_backward(f_act, dr, a_r, r, clip)  # B,H
        da_z = _gate_backward(f_act, dz, a_z, z, clip)  # B,H
        dax_all[t] = np.concatenate([da_r, da_z, da_n], axis=1)  # B,3H
        dah_all[t] = np.concatenate([da_r, da_z, dah_n], axis=1)  # B,3H
        dh_prev = dh_new * z + np.concatenate([da_r, da_z], axis=1) @ w_hh[:2 * H] + dh_via_n  # B,H
        dh = np.where(m, dh_prev, dh)  # B,H
    dx = dax_all @ w_ih  # T,B,I
    dw_ih = np.einsum("tbg,tbi->gi", dax_all, x)  # 3H,I
    # the r and z rows of w_hh multiply h; the n rows multiply h (lbr) or r⊙h (not lbr)
    h_in_n = cache["h_prev"] if lbr else cache["hn"]  # T,B,H
    dw_hh = np.concatenate([np.einsum("tbg,tbh->gh", dah_all[:, :, :2 * H], cache["h_prev"]),
                            np.einsum("tbg,tbh->gh", dah_all[:, :, 2 * H:], h_in_n)])  # 3H,H
    db_ih = dax_all.sum(axis=(0, 1)) if cache["has_bias"] else None  # 3H
    db_hh = dah_all.sum(axis=(0, 1)) if cache["has_bias"] else None  # 3H
    return dx, dh, dw_ih, dw_hh, db_ih, db_hh


# ----------------------------------------------------------------------------------------------
# Elman RNN (one gate; tanh or relu)


def rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=None, reverse=False, nonlinearity="tanh", *,
                clip=None, activations=None):
    """x (T,B,I); w_ih (H,I); w_hh (H,H); b_ih, b_hh (H,) or None; h0 (B,H); lengths as LSTM;
    nonlinearity "tanh" or "relu". ONNX options (see the top of the file): clip float or None;
    activations [f] or None (= Tanh or Relu, from nonlinearity), which replaces nonlinearity.
    Returns (y (T,B,H), h_n (B,H), cache)."""
    dt = x.dtype
    T, B, _ = x.shape
    H = w_ih.shape[0]
    (act,) = _activations(activations, ("Tanh" if nonlinearity == "tanh" else "Relu",))
    lengths = _lengths(lengths, T, B)  # B
    x = _zero_padding(x, lengths)  # T,B,I
    xw = x @ w_ih.T + _bias(b_ih, H, dt)  # T,B,H
    b_hh_ = _bias(b_hh, H, dt)  # H
    h = np.array(h0, dtype=dt)  # B,H
    y = np.zeros((T, B, H), dt)  # T,B,H
    h_prev = np.zeros((T, B, H), dt)  # T,B,H
    pre = np.zeros((T, B, H), dt)  # T,B,H  pre-activations (before clip)
    h_out = np.zeros((T, B, H), dt)  # T,B,H  act(a)
    for t in _steps(T, reverse):
        m = (t < lengths)[:, None]  # B,1
        a = xw[t] + h @ w_hh.T + b_hh_  # B,H
        h_new = act(_clip(a, clip))  # B,H  tanh(a) or max(a, 0) by default
        h_prev[t], pre[t], h_out[t] = h, a, h_new  # B,H each
        y[t] = np.where(m, h_new, 0)  # B,H
        h = np.where(m, h_new, h)  # B,H
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, has_bias=b_ih is not None, lengths=lengths,
                 reverse=reverse, clip=clip, activation=act, h_prev=h_prev, pre=pre, h_out=h_out)
    return y, h, cache


def rnn_backward(dy, dh_n, cache):
    """dy (T,B,H); dh_n (B,H) or None (= zeros).
    Returns (dx, dh0, dw_ih, dw_hh, db_ih, db_hh); db_* are None when the biases were None."""
    x, w_ih, w_hh, lengths = cache["x"], cache["w_ih"], cache["w_hh"], cache["lengths"]
    dt = x.dtype
    T, B, _ = x.shape
    H = w_ih.shape[0]
    dh = np.zeros((B, H), dt) if dh_n is None else np.array(dh_n, dtype=dt)  # B,H
    da_all = np.zeros((T, B, H), dt)  # T,B,H
    for t in reversed(_steps(T, cache["reverse"])):
        m = (t < lengths)[:, None]  # B,1
        dh_new = np.where(m, dh + dy[t], 0)  # B,H
        da = _gate_backward(cache["activation"], dh_new, cache["pre"][t], cache["h_out"][t],
                            cache["clip"])  # B,H  tanh' = 1 − tanh², relu' = [a > 0]
        da_all[t] = da  # B,H
        dh = np.where(m, da @ w_hh, dh)  # B,H
    dx = da_all @ w_ih  # T,B,I
    dw_ih = np.einsum("tbg,tbi->gi", da_all, x)  # H,I
    dw_hh = np.einsum("tbg,tbh->gh", da_all, cache["h_prev"])  # H,H
    db = da_all.sum(axis=(0, 1)) if cache["has_bias"] else None  # H
    db_ih, db_hh = (None, None) if db is None else (db, db.copy())
    return dx, dh, dw_ih, dw_hh, db_ih, db_hh
