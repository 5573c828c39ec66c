"""The networks re-expressed for lower-precision scoring compute the models' own function."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from tf_keras import layers

from vigil.models import networks
from vigil.models.defaults import ModelOptions, default_model_config
from vigil.models.precision import lowered, subpixel_kernel


def _perturbed(model: keras.Model) -> keras.Model:
    """Non-zero biases and weights off their initial scale, so that every term shows."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([w + rng.normal(scale=0.05, size=w.shape).astype(np.float32)
                               for w in layer.get_weights()])
    return model


# MNIST's shape, a crop on both axes with three channels, an odd size cropped by three,
# a larger image of four stages.
CASES = [((28, 28, 1), "bernoulli"), ((30, 26, 3), "gaussian"), ((9, 9, 1), "bernoulli"),
         ((70, 50, 3), "bernoulli"), ((21,), "gaussian")]


@pytest.mark.parametrize("shape,likelihood", CASES)
@pytest.mark.parametrize("build", [networks.build_decoder, networks.build_dae, networks.build_encoder])
def test_lowered_networks_compute_the_models_function(shape, likelihood, build):
    kind = "image" if len(shape) == 3 else "features"
    cfg = default_model_config(kind, shape, ModelOptions(likelihood=likelihood), 1000)
    keras.utils.set_random_seed(0)
    model = _perturbed(build(cfg))
    x = np.random.default_rng(0).normal(size=(16, *model.input_shape[1:])).astype(np.float32)
    want = [t.numpy() for t in tf.nest.flatten(model(x))]
    for dtype, rtol in ((tf.float32, 1e-5), (tf.bfloat16, 3e-2)):
        got = [t.numpy() for t in tf.nest.flatten(tf.function(lowered(model, dtype))(x))]
        assert [g.shape for g in got] == [w.shape for w in want]
        assert all(g.dtype == np.float32 for g in got)
        for g, w in zip(got, want):
            # Relative to the output's scale: bfloat16 keeps 8 bits of mantissa.
            assert np.abs(g - w).max() <= rtol * np.abs(w).max(), (dtype.name, model.name)


def test_subpixel_kernel_is_the_transposed_convolution():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 6, 3)).astype(np.float32)
    want = tf.nn.conv2d_transpose(x, kernel, [2, 10, 8, 6], 2, "SAME")
    sub = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 0], [1, 0], [0, 0]]), subpixel_kernel(kernel), 1, "VALID")
    np.testing.assert_allclose(tf.nn.depth_to_space(sub, 2), want, rtol=1e-5, atol=1e-5)


def test_a_layer_it_cannot_express_is_refused_by_name():
    x = keras.Input((8,))
    model = keras.Model(x, layers.Dense(4)(layers.Dropout(0.1, name="drop")(x)))
    with pytest.raises(ValueError, match="drop: a Dropout layer cannot be scored in bfloat16"):
        lowered(model, tf.bfloat16)


def test_bfloat16_instructions_are_read_from_the_cpu_flags():
    from vigil.models.devices import cpu_has_bfloat16
    assert cpu_has_bfloat16("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n") is True
    assert cpu_has_bfloat16("processor : 0\nflags : fpu sse avx2 fma\n") is False
    assert cpu_has_bfloat16("Features : fp asimd\n") is None         # no x86 flags line: unknown


def test_a_scorer_in_bfloat16_warns_where_the_cpu_would_make_it_slower(monkeypatch, caplog):
    from vigil.models import scoring
    cfg = default_model_config("features", (6,), ModelOptions(members=1), 1000)
    member = scoring.Member(networks.build_encoder(cfg), networks.build_decoder(cfg), networks.build_dae(cfg))
    monkeypatch.setattr(scoring, "visible_gpus", lambda: [])
    for has_bf16, warned in ((True, False), (None, False), (False, True)):
        caplog.clear()
        monkeypatch.setattr(scoring, "cpu_has_bfloat16", lambda v=has_bf16: v)
        with caplog.at_level("WARNING", logger="vigil.score"):
            scoring.Scorer([member], cfg, precision="bfloat16")
        assert any("slower than float32" in r.getMessage() for r in caplog.records) is warned


def test_other_convolutions_after_a_transposed_one_are_computed_on_pixels():
    """A 1x1 or strided conv reads the sub-pixel map only after it is shuffled back."""
    keras.utils.set_random_seed(4)
    z = keras.Input((4, 4, 3))
    h = layers.Conv2DTranspose(5, 3, strides=2, padding="same", activation="relu")(z)
    h = layers.Conv2D(6, 1, padding="same", activation="relu")(h)
    h = layers.Conv2DTranspose(4, 3, strides=2, padding="same")(h)
    out = layers.Conv2D(2, 3, strides=2, padding="same")(h)
    model = _perturbed(keras.Model(z, out))
    x = np.random.default_rng(5).normal(size=(3, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(lowered(model, tf.float32)(x), model(x), rtol=1e-5, atol=1e-5)
