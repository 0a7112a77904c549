"""Alignment to a saved reference frame: a camera that moved still crops the right digits; a
frame that is not the reference scene is reported, not read."""

import cv2
import numpy as np
import pytest

from daemon import align, config
from daemon.reader import Reader
from tests.helpers import boxes_around

engine_build = pytest.importorskip("engine_build.meter_digits")


@pytest.fixture(scope="module")
def glyphs():
    path = engine_build.drum_fonts(held_out=True)[0]
    return [engine_build.fonts.render_glyph(path, digit) for digit in range(10)]


def shifted(image, dx, dy, degrees=0.0):
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), degrees, 1.0)
    matrix[:, 2] += (dx, dy)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def meter_reader(reader, tmp_path, reference, boxes, with_align=True):
    path = tmp_path / "reference.png"
    cv2.imwrite(str(path), reference)
    roi = {
        "mode": "boxes",
        "boxes": boxes_around(boxes),
        "align": {"reference": str(path) if with_align else ""},
    }
    settings = config.from_dict({"source": {"type": "v4l2"}, "roi": roi})
    return Reader.from_config(settings, reader.backend, reader.lock)


def read(meter, frame):
    image = meter.prepare(frame)
    readings = meter.readings(image, meter.infer(image.prepared))
    return "".join("?" if r.digit is None else str(r.digit) for r in readings), image.alignment


def test_a_frame_shifted_by_20_px_still_reads_right(reader, tmp_path, glyphs):
    reference, boxes = engine_build.counter_frame(27051.0, glyphs, count=5)
    later, _ = engine_build.counter_frame(27068.0, glyphs, count=5)
    moved = shifted(later, 20, -12)
    meter = meter_reader(reader, tmp_path, reference, boxes)
    number, report = read(meter, moved)
    assert number == "27068" and report["ok"]
    assert abs(report["dx"] - 20) < 1 and abs(report["dy"] + 12) < 1 and abs(report["angle"]) < 0.2, report
    number, report = read(meter, shifted(later, -20, 15, degrees=2.0))  # knocked and turned
    assert number == "27068" and abs(report["angle"] + 2.0) < 0.3, report
    unaligned, report = read(meter_reader(reader, tmp_path, reference, boxes, with_align=False), moved)
    assert unaligned != "27068" and report is None  # without alignment the boxes miss the digits


def test_a_frame_of_another_scene_is_reported_not_read(reader, tmp_path, glyphs):
    reference, boxes = engine_build.counter_frame(27051.0, glyphs, count=5)
    rng = np.random.default_rng(3)
    other = cv2.GaussianBlur(rng.integers(0, 255, reference.shape, dtype=np.uint8), (9, 9), 0)
    number, report = read(meter_reader(reader, tmp_path, reference, boxes), other)
    assert number == "?????" and not report["ok"] and report["reason"]


def test_an_unreadable_reference_is_a_clear_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    settings = config.from_dict({"source": {"type": "v4l2"}}).roi.align
    settings.reference = str(tmp_path / "broken.png")
    with pytest.raises(align.AlignmentError, match="cannot read an image"):
        align.create(settings)


def test_the_pipeline_reports_a_frame_it_cannot_align(tmp_path, glyphs, schemas):
    from daemon.pipeline import Pipeline
    from tests.helpers import MODELS, ListSource, RecordingPublisher, run_to_the_end

    reference, boxes = engine_build.counter_frame(3150.0, glyphs, count=5)
    cv2.imwrite(str(tmp_path / "reference.png"), reference)
    later, _ = engine_build.counter_frame(3152.0, glyphs, count=5)
    covered = np.full_like(reference, 40)  # a covered lens
    roi = {
        "mode": "boxes",
        "boxes": boxes_around(boxes),
        "align": {"reference": str(tmp_path / "reference.png")},
        "meter": {"enabled": True, "state_file": str(tmp_path / "meter.json")},
    }
    data = {"source": {"type": "images", "path": "."}, "roi": roi}
    data["backend"] = {"type": "onnxruntime", "onnx_model": str(MODELS / "digits.onnx")}
    publisher = RecordingPublisher()
    pipeline = Pipeline(config.from_dict(data), ListSource([shifted(later, 20, 0), covered]), publisher)
    run_to_the_end(pipeline)
    first, second = publisher.payloads("prediction")
    for payload in (first, second):
        schemas["prediction"].validate(payload)
    assert first["alignment"]["ok"] and first["meter"] == {"value": 3152, "reading": 3152, "status": "ok"}
    assert not second["alignment"]["ok"] and second["number"] is None
    assert second["meter"] == {"value": 3152, "reading": None, "status": "not aligned"}
