# SPDX-License-Identifier: MIT
"""fastrnn.torch's double backward: a backward that must itself be differentiable
(`torch.autograd.grad(..., create_graph=True)`, gradgradcheck, gradient penalties).

Such a backward differentiates _torch_composite.forward, the same forward in torch ops, so:
- that composite equals the custom op's outputs (fastrnn's kernels) in float64 over every
  option: cell (LSTM with and without proj), 1-2 layers, directions, bias, batch_first,
  lengths, h0/c0 given or not, and dropout's masks (a composite that drifted from the kernels
  would still pass gradgradcheck, which only compares it with itself: this is the test that
  catches it);
- through the modules, the gradients taken with create_graph=True and the Hessian-vector
  products of x, h0, c0 and every parameter equal torch.nn's in float64 (cell × layers ×
  directions × bias × tensor / batch_first / PackedSequence / unbatched input × h0 given or
  not);
- torch.autograd.gradgradcheck at small odd sizes (finite differences of the backward);
- dropout in training mode: the composite applies fastrnn's own masks, so its gradients equal
  the fused kernels' and gradgradcheck passes with a fixed seed;
- an ordinary backward never runs the composite, and ignores in-place changes to the inputs
  made after the forward (it reads fastrnn's copies); a double backward after one is an error
  that names the input; an inference-mode input still trains.
"""

import os

import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn._torch_composite as composite  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from _tolerances import SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

pytestmark = pytest.mark.skipif(not fastrnn.backends()["cpu"]["available"],
                                reason="compiled CPU engine not built")

F64 = dict(rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL)
CELLS = [("lstm", 0), ("lstm", 2), ("gru", 0), ("rnn_tanh", 0), ("rnn_relu", 0)]
CELL_IDS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN,
         "rnn_relu": torch.nn.RNN}
FAST = {"lstm": ft.LSTM, "gru": ft.GRU, "rnn_tanh": ft.RNN, "rnn_relu": ft.RNN}
T, B, I, H = 5, 3, 3, 5
LENGTHS = [3, 5, 1]  # unsorted: PackedSequence's indices are exercised


def module_kwargs(cell, proj, **kw):
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell[4:]
    if proj:
        kw["proj_size"] = proj
    return kw


def randn(*shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# The composite is the kernels' function


def weights_for(cell, proj, L, D, bias, seed):
    m = FAST[cell](I, H, **module_kwargs(cell, proj, num_layers=L, bidirectional=D == 2,
                                         bias=bias, dtype=torch.float64))
    g = torch.Generator().manual_seed(seed)
    return [torch.empty_like(w).uniform_(-0.7, 0.7, generator=g) for w in m._flat_weights]


@pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_composite_forward_equals_the_kernels(cell, proj, L, D, bias, batch_first, lengths,
                                              with_state):
    weights = weights_for(cell, proj, L, D, bias, seed=L * 10 + D)
    x = randn(*((B, T, I) if batch_first else (T, B, I)), seed=1)
    h0 = randn(L * D, B, proj or H, seed=2) if with_state else None
    c0 = randn(L * D, B, H, seed=3) if with_state and cell == "lstm" else None
    lens = None if lengths is None else torch.tensor(lengths)
    options = (cell, L, D == 2, batch_first, 0.0, proj)
    want = ft._forward_op(x, weights, h0, c0, lens, None, *options[:4], 0.0, proj, False)[:3]
    got = composite.forward(x, weights, h0, c0, lens, None, *options)
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        if cell != "lstm" and name == "c_n":
            assert g is None
            continue
        assert g.shape == w.shape, name
        assert_close(g.numpy(), w.numpy(), name=name, **F64)


@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_composite_applies_fastrnn_s_dropout_masks(cell, proj, D):
    """Dropout between 3 layers with lengths: the composite draws the engines' masks (one
    per layer and seed), so it computes what the kernels computed."""
    L, p, seed = 3, 0.4, torch.tensor([123456789], dtype=torch.int64)
    weights = weights_for(cell, proj, L, D, True, seed=7)
    x, lens = randn(T, B, I, seed=1), torch.tensor(LENGTHS)
    want = ft._forward_op(x, weights, None, None, lens, seed, cell, L, D == 2, False, p, proj,
                          False)[:3]
    got = composite.forward(x, weights, None, None, lens, seed, cell, L, D == 2, False, p, proj)
    no_dropout = composite.forward(x, weights, None, None, lens, None, cell, L, D == 2, False,
                                   0.0, proj)
    assert not torch.allclose(no_dropout[0], want[0])  # the masks matter here
    for name, g, w in zip(("y", "h_n", "c_n"), got, want):
        if g is not None:
            assert_close(g.numpy(), w.numpy(), name=name, **F64)


# ----------------------------------------------------------------------------------------------
# Through the modules: create_graph gradients and Hessian-vector products equal torch.nn's


def make_pair(cell, proj, **kw):
    kw = module_kwargs(cell, proj, dtype=torch.float64, **kw)
    torch.manual_seed(0)
    ref = TORCH[cell](I, H, **kw)
    fast = FAST[cell](I, H, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def second_order(module, cell, kind, x, states):
    """(gradients taken with create_graph=True, Hessian-vector products) of a fixed random
    weighting of every output, with respect to x, the given states and every parameter."""
    leaves = [x.detach().clone().requires_grad_()]
    leaves += [s.detach().clone().requires_grad_() for s in states]
    params = list(module.parameters())
    inp = leaves[0]
    if kind == "packed":
        inp = pack_padded_sequence(inp, torch.tensor(LENGTHS), enforce_sorted=False)
    hx = None
    if states:
        hx = tuple(leaves[1:]) if cell == "lstm" else leaves[1]
    out, hidden = module(inp, hx)
    outs = [out.data if kind == "packed" else out]
    outs += list(hidden) if cell == "lstm" else [hidden]
    loss = sum((o * randn(*o.shape, seed=10 + k)).sum() for k, o in enumerate(outs))
    wrt = leaves + params
    grads = torch.autograd.grad(loss, wrt, create_graph=True)
    assert all(g.requires_grad for g in grads), "create_graph=True gave a constant gradient"
    # a product of the Hessian with v; the cubic terms make every second derivative count
    s = sum(((g * randn(*g.shape, seed=20 + k)).sum() + (g ** 3).sum())
            for k, g in enumerate(grads))
    hv = torch.autograd.grad(s, wrt, allow_unused=True)
    hv = [torch.zeros_like(w) if h is None else h for h, w in zip(hv, wrt)]
    return [g.detach() for g in grads], hv


@pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("kind", ["tmajor", "bfirst", "packed", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("D", [1, 2], ids=["uni", "bi"])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_double_backward_matches_torch_nn(cell, proj, L, D, bias, kind, with_state):
    ref, fast = make_pair(cell, proj, num_layers=L, bidirectional=D == 2, bias=bias,
                          batch_first=kind == "bfirst")
    Hout = proj or H
    if kind == "unbatched":
        x = randn(T, I, seed=1)
        states = [randn(L * D, Hout, seed=2), randn(L * D, H, seed=3)]
    else:
        x = randn(*((B, T, I) if kind == "bfirst" else (T, B, I)), seed=1)
        states = [randn(L * D, B, Hout, seed=2), randn(L * D, B, H, seed=3)]
    states = (states if cell == "lstm" else states[:1]) if with_state else []
    got, want = (second_order(m, cell, kind, x, states) for m in (fast, ref))
    names = ["x", "h0", "c0"][:1 + len(states)] + [n for n, _ in fast.named_parameters()]
    for order, g_list, w_list in zip(("grad", "hvp"), got, want):
        for name, g, w in zip(names, g_list, w_list):
            assert_close(g.numpy(), w.numpy(), name=f"{order} {name}", **F64)


def test_create_graph_gradients_equal_the_fused_ones():
    """The first gradients a graph-building backward returns are the fused kernels' (same
    maths, float64 rounding apart)."""
    _, fast = make_pair("lstm", 2, num_layers=2, bidirectional=True)
    x = randn(T, B, I, seed=1).requires_grad_()
    y, (_, c) = fast(x)  # h_n unused: its gradient arrives as None
    loss = (y * randn(*y.shape, seed=4)).sum() + (c ** 2).sum()
    wrt = [x, *fast.parameters()]
    fused = torch.autograd.grad(loss, wrt, retain_graph=True)
    built = torch.autograd.grad(loss, wrt, create_graph=True)
    for k, (g, w) in enumerate(zip(built, fused)):
        assert_close(g.detach().numpy(), w.numpy(), name=f"grad {k}", **F64)


# ----------------------------------------------------------------------------------------------
# gradgradcheck: finite differences of the backward, at small odd sizes


@pytest.mark.parametrize("cell,kw,kind,fast_mode", [
    ("lstm", dict(proj_size=1), "packed", False),
    ("lstm", dict(num_layers=2, bidirectional=True, proj_size=1), "packed", True),
    ("lstm", dict(batch_first=True, bias=False), "no_h0", False),
    ("gru", dict(), "packed", False),
    ("gru", dict(num_layers=2, bidirectional=True, batch_first=True), "packed", True),
    ("rnn_tanh", dict(num_layers=2, bias=False), "unbatched", False),
    ("rnn_relu", dict(bidirectional=True), "packed", False),
], ids=["lstm_proj_packed", "lstm_2x2_proj_packed", "lstm_bfirst_nobias_no_h0", "gru_packed",
        "gru_2x2_bfirst_packed", "rnn_tanh_2_nobias_unbatched", "rnn_relu_bi_packed"])
def test_gradgradcheck(cell, kw, kind, fast_mode):
    """x, h0, c0 and every parameter (functional_call). The two-layer bidirectional cases use
    gradgradcheck's fast mode (a random projection of the same check): the full Jacobian of
    the backward of 30-odd parameters takes a minute on two cores."""
    torch.manual_seed(0)
    Ts, Bs, Is, Hs = 3, 3, 3, 3
    m = FAST[cell](Is, Hs, dtype=torch.float64, **module_kwargs(cell, 0, **kw))
    bf, D = kw.get("batch_first", False), 2 if kw.get("bidirectional") else 1
    LD, Hout = kw.get("num_layers", 1) * D, kw.get("proj_size", 0) or Hs
    names = [n for n, _ in m.named_parameters()]
    batch = () if kind == "unbatched" else (Bs,)
    x = torch.randn((Bs, Ts, Is) if bf else (Ts, *batch, Is), dtype=torch.float64)
    states = []
    if kind != "no_h0":
        states.append(torch.randn(LD, *batch, Hout, dtype=torch.float64))
        if cell == "lstm":
            states.append(torch.randn(LD, *batch, Hs, dtype=torch.float64))
    leaves = [t.requires_grad_() for t in [x, *states] + [p.detach().clone() for p in m.parameters()]]
    n_states = len(states)

    def f(x, *rest):
        hs, params = rest[:n_states], rest[n_states:]
        inp = x
        if kind == "packed":
            inp = pack_padded_sequence(x, torch.tensor([3, 1, 2]), batch_first=bf,
                                       enforce_sorted=False)
        hx = (tuple(hs) if cell == "lstm" else hs[0]) if hs else None
        out, hidden = torch.func.functional_call(m, dict(zip(names, params)), (inp, hx))
        return (out.data if kind == "packed" else out, *(hidden if cell == "lstm" else (hidden,)))

    assert torch.autograd.gradgradcheck(f, tuple(leaves), fast_mode=fast_mode)


# ----------------------------------------------------------------------------------------------
# Dropout in training mode


def test_dropout_double_backward_uses_fastrnn_s_masks():
    """Training mode, 3 layers, dropout 0.5: the same torch seed gives the same masks, in the
    fused backward and in the composite, so their first gradients agree; and gradgradcheck
    passes when every evaluation draws the same masks."""
    torch.manual_seed(0)
    m = ft.GRU(3, 3, num_layers=3, dropout=0.5, bidirectional=True, dtype=torch.float64).train()
    x = randn(4, 3, 3, seed=1).requires_grad_()

    def loss_and_grads(create_graph):
        torch.manual_seed(5)  # the masks' seed comes from torch's generator
        y, h = m(x)
        loss = (y * randn(*y.shape, seed=2)).sum() + (h * randn(*h.shape, seed=3)).sum()
        return torch.autograd.grad(loss, [x, *m.parameters()], create_graph=create_graph)

    fused, built = loss_and_grads(False), loss_and_grads(True)
    for k, (g, w) in enumerate(zip(built, fused)):
        assert_close(g.detach().numpy(), w.numpy(), name=f"grad {k}", **F64)
    assert not torch.equal(fused[0], torch.zeros_like(fused[0]))

    names = [n for n, _ in m.named_parameters()]

    def f(x, *params):
        torch.manual_seed(5)
        y, h = torch.func.functional_call(m, dict(zip(names, params)), (x,))
        return y, h

    leaves = (x.detach().requires_grad_(), *[p.detach().clone().requires_grad_()
                                             for p in m.parameters()])
    assert torch.autograd.gradgradcheck(f, leaves, fast_mode=True)


# ----------------------------------------------------------------------------------------------
# When the composite runs, and what saving the inputs changes


def test_ordinary_backward_never_runs_the_composite(monkeypatch):
    """Grad mode is off inside an ordinary backward: the fused kernels answer it."""
    calls = []
    real = composite.forward
    monkeypatch.setattr(composite, "forward", lambda *a: calls.append(1) or real(*a))
    _, fast = make_pair("lstm", 0, num_layers=2)
    x = randn(T, B, I, seed=1).requires_grad_()
    fast(x)[0].sum().backward()
    assert calls == []
    y = fast(x)[0]
    torch.autograd.grad(y.sum(), x, create_graph=True)
    assert calls == [1]


def test_inference_tensor_input_still_trains():
    """torch refuses to save inference tensors; the op keeps such an input as it is (it cannot
    need a gradient), so training on one works as before, and so does a double backward."""
    _, fast = make_pair("gru", 0)
    with torch.inference_mode():
        x = randn(T, B, I, seed=1)
    y, _ = fast(x)
    (g,) = torch.autograd.grad(y.sum(), fast.weight_hh_l0, create_graph=True)
    (hv,) = torch.autograd.grad(g.sum(), fast.weight_hh_l0)
    assert torch.isfinite(hv).all()


def test_ordinary_backward_after_an_in_place_change_is_unaffected():
    """The fused backward reads fastrnn's own copies of x and the weights: changing the
    originals in place between forward and backward changes nothing (Keras's torch backend
    relies on it), unlike torch.nn, which raises."""
    _, fast = make_pair("lstm", 0)
    x = randn(T, B, I, seed=1).requires_grad_()
    y, _ = fast(x)
    (want,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    with torch.no_grad():
        fast.weight_hh_l0.add_(1)
        x.add_(1)
    (got,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(got, want)


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="an exception raised inside backward crosses torch's C++ engine: a "
                           "C++ exception aborts a process that runs under the ASan runtime "
                           "(CI's .ci/sanitize)")
@pytest.mark.parametrize("changed", ["input", "weights[1]", "h0"])
def test_double_backward_after_an_in_place_change_is_a_clear_error(changed):
    """A graph-building backward runs the forward again from the inputs themselves: one
    changed in place since would give the derivative somewhere else, so it is an error that
    names it."""
    _, fast = make_pair("gru", 0)
    x = randn(T, B, I, seed=1).requires_grad_()
    h0 = randn(1, B, H, seed=2).requires_grad_()
    y, _ = fast(x, h0)
    with torch.no_grad():
        {"input": x, "weights[1]": fast.weight_hh_l0, "h0": h0}[changed].mul_(2)
    with pytest.raises(RuntimeError, match=rf"^fastrnn: a backward with create_graph=True runs "
                                           rf"the forward again from its inputs, but its "
                                           rf"{changed.replace('[', '.').replace(']', '.')} was "
                                           rf"changed in place after the forward \(version "
                                           rf"\d+, now \d+\)"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
