# SPDX-License-Identifier: MIT
"""fastrnn's LSTM / GRU / RNN kernels as differentiable JAX functions (CPU).

    import fastrnn.jax
    y, h_n, c_n = fastrnn.jax.lstm(x, weights)             # weights: torch _flat_weights order
    y, h_n = fastrnn.jax.gru(x, weights, linear_before_reset=False)
    y, h_n = fastrnn.jax.rnn(x, weights, nonlinearity="relu")

Same arguments as the functional API (`fastrnn.lstm_forward` etc.): `x`, `weights`, `h0`
(and `c0`), `num_layers`, `bidirectional`, `batch_first`, `lengths`, `dropout`, `seed`,
`proj_size` (LSTM), `training`, `backend`, `linear_before_reset` (GRU), `nonlinearity` (RNN).
They return `(y, h_n, c_n)` for the LSTM and `(y, h_n)` for the GRU and RNN, as JAX arrays, and
are differentiable with respect to `x`, `weights`, `h0` and `c0` (reverse mode: `jax.grad`,
`jax.vjp`, `jax.jacrev`). Derivatives of those gradients (`jax.grad` of `jax.grad`,
`jax.hessian`) raise a NotImplementedError that says so: the backward is a host callback. They work eagerly, under `jax.jit` and under `jax.vmap` (one kernel call per batch
element). `training` only switches inter-layer dropout on, as in the functional API; gradients
are available either way. They work under JAX's default configuration (64-bit types off, so
float32 and int32 arrays) and with `jax_enable_x64` on (float64 too).

Dropout and `seed`
- Dropout acts between layers only, so it applies when `training` is true, `dropout > 0` and
  `num_layers > 1`. Then it needs an explicit `seed` (JAX has no global random state; the
  functional API would draw a fresh one): a Python or NumPy int, or an integer scalar array
  (for example `jax.random.bits(key)`), which may be traced. Where dropout does not apply
  (`num_layers=1`), `seed` may be left out, as in the functional API and torch.
- The functional API's seeds are the ints in [0, 2**64), the engine's uint64. A seed known when
  the function is called (an int, a NumPy integer or 0-d array, a JAX array that is not traced)
  is checked then, with the functional API's ValueError / TypeError naming `seed`. A traced seed
  has no value until the kernel runs, and an error raised there would reach the caller as an
  opaque XLA runtime error; so its value is read modulo 2**64 instead, as the engine's uint64
  reads it: every int32 / int64 / uint32 / uint64 value is a valid traced seed, and a negative
  one, s, gives the masks of the seed 2**64 + s (`jax.random.key` also takes any integer).
  The same value gives the same masks whatever its integer dtype.

How it is built, and what it costs
- Each function is a `jax.custom_vjp`. Its primal, forward and backward rules call
  `fastrnn._api` (never `_core`) through `jax.pure_callback`. That is a host round trip per
  call: XLA hands the operands to Python as jax.Arrays on the CPU (read here through DLPack,
  without a copy: `_host`), the GIL is taken, the kernel runs, and the results are copied back
  into XLA buffers. For RNN-sized work (a sequence of GEMMs) this is small next to the kernel,
  but it is a synchronisation point that XLA cannot fuse or overlap, and the arrays live in
  host memory: on a GPU JAX backend the data would cross to the host and back. The XLA FFI
  would avoid the Python round trip, but it needs a compiled handler built against XLA's FFI
  headers (`xla/ffi/api/*.h`, shipped in jaxlib: `jax.ffi.include_dir()`), so either jaxlib at
  build time or vendored headers; this adapter adds neither.
- What backward needs stays on the Python side: the forward rule's callback keeps the
  functional API's `saved` in a store (`_Store`) and hands XLA only a token (two uint32 words of
  a key that is never reused), which the backward rule's callback takes back. Carrying `saved`
  through XLA as arrays instead (the engine's reserve is T*B*(G+2)*H values a layer and
  direction, 23 MB at T=300, B=100, H=32) cost a copy of it into XLA's buffers after the
  forward callback, another into a jax.Array before the backward callback and a third into
  NumPy inside it: ~20 ms of a ~60-90 ms jit(value_and_grad) step at that size, 1 thread.
- XLA treats the callbacks as pure, so it may run a forward rule whose backward never runs (an
  unused gradient, a dropped vjp function, rematerialisation) and a backward more than once (a
  vjp function called twice, jax.jacrev's vmap over cotangents): the store is only a shortcut.
  The backward rule also receives the forward's inputs (x, weights, h0, c0, lengths, seed; no
  copies, XLA holds them anyway) and, when its token's entry is gone, runs the forward again
  from them (same seed, same dropout masks) before the backward. Entries not taken back are
  bounded (1 GiB and 1024 entries by default, `_store.max_bytes` and `_store.max_entries`; the
  oldest go first, the newest always stays), so abandoned forwards cannot grow memory without
  limit. The entry taken last stays until the next forward or until another entry is taken,
  so a backward repeated at once does not recompute.
- With `batch_first`, XLA swaps the batch and time axes of x and y around the callbacks and the
  kernels run time-major (`_apply`): XLA's transposes fuse with their neighbours or vanish,
  where the functional API's would be strided copies inside the callbacks.
- `pure_callback` needs the exact shapes and dtypes of its results when the function is traced.
  They are learnt by a *probe*: the functional API itself runs once on zeros of the real shapes
  and options, at trace time (`_probe`, cached per configuration). That costs one forward per new
  configuration and stays correct for every engine, where computing shapes here would duplicate
  the functional API's rules. The probe also validates the arguments, so a wrong shape or dtype
  raises the functional API's ValueError / TypeError, naming the argument, when the function is
  called or traced, not from inside XLA. Values known when the function is called are checked
  then too (lengths in [0, T], as the seed above); traced lengths are checked when the kernel
  runs: an out-of-range one fails there, inside the callback, as an XLA runtime error.
"""

import collections
import functools
import itertools
import numbers
import threading

import jax
import jax.numpy as jnp
import numpy as np

from . import _api

__all__ = ["lstm", "gru", "rnn"]

# cell name -> (gates G, functional forward, functional backward)
_CELLS = {
    "lstm": (4, _api.lstm_forward, _api.lstm_backward),
    "gru": (3, _api.gru_forward, _api.gru_backward),
    "rnn": (1, _api.rnn_forward, _api.rnn_backward),
}

# Everything static about one call (hashable: it is custom_vjp's non-differentiable argument).
#   options   sorted (name, value) keyword arguments for _api's forward, except `training`,
#             `dropout` and `seed`
#   dropout   the dropout _api applies: 0.0 unless training with num_layers > 1
#   seed      the static seed (int), or None when it is a traced operand
#   out       ShapeDtypeStructs of (y, h_n[, c_n])
_Spec = collections.namedtuple("_Spec", ["cell", "options", "dropout", "seed", "out", "has_h0",
                                         "has_c0"])


def _struct(a):
    return jax.ShapeDtypeStruct(tuple(a.shape), np.dtype(a.dtype))


def _zeros(struct):
    return None if struct is None else np.zeros(struct.shape, struct.dtype)


@functools.lru_cache(maxsize=256)
def _probe(cell, options, dropout, seed, x, weights, h0, c0, lengths):
    """Run the functional API once, on zeros of these shapes and dtypes (ShapeDtypeStructs);
    return the output structs. Raises the functional API's ValueError / TypeError for bad
    shapes, dtypes or options."""
    _, forward, _ = _CELLS[cell]
    kw = dict(options)
    if lengths is not None:  # any valid lengths: sizes do not depend on their values
        T = x.shape[1] if kw.get("batch_first") else x.shape[0]
        lengths = np.full(lengths.shape, T if len(lengths.shape) == 1 else 0, lengths.dtype)
    c = {"c0": _zeros(c0)} if cell == "lstm" else {}
    out = forward(_zeros(x), [_zeros(w) for w in weights], _zeros(h0), **c, lengths=lengths,
                  dropout=dropout, seed=seed if seed is not None else 0, training=True, **kw)
    outs = (out.y, out.h_n) + ((out.c_n,) if cell == "lstm" else ())
    return tuple(_struct(a) for a in outs)


# ----------------------------------------------------------------------------------------------
# The backward states of forward rules, kept on the Python side (module docstring)

# the token a forward rule hands to its backward rule: a uint64 key as two uint32 words, which
# XLA can hold with 64-bit types off; keys count up from 1 and are never reused in a process
_TOKEN = jax.ShapeDtypeStruct((2,), np.dtype(np.uint32))


class _Store:
    """The `saved` of forward rules whose backward has not run yet, keyed by their token.

    XLA may run a forward rule whose backward never runs (its gradient unused, a vjp function
    dropped, rematerialisation), and a backward more than once (a vjp function called again,
    jax.jacrev's vmap over cotangents). So an entry is only a shortcut: backward takes it when
    it is there and otherwise runs the forward again from the inputs it also receives (same
    seed, same masks). Pending entries are bounded (`max_bytes`, `max_entries`; the oldest go
    first, never the newest), so an abandoned one cannot grow memory without limit; a taken
    entry stays as the one `last` until the next forward or backward replaces it, for a
    backward repeated at once on the same token."""

    def __init__(self, max_bytes=1 << 30, max_entries=1024):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._lock = threading.Lock()
        self._pending = collections.OrderedDict()  # key -> (saved, bytes), oldest first
        self._bytes = 0
        self._last = None  # (key, saved) of the entry taken last
        self._keys = itertools.count(1)

    def put(self, saved):
        """Keep `saved`; return its token (uint32 words of a new key)."""
        _, arrays = _api._saved_to_arrays(saved)
        size = sum(int(getattr(a, "nbytes", 0)) for a in arrays)
        with self._lock:
            key = next(self._keys)
            self._last = None
            self._pending[key] = (saved, size)
            self._bytes += size
            while len(self._pending) > 1 and (self._bytes > self.max_bytes
                                              or len(self._pending) > self.max_entries):
                _, (_, dropped) = self._pending.popitem(last=False)
                self._bytes -= dropped
        return np.array([key & 0xFFFFFFFF, key >> 32], np.uint32)

    def take(self, token):
        """The `saved` behind `token`, or None when it is gone (evicted, or taken before and
        since replaced as `last`)."""
        words = np.asarray(token, np.uint64)
        key = int(words[0]) | int(words[1]) << 32
        with self._lock:
            if self._last is not None and self._last[0] == key:
                return self._last[1]
            entry = self._pending.pop(key, None)
            if entry is None:
                return None
            self._bytes -= entry[1]
            self._last = (key, entry[0])
            return entry[0]

    def clear(self):
        with self._lock:
            self._pending.clear()
            self._bytes, self._last = 0, None

    def __len__(self):
        with self._lock:
            return len(self._pending) + (self._last is not None)


_store = _Store()


# ----------------------------------------------------------------------------------------------
# The callbacks and the custom_vjp


def _seed_value(seed):
    """A traced seed's value as the engine reads it (a uint64): the integer modulo 2**64."""
    return int(seed) % 2**64


def _host(a):
    """A callback operand as a NumPy array without a copy (np.asarray would copy a jax.Array
    the first time: ~9 ms for 23 MB). Read-only: _api copies what it keeps or writes."""
    if a is None or isinstance(a, np.ndarray):
        return a
    return np.from_dlpack(a)


def _call_forward(spec, training, x, weights, h0, c0, lengths, seed):
    """The functional forward on host arrays (inside a callback)."""
    _, forward, _ = _CELLS[spec.cell]
    c = {"c0": _host(c0)} if spec.cell == "lstm" else {}
    return forward(_host(x), [_host(w) for w in weights], _host(h0), **c,
                   lengths=_host(lengths), dropout=spec.dropout,
                   seed=spec.seed if seed is None else _seed_value(seed), training=training,
                   **dict(spec.options))


def _outputs(spec, out):
    outs = (out.y, out.h_n) + ((out.c_n,) if spec.cell == "lstm" else ())
    return tuple(np.ascontiguousarray(a) for a in outs)


def _primal_callback(spec, x, weights, h0, c0, lengths, seed):
    # training=True only when dropout must apply; nothing is kept for backward
    out = _call_forward(spec, spec.dropout > 0, x, weights, h0, c0, lengths, seed)
    return _outputs(spec, out)


def _forward_callback(spec, x, weights, h0, c0, lengths, seed):
    out = _call_forward(spec, True, x, weights, h0, c0, lengths, seed)
    return _outputs(spec, out), _store.put(out.saved)


def _backward_callback(spec, token, inputs, cotangents):
    _, _, backward = _CELLS[spec.cell]
    saved = _store.take(token)
    if saved is None:  # evicted, or a repeated backward: the forward again, as it ran
        saved = _call_forward(spec, True, *inputs).saved
    grads = backward(saved, *[_host(c) for c in cotangents])
    result = [grads.dx]
    if spec.has_h0:
        result.append(grads.dh0)
    if spec.has_c0:
        result.append(grads.dc0)
    return (tuple(np.ascontiguousarray(a) for a in result),
            tuple(np.ascontiguousarray(w) for w in grads.dweights))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _run(spec, x, weights, h0, c0, lengths, seed):
    return jax.pure_callback(functools.partial(_primal_callback, spec), spec.out,
                             x, weights, h0, c0, lengths, seed, vmap_method="sequential")


def _run_fwd(spec, x, weights, h0, c0, lengths, seed):
    outs, token = _forward_kernels(spec, (x, weights, h0, c0, lengths, seed))
    return outs, (token, (x, weights, h0, c0, lengths, seed))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _forward_kernels(spec, inputs):
    """(outputs, token) of the training forward, a host callback; differentiated only through
    _run's custom_vjp. Where a gradient is itself differentiated, JAX asks this callback for a
    JVP: the rule says what is not supported (_no_second_order)."""
    return jax.pure_callback(functools.partial(_forward_callback, spec), (spec.out, _TOKEN),
                             *inputs, vmap_method="sequential")


@_forward_kernels.defjvp
def _(spec, primals, tangents):
    _no_second_order(spec)


def _run_bwd(spec, residuals, cotangents):
    token, inputs = residuals
    _, _, h0, c0, _, _ = inputs
    states, dweights = _backward_kernels(spec, token, inputs, tuple(cotangents))
    states = list(states)
    dx = states.pop(0)
    dh0 = states.pop(0) if h0 is not None else None
    dc0 = states.pop(0) if c0 is not None else None
    return dx, list(dweights), dh0, dc0, None, None


_run.defvjp(_run_fwd, _run_bwd)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _backward_kernels(spec, token, inputs, cotangents):
    """(state gradients, weight gradients) from the backward kernels, a host callback. Its
    derivative (a gradient of a gradient, jax.hessian) is not built: the custom_jvp rule says
    so (_no_second_order), where JAX would report only that pure callbacks have no JVP."""
    x, weights, h0, c0, _, _ = inputs
    state_structs = [_struct(x)] + [_struct(a) for a in (h0, c0) if a is not None]
    return jax.pure_callback(
        functools.partial(_backward_callback, spec),
        (tuple(state_structs), tuple(_struct(w) for w in weights)),
        token, inputs, cotangents, vmap_method="sequential")


@_backward_kernels.defjvp
def _(spec, primals, tangents):
    _no_second_order(spec)


def _no_second_order(spec):
    raise NotImplementedError(
        f"fastrnn.jax.{spec.cell}: derivatives of its gradients (jax.grad of jax.grad, "
        f"jax.hessian, jax.jacfwd of a gradient) are not supported: its backward runs fastrnn's "
        f"kernels in a host callback, which JAX cannot differentiate. First-order gradients "
        f"(jax.grad, jax.vjp, jax.jacrev) are; for second order use fastrnn.torch, whose "
        f"double backward is supported")


def _array(a, name):
    try:
        return jnp.asarray(a)
    except TypeError as exc:
        raise TypeError(f"{name}: expected an array, got {type(a).__name__} ({exc})") from None


def _seed_option(seed, dropout):
    """(static seed, traced seed operand): one of them is set. A seed known now (an int, a
    NumPy integer or 0-d array, a JAX array that is not traced) is checked now, as the functional
    API checks it; a traced one is read modulo 2**64 when the kernel runs (_seed_value)."""
    def expected(got):
        return TypeError(f"seed: expected an int or an integer scalar array, got {got}")

    if seed is None:
        if dropout > 0:
            raise ValueError("seed: expected an int or an integer scalar array when dropout "
                             "applies (dropout > 0, training and num_layers > 1; JAX has no "
                             "global random state), got None")
        return 0, None
    if isinstance(seed, jax.Array):
        if seed.shape != () or not jnp.issubdtype(seed.dtype, jnp.integer):
            raise expected(f"an array of shape {seed.shape} and dtype {seed.dtype}")
        if isinstance(seed, jax.core.Tracer):
            return None, seed
        _check_seed(int(seed))
        return None, seed  # an operand still: a new value is no new trace
    if not isinstance(seed, numbers.Integral):
        # NumPy arrays become Python ints, not JAX arrays: with 64-bit types off JAX would
        # silently wrap an int64 seed to 32 bits
        try:
            a = np.asarray(seed)
        except Exception:  # noqa: BLE001 - whatever NumPy cannot read is no seed
            raise expected(type(seed).__name__) from None
        if a.shape != () or a.dtype.kind not in "iu":
            raise expected(f"an array of shape {a.shape} and dtype {a.dtype}"
                           if isinstance(seed, np.ndarray) else type(seed).__name__)
        seed = a.item()
    return _check_seed(seed), None


def _check_seed(seed):
    """The functional API's rule for a seed: an int in [0, 2**64)."""
    seed = _api._int_option(seed, "seed", 0)
    if seed >= 2**64:
        raise ValueError(f"seed: expected an int in [0, 2**64), got {seed}")
    return seed


def _apply(cell, x, weights, h0, c0, dropout, seed, training, lengths, options):
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights: expected a list or tuple of arrays in torch _flat_weights "
                        f"order, got {type(weights).__name__}")
    x = _array(x, "x")
    weights = [_array(w, f"weights[{k}]") for k, w in enumerate(weights)]
    h0 = None if h0 is None else _array(h0, "h0")
    c0 = None if c0 is None else _array(c0, "c0")
    given_lengths, lengths = lengths, None if lengths is None else _array(lengths, "lengths")
    training = _api._bool_option(training, "training")
    dropout = _api._dropout_option(dropout)  # checked always; applied only when training
    num_layers = options["num_layers"]  # checked by the probe
    layered = isinstance(num_layers, numbers.Integral) and num_layers > 1
    dropout = dropout if training and layered else 0.0  # it acts between layers only
    static_seed, seed_operand = _seed_option(seed, dropout)
    options = tuple(sorted(options.items()))
    structs = (_struct(x), tuple(_struct(w) for w in weights),
               None if h0 is None else _struct(h0), None if c0 is None else _struct(c0),
               None if lengths is None else _struct(lengths))
    out = _probe(cell, options, dropout, static_seed, *structs)
    batch_first = bool(dict(options)["batch_first"])
    if lengths is not None and not isinstance(lengths, jax.core.Tracer):
        # known values are checked now, as a known seed is (the probe checked the shape)
        T, B = x.shape[:2][::-1] if batch_first else x.shape[:2]
        _api._lengths_array(given_lengths, T, B)
    if batch_first:
        # XLA swaps (B, T) and (T, B), and the kernels run time-major: a transpose there fuses
        # with what produces x and consumes y (or vanishes when y is unused: the Keras layers
        # with return_sequences=False), where NumPy's would be a strided copy in each callback
        # (y, dy, dx: 3.8 MB each at the Keras IMDB shape)
        options = tuple((k, False if k == "batch_first" else v) for k, v in options)
        y = out[0].shape
        out = (jax.ShapeDtypeStruct((y[1], y[0], *y[2:]), out[0].dtype), *out[1:])
        x = jnp.swapaxes(x, 0, 1)
    spec = _Spec(cell, options, dropout, static_seed, out, h0 is not None, c0 is not None)
    outs = _run(spec, x, weights, h0, c0, lengths, seed_operand)
    return (jnp.swapaxes(outs[0], 0, 1), *outs[1:]) if batch_first else outs


# ----------------------------------------------------------------------------------------------
# Public functions


def lstm(x, weights, h0=None, c0=None, *, num_layers=1, bidirectional=False, batch_first=False,
         lengths=None, dropout=0.0, seed=None, proj_size=0, training=False, backend=None):
    """LSTM (PyTorch/cuDNN maths, gate order i, f, g, o); arguments as `fastrnn.lstm_forward`.
    Returns (y, h_n, c_n); differentiable in x, weights, h0 and c0."""
    return _apply("lstm", x, weights, h0, c0, dropout, seed, training, lengths,
                  dict(num_layers=num_layers, bidirectional=bidirectional,
                       batch_first=batch_first, proj_size=proj_size, backend=backend))


def gru(x, weights, h0=None, *, num_layers=1, bidirectional=False, batch_first=False,
        lengths=None, dropout=0.0, seed=None, training=False, backend=None,
        linear_before_reset=True):
    """GRU (gate order r, z, n; `linear_before_reset` picks the variant); arguments as
    `fastrnn.gru_forward`. Returns (y, h_n); differentiable in x, weights and h0."""
    return _apply("gru", x, weights, h0, None, dropout, seed, training, lengths,
                  dict(num_layers=num_layers, bidirectional=bidirectional,
                       batch_first=batch_first, backend=backend,
                       linear_before_reset=linear_before_reset))


def rnn(x, weights, h0=None, *, num_layers=1, bidirectional=False, batch_first=False,
        lengths=None, dropout=0.0, seed=None, training=False, backend=None,
        nonlinearity="tanh"):
    """Elman RNN, h' = act(W_ih x + b_ih + W_hh h + b_hh); arguments as `fastrnn.rnn_forward`.
    Returns (y, h_n); differentiable in x, weights and h0."""
    return _apply("rnn", x, weights, h0, None, dropout, seed, training, lengths,
                  dict(num_layers=num_layers, bidirectional=bidirectional,
                       batch_first=batch_first, backend=backend, nonlinearity=nonlinearity))
