"""A meter's reading: drums in transition resolved as a counter would, the checks against the
last good value, the value kept across a restart, the payloads on MQTT."""

import json

import pytest

from daemon import config, meter
from daemon.pipeline import Pipeline
from daemon.postprocess import RoiReading
from tests.helpers import MODELS, ListSource, RecordingPublisher, boxes_around, run_to_the_end


def readings(text):
    """RoiReadings from a string: a digit, 'T' a drum in transition, '?' an unread box."""
    out = []
    for index, char in enumerate(text):
        digit = int(char) if char.isdigit() else None
        out.append(RoiReading("d%d" % index, (0, 0, 1, 1), digit, 0.9, transition=char == "T"))
    return out


def meter_settings(tmp_path, **values):
    values.setdefault("enabled", True)
    values.setdefault("state_file", str(tmp_path / "meter.json"))
    boxes = [{"id": "d%d" % i, "x": i * 10, "y": 0, "w": 10, "h": 20} for i in range(6)]
    data = {"source": {"type": "v4l2"}, "roi": {"mode": "boxes", "boxes": boxes, "meter": values}}
    return config.from_dict(data).roi


@pytest.mark.parametrize(
    "previous, now, expected",
    [
        ("001234", "00123T", "001234"),  # the last drum still shows the digit it is leaving
        ("001239", "0012T0", "001240"),  # the drum below wrapped 9 -> 0: this one has rolled on
        ("001239", "0012T9", "001239"),  # the drum below still shows 9: not yet
        ("001299", "001TT0", "001300"),  # two drums rolling over at once
        (None, "00123T", None),  # nothing to resolve it from
    ],
)
def test_drums_in_transition_are_resolved_as_a_counter_would(previous, now, expected):
    digits, status = meter.resolve_transitions(readings(now), previous)
    assert (None if digits is None else "".join(map(str, digits))) == expected
    assert status == (None if expected else meter.IN_TRANSITION)


def test_an_unread_box_is_not_guessed():
    assert meter.resolve_transitions(readings("0012?4"), "001234") == (None, meter.UNREAD)


def test_a_falling_or_racing_reading_is_rejected_and_the_last_good_value_kept(tmp_path):
    gauge = meter.Meter(meter_settings(tmp_path, decimals=3, max_rate=2.0).meter)
    assert gauge.update(readings("012345"), 1000.0) == {"value": 12.345, "reading": 12.345, "status": "ok"}
    assert gauge.update(readings("012344"), 1010.0)["status"] == meter.NEGATIVE_RATE
    # 2 units an hour: one hour later 14.345 is plausible, 15.345 is not
    assert gauge.update(readings("015345"), 4600.0) == {
        "value": 12.345,
        "reading": 15.345,
        "status": meter.RATE_TOO_HIGH,
    }
    assert gauge.update(readings("014000"), 4600.0)["value"] == 14.0
    # one step of the last digit is always plausible, however soon
    assert gauge.update(readings("014001"), 4600.1)["status"] == "ok"
    assert gauge.update(readings("01400T"), 4600.2) == {"value": 14.001, "reading": 14.001, "status": "ok"}


def test_allow_decrease_accepts_a_lower_value(tmp_path):
    gauge = meter.Meter(meter_settings(tmp_path, allow_decrease=True).meter)
    gauge.update(readings("000050"), 0.0)
    assert gauge.update(readings("000049"), 1.0) == {"value": 49, "reading": 49, "status": "ok"}


def test_the_last_good_value_survives_a_restart(tmp_path):
    settings = meter_settings(tmp_path).meter
    meter.Meter(settings).update(readings("000500"), 100.0)
    restarted = meter.Meter(settings)
    assert restarted.value == 500
    assert restarted.update(readings("000499"), 200.0)["status"] == meter.NEGATIVE_RATE
    assert restarted.update(readings("00050T"), 200.0)["value"] == 500  # resolved from the saved digits


def test_a_corrupt_state_file_starts_afresh(tmp_path, caplog):
    settings = meter_settings(tmp_path).meter
    (tmp_path / "meter.json").write_text("{not json")
    assert meter.Meter(settings).value is None
    assert "unreadable" in caplog.text


def test_the_default_state_file_is_in_the_service_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    assert meter.default_state_file() == str(tmp_path / "meter.json")
    assert meter.default_state_file("cellar") == str(tmp_path / "meter-cellar.json")


def test_a_meter_needs_boxes_and_no_more_decimals_than_boxes():
    with pytest.raises(config.ConfigError) as raised:
        config.from_dict({"source": {"type": "v4l2"}, "roi": {"mode": "center", "meter": {"enabled": True}}})
    assert "roi.meter.enabled" in str(raised.value)
    boxes = [{"id": "a", "x": 0, "y": 0, "w": 5, "h": 5}]
    with pytest.raises(config.ConfigError) as raised:
        config.from_dict(
            {
                "source": {"type": "v4l2"},
                "roi": {"mode": "boxes", "boxes": boxes, "meter": {"enabled": True, "decimals": 2}},
            }
        )
    assert "roi.meter.decimals" in str(raised.value)


def test_the_pipeline_publishes_checked_meter_values(tmp_path, schemas):
    from engine_build import meter_digits

    glyphs = [
        meter_digits.fonts.render_glyph(meter_digits.drum_fonts(held_out=True)[0], d) for d in range(10)
    ]
    positions = [4711.0, 4712.0, 4702.0, 4713.0]  # the third frame reads lower: rejected
    frames, boxes = [], None
    for position in positions:
        frame, boxes = meter_digits.counter_frame(position, glyphs)
        frames.append(frame)
    roi = {
        "mode": "boxes",
        "boxes": boxes_around(boxes),
        "meter": {"enabled": True, "decimals": 0, "state_file": str(tmp_path / "meter.json")},
    }
    data = {"source": {"type": "images", "path": "."}, "roi": roi}
    data["backend"] = {"type": "onnxruntime", "onnx_model": str(MODELS / "digits.onnx")}
    publisher = RecordingPublisher()
    pipeline = Pipeline(config.from_dict(data), ListSource(frames), publisher)
    run_to_the_end(pipeline)
    predictions = publisher.payloads("prediction")
    for payload in predictions:
        schemas["prediction"].validate(payload)
    assert [p["meter"]["status"] for p in predictions] == ["ok", "ok", "negative rate", "ok"]
    assert [p["meter"]["value"] for p in predictions] == [4711, 4712, 4712, 4713]
    retained = [(payload, retain) for kind, payload, _, retain in publisher.messages if kind == "meter"]
    assert all(retain for _, retain in retained)
    for payload, _ in retained:
        schemas["meter"].validate(payload)
    assert [(p["value"], p["status"]) for p, _ in retained] == [
        (4711, "ok"),
        (4712, "ok"),
        (4712, "negative rate"),
        (4713, "ok"),
    ]
    assert json.loads((tmp_path / "meter.json").read_text())["value"] == 4713
