# SPDX-License-Identifier: MIT
"""fastrnn.convert against the real peers, plus known answers, round trips and bad input.

- ONNX Runtime: graphs built with onnx.helper (random W, R, B, non-zero initial states) for the
  LSTM, the GRU with linear_before_reset 0 and 1, the RNN (tanh, relu), forward and
  bidirectional, with and without sequence_lens; Y, Y_h (and Y_c) compared with fastrnn run on
  `from_onnx`'s weights, and ONNX Runtime run on `to_onnx` of random canonical weights.
- Keras 3 (KERAS_BACKEND=torch, float64): LSTM, GRU (reset_after True and False), SimpleRNN
  (tanh, relu) with non-zero biases, both ways (`from_keras` and `to_keras`).
- TF1 BasicLSTMCell: its equations written out in NumPy (TensorFlow itself is not a test
  dependency) against fastrnn on `from_tf_lstm_cell`'s weights.
- exact round trips for every layout; ValueError / TypeError naming the argument.

Each peer case prints its max abs error (`pytest -s` shows them).
"""

import os
import zlib

import numpy as np
import pytest

import fastrnn
from fastrnn import convert
from _tolerances import (KERAS_LOOP_ATOL, KERAS_LOOP_RTOL, ORT_F32_ATOL, ORT_F32_RTOL,
                         SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close)


T, B, I, H = 6, 3, 4, 5
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _rng(*key):
    """A generator seeded by the test's parameters (crc32: stable across processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _canonical(rng, cell, D=1, dtype=np.float64, bias=True):
    G = GATES[cell]
    shapes = [(G * H, I), (G * H, H)] + ([(G * H,), (G * H,)] if bias else [])
    return [rng.uniform(-0.6, 0.6, s).astype(dtype) for _ in range(D) for s in shapes]


def _fastrnn(cell, x, weights, h0=None, c0=None, variant=None, **kw):
    """fastrnn forward in float64 on the compiled engine; returns (y, h_n, c_n)."""
    as64 = [np.asarray(w, np.float64) for w in weights]
    x = np.asarray(x, np.float64)
    h0 = None if h0 is None else np.asarray(h0, np.float64)
    if cell == "lstm":
        c0 = None if c0 is None else np.asarray(c0, np.float64)
        out = fastrnn.lstm_forward(x, as64, h0, c0, **kw)
    elif cell == "gru":
        out = fastrnn.gru_forward(x, as64, h0, linear_before_reset=variant, **kw)
    else:
        out = fastrnn.rnn_forward(x, as64, h0, nonlinearity=variant, **kw)
    return out.y, out.h_n, out.c_n


# ----------------------------------------------------------------------------------------------
# ONNX Runtime

ONNX_CASES = [("lstm", None), ("gru", False), ("gru", True), ("rnn", "tanh"), ("rnn", "relu")]


def _onnx_run(cell, variant, W, R, Bias, x, h0, c0, lengths):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    D = W.shape[0]
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    if cell == "gru":
        attrs["linear_before_reset"] = int(variant)
    if cell == "rnn":
        attrs["activations"] = ["Relu" if variant == "relu" else "Tanh"] * D
    inputs = ["X", "W", "R", "B" if Bias is not None else "",
              "sequence_lens" if lengths is not None else "", "initial_h"]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    if Bias is not None:
        inits.append(numpy_helper.from_array(Bias, "B"))
    if lengths is not None:
        inits.append(numpy_helper.from_array(np.asarray(lengths, np.int32), "sequence_lens"))
    feeds = {"X": x, "initial_h": h0}
    outs = ["Y", "Y_h"]
    if cell == "lstm":
        inputs.append("initial_c")
        feeds["initial_c"] = c0
        outs.append("Y_c")
    node = helper.make_node(op, inputs, outs, **attrs)
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(k, f32, list(v.shape)) for k, v in feeds.items()],
        [helper.make_tensor_value_info(o, f32, s) for o, s in
         zip(outs, [[T, D, B, H], [D, B, H], [D, B, H]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # what onnxruntime 1.32 reads (onnx 1.23 writes a newer one by default)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    res = session.run(None, feeds)
    y = res[0].transpose(0, 2, 1, 3).reshape(T, B, D * H)  # (T, D, B, H) -> (T, B, D*H)
    return y, res[1], (res[2] if cell == "lstm" else None)


def _compare(tag, got, want, rtol, atol):
    names = ["y", "h_n", "c_n"]
    worst = 0.0
    for name, a, b in zip(names, got, want):
        if b is None:
            continue
        assert_close(a, b, rtol=rtol, atol=atol, name=f"{tag} {name}")
        worst = max(worst, float(np.abs(np.asarray(a, np.float64) - b).max()))
    print(f"PEER {tag}: max abs error {worst:.2e}")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell,variant", ONNX_CASES, ids=lambda v: str(v))
def test_onnx_runtime(cell, variant, bidirectional, with_lengths):
    pytest.importorskip("onnxruntime")
    D = 2 if bidirectional else 1
    G = GATES[cell]
    rng = _rng("onnx", cell, str(variant), D, with_lengths)
    f32 = np.float32
    x = rng.standard_normal((T, B, I)).astype(f32)
    h0 = rng.uniform(-0.5, 0.5, (D, B, H)).astype(f32)
    c0 = rng.uniform(-0.5, 0.5, (D, B, H)).astype(f32) if cell == "lstm" else None
    lengths = [T, 2, 1] if with_lengths else None  # ONNX zeroes Y_h of an empty sequence; fastrnn keeps h0
    kw = dict(bidirectional=bidirectional, lengths=lengths)
    tag = (f"onnxruntime {cell}{'' if variant is None else f'({variant})'} "
           f"{'bidirectional' if D == 2 else 'forward'}{' lengths' if lengths else ''}")

    # ONNX layout -> fastrnn
    W = rng.uniform(-0.6, 0.6, (D, G * H, I)).astype(f32)
    R = rng.uniform(-0.6, 0.6, (D, G * H, H)).astype(f32)
    Bias = rng.uniform(-0.6, 0.6, (D, 2 * G * H)).astype(f32)
    want = _onnx_run(cell, variant, W, R, Bias, x, h0, c0, lengths)
    got = _fastrnn(cell, x, convert.from_onnx(cell, W, R, Bias), h0, c0, variant, **kw)
    _compare(f"{tag} from_onnx", got, want, ORT_F32_RTOL, ORT_F32_ATOL)

    # fastrnn (canonical, b_ih and b_hh both non-zero) -> ONNX layout
    weights = _canonical(rng, cell, D, f32)
    W2, R2, B2 = convert.to_onnx(cell, weights, bidirectional=bidirectional)
    want = _onnx_run(cell, variant, W2, R2, B2, x, h0, c0, lengths)
    got = _fastrnn(cell, x, weights, h0, c0, variant, **kw)
    _compare(f"{tag} to_onnx", got, want, ORT_F32_RTOL, ORT_F32_ATOL)

    # exact round trips both ways
    for a, b in zip(convert.to_onnx(cell, convert.from_onnx(cell, W, R, Bias),
                                    bidirectional=bidirectional), (W, R, Bias)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(convert.from_onnx(cell, W2, R2, B2), weights):
        np.testing.assert_array_equal(a, b)


def test_onnx_without_bias_and_peepholes():
    rng = _rng("onnx-nobias")
    W = rng.standard_normal((1, 4 * H, I))
    R = rng.standard_normal((1, 4 * H, H))
    weights = convert.from_onnx("lstm", W, R)
    assert len(weights) == 2
    W2, R2, B2 = convert.to_onnx("lstm", weights)
    assert B2 is None
    np.testing.assert_array_equal(W2, W)
    # an all-zero P (what exporters write for "no peepholes") is accepted; anything else is not
    assert len(convert.from_onnx("lstm", W, R, P=np.zeros((1, 3 * H)))) == 2
    with pytest.raises(ValueError, match=r"^P: ONNX LSTM peepholes are not supported"):
        convert.from_onnx("lstm", W, R, P=np.ones((1, 3 * H)))


# ----------------------------------------------------------------------------------------------
# Keras 3 (torch backend, float64)

KERAS_CASES = [("lstm", None, True), ("gru", True, True), ("gru", False, False),
               ("rnn", "tanh", True), ("rnn", "relu", True)]


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("torch")
    # Keras picks its backend once, at import: torch (the test extra's), never TensorFlow.
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported earlier with the {keras.backend.backend()} backend")
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield keras
    keras.config.set_floatx(floatx)


def _keras_layer(keras, cell, variant, reset_after):
    common = dict(return_sequences=True, return_state=True, dtype="float64")
    if cell == "lstm":
        layer = keras.layers.LSTM(H, **common)
    elif cell == "gru":
        layer = keras.layers.GRU(H, reset_after=reset_after, **common)
    else:
        layer = keras.layers.SimpleRNN(H, activation=variant, **common)
    layer.build((B, T, I))
    return layer


def _keras_run(keras, layer, cell, x_bf, h0, c0):
    import torch

    state = [torch.from_numpy(h0[0])] + ([torch.from_numpy(c0[0])] if cell == "lstm" else [])
    res = layer(torch.from_numpy(x_bf), initial_state=state)
    res = [r.detach().cpu().numpy() for r in res]
    return res[0], res[1][None], (res[2][None] if cell == "lstm" else None)


@pytest.mark.parametrize("cell,variant,reset_after", KERAS_CASES, ids=lambda v: str(v))
def test_keras(keras, cell, variant, reset_after):
    G = GATES[cell]
    rng = _rng("keras", cell, str(variant), reset_after)
    x_bf = rng.standard_normal((B, T, I))  # Keras is batch-first
    h0 = rng.uniform(-0.5, 0.5, (1, B, H))
    c0 = rng.uniform(-0.5, 0.5, (1, B, H)) if cell == "lstm" else None
    fr_variant = reset_after if cell == "gru" else variant
    layer = _keras_layer(keras, cell, variant, reset_after)
    fused = cell == "lstm" or (cell == "gru" and reset_after)
    rtol, atol = ((SAME_MATHS_F64_RTOL, SAME_MATHS_F64_ATOL) if fused
                  else (KERAS_LOOP_RTOL, KERAS_LOOP_ATOL))
    tag = (f"keras {cell}{'' if variant is None else f'({variant})'}"
           f"{f' reset_after={reset_after}' if cell == 'gru' else ''}")

    # Keras layout (non-zero biases) -> fastrnn
    kernel = rng.uniform(-0.6, 0.6, (I, G * H))
    rkernel = rng.uniform(-0.6, 0.6, (H, G * H))
    bias = rng.uniform(-0.6, 0.6, (2, G * H) if cell == "gru" and reset_after else (G * H,))
    assert [tuple(v.shape) for v in layer.weights] == [kernel.shape, rkernel.shape, bias.shape]
    layer.set_weights([kernel, rkernel, bias])
    want = _keras_run(keras, layer, cell, x_bf, h0, c0)
    weights = convert.from_keras(cell, kernel, rkernel, bias, reset_after=reset_after)
    got = _fastrnn(cell, x_bf, weights, h0, c0, fr_variant, batch_first=True)
    _compare(f"{tag} from_keras", got, want, rtol, atol)
    for a, b in zip(convert.to_keras(cell, weights, reset_after=reset_after), (kernel, rkernel, bias)):
        np.testing.assert_array_equal(a, b)

    # fastrnn (canonical, b_ih and b_hh both non-zero) -> Keras layout
    weights = _canonical(rng, cell)
    layer.set_weights(list(convert.to_keras(cell, weights, reset_after=reset_after)))
    want = _keras_run(keras, layer, cell, x_bf, h0, c0)
    got = _fastrnn(cell, x_bf, weights, h0, c0, fr_variant, batch_first=True)
    _compare(f"{tag} to_keras", got, want, rtol, atol)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_round_trips(cell, reset_after):
    """to_keras(from_keras(k)) == k exactly; from_keras(to_keras(w)) is w up to where Keras
    keeps one bias (b_ih + b_hh, b_hh = 0), which computes the same outputs."""
    G = GATES[cell]
    rng = _rng("keras-rt", cell, reset_after)
    two = cell == "gru" and reset_after
    k, rk = rng.standard_normal((I, G * H)), rng.standard_normal((H, G * H))
    b = rng.standard_normal((2, G * H) if two else (G * H,))
    for a, want in zip(convert.to_keras(cell, convert.from_keras(cell, k, rk, b, reset_after=reset_after),
                                        reset_after=reset_after), (k, rk, b)):
        np.testing.assert_array_equal(a, want)
    weights = _canonical(rng, cell)
    back = convert.from_keras(cell, *convert.to_keras(cell, weights, reset_after=reset_after),
                              reset_after=reset_after)
    np.testing.assert_array_equal(back[0], weights[0])
    np.testing.assert_array_equal(back[1], weights[1])
    if two:
        np.testing.assert_array_equal(back[2], weights[2])
        np.testing.assert_array_equal(back[3], weights[3])
    else:
        np.testing.assert_allclose(back[2] + back[3], weights[2] + weights[3], rtol=0, atol=1e-15)
    # without biases (use_bias=False)
    k2, rk2, b2 = convert.to_keras(cell, weights[:2], reset_after=reset_after)
    assert b2 is None
    assert len(convert.from_keras(cell, k2, rk2, reset_after=reset_after)) == 2


# ----------------------------------------------------------------------------------------------
# TF1 BasicLSTMCell: known answer from its equations


def _tf1_basic_lstm(x, kernel, bias, forget_bias, h, c):
    """tf.nn.rnn_cell.BasicLSTMCell.call, step by step (time-major x)."""
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    ys = []
    for t in range(x.shape[0]):
        i, j, f, o = np.split(np.concatenate([x[t], h], axis=1) @ kernel + bias, 4, axis=1)
        c = c * sig(f + forget_bias) + sig(i) * np.tanh(j)
        h = np.tanh(c) * sig(o)
        ys.append(h)
    return np.stack(ys), h[None], c[None]


@pytest.mark.parametrize("forget_bias", [1.0, 0.0, 0.25])
def test_tf_lstm_cell(forget_bias):
    rng = _rng("tf", forget_bias)
    kernel = rng.uniform(-0.6, 0.6, (I + H, 4 * H))
    bias = rng.uniform(-0.6, 0.6, 4 * H)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.uniform(-0.5, 0.5, (2, 1, B, H))
    want = _tf1_basic_lstm(x, kernel, bias, forget_bias, h0[0], c0[0])
    weights = convert.from_tf_lstm_cell(kernel, bias, input_size=I, forget_bias=forget_bias)
    got = _fastrnn("lstm", x, weights, h0, c0)
    _compare(f"tf1 BasicLSTMCell forget_bias={forget_bias}", got, want,
             SAME_MATHS_F64_RTOL, SAME_MATHS_F64_ATOL)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_errors_name_the_argument():
    rng = _rng("errors")
    k, rk = rng.standard_normal((I, 4 * H)), rng.standard_normal((H, 4 * H))
    with pytest.raises(ValueError, match=r"^cell: expected 'lstm', 'gru' or 'rnn', got 'cnn'"):
        convert.from_keras("cnn", k, rk)
    with pytest.raises(TypeError, match=r"^cell: "):
        convert.to_onnx(3, [])
    with pytest.raises(ValueError, match=r"^recurrent_kernel: expected shape \(5, 20\).*got \(5, 15\)"):
        convert.from_keras("lstm", k, rk[:, :15])
    with pytest.raises(ValueError, match=r"^bias: expected shape \(2, 15\)"):
        convert.from_keras("gru", k[:, :15], rk[:, :15], np.zeros(15), reset_after=True)
    with pytest.raises(TypeError, match=r"^kernel: expected a floating-point array, got dtype int64"):
        convert.from_keras("lstm", k.astype(np.int64), rk)
    with pytest.raises(TypeError, match=r"^recurrent_kernel: expected dtype float64"):
        convert.from_keras("lstm", k, rk.astype(np.float32))
    with pytest.raises(TypeError, match=r"^reset_after: expected a bool"):
        convert.to_keras("gru", [], reset_after="yes")
    with pytest.raises(ValueError, match=r"^W: expected shape \(num_directions in \{1, 2\}"):
        convert.from_onnx("gru", rng.standard_normal((3, 15, I)), None)
    with pytest.raises(ValueError, match=r"^B: expected shape \(1, 30\)"):
        convert.from_onnx("gru", rng.standard_normal((1, 15, I)), rng.standard_normal((1, 15, H)),
                          np.zeros((1, 15)))
    with pytest.raises(ValueError, match=r"^weights: expected 8 arrays .* or 4 without biases, got 5"):
        convert.to_onnx("lstm", [np.zeros((20, I)), np.zeros((20, H))] * 2 + [np.zeros(20)],
                        bidirectional=True)
    with pytest.raises(ValueError, match=r"^weights\[1\] \(w_hh\): expected shape \(20, 5\), got \(20, 4\)"):
        convert.to_keras("lstm", [np.zeros((20, I)), np.zeros((20, 4))])
    with pytest.raises(TypeError, match=r"^weights: expected a list or tuple"):
        convert.to_keras("rnn", np.zeros((2, H, H)))
    with pytest.raises(ValueError, match=r"^kernel: expected shape \(3 \+ 5, 20\)"):
        convert.from_tf_lstm_cell(rng.standard_normal((I + H, 4 * H)), np.zeros(4 * H), input_size=3)
    with pytest.raises(TypeError, match=r"^input_size: expected an int"):
        convert.from_tf_lstm_cell(rng.standard_normal((I + H, 4 * H)), np.zeros(4 * H), input_size=4.0)
    with pytest.raises(ValueError, match=r"^P: peepholes exist only for the ONNX LSTM"):
        convert.from_onnx("rnn", np.zeros((1, H, I)), np.zeros((1, H, H)), P=np.zeros((1, 3 * H)))


def test_results_are_new_arrays():
    """The converters never return views of (or write into) the caller's arrays."""
    rng = _rng("fresh")
    k, rk, b = rng.standard_normal((I, H)), rng.standard_normal((H, H)), rng.standard_normal(H)
    before = [k.copy(), rk.copy(), b.copy()]
    out = convert.from_keras("rnn", k, rk, b)
    for w in out:
        assert w.flags.c_contiguous and not any(np.shares_memory(w, a) for a in (k, rk, b))
    for a, bf in zip((k, rk, b), before):
        np.testing.assert_array_equal(a, bf)
