# SPDX-License-Identifier: MIT
"""fastrnn.torch: the drop-in LSTM / GRU / RNN modules against torch.nn.

- parity in float64 (outputs, final states, every gradient: input, initial states, each
  parameter) over cell × num_layers {1,2,3} × bidirectional × bias × proj (LSTM) × batch_first ×
  PackedSequence lengths — the full product, 240 configurations;
- float32 within the flash-attention budget of tests/_tolerances.py; unbatched 2-D input;
- torch.autograd.gradcheck through the module (parameters included, via functional_call);
- state_dict both ways, from_torch, a training step, repeated backward, no_grad;
- torch.compile(fullgraph=True) forward + backward equal to eager;
- dropout: seeded reproducibility, eval mode, and its expectation (not torch's RNG);
- DistributedDataParallel (gloo, 2 local processes) equal to one process on the union batch;
- on a GPU: parity with torch.nn (cuDNN) in float64, low-precision training; on the CPU,
  TypeError for float16 / bfloat16 and for tensors on other devices.
"""

import copy
import os
import socket
import textwrap
from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from _tolerances import (SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close,  # noqa: E402
                         assert_within_float32_budget)
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

pytestmark = pytest.mark.skipif(not fastrnn.backends()["cpu"]["available"],
                                reason="compiled CPU engine not built")

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}
FAST = {"lstm": ft.LSTM, "gru": ft.GRU, "rnn_tanh": ft.RNN, "rnn_relu": ft.RNN}
F64 = dict(rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL)
T, B, I, H, P = 5, 3, 4, 5, 3
LENGTHS = [3, 5, 1]  # unsorted: PackedSequence's sorted/unsorted indices are exercised


def module_kwargs(cell, **kw):
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell[4:]
    return kw


def make_pair(cell, dtype=torch.float64, **kw):
    """A torch.nn module and the fastrnn one with the same weights."""
    kw = module_kwargs(cell, dtype=dtype, **kw)
    ref = TORCH[cell](I, H, **kw)
    fast = FAST[cell](I, H, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def make_inputs(cell, L, D, Hout, batch_first, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(shape, generator=g, dtype=dtype)
    h0 = torch.randn(L * D, B, Hout, generator=g, dtype=dtype)
    c0 = torch.randn(L * D, B, H, generator=g, dtype=dtype) if cell == "lstm" else None
    return x, h0, c0


def run(module, cell, x, h0, c0, lengths, batch_first, seed=1):
    """Forward + backward of a fixed random weighting of every output; returns name -> tensor
    for outputs, final states and the gradients of x, h0, c0 and every parameter."""
    module.zero_grad()
    x, h0 = x.detach().requires_grad_(), h0.detach().requires_grad_()
    c0 = None if c0 is None else c0.detach().requires_grad_()
    inp = x if lengths is None else pack_padded_sequence(
        x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    out, hidden = module(inp, (h0, c0) if cell == "lstm" else h0)
    res = {}
    if lengths is not None:
        assert isinstance(out, PackedSequence)
        for k in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            res[k] = getattr(out, k)
        out = out.data
    h_n, c_n = hidden if cell == "lstm" else (hidden, None)
    g = torch.Generator().manual_seed(seed)
    weighting = lambda t: torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)  # noqa: E731
    loss = (out * weighting(out)).sum() + (h_n * weighting(h_n)).sum()
    if c_n is not None:
        loss = loss + (c_n * weighting(c_n)).sum()
    loss.backward()
    res.update(output=out, h_n=h_n, dx=x.grad, dh0=h0.grad)
    if c_n is not None:
        res.update(c_n=c_n, dc0=c0.grad)
    res.update({f"d{name}": p.grad for name, p in module.named_parameters()})
    return {k: v.detach() for k, v in res.items()}


def assert_same(got, want, **tol):
    assert got.keys() == want.keys()
    for name in want:
        if name.endswith("indices") or name == "batch_sizes":
            assert torch.equal(got[name], want[name]), name
        else:
            assert got[name].dtype == want[name].dtype, name
            assert_close(got[name].numpy(), want[name].numpy(), name=name, **tol)


# ----------------------------------------------------------------------------------------------
# Parity with torch.nn in float64


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["tensor", "packed"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("lstm", P), ("gru", 0), ("rnn_tanh", 0),
                                       ("rnn_relu", 0)],
                         ids=["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"])
def test_parity_float64(cell, proj, L, bidirectional, bias, batch_first, lengths):
    kw = dict(num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    if proj:
        kw["proj_size"] = proj
    torch.manual_seed(L)
    ref, fast = make_pair(cell, **kw)
    x, h0, c0 = make_inputs(cell, L, 2 if bidirectional else 1, proj or H, batch_first)
    assert_same(run(fast, cell, x, h0, c0, lengths, batch_first),
                run(ref, cell, x, h0, c0, lengths, batch_first), **F64)


def test_training_step_matches_torch():
    """The issue's check: two SGD steps of a 2-layer bidirectional LSTM with a linear head give
    torch.nn's losses, gradients and updated parameters."""
    torch.manual_seed(0)
    models = [torch.nn.ModuleDict(dict(
        rnn=cls(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64),
        head=torch.nn.Linear(2 * H, 1, dtype=torch.float64))) for cls in (torch.nn.LSTM, ft.LSTM)]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(B, T, I, dtype=torch.float64)
    target = torch.randn(B, T, 1, dtype=torch.float64)
    results = []
    for model in models:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for _ in range(2):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model["head"](model["rnn"](x)[0]), target)
            loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            opt.step()
            losses.append(loss.detach())
        results.append((losses, grads, {n: p.detach() for n, p in model.named_parameters()}))
    (loss_t, grad_t, par_t), (loss_f, grad_f, par_f) = results
    for k in range(2):
        assert_close(loss_f[k].numpy(), loss_t[k].numpy(), name=f"loss {k}", **F64)
    for name in grad_t:
        assert_close(grad_f[name].numpy(), grad_t[name].numpy(), name=f"d{name}", **F64)
        assert_close(par_f[name].numpy(), par_t[name].numpy(), name=name, **F64)


def run_functional(cell, module, x, h0, c0, backend, seed=1):
    """What `run` computes (tensor input, time-major), through the functional API on NumPy."""
    fwd = getattr(fastrnn, f"{cell[:4].rstrip('_')}_forward")
    bwd = getattr(fastrnn, f"{cell[:4].rstrip('_')}_backward")
    kw = dict(num_layers=module.num_layers, bidirectional=module.bidirectional)
    kw.update({"proj_size": module.proj_size} if cell == "lstm" else
              {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {})
    states = (h0.numpy(), c0.numpy()) if cell == "lstm" else (h0.numpy(),)
    weights = [w.detach().numpy() for w in module._flat_weights]
    out = fwd(x.numpy(), weights, *states, training=True, backend=backend, **kw)
    g = torch.Generator().manual_seed(seed)  # the weighting of `run`, drawn in the same order
    dy, dh_n = [torch.randn(a.shape, generator=g, dtype=torch.float64).numpy().astype(a.dtype)
                for a in (out.y, out.h_n)]
    if cell == "lstm":
        dc_n = torch.randn(out.c_n.shape, generator=g, dtype=torch.float64).numpy().astype(out.c_n.dtype)
        grads = bwd(out.saved, dy, dh_n, dc_n)
    else:
        grads = bwd(out.saved, dy, dh_n)
    res = dict(output=out.y, h_n=out.h_n, dx=grads.dx, dh0=grads.dh0)
    if cell == "lstm":
        res.update(c_n=out.c_n, dc0=grads.dc0)
    res.update({f"d{n}": dw for n, dw in zip(module._flat_weights_names, grads.dweights)})
    return {k: torch.from_numpy(np.asarray(v)) for k, v in res.items()}


@pytest.mark.parametrize("cell", CELLS)
def test_float32(cell):
    """float32 through the module is bit for bit the functional API's float32 (the adapter adds
    no rounding), and its error against float64 torch.nn is within the STYLE 16 budget of
    tests/_tolerances.py: F32_FACTOR x the error of the float32 reference, plus the floor."""
    kw = dict(num_layers=2, bidirectional=True, proj_size=P) if cell == "lstm" else \
        dict(num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    ref64, _ = make_pair(cell, **kw)
    _, fast32 = make_pair(cell, dtype=torch.float32, **kw)
    fast32.load_state_dict(ref64.state_dict())
    x, h0, c0 = make_inputs(cell, 2, 2, P if cell == "lstm" else H, False)
    x, h0, c0 = [None if t is None else t.float() for t in (x, h0, c0)]
    got = run(fast32, cell, x, h0, c0, None, False)
    same = run_functional(cell, fast32, x, h0, c0, "cpu")
    naive = run_functional(cell, fast32, x, h0, c0, "reference")
    exact = run(ref64, cell, x.double(), h0.double(), None if c0 is None else c0.double(), None, False)
    assert got.keys() == same.keys() == naive.keys() == exact.keys()
    for name, want in exact.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], same[name]), name
        assert_within_float32_budget(got[name].detach().numpy(), naive[name].detach().numpy(),
                                     want.detach().numpy(),
                                     name=name, forward=name in ("output", "h_n", "c_n"))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_unbatched_input(cell, batch_first, with_hx):
    torch.manual_seed(0)
    ref, fast = make_pair(cell, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn(T, I, dtype=torch.float64)
    hx = None
    if with_hx:
        h0 = torch.randn(4, H, dtype=torch.float64)
        hx = (h0, torch.randn(4, H, dtype=torch.float64)) if cell == "lstm" else h0
    (y_t, h_t), (y_f, h_f) = ref(x, hx), fast(x, hx)
    assert y_f.shape == y_t.shape == (T, 2 * H)
    for got, want in zip(torch.utils._pytree.tree_leaves((y_f, h_f)),
                         torch.utils._pytree.tree_leaves((y_t, h_t))):
        assert got.shape == want.shape
        assert_close(got.detach().numpy(), want.detach().numpy(), name="unbatched", **F64)


def test_state_shape_errors_match_torch():
    """Wrong hx dimensions or sizes, wrong input size: torch.nn's exception and message."""
    f64 = dict(dtype=torch.float64)
    x2, x3 = torch.randn(T, I, **f64), torch.randn(T, B, I, **f64)
    cases = [("gru", x2, torch.zeros(2, 1, H, **f64)),
             ("gru", x3, torch.zeros(2, H, **f64)),
             ("gru", x3, torch.zeros(2, B + 1, H, **f64)),
             ("gru", torch.randn(T, B, I + 1, **f64), None),
             ("lstm", x3, (torch.zeros(2, B, H, **f64), torch.zeros(2, H, **f64))),
             ("lstm", x2, (torch.zeros(2, H, **f64), torch.zeros(2, 1, H, **f64))),
             ("lstm", x3, (torch.zeros(2, B, H, **f64), torch.zeros(2, B, H + 1, **f64)))]
    for cell, x, hx in cases:
        ref, fast = make_pair(cell, num_layers=2)
        with pytest.raises(RuntimeError) as want:
            ref(x, hx)
        with pytest.raises(RuntimeError) as got:
            fast(x, hx)
        assert str(got.value) == str(want.value)


# ----------------------------------------------------------------------------------------------
# Gradients: gradcheck, repeated backward, no_grad


@pytest.mark.parametrize("cell,kw,packed", [
    ("lstm", dict(num_layers=2, bidirectional=True, proj_size=2), True),
    ("lstm", dict(batch_first=True), False),
    ("gru", dict(num_layers=2, bidirectional=True, batch_first=True), True),
    ("rnn_tanh", dict(num_layers=2, bias=False), False),
    ("rnn_relu", dict(bidirectional=True), True),
], ids=["lstm_2x2_proj_packed", "lstm_bfirst", "gru_2x2_bfirst_packed", "rnn_tanh_2_nobias",
        "rnn_relu_bi_packed"])
def test_gradcheck(cell, kw, packed):
    """Finite differences through the module, for x, h0, c0 and every parameter."""
    torch.manual_seed(0)
    Ts, Bs, Is, Hs = 3, 2, 3, 3
    m = FAST[cell](Is, Hs, dtype=torch.float64, **module_kwargs(cell, **kw))
    bf, D = kw.get("batch_first", False), 2 if kw.get("bidirectional") else 1
    LD, Hout = kw.get("num_layers", 1) * D, kw.get("proj_size", 0) or Hs
    names = [n for n, _ in m.named_parameters()]
    x = torch.randn((Bs, Ts, Is) if bf else (Ts, Bs, Is), dtype=torch.float64)
    states = [torch.randn(LD, Bs, Hout, dtype=torch.float64)]
    if cell == "lstm":
        states.append(torch.randn(LD, Bs, Hs, dtype=torch.float64))
    leaves = [t.requires_grad_() for t in
              [x, *states] + [p.detach().clone() for p in m.parameters()]]

    n_states = len(states)

    def f(x, *rest):
        hs, params = rest[:n_states], rest[n_states:]
        inp = pack_padded_sequence(x, torch.tensor([3, 1]), batch_first=bf) if packed else x
        hx = tuple(hs) if cell == "lstm" else hs[0]
        out, hidden = torch.func.functional_call(m, dict(zip(names, params)), (inp, hx))
        return (out.data if packed else out, *(hidden if cell == "lstm" else (hidden,)))

    assert torch.autograd.gradcheck(f, tuple(leaves))


def test_backward_twice_and_no_grad():
    """retain_graph: a second backward gives the same gradients (saved state is not consumed);
    no_grad gives the same forward without keeping anything."""
    torch.manual_seed(0)
    m = ft.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    y, (h, c) = m(x)
    loss = (y ** 2).sum() + h.sum()  # c unused: its gradient arrives as None
    loss.backward(retain_graph=True)
    first = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    loss.backward()
    for a, b in zip(first, [x.grad] + [p.grad for p in m.parameters()]):
        assert torch.equal(a, b)
    with torch.no_grad():
        y2, _ = m(x)
    assert not y2.requires_grad
    assert torch.equal(y2, y.detach())


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_of_final_state_only(cell):
    """Only h_n reaches the loss: the output's gradient arrives as None, and is zero."""
    torch.manual_seed(0)
    ref, fast = make_pair(cell, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I, dtype=torch.float64)
    grads = []
    for m in (ref, fast):
        xg = x.clone().requires_grad_()
        _, hidden = m(xg)
        (hidden[0] if cell == "lstm" else hidden).sum().backward()
        grads.append([xg.grad] + [p.grad for p in m.parameters()])
    for k, (got, want) in enumerate(zip(*grads[::-1])):
        assert_close(got.numpy(), want.numpy(), name=f"grad {k}", **F64)


# ----------------------------------------------------------------------------------------------
# Parameters: state_dict, from_torch, constructor


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_round_trip(cell):
    kw = dict(num_layers=2, bidirectional=True, bias=cell != "gru", batch_first=True)
    if cell == "lstm":
        kw["proj_size"] = P
    torch.manual_seed(0)
    ref, fast = make_pair(cell, **kw)  # torch -> fastrnn
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert [(n, p.shape) for n, p in fast.named_parameters()] == \
           [(n, p.shape) for n, p in ref.named_parameters()]
    back = TORCH[cell](I, H, **module_kwargs(cell, dtype=torch.float64, **kw))
    back.load_state_dict(fast.state_dict())  # fastrnn -> torch
    for name, value in ref.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert repr(fast) == repr(ref)
    x, h0, c0 = make_inputs(cell, 2, 2, P if cell == "lstm" else H, True)
    assert_same(run(fast, cell, x, h0, c0, None, True), run(back, cell, x, h0, c0, None, True), **F64)


@pytest.mark.parametrize("cell", CELLS)
def test_from_torch(cell):
    torch.manual_seed(0)
    kw = module_kwargs(cell, num_layers=2, bidirectional=True, dropout=0.5, batch_first=True)
    ref = TORCH[cell](I, H, dtype=torch.float64, **kw).eval()
    fast = ft.from_torch(ref)
    assert type(fast) is FAST[cell] and not fast.training
    assert (fast.dropout, fast.bidirectional, fast.num_layers, fast.batch_first) == (0.5, True, 2, True)
    for (n, p), (m, q) in zip(fast.named_parameters(), ref.named_parameters()):
        assert n == m and p is q  # the same Parameter objects: same values, device and dtype
    x, h0, c0 = make_inputs(cell, 2, 2, H, True)
    assert_same(run(fast, cell, x, h0, c0, None, True), run(ref, cell, x, h0, c0, None, True), **F64)
    fast32 = ft.from_torch(TORCH[cell](I, H, **module_kwargs(cell)))
    assert fast32.weight_ih_l0.dtype == torch.float32
    assert fast32(torch.randn(T, B, I))[0].dtype == torch.float32
    with pytest.raises(TypeError, match="module: expected a torch.nn.LSTM, GRU or RNN"):
        ft.from_torch(torch.nn.Linear(2, 2))


def test_constructor_checks_are_torch_s():
    with pytest.raises(ValueError, match="proj_size"):
        ft.GRU(I, H, proj_size=2)
    with pytest.raises(ValueError, match="nonlinearity"):
        ft.RNN(I, H, nonlinearity="gelu")
    assert ft.RNN(I, H, 2, "relu").nonlinearity == "relu"  # 4th positional, as torch.nn.RNN
    with pytest.warns(UserWarning, match="dropout"):
        ft.LSTM(I, H, dropout=0.5)


# ----------------------------------------------------------------------------------------------
# torch.compile


class Stack(torch.nn.Module):
    """All three cells, projection, packed-free batch_first and bidirectional, in one graph."""

    def __init__(self):
        super().__init__()
        self.lstm = ft.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, batch_first=True,
                            dtype=torch.float64)
        self.gru = ft.GRU(2 * P, H, batch_first=True, dtype=torch.float64)
        self.rnn = ft.RNN(H, H, nonlinearity="relu", bias=False, batch_first=True, dtype=torch.float64)

    def forward(self, x, h0):
        y, (h, c) = self.lstm(x)
        y, _ = self.gru(y, h0)
        y, h = self.rnn(y)
        return (y ** 2).sum() + h.sum() + c.sum()


# Importing inductor imports torch.utils.mkldnn, which uses torch.jit.script_method and so warns
# DeprecationWarning inside torch itself (torch 2.13); nothing to do with this code.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_matches_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(0)
    model = Stack()
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, dtype=torch.float64, requires_grad=True)
    counter = CompileCounterWithBackend("inductor")
    results = []
    for fn in (model, torch.compile(model, backend=counter, fullgraph=True)):
        model.zero_grad()
        x.grad = h0.grad = None
        loss = fn(x, h0)
        loss.backward()
        results.append([loss.detach(), x.grad, h0.grad] + [p.grad for p in model.parameters()])
    for k, (got, want) in enumerate(zip(results[1], results[0])):
        assert_close(got.numpy(), want.numpy(), name=f"result {k}", **F64)
    assert counter.frame_count == 1  # one graph, and the kernels are in it
    assert counter.graphs[0].code.count("fastrnn.rnn_forward") == 3


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_with_dropout():
    """Training mode with dropout: the seed is drawn inside the graph, so a seeded compiled
    model is reproducible (its masks differ from eager's: inductor has its own RNG)."""
    m = dropout_lstm()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        x.grad = None
        y = compiled(x)[0]
        y.sum().backward()
        outs.append((y.detach(), x.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


# ----------------------------------------------------------------------------------------------
# Dropout


def dropout_lstm(p=0.3):
    torch.manual_seed(0)
    return ft.LSTM(I, H, num_layers=3, bidirectional=True, dropout=p, dtype=torch.float64)


def test_dropout_seeded_reproducible():
    m = dropout_lstm()
    x = torch.randn(T, B, I, dtype=torch.float64)
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(m(x)[0].detach())
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])
    torch.manual_seed(1)
    with torch.no_grad():  # no gradient needed: still dropout in training mode, same masks
        assert torch.equal(m(x)[0], outs[0])


def test_dropout_off_in_eval_mode():
    m = dropout_lstm().eval()
    ref = torch.nn.LSTM(I, H, num_layers=3, bidirectional=True, dropout=0.3, dtype=torch.float64).eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert_close(m(x)[0].detach().numpy(), ref(x)[0].detach().numpy(), name="eval", **F64)


def test_dropout_expectation_and_backward_mask():
    """A 2-layer relu RNN whose second layer is the identity (w_ih = 1, w_hh = 0, no bias) shows
    layer 1's output after dropout: each element either 0 (probability p) or scaled by 1/(1-p),
    so the mean is kept. Backward must use that same mask: the gradients of layer 0 equal
    torch.nn's for loss(mask ⊙ y1 / (1 - p))."""
    p, Tn, Bn, Hn = 0.3, 40, 64, 16
    torch.manual_seed(0)
    m = ft.RNN(I, Hn, num_layers=2, nonlinearity="relu", bias=False, dropout=p, dtype=torch.float64)
    with torch.no_grad():
        m.weight_ih_l1.copy_(torch.eye(Hn))
        m.weight_hh_l1.zero_()
        m.weight_hh_l0.mul_(0.5)
    layer0 = torch.nn.RNN(I, Hn, nonlinearity="relu", bias=False, dtype=torch.float64)
    layer0.load_state_dict({"weight_ih_l0": m.weight_ih_l0, "weight_hh_l0": m.weight_hh_l0})
    x = torch.randn(Tn, Bn, I, dtype=torch.float64)
    w = torch.randn(Tn, Bn, Hn, dtype=torch.float64)

    y2 = m(x)[0]
    (y2 * w).sum().backward()
    y1 = layer0(x)[0]
    active = y1.detach() > 0
    kept = y2.detach() != 0
    n = int(active.sum())
    drop_rate = 1 - float(kept[active].sum()) / n
    sigma = (p * (1 - p) / n) ** 0.5
    print(f"dropped {drop_rate:.4f} of {n} (p={p}, 5 sigma = {5 * sigma:.4f})")
    assert abs(drop_rate - p) < 5 * sigma
    assert_close(y2.detach()[kept].numpy(), (y1.detach()[kept] / (1 - p)).numpy(), name="scaled", **F64)
    ratio = float(y2.detach().sum() / y1.detach().sum())
    assert abs(ratio - 1) < 5 * sigma / (1 - p) * 2  # mean kept, within sampling noise

    mask = kept.double() / (1 - p)
    (y1 * mask * w).sum().backward()
    for name in ("weight_ih_l0", "weight_hh_l0"):
        assert_close(getattr(m, name).grad.numpy(), getattr(layer0, name).grad.numpy(),
                     name=name, **F64)


# ----------------------------------------------------------------------------------------------
# What is not supported yet is a TypeError naming the argument


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_the_cpu_is_a_type_error(dtype):
    m = ft.LSTM(I, H)
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32 or torch.float64"):
        m(torch.randn(T, B, I, dtype=dtype))
    with pytest.raises(TypeError, match=r"weight_ih_l0: .*got torch\." + str(dtype).split(".")[1]):
        m.to(dtype)(torch.randn(T, B, I))
    with pytest.raises(TypeError, match=r"hx: "):
        ft.GRU(I, H)(torch.randn(T, B, I), torch.zeros(1, B, H, dtype=dtype))


def test_non_cpu_tensor_is_a_type_error():
    m = ft.GRU(I, H)
    with pytest.raises(TypeError, match=r"input: expected a tensor on the CPU or a CUDA device, got one on meta"):
        m(torch.empty(T, B, I, device="meta"))


_HAS_CUDA_PATH = torch.cuda.is_available() and fastrnn.backends()["cuda"]["available"]


@pytest.mark.skipif(not _HAS_CUDA_PATH, reason="no CUDA device (or no CUDA path built)")
@pytest.mark.parametrize("cls,kw", [(ft.LSTM, {}), (ft.LSTM, {"proj_size": 3}), (ft.GRU, {}),
                                    (ft.RNN, {"nonlinearity": "relu"})],
                         ids=["lstm", "lstm_proj", "gru", "rnn_relu"])
def test_cuda_parity_with_cudnn(cls, kw):
    """On a GPU the drop-in runs fastrnn's CUDA engine; in float64 it matches torch.nn on the
    same GPU (cuDNN) for outputs and every gradient, packed input and 2 bidirectional layers."""
    torch.manual_seed(0)
    ref_cls = {ft.LSTM: torch.nn.LSTM, ft.GRU: torch.nn.GRU, ft.RNN: torch.nn.RNN}[cls]
    ref = ref_cls(I, H, 2, bidirectional=True, **kw).to("cuda", torch.float64)
    mine = ft.from_torch(copy.deepcopy(ref))
    lengths = torch.tensor([T, 2, T - 1])
    x = torch.randn(T, 3, I, device="cuda", dtype=torch.float64)
    outs, grads = [], []
    for m in (mine, ref):
        xg = x.clone().requires_grad_(True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xg, lengths, enforce_sorted=False)
        y, hidden = m(packed)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=T)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        (y.square().sum() + h.sum()).backward()
        assert y.device.type == "cuda"
        outs.append([y, h])
        grads.append([xg.grad] + [p.grad for p in m.parameters()])
        m.zero_grad()
    for k, (a, b) in enumerate(zip(outs[0] + grads[0], outs[1] + grads[1])):
        assert_close(a.detach().cpu().numpy(), b.detach().cpu().numpy(), rtol=SAME_MATHS_F64_RTOL,
                     atol=SAME_MATHS_F64_ATOL, name=f"tensor {k}")


@pytest.mark.skipif(not _HAS_CUDA_PATH, reason="no CUDA device (or no CUDA path built)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_low_precision_trains(dtype):
    """float32/bfloat16/float16 modules on the GPU: forward and backward run, gradients reach
    every parameter and stay close to the float64 result."""
    torch.manual_seed(0)
    exact = ft.LSTM(I, H, 2).to("cuda", torch.float64)
    low = copy.deepcopy(exact).to(dtype)
    x = torch.randn(T, B, I, device="cuda", dtype=torch.float64)
    results = []
    for m, xx in ((exact, x), (low, x.to(dtype))):
        y, _ = m(xx)
        y.float().sum().backward()
        results.append([y.detach().double()] + [p.grad.double() for p in m.parameters()])
    budget = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    for k, (e, g) in enumerate(zip(*results)):
        err = ((g - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()
        assert err <= budget, (k, err)


@pytest.mark.skipif(not _HAS_CUDA_PATH, reason="no CUDA device (or no CUDA path built)")
def test_cuda_input_with_cpu_weights_is_a_type_error():
    with pytest.raises(TypeError, match=r"weights\[0\]: expected an array on a CUDA device like x"):
        ft.LSTM(I, H)(torch.randn(T, B, I, device="cuda"))


# ----------------------------------------------------------------------------------------------
# DistributedDataParallel: gloo, two processes on this machine


def _ddp_worker(rank, world, port, state, x, w, outdir):
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world)
    try:
        model = ft.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
        model.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        part = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
        y, (h, _) = ddp(x[part])
        ((y * w[part]).sum() + h.sum()).backward()  # DDP averages the two processes' gradients
        torch.save({n: p.grad for n, p in model.named_parameters()}, os.path.join(outdir, f"{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_data_parallel(tmp_path):
    torch.manual_seed(0)
    model = ft.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64)
    x = torch.randn(4, T, I, dtype=torch.float64)
    w = torch.randn(4, T, 2 * H, dtype=torch.float64)
    with socket.socket() as s:  # a free port on the loopback interface
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, model.state_dict(), x, w, str(tmp_path)),
                                nprocs=2, join=True)
    # one process on the union of both batches; / 2: DDP averages over the two processes
    y, (h, _) = model(x)
    (((y * w).sum() + h.sum()) / 2).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"{rank}.pt")
        for name, p in model.named_parameters():
            assert_close(grads[name].numpy(), p.grad.numpy(), name=f"rank {rank} d{name}", **F64)


@pytest.mark.skipif(not _HAS_CUDA_PATH, reason="no CUDA device (or no CUDA path built)")
def test_cuda_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    m = ft.LSTM(I, H, 2, bidirectional=True).to("cuda", torch.float32)
    x = torch.randn(T, B, I, device="cuda")
    eager_y, _ = m(x)
    eager_y.sum().backward()
    eager_grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y, _ = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, eager_y, rtol=0, atol=0)
    for g, e in zip((p.grad for p in m.parameters()), eager_grads):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


# torch.nn raises this error from C++ (TORCH_CHECK): a C++ exception aborts a process under
# AddressSanitizer's runtime (.ci/sanitize: "CHECK failed: real___cxa_throw")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="torch.nn's C++ exception cannot be thrown under the ASan runtime")
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_zero_length_sequences_raise_as_torch_nn(name, batch_first):
    """T = 0 is torch.nn's RuntimeError (the functional API keeps h0 instead), batched and
    unbatched, with and without a state."""
    ours = getattr(fastrnn.torch, name)(3, 4, batch_first=batch_first)
    theirs = getattr(torch.nn, name)(3, 4, batch_first=batch_first)
    state = torch.zeros(1, 2, 4)
    hx = (state, state) if name == "LSTM" else state
    x = torch.zeros((2, 0, 3) if batch_first else (0, 2, 3))
    for args in [(x,), (x, hx), (torch.zeros(0, 3),)]:
        with pytest.raises(RuntimeError) as want:
            theirs(*args)
        with pytest.raises(RuntimeError) as got:
            ours(*args)
        assert str(got.value) == str(want.value)


def test_eager_training_never_imports_dynamo():
    """A plain eager training step calls the kernels' bodies directly (fastrnn.torch._Direct):
    through the custom ops, the first call of a process imported torch._dynamo (1.4-3.4 s
    before the first forward). Fresh process: forward and backward, no dynamo (torch.optim's
    first step imports it, for torch.nn's modules as for ours); the same outputs and gradients
    as the custom op's path."""
    import subprocess
    import sys

    code = textwrap.dedent("""
        import sys, torch, fastrnn.torch as ft
        torch.manual_seed(0)
        lstm = ft.LSTM(3, 4, num_layers=2)
        x = torch.randn(5, 2, 3, requires_grad=True)
        y, (h, c) = lstm(x)
        (y.sum() + h.sum() + c.sum()).backward()
        print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "no dynamo"

    torch.manual_seed(0)
    lstm = ft.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for direct in (True, False):
        with mock.patch.object(ft, "_direct_call", lambda tensors: direct):
            y, (h, c) = lstm(x)
            grads = torch.autograd.grad(y.sum() + h.sum() + c.sum(), [x, *lstm.parameters()])
        results.append([y, h, c, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
