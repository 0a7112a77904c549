"""Meter digits made here and held out from training (FreeFont drums, seven segments from a
seed training never uses), read by the shipped model: the issue's floors."""

import numpy as np
import pytest

from daemon import config, postprocess, preprocess
from daemon.model_meta import TRANSITION_CLASS
from daemon.reader import Reader
from engine_build import eval_meters, meter_digits
from tests.helpers import needs_meter_model


@needs_meter_model
def test_held_out_meter_digits_are_read_and_rolling_drums_reported(reader, capsys):
    # all 4,000 held-out crops, as `make eval-meters` and the README count them: on their
    # first 2,000 alone (1,609 digits) one crop is 0.06 points, and models a crop apart
    # lay either side of 99 % (the shipped one until seed 3: 99.01 %; seed 3: 98.88 %,
    # and 99.31 % of all 3,189 digits)
    figures = eval_meters.measure(reader.backend)
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


def read_as_boxes(reader, crops, brights, style, columns=20, cell=(48, 48)):
    """The crops side by side in one frame, each in a box of digit ``style`` with its polarity
    set, read by the daemon's Reader: the payload's ``rois``."""
    rows = (len(crops) + columns - 1) // columns
    frame = np.full((rows * cell[1], columns * cell[0], 3), 128, np.uint8)
    boxes = []
    for index, (crop, bright) in enumerate(zip(crops, brights)):
        y, x = (index // columns) * cell[1], (index % columns) * cell[0]
        height, width = crop.shape[:2]
        frame[y : y + height, x : x + width] = crop
        polarity = "light_on_dark" if bright else "dark_on_light"
        boxes.append(
            {
                "id": "b%d" % index,
                "x": x,
                "y": y,
                "w": width,
                "h": height,
                "polarity": polarity,
                "style": style,
            }
        )
    settings = config.from_dict({"source": {"type": "v4l2"}, "roi": {"mode": "boxes", "boxes": boxes}})
    boxes_reader = Reader.from_config(settings, reader.backend, reader.lock)
    image = boxes_reader.prepare(frame)
    return Reader.frame_payload(boxes_reader.readings(image, boxes_reader.infer(image.prepared)))["rois"]


@needs_meter_model
def test_a_drum_box_reports_rolling_drums_and_a_segments_box_never_does(reader):
    rng = np.random.default_rng(eval_meters.HELD_OUT_SEED + 1)
    rolling, labels, brights = meter_digits.render_crops(
        200, rng, held_out=True, transition_share=1.0, segment_share=0.0
    )
    assert labels.count(TRANSITION_CLASS) > 190
    as_drums = read_as_boxes(reader, rolling, brights, "drum")
    reported = sum(1 for r in as_drums if r.get("transition"))
    assert reported >= 0.9 * len(rolling) and all(r["digit"] is None for r in as_drums if r.get("transition"))
    as_segments = read_as_boxes(reader, rolling, brights, "segments")
    assert not any("transition" in r for r in as_segments)
    assert all(r["digit"] is None or 0 <= r["digit"] <= 9 for r in as_segments)
    # seven-segment digits themselves read as well in a segments box as in an auto one
    segments, labels, brights = meter_digits.render_crops(300, rng, held_out=True, segment_share=1.0)
    for style in ("segments", "auto"):
        read = [r["digit"] for r in read_as_boxes(reader, segments, brights, style)]
        right = sum(1 for digit, label in zip(read, labels) if digit == label)
        assert right >= 0.97 * len(labels), (style, right)


@needs_meter_model
def test_a_meter_digit_whose_pixels_leave_its_polarity_open_is_read_the_way_the_model_reads_surer(reader):
    """A bold digit that fills its box (a drum, a seven-segment display) leaves stretches
    where the ink is the majority, and its polarity judged from its pixels alone is wrong for
    1 to 2 % of meter crops: read that way it is a wrong digit. With ``auto`` polarity (as
    ``predict --roi full`` reads a box with no config), a crop whose pixels leave the polarity
    open is prepared both ways and the way the model reads surer is kept: meter digits then
    read as well as with each box's polarity set."""
    assert reader.params.polarity == "auto"
    rng = np.random.default_rng(eval_meters.HELD_OUT_SEED)
    crops, labels, brights = meter_digits.render_crops(4000, rng, held_out=True)
    digits = [(crop, label, bright) for crop, label, bright in zip(crops, labels, brights) if label < 10]
    misjudged = [
        (crop, label, bright)
        for crop, label, bright in digits
        if (preprocess.bright_ink_share(preprocess.to_gray(crop)) > 0.5) != bright
    ]
    assert len(misjudged) >= 20  # what the test is about is there to see

    def right(rows, crops_read):
        return sum(
            int(row is not None and postprocess.classify(row, reader.min_confidence)[0] == label)
            for row, (_, label, _) in zip(rows, crops_read)
        )

    guessed = [
        preprocess.PreprocessParams(polarity="dark_on_light" if bright else "light_on_dark")
        for _, _, bright in misjudged
    ]
    read_as_guessed = right(
        reader.infer([preprocess.prepare(crop, params) for (crop, _, _), params in zip(misjudged, guessed)]),
        misjudged,
    )
    read_auto = right(
        reader.infer([preprocess.prepare(crop, reader.params) for crop, _, _ in misjudged]), misjudged
    )
    assert read_as_guessed <= 0.25 * len(misjudged), (read_as_guessed, len(misjudged))
    assert read_auto >= 0.8 * len(misjudged), (read_auto, len(misjudged))
    # and all of them together as well as with each box's polarity set
    figures = eval_meters.measure(reader.backend, auto_polarity=True)  # all 4,000, as above
    assert figures["digit_accuracy"] >= 0.99, figures["confusions"]
