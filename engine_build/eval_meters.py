"""Meter digits held out from training: how many are read right, how many drums caught
between two digits are reported as such.

    python -m engine_build.eval_meters                # the shipped ONNX model, 4000 crops
    python -m engine_build.eval_meters --auto-polarity  # each crop's polarity judged from it

The crops come from ``engine_build.meter_digits`` with the held-out typefaces (FreeFont) and
a seed training never uses; they go through the daemon's own Reader (preprocess, backend
with its second look at unsure crops, postprocess), each crop as one whole box with its
polarity set, as a meter's boxes are.
"""

import argparse
import json
import sys

import numpy as np

from daemon import config, postprocess, preprocess
from daemon.model_meta import TRANSITION_CLASS
from daemon.reader import Reader
from engine_build import meter_digits

HELD_OUT_SEED = 20240613  # training uses --seed (1234 by default) and never this one


def measure(
    backend, count=4000, seed=HELD_OUT_SEED, min_confidence=None, second_look_below=None, auto_polarity=False
):
    """Figures for ``count`` held-out crops read with ``backend`` (a daemon backend) and the
    postprocess settings given (default the daemon's); ``auto_polarity``: each crop's polarity
    judged from it, as a box with none set (``predict --roi full`` with no config)."""
    settings = config.defaults()
    if min_confidence is None:
        min_confidence = settings.postprocess.min_confidence
    if second_look_below is not None:
        settings.postprocess.second_look_below = second_look_below
    reader = Reader.from_config(settings, backend)  # the backend stays the caller's to close
    rng = np.random.default_rng(seed)
    crops, labels, brights = meter_digits.render_crops(count, rng, held_out=True)
    prepared = [
        preprocess.prepare(
            crop,
            preprocess.PreprocessParams(
                polarity="auto" if auto_polarity else "light_on_dark" if bright else "dark_on_light"
            ),
        )
        for crop, bright in zip(crops, brights)
    ]
    empty = sum(1 for p in prepared if p.empty)
    rows = reader.infer(prepared)
    digits_right = digits_total = transitions_flagged = transitions_total = 0
    transitions_as_digit = 0
    confusions = {}
    for label, probabilities in zip(labels, rows):
        if probabilities is None:
            digit, transition = None, False
        else:
            digit, _ = postprocess.classify(probabilities, min_confidence)
            transition = postprocess.is_transition(probabilities)
        if label == TRANSITION_CLASS:
            transitions_total += 1
            transitions_flagged += int(transition)
            transitions_as_digit += int(digit is not None)
        else:
            digits_total += 1
            digits_right += int(digit == label)
            if digit != label:
                key = "%d->%s" % (label, "transition" if transition else digit)
                confusions[key] = confusions.get(key, 0) + 1
    return {
        "crops": count,
        "empty": empty,
        "digits": digits_total,
        "digits_right": digits_right,
        "digit_accuracy": digits_right / float(max(1, digits_total)),
        "transitions": transitions_total,
        "transitions_flagged": transitions_flagged,
        "transition_recall": transitions_flagged / float(max(1, transitions_total)),
        "transitions_read_as_a_digit": transitions_as_digit,
        "confusions": dict(sorted(confusions.items(), key=lambda item: -item[1])),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="Read held-out meter digits made here.")
    parser.add_argument("--model", default="models/digits.onnx")
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    precision = config.SCHEMA.fields["backend"].fields["onnx_precision"]
    parser.add_argument(
        "--precision",
        choices=precision.choices,
        default=precision.default,
        help="backend.onnx_precision (default the daemon's)",
    )
    parser.add_argument(
        "--second-look-below",
        type=float,
        default=None,
        help="postprocess.second_look_below (default the daemon's; 0 = off)",
    )
    parser.add_argument(
        "--auto-polarity",
        action="store_true",
        help="judge each crop's polarity from its pixels (a box with none set) instead of setting it",
    )
    args = parser.parse_args(argv)
    from daemon.backends import load_backend

    settings = config.from_dict(
        {
            "source": {"type": "v4l2"},
            "backend": {"type": "onnxruntime", "onnx_model": args.model, "onnx_precision": args.precision},
        }
    ).backend
    backend = load_backend(settings, 256)
    try:
        figures = measure(
            backend,
            args.count,
            args.seed,
            second_look_below=args.second_look_below,
            auto_polarity=args.auto_polarity,
        )
    finally:
        backend.close()
    print("%s, %s" % (args.model, backend.name))
    print(
        "held-out meter digits (FreeFont drums, seven segments; seed %d; polarity %s): "
        "%d of %d read right (%.2f %%)"
        % (
            args.seed,
            "judged from each crop" if args.auto_polarity else "set per box",
            figures["digits_right"],
            figures["digits"],
            100 * figures["digit_accuracy"],
        )
    )
    print(
        "drums in transition reported as such: %d of %d (%.2f %%); read as a digit: %d"
        % (
            figures["transitions_flagged"],
            figures["transitions"],
            100 * figures["transition_recall"],
            figures["transitions_read_as_a_digit"],
        )
    )
    print(
        "empty crops: %d; most common errors: %s"
        % (figures["empty"], json.dumps(figures["confusions"])[:300])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
