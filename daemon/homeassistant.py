"""Home Assistant MQTT discovery (``mqtt.homeassistant: true``).

One device per daemon (``digitd <device_id>``) and one sensor per reading of each camera,
announced with retained config messages on
``<discovery_prefix>/sensor/<unique_id>/config`` (Home Assistant's best practice: the
object id is the unique id, no node id):

- a meter (``roi.meter.enabled``): its checked value from the retained ``meter`` topic,
  ``device_class`` water/gas/energy, ``state_class: total_increasing``, a unit, and the
  meter message (status, this frame's reading) as attributes;
- a grid (``roi.mode: grid``): the count of cells read, the grid as JSON attributes (from the
  prediction topic, which carries it);
- anything else: the number read, from the retained ``state`` topic.

Every sensor's availability is the daemon's last-will topic (``online``/``offline``).
"""

import re

import daemon
from daemon import config as config_module

DEFAULT_UNITS = {"water": "m³", "gas": "m³", "energy": "kWh"}


def _object_id(text):
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _device(config):
    return {
        "identifiers": ["digitd_%s" % _object_id(config.device_id)],
        "name": "digitd %s" % config.device_id,
        "manufacturer": "digitd",
        "model": "camera digit reader",
        "sw_version": daemon.__version__,
    }


def _topic(config, source_id, kind):
    parts = [config.mqtt.prefix, config.device_id] + ([source_id] if source_id else []) + [kind]
    return "/".join(parts)


def discovery_messages(config):
    """[(topic, payload)] of the retained discovery config messages for ``config``."""
    mqtt = config.mqtt
    availability = "%s/%s/availability" % (mqtt.prefix, config.device_id)
    messages = []
    for source_id, _, roi in config_module.inputs(config):
        base = "digitd_%s" % _object_id(config.device_id) + (
            "_%s" % _object_id(source_id) if source_id else ""
        )
        label = "" if source_id is None else "%s " % source_id
        if roi.meter.enabled:
            meter_topic = _topic(config, source_id, "meter")
            sensor = {
                "name": "%smeter" % label,
                "unique_id": base + "_meter",
                "state_topic": meter_topic,
                "value_template": "{{ value_json.value }}",
                "device_class": roi.meter.device_class,
                "state_class": "total_increasing",
                "unit_of_measurement": roi.meter.unit or DEFAULT_UNITS[roi.meter.device_class],
                "suggested_display_precision": roi.meter.decimals,
                "json_attributes_topic": meter_topic,
                "json_attributes_template": "{{ {'status': value_json.status, 'reading': value_json.reading} | tojson }}",
            }
        elif roi.mode == "grid":
            sensor = {
                "name": "%sgrid" % label,
                "unique_id": base + "_grid",
                "state_topic": _topic(config, source_id, "state"),
                "value_template": "{{ value_json.rois | selectattr('digit', 'number') | list | count }}",
                "unit_of_measurement": "cells",
                "icon": "mdi:grid",
                "json_attributes_topic": _topic(config, source_id, "prediction"),
                "json_attributes_template": "{{ {'grid': value_json.grid} | tojson }}",
            }
        else:
            sensor = {
                "name": "%snumber" % label,
                "unique_id": base + "_number",
                "state_topic": _topic(config, source_id, "state"),
                "value_template": "{{ value_json.number }}",
                "icon": "mdi:numeric",
            }
        sensor.update(
            {
                "availability_topic": availability,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": _device(config),
                "origin": {"name": "digitd", "sw_version": daemon.__version__},
            }
        )
        topic = "%s/sensor/%s/config" % (mqtt.discovery_prefix, sensor["unique_id"])
        messages.append((topic, sensor))
    return messages


def announce(publisher, config):
    """Publish the discovery messages, retained, when ``mqtt.homeassistant`` is on."""
    if not config.mqtt.homeassistant:
        return 0
    messages = discovery_messages(config)
    for topic, payload in messages:
        publisher.publish_to(topic, payload, qos=1, retain=True)
    return len(messages)
