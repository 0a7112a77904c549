"""Quantise an exported ONNX model to int8 for ONNX Runtime on the CPU.

    python -m engine_build.quantize                       # models/digits.onnx -> models/digits.int8.onnx
    python -m engine_build.quantize --model models/small.onnx

Static quantisation (ONNX Runtime's QOperator format: QLinearConv, QLinearMatMul): int8
weights per output channel, uint8 activations whose ranges are measured on a calibration
set drawn the way training draws its data (MNIST training digits, printed digits, marks,
meter digits; never the test split). Weights use 7 bits (``reduce_range``): without VNNI an
x86 CPU sums pairs of uint8 x int8 products in 16 bits, which full-range weights can
overflow, so the same file would read differently on another laptop; 7 bits cannot.

The int8 model is checked against the float model it came from on the whole MNIST test
set (accuracy, and how many answers differ) and refused when it falls more than
``--max-drop`` behind. Its sidecar says ``precision: int8``; the daemon's ONNX Runtime
backend runs it when ``backend.onnx_precision`` is ``int8`` (the default).
"""

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from daemon import model_meta
from daemon.preprocess import normalise_uint8
from engine_build import mnist, run_main
from engine_build.export_onnx import run_onnx

log = logging.getLogger(__name__)

CALIBRATION_SEED = 4321  # not training's (1234) nor the held-out meter seed
CALIBRATION_BATCH = 200
# operators that run on int8 tensors; the rest of the graph stays float32
INT8_OPERATORS = ("Conv", "MatMul", "Relu", "MaxPool", "Reshape", "Transpose")


class QuantizeError(Exception):
    """The int8 model cannot be made or reads worse than its float model allows."""


def calibration_images(count, data_dir=None, seed=CALIBRATION_SEED):
    """uint8 [N,28,28] (ink bright, MNIST framing): the kinds of input the daemon feeds the
    network, in about the proportions training uses (printed digits, marks and meter digits
    are made here; meter digits need the training fonts, ``make train-fonts``)."""
    from engine_build import fonts, marks, meter_digits

    rng = np.random.default_rng(seed)
    train_images, _ = mnist.load_split("train", data_dir)
    handwritten = train_images[rng.choice(len(train_images), count // 2, replace=False)]
    font_files = fonts.training_fonts()
    per_font_digit = max(1, (count // 6) // (10 * len(font_files)))
    printed, _ = fonts.render_digits(font_files, per_font_digit, rng)
    rejects = marks.render_marks(count // 12, rng)
    parts = [handwritten, printed, rejects]
    try:
        parts.append(meter_digits.render_meter_digits(count // 4, rng)[0])
    except RuntimeError as exc:  # no TrueType drum faces on this machine
        log.warning("calibrating without meter digits: %s", exc)
    return np.concatenate(parts)


def quantize(onnx_path, output_path, images):
    """Write the int8 model of ``onnx_path`` to ``output_path``, calibrated on ``images``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    meta = model_meta.read(onnx_path)
    input_name = meta["input"]["name"]
    batch = normalise_uint8(images).reshape(len(images), 1, images.shape[1], images.shape[2])

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(batch):
                return None
            chunk = batch[self.start : self.start + CALIBRATION_BATCH]
            self.start += CALIBRATION_BATCH
            return {input_name: chunk}

    output_path = Path(output_path)
    prepared = output_path.with_name(output_path.stem + ".prepared.onnx")
    try:
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        # standard ONNX operators only (QLinearConv, QLinearMatMul): the ONNX Runtime of a
        # Jetson (1.10) has them; the dense layer's scale, its bias and the softmax stay float
        # (excluded by name: limiting op_types_to_quantize trips the quantiser's softmax range)
        float_nodes = [
            node.name for node in onnx.load(str(prepared)).graph.node if node.op_type not in INT8_OPERATORS
        ]
        quantize_static(
            str(prepared),
            str(output_path),
            Batches(),
            quant_format=QuantFormat.QOperator,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=float_nodes,
        )
        _drop_unused_domains(output_path)
    except (ValueError, RuntimeError, OSError) as exc:
        raise QuantizeError("cannot quantise %s: %s" % (onnx_path, exc)) from exc
    finally:
        for leftover in (prepared, Path(str(prepared) + ".data"), Path("augmented_model.onnx")):
            if leftover.exists():
                leftover.unlink()
    return output_path


def _drop_unused_domains(path):
    """Keep only the opset imports some node uses (the quantiser stamps ONNX Runtime's
    internal domains; an older runtime refuses a domain it does not know)."""
    import onnx

    model = onnx.load(str(path))
    used = set(node.domain or "" for node in model.graph.node) | {""}
    kept = [entry for entry in model.opset_import if (entry.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Quantise an ONNX digit model to int8 for the CPU.")
    parser.add_argument("--model", default="models/digits.onnx", help="float32 ONNX model (with sidecar)")
    parser.add_argument(
        "--output", default=None, help="default: <model stem>.int8.onnx beside it, where the daemon looks"
    )
    parser.add_argument("--calibration", type=int, default=4000, help="calibration images")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--max-drop",
        type=float,
        default=0.0005,
        help="refuse an int8 model whose MNIST test accuracy falls more than this behind",
    )
    return parser.parse_args(argv)


def main(args):
    """Calibrate, quantise, compare with the float model on MNIST test, write the sidecar."""
    started = time.time()
    output = Path(args.output or model_meta.int8_model_path(args.model))
    print("calibrating on %d images drawn like the training data" % args.calibration, flush=True)
    images = calibration_images(args.calibration, args.data_dir)
    quantize(args.model, output, images)
    test_images, test_labels = mnist.load_split("test", args.data_dir)
    test_x = normalise_uint8(test_images)
    float_probs = run_onnx(args.model, test_x)
    int8_probs = run_onnx(output, test_x)
    float_accuracy = float(np.mean(np.argmax(float_probs[:, :10], 1) == test_labels))
    int8_accuracy = float(np.mean(np.argmax(int8_probs[:, :10], 1) == test_labels))
    changed = int(np.sum(np.argmax(float_probs, 1) != np.argmax(int8_probs, 1)))
    print(
        "MNIST test: float %.4f, int8 %.4f; %d of %d answers differ; max |p_int8 - p_float| %.3f"
        % (
            float_accuracy,
            int8_accuracy,
            changed,
            len(test_labels),
            float(np.abs(int8_probs - float_probs).max()),
        )
    )
    if int8_accuracy < float_accuracy - args.max_drop:
        os.unlink(str(output))
        raise QuantizeError(
            "int8 accuracy %.4f is more than %.4f below the float model's %.4f"
            % (int8_accuracy, args.max_drop, float_accuracy)
        )
    import onnx

    meta = model_meta.read(args.model)
    operators = sorted(set(node.op_type for node in onnx.load(str(output)).graph.node))
    meta.update(
        {
            "precision": "int8",
            "file_sha256": model_meta.sha256_of(output),
            "source_model": os.path.basename(str(args.model)),
            "source_model_sha256": model_meta.sha256_of(args.model),
            "operators": operators,
            "test_accuracy": int8_accuracy,
            "quantisation": {
                "format": "QOperator",
                "weights": "int8 per channel, 7 bits (reduce_range)",
                "activations": "uint8 per tensor, MinMax",
                "calibration_images": int(len(images)),
                "answers_changed_on_mnist_test": changed,
            },
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    model_meta.write(output, meta)
    print("wrote %s and its sidecar in %.0f s" % (output, time.time() - started))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_main(main, parse_args, (QuantizeError, OSError, model_meta.ModelMetadataError))
