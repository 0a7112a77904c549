"""Printed training digits: the fonts tests measure on stay out of training, Hershey faces render."""

import os

import numpy as np
import pytest

from engine_build import fonts


def test_training_never_sees_the_held_out_fonts():
    training = fonts.training_fonts()
    names = [os.path.basename(f) for f in training]
    assert not [n for n in names if n.startswith(fonts.HELD_OUT_FAMILIES)]
    hershey = [f for f in training if f.startswith(fonts.HERSHEY_PREFIX)]
    assert len(hershey) == len(fonts.HERSHEY_FACES) * len(fonts.HERSHEY_WEIGHTS)


def test_hershey_digits_are_about_as_tall_as_truetype_digits():
    reference = fonts.find_fonts(fonts.HELD_OUT_FAMILIES)[0]
    truetype_height = fonts.render_glyph(reference, 8).shape[0]
    for face in fonts.HERSHEY_FACES:
        light, bold = ("%s%s:%s" % (fonts.HERSHEY_PREFIX, face, w) for w in (0.06, 0.16))
        for digit in range(10):
            glyph = fonts.render_glyph(bold, digit)
            assert 0.75 * truetype_height <= glyph.shape[0] <= 1.35 * truetype_height, (face, digit)
            # bolder strokes put more ink on the same digit
            assert np.count_nonzero(glyph > 127) > np.count_nonzero(fonts.render_glyph(light, digit) > 127)


def test_a_misspelt_hershey_face_names_the_expected_form():
    with pytest.raises(ValueError, match="hershey:<face>:<weight>"):
        fonts.render_glyph("hershey:helvetica:0.1", 3)
