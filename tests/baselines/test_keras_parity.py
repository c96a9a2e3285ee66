"""CancerNet and idc_cnn under Keras semantics against Keras itself (Keras 3 on its torch backend).

Keras builds both models layer by layer as their sources do (S-PIS `cancernet.py`, the S-004
notebook; BASELINES.md §2.1-§2.2); its weights, with non-default BatchNorm statistics, are copied
into the harness models. Outputs agree in training mode (batch statistics; dropout rates 0 on
both sides, since the two frameworks cannot share dropout masks) and in inference mode (the
published dropout rates, inactive there), and so do the moving statistics after a training step.
The initialisers are compared with Keras' own: same bounds, same distribution.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torch import nn

os.environ["KERAS_BACKEND"] = "torch"  # read once, when keras is first imported
keras = pytest.importorskip("keras", reason="keras (a test-only dependency) is not installed")
if keras.backend.backend() != "torch":
    pytest.skip(f"keras was imported with the {keras.backend.backend()} backend", allow_module_level=True)

from keras.src.initializers.random_initializers import compute_fans  # noqa: E402

import baselines  # noqa: E402
from baselines._keras import keras_fans, keras_limit  # noqa: E402

L = keras.layers
BATCH = 8
TOL = 1e-5
_BN = nn.modules.batchnorm._BatchNorm


def keras_cancernet(dropout_conv: float, dropout_fc: float) -> keras.Model:
    """S-PIS CancerNet.build(48, 48, 3, 2), channels last, as `cancernet.py` writes it."""
    model = keras.Sequential([keras.Input((48, 48, 3))])
    for filters, depth in [(32, 1), (64, 2), (128, 3)]:
        for _ in range(depth):
            model.add(L.SeparableConv2D(filters, (3, 3), padding="same"))
            model.add(L.Activation("relu"))
            model.add(L.BatchNormalization(axis=-1))
        model.add(L.MaxPooling2D(pool_size=(2, 2)))
        model.add(L.Dropout(dropout_conv))
    for layer in (
        L.Flatten(),
        L.Dense(256),
        L.Activation("relu"),
        L.BatchNormalization(),
        L.Dropout(dropout_fc),
        L.Dense(2),
        L.Activation("softmax"),
    ):
        model.add(layer)
    return model


def keras_idc_cnn() -> keras.Model:
    """The S-004 notebook's proposed CNN: he_uniform convs, conv -> ReLU -> MaxPool -> BN, sigmoid unit."""
    model = keras.Sequential([keras.Input((50, 50, 3))])
    for i, filters in enumerate([32, 64, 128, 128]):
        model.add(L.Conv2D(filters, (3, 3), padding="same", activation="relu", kernel_initializer="he_uniform"))
        model.add(L.MaxPooling2D(pool_size=(2, 2)))
        if i < 3:
            model.add(L.BatchNormalization())
    for layer in (L.Flatten(), L.Dense(128, activation="relu"), L.Dense(1, activation="sigmoid")):
        model.add(layer)
    return model


def _weighted_layers(model: keras.Model) -> list:
    return [layer for layer in model.layers if layer.weights]


def _torch_layers(model: nn.Module) -> list[nn.Module]:
    """The torch layers in Keras' order: a SeparableConv2D is a depthwise and a pointwise Conv2d."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, _BN))]


def _flatten_input(model: keras.Model, dense: object) -> tuple[int, ...] | None:
    """The (H, W, C) that Keras flattened into `dense`, if a Flatten comes right before it."""
    before = model.layers[model.layers.index(dense) - 1]
    return tuple(before.input.shape[1:]) if isinstance(before, L.Flatten) else None


def _randomise_batch_norm(model: keras.Model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n),
                    rng.uniform(-0.5, 0.5, n),
                    rng.uniform(-0.5, 0.5, n),
                    rng.uniform(0.5, 2.0, n),
                ]
            )


def copy_keras_into_torch(kmodel: keras.Model, tmodel: nn.Module) -> None:
    """Copy every Keras weight into the matching torch layer, converting layouts.

    Keras kernels are HWIO (conv), (h, w, in, multiplier) (depthwise) and (in, out) (dense), and
    Keras flattens channels last: the first Dense's rows come in (h, w, c) order, torch's in (c, h, w).
    """
    tensors: list[tuple[str, list[np.ndarray], tuple[int, ...] | None]] = []
    for layer in _weighted_layers(kmodel):
        w = layer.get_weights()
        if isinstance(layer, L.SeparableConv2D):
            tensors += [("depthwise", [w[0]], None), ("conv", w[1:], None)]
        elif isinstance(layer, L.Dense):
            tensors.append(("dense", w, _flatten_input(kmodel, layer)))
        else:
            tensors.append(("conv" if isinstance(layer, L.Conv2D) else "bn", w, None))
    targets = _torch_layers(tmodel)
    assert len(targets) == len(tensors)
    for (kind, w, hwc), target in zip(tensors, targets):
        if kind == "depthwise":
            values = [w[0].transpose(2, 3, 0, 1)]
        elif kind == "conv":
            values = [w[0].transpose(3, 2, 0, 1), w[1]]
        elif kind == "dense" and hwc is not None:
            values = [w[0].reshape(*hwc, -1).transpose(3, 2, 0, 1).reshape(w[0].shape[1], -1), w[1]]
        elif kind == "dense":
            values = [w[0].T, w[1]]
        else:
            values = w
        names = ["running_mean", "running_var"] if kind == "bn" else []
        own = [t for t in (target.weight, target.bias) if t is not None] + [getattr(target, n) for n in names]
        with torch.no_grad():
            for tensor, value in zip(own, values, strict=True):
                assert tuple(tensor.shape) == value.shape, (kind, tensor.shape, value.shape)
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _numpy(x: object) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def _keras_outputs(kmodel: keras.Model, x: np.ndarray, training: bool) -> list[np.ndarray]:
    """The last two layers' outputs (logits or features, and probabilities), one pass as Sequential
    runs it (a two-output functional model would run the shared layers, and their updates, twice)."""
    outputs = [keras.ops.convert_to_tensor(x)]
    for layer in kmodel.layers:
        outputs.append(layer(outputs[-1], training=training))
    return [_numpy(o) for o in outputs[-2:]]


def _torch_outputs(model: nn.Module, x: np.ndarray, sigmoid_head: bool) -> tuple[np.ndarray, np.ndarray]:
    """The harness model's (logits or penultimate features, probabilities) for a channels-last batch."""
    image = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    if sigmoid_head:
        hidden = model.classifier[:3](model.features(image))
        return hidden.detach().numpy(), torch.softmax(model.classifier[3](hidden), 1)[:, 1:].detach().numpy()
    logits = model(image)["logits"]
    return logits.detach().numpy(), torch.softmax(logits, 1).detach().numpy()


def _moving_statistics(kmodel: keras.Model, tmodel: nn.Module) -> list[tuple[np.ndarray, ...]]:
    klayers = [layer for layer in kmodel.layers if isinstance(layer, L.BatchNormalization)]
    tlayers = [m for m in tmodel.modules() if isinstance(m, _BN)]
    return [
        (_numpy(k.moving_mean), _numpy(k.moving_variance), t.running_mean.numpy(), t.running_var.numpy(), k)
        for k, t in zip(klayers, tlayers, strict=True)
    ]


def _expected_torch_variance(keras_var: np.ndarray, before: np.ndarray, layer: object, momentum: float) -> np.ndarray:
    """Keras 3 averages the biased batch variance; for convolutional BN the harness (like tf.keras
    2.x's fused kernel, which the sources ran) averages the unbiased one: scale the batch term by
    n/(n - 1), n = B·H·W. Dense-layer BN averages the biased one in tf.keras 2.x, Keras 3 and here."""
    shape = layer.input.shape
    if len(shape) == 2:
        return keras_var
    n = BATCH * shape[1] * shape[2]
    batch_var = (keras_var - momentum * before) / (1 - momentum)
    return momentum * before + (1 - momentum) * batch_var * n / (n - 1)


CASES = {
    # name: (Keras builder, harness options for the training-mode and the inference-mode comparison)
    "cancernet": (keras_cancernet, {"dropout_conv": 0.0, "dropout_fc": 0.0}, {}),
    "idc_cnn": (lambda **_: keras_idc_cnn(), {"head": "sigmoid"}, {"head": "sigmoid"}),
}


def _pair(name: str, options: dict, dropout: tuple[float, float]) -> tuple[keras.Model, nn.Module]:
    keras.utils.set_random_seed(0)
    kmodel = CASES[name][0](dropout_conv=dropout[0], dropout_fc=dropout[1])
    _randomise_batch_norm(kmodel, np.random.default_rng(1))
    tmodel = baselines.create(name, num_classes=2, semantics="source", **options)
    copy_keras_into_torch(kmodel, tmodel)
    return kmodel, tmodel


def _batch(name: str, seed: int) -> np.ndarray:
    size = baselines.info(name).input_size[0]
    return np.random.default_rng(seed).uniform(0, 1, (BATCH, size, size, 3)).astype(np.float32)


def _differences(k_out: list[np.ndarray], t_out: tuple[np.ndarray, np.ndarray], mode: str) -> dict[str, float]:
    (k_hidden, k_probs), (t_hidden, t_probs) = k_out, t_out
    return {
        f"{mode}_outputs": float(np.abs(k_probs - t_probs).max()),
        f"{mode}_logits": float(np.abs(k_hidden - t_hidden).max()),
        f"{mode}_logits_scale": float(np.abs(k_hidden).max()),
    }


def parity(name: str) -> dict[str, float]:
    """Return the max abs differences Keras vs harness: training-mode outputs and moving
    statistics after one step (dropout 0), then inference-mode outputs (published dropout).

    "outputs" are what the sources' models output (softmax or sigmoid probabilities); "logits"
    the layer before (CancerNet's logits, idc_cnn's Dense-128 features), with their scale.
    """
    _, train_options, eval_options = CASES[name]
    sigmoid = train_options.get("head") == "sigmoid"
    kmodel, tmodel = _pair(name, train_options, (0.0, 0.0))
    before = [k[1].copy() for k in _moving_statistics(kmodel, tmodel)]
    x = _batch(name, 2)
    figures = _differences(
        _keras_outputs(kmodel, x, training=True), _torch_outputs(tmodel.train(), x, sigmoid), "train"
    )
    stats = 0.0
    for (k_mean, k_var, t_mean, t_var, layer), old in zip(_moving_statistics(kmodel, tmodel), before):
        expected = _expected_torch_variance(k_var, old, layer, layer.momentum)
        stats = max(stats, float(np.abs(k_mean - t_mean).max()), float(np.abs(expected - t_var).max()))
    figures["moving_stats"] = stats
    kmodel, tmodel = _pair(name, eval_options, (0.25, 0.5))
    x = _batch(name, 3)
    figures |= _differences(
        _keras_outputs(kmodel, x, training=False), _torch_outputs(tmodel.eval(), x, sigmoid), "inference"
    )
    return figures


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_and_moving_statistics_agree_with_keras(name: str) -> None:
    """Probabilities and moving statistics within 1e-5; the logits within 1e-5 of their scale.

    Keras' BatchNormalization computes in float32 whatever the input (and its variance as
    E[x²] − E[x]²), so float32 rounding, about 1e-5 on logits of size 2-8, is the floor here.
    """
    figures = parity(name)
    for mode in ("train", "inference"):
        assert figures[f"{mode}_outputs"] < TOL, figures
        assert figures[f"{mode}_logits"] < TOL * max(1.0, figures[f"{mode}_logits_scale"]), figures
    assert figures["moving_stats"] < TOL, figures


@pytest.mark.parametrize("name", list(CASES))
def test_parity_needs_the_keras_semantics(name: str) -> None:
    """With PyTorch's BatchNorm constants the same weights give other outputs: the check can fail."""
    _, train_options, _ = CASES[name]
    kmodel, tmodel = _pair(name, train_options, (0.0, 0.0))
    for bn in (m for m in tmodel.modules() if isinstance(m, _BN)):
        bn.eps = 1e-5
    x = _batch(name, 3)
    k_out = _keras_outputs(kmodel, x, training=False)[0]
    t_out = _torch_outputs(tmodel.eval(), x, train_options.get("head") == "sigmoid")[0]
    assert np.abs(k_out - t_out).max() > 1e-4


KERAS_NAMES = {"GlorotUniform": "glorot_uniform", "HeUniform": "he_uniform"}


def _initialised_pairs(name: str, semantics: str) -> list[tuple[object, nn.Module]]:
    keras.utils.set_random_seed(0)
    kmodel = CASES[name][0](dropout_conv=0.25, dropout_fc=0.5)
    torch.manual_seed(0)
    tmodel = baselines.create(name, num_classes=2, semantics=semantics, **CASES[name][2])
    klayers = []
    for layer in _weighted_layers(kmodel):
        klayers += (
            [(layer, "depthwise"), (layer, "pointwise")] if isinstance(layer, L.SeparableConv2D) else [(layer, "")]
        )
    return list(zip(klayers, _torch_layers(tmodel), strict=True))


@pytest.mark.parametrize("name", list(CASES))
def test_initialisers_and_batch_norm_constants_are_keras(name: str) -> None:
    for (layer, part), torch_layer in _initialised_pairs(name, "source"):
        if isinstance(layer, L.BatchNormalization):
            assert torch_layer.eps == layer.epsilon and torch_layer.momentum == pytest.approx(1 - layer.momentum)
            for k, t in zip(
                layer.get_weights(),
                (torch_layer.weight, torch_layer.bias, torch_layer.running_mean, torch_layer.running_var),
            ):
                np.testing.assert_array_equal(k, t.detach().numpy())
            continue
        kernel = getattr(layer, f"{part}_kernel" if part else "kernel")
        initializer = getattr(layer, f"{part}_initializer" if part else "kernel_initializer")
        fan_in, fan_out = compute_fans(kernel.shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[initializer.mode]
        limit = np.sqrt(3 * initializer.scale / n)
        assert initializer.distribution == "uniform"
        assert keras_fans(torch_layer.weight, torch_layer.groups if isinstance(torch_layer, nn.Conv2d) else 1) == (
            fan_in,
            fan_out,
        )
        assert keras_limit(KERAS_NAMES[type(initializer).__name__], fan_in, fan_out) == pytest.approx(limit)
        k, t = _numpy(kernel).ravel(), torch_layer.weight.detach().numpy().ravel()
        assert np.abs(t).max() <= limit and np.abs(k).max() <= limit
        if t.size >= 1000:
            assert np.abs(t).max() > 0.99 * limit and ks_2samp(k, t).pvalue > 1e-3
        if torch_layer.bias is not None:
            assert not torch_layer.bias.detach().any()


def test_pytorch_semantics_keep_pytorch_initialisers() -> None:
    """`training.semantics: torch`: kaiming-uniform(a=√5) kernels, which Keras' glorot_uniform tells apart."""
    pairs = _initialised_pairs("cancernet", "torch")
    (layer, _), dense = next(p for p in pairs if isinstance(p[0][0], L.Dense))
    assert ks_2samp(_numpy(layer.kernel).ravel(), dense.weight.detach().numpy().ravel()).pvalue < 1e-6
    assert dense.bias.detach().any()
    assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in (t for _, t in pairs) if isinstance(m, _BN))
