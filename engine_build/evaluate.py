"""Accuracy on the MNIST test set: overall, per class, confusion matrices, runtime parity.

    python -m engine_build.evaluate                         # shipped models + baselines found
    python -m engine_build.evaluate --model models/digits.onnx

Models run through the daemon's own backends (.keras -> TensorFlow, .onnx ->
ONNX Runtime), so this measures exactly what the daemon computes.
Writes ``<out-dir>/evaluation.json``, ``evaluation.md`` and one confusion-matrix PNG per model.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from daemon.preprocess import normalise_uint8
from engine_build import mnist, run_main

DEFAULT_MODELS = (
    "models/digits.keras",
    "models/digits.onnx",
    "models/digits.fp16.onnx",
    "models/baselines/seed001.keras",
    "models/baselines/mlp.keras",
)


def load_backend(path, threads):
    if str(path).endswith(".onnx"):
        from daemon.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, threads=threads).load()
    from daemon.backends.tensorflow import TensorFlowBackend

    return TensorFlowBackend(path, threads=threads).load()


def confusion_matrix(labels, predicted, classes=10):
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def evaluate_model(path, images, labels, threads=2, batch=1000):
    """Return (metrics dict, probabilities)."""
    backend = load_backend(path, threads)
    started = time.perf_counter()
    probabilities = np.concatenate(
        [backend.infer(images[i : i + batch]) for i in range(0, len(images), batch)]
    ).astype(np.float32)
    elapsed = time.perf_counter() - started
    backend.close()
    predicted = probabilities.argmax(1)
    # an 11th column counts digits the model called "not a digit" (models with the reject class)
    matrix = confusion_matrix(labels, predicted, probabilities.shape[1])
    per_class = (np.diag(matrix)[:10] / matrix.sum(1)[:10]).tolist()
    return (
        {
            "model": str(path),
            "backend": backend.name,
            "accuracy": float((predicted == labels).mean()),
            "errors": int((predicted != labels).sum()),
            "called_not_a_digit": int((predicted >= 10).sum()),
            "per_class_accuracy": [round(v, 5) for v in per_class],
            "confusion_matrix": matrix.tolist(),
            "images": int(len(labels)),
            "seconds": round(elapsed, 3),
        },
        probabilities,
    )


def plot_confusion(matrix, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)[:10]  # true labels are digits; a reject column may follow
    columns = matrix.shape[1]
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    figure, axis = plt.subplots(figsize=(6, 5.4))
    image = axis.imshow(errors, cmap="Reds")
    for row in range(10):
        for col in range(columns):
            value = matrix[row, col]
            if value and row != col:
                axis.text(col, row, str(value), ha="center", va="center", fontsize=8)
    axis.set_xticks(range(columns))
    axis.set_xticklabels([str(c) if c < 10 else "not\na digit" for c in range(columns)])
    axis.set_yticks(range(10))
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title("%s\nerrors off the diagonal (%d total)" % (title, errors.sum()))
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(str(path), dpi=100)
    plt.close(figure)


def markdown_table(results):
    lines = [
        "| model | backend | accuracy | errors | worst class (accuracy) |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for result in results:
        worst = int(np.argmin(result["per_class_accuracy"]))
        lines.append(
            "| %s | %s | %.4f | %d | %d (%.4f) |"
            % (
                result["model"],
                result["backend"],
                result["accuracy"],
                result["errors"],
                worst,
                result["per_class_accuracy"][worst],
            )
        )
    lines.append("")
    lines.append("Per-class accuracy:")
    lines.append("")
    lines.append("| model | " + " | ".join(str(d) for d in range(10)) + " |")
    lines.append("| --- |" + " ---: |" * 10)
    for result in results:
        lines.append(
            "| %s | %s |" % (result["model"], " | ".join("%.4f" % v for v in result["per_class_accuracy"]))
        )
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate digit models on the MNIST test set.")
    parser.add_argument("--model", action="append", help="model file(s); default: shipped + baselines")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out-dir", default="docs/eval")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(args):
    """Evaluate, print the table, write JSON/Markdown/PNGs."""
    paths = args.model or [p for p in DEFAULT_MODELS if os.path.exists(p)]
    if not paths:
        print("error: no model found; run make train export", file=sys.stderr)
        return 1
    images, labels = mnist.load_split("test", args.data_dir)
    batch = normalise_uint8(images)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, outputs = [], {}
    for path in paths:
        if not os.path.exists(path):
            print("error: %s does not exist" % path, file=sys.stderr)
            return 1
        result, probabilities = evaluate_model(path, batch, labels, threads=args.threads)
        outputs[path] = probabilities
        stem = Path(path).name.replace(".", "_")
        plot_confusion(result["confusion_matrix"], Path(path).name, out_dir / ("confusion_%s.png" % stem))
        results.append(result)
        print(
            "%-34s %-18s accuracy %.4f (%d errors)"
            % (path, result["backend"], result["accuracy"], result["errors"])
        )
    parity = {}
    reference = next((p for p in paths if p.endswith("digits.keras")), None)
    for path in paths:
        if reference and path != reference and Path(path).stem.split(".")[0] == "digits":
            diff = np.abs(outputs[path] - outputs[reference])
            parity[path] = {
                "vs": reference,
                "max_abs_diff": float(diff.max()),
                "argmax_disagreements": int((outputs[path].argmax(1) != outputs[reference].argmax(1)).sum()),
            }
            print(
                "parity %s vs %s: max |diff| %.2e, %d argmax disagreements"
                % (path, reference, parity[path]["max_abs_diff"], parity[path]["argmax_disagreements"])
            )
    table = markdown_table(results)
    print("\n" + table)
    (out_dir / "evaluation.md").write_text(table)
    (out_dir / "evaluation.json").write_text(
        json.dumps({"results": results, "parity": parity}, indent=1) + "\n"
    )
    print("wrote %s/evaluation.json, evaluation.md and confusion_*.png" % out_dir)
    return 0


if __name__ == "__main__":
    run_main(main, parse_args)
