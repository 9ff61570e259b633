# SPDX-License-Identifier: MIT
"""torch.func for fastrnn.torch: `vmap`, `grad`/`vjp` and their nestings over LSTM/GRU/RNN.

This is the torch.func side of fastrnn/torch.py and nothing else: the kernels, their autograd
formula and the modules live there. Two pieces:

- `Function` (used by the modules' forward whenever a torch.func transform is active): a
  torch.autograd.Function around the custom op `fastrnn::rnn_forward`, with setup_context,
  backward (torch.py's `_setup_context` and `_backward`, adapted to a flat argument list) and
  a `vmap` staticmethod. It exists because torch 2.13 refuses the autograd.Function that
  `torch.library.register_autograd` generates under torch.func ("it must override the
  setup_context staticmethod"), so `torch.func.grad` could not see the custom op at all.
- `torch.library.register_vmap` batching rules for both custom ops: `rnn_forward` (called
  under vmap by `Function.forward` never; by a caller of the raw op, e.g. for inference) and
  `rnn_backward` (called under vmap whenever a gradient is taken inside vmap: `vmap(grad(f))`,
  per-sample gradients, `jacrev`).

How a vmapped forward runs (V = the vmapped size, B = the batch of one slice):
- fold: when no weight is batched and dropout is off, the V slices become one batch of V*B
  rows (slice v is rows v*B .. v*B+B-1; an unbatched x, h0, c0 or lengths is repeated), one
  kernel call, and the outputs are split again. Rows of a batch never mix, so each slice's
  outputs are what a call on it alone gives, to rounding.
- loop: one call per slice, outputs stacked. Taken when a weight is batched (model
  ensembles: there is one set of weights per call), when dropout is on (a slice's mask must
  be the one its own call would draw), and when the call keeps its saved state for a
  backward that will run through this vmap level with per-slice weight gradients (see below).

Backward and per-slice weight gradients: the weight gradients of one call are sums over its
batch rows, and the saved state the backward kernel reads is the engine's opaque reserve,
whose batch layout is the engine's business (CPU and CUDA differ). So a folded forward cannot
be cut into per-slice states, and a folded backward can give only the sum over all slices.
The rule follows from that:
- A forward whose backward will be taken *outside* this vmap (a torch.func grad transform
  wrapped around the vmap: its tensors reach us as GradTrackingTensors) folds: that grad sees
  one call on V*B rows and its weight gradient is the sum over slices, which is what it asks.
- A forward that keeps its saved state but has no such tensor (`vmap(grad(f))`: the grad
  transform inside vmap hands us plain tensors) runs per slice, and the backward rule runs
  one backward call per slice on that slice's own state: per-slice weight gradients by
  construction, V forward and V backward calls.
- Plain autograd (tensors with requires_grad at the bottom, no torch.func grad) also loops:
  such a call cannot tell `vmap(f)(x).sum().backward()` from `vmap(grad(f))` with
  parameters that were not detached, and the loop is right for both.
- A folded state that keeps its saved arrays is marked (meta batched, saved arrays not). For
  the backward rule to meet one, a grad would have to sit on both sides of the vmap
  (`grad(vmap(grad(f)))`), a derivative of a gradient, which Function.backward refuses
  first; the rule raises rather than give summed weight gradients as per-slice ones.
- A backward whose forward was not vmapped (vmap over cotangents only: `jacrev`, or `vjp`
  then vmap) runs once per slice on the one shared state.

Cost in kernel calls, V slices: inference 1 forward; `vmap(grad(f))` V forward + V backward
(what a Python loop costs, without its Python overhead); `grad(vmap(f))` 1 + 1.

Not supported, each a NotImplementedError that says so: derivatives of gradients under
torch.func (grad of grad, hessian: the backward kernels are not differentiable there) and
forward mode (jvp, jacfwd: the kernels have a reverse-mode backward only; jacrev works).
Under torch.compile the modules keep the op (Dynamo traces it, not Function): compiled vmap
inference runs the op's rule, but torch.func.grad inside a compiled function fails as it did
before, on the op's register_autograd.
"""

import contextlib

import torch

from . import torch as _fr

_forward_op = _fr._forward_op
_backward_op = _fr._backward_op

# ----------------------------------------------------------------------------------------------
# Moving the vmapped dimension in and out of the batch (shapes as in docs/design.md: x and y
# (T, B, .) or batch_first (B, T, .); h0, c0, h_n, c_n (L*D, B, .); lengths (B,))


def _fold(t, vdim, bdim, V):
    """t with its vmapped dimension `vdim` (None: not batched, repeat it V times) merged into
    its batch dimension `bdim`, slice-major: (.., V*B, ..) with slice v at rows v*B..v*B+B-1."""
    if t is None:
        return None
    if vdim is None:
        t = t.unsqueeze(bdim).expand(*t.shape[:bdim], V, *t.shape[bdim:])
    else:
        t = t.movedim(vdim, bdim)
    return t.flatten(bdim, bdim + 1)


def _unfold(t, bdim, V):
    """The inverse of _fold on a result: (.., V*B, ..) -> (.., V, B, ..), vmapped at bdim."""
    return t.unflatten(bdim, (V, t.shape[bdim] // V))


def _slice(t, vdim, v):
    return t if t is None or vdim is None else t.select(vdim, v)


def _stack_meta(metas):
    """The slices' meta (uint8 JSON), stacked. They differ only where dropout seeds do, and a
    different seed can be a different number of digits: shorter ones are padded with spaces,
    which JSON ignores after a value."""
    n = max(m.shape[0] for m in metas)
    return torch.stack([m if m.shape[0] == n else torch.cat([m, m.new_full((n - m.shape[0],), 32)])
                        for m in metas])


def _stack_saved(saved_per_slice):
    """The slices' saved arrays, stacked array by array; their number, dtypes and sizes
    depend only on the options and the per-slice shape, which the slices share."""
    out = []
    for k, arrays in enumerate(zip(*saved_per_slice)):
        sizes = {a.shape[0] for a in arrays}
        if len(sizes) != 1:
            raise RuntimeError(
                f"fastrnn vmap: saved array {k} has sizes {sorted(sizes)} in different slices; "
                f"they should depend only on the options and shapes the slices share")
        out.append(torch.stack(arrays))
    return out


# ----------------------------------------------------------------------------------------------
# The forward under vmap, for Function.vmap and the raw op's rule


def _needs_per_slice_state(keep_saved, tensors):
    """Whether this call's saved state may come back to the backward rule at this vmap level
    with per-slice weight gradients asked (see the module docstring): it keeps its state, and
    no torch.func grad transform outside this vmap records the call."""
    if not keep_saved:
        return False
    outside = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad and torch._C._functorch.is_gradtrackingtensor(t)
        for t in tensors)
    return not outside


def _vmap_forward(call, V, in_dims, x, weights, h0, c0, lengths, seed, options):
    """(outputs, out_dims) of the forward on a vmapped batch of V slices; `call` runs one
    unbatched forward with the op's arguments and returns the op's results."""
    cell, num_layers, bidirectional, batch_first, dropout, proj_size, keep_saved = options
    x_d, w_d, h0_d, c0_d, len_d, seed_d = in_dims
    fold = (all(d is None for d in w_d) and dropout == 0 and seed_d is None
            and not _needs_per_slice_state(keep_saved, (x, h0, c0, *weights)))
    if fold:
        bx = 0 if batch_first else 1  # B in x and y; in h0, c0, h_n, c_n (L*D, B, H) it is 1
        y, h_n, c_n, meta, saved = call(
            _fold(x, x_d, bx, V), list(weights), _fold(h0, h0_d, 1, V), _fold(c0, c0_d, 1, V),
            _fold(lengths, len_d, 0, V), seed, *options)
        outs = [_unfold(y, bx, V), _unfold(h_n, 1, V)]
        dims = [bx, 1]
        if c_n.dim() == 3:  # LSTM; GRU/RNN's is an empty placeholder
            outs.append(_unfold(c_n, 1, V))
            dims.append(1)
        else:
            outs.append(c_n)
            dims.append(None)
        if meta.numel():  # kept for a grad outside; marked as folded (module docstring)
            outs.append(meta.unsqueeze(0).expand(V, *meta.shape))
            dims.append(0)
        else:
            outs.append(meta)
            dims.append(None)
        return (*outs, saved), (*dims, [None] * len(saved))
    results = []
    for v in range(V):
        results.append(call(
            _slice(x, x_d, v), [_slice(w, d, v) for w, d in zip(weights, w_d)],
            _slice(h0, h0_d, v), _slice(c0, c0_d, v), _slice(lengths, len_d, v),
            _slice(seed, seed_d, v), *options))
    y, h_n, c_n = (torch.stack([r[k] for r in results]) for k in range(3))
    meta = _stack_meta([r[3] for r in results])
    saved = _stack_saved([r[4] for r in results])
    return (y, h_n, c_n, meta, saved), (0, 0, 0, 0, [0] * len(saved))


@torch.library.register_vmap("fastrnn::rnn_forward")
def _forward_rule(info, in_dims, x, weights, h0, c0, lengths, seed, *options):
    """The raw op under vmap (the modules call Function instead). Its calls run below vmap but
    above the op's Autograd key, whose torch.library autograd.Function torch.func refuses: a
    call that records nothing runs without grad mode, one that would record is refused here
    with the way round it."""
    keep_saved = options[-1]
    if keep_saved and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, c0, *weights)):
        raise RuntimeError(
            "fastrnn::rnn_forward under torch.func.vmap with tensors that require grad: "
            "autograd cannot record the raw op under torch.func; call "
            "fastrnn._torch_vmap.forward (same arguments and results), as the modules do")
    with torch.no_grad() if not keep_saved else contextlib.nullcontext():
        return _vmap_forward(_forward_op, info.batch_size, in_dims[:6], x, weights, h0, c0,
                             lengths, seed, options)


# ----------------------------------------------------------------------------------------------
# The backward under vmap


@torch.library.register_vmap("fastrnn::rnn_backward")
def _backward_rule(info, in_dims, meta, saved, dy, dh_n, dc_n, *options):
    V = info.batch_size
    m_d, s_d, dy_d, dh_d, dc_d = in_dims[:5]
    if m_d is not None and saved and all(d is None for d in s_d):
        # the marked state of a folded forward (module docstring): its backward belongs to a
        # grad outside this vmap, and one inside would be a derivative of a gradient, which
        # Function.backward refuses before it gets here
        raise RuntimeError(
            "fastrnn vmap: the backward of a forward folded over the vmapped dimension was "
            "called inside that vmap; per-slice weight gradients need a per-slice forward "
            "(this is a bug in fastrnn._torch_vmap: please report it)")
    # one saved state per slice (a looped forward) or one for all (the forward not vmapped)
    results = [_backward_op(_slice(meta, m_d, v), [_slice(s, d, v) for s, d in zip(saved, s_d)],
                            _slice(dy, dy_d, v), _slice(dh_n, dh_d, v), _slice(dc_n, dc_d, v),
                            *options)
               for v in range(V)]
    dx, dh0, dc0 = (torch.stack([r[k] for r in results]) for k in range(3))
    dweights = [torch.stack(ws) for ws in zip(*[r[3] for r in results])]
    return (dx, dh0, dc0, dweights), (0, 0, 0, [0] * len(dweights))


# ----------------------------------------------------------------------------------------------
# The autograd.Function the modules call under torch.func

_DIFFERENTIATING = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)


class Function(torch.autograd.Function):
    """`fastrnn::rnn_forward` as torch.func sees it. Arguments: (options, x, h0, c0, lengths,
    seed, *weights) with options the op's static arguments (cell, num_layers, bidirectional,
    batch_first, dropout, proj_size, keep_saved); results: (y, h_n, c_n, meta, *saved)."""

    @staticmethod
    def forward(options, x, h0, c0, lengths, seed, *weights):
        y, h_n, c_n, meta, saved = _forward_op(x, list(weights), h0, c0, lengths, seed, *options)
        return (y, h_n, c_n, meta, *saved)

    @staticmethod
    def setup_context(ctx, inputs, output):
        options, x, h0, c0, lengths, seed, *weights = inputs
        y, h_n, c_n, meta, *saved = output
        _fr._setup_context(ctx, (x, weights, h0, c0, lengths, seed, *options),
                           (y, h_n, c_n, meta, saved))
        ctx.n_weights = len(weights)
        ctx.mark_non_differentiable(meta, *saved)

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n, _dmeta, *_dsaved):
        stack = torch._C._functorch.get_interpreter_stack() or ()
        if sum(ci.key() in _DIFFERENTIATING for ci in stack) > 1:
            raise NotImplementedError(
                "fastrnn.torch under torch.func: a derivative of a gradient (torch.func.grad, "
                "vjp or jacrev nested in another, hessian) is not supported; the backward "
                "kernels are not differentiable under torch.func transforms")
        # The backward op's own autograd kernel is torch.library's, which torch.func refuses
        # (see the module docstring): it runs without recording, hence the check above.
        # torch.py's _backward reads needs_input_grad, if at all, in the op's argument order
        mine = ctx.needs_input_grad
        ctx.needs_input_grad = (mine[1], any(mine[6:]), *mine[2:6]) + (False,) * 7
        try:
            with torch.no_grad():
                dx, dweights, dh0, dc0, *_ = _fr._backward(ctx, dy, dh_n, dc_n, _dmeta, _dsaved)
        finally:
            ctx.needs_input_grad = mine
        return (None, dx, dh0, dc0, None, None, *(dweights or [None] * ctx.n_weights))

    @staticmethod
    def jvp(ctx, *tangents):
        raise NotImplementedError(
            "fastrnn.torch: forward-mode AD (torch.func.jvp, jacfwd, hessian) is not supported; "
            "the kernels have a reverse-mode backward only (torch.func.jacrev, vjp and grad "
            "work)")

    @staticmethod
    def vmap(info, in_dims, options, x, h0, c0, lengths, seed, *weights):
        def call(x, weights, h0, c0, lengths, seed, *options):
            y, h_n, c_n, meta, *saved = Function.apply(options, x, h0, c0, lengths, seed, *weights)
            return y, h_n, c_n, meta, saved

        _, x_d, h0_d, c0_d, len_d, seed_d, *w_d = in_dims
        (y, h_n, c_n, meta, saved), (y_d, h_d, c_d, m_d, s_d) = _vmap_forward(
            call, info.batch_size, (x_d, w_d, h0_d, c0_d, len_d, seed_d), x, weights, h0, c0,
            lengths, seed, options)
        return (y, h_n, c_n, meta, *saved), (y_d, h_d, c_d, m_d, *s_d)


def forward(x, weights, h0, c0, lengths, seed, *options):
    """`fastrnn::rnn_forward`'s signature and results, through Function: what the modules call
    instead of the op while a torch.func transform is active."""
    y, h_n, c_n, meta, *saved = Function.apply(options, x, h0, c0, lengths, seed, *weights)
    return y, h_n, c_n, meta, saved


# ----------------------------------------------------------------------------------------------
# PackedSequence under torch.func: torch's _pad_packed_sequence reads data pointers, which
# torch.func.grad's tensors do not have ("Cannot access data pointer of Tensor that doesn't
# have storage"), so the modules pad and pack with index ops here instead.


def _plain_batch_sizes(batch_sizes):
    """batch_sizes as a plain CPU tensor. Made inside vmap it is batched (torch's fallback for
    pack_padded_sequence stacks one per slice); the slices must agree, since packed data of
    different shapes cannot be one vmapped tensor anyway."""
    f = torch._C._functorch
    t = batch_sizes
    while f.is_batchedtensor(t) or f.is_gradtrackingtensor(t):
        if f.is_gradtrackingtensor(t):
            t = f.get_unwrapped(t)
            continue
        bdim, t = f.maybe_get_bdim(t), f.get_unwrapped(t)
        first = t.select(bdim, 0)
        if not torch.equal(t, first.unsqueeze(bdim).expand_as(t)):
            raise ValueError("PackedSequence under vmap: batch_sizes differ between the vmapped "
                             "slices; every slice must have the same lengths")
        t = first
    return t


def _packed_rows(batch_sizes):
    """Where a PackedSequence's data rows go in the padded (T, B) grid flattened time-major:
    step t holds batch rows 0..batch_sizes[t]-1 (longest sequence first)."""
    B = int(batch_sizes[0])
    return torch.cat([torch.arange(n) + t * B for t, n in enumerate(batch_sizes.tolist())])


def pad_packed(data, batch_sizes):
    """(x (T, B, I) padded with zeros, lengths (B,)) of packed `data` (N, I): what
    pad_packed_sequence gives, in the packed (longest first) order."""
    batch_sizes = _plain_batch_sizes(batch_sizes)
    T, B = len(batch_sizes), int(batch_sizes[0])
    rows = _packed_rows(batch_sizes).to(data.device)
    x = data.new_zeros((T * B, data.shape[-1])).index_copy(0, rows, data)
    lengths = (batch_sizes.unsqueeze(1) > torch.arange(B)).sum(0)
    return x.view(T, B, -1), lengths


def pack_padded(y, batch_sizes):
    """The packed data (N, F) of a padded time-major y (T, B, F): pack_padded_sequence's."""
    rows = _packed_rows(_plain_batch_sizes(batch_sizes)).to(y.device)
    return y.reshape(-1, y.shape[-1]).index_select(0, rows)

