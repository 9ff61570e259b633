# SPDX-License-Identifier: MIT
"""Bad input to the public API: the right exception, a message that names the argument (and the
expected and received values where it gives them), the caller's arrays left bitwise unchanged,
and no crash (docs/design.md, "Public Python contract"; STYLE.md point 10).

Each case is one row of a table: (id, mutation of a valid call, exception, message fragments).
A mutation takes the keyword arguments of a valid call and the problem's sizes, and breaks one
thing. The fragments are literal text (formatted with the sizes below), matched in order.
Not here: what valid input computes (test_api.py, test_reference.py).
"""

import re
from dataclasses import dataclass

import numpy as np
import pytest

import fastrnn

# Sizes chosen pairwise distinct, so a message quoting a shape can only mean one thing.
T, B, I, H, L, D = 6, 3, 5, 7, 2, 2
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CELLS = ["lstm", "gru", "rnn"]
BACKENDS = ["cpu", "reference"]
FORWARD = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward, "rnn": fastrnn.rnn_forward}
BACKWARD = {"lstm": fastrnn.lstm_backward, "gru": fastrnn.gru_backward, "rnn": fastrnn.rnn_backward}


def sizes(cell):
    """What a message may quote, by name: T, B, I, H, G, GH (= G*H), GH1 and GH_1 (= G*H +- 1),
    LD (= L*D), DH (= D*H)."""
    G = GATES[cell]
    return dict(cell=cell, T=T, B=B, I=I, H=H, G=G, GH=G * H, GH1=G * H + 1, GH_1=G * H - 1,
                LD=L * D, DH=D * H)


def make_weights(cell, proj_size=0, dtype=np.float64, seed=0):
    """A valid flat weight list (torch _flat_weights order) for L layers, D directions, biases."""
    rng = np.random.default_rng(seed)
    GH, Hout = GATES[cell] * H, proj_size or H
    weights = []
    for layer in range(L):
        for _ in range(D):
            I_l = I if layer == 0 else D * Hout
            shapes = [(GH, I_l), (GH, Hout), (GH,), (GH,)]
            weights += [rng.uniform(-0.5, 0.5, s).astype(dtype) for s in shapes]
            if proj_size:
                weights.append(rng.uniform(-0.5, 0.5, (proj_size, H)).astype(dtype))
    return weights


def valid_forward_args(cell, backend):
    """Keyword arguments of a valid forward call: 2 layers, bidirectional, lengths, states."""
    rng = np.random.default_rng(1)
    args = dict(x=rng.normal(size=(T, B, I)), weights=make_weights(cell), h0=rng.normal(size=(L * D, B, H)),
                lengths=np.array([T, 0, 2]), num_layers=L, bidirectional=True, training=True,
                backend=backend)
    if cell == "lstm":
        args["c0"] = rng.normal(size=(L * D, B, H))
    return args


def valid_backward_args(cell, backend):
    """Keyword arguments of a valid backward call, from a valid training forward."""
    out = FORWARD[cell](**valid_forward_args(cell, backend))
    rng = np.random.default_rng(2)
    args = dict(saved=out.saved, dy=rng.normal(size=out.y.shape), dh_n=rng.normal(size=out.h_n.shape))
    if cell == "lstm":
        args["dc_n"] = rng.normal(size=out.c_n.shape)
    return args


# ----------------------------------------------------------------------------------------------
# Mutations


def put(name, make):
    """args[name] = make(args)."""
    def mutate(args):
        args[name] = make(args)
    return mutate


def set_(name, value):
    """args[name] = value."""
    return put(name, lambda args: value)


def put_weight(k, make):
    """weights[k] = make(weights[k]), in a new list (the caller's list object is not the point)."""
    def mutate(args):
        args["weights"] = list(args["weights"])
        args["weights"][k] = make(args["weights"][k])
    return mutate


def with_proj(proj_size, then=None):
    """An LSTM call with projection: proj_size set and valid weights for it, then `then`."""
    def mutate(args):
        args["proj_size"] = proj_size
        args["weights"] = make_weights("lstm", proj_size)
        args["h0"] = np.zeros((L * D, B, proj_size))
        if then is not None:
            then(args)
    return mutate


def from_cell(other):
    """saved = the .saved of a valid training forward of another cell."""
    return put("saved", lambda a: valid_backward_args(other, a["saved"].engine)["saved"])


def grow(array, axis=-1):
    """The array with one more element along `axis` (a wrong size that keeps the dtype)."""
    pad = [(0, 0)] * array.ndim
    pad[axis] = (0, 1)
    return np.pad(array, pad)


class DeviceArray:
    """Stands in for an array in accelerator memory: DLPack reports device type 2 (kDLCUDA)."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, **kwargs):
        raise BufferError("device memory")


# ----------------------------------------------------------------------------------------------
# The cases


@dataclass
class Case:
    id: str
    mutate: object
    exc: type
    fragments: tuple  # literal text, formatted with sizes(cell); all must appear, in order
    cells: tuple = tuple(CELLS)


def case(id, mutate, exc, *fragments, cells=tuple(CELLS)):
    return Case(id, mutate, exc, fragments, cells)


NOT_AN_ARRAY = [("list", [0.5, 1.5]), ("float", 1.5), ("str", "x"), ("dict", {}), ("NoneType", None)]
BAD_DTYPES = ["int64", "int32", "uint8", "bool", "complex128", "object", "float16", "longdouble"]


def bad_dtypes(name):
    """args[name] as an array of each dtype other than float32/64 -> TypeError naming it."""
    return [case(f"{name} dtype {np.dtype(dt)}", put(name, lambda a, dt=dt: a[name].astype(dt)), TypeError,
                 f"{name}: expected a float32 or float64 array, got dtype {np.dtype(dt)}")
            for dt in BAD_DTYPES]


def not_arrays(name, kinds=NOT_AN_ARRAY):
    """args[name] as a list, a scalar, a str, ... -> TypeError naming the type."""
    return [case(f"{name} is {kind}", set_(name, value), TypeError,
                 f"{name}: expected an array", f"got {kind}")
            for kind, value in kinds]


w_ = put_weight


FORWARD_CASES = [
    # x --------------------------------------------------------------------------------------
    case("x 2-D", put("x", lambda a: a["x"][0]), ValueError,
         "x: expected 3 dimensions (T, B, I), got shape ({B}, {I})"),
    case("x 4-D", put("x", lambda a: a["x"][None]), ValueError,
         "x: expected 3 dimensions", "got shape (1, {T}, {B}, {I})"),
    case("x 2-D batch_first", lambda a: a.update(x=a["x"][0], batch_first=True), ValueError,
         "x: expected 3 dimensions (B, T, I) with batch_first, got shape ({B}, {I})"),
    case("x feature size != w_ih columns", put("x", lambda a: grow(a["x"])), ValueError,
         "weights[0] (w_ih of layer 0): expected shape ({GH}, 6), got ({GH}, {I})"),
    case("x on a device", put("x", lambda a: DeviceArray()), TypeError,
         "x: expected a host array for backend=", "got a CUDA array"),
    *bad_dtypes("x"),
    *not_arrays("x"),
    # weights: the container and its size --------------------------------------------------
    case("weights is an ndarray", put("weights", lambda a: a["weights"][0]), TypeError,
         "weights: expected a list or tuple of arrays", "got ndarray"),
    case("weights is a dict", put("weights", lambda a: dict(enumerate(a["weights"]))), TypeError,
         "weights: expected a list or tuple", "got dict"),
    case("weights is a generator", put("weights", lambda a: (w for w in a["weights"])), TypeError,
         "weights: expected a list or tuple", "got generator"),
    case("weights is None", set_("weights", None), TypeError,
         "weights: expected a list or tuple", "got NoneType"),
    case("weights one short", put("weights", lambda a: a["weights"][:-1]), ValueError,
         "weights: expected 16 or 8 arrays", "got 15",
         "they fit no combination of num_layers, bidirectional, bias and proj_size for {cell}"),
    case("weights one extra", put("weights", lambda a: a["weights"] + [a["weights"][0]]), ValueError,
         "weights: expected 16 or 8 arrays", "got 17"),
    case("weights empty", set_("weights", []), ValueError, "weights: expected 16 or 8 arrays", "got 0"),
    case("weights for 2 layers, num_layers=1", set_("num_layers", 1), ValueError,
         "weights: expected 8 or 4 arrays (num_layers=1 x directions=2", "got 16",
         "the 16 arrays given fit num_layers=2, bidirectional=True, bias=True, proj_size=0"),
    case("weights for 2 directions, unidirectional", set_("bidirectional", False), ValueError,
         "weights: expected 8 or 4 arrays (num_layers=2 x directions=1", "got 16",
         "the 16 arrays given fit num_layers=2, bidirectional=True, bias=True, proj_size=0"),
    # weights: a list of the right length read as another layout (2 layers without biases)
    case("one layer's 4 arrays, num_layers=2", lambda a: a.update(
        weights=a["weights"][:4], bidirectional=False), ValueError,
         "weights: expected num_layers=2 x directions=1 x (w_ih, w_hh) = 4 arrays (without biases",
         "got 4 arrays of 2, 2, 1, 1 dimensions",
         "which fit num_layers=1, bidirectional=False, bias=True, proj_size=0"),
    case("one direction's 4 arrays, bidirectional", lambda a: a.update(
        weights=a["weights"][:4], num_layers=1), ValueError,
         "weights: expected num_layers=1 x directions=2 x (w_ih, w_hh) = 4 arrays (without biases",
         "which fit num_layers=1, bidirectional=False, bias=True, proj_size=0"),
    case("two directions' 8 arrays read as 2 layers", lambda a: a.update(
        weights=a["weights"][:8], bidirectional=False), ValueError,
         "weights[4] (w_ih of layer 1): expected shape ({GH}, {H}), got ({GH}, {I})",
         "H={H} from weights[0] (w_ih of layer 0) axis 0 ({GH} rows = {G}*H",
         "layer 1 reads layer 0's output: 1 direction(s) x H={H}",
         "the 8 arrays as a whole fit num_layers=1, bidirectional=True, bias=True, proj_size=0"),
    # weights: another cell's
    case("gru weights", set_("weights", make_weights("gru")), ValueError,
         "weights[0] (w_ih of layer 0): expected shape ({G}*hidden_size, {I}) with hidden_size > 0",
         "got (21, {I})", "{cell} has {G} gates", "w_ih must have {G}*H rows",
         "as a gru w_hh of H={H} (gru has 3 gates (r, z, n)): gru weights passed to {cell}_forward?",
         cells=("lstm",)),
    case("lstm weights", set_("weights", make_weights("lstm")), ValueError,
         "weights[0] (w_ih of layer 0): expected shape (3*hidden_size, {I}) with hidden_size > 0",
         "got (28, {I}); gru has 3 gates (r, z, n): w_ih must have 3*H rows, and 28 is not a multiple of 3",
         "weights[1] of shape (28, {H}) has 4 x {H} rows, as an lstm w_hh of H={H}",
         "lstm weights passed to gru_forward?", cells=("gru",)),
    case("lstm weights", set_("weights", make_weights("lstm")), ValueError,
         "weights[1] (w_hh of layer 0): expected shape (28, 28), got (28, {H})",
         "H=28 from weights[0] (w_ih of layer 0) axis 0 (28 rows = 1*H: rnn has 1 gate)",
         "as an lstm w_hh of H={H} (lstm has 4 gates (i, f, g, o)): lstm weights passed to rnn_forward?",
         cells=("rnn",)),
    case("rnn weights", set_("weights", make_weights("rnn")), ValueError,
         "weights[0] (w_ih of layer 0): expected shape ({G}*hidden_size, {I})", "got ({H}, {I})",
         "as an rnn w_hh of H={H} (rnn has 1 gate): rnn weights passed to {cell}_forward?",
         cells=("lstm", "gru")),
    # weights: each position's shape -------------------------------------------------------
    case("w_ih transposed", w_(0, lambda w: w.T), ValueError,
         "weights[0] (w_ih of layer 0): expected shape (", "got ({I}, {GH})",
         "H={H} from weights[1] (w_hh of layer 0) axis 0", "it looks transposed"),
    case("w_ih hidden_size 0", w_(0, lambda w: w[:0]), ValueError,
         "weights[0] (w_ih of layer 0): expected shape ({G}*hidden_size, {I}) with hidden_size > 0",
         "got (0, {I})"),
    case("w_ih 1-D", w_(0, lambda w: w[0]), ValueError,
         "weights[0] (w_ih of layer 0): expected shape ({G}*hidden_size, {I})", "got ({I},)"),
    case("w_ih rows not a multiple of G", w_(0, lambda w: w[:-1]), ValueError,
         "weights[0] (w_ih of layer 0): expected shape ({G}*hidden_size, {I})", "got ({GH_1}, {I})",
         cells=("lstm", "gru")),
    case("w_hh columns", w_(1, grow), ValueError,
         "weights[1] (w_hh of layer 0): expected shape ({GH}, {H}), got ({GH}, 8)",
         "; H={H} from weights[0] (w_ih of layer 0) axis 0 ({GH} rows = {G}*H: {cell} has {G} gate"),
    case("w_hh transposed", w_(1, lambda w: w.T), ValueError,
         "weights[1] (w_hh of layer 0): expected shape ({GH}, {H}), got ({H}, {GH})",
         "H={H} from weights[0] (w_ih of layer 0) axis 0", "it looks transposed", cells=("lstm", "gru")),
    case("b_ih length", w_(2, lambda w: grow(w, 0)), ValueError,
         "weights[2] (b_ih of layer 0): expected shape ({GH},), got ({GH1},)"),
    case("b_hh 2-D", w_(3, lambda w: w[None]), ValueError,
         "weights[3] (b_hh of layer 0): expected shape ({GH},), got (1, {GH})"),
    case("w_ih reverse direction", w_(4, grow), ValueError,
         "weights[4] (w_ih of layer 0, reverse): expected shape ({GH}, {I}), got ({GH}, 6)"),
    case("b_hh reverse direction", w_(7, lambda w: w[:-1]), ValueError,
         "weights[7] (b_hh of layer 0, reverse): expected shape ({GH},), got ({GH_1},)"),
    case("w_ih layer 1 sized for x, not for layer 0's output", w_(8, lambda w: w[:, :I]), ValueError,
         "weights[8] (w_ih of layer 1): expected shape ({GH}, {DH}), got ({GH}, {I})"),
    case("w_hh layer 1 reverse", w_(13, lambda w: w[:, :-1]), ValueError,
         "weights[13] (w_hh of layer 1, reverse): expected shape ({GH}, {H}), got ({GH}, 6)"),
    case("b_ih layer 1 reverse", w_(14, lambda w: w[:-1]), ValueError,
         "weights[14] (b_ih of layer 1, reverse): expected shape ({GH},), got ({GH_1},)"),
    # weights: each one's dtype and kind ---------------------------------------------------
    case("one weight float32", w_(5, lambda w: w.astype(np.float32)), TypeError,
         "weights[5]: expected dtype float64", "got float32"),
    case("x float32, weights float64", put("x", lambda a: a["x"].astype(np.float32)), TypeError,
         "weights[0]: expected dtype float32", "got float64"),
    case("layer 1 weight int", w_(9, lambda w: w.astype(np.int64)), TypeError,
         "weights[9]: expected a float32 or float64 array, got dtype int64"),
    case("one weight float16", w_(12, lambda w: w.astype(np.float16)), TypeError,
         "weights[12]: expected a float32 or float64 array, got dtype float16"),
    case("one weight complex", w_(1, lambda w: w.astype(np.complex128)), TypeError,
         "weights[1]: expected a float32 or float64 array, got dtype complex128"),
    case("one weight a list", w_(2, lambda w: w.tolist()), TypeError,
         "weights[2]: expected an array", "got list"),
    case("one weight None", w_(3, lambda w: None), TypeError,
         "weights[3]: expected an array", "got NoneType"),
    case("one weight on a device", w_(6, lambda w: DeviceArray()), TypeError,
         "weights[6]: expected an array in host memory"),
    # h0 and c0 ----------------------------------------------------------------------------
    case("h0 layers*directions", put("h0", lambda a: a["h0"][:1]), ValueError,
         "h0: expected shape ({LD}, {B}, {H}), got (1, {B}, {H})"),
    case("h0 2-D", put("h0", lambda a: a["h0"][0]), ValueError,
         "h0: expected shape ({LD}, {B}, {H}), got ({B}, {H})"),
    case("h0 hidden size", put("h0", lambda a: grow(a["h0"])), ValueError,
         "h0: expected shape ({LD}, {B}, {H}), got ({LD}, {B}, 8)"),
    case("h0 float32", put("h0", lambda a: a["h0"].astype(np.float32)), TypeError,
         "h0: expected dtype float64", "got float32"),
    *bad_dtypes("h0"),
    *not_arrays("h0", NOT_AN_ARRAY[:-1]),  # h0=None is valid (zeros)
    case("c0 batch", put("c0", lambda a: a["c0"][:, :1]), ValueError,
         "c0: expected shape ({LD}, {B}, {H}), got ({LD}, 1, {H})", cells=("lstm",)),
    case("c0 float32", put("c0", lambda a: a["c0"].astype(np.float32)), TypeError,
         "c0: expected dtype float64", "got float32", cells=("lstm",)),
    case("c0 int", put("c0", lambda a: a["c0"].astype(np.int32)), TypeError,
         "c0: expected a float32 or float64 array, got dtype int32", cells=("lstm",)),
    case("c0 a list", put("c0", lambda a: a["c0"].tolist()), TypeError,
         "c0: expected an array", "got list", cells=("lstm",)),
    # lengths ------------------------------------------------------------------------------
    case("lengths too long", put("lengths", lambda a: np.array([T, 0, 2, 1])), ValueError,
         "lengths: expected shape ({B},), got (4,)"),
    case("lengths 2-D", put("lengths", lambda a: a["lengths"][None]), ValueError,
         "lengths: expected shape ({B},), got (1, {B})"),
    case("lengths float", put("lengths", lambda a: a["lengths"].astype(np.float64)), TypeError,
         "lengths: expected an integer array, got dtype float64"),
    case("lengths list of floats", put("lengths", lambda a: [6.0, 0.0, 2.0]), TypeError,
         "lengths: expected an integer array, got dtype float64"),
    case("lengths bool", put("lengths", lambda a: np.ones(B, bool)), TypeError,
         "lengths: expected an integer array, got dtype bool"),
    case("lengths a str", set_("lengths", "abc"), TypeError, "lengths: expected an array", "got str"),
    case("lengths negative", put("lengths", lambda a: np.array([T, -1, 2])), ValueError,
         "lengths: expected values in [0, {T}] (T), got lengths[1]=-1"),
    case("lengths > T", put("lengths", lambda a: np.array([T, 0, T + 1])), ValueError,
         "lengths: expected values in [0, {T}] (T), got lengths[2]=7"),
    case("lengths > T (uint8)", put("lengths", lambda a: np.array([255, 0, 2], np.uint8)), ValueError,
         "lengths: expected values in [0, {T}] (T), got lengths[0]=255"),
    case("lengths > T with batch_first", lambda a: a.update(x=a["x"].transpose(1, 0, 2), batch_first=True,
                                                            lengths=np.array([T, T + 1, 0])), ValueError,
         "lengths: expected values in [0, {T}] (T), got lengths[1]=7"),
    # options ------------------------------------------------------------------------------
    case("num_layers 0", set_("num_layers", 0), ValueError, "num_layers: expected an int >= 1, got 0"),
    case("num_layers -1", set_("num_layers", -1), ValueError, "num_layers: expected an int >= 1, got -1"),
    case("num_layers bool", set_("num_layers", True), TypeError,
         "num_layers: expected an int >= 1, got bool"),
    case("num_layers float", set_("num_layers", 2.0), TypeError,
         "num_layers: expected an int >= 1, got float"),
    case("num_layers str", set_("num_layers", "2"), TypeError, "num_layers: expected an int >= 1, got str"),
    case("bidirectional str", set_("bidirectional", "yes"), TypeError,
         "bidirectional: expected a bool, got 'yes'"),
    case("bidirectional 2", set_("bidirectional", 2), TypeError, "bidirectional: expected a bool, got 2"),
    case("batch_first None", set_("batch_first", None), TypeError, "batch_first: expected a bool, got None"),
    case("training str", set_("training", "true"), TypeError, "training: expected a bool, got 'true'"),
    case("dropout < 0", set_("dropout", -0.1), ValueError, "dropout: expected a float in [0, 1], got -0.1"),
    case("dropout > 1", set_("dropout", 1.5), ValueError, "dropout: expected a float in [0, 1], got 1.5"),
    case("dropout nan", set_("dropout", float("nan")), ValueError,
         "dropout: expected a float in [0, 1], got nan"),
    case("dropout str", set_("dropout", "0.5"), TypeError, "dropout: expected a float in [0, 1], got str"),
    case("dropout bool", set_("dropout", True), TypeError, "dropout: expected a float in [0, 1], got bool"),
    case("seed negative", set_("seed", -1), ValueError, "seed: expected an int >= 0, got -1"),
    case("seed float", set_("seed", 1.5), TypeError, "seed: expected an int >= 0, got float"),
    case("backend gpu", set_("backend", "gpu"), ValueError,
         "backend: expected None or one of ('cpu', 'cuda', 'reference'), got 'gpu'"),
    case("backend CPU", set_("backend", "CPU"), ValueError,
         "backend: expected None or one of", "got 'CPU'"),
    case("backend 3", set_("backend", 3), TypeError, "backend: expected None or one of", "got int"),
    case("backend cuda, not compiled", set_("backend", "cuda"), ValueError,
         "backend: 'cuda' is not available"),
    # per cell -----------------------------------------------------------------------------
    case("proj_size == hidden_size", with_proj(H), ValueError,
         "proj_size: expected < hidden_size={H}, got {H}",
         "H={H} from weights[0] (w_ih of layer 0) axis 0", cells=("lstm",)),
    case("proj_size == hidden_size, weights without w_hr", set_("proj_size", H), ValueError,
         "proj_size: expected 0 (no projection: the weights have no w_hr) or < hidden_size={H} with "
         "a w_hr per layer and direction, got {H}", "H={H} from weights[0] (w_ih of layer 0) axis 0",
         "the 16 arrays given fit num_layers=2, bidirectional=True, bias=True, proj_size=0",
         cells=("lstm",)),
    case("proj_size > hidden_size, weights without w_hr", set_("proj_size", H + 5), ValueError,
         "proj_size: expected 0 (no projection: the weights have no w_hr) or < hidden_size={H}",
         "got 12", cells=("lstm",)),
    case("w_hr given, proj_size 0", with_proj(3, set_("proj_size", 0)), ValueError,
         "weights: expected 16 or 8 arrays", "got 20",
         "the 20 arrays given fit num_layers=2, bidirectional=True, bias=True, proj_size=3", cells=("lstm",)),
    case("proj_size > hidden_size", with_proj(H + 1), ValueError,
         "proj_size: expected < hidden_size={H}, got 8", cells=("lstm",)),
    case("proj_size negative", set_("proj_size", -1), ValueError, "proj_size: expected an int >= 0, got -1",
         cells=("lstm",)),
    case("proj_size float", set_("proj_size", 2.0), TypeError, "proj_size: expected an int >= 0, got float",
         cells=("lstm",)),
    case("proj_size without w_hr", set_("proj_size", 3), ValueError,
         "weights: expected 20 or 12 arrays", "got 16",
         "the 16 arrays given fit num_layers=2, bidirectional=True, bias=True, proj_size=0",
         "(with proj_size=3, each layer and direction needs a w_hr of shape (3, {H}) after its biases)",
         cells=("lstm",)),
    case("w_hr transposed", with_proj(3, w_(4, lambda w: w.T)), ValueError,
         "weights[4] (w_hr of layer 0): expected shape (3, {H}), got ({H}, 3)", cells=("lstm",)),
    case("w_hh with projection sized H", with_proj(3, w_(6, lambda w: np.zeros((w.shape[0], H)))), ValueError,
         "weights[6] (w_hh of layer 0, reverse): expected shape ({GH}, 3), got ({GH}, {H})", cells=("lstm",)),
    case("h0 with projection sized H", with_proj(3, put("h0", lambda a: np.zeros((L * D, B, H)))), ValueError,
         "h0: expected shape ({LD}, {B}, 3), got ({LD}, {B}, {H})", cells=("lstm",)),
    case("nonlinearity sigmoid", set_("nonlinearity", "sigmoid"), ValueError,
         "nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'", cells=("rnn",)),
    case("nonlinearity TANH", set_("nonlinearity", "TANH"), ValueError,
         "nonlinearity: expected 'tanh' or 'relu', got 'TANH'", cells=("rnn",)),
    case("linear_before_reset str", set_("linear_before_reset", "yes"), TypeError,
         "linear_before_reset: expected a bool, got 'yes'", cells=("gru",)),
]

BACKWARD_CASES = [
    case("saved None (forward without training)", set_("saved", None), TypeError,
         "saved: expected the .saved of a {cell}_forward(..., training=True) result, got NoneType"),
    case("saved a dict", put("saved", lambda a: {}), TypeError, "saved: expected the .saved", "got dict"),
    case("saved a str", set_("saved", "saved"), TypeError, "saved: expected the .saved", "got str"),
    case("saved from an lstm", from_cell("lstm"), ValueError,
         "saved: expected the state of a {cell} forward, got one of a lstm forward", cells=("gru", "rnn")),
    case("saved from a gru", from_cell("gru"), ValueError,
         "saved: expected the state of a {cell} forward, got one of a gru forward", cells=("lstm", "rnn")),
    case("saved from an rnn", from_cell("rnn"), ValueError,
         "saved: expected the state of a {cell} forward, got one of a rnn forward", cells=("lstm", "gru")),
    case("dy one step short", put("dy", lambda a: a["dy"][:-1]), ValueError,
         "dy: expected shape ({T}, {B}, {DH}), got (5, {B}, {DH})"),
    case("dy batch-first", put("dy", lambda a: a["dy"].transpose(1, 0, 2)), ValueError,
         "dy: expected shape ({T}, {B}, {DH}), got ({B}, {T}, {DH})"),
    case("dy one direction", put("dy", lambda a: a["dy"][:, :, :H]), ValueError,
         "dy: expected shape ({T}, {B}, {DH}), got ({T}, {B}, {H})"),
    case("dy float32", put("dy", lambda a: a["dy"].astype(np.float32)), TypeError,
         "dy: expected dtype float64", "got float32"),
    *bad_dtypes("dy"),
    *not_arrays("dy"),
    case("dh_n layers*directions", put("dh_n", lambda a: a["dh_n"][:-1]), ValueError,
         "dh_n: expected shape ({LD}, {B}, {H}), got (3, {B}, {H})"),
    case("dh_n 2-D", put("dh_n", lambda a: a["dh_n"][0]), ValueError,
         "dh_n: expected shape ({LD}, {B}, {H}), got ({B}, {H})"),
    case("dh_n float32", put("dh_n", lambda a: a["dh_n"].astype(np.float32)), TypeError,
         "dh_n: expected dtype float64", "got float32"),
    case("dh_n int", put("dh_n", lambda a: a["dh_n"].astype(np.int64)), TypeError,
         "dh_n: expected a float32 or float64 array, got dtype int64"),
    case("dh_n a list", put("dh_n", lambda a: a["dh_n"].tolist()), TypeError,
         "dh_n: expected an array", "got list"),
    case("dc_n hidden size", put("dc_n", lambda a: a["dc_n"][..., :-1]), ValueError,
         "dc_n: expected shape ({LD}, {B}, {H}), got ({LD}, {B}, 6)", cells=("lstm",)),
    case("dc_n float32", put("dc_n", lambda a: a["dc_n"].astype(np.float32)), TypeError,
         "dc_n: expected dtype float64", "got float32", cells=("lstm",)),
    case("dc_n complex", put("dc_n", lambda a: a["dc_n"].astype(np.complex64)), TypeError,
         "dc_n: expected a float32 or float64 array, got dtype complex64", cells=("lstm",)),
    case("dc_n a scalar", set_("dc_n", 0.0), TypeError, "dc_n: expected an array", "got float",
         cells=("lstm",)),
]


def params(cases):
    return [pytest.param(c, cell, id=f"{cell}-{c.id}") for c in cases for cell in CELLS if cell in c.cells]


# ----------------------------------------------------------------------------------------------
# Checks


def pattern(fragments, cell):
    """The fragments, formatted with the cell's sizes, as one regex matching them in order."""
    return ".*".join(re.escape(f.format(**sizes(cell))) for f in fragments)


def all_arrays(obj):
    """Every NumPy array reachable in an argument dict (lists, tuples and namedtuples included)."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from all_arrays(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from all_arrays(v)


def snapshot(*objs):
    return [(a, a.copy()) for obj in objs for a in all_arrays(obj)]


def assert_unchanged(snap):
    for k, (array, before) in enumerate(snap):
        same_kind = (array.dtype, array.shape) == (before.dtype, before.shape)
        assert same_kind, f"array {k}: dtype or shape changed"
        assert array.tobytes() == before.tobytes(), f"array {k} of the caller was written into"


def check(call, case, cell, valid):
    """Apply the case's mutation to a valid argument dict and check the error and the arrays."""
    originals = snapshot(valid)
    args = dict(valid)
    case.mutate(args)
    mutated = snapshot(args)
    with pytest.raises(case.exc, match=pattern(case.fragments, cell)) as info:
        call(**args)
    print(f"{case.exc.__name__}: {info.value}")
    assert_unchanged(originals)
    assert_unchanged(mutated)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_calls_run(cell, backend):
    """The unmutated arguments are valid, so each error below comes from its one mutation."""
    args = valid_backward_args(cell, backend)
    snap = snapshot(args)
    grads = BACKWARD[cell](**args)
    assert len(grads.dweights) == L * D * 4
    assert_unchanged(snap)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, cell", params(FORWARD_CASES))
def test_forward_bad_input(case, cell, backend):
    check(FORWARD[cell], case, cell, valid_forward_args(cell, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, cell", params(BACKWARD_CASES))
def test_backward_bad_input(case, cell, backend):
    check(BACKWARD[cell], case, cell, valid_backward_args(cell, backend))


@pytest.mark.parametrize("cell", CELLS)
def test_saved_survives_a_failed_backward(cell):
    """A rejected backward call leaves `saved` usable: the next valid call gives the same result."""
    args = valid_backward_args(cell, "cpu")
    before = BACKWARD[cell](**args)
    with pytest.raises(ValueError, match="dy: expected shape"):
        BACKWARD[cell](**dict(args, dy=args["dy"][:-1]))
    after = BACKWARD[cell](**args)
    for a, b in zip(all_arrays(before), all_arrays(after)):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("n, exc, message", [
    (0, ValueError, "set_num_threads: expected n >= 1, got 0"),
    (-2, ValueError, "set_num_threads: expected n >= 1, got -2"),
    (True, TypeError, "set_num_threads: expected an int n >= 1, got bool"),
    (2.0, TypeError, "set_num_threads: expected an int n >= 1, got float"),
    ("2", TypeError, "set_num_threads: expected an int n >= 1, got str"),
    (None, TypeError, "set_num_threads: expected an int n >= 1, got NoneType"),
], ids=["zero", "negative", "bool", "float", "str", "None"])
def test_set_num_threads_bad_input(n, exc, message):
    threads = fastrnn.backends()["cpu"]["threads"]
    with pytest.raises(exc, match=re.escape(message)):
        fastrnn.set_num_threads(n)
    assert fastrnn.backends()["cpu"]["threads"] == threads, "a rejected call changed the thread count"


# ----------------------------------------------------------------------------------------------
# The weight-list mistakes of issue 20, at its sizes (I=8, H=16): where 4*H's rows divide by
# 3, so the messages cannot lean on a size that fits no cell (the table above uses H=7)


def _one_layer(G, H=16, I=8, P=0, seed=3):
    rng = np.random.default_rng(seed)
    shapes = [(G * H, I), (G * H, P or H), (G * H,), (G * H,)] + ([(P, H)] if P else [])
    return [rng.uniform(-0.5, 0.5, s) for s in shapes]


X8 = np.random.default_rng(4).normal(size=(5, 2, 8))


def _message(call, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    print(info.value)
    return str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_transposed_w_ih_expects_h_from_w_hh(backend):
    w = _one_layer(4)
    msg = _message(fastrnn.lstm_forward, X8, [w[0].T] + w[1:], backend=backend)
    assert msg.startswith("weights[0] (w_ih of layer 0): expected shape (64, 8), got (8, 64); "
                          "I=8 from x's last axis, H=16 from weights[1] (w_hh of layer 0) axis 0 "
                          "(64 rows = 4*H: lstm has 4 gates (i, f, g, o)); it looks transposed")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_weights_to_lstm_forward_say_so(backend):
    msg = _message(fastrnn.lstm_forward, X8, _one_layer(3), backend=backend)
    assert msg == ("weights[1] (w_hh of layer 0): expected shape (48, 12), got (48, 16); H=12 from "
                   "weights[0] (w_ih of layer 0) axis 0 (48 rows = 4*H: lstm has 4 gates (i, f, g, o)); "
                   "weights[1] of shape (48, 16) has 3 x 16 rows, as a gru w_hh of H=16 (gru has 3 "
                   "gates (r, z, n)): gru weights passed to lstm_forward?")


def test_lstm_weights_to_gru_and_rnn_forward_say_so():
    assert "lstm weights passed to gru_forward?" in _message(fastrnn.gru_forward, X8, _one_layer(4))
    assert "lstm weights passed to rnn_forward?" in _message(fastrnn.rnn_forward, X8, _one_layer(4))
    assert "gru weights passed to rnn_forward?" in _message(fastrnn.rnn_forward, X8, _one_layer(3))


def test_a_two_layer_gru_list_given_to_lstm_forward_with_num_layers_1():
    w = _one_layer(3) + _one_layer(3, I=16)
    msg = _message(fastrnn.lstm_forward, X8, w)
    assert msg.startswith("weights: expected 4 or 2 arrays (num_layers=1 x directions=1 x "
                          "(4 with biases or 2 without: w_ih, w_hh, [b_ih, b_hh])), got 8; ")
    assert msg.endswith("they fit no layout of lstm weights (lstm has 4 gates (i, f, g, o)), but fit "
                        "gru weights (gru has 3 gates (r, z, n)) with num_layers=2, "
                        "bidirectional=False, bias=True, proj_size=0")


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_layers_2_with_one_layers_arrays_is_not_read_as_two_layers_without_biases(backend):
    msg = _message(fastrnn.lstm_forward, X8, _one_layer(4), num_layers=2, backend=backend)
    assert msg == ("weights: expected num_layers=2 x directions=1 x (w_ih, w_hh) = 4 arrays (without "
                   "biases, proj_size=0), got 4 arrays of 2, 2, 1, 1 dimensions (1-D ones are biases), "
                   "which fit num_layers=1, bidirectional=False, bias=True, proj_size=0: check "
                   "num_layers, bidirectional and proj_size")


def test_a_valid_list_without_biases_for_two_layers_still_runs():
    """The reading the message above rules out is valid when the arrays are 2-D."""
    w = _one_layer(4)[:2] + _one_layer(4, I=16)[:2]
    out = fastrnn.lstm_forward(X8, w, num_layers=2)
    assert out.h_n.shape == (2, 2, 16)


@pytest.mark.parametrize("backend", BACKENDS)
def test_proj_size_equal_to_h_blames_proj_size_not_the_count(backend):
    msg = _message(fastrnn.lstm_forward, X8, _one_layer(4), proj_size=16, backend=backend)
    assert msg == ("proj_size: expected 0 (no projection: the weights have no w_hr) or < "
                   "hidden_size=16 with a w_hr per layer and direction, got 16; H=16 from weights[0] "
                   "(w_ih of layer 0) axis 0 (64 rows: lstm has 4 gates (i, f, g, o)); the 4 arrays "
                   "given fit num_layers=1, bidirectional=False, bias=True, proj_size=0")


def test_proj_size_below_h_without_w_hr_names_the_missing_array():
    msg = _message(fastrnn.lstm_forward, X8, _one_layer(4), proj_size=4)
    assert msg.startswith("weights: expected 5 or 3 arrays")
    assert msg.endswith("got 4; the 4 arrays given fit num_layers=1, bidirectional=False, bias=True, "
                        "proj_size=0 (with proj_size=4, each layer and direction needs a w_hr of "
                        "shape (4, 16) after its biases)")


def test_projection_weights_without_proj_size_name_it():
    msg = _message(fastrnn.lstm_forward, X8, _one_layer(4, P=4))
    assert msg.endswith("got 5; the 5 arrays given fit num_layers=1, bidirectional=False, bias=True, "
                        "proj_size=4")
