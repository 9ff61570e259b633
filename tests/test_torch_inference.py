# SPDX-License-Identifier: MIT
"""fastrnn.torch's eager CPU inference path: the prepared network kept on the module.

- its outputs equal the custom op's (the path taken otherwise): bitwise in float64 and in
  float32 where both run the same products, over cell × layers × directions × batch_first ×
  PackedSequence × initial state, whole sequences and one step (`net.step`); float32 one-step
  calls of 1 row, where they do not, within the float32 budget of tests/_tolerances.py;
- it is used only when nothing needs a gradient and nothing traces the call (grad mode,
  torch.compile(fullgraph=True), a dispatch mode), not for inference tensors or dropout;
- it is made on the second call with the same weights, and made again after every change
  torch counts: in-place under no_grad (one element), an optimizer step, load_state_dict,
  .double(), a new Parameter, `w.data = ...`; after `.data` writes, on flatten_parameters();
- deep copies and pickles of a module that has one work and start without it.

"The op's path" is the module with `_eager_cpu_inference` patched to say no.
"""

import copy
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from _tolerances import assert_within_float32_budget, textbook_float32_reference  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

pytestmark = pytest.mark.skipif(not fastrnn.backends()["cpu"]["available"],
                                reason="compiled CPU engine not built")

FAST = {"lstm": ft.LSTM, "gru": ft.GRU, "rnn_tanh": ft.RNN, "rnn_relu": ft.RNN}
I, H, P = 4, 5, 3
LENGTHS = [3, 5, 1, 4]  # unsorted: PackedSequence's sorted/unsorted indices are exercised


def make(cell, dtype=torch.float64, seed=0, **kw):
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell[4:]
    torch.manual_seed(seed)
    return FAST[cell](I, H, dtype=dtype, **kw)


def inputs(module, T, B, dtype=torch.float64, seed=1, batch_first=False):
    g = torch.Generator().manual_seed(seed)
    D = 2 if module.bidirectional else 1
    LD, Hout = module.num_layers * D, module.proj_size or module.hidden_size
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=dtype)
    h0 = torch.randn(LD, B, Hout, generator=g, dtype=dtype)
    c0 = torch.randn(LD, B, H, generator=g, dtype=dtype)
    return x, (h0, c0) if module.mode == "LSTM" else h0


def cached(module):
    """The module's prepared network, None when it has none."""
    cache = module.__dict__.get("_prepared_cache")
    return None if cache is None or cache.entry is None else cache.entry[1]


def flat(out):
    """(output, hidden) as a flat list of tensors, a PackedSequence as its four tensors."""
    y, hidden = out
    ys = list(y) if isinstance(y, PackedSequence) else [y]
    return ys + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def op_path(module, *args):
    """The module's forward with the prepared-network path switched off: the custom op."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft, "_eager_cpu_inference", lambda tensors: False)
        return module(*args)


def assert_bitwise(got, want):
    got, want = flat(got), flat(want)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, k
        assert a.stride() == b.stride(), (k, a.stride(), b.stride())  # the op's layouts
        assert torch.equal(a, b), (k, (a - b).abs().max())


def infer(module, *args, grad_mode=torch.no_grad):
    with grad_mode():
        return module(*args)


# ----------------------------------------------------------------------------------------------
# Same outputs as the custom op


@pytest.mark.parametrize("packed", [False, True], ids=["tensor", "packed"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("L,bidirectional", [(1, False), (2, True)], ids=["1uni", "2bi"])
@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("lstm", P), ("gru", 0), ("rnn_tanh", 0),
                                       ("rnn_relu", 0)],
                         ids=["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_sequences_equal_the_op_bitwise(dtype, cell, proj, L, bidirectional, with_hx,
                                        batch_first, packed):
    """T=5, B=4 (T*B >= 16: the op packs its float32 weights too, as the prepared network does)."""
    kw = dict(proj_size=proj) if proj else {}
    m = make(cell, dtype, num_layers=L, bidirectional=bidirectional, batch_first=batch_first, **kw)
    x, hx = inputs(m, 5, 4, dtype, batch_first=batch_first)
    if packed:
        x = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=batch_first,
                                 enforce_sorted=False)
    args = (x, hx) if with_hx else (x,)
    want = infer(op_path, m, *args)
    assert cached(m) is None
    for grad_mode in (torch.no_grad, torch.inference_mode):
        for _ in range(2):  # the first call prepares nothing, the second does
            assert_bitwise(infer(m, *args, grad_mode=grad_mode), want)
        assert cached(m) is not None


@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("cell,proj", [("lstm", 0), ("lstm", P), ("gru", 0), ("rnn_tanh", 0),
                                       ("rnn_relu", 0)],
                         ids=["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"])
def test_one_step_equals_the_op_bitwise(cell, proj, with_hx, batch_first, unbatched):
    """T=1 of a unidirectional network runs net.step: float64, 2 layers, B=3."""
    kw = dict(proj_size=proj) if proj else {}
    m = make(cell, num_layers=2, batch_first=batch_first, **kw)
    x, hx = inputs(m, 1, 3, batch_first=batch_first)
    if unbatched:
        x = x[0]
        hx = tuple(h[:, 0] for h in hx) if cell == "lstm" else hx[:, 0]
    args = (x, hx) if with_hx else (x,)
    want = infer(op_path, m, *args)
    for _ in range(2):
        got = infer(m, *args)
        assert_bitwise(got, want)
    assert cached(m) is not None
    # y is a copy of the last layer's h_n, not a view of it (outputs do not alias)
    h_n = got[1][0] if cell == "lstm" else got[1]
    before = h_n.clone()
    got[0].add_(1)
    assert torch.equal(h_n, before)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("T", [1, 3])
def test_float32_single_row_within_budget(cell, T):
    """float32 with B=1, T*B < 16: the op runs BLAS gemv on the weights in place and the
    prepared network its packed panels, so the two may round differently; both stay within
    the float32 budget against float64 (the module's float64 result is exact here: the
    float64 reference's)."""
    m32 = make(cell, torch.float32, num_layers=2)
    m64 = copy.deepcopy(m32).double()
    x, hx = inputs(m32, T, 1, torch.float32)
    x64, hx64 = x.double(), (tuple(h.double() for h in hx) if cell == "lstm" else hx.double())
    infer(m32, x, hx)
    got = flat(infer(m32, x, hx))
    assert cached(m32) is not None
    op = flat(infer(op_path, m32, x, hx))
    exact = flat(infer(op_path, m64, x64, hx64))
    weights = [w.detach().numpy() for w in m32._flat_weights]
    forward = {"lstm": fastrnn.lstm_forward, "gru": fastrnn.gru_forward,
               "rnn_tanh": fastrnn.rnn_forward}[cell]
    states = [h.numpy() for h in (hx if cell == "lstm" else (hx,))]
    with textbook_float32_reference():
        out = forward(x.numpy(), weights, *states, num_layers=2, backend="reference")
    naive = [out.y, out.h_n] + ([out.c_n] if cell == "lstm" else [])
    for k, (a, b, n, e) in enumerate(zip(got, op, naive, exact)):
        for name, t in (("cached", a), ("op", b)):
            assert_within_float32_budget(t.numpy(), n, e.numpy(), forward=True,
                                         name=f"{name} output {k}")


# ----------------------------------------------------------------------------------------------
# When it is used


def test_not_when_a_gradient_is_needed():
    """Grad mode with parameters that require grad: the op (autograd) as before, every call;
    grad mode with nothing requiring grad: the prepared network."""
    m = make("lstm")
    x, hx = inputs(m, 3, 2)
    for _ in range(3):
        y, _ = m(x, hx)
        assert y.requires_grad
    assert cached(m) is None
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.requires_grad_(False)
    for _ in range(2):
        y, _ = m(x, hx)
    assert not y.requires_grad and cached(m) is not None
    # x requiring grad needs the op again, and gets its gradient
    m.requires_grad_(True)
    xg = x.clone().requires_grad_()
    y, _ = m(xg, hx)
    assert y.requires_grad
    y.sum().backward()
    assert xg.grad is not None


def test_not_for_training_dropout_nor_inference_tensors():
    """Training-mode dropout draws masks (the op's job); weights made under inference_mode have
    no version counter, so they cannot be keyed: both run the op, every call."""
    m = make("lstm", num_layers=2, dropout=0.5)
    x, hx = inputs(m, 3, 2)
    for _ in range(3):
        infer(m, x, hx)
    assert cached(m) is None
    m.eval()
    for _ in range(2):
        infer(m, x, hx)
    assert cached(m) is not None

    with torch.inference_mode():
        n = make("gru")
        x, hx = inputs(n, 3, 2)
        assert n.weight_ih_l0.is_inference()
        for _ in range(3):
            got = n(x, hx)
        assert cached(n) is None
        assert_bitwise(got, op_path(n, x, hx))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_graphs_keep_the_op():
    """torch.compile(fullgraph=True) under no_grad: one graph that calls the custom op (Dynamo
    sees `torch.compiler.is_compiling()` and never traces the prepared path)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    m = make("lstm", num_layers=2, bidirectional=True)
    x, hx = inputs(m, 3, 2)
    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(m, backend=counter, fullgraph=True)
    with torch.no_grad():
        outs = [compiled(x, hx) for _ in range(2)]
    assert counter.frame_count == 1
    assert counter.graphs[0].code.count("fastrnn.rnn_forward") == 1
    assert cached(m) is None
    for out in outs:
        assert_bitwise(out, infer(op_path, m, x, hx))


def test_a_dispatch_mode_sees_the_op():
    """Under a TorchDispatchMode (a profiler, FlopCounterMode, export) the op is what runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    m = make("gru")
    x, hx = inputs(m, 3, 2)
    with torch.no_grad():
        m(x, hx), m(x, hx)  # prepared
        assert cached(m) is not None
        with Record() as rec:
            m(x, hx)
    assert any("fastrnn.rnn_forward" in op for op in rec.ops), rec.ops


# ----------------------------------------------------------------------------------------------
# Made again when the weights change


def fresh_copy(module):
    """A module with the same weights (and options), no prepared network, run on the op."""
    other = copy.deepcopy(module)
    assert cached(other) is None
    return other


def changes():
    """(name, change(module)) for each way torch sees a weight change."""

    def in_place_one_element(m):
        with torch.no_grad():
            m.weight_hh_l0[0, 0] += 1

    def add_under_no_grad(m):
        with torch.no_grad():
            m.bias_ih_l0.add_(0.25)

    def optimizer_step(m):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        x, hx = inputs(m, 3, 2, m.weight_ih_l0.dtype, seed=7)
        y, _ = m(x, hx)
        y.sum().backward()
        opt.step()

    def load_state_dict(m):
        m.load_state_dict(make(m.mode.lower().split("_")[0] if m.mode != "RNN_RELU" else "rnn_relu",
                               m.weight_ih_l0.dtype, seed=5).state_dict())

    def new_parameter(m):
        m.weight_ih_l0 = torch.nn.Parameter(m.weight_ih_l0.detach() * 2)

    def assign_data(m):
        m.weight_hh_l0.data = m.weight_hh_l0.detach() * 2

    return [in_place_one_element, add_under_no_grad, optimizer_step, load_state_dict,
            new_parameter, assign_data]


@pytest.mark.parametrize("change", changes(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_made_again_after_a_change(cell, change):
    """After the change the outputs move, and equal (bitwise, float64) those of the op on the
    changed weights: a cache keyed without the counter or the address would keep the old ones."""
    m = make(cell)
    x, hx = inputs(m, 4, 2)
    before = [infer(m, x, hx) for _ in range(2)][-1]
    net = cached(m)
    assert net is not None
    change(m)
    want = infer(op_path, fresh_copy(m), x, hx)
    assert not torch.equal(flat(want)[0], flat(before)[0])  # the change changes the outputs
    for _ in range(2):
        assert_bitwise(infer(m, x, hx), want)
    assert cached(m) is not None and cached(m) is not net


def test_double_and_back():
    """.double() and .float(): new memory and dtype; the outputs follow, in the new dtype."""
    m = make("lstm", torch.float32, num_layers=2)
    x, hx = inputs(m, 5, 4, torch.float32)
    [infer(m, x, hx) for _ in range(2)]
    m.double()
    assert cached(m) is None  # _apply re-inits the flat weights, which drops it
    x64, hx64 = x.double(), tuple(h.double() for h in hx)
    want = infer(op_path, fresh_copy(m), x64, hx64)
    for _ in range(2):
        got = infer(m, x64, hx64)
        assert_bitwise(got, want)
    assert cached(m).dtype == np.float64
    m.float()
    for _ in range(2):
        got = infer(m, x, hx)
    assert_bitwise(got, infer(op_path, fresh_copy(m), x, hx))


def test_a_transposed_view_is_a_change():
    """`w.data = w.data.t()` on the square W_hh of an RNN: same memory, same version counter,
    other strides (so other weights)."""
    m = make("rnn_tanh")
    x, hx = inputs(m, 4, 2)
    [infer(m, x, hx) for _ in range(2)]
    w = m.weight_hh_l0
    ptr, version = w.data_ptr(), w._version
    w.data = w.data.t()
    assert (w.data_ptr(), w._version) == (ptr, version)
    want = infer(op_path, fresh_copy(m), x, hx)
    for _ in range(2):
        assert_bitwise(infer(m, x, hx), want)


def test_writes_torch_does_not_count_need_flatten_parameters():
    """`w.data.add_()` bumps no version counter (torch documents `.data` as untracked);
    flatten_parameters(), torch's call for re-syncing an RNN's weights, drops the network."""
    m = make("gru")
    x, hx = inputs(m, 4, 2)
    [infer(m, x, hx) for _ in range(2)]
    version = m.weight_hh_l0._version
    m.weight_hh_l0.data.add_(1)
    assert m.weight_hh_l0._version == version
    m.flatten_parameters()
    assert cached(m) is None
    want = infer(op_path, fresh_copy(m), x, hx)
    for _ in range(2):
        assert_bitwise(infer(m, x, hx), want)


def test_weights_swapped_every_call_are_not_prepared():
    """torch.func.functional_call with other weights, alternating with the module's own: no
    call sees the same weights twice in a row, so nothing is prepared for the swapped ones
    (preparing costs about ten calls), and each call's outputs are those weights' outputs."""
    m = make("lstm")
    x, hx = inputs(m, 3, 2)
    other = {k: v * 0.5 for k, v in m.state_dict().items()}
    ref = make("lstm")
    ref.load_state_dict(other)
    with torch.no_grad():
        for _ in range(3):
            got = torch.func.functional_call(m, other, (x, hx))
            assert cached(m) is None
            assert_bitwise(got, op_path(ref, x, hx))
            assert_bitwise(m(x, hx), op_path(fresh_copy(m), x, hx))


def test_held_weights_keep_their_memory():
    """The network holds the weights it was made from (sharing their memory), so their
    addresses cannot be handed to new weights while it is kept."""
    m = make("gru")
    x, hx = inputs(m, 3, 2)
    [infer(m, x, hx) for _ in range(2)]
    held = m._prepared_cache.entry[2]
    assert [h.data_ptr() for h in held] == [w.data_ptr() for w in m._flat_weights]


# ----------------------------------------------------------------------------------------------
# Copies


def test_deepcopy_and_pickle_start_without_the_network():
    m = make("lstm", num_layers=2)
    x, hx = inputs(m, 4, 2)
    want = [infer(m, x, hx) for _ in range(2)][-1]
    assert cached(m) is not None
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert cached(other) is None
        for _ in range(2):
            assert_bitwise(infer(other, x, hx), want)
        assert cached(other) is not None and cached(other) is not cached(m)


# ----------------------------------------------------------------------------------------------
# Low-precision weights: set_weights_dtype and quantize_dynamic


def prepared_outputs(module, x, state, weights_dtype):
    """What fastrnn.prepare(weights_dtype=...) gives on the module's weights: (y, h_n[, c_n])."""
    cell, options = ft._PREPARE[module.mode]
    net = fastrnn.prepare(cell, [w.detach().numpy() for w in module._flat_weights],
                          num_layers=module.num_layers, bidirectional=module.bidirectional,
                          proj_size=module.proj_size, weights_dtype=weights_dtype, **options)
    states = [s.numpy() for s in (state if isinstance(state, tuple) else (state,))]
    out = net(x.numpy(), *states)
    return [a for a in (out.y, out.h_n, out.c_n) if a is not None]


@pytest.mark.parametrize("weights_dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("cell", list(FAST))
def test_low_precision_weights_run_the_prepared_network(cell, T, weights_dtype):
    """A module with set_weights_dtype runs, from its first call, what the prepared network of
    that weights_dtype gives (bitwise: the same engine), not float32 weights' results; whole
    sequences and one step, 2 layers."""
    module = make(cell, torch.float32, num_layers=2).eval()
    assert module.set_weights_dtype(weights_dtype) is module
    x, state = inputs(module, T, 3, torch.float32)
    with torch.no_grad():
        y, hidden = module(x, state)
        y32, _ = copy.deepcopy(module).set_weights_dtype(None)(x, state)
    got = [y] + list(hidden if isinstance(hidden, tuple) else (hidden,))
    want = prepared_outputs(module, x, state, weights_dtype)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b)
    assert not torch.equal(y, y32)  # not the float32 weights' outputs


def test_low_precision_weights_follow_parameter_changes():
    module = make("lstm", torch.float32).eval().set_weights_dtype("int8")
    x, state = inputs(module, 4, 2, torch.float32)
    with torch.no_grad():
        module(x, state)
        module.weight_hh_l0.mul_(0.5)  # an in-place change torch counts
        y, _ = module(x, state)
    np.testing.assert_array_equal(y.numpy(), prepared_outputs(module, x, state, "int8")[0])
    module.set_weights_dtype(None)  # float32 weights again, and trainable
    x.requires_grad_(True)
    module(x, state)[0].sum().backward()
    assert x.grad is not None


def test_low_precision_weights_refuse_what_they_cannot_run():
    module = make("gru", torch.float32, num_layers=2, dropout=0.5)
    module.set_weights_dtype("int8")
    x, state = inputs(module, 3, 2, torch.float32)
    message = r"GRU: weights_dtype='int8' runs inference only: .*set_weights_dtype\(None\)"
    with pytest.raises(RuntimeError, match=message):  # gradients wanted
        module(x, state)
    with torch.no_grad(), pytest.raises(RuntimeError, match=message):  # training-mode dropout
        module(x, state)
    with torch.no_grad():
        module.eval()(x, state)
    with pytest.raises(ValueError, match=r"weights_dtype: expected None, 'bfloat16' or 'int8', "
                                         r"got 'float16'"):
        module.set_weights_dtype("float16")
    with pytest.raises(TypeError, match=r"weights_dtype: 'int8' stores the weights of a float32 "
                                        r"module, got torch.float64 parameters"):
        make("gru", torch.float64).set_weights_dtype("int8")


class TwoRNNs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(I, H, num_layers=2)
        self.head = torch.nn.Sequential(torch.nn.GRU(H, H))

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head[0](y)[0]


def test_quantize_dynamic_swaps_in_drop_ins():
    """torch.ao.quantization.quantize_dynamic's replacement: nn.LSTM/GRU/RNN inside a model (and
    a bare one) become fastrnn modules with the weights_dtype, sharing nothing with the original
    unless inplace; outputs within the int8 budget of the float32 model."""
    from _tolerances import INT8_WEIGHTS_REL

    torch.manual_seed(0)
    model = TwoRNNs().eval()
    q = ft.quantize_dynamic(model)
    assert type(q.rnn) is ft.LSTM and type(q.head[0]) is ft.GRU
    assert type(model.rnn) is torch.nn.LSTM  # a copy was changed
    assert q.rnn.weights_dtype == q.head[0].weights_dtype == "int8"
    x = torch.randn(7, 2, I)
    with torch.no_grad():
        want, got = model(x), q(x)
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert 0 < err <= INT8_WEIGHTS_REL, err
    bare = ft.quantize_dynamic(torch.nn.RNN(I, H), "bfloat16", inplace=True)
    assert type(bare) is ft.RNN and bare.weights_dtype == "bfloat16"
    q2 = pickle.loads(pickle.dumps(q))
    assert q2.rnn.weights_dtype == "int8"
    with torch.no_grad():
        torch.testing.assert_close(q2(x), got, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"weights_dtype: expected 'int8' or 'bfloat16'"):
        ft.quantize_dynamic(model, None)
