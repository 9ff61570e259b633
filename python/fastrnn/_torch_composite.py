# SPDX-License-Identifier: MIT
"""fastrnn's forward written once more as a composition of differentiable torch ops: what the
torch adapter's backward differentiates when the backward itself must be differentiable
(double backward: `torch.autograd.grad(..., create_graph=True)`, gradgradcheck, gradient
penalties). It is not a second engine and nothing else calls it.

The maths is the one published in DESIGN.md and written out in reference.py, in torch.nn's
gate orders (LSTM i, f, g, o with optional projection h' = W_hr(o⊙tanh(c')); GRU r, z, n with
n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn)); Elman h' = tanh|relu(W_ih x + b_ih + W_hh h +
b_hh)), and the engine's conventions for everything around the cell:
- lengths: x is zeroed past each sequence's end, a padded step outputs 0 and keeps the state,
  and the reverse direction of a sequence starts at its own last valid step;
- layers read the previous layer's [forward, reverse] outputs concatenated;
- dropout (training, between layers, p > 0) multiplies a layer's time-major (T, B, D*Hout)
  output by reference.dropout_mask(seed, layer, ...), the mask every engine draws bit for bit,
  so the composite's graph is the function the kernels computed, masks included.
Shapes use the legend of DESIGN.md: T, B, I, H, P (Hout = P or H), G gates, D, L.

Cost: a few small ops per gate per step (as torch.nn's CPU path, also a composite), each
recorded by autograd with its intermediates: slower than the fused kernels and larger than
their reserve, paid only by a backward that builds a graph.
"""

import numpy as np
import torch

from . import reference

__all__ = ["forward"]


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _lstm_step(xw_t, h, c, w_hh, b_hh, w_hr):
    a = xw_t + h @ w_hh.t()  # B,4H
    if b_hh is not None:
        a = a + b_hh
    i, f, g, o = a.chunk(4, dim=1)  # B,H each
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # B,H  c' = f⊙c + i⊙g
    h_new = torch.sigmoid(o) * torch.tanh(c_new)  # B,H  h' = o⊙tanh(c')
    if w_hr is not None:
        h_new = h_new @ w_hr.t()  # B,P
    return h_new, c_new


def _gru_step(xw_t, h, w_hh, b_hh):
    ah = h @ w_hh.t()  # B,3H
    if b_hh is not None:
        ah = ah + b_hh
    xr, xz, xn = xw_t.chunk(3, dim=1)  # B,H each
    hr, hz, hn = ah.chunk(3, dim=1)  # B,H each
    r = torch.sigmoid(xr + hr)  # B,H
    z = torch.sigmoid(xz + hz)  # B,H
    n = torch.tanh(xn + r * hn)  # B,H  n = tanh(W_in x + b_in + r⊙(W_hn h + b_hn))
    return (1 - z) * n + z * h  # B,H  h' = (1−z)⊙n + z⊙h


def _rnn_step(xw_t, h, w_hh, b_hh, relu):
    a = xw_t + h @ w_hh.t()  # B,H
    if b_hh is not None:
        a = a + b_hh
    return torch.relu(a) if relu else torch.tanh(a)  # B,H


def _direction(cell, x, w, h, c, valid, reverse):
    """One layer, one direction. x (T,B,I) time-major with zeroed padding; w this direction's
    [w_ih, w_hh, b_ih, b_hh, w_hr] (None where absent); h (B,Hout); c (B,H) or None; valid
    (T,B,1) bool or None (= every step). Returns (y (T,B,Hout), h_n, c_n)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = w
    xw = x @ w_ih.t()  # T,B,G*H  the input projection of all steps at once, as the engine
    if b_ih is not None:
        xw = xw + b_ih
    ys = [None] * x.shape[0]
    for t in _steps(x.shape[0], reverse):
        if cell == "lstm":
            h_new, c_new = _lstm_step(xw[t], h, c, w_hh, b_hh, w_hr)
        elif cell == "gru":
            h_new = _gru_step(xw[t], h, w_hh, b_hh)
        else:
            h_new = _rnn_step(xw[t], h, w_hh, b_hh, cell == "rnn_relu")
        if valid is None:
            ys[t], h = h_new, h_new
            c = c_new if cell == "lstm" else None
        else:  # a padded step outputs 0 and keeps the state
            m = valid[t]  # B,1
            ys[t] = torch.where(m, h_new, torch.zeros_like(h_new))
            h = torch.where(m, h_new, h)
            c = torch.where(m, c_new, c) if cell == "lstm" else None
    return torch.stack(ys), h, c


def _dropout_mask(seed, layer, y, p):
    """reference.dropout_mask (the engines' mask, bit for bit) as a tensor like y (T,B,D*Hout):
    made in float64 and rounded to y's dtype, as the reference does."""
    mask = reference.dropout_mask(seed, layer, tuple(y.shape), p, np.float64)
    return torch.from_numpy(mask).to(device=y.device, dtype=y.dtype)


def forward(x, weights, h0, c0, lengths, seed, cell, num_layers, bidirectional, batch_first,
            dropout, proj_size):
    """The custom op fastrnn::rnn_forward's (y, h_n, c_n) in differentiable torch ops, from the
    op's own arguments (see python/fastrnn/torch.py): x (T,B,I), or (B,T,I) with batch_first;
    weights the flat torch.nn list; h0 (L*D,B,Hout) or None; c0 (L*D,B,H) or None (LSTM);
    lengths (B,) or None; seed an int64 tensor of one element or None (no dropout).
    Returns y (T,B,D*Hout) (or (B,T,D*Hout)), h_n (L*D,B,Hout), c_n (L*D,B,H) or None."""
    L, D = num_layers, 2 if bidirectional else 1
    per = len(weights) // (L * D)  # w_ih, w_hh, [b_ih, b_hh], [w_hr]
    has_bias = per - (proj_size > 0) == 4
    inp = x.transpose(0, 1) if batch_first else x  # T,B,I
    T, B = inp.shape[:2]
    H = weights[0].shape[0] // {"lstm": 4, "gru": 3}.get(cell, 1)
    Hout = proj_size or H
    valid = None
    if lengths is not None:
        steps = torch.arange(T, device=lengths.device).unsqueeze(1)  # T,1
        valid = (steps < lengths.unsqueeze(0)).unsqueeze(2).to(inp.device)  # T,B,1
        inp = torch.where(valid, inp, torch.zeros_like(inp))  # the engine never reads padding
    if h0 is None:
        h0 = inp.new_zeros((L * D, B, Hout))
    if cell == "lstm" and c0 is None:
        c0 = inp.new_zeros((L * D, B, H))
    h_n, c_n = [], []
    for layer in range(L):
        outs = []
        for d in range(D):
            k = layer * D + d
            ws = weights[k * per:(k + 1) * per]
            w = [ws[0], ws[1], *(ws[2:4] if has_bias else (None, None)),
                 ws[-1] if proj_size else None]
            y_d, h_d, c_d = _direction(cell, inp, w, h0[k], c0[k] if cell == "lstm" else None,
                                       valid, d == 1)
            outs.append(y_d)
            h_n.append(h_d)
            c_n.append(c_d)
        inp = outs[0] if D == 1 else torch.cat(outs, dim=2)  # T,B,D*Hout
        if dropout > 0 and layer < L - 1:
            inp = inp * _dropout_mask(int(seed.item()), layer, inp, dropout)
    y = inp.transpose(0, 1) if batch_first else inp
    return y, torch.stack(h_n), (torch.stack(c_n) if cell == "lstm" else None)
