# SPDX-License-Identifier: MIT
"""Prepared networks (fastrnn.prepare, python/fastrnn/_prepared.py): `net(x)` equals the
functional API's inference call; stepping over a sequence equals one call over it (bitwise
where both run the same products, else within float rounding); the network owns its weights;
bad input raises the functional API's errors and changes nothing; a step loop with `out=`
allocates nothing; threads, thread counts and the reference fallback.

Not here: the speed of steps (`python -m fastrnn bench --streaming`).
"""

import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import numpy as np
import pytest

import fastrnn
from _tolerances import (BF16_WEIGHTS_REL, INT8_SAME_VALUES_REL, INT8_WEIGHTS_REL,
                         SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close,
                         assert_within_float32_budget)
from test_api import VARIANTS, Problem
from test_reliability import SANITIZED, counting_malloc  # noqa: F401 - a fixture

CPU = fastrnn.backends()["cpu"]["available"]
needs_cpu = pytest.mark.skipif(not CPU, reason="compiled CPU engine not built")
BACKENDS = [pytest.param("cpu", marks=needs_cpu), "reference"]
# float32 steps run the same stacked product per step as a call over T from 4 rows on (the
# panel GEMM of the AVX2 and AVX-512 tables); below, a call projects x for many steps in one
# GEMM, a step in its own product
SIMD = fastrnn.backends()["cpu"].get("simd")
PANELS = CPU and SIMD in ("avx2+fma", "avx512+fma")


def prepared(p, backend="cpu", **kw):
    """The network of a test_api Problem."""
    cell, kwargs = VARIANTS[p.variant]
    return fastrnn.prepare(cell, p.weights, num_layers=p.L, bidirectional=p.D == 2,
                           backend=backend, **kwargs, **kw)


def functional(p, x=None, **kw):
    """The functional API's inference call on p (its weights, h0, c0)."""
    cell, kwargs = VARIANTS[p.variant]
    fn = getattr(fastrnn, f"{cell}_forward")
    state = dict(h0=p.h0, c0=p.c0) if cell == "lstm" else dict(h0=p.h0)
    return fn(p.x if x is None else x, p.weights, **state, num_layers=p.L,
              bidirectional=p.D == 2, training=False, **kwargs, **kw)


def step_through(net, p):
    """The sequence p.x stepped one time step a call, the state updated in place: (y, h, c)."""
    h = p.h0.copy()
    c = None if p.c0 is None else p.c0.copy()
    ys = []
    for x_t in p.x:
        h, c = net.step(x_t, h, c, out=(h, c))
        ys.append(h[-1].copy())
    return np.stack(ys), h, c


# ----------------------------------------------------------------------------------------------
# Same results as the functional API


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L,D", [(1, 1), (2, 2)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_call_equals_functional_inference(variant, L, D, dtype, backend):
    """net(x, h0, c0, lengths=..., batch_first=...) gives bitwise the functional API's
    training=False outputs (the same engine), with and without lengths, both layouts."""
    p = Problem(variant, T=6, B=5, I=4, H=7, L=L, D=D, dtype=dtype)
    net = prepared(p, backend)
    state = dict(h0=p.h0, c0=p.c0) if p.cell == "lstm" else dict(h0=p.h0)
    for lengths in (None, p.lengths):
        want = functional(p, lengths=lengths, backend=backend)
        got = net(p.x, **state, lengths=lengths)
        got_bf = net(p.x.transpose(1, 0, 2), **state, lengths=lengths, batch_first=True)
        assert got.saved is None
        for name in ("y", "h_n", "c_n"):
            if getattr(want, name) is None:
                assert getattr(got, name) is None
                continue
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        np.testing.assert_array_equal(got_bf.y.transpose(1, 0, 2), want.y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 3, 4, 9])
@pytest.mark.parametrize("variant", VARIANTS)
def test_steps_equal_one_call_over_the_sequence(variant, B, dtype, backend):
    """Stepping a 2-layer network over T steps gives the outputs, h_n and c_n of one call over
    the T steps: bitwise where both run the same products (the reference; float32 on the panel
    kernels from 4 rows, one stacked product a step either way), else within float64's
    same-maths tolerance, or for float32 within the float32 budget against float64."""
    p = Problem(variant, T=7, B=B, I=5, H=9, L=2, D=1, lengths=None, dtype=dtype)
    net = prepared(p, backend)
    want = net(p.x, *((p.h0, p.c0) if p.cell == "lstm" else (p.h0,)))
    y, h, c = step_through(net, p)
    got = {"y": y, "h_n": h, "c_n": c}
    bitwise = backend == "reference" or (dtype == np.float32 and PANELS and B >= 4)
    exact = None
    if dtype == np.float32 and not bitwise:
        p64 = Problem(variant, T=7, B=B, I=5, H=9, L=2, D=1, lengths=None, dtype=np.float64)
        exact = functional(p64, x=p.x.astype(np.float64), backend="reference")
    for name in ("y", "h_n", "c_n"):
        w = getattr(want, name)
        if w is None:
            assert got[name] is None
        elif bitwise:
            np.testing.assert_array_equal(got[name], w, err_msg=name)
        elif dtype == np.float64:
            assert_close(got[name], w, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name=name)
        else:  # both within float32's budget of the exact answer
            assert_within_float32_budget(got[name], w, getattr(exact, name), forward=True, name=name)


@needs_cpu
@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn_relu"])
def test_step_and_sequence_calls_interleave(variant, restore_threads):
    """A network used for steps and for whole sequences, at 1 and 2 threads in turn (each
    change repacks the weights), keeps giving the results of a fresh network at that count."""
    p = Problem(variant, T=5, B=2, I=6, H=11, L=2, D=1, lengths=None, dtype=np.float32)
    net = prepared(p)
    for threads in (1, 2, 1, 2):
        fastrnn.set_num_threads(threads)
        fresh = prepared(p)
        np.testing.assert_array_equal(net(p.x).y, fresh(p.x).y)
        for a, b in zip(step_through(net, p), step_through(fresh, p)):
            if a is not None:
                np.testing.assert_array_equal(a, b)


@needs_cpu
@pytest.mark.parametrize("variant", VARIANTS)
def test_cpu_matches_reference(variant):
    p = Problem(variant, T=5, B=3, I=4, H=6, L=2, D=1, lengths=None)
    got, want = step_through(prepared(p), p), step_through(prepared(p, "reference"), p)
    for a, b, name in zip(got, want, ("y", "h", "c")):
        if a is not None:
            assert_close(a, b, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name=name)


# ----------------------------------------------------------------------------------------------
# What the network owns


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_network_owns_its_weights(backend):
    """Writing into the caller's weights after prepare changes nothing; the network's own
    copies are read-only and share no memory with the caller's."""
    p = Problem("lstm", T=4, B=2, I=3, H=5, L=2, D=1, lengths=None)
    net = prepared(p, backend)
    before = net(p.x).y
    for w in p.weights:
        w[...] = 7.0
    np.testing.assert_array_equal(net(p.x).y, before)
    for w in net._flat:
        assert not w.flags.writeable
        assert not any(np.shares_memory(w, c) for c in p.weights)


def test_attributes_and_repr():
    p = Problem("lstm_proj", T=2, B=2, I=4, H=6, L=2, D=2, lengths=None, dtype=np.float32)
    net = prepared(p)
    assert (net.cell, net.dtype, net.input_size, net.hidden_size, net.proj_size,
            net.output_size, net.num_layers, net.bidirectional) == (
        "lstm", np.float32, 4, 6, 3, 3, 2, True)
    assert "PreparedNetwork lstm input_size=4 hidden_size=6, proj_size=3" in repr(net)


# ----------------------------------------------------------------------------------------------
# Bad input: the functional API's errors, and nothing changed


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_steps_raise_and_change_nothing(backend):
    p = Problem("lstm", T=3, B=2, I=4, H=5, L=2, D=1, lengths=None, dtype=np.float32)
    net = prepared(p, backend)
    x_t, h, c = p.x[0], p.h0.copy(), p.c0.copy()
    want = net.step(x_t, h, c)
    f32 = np.float32
    bad = [
        ((np.zeros((2, 3), f32), h, c), {}, ValueError, r"x_t: expected shape \(B, 4\)"),
        ((x_t.astype(np.float64), h, c), {}, TypeError, r"x_t: expected dtype float32"),
        ((x_t, h[:1], c), {}, ValueError, r"h: expected shape \(2, 2, 5\)"),
        ((x_t, h, None), {}, ValueError, r"c: expected the LSTM's cell state"),
        ((x_t, h, c.astype(np.float64)), {}, TypeError, r"c: expected dtype float32"),
        (("text", h, c), {}, TypeError, r"x_t: expected an array"),
        ((x_t, h, c), {"out": (h,)}, TypeError, r"out: expected a pair"),
        ((x_t, h, c), {"out": (h.astype(np.float64), c)}, TypeError, r"out\[0\]: expected dtype"),
        ((x_t, h, c), {"out": (h, np.zeros((2, 2, 4), f32))}, ValueError, r"out\[1\]: expected shape"),
        ((x_t, h, c), {"out": (h, np.zeros((2, 5, 2), f32).transpose(0, 2, 1))}, ValueError,
         r"out\[1\]: expected a C-contiguous writable array"),
        ((x_t, h, c), {"out": (list(h), c)}, TypeError, r"out\[0\]: expected a NumPy array"),
    ]
    read_only = c.copy()
    read_only.setflags(write=False)
    bad.append(((x_t, h, c), {"out": (h.copy(), read_only)}, ValueError, r"out\[1\]: .*writable"))
    for args, kw, error, match in bad:
        snapshot = [a.copy() for a in (x_t, h, c)]
        with pytest.raises(error, match=match):
            net.step(*args, **kw)
        for a, s in zip((x_t, h, c), snapshot):
            np.testing.assert_array_equal(a, s)
    got = net.step(x_t, h, c)  # the network is as it was
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_bad_calls_and_options():
    p = Problem("gru", T=3, B=2, I=4, H=5, L=1, D=1, lengths=None, dtype=np.float32)
    net = prepared(p)
    with pytest.raises(ValueError, match=r"c: expected None \(a GRU has no cell state\)"):
        net.step(p.x[0], p.h0, p.h0)
    with pytest.raises(ValueError, match=r"x: expected input size 4"):
        net(np.zeros((3, 2, 5), np.float32))
    with pytest.raises(TypeError, match=r"x: expected dtype float32"):
        net(p.x.astype(np.float64))
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, 3\]"):
        net(p.x, lengths=[4, 1])
    with pytest.raises(ValueError, match=r"c0: expected None"):
        net(p.x, c0=p.h0)
    bi = prepared(Problem("gru", T=3, B=2, I=4, H=5, L=1, D=2, lengths=None))
    with pytest.raises(ValueError, match=r"step: a bidirectional network cannot run one step"):
        bi.step(np.zeros((2, 4)), np.zeros((2, 2, 5)))
    w = p.weights
    with pytest.raises(ValueError, match=r"cell: expected one of"):
        fastrnn.prepare("lstmm", w)
    with pytest.raises(TypeError, match=r"weights: expected a list or tuple"):
        fastrnn.prepare("gru", w[0])
    with pytest.raises(ValueError, match=r"weights: expected at least"):
        fastrnn.prepare("gru", [])
    with pytest.raises(ValueError, match=r"proj_size: only the LSTM"):
        fastrnn.prepare("gru", w, proj_size=2)
    with pytest.raises(ValueError, match=r"weights\[1\] \(w_hh of layer 0\): expected shape"):
        fastrnn.prepare("gru", [w[0], w[1][:, :3]])
    with pytest.raises(TypeError, match=r"weights\[1\]: expected dtype float32"):
        fastrnn.prepare("gru", [w[0], w[1].astype(np.float64)])
    with pytest.raises(ValueError, match=r"nonlinearity: expected 'tanh' or 'relu'"):
        fastrnn.prepare("rnn", [np.zeros((5, 4)), np.zeros((5, 5))], nonlinearity="gelu")


# ----------------------------------------------------------------------------------------------
# Steps allocate nothing; threads


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_cpu)])
def test_a_step_loop_allocates_no_python_memory(backend):
    """tracemalloc over 2,000 steps with out=: what is held at the end beyond what was held
    after the first 100, and the peak, stay under 1 KiB: one array a step would be 2,000 of
    them (the two state arrays alone are 2 x 512 bytes a step)."""
    p = Problem("lstm", T=1, B=4, I=16, H=32, L=2, D=1, lengths=None, dtype=np.float32)
    net = prepared(p, backend)
    x_t, h, c = p.x[0], p.h0.copy(), p.c0.copy()
    for _ in range(100):
        net.step(x_t, h, c, out=(h, c))
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(2000):
            net.step(x_t, h, c, out=(h, c))
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"traced before {before}, after {after}, peak {peak} bytes")
    assert after - before < 1024
    assert peak - before < 1024


STEP_MALLOC_SCRIPT = textwrap.dedent("""
    import ctypes, sys
    import numpy as np, fastrnn
    sys.path.insert(0, sys.argv[1])
    from test_api import Problem
    fastrnn.set_num_threads(2)
    counted = ctypes.CDLL(None).counted_allocations
    for L in (1, 3):
        p = Problem("lstm", T=1, B=4, I=8, H=16, L=L, D=1, lengths=None, dtype=np.float32)
        net = fastrnn.prepare("lstm", p.weights, num_layers=L)
        x_t, h, c = p.x[0], p.h0.copy(), p.c0.copy()
        for _ in range(10):  # warm: the network packs its weights and sizes its workspace
            net.step(x_t, h, c, out=(h, c))
        before = counted()
        for _ in range(100):
            net.step(x_t, h, c, out=(h, c))
        print(counted() - before)
""")


@needs_cpu
@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's malloc is the one preloaded")
def test_the_engine_allocates_nothing_per_step(counting_malloc):
    """Heap allocations (a counting malloc) of 100 steps of a 1-layer and of a 3-layer LSTM
    are the same: the engine's scratch comes from the network's workspace, every layer's and
    every step's (it was 10 a layer: 9 scratch arrays and the region's std::function). What
    remains is pybind11's conversion of the five array arguments (15 a call, measured)."""
    tests = os.path.dirname(os.path.abspath(__file__))
    child = subprocess.run([sys.executable, "-c", STEP_MALLOC_SCRIPT, tests],
                           env=dict(os.environ, LD_PRELOAD=counting_malloc),
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    one, three = (int(n) for n in child.stdout.split())
    print(f"heap allocations in 100 steps: 1 layer {one}, 3 layers {three}")
    assert one == three, "the engine allocates per layer and step"
    assert one <= 100 * 20


@needs_cpu
def test_steps_from_several_threads_at_once():
    """Four threads step one shared network over their own sequences: each gets what it gets
    alone (calls take turns on the network and on the engine's threads)."""
    problems = [Problem("gru", T=20, B=3, I=8, H=16, L=2, D=1, lengths=None, seed=s)
                for s in range(4)]
    net = prepared(problems[0])
    want = [step_through(net, p) for p in problems]
    got, failures = [None] * 4, []

    def run(k):
        try:
            got[k] = step_through(net, problems[k])
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g[0], w[0])
        np.testing.assert_array_equal(g[1], w[1])


# ----------------------------------------------------------------------------------------------
# weights_dtype="bfloat16"


def bfloat16_values(a):
    """a's values rounded to bfloat16 (torch's conversion: round to nearest, ties to even),
    as float32: an implementation independent of fastrnn's."""
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.ascontiguousarray(a)).to(torch.bfloat16).float().numpy()


def test_bfloat16_rounding_matches_torch():
    from fastrnn._prepared import _round_to_bfloat16

    rng = np.random.default_rng(3)
    a = np.concatenate([rng.standard_normal(100_000).astype(np.float32),
                        np.array([0, -0.0, np.inf, -np.inf, 1e38, 3.4e38, -3.4e38, 1e-40,
                                  1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], np.float32)])
    got = _round_to_bfloat16(a.copy())
    want = bfloat16_values(a)
    np.testing.assert_array_equal(got, want)
    nan = _round_to_bfloat16(np.array([np.nan, np.float32(np.nan) * -1], np.float32))
    assert np.isnan(nan).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B", [1, 3, 5])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_network_is_the_float32_network_of_rounded_weights(variant, B, threads, backend,
                                                                    restore_threads):
    """A bfloat16 network computes, bit for bit, what a float32 network computes from the
    weight matrices rounded to bfloat16 (biases as given): the panels keep those values
    exactly, in 16 bits, and the products add them in the same order. Whole sequences (with
    lengths) and steps, 2 layers, 1 and 2 engine threads."""
    if CPU:
        fastrnn.set_num_threads(threads)
    p = Problem(variant, T=6, B=B, I=7, H=19, L=2, D=1, dtype=np.float32)
    rounded = [bfloat16_values(w) if w.ndim == 2 else w for w in p.weights]
    net = prepared(p, backend, weights_dtype="bfloat16")
    cell, kwargs = VARIANTS[variant]
    ref = fastrnn.prepare(cell, rounded, num_layers=2, backend=backend, **kwargs)
    assert net.weights_dtype == "bfloat16" and "weights_dtype=bfloat16" in repr(net)
    state = (p.h0, p.c0) if p.cell == "lstm" else (p.h0,)
    for a, b in zip(net(p.x, *state, lengths=p.lengths), ref(p.x, *state, lengths=p.lengths)):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    for a, b in zip(step_through(net, p), step_through(ref, p)):
        if a is not None:
            np.testing.assert_array_equal(a, b)


BF16_BASELINE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, fastrnn, torch
    sys.path.insert(0, sys.argv[1])
    from test_api import Problem, VARIANTS
    failures = []
    for variant, (cell, kwargs) in VARIANTS.items():
        p = Problem(variant, T=5, B=4, I=6, H=9, L=2, D=1, lengths=None, dtype=np.float32)
        rounded = [torch.from_numpy(w).to(torch.bfloat16).float().numpy() if w.ndim == 2 else w
                   for w in p.weights]
        a = fastrnn.prepare(cell, p.weights, num_layers=2, weights_dtype="bfloat16", **kwargs)
        b = fastrnn.prepare(cell, rounded, num_layers=2, **kwargs)
        if not np.array_equal(a(p.x).y, b(p.x).y):
            failures.append(variant)
    print(json.dumps({"simd": fastrnn.backends()["cpu"]["simd"], "failures": failures}))
""")


@needs_cpu
def test_bfloat16_network_on_the_baseline_kernels():
    """Without AVX2 (FASTRNN_SIMD=baseline) BLAS reads the rounded float32 weights: the same
    results as the float32 network of rounded weights, without the speed."""
    pytest.importorskip("torch")
    tests = os.path.dirname(os.path.abspath(__file__))
    child = subprocess.run([sys.executable, "-c", BF16_BASELINE_SCRIPT, tests],
                           env=dict(os.environ, FASTRNN_SIMD="baseline"),
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    report = __import__("json").loads(child.stdout.strip().splitlines()[-1])
    assert report == {"simd": "baseline", "failures": []}


def test_bfloat16_options():
    p = Problem("gru", T=3, B=2, I=4, H=5, L=1, D=1, lengths=None)  # float64
    with pytest.raises(TypeError, match=r"weights_dtype: 'bfloat16' stores the weights of a "
                                        r"float32 network .* got float64 weights"):
        fastrnn.prepare("gru", p.weights, weights_dtype="bfloat16")
    with pytest.raises(TypeError, match=r"weights_dtype: 'int8' stores the weights of a "
                                        r"float32 network .* got float64 weights"):
        fastrnn.prepare("gru", p.weights, weights_dtype="int8")
    w32 = [w.astype(np.float32) for w in p.weights]
    for bad in ("float16", "qint8", np.int8, 8):
        with pytest.raises(ValueError, match=r"weights_dtype: expected None \(the weights' own "
                                             r"dtype\), 'bfloat16' or 'int8', got "):
            fastrnn.prepare("gru", w32, weights_dtype=bad)
    net = fastrnn.prepare("gru", w32, weights_dtype="bfloat16")
    assert net.dtype == np.float32 and net._flat[2].dtype == np.float32
    np.testing.assert_array_equal(net._flat[2], w32[2])  # biases are kept as given


# ----------------------------------------------------------------------------------------------
# weights_dtype="int8"


def test_int8_rows_are_quantized_symmetrically():
    """The network keeps, for every weight matrix, q·s per row: s = max|row| / 127, q integers
    in [-127, 127] with the row's largest |value| at ±127, each value the nearest q·s to the
    given one; biases stay as given; a zero row stays zero."""
    p = Problem("lstm_proj", T=3, B=2, I=5, H=9, L=2, D=2, lengths=None, dtype=np.float32)
    weights = list(p.weights)
    weights[1] = weights[1].copy()
    weights[1][3] = 0  # a zero row of w_hh
    cell, kwargs = VARIANTS["lstm_proj"]
    net = fastrnn.prepare(cell, weights, num_layers=2, bidirectional=True,
                          weights_dtype="int8", **kwargs)
    assert net.weights_dtype == "int8" and "weights_dtype=int8" in repr(net)
    for mine, given in zip(net._flat, weights):
        if given.ndim == 1:
            np.testing.assert_array_equal(mine, given)
            continue
        given, mine = given.astype(np.float64), mine.astype(np.float64)
        s = np.abs(given).max(axis=1, keepdims=True) / 127
        zero = s[:, 0] == 0
        assert not mine[zero].any()
        q = mine[~zero] / s[~zero]
        np.testing.assert_allclose(q, np.rint(q), rtol=0, atol=1e-4)  # integers
        assert (np.abs(np.rint(q)).max(axis=1) == 127).all()
        # the nearest: within half a step of the given value (and an ulp of float32 slack)
        assert (np.abs(mine - given)[~zero] <= s[~zero] * (0.5 + 1e-5)).all()
    assert not net._flat[1][3].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B", [1, 3, 5, 16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_int8_network_is_the_float32_network_of_quantized_weights(variant, B, threads, backend,
                                                                 restore_threads):
    """An int8 network computes what a float32 network computes from its dequantized weights
    q·s (PreparedNetwork._flat), to float32 rounding (INT8_SAME_VALUES_REL: its panels hold q in
    8 bits and multiply each part's sum by s, where the float32 network sums fl(q·s)·a; on the
    panel kernels the two differ somewhere, which shows the int8 panels ran). Whole sequences
    (with lengths) and steps, 2 layers, 1 and 2 engine threads."""
    if CPU:
        fastrnn.set_num_threads(threads)
    p = Problem(variant, T=6, B=B, I=7, H=19, L=2, D=1, dtype=np.float32)
    net = prepared(p, backend, weights_dtype="int8")
    cell, kwargs = VARIANTS[variant]
    ref = fastrnn.prepare(cell, list(net._flat), num_layers=2, backend=backend, **kwargs)
    state = (p.h0, p.c0) if p.cell == "lstm" else (p.h0,)
    pairs = list(zip(net(p.x, *state, lengths=p.lengths), ref(p.x, *state, lengths=p.lengths)))
    pairs += list(zip(step_through(net, p), step_through(ref, p)))
    errors = [np.abs(a - b).max() / np.abs(b).max() for a, b in pairs if a is not None]
    assert max(errors) <= INT8_SAME_VALUES_REL, errors
    if backend == "cpu" and PANELS:
        assert max(errors) > 0


def narrow_weights_errors(variant, weights_dtype):
    """max over t, and median over t, of max|h - h_f32| / max|h_f32| against the float32
    network of the same weights, T = 1000, B = 4, I = H = 64, weights ~ U(+-1/sqrt(H))."""
    cell, kwargs = VARIANTS[variant]
    rng = np.random.default_rng(1)
    T, B, I, H = 1000, 4, 64, 64
    G, P = {"lstm": 4, "gru": 3, "rnn": 1}[cell], kwargs.get("proj_size", 0)
    kwargs = dict(kwargs, proj_size=32) if P else kwargs
    Ho, s = (32 if P else H), 1 / np.sqrt(H)
    w = [rng.uniform(-s, s, shape).astype(np.float32)
         for shape in [(G * H, I), (G * H, Ho), (G * H,), (G * H,)] + ([(32, H)] if P else [])]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    exact = fastrnn.prepare(cell, w, **kwargs)(x).y.astype(np.float64)
    got = fastrnn.prepare(cell, w, weights_dtype=weights_dtype, **kwargs)(x).y.astype(np.float64)
    err = np.abs(got - exact).max(axis=(1, 2)) / np.abs(exact).max(axis=(1, 2))
    print(f"{variant} {weights_dtype}: worst norm-wise error {err.max():.2e}, "
          f"median {np.median(err):.2e}")
    return err.max(), np.median(err)


@pytest.mark.parametrize("variant", VARIANTS)
def test_narrow_weights_error_over_1000_steps(variant):
    """bfloat16 within BF16_WEIGHTS_REL and int8 within INT8_WEIGHTS_REL of the float32 network
    (_tolerances.py says why); neither is float32 (an error of 0), and int8's typical error is
    the larger (it rounds by up to max|row| / 254, bfloat16 by 2^-9 of each value)."""
    bf16_worst, bf16_median = narrow_weights_errors(variant, "bfloat16")
    int8_worst, int8_median = narrow_weights_errors(variant, "int8")
    assert 0 < bf16_worst <= BF16_WEIGHTS_REL
    assert 0 < int8_worst <= INT8_WEIGHTS_REL
    assert int8_median > bf16_median


def test_int8_needs_finite_weights():
    p = Problem("rnn_tanh", T=3, B=2, I=4, H=5, L=2, D=1, lengths=None, dtype=np.float32)
    for k, bad in ((0, np.nan), (5, np.inf)):
        w = [a.copy() for a in p.weights]
        w[k][1, 2] = bad
        where = "w_ih of layer 0" if k == 0 else "w_hh of layer 1"
        with pytest.raises(ValueError, match=rf"weights \({where}\): int8 weights must be "
                                             r"finite, got a NaN or an infinity"):
            fastrnn.prepare("rnn", w, num_layers=2, weights_dtype="int8")


# Every instruction-set table on this machine: the tests of narrow weights and of the panel
# products again with the kernels capped at AVX2 (the default table of an AVX-512 CPU is
# AVX-512) and at baseline x86-64 (BLAS on the float32 values, no panels).
TABLE_TESTS = ["tests/test_prepared.py", "tests/test_engine.py", "-k",
               "(bfloat16 or int8 or narrow or steps_equal or float32) and not every_kernel_table"]


@needs_cpu
@pytest.mark.parametrize("simd", ["avx2", "baseline"])
def test_panel_products_on_every_kernel_table(simd):
    if simd == "avx2" and SIMD != "avx512+fma":
        pytest.skip(f"the default kernel table here is {SIMD}: the tests ran on it already")
    pytest.importorskip("torch")  # bfloat16_values
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FASTRNN_SIMD=simd)
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *TABLE_TESTS], cwd=root, env=env, capture_output=True, text=True,
                           timeout=1200)
    tail = child.stdout[-3000:] + child.stderr[-2000:]
    assert child.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail
    check = subprocess.run([sys.executable, "-c", "import fastrnn; "
                            "print(fastrnn.backends()['cpu']['simd'])"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == {"avx2": "avx2+fma", "baseline": "baseline"}[simd]
