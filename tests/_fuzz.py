# SPDX-License-Identifier: MIT
"""Property-based fuzzing of the public functional API (fastrnn.{lstm,gru,rnn}_{forward,backward}),
one batch per process. tests/test_fuzz.py runs a few batches, each in a fresh child process, so
that a crash is a failed test and not a dead test run.

Each example is one valid call and one invalid call, drawn by hypothesis:

1. Valid: a random cell variant (LSTM with or without projection, GRU with the reset after or
   before the matmul, RNN tanh or relu), dtype, sizes (T and B may be 0), layers, directions,
   biases, batch_first, lengths, initial states, dropout with a seed, training; every array in
   a random memory layout (C, Fortran, a step-2 view of a larger buffer, a transposed view,
   negative strides), some read-only; in float64 some values at +-30 to saturate the gates.
   The same call runs on backend="cpu" and backend="reference": outputs (and, when training,
   every gradient of the matching *_backward) agree within the budgets of tests/_tolerances.py;
   padded steps and empty sequences give exact zeros and pass states through exactly.
2. Invalid: the valid call with ONE thing broken (a shape, a dtype, a non-array, a length, the
   weight list, an option, `saved` of another cell). It must raise exactly the ValueError or
   TypeError of docs/design.md ("Public Python contract"), with a message that starts with the name
   of the argument at fault.

After both, every array the caller passed is bitwise unchanged (and still read-only where it
was), and no output shares memory with a caller's array.

Reproduce a batch (the seed makes it deterministic; hypothesis shrinks a failure to a minimal
example and prints it):

    python tests/_fuzz.py --seed S --examples N [--json FILE] [--trace]

--json writes a summary (examples, valid calls that matched, invalid calls rejected, counts per
category); --trace prints each example to stderr before running it, so that the last line
before a crash names the example that crashed.
"""

import argparse
import collections
import contextlib
import dataclasses
import faulthandler
import io
import json
import math
import sys

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

import fastrnn
from _tolerances import (F32_ATOL_FLOOR, SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close,
                         assert_within_float32_budget, textbook_float32_reference)

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
FORWARD = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward, "rnn": fastrnn.rnn_forward}
BACKWARD = {"lstm": fastrnn.lstm_backward, "gru": fastrnn.gru_backward, "rnn": fastrnn.rnn_backward}
BACKENDS = ["cpu", "reference"]
MAX_T, MAX_B, MAX_SIZE, MAX_LAYERS = 7, 5, 9, 3
SATURATING = 30.0  # |value| of the entries that saturate sigmoid and tanh

# Memory layouts of an array argument; see `relayout`.
LAYOUTS = ["C", "fortran", "step", "transposed", "negative"]
# dtypes that no float argument accepts (TypeError naming the argument)
BAD_FLOAT_DTYPES = ["int64", "int32", "bool", "complex64", "complex128", "object", "float16"]
BAD_LENGTHS_DTYPES = ["float32", "float64", "bool", "complex64", "object"]
# Values that are not arrays at all; "None" only where the argument is required.
NOT_ARRAYS = ["None", "str", "dict", "float", "list of lists of str"]


# ----------------------------------------------------------------------------------------------
# A valid call, as plain data (what hypothesis prints for a failing example)


@dataclasses.dataclass
class Problem:
    """One valid call, as plain data: sizes, options, which optional arguments are given, and
    the seed of every array's values. make_arrays and forward_args rebuild the call from it."""

    cell: str  # "lstm" | "gru" | "rnn"
    options: dict  # proj_size (lstm), linear_before_reset (gru) or nonlinearity (rnn)
    dtype: str  # "float32" | "float64"
    T: int
    B: int
    I: int  # noqa: E741 - the legend's name
    H: int
    L: int
    D: int  # 1 or 2 (bidirectional)
    bias: bool  # weights with b_ih, b_hh
    batch_first: bool
    lengths: object  # None, or B ints in [0, T]
    lengths_type: str  # "int64" | "int32" | "uint8" | "list"
    h0: bool  # given (else None: zeros)
    c0: bool
    dh_n: bool  # given to backward (else None)
    dc_n: bool
    dropout: float
    seed: object  # None or an int in [0, 2**64)
    training: bool
    weights_tuple: bool  # weights as a tuple rather than a list
    saturate: bool  # some entries of x, c0 and the biases at +-SATURATING (float64 only)
    values_seed: int  # the values of every array (np.random.default_rng)
    layouts: dict  # array name -> layout in LAYOUTS, "+readonly" appended for read-only

    @property
    def proj_size(self):
        return self.options.get("proj_size", 0)

    @property
    def Hout(self):
        return self.proj_size or self.H


def weight_shapes(p, proj_size=None):
    """Shapes of the flat weight list, torch _flat_weights order."""
    P = p.proj_size if proj_size is None else proj_size
    G, Hout = GATES[p.cell], P or p.H
    shapes = []
    for layer in range(p.L):
        for _ in range(p.D):
            I_l = p.I if layer == 0 else p.D * Hout
            shapes += [(G * p.H, I_l), (G * p.H, Hout)]
            if p.bias:
                shapes += [(G * p.H,), (G * p.H,)]
            if P:
                shapes += [(P, p.H)]
    return shapes


def array_shapes(p):
    """name -> shape of every array argument of the valid call (forward, then backward)."""
    LD, T, B = p.L * p.D, p.T, p.B
    shapes = {"x": (B, T, p.I) if p.batch_first else (T, B, p.I), "h0": (LD, B, p.Hout)}
    if p.cell == "lstm":
        shapes["c0"] = (LD, B, p.H)
    shapes["lengths"] = (B,)
    for k, shape in enumerate(weight_shapes(p)):
        shapes[f"weights[{k}]"] = shape
    shapes["dy"] = (B, T, p.D * p.Hout) if p.batch_first else (T, B, p.D * p.Hout)
    shapes["dh_n"] = (LD, B, p.Hout)
    if p.cell == "lstm":
        shapes["dc_n"] = (LD, B, p.H)
    return shapes


BACKWARD_ARGS = ("saved", "dy", "dh_n", "dc_n")


# ----------------------------------------------------------------------------------------------
# Strategies for a valid call


def cell_variants():
    """(cell, options) without proj_size, which needs H: drawn in `problems`."""
    return st.sampled_from([
        ("lstm", {}),
        ("gru", {"linear_before_reset": True}),
        ("gru", {"linear_before_reset": False}),
        ("rnn", {"nonlinearity": "tanh"}),
        ("rnn", {"nonlinearity": "relu"}),
    ])


def dropouts(largest):
    """0, a p in (0, largest), or largest itself."""
    return st.one_of(st.just(0.0), st.floats(0.0, largest, exclude_min=True, exclude_max=True),
                     st.just(largest))


def layouts():
    return st.sampled_from([layout + read_only for read_only in ("", "+readonly")
                            for layout in LAYOUTS])


@st.composite
def problems(draw):
    cell, options = draw(cell_variants())
    options = dict(options)
    T, B = draw(st.integers(0, MAX_T)), draw(st.integers(0, MAX_B))
    # I may be 0 inside otherwise consistent shapes (x (T, B, 0), w_ih (G*H, 0)); a hidden size
    # of 0 is an error (as in torch.nn), which the mutations cover
    I, H = draw(st.integers(0, MAX_SIZE)), draw(st.integers(1, MAX_SIZE))
    if cell == "lstm":
        options["proj_size"] = draw(st.integers(0, H - 1))
    lengths = draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B).map(tuple))
    dtype = draw(st.sampled_from(["float32", "float64"]))  # float32 first: as often as float64
    # The float32 budget (within_float32_budget) compares max errors over a handful of
    # elements, so the float32 reference's own error can be a lucky ~0; two things make the
    # engine's unlucky error exceed 2-3x that plus the floor, though both are as right as
    # float32 allows (the activations are tested on their own in test_engine.py):
    # - values at +-30: pre-activations of size ~100 that cancel to O(1) carry GEMM rounding
    #   of ~1e-5 whose size depends on the summation order (1 float32 example in ~10,000);
    # - dropout p near 1: 1/(1 - p) (18 at p = 0.945) scales every gradient below the layer
    #   and its rounding, which the output-sized floor does not see (1 in 20,000).
    # So float32 draws no saturation and p <= 0.5; float64 draws both.
    saturate = dtype == "float64" and draw(st.booleans())
    dropout = draw(dropouts(1.0 if dtype == "float64" else 0.5))
    training = draw(st.booleans())
    seed = draw(st.none() | st.integers(0, 2**64 - 1))
    if dropout > 0 and training and seed is None:
        seed = 0  # without a seed each call draws its own masks: the backends could not agree
    p = Problem(
        cell=cell, options=options, dtype=dtype,
        T=T, B=B, I=I, H=H, L=draw(st.integers(1, MAX_LAYERS)), D=draw(st.sampled_from([1, 2])),
        bias=draw(st.booleans()), batch_first=draw(st.booleans()), lengths=lengths,
        lengths_type=draw(st.sampled_from(["int64", "int32", "uint8", "list"])),
        h0=draw(st.booleans()), c0=cell == "lstm" and draw(st.booleans()),
        dh_n=draw(st.booleans()), dc_n=cell == "lstm" and draw(st.booleans()),
        dropout=dropout, seed=seed, training=training, weights_tuple=draw(st.booleans()),
        saturate=saturate, values_seed=draw(st.integers(0, 2**32 - 1)), layouts={})
    p.layouts = {name: draw(layouts()) for name in array_shapes(p)}
    return p


# ----------------------------------------------------------------------------------------------
# Arrays of a problem


def relayout(a, layout):
    """The same values as `a` in another memory layout (a view where the layout needs one),
    read-only if the layout ends in "+readonly"."""
    name, _, read_only = layout.partition("+")
    if name == "C":
        b = a.copy()
    elif name == "fortran":
        b = np.asfortranarray(a)
    elif name == "step":  # every other element of a larger buffer, along every axis
        # what shows if an engine reads a gap: NaN, or the largest int (not a valid length)
        gap = np.nan if a.dtype.kind == "f" else np.iinfo(a.dtype).max
        big = np.full(tuple(2 * n for n in a.shape), gap, a.dtype)
        b = big[tuple(slice(None, None, 2) for _ in a.shape)]
        b[...] = a
    elif name == "transposed":  # the transpose of a C-ordered array of the reversed shape
        b = np.ascontiguousarray(a.T).T
    elif name == "negative":  # reversed along every axis: negative strides
        back = tuple(slice(None, None, -1) for _ in a.shape)
        b = np.ascontiguousarray(a[back])[back]
    else:
        raise AssertionError(layout)
    if read_only:
        b.setflags(write=False)
    return b


def make_arrays(p, proj_size=None, layouts=True):
    """name -> array of every array argument (array_shapes' names), values from p.values_seed,
    in p's layouts (layouts=False: C-contiguous). proj_size overrides p's for the weights (a
    mutation's)."""
    rng = np.random.default_rng(p.values_seed)
    dtype = np.dtype(p.dtype)
    shapes = array_shapes(p)

    def values(shape, scale=1.0, saturate=False):
        a = rng.standard_normal(shape) * scale
        if saturate:
            hit = rng.random(shape) < 0.25
            a[hit] = SATURATING * np.sign(a[hit])
        return a.astype(dtype)

    arrays = {}
    for name, shape in shapes.items():
        if name == "lengths":
            lengths = p.lengths if p.lengths is not None else [p.T] * p.B
            arrays[name] = np.array(lengths, np.int64 if p.lengths_type == "list" else p.lengths_type)
        elif not name.startswith("weights"):
            # not h0: a state of 30 (|h| <= 1 in a running network) multiplies the ill-
            # conditioned s(1 - s) of saturated gates, beyond SAME_MATHS_F64 even in float64
            arrays[name] = values(shape, saturate=p.saturate and name in ("x", "c0"))
    for k, shape in enumerate(weight_shapes(p, proj_size)):
        # like torch's init, ~1/sqrt(H); biases may saturate
        arrays[f"weights[{k}]"] = values(shape, 1 / math.sqrt(p.H), p.saturate and len(shape) == 1)
    if layouts:
        arrays = {k: relayout(a, p.layouts.get(k, "C")) for k, a in arrays.items()}
    return arrays


def forward_args(p, arrays, backend):
    """Keyword arguments of the valid forward call."""
    weights = [arrays[f"weights[{k}]"] for k in range(len(weight_shapes(p)))]
    lengths = None
    if p.lengths is not None:
        lengths = arrays["lengths"].tolist() if p.lengths_type == "list" else arrays["lengths"]
    args = dict(x=arrays["x"], weights=tuple(weights) if p.weights_tuple else weights,
                h0=arrays["h0"] if p.h0 else None, lengths=lengths, num_layers=p.L,
                bidirectional=p.D == 2, batch_first=p.batch_first, dropout=p.dropout, seed=p.seed,
                training=p.training, backend=backend, **p.options)
    if p.cell == "lstm":
        args["c0"] = arrays["c0"] if p.c0 else None
    return args


def backward_args(p, arrays, saved):
    args = dict(saved=saved, dy=arrays["dy"], dh_n=arrays["dh_n"] if p.dh_n else None)
    if p.cell == "lstm":
        args["dc_n"] = arrays["dc_n"] if p.dc_n else None
    return args


# ----------------------------------------------------------------------------------------------
# Caller arrays: snapshots, aliasing


def caller_arrays(*objs):
    """Every NumPy array reachable from the arguments (lists, tuples, dicts), and the buffer a
    view was taken from (an engine must not write into the gaps of a step-2 view either)."""
    found = []

    def visit(obj):
        if isinstance(obj, np.ndarray):
            found.append(obj)
            if isinstance(obj.base, np.ndarray):
                found.append(obj.base)
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    for obj in objs:
        visit(obj)
    return found


def snapshot(*objs):
    return [(a, a.copy(), a.flags.writeable) for a in caller_arrays(*objs)]


def assert_unchanged(snap, when):
    for k, (a, before, writeable) in enumerate(snap):
        assert (a.dtype, a.shape) == (before.dtype, before.shape), f"{when}: array {k} changed kind"
        assert a.tobytes() == before.tobytes(), f"{when}: caller array {k} {a.shape} was written into"
        assert a.flags.writeable == writeable, f"{when}: caller array {k} changed its writeable flag"


def assert_no_aliasing(results, snap, when):
    for name, out in results.items():
        for a, _, _ in snap:
            assert not np.shares_memory(out, a), f"{when}: {name} shares memory with a caller array"


# ----------------------------------------------------------------------------------------------
# Valid calls: cpu against the reference


def gradients(grads):
    """{name: array} of a backward result, None entries dropped."""
    r = {"dx": grads.dx, "dh0": grads.dh0, "dc0": grads.dc0}
    r.update({f"dweights[{k}]": g for k, g in enumerate(grads.dweights)})
    return {k: v for k, v in r.items() if v is not None}


def results(out, grads=None):
    """{name: array} of a forward result and its gradients, None entries dropped."""
    r = {k: v for k, v in (("y", out.y), ("h_n", out.h_n), ("c_n", out.c_n)) if v is not None}
    return r if grads is None else {**r, **gradients(grads)}


def run(p, arrays, backend):
    """Forward (and backward when training) on one backend -> {name: array}."""
    out = FORWARD[p.cell](**forward_args(p, arrays, backend))
    assert (out.saved is not None) == p.training, f"{backend}: saved with training={p.training}"
    grads = BACKWARD[p.cell](**backward_args(p, arrays, out.saved)) if p.training else None
    return results(out, grads)


def close(actual, expected, name):
    """float64: same maths up to summation order (SAME_MATHS_F64_* of _tolerances.py). Silences
    assert_close's progress line: a batch makes thousands of comparisons."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert_close(actual, expected, rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL, name=name)


def within_float32_budget(got, naive, exact, name):
    """float32 (STYLE 16, _tolerances.py): the engine's max error against the float64 reference
    is within F32_FACTOR x the float32 reference's own error, plus a floor.

    The floor is F32_ATOL_FLOOR scaled by the output's largest value when that is above 1 (the
    `tolerance + |ref| eps` form STYLE 16 names): the fuzz's outputs have a handful of elements,
    so the reference's max error may be a lucky ~0, and relu growth or 1/(1 - dropout) make
    outputs of size 10-1000, where 1e-6 is less than one float32 ulp (1 ulp of 33 is 3.8e-6).
    """
    largest = float(np.max(np.abs(exact))) if exact.size else 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        assert_within_float32_budget(got, naive, exact, forward=name in ("y", "h_n", "c_n"),
                                     name=f"{name} (floor: F32_ATOL_FLOOR x max(1, largest "
                                          f"|value| {largest:.3g}))",
                                     floor=F32_ATOL_FLOOR * max(1.0, largest))


def time_major(a, p):
    return a.transpose(1, 0, 2) if p.batch_first else a


def check_exact_padding(p, r, backend):
    """Padded steps give exact zeros (y, dx); a sequence of length 0 (or T = 0) keeps its state
    exactly (h_n = h0, c_n = c0) and passes dh_n (dc_n) to dh0 (dc0) unchanged."""
    lengths = np.full(p.B, p.T) if p.lengths is None else np.array(p.lengths)
    zeros = np.zeros((p.L * p.D, p.B, p.Hout))
    arrays = make_arrays(p, layouts=False)
    h0 = arrays["h0"] if p.h0 else zeros
    c0 = arrays["c0"] if p.c0 else np.zeros((p.L * p.D, p.B, p.H))
    for b, n in enumerate(lengths):
        assert not time_major(r["y"], p)[n:, b].any(), f"{backend}: y of padded steps of sequence {b}"
        if "dx" in r:
            assert not time_major(r["dx"], p)[n:, b].any(), f"{backend}: dx of padded steps, {b}"
        if n > 0:
            continue
        assert np.array_equal(r["h_n"][:, b], h0[:, b]), f"{backend}: h_n of empty sequence {b}"
        if "c_n" in r:
            assert np.array_equal(r["c_n"][:, b], c0[:, b]), f"{backend}: c_n of empty sequence {b}"
        if "dh0" in r:
            dh_n = arrays["dh_n"] if p.dh_n else zeros
            assert np.array_equal(r["dh0"][:, b], dh_n[:, b]), f"{backend}: dh0 of empty sequence {b}"
        if "dc0" in r:
            dc_n = arrays["dc_n"] if p.dc_n else np.zeros_like(c0)
            assert np.array_equal(r["dc0"][:, b], dc_n[:, b]), f"{backend}: dc0 of empty sequence {b}"


def check_valid(p):
    """The valid call on cpu and reference: same results, exact padding, right dtypes and
    shapes, caller arrays untouched, no output aliasing an input."""
    arrays = make_arrays(p)
    snap = snapshot(arrays)
    got = run(p, arrays, "cpu")
    with textbook_float32_reference():  # float32: the naive implementation, BLAS-independent
        want = run(p, arrays, "reference")
    assert_unchanged(snap, "valid call")
    assert_no_aliasing(got, snap, "cpu")
    assert_no_aliasing(want, snap, "reference")

    shapes = array_shapes(p)
    expected_shapes = {"y": shapes["dy"], "h_n": shapes["h0"], "c_n": shapes.get("c0"),
                       "dx": shapes["x"], "dh0": shapes["h0"], "dc0": shapes.get("c0")}
    expected_shapes.update({f"dweights[{k}]": s for k, s in enumerate(weight_shapes(p))})
    assert got.keys() == want.keys(), f"cpu gives {sorted(got)}, reference {sorted(want)}"
    for name in got:
        for backend, r in (("cpu", got), ("reference", want)):
            assert type(r[name]) is np.ndarray, f"{backend} {name}: {type(r[name]).__name__}"
            assert r[name].dtype == p.dtype, f"{backend} {name}: dtype {r[name].dtype}"
            assert r[name].shape == expected_shapes[name], f"{backend} {name}: shape {r[name].shape}"
    check_exact_padding(p, got, "cpu")
    check_exact_padding(p, want, "reference")

    if p.dtype == "float64":
        for name in want:
            close(got[name], want[name], name)
    else:  # the float32 reference with textbook products (want) is STYLE 16's naive float32
        # the exact answer for the same (float32) inputs
        inputs64 = {k: a.astype(np.float64) if a.dtype.kind == "f" else a
                    for k, a in make_arrays(p, layouts=False).items()}
        exact = run(p, inputs64, "reference")
        for name in exact:
            within_float32_budget(got[name], want[name], exact[name], name)


# ----------------------------------------------------------------------------------------------
# Invalid calls: one mutation of a valid call


@dataclasses.dataclass
class Mutation:
    """One thing broken in a valid call, and what the API must answer (see `apply`)."""

    kind: str  # the category: "extra_dim", "bad_dtype", "option", ...
    target: str  # the argument broken: "x", "weights[3]", "num_layers", ...
    value: object  # what it is broken with: an axis, a dtype, a bad value
    error: str  # "ValueError", "TypeError", or "ValueError or TypeError"
    blames: str  # the argument the message must start with (usually target)


def array_targets(p, floats_only=False):
    names = list(array_shapes(p))
    return [n for n in names if n != "lengths"] if floats_only else names


def other_float(p):
    return "float64" if p.dtype == "float32" else "float32"


@st.composite
def shape_mutations(draw, p):
    """One more axis, one fewer, or one axis one longer: ValueError naming the array. Two
    exceptions, both because of where a size is read from: x's feature size is checked against
    weights[0] (x sets I), and an RNN's weights[0] sets H, so a longer one blames weights[1]."""
    kind = draw(st.sampled_from(["extra_dim", "drop_dim", "grow"]))
    target = draw(st.sampled_from(array_targets(p)))
    if kind != "grow":
        return Mutation(kind, target, None, "ValueError", target)
    if target == "x":  # a longer T is valid, a longer B blames lengths or a state (or is valid)
        return Mutation(kind, target, 2, "ValueError", "weights[0]")
    axis = draw(st.integers(0, len(array_shapes(p)[target]) - 1))
    blames = "weights[1]" if (target, axis, p.cell) == ("weights[0]", 0, "rnn") else target
    return Mutation(kind, target, axis, "ValueError", blames)


@st.composite
def dtype_mutations(draw, p):
    """A dtype no argument takes, or the other float dtype (mixed): TypeError naming the array;
    x sets the call's dtype, so an x of the other dtype blames the first weight."""
    if draw(st.booleans()):
        target = draw(st.sampled_from(array_targets(p, floats_only=True)))
        blames = "weights[0]" if target == "x" else target
        return Mutation("mixed_dtype", target, other_float(p), "TypeError", blames)
    target = draw(st.sampled_from(array_targets(p)))
    dtype = draw(st.sampled_from(BAD_LENGTHS_DTYPES if target == "lengths" else BAD_FLOAT_DTYPES))
    return Mutation("bad_dtype", target, dtype, "TypeError", target)


@st.composite
def not_array_mutations(draw, p):
    """Not an array at all: TypeError naming the argument (None only where one is required)."""
    target = draw(st.sampled_from(array_targets(p)))
    required = target in ("x", "dy") or target.startswith("weights[")
    value = draw(st.sampled_from(NOT_ARRAYS if required else NOT_ARRAYS[1:]))
    return Mutation("not_an_array", target, value, "TypeError", target)


@st.composite
def lengths_mutations(draw, p):
    """A length outside [0, T] (ValueError); with B = 0 there is no entry to break, so the
    array gets one entry too many instead."""
    if p.B == 0:
        return Mutation("grow", "lengths", 0, "ValueError", "lengths")
    b = draw(st.integers(0, p.B - 1))
    value = draw(st.sampled_from([-1, p.T + 1, -(2**40), 2**40]))
    return Mutation("lengths_value", "lengths", (b, value), "ValueError", "lengths")


def weights_mutations(p):
    """One weight too many or too few (ValueError); not a list or tuple (TypeError)."""
    return st.one_of(
        st.sampled_from([-1, 1]).map(lambda n: Mutation("weights_count", "weights", n,
                                                        "ValueError", "weights")),
        st.sampled_from(["ndarray", "dict", "None", "generator"]).map(
            lambda v: Mutation("weights_container", "weights", v, "TypeError", "weights")))


def option(target, value, error):
    return Mutation("option", target, value, error, target)


def option_mutations(p):
    """A bad value of a keyword option: ValueError for a bad value of the right type, TypeError
    for the wrong type (docs/design.md; tests/test_errors.py)."""
    bad = [option("num_layers", v, "ValueError") for v in (0, -1)]
    bad += [option("num_layers", v, "TypeError") for v in (1.5, True, "2", None)]
    bad += [option(name, v, "TypeError") for name in ("bidirectional", "batch_first", "training")
            for v in ("yes", 2, None, 0.5)]
    bad += [option("dropout", v, "ValueError") for v in (-0.1, 1.5, math.nan, math.inf)]
    bad += [option("dropout", v, "TypeError") for v in ("0.5", None, True)]
    bad += [option("seed", v, "ValueError") for v in (-1, 2**64)]
    bad += [option("seed", v, "TypeError") for v in (1.5, "1", True)]
    bad += [option("backend", v, "ValueError") for v in ("gpu", "CPU", "")]
    bad += [option("backend", v, "TypeError") for v in (3, b"cpu")]
    if p.cell == "lstm":
        # proj_size >= H comes with weights shaped for it (w_hr, w_hh): only proj_size is wrong
        bad += [option("proj_size", v, "ValueError") for v in (-1, p.H, p.H + 1, p.H + 3)]
        bad += [option("proj_size", v, "TypeError") for v in (1.5, True)]
    if p.cell == "gru":
        bad += [option("linear_before_reset", v, "TypeError") for v in ("yes", None, 2)]
    if p.cell == "rnn":
        bad += [option("nonlinearity", v, "ValueError") for v in ("sigmoid", "TANH", "")]
        # the API answers ValueError for any non-str value; TypeError would be as right
        bad += [option("nonlinearity", v, "ValueError or TypeError") for v in (None, 1)]
    return st.sampled_from(bad)


def saved_mutations(p):
    """`saved` of another cell's forward (ValueError), or not a saved at all (TypeError)."""
    others = [c for c in GATES if c != p.cell]
    return st.one_of(
        st.sampled_from(others).map(lambda c: Mutation("saved", "saved", c, "ValueError", "saved")),
        st.sampled_from(["None", "dict", "str"]).map(
            lambda v: Mutation("saved", "saved", v, "TypeError", "saved")))


MUTATION_GROUPS = [shape_mutations, dtype_mutations, not_array_mutations, lengths_mutations,
                   weights_mutations, option_mutations, saved_mutations]


@st.composite
def mutations(draw, p):
    """One mutation of p's call; first a group (about evenly), then one of its mutations."""
    group = draw(st.sampled_from(MUTATION_GROUPS))
    return draw(group(p))


def not_an_array(kind):
    """A fresh value of a NOT_ARRAYS kind."""
    return {"None": None, "str": "abc", "dict": {"a": 1}, "float": 1.5,
            "list of lists of str": [["a", "b"], ["c"]]}[kind]


def tiny_saved(cell, backend):
    """The .saved of a valid training forward of `cell` (T = B = I = H = 1)."""
    weights = [np.full(s, 0.5) for s in [(GATES[cell], 1), (GATES[cell], 1)]]
    return FORWARD[cell](np.ones((1, 1, 1)), weights, training=True, backend=backend).saved


def get_array(args, name, p):
    """args' array `name` (a weight by index); an optional argument left at None is given its
    valid value first (zeros, or full lengths), so that the mutation breaks a real array."""
    if name.startswith("weights["):
        return args["weights"][int(name[8:-1])]
    if args[name] is None:
        shape = array_shapes(p)[name]
        args[name] = np.full(shape, p.T) if name == "lengths" else np.zeros(shape, p.dtype)
    if isinstance(args[name], list):  # lengths as a list ([] would become float64)
        return np.array(args[name], np.int64)
    return args[name]


def set_array(args, name, value):
    if name.startswith("weights["):
        args["weights"] = list(args["weights"])
        args["weights"][int(name[8:-1])] = value
    else:
        args[name] = value


def apply(m, p, fargs, bargs):
    """Break the call (fargs: forward keyword arguments, bargs: backward ones) as m says."""
    args = bargs if m.target in BACKWARD_ARGS else fargs
    if m.kind in ("extra_dim", "drop_dim", "grow", "bad_dtype", "mixed_dtype"):
        a = get_array(args, m.target, p)
        if m.kind == "extra_dim":
            a = a[None]
        elif m.kind == "drop_dim":
            a = a[0] if len(a) else np.zeros(a.shape[1:], a.dtype)
        elif m.kind == "grow":
            pad = [(0, 0)] * a.ndim
            pad[m.value] = (0, 1)
            a = np.pad(a, pad)
        else:
            a = a.astype(m.value)
        set_array(args, m.target, a)
    elif m.kind == "not_an_array":
        set_array(args, m.target, not_an_array(m.value))
    elif m.kind == "lengths_value":
        lengths = get_array(args, "lengths", p).astype(np.int64)
        b, value = m.value
        lengths[b] = value
        args["lengths"] = lengths
    elif m.kind == "weights_count":
        w = list(args["weights"])
        args["weights"] = w[:-1] if m.value < 0 else w + [w[0]]
    elif m.kind == "weights_container":
        w = args["weights"]
        args["weights"] = {"ndarray": w[0], "dict": dict(enumerate(w)), "None": None,
                           "generator": (v for v in w)}[m.value]
    elif m.kind == "saved":
        if m.value in GATES:
            bargs["saved"] = tiny_saved(m.value, fargs["backend"])
        else:
            bargs["saved"] = {"None": None, "dict": {}, "str": "saved"}[m.value]
    elif m.kind == "option":
        fargs[m.target] = m.value
        if m.target == "proj_size" and type(m.value) is int and m.value >= p.H:  # not True
            weights = make_arrays(p, proj_size=m.value, layouts=False)
            fargs["weights"] = [weights[f"weights[{k}]"]
                                for k in range(len(weight_shapes(p, m.value)))]
    else:
        raise AssertionError(m.kind)


EXCEPTIONS = {"ValueError": (ValueError,), "TypeError": (TypeError,),
              "ValueError or TypeError": (ValueError, TypeError)}


def check_invalid(p, m, backend):
    """The valid call with m applied raises m.error, with a message that starts with m.blames;
    caller arrays are untouched; a rejected backward leaves `saved` usable."""
    arrays = make_arrays(p)
    snap = snapshot(arrays)
    fargs = forward_args(p, arrays, backend)
    grads_before = None
    if m.target in BACKWARD_ARGS:  # break the backward of a valid training forward
        fargs["training"] = True
        bargs = backward_args(p, arrays, FORWARD[p.cell](**fargs).saved)
        grads_before = BACKWARD[p.cell](**bargs)
        call, args = BACKWARD[p.cell], dict(bargs)
        apply(m, p, fargs, args)
    else:
        call, args = FORWARD[p.cell], dict(fargs)
        apply(m, p, args, None)
    mutated = snapshot(args)
    try:
        call(**args)
    except EXCEPTIONS[m.error] as exc:
        message = str(exc)
        assert message.startswith((m.blames + ":", m.blames + " (")), (
            f"{type(exc).__name__} message does not start with {m.blames!r}: {message}")
    except Exception as exc:
        raise AssertionError(f"expected {m.error}, got {type(exc).__name__}: {exc}") from exc
    else:
        raise AssertionError(f"expected {m.error}, the call succeeded")
    assert_unchanged(snap, "invalid call")
    assert_unchanged(mutated, "invalid call (mutated arguments)")
    if grads_before is not None:
        after, before = gradients(BACKWARD[p.cell](**bargs)), gradients(grads_before)
        for name in before:
            assert after[name].tobytes() == before[name].tobytes(), (
                f"{name} changed after a rejected backward call on the same saved")


# ----------------------------------------------------------------------------------------------
# One batch


def variant(p):
    extra = {"lstm": "_proj" if p.proj_size else "",
             "gru": "" if p.options.get("linear_before_reset", True) else "_reset_before",
             "rnn": "_" + p.options.get("nonlinearity", "")}[p.cell]
    return p.cell + extra


def categories(p):
    """The categories a valid example counts in (the summary's per-category counts)."""
    cats = [f"valid {variant(p)}", f"valid {p.dtype}", f"layers {p.L}", f"directions {p.D}"]
    flags = {"training": p.training, "dropout": p.dropout > 0 and p.training, "T=0": p.T == 0,
             "B=0": p.B == 0, "I=0": p.I == 0, "lengths": p.lengths is not None, "batch_first": p.batch_first,
             "no bias": not p.bias, "saturate": p.saturate}
    cats += [f"valid {name}" for name, on in flags.items() if on]
    cats += [f"layout {layout}" for layout in p.layouts.values()]
    return cats


def run_batch(seed, examples, trace=False):
    """Run `examples` hypothesis examples from `seed`; -> the summary dict. Raises on the first
    failing example (after hypothesis has shrunk it and printed it)."""
    counts = collections.Counter()
    first_failure = []

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              report_multiple_bugs=False, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(p=problems(), data=st.data(), backend=st.sampled_from(BACKENDS))
    def fuzz(p, data, backend):
        m = data.draw(mutations(p), label="mutation")
        if trace:
            print(f"example: {p}\n  invalid call on {backend}: {m}", file=sys.stderr, flush=True)
        try:
            check_valid(p)
            counts["valid calls matched"] += 1
            check_invalid(p, m, backend)
            counts["invalid calls rejected"] += 1
        except Exception:
            if not first_failure:  # before shrinking, in case shrinking runs out of time
                first_failure.append(True)
                print(f"first failure (before shrinking):\n  {p}\n  invalid call on {backend}: {m}",
                      file=sys.stderr, flush=True)
            raise
        counts["examples"] += 1
        counts.update(categories(p))
        counts[f"invalid {m.kind}"] += 1
        counts[f"invalid {m.error}"] += 1

    with contextlib.redirect_stdout(sys.stderr):  # hypothesis reports with print()
        fuzz()
    return {
        "seed": seed,
        "examples": counts.pop("examples", 0),
        "valid_matched": counts.pop("valid calls matched", 0),
        "invalid_rejected": counts.pop("invalid calls rejected", 0),
        "categories": dict(sorted(counts.items())),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--examples", type=int, required=True)
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("--trace", action="store_true", help="print each example to stderr first")
    args = parser.parse_args(argv)
    faulthandler.enable()  # a crash prints the Python stack of where it happened
    summary = run_batch(args.seed, args.examples, args.trace)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    print(f"seed {summary['seed']}: {summary['examples']} examples, {summary['valid_matched']} "
          f"valid calls matched the reference, {summary['invalid_rejected']} invalid calls rejected")


if __name__ == "__main__":
    main()
