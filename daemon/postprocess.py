"""Probabilities -> digits: argmax, confidence threshold, 'no digit', per-ROI smoothing."""

import collections

import numpy as np


class RoiReading(object):
    """What one ROI read in one frame. ``digit`` is None for no digit / too unsure."""

    __slots__ = ("roi_id", "box", "digit", "confidence", "line", "cell", "mark", "transition")

    def __init__(self, roi_id, box, digit, confidence, line=0, cell=None, mark=False, transition=False):
        self.roi_id = roi_id
        self.box = box
        self.digit = digit
        self.confidence = confidence
        self.line = line
        self.cell = cell
        self.mark = mark  # the model called it "not a digit" (a line, a corner, a blob)
        self.transition = transition  # a counter drum caught between two digits

    def as_payload(self):
        payload = {
            "id": self.roi_id,
            "box": [int(v) for v in self.box],
            "digit": self.digit,
            "confidence": round(float(self.confidence), 4),
        }
        if self.transition:
            payload["transition"] = True
        return payload


DIGIT_CLASSES = 10  # a model's outputs past the ten digits: "not a digit" (model_meta.REJECT_CLASS)
TRANSITION_INDEX = 11  # and "digit in transition" (model_meta.TRANSITION_CLASS)
# A box's digit style (``roi.boxes[].style``; None: a ROI without one): only these can be
# caught between two digits.
ROLLING_STYLES = (None, "auto", "drum")


def for_style(probabilities, style):
    """The probabilities as a box of digit ``style`` can have them: a seven-segment display,
    handwriting or print never rolls, so the transition class is taken out and the rest
    renormalised (the digit or "not a digit" decides); ``auto`` and ``drum`` keep all."""
    if style in ROLLING_STYLES or len(probabilities) <= TRANSITION_INDEX:
        return probabilities
    kept = np.array(probabilities, np.float32)
    kept[TRANSITION_INDEX] = 0.0
    total = float(np.sum(kept))
    return kept / total if total > 0 else kept


def _decide(probabilities):
    """(likeliest digit, its probability, the class past the digits that wins the crop or
    None) from one probability vector, in plain floats (a frame has up to 81 of them).

    The winner past the digits is ``DIGIT_CLASSES`` ("not a digit") or ``TRANSITION_INDEX``
    ("digit in transition") when it beats every digit. Between the two the likelier wins (a
    drum at p(transition) 0.99 and p(not a digit) 0.001 is in transition, not a mark); a tie
    goes to "not a digit"."""
    values = probabilities.tolist() if hasattr(probabilities, "tolist") else list(probabilities)
    digits = values[:DIGIT_CLASSES]
    confidence = max(digits)
    winner, best = None, confidence
    for index in (DIGIT_CLASSES, TRANSITION_INDEX):
        if len(values) > index and values[index] > best:
            winner, best = index, values[index]
    return digits.index(confidence), confidence, winner


def _winning_other_class(probabilities):
    """The class past the digits that wins the crop (see ``_decide``), or None."""
    return _decide(probabilities)[2]


def is_mark(probabilities):
    """Whether a model with the reject class calls this crop "not a digit"."""
    return _winning_other_class(probabilities) == DIGIT_CLASSES


def is_transition(probabilities):
    """Whether a model with the transition class calls this crop a drum between two digits."""
    return _winning_other_class(probabilities) == TRANSITION_INDEX


def digit_confidence(probabilities):
    """The probability of the likeliest digit (0 for a mark, or a drum in transition)."""
    if _winning_other_class(probabilities) is not None:
        return 0.0
    return float(np.max(probabilities[:DIGIT_CLASSES]))


def readable_confidence(probabilities):
    """How sure the model is that a crop shows a digit or a drum between two: its likeliest
    class but "not a digit"."""
    values = np.asarray(probabilities)
    if len(values) <= DIGIT_CLASSES:
        return float(values.max())
    return float(np.delete(values, DIGIT_CLASSES).max())


def classify(probabilities, min_confidence):
    """Return (digit or None, confidence) for one probability vector: None when the crop is
    not a digit (reject class), a drum in transition, or the likeliest digit is below
    ``min_confidence``."""
    index, confidence, winner = _decide(probabilities)
    if winner is not None:
        return None, confidence
    return (index if confidence >= min_confidence else None), confidence


def compose_number(readings):
    """Digits in reading order; lines joined by newlines; '?' marks an unread ROI between
    read ones (a mark that is not a digit is left out); None when nothing was read."""
    if all(r.digit is None for r in readings):
        return None
    lines = collections.OrderedDict()
    for reading in readings:
        if reading.mark:
            continue
        lines.setdefault(reading.line, []).append("?" if reading.digit is None else str(reading.digit))
    return "\n".join("".join(chars) for chars in lines.values())


def compose_grid(readings):
    """Rows of digits (None for empty cells) when the readings are grid cells, else None."""
    cells = [r for r in readings if r.cell is not None]
    if not cells:
        return None
    rows = max(r.cell[0] for r in cells) + 1
    cols = max(r.cell[1] for r in cells) + 1
    grid = [[None] * cols for _ in range(rows)]
    for reading in cells:
        grid[reading.cell[0]][reading.cell[1]] = reading.digit
    return grid


def reading_for(region, probabilities, min_confidence):
    """The RoiReading of one ROI (id, box, line, cell) from its probability vector, read as
    the ROI's digit style allows (``for_style``); ``probabilities`` None (an empty crop)
    reads as no digit with confidence 0."""
    digit, confidence, mark, transition = None, 0.0, False, False
    if probabilities is not None:
        index, confidence, winner = _decide(for_style(probabilities, getattr(region, "style", None)))
        if winner is None and confidence >= min_confidence:
            digit = index
        mark = winner == DIGIT_CLASSES
        transition = winner == TRANSITION_INDEX
    return RoiReading(region.id, region.box, digit, confidence, region.line, region.cell, mark, transition)


class Smoother(object):
    """Majority vote per ROI over the last ``window`` frames (ties go to the newest)."""

    def __init__(self, window):
        self.window = window
        self._history = {}

    def update(self, readings):
        """Add one frame's readings; return {roi_id: smoothed digit or None}."""
        smoothed = collections.OrderedDict()
        for reading in readings:
            history = self._history.get(reading.roi_id)
            if history is None or history.maxlen != self.window:
                history = collections.deque(history or (), maxlen=self.window)
                self._history[reading.roi_id] = history
            history.append(reading.digit)
            counts = collections.Counter(history)
            best = max(counts.values())
            for value in reversed(history):
                if counts[value] == best:
                    smoothed[reading.roi_id] = value
                    break
        return smoothed
