# SPDX-License-Identifier: MIT
"""The API layer on valid input (python/fastrnn/_api.py, _backends.py): what `backends()`
reports, threads, strides and memory order, batch_first, array types and dtypes in and out,
empty sequences, `training` and `saved`, and the forced-baseline SIMD kernels. Each test checks
backend="cpu" against backend="reference" or against an expectation that needs no engine.

Not here: bad input (test_errors.py), the maths of the reference (test_reference.py).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastrnn
from _tolerances import SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
FORWARD = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward, "rnn": fastrnn.rnn_forward}
BACKWARD = {"lstm": fastrnn.lstm_backward, "gru": fastrnn.gru_backward, "rnn": fastrnn.rnn_backward}
P = 3  # projection size of the lstm_proj variant
# variant -> (cell, the keyword argument that makes it)
VARIANTS = {
    "lstm": ("lstm", {}),
    "lstm_proj": ("lstm", {"proj_size": P}),
    "gru": ("gru", {}),
    "gru_reset_before": ("gru", {"linear_before_reset": False}),
    "rnn_tanh": ("rnn", {"nonlinearity": "tanh"}),
    "rnn_relu": ("rnn", {"nonlinearity": "relu"}),
}
BACKENDS = ["cpu", "reference"]


class Problem:
    """One valid forward + backward call: inputs, weights and output gradients for a variant.

    Sizes default to small odd ones, 2 layers, bidirectional, with lengths (full, empty, partial).
    `arrays` maps each caller-visible array to its name, so a test can replace any of them.
    """

    def __init__(self, variant, T=5, B=3, I=4, H=6, L=2, D=2, lengths="mixed", dtype=np.float64, seed=0):
        self.variant = variant
        self.cell, self.kwargs = VARIANTS[variant]
        self.T, self.B, self.I, self.H, self.L, self.D = T, B, I, H, L, D
        self.Hout = self.kwargs.get("proj_size", 0) or H
        rng = np.random.default_rng(seed)

        def u(*shape):
            return rng.uniform(-0.5, 0.5, shape).astype(dtype)

        G = GATES[self.cell]
        self.x = u(T, B, I)
        self.weights = []
        for layer in range(L):
            for _ in range(D):
                I_l = I if layer == 0 else D * self.Hout
                self.weights += [u(G * H, I_l), u(G * H, self.Hout), u(G * H), u(G * H)]
                if self.Hout != H:
                    self.weights.append(u(self.Hout, H))
        self.h0 = u(L * D, B, self.Hout)
        self.c0 = u(L * D, B, H) if self.cell == "lstm" else None
        if isinstance(lengths, str) and lengths == "mixed":  # full, empty, partial, full, ...
            lengths = np.array(([T, 0, T // 2] * B)[:B])
        self.lengths = lengths
        self.dy = u(T, B, D * self.Hout)
        self.dh_n = u(L * D, B, self.Hout)
        self.dc_n = u(L * D, B, H) if self.cell == "lstm" else None

    def forward_args(self, **overrides):
        args = dict(x=self.x, weights=self.weights, h0=self.h0, lengths=self.lengths, num_layers=self.L,
                    bidirectional=self.D == 2, training=True, **self.kwargs)
        if self.cell == "lstm":
            args["c0"] = self.c0
        args.update(overrides)
        return args

    def backward_args(self, saved, **overrides):
        args = dict(saved=saved, dy=self.dy, dh_n=self.dh_n)
        if self.cell == "lstm":
            args["dc_n"] = self.dc_n
        args.update(overrides)
        return args

    def run(self, backend, forward=None, backward=None):
        """Forward then backward; -> {name: array} of every output and gradient (None dropped)."""
        out = FORWARD[self.cell](**self.forward_args(backend=backend, **(forward or {})))
        grads = BACKWARD[self.cell](**self.backward_args(out.saved, **(backward or {})))
        return results(out, grads)


def results(out, grads=None):
    """{name: array} of a forward result and (optionally) its gradients, None entries dropped."""
    r = {"y": out.y, "h_n": out.h_n, "c_n": out.c_n}
    if grads is not None:
        r.update(dx=grads.dx, dh0=grads.dh0, dc0=grads.dc0)
        r.update({f"dweights[{k}]": g for k, g in enumerate(grads.dweights)})
    return {k: v for k, v in r.items() if v is not None}


def assert_bitwise(actual, expected, what):
    assert actual.keys() == expected.keys(), what
    for k in expected:
        a, e = np.asarray(actual[k]), np.asarray(expected[k])
        assert (a.dtype, a.shape) == (e.dtype, e.shape), f"{what} {k}: {a.dtype}{a.shape}, {e.dtype}{e.shape}"
        assert a.tobytes() == e.tobytes(), f"{what} {k}: not bitwise equal, max diff {abs(a - e).max():.2e}"


def assert_same_maths(actual, expected, what):
    """Equal up to float64 summation order (see SAME_MATHS_F64_* in _tolerances.py)."""
    assert actual.keys() == expected.keys(), what
    for k in expected:
        assert_close(actual[k], expected[k], rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL,
                     name=f"{what} {k}")


# ----------------------------------------------------------------------------------------------
# backends() and threads


def test_backends_report():
    info = fastrnn.backends()
    assert set(info) == {"cpu", "cuda", "reference"}
    for name, entry in info.items():
        assert isinstance(entry["available"], bool), name
    assert info["reference"]["available"] is True
    cpu, cuda = info["cpu"], info["cuda"]
    assert cpu["available"] is True, cpu.get("reason")
    assert cpu["simd"] in {"avx512+fma", "avx2+fma", "baseline"}
    assert isinstance(cpu["blas"], str) and "OpenBLAS" in cpu["blas"]
    assert isinstance(cpu["threads"], int) and not isinstance(cpu["threads"], bool) and cpu["threads"] >= 1
    assert isinstance(cuda["compiled"], bool)
    assert isinstance(cuda["devices"], list)
    # available exactly when the CUDA module is built and sees a device, else it says why
    assert cuda["available"] == (cuda["compiled"] and len(cuda["devices"]) > 0)
    if not cuda["available"]:
        assert cuda["reason"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_set_num_threads_same_results(variant, restore_threads):
    """1, 2 and 3 threads give the same results (to float64 rounding) as each other and the
    reference, at a size where the engine has work to split."""
    problem = Problem(variant, T=6, B=16, I=24, H=32)
    expected = problem.run("reference")
    runs = {}
    for n in (1, 2, 3):
        fastrnn.set_num_threads(n)
        assert fastrnn.backends()["cpu"]["threads"] == n
        runs[n] = problem.run("cpu")
        assert_same_maths(runs[n], expected, f"{n} threads vs reference:")
    assert_same_maths(runs[2], runs[1], "2 threads vs 1:")
    assert_same_maths(runs[3], runs[1], "3 threads vs 1:")


# ----------------------------------------------------------------------------------------------
# Strides, memory order and byte order


def relayout(a, layout):
    """The same values as `a` in another memory layout (a view where the layout needs one)."""
    if layout == "step":  # every other element of a larger array, along every axis
        big = np.zeros(tuple(2 * n for n in a.shape), a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "transposed":  # the transpose of a C-ordered array of the reversed shape
        return np.ascontiguousarray(a.T).T
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "negative":  # reversed along the first axis: a negative stride
        return np.ascontiguousarray(a[::-1])[::-1]
    if layout == "offset":  # a view starting inside a larger buffer
        big = np.zeros((a.size + 1,), a.dtype)
        big[1:] = a.ravel()
        return big[1:].reshape(a.shape)
    if layout == "big_endian":
        return a.astype(a.dtype.newbyteorder(">"))
    raise AssertionError(layout)


LAYOUTS = ["step", "transposed", "fortran", "negative", "offset", "big_endian"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_any_strides(variant, layout):
    """Every array argument (x, each weight, h0, c0, lengths, dy, dh_n, dc_n) in another layout
    gives bitwise the results of C-contiguous copies (cpu), and cpu agrees with the reference."""
    problem = Problem(variant)
    contiguous = problem.run("cpu")
    assert_same_maths(contiguous, problem.run("reference"), "cpu vs reference:")

    def other(a):
        if a is None:
            return None
        b = relayout(a, layout)
        assert np.array_equal(a, b)
        return b

    forward = dict(x=other(problem.x), weights=[other(w) for w in problem.weights], h0=other(problem.h0),
                   lengths=other(problem.lengths))
    backward = dict(dy=other(problem.dy), dh_n=other(problem.dh_n))
    if problem.cell == "lstm":
        forward["c0"], backward["dc_n"] = other(problem.c0), other(problem.dc_n)
    if layout not in ("offset", "big_endian"):
        assert not forward["x"].flags.c_contiguous and not forward["weights"][0].flags.c_contiguous
    assert_bitwise(problem.run("cpu", forward, backward), contiguous, f"cpu, {layout}:")


def test_strided_views_of_one_buffer():
    """h0 and c0 as two views of one array, x as a slice with a step in time: no confusion."""
    problem = Problem("lstm")
    state = np.stack([problem.h0, problem.c0], axis=-1)  # L*D,B,H,2
    x_big = np.repeat(problem.x, 3, axis=0)  # 3T,B,I: every third step is x
    forward = dict(x=x_big[::3], h0=state[..., 0], c0=state[..., 1])
    assert_bitwise(problem.run("cpu", forward), problem.run("cpu"), "views:")


# ----------------------------------------------------------------------------------------------
# batch_first, array types, dtypes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_first_is_the_transpose(variant, backend):
    """batch_first=True on x.transpose(1, 0, 2) gives y and dx transposed, the rest unchanged."""
    problem = Problem(variant)
    time_major = problem.run(backend)
    batch_major = problem.run(backend, dict(x=problem.x.transpose(1, 0, 2).copy(), batch_first=True),
                              dict(dy=problem.dy.transpose(1, 0, 2).copy()))
    assert batch_major["y"].shape == (problem.B, problem.T, problem.D * problem.Hout)
    assert batch_major["dx"].shape == (problem.B, problem.T, problem.I)
    batch_major["y"] = batch_major["y"].transpose(1, 0, 2)
    batch_major["dx"] = batch_major["dx"].transpose(1, 0, 2)
    assert_same_maths(batch_major, time_major, f"{backend} batch_first vs time-major:")


@pytest.mark.parametrize("variant", VARIANTS)
def test_numpy_in_numpy_out(variant):
    problem = Problem(variant)
    for backend in BACKENDS:
        for name, value in problem.run(backend).items():
            assert type(value) is np.ndarray, f"{backend} {name}: {type(value)}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_tensors_in_torch_tensors_out(variant, dtype):
    """CPU torch tensors in (x, a non-contiguous one; weights, states, lengths, gradients) ->
    torch tensors out, with the values of the same call on NumPy arrays."""
    torch = pytest.importorskip("torch")
    problem = Problem(variant, dtype=dtype)
    as_numpy = problem.run("cpu")

    def t(a):
        return None if a is None else torch.from_numpy(a)

    x_strided = t(np.ascontiguousarray(problem.x.transpose(2, 1, 0))).permute(2, 1, 0)  # any strides
    forward = dict(x=x_strided, weights=[t(w) for w in problem.weights], h0=t(problem.h0),
                   lengths=t(problem.lengths))
    backward = dict(dy=t(problem.dy), dh_n=t(problem.dh_n))
    if problem.cell == "lstm":
        forward["c0"], backward["dc_n"] = t(problem.c0), t(problem.dc_n)
    as_torch = problem.run("cpu", forward, backward)
    assert as_torch.keys() == as_numpy.keys()
    for name, value in as_torch.items():
        assert isinstance(value, torch.Tensor), f"{name}: {type(value)}"
        assert value.device.type == "cpu" and value.dtype == t(as_numpy[name]).dtype, name
    assert_bitwise({k: v.numpy() for k, v in as_torch.items()}, as_numpy, "torch vs numpy:")
    if dtype == np.float64:
        assert_same_maths(as_numpy, problem.run("reference"), "cpu vs reference:")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_dtype_in_is_dtype_out(variant, backend, dtype):
    """Every output and gradient has the input dtype, and the shapes of what it stands for."""
    problem = Problem(variant, dtype=dtype)
    r = problem.run(backend)
    for name, value in r.items():
        assert value.dtype == dtype, f"{name}: {value.dtype}"
    assert r["y"].shape == problem.dy.shape and r["dx"].shape == problem.x.shape
    assert r["h_n"].shape == r["dh0"].shape == problem.h0.shape
    for k, w in enumerate(problem.weights):
        assert r[f"dweights[{k}]"].shape == w.shape
    if problem.cell == "lstm":
        assert r["c_n"].shape == r["dc0"].shape == problem.c0.shape


# ----------------------------------------------------------------------------------------------
# Empty sequences


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_sequence(variant, backend):
    """T = 0: y is (0, B, D*Hout), the final state is the initial state; backward gives zero
    weight gradients and passes dh_n (dc_n) straight through to dh0 (dc0)."""
    problem = Problem(variant, T=0, lengths=None)
    out = FORWARD[problem.cell](**problem.forward_args(backend=backend))
    assert out.y.shape == (0, problem.B, problem.D * problem.Hout)
    assert_bitwise(results(out), {k: v for k, v in (("y", out.y), ("h_n", problem.h0), ("c_n", problem.c0))
                                  if v is not None}, "T=0 forward:")
    assert not np.shares_memory(out.h_n, problem.h0)
    grads = BACKWARD[problem.cell](**problem.backward_args(out.saved))
    assert grads.dx.shape == (0, problem.B, problem.I)
    assert_bitwise({"dh0": grads.dh0}, {"dh0": problem.dh_n}, "T=0 backward:")
    if problem.cell == "lstm":
        assert_bitwise({"dc0": grads.dc0}, {"dc0": problem.dc_n}, "T=0 backward:")
    for k, (dw, w) in enumerate(zip(grads.dweights, problem.weights)):
        assert dw.shape == w.shape and not dw.any(), f"dweights[{k}]"


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_all_lengths_zero(variant, backend, B):
    """Every sequence of length 0 (T = 5): y is zero, the state unchanged; backward gives zero dx
    and weight gradients and dh0 == dh_n (dc0 == dc_n)."""
    problem = Problem(variant, B=B, lengths=np.zeros(B, np.int64))
    out = FORWARD[problem.cell](**problem.forward_args(backend=backend))
    expected = {"y": np.zeros_like(problem.dy), "h_n": problem.h0, "c_n": problem.c0}
    assert_bitwise(results(out), {k: v for k, v in expected.items() if v is not None}, "lengths 0 forward:")
    grads = BACKWARD[problem.cell](**problem.backward_args(out.saved))
    assert not grads.dx.any()
    assert grads.dh0.tobytes() == problem.dh_n.tobytes()
    if problem.cell == "lstm":
        assert grads.dc0.tobytes() == problem.dc_n.tobytes()
    for k, dw in enumerate(grads.dweights):
        assert not dw.any(), f"dweights[{k}]"


# ----------------------------------------------------------------------------------------------
# training and saved


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_and_saved(variant):
    """training=False: no saved, same outputs; training=True: backward works, and twice on the
    same saved gives the same gradients (saved is not consumed)."""
    problem = Problem(variant)
    expected = problem.run("reference")
    for backend in BACKENDS:
        inference = FORWARD[problem.cell](**problem.forward_args(backend=backend, training=False))
        assert inference.saved is None
        assert_same_maths(results(inference), {k: expected[k] for k in results(inference)},
                          f"{backend} training=False:")
        out = FORWARD[problem.cell](**problem.forward_args(backend=backend, training=True))
        assert out.saved is not None
        first = results(out, BACKWARD[problem.cell](**problem.backward_args(out.saved)))
        second = results(out, BACKWARD[problem.cell](**problem.backward_args(out.saved)))
        assert_same_maths(first, expected, f"{backend} backward:")
        assert_bitwise(second, first, f"{backend} second backward:")


# ----------------------------------------------------------------------------------------------
# The baseline pointwise kernels, forced by FASTRNN_SIMD=baseline in a fresh process

SIMD_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import fastrnn
    import test_api
    failures = []
    for variant in test_api.VARIANTS:
        problem = test_api.Problem(variant)
        try:
            test_api.assert_same_maths(problem.run("cpu"), problem.run("reference"), variant)
        except AssertionError as exc:
            failures.append(str(exc))
    print(json.dumps({"simd": fastrnn.backends()["cpu"]["simd"], "failures": failures}))
""")


def test_forced_baseline_kernels_match_reference():
    env = dict(os.environ, FASTRNN_SIMD="baseline")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", SIMD_SCRIPT, tests_dir], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["simd"] == "baseline"
    assert report["failures"] == [], "\n".join(report["failures"])


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_saved_owns_its_inputs(backend):
    """Changing x or a weight in place after a training forward does not change its gradients."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3, 4))
    weights = [rng.uniform(-0.3, 0.3, s) for s in [(8, 4), (8, 2), (8,), (8,)]]
    out = fastrnn.lstm_forward(x, weights, training=True, backend=backend)
    dy = rng.standard_normal(out.y.shape)
    before = fastrnn.lstm_backward(out.saved, dy)
    x += 1.0
    for w in weights:
        w *= 2.0
    after = fastrnn.lstm_backward(out.saved, dy)
    for a, b in zip([before.dx, before.dh0, before.dc0, *before.dweights],
                    [after.dx, after.dh0, after.dc0, *after.dweights]):
        np.testing.assert_array_equal(a, b)


def test_core_stub_matches_the_extension():
    """python/fastrnn/_core.pyi names exactly the functions and classes _core exports."""
    import ast
    import pathlib

    from fastrnn import _backends

    core = _backends._core
    if core is None:
        pytest.skip("compiled engine not built")
    stub = pathlib.Path(fastrnn.__file__).with_name("_core.pyi")
    if not stub.exists():  # an installed wheel ships it next to __init__.py; so does a checkout
        pytest.skip("no _core.pyi next to the package")
    tree = ast.parse(stub.read_text())
    stub_names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    core_names = {n for n in dir(core) if not n.startswith("_")}
    assert stub_names == core_names
    # and the API's cell ids are the engine's
    from fastrnn import _api

    assert _api._LSTM.kind == int(core.CellKind.LSTM)
    assert _api._GRU[True].kind == int(core.CellKind.GRU)
    assert _api._GRU[False].kind == int(core.CellKind.GRU_RESET_BEFORE)
    assert _api._RNN["tanh"].kind == int(core.CellKind.RNN_TANH)
    assert _api._RNN["relu"].kind == int(core.CellKind.RNN_RELU)


def _forked_forward(x, weights, queue):
    queue.put(fastrnn.lstm_forward(x, weights, backend="cpu").y)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
# once JAX has started its threads (tests/test_jax.py run first), it warns on every fork
@pytest.mark.filterwarnings("ignore:os.fork\\(\\) was called:RuntimeWarning")
def test_engine_works_in_a_forked_child(restore_threads):
    """A forked child (DataLoader worker, multiprocessing) inherits the thread pool but not its
    threads; it must start its own rather than wait forever for the parent's."""
    import multiprocessing

    fastrnn.set_num_threads(2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 8, 16))
    weights = [rng.uniform(-0.2, 0.2, s) for s in [(64, 16), (64, 16), (64,), (64,)]]
    want = fastrnn.lstm_forward(x, weights, backend="cpu").y  # the pool is running now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forked_forward, args=(x, weights, queue))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=120)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not fastrnn.backends()["cpu"]["available"], reason="compiled CPU engine not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_fast_inference_path_gives_the_full_paths_results(variant, dtype):
    """An inference call with C-contiguous NumPy arrays takes _api's short checks
    (_inference_fast); the same call with x in Fortran order takes the full path. Both give
    the same bits, with and without h0 / c0, one and two layers and directions, and no bias."""
    from fastrnn import _api

    for L, D, bias in [(1, 1, True), (2, 2, True), (2, 1, False)]:
        p = Problem(variant, T=4, B=3, I=5, H=6, L=L, D=D, lengths=None, dtype=dtype)
        weights = p.weights if bias else [w for w in p.weights if w.ndim == 2]
        for with_state in (False, True):
            state = {}
            if with_state:
                state = dict(h0=p.h0, c0=p.c0) if p.cell == "lstm" else dict(h0=p.h0)
            args = dict(num_layers=L, bidirectional=D == 2, **p.kwargs, **state)
            cell = {"lstm": _api._LSTM, "gru": _api._GRU[p.kwargs.get("linear_before_reset", True)],
                    "rnn": _api._RNN[p.kwargs.get("nonlinearity", "tanh")]}[p.cell]
            fast = _api._inference_fast(cell, p.x, weights, state.get("h0"), state.get("c0"), L,
                                        D == 2, False, None, 0.0, None, p.kwargs.get("proj_size", 0),
                                        False, None)
            assert fast is not None, "the common call did not take the fast path"
            full = FORWARD[p.cell](np.asfortranarray(p.x), weights, **args)
            for name in ("y", "h_n", "c_n"):
                a, b = getattr(fast, name), getattr(full, name)
                assert (a is None) == (b is None), name
                if a is not None:
                    np.testing.assert_array_equal(a, b, err_msg=f"{variant} L={L} D={D} {name}")
