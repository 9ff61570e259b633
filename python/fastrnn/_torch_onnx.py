# SPDX-License-Identifier: MIT
"""fastrnn.torch's modules under `torch.onnx.export(..., dynamo=True)`: standard ONNX nodes.

While torch's exporter captures a model (`exporting()`), the modules' forward calls `forward`
below instead of the custom op fastrnn::rnn_forward. It writes the network as
ONNX's own operators, through `torch.onnx.ops.symbolic_multi_out` (torch >= 2.8): nodes that
torch.export records as they are and the exporter emits verbatim, with output shapes given in
torch's symbolic sizes, so batch and sequence length stay dynamic. A plain `torch.onnx.export`
needs no extra argument. One node per layer (ONNX's LSTM/GRU/RNN hold both directions of a
layer), chained:

    x (T,B,I)  [Transpose from (B,T,I) when batch_first]
    layer l:   Y, Y_h[, Y_c] = LSTM|GRU|RNN(x_l, W, R, [B], "", initial_h_l[, initial_c_l])
               Y (T,D,B,H) -> Transpose (T,B,D,H) -> Reshape (T,B,D*H) = x_{l+1}
    y = x_L [Transpose to (B,T,D*H) when batch_first]; h_n = Concat(Y_h of every layer) (L*D,B,H)

Attributes: hidden_size; direction="bidirectional" when D = 2 (ONNX's default is "forward");
GRU linear_before_reset=1 (torch's GRU applies r after R_h h + b_hn); RNN activations ["Relu"]
per direction for nonlinearity="relu" (ONNX's default is Tanh). LSTM activations are ONNX's
defaults (sigmoid, tanh, tanh). W, R, B are the module's parameters reordered into ONNX's gate
order (fastrnn.convert's table, `convert._onnx_gate_order`) by Slice/Concat nodes on the
weights, which the exporter's optimizer folds into initializers (weights of up to 8192 elements,
its limit; larger ones keep the nodes, which ONNX Runtime folds when it loads the model); B is
omitted with bias=False.
initial_h / initial_c are the given state's slices for the layer, omitted (ONNX's zeros) when no
state is given.

What does not export, each a clear error at export time (`_unsupported`):
- proj_size > 0: ONNX's LSTM has no projection (its recurrence would need R (4H, P) and a
  second product per step); there is no standard node for it.
- dropout between layers in training mode: ONNX's recurrent nodes have no dropout. Export in
  eval mode (`model.eval()`), which is what an exported inference graph runs; training mode
  with dropout=0 or one layer exports (nothing is dropped then).
- PackedSequence input: its batch size per step is data (`batch_sizes`), which torch.export
  cannot trace into a graph with a symbolic batch; export the padded tensor instead (the
  result at the valid steps is the same; ONNX's `sequence_lens` is not reachable through
  torch.nn's module signature).
- the TorchScript exporter (`dynamo=False`): it cannot record these nodes.
- the exporter's fallback capture, torch.export strict=True (Dynamo), which it tries when
  strict=False failed: Dynamo does not trace torch.onnx.ops. The error says to look at why
  strict=False failed (the first strategy's error, which the exporter does not show).
"""

import torch

from .convert import _onnx_gate_order

try:  # the flag torch.onnx.export(dynamo=True) sets while it captures the model (private)
    from torch.onnx._internal.exporter import _flags as _exporter_flags
except ImportError:  # pragma: no cover - moved: exporting() falls back to the public function
    _exporter_flags = None


def exporting():
    """Whether torch.onnx.export is tracing the caller. The public `is_in_onnx_export()` is
    the constant False under Dynamo (torch/_dynamo/variables/torch.py), which the exporter's
    second capture strategy (torch.export strict=True, tried when strict=False fails) runs
    under; the flag it reads is read here directly, so both strategies take the ONNX branch and
    an error of ours is not replaced by a later 'No ONNX function found for
    fastrnn::rnn_forward'. The public function adds the TorchScript exporter (dynamo=False),
    which traces with torch.jit: asked only then, as it costs 3 us (a training step's forward
    asks this too)."""
    if _exporter_flags is None:  # a torch that moved the flag: the public function alone
        return torch.onnx.is_in_onnx_export()
    if _exporter_flags._is_onnx_exporting:
        return True
    return torch.jit.is_tracing() and torch.onnx.is_in_onnx_export()


_OP = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_CELL = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}


def _unsupported(module, what):
    return NotImplementedError(
        f"torch.onnx.export of fastrnn.torch.{type(module).__name__}: {what}")


def refuse_packed(module):
    """Raise the PackedSequence error (called before the sequence is unpacked)."""
    raise _unsupported(
        module, "a PackedSequence input cannot be exported (its per-step batch sizes are data, "
        "not shapes); export the padded tensor (torch.nn.utils.rnn.pad_packed_sequence) instead")


def _onnx_order(w, gates, cell):
    """`w` (G*H, ...) with its gate blocks in ONNX's order (fastrnn.convert's table)."""
    n = w.shape[0] // gates  # slices, not chunk: the optimizer folds single-output nodes only
    return torch.cat([w[k * n:(k + 1) * n] for k in _onnx_gate_order(cell)], 0)


def _layer_weights(module, weights, layer, D, gates):
    """ONNX's W (D, G*H, I_l), R (D, G*H, H) and B (D, 2*G*H) (None without bias) of one layer
    from the module's flat weight list (w_ih, w_hh[, b_ih, b_hh] per layer and direction)."""
    cell = _CELL[module.mode]
    per = len(weights) // (module.num_layers * D)
    dirs = [weights[(layer * D + d) * per:(layer * D + d + 1) * per] for d in range(D)]
    W = torch.stack([_onnx_order(w[0], gates, cell) for w in dirs])
    R = torch.stack([_onnx_order(w[1], gates, cell) for w in dirs])
    if per == 2:
        return W, R, None
    B = torch.stack([torch.cat([_onnx_order(w[2], gates, cell), _onnx_order(w[3], gates, cell)])
                     for w in dirs])
    return W, R, B


def forward(module, x, weights, h0, c0, batch_first):
    """(y, h_n, c_n) of `module` with its flat weight list `weights` on batched x ((T, B, I),
    or (B, T, I) with batch_first) and the optional states h0, c0 ((L*D, B, H)), written as
    ONNX nodes; c_n is None unless LSTM.
    The layouts are those of the custom op, so the module's forward goes on unchanged."""
    if torch.jit.is_tracing():
        raise _unsupported(module, "the TorchScript exporter (dynamo=False) is not supported; "
                           "use torch.onnx.export(..., dynamo=True), torch's default")
    if module.proj_size > 0:
        raise _unsupported(
            module, f"proj_size={module.proj_size}: ONNX's LSTM has no projection, so an LSTM "
            "with proj_size > 0 has no standard ONNX node")
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise _unsupported(
            module, f"dropout={module.dropout} in training mode: ONNX's recurrent nodes have no "
            "dropout between layers; call model.eval() before exporting (an inference graph "
            "runs without dropout)")
    if torch.compiler.is_dynamo_compiling():
        # Dynamo skips torch.onnx.ops (MOD_SKIPLIST), so the exporter's second strategy cannot
        # record the nodes; it runs only after the first failed, whose error is the one to see
        raise _unsupported(
            module, "torch.onnx.export's capture with torch.export.export(..., strict=False) "
            "failed, and its fallback (strict=True, Dynamo) cannot record ONNX's recurrent "
            "nodes; run torch.export.export(model, args, strict=False) to see why the first "
            "failed")
    mode, L, H = module.mode, module.num_layers, module.hidden_size
    D, gates, is_lstm = 2 if module.bidirectional else 1, _GATES[mode], mode == "LSTM"
    attrs = {"hidden_size": H}
    if D == 2:
        attrs["direction"] = "bidirectional"
    if mode == "GRU":
        attrs["linear_before_reset"] = 1
    if mode == "RNN_RELU":
        attrs["activations"] = ["Relu"] * D

    seq = x.transpose(0, 1) if batch_first else x  # (T, B, I)
    T, B = seq.shape[0], seq.shape[1]
    outputs = 3 if is_lstm else 2
    h_n, c_n = [], []
    for layer in range(L):
        W, R, bias = _layer_weights(module, weights, layer, D, gates)
        inputs = [seq, W, R, bias, None]  # X, W, R, B, sequence_lens
        if h0 is not None:
            inputs.append(h0[layer * D:(layer + 1) * D])
            if is_lstm:
                inputs.append(c0[layer * D:(layer + 1) * D])
        out = torch.onnx.ops.symbolic_multi_out(
            _OP[mode], inputs, attrs, dtypes=[x.dtype] * outputs,
            shapes=[[T, D, B, H]] + [[D, B, H]] * (outputs - 1))
        seq = out[0].permute(0, 2, 1, 3).flatten(2)  # (T, D, B, H) -> (T, B, D*H)
        h_n.append(out[1])
        if is_lstm:
            c_n.append(out[2])
    y = seq.transpose(0, 1) if batch_first else seq
    h_n = torch.cat(h_n) if L > 1 else h_n[0]
    c_n = (torch.cat(c_n) if L > 1 else c_n[0]) if is_lstm else None
    return y, h_n, c_n
