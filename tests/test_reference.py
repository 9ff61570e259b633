# SPDX-License-Identifier: MIT
"""Tests of python/fastrnn/reference.py, the oracle every other test trusts.

- every gradient (dx, dh0, dc0, each weight and bias) against central finite differences, in
  float64 at small odd sizes, for every cell and variant, with and without lengths, biases and
  reverse;
- PackedSequence semantics: padded steps output 0, keep the state and are never read;
- dtypes and inputs left untouched;
- parity with torch.nn.LSTM/GRU/RNN (outputs and autograd gradients) when torch is importable.
"""

import numpy as np
import pytest

from fastrnn import reference
from _tolerances import (SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close,
                         assert_matches_finite_differences)

T, B, I, H, P = 5, 3, 7, 5, 3
LENGTHS = [5, 0, 3]  # full, empty and in between
GATES = {"lstm": 4, "gru": 3, "rnn": 1}

# (cell, option): option is proj_size for LSTM, linear_before_reset for GRU, nonlinearity for RNN
VARIANTS = [("lstm", 0), ("lstm", P), ("gru", True), ("gru", False), ("rnn", "tanh"), ("rnn", "relu")]
VARIANT_IDS = ["lstm", "lstm_proj", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu"]


def hout(cell, option):
    return option if cell == "lstm" and option else H


def make_params(cell, option, bias, dtype=np.float64, seed=0):
    """The inputs of one forward call, by the name of their gradient."""
    rng = np.random.default_rng(seed)

    def u(*shape):
        return rng.uniform(-0.5, 0.5, shape).astype(dtype)

    G, Ho = GATES[cell], hout(cell, option)
    p = dict(x=u(T, B, I), h0=u(B, Ho), w_ih=u(G * H, I), w_hh=u(G * H, Ho))
    if bias:
        p["b_ih"], p["b_hh"] = u(G * H), u(G * H)
    if cell == "lstm":
        p["c0"] = u(B, H)
        if option:
            p["w_hr"] = u(P, H)
    return p


def loss_weights(cell, option, dtype=np.float64, seed=1):
    """Random Wy, Wh, Wc of L = sum(y*Wy) + sum(h_n*Wh) + sum(c_n*Wc), so dy = Wy etc."""
    rng = np.random.default_rng(seed)
    Ho = hout(cell, option)
    wy, wh, wc = rng.normal(size=(T, B, Ho)), rng.normal(size=(B, Ho)), rng.normal(size=(B, H))
    return wy.astype(dtype), wh.astype(dtype), (wc.astype(dtype) if cell == "lstm" else None)


def forward(cell, option, p, lengths=None, reverse=False):
    """-> (y, h_n, c_n or None, cache)"""
    args = (p["x"], p["w_ih"], p["w_hh"], p.get("b_ih"), p.get("b_hh"), p["h0"])
    if cell == "lstm":
        return reference.lstm_forward(*args, p["c0"], lengths, reverse, w_hr=p.get("w_hr"))
    if cell == "gru":
        y, h_n, cache = reference.gru_forward(*args, lengths, reverse, linear_before_reset=option)
    else:
        y, h_n, cache = reference.rnn_forward(*args, lengths, reverse, nonlinearity=option)
    return y, h_n, None, cache


def backward(cell, dy, dh_n, dc_n, cache):
    """-> {name: gradient} for the inputs that exist (None gradients are dropped)."""
    if cell == "lstm":
        names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
        grads = reference.lstm_backward(dy, dh_n, dc_n, cache)
    else:
        names = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
        grads = (reference.gru_backward if cell == "gru" else reference.rnn_backward)(dy, dh_n, cache)
    assert len(grads) == len(names)
    return {n: g for n, g in zip(names, grads) if g is not None}


def loss(cell, option, p, w, lengths, reverse):
    y, h_n, c_n, _ = forward(cell, option, p, lengths, reverse)
    wy, wh, wc = w
    return np.sum(y * wy) + np.sum(h_n * wh) + (np.sum(c_n * wc) if c_n is not None else 0.0)


# ----------------------------------------------------------------------------------------------
# gradients vs finite differences


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("cell,option", VARIANTS, ids=VARIANT_IDS)
def test_gradients_match_finite_differences(cell, option, lengths, reverse, bias):
    p = make_params(cell, option, bias)
    w = loss_weights(cell, option)
    *_, cache = forward(cell, option, p, lengths, reverse)
    grads = backward(cell, *w, cache)
    assert set(grads) == set(p), "one gradient per input, None exactly for missing biases/w_hr"
    assert_matches_finite_differences(grads, p, lambda q: loss(cell, option, q, w, lengths, reverse))


@pytest.mark.parametrize("cell,option", VARIANTS, ids=VARIANT_IDS)
def test_missing_state_gradients_mean_zero(cell, option):
    p = make_params(cell, option, bias=True)
    wy, wh, wc = loss_weights(cell, option)
    *_, cache = forward(cell, option, p, LENGTHS)
    none = backward(cell, wy, None, None, cache)
    zeros = backward(cell, wy, np.zeros_like(wh), None if wc is None else np.zeros_like(wc), cache)
    for name in zeros:
        np.testing.assert_array_equal(none[name], zeros[name], err_msg=name)


# ----------------------------------------------------------------------------------------------
# lengths: PackedSequence semantics


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell,option", VARIANTS, ids=VARIANT_IDS)
def test_padded_steps_output_zero_and_keep_state(cell, option, reverse):
    p = make_params(cell, option, bias=True)
    y, h_n, c_n, _ = forward(cell, option, p, LENGTHS, reverse)
    for b, n in enumerate(LENGTHS):
        assert np.all(y[n:, b] == 0), f"y of sequence {b} after its length {n}"
    np.testing.assert_array_equal(h_n[1], p["h0"][1])  # length 0: state exactly as given
    if c_n is not None:
        np.testing.assert_array_equal(c_n[1], p["c0"][1])
    # each sequence in the batch computes what it computes alone, cut to its length
    for b, n in enumerate(LENGTHS):
        if n == 0:
            continue
        alone = {k: (v[:n, b:b + 1] if k == "x" else v[b:b + 1] if k in ("h0", "c0") else v)
                 for k, v in p.items()}
        y1, h1, c1, _ = forward(cell, option, alone, None, reverse)
        tol = dict(rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL)
        assert_close(y[:n, b:b + 1], y1, **tol, name=f"y[:, {b}] vs alone")
        assert_close(h_n[b:b + 1], h1, **tol, name=f"h_n[{b}] vs alone")
        if c_n is not None:
            assert_close(c_n[b:b + 1], c1, **tol, name=f"c_n[{b}] vs alone")


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("cell,option", VARIANTS, ids=VARIANT_IDS)
def test_padded_positions_are_never_read(cell, option, reverse):
    """NaN in padded x and padded dy changes nothing, and padded x gets a zero gradient."""
    p = make_params(cell, option, bias=True)
    wy, wh, wc = loss_weights(cell, option)
    q, wy_nan = dict(p, x=p["x"].copy()), wy.copy()
    for b, n in enumerate(LENGTHS):
        q["x"][n:, b] = np.nan
        wy_nan[n:, b] = np.nan
    y, h_n, c_n, cache = forward(cell, option, p, LENGTHS, reverse)
    y_q, h_n_q, c_n_q, cache_q = forward(cell, option, q, LENGTHS, reverse)
    np.testing.assert_array_equal(y_q, y)
    np.testing.assert_array_equal(h_n_q, h_n)
    if c_n is not None:
        np.testing.assert_array_equal(c_n_q, c_n)
    grads = backward(cell, wy, wh, wc, cache)
    grads_q = backward(cell, wy_nan, wh, wc, cache_q)
    for name in grads:
        np.testing.assert_array_equal(grads_q[name], grads[name], err_msg=name)
    for b, n in enumerate(LENGTHS):
        assert np.all(grads["x"][n:, b] == 0), f"dx of sequence {b} after its length {n}"


# ----------------------------------------------------------------------------------------------
# dtypes and inputs


@pytest.mark.parametrize("cell,option", VARIANTS, ids=VARIANT_IDS)
def test_float32_in_float32_out(cell, option):
    p = make_params(cell, option, bias=True, dtype=np.float32)
    y, h_n, c_n, cache = forward(cell, option, p, LENGTHS, reverse=True)
    outputs = [y, h_n] + ([c_n] if c_n is not None else [])
    grads = backward(cell, *loss_weights(cell, option, dtype=np.float32), cache)
    for a in outputs + list(grads.values()):
        assert a.dtype == np.float32


@pytest.mark.parametrize("cell,option", VARIANTS, ids=VARIANT_IDS)
def test_inputs_are_not_modified(cell, option):
    p = make_params(cell, option, bias=True)
    w = loss_weights(cell, option)
    p_before = {k: v.copy() for k, v in p.items()}
    w_before = [None if a is None else a.copy() for a in w]
    y, h_n, c_n, cache = forward(cell, option, p, LENGTHS, reverse=True)
    grads = backward(cell, *w, cache)
    for k in p:
        np.testing.assert_array_equal(p[k], p_before[k], err_msg=k)
        assert not any(np.shares_memory(p[k], out) for out in [y, h_n, c_n, *grads.values()]
                       if out is not None), f"{k} is aliased by an output"
    for a, a_before in zip(w, w_before):
        if a is not None:
            np.testing.assert_array_equal(a, a_before)


# ----------------------------------------------------------------------------------------------
# parity with torch.nn (the canonical maths); torch has no reset-before-matmul GRU


TORCH_VARIANTS = [v for v in VARIANTS if v != ("gru", False)]
TORCH_IDS = [i for v, i in zip(VARIANTS, VARIANT_IDS) if v != ("gru", False)]
TORCH_NAMES = dict(w_ih="weight_ih", w_hh="weight_hh", b_ih="bias_ih", b_hh="bias_hh", w_hr="weight_hr")


def torch_module(torch, cell, option, bias):
    kw = dict(bias=bias, bidirectional=True, dtype=torch.float64)
    if cell == "lstm":
        return torch.nn.LSTM(I, H, proj_size=option, **kw)
    if cell == "gru":
        return torch.nn.GRU(I, H, **kw)
    return torch.nn.RNN(I, H, nonlinearity=option, **kw)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lengths", [None, [5, 1, 3]], ids=["full", "lengths"])  # torch packs no 0
@pytest.mark.parametrize("cell,option", TORCH_VARIANTS, ids=TORCH_IDS)
def test_matches_torch(cell, option, lengths, bias):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    Ho = hout(cell, option)
    directions = [make_params(cell, option, bias, seed=0), make_params(cell, option, bias, seed=2)]
    x = directions[0]["x"]
    rng = np.random.default_rng(1)
    wy, wh, wc = rng.normal(size=(T, B, 2 * Ho)), rng.normal(size=(2, B, Ho)), rng.normal(size=(2, B, H))

    # torch: one bidirectional layer; direction 0 is forward, direction 1 ("*_reverse") reverse
    module = torch_module(torch, cell, option, bias)
    with torch.no_grad():
        for suffix, p in zip(["", "_reverse"], directions):
            for name, torch_name in TORCH_NAMES.items():
                if name in p:
                    getattr(module, f"{torch_name}_l0{suffix}").copy_(torch.from_numpy(p[name]))
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(np.stack([p["h0"] for p in directions]), requires_grad=True)
    c0t = torch.tensor(np.stack([p["c0"] for p in directions]), requires_grad=True) if cell == "lstm" else None
    inp = xt if lengths is None else pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
    out, state = module(inp, (h0t, c0t) if cell == "lstm" else h0t)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    h_nt, c_nt = state if cell == "lstm" else (state, None)
    total = (out * torch.from_numpy(wy)).sum() + (h_nt * torch.from_numpy(wh)).sum()
    if cell == "lstm":
        total = total + (c_nt * torch.from_numpy(wc)).sum()
    total.backward()

    tol = dict(rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL)
    dx = np.zeros_like(x)
    for d, (p, reverse) in enumerate(zip(directions, [False, True])):
        half = slice(d * Ho, (d + 1) * Ho)
        y, h_n, c_n, cache = forward(cell, option, dict(p, x=x), lengths, reverse)
        assert_close(y, out[:, :, half].detach().numpy(), **tol, name=f"y[dir {d}]")
        assert_close(h_n, h_nt[d].detach().numpy(), **tol, name=f"h_n[dir {d}]")
        grads = backward(cell, wy[:, :, half], wh[d], wc[d] if cell == "lstm" else None, cache)
        assert_close(grads["h0"], h0t.grad[d].numpy(), **tol, name=f"dh0[dir {d}]")
        if cell == "lstm":
            assert_close(c_n, c_nt[d].detach().numpy(), **tol, name=f"c_n[dir {d}]")
            assert_close(grads["c0"], c0t.grad[d].numpy(), **tol, name=f"dc0[dir {d}]")
        suffix = "_reverse" if reverse else ""
        for name, torch_name in TORCH_NAMES.items():
            if name in p:
                expected = getattr(module, f"{torch_name}_l0{suffix}").grad.numpy()
                assert_close(grads[name], expected, **tol, name=f"d{name}[dir {d}]")
        dx += grads["x"]
    assert_close(dx, xt.grad.numpy(), **tol, name="dx (both directions)")
