# SPDX-License-Identifier: MIT
"""The one table of error budgets for fastrnn's tests, and the comparison helpers that apply them.

Every check is per element, in llm.c's form: |actual - expected| <= atol + rtol * |expected|.
A budget says why it has the size it has; tests import names from here, never literals.
"""

import contextlib
from unittest import mock

import numpy as np

from fastrnn import reference

# ----------------------------------------------------------------------------------------------
# Finite differences on reference.py (float64, T=5 B=3 I=7 H=5 P=3, weights ~ U(-0.5, 0.5))

# Central difference step. Its error is truncation h²·|L'''|/6 plus rounding ~eps·|L|/h, with
# eps = 2.2e-16 and |L| ~ 1-10 here; h = 1e-5 balances them at ~1e-10 absolute, far below the
# size of any real gradient bug (an error in one gate term moves a gradient by ~1e-2).
FD_STEP = 1e-5
# Measured over every element of all 48 cases of test_reference.py (numpy 2.4, x86-64): worst
# |fd - analytic| 7e-10, worst relative error 3e-8 where |grad| > 1e-3, worst error/bound 0.009
# (step 1e-4 gives 0.12, 1e-6 gives 0.07). rtol 1e-6 keeps >100x headroom and still fails a
# single gradient scaled by (1 + 1e-5).
FD_RTOL = 1e-6
# Floor for gradients that are (nearly) zero, where the relative error means nothing: the FD
# noise is ~1e-10 absolute, so 1e-8 is still 100x. Exact zeros (padded steps) must stay below it.
FD_ATOL = 1e-8

# ----------------------------------------------------------------------------------------------
# Same maths, different summation order (float64): reference vs torch.nn on CPU, or a batch
# row vs the same sequence run on its own. Both sides round at ~1e-16 per operation over a
# few dozen operations, so 1e-10 relative (with a 1e-12 floor for near-zero values) is loose
# enough to be robust to BLAS blocking and still catches any difference in the maths.
# Measured: worst 2e-15 absolute (torch 2.13 CPU, and batch row vs alone) on values of size ~1.
SAME_MATHS_F64_RTOL = 1e-10
SAME_MATHS_F64_ATOL = 1e-12


def assert_close(actual, expected, *, rtol, atol, name):
    """Assert |actual - expected| <= atol + rtol*|expected| elementwise; print the max abs and
    max rel difference first so a passing run also shows how much headroom is left."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    scale = np.abs(expected.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(scale, np.finfo(np.float64).tiny)).max()) if diff.size else 0.0
    print(f"{name}: max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e} (rtol {rtol:g}, atol {atol:g})")
    bad = diff > atol + rtol * scale
    if bad.any():
        idx = tuple(int(k) for k in np.argwhere(bad)[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.size} elements outside atol {atol:g} + rtol {rtol:g}*|expected|; "
            f"first at {idx}: actual {actual[idx]!r}, expected {expected[idx]!r}; "
            f"max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e}")

# ----------------------------------------------------------------------------------------------
# float32 kernels (flash-attention's rule): the max error of a float32 kernel against the
# float64 reference must stay within FACTOR x the max error of the naive float32 implementation
# (the float32 reference: same maths, correctly rounded exp/tanh, and its products with the
# weights run as textbook loops, see textbook_float32_reference) against the same float64
# reference, plus a floor.
# Measured (test_engine.py, 2 layers x 2 directions, T=30 B=9 I=37 H=45): worst forward ratio
# 1.84, worst gradient ratio 2.57; the engine's activations are within 1.8e-7 relative of the
# correctly rounded ones (csrc/include/fastrnn/activations.h), so the extra error is theirs plus
# a different summation order in the GEMMs.
F32_FACTOR_FORWARD = 2.0
F32_FACTOR_BACKWARD = 3.0
# Floor for outputs whose float32 reference error happens to be ~0 (exact zeros, padding).
F32_ATOL_FLOOR = 1e-6


def assert_matches_finite_differences(grads, params, loss_of):
    """Every analytic gradient grads[name] against central differences of loss_of(q) (q:
    params with one element moved by +-FD_STEP), within FD_RTOL / FD_ATOL."""
    for name, value in params.items():
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            q = dict(params, **{name: value.copy()})
            up, down = value[idx] + FD_STEP, value[idx] - FD_STEP
            q[name][idx] = up
            l_up = loss_of(q)
            q[name][idx] = down
            l_down = loss_of(q)
            fd[idx] = (l_up - l_down) / (up - down)
        assert grads[name].shape == value.shape
        assert_close(fd, grads[name], rtol=FD_RTOL, atol=FD_ATOL, name=f"d{name} (fd vs analytic)")


# The float32 reference is the yardstick of these budgets only if its own error does not depend
# on the machine. NumPy's products do: its OpenBLAS picks a kernel per CPU, and the SkylakeX
# kernels (AVX-512 machines) of small products such as h @ W_hh.T split the sum over k across
# 16 lanes, which halves its error at N = 64 (2.3e-8 against 4.5e-8 RMS for (16, 64) @ (64, 64),
# where the Haswell kernels run one chain per output as the engine does). So the yardstick's
# products with a weight matrix run as the textbook float32 loop instead: for each output one
# multiply-add chain over k in order, each step rounded once to float32 (a fused multiply-add:
# the product of two float32 values is exact in float64). Every other operation is NumPy's.


class _TextbookProducts(np.ndarray):
    """A float32 weight matrix whose matrix products (`@`, either side) are the textbook loop
    above; everything else about it is a plain ndarray. `calls` counts those products, so a
    yardstick cannot quietly fall back to BLAS."""

    calls = 0

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        inputs = tuple(np.asarray(a) if isinstance(a, _TextbookProducts) else a for a in inputs)
        if out is not None:
            out = tuple(np.asarray(a) if isinstance(a, _TextbookProducts) else a for a in out)
            kwargs["out"] = out
        if ufunc is not np.matmul or method != "__call__" or kwargs:
            return getattr(ufunc, method)(*inputs, **kwargs)
        _TextbookProducts.calls += 1
        return textbook_matmul(*inputs)


def textbook_matmul(a, b):
    """a (..., K) @ b (K, N) or a (K,) ... in float32, summed over k in order with one rounding
    per term. Returns a plain float32 ndarray."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == np.float32 and b.ndim == 2 and a.shape[-1] == b.shape[0], (
        a.shape, b.shape)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    acc = np.zeros(a.shape[:-1] + b.shape[1:], np.float32)
    for k in range(b.shape[0]):
        acc = (acc + a64[..., k, None] * b64[k]).astype(np.float32)
    return acc


@contextlib.contextmanager
def textbook_float32_reference():
    """Within: the float32 reference (backend="reference") computes its products with the
    weight matrices (w_ih, w_hh, w_hr) as textbook_matmul does, on any CPU; float64 runs are
    untouched. The yardstick (`naive`) of every float32 budget below."""

    def textbook(fn):
        def call(x, w_ih, w_hh, *args, **kwargs):
            if x.dtype == np.float32:
                w_ih, w_hh = w_ih.view(_TextbookProducts), w_hh.view(_TextbookProducts)
                if fn is lstm_forward and len(args) == 7 and args[6] is not None:  # w_hr
                    args = args[:6] + (args[6].view(_TextbookProducts),)
            return fn(x, w_ih, w_hh, *args, **kwargs)
        return call

    def plain(fn):  # backward: results as plain ndarrays (zeros_like(w) keeps a subclass)
        def call(*args, **kwargs):
            return tuple(np.asarray(r) if isinstance(r, _TextbookProducts) else r
                         for r in fn(*args, **kwargs))
        return call

    lstm_forward = reference.lstm_forward
    with contextlib.ExitStack() as stack:
        for cell in ("lstm", "gru", "rnn"):
            for name, wrap in ((f"{cell}_forward", textbook), (f"{cell}_backward", plain)):
                stack.enter_context(mock.patch.object(reference, name, wrap(getattr(reference, name))))
        yield


def textbook_products_run():
    """How many textbook products have run in this process (a yardstick check)."""
    return _TextbookProducts.calls


def assert_within_float32_budget(actual, naive, exact, *, forward, name, floor=F32_ATOL_FLOOR):
    """The float32 rule above, for one output: max |actual - exact| <= FACTOR x max |naive -
    exact| + floor, with exact the float64 reference, naive the float32 reference on the same
    inputs, and FACTOR = F32_FACTOR_FORWARD for outputs and final states (forward=True), else
    F32_FACTOR_BACKWARD. Prints both errors first, as assert_close does."""
    exact = np.asarray(exact, np.float64)
    assert np.shape(actual) == exact.shape == np.shape(naive), f"{name}: shapes differ"

    def max_err(a):
        return float(np.max(np.abs(np.asarray(a, np.float64) - exact))) if exact.size else 0.0

    factor = F32_FACTOR_FORWARD if forward else F32_FACTOR_BACKWARD
    e_got, e_naive = max_err(actual), max_err(naive)
    print(f"{name}: float32 error {e_got:.2e}, float32 reference error {e_naive:.2e}")
    assert e_got <= factor * e_naive + floor, (
        f"{name}: float32 error {e_got:.3e} > {factor} x float32 reference error "
        f"{e_naive:.3e} + {floor:.3g}")

# ----------------------------------------------------------------------------------------------
# Prepared networks with weights_dtype="bfloat16" or "int8" (tests/test_prepared.py): the weight
# matrices rounded to bfloat16 (relative rounding 2^-9 = 2.0e-3, half its epsilon 3.9e-3),
# float32 everywhere else. Norm-wise, max over t of max|h_bf16 - h_f32| / max|h_f32| against
# the float32 network, T = 1000, B = 4, I = H = 64, weights ~ U(+-1/sqrt(H)): measured worst
# 4.9e-3 (LSTM 4.9e-3, LSTM proj 4.1e-3, GRU 3.7e-3 / 3.8e-3, RNN tanh 4.9e-3, relu 2.9e-3;
# medians 1.6-3.0e-3): about one bfloat16 epsilon, not growing along the sequence. 1e-2 keeps
# 2x headroom; a weight read at the wrong column or unrounded moves h by ~1e-1.
BF16_WEIGHTS_REL = 1e-2
# weights_dtype="int8": each row of a weight matrix as q·s, q in [-127, 127], s = max|row| / 127:
# rounding of up to s / 2 = max|row| / 254 (3.9e-3 of the row's largest value, where bfloat16
# rounds to 2^-9 of each value). Same measure and problem as BF16_WEIGHTS_REL, three seeds:
# worst 1.3e-2 (LSTM 1.3e-2, LSTM proj 1.1e-2, GRU 1.1e-2 / 1.1e-2, RNN tanh 1.3e-2, relu
# 8.7e-3; medians 4.1-7.8e-3), not growing along the sequence. 3e-2 keeps 2.3x headroom; a
# wrong scale or column moves h by ~1e-1.
INT8_WEIGHTS_REL = 3e-2
# An int8 network against the float32 network of its dequantized weights q·s (T = 6, 2 layers,
# H = 19, every cell, 1-16 rows, 1-2 threads): the same values, summed as s·Σ q·a against
# Σ fl(q·s)·a, float32 rounding apart: measured worst 6.0e-7 norm-wise with the widening kernels
# (AVX2, AVX-512), 5.1e-7 with AVX-512 VNNI's (a as three 8-bit digits, within 6.1e-8 of max|a|:
# cpu/panel_gemm_vnni.h; with two digits it was 1e-4). 5e-6 keeps 8x headroom; a scale of the
# wrong row or part moves h by ~1e-2.
INT8_SAME_VALUES_REL = 5e-6


# ----------------------------------------------------------------------------------------------
# CUDA engine, norm-wise: max |error| / max |value| of each output against the float64
# reference (test_cuda.py; 2 layers x 2 directions, T=20 B=16 I=32 H=64, random lengths).
# float32 with TF32 off: the 1e-4.
CUDA_F32_RTOL = 1e-4
# float16 / bfloat16 storage with float32 accumulation and cell state. Measured on an H100
# (2026-11-22), worst over every output and gradient of every cell but the relu RNN: float16
# 9.7e-4 (2x its epsilon 4.9e-4), bfloat16 8.5e-3 (2x its epsilon 3.9e-3); budgets leave ~2x.
CUDA_F16_RTOL = 2e-3
CUDA_BF16_RTOL = 2e-2
# The relu RNN's gradients: relu' jumps from 0 to 1 at 0, so a pre-activation within rounding
# of 0 takes the other branch in low precision and moves whole gradient terms. Measured worst
# (same run): float16 6.4e-2, bfloat16 1.2e-1. Its forward outputs keep the budgets above.
CUDA_F16_RELU_GRAD_RTOL = 1.5e-1
CUDA_BF16_RELU_GRAD_RTOL = 2.5e-1

# ----------------------------------------------------------------------------------------------
# Peers (tests/test_convert.py)
# ONNX Runtime's CPU LSTM / GRU / RNN kernels are float32 only, so their outputs are compared
# with fastrnn in float64 on the same float32 inputs. Both see values of size <= ~3 through
# T=6 steps: float32 rounding (6e-8 relative per operation, a few dozen operations per step,
# growing through the recurrence) gives a few 1e-7; measured worst 3.1e-7 (onnxruntime 1.32).
# 1e-5 absolute + 1e-5 relative keeps 30x headroom and still catches any gate-order or bias
# mistake, which moves outputs by ~1e-1.
ORT_F32_ATOL = 1e-5
ORT_F32_RTOL = 1e-5

# Keras 3.15 on the torch backend runs LSTM and GRU(reset_after=True) through torch's fused
# ops, which keep float64 (measured 2e-16 against fastrnn), but GRU(reset_after=False) and
# SimpleRNN through its generic step loop, which loses float32-sized precision even on the first
# step with no recurrence (8e-8 against NumPy's tanh(x K + b) with float64 layers and floatx).
# Measured worst 3e-7 over these cases; 3e-6 keeps 10x headroom, and a gate-order or bias
# mistake moves outputs by ~1e-1.
KERAS_LOOP_ATOL = 3e-6
KERAS_LOOP_RTOL = 3e-6
