# SPDX-License-Identifier: MIT
"""fastrnn.torch under torch.onnx.export(..., dynamo=True): standard ONNX LSTM / GRU / RNN nodes.

- every cell (LSTM, GRU, RNN tanh / relu) × num_layers {1, 2} × bidirectional × batch_first,
  each without and with an initial state, exported once per cell with a symbolic batch and
  sequence length: the graph holds one LSTM/GRU/RNN node per layer and call (no loop, no
  unrolling) with ONNX's attributes for torch's maths, its inputs' batch and time dims are
  symbolic, and ONNX Runtime's outputs at several (T, B), the export's own and others, equal
  the module's (run in float64 on the same float32 values) within the ONNX Runtime budget of
  tests/_tolerances.py;
- bias=False, unbatched (2-D) input, weights too large for the exporter's constant folding, and
  a module inside a model (Embedding -> LSTM -> Linear);
- what does not export raises a clear NotImplementedError: proj_size, dropout in training
  mode, PackedSequence input, the TorchScript exporter (dynamo=False); narrow weights
  (set_weights_dtype) their own RuntimeError.
"""

import copy
import os

import pytest

# torch.export and the exporter throw and catch C++ exceptions inside torch, which a process under
# AddressSanitizer's runtime (.ci/sanitize) cannot survive: skipped there before anything loads
if "libasan" in os.environ.get("LD_PRELOAD", ""):
    pytest.skip("torch.export throws C++ exceptions, fatal under the ASan runtime",
                allow_module_level=True)

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx (the test extra)")
ort = pytest.importorskip("onnxruntime",
                          reason="ONNX export tests need onnxruntime (the test extra)")
pytest.importorskip("onnxscript",
                    reason="torch.onnx.export(dynamo=True) needs onnxscript (the test extra)")

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from _tolerances import ORT_F32_ATOL, ORT_F32_RTOL, assert_close  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not fastrnn.backends()["cpu"]["available"],
                       reason="compiled CPU engine not built"),
    # torch 2.13's own deprecation, raised inside the exporter (torch.utils._pytree), not ours
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated"
                               r":FutureWarning"),
    # torch 2.13's exporter warns when one Dim is given to several inputs (h0's batch is x's),
    # although the name it keeps is that same Dim's
    pytest.mark.filterwarnings(r"ignore:# The axis name. batch will not be used:UserWarning"),
]

I, H = 4, 5
EXPORT_TB = (6, 3)  # the example input's (T, B)
# (T, B) at which ONNX Runtime runs the exported graph: the export's, and others (1 step, 1 row)
RUN_TB = [EXPORT_TB, (1, 1), (11, 5), (2, 7)]
CONFIGS = [(L, D, bf) for L in (1, 2) for D in (1, 2) for bf in (False, True)]
OP = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN", "rnn_relu": "RNN"}


def _module(cell, **kw):
    if cell == "lstm":
        return ft.LSTM(I, H, **kw)
    if cell == "gru":
        return ft.GRU(I, H, **kw)
    return ft.RNN(I, H, nonlinearity=cell[4:], **kw)


class Zoo(torch.nn.Module):
    """One module per (num_layers, bidirectional, batch_first), each called without and with
    an initial state (its first L*D rows of h, c), so one export covers every combination.
    x is (T, B, I) for all; batch_first modules get its (B, T, I) transpose. Returns, per module
    and call, y ((T, B, D*H), transposed back for batch_first), h_n and, for LSTM, c_n."""

    def __init__(self, cell):
        super().__init__()
        self.lstm = cell == "lstm"
        self.nets = torch.nn.ModuleList(
            _module(cell, num_layers=L, bidirectional=D == 2, batch_first=bf)
            for L, D, bf in CONFIGS)

    def forward(self, x, h, c):
        outs = []
        for net in self.nets:
            bf = net.batch_first
            xin = x.transpose(0, 1) if bf else x
            LD = net.num_layers * (2 if net.bidirectional else 1)
            for state in (None, (h[:LD], c[:LD]) if self.lstm else h[:LD]):
                y, hidden = net(xin, state)
                outs.append(y.transpose(0, 1) if bf else y)
                outs += list(hidden) if self.lstm else [hidden]
        return tuple(outs)


def _dims():
    return torch.export.Dim("time"), torch.export.Dim("batch")


def _export(model, args, dynamic_shapes):
    program = torch.onnx.export(model, args, dynamo=True, dynamic_shapes=dynamic_shapes)
    return program.model_proto


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run_and_compare(tag, session, model, feeds):
    """ONNX Runtime's outputs against the model's, run in float64 on the same float32 values
    (ONNX Runtime's recurrent kernels are float32 only: tests/_tolerances.py ORT_F32_*)."""
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), feeds)})
    with torch.no_grad():
        want = copy.deepcopy(model).double()(*[a.double() for a in feeds])
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    assert len(got) == len(want), f"{tag}: {len(got)} outputs, the model returns {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w.numpy(), rtol=ORT_F32_RTOL, atol=ORT_F32_ATOL, name=f"{tag} output {k}")


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dim_params(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_export_runs_in_onnxruntime(cell):
    torch.manual_seed(0)
    model = Zoo(cell).eval()
    T, B = EXPORT_TB
    args = (torch.randn(T, B, I), torch.randn(4, B, H), torch.randn(4, B, H))
    time, batch = _dims()
    proto = _export(model, args, ({0: time, 1: batch}, {1: batch}, {1: batch}))
    nodes = proto.graph.node

    # one standard node per layer and call: no Loop / Scan, nothing unrolled over T
    ops = [n.op_type for n in nodes]
    rnn_nodes = [n for n in nodes if n.op_type == OP[cell]]
    assert len(rnn_nodes) == 2 * sum(L for L, _, _ in CONFIGS), ops
    assert not {"LSTM", "GRU", "RNN", "Loop", "Scan"} - {OP[cell]} & set(ops), ops
    directions = []
    for node in rnn_nodes:
        attrs = _attrs(node)
        assert attrs["hidden_size"] == H
        D = 2 if attrs.get("direction", b"forward") == b"bidirectional" else 1
        directions.append(D)
        assert attrs.get("direction", b"forward") in (b"forward", b"bidirectional")
        if cell == "gru":
            assert attrs["linear_before_reset"] == 1  # torch's r⊙(W_hn h + b_hn)
        else:
            assert "linear_before_reset" not in attrs
        if cell == "rnn_relu":
            assert attrs["activations"] == [b"Relu"] * D
        else:  # ONNX's defaults: Tanh (RNN); sigmoid, tanh, tanh (LSTM)
            assert "activations" not in attrs
        assert len(node.output) == (3 if cell == "lstm" else 2)
    assert sorted(set(directions)) == [1, 2]
    # W, R, B reordered at export: constants (folded into initializers), not graph inputs
    assert [i.name for i in proto.graph.input] == ["x", "h", "c"]

    # symbolic batch and time, shared by the inputs and carried to the outputs
    x, h, c = proto.graph.input
    assert _dim_params(x) == ["time", "batch", I]
    assert _dim_params(h) == [4, "batch", H] and _dim_params(c) == [4, "batch", H]
    assert _dim_params(proto.graph.output[0]) == ["time", "batch", H]

    session = _session(proto)
    for T, B in RUN_TB:
        feeds = (torch.randn(T, B, I), torch.randn(4, B, H), torch.randn(4, B, H))
        _run_and_compare(f"{cell} T={T} B={B}", session, model, feeds)


class _Single(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        y, hidden = self.net(x)
        return (y, *hidden) if isinstance(hidden, tuple) else (y, hidden)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_export_without_bias(cell):
    torch.manual_seed(1)
    model = _Single(_module(cell, num_layers=2, bidirectional=True, bias=False)).eval()
    time, batch = _dims()
    proto = _export(model, (torch.randn(*EXPORT_TB, I),), ({0: time, 1: batch},))
    for node in proto.graph.node:
        if node.op_type == OP[cell]:
            assert len(node.input) == 3, list(node.input)  # X, W, R: no B
    session = _session(proto)
    for T, B in RUN_TB:
        _run_and_compare(f"{cell} bias=False T={T} B={B}", session, model,
                         (torch.randn(T, B, I),))


@pytest.mark.parametrize("batch_first", [False, True])
def test_export_unbatched_input(batch_first):
    """2-D input (T, I): the module's unsqueeze and squeeze around the nodes, T symbolic."""
    torch.manual_seed(2)
    model = _Single(ft.GRU(I, H, num_layers=2, batch_first=batch_first)).eval()
    proto = _export(model, (torch.randn(6, I),), ({0: torch.export.Dim("time")},))
    assert _dim_params(proto.graph.input[0]) == ["time", I]
    session = _session(proto)
    for T in (6, 1, 13):
        _run_and_compare(f"unbatched T={T}", session, model, (torch.randn(T, I),))


def test_export_large_weights():
    """Weights above the exporter's constant-folding limit (8192 elements): their gate
    reordering stays in the graph as Slice/Concat on the parameters, which ONNX Runtime runs
    (and folds) itself; the result is the same."""
    torch.manual_seed(3)
    model = _Single(ft.LSTM(40, 64, num_layers=2, bidirectional=True, batch_first=True)).eval()
    time, batch = _dims()
    proto = _export(model, (torch.randn(3, 6, 40),), ({0: batch, 1: time},))
    assert sum(n.op_type == "LSTM" for n in proto.graph.node) == 2
    session = _session(proto)
    for T, B in RUN_TB:
        _run_and_compare(f"H=64 T={T} B={B}", session, model, (torch.randn(B, T, 40),))


class _Tagger(torch.nn.Module):
    """Embedding -> 2-layer bidirectional LSTM (batch_first) -> Linear: a module in a model."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, I)
        self.lstm = ft.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(2 * H, 3)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0])


def test_export_inside_a_model():
    torch.manual_seed(4)
    model = _Tagger().eval()
    time, batch = _dims()
    proto = _export(model, (torch.randint(0, 50, (3, 6)),), ({0: batch, 1: time},))
    assert sum(n.op_type == "LSTM" for n in proto.graph.node) == 2
    session = _session(proto)
    for T, B in RUN_TB:
        tokens = torch.randint(0, 50, (B, T))
        got = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})[0]
        with torch.no_grad():
            want = copy.deepcopy(model).double()(tokens)
        assert_close(got, want.numpy(), rtol=ORT_F32_RTOL, atol=ORT_F32_ATOL,
                     name=f"tagger T={T} B={B}")


def test_module_still_runs_after_export():
    """The export leaves the module as it was: same weights, eager output unchanged."""
    torch.manual_seed(5)
    net = ft.LSTM(I, H, num_layers=2).eval()
    x = torch.randn(*EXPORT_TB, I)
    with torch.no_grad():
        before = net(x)[0]
    _export(_Single(net).eval(), (x,), None)
    assert net._flat_weights[0] is net.weight_ih_l0
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], before, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# What does not export: a clear error naming the option


def _export_error(model, args, **kw):
    with pytest.raises(Exception) as info:
        torch.onnx.export(model, args, **kw)
    causes, e = [], info.value
    while e is not None:
        causes.append(e)
        e = e.__cause__ or e.__context__
    ours = [e for e in causes if isinstance(e, NotImplementedError)
            and "torch.onnx.export of fastrnn.torch" in str(e)]
    assert ours, f"no fastrnn error in {[f'{type(e).__name__}: {e}' for e in causes]}"
    return str(ours[0])


def test_projection_does_not_export():
    msg = _export_error(_Single(ft.LSTM(I, H, proj_size=3)).eval(),
                        (torch.randn(*EXPORT_TB, I),), dynamo=True)
    assert "proj_size=3" in msg and "no projection" in msg


TRAINING_WARNING = "ignore:Exporting a model while it is in training mode:UserWarning"  # torch's


@pytest.mark.filterwarnings(TRAINING_WARNING)
def test_training_dropout_does_not_export():
    model = _Single(ft.GRU(I, H, num_layers=2, dropout=0.5)).train()
    msg = _export_error(model, (torch.randn(*EXPORT_TB, I),), dynamo=True)
    assert "dropout=0.5 in training mode" in msg and "model.eval()" in msg


@pytest.mark.filterwarnings(TRAINING_WARNING)
def test_training_mode_without_dropout_exports():
    """Training mode drops nothing when dropout=0: the graph is the eval one."""
    torch.manual_seed(6)
    model = _Single(ft.GRU(I, H, num_layers=2)).train()
    proto = _export(model, (torch.randn(*EXPORT_TB, I),), None)
    assert sum(n.op_type == "GRU" for n in proto.graph.node) == 2
    _run_and_compare("train mode", _session(proto), model, (torch.randn(*EXPORT_TB, I),))


class _Packed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = ft.LSTM(I, H)

    def forward(self, x, lengths):
        return self.net(pack_padded_sequence(x, lengths, enforce_sorted=False))[0].data


def test_packed_sequence_does_not_export():
    msg = _export_error(_Packed().eval(), (torch.randn(*EXPORT_TB, I), torch.tensor([6, 2, 4])),
                        dynamo=True)
    assert "PackedSequence" in msg and "padded tensor" in msg


def test_narrow_weights_do_not_export():
    """set_weights_dtype's modules run only the prepared network; export says so, not with a
    float32 graph that would silently differ from what the module computes."""
    net = ft.LSTM(I, H).eval().set_weights_dtype("int8")
    with pytest.raises(Exception) as info:
        torch.onnx.export(_Single(net).eval(), (torch.randn(*EXPORT_TB, I),), dynamo=True)
    causes, e = [], info.value
    while e is not None:
        causes.append(e)
        e = e.__cause__
    assert any(isinstance(e, RuntimeError) and "set_weights_dtype(None)" in str(e)
               for e in causes), [f"{type(e).__name__}: {e}" for e in causes]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's: the whole legacy exporter
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the tracer on forward's checks
def test_torchscript_exporter_is_refused(tmp_path):
    msg = _export_error(_Single(ft.GRU(I, H)).eval(), (torch.randn(*EXPORT_TB, I),),
                        f=str(tmp_path / "m.onnx"), dynamo=False)
    assert "dynamo=True" in msg
