# SPDX-License-Identifier: MIT
"""Drop-in torch.nn.LSTM / GRU / RNN that run fastrnn's kernels, forward and backward.

    from fastrnn.torch import LSTM            # instead of torch.nn.LSTM
    lstm = fastrnn.torch.from_torch(module)   # or convert a module you have, with its weights

Same constructor arguments, parameters, `state_dict` keys, inputs (a Tensor, unbatched 2-D or
batched 3-D, or a PackedSequence; optional initial state) and outputs as torch.nn. CPU tensors of
float32 or float64, and CUDA tensors of float32, float64, float16 or bfloat16 when fastrnn's CUDA
path is built and a GPU is visible; anything else is a TypeError naming the argument
(`_check_supported`).

How it is built
- The modules subclass `torch.nn.RNNBase`, the class that holds all of torch.nn's parameter
  handling: the constructor and its checks, parameter names, shapes and initialisation,
  `_flat_weights`, `.to()`, `flatten_parameters`, repr and old-pickle support. That makes the
  parameters and `state_dict` identical by construction rather than by copy. They do *not*
  subclass torch.nn.LSTM/GRU/RNN themselves: Dynamo deliberately graph-breaks on any instance of
  those three classes (torch/_dynamo/variables/builder.py, `config.allow_rnn=False`), so
  `torch.compile(fullgraph=True)` would fail. The few LSTM-specific checks (cell-state shape,
  hidden-state permutation) are torch.nn.LSTM's own functions, borrowed, so error messages match.
- `forward` does what torch.nn's does (unbatched input, PackedSequence order, hx checks), then
  calls one custom op. PackedSequence data are padded (time-major, longest first) and the
  lengths handed to the kernels; the output is packed again with the caller's indices.
- Kernels are `torch.library` custom ops, `fastrnn::rnn_forward` and `fastrnn::rnn_backward`,
  with fake (meta) implementations and `register_autograd` (which wraps them in a
  torch.autograd.Function), so autograd, `torch.compile(fullgraph=True)` and
  DistributedDataParallel see ordinary ops. They call `fastrnn._api` only (STYLE 12), on NumPy
  views of CPU tensors (`tensor.detach().numpy()`, `torch.from_numpy`) and on CUDA tensors
  themselves: no copies at the boundary. Under torch.compile a PackedSequence still graph-breaks, in torch's own
  pad_packed_sequence (Dynamo skips torch.nn.utils.rnn; torch.nn's RNNs cannot compile it either).
- A plain eager call (plain tensors, nothing compiling, tracing or transforming it) runs the
  ops' Python bodies through `_Direct`, an autograd.Function with the same setup_context and
  backward: the custom ops' first call in a process imports torch._dynamo (torch wraps their
  kernels in torch._disable_dynamo), which put 1.4-3.4 s before a training script's first
  forward. Everything else (torch.compile, export, torch.func, modes) sees the ops.
- What backward needs crosses from one op to the other as tensors: `_api._saved_to_arrays` turns
  the functional API's `saved` into JSON metadata (carried as a uint8 tensor) and a list of
  arrays (carried 1-D), and `_api._saved_from_arrays` rebuilds it; nothing is recomputed. Their
  sizes depend on the engine, so the fake implementation gives them data-dependent sizes; their
  number and dtypes it learns once per configuration from a forward on a tiny problem.
- Double backward (`create_graph=True`, gradgradcheck): the fused backward is not itself
  differentiable, so when a backward must build a graph (grad mode on inside it, something
  requiring grad) `_backward` re-runs the forward from the op's own inputs as torch ops
  (`_torch_composite`: the same equations, lengths and dropout masks) and returns that
  composite's vector-Jacobian product with create_graph=True, as torch.nn's CPU path does;
  it costs that path's time and memory. An ordinary backward never comes there. The inputs
  are kept on the context, not saved: the fused backward reads fastrnn's copies and ignores
  in-place changes to them after the forward, as before; the composite checks their version
  counters and names one that changed.
- Inference on the CPU runs a prepared network (`fastrnn.prepare`) kept on the module, so a
  call neither packs the weights again nor goes through the custom op's dispatch. It is used
  when nothing needs a gradient (`torch.no_grad()`, `torch.inference_mode()`, or no input and
  no parameter requires grad), dropout is off, every tensor is a plain CPU tensor, and nothing
  records or transforms the call (torch.compile, torch.jit.trace, torch.func transforms,
  dispatch and torch-function modes get the custom op, as before). The network is made on
  the second call with the same weights (preparing costs about ten calls) and made again
  when a weight changes in a way torch sees: every call compares each weight's `_version`
  (bumped by in-place changes: optimizer steps, `load_state_dict`, `with torch.no_grad():
  w += 1`), `data_ptr()` (`.to()`, `.double()`, a new Parameter, `w.data = ...`), dtype,
  shape and stride with those it was made from. Writes that torch does not count, through
  `w.data.add_(...)` or a NumPy view of a weight, are not seen: call
  `module.flatten_parameters()` after them. Outputs are the custom op's inference outputs,
  bitwise where both run the same products (float64; float32 where the op packs its weights
  too: T >= 2 with B >= 4 or T*B >= 16, or several threads), else within float32 rounding (the
  op multiplies 1-3 rows by BLAS gemv, the network by its packed panels). Threads calling one
  module at once take turns on its network (the op ran them side by side): give each thread
  its own `copy.deepcopy` of the module. Deep copies and pickles start without the network.
- `set_weights_dtype("bfloat16" | "int8")` (and `quantize_dynamic`, which swaps the drop-ins
  into a model) makes that path run on a narrow copy of the weights (`fastrnn.prepare`'s
  weights_dtype), prepared on the first call; calls the path cannot take then raise.
- torch.func (vmap, grad, vjp, jacrev, per-sample gradients, ensembles) goes through
  `_torch_vmap`: an autograd.Function that torch.func accepts (it refuses register_autograd's)
  and `register_vmap` batching rules for both ops; vmapped inference is one kernel call on the
  slices folded into the batch, a gradient inside vmap one forward and one backward per slice.
- `torch.onnx.export(..., dynamo=True)` writes the modules as standard ONNX LSTM/GRU/RNN nodes
  with dynamic batch and length, not the custom op (python/fastrnn/_torch_onnx.py).
- Dropout (training mode, between layers) draws its seed from torch's generator, so
  `torch.manual_seed` makes runs reproducible; the masks are fastrnn's, not torch's, so the
  same seed does not give torch.nn's masks.
"""

import copy
import functools
import json
import warnings
from typing import Optional

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _api, _backends, _prepared, _torch_onnx

__all__ = ["LSTM", "GRU", "RNN", "from_torch", "quantize_dynamic"]

# cell -> (gates G, functional forward, functional backward, fixed keyword arguments)
_CELLS = {
    "lstm": (4, _api.lstm_forward, _api.lstm_backward, {}),
    "gru": (3, _api.gru_forward, _api.gru_backward, {}),
    "rnn_tanh": (1, _api.rnn_forward, _api.rnn_backward, {"nonlinearity": "tanh"}),
    "rnn_relu": (1, _api.rnn_forward, _api.rnn_backward, {"nonlinearity": "relu"}),
}
_CELL_OF_MODE = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


_HOST_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Why fastrnn's CUDA path cannot run (None when it can), looked up once: a constant is what
# torch.compile can trace through without a graph break.
_CUDA_UNAVAILABLE = _backends.cuda_module()[1]


def _check_supported(tensor, name):
    """The one gate on what the kernels accept from torch: CPU tensors of float32/float64, and
    CUDA tensors of float32/float64/float16/bfloat16 when fastrnn's CUDA path is available."""
    if isinstance(tensor, torch.Tensor) and tensor.is_cpu and tensor.dtype in _HOST_DTYPES:
        return  # the common case first: `tensor.device` builds an object, 2 us a tensor
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type == "cuda":
        if _CUDA_UNAVAILABLE is not None:
            raise TypeError(
                f"{name}: a tensor on {tensor.device}, but fastrnn's CUDA path is not available "
                f"({_CUDA_UNAVAILABLE}); move it with .cpu() or use torch.nn")
        if tensor.dtype not in _CUDA_DTYPES:
            raise TypeError(f"{name}: expected dtype torch.float32, float64, float16 or bfloat16 "
                            f"on CUDA, got {tensor.dtype}")
        return
    if tensor.device.type != "cpu":
        raise TypeError(f"{name}: expected a tensor on the CPU or a CUDA device, got one on "
                        f"{tensor.device}")
    if tensor.dtype not in _HOST_DTYPES:
        raise TypeError(
            f"{name}: expected dtype torch.float32 or torch.float64 on the CPU, got {tensor.dtype}")


# ----------------------------------------------------------------------------------------------
# Shapes the fake implementations need (the layout of docs/design.md)


def _weight_shapes(G, I, H, P, L, D, bias):
    """Shapes of the flat torch-order weight list."""
    Hout = P or H
    shapes = []
    for layer in range(L):
        for _ in range(D):
            shapes += [(G * H, I if layer == 0 else D * Hout), (G * H, Hout)]
            shapes += [(G * H,), (G * H,)] if bias else []
            shapes += [(P, H)] if P else []
    return shapes


def _has_bias(weights, L, D, P):
    return len(weights) // (L * D) - (P > 0) == 4  # per layer-direction: w_ih, w_hh, [b, b], [w_hr]


def _empty_sequence(like, T, B, F, batch_first):
    """An uninitialised (T, B, F) array, or its (B, T, F) view with batch_first: the layout in
    which the ops return sequences (and which `_sequence_layout` gives the real results)."""
    y = like.new_empty((T, B, F))
    return y.transpose(0, 1) if batch_first else y


def _sequence_layout(a, batch_first):
    """`a` ((T, B, F), or (B, T, F) with batch_first) as a view of a C-contiguous (T, B, F)
    array, the layout `_empty_sequence` promises; copies only if it is not one already.
    NumPy (CPU engine) or a torch tensor (CUDA engine)."""
    if isinstance(a, torch.Tensor):
        return a.contiguous() if not batch_first else a.transpose(0, 1).contiguous().transpose(0, 1)
    if not batch_first:
        return np.ascontiguousarray(a)
    return np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)


_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                 np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32,
                 np.dtype(np.bool_): torch.bool, np.dtype(np.uint8): torch.uint8}


@functools.lru_cache(maxsize=None)
def _saved_dtypes(cell, L, bidirectional, bias, proj, has_lengths, dropout, dtype, device):
    """The torch dtypes of the arrays a training forward saves with these options (the fake
    forward's shape function). _api promises that their number and dtypes do not depend on the
    sizes, so one forward on a tiny problem (1 step, batch 1, I=1, H=2) on the same kind of
    device tells."""
    G, forward, _, options = _CELLS[cell]
    D = 2 if bidirectional else 1
    if device == "cpu":
        def zeros(shape):
            return np.zeros(shape, _NUMPY_DTYPES[dtype])
    else:
        def zeros(shape):
            return torch.zeros(shape, dtype=dtype, device=device)
    kw = dict(options, proj_size=int(proj)) if cell == "lstm" else options
    # called while tracing: the tiny forward must run on real tensors, not fake ones
    with torch._subclasses.fake_tensor.unset_fake_temporarily():
        weights = [zeros(s) for s in _weight_shapes(G, 1, 2, int(proj), L, D, bias)]
        out = forward(zeros((1, 1, 1)), weights, num_layers=L, bidirectional=bidirectional,
                      lengths=[1] if has_lengths else None, dropout=0.5 if dropout else 0.0,
                      seed=0, training=True, **kw)
    _, arrays = _api._saved_to_arrays(out.saved)
    return tuple(a.dtype if isinstance(a, torch.Tensor) else _TORCH_DTYPES[a.dtype] for a in arrays)


# ----------------------------------------------------------------------------------------------
# NumPy <-> torch without copies, and the no-aliasing rule of custom ops


def _numpy(t):
    """What the functional API gets: a NumPy view of a CPU tensor, the CUDA tensor itself."""
    if t is None:
        return None
    return t.detach() if t.is_cuda else t.detach().numpy()


def _host(t):
    """A NumPy view of a CPU tensor (None stays None): the eager inference path's input."""
    if t is None:
        return None
    return (t.detach() if t.requires_grad else t).numpy()


def _tensor(a):
    if isinstance(a, torch.Tensor):
        return a
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _empty_like_dtype(a):
    """A 0-element array of a's dtype and kind (the c_n / dc0 placeholder of GRU and RNN)."""
    if isinstance(a, torch.Tensor):
        return a.new_empty(0)
    return np.zeros(0, a.dtype)


def _dense(a):
    return a.contiguous() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)


def _private(outputs, inputs):
    """`outputs` (dense tensors), each cloned if its memory overlaps an input's storage or
    another output: a custom op's outputs may alias neither. In practice only `lengths` is
    ever cloned (_api returns fresh arrays and copies the x and weights it saves). Plain
    Python over the byte ranges: a handful of tensors, where NumPy's set-up cost 30 us a call."""
    ins = []  # [start, end) of each input's storage
    for t in inputs:
        if t is not None:
            s = t.untyped_storage()
            start = s.data_ptr()
            ins.append((start, start + s.nbytes()))
    clash = []
    for t in outputs:
        start = t.data_ptr()
        end = start + t.nbytes
        clash.append(end > start and any(a < end and start < b for a, b in ins))
    # outputs among themselves: in order of start, one starting before an earlier one ends
    # (empty outputs alias nothing)
    order = sorted((k for k, t in enumerate(outputs) if t.nbytes),
                   key=lambda k: outputs[k].data_ptr())
    reach = None
    for k in order:
        start = outputs[k].data_ptr()
        if reach is not None and start < reach:
            clash[k] = True
        end = start + outputs[k].nbytes
        reach = end if reach is None else max(reach, end)
    return [t.clone() if bad else t for t, bad in zip(outputs, clash)]


# ----------------------------------------------------------------------------------------------
# The custom ops. Static options are plain arguments; everything else is a Tensor.


def _forward_impl(
    x: torch.Tensor, weights: list[torch.Tensor], h0: Optional[torch.Tensor],
    c0: Optional[torch.Tensor], lengths: Optional[torch.Tensor], seed: Optional[torch.Tensor],
    cell: str, num_layers: int, bidirectional: bool, batch_first: bool, dropout: float,
    proj_size: int, keep_saved: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Returns (y, h_n, c_n (empty unless LSTM), meta (uint8 JSON), saved arrays (1-D));
    meta and saved are empty unless keep_saved (what backward needs)."""
    _, forward, _, options = _CELLS[cell]
    kw = dict(options, proj_size=proj_size) if cell == "lstm" else options
    states = (_numpy(h0), _numpy(c0)) if cell == "lstm" else (_numpy(h0),)
    out = forward(_numpy(x), [_numpy(w) for w in weights], *states, num_layers=num_layers,
                  bidirectional=bidirectional, batch_first=batch_first, lengths=_numpy(lengths),
                  dropout=dropout, seed=None if seed is None else int(seed.item()),
                  training=keep_saved or dropout > 0, **kw)  # dropout runs only when training
    y = _sequence_layout(out.y, batch_first)
    c_n = out.c_n if cell == "lstm" else _empty_like_dtype(y)
    results = [_tensor(y), _tensor(out.h_n), _tensor(c_n)]
    inputs = (x, h0, c0, lengths, *weights)
    if not keep_saved:
        return (*_private(results, inputs), torch.empty(0, dtype=torch.uint8), [])
    meta, arrays = _api._saved_to_arrays(out.saved)
    arrays = [_dense(a) for a in arrays]
    shapes = [list(a.shape) for a in arrays]
    blob = bytearray(json.dumps({"saved": meta, "shapes": shapes}).encode())
    y, h_n, c_n, *saved = _private(results + [_tensor(a.reshape(-1)) for a in arrays], inputs)
    # meta lives on x's device like every other output (the fake implementation says so)
    return y, h_n, c_n, torch.frombuffer(blob, dtype=torch.uint8).to(x.device), saved


_forward_op = torch.library.custom_op("fastrnn::rnn_forward", _forward_impl, mutates_args=())


@_forward_op.register_fake
def _(x, weights, h0, c0, lengths, seed, cell, num_layers, bidirectional, batch_first, dropout,
      proj_size, keep_saved):
    G = _CELLS[cell][0]
    B, T = x.shape[:2] if batch_first else x.shape[1::-1]
    D, H = 2 if bidirectional else 1, weights[0].shape[0] // G
    Hout = proj_size or H
    y = _empty_sequence(x, T, B, D * Hout, batch_first)
    h_n = x.new_empty((num_layers * D, B, Hout))
    c_n = x.new_empty((num_layers * D, B, H) if cell == "lstm" else (0,))
    if not keep_saved:
        return y, h_n, c_n, x.new_empty((0,), dtype=torch.uint8), []
    ctx = torch.library.get_ctx()  # sizes of what is saved are the engine's business
    bias = _has_bias(weights, num_layers, D, proj_size)
    dtypes = _saved_dtypes(cell, num_layers, bidirectional, bias, proj_size > 0,
                           lengths is not None, dropout > 0, x.dtype, x.device.type)
    meta = x.new_empty((ctx.new_dynamic_size(),), dtype=torch.uint8)
    return y, h_n, c_n, meta, [x.new_empty((ctx.new_dynamic_size(),), dtype=dt) for dt in dtypes]


def _backward_impl(
    meta: torch.Tensor, saved: list[torch.Tensor], dy: torch.Tensor,
    dh_n: Optional[torch.Tensor], dc_n: Optional[torch.Tensor], cell: str, num_layers: int,
    bidirectional: bool, batch_first: bool, input_size: int, hidden_size: int, bias: bool,
    proj_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Returns (dx, dh0, dc0 (empty unless LSTM), dweights in _flat_weights order)."""
    if meta.numel() == 0:
        raise RuntimeError("fastrnn::rnn_backward: the forward ran with keep_saved=False")
    info = json.loads(meta.cpu().numpy().tobytes())
    arrays = [_numpy(t).reshape(shape) for t, shape in zip(saved, info["shapes"])]
    state = _api._saved_from_arrays(info["saved"], arrays)
    backward = _CELLS[cell][2]
    grads = [_numpy(dy), _numpy(dh_n)] + ([_numpy(dc_n)] if cell == "lstm" else [])
    g = backward(state, *grads)
    dc0 = g.dc0 if cell == "lstm" else _empty_like_dtype(g.dh0)
    outs = [_sequence_layout(g.dx, batch_first), g.dh0, dc0]
    outs += [_dense(w) for w in g.dweights]
    dx, dh0, dc0, *dweights = _private([_tensor(a) for a in outs], (meta, *saved, dy, dh_n, dc_n))
    return dx, dh0, dc0, dweights


_backward_op = torch.library.custom_op("fastrnn::rnn_backward", _backward_impl, mutates_args=())


@_backward_op.register_fake
def _(meta, saved, dy, dh_n, dc_n, cell, num_layers, bidirectional, batch_first, input_size,
      hidden_size, bias, proj_size):
    G = _CELLS[cell][0]
    B, T = dy.shape[:2] if batch_first else dy.shape[1::-1]
    D, H = 2 if bidirectional else 1, hidden_size
    dx = _empty_sequence(dy, T, B, input_size, batch_first)
    dh0 = dy.new_empty((num_layers * D, B, proj_size or H))
    dc0 = dy.new_empty((num_layers * D, B, H) if cell == "lstm" else (0,))
    shapes = _weight_shapes(G, input_size, H, proj_size, num_layers, D, bias)
    return dx, dh0, dc0, [dy.new_empty(s) for s in shapes]


def _setup_context(ctx, inputs, output):
    x, weights, h0, c0, lengths, seed, cell, L, bidirectional, batch_first, dropout, P, _ = inputs
    _, _, _, meta, saved = output
    D = 2 if bidirectional else 1
    ctx.options = (cell, L, bidirectional, batch_first, x.shape[-1],
                   weights[0].shape[0] // _CELLS[cell][0], _has_bias(weights, L, D, P), P)
    ctx.y_shape, ctx.dtype, ctx.device = output[0].shape, x.dtype, x.device
    ctx.has_state = (h0 is not None, c0 is not None)
    ctx.save_for_backward(meta, *saved)
    ctx.set_materialize_grads(False)
    # The op's own inputs too, for a backward that must itself be differentiable (see
    # _backward): references, not copies, kept on ctx rather than saved. Saving them would
    # make changing one in place between forward and backward an error for every backward
    # (torch.nn's behaviour, and Keras's torch backend does change its state tensors so),
    # where the fused backward reads fastrnn's own copies and does not care. Their versions
    # are kept instead, and only the composite checks them.
    ctx.inputs = (x, *weights, h0, c0, lengths, seed)
    ctx.versions = tuple(_version_of(t) for t in ctx.inputs)
    ctx.composite_options = (cell, L, bidirectional, batch_first, dropout, P)


def _version_of(t):
    """t's version counter, or None where it has none to read: None, inference tensors (reading
    theirs throws a C++ exception, which a process under the ASan runtime cannot survive) and
    the tracing subclasses of torch.compile (which never reaches the composite)."""
    if t is None or type(t) not in _PLAIN_TYPES or t.is_inference():
        return None
    return t._version


def _backward(ctx, dy, dh_n, dc_n, _dmeta, _dsaved):
    meta, *saved = ctx.saved_tensors
    cell = ctx.options[0]
    has_h0, has_c0 = ctx.has_state
    rest = (None,) * 9  # lengths, seed and the static options
    legacy_vmap = any(t is not None and torch._C._functorch.is_legacy_batchedtensor(t)
                      for t in (dy, dh_n, dc_n))
    if legacy_vmap or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (*ctx.inputs, dy, dh_n, dc_n))):
        # create_graph=True: the gradients must be differentiable in the inputs and in dy,
        # dh_n, dc_n. The fused kernels are not, so differentiate the same forward written in
        # torch ops (_torch_composite) from the op's inputs; the first backward of an ordinary
        # training step (grad mode off) never comes here. So do cotangents batched by torch's
        # legacy vmap (gradcheck's check_batched_grad): it knows torch.library's batching
        # rules no more than it knows the kernels, and the torch ops it batches.
        dx, dweights, dh0, dc0 = _composite_backward(ctx, dy, dh_n, dc_n)
        return dx, dweights, dh0 if has_h0 else None, dc0 if has_c0 else None, *rest
    if dy is None:  # only h_n / c_n were used
        dy = torch.zeros(ctx.y_shape, dtype=ctx.dtype, device=ctx.device)
    # the op, or its body where the forward called its body (_Direct) and nothing transforms
    # this backward (torch.func's vmap of the cotangents: the op has the rule)
    direct = getattr(ctx, "direct", False) and _direct_call((dy, dh_n, dc_n))
    backward = _backward_impl if direct else _backward_op
    dx, dh0, dc0, dweights = backward(meta, saved, dy, dh_n, dc_n if cell == "lstm" else None,
                                      *ctx.options)
    return dx, list(dweights), dh0 if has_h0 else None, dc0 if has_c0 else None, *rest


def _composite_backward(ctx, dy, dh_n, dc_n):
    """(dx, dweights, dh0, dc0) as a differentiable graph: the vector-Jacobian product of
    _torch_composite.forward at the op's inputs, with create_graph=True. A None is a zero
    gradient (an input that needs none, or one the outputs do not depend on)."""
    from . import _torch_composite  # imported on first use: ordinary backward never needs it

    nw = len(ctx.inputs) - 5  # x, weights..., h0, c0, lengths, seed
    names = ["input", *[f"weights[{k}]" for k in range(nw)], "h0", "c0", "lengths", "seed"]
    for name, t, version in zip(names, ctx.inputs, ctx.versions):
        if version is not None and t._version != version:
            raise RuntimeError(
                f"fastrnn: a backward with create_graph=True runs the forward again from its "
                f"inputs, but its {name} was changed in place after the forward (version "
                f"{version}, now {t._version}); change a clone instead, or run the forward "
                f"again after the change")
    # an inference tensor cannot enter a recorded op; a copy made here is an ordinary constant
    ins = [t.clone() if t is not None and t.is_inference() else t for t in ctx.inputs]
    x, weights, (h0, c0, lengths, seed) = ins[0], ins[1:1 + nw], ins[1 + nw:]
    with torch.enable_grad():
        outs = _torch_composite.forward(x, weights, h0, c0, lengths, seed,
                                        *ctx.composite_options)
    pairs = [(o, g) for o, g in zip(outs, (dy, dh_n, dc_n)) if o is not None and g is not None]
    wrt = [(k, t) for k, t in enumerate((x, *weights, h0, c0))
           if t is not None and t.requires_grad]
    grads = [None] * (nw + 3)
    if pairs and wrt:
        got = torch.autograd.grad([o for o, _ in pairs], [t for _, t in wrt],
                                  [g for _, g in pairs], create_graph=True, allow_unused=True)
        for (k, _), g in zip(wrt, got):
            grads[k] = g
    dweights = [g if g is not None else torch.zeros_like(w)
                for g, w in zip(grads[1:1 + nw], weights)]
    return grads[0], dweights, grads[1 + nw], grads[2 + nw]


torch.library.register_autograd("fastrnn::rnn_forward", _backward, setup_context=_setup_context)


class _Direct(torch.autograd.Function):
    """The op's forward and autograd formula for a plain eager call (`_direct_call`): the op's
    bodies, `_forward_impl` and `_backward_impl`, called directly. Through the custom ops, the
    first call of a process imports torch._dynamo (torch wraps every custom op's kernel in
    torch._disable_dynamo, which imports it on first use): 1.4-3.4 s before the first forward
    of a training script (measured, LSTM(32, 32), T=300, B=100). What runs is the same: the
    same bodies, `_setup_context` and `_backward`, which then calls the backward's body too.
    Arguments: the op's, tensors first, `static` its non-tensor options, the weights last."""

    @staticmethod
    def forward(x, h0, c0, lengths, seed, static, *weights):
        return _forward_impl(x, list(weights), h0, c0, lengths, seed, *static)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, h0, c0, lengths, seed, static, *weights = inputs
        _setup_context(ctx, (x, list(weights), h0, c0, lengths, seed, *static), output)
        ctx.mark_non_differentiable(output[3], *output[4])
        ctx.direct = True

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, _dmeta, *_dsaved):
        dx, dweights, dh0, dc0, *_ = _backward(ctx, dy, dh_n, dc_n, None, None)
        if dweights is None:
            dweights = [None] * (len(ctx.inputs) - 5)
        return (dx, dh0, dc0, None, None, None, *dweights)


def _recorded_or_transformed():
    """Whether something records or transforms the call: torch.compile, torch.jit.trace,
    torch.func, a dispatch or torch-function mode. is_compiling comes first: under Dynamo it is
    the constant True and the rest is never traced."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or bool(torch._C._len_torch_dispatch_stack())
            or torch._C._is_torch_function_mode_enabled()
            or torch._C._functorch.peek_interpreter_stack() is not None)


def _direct_call(tensors):
    """Whether a forward may call the op's bodies through _Direct: plain tensors, and nothing
    records or transforms the call (torch.compile, torch.jit.trace, torch.func, dispatch and
    torch-function modes, an ONNX export: those see the op)."""
    return not _recorded_or_transformed() and all(
        t is None or type(t) in _PLAIN_TYPES for t in tensors)


# ----------------------------------------------------------------------------------------------
# Eager inference on the CPU: a prepared network kept on the module (see the module docstring)


_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)
# torch.nn mode -> fastrnn.prepare's cell and keyword arguments (torch's GRU resets after the
# matmul, fastrnn's default)
_PREPARE = {"LSTM": ("lstm", {}), "GRU": ("gru", {}),
            "RNN_TANH": ("rnn", {"nonlinearity": "tanh"}),
            "RNN_RELU": ("rnn", {"nonlinearity": "relu"})}


def _under_torch_func():
    """Whether a torch.func transform that needs _torch_vmap.Function is active: vmap, grad,
    vjp, jacrev, jvp (functionalize alone handles the op itself); never under Dynamo (where
    is_compiling is the constant True and the rest is not traced)."""
    if torch.compiler.is_compiling() or torch._C._functorch.peek_interpreter_stack() is None:
        return False
    return any(ci.key() != _FUNCTIONALIZE for ci in torch._C._functorch.get_interpreter_stack())


_FUNCTIONALIZE = torch._C._functorch.TransformType.Functionalize


def _eager_cpu_inference(tensors):
    """Whether a forward may skip the custom op and run the module's prepared network: nothing
    needs a gradient, nothing records or transforms the call (torch.compile, torch.jit.trace,
    vmap/grad, a dispatch or torch-function mode sees the op, not its inside), and every tensor
    is a plain CPU tensor. is_compiling comes first: under Dynamo it is the constant True and
    the rest is never traced."""
    if _recorded_or_transformed():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN_TYPES or not t.is_cpu
                              or (grad and t.requires_grad)):
            return False
    return True


class _PreparedCache:
    """A module's prepared network and what it was made from.

    entry (key, net, held), replaced whole (a thread reading it sees one network's):
      key   the module's options and, for each weight, (data_ptr, _version, dtype, shape,
            stride): torch bumps _version on every in-place change it sees (optimizer steps,
            load_state_dict, `with torch.no_grad(): w += 1`), and `.to()`/`.double()` give
            new memory.
      held  the weights themselves (detached, sharing memory): while they are held, their
            memory cannot be freed and handed to a new weight at the same address, so an
            equal data_ptr means the same memory.
    seen  the key of the last call that ran without the network: weights are prepared on their
          second call, not their first. Preparing costs about ten calls (a copy and the packing
          of every weight: 730 us against 73 us a call for an H = 256 LSTM, 1 thread), which a
          loop that changes the weights before every call (an optimizer step, then one action;
          torch.func.functional_call) would pay each time; such calls keep the custom op's path.

    Deep copies and pickles of the module start with an empty cache (a prepared network is
    memory and packed panels, not state)."""

    __slots__ = ("entry", "seen")

    def __init__(self):
        self.entry = self.seen = None

    def __reduce__(self):  # pickle and copy.deepcopy: an empty cache
        return (_PreparedCache, ())


def _weights_key(module, weights):
    """What the prepared network of `weights` depends on; None for inference tensors (made
    under torch.inference_mode), which have no version counter: they are not cached. (Asked
    first, not caught: reading their _version throws a C++ exception, which a process under
    AddressSanitizer's runtime, CI's .ci/sanitize, cannot survive.)"""
    if any(w.is_inference() for w in weights):
        return None
    return (module.mode, module.num_layers, module.bidirectional, module.proj_size,
            module.__dict__.get("weights_dtype"),
            *[(w.data_ptr(), w._version, w.dtype, w.shape, w.stride()) for w in weights])


def _run_prepared(net, x, h0, c0, lengths, batch_first):
    """(y, h_n, c_n) of prepared network `net` on CPU tensors, as tensors in the custom op's
    layouts (c_n None unless LSTM). One step of a unidirectional network without lengths is
    `net.step`, which gives bit for bit what a call over that step gives, in 5 us less."""
    xs = _host(x)
    if lengths is None and not net.bidirectional and xs.shape[1 if batch_first else 0] == 1:
        x_t = xs[:, 0] if batch_first else xs[0]
        L, B = net.num_layers, x_t.shape[0]
        h = np.zeros((L, B, net.output_size), net.dtype) if h0 is None else _host(h0)
        c = None
        if net.cell == "lstm":
            c = np.zeros((L, B, net.hidden_size), net.dtype) if c0 is None else _host(c0)
        h_n, c_n = net.step(x_t, h, c)
        y = h_n[L - 1:].copy()  # the last layer's h (1, B, Hout): outputs may not alias
        y = y.transpose(1, 0, 2) if batch_first else y
    else:
        out = net(xs, _host(h0), _host(c0), batch_first=batch_first,
                  lengths=None if lengths is None else lengths.numpy())
        y, h_n, c_n = out.y, out.h_n, out.c_n
    return _tensor(y), _tensor(h_n), None if c_n is None else _tensor(c_n)


# ----------------------------------------------------------------------------------------------
# Modules


class _RNNBase(torch.nn.RNNBase):
    """torch.nn.RNNBase with a forward that runs fastrnn (see the module docstring)."""

    def forward(self, input, hx=None):
        weights = self._update_flat_weights()
        has_c = self.mode == "LSTM"
        packed = isinstance(input, PackedSequence)
        _check_supported(input.data if packed else input, "input")
        for name, w in zip(self._flat_weights_names, weights):
            _check_supported(w, name)
        if hx is not None:
            for k, h in enumerate(hx if has_c else (hx,)):
                _check_supported(h, f"hx[{k}]" if has_c else "hx")

        if packed:
            if _torch_onnx.exporting():  # before unpacking: a clear error (_torch_onnx)
                _torch_onnx.refuse_packed(self)
            data, batch_sizes, sorted_indices, unsorted_indices = input
            lengths, batch_first, is_batched = None, False, True
            if hx is not None:
                self.check_forward_args(data, hx, batch_sizes)  # torch.nn's checks and messages
                hx = self.permute_hidden(hx, sorted_indices)
            else:
                self.check_input(data, batch_sizes)
            # padded T,B,I in the packed (longest first) order; lengths (B,). torch's
            # pad/pack ops cannot run under torch.func.grad: _torch_vmap's index ops can
            if _under_torch_func():
                x, lengths = _torch_vmap.pad_packed(data, batch_sizes)
            else:
                x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got "
                                 f"{input.dim()}D instead")
            lengths, batch_first, is_batched = None, self.batch_first, input.dim() == 3
            x = input if is_batched else input.unsqueeze(0 if batch_first else 1)
            if x.shape[1 if batch_first else 0] == 0:  # torch.nn's error (the NumPy API keeps h0)
                raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
            if hx is not None:
                hs, want = (hx if has_c else (hx,)), 3 if is_batched else 2
                if any(h.dim() != want for h in hs):  # torch.nn's messages
                    got = (f"({hs[0].dim()}-D, {hs[1].dim()}-D) tensors" if has_c
                           else f"{hx.dim()}-D tensor")
                    raise RuntimeError(
                        f"For {'batched 3' if is_batched else 'unbatched 2'}-D input, "
                        f"{'hx and cx' if has_c else 'hx'} should also be {want}-D but got {got}")
                if not is_batched:
                    hx = tuple(h.unsqueeze(1) for h in hx) if has_c else hx.unsqueeze(1)
            self._check_tensor_args(x, hx)

        h0, c0 = (hx if has_c else (hx, None)) if hx is not None else (None, None)
        dropout = self.dropout if self.training and self.num_layers > 1 else 0.0
        net = None
        weights_dtype = self.__dict__.get("weights_dtype")
        eager = dropout == 0 and _eager_cpu_inference((x, h0, c0, *weights))
        if eager:
            net = self._prepared_network(weights, weights_dtype)
        if net is None and weights_dtype is not None:
            raise RuntimeError(
                f"{type(self).__name__}: weights_dtype={weights_dtype!r} runs inference only: on "
                f"CPU float32 tensors with nothing requiring grad (torch.no_grad() or "
                f"torch.inference_mode()), dropout off (eval()), outside torch.compile, tracing "
                f"and torch.func transforms; set_weights_dtype(None) to train or run there")
        if net is not None:
            y, h_n, c_n = _run_prepared(net, x, h0, c0, lengths, batch_first)
        elif not eager and _torch_onnx.exporting():
            # standard ONNX nodes (_torch_onnx); asked only off the eager path, where every
            # exporter's trace runs
            y, h_n, c_n = _torch_onnx.forward(self, x, weights, h0, c0, batch_first)
        else:
            # the masks' seed comes from torch's generator: torch.manual_seed reproduces them
            seed = torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64) if dropout > 0 else None
            keep_saved = torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for t in (x, h0, c0, *weights))
            static = (_CELL_OF_MODE[self.mode], self.num_layers, self.bidirectional,
                      batch_first, dropout, self.proj_size, keep_saved)
            if _under_torch_func():  # vmap, grad, ...: through _torch_vmap.Function
                y, h_n, c_n, _, _ = _torch_vmap.forward(x, list(weights), h0, c0, lengths, seed,
                                                        *static)
            elif _direct_call((x, h0, c0, *weights)):
                y, h_n, c_n, _, _ = _Direct.apply(x, h0, c0, lengths, seed, static, *weights)
            else:
                y, h_n, c_n, _, _ = _forward_op(x, list(weights), h0, c0, lengths, seed, *static)
        hidden = (h_n, c_n) if has_c else h_n
        if packed:
            out = (_torch_vmap.pack_padded(y, batch_sizes) if _under_torch_func()
                   else pack_padded_sequence(y, lengths).data)
            return (PackedSequence(out, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))
        if not is_batched:
            y = y.squeeze(0 if batch_first else 1)
            hidden = (h_n.squeeze(1), c_n.squeeze(1)) if has_c else h_n.squeeze(1)
        return y, hidden

    def _update_flat_weights(self):
        """torch.nn's: `_flat_weights` follows a weight swapped into `_parameters` (as
        torch.func.functional_call does). The same test, reading `_parameters` directly rather
        than through Module.__getattr__ (2 us a call, not 7); torch's own for anything else.
        Returns the weights to run with: `_flat_weights`, except while torch.onnx.export
        captures the model, where torch.export's own tensors (swapped in) are returned and
        nothing is stored (it warns about a tensor attribute assigned during export, and
        restores the module's attributes afterwards anyway)."""
        params = self._parameters
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names):
            w = params.get(name)
            if w is None:  # not a parameter now
                super()._update_flat_weights()
                break
            if ref is not None and ref() is not w:
                if _torch_onnx.exporting():
                    return [getattr(self, n) for n in self._flat_weights_names]
                self._init_flat_weights()
                break
        return self._flat_weights

    def _check_tensor_args(self, x, hx):
        """torch.nn's check_forward_args (check_input without hx) for a 3-D tensor input, its
        messages included, with the sizes it accepts tested first: that test costs 1 us,
        torch's builds its expected sizes and messages in 5."""
        B = x.shape[0] if self.batch_first else x.shape[1]
        LD = self.num_layers * (2 if self.bidirectional else 1)
        if x.dtype == self._flat_weights[0].dtype and x.shape[2] == self.input_size:
            if hx is None:
                return
            if self.mode != "LSTM":
                if hx.shape == (LD, B, self.hidden_size):
                    return
            elif (len(hx) == 2 and hx[0].shape == (LD, B, self.proj_size or self.hidden_size)
                  and hx[1].shape == (LD, B, self.hidden_size)):
                return
        if hx is None:
            self.check_input(x, None)
        else:
            self.check_forward_args(x, hx, None)

    def set_weights_dtype(self, weights_dtype):
        """Store the weights for CPU inference in a narrower type, as `fastrnn.prepare`'s
        weights_dtype: "bfloat16" (each value rounded) or "int8" (each row quantized
        symmetrically, a float32 scale a row; what torch.ao's dynamic quantization did for
        nn.LSTM/GRU); None: float32 again. The parameters themselves stay float32 and unchanged:
        forward packs a narrow copy of them (again after they change) and runs on it; a call
        that could not (a gradient is needed, dropout is on, CUDA or float64 tensors, under
        torch.compile or torch.func) raises RuntimeError rather than run float32 weights. The
        error it costs is in the serving guide. Returns the module."""
        if weights_dtype not in _prepared._WEIGHTS_DTYPES:
            raise ValueError(f"weights_dtype: expected None, 'bfloat16' or 'int8', got "
                             f"{weights_dtype!r}")
        dtype = self._flat_weights[0].dtype
        if weights_dtype is not None and dtype != torch.float32:
            raise TypeError(f"weights_dtype: {weights_dtype!r} stores the weights of a float32 "
                            f"module, got {dtype} parameters: call .float() first")
        self.__dict__["weights_dtype"] = weights_dtype
        self.__dict__.pop("_prepared_cache", None)
        return self

    def _prepared_network(self, weights, weights_dtype=None):
        """The prepared network of the current weights, made on their second call (see
        _PreparedCache); None for this call when it is their first, or when they cannot be
        cached (inference tensors). With weights_dtype (set_weights_dtype), on the first call,
        and on every call for weights that cannot be cached: the call must run on them."""
        key = _weights_key(self, weights)
        if key is None:
            return None if weights_dtype is None else self._prepare(weights, weights_dtype)[0]
        cache = self.__dict__.get("_prepared_cache")
        if cache is None:
            cache = self.__dict__["_prepared_cache"] = _PreparedCache()
        entry = cache.entry
        if entry is not None and entry[0] == key:
            return entry[1]
        if cache.seen != key and weights_dtype is None:
            cache.seen = key
            return None
        cache.entry = None  # the old copy goes before the new one comes
        net, held = self._prepare(weights, weights_dtype)
        cache.entry, cache.seen = (key, net, held), None
        return net

    def _prepare(self, weights, weights_dtype):
        """(prepared network, the detached weights it was made from)."""
        cell, options = _PREPARE[self.mode]
        held = [w.detach() for w in weights]
        net = _prepared.prepare(cell, [w.numpy() for w in held], num_layers=self.num_layers,
                                bidirectional=self.bidirectional, proj_size=self.proj_size,
                                weights_dtype=weights_dtype, **options)
        return net, held

    def flatten_parameters(self):
        """torch.nn's (cuDNN weight layout on the GPU), and drop the prepared network of the
        CPU inference path: call it after changing a weight in a way torch does not count
        (through `.data` or a NumPy view), so the next forward prepares it again."""
        self.__dict__.pop("_prepared_cache", None)
        super().flatten_parameters()


class LSTM(_RNNBase):
    """torch.nn.LSTM running fastrnn's kernels: same arguments, parameters, inputs, outputs."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    # torch.nn.LSTM's own functions for the cell state (h, c), so the messages are torch's
    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    check_forward_args = torch.nn.LSTM.check_forward_args
    permute_hidden = torch.nn.LSTM.permute_hidden


class GRU(_RNNBase):
    """torch.nn.GRU running fastrnn's kernels: same arguments, parameters, inputs, outputs."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


class RNN(_RNNBase):
    """torch.nn.RNN running fastrnn's kernels: same arguments (nonlinearity "tanh" or "relu"),
    parameters, inputs, outputs."""

    def __init__(self, *args, **kwargs):
        # as torch.nn.RNN: nonlinearity is the 4th positional argument or a keyword
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__("RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)


def quantize_dynamic(model, weights_dtype="int8", *, inplace=False):
    """`model` with every torch.nn.LSTM, GRU and RNN in it (the model itself included) replaced
    by its fastrnn drop-in (`from_torch`), and every fastrnn.torch module running CPU inference
    on weights stored as `weights_dtype` ("int8" or "bfloat16"; see `set_weights_dtype`): what
    `torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.GRU}, dtype=torch.qint8)` did,
    the activations and state in float32 rather than quantized. inplace=False works on a deep
    copy. Returns the model."""
    if weights_dtype not in ("int8", "bfloat16"):
        raise ValueError(f"weights_dtype: expected 'int8' or 'bfloat16', got {weights_dtype!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    torch_rnns = (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN)
    if isinstance(model, torch_rnns):
        return from_torch(model).set_weights_dtype(weights_dtype)
    for name, child in list(model.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, torch_rnns):
                setattr(child, attr, from_torch(sub))
    for sub in model.modules():
        if isinstance(sub, _RNNBase):
            sub.set_weights_dtype(weights_dtype)
    return model


def from_torch(module):
    """The fastrnn drop-in for a torch.nn.LSTM, GRU or RNN, sharing its parameters (the same
    Parameter objects: same device and dtype, and an optimizer built on `module` keeps
    working) and its training/eval mode. `copy.deepcopy(module)` first for independent ones."""
    for torch_cls, cls in ((torch.nn.LSTM, LSTM), (torch.nn.GRU, GRU), (torch.nn.RNN, RNN)):
        if isinstance(module, torch_cls):
            break
    else:
        raise TypeError(
            f"module: expected a torch.nn.LSTM, GRU or RNN, got {type(module).__name__}")
    kw = dict(input_size=module.input_size, hidden_size=module.hidden_size,
              num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
              dropout=module.dropout, bidirectional=module.bidirectional)
    if cls is LSTM:
        kw["proj_size"] = module.proj_size
    if cls is RNN:
        kw["nonlinearity"] = module.nonlinearity
    with warnings.catch_warnings():  # module's constructor already warned about its dropout
        warnings.filterwarnings("ignore", "dropout option adds dropout", UserWarning)
        new = cls(**kw, device="meta", dtype=module._flat_weights[0].dtype)
    for name in module._flat_weights_names:
        setattr(new, name, getattr(module, name))
    new._init_flat_weights()
    return new.train(module.training)


from . import _torch_vmap  # noqa: E402  torch.func: vmap rules and the Function grad needs
