"""Training smoke run: one epoch on a small subset writes model, metrics and curves."""

import json

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
