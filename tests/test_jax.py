# SPDX-License-Identifier: MIT
"""fastrnn.jax: custom_vjp wrappers around the CPU kernels.

Most tests run under JAX's default configuration, as most users do: 64-bit types off, so float32
arrays and int32 lengths and seeds (the autouse fixture `jax_defaults`). The float64 checks turn
64-bit types on for themselves (the `x64` fixture); both put the configuration back.

- jax.test_util.check_grads(order=1, modes=("rev",)) in float64 at small odd sizes, for the LSTM
  (with projection), both GRU variants and both RNN activations, with lengths, two layers and
  both directions, through x, every weight and the initial states;
- under jax.jit: outputs and gradients equal to the NumPy reference (forward and backward);
- float32, with 64-bit types off and on: every cell and variant, with and without lengths,
  eager and under jit, outputs and gradients bit for bit those of the functional API; jax.vmap;
- dropout: a traced seed (also negative, also under vmap), no seed needed with one layer, a
  known seed checked when the function is called;
- the store of backward states: nothing left after training steps, abandoned forwards bounded,
  an evicted or repeated backward recomputed to the same gradients (dropout masks too), vmap,
  retracing;
- bad input raises the functional API's errors when the function is called, naming the argument;
- the functional API gives JAX arrays back for JAX arrays.
"""

import re

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


@pytest.fixture(autouse=True)
def jax_defaults():
    """JAX's default configuration (64-bit types off) for every test; restored after it."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.fixture
def x64():
    """64-bit types on, for the float64 checks; restored after the test."""
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


@pytest.mark.usefixtures("x64")
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


@pytest.mark.usefixtures("x64")
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


@pytest.mark.usefixtures("x64")
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


@pytest.mark.usefixtures("x64")
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


# ----------------------------------------------------------------------------------------------
# JAX's defaults (64-bit types off): float32, int32 lengths and seeds


_FORWARD = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward, "rnn": fastrnn.rnn_forward}
_BACKWARD = {"lstm": fastrnn.lstm_backward, "gru": fastrnn.gru_backward,
             "rnn": fastrnn.rnn_backward}


def _functional(cell, kw, x, weights, h0, c0, dy, **options):
    """The functional API's outputs and gradients (NumPy) for the loss sum(y * dy) + sum(h_n)
    (+ sum(c_n)) that _loss computes."""
    states = (h0, c0) if cell == "lstm" else (h0,)
    out = _FORWARD[cell](x, weights, *states, **kw, **{"training": True, **options})
    finals = [np.ones_like(out.h_n)] + ([np.ones_like(out.c_n)] if cell == "lstm" else [])
    grads = _BACKWARD[cell](out.saved, dy, *finals)
    outs = (out.y, out.h_n) + ((out.c_n,) if cell == "lstm" else ())
    return outs, grads


def _loss(cell, kw, dy, **options):
    def loss(x, weights, h0, c0):
        outs = _call(cell, kw, x, weights, h0, c0, **options)
        return jnp.sum(outs[0] * dy) + sum(jnp.sum(o) for o in outs[1:]), outs
    return loss


def _assert_equal_to_functional(cell, got_outs, got_grads, want_outs, want, dtype):
    """Bit for bit: the JAX function runs the functional API on the same host arrays."""
    dx, dw, dh0, dc0 = got_grads
    pairs = [(f"out[{k}]", a, b) for k, (a, b) in enumerate(zip(got_outs, want_outs))]
    pairs += [("dx", dx, want.dx), ("dh0", dh0, want.dh0)]
    pairs += [("dc0", dc0, want.dc0)] if cell == "lstm" else []
    pairs += [(f"dw[{k}]", a, b) for k, (a, b) in enumerate(zip(dw, want.dweights))]
    assert len(dw) == len(want.dweights) and len(got_outs) == len(want_outs)
    for name, a, b in pairs:
        assert a.dtype == dtype, f"{cell} {name}: {a.dtype}"
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=f"{cell} {name}")


@pytest.mark.parametrize("enable_x64", [False, True], ids=["x64_off", "x64_on"])
@pytest.mark.parametrize("lengths", [None, [T, 2, 0]], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("cell,kw", CASES, ids=lambda v: str(v))
def test_float32_every_cell_equals_functional(cell, kw, lengths, enable_x64):
    """float32 through every cell and variant, two layers, both directions, with and without
    lengths, eager and under jit, 64-bit types off (JAX's default) and on: outputs and gradients
    of x, every weight and the initial states are the functional API's, in float32."""
    jax.config.update("jax_enable_x64", enable_x64)  # jax_defaults restores it
    x, weights, h0, c0 = _problem(cell, kw, L=2, D=2, dtype=np.float32, seed=3)
    opts = dict(num_layers=2, bidirectional=True, lengths=lengths)
    dy = np.random.default_rng(4).standard_normal((T, B, 2 * (kw.get("proj_size") or H)))
    dy = dy.astype(np.float32)
    want_outs, want = _functional(cell, kw, x, weights, h0, c0, dy, **opts)
    grad = jax.value_and_grad(_loss(cell, kw, dy, **opts), argnums=(0, 1, 2, 3), has_aux=True)
    for how, fn in (("eager", grad), ("jit", jax.jit(grad))):
        (_, outs), grads = fn(x, weights, h0, c0)
        _assert_equal_to_functional(cell, outs, grads, want_outs, want, np.float32)
        print(how, "equal")


def test_float32_reference_backend_with_lengths():
    """The reference engine saves other arrays than the compiled one (per-step caches, int64
    lengths): its gradients come back too, with 64-bit types off."""
    x, weights, h0, c0 = _problem("lstm", {}, L=1, D=2, dtype=np.float32, seed=5)
    opts = dict(bidirectional=True, lengths=[T, 3, 1], backend="reference")
    dy = np.ones((T, B, 2 * H), np.float32)
    want_outs, want = _functional("lstm", {}, x, weights, h0, c0, dy, **opts)
    (_, outs), grads = jax.jit(jax.value_and_grad(_loss("lstm", {}, dy, **opts),
                                                  argnums=(0, 1, 2, 3), has_aux=True))(
        x, weights, h0, c0)
    _assert_equal_to_functional("lstm", outs, grads, want_outs, want, np.float32)


def test_float32_vmap_with_lengths_and_grad():
    """jax.vmap over x, with lengths, of the output and of the gradient, under JAX's defaults."""
    x, weights, h0, c0 = _problem("gru", {}, L=1, D=1, dtype=np.float32, seed=6)
    xs = np.stack([x, 2 * x])
    lengths = jnp.asarray([T, 2, 0])
    assert lengths.dtype == jnp.int32

    def y_sum(x, weights):
        return jnp.sum(fj.gru(x, weights, lengths=lengths)[0])

    ys = jax.jit(jax.vmap(lambda x: fj.gru(x, weights, lengths=lengths)[0]))(xs)
    dxs = jax.jit(jax.vmap(jax.grad(y_sum), in_axes=(0, None)))(xs, weights)
    for k in range(2):
        out = fastrnn.gru_forward(xs[k], weights, lengths=[T, 2, 0], training=True)
        np.testing.assert_array_equal(np.asarray(ys[k]), out.y)
        want = fastrnn.gru_backward(out.saved, np.ones_like(out.y)).dx
        np.testing.assert_array_equal(np.asarray(dxs[k]), want)


def _two_layers(dtype=np.float32):
    x, weights, _, _ = _problem("lstm", {}, L=2, D=1, dtype=dtype, seed=7)
    return x, weights


def test_dropout_traced_seed_defaults():
    """Dropout with a traced int32 seed under JAX's defaults, with lengths: the functional API's
    masks for that seed, in the output and the gradient, also under vmap over seeds."""
    x, weights = _two_layers()
    opts = dict(num_layers=2, dropout=0.5, training=True, lengths=[T, 4, 1])

    def y(x, weights, seed):
        return fj.lstm(x, weights, seed=seed, **opts)[0]

    seed = jnp.asarray(7)
    assert seed.dtype == jnp.int32
    ref = fastrnn.lstm_forward(x, weights, seed=7, **opts)
    np.testing.assert_array_equal(np.asarray(jax.jit(y)(x, weights, seed)), ref.y)
    dx = jax.jit(jax.grad(lambda x, w, s: jnp.sum(y(x, w, s))))(x, weights, seed)
    np.testing.assert_array_equal(np.asarray(dx), fastrnn.lstm_backward(ref.saved, np.ones_like(ref.y)).dx)
    ys = jax.jit(jax.vmap(y, in_axes=(None, None, 0)))(x, weights, jnp.asarray([7, 8]))
    np.testing.assert_array_equal(np.asarray(ys[0]), ref.y)
    np.testing.assert_array_equal(np.asarray(ys[1]), fastrnn.lstm_forward(x, weights, seed=8, **opts).y)


@pytest.mark.parametrize("enable_x64", [False, True], ids=["x64_off", "x64_on"])
def test_negative_traced_seed_is_read_modulo_2_64(enable_x64):
    """A traced seed has no value to check before the kernel runs: it is read modulo 2**64, as
    the engine's uint64 reads it (documented in fastrnn.jax), so -3 gives the masks of 2**64 - 3
    in the output and the gradient, eagerly traced by grad, under jit and under vmap."""
    jax.config.update("jax_enable_x64", enable_x64)  # jax_defaults restores it
    x, weights = _two_layers()
    opts = dict(num_layers=2, dropout=0.5, training=True)
    ref = fastrnn.lstm_forward(x, weights, seed=2**64 - 3, **opts)
    dx_ref = fastrnn.lstm_backward(ref.saved, np.ones_like(ref.y)).dx

    def y(seed):
        return fj.lstm(x, weights, seed=seed, **opts)[0]

    seed = jnp.asarray(-3)  # int32 with 64-bit types off, int64 with them on
    np.testing.assert_array_equal(np.asarray(jax.jit(y)(seed)), ref.y)
    ys = jax.vmap(y)(jnp.asarray([-3, 5]))
    np.testing.assert_array_equal(np.asarray(ys[0]), ref.y)
    np.testing.assert_array_equal(np.asarray(ys[1]), fastrnn.lstm_forward(x, weights, seed=5, **opts).y)
    dx = jax.jit(jax.grad(lambda x, s: jnp.sum(fj.lstm(x, weights, seed=s, **opts)[0])))(x, seed)
    np.testing.assert_array_equal(np.asarray(dx), dx_ref)


def test_known_seed_is_checked_when_called():
    """A seed with a value when the function is called (an int, a NumPy integer or 0-d array, a
    JAX array that is not traced) is checked then, with the functional API's messages."""
    x, weights = _two_layers()
    opts = dict(num_layers=2, dropout=0.5, training=True)
    for seed in (-3, np.int64(-3), np.array(-3), jnp.asarray(-3)):
        with pytest.raises(ValueError, match=r"^seed: expected an int >= 0, got -3$"):
            fj.lstm(x, weights, seed=seed, **opts)
    with pytest.raises(ValueError, match=rf"^seed: expected an int in \[0, 2\*\*64\), got {2**64}$"):
        fj.lstm(x, weights, seed=2**64, **opts)
    with pytest.raises(TypeError, match=r"^seed: expected an int >= 0, got bool$"):
        fj.lstm(x, weights, seed=True, **opts)
    expected = r"^seed: expected an int or an integer scalar array, got an array of shape "
    with pytest.raises(TypeError, match=expected + r"\(2,\) and dtype int32$"):
        fj.lstm(x, weights, seed=jnp.asarray([1, 2]), **opts)
    with pytest.raises(TypeError, match=expected + r"\(\) and dtype float32$"):
        fj.lstm(x, weights, seed=jnp.asarray(1.0), **opts)
    # a NumPy int64 seed past 32 bits is used whole, not wrapped to JAX's int32
    big = 2**40 + 5
    want = fastrnn.lstm_forward(x, weights, seed=big, **opts).y
    for seed in (big, np.int64(big), np.array(big)):
        np.testing.assert_array_equal(np.asarray(fj.lstm(x, weights, seed=seed, **opts)[0]), want)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_layer_dropout_needs_no_seed(cell):
    """Dropout acts between layers only: with num_layers=1, dropout=0.5 and training=True need
    no seed (as the functional API and torch); with two layers they still do."""
    kw = dict(CASES)[cell] if cell != "lstm" else {}
    x, weights, h0, c0 = _problem(cell, kw, L=1, D=2, dtype=np.float32, seed=8)
    opts = dict(bidirectional=True, dropout=0.5, training=True, lengths=[T, 2, 1])
    dy = np.ones((T, B, 2 * H), np.float32)
    want_outs, want = _functional(cell, kw, x, weights, h0, c0, dy, **opts)
    (_, outs), grads = jax.jit(jax.value_and_grad(_loss(cell, kw, dy, **opts),
                                                  argnums=(0, 1, 2, 3), has_aux=True))(
        x, weights, h0, c0 if cell == "lstm" else None)
    _assert_equal_to_functional(cell, outs, grads, want_outs, want, np.float32)
    x2, weights2, _, _ = _problem(cell, kw, L=2, D=1, dtype=np.float32)
    with pytest.raises(ValueError, match=r"^seed: expected an int or an integer scalar array "
                                         r"when dropout applies .* got None$"):
        _call(cell, kw, x2, weights2, None, None, num_layers=2, dropout=0.5, training=True)


def test_known_lengths_are_checked_when_called():
    """Lengths with values when the function is called are checked then (ValueError naming
    lengths), not inside the kernel's callback; past 32 bits too, though JAX would wrap them."""
    x, weights, _, _ = _problem("rnn", {}, L=1, D=1, dtype=np.float32)
    for lengths, bad in (([T, 7, 1], "lengths[1]=7"), (jnp.asarray([T, -1, 1]), "lengths[1]=-1"),
                         (np.array([T, 1, 2**40]), "lengths[2]=1099511627776")):
        with pytest.raises(ValueError, match=rf"^lengths: expected values in \[0, {T}\] \(T\), "
                                             rf"got {re.escape(bad)}$"):
            fj.rnn(x, weights, lengths=lengths)
    with pytest.raises(ValueError, match=r"^lengths: expected values in \[0, 5\] \(T\), "
                                         r"got lengths\[0\]=6$"):
        fj.rnn(x.transpose(1, 0, 2), weights, lengths=[6, 1, 1], batch_first=True)


# ----------------------------------------------------------------------------------------------
# The store of backward states (module docstring of fastrnn.jax: a token crosses XLA, `saved`
# stays on the Python side; a missing entry is recomputed from the forward's inputs)


@pytest.fixture
def store():
    """fastrnn.jax's store, empty, with its bounds restored after the test."""
    st = fj._store
    bounds = (st.max_bytes, st.max_entries)
    st.clear()
    yield st
    st.max_bytes, st.max_entries = bounds
    st.clear()


def _dropout_problem():
    """Two LSTM layers with dropout, a traced seed and lengths: a recomputed forward must draw
    the same masks, or the gradients differ."""
    x, weights = _two_layers()
    opts = dict(num_layers=2, dropout=0.5, training=True, lengths=[T, 4, 1])
    dy = np.random.default_rng(11).standard_normal((T, B, H)).astype(np.float32)

    def loss(x, weights, seed):
        y, h_n, c_n = fj.lstm(x, weights, seed=seed, **opts)
        return jnp.sum(y * dy) + jnp.sum(h_n) + jnp.sum(c_n)

    out = fastrnn.lstm_forward(x, weights, seed=7, **opts)
    want = fastrnn.lstm_backward(out.saved, dy, np.ones_like(out.h_n), np.ones_like(out.c_n))
    return x, weights, loss, want


def _assert_grads(got, want):
    dx, dw = got
    np.testing.assert_array_equal(np.asarray(dx), want.dx, err_msg="dx")
    for k, (a, b) in enumerate(zip(dw, want.dweights)):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=f"dw[{k}]")


def test_store_holds_nothing_after_training_steps(store):
    """jit(value_and_grad) steps: every forward's entry is taken back by its backward; what
    stays is at most the entry taken last."""
    x, weights, loss, want = _dropout_problem()
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    for _ in range(20):
        _assert_grads(step(x, weights, jnp.asarray(7)), want)
        assert len(store) <= 1
    assert not store._pending and store._bytes == 0


def test_store_abandoned_forwards_are_bounded(store):
    """Forwards whose backward never runs (a vjp function dropped; a jitted gradient that is
    computed but not returned) leave entries; they are bounded by count and by bytes, the oldest
    go first, and a later backward is still right."""
    x, weights, loss, want = _dropout_problem()
    store.max_entries = 3
    for _ in range(10):
        jax.vjp(loss, x, weights, jnp.asarray(7))
        assert len(store._pending) <= 3
    unused = jax.jit(lambda x, w, s: jax.value_and_grad(loss)(x, w, s)[0])
    for _ in range(5):
        unused(x, weights, jnp.asarray(7))
        assert len(store._pending) <= 3
    _assert_grads(jax.grad(loss, argnums=(0, 1))(x, weights, jnp.asarray(7)), want)
    store.max_entries, store.max_bytes = 1024, 1  # bytes now bound: only the newest stays
    for _ in range(4):
        jax.vjp(loss, x, weights, jnp.asarray(7))
    assert len(store._pending) == 1


def _count_forwards(monkeypatch):
    calls = []
    inner = fj._call_forward
    monkeypatch.setattr(fj, "_call_forward", lambda *a: calls.append(1) or inner(*a))
    return calls


def test_store_evicted_entry_is_recomputed(store, monkeypatch):
    """A backward whose entry was evicted runs the forward again, with the same seed (the same
    dropout masks) and lengths: the same gradients, bit for bit."""
    x, weights, loss, want = _dropout_problem()
    _, vjp = jax.vjp(loss, x, weights, jnp.asarray(7))
    store.max_entries = 1
    for _ in range(3):  # newer forwards push the first one out
        jax.vjp(loss, 2 * x, weights, jnp.asarray(8))
    calls = _count_forwards(monkeypatch)
    dx, dw, _ = vjp(jnp.float32(1))
    assert len(calls) == 1  # the forward ran again
    _assert_grads((dx, dw), want)


def test_store_repeated_backward(store, monkeypatch):
    """A vjp function called more than once (again at once, after other calls, and under
    jax.vmap over cotangents as jax.jacrev does): the same gradients each time."""
    x, weights, loss, want = _dropout_problem()
    _, vjp = jax.vjp(loss, x, weights, jnp.asarray(7))
    calls = _count_forwards(monkeypatch)
    for _ in range(2):
        dx, dw, _ = vjp(jnp.float32(1))
        _assert_grads((dx, dw), want)
    assert not calls  # taken from the store, then as the entry taken last
    jax.grad(loss)(2 * x, weights, jnp.asarray(8))  # replaces the entry taken last
    del calls[:]
    dx, dw, _ = vjp(jnp.float32(1))
    assert len(calls) == 1
    _assert_grads((dx, dw), want)
    dxs, dws, _ = jax.vmap(vjp)(jnp.asarray([1.0, 2.0], jnp.float32))
    _assert_grads((dxs[0], [w[0] for w in dws]), want)
    _assert_grads((dxs[1] / 2, [w[1] / 2 for w in dws]), want)


def test_store_vmap_of_grad_and_retrace(store):
    """vmap over the batch of a jitted gradient (one forward and one backward per element, each
    with its own token), and new shapes that retrace the jitted function: the functional API's
    gradients, and nothing left pending."""
    x, weights, h0, c0 = _problem("gru", {}, L=1, D=1, dtype=np.float32, seed=12)

    def y_sum(x, weights):
        return jnp.sum(fj.gru(x, weights)[0] ** 2)

    grad = jax.jit(jax.vmap(jax.grad(y_sum, argnums=(0, 1)), in_axes=(0, None)))
    for n_steps in (T, T + 2, T):  # the second shape retraces, the third reuses the first trace
        xs = np.random.default_rng(n_steps).standard_normal((3, n_steps, B, I)).astype(np.float32)
        dxs, dws = grad(xs, weights)
        for k in range(3):
            out = fastrnn.gru_forward(xs[k], weights, training=True)
            want = fastrnn.gru_backward(out.saved, 2 * out.y)
            np.testing.assert_array_equal(np.asarray(dxs[k]), want.dx)
            for j, (a, b) in enumerate(zip(dws, want.dweights)):
                np.testing.assert_array_equal(np.asarray(a[k]), b, err_msg=f"dw[{j}]")
        assert not store._pending


def test_store_checkpoint_and_threads(store):
    """jax.checkpoint (the forward runs again in the backward pass, with a new token) and
    training steps on several threads at once (callbacks on several XLA threads share the store):
    the functional API's gradients, and nothing left pending."""
    import concurrent.futures

    x, weights, loss, want = _dropout_problem()
    remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums=(0, 1)))
    _assert_grads(remat(x, weights, jnp.asarray(7)), want)
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: step(x, weights, jnp.asarray(7)), range(8)))
    for got in results:
        _assert_grads(got, want)
    assert not store._pending


# ----------------------------------------------------------------------------------------------
# The functional API on JAX arrays


@pytest.mark.parametrize("cell,kw", CASES[:1] + CASES[2:3] + CASES[4:5], ids=lambda v: str(v))
def test_functional_api_gives_jax_arrays_back(cell, kw):
    """fastrnn.*_forward / *_backward on JAX arrays return JAX arrays (outputs and every
    gradient), with the values of the same call on NumPy arrays; NumPy in stays NumPy out."""
    x, weights, h0, c0 = _problem(cell, kw, L=1, D=1, dtype=np.float32, seed=9)
    states = (h0, c0) if cell == "lstm" else (h0,)
    dy = np.ones((T, B, H), np.float32)
    out_np = _FORWARD[cell](x, weights, *states, training=True, **kw)
    grads_np = _BACKWARD[cell](out_np.saved, dy)
    out = _FORWARD[cell](jnp.asarray(x), [jnp.asarray(w) for w in weights],
                         *[jnp.asarray(s) for s in states], training=True, **kw)
    grads = _BACKWARD[cell](out.saved, jnp.asarray(dy))
    got = dict(y=out.y, h_n=out.h_n, dx=grads.dx, dh0=grads.dh0)
    want = dict(y=out_np.y, h_n=out_np.h_n, dx=grads_np.dx, dh0=grads_np.dh0)
    if cell == "lstm":
        got.update(c_n=out.c_n, dc0=grads.dc0)
        want.update(c_n=out_np.c_n, dc0=grads_np.dc0)
    got.update({f"dw[{k}]": w for k, w in enumerate(grads.dweights)})
    want.update({f"dw[{k}]": w for k, w in enumerate(grads_np.dweights)})
    for name, value in got.items():
        assert isinstance(value, jax.Array), f"{cell} {name}: {type(value)}"
        assert value.dtype == jnp.float32, f"{cell} {name}: {value.dtype}"
        np.testing.assert_array_equal(np.asarray(value), want[name], err_msg=f"{cell} {name}")
    for name in ("y", "h_n"):
        assert type(getattr(out_np, name)) is np.ndarray, name
    assert type(grads_np.dx) is np.ndarray


@pytest.mark.parametrize("second", ["grad_of_grad", "hessian"])
def test_second_order_derivatives_are_a_clear_error(second):
    """Derivatives of gradients are not built (the backward is a host callback): fastrnn's own
    NotImplementedError, naming the function and what works instead, not JAX's message about
    pure callbacks; first-order gradients keep working (jit, vmap)."""
    rng = np.random.default_rng(0)
    H, I = 3, 2
    w = [jnp.asarray(rng.standard_normal(s).astype(np.float32))
         for s in [(3 * H, I), (3 * H, H), (3 * H,), (3 * H,)]]
    x = jnp.asarray(rng.standard_normal((4, 1, I)).astype(np.float32))

    def f(x):
        return jnp.sum(fastrnn.jax.gru(x, w)[0] ** 2)

    assert jax.jit(jax.grad(f))(x).shape == x.shape
    assert jax.vmap(jax.grad(f))(x[None]).shape == (1, *x.shape)
    higher = {"grad_of_grad": jax.grad(lambda x: jnp.sum(jax.grad(f)(x))), "hessian": jax.hessian(f)}
    with pytest.raises(NotImplementedError, match=r"fastrnn\.jax\.gru: derivatives of its "
                                                  r"gradients .* are not supported: .*fastrnn\.torch"):
        higher[second](x)
