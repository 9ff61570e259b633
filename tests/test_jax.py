# SPDX-License-Identifier: MIT
"""fastrnn.jax: custom_vjp wrappers around the CPU kernels.

- jax.test_util.check_grads(order=1, modes=("rev",)) in float64 at small odd sizes, for the LSTM
  (with projection), both GRU variants and both RNN activations, with lengths, two layers and
  both directions, through x, every weight and the initial states;
- under jax.jit: outputs and gradients equal to the NumPy reference (forward and backward);
- a traced seed with dropout; jax.vmap; float32; bad input raises the functional API's errors
  when the function is called, naming the argument.
"""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import fastrnn  # noqa: E402
import fastrnn.jax as fj  # noqa: E402
from _tolerances import SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close  # noqa: E402

T, B, I, H, P = 5, 3, 7, 5, 3
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CASES = [("lstm", {}), ("lstm", {"proj_size": P}), ("gru", {"linear_before_reset": True}),
         ("gru", {"linear_before_reset": False}), ("rnn", {"nonlinearity": "tanh"}),
         ("rnn", {"nonlinearity": "relu"})]


@pytest.fixture(scope="module", autouse=True)
def x64():
    """float64 for the gradient checks; restored after this module."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


def _problem(cell, kw, L, D, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    G, P_ = GATES[cell], kw.get("proj_size", 0)
    Hout = P_ or H
    weights = []
    for layer in range(L):
        for _ in range(D):
            shapes = [(G * H, I if layer == 0 else D * Hout), (G * H, Hout), (G * H,), (G * H,)]
            shapes += [(P_, H)] if P_ else []
            weights += [rng.uniform(-0.5, 0.5, s).astype(dtype) for s in shapes]
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, (L * D, B, Hout)).astype(dtype)
    c0 = rng.uniform(-0.5, 0.5, (L * D, B, H)).astype(dtype) if cell == "lstm" else None
    return x, weights, h0, c0


def _jax_fn(cell):
    return {"lstm": fj.lstm, "gru": fj.gru, "rnn": fj.rnn}[cell]


def _call(cell, kw, x, weights, h0, c0, **options):
    fn = _jax_fn(cell)
    if cell == "lstm":
        return fn(x, weights, h0, c0, **kw, **options)
    return fn(x, weights, h0, **kw, **options)


@pytest.mark.parametrize("cell,kw", CASES, ids=lambda v: str(v))
def test_check_grads(cell, kw):
    x, weights, h0, c0 = _problem(cell, kw, L=2, D=2)
    opts = dict(num_layers=2, bidirectional=True, lengths=[T, 2, 0])

    def f(x, weights, h0, c0):
        return _call(cell, kw, x, weights, h0, c0, **opts)

    args = (x, weights, h0, c0) if cell == "lstm" else (x, weights, h0, None)
    # a step of 1e-6 (check_grads' default is 1e-4 in float64) keeps the finite differences
    # from crossing a relu kink at these sizes; truncation error stays ~1e-12
    check_grads(f, args, order=1, modes=("rev",), eps=1e-6)
    check_grads(jax.jit(f), args, order=1, modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell,kw", CASES, ids=lambda v: str(v))
def test_jit_equals_reference(cell, kw, batch_first):
    x, weights, h0, c0 = _problem(cell, kw, L=2, D=2, seed=1)
    lengths = np.array([T, 3, 1])
    xb = x.transpose(1, 0, 2) if batch_first else x
    opts = dict(num_layers=2, bidirectional=True, batch_first=batch_first)

    def loss(x, weights, h0, c0, lengths, dy):
        outs = _call(cell, kw, x, weights, h0, c0, lengths=lengths, **opts)
        return jnp.sum(outs[0] * dy) + sum(jnp.sum(o ** 2) for o in outs[1:]), outs

    ref_fwd = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward,
               "rnn": fastrnn.rnn_forward}[cell]
    ref_bwd = {"lstm": fastrnn.lstm_backward, "gru": fastrnn.gru_backward,
               "rnn": fastrnn.rnn_backward}[cell]
    states = (h0, c0) if cell == "lstm" else (h0,)
    ref = ref_fwd(xb, weights, *states, lengths=lengths, training=True, backend="reference", **opts, **kw)
    dy = np.random.default_rng(2).standard_normal(ref.y.shape)
    grad_states = [2 * ref.h_n] + ([2 * ref.c_n] if cell == "lstm" else [])
    rg = ref_bwd(ref.saved, dy, *grad_states)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (_, outs), grads = fn(xb, weights, h0, c0, jnp.asarray(lengths), dy)
    for name, a, b in zip(["y", "h_n", "c_n"], outs, (ref.y, ref.h_n, ref.c_n)):
        assert_close(a, b, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name=f"{cell} {name}")
    dx, dw, dh0, dc0 = grads
    assert_close(dx, rg.dx, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name=f"{cell} dx")
    assert_close(dh0, rg.dh0, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name=f"{cell} dh0")
    if cell == "lstm":
        assert_close(dc0, rg.dc0, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name="dc0")
    for k, (a, b) in enumerate(zip(dw, rg.dweights)):
        assert_close(a, b, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name=f"{cell} dw[{k}]")


def test_dropout_traced_seed_and_vmap():
    x, weights, h0, c0 = _problem("lstm", {}, L=2, D=1)

    @jax.jit
    def f(x, weights, seed):
        return fj.lstm(x, weights, num_layers=2, dropout=0.5, training=True, seed=seed)[0]

    ref = fastrnn.lstm_forward(x, weights, num_layers=2, dropout=0.5, training=True, seed=7,
                               backend="reference")
    assert_close(f(x, weights, jnp.int64(7)), ref.y, rtol=SAME_MATHS_F64_RTOL,
                 atol=SAME_MATHS_F64_ATOL, name="dropout y")
    assert not np.allclose(f(x, weights, jnp.int64(8)), ref.y)
    dy = np.ones_like(ref.y)
    g = jax.jit(jax.grad(lambda x, w, s: jnp.sum(f(x, w, s))))(x, weights, jnp.int64(7))
    assert_close(g, fastrnn.lstm_backward(ref.saved, dy).dx, rtol=SAME_MATHS_F64_RTOL,
                 atol=SAME_MATHS_F64_ATOL, name="dropout dx")
    with pytest.raises(ValueError, match=r"^seed: expected an int or an integer scalar array"):
        fj.lstm(x, weights, num_layers=2, dropout=0.5, training=True)

    xs = np.stack([x, 2 * x])
    ys = jax.vmap(lambda x: fj.gru(x, [w[:3 * H] for w in weights[:4]])[0])(xs)
    for k in range(2):
        want = fastrnn.gru_forward(xs[k], [w[:3 * H] for w in weights[:4]]).y
        assert_close(ys[k], want, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name="vmap")


def test_float32():
    x, weights, h0, c0 = _problem("rnn", {}, L=1, D=1, dtype=np.float32)
    y, h_n = jax.jit(lambda x, w: fj.rnn(x, w))(x, weights)
    assert y.dtype == jnp.float32
    want = fastrnn.rnn_forward(x, weights)
    np.testing.assert_array_equal(np.asarray(y), want.y)
    dw = jax.grad(lambda w: jnp.sum(fj.rnn(x, w)[0]))(weights)
    assert [d.dtype for d in dw] == [jnp.float32] * 4


def test_bad_input_names_the_argument():
    x, weights, h0, c0 = _problem("lstm", {}, L=1, D=1)
    with pytest.raises(ValueError, match=r"^weights\[1\] \(w_hh of layer 0\): expected shape"):
        jax.jit(lambda x: fj.lstm(x, [weights[0], weights[1][:, :2]] + weights[2:]))(x)
    with pytest.raises(ValueError, match=r"^h0: expected shape \(1, 3, 5\)"):
        fj.lstm(x, weights, h0[:, :2])
    with pytest.raises(TypeError, match=r"^weights\[0\]: expected dtype float64"):
        fj.lstm(x, [weights[0].astype(np.float32)] + weights[1:])
    with pytest.raises(TypeError, match=r"^weights: expected a list or tuple"):
        fj.gru(x, np.zeros(3))
    with pytest.raises(ValueError, match=r"^lengths: expected shape \(3,\)"):
        fj.rnn(x, [w[:H] for w in weights], lengths=[1, 2])
    with pytest.raises(ValueError, match=r"^nonlinearity: expected 'tanh' or 'relu'"):
        fj.rnn(x, [w[:H] for w in weights], nonlinearity="gelu")
