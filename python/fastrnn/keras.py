# SPDX-License-Identifier: MIT
"""Keras 3 LSTM / GRU / SimpleRNN layers that run fastrnn's kernels, forward and backward.

    import fastrnn.keras
    model = keras.Sequential([keras.Input((None,), dtype="int32"),
                              keras.layers.Embedding(20000, 32, mask_zero=True),
                              fastrnn.keras.LSTM(32),            # instead of keras.layers.LSTM
                              keras.layers.Dense(1, activation="sigmoid")])

What they are
- Subclasses of `keras.layers.LSTM`, `GRU` and `SimpleRNN`, so everything that is not the
  recurrence stays Keras' own code: the constructor and its arguments, the cell and its
  variables (same names, shapes, initialisers, regularisers, constraints, hence the same
  `get_weights` / `set_weights` lists, interchangeable with keras.layers' layers), `get_config`
  / `from_config`, serialisation (`model.save` / `keras.models.load_model`; the classes are
  registered as "fastrnn>LSTM", "fastrnn>GRU", "fastrnn>SimpleRNN"), masking plumbing, initial
  and stateful states, `return_sequences` / `return_state`, input dropout masks. Only
  `inner_loop` (the time loop of `keras.layers.RNN.call`) is replaced. That hook returns
  (last_output, outputs, states) exactly as keras.layers' own does, so `call`, states and
  `stateful` assignment around it are untouched.
- The recurrence is one call of fastrnn's kernel: on the torch backend the custom op
  `torch.ops.fastrnn.rnn_forward` of `fastrnn.torch` (autograd-aware: its backward runs
  fastrnn's backward kernel), on the JAX backend `fastrnn.jax.lstm / gru / rnn` (a
  `jax.custom_vjp`; it works under `jax.jit`, which Keras' JAX trainer uses).
- Keras' variables are converted to fastrnn's layout (docs/design.md) inside the traced computation,
  with backend ops (transpose, gate-block reorder, split), so gradients reach the Keras
  variables: Keras kernels are (I, G*H) and computed as `x @ kernel`, fastrnn's w_ih is
  (G*H, I); the LSTM gate order i, f, c, o is fastrnn's i, f, g, o; the GRU's z, r, h becomes
  r, z, n; Keras' single bias is b_ih with b_hh = 0, except the GRU with reset_after=True whose
  bias (2, 3H) is [b_ih, b_hh]. `reset_after=True` is fastrnn's `linear_before_reset=True`,
  `reset_after=False` is `linear_before_reset=False`. (`fastrnn.convert.from_keras` documents
  the same mapping for NumPy arrays; it is not used here because it is not differentiable.)
- The kernel runs in float64 when the layer's variables are float64 and in float32 otherwise:
  under a float16 / bfloat16 policy (mixed or not) the input, the weights (as Keras reads them
  in that policy) and the states are cast to float32, and `RNN.call` casts the results to the
  compute dtype, as it does for keras.layers' results.

Masks (from `Embedding(mask_zero=True)`, `Masking`, or given) become lengths
- Keras' semantics, for any mask: a masked step does not change the state, and its output is
  the previous step's output. So the valid steps of each sequence, taken in order, are what
  the recurrence sees. Here they are moved to the front of the sequence (a gather: valid steps
  in time order, then the masked ones), the kernel runs with `lengths` = the number of valid
  steps (fastrnn's padded steps neither advance the state nor matter), and each output step
  t is gathered back as the output of the last valid step at or before t. That is exact for
  right padding, left padding and holes alike, so no mask is rejected. Both gathers are
  differentiable. With a right-padded mask the first gather is the identity; on the torch
  backend (outside torch.compile) such a mask is recognised and the gather skipped, and with
  return_sequences=False the second one is not needed either.
- Before the first valid step, keras.layers' output differs between backends, and this layer
  follows the backend it runs on: zeros on torch (`keras.src.backend.torch.rnn`: the previous
  output starts at zero), the initial state h0 on JAX (`keras.src.backend.jax.rnn` repeats the
  state). With `zero_output_for_mask=True` (an argument of keras.layers.RNN, accepted here too)
  every masked step outputs zeros, as in keras.layers.
- The last output (return_sequences=False) is the last step's output under those rules: the
  output of the last valid step (h_n), or what precedes the first valid step if there is none.
- `go_backwards=True` flips the sequence and its mask along time first, as Keras does, and
  returns the outputs in that reversed order; a right-padded mask becomes left padding, which
  the gather above handles.

Options and what happens to them
- Run by the kernel: activation="tanh" with recurrent_activation="sigmoid" (LSTM, GRU);
  activation "tanh" or "relu" (SimpleRNN); use_bias True or False; both GRU reset_after values;
  `dropout` (Keras' input dropout: one mask per sequence and feature, drawn by the cell's own
  seed generator and applied to the input before the kernel, as keras.layers' LSTM and GRU do,
  so the same `seed` gives the same masks); initial_state, stateful, go_backwards,
  return_sequences, return_state; regularisers and constraints (they act on the variables).
- Accepted and without effect on the computation: `unroll` (a hint for Keras' own loop; the
  kernel's loop is already fused, and results are the same), `use_cudnn` (fastrnn's kernels
  run instead of cuDNN or Keras' loop, whatever its value) and `implementation` when dropout
  is 0 (both implementations compute the same maths).
- Rejected with a ValueError naming the argument, when the layer is made: other activations
  (custom ones included), `recurrent_dropout > 0` (a new mask on h inside every step, which
  the fused kernel does not have), and `implementation=1` with `dropout > 0` (one input mask
  per gate). Why an error and not a silent fallback to keras.layers' loop: on the torch
  backend that loop is 6-17x slower (below), and whoever chose fastrnn.keras should learn
  that from an error, not from a profile; keras.layers.LSTM / GRU / SimpleRNN take the same
  arguments and weights, so switching is a one-word change.

Backends, and what they gain
- torch (CPU; CUDA tensors only when fastrnn's CUDA path is built, otherwise a TypeError from
  `fastrnn.torch`, and never for the GRU with reset_after=False, which the op
  `torch.ops.fastrnn.rnn_forward` lacks: that GRU runs through a small autograd.Function over
  the functional API, on the CPU) and jax (CPU; see `fastrnn.jax` for the host round trip it
  costs).
- `python -m fastrnn bench --keras` times one training step (train_on_batch, Adam) of the
  Keras IMDB model, Embedding(20000, 32) -> LSTM(32) -> Dense(1), batch 100, 300 steps, one
  thread, with keras.layers.LSTM and with this LSTM (benchmarks/README.md has its results).
  On torch, Keras' own loop is 5-14x slower than fastrnn's kernel (its masked loop is faster
  than its unmasked one). On JAX, keras.layers' loop is a `lax.scan` that XLA compiles under
  jit and is already fast at this size, while fastrnn's kernel call crosses to the host and
  back through `jax.pure_callback` (fastrnn.jax under jit takes about twice the functional
  API's time): these layers then give Keras-exact results through fastrnn's kernels, not
  speed, until fastrnn.jax's call overhead shrinks.
- TensorFlow, and any other Keras backend: constructing a layer raises a RuntimeError that says
  so. fastrnn has no TensorFlow op, and a fallback to keras.layers' TensorFlow path (which
  would be correct and fast on a GPU through cuDNN) would mean the layer silently does not do
  what its name says. Use keras.layers there. A model saved with these layers loads into
  keras.layers (same configs and weights) in a process that has not imported fastrnn.keras with
      keras.models.load_model(path, custom_objects={"fastrnn>LSTM": keras.layers.LSTM,
                                                     "fastrnn>GRU": keras.layers.GRU,
                                                     "fastrnn>SimpleRNN": keras.layers.SimpleRNN})
  (once fastrnn.keras is imported, its registered classes take precedence over custom_objects
  and custom_object_scope: that is Keras' rule, `serialization_lib.deserialize_keras_object`).
"""

import keras
from keras import ops

__all__ = ["LSTM", "GRU", "SimpleRNN"]

_BACKENDS = ("torch", "jax")


def _backend():
    return keras.config.backend()


def _check_backend(cls_name):
    backend = _backend()
    if backend not in _BACKENDS:
        raise RuntimeError(
            f"fastrnn.keras.{cls_name} runs fastrnn's kernels on the Keras backends 'torch' and "
            f"'jax', but Keras runs on {backend!r} (KERAS_BACKEND); use keras.layers.{cls_name} "
            f"there (same arguments and weights), or set KERAS_BACKEND=torch or jax before "
            f"importing keras")


def _is(fn, *names):
    """Whether `fn` is one of Keras' activations `names` (keras.activations.X or keras.ops.X)."""
    return any(fn is getattr(keras.activations, n) or fn is getattr(ops, n) for n in names)


def _name(fn):
    return repr(getattr(fn, "__name__", fn))


def _check_options(layer, activations):
    """The options fastrnn's kernels cannot run (module docstring, "Options"): ValueError
    naming the argument. `activations`: the allowed names of `activation`."""
    cls, cell = type(layer).__name__, layer.cell
    if not _is(cell.activation, *activations):
        allowed = " or ".join(repr(a) for a in activations)
        raise ValueError(
            f"activation: fastrnn.keras.{cls} fuses activation={allowed} only, got "
            f"{_name(cell.activation)}; use keras.layers.{cls} for other activations")
    if hasattr(cell, "recurrent_activation") and not _is(cell.recurrent_activation, "sigmoid"):
        raise ValueError(
            f"recurrent_activation: fastrnn.keras.{cls} fuses recurrent_activation='sigmoid' "
            f"only, got {_name(cell.recurrent_activation)}; use keras.layers.{cls} for others")
    if cell.recurrent_dropout:
        raise ValueError(
            f"recurrent_dropout: fastrnn.keras.{cls} supports recurrent_dropout=0 only (the "
            f"fused kernel has no dropout on the recurrent state), got {cell.recurrent_dropout};"
            f" use keras.layers.{cls} for recurrent dropout")
    if getattr(cell, "implementation", 2) == 1 and cell.dropout:
        raise ValueError(
            f"implementation: fastrnn.keras.{cls} with dropout > 0 supports implementation=2 "
            f"only (one input mask for all gates), got implementation=1 (one mask per gate)")


# ----------------------------------------------------------------------------------------------
# Keras variables -> fastrnn's flat weights (docs/design.md), with backend ops (differentiable)


def _gate_blocks(a, order, axis):
    """The gate blocks of `a` along `axis`, reordered (block k of the result = block order[k])."""
    parts = ops.split(a, len(order), axis=axis)
    return ops.concatenate([parts[k] for k in order], axis=axis)


# fastrnn's gate k is Keras' gate _ORDER[cell][k]
_ORDER = {"lstm": [0, 1, 2, 3],  # Keras i, f, c, o == fastrnn i, f, g, o
          "gru": [1, 0, 2],      # Keras z, r, h -> fastrnn r, z, n
          "rnn": [0]}


def _flat_weights(cell_kind, cell, dtype):
    """[w_ih (G*H, I), w_hh (G*H, H), b_ih (G*H,), b_hh (G*H,)] (no biases without use_bias)
    from the Keras cell's variables."""
    order = _ORDER[cell_kind]
    kernel = ops.cast(cell.kernel, dtype)
    recurrent = ops.cast(cell.recurrent_kernel, dtype)
    weights = [ops.transpose(_gate_blocks(kernel, order, 1)),
               ops.transpose(_gate_blocks(recurrent, order, 1))]
    if not cell.use_bias:
        return weights
    bias = ops.cast(cell.bias, dtype)
    if len(bias.shape) == 2:  # GRU reset_after=True: [input bias, recurrent bias]
        return weights + [_gate_blocks(bias[0], order, 0), _gate_blocks(bias[1], order, 0)]
    b_ih = _gate_blocks(bias, order, 0)
    return weights + [b_ih, ops.zeros_like(b_ih)]


# ----------------------------------------------------------------------------------------------
# The kernel call, per backend: x (B, T, I) batch-first; h0, c0 (B, H); lengths (B,) or None.
# Returns y (B, T, H) (zero at padded steps), h_n, c_n (B, H) (c_n None unless LSTM).

def _run_torch(kind, x, weights, h0, c0, lengths):
    import torch

    from . import torch as fastrnn_torch  # registers torch.ops.fastrnn.rnn_forward

    fastrnn_torch._check_supported(x, "sequences")
    h0 = h0.unsqueeze(0)
    c0 = c0.unsqueeze(0) if c0 is not None else None
    if lengths is not None:
        lengths = lengths.to(torch.int64)
    keep_saved = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, h0, c0, *weights))
    y, h_n, c_n, _, _ = torch.ops.fastrnn.rnn_forward(
        x, weights, h0, c0, lengths, None, kind, 1, False, True, 0.0, 0,
        keep_saved)
    return y, h_n[0], (c_n[0] if kind == "lstm" else None)


def _torch_gru_before_reset():
    """A torch.autograd.Function for the GRU with reset_after=False (fastrnn's
    linear_before_reset=False), which the op `torch.ops.fastrnn.rnn_forward` does not offer
    (torch.nn has no such GRU). It calls the functional API directly and keeps its `saved` on
    the context; made on first use so that this module imports without torch."""
    global _GRU_BEFORE_RESET
    if _GRU_BEFORE_RESET is not None:
        return _GRU_BEFORE_RESET
    import numpy as np
    import torch

    from . import _api

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    class GruBeforeReset(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, h0, lengths, *weights):
            out = _api.gru_forward(
                x.detach().numpy(), [w.detach().numpy() for w in weights], h0.detach().numpy(),
                batch_first=True, lengths=None if lengths is None else lengths.numpy(),
                training=any(ctx.needs_input_grad),
                linear_before_reset=False)
            ctx.saved = out.saved
            return tensor(out.y), tensor(out.h_n)

        @staticmethod
        def backward(ctx, dy, dh_n):
            grads = _api.gru_backward(ctx.saved, dy.detach().numpy(), dh_n.detach().numpy())
            return (tensor(grads.dx), tensor(grads.dh0), None,
                    *[tensor(w) for w in grads.dweights])

    _GRU_BEFORE_RESET = GruBeforeReset
    return GruBeforeReset


_GRU_BEFORE_RESET = None


def _run_torch_gru_before_reset(x, weights, h0, lengths):
    from . import torch as fastrnn_torch

    fastrnn_torch._check_supported(x, "sequences")
    if x.device.type != "cpu":
        raise TypeError(f"sequences: fastrnn.keras.GRU with reset_after=False runs on CPU "
                        f"tensors only on the torch backend, got a tensor on {x.device}")
    if lengths is not None:
        lengths = lengths.cpu().long()
    y, h_n = _torch_gru_before_reset().apply(x, h0.unsqueeze(0), lengths, *weights)
    return y, h_n[0], None


def _run_jax(kind, x, weights, h0, c0, lengths, reset_after):
    from . import jax as fastrnn_jax

    if kind == "lstm":
        y, h_n, c_n = fastrnn_jax.lstm(x, weights, h0[None], c0[None], batch_first=True,
                                       lengths=lengths)
        return y, h_n[0], c_n[0]
    if kind == "gru":
        y, h_n = fastrnn_jax.gru(x, weights, h0[None], batch_first=True, lengths=lengths,
                                 linear_before_reset=reset_after)
    else:
        y, h_n = fastrnn_jax.rnn(x, weights, h0[None], batch_first=True, lengths=lengths,
                                 nonlinearity=kind[4:])
    return y, h_n[0], None


# ----------------------------------------------------------------------------------------------
# Masks -> lengths (module docstring, "Masks")


def _compact(x, valid):
    """x (B, T, I) with each sequence's valid steps (valid: (B, T) int32, 1 = valid) moved to
    the front, in time order."""
    B, T = ops.shape(valid)
    # where step t goes: a valid one to (valid steps before it), a masked one after the valid
    # steps, to lengths + (masked steps before it); the gather's order is that permutation
    # inverted, by a scatter (the stable argsort of these keys gives the same order, but on JAX
    # XLA's CPU sort took 4 ms at B=100, T=300, against 0.6 ms)
    cnt = ops.cumsum(valid, axis=1)                                     # B,T
    t = ops.expand_dims(ops.arange(T, dtype="int32"), 0)                # 1,T
    dest = ops.where(valid > 0, cnt - 1, cnt[:, -1:] + t - cnt)         # B,T
    rows = ops.broadcast_to(ops.expand_dims(ops.arange(B, dtype="int32"), 1), (B, T))
    index = ops.stack([ops.reshape(rows, (-1,)), ops.reshape(dest, (-1,))], axis=1)
    order = ops.scatter(index, ops.reshape(ops.broadcast_to(t, (B, T)), (-1,)), (B, T))  # B,T
    return ops.take_along_axis(x, ops.expand_dims(order, -1), axis=1)   # B,T,I


def _right_padded(mask):
    """True when `mask` (B, T) is known to be right padding (valid steps first: the gather of
    `_compact` is the identity and is skipped). Known only on the torch backend outside
    torch.compile, where reading a value costs nothing; elsewhere False (compiled torch: the
    gather runs; JAX decides inside XLA, with a cond)."""
    if _backend() != "torch":
        return False
    import torch

    if torch.compiler.is_compiling():
        return False
    return not bool(torch.any(mask[:, 1:] & ~mask[:, :-1]))


def _expand(y, cnt, before):
    """Outputs (B, T, H) in the original time order: step t gets y[cnt[t] - 1] (the output of
    the last valid step at or before t), or `before` (B, H) where no step is valid yet."""
    y = ops.concatenate([ops.expand_dims(before, 1), y], axis=1)      # B,T+1,H
    return ops.take_along_axis(y, ops.expand_dims(cnt, -1), axis=1)    # B,T,H


class _FastRNN:
    """The `inner_loop` shared by the three layers (a mixin placed before the Keras class)."""

    _cell_kind = None  # "lstm", "gru", "rnn"

    def _kernel_kind(self):
        if self._cell_kind == "rnn":
            return "rnn_relu" if _is(self.cell.activation, "relu") else "rnn_tanh"
        return self._cell_kind

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        states = initial_state if isinstance(initial_state, (list, tuple)) else [initial_state]
        # float64 layers run in float64; all others in float32 (the kernels' CPU dtypes)
        dtype = "float64" if self.variable_dtype == "float64" else "float32"
        x = ops.cast(sequences, dtype)
        if training and cell.dropout:
            # the mask RNN.call prepared for this call (_maybe_config_dropout_masks), as
            # keras.layers' LSTM/GRU use it: one per sequence and feature, for all steps
            dp_mask = cell.get_dropout_mask(sequences[:, 0, :])
            x = x * ops.expand_dims(ops.cast(dp_mask, dtype), 1)
        h0 = ops.cast(states[0], dtype)
        c0 = ops.cast(states[1], dtype) if self._cell_kind == "lstm" else None
        if mask is not None:
            mask = ops.cast(mask, "bool")
        if self.go_backwards:
            x = ops.flip(x, axis=1)
            mask = None if mask is None else ops.flip(mask, axis=1)

        lengths = valid = None
        if mask is not None:
            valid = ops.cast(mask, "int32")                                 # B,T
            lengths = ops.sum(valid, axis=1)                                # B
            if _backend() == "jax":
                # the mask is traced: XLA runs one branch of a cond, so right padding skips
                # the gather (and the scatter that is its gradient)
                x_in = x
                x = ops.cond(ops.all(valid[:, 1:] <= valid[:, :-1]), lambda: x_in,
                             lambda: _compact(x_in, valid))
            elif not _right_padded(mask):
                x = _compact(x, valid)
        weights = _flat_weights(self._cell_kind, cell, dtype)
        kind = self._kernel_kind()
        if _backend() == "torch":
            if kind == "gru" and not cell.reset_after:
                y, h_n, c_n = _run_torch_gru_before_reset(x, weights, h0, lengths)
            else:
                y, h_n, c_n = _run_torch(kind, x, weights, h0, c0, lengths)
        else:
            y, h_n, c_n = _run_jax(kind, x, weights, h0, c0, lengths,
                                   getattr(cell, "reset_after", True))
        new_states = [h_n, c_n] if c_n is not None else [h_n]

        if mask is None:
            last = h_n
            outputs = y if self.return_sequences else ops.expand_dims(last, 1)
            return last, outputs, new_states
        # before the first valid step: zeros on torch, h0 on JAX (keras.layers' own choice)
        before = ops.zeros_like(h0) if _backend() == "torch" else h0
        if self.zero_output_for_mask:
            last = ops.where(ops.expand_dims(mask[:, -1], -1), h_n, ops.zeros_like(h_n))
        else:
            last = ops.where(ops.expand_dims(lengths > 0, -1), h_n, before)
        if not self.return_sequences:
            return last, ops.expand_dims(last, 1), new_states
        outputs = _expand(y, ops.cumsum(valid, axis=1), before)
        if self.zero_output_for_mask:
            outputs = ops.where(ops.expand_dims(mask, -1), outputs, ops.zeros_like(outputs))
        return last, outputs, new_states


# ----------------------------------------------------------------------------------------------
# The layers


@keras.saving.register_keras_serializable(package="fastrnn", name="LSTM")
class LSTM(_FastRNN, keras.layers.LSTM):
    """keras.layers.LSTM running fastrnn's kernels: same arguments, weights, config, inputs
    and outputs (module docstring: activation 'tanh', recurrent_activation 'sigmoid',
    recurrent_dropout 0)."""

    _cell_kind = "lstm"

    def __init__(self, units, *args, **kwargs):
        _check_backend("LSTM")
        super().__init__(units, *args, **kwargs)
        _check_options(self, ("tanh",))


@keras.saving.register_keras_serializable(package="fastrnn", name="GRU")
class GRU(_FastRNN, keras.layers.GRU):
    """keras.layers.GRU running fastrnn's kernels (reset_after True or False): same arguments,
    weights, config, inputs and outputs (module docstring: activation 'tanh',
    recurrent_activation 'sigmoid', recurrent_dropout 0)."""

    _cell_kind = "gru"

    def __init__(self, units, *args, **kwargs):
        _check_backend("GRU")
        super().__init__(units, *args, **kwargs)
        _check_options(self, ("tanh",))


@keras.saving.register_keras_serializable(package="fastrnn", name="SimpleRNN")
class SimpleRNN(_FastRNN, keras.layers.SimpleRNN):
    """keras.layers.SimpleRNN running fastrnn's kernels: same arguments, weights, config,
    inputs and outputs (module docstring: activation 'tanh' or 'relu', recurrent_dropout 0)."""

    _cell_kind = "rnn"

    def __init__(self, units, *args, **kwargs):
        _check_backend("SimpleRNN")
        super().__init__(units, *args, **kwargs)
        _check_options(self, ("tanh", "relu"))
