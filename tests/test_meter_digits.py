"""Meter digits made here and held out from training (FreeFont drums, seven segments from a
seed training never uses), read by the shipped model: the issue's floors."""

import pytest

from daemon.model_meta import TRANSITION_CLASS
from engine_build import eval_meters, meter_digits
from tests.helpers import needs_meter_model


@needs_meter_model
def test_held_out_meter_digits_are_read_and_rolling_drums_reported(reader, capsys):
    figures = eval_meters.measure(reader.backend, count=2000)
    with capsys.disabled():
        print(
            "\nheld-out meter digits: %d of %d right (%.2f %%); transitions reported %d of %d (%.2f %%)"
            % (
                figures["digits_right"],
                figures["digits"],
                100 * figures["digit_accuracy"],
                figures["transitions_flagged"],
                figures["transitions"],
                100 * figures["transition_recall"],
            )
        )
    assert figures["digits"] > 1000 and figures["transitions"] > 300
    assert figures["digit_accuracy"] >= 0.99, figures["confusions"]
    assert figures["transition_recall"] >= 0.95


def test_held_out_drums_use_typefaces_training_never_sees():
    training, held_out = meter_digits.drum_fonts(), meter_digits.drum_fonts(held_out=True)
    if not held_out:
        pytest.fail("fonts-freefont-ttf is needed (make test installs it)")
    assert training and not set(training) & set(held_out)


def test_every_digit_and_the_transition_class_are_drawn():
    import numpy as np

    images, labels = meter_digits.render_meter_digits(600, np.random.default_rng(1))
    assert images.shape[1:] == (28, 28) and len(images) == len(labels) > 550
    assert set(labels.tolist()) == set(range(10)) | {TRANSITION_CLASS}
