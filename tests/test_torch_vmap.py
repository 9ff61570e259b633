# SPDX-License-Identifier: MIT
"""fastrnn.torch under torch.func: vmap, grad/vjp under vmap, and their nestings, each against a
Python loop over the vmapped dimension (fastrnn/_torch_vmap.py holds the rules).

- forward: `vmap(functional_call)` equals the loop, over cell (LSTM, LSTM with proj_size, GRU,
  RNN tanh/relu) × {1 layer, 2 layers bidirectional} × batch_first × initial state or none;
- per-sample gradients (the DP-SGD recipe, `vmap(grad(loss), in_dims=(None, 0, 0))`) of every
  parameter and of x and the initial state, over the same product; `grad(vmap(...))`; plain
  autograd through vmap; `vjp` under vmap; `jacrev`;
- batched weights (torch.func.stack_module_state ensembles), forward and gradients;
- in_dims 0/1/-1, out_dims, a vmapped size of 1, vmap nested twice, lengths (PackedSequence
  inside vmap, and the raw op with batched and unbatched lengths), dropout's randomness modes;
- float32 within the float32 budget of tests/_tolerances.py (its "naive" is the loop);
- kernel calls: one forward for vmapped inference (the fold), V + V for per-sample gradients;
- the prepared-network path of eager CPU inference is never taken under vmap; functionalize
  alone still sees the op; a derivative of a gradient and forward mode under torch.func are
  NotImplementedErrors that say so;
- on a GPU, the same rules on the CUDA engine (skipped without one).
"""

import copy
import os

import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn._torch_vmap  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from _tolerances import (SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close,  # noqa: E402
                         assert_within_float32_budget)
from torch.func import functional_call, grad, jacrev, stack_module_state, vjp, vmap  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

pytestmark = pytest.mark.skipif(not fastrnn.backends()["cpu"]["available"],
                                reason="compiled CPU engine not built")

F64 = dict(rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL)
T, B, I, H, P, V = 5, 2, 4, 5, 3, 3
CELLS = [("lstm", 0), ("lstm", P), ("gru", 0), ("rnn_tanh", 0), ("rnn_relu", 0)]
CELL_IDS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]
STACKS = [(1, False), (2, True)]
STACK_IDS = ["L1", "L2bi"]
# torch's own fallback for the PackedSequence ops under vmap warns (pyproject: warnings are errors)
PACKED_WARNINGS = pytest.mark.filterwarnings(
    "ignore:There is a performance drop because we have not yet implemented the batching rule")


def make_module(cell, proj=0, L=1, bidirectional=False, batch_first=False, dtype=torch.float64,
                seed=0, **kw):
    torch.manual_seed(seed)
    cls = {"lstm": ft.LSTM, "gru": ft.GRU, "rnn_tanh": ft.RNN, "rnn_relu": ft.RNN}[cell]
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell[4:]
    if proj:
        kw["proj_size"] = proj
    return cls(I, H, num_layers=L, bidirectional=bidirectional, batch_first=batch_first,
               dtype=dtype, **kw)


def params_of(module):
    return {k: v.detach() for k, v in module.named_parameters()}


def inputs(cell, m, lead=(V,), dtype=torch.float64, seed=1):
    """x and hx (None, a tensor, or LSTM's (h0, c0)) with leading vmapped dimensions `lead`,
    and a target shaped like the output."""
    g = torch.Generator().manual_seed(seed)
    D = 2 if m.bidirectional else 1
    Hout = m.proj_size or H

    def randn(*shape):
        return torch.randn(*lead, *shape, generator=g, dtype=dtype)

    x = randn(B, T, I) if m.batch_first else randn(T, B, I)
    h0 = randn(m.num_layers * D, B, Hout)
    hx = (h0, randn(m.num_layers * D, B, H)) if cell == "lstm" else h0
    target = randn(B, T, D * Hout) if m.batch_first else randn(T, B, D * Hout)
    return x, hx, target


def call(m, params, x, hx=None):
    return functional_call(m, params, (x,) if hx is None else (x, hx))


def loss_fn(m, params, x, hx, target):
    """A loss of every output: y against a target, the final h (and c)."""
    y, hidden = call(m, params, x, hx)
    h, c = hidden if isinstance(hidden, tuple) else (hidden, None)
    loss = ((y - target) ** 2).sum() + h.sin().sum()
    return loss if c is None else loss + (c * c).sum()


def flat(tree, prefix=""):
    """name -> tensor of a nested dict/tuple of tensors (for comparing results)."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    out = {}
    for k, v in items:
        if v is not None:
            out.update(flat(v, f"{prefix}/{k}"))
    return out


def stack_results(results):
    """The loop's results (one tree per slice) stacked along a new leading dimension."""
    per = [as_flat(r) for r in results]
    return {k: torch.stack([p[k] for p in per]) for k in per[0]}


def as_flat(tree):
    """A tree flattened by `flat`, or one that already is (keys "/...")."""
    if isinstance(tree, dict) and tree and all(isinstance(k, str) and k.startswith("/")
                                               for k in tree):
        return tree
    return flat(tree)


def assert_trees(got, want, **tol):
    """Same names, dtypes and values (assert_close) in two trees of tensors."""
    got, want = as_flat(got), as_flat(want)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert_close(got[name].detach().cpu().numpy(), want[name].detach().cpu().numpy(), name=name,
                     **tol)


class KernelCalls:
    """Counts the functional API's forward and backward calls of one cell (the kernels)."""

    def __init__(self, monkeypatch, cell):
        G, forward, backward, options = ft._CELLS[cell]
        self.forwards, self.backwards = [], []

        def counted_forward(x, *args, **kwargs):
            self.forwards.append(tuple(x.shape))
            return forward(x, *args, **kwargs)

        def counted_backward(*args, **kwargs):
            self.backwards.append(1)
            return backward(*args, **kwargs)

        monkeypatch.setitem(ft._CELLS, cell, (G, counted_forward, counted_backward, options))


# ----------------------------------------------------------------------------------------------
# Forward and per-sample gradients over the configuration product (float64)


@pytest.mark.parametrize("with_state", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("L,bidirectional", STACKS, ids=STACK_IDS)
@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_forward_equals_loop(cell, proj, L, bidirectional, batch_first, with_state):
    m = make_module(cell, proj, L, bidirectional, batch_first)
    params = params_of(m)
    x, hx, _ = inputs(cell, m)
    if with_state:
        got = vmap(call, in_dims=(None, None, 0, 0))(m, params, x, hx)
        want = stack_results([call(m, params, x[v], flat_slice(hx, v)) for v in range(V)])
    else:
        got = vmap(call, in_dims=(None, None, 0))(m, params, x)
        want = stack_results([call(m, params, x[v]) for v in range(V)])
    assert_trees(got, want, **F64)


def flat_slice(hx, v):
    return tuple(h[v] for h in hx) if isinstance(hx, tuple) else hx[v]


@pytest.mark.parametrize("with_state", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("L,bidirectional", STACKS, ids=STACK_IDS)
@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_per_sample_gradients_equal_loop(cell, proj, L, bidirectional, batch_first, with_state):
    """The DP-SGD recipe: vmap(grad(loss), in_dims=(None, 0, 0)) over (params, x, target),
    gradients of every parameter and of x (and of the initial state when given)."""
    m = make_module(cell, proj, L, bidirectional, batch_first)
    params = params_of(m)
    x, hx, target = inputs(cell, m)
    if not with_state:
        hx = None

    def loss(params, x, hx, target):
        return loss_fn(m, params, x, hx, target)

    argnums = (0, 1, 2) if with_state else (0, 1)
    hx_dim = 0 if with_state else None
    got = vmap(grad(loss, argnums=argnums), in_dims=(None, 0, hx_dim, 0))(params, x, hx, target)
    want = stack_results([grad(loss, argnums=argnums)(
        params, x[v], None if hx is None else flat_slice(hx, v), target[v]) for v in range(V)])
    assert_trees(got, want, **F64)
    # and the loop's per-sample gradients are plain autograd's (not only torch.func's)
    mm = copy.deepcopy(m)
    loss_fn(mm, dict(mm.named_parameters()), x[1], None if hx is None else flat_slice(hx, 1),
            target[1]).backward()
    assert_trees({f"/0/{k}": p.grad for k, p in mm.named_parameters()},
                 {k: want[k][1] for k in want if k.startswith("/0/")}, **F64)


@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_without_bias(cell, proj):
    """bias=False: fewer weights per layer and direction, the same rules."""
    m = make_module(cell, proj, 2, True, bias=False)
    params = params_of(m)
    x, hx, target = inputs(cell, m)
    got = vmap(lambda x, hx: call(m, params, x, hx))(x, hx)
    assert_trees(got, stack_results([call(m, params, x[v], flat_slice(hx, v)) for v in range(V)]),
                 **F64)
    loss = grad(lambda p, x, t: loss_fn(m, p, x, None, t))
    assert_trees(vmap(loss, in_dims=(None, 0, 0))(params, x, target),
                 stack_results([loss(params, x[v], target[v]) for v in range(V)]), **F64)


@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_grad_of_vmap_is_the_sum_over_slices(cell, proj):
    m = make_module(cell, proj, 2, True)
    params = params_of(m)
    x, hx, target = inputs(cell, m)

    def batch_loss(params):
        return vmap(lambda x, hx, t: loss_fn(m, params, x, hx, t))(x, hx, target).sum()

    got = grad(batch_loss)(params)
    want = {k: sum(grad(lambda p: loss_fn(m, p, x[v], flat_slice(hx, v), target[v]))(params)[k]
                   for v in range(V)) for k in params}
    assert_trees(got, want, **F64)


@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_plain_autograd_through_vmap(cell, proj):
    """vmap(module)(x) then .backward(): parameters' .grad and x.grad are the loop's."""
    m = make_module(cell, proj, 2, True)
    x, hx, target = inputs(cell, m)
    xg = x.clone().requires_grad_()
    per_slice = vmap(lambda x, t: loss_fn(m, dict(m.named_parameters()), x, None, t))
    per_slice(xg, target).sum().backward()
    got = {"dx": xg.grad, **{k: p.grad for k, p in m.named_parameters()}}
    m.zero_grad()
    xr = x.clone().requires_grad_()
    sum(loss_fn(m, dict(m.named_parameters()), xr[v], None, target[v]) for v in range(V)).backward()
    want = {"dx": xr.grad, **{k: p.grad for k, p in m.named_parameters()}}
    assert_trees(got, want, **F64)


@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_vjp_under_vmap(cell, proj):
    """vmap over inputs and cotangents of torch.func.vjp: the vjp of every output with respect
    to x, the initial state and every parameter, slice by slice."""
    m = make_module(cell, proj, 2, True, batch_first=True)
    params = params_of(m)
    x, hx, _ = inputs(cell, m)
    cotangents = vmap(lambda x, hx: call(m, params, x, hx))(x, hx)
    cotangents = torch.utils._pytree.tree_map(torch.randn_like, cotangents)

    def pullback(x, hx, ct):
        _, vjp_fn = vjp(lambda p, x, hx: call(m, p, x, hx), params, x, hx)
        return vjp_fn(ct)

    got = vmap(pullback)(x, hx, cotangents)
    want = stack_results([pullback(x[v], flat_slice(hx, v),
                                   torch.utils._pytree.tree_map(lambda t: t[v], cotangents))
                          for v in range(V)])
    assert_trees(got, want, **F64)


def test_jacrev_vmaps_the_cotangents_of_one_forward():
    """jacrev: the forward runs once unbatched, the backward under vmap over cotangents."""
    m = make_module("lstm", P, 2, True)
    params = params_of(m)
    x = inputs("lstm", m)[0][0]

    def h_n(x):
        return call(m, params, x)[1][0].reshape(-1)

    got = jacrev(h_n)(x)
    want = torch.autograd.functional.jacobian(lambda x: m(x)[1][0].reshape(-1), x)
    assert_trees({"J": got}, {"J": want}, **F64)


# ----------------------------------------------------------------------------------------------
# Batched weights: model ensembles


@pytest.mark.parametrize("x_batched", [False, True], ids=["shared_x", "x_per_model"])
@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_ensemble_forward_and_gradients_equal_loop(cell, proj, x_batched):
    models = [make_module(cell, proj, 2, True, seed=s) for s in range(V)]
    params, _ = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x, _, target = inputs(cell, models[0])
    xs = x if x_batched else x[0]
    x_dim = 0 if x_batched else None
    got = vmap(lambda p, x: call(base, p, x), in_dims=(0, x_dim))(params, xs)
    want = stack_results([call(mm, params_of(mm), x[v] if x_batched else xs)
                          for v, mm in enumerate(models)])
    assert_trees(got, want, **F64)

    def loss(p, x, t):
        return loss_fn(base, p, x, None, t)

    got = vmap(grad(loss), in_dims=(0, x_dim, 0))({k: v.detach() for k, v in params.items()},
                                                 xs, target)
    want = stack_results([grad(loss)(params_of(mm), x[v] if x_batched else xs, target[v])
                          for v, mm in enumerate(models)])
    assert_trees(got, want, **F64)


# ----------------------------------------------------------------------------------------------
# in_dims, out_dims, size 1, nesting


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("in_dim", [0, 1, -1])
def test_in_dims_anywhere(in_dim, batch_first):
    m = make_module("lstm", P, 2, True, batch_first)
    params = params_of(m)
    x, hx, target = inputs("lstm", m)
    moved = lambda t: t.movedim(0, in_dim)  # noqa: E731
    hx_moved = tuple(moved(h) for h in hx)
    got = vmap(lambda x, hx: call(m, params, x, hx), in_dims=(in_dim, in_dim))(moved(x), hx_moved)
    want = stack_results([call(m, params, x[v], flat_slice(hx, v)) for v in range(V)])
    assert_trees(got, want, **F64)
    loss = grad(lambda p, x, hx, t: loss_fn(m, p, x, hx, t))
    got = vmap(loss, in_dims=(None, in_dim, in_dim, in_dim))(params, moved(x), hx_moved,
                                                           moved(target))
    want = stack_results([loss(params, x[v], flat_slice(hx, v), target[v]) for v in range(V)])
    assert_trees(got, want, **F64)


@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_only_the_state_batched(cell, proj):
    """x shared by every slice (in_dims None), the initial state batched: the fold repeats x."""
    m = make_module(cell, proj, 2, True)
    params = params_of(m)
    x, hx, target = inputs(cell, m)
    got = vmap(lambda x, hx: call(m, params, x, hx), in_dims=(None, 0))(x[0], hx)
    want = stack_results([call(m, params, x[0], flat_slice(hx, v)) for v in range(V)])
    assert_trees(got, want, **F64)
    loss = grad(lambda p, x, hx, t: loss_fn(m, p, x, hx, t), argnums=(0, 2))
    got = vmap(loss, in_dims=(None, None, 0, 0))(params, x[0], hx, target)
    want = stack_results([loss(params, x[0], flat_slice(hx, v), target[v]) for v in range(V)])
    assert_trees(got, want, **F64)


def test_out_dims():
    m = make_module("gru", 0, 2, True)
    params = params_of(m)
    x = inputs("gru", m)[0]
    y, h_n = vmap(lambda x: call(m, params, x), out_dims=(1, -1))(x)
    want = stack_results([call(m, params, x[v]) for v in range(V)])
    assert_trees({"/0": y.movedim(1, 0), "/1": h_n.movedim(-1, 0)}, want, **F64)


@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_vmapped_size_one(cell, proj):
    m = make_module(cell, proj, 2, True)
    params = params_of(m)
    x, hx, target = inputs(cell, m, lead=(1,))
    got = vmap(lambda x, hx: call(m, params, x, hx))(x, hx)
    assert_trees(got, stack_results([call(m, params, x[0], flat_slice(hx, 0))]), **F64)
    loss = grad(lambda p, x, t: loss_fn(m, p, x, None, t))
    got = vmap(loss, in_dims=(None, 0, 0))(params, x, target)
    assert_trees(got, stack_results([loss(params, x[0], target[0])]), **F64)


@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_vmap_nested_twice(cell, proj):
    m = make_module(cell, proj, 2, True)
    params = params_of(m)
    x, hx, target = inputs(cell, m, lead=(2, V))
    f = lambda x, hx: call(m, params, x, hx)  # noqa: E731
    got = vmap(vmap(f))(x, hx)
    want = stack_results([stack_results([f(x[i, v], tuple(h[i, v] for h in hx) if cell == "lstm"
                                             else hx[i, v]) for v in range(V)]) for i in range(2)])
    assert_trees(got, want, **F64)
    loss = grad(lambda p, x, t: loss_fn(m, p, x, None, t))
    per_sample = vmap(vmap(loss, in_dims=(None, 0, 0)), in_dims=(None, 0, 0))
    got = per_sample(params, x, target)
    want = stack_results([stack_results([loss(params, x[i, v], target[i, v]) for v in range(V)])
                          for i in range(2)])
    assert_trees(got, want, **F64)
    # the outer level over the weights (an ensemble of 2), the inner one over samples
    params2, _ = stack_module_state([m, make_module(cell, proj, 2, True, seed=9)])
    got = vmap(vmap(loss, in_dims=(None, 0, 0)), in_dims=(0, 0, 0))(
        {k: v.detach() for k, v in params2.items()}, x, target)
    want = stack_results([stack_results([loss({k: params2[k][i].detach() for k in params2},
                                              x[i, v], target[i, v]) for v in range(V)])
                          for i in range(2)])
    assert_trees(got, want, **F64)


# ----------------------------------------------------------------------------------------------
# Unbatched input, lengths, dropout


@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_unbatched_input_under_vmap(cell, proj):
    """Each slice a 2-D (T, I) sequence: the module's unbatched path inside vmap."""
    m = make_module(cell, proj, 2, True)
    params = params_of(m)
    x = inputs(cell, m)[0][:, :, 0]  # V, T, I
    got = vmap(lambda x: call(m, params, x))(x)
    assert_trees(got, stack_results([call(m, params, x[v]) for v in range(V)]), **F64)


@PACKED_WARNINGS
@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_packed_sequence_inside_vmap(cell, proj):
    """A PackedSequence made inside the vmapped function: lengths reach the kernels per row;
    forward and per-sample gradients equal the loop."""
    m = make_module(cell, proj, 2, True, batch_first=True)
    params = params_of(m)
    x, _, _ = inputs(cell, m)
    lengths = torch.tensor([T, 2])

    def f(p, x):
        out, hidden = call(m, p, pack_padded_sequence(x, lengths, batch_first=True,
                                                     enforce_sorted=False))
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        return out.data, h

    assert_trees(vmap(f, in_dims=(None, 0))(params, x),
                 stack_results([f(params, x[v]) for v in range(V)]), **F64)

    def loss(p, x):
        out, h = f(p, x)
        return out.sin().sum() + (h * h).sum()

    assert_trees(vmap(grad(loss), in_dims=(None, 0))(params, x),
                 stack_results([grad(loss)(params, x[v]) for v in range(V)]), **F64)


@pytest.mark.parametrize("lengths_batched", [False, True], ids=["shared", "per_slice"])
def test_raw_op_with_lengths(lengths_batched):
    """The forward op's own rule (vmap without the module), lengths batched or shared."""
    m = make_module("gru", 0, 2, True)
    x = inputs("gru", m)[0]
    lengths = torch.tensor([[5, 2], [1, 4], [3, 3]]) if lengths_batched else torch.tensor([2, 5])
    options = ("gru", 2, True, False, 0.0, 0, False)
    weights = [w.detach() for w in m._flat_weights]

    def op(x, lengths):
        return torch.ops.fastrnn.rnn_forward(x, weights, None, None, lengths,
                                              None, *options)[:3]

    got = vmap(op, in_dims=(0, 0 if lengths_batched else None))(x, lengths)
    want = stack_results([op(x[v], lengths[v] if lengths_batched else lengths) for v in range(V)])
    assert_trees(got, want, **F64)


# Under the ASan runtime (CI's .ci/sanitize) a C++ exception aborts the process: torch's own
# errors, and Python ones raised inside torch's autograd engine, which cross it as C++ ones.
NO_CXX_THROW = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                                  reason="the error crosses torch's C++ code, which the ASan "
                                         "runtime cannot survive")


@NO_CXX_THROW
def test_dropout_randomness_modes():
    m = make_module("lstm", 0, 2, False, dropout=0.5).train()
    x = inputs("lstm", m)[0]
    with pytest.raises(RuntimeError, match="randomness"):  # torch's own, from drawing the seed
        vmap(m)(x)
    # "same": one seed for every slice, the one a plain call draws
    same = x[0].expand(V, *x.shape[1:])
    torch.manual_seed(3)
    got = vmap(m, randomness="same")(same)[0]
    torch.manual_seed(3)
    want = m(x[0])[0]
    for v in range(V):
        assert_close(got[v].detach().numpy(), want.detach().numpy(), name=f"same[{v}]", **F64)
    # "different": a seed per slice, each slice what the op gives with its seed
    seeds = torch.tensor([[11], [12], [13]])
    options = ("lstm", 2, False, False, 0.5, 0, False)
    weights = [w.detach() for w in m._flat_weights]

    def op(x, seed):
        return torch.ops.fastrnn.rnn_forward(x, weights, None, None, None, seed,
                                              *options)[:3]

    got = vmap(op, randomness="different")(same, seeds)
    want = stack_results([op(same[v], seeds[v]) for v in range(V)])
    assert_trees(got, want, **F64)
    assert not torch.equal(got[0][0], got[0][1])  # the masks do differ


def test_per_sample_gradients_with_dropout_seed_per_slice():
    """Training dropout under vmap(grad), a seed per slice (randomness="different" gives the
    module that): each slice's gradients are its own call's. The seeds differ in their number
    of digits, so the slices' saved metadata differ in length too."""
    m = make_module("lstm", 0, 2, True)
    x = inputs("lstm", m)[0]
    weights = [w.detach() for w in m._flat_weights]
    seeds = torch.tensor([[7], [123456789], [42]])

    def loss(x, weights, seed):
        y = fastrnn._torch_vmap.forward(x, weights, None, None, None, seed, "lstm", 2, True,
                                        False, 0.5, 0, True)[0]
        return y.sin().sum()

    g = grad(loss, argnums=(0, 1))
    got = vmap(g, in_dims=(0, None, 0), randomness="different")(x, weights, seeds)
    want = stack_results([g(x[v], weights, seeds[v]) for v in range(V)])
    assert_trees(got, want, **F64)


# ----------------------------------------------------------------------------------------------
# float32


@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_float32_within_budget(cell, proj):
    """float32 under vmap against the float64 loop, within the budget of the float32 loop."""
    m32 = make_module(cell, proj, 2, True, dtype=torch.float32)
    m64 = copy.deepcopy(m32).double()
    x, hx, target = inputs(cell, m64)
    x32, target32 = x.float(), target.float()
    hx32 = tuple(h.float() for h in hx) if cell == "lstm" else hx.float()
    fwd = lambda m, p, x, hx: call(m, p, x, hx)  # noqa: E731
    results = {
        "forward": (flat(vmap(lambda x, hx: fwd(m32, params_of(m32), x, hx))(x32, hx32)),
                    stack_results([fwd(m32, params_of(m32), x32[v], flat_slice(hx32, v))
                                   for v in range(V)]),
                    stack_results([fwd(m64, params_of(m64), x[v], flat_slice(hx, v))
                                   for v in range(V)]))}
    loss = lambda m: grad(lambda p, x, t: loss_fn(m, p, x, None, t))  # noqa: E731
    results["gradient"] = (
        flat(vmap(loss(m32), in_dims=(None, 0, 0))(params_of(m32), x32, target32)),
        stack_results([loss(m32)(params_of(m32), x32[v], target32[v]) for v in range(V)]),
        stack_results([loss(m64)(params_of(m64), x[v], target[v]) for v in range(V)]))
    for kind, (got, naive, exact) in results.items():
        for name in exact:
            assert got[name].dtype == torch.float32, name
            assert_within_float32_budget(got[name].detach().numpy(), naive[name].detach().numpy(),
                                         exact[name].detach().numpy(), forward=kind == "forward",
                                         name=f"{kind}{name}")


# ----------------------------------------------------------------------------------------------
# What runs: kernel calls, the prepared network, what is refused


@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
def test_kernel_calls(monkeypatch, batch_first):
    """Inference under vmap folds the slices into the batch: one forward of V*B rows.
    Per-sample gradients run V forwards of B rows and V backwards; grad(vmap) one of each."""
    m = make_module("lstm", P, 2, True, batch_first)
    params = params_of(m)
    x, hx, target = inputs("lstm", m)
    calls = KernelCalls(monkeypatch, "lstm")
    vmap(lambda x, hx: call(m, params, x, hx))(x, hx)
    folded = (V * B, T, I) if batch_first else (T, V * B, I)
    assert calls.forwards == [folded] and calls.backwards == []
    calls.forwards.clear()
    loss = grad(lambda p, x, t: loss_fn(m, p, x, None, t))
    vmap(loss, in_dims=(None, 0, 0))(params, x, target)
    assert calls.forwards == [tuple(x.shape[1:])] * V and len(calls.backwards) == V
    calls.forwards.clear()
    calls.backwards.clear()
    grad(lambda p: vmap(lambda x, t: loss_fn(m, p, x, None, t))(x, target).sum())(params)
    assert calls.forwards == [folded] and len(calls.backwards) == 1


def test_prepared_network_not_taken_under_vmap(monkeypatch):
    """Eager CPU inference keeps a prepared network (made on a call's second time); under vmap
    the custom op runs instead, with the module's own parameters too."""
    m = make_module("lstm", 0, 2, True)
    x = inputs("lstm", m)[0]
    used = []
    run_prepared = ft._run_prepared
    monkeypatch.setattr(ft, "_run_prepared", lambda *a: used.append(1) or run_prepared(*a))
    with torch.no_grad():
        for _ in range(3):
            y = vmap(m)(x)[0]
        assert used == []
        for _ in range(3):  # the control: outside vmap the same calls take it
            m(x[0])
        assert used
    assert_trees({"y": y}, {"y": torch.stack([m(x[v])[0].detach() for v in range(V)])}, **F64)


def test_functionalize_alone_keeps_the_op():
    """torch.func.functionalize handles the custom op itself (it has no rule for the
    autograd.Function that vmap and grad go through)."""
    m = make_module("gru", 0, 2, True)
    x = inputs("gru", m)[0][0]
    with torch.no_grad():
        got = torch.func.functionalize(lambda x: m(x))(x)
        assert_trees(got, m(x), **F64)


@NO_CXX_THROW
def test_second_derivative_is_a_clear_error():
    m = make_module("gru")
    params = params_of(m)
    x = inputs("gru", m)[0][0]

    def grad_norm(p):
        return grad(lambda p: call(m, p, x)[0].sum())(p)["weight_hh_l0"].square().sum()

    with pytest.raises(NotImplementedError, match="derivative of a gradient"):
        grad(grad_norm)(params)


# torch's forward AD loads its decompositions through torch.jit.script on first use, which warns
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@NO_CXX_THROW
def test_forward_mode_is_a_clear_error():
    m = make_module("lstm")
    x = inputs("lstm", m)[0][0]
    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jacfwd(lambda x: m(x)[0])(x)


@PACKED_WARNINGS
@pytest.mark.skipif(not (torch.cuda.is_available() and fastrnn.backends()["cuda"]["available"]),
                    reason="no CUDA device (or no CUDA path built)")
@pytest.mark.parametrize("cell,proj", CELLS, ids=CELL_IDS)
def test_cuda_forward_and_per_sample_gradients_equal_loop(cell, proj):
    """The same rules on the CUDA engine (float64): folded forward, per-sample gradients, a
    PackedSequence inside vmap."""
    m = make_module(cell, proj, 2, True, batch_first=True).cuda()
    params = params_of(m)
    x, hx, target = (torch.utils._pytree.tree_map(lambda t: t.cuda(), a) for a in inputs(cell, m))
    got = vmap(lambda x, hx: call(m, params, x, hx))(x, hx)
    assert_trees(got, stack_results([call(m, params, x[v], flat_slice(hx, v)) for v in range(V)]),
                 **F64)
    loss = grad(lambda p, x, t: loss_fn(m, p, x, None, t))
    assert_trees(vmap(loss, in_dims=(None, 0, 0))(params, x, target),
                 stack_results([loss(params, x[v], target[v]) for v in range(V)]), **F64)
    lengths = torch.tensor([T, 2])

    def packed_loss(p, x):
        out, _ = call(m, p, pack_padded_sequence(x, lengths, batch_first=True,
                                                 enforce_sorted=False))
        return out.data.sin().sum()

    got = vmap(grad(packed_loss), in_dims=(None, 0))(params, x)
    assert_trees(got, stack_results([grad(packed_loss)(params, x[v]) for v in range(V)]), **F64)

