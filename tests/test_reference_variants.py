# SPDX-License-Identifier: MIT
"""Tests of reference.py's ONNX options (issue 24, first step): LSTM peepholes, clip,
LSTM input_forget, and ONNX's activations in every slot of the LSTM (f, g, h), GRU (f, g) and
RNN (f).

- every gradient (dx, dh0, dc0, each weight and bias, dpeepholes) against central finite
  differences in float64 at small odd sizes: each option and their combination, with and without
  lengths, forward and reverse; each activation in each slot. Each case first checks that its
  inputs reach both sides of every kink and clip bound, and none so close that a finite
  difference could step over one;
- the defaults, passed explicitly, and the neutral value of each option (zero peepholes, an
  infinite clip) give exactly the outputs and gradients of the plain call;
- the activations' ONNX defaults, kink conventions and dtypes;
- ONNX Runtime running one ONNX LSTM / GRU / RNN node with these attributes (float32: the
  ORT_F32 budget of tests/_tolerances.py), and ONNX's own generated node cases for LSTM / GRU /
  RNN run through the reference. Both skip when onnx or onnxruntime is missing, and under ASan.

Each peer case prints its max abs error (`pytest -s` shows them).
"""

import importlib
import os

import numpy as np
import pytest

from fastrnn import convert, reference
from _tolerances import (ORT_F32_ATOL, ORT_F32_RTOL, assert_close,
                         assert_matches_finite_differences)

SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")

T, B, I, H, P = 5, 3, 7, 5, 3
LENGTHS = [5, 0, 3]  # full, empty and in between
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
DEFAULT_ACTIVATIONS = {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"], "rnn": ["Tanh"]}
SLOTS = {"lstm": "fgh", "gru": "fg", "rnn": "f"}
CLIP = 0.3  # the test pre-activations reach about ±1.5, so it clips some and passes others

# Each activation with an alpha and beta that put the kinks of the kinked ones inside the range
# of the test pre-activations (about ±1.5), so both of their pieces are exercised.
TEST_ACTIVATIONS = {
    "Sigmoid": "Sigmoid", "Tanh": "Tanh", "Relu": "Relu", "Affine": ("Affine", 0.7, 0.2),
    "LeakyRelu": ("LeakyRelu", 0.3), "ThresholdedRelu": ("ThresholdedRelu", 0.1),
    "ScaledTanh": ("ScaledTanh", 0.8, 1.3), "HardSigmoid": ("HardSigmoid", 2.5, 0.5),
    "Elu": ("Elu", 0.6), "Softsign": "Softsign", "Softplus": "Softplus",
}
assert set(TEST_ACTIVATIONS) == set(reference.ACTIVATIONS)


def kinks(act):
    """Where an activation's derivative jumps."""
    if act.name == "HardSigmoid":
        return [-act.beta / act.alpha, (1 - act.beta) / act.alpha]  # where αa + β is 0 and 1
    return {"Relu": [0.0], "LeakyRelu": [0.0], "Elu": [0.0], "ThresholdedRelu": [act.alpha]}.get(act.name, [])


# ----------------------------------------------------------------------------------------------
# one call of the reference, by the name of each input's gradient


def make_params(cell, opts, dtype=np.float64, seed=0):
    """The inputs of one forward call. opts: the options of the call; "peepholes": True and
    "proj": True ask for those inputs."""
    rng = np.random.default_rng(seed)

    def u(*shape):
        return rng.uniform(-0.5, 0.5, shape).astype(dtype)

    G, Ho = GATES[cell], P if opts.get("proj") else H
    p = dict(x=u(T, B, I), h0=u(B, Ho), w_ih=u(G * H, I), w_hh=u(G * H, Ho), b_ih=u(G * H),
             b_hh=u(G * H))
    if cell == "lstm":
        p["c0"] = u(B, H)
        if opts.get("proj"):
            p["w_hr"] = u(P, H)
        if opts.get("peepholes"):
            p["peepholes"] = u(3 * H)
    return p


def forward(cell, p, opts, lengths=None, reverse=False):
    """-> (y, h_n, c_n or None, cache)"""
    kw = {k: v for k, v in opts.items() if k not in ("peepholes", "proj")}
    args = (p["x"], p["w_ih"], p["w_hh"], p.get("b_ih"), p.get("b_hh"), p["h0"])
    if cell == "lstm":
        return reference.lstm_forward(*args, p["c0"], lengths, reverse, w_hr=p.get("w_hr"),
                                      peepholes=p.get("peepholes"), **kw)
    fn = reference.gru_forward if cell == "gru" else reference.rnn_forward
    y, h_n, cache = fn(*args, lengths, reverse, **kw)
    return y, h_n, None, cache


def backward(cell, dy, dh_n, dc_n, cache):
    """-> {name: gradient} for the inputs that exist (None gradients are dropped)."""
    if cell == "lstm":
        names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "peepholes")
        grads = reference.lstm_backward(dy, dh_n, dc_n, cache)
        assert len(grads) == (9 if cache["peepholes"] is not None else 8)
    else:
        names = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
        grads = (reference.gru_backward if cell == "gru" else reference.rnn_backward)(dy, dh_n, cache)
        assert len(grads) == len(names)
    return {n: g for n, g in zip(names, grads) if g is not None}


def loss_weights(cell, p, seed=1):
    """Random Wy, Wh, Wc of L = sum(y*Wy) + sum(h_n*Wh) + sum(c_n*Wc), so dy = Wy etc."""
    rng = np.random.default_rng(seed)
    Ho, dt = p["h0"].shape[1], p["x"].dtype
    wc = rng.normal(size=(B, H)).astype(dt) if cell == "lstm" else None
    return rng.normal(size=(T, B, Ho)).astype(dt), rng.normal(size=(B, Ho)).astype(dt), wc


def loss(cell, p, opts, w, lengths, reverse):
    y, h_n, c_n, _ = forward(cell, p, opts, lengths, reverse)
    wy, wh, wc = w
    return np.sum(y * wy) + np.sum(h_n * wh) + (np.sum(c_n * wc) if c_n is not None else 0.0)


def activation_inputs(cell, cache, lengths):
    """{slot: what the activation of that slot saw on valid steps (before clip), flattened}."""
    valid = np.arange(T)[:, None] < np.asarray(lengths if lengths is not None else [T] * B)[None]  # T,B
    pre = cache["pre"][valid]  # N,G*H
    if cell == "lstm":
        f_gates = [pre[:, :H]] + ([] if cache["input_forget"] else [pre[:, H:2 * H]]) + [pre[:, 3 * H:]]
        return {"f": np.concatenate(f_gates, axis=1).ravel(), "g": pre[:, 2 * H:3 * H].ravel(),
                "h": cache["c_next"][valid].ravel()}
    if cell == "gru":
        return {"f": pre[:, :2 * H].ravel(), "g": pre[:, 2 * H:].ravel()}
    return {"f": pre.ravel()}


def check_both_sides(cell, cache, lengths):
    """Each kink (in its slot) and each clip bound (over all gates) has inputs on both sides,
    none within 1e-4 of it: a finite difference (inputs move by ~FD_STEP) cannot step over one,
    and every piece is tested."""
    inputs = activation_inputs(cell, cache, lengths)
    acts = cache["activations"] if cell != "rnn" else (cache["activation"],)
    clip = cache["clip"]
    bounds = []
    for slot, act in zip(SLOTS[cell], acts):
        a = inputs[slot]
        if clip is not None and not (cell == "lstm" and slot == "h"):  # h(c') is not clipped
            a = np.clip(a, -clip, clip)
        bounds += [(a, k, f"slot {slot}: {act.name} kink at {k:g}") for k in kinks(act)]
    if clip is not None:
        gates = np.concatenate([inputs[slot] for slot in SLOTS[cell] if not (cell == "lstm" and slot == "h")])
        bounds += [(gates, s * clip, f"clip bound {s * clip:g}") for s in (-1, 1)]
    for values, k, what in bounds:
        assert np.any(values < k) and np.any(values > k), f"nothing on one side of the {what}"
        assert np.min(np.abs(values - k)) > 1e-4, f"an input within 1e-4 of the {what}"


def check_gradients(cell, opts, lengths, reverse):
    p = make_params(cell, opts)
    w = loss_weights(cell, p)
    *_, cache = forward(cell, p, opts, lengths, reverse)
    check_both_sides(cell, cache, lengths)
    grads = backward(cell, *w, cache)
    assert set(grads) == set(p), "one gradient per input"
    assert_matches_finite_differences(grads, p, lambda q: loss(cell, q, opts, w, lengths, reverse))


# ----------------------------------------------------------------------------------------------
# gradients vs finite differences: the options, alone and together

OPTION_CASES = [
    ("lstm", {"peepholes": True}),
    ("lstm", {"clip": CLIP}),
    ("lstm", {"input_forget": True}),
    ("lstm", {"peepholes": True, "clip": CLIP, "input_forget": True}),
    ("lstm", {"peepholes": True, "proj": True}),
    ("lstm", {"peepholes": True, "clip": CLIP, "input_forget": True, "proj": True,
              "activations": [("HardSigmoid", 3.0, 0.5), "Softsign", ("Elu", 0.6)]}),  # bends in ±CLIP
    ("gru", {"clip": CLIP}),
    ("gru", {"clip": CLIP, "linear_before_reset": False}),
    ("gru", {"clip": CLIP, "activations": [("LeakyRelu", 0.3), "Softplus"]}),
    ("rnn", {"clip": CLIP}),
    ("rnn", {"clip": CLIP, "nonlinearity": "relu"}),
]
OPTION_IDS = ["lstm_peepholes", "lstm_clip", "lstm_input_forget", "lstm_peep_clip_coupled",
              "lstm_peep_proj", "lstm_all", "gru_clip", "gru_clip_reset_before", "gru_clip_acts",
              "rnn_clip", "rnn_relu_clip"]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("cell,opts", OPTION_CASES, ids=OPTION_IDS)
def test_option_gradients_match_finite_differences(cell, opts, lengths, reverse):
    check_gradients(cell, opts, lengths, reverse)


# each activation in each slot (GRU in both variants), with lengths and reverse
ACTIVATION_CASES = [(cell, slot, name, lbr)
                    for cell in ("lstm", "gru", "rnn") for slot in range(len(SLOTS[cell]))
                    for name in TEST_ACTIVATIONS for lbr in ([True, False] if cell == "gru" else [None])]


def activation_opts(cell, slot, name, lbr):
    acts = list(DEFAULT_ACTIVATIONS[cell])
    acts[slot] = TEST_ACTIVATIONS[name]
    opts = {"activations": acts}
    if lbr is not None:
        opts["linear_before_reset"] = lbr
    return opts


def activation_id(case):
    cell, slot, name, lbr = case
    return f"{cell}{'' if lbr is None else '_lbr' if lbr else '_reset_before'}-{SLOTS[cell][slot]}-{name}"


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=[activation_id(c) for c in ACTIVATION_CASES])
def test_activation_gradients_match_finite_differences(case):
    check_gradients(case[0], activation_opts(*case), LENGTHS, reverse=True)


# ----------------------------------------------------------------------------------------------
# defaults and neutral values: exactly the plain call


PLAIN_VARIANTS = [("lstm", {}), ("lstm", {"proj": True}), ("gru", {}),
                  ("gru", {"linear_before_reset": False}), ("rnn", {}), ("rnn", {"nonlinearity": "relu"})]
PLAIN_IDS = ["lstm", "lstm_proj", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu"]


def run_all(cell, p, opts):
    """Outputs and gradients, for lengths and reverse both non-trivial."""
    y, h_n, c_n, cache = forward(cell, p, opts, LENGTHS, reverse=True)
    grads = backward(cell, *loss_weights(cell, p), cache)
    return dict(grads, y=y, h_n=h_n, **({} if c_n is None else {"c_n": c_n}))


def assert_identical(got, want):
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert np.array_equal(np.signbit(got[name]), np.signbit(want[name])), f"{name}: sign of a zero"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell,opts", PLAIN_VARIANTS, ids=PLAIN_IDS)
def test_explicit_defaults_are_the_plain_call(cell, opts, dtype):
    p = make_params(cell, opts, dtype=dtype)
    want = run_all(cell, p, opts)
    acts = (["Relu"] if opts.get("nonlinearity") == "relu" else DEFAULT_ACTIVATIONS[cell])
    explicit = dict(opts, clip=None, activations=[(a, None, None) for a in acts])
    if cell == "lstm":
        explicit["input_forget"] = False
    assert_identical(run_all(cell, p, explicit), want)


@pytest.mark.parametrize("cell,opts", PLAIN_VARIANTS, ids=PLAIN_IDS)
def test_neutral_options_are_the_plain_call(cell, opts):
    """Zero peepholes and an infinite clip change no value (they may only turn -0 into +0);
    ScaledTanh(1, 1) is Tanh and Affine(1, 0) is the identity, bit for bit."""
    p = make_params(cell, opts)
    want = run_all(cell, p, opts)
    got = run_all(cell, p, dict(opts, clip=np.inf))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"clip=inf: {name}")
    if cell == "lstm":
        got = run_all(cell, dict(p, peepholes=np.zeros(3 * H)), dict(opts, peepholes=True))
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"zero peepholes: {name}")
    if cell != "rnn" or opts.get("nonlinearity") != "relu":
        acts = [("ScaledTanh", 1.0, 1.0) if a == "Tanh" else a for a in DEFAULT_ACTIVATIONS[cell]]
        assert_identical(run_all(cell, p, dict(opts, activations=acts)), want)


@pytest.mark.parametrize("cell,opts", OPTION_CASES, ids=OPTION_IDS)
def test_each_option_changes_the_result(cell, opts):
    """No option is silently ignored: each case differs from the plain call by > 1e-3."""
    plain = {k: v for k, v in opts.items() if k in ("proj", "linear_before_reset", "nonlinearity")}
    p = make_params(cell, opts)
    p_plain = {k: v for k, v in p.items() if k != "peepholes"}  # forward uses peepholes if given
    y, *_ = forward(cell, p, opts, LENGTHS, reverse=True)
    y0, *_ = forward(cell, p_plain, plain, LENGTHS, reverse=True)
    assert np.max(np.abs(y - y0)) > 1e-3
    for key in set(opts) - set(plain):  # and each option alone, too
        y1, *_ = forward(cell, p if key == "peepholes" else p_plain, dict(plain, **{key: opts[key]}),
                         LENGTHS, reverse=True)
        assert np.max(np.abs(y1 - y0)) > 1e-3, f"{key} alone changes nothing"


# ----------------------------------------------------------------------------------------------
# the activations themselves


def test_activation_defaults_are_onnx_operator_defaults():
    """ONNX: "Default values are the same as of corresponding ONNX operators" (HardSigmoid,
    LeakyRelu, ThresholdedRelu, Elu); Affine's are those of ONNX's experimental Affine and
    ScaledTanh's of ONNX Runtime's contrib ScaledTanh operator."""
    want = {"HardSigmoid": (0.2, 0.5), "LeakyRelu": (0.01, None), "ThresholdedRelu": (1.0, None),
            "Elu": (1.0, None), "Affine": (1.0, 0.0), "ScaledTanh": (1.0, 1.0)}
    for name, (alpha, beta) in want.items():
        act = reference.Activation(name)
        assert (act.alpha, act.beta) == (alpha, beta), name
    assert reference.Activation(("HardSigmoid", 0.3)).beta == 0.5  # a missing beta is the default
    assert reference.Activation(("HardSigmoid", None, 0.1)).alpha == 0.2


def test_activation_values_and_kink_conventions():
    """A few known values from ONNX's definitions, and the derivative at each kink: the flat
    piece's where there is one, else the left piece's (relu'(0) = 0, as torch)."""
    a = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    act = reference.Activation
    np.testing.assert_allclose(act(("Affine", 2.0, 1.0))(a), 2 * a + 1)
    np.testing.assert_allclose(act(("LeakyRelu", 0.1))(a), [-0.2, -0.05, 0, 0.5, 2])
    np.testing.assert_allclose(act(("ThresholdedRelu", 0.5))(a), [0, 0, 0, 0.5, 2])  # x >= alpha
    np.testing.assert_allclose(act(("ScaledTanh", 2.0, 0.5))(a), 2 * np.tanh(0.5 * a))
    np.testing.assert_allclose(act("HardSigmoid")(a), [0.1, 0.4, 0.5, 0.6, 0.9])
    np.testing.assert_allclose(act(("HardSigmoid", 1.0, 0.5))(a), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(act(("Elu", 2.0))(a), [2 * np.expm1(-2), 2 * np.expm1(-0.5), 0, 0.5, 2])
    np.testing.assert_allclose(act("Softsign")(a), a / (1 + np.abs(a)))
    np.testing.assert_allclose(act("Softplus")(a), np.log1p(np.exp(a)))
    np.testing.assert_allclose(act("Softplus")(np.array([800.0])), [800.0])  # no overflow

    def slope(spec, at):
        f = act(spec)
        x = np.array([float(at)])
        return float(f.backward(np.ones(1), x, f(x))[0])

    assert slope("Relu", 0) == 0
    assert slope(("LeakyRelu", 0.1), 0) == 0.1
    assert slope(("ThresholdedRelu", 0.5), 0.5) == 0
    assert slope(("HardSigmoid", 1.0, 0.5), -0.5) == 0 and slope(("HardSigmoid", 1.0, 0.5), 0.5) == 0
    assert slope(("HardSigmoid", 1.0, 0.5), 0.25) == 1.0
    assert slope(("Elu", 2.0), 0) == 2.0
    assert slope(("Affine", 3.0, 1.0), 7) == 3.0


@pytest.mark.parametrize("name", list(TEST_ACTIVATIONS))
def test_activations_keep_float32(name):
    f = reference.Activation(TEST_ACTIVATIONS[name])
    a = np.linspace(-2, 2, 9, dtype=np.float32)
    y = f(a)
    assert y.dtype == np.float32 and f.backward(np.ones_like(a), a, y).dtype == np.float32


def test_bad_activations_raise():
    p = make_params("gru", {})
    with pytest.raises(ValueError, match="^activations: expected 2"):
        forward("gru", p, {"activations": ["Sigmoid"]})
    with pytest.raises(ValueError, match="^activations: expected a name of"):
        forward("gru", p, {"activations": ["Sigmoid", "Gelu"]})
    with pytest.raises(ValueError, match="^activations: expected a name of"):
        forward("gru", p, {"activations": ["Sigmoid", ("Elu", 1.0, 2.0, 3.0)]})


# ----------------------------------------------------------------------------------------------
# ONNX: the reference run as one ONNX LSTM / GRU / RNN node says

ONNX_INPUTS = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
ONNX_OPS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}


def onnx_modules():
    if SANITIZED:
        pytest.skip("onnx / onnxruntime under the ASan runtime: left to the unsanitized runs")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    return onnx, ort


def onnx_activations(cell, attrs, D):
    """The node's activations per direction, each with the alpha / beta it consumes (ONNX:
    the lists are consumed in the order of the activations, by those that take a value)."""
    names = [n.decode() if isinstance(n, bytes) else n for n in attrs.get("activations", [])]
    if not names:
        return [None] * D
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    specs = []
    for n in names:
        d_alpha, d_beta = reference.ACTIVATIONS[n]
        alpha = alphas.pop(0) if d_alpha is not None and alphas else None
        beta = betas.pop(0) if d_beta is not None and betas else None
        specs.append((n, alpha, beta))
    k = len(DEFAULT_ACTIVATIONS[cell])
    return [specs[d * k:(d + 1) * k] for d in range(D)]


def reference_onnx_node(node, feeds):
    """Run the reference as an ONNX LSTM / GRU / RNN node: feeds maps the node's input names to
    arrays. Returns {output name: array} in ONNX's shapes (float64)."""
    from onnx import helper

    cell = ONNX_OPS[node.op_type]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    layout = attrs.get("layout", 0)
    given = {name: np.asarray(feeds[k]) for name, k in zip(ONNX_INPUTS, node.input) if k}
    X = given["X"].astype(np.float64)
    if layout:
        X = X.swapaxes(0, 1)
    T_, B_, _ = X.shape
    W, R = given["W"], given["R"]
    D, Hn = W.shape[0], R.shape[-1]
    weights = convert.from_onnx(cell, W, R, given.get("B"))
    per = len(weights) // D
    h0 = given.get("initial_h", np.zeros((D, B_, Hn)))
    c0 = given.get("initial_c", np.zeros((D, B_, Hn)))
    if layout:
        h0, c0 = h0.swapaxes(0, 1), c0.swapaxes(0, 1)
    lengths = given.get("sequence_lens")
    acts = onnx_activations(cell, attrs, D)
    ys, hs, cs = [], [], []
    for d in range(D):
        w = [np.asarray(a, np.float64) for a in weights[d * per:(d + 1) * per]]
        w_ih, w_hh, b_ih, b_hh = w if per == 4 else w + [None, None]
        args = (X, w_ih, w_hh, b_ih, b_hh, np.asarray(h0[d], np.float64))
        reverse = direction == "reverse" or d == 1
        kw = dict(clip=attrs.get("clip"), activations=acts[d])
        if cell == "lstm":
            if "P" in given:
                p_i, p_o, p_f = np.split(np.asarray(given["P"][d], np.float64), 3)  # ONNX order
                kw["peepholes"] = np.concatenate([p_i, p_f, p_o])  # fastrnn's i, f, o
            kw["input_forget"] = bool(attrs.get("input_forget", 0))
            y, h_n, c_n, _ = reference.lstm_forward(*args, np.asarray(c0[d], np.float64), lengths,
                                                    reverse, **kw)
            cs.append(c_n)
        elif cell == "gru":
            y, h_n, _ = reference.gru_forward(*args, lengths, reverse,
                                              linear_before_reset=bool(attrs.get("linear_before_reset", 0)), **kw)
        else:
            y, h_n, _ = reference.rnn_forward(*args, lengths, reverse, **kw)
        ys.append(y)
        hs.append(h_n)
    Y, Y_h = np.stack(ys, axis=1), np.stack(hs)  # T,D,B,H and D,B,H
    Y_c = np.stack(cs) if cs else None
    if layout:
        Y, Y_h = Y.transpose(2, 0, 1, 3), Y_h.swapaxes(0, 1)
        Y_c = None if Y_c is None else Y_c.swapaxes(0, 1)
    out = dict(zip(["Y", "Y_h", "Y_c"], [Y, Y_h, Y_c]))
    return {k: out[name] for name, k in zip(["Y", "Y_h", "Y_c"], node.output) if k}


def compare(tag, got, want):
    worst = 0.0
    for name in want:
        assert_close(got[name], want[name], rtol=ORT_F32_RTOL, atol=ORT_F32_ATOL, name=f"{tag} {name}")
        worst = max(worst, float(np.max(np.abs(got[name] - want[name]))))
    print(f"PEER {tag}: max abs error {worst:.2e}")


# ----------------------------------------------------------------------------------------------
# ONNX Runtime


def onnx_node_and_feeds(cell, opts, direction, lengths, seed=0):
    """One ONNX node with opts as attributes, and float32 inputs from make_params (one set per
    direction), converted to ONNX's layouts."""
    from onnx import helper

    D = 2 if direction == "bidirectional" else 1
    ps = [make_params(cell, opts, np.float32, seed + d) for d in range(D)]
    weights = [p[k] for p in ps for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    W, R, Bias = convert.to_onnx(cell, weights, bidirectional=D == 2)
    feeds = {"X": ps[0]["x"], "W": W, "R": R, "B": Bias,
             "initial_h": np.stack([p["h0"] for p in ps])}
    if lengths is not None:
        feeds["sequence_lens"] = np.asarray(lengths, np.int32)
    attrs = {"hidden_size": H, "direction": direction}
    if cell == "lstm":
        feeds["initial_c"] = np.stack([p["c0"] for p in ps])
        if opts.get("peepholes"):
            p_i, p_f, p_o = zip(*(np.split(p["peepholes"], 3) for p in ps))  # fastrnn's i, f, o
            feeds["P"] = np.concatenate([p_i, p_o, p_f], axis=1)  # D,3H  ONNX's i, o, f
        if opts.get("input_forget"):
            attrs["input_forget"] = 1
    if cell == "gru":
        attrs["linear_before_reset"] = int(opts.get("linear_before_reset", True))
    if opts.get("clip") is not None:
        attrs["clip"] = float(opts["clip"])
    acts = opts.get("activations")
    if acts is not None:
        specs = [reference.Activation(a) for a in acts] * D
        defaults = reference.ACTIVATIONS
        attrs["activations"] = [a.name for a in specs]
        alphas = [a.alpha for a in specs if defaults[a.name][0] is not None]  # always explicit:
        betas = [a.beta for a in specs if defaults[a.name][1] is not None]  # see the report
        if alphas:
            attrs["activation_alpha"] = alphas
        if betas:
            attrs["activation_beta"] = betas
    inputs = [k if k in feeds else "" for k in ONNX_INPUTS]
    while not inputs[-1]:
        inputs.pop()
    outputs = ["Y", "Y_h"] + (["Y_c"] if cell == "lstm" else [])
    node = helper.make_node({"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell], inputs, outputs, **attrs)
    return node, feeds


def ort_run(node, feeds):
    onnx, ort = onnx_modules()
    from onnx import helper

    def info(name, a):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))

    (T_, B_, _), (D, _, Hn) = feeds[node.input[0]].shape, feeds[node.input[2]].shape  # layout 0
    shapes = dict(zip(["Y", "Y_h", "Y_c"], [[T_, D, B_, Hn], [D, B_, Hn], [D, B_, Hn]]))
    graph = helper.make_graph(
        [node], "g", [info(k, feeds[k]) for k in node.input if k],
        [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, shapes[k]) for k in node.output if k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8  # what onnxruntime 1.32 reads (onnx 1.23 writes a newer one by default)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {k: feeds[k] for k in node.input if k})
    return dict(zip([k for k in node.output if k], outputs))


ORT_LENGTHS = [5, 1, 3]
ORT_OPTION_CASES = [(c, o) for c, o in OPTION_CASES if not o.get("proj")]  # ONNX has no projection
ORT_OPTION_IDS = [i for (c, o), i in zip(OPTION_CASES, OPTION_IDS) if not o.get("proj")]


@pytest.mark.parametrize("lengths", [None, ORT_LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("cell,opts", ORT_OPTION_CASES, ids=ORT_OPTION_IDS)
def test_onnx_runtime_options(cell, opts, direction, lengths):
    onnx_modules()
    node, feeds = onnx_node_and_feeds(cell, opts, direction, lengths)
    compare(f"onnxruntime {cell} {opts} {direction} lengths={lengths}",
            reference_onnx_node(node, feeds), ort_run(node, feeds))


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=[activation_id(c) for c in ACTIVATION_CASES])
def test_onnx_runtime_activations(case):
    onnx_modules()
    node, feeds = onnx_node_and_feeds(case[0], activation_opts(*case), "forward", ORT_LENGTHS)
    compare(f"onnxruntime {activation_id(case)}", reference_onnx_node(node, feeds), ort_run(node, feeds))


# ----------------------------------------------------------------------------------------------
# ONNX's own node cases (onnx.backend.test.case.node.lstm / gru / rnn)


def onnx_node_cases():
    """{name: TestCase} of ONNX's generated LSTM / GRU / RNN node cases; {} without onnx."""
    if SANITIZED:
        return {}
    try:
        from onnx.backend.test.case import node as cases
        for module in ("lstm", "gru", "rnn"):
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
    except ImportError:
        return {}
    return {c.name: c for c in cases._NodeTestCases if c.model.graph.node[0].op_type in ONNX_OPS}


NODE_CASES = onnx_node_cases()


@pytest.mark.parametrize("name", sorted(NODE_CASES))
def test_onnx_node_cases(name):
    onnx_modules()
    case = NODE_CASES[name]
    node = case.model.graph.node[0]
    (inputs, outputs), = case.data_sets
    present_in = [k for k in node.input if k]
    feeds = dict(zip(present_in, inputs))
    want = dict(zip([k for k in node.output if k], outputs))
    compare(f"onnx node case {name}", reference_onnx_node(node, feeds), want)
