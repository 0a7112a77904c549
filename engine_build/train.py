"""Train the digit classifier on MNIST.

    python -m engine_build.train                      # default digitnet -> models/digits.keras
    python -m engine_build.train --arch seed001 --output models/baselines/seed001.keras

Writes the model, a metrics JSON and a training-curve PNG next to it.
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from daemon.model_meta import REJECT_CLASS as REJECT_LABEL
from daemon.model_meta import TRANSITION_CLASS
from daemon.preprocess import normalise_uint8
from engine_build import mnist, models, run_main
from engine_build.augment import AugmentParams, augment_batch

log = logging.getLogger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a digit classifier on MNIST.")
    parser.add_argument("--arch", default="digitnet", choices=models.ARCHITECTURES)
    parser.add_argument("--output", default="models/digits.keras", help="model file (.keras)")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: search)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--validation", type=int, default=5000, help="images held out")
    parser.add_argument("--patience", type=int, default=4, help="early-stopping patience")
    parser.add_argument("--subset", type=int, default=0, help="train on the first N only (smoke)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument(
        "--font-variants",
        type=int,
        default=10,
        help="printed digits per font and digit, from engine_build.fonts.training_fonts() (0 = none)",
    )
    parser.add_argument(
        "--allow-missing-fonts",
        action="store_true",
        help="train even when some training font families are not installed (smoke runs; "
        "the shipped model's figures need all of them: make train-fonts)",
    )
    parser.add_argument(
        "--marks",
        type=int,
        default=4000,
        help="marks that are not digits (lines, corners, blobs, texture) for the reject class (0 = none)",
    )
    parser.add_argument(
        "--meter-digits",
        type=int,
        default=0,
        help="meter digits (drums, seven segments, drums in transition) from engine_build.meter_digits; "
        "adds the 'digit in transition' class (0 = none, the shipped model's recipe until a meter model "
        "keeps MNIST >= 99.6 %%; 24000 for the candidates in the README)",
    )
    parser.add_argument(
        "--mnist-repeat",
        type=int,
        default=1,
        help="show each MNIST training image this many times per epoch (weights handwriting "
        "against the generated digits when fine-tuning)",
    )
    parser.add_argument(
        "--freeze-features",
        action="store_true",
        help="with --init-from: train only the layers after Flatten (the classifier head)",
    )
    parser.add_argument(
        "--train-last-conv",
        action="store_true",
        help="with --freeze-features: the last convolution block trains too",
    )
    parser.add_argument(
        "--distill-from",
        default=None,
        help="a model whose answers on the MNIST training images are kept as soft targets "
        "(learning meter digits without forgetting handwriting)",
    )
    parser.add_argument(
        "--distill-weight",
        type=float,
        default=0.5,
        help="with --distill-from: share of the soft target (the rest is the label)",
    )
    parser.add_argument(
        "--distill-temperature",
        type=float,
        default=2.0,
        help="with --distill-from: softens the teacher's answers before they are kept",
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--init-from", default=None, help="start from this .keras model (fine-tuning)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0 = all)")
    return parser.parse_args(argv)


class AugmentedSequence(object):
    """Builds a keras Sequence that re-augments the whole training set every epoch."""

    @staticmethod
    def create(images, labels, batch_size, seed, augment, soft_targets=None):
        """``soft_targets(images, order)``, when given, turns each epoch's augmented images
        (the training set taken in ``order``) into the target rows the model learns."""
        import tensorflow as tf

        class _Sequence(tf.keras.utils.Sequence):
            def __init__(self):
                super().__init__()
                self.rng = np.random.default_rng(seed)
                self.epoch_images = None
                self.epoch_labels = None
                self.on_epoch_end()

            def __len__(self):
                return int(np.ceil(len(images) / float(batch_size)))

            def __getitem__(self, index):
                part = slice(index * batch_size, (index + 1) * batch_size)
                return self.epoch_images[part], self.epoch_labels[part]

            def on_epoch_end(self):
                order = self.rng.permutation(len(images))
                batch = images[order]
                if augment:
                    batch = augment_batch(batch, self.rng, AugmentParams())
                self.epoch_images = normalise_uint8(batch)
                self.epoch_labels = labels[order]
                if soft_targets is not None:
                    self.epoch_labels = soft_targets(self.epoch_images, order)

        return _Sequence()


def teacher_targets(teacher, labels, distilled, classes, weight, temperature):
    """A function giving, for one epoch's images, one-hot label rows mixed with the teacher's
    softened answers where ``distilled`` (indexed like ``labels``) is true."""

    def targets(epoch_images, order):
        rows = np.zeros((len(order), classes), np.float32)
        rows[np.arange(len(order)), labels[order]] = 1.0
        keep = distilled[order]
        if np.any(keep):
            answers = teacher.predict(epoch_images[keep], batch_size=1000, verbose=0)
            softened = np.power(np.clip(answers, 1e-12, 1.0), 1.0 / temperature)
            softened /= softened.sum(axis=1, keepdims=True)
            mixed = np.zeros((len(softened), classes), np.float32)
            mixed[:, : softened.shape[1]] = softened
            rows[keep] = (1.0 - weight) * rows[keep] + weight * mixed
        return rows

    return targets


def save_curves(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, history["loss"], label="train")
    loss_axis.plot(epochs, history["val_loss"], label="validation")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy")
    loss_axis.legend()
    acc_axis.plot(epochs, history["accuracy"], label="train (augmented)")
    acc_axis.plot(epochs, history["val_accuracy"], label="validation")
    acc_axis.set_xlabel("epoch")
    acc_axis.set_ylabel("accuracy")
    acc_axis.legend()
    figure.suptitle("training curves")
    figure.tight_layout()
    figure.savefig(str(path), dpi=100)
    plt.close(figure)


def main(args):
    """Train, evaluate on the MNIST test set and save model, metrics and curves."""
    started = time.time()
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    train_images, train_labels = mnist.load_split("train", args.data_dir)
    test_images, test_labels = mnist.load_split("test", args.data_dir)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(train_images))
    validation_idx, training_idx = order[: args.validation], order[args.validation :]
    if args.subset:
        training_idx = training_idx[: args.subset]
    fit_images, fit_labels = train_images[training_idx], train_labels[training_idx]
    if args.mnist_repeat > 1:
        fit_images = np.concatenate([fit_images] * args.mnist_repeat)
        fit_labels = np.concatenate([fit_labels] * args.mnist_repeat)
    mnist_count = len(fit_images)
    font_files = []
    if args.font_variants:
        from engine_build import fonts

        missing = fonts.missing_training_families()
        if missing and not args.allow_missing_fonts:
            # a model trained without Roboto and Open Sans reads the 1 of Helvetica-like print
            # as 7 and loses real sudoku photos: it would not be the model the figures are for
            raise fonts.MissingFontsError(
                "no font files for %s on this machine (make train-fonts installs them; "
                "--allow-missing-fonts trains without them)" % ", ".join(missing)
            )
        font_files = fonts.training_fonts()
        if missing:
            log.warning("training without the %s fonts (--allow-missing-fonts)", ", ".join(missing))
        printed, printed_labels = fonts.render_digits(font_files, args.font_variants, rng)
        fit_images = np.concatenate([fit_images, printed])
        fit_labels = np.concatenate([fit_labels, printed_labels])
        print("added %d printed digits from %d fonts" % (len(printed), len(font_files)))
    if args.marks:
        from engine_build import marks

        rejects = np.concatenate(
            [
                marks.render_marks(args.marks, rng),
                marks.render_touching_pairs(args.marks // 2, fit_images, rng),
            ]
        )
        fit_images = np.concatenate([fit_images, rejects])
        fit_labels = np.concatenate([fit_labels, np.full(len(rejects), REJECT_LABEL, fit_labels.dtype)])
        print(
            "added %d marks and touching pairs that are not one digit (class %d)"
            % (len(rejects), REJECT_LABEL)
        )
    if args.meter_digits:
        from engine_build import meter_digits

        meters, meter_labels = meter_digits.render_meter_digits(args.meter_digits, rng)
        fit_images = np.concatenate([fit_images, meters])
        fit_labels = np.concatenate([fit_labels, meter_labels.astype(fit_labels.dtype)])
        print(
            "added %d meter digits, %d of them in transition (class %d)"
            % (len(meters), int(np.sum(meter_labels == TRANSITION_CLASS)), TRANSITION_CLASS)
        )
    val_x, val_y = normalise_uint8(train_images[validation_idx]), train_labels[validation_idx]

    classes = TRANSITION_CLASS + 1 if args.meter_digits else 10 + (1 if args.marks else 0)
    if args.init_from:
        tf.keras.utils.set_random_seed(args.seed)
        model = models.with_classes(tf.keras.models.load_model(args.init_from, compile=False), classes)
        if args.freeze_features:
            convolutions = [
                i for i, layer in enumerate(model.layers) if isinstance(layer, tf.keras.layers.Conv2D)
            ]
            for index, layer in enumerate(model.layers):
                if isinstance(layer, tf.keras.layers.Flatten):
                    break
                if args.train_last_conv and index >= convolutions[-1]:
                    break
                layer.trainable = False
    else:
        model = models.build(args.arch, seed=args.seed, classes=classes)
    steps = int(np.ceil(len(fit_images) / float(args.batch_size))) * args.epochs
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        0.0, steps, alpha=0.01, warmup_target=args.learning_rate, warmup_steps=max(1, steps // 15)
    )
    soft_targets = None
    loss = "sparse_categorical_crossentropy"
    if args.distill_from:
        teacher = tf.keras.models.load_model(args.distill_from, compile=False)
        soft_targets = teacher_targets(
            teacher,
            fit_labels,
            np.arange(len(fit_images)) < mnist_count,
            classes,
            args.distill_weight,
            args.distill_temperature,
        )
        loss = "categorical_crossentropy"
        val_y = np.eye(classes, dtype=np.float32)[val_y]
    model.compile(
        optimizer=tf.keras.optimizers.Adam(schedule),
        loss=loss,
        metrics=["accuracy"],
    )
    parameters = int(model.count_params())
    flops = models.flops_per_image(model)
    print("%s: %d parameters, %.2f MFLOPs per image" % (args.arch, parameters, flops / 1e6))
    sequence = AugmentedSequence.create(
        fit_images, fit_labels, args.batch_size, args.seed, not args.no_augment, soft_targets
    )
    callbacks = [
        tf.keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=args.patience, restore_best_weights=True
        )
    ]
    history = model.fit(
        sequence,
        validation_data=(val_x, val_y),
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    test_probabilities = model.predict(normalise_uint8(test_images), batch_size=1000, verbose=0)
    test_accuracy = float(np.mean(np.argmax(test_probabilities, axis=1) == test_labels))
    wall_time = time.time() - started

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Ship an uncompiled copy: the optimizer state would triple the file and serves no reader.
    shipped = tf.keras.models.clone_model(model)
    shipped.set_weights(model.get_weights())
    shipped.save(str(output))
    curves = output.with_suffix(".train.png")
    save_curves(history.history, curves)
    metrics = {
        "architecture": args.arch,
        "model": str(output),
        "test_accuracy": test_accuracy,
        "test_errors": int(round((1 - test_accuracy) * len(test_labels))),
        "parameters": parameters,
        "flops_per_image": flops,
        "epochs_run": len(history.history["loss"]),
        "best_val_accuracy": float(max(history.history["val_accuracy"])),
        "training_images": int(len(fit_images)),
        "validation_images": int(len(validation_idx)),
        "augmented": not args.no_augment,
        "printed_digit_fonts": [os.path.basename(f) for f in font_files],
        "font_variants": args.font_variants,
        "reject_marks": args.marks,
        "meter_digits": args.meter_digits,
        "mnist_repeat": args.mnist_repeat,
        "freeze_features": args.freeze_features,
        "seed": args.seed,
        "initialised_from": args.init_from,
        "distilled_from": args.distill_from,
        "distill_weight": args.distill_weight if args.distill_from else None,
        "distill_temperature": args.distill_temperature if args.distill_from else None,
        "batch_size": args.batch_size,
        "wall_time_s": round(wall_time, 1),
        "tensorflow": tf.__version__,
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
    }
    metrics_path = output.with_suffix(".train.json")
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        "test accuracy %.4f (%d errors) | %d parameters | %.2f MFLOPs/image | wall time %.0f s"
        % (test_accuracy, metrics["test_errors"], parameters, flops / 1e6, wall_time)
    )
    print("wrote %s, %s, %s" % (output, metrics_path, curves))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from engine_build.fonts import MissingFontsError

    run_main(main, parse_args, expected_errors=(MissingFontsError,))
