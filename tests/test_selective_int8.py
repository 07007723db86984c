"""Dynamic-range int8 with a denylist: the named convolutions run in float, the rest in int8, and
the result is what the quantization-aware fine-tune simulated."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")

from tensorflow.lite.python import schema_py_generated as schema  # noqa: E402
from tensorflow.lite.tools import flatbuffer_utils  # noqa: E402

from training.model import build_two_stage_classifier  # noqa: E402
from training.quantization.fake_quant import fake_quantized_clone  # noqa: E402
from training.quantization.selective import convert_selective, int8_kernels, layer_of  # noqa: E402
from utils.core.engines import LiteRTEngine  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def small_bundle_model(tmp_path_factory):
    model = build_two_stage_classifier(None, backbone="small_cnn", size=SIZE, seed=1)
    path = tmp_path_factory.mktemp("selective") / "model.keras"
    model.save(path)
    return model, path


def kernel_types(path):
    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    return {
        layer_of(graph.tensors[op.inputs[1]].name.decode()): graph.tensors[op.inputs[1]].type
        for op in graph.operators
        if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.CONV_2D
    }


def test_the_export_names_each_kernel_after_its_layer():
    assert layer_of("serving_1/conv2d_1_2/convolution") == "conv2d_1"
    assert layer_of("serving_1/conv2d_1/convolution") == "conv2d"
    assert layer_of("serving_1/cnn2_conv_1/convolution") == "cnn2_conv"
    assert layer_of("serving_1/pool/Mean") is None


def test_denylisted_convolutions_run_in_float_and_match_the_simulation(small_bundle_model, tmp_path):
    model, path = small_bundle_model
    plain = convert_selective(path, tmp_path / "plain.tflite", [])
    assert {"cnn2_conv", "cnn3_conv"} <= set(int8_kernels(flatbuffer_utils.read_model(str(plain))))
    chosen = convert_selective(path, tmp_path / "chosen.tflite", ["cnn2_conv"])
    types = kernel_types(chosen)
    assert types["cnn2_conv"] == schema.TensorType.FLOAT32 and types["cnn3_conv"] == schema.TensorType.INT8

    x = np.random.default_rng(0).uniform(0, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
    engines = {name: LiteRTEngine(p) for name, p in (("plain", plain), ("chosen", chosen))}
    litert = {name: np.concatenate([e(x[i : i + 1])["logits"] for i in range(4)]) for name, e in engines.items()}
    exact = model(x, training=False).numpy()
    simulated = fake_quantized_clone(model, ["cnn2_conv"])(x, training=False).numpy()
    assert not np.allclose(litert["chosen"], litert["plain"], atol=1e-6)  # the denylist changed the engine
    assert np.abs(litert["chosen"] - simulated).mean() < 0.1 * np.abs(litert["chosen"] - exact).mean()


def test_a_name_that_is_not_an_int8_convolution_is_refused(small_bundle_model, tmp_path):
    _, path = small_bundle_model
    # The fracture map's 1 x 1 head has too few weights for the converter to quantize.
    for name in ("localisation_logit", "no_such_layer"):
        with pytest.raises(ValueError, match=f"{name} is not an int8 convolution"):
            convert_selective(path, tmp_path / "x.tflite", [name])
