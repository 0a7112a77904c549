"""Training smoke run: one epoch on a small subset writes model, metrics and curves."""

import json

import numpy as np
import pytest

from engine_build import train

pytestmark = pytest.mark.slow


def test_one_epoch_smoke_run_writes_all_outputs(tmp_path):
    output = tmp_path / "smoke.keras"
    args = train.parse_args(
        [
            "--output",
            str(output),
            "--epochs",
            "1",
            "--subset",
            "3000",
            "--validation",
            "1000",
            "--seed",
            "3",
            "--font-variants",
            "1",
            "--marks",
            "100",
            "--meter-digits",
            "0",
            "--allow-missing-fonts",
        ]
    )
    assert train.main(args) == 0
    metrics = json.loads((tmp_path / "smoke.train.json").read_text())
    assert output.exists()
    assert (tmp_path / "smoke.train.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics["architecture"] == "digitnet" and metrics["epochs_run"] == 1
    fonts_used = len(metrics["printed_digit_fonts"])
    # MNIST, one printed digit per font and digit, 100 marks and 50 touching pairs ("not a digit")
    assert metrics["training_images"] == 3000 + 10 * fonts_used + 150 and metrics["validation_images"] == 1000
    assert metrics["reject_marks"] == 100
    assert metrics["parameters"] > 0 and metrics["flops_per_image"] > 1e6
    # One short epoch leaves BatchNorm statistics unsettled, so test accuracy is noisy;
    # the training accuracy shows the network learned (chance is 0.1).
    assert metrics["history"]["accuracy"][-1] > 0.3
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_baseline_architectures_build_with_the_documented_layers():
    from engine_build import models

    seed = models.build("seed001")
    convs = [layer.filters for layer in seed.layers if layer.__class__.__name__ == "Conv2D"]
    dense = [layer.units for layer in seed.layers if layer.__class__.__name__ == "Dense"]
    assert convs == [64, 32, 32] and dense == [64, 32, 10]
    mlp = models.build("mlp")
    assert [layer.units for layer in mlp.layers if layer.__class__.__name__ == "Dense"] == [128, 128, 10]


class _FixedTeacher(object):
    """A stand-in for a Keras model: the same answer for every image (11 classes)."""

    def __init__(self, answer):
        self.answer = np.asarray(answer, np.float32)
        self.seen = 0

    def predict(self, images, batch_size=None, verbose=0):
        self.seen += len(images)
        return np.tile(self.answer, (len(images), 1))


def test_distillation_keeps_the_teachers_answers_on_handwriting_only():
    answer = np.full(11, 0.01, np.float32)
    answer[3] = 0.9
    teacher = _FixedTeacher(answer)
    labels = np.array([3, 5, 11, 2])
    distilled = np.array([True, True, False, False])  # two MNIST images, then a meter digit and a print
    targets = train.teacher_targets(teacher, labels, distilled, 12, weight=0.5, temperature=1.0)
    order = np.array([2, 0, 3, 1])
    rows = targets(np.zeros((4, 28, 28, 1), np.float32), order)
    assert teacher.seen == 2  # only the handwriting is shown to the teacher
    assert np.allclose(rows.sum(axis=1), 1.0)
    # the meter digit and the printed digit keep their one-hot labels
    assert rows[0, 11] == 1.0 and rows[2, 2] == 1.0 and np.count_nonzero(rows[[0, 2]]) == 2
    # an MNIST 3 the teacher calls a 3: mostly 3, never "in transition" (the teacher has no such class)
    assert rows[1, 3] == pytest.approx(0.5 + 0.5 * 0.9) and rows[1, 11] == 0.0
    # an MNIST 5 the teacher calls a 3: half its label, the rest the teacher's answer
    assert rows[3, 5] == pytest.approx(0.5 + 0.5 * 0.01) and rows[3, 3] == pytest.approx(0.45)
    softer = train.teacher_targets(teacher, labels, distilled, 12, weight=1.0, temperature=2.0)(
        np.zeros((4, 28, 28, 1), np.float32), order
    )
    assert softer[1, 3] < 0.9  # a temperature above 1 softens the teacher's answer


def test_training_stops_when_a_training_font_family_is_missing(tmp_path, monkeypatch):
    """Training without Roboto and Open Sans (not installed by default) makes a model that
    reads the 1 of Helvetica-like print as 7: the run stops before it starts and names what
    is missing, unless told to go on (smoke runs)."""
    from engine_build import fonts

    installed = fonts.find_fonts
    monkeypatch.setattr(
        fonts, "find_fonts", lambda families: [f for f in installed(families) if "Roboto" not in f]
    )
    args = train.parse_args(["--output", str(tmp_path / "m.keras"), "--subset", "500", "--epochs", "1"])
    with pytest.raises(fonts.MissingFontsError, match="Roboto.*make train-fonts"):
        train.main(args)
    assert not (tmp_path / "m.keras").exists()
