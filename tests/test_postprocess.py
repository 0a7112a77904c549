"""Probabilities -> readings: threshold, number, smoothing."""

import numpy as np

from daemon import postprocess


def reading(roi_id, digit, line=0):
    return postprocess.RoiReading(roi_id, (0, 0, 1, 1), digit, 0.9, line)


def test_classify_applies_the_confidence_threshold():
    probabilities = np.full(10, 0.02, np.float32)
    probabilities[7] = 0.82
    assert postprocess.classify(probabilities, 0.6) == (7, probabilities[7])
    assert postprocess.classify(probabilities, 0.9)[0] is None


def test_the_reject_class_reads_as_no_digit_and_drops_out_of_numbers():
    """A model with an 11th output, "not a digit": a dash or a grid corner is no digit and,
    unlike an unsure digit, leaves no '?' in the number."""
    dash = np.full(11, 0.01, np.float32)
    dash[10], dash[1] = 0.85, 0.06
    assert postprocess.is_mark(dash)
    assert postprocess.classify(dash, 0.05) == (None, dash[1])
    assert postprocess.digit_confidence(dash) == 0.0
    digit = np.full(11, 0.01, np.float32)
    digit[4] = 0.9
    assert not postprocess.is_mark(digit) and postprocess.classify(digit, 0.6)[0] == 4
    assert not postprocess.is_mark(np.full(10, 0.1, np.float32))  # a ten-class model has no reject
    region = type("Region", (), {"id": "d0_1", "box": (0, 0, 1, 1), "line": 0, "cell": None})()
    readings = [reading("d0_0", 4), postprocess.reading_for(region, dash, 0.6), reading("d0_2", 7)]
    assert readings[1].mark and readings[1].digit is None
    assert postprocess.compose_number(readings) == "47"


def test_number_joins_digits_and_marks_unread_rois():
    assert postprocess.compose_number([reading("a", 4), reading("b", 0), reading("c", 7)]) == "407"
    assert postprocess.compose_number([reading("a", 4), reading("b", None)]) == "4?"
    assert postprocess.compose_number([reading("a", None)]) is None
    assert postprocess.compose_number([reading("a", 1, 0), reading("b", 2, 1)]) == "1\n2"


def test_smoother_takes_the_majority_of_the_last_n_frames():
    smoother = postprocess.Smoother(window=3)
    sequence = [3, 3, 8, 3, 8, 8]
    smoothed = [smoother.update([reading("r", d)])["r"] for d in sequence]
    assert smoothed == [3, 3, 3, 3, 8, 8]


def test_smoother_keeps_rois_apart_and_breaks_ties_by_newest():
    smoother = postprocess.Smoother(window=2)
    smoother.update([reading("a", 1), reading("b", 5)])
    result = smoother.update([reading("a", 2), reading("b", 5)])
    assert result == {"a": 2, "b": 5}


def test_a_drum_in_transition_reads_as_no_digit_and_says_so():
    from daemon import postprocess
    from daemon.reader import Reader

    region = type("Region", (), {"id": "d0", "box": (0, 0, 10, 20), "line": 0, "cell": None})()
    rolling = postprocess.reading_for(region, [0.02] * 10 + [0.0, 0.8], 0.5)
    settled = postprocess.reading_for(region, [0.0] * 7 + [0.9, 0.0, 0.0, 0.0, 0.1], 0.5)
    assert (rolling.digit, rolling.transition, rolling.mark) == (None, True, False)
    assert (settled.digit, settled.transition) == (7, False)
    payload = Reader.frame_payload([rolling, settled])
    assert payload["rois"][0]["transition"] is True and "transition" not in payload["rois"][1]


def test_a_drum_the_model_calls_rolling_is_in_transition_even_when_not_a_digit_beats_the_digits():
    """p(transition) 0.999, p(not a digit) 0.001, digits 0: the drum is rolling. It reads as in
    transition and keeps its place in the number as '?' (a mark would drop out of it)."""
    region = type("Region", (), {"id": "d1", "box": (0, 0, 10, 20), "line": 0, "cell": None})()
    rolling = postprocess.reading_for(region, [0.0] * 10 + [0.001, 0.999], 0.5)
    assert (rolling.digit, rolling.transition, rolling.mark) == (None, True, False)
    assert postprocess.compose_number([reading("d0", 4), rolling, reading("d2", 7)]) == "4?7"
    blot = postprocess.reading_for(region, [0.0] * 10 + [0.9, 0.1], 0.5)
    assert (blot.digit, blot.transition, blot.mark) == (None, False, True)
    tie = postprocess.reading_for(region, [0.0] * 10 + [0.5, 0.5], 0.5)
    assert tie.mark and not tie.transition


def test_a_box_that_cannot_roll_never_reads_as_in_transition_the_digit_decides():
    """A seven-segment, handwritten or printed box: the transition class is taken out and the
    rest renormalised; a drum (or auto) box keeps it."""
    probabilities = [0.0] * 5 + [0.3] + [0.0] * 4 + [0.1, 0.6]  # 5: 0.3, not a digit: 0.1, rolling: 0.6

    def box(style):
        return type("Box", (), {"id": "d0", "box": (0, 0, 10, 20), "line": 0, "cell": None, "style": style})()

    for style in ("drum", "auto"):
        rolling = postprocess.reading_for(box(style), probabilities, 0.5)
        assert (rolling.digit, rolling.transition) == (None, True)
    for style in ("segments", "handwritten", "printed"):
        read = postprocess.reading_for(box(style), probabilities, 0.5)
        assert (read.digit, read.transition, read.mark) == (5, False, False)
        assert abs(read.confidence - 0.75) < 1e-6  # 0.3 of the 0.4 left
    unsure = postprocess.reading_for(box("segments"), [0.0] * 5 + [0.1] + [0.0] * 4 + [0.3, 0.6], 0.5)
    assert (unsure.digit, unsure.transition, unsure.mark) == (None, False, True)
