"""ONNX export: opset 13, TensorRT 8.2 operator allow-list, parity with Keras, sidecars."""

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from daemon import model_meta
from daemon.preprocess import normalise_uint8
from engine_build import export_onnx
from tests.helpers import MODELS


@pytest.fixture(scope="module")
def keras_model():
    import tensorflow as tf

    return tf.keras.models.load_model(str(MODELS / "digits.keras"))


def test_shipped_onnx_is_opset_13_with_allowed_operators_only():
    for name in ("digits.onnx", "digits.fp16.onnx"):
        model = onnx.load(str(MODELS / name))
        used = export_onnx.check_operators(model)
        assert set(used) <= export_onnx.TENSORRT_82_OPS
        assert [(e.domain, e.version) for e in model.opset_import] == [("", 13)]


def test_shipped_onnx_has_named_nchw_input_with_dynamic_batch():
    graph = onnx.load(str(MODELS / "digits.onnx")).graph
    (model_input,) = graph.input
    (model_output,) = graph.output
    assert model_input.name == "image" and model_output.name == "probabilities"
    dims = [d.dim_param or d.dim_value for d in model_input.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 28, 28]
    # ten digits, the reject class and a drum in transition, as the sidecar's labels say
    assert [d.dim_param or d.dim_value for d in model_output.type.tensor_type.shape.dim] == ["batch", 12]
    labels = model_meta.read(MODELS / "digits.onnx")["labels"]
    assert labels == [str(d) for d in range(10)] + ["not a digit", "digit in transition"]


@pytest.mark.slow
def test_export_parity_with_keras_on_1000_images(tmp_path, keras_model, mnist_test):
    converted = export_onnx.convert(keras_model)
    export_onnx.check_operators(converted)
    path = tmp_path / "m.onnx"
    onnx.save(converted, str(path))
    images = normalise_uint8(mnist_test[0][:1000])
    expected = keras_model(images, training=False).numpy()
    actual = export_onnx.run_onnx(path, images)
    assert np.abs(expected - actual).max() <= 1e-4


def test_allow_list_rejects_unsupported_operators_and_opsets():
    node = helper.make_node("NonMaxSuppression", ["a", "b"], ["c"])
    graph = helper.make_graph([node], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(export_onnx.ExportError, match="NonMaxSuppression"):
        export_onnx.check_operators(model)
    newer = helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(export_onnx.ExportError, match="opset is 17, expected 13"):
        export_onnx.check_operators(newer)


def test_sidecars_describe_the_shipped_models():
    meta = model_meta.read(MODELS / "digits.onnx")
    assert meta["input"] == {
        "name": "image",
        "shape": ["batch", 1, 28, 28],
        "dtype": "float32",
        "layout": "NCHW",
    }
    assert meta["opset"] == 13 and meta["labels"] == [str(d) for d in range(10)] + [
        "not a digit",
        "digit in transition",
    ]
    assert meta["normalisation"]["scale"] == pytest.approx(1 / 255.0)
    assert meta["file_sha256"] == model_meta.sha256_of(MODELS / "digits.onnx")
    assert meta["source_model_sha256"] == model_meta.sha256_of(MODELS / "digits.keras")
    assert meta["test_accuracy"] >= 0.995  # as test_model_accuracy holds it
    fp16 = json.loads((MODELS / "digits.fp16.onnx.json").read_text())
    assert fp16["precision"] == "fp16" and fp16["file_sha256"] == model_meta.sha256_of(
        MODELS / "digits.fp16.onnx"
    )
