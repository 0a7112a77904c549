"""Home Assistant MQTT discovery: retained config messages on the real Mosquitto, checked
against the MQTT sensor schema Home Assistant documents
(https://www.home-assistant.io/integrations/sensor.mqtt/ and /integrations/mqtt/#discovery-topic;
units per device class from https://www.home-assistant.io/integrations/sensor/#device-class)."""

import json
import re

import cv2
import jsonschema
import pytest

from daemon import config, homeassistant
from tests.helpers import boxes_around, run_daemon, write_config

# The configuration variables of an MQTT sensor (and the device and origin maps) as the docs
# list them: any other key is an error in Home Assistant's voluptuous schema.
HA_SENSOR_SCHEMA = {
    "type": "object",
    "required": ["state_topic", "unique_id", "device"],
    "additionalProperties": False,
    "properties": {
        "availability": {"type": "array"},
        "availability_mode": {"enum": ["all", "any", "latest"]},
        "availability_template": {"type": "string"},
        "availability_topic": {"type": "string", "minLength": 1},
        "default_entity_id": {"type": "string"},
        "device_class": {"type": "string"},
        "enabled_by_default": {"type": "boolean"},
        "encoding": {"type": "string"},
        "entity_category": {"enum": ["diagnostic"]},
        "entity_picture": {"type": "string"},
        "expire_after": {"type": "integer", "minimum": 0},
        "force_update": {"type": "boolean"},
        "icon": {"type": "string", "pattern": "^mdi:"},
        "json_attributes_template": {"type": "string"},
        "json_attributes_topic": {"type": "string", "minLength": 1},
        "last_reset_value_template": {"type": "string"},
        "name": {"type": ["string", "null"]},
        "object_id": {"type": "string"},
        "options": {"type": "array"},
        "payload_available": {"type": "string"},
        "payload_not_available": {"type": "string"},
        "platform": {"const": "mqtt"},
        "qos": {"enum": [0, 1, 2]},
        "state_class": {"enum": ["measurement", "measurement_angle", "total", "total_increasing"]},
        "state_topic": {"type": "string", "minLength": 1, "pattern": "^[^#+]+$"},
        "suggested_display_precision": {"type": "integer", "minimum": 0},
        "unique_id": {"type": "string", "minLength": 1},
        "unit_of_measurement": {"type": ["string", "null"]},
        "value_template": {"type": "string"},
        "device": {
            "type": "object",
            "additionalProperties": False,
            "anyOf": [{"required": ["identifiers"]}, {"required": ["connections"]}],
            "properties": {
                "configuration_url": {"type": "string"},
                "connections": {"type": "array"},
                "hw_version": {"type": "string"},
                "identifiers": {"type": ["array", "string"], "items": {"type": "string"}},
                "manufacturer": {"type": "string"},
                "model": {"type": "string"},
                "model_id": {"type": "string"},
                "name": {"type": "string"},
                "serial_number": {"type": "string"},
                "suggested_area": {"type": "string"},
                "sw_version": {"type": "string"},
                "via_device": {"type": "string"},
            },
        },
        "origin": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "sw_version": {"type": "string"},
                "support_url": {"type": "string"},
            },
        },
    },
}
# Units Home Assistant accepts per device class (with state_class total_increasing).
UNITS = {
    "water": {"CCF", "ft³", "m³", "gal", "L", "MCF"},
    "gas": {"CCF", "ft³", "m³", "MCF", "L"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal", "Gcal"},
}
DISCOVERY_TOPIC = re.compile(r"^homeassistant/sensor/[A-Za-z0-9_-]+/config$")


def check_discovery(topic, payload):
    """What Home Assistant would refuse: the topic format, the keys, device class and unit."""
    assert DISCOVERY_TOPIC.match(topic), topic
    jsonschema.validate(payload, HA_SENSOR_SCHEMA)
    if "device_class" in payload:
        assert payload["unit_of_measurement"] in UNITS[payload["device_class"]], payload
    assert topic.split("/")[2] == payload["unique_id"]  # best practice: object id = unique id


def test_every_kind_of_reading_has_a_valid_sensor():
    boxes = [{"id": "d%d" % i, "x": i * 10, "y": 0, "w": 10, "h": 20} for i in range(3)]
    data = {
        "device_id": "cellar.pi",
        "mqtt": {"homeassistant": True},
        "sources": [
            {
                "id": "water",
                "type": "v4l2",
                "roi": {"mode": "boxes", "boxes": boxes, "meter": {"enabled": True}},
            },
            {
                "id": "power",
                "type": "v4l2",
                "roi": {
                    "mode": "boxes",
                    "boxes": boxes,
                    "meter": {"enabled": True, "device_class": "energy"},
                },
            },
            {"id": "sudoku", "type": "v4l2", "roi": {"mode": "grid"}},
            {"id": "form", "type": "v4l2", "roi": {"mode": "segment"}},
        ],
    }
    messages = homeassistant.discovery_messages(config.from_dict(data))
    for topic, payload in messages:
        check_discovery(topic, payload)
    by_name = {payload["name"]: payload for _, payload in messages}
    assert by_name["water meter"]["unit_of_measurement"] == "m³"
    assert (
        by_name["power meter"]["device_class"] == "energy"
        and by_name["power meter"]["unit_of_measurement"] == "kWh"
    )
    assert by_name["sudoku grid"]["json_attributes_topic"] == "digitd/cellar.pi/sudoku/prediction"
    assert by_name["form number"]["state_topic"] == "digitd/cellar.pi/form/state"
    assert len({p["device"]["identifiers"][0] for _, p in messages}) == 1  # one device
    assert len({p["unique_id"] for _, p in messages}) == 4


def test_discovery_is_off_by_default():
    published = []

    class Recorder(object):
        def publish_to(self, *args, **kwargs):
            published.append(args)

    assert homeassistant.announce(Recorder(), config.from_dict({"source": {"type": "v4l2"}})) == 0
    assert published == []


@pytest.mark.mqtt
def test_retained_discovery_and_meter_value_reach_a_late_home_assistant(
    tmp_path, broker, subscriber_factory, schemas
):
    from engine_build import meter_digits

    glyphs = [
        meter_digits.fonts.render_glyph(meter_digits.drum_fonts(held_out=True)[0], d) for d in range(10)
    ]
    folder = tmp_path / "frames"
    folder.mkdir()
    boxes = None
    for index, position in enumerate([81234.0, 81235.0]):
        frame, boxes = meter_digits.counter_frame(position, glyphs, count=5)
        cv2.imwrite(str(folder / ("%02d.png" % index)), frame)
    roi = {
        "mode": "boxes",
        "boxes": boxes_around(boxes),
        "meter": {"enabled": True, "decimals": 2, "state_file": str(tmp_path / "meter.json")},
    }
    path = write_config(
        tmp_path / "config.yaml",
        source={"type": "images", "path": str(folder)},
        roi=roi,
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": broker.port, "homeassistant": True},
    )
    process = run_daemon(path)
    assert process.wait(60) == 0, process.log_path.read_text()
    # Home Assistant starts after the daemon stopped: everything it needs is retained
    late = subscriber_factory(broker.port)
    assert late.wait_for(lambda s: s.on("config") and s.on("meter") and s.on("availability"), timeout=10)
    ((topic, body, retained),) = late.on("config")
    assert retained
    discovery = json.loads(body.decode("utf-8"))
    check_discovery(topic, discovery)
    assert discovery["device_class"] == "water" and discovery["state_class"] == "total_increasing"
    # the topics it names carry what its templates read
    by_topic = {t: (p, r) for t, p, r in late.messages}
    meter_body, meter_retained = by_topic[discovery["state_topic"]]
    assert meter_retained
    meter = json.loads(meter_body.decode("utf-8"))
    schemas["meter"].validate(meter)
    assert meter["value"] == 812.35 and meter["status"] == "ok"
    assert by_topic[discovery["availability_topic"]] == (discovery["payload_not_available"].encode(), True)
