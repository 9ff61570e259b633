# SPDX-License-Identifier: MIT
"""The CUDA engine against the CPU engine and the reference, on a real GPU.

Every test here needs a CUDA device and the compiled `_cuda` module; on a machine without one
the whole file is skipped (never an error). What it checks:
- float64 on the GPU equals the CPU engine to float64 rounding, for every cell and variant ×
  layers × directions × lengths × biases × dropout (both engines draw the same masks);
- float32 (TF32 off) within 1e-4 relative of the float64 reference; float16/bfloat16 within
  their documented budgets (tests/_tolerances.py), forward and backward;
- torch CUDA tensors in → torch CUDA tensors out on the same device; T = 0; padding never read;
- work is queued on the caller's current stream.
"""

import numpy as np
import pytest

import fastrnn
from _tolerances import (CUDA_BF16_RELU_GRAD_RTOL, CUDA_BF16_RTOL, CUDA_F16_RELU_GRAD_RTOL,
                         CUDA_F16_RTOL, CUDA_F32_RTOL, SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL,
                         assert_close)

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    not (fastrnn.backends()["cuda"]["available"] and torch.cuda.is_available()),
    reason="no CUDA device (or fastrnn built without its CUDA path)")

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
VARIANTS = [
    ("lstm", {}),
    ("lstm", {"proj_size": 5}),
    ("gru", {}),
    ("gru", {"linear_before_reset": False}),
    ("rnn", {"nonlinearity": "tanh"}),
    ("rnn", {"nonlinearity": "relu"}),
]
VARIANT_IDS = ["lstm", "lstm_proj", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu"]


def problem(cell, kw, T, B, I, H, L, D, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    G, P = GATES[cell], kw.get("proj_size", 0)
    Hout = P or H
    k = 1 / np.sqrt(H)
    weights = []
    for layer in range(L):
        I_l = I if layer == 0 else D * Hout
        for _ in range(D):
            shapes = [(G * H, I_l), (G * H, Hout)] + ([(G * H,), (G * H,)] if bias else [])
            weights += [rng.uniform(-k, k, s) for s in shapes + ([(P, H)] if P else [])]
    arrays = dict(x=rng.standard_normal((T, B, I)), h0=rng.uniform(-0.5, 0.5, (L * D, B, Hout)),
                  dy=rng.standard_normal((T, B, D * Hout)),
                  dh_n=rng.standard_normal((L * D, B, Hout)))
    if cell == "lstm":
        arrays.update(c0=rng.uniform(-0.5, 0.5, (L * D, B, H)),
                      dc_n=rng.standard_normal((L * D, B, H)))
    return weights, arrays


def run(cell, kw, weights, arrays, convert, **opts):
    """Forward (training) + backward; `convert` maps each NumPy input to the engine's array."""
    fwd = getattr(fastrnn, f"{cell}_forward")
    bwd = getattr(fastrnn, f"{cell}_backward")
    a = {k: convert(v) for k, v in arrays.items()}
    w = [convert(v) for v in weights]
    state = (a["h0"], a["c0"]) if cell == "lstm" else (a["h0"],)
    out = fwd(a["x"], w, *state, training=True, **opts, **kw)
    if cell == "lstm":
        g = bwd(out.saved, a["dy"], a["dh_n"], a["dc_n"])
        vals = [out.y, out.h_n, out.c_n, g.dx, g.dh0, g.dc0, *g.dweights]
    else:
        g = bwd(out.saved, a["dy"], a["dh_n"])
        vals = [out.y, out.h_n, g.dx, g.dh0, *g.dweights]
    return vals


def to_numpy(v):
    return v.detach().double().cpu().numpy() if torch.is_tensor(v) else np.asarray(v, np.float64)


def on_gpu(dtype):
    return lambda a: torch.as_tensor(np.asarray(a), device="cuda").to(dtype)


@pytest.mark.parametrize("cell,kw", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("L,D", [(1, 1), (2, 2)], ids=["1x1", "2x2"])
@pytest.mark.parametrize("lengths", [None, [7, 0, 3, 1, 7]], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_float64_equals_cpu_engine(cell, kw, L, D, lengths, bias):
    weights, arrays = problem(cell, kw, T=7, B=5, I=9, H=11, L=L, D=D, bias=bias)
    opts = dict(num_layers=L, bidirectional=D == 2, lengths=lengths, dropout=0.25, seed=99)
    got = run(cell, kw, weights, arrays, on_gpu(torch.float64), **opts)
    want = run(cell, kw, weights, arrays, np.asarray, backend="cpu", **opts)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.is_cuda and g.dtype == torch.float64
        assert_close(to_numpy(g), w, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name=f"output {k}")


BUDGETS = {torch.float32: CUDA_F32_RTOL, torch.float16: CUDA_F16_RTOL,
           torch.bfloat16: CUDA_BF16_RTOL}
RELU_GRAD_BUDGETS = {torch.float32: CUDA_F32_RTOL, torch.float16: CUDA_F16_RELU_GRAD_RTOL,
                     torch.bfloat16: CUDA_BF16_RELU_GRAD_RTOL}


@pytest.mark.parametrize("cell,kw", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
def test_low_precision_within_budget(cell, kw, dtype):
    """Max error relative to the largest magnitude of each output (norm-wise), against float64."""
    weights, arrays = problem(cell, kw, T=20, B=16, I=32, H=64, L=2, D=2)
    lengths = list(np.random.default_rng(1).integers(1, 21, 16))
    opts = dict(num_layers=2, bidirectional=True, lengths=lengths)
    got = run(cell, kw, weights, arrays, on_gpu(dtype), **opts)
    want = run(cell, kw, weights, arrays, np.asarray, backend="reference", **opts)
    n_forward = 3 if cell == "lstm" else 2  # y, h_n (, c_n): the rest are gradients
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == dtype
        relu_grad = kw.get("nonlinearity") == "relu" and k >= n_forward
        rtol = (RELU_GRAD_BUDGETS if relu_grad else BUDGETS)[dtype]
        err = np.max(np.abs(to_numpy(g) - w)) / max(np.max(np.abs(w)), 1e-30)
        print(f"{dtype} output {k}: max error / max |value| = {err:.2e} (budget {rtol:g})")
        assert err <= rtol, f"output {k}: {err:.3e} > {rtol:g}"


def test_empty_sequence_and_zero_lengths():
    weights, arrays = problem("lstm", {}, T=4, B=3, I=5, H=6, L=1, D=2)
    dev = on_gpu(torch.float64)
    out = fastrnn.lstm_forward(dev(arrays["x"][:0]), [dev(w) for w in weights], dev(arrays["h0"]),
                               dev(arrays["c0"]), bidirectional=True, training=True)
    assert out.y.shape == (0, 3, 12)
    torch.testing.assert_close(out.h_n, dev(arrays["h0"]), rtol=0, atol=0)
    g = fastrnn.lstm_backward(out.saved, dev(np.zeros((0, 3, 12))), dev(arrays["dh_n"]))
    torch.testing.assert_close(g.dh0, dev(arrays["dh_n"]), rtol=0, atol=0)
    for dw in g.dweights:
        assert torch.count_nonzero(dw) == 0
    out = fastrnn.lstm_forward(dev(arrays["x"]), [dev(w) for w in weights], dev(arrays["h0"]),
                               dev(arrays["c0"]), bidirectional=True, lengths=[0, 0, 0])
    assert torch.count_nonzero(out.y) == 0
    torch.testing.assert_close(out.c_n, dev(arrays["c0"]), rtol=0, atol=0)


def test_padding_is_never_read_on_gpu():
    weights, arrays = problem("gru", {}, T=6, B=3, I=5, H=7, L=2, D=2)
    lengths = [6, 0, 2]
    for b, n in enumerate(lengths):
        arrays["x"][n:, b] = np.nan
        arrays["dy"][n:, b] = np.nan
    vals = run("gru", {}, weights, arrays, on_gpu(torch.float32), num_layers=2,
               bidirectional=True, lengths=lengths)
    for k, v in enumerate(vals):
        assert not torch.isnan(v).any(), k


def test_outputs_follow_the_input_device_and_stream():
    """Outputs land on the input's device; the stream handed to the engine is the caller's
    current one (checked directly: a result computed on the wrong stream would still read back
    correctly after a device-wide synchronisation, so values alone cannot show it)."""
    from fastrnn import _device

    weights, arrays = problem("lstm", {}, T=5, B=4, I=6, H=8, L=1, D=1)
    dev = on_gpu(torch.float32)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = dev(arrays["x"])
        assert _device.current_stream(x, x.device) == stream.cuda_stream
        out = fastrnn.lstm_forward(x, [dev(w) for w in weights])
    stream.synchronize()
    assert out.y.device.type == "cuda" and out.h_n.device == out.y.device
    ref = fastrnn.lstm_forward(arrays["x"].astype(np.float32),
                               [w.astype(np.float32) for w in weights], backend="cpu")
    np.testing.assert_allclose(out.y.cpu().numpy(), ref.y, rtol=1e-4, atol=1e-5)


def test_host_arrays_with_cuda_backend_and_mixed_devices_are_rejected():
    weights, arrays = problem("rnn", {"nonlinearity": "tanh"}, T=3, B=2, I=4, H=5, L=1, D=1)
    with pytest.raises(TypeError, match="x: expected a CUDA array for backend='cuda'"):
        fastrnn.rnn_forward(arrays["x"], weights, backend="cuda")
    dev = on_gpu(torch.float32)
    with pytest.raises(TypeError, match=r"weights\[1\]: expected an array on a CUDA device"):
        fastrnn.rnn_forward(dev(arrays["x"]), [dev(weights[0]), weights[1].astype(np.float32)]
                            + [dev(w) for w in weights[2:]])
    with pytest.raises(TypeError, match="weights\\[0\\]: expected dtype float32"):
        fastrnn.rnn_forward(dev(arrays["x"]), [on_gpu(torch.float64)(w) for w in weights])


@pytest.mark.parametrize("cell,kw", [v for v in VARIANTS if "proj_size" not in v[1]
                                     and v[1] != {"linear_before_reset": False}],
                         ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("B,H", [(1, 7), (5, 100), (16, 256), (16, 1024), (3, 1000)])
def test_persistent_kernels_match_per_step_path(cell, kw, B, H):
    """B <= 16 runs the persistent kernels; the per-step path (forced) must agree with them to
    float32 rounding, forward and backward, with lengths and both directions."""
    cuda = fastrnn._backends.cuda_module()[0]
    weights, arrays = problem(cell, kw, T=9, B=B, I=33, H=H, L=2, D=2)
    lengths = list(np.random.default_rng(2).integers(0, 10, B))
    lengths[0] = 9
    opts = dict(num_layers=2, bidirectional=True, lengths=lengths)
    results = {}
    default = cuda.persistent_max_hidden()
    try:
        for persistent in (True, False):
            cuda.set_persistent(4096 if persistent else 0)
            results[persistent] = run(cell, kw, weights, arrays, on_gpu(torch.float32), **opts)
    finally:
        cuda.set_persistent(default)
    exact = run(cell, kw, weights, arrays, np.asarray, backend="cpu", **opts)
    for k, (a, b, e) in enumerate(zip(results[True], results[False], exact)):
        scale = max(np.max(np.abs(e)), 1e-30)
        err_p = np.max(np.abs(to_numpy(a) - e)) / scale
        err_s = np.max(np.abs(to_numpy(b) - e)) / scale
        print(f"output {k}: persistent {err_p:.2e}, per-step {err_s:.2e}")
        assert err_p <= CUDA_F32_RTOL and err_s <= CUDA_F32_RTOL, k
