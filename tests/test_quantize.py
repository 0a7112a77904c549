"""engine_build.quantize: the int8 copy the ONNX Runtime backend runs by default."""

import json

import onnx
import pytest

from daemon import model_meta
from engine_build import quantize
from tests.helpers import MODELS


def test_quantize_writes_a_standard_int8_model_that_reads_mnist_as_its_float_model(tmp_path, capsys):
    output = tmp_path / "small.int8.onnx"
    code = quantize.main(
        quantize.parse_args(
            ["--model", str(MODELS / "small.onnx"), "--output", str(output), "--calibration", "600"]
        )
    )
    assert code == 0
    model = onnx.load(str(output))
    onnx.checker.check_model(model)
    # an older ONNX Runtime (1.10 on a Jetson) knows every operator: the default domain only
    assert {entry.domain for entry in model.opset_import} == {""}
    assert "QLinearConv" in {node.op_type for node in model.graph.node}
    meta = json.loads((tmp_path / "small.int8.onnx.json").read_text())
    assert meta["precision"] == "int8"
    assert meta["source_model_sha256"] == model_meta.sha256_of(MODELS / "small.onnx")
    assert meta["file_sha256"] == model_meta.sha256_of(output)
    float_accuracy = model_meta.read(MODELS / "small.onnx")["test_accuracy"]
    assert meta["test_accuracy"] >= float_accuracy - 0.0005
    assert "answers differ" in capsys.readouterr().out


def test_quantize_refuses_an_int8_model_that_reads_worse_and_leaves_no_file(tmp_path):
    output = tmp_path / "small.int8.onnx"
    args = ["--model", str(MODELS / "small.onnx"), "--output", str(output), "--calibration", "300"]
    with pytest.raises(quantize.QuantizeError, match="below the float model"):
        quantize.main(quantize.parse_args(args + ["--max-drop", "-0.01"]))  # must beat it by a point
    assert not output.exists()


def test_the_shipped_int8_copies_were_made_from_the_shipped_models():
    for name in ("digits", "small"):
        meta = model_meta.read(MODELS / (name + ".int8.onnx"))
        assert meta["source_model_sha256"] == model_meta.sha256_of(MODELS / (name + ".onnx"))
        assert meta["file_sha256"] == model_meta.sha256_of(MODELS / (name + ".int8.onnx"))
