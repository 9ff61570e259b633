# SPDX-License-Identifier: MIT
"""fastrnn.keras.LSTM / GRU / SimpleRNN against keras.layers', on the torch and JAX backends.

Keras picks its backend once, from KERAS_BACKEND, when it is first imported, so each backend
runs in a child process: this file run as a script (`KERAS_BACKEND=jax python
tests/test_keras.py OUTDIR`) computes every case once and prints one JSON object; the tests
below read it (one child per backend per session) and assert. The parent never imports keras.

What is compared, each fastrnn layer against the keras.layers layer holding the same weights
(`set_weights(get_weights())`), float32, small odd shapes:
- outputs and states: LSTM, GRU (reset_after True and False), SimpleRNN (tanh, relu); with
  return_sequences / return_state, go_backwards, initial_state, masks that are right-padded
  (Embedding(mask_zero=True)), left-padded and holed, zero_output_for_mask, use_bias=False,
  input dropout in training (same seed, same masks), stateful over two calls and in fit,
  Bidirectional, a mixed_bfloat16 policy;
- gradients of a loss of all outputs with respect to the variables, the input and the initial
  state (torch: loss.backward(); JAX: jax.grad of stateless_call), and the weights after one
  `model.fit` step with SGD(learning_rate=1) (so a weight difference is a gradient difference);
- weights (names, shapes, interchangeable lists), get_config / from_config, model.save +
  keras.models.load_model, and a few epochs of fit lowering the loss;
- the ValueError / RuntimeError of what fastrnn cannot run (activations, recurrent_dropout,
  implementation=1 with dropout, the TensorFlow backend).
ATOL is the issue's parity target for float32 (issue 23, item 5): ≤ 1e-5 absolute.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ATOL = 1e-5
BACKENDS = {"torch": ("keras", "torch"), "jax": ("keras", "jax")}

# (case, layer class, constructor kwargs, call options): what _forward_cases runs
CELLS = [("lstm", "LSTM", {}), ("gru_after", "GRU", {"reset_after": True}),
         ("gru_before", "GRU", {"reset_after": False}), ("rnn_tanh", "SimpleRNN", {}),
         ("rnn_relu", "SimpleRNN", {"activation": "relu"})]
# every cell: no mask; a mask (right, left and holed) with an initial state, forwards and
# backwards; input dropout. Some cells also: the last output only, go_backwards without a mask,
# zero_output_for_mask, use_bias=False.
VARIANTS = {"plain": "all", "mask_state": "all", "backwards_mask_state": "all", "dropout": "all",
            "mask": ["lstm", "rnn_tanh"], "last": ["lstm", "gru_after", "rnn_relu"],
            "backwards": ["lstm", "gru_before"], "zero_output_for_mask": ["lstm", "rnn_relu"],
            "no_bias": ["lstm", "gru_after", "gru_before", "rnn_tanh"]}
FORWARD_CASES = [(cell, variant) for variant, cells in VARIANTS.items()
                 for cell, _, _ in CELLS if cells == "all" or cell in cells]


# ----------------------------------------------------------------------------------------------
# Parent: run the child once per backend, then assert on what it measured


_CHILDREN = {}  # backend -> (the running child, its output folder), then its parsed results


def _start_children(tmp_path_factory):
    """Start every available backend's child at once (they are independent; together they
    take about as long as the slower one) the first time any test asks for results."""
    for backend, modules in BACKENDS.items():
        if backend in _CHILDREN or any(importlib.util.find_spec(m) is None for m in modules):
            continue
        out = tmp_path_factory.mktemp(f"keras_{backend}")
        env = dict(os.environ, KERAS_BACKEND=backend, FASTRNN_NUM_THREADS="1")
        with open(out / "stdout", "w") as stdout, open(out / "stderr", "w") as stderr:
            # files, not pipes: a child never blocks on a full pipe while the other is awaited
            _CHILDREN[backend] = (subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), str(out)], env=env, stdout=stdout,
                stderr=stderr), out)


def _results(backend, tmp_path_factory):
    for module in BACKENDS[backend]:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    _start_children(tmp_path_factory)
    if isinstance(_CHILDREN[backend], tuple):
        child, out = _CHILDREN[backend]
        child.wait(timeout=600)
        stdout, stderr = (out / "stdout").read_text(), (out / "stderr").read_text()
        if child.returncode != 0:
            _CHILDREN[backend] = {"failed": f"{stdout[-3000:]}\n{stderr[-6000:]}"}
        else:
            _CHILDREN[backend] = json.loads(stdout.strip().splitlines()[-1])
    if "failed" in _CHILDREN[backend]:
        pytest.fail(f"the {backend} child failed:\n{_CHILDREN[backend]['failed']}")
    return _CHILDREN[backend]


@pytest.fixture(params=list(BACKENDS))
def res(request, tmp_path_factory):
    return _results(request.param, tmp_path_factory)


def _check(diffs, what):
    print(what, {k: f"{v:.2e}" for k, v in diffs.items()})
    bad = {k: v for k, v in diffs.items() if not v <= ATOL}  # NaN fails too
    assert not bad, f"{what}: max |fastrnn - keras.layers| above {ATOL}: {bad}"


@pytest.mark.parametrize("cell, variant", FORWARD_CASES)
def test_forward_matches_keras_layers(res, cell, variant):
    _check(res["forward"][f"{cell}/{variant}"], f"{cell}/{variant}")


@pytest.mark.parametrize("cell", ["lstm", "gru_after", "gru_before", "rnn_tanh"])
def test_embedding_mask_zero_right_padding(res, cell):
    _check(res["embedding"][cell], cell)


@pytest.mark.parametrize("cell", ["lstm", "gru_before"])
def test_stateful_over_two_calls(res, cell):
    _check(res["stateful"][cell], cell)


@pytest.mark.parametrize("cell", [c[0] for c in CELLS])
def test_gradients_match_keras_layers(res, cell):
    _check(res["grads"][cell], cell)


@pytest.mark.parametrize("cell", ["lstm", "gru_before", "rnn_relu"])
def test_one_fit_step_matches_keras_layers(res, cell):
    _check(res["fit_step"][cell], cell)


def test_stateful_fit_matches_keras_layers(res):
    _check(res["stateful_fit"], "stateful fit")


def test_fit_trains(res):
    losses = res["fit_losses"]
    print(losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_weights_are_keras_layers(res):
    w = res["weights"]
    assert w["paths"] == w["ref_paths"]
    assert w["shapes"] == w["ref_shapes"]
    assert w["swapped"] == 0.0  # set_weights(keras layer's list) then get_weights: same arrays


def test_config_round_trip(res):
    c = res["config"]
    assert c["same_as_keras"], c["diff"]
    assert c["from_config_same"] and c["from_config_class"] == "LSTM"
    assert c["registered"] == "fastrnn>LSTM"


def test_save_and_load_model(res):
    s = res["save"]
    assert s["classes"] == ["Embedding", "LSTM", "GRU", "Dense"]
    assert s["modules"][1:3] == ["fastrnn.keras", "fastrnn.keras"]
    assert s["reloaded"] == 0.0
    # the same file loads into keras.layers (custom_objects), with the same predictions
    assert s["as_keras_layers"] <= ATOL and s["as_keras_classes"][1:3] == ["LSTM", "GRU"]


def test_bidirectional_wrapper(res):
    b = res["bidirectional"]
    assert b["classes"] == ["GRU/fastrnn.keras", "GRU/fastrnn.keras"]
    _check({"outputs": b["outputs"]}, "bidirectional")


def test_mixed_precision_policy(res):
    m = res["mixed"]
    print(m)
    assert m["dtypes"] == ["bfloat16", "bfloat16"]
    # keras.layers computes every step in bfloat16 (8 significant bits), fastrnn in float32:
    # they differ by bfloat16 rounding, a few units of 2**-8 over 7 steps, not by 1e-5
    assert m["diff"] <= 0.03, m


@pytest.mark.parametrize("case, error, words", [
    ("lstm_activation", "ValueError", ["activation", "'relu'", "tanh"]),
    ("lstm_recurrent_activation", "ValueError", ["recurrent_activation", "hard_sigmoid"]),
    ("gru_custom_activation", "ValueError", ["activation", "'<lambda>'", "keras.layers.GRU"]),
    ("rnn_activation", "ValueError", ["activation", "'selu'", "'tanh' or 'relu'"]),
    ("lstm_recurrent_dropout", "ValueError", ["recurrent_dropout", "0.25"]),
    ("gru_recurrent_dropout", "ValueError", ["recurrent_dropout"]),
    ("rnn_recurrent_dropout", "ValueError", ["recurrent_dropout"]),
    ("lstm_implementation_1_dropout", "ValueError", ["implementation", "dropout"]),
    ("tensorflow_backend", "RuntimeError", ["'tensorflow'", "keras.layers.LSTM", "KERAS_BACKEND"]),
])
def test_unsupported_options_raise(res, case, error, words):
    got = res["errors"][case]
    assert got[0] == error, got
    for word in words:
        assert word in got[1], (word, got)


def test_accepted_options_that_change_nothing(res):
    # unroll=True, use_cudnn=True and implementation=1 without dropout: same results
    _check(res["accepted"], "accepted")


# ----------------------------------------------------------------------------------------------
# Child: KERAS_BACKEND is set; compute every case and print one JSON line


def _child(outdir):
    import numpy as np
    import keras
    from keras import ops

    import fastrnn
    import fastrnn.keras as fk

    fastrnn.set_num_threads(1)
    backend = keras.config.backend()
    rng = np.random.default_rng(7)
    B, T, I, H = 3, 7, 4, 5

    def np_(a):
        return np.asarray(ops.convert_to_numpy(a), dtype=np.float64)

    def maxdiff(a, b):
        a = a if isinstance(a, (list, tuple)) else [a]
        b = b if isinstance(b, (list, tuple)) else [b]
        assert len(a) == len(b)
        return max(float(np.max(np.abs(np_(p) - np_(q)))) for p, q in zip(a, b))

    def pair(cls_name, kw, shape=(B, T, I), **common):
        """A keras.layers layer and the fastrnn one, built, with the same random weights."""
        ref = getattr(keras.layers, cls_name)(H, **kw, **common)
        new = getattr(fk, cls_name)(H, **kw, **common)
        ref.build(shape)
        new.build(shape)
        ws = [rng.uniform(-0.6, 0.6, w.shape).astype("float32") for w in ref.get_weights()]
        ref.set_weights(ws)
        new.set_weights(ws)
        return ref, new

    x = rng.standard_normal((B, T, I)).astype("float32")
    # sequence 0 right-padded, 1 left-padded, 2 with holes (and its last step masked)
    mask = np.ones((B, T), bool)
    mask[0, 4:] = False
    mask[1, :3] = False
    mask[2, [1, 2, 6]] = False
    states = {"LSTM": 2, "GRU": 1, "SimpleRNN": 1}

    def init_state(cls_name):
        return [rng.standard_normal((B, H)).astype("float32") for _ in range(states[cls_name])]

    out = {}

    # ---- forward parity
    forward = {}
    for cell, cls_name, kw in CELLS:
        for variant in [v for c, v in FORWARD_CASES if c == cell]:
            common = dict(return_sequences=variant != "last", return_state=True)
            call = {}
            if variant in ("last", "mask", "mask_state", "backwards_mask_state",
                           "zero_output_for_mask"):
                call["mask"] = mask
            if variant in ("mask_state", "backwards_mask_state", "zero_output_for_mask"):
                call["initial_state"] = init_state(cls_name)
            if variant.startswith("backwards"):
                common["go_backwards"] = True
            if variant == "zero_output_for_mask":
                common["zero_output_for_mask"] = True
            if variant == "no_bias":
                common["use_bias"] = False
            if variant == "dropout":
                common.update(dropout=0.4, seed=11)
                call["training"] = True
            ref, new = pair(cls_name, kw, **common)
            forward[f"{cell}/{variant}"] = {"outputs": maxdiff(ref(x, **call), new(x, **call))}
    out["forward"] = forward

    # ---- Embedding(mask_zero=True), right padding, inside a model
    tokens = rng.integers(1, 20, (B, T)).astype("int32")
    tokens[0, 5:] = 0
    tokens[1, 2:] = 0
    embedding = {}
    for cell, cls_name, kw in CELLS[:4]:
        models = []
        for module in (keras.layers, fk):
            models.append(keras.Sequential([
                keras.Input((T,), dtype="int32"), keras.layers.Embedding(20, I, mask_zero=True),
                getattr(module, cls_name)(H, return_sequences=True, **kw),
                getattr(module, cls_name)(H, **kw)]))
        models[1].set_weights(models[0].get_weights())
        embedding[cell] = {"outputs": maxdiff(models[0](tokens), models[1](tokens))}
    out["embedding"] = embedding

    # ---- stateful: the second call starts where the first ended; reset_state zeroes
    stateful = {}
    for cell, cls_name, kw in (CELLS[0], CELLS[2]):
        ref, new = pair(cls_name, kw, return_sequences=True, stateful=True)
        d = {}
        for k in range(2):
            d[f"call{k}"] = maxdiff(ref(x, mask=mask), new(x, mask=mask))
            d[f"states{k}"] = maxdiff(ref.states, new.states)
        ref.reset_state()
        new.reset_state()
        d["after_reset"] = maxdiff(ref(x), new(x))
        stateful[cell] = d
    out["stateful"] = stateful

    # ---- gradients of sum(outputs * random weights) w.r.t. variables, x and initial state
    def grads(layer, cls_name, h_init, probes, **call):
        if backend == "torch":
            import torch

            xt = torch.tensor(x, requires_grad=True)
            ht = [torch.tensor(h, requires_grad=True) for h in h_init]
            outs = layer(xt, initial_state=ht, **call)
            loss = sum((o * torch.tensor(p)).sum() for o, p in zip(outs, probes))
            loss.backward()
            return ([v.value.grad for v in layer.trainable_variables], xt.grad,
                    [h.grad for h in ht])
        import jax
        import jax.numpy as jnp

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(tv, xv, hv):
            outs, _ = layer.stateless_call(tv, non_trainable, xv, initial_state=list(hv), **call)
            return sum(jnp.sum(o * p) for o, p in zip(outs, probes))

        g = jax.grad(loss, argnums=(0, 1, 2))([v.value for v in layer.trainable_variables],
                                             jnp.asarray(x), [jnp.asarray(h) for h in h_init])
        return g[0], g[1], list(g[2])

    grad_res = {}
    for cell, cls_name, kw in CELLS:
        ref, new = pair(cls_name, kw, return_sequences=True, return_state=True,
                        go_backwards=cell == "lstm")
        h_init = init_state(cls_name)
        probes = [rng.standard_normal((B, T, H)).astype("float32")] + [
            rng.standard_normal((B, H)).astype("float32") for _ in h_init]
        g_ref = grads(ref, cls_name, h_init, probes, mask=mask)
        g_new = grads(new, cls_name, h_init, probes, mask=mask)
        names = [v.name for v in ref.trainable_variables]
        d = {f"d{n}": maxdiff(a, b) for n, a, b in zip(names, g_ref[0], g_new[0])}
        d["dx"] = maxdiff(g_ref[1], g_new[1])
        d["dinitial_state"] = maxdiff(g_ref[2], g_new[2])
        grad_res[cell] = d
    out["grads"] = grad_res

    # ---- one fit step (SGD, learning rate 1) from the same weights: same weights after
    y_target = rng.standard_normal((B, 1)).astype("float32")

    def model_of(module, cls_name, kw):
        # the LSTM reads the right-padded tokens forwards, the others backwards (left padding)
        return keras.Sequential([
            keras.Input((T,), dtype="int32"), keras.layers.Embedding(20, I, mask_zero=True),
            getattr(module, cls_name)(H, go_backwards=cls_name != "LSTM", **kw),
            keras.layers.Dense(1)])

    fit_step = {}
    for cell, cls_name, kw in (CELLS[0], CELLS[2], CELLS[4]):
        ref, new = model_of(keras.layers, cls_name, kw), model_of(fk, cls_name, kw)
        new.set_weights(ref.get_weights())
        for m in (ref, new):
            m.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
            m.fit(tokens, y_target, batch_size=B, epochs=1, verbose=0, shuffle=False)
        fit_step[cell] = {v.path.split("/", 1)[1]: maxdiff(a, b) for v, a, b in
                          zip(ref.weights, ref.get_weights(), new.get_weights())}
    out["fit_step"] = fit_step

    # ---- stateful inside fit: two epochs from the same weights, same weights and states after
    def stateful_model(module):
        return keras.Sequential([
            keras.Input((T,), batch_size=B, dtype="int32"),
            keras.layers.Embedding(20, I, mask_zero=True), module.LSTM(H, stateful=True),
            keras.layers.Dense(1)])

    ref, new = stateful_model(keras.layers), stateful_model(fk)
    new.set_weights(ref.get_weights())
    for m in (ref, new):
        m.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
        m.fit(tokens, y_target, batch_size=B, epochs=2, verbose=0, shuffle=False)
    out["stateful_fit"] = {"weights": maxdiff(ref.get_weights(), new.get_weights()),
                           "states": maxdiff(ref.layers[1].states, new.layers[1].states)}

    # ---- a few epochs of fit lower the loss (a learnable toy: the sum of the tokens)
    toks = rng.integers(1, 10, (64, T)).astype("int32")
    toks[rng.random((64, T)) < 0.3] = 0
    target = (toks.sum(1, keepdims=True) / (5.0 * T)).astype("float32")
    model = keras.Sequential([keras.Input((T,), dtype="int32"),
                              keras.layers.Embedding(10, 8, mask_zero=True), fk.LSTM(8),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    hist = model.fit(toks, target, batch_size=16, epochs=8, verbose=0)
    out["fit_losses"] = [float(v) for v in hist.history["loss"]]

    # ---- weights: names, shapes, interchangeable lists
    ref, new = pair("GRU", {"reset_after": True})
    lists = [rng.standard_normal(w.shape).astype("float32") for w in ref.get_weights()]
    new.set_weights(lists)
    out["weights"] = {
        "paths": [v.path.split("/", 1)[1] for v in new.weights],
        "ref_paths": [v.path.split("/", 1)[1] for v in ref.weights],
        "shapes": [list(w.shape) for w in new.get_weights()],
        "ref_shapes": [list(w.shape) for w in ref.get_weights()],
        "swapped": maxdiff(new.get_weights(), lists)}

    # ---- config
    args = dict(units=H, dropout=0.1, seed=3, return_sequences=True, go_backwards=True,
                unit_forget_bias=False, kernel_regularizer="l2", name="same")
    cfg_ref = keras.layers.LSTM(**args).get_config()
    cfg_new = fk.LSTM(**args).get_config()
    back = fk.LSTM.from_config(cfg_new)
    out["config"] = {
        "same_as_keras": cfg_ref == cfg_new,
        "diff": sorted(k for k in set(cfg_ref) | set(cfg_new) if cfg_ref.get(k) != cfg_new.get(k)),
        "from_config_same": back.get_config() == cfg_new,
        "from_config_class": type(back).__name__ if type(back) is fk.LSTM else "other",
        "registered": keras.saving.get_registered_name(fk.LSTM)}

    # ---- model.save / load_model
    model = keras.Sequential([keras.Input((T,), dtype="int32"),
                              keras.layers.Embedding(20, I, mask_zero=True),
                              fk.LSTM(H, return_sequences=True), fk.GRU(H, reset_after=False),
                              keras.layers.Dense(2)])
    path = os.path.join(outdir, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    # as a process that never imported fastrnn.keras (Keras prefers registered classes over
    # custom_objects): without the registrations, custom_objects picks keras.layers
    registered = keras.saving.get_custom_objects()
    mine = {k: registered.pop(k) for k in ("fastrnn>LSTM", "fastrnn>GRU")}
    try:
        as_keras = keras.models.load_model(path, custom_objects={
            "fastrnn>LSTM": keras.layers.LSTM, "fastrnn>GRU": keras.layers.GRU})
    finally:
        registered.update(mine)
    before = model.predict(tokens, verbose=0)
    out["save"] = {
        "classes": [type(layer).__name__ for layer in loaded.layers],
        "modules": [type(layer).__module__ for layer in loaded.layers],
        "reloaded": maxdiff(before, loaded.predict(tokens, verbose=0)),
        "as_keras_layers": maxdiff(before, as_keras.predict(tokens, verbose=0)),
        "as_keras_classes": [type(layer).__name__ if type(layer).__module__.startswith("keras")
                             else "fastrnn" for layer in as_keras.layers]}

    # ---- Bidirectional: its backward copy is made by from_config with go_backwards flipped
    ref = keras.layers.Bidirectional(keras.layers.GRU(H, return_sequences=True))
    new = keras.layers.Bidirectional(fk.GRU(H, return_sequences=True))
    ref.build((B, T, I))
    new.build((B, T, I))
    new.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype("float32") for w in ref.get_weights()])
    ref.set_weights(new.get_weights())
    out["bidirectional"] = {
        "outputs": maxdiff(ref(x, mask=mask), new(x, mask=mask)),
        "classes": [type(new.forward_layer).__name__ + "/" + type(new.forward_layer).__module__,
                    type(new.backward_layer).__name__ + "/" + type(new.backward_layer).__module__]}

    # ---- a mixed precision policy: the kernel runs in float32, results in bfloat16
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        ref, new = pair("LSTM", {}, return_sequences=True)
        a, b = ref(x, mask=mask), new(x, mask=mask)
        out["mixed"] = {"dtypes": [str(a.dtype).split(".")[-1], str(b.dtype).split(".")[-1]],
                        "diff": maxdiff(ops.cast(a, "float32"), ops.cast(b, "float32"))}
    finally:
        keras.config.set_dtype_policy(policy)

    # ---- options that change nothing
    accepted = {}
    for name, kw in (("unroll", {"unroll": True}), ("use_cudnn", {"use_cudnn": False}),
                     ("implementation_1", {"implementation": 1})):
        ref, new = pair("LSTM", {}, return_sequences=True, **kw)
        accepted[name] = maxdiff(ref(x, mask=mask), new(x, mask=mask))
    out["accepted"] = accepted

    # ---- errors
    def error(make):
        try:
            make()
        except Exception as exc:  # noqa: BLE001 - the type is what the parent checks
            return [type(exc).__name__, str(exc)]
        return ["no error", ""]

    def no_tf():
        keras.config.backend, saved = (lambda: "tensorflow"), keras.config.backend
        try:
            fk.LSTM(H)
        finally:
            keras.config.backend = saved

    out["errors"] = {
        "lstm_activation": error(lambda: fk.LSTM(H, activation="relu")),
        "lstm_recurrent_activation": error(lambda: fk.LSTM(H, recurrent_activation="hard_sigmoid")),
        "gru_custom_activation": error(lambda: fk.GRU(H, activation=lambda v: v * 2)),
        "rnn_activation": error(lambda: fk.SimpleRNN(H, activation="selu")),
        "lstm_recurrent_dropout": error(lambda: fk.LSTM(H, recurrent_dropout=0.25)),
        "gru_recurrent_dropout": error(lambda: fk.GRU(H, recurrent_dropout=0.1)),
        "rnn_recurrent_dropout": error(lambda: fk.SimpleRNN(H, recurrent_dropout=0.1)),
        "lstm_implementation_1_dropout": error(lambda: fk.LSTM(H, dropout=0.2, implementation=1)),
        "tensorflow_backend": error(no_tf)}
    print(json.dumps(out))


if __name__ == "__main__":
    _child(sys.argv[1])
