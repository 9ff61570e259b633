# SPDX-License-Identifier: MIT
"""fastrnn.torch against torch's own samples for nn.LSTM / GRU / RNN: the ModuleInfo entries of
torch.testing._internal.common_modules.module_db (shipped in the torch wheel), with the module
class swapped for fastrnn's and the same constructor arguments. Each check follows what
torch's test/test_modules.py does with those samples:

- forward (test_forward): outputs equal torch.nn's given the same weights, float64 within the
  same-maths budget of tests/_tolerances.py, in training and eval mode;
- gradients (test_grad, test_gradgrad): gradcheck and gradgradcheck of the outputs in the
  inputs and parameters together, then in each parameter alone, with torch's test defaults
  (fast_mode, check_batched_grad). gradcheck batches the first backward's cotangents with
  torch's legacy vmap, which fastrnn.torch answers through the torch-op composite of the same
  forward (torch.py, _backward);
- pickling (test_save_load): torch.save / torch.load of the module gives the same outputs,
  and of its state_dict (weights_only too) the same tensors;
- non-contiguous inputs (test_non_contiguous_tensors): the same outputs and gradients;
- error inputs (test_errors): the exception type and message torch.nn raises.

The samples are unbatched (torch's own "no-batch-dim" set) plus, for RNN and GRU, the
PackedSequence samples that module_inputs_torch_nn_RNN_GRU makes on request.
"""

import io
from functools import partial

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
common_modules = pytest.importorskip("torch.testing._internal.common_modules")

import fastrnn  # noqa: E402
import fastrnn.torch as ft  # noqa: E402
from _tolerances import SAME_MATHS_F64_ATOL, SAME_MATHS_F64_RTOL, assert_close  # noqa: E402
from torch.nn.utils.rnn import PackedSequence  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402

pytestmark = pytest.mark.skipif(not fastrnn.backends()["cpu"]["available"],
                                reason="compiled CPU engine not built")

F64 = dict(rtol=SAME_MATHS_F64_RTOL, atol=SAME_MATHS_F64_ATOL)
FAST = {torch.nn.LSTM: ft.LSTM, torch.nn.GRU: ft.GRU, torch.nn.RNN: ft.RNN}
INFOS = {mi.module_cls: mi for mi in common_modules.module_db if mi.module_cls in FAST}
NAMES = [cls.__name__ for cls in FAST]


def module_info(name):
    cls = getattr(torch.nn, name)
    if cls not in INFOS:
        pytest.skip(f"torch's module_db has no ModuleInfo for torch.nn.{name}")
    return INFOS[cls]


def samples(name, training, requires_grad):
    """Every float64 CPU sample of torch's ModuleInfo for torch.nn.<name>, and the packed ones."""
    info = module_info(name)
    make = partial(info.module_inputs_func, info, device="cpu", dtype=torch.float64,
                   requires_grad=requires_grad, training=training)
    out = list(make())
    if name in ("RNN", "GRU"):  # the same function's PackedSequence samples, on request
        out += [s for s in make(with_packed_sequence=True) if is_packed(s)]
    return [s for s in out if s.forward_input is not None]


def is_packed(sample):
    return isinstance(sample.forward_input.args[0], PackedSequence)


def sample_id(sample):
    kw = sample.constructor_input.kwargs
    parts = [("bias" if kw.get("bias", True) else "nobias"),
             ("bfirst" if kw.get("batch_first") else "tmajor"),
             ("bi" if kw.get("bidirectional") else "uni")]
    if kw.get("nonlinearity"):
        parts.insert(0, kw["nonlinearity"])
    if kw.get("proj_size"):
        parts.append(f"proj{kw['proj_size']}")
    args = sample.forward_input.args
    parts.append("packed" if is_packed(sample) else f"x{tuple(args[0].shape)}")
    if len(args) > 1:
        parts.append("hx")
    return "-".join(map(str, parts))


def cases(name):
    return [pytest.param(name, k, id=f"{name}-{k}-{sample_id(s)}")
            for k, s in enumerate(samples(name, True, False))]


ALL_CASES = [c for name in NAMES for c in cases(name)]


def make_pair(name, sample, training):
    """fastrnn's module from the sample's constructor arguments, and torch.nn's with the same
    weights, both float64 and in the same mode (as test_modules: construct, .to(dtype), train)."""
    info = INFOS[getattr(torch.nn, name)]
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    fast = FAST[info.module_cls](*args, **kwargs).to(torch.float64).train(training)
    ref = info.module_cls(*args, **kwargs).to(torch.float64).train(training)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def leaves(output):
    """Tensors in torch's traversal order (a PackedSequence's data, batch_sizes, indices)."""
    return pytree.tree_leaves(output)


def tensors(obj):
    """leaves without the None indices of a PackedSequence made with enforce_sorted."""
    return [t for t in leaves(obj) if t is not None]


def assert_same_outputs(got, want, name):
    got, want = leaves(got), leaves(want)
    assert len(got) == len(want), name
    for k, (g, w) in enumerate(zip(got, want)):
        if w is None:  # the indices of a PackedSequence made with enforce_sorted
            assert g is None, f"{name} {k}"
        elif not w.is_floating_point():  # batch_sizes and indices of a PackedSequence
            assert torch.equal(g, w), f"{name} {k}"
        else:
            assert g.dtype == w.dtype and g.shape == w.shape, f"{name} {k}"
            assert_close(g.detach().numpy(), w.detach().numpy(), name=f"{name} {k}", **F64)


def get_sample(name, k, training, requires_grad):
    return samples(name, training, requires_grad)[k]


# ----------------------------------------------------------------------------------------------
# test_forward


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,k", ALL_CASES)
def test_forward_equals_torch_nn(name, k, training):
    sample = get_sample(name, k, training, requires_grad=False)
    fast, ref = make_pair(name, sample, training)
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
    assert_same_outputs(fast(*args, **kwargs), ref(*args, **kwargs), "output")


# ----------------------------------------------------------------------------------------------
# test_grad / test_gradgrad


def every_parameter_kind(sample):
    """Samples whose module has every kind of parameter its class can have (biases, both
    directions, LSTM's projection), time-major: those whose parameters are also checked one
    at a time."""
    kw = sample.constructor_input.kwargs
    return (kw.get("bias", True) and kw.get("bidirectional", False)
            and not kw.get("batch_first", False) and kw.get("proj_size", 2) > 0)


def check_gradients(name, k, check, **options):
    """torch's _test_gradients_helper in training mode: the total derivative (inputs and every
    parameter), then, for the samples of every_parameter_kind, each parameter alone (the inputs
    still requiring grad). The module reads its own parameters, which gradcheck perturbs in
    place as inputs."""
    sample = get_sample(name, k, True, requires_grad=True)
    fast, _ = make_pair(name, sample, True)
    input_args = sample.forward_input.args
    assert not sample.forward_input.kwargs
    params = tuple(fast.parameters())

    def fn(*flat):
        args = pytree.tree_unflatten(list(flat), spec)[:len(input_args)]
        return tensors(fast(*args))

    flat, spec = pytree.tree_flatten(input_args + params)
    assert check(fn, flat, **options), "total derivative"
    if not every_parameter_kind(sample):
        return
    for p in params:
        p.requires_grad_(False)
    for name_p, p in fast.named_parameters():
        p.requires_grad_(True)
        flat, spec = pytree.tree_flatten(input_args + params)
        assert check(fn, flat, **options), name_p
        p.requires_grad_(False)


# Gradients are checked in training mode only: fastrnn's modules read `training` for dropout
# alone, which these samples do not have, so eval mode runs the same op (test_forward and the
# others run both modes). Each parameter alone: the samples of every_parameter_kind. Together
# that is about a tenth of torch's count of checks, which on two cores would take ten minutes.


@pytest.mark.parametrize("name,k", ALL_CASES)
def test_gradcheck(name, k):
    check_gradients(name, k, torch.autograd.gradcheck, fast_mode=True,
                    check_batched_grad=True)


@pytest.mark.parametrize("name,k", ALL_CASES)
def test_gradgradcheck(name, k):
    check_gradients(name, k, torch.autograd.gradgradcheck, fast_mode=True,
                    check_batched_grad=True)


# ----------------------------------------------------------------------------------------------
# test_save_load


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,k", ALL_CASES)
def test_pickle_round_trip(name, k, training):
    sample = get_sample(name, k, training, requires_grad=False)
    fast, _ = make_pair(name, sample, training)
    args = sample.forward_input.args
    output = fast(*args)
    buf = io.BytesIO()
    torch.save(fast, buf)
    buf.seek(0)
    copy = torch.load(buf, weights_only=False)  # a whole module is not weights-only data
    assert type(copy) is type(fast)
    assert_same_outputs(copy(*args), output, "output of the loaded module")
    state = fast.state_dict()
    for weights_only in (False, True):
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=weights_only)
        assert loaded.keys() == state.keys()
        for key in state:
            assert torch.equal(loaded[key], state[key]), key


# ----------------------------------------------------------------------------------------------
# test_non_contiguous_tensors


def non_contiguous(t):
    """torch's construction: every other column of a doubled tensor, same values."""
    out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
    out.requires_grad_(t.requires_grad)
    assert not out.is_contiguous()
    return out


def with_non_contiguous(args):
    def convert(obj):
        if isinstance(obj, PackedSequence):  # its data; the sizes and indices stay as they are
            return obj._replace(data=non_contiguous(obj.data))
        if isinstance(obj, tuple):
            return tuple(convert(o) for o in obj)
        return non_contiguous(obj) if isinstance(obj, torch.Tensor) else obj
    return convert(args)


def outputs_and_gradients(module, args, grad_outputs):
    for p in module.parameters():
        p.grad = None
    inputs = [t for t in tensors(args) if t.requires_grad]
    out = tensors(module(*args))
    diff = [(o, g) for o, g in zip(out, grad_outputs) if o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in diff], inputs + list(module.parameters()),
                                [g for _, g in diff])
    return [o.detach() for o in out], list(grads)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,k", ALL_CASES)
def test_non_contiguous_inputs(name, k, training):
    """Non-contiguous inputs and output gradients, each with the contiguous other: the same
    outputs and gradients as the contiguous ones (fastrnn computes the same products)."""
    sample = get_sample(name, k, training, requires_grad=True)
    fast, _ = make_pair(name, sample, training)
    args = sample.forward_input.args
    g = torch.Generator().manual_seed(k)
    grad_outputs = [torch.randn(o.shape, generator=g, dtype=o.dtype) if o.is_floating_point()
                    else None for o in tensors(fast(*args))]
    nc_grad_outputs = [None if t is None else non_contiguous(t) for t in grad_outputs]
    want_out, want_grads = outputs_and_gradients(fast, args, grad_outputs)
    for a, go in [(args, nc_grad_outputs), (with_non_contiguous(args), grad_outputs),
                  (with_non_contiguous(args), nc_grad_outputs)]:
        got_out, got_grads = outputs_and_gradients(fast, a, go)
        assert_same_outputs(got_out, want_out, "output")
        assert_same_outputs(got_grads, want_grads, "gradient")


# ----------------------------------------------------------------------------------------------
# test_errors


def error_cases():
    out = []
    for name in NAMES:
        info = INFOS.get(getattr(torch.nn, name))
        if info is None or info.module_error_inputs_func is None:
            continue
        errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float64,
                                               requires_grad=False, training=True)
        out += [pytest.param(name, k, id=f"{name}-{k}-{e.error_on.name.lower()}")
                for k, e in enumerate(errors)]
    return out


@pytest.mark.parametrize("name,k", error_cases())
def test_error_inputs_raise_as_torch_nn(name, k):
    """Construction errors and forward errors: the exception type and message of torch.nn,
    which must also match the sample's own expectation."""
    info = INFOS[getattr(torch.nn, name)]
    error = info.module_error_inputs_func(info, device="cpu", dtype=torch.float64,
                                          requires_grad=False, training=True)[k]
    sample = error.module_error_input
    c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    raised = []
    for cls in (info.module_cls, FAST[info.module_cls]):
        with pytest.raises(error.error_type, match=error.error_regex) as caught:
            if error.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
                cls(*c_args, **c_kwargs)
            else:
                m = cls(*c_args, **c_kwargs)
                m(*sample.forward_input.args, **sample.forward_input.kwargs)
        raised.append((type(caught.value), str(caught.value)))
    assert raised[1] == raised[0]
