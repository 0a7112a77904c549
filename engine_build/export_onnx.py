"""Export the Keras model to ONNX (opset 13, NCHW input, dynamic batch) and check it.

    python -m engine_build.export_onnx [--model models/digits.keras] [--output models/digits.onnx]

Also writes ``digits.fp16.onnx`` (float16 weights and activations, float32 I/O)
and both sidecars. Fails when an operator is outside the TensorRT 8.2 allow-list
or when ONNX Runtime disagrees with Keras by more than ``--tolerance``.
"""

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from daemon import model_meta
from daemon.preprocess import INPUT_SIZE, NORMALISATION, normalise_uint8
from engine_build import mnist, run_main
from engine_build.models import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

OPSET = 13  # highest opset TensorRT 8.2's ONNX parser (JetPack 4.6) accepts
# Operators the TensorRT 8.2 ONNX parser supports (onnx-tensorrt 8.2 operators.md)
# that a small CNN can produce; anything else fails the export.
TENSORRT_82_OPS = frozenset(
    [
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Clip",
        "Concat",
        "Constant",
        "Conv",
        "Div",
        "Dropout",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "Identity",
        "LeakyRelu",
        "MatMul",
        "MaxPool",
        "Mul",
        "Relu",
        "Reshape",
        "Shape",
        "Sigmoid",
        "Softmax",
        "Squeeze",
        "Sub",
        "Transpose",
        "Unsqueeze",
    ]
)
INPUT_LAYOUT = "NCHW"


class ExportError(Exception):
    """The exported model breaks a constraint (operator, opset, parity)."""


def check_operators(onnx_model, allowed=TENSORRT_82_OPS, opset=OPSET):
    """Raise ExportError unless the default-domain opset is ``opset`` and every op is allowed."""
    versions = {entry.domain or "ai.onnx": entry.version for entry in onnx_model.opset_import}
    if versions.get("ai.onnx") != opset:
        raise ExportError("opset is %s, expected %d" % (versions.get("ai.onnx"), opset))
    foreign = sorted(set(n.domain for n in onnx_model.graph.node if n.domain not in ("", "ai.onnx")))
    if foreign:
        raise ExportError("non-standard operator domains: %s" % ", ".join(foreign))
    used = sorted(set(node.op_type for node in onnx_model.graph.node))
    rejected = [op for op in used if op not in allowed]
    if rejected:
        raise ExportError("operators not supported by TensorRT 8.2: %s" % ", ".join(rejected))
    return used


def convert(keras_model):
    """Keras model -> onnx.ModelProto with input ``image`` [N,1,28,28] and output [N,10]."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 1), tf.float32, name=INPUT_NAME),)
    # With one channel NHWC and NCHW hold the same bytes; NCHW is what TensorRT prefers,
    # and tf2onnx's transpose optimiser then removes the layout transposes around convs.
    onnx_model, _ = tf2onnx.convert.from_keras(
        keras_model, input_signature=spec, opset=OPSET, inputs_as_nchw=[INPUT_NAME]
    )
    graph = onnx_model.graph
    if len(graph.output) != 1:
        raise ExportError("expected one output, got %d" % len(graph.output))
    old_output = graph.output[0].name
    if old_output != OUTPUT_NAME:
        for node in graph.node:
            node.output[:] = [OUTPUT_NAME if n == old_output else n for n in node.output]
        graph.output[0].name = OUTPUT_NAME
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    # tf2onnx declares ai.onnx.ml even when no node uses it; TensorRT needs only the default domain.
    used_domains = set(node.domain for node in graph.node)
    kept = [e for e in onnx_model.opset_import if e.domain in ("", "ai.onnx") or e.domain in used_domains]
    del onnx_model.opset_import[:]
    onnx_model.opset_import.extend(kept)
    onnx_model.producer_name = "digitd.engine_build.export_onnx"
    return onnx_model


def to_float16(onnx_model):
    """Float16 weights and activations, float32 input and output (TensorRT FP16 proxy)."""
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(onnx_model, keep_io_types=True)


def run_onnx(path, images_nhwc, threads=1):
    """Run an ONNX file in ONNX Runtime on float32 [N,28,28,1] images -> probabilities."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batch = images_nhwc.reshape(len(images_nhwc), 1, INPUT_SIZE, INPUT_SIZE)
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def sidecar(onnx_path, source_path, used_ops, accuracy, precision, classes=10):
    return {
        "format": "onnx",
        "precision": precision,
        "file_sha256": model_meta.sha256_of(onnx_path),
        "source_model": os.path.basename(str(source_path)),
        "source_model_sha256": model_meta.sha256_of(source_path),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 1, INPUT_SIZE, INPUT_SIZE],
            "dtype": "float32",
            "layout": INPUT_LAYOUT,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", classes],
            "dtype": "float32",
            "meaning": "softmax probabilities",
        },
        "normalisation": NORMALISATION,
        "labels": model_meta.labels_for(classes),
        "opset": OPSET,
        "operators": used_ops,
        "test_accuracy": accuracy,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def keras_sidecar(keras_path, keras_model, accuracy):
    from engine_build.models import flops_per_image

    return {
        "format": "keras",
        "file_sha256": model_meta.sha256_of(keras_path),
        "architecture": keras_model.name,
        "parameters": int(keras_model.count_params()),
        "flops_per_image": flops_per_image(keras_model),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", INPUT_SIZE, INPUT_SIZE, 1],
            "dtype": "float32",
            "layout": "NHWC",
        },
        "normalisation": NORMALISATION,
        "labels": model_meta.labels_for(int(keras_model.output_shape[-1])),
        "test_accuracy": accuracy,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Export the Keras digit model to ONNX.")
    parser.add_argument("--model", default="models/digits.keras")
    parser.add_argument("--output", default="models/digits.onnx")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--parity-images", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    return parser.parse_args(argv)


def main(args):
    """Convert, check operators and parity, evaluate, write ONNX files and sidecars."""
    import onnx
    import tensorflow as tf

    keras_model = tf.keras.models.load_model(args.model)
    onnx_model = convert(keras_model)
    used_ops = check_operators(onnx_model)
    onnx.checker.check_model(onnx_model)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx_model, str(output))

    images, labels = mnist.load_split("test", args.data_dir)
    test_x = normalise_uint8(images)
    keras_probs = keras_model(test_x[: args.parity_images], training=False).numpy()
    onnx_probs = run_onnx(output, test_x)
    max_diff = float(np.abs(keras_probs - onnx_probs[: args.parity_images]).max())
    print("parity over %d images: max |Keras - ONNX Runtime| = %.2e" % (args.parity_images, max_diff))
    if max_diff > args.tolerance:
        raise ExportError("parity %.2e above tolerance %.0e" % (max_diff, args.tolerance))

    keras_accuracy = float(np.mean(np.argmax(keras_model(test_x, training=False).numpy(), 1) == labels))
    onnx_accuracy = float(np.mean(np.argmax(onnx_probs, 1) == labels))
    fp16_path = output.with_name(output.stem + ".fp16.onnx")
    fp16_model = to_float16(onnx_model)
    fp16_ops = check_operators(fp16_model)
    onnx.save(fp16_model, str(fp16_path))
    fp16_accuracy = float(np.mean(np.argmax(run_onnx(fp16_path, test_x), 1) == labels))

    model_meta.write(args.model, keras_sidecar(args.model, keras_model, keras_accuracy))
    classes = int(keras_model.output_shape[-1])
    model_meta.write(output, sidecar(output, args.model, used_ops, onnx_accuracy, "fp32", classes))
    model_meta.write(fp16_path, sidecar(fp16_path, args.model, fp16_ops, fp16_accuracy, "fp16", classes))
    print("opset %d, operators: %s" % (OPSET, ", ".join(used_ops)))
    print(
        "MNIST test accuracy: keras %.4f, onnx %.4f, onnx fp16 %.4f"
        % (keras_accuracy, onnx_accuracy, fp16_accuracy)
    )
    print("wrote %s, %s and sidecars" % (output, fp16_path))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_main(
        main,
        parse_args,
        (
            ExportError,
            OSError,
        ),
    )
