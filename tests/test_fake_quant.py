"""The simulated int8 arithmetic that quantization-aware fine-tuning trains through: it rounds
as LiteRT's dynamic-range engine does, lets gradients through, and converts back to plain layers."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from training.quantization.fake_quant import (  # noqa: E402
    FakeQuantConv2D,
    fake_quantized_clone,
    plain_clone,
    quantize_input,
    quantize_kernel,
)


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(32, 3, activation="relu", name="stem")(inputs)  # 864 weights: stays float
    x = keras.layers.Conv2D(48, 3, name="wide")(x)  # 13,824 weights: int8
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(x))


def test_kernel_rounds_to_127_steps_per_output_channel():
    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 8, 4)) * [0.01, 0.1, 1.0, 10.0], tf.float32)
    rounded = quantize_kernel(kernel).numpy()
    for channel in range(4):
        scale = np.abs(kernel.numpy()[..., channel]).max() / 127
        steps = rounded[..., channel] / scale
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on the channel's own grid
        assert np.abs(rounded[..., channel] - kernel.numpy()[..., channel]).max() <= scale / 2 + 1e-6


def test_input_rounds_per_image_with_zero_exact():
    rng = np.random.default_rng(1)
    x = np.stack([rng.uniform(0, 1, (5, 5, 2)), rng.uniform(-3, 50, (5, 5, 2))]).astype(np.float32)
    x[0, 0, 0, 0] = x[1, 0, 0, 0] = 0.0
    rounded = quantize_input(tf.constant(x)).numpy()
    assert rounded[0, 0, 0, 0] == 0.0 and rounded[1, 0, 0, 0] == 0.0
    for image in range(2):
        scale = (max(x[image].max(), 0) - min(x[image].min(), 0)) / 255
        assert len(np.unique(rounded[image])) <= 256
        assert np.abs(rounded[image] - x[image]).max() <= scale / 2 + 1e-5


def test_gradients_pass_straight_through():
    x = tf.Variable(np.linspace(-1, 2, 24, dtype=np.float32).reshape(1, 2, 3, 4))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(quantize_input(x) * 3.0)
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), 3.0)


def test_only_large_convolutions_are_simulated_and_the_clone_converts_back():
    model = small_model()
    twin = fake_quantized_clone(model)
    kinds = {layer.name: type(layer) for layer in twin.layers}
    assert kinds["wide"] is FakeQuantConv2D and kinds["stem"] is not FakeQuantConv2D
    x = np.random.default_rng(2).uniform(0, 1, (4, 24, 24, 3)).astype(np.float32)
    exact = model(x, training=False).numpy()
    assert not np.allclose(twin(x, training=False).numpy(), exact, atol=1e-6)  # it does round
    back = plain_clone(twin)
    assert not any(isinstance(layer, FakeQuantConv2D) for layer in back.layers)
    np.testing.assert_allclose(back(x, training=False).numpy(), exact, rtol=1e-5, atol=1e-6)


def test_simulation_matches_litert_dynamic_range(tmp_path):
    """The simulated outputs are closer to LiteRT's int8 engine than float32's are."""
    from ai_edge_litert.interpreter import Interpreter

    model = small_model(seed=3)
    x = np.random.default_rng(4).uniform(0, 1, (6, 24, 24, 3)).astype(np.float32)
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved"))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interpreter = Interpreter(model_content=converter.convert())
    run = interpreter.get_signature_runner()
    name = next(iter(interpreter.get_signature_list()["serving_default"]["inputs"]))
    litert = np.concatenate([next(iter(run(**{name: x[i : i + 1]}).values())) for i in range(len(x))])
    exact = model(x, training=False).numpy()
    simulated = fake_quantized_clone(model)(x, training=False).numpy()
    assert np.abs(litert - exact).max() > 1e-5  # the int8 engine does differ
    assert np.abs(litert - simulated).mean() < 0.05 * np.abs(litert - exact).mean()
