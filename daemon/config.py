"""One typed schema for config.yaml: defaults, validation, ``${VAR}`` secrets.

``load(path)`` returns a tree of ``Section`` objects or raises ``ConfigError``
holding every problem as ``path.to.key: message``.
"""

import difflib
import functools
import logging
import os
import re

log = logging.getLogger(__name__)

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_MASK = "***"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists ``path: message`` strings."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class Field(object):
    """One key: its type, default, allowed values or range, and its documentation."""

    def __init__(
        self, kind, default, doc, choices=None, minimum=None, maximum=None, secret=False, live=False
    ):
        self.kind = kind  # str, int, float, bool, or a Schema / ListOf
        self.default = default
        self.doc = doc
        self.choices = choices
        self.minimum = minimum
        self.maximum = maximum
        self.secret = secret
        self.live = live  # may change on SIGHUP without a restart


class Schema(object):
    """A mapping of key -> Field (a config section)."""

    def __init__(self, fields, doc=""):
        self.fields = fields
        self.doc = doc


class ListOf(object):
    """A list whose items follow ``schema``."""

    def __init__(self, schema):
        self.schema = schema


class Section(object):
    """Attribute access to validated values; secrets are masked in repr."""

    def __init__(self, values, secrets=()):
        self.__dict__.update(values)
        self._secrets = frozenset(secrets)

    def as_dict(self):
        """Plain dict (secrets included: never log this)."""
        out = {}
        for key, value in self.__dict__.items():
            if key.startswith("_"):
                continue
            if isinstance(value, Section):
                value = value.as_dict()
            elif isinstance(value, list):
                value = [v.as_dict() if isinstance(v, Section) else v for v in value]
            out[key] = value
        return out

    def __repr__(self):
        shown = []
        for key, value in sorted(self.__dict__.items()):
            if key.startswith("_"):
                continue
            shown.append("%s=%r" % (key, _SECRET_MASK if key in self._secrets and value else value))
        return "Section(%s)" % ", ".join(shown)

    def __eq__(self, other):
        return isinstance(other, Section) and self.as_dict() == other.as_dict()

    def __ne__(self, other):
        return not self == other


PREPROCESS = Schema(
    {
        "blur_kernel": Field(
            int,
            5,
            "Gaussian blur kernel for a 200 px crop, scaled with the crop (odd, 0 = off)",
            minimum=0,
            maximum=31,
            live=True,
        ),
        "threshold": Field(
            str,
            "otsu",
            "binarisation: otsu, fixed or adaptive",
            choices=("otsu", "fixed", "adaptive"),
            live=True,
        ),
        "fixed_threshold": Field(int, 128, "level for threshold: fixed", minimum=0, maximum=255, live=True),
        "adaptive_block_size": Field(
            int, 31, "neighbourhood for threshold: adaptive", minimum=3, maximum=255, live=True
        ),
        "adaptive_c": Field(int, 10, "offset for threshold: adaptive", minimum=-100, maximum=100, live=True),
        "polarity": Field(
            str,
            "auto",
            "auto, dark_on_light (pen on paper) or light_on_dark",
            choices=("auto", "dark_on_light", "light_on_dark"),
            live=True,
        ),
        "morphology": Field(
            str,
            "none",
            "none, open, close, dilate or erode",
            choices=("none", "open", "close", "dilate", "erode"),
            live=True,
        ),
        "morph_kernel": Field(int, 3, "morphology kernel size", minimum=1, maximum=15, live=True),
        "min_contrast": Field(
            int,
            20,
            "grey levels between paper and ink below which a crop is empty",
            minimum=0,
            maximum=255,
            live=True,
        ),
        "min_contrast_to_noise": Field(
            float,
            6.0,
            "a crop whose contrast is under this many times its own pixel noise is empty",
            minimum=0.0,
            maximum=100.0,
            live=True,
        ),
        "min_ink_fraction": Field(
            float, 0.004, "crop with less ink is empty", minimum=0.0, maximum=1.0, live=True
        ),
        "max_ink_fraction": Field(
            float, 0.6, "crop with more ink is not a digit", minimum=0.0, maximum=1.0, live=True
        ),
        "min_component_fraction": Field(
            float,
            0.08,
            "specks smaller than this share of the largest stroke are dropped",
            minimum=0.0,
            maximum=1.0,
            live=True,
        ),
        "flatten": Field(
            bool,
            True,
            "take the paper's uneven light (shadows, vignetting) away before thresholding",
            live=True,
        ),
        "sharpen": Field(
            float,
            0.75,
            "unsharp-mask amount that pulls blurred strokes apart (0 = off)",
            minimum=0.0,
            maximum=5.0,
            live=True,
        ),
    }
)

_BOX = Schema(
    {
        "id": Field(str, "", "name of the ROI in payloads"),
        "x": Field(int, 0, "left edge, pixels", minimum=0),
        "y": Field(int, 0, "top edge, pixels", minimum=0),
        "w": Field(int, 0, "width, pixels", minimum=1),
        "h": Field(int, 0, "height, pixels", minimum=1),
        "polarity": Field(
            str,
            "auto",
            "this box's ink: auto (preprocess.polarity), dark_on_light or light_on_dark "
            "(a meter's drums: white digits on black, black or red on white)",
            choices=("auto", "dark_on_light", "light_on_dark"),
        ),
        "style": Field(
            str,
            "auto",
            "this box's digits: auto (any, a drum may be in transition), drum (a counter drum, "
            "may be caught between two digits), segments (seven-segment display), handwritten or "
            "printed (these never roll: the transition class is not read for them)",
            choices=("auto", "drum", "segments", "handwritten", "printed"),
        ),
    }
)

SOURCE = Schema(
    {
        "type": Field(
            str,
            "file",
            "csi, v4l2, rtsp, uri, file or images",
            choices=("csi", "v4l2", "rtsp", "uri", "file", "images"),
        ),
        "path": Field(str, "", "video file (type file) or folder/glob (type images)"),
        "uri": Field(str, "", "stream address (types rtsp and uri)"),
        "device": Field(str, "/dev/video0", "V4L2 device (type v4l2)"),
        "sensor_id": Field(int, 0, "CSI sensor (type csi)", minimum=0, maximum=7),
        "width": Field(int, 1280, "capture width (csi, v4l2)", minimum=16, maximum=8192),
        "height": Field(int, 720, "capture height (csi, v4l2)", minimum=16, maximum=8192),
        "fps": Field(
            float,
            30.0,
            "capture rate (csi, v4l2) and pacing (file with realtime)",
            minimum=0.1,
            maximum=240.0,
        ),
        "flip_method": Field(int, 0, "nvvidconv flip-method 0-7 (csi)", minimum=0, maximum=7),
        "pipeline": Field(str, "", "full GStreamer pipeline, overrides the built one"),
        "loop": Field(bool, False, "restart a video file at its end"),
        "realtime": Field(bool, False, "pace a video file at fps (drops frames like a camera)"),
        "wait_for_source": Field(bool, False, "at start, retry an unavailable source instead of exiting 69"),
        "reopen_initial_delay_s": Field(float, 0.5, "first reopen delay", minimum=0.01),
        "reopen_max_delay_s": Field(float, 30.0, "longest reopen delay", minimum=0.01),
        "stall_timeout_s": Field(float, 5.0, "a live source silent this long is reopened", minimum=0.1),
    }
)

ROI = Schema(
    {
        "mode": Field(
            str,
            "center",
            "center, full (the whole frame as one digit), boxes (each box read whole as one digit), "
            "segment (numbers) or grid (sudoku, forms)",
            choices=("center", "full", "boxes", "segment", "grid"),
            live=True,
        ),
        "region": Schema(
            {
                "x": Field(int, 0, "left edge", minimum=0, live=True),
                "y": Field(int, 0, "top edge", minimum=0, live=True),
                "w": Field(int, 0, "width (0 = whole frame)", minimum=0, live=True),
                "h": Field(int, 0, "height (0 = whole frame)", minimum=0, live=True),
            }
        ),
        "max_digits": Field(
            int, 12, "segment: most digits read per frame", minimum=1, maximum=200, live=True
        ),
        "grid_rows": Field(int, 9, "grid: rows", minimum=1, maximum=50, live=True),
        "grid_cols": Field(int, 9, "grid: columns", minimum=1, maximum=50, live=True),
        "grid_locate": Field(bool, True, "grid: find the grid's outer frame and undo perspective", live=True),
        "size": Field(int, 200, "side of the centre square, pixels", minimum=8, live=True),
        "boxes": Field(
            ListOf(_BOX), [], "fixed boxes (mode boxes): id, x, y, w, h, polarity, style", live=True
        ),
        "align": Schema(
            {
                "reference": Field(
                    str,
                    "",
                    "a saved frame in whose pixels the boxes are drawn: each frame is registered to it "
                    "before cropping (a camera that moved still crops the digits); empty = off",
                    live=True,
                ),
                "min_score": Field(
                    float,
                    0.6,
                    "a frame correlating less with the reference is reported as not aligned, not read",
                    minimum=0.0,
                    maximum=1.0,
                    live=True,
                ),
            }
        ),
        "meter": Schema(
            {
                "enabled": Field(
                    bool,
                    False,
                    "the boxes (mode boxes, most significant digit first) are a meter's digits: "
                    "one checked value per frame, published as meter (see daemon/meter.py)",
                    live=True,
                ),
                "decimals": Field(int, 0, "digits after the decimal point", minimum=0, maximum=12, live=True),
                "allow_decrease": Field(
                    bool, False, "accept a value below the last good one (else: negative rate)", live=True
                ),
                "max_rate": Field(
                    float,
                    0.0,
                    "largest plausible rise in units per hour, plus one step of the last digit "
                    "(0 = no limit; above: rate too high)",
                    minimum=0.0,
                    live=True,
                ),
                "state_file": Field(
                    str,
                    "",
                    "keeps the last good value across restarts (default $STATE_DIRECTORY/meter.json, "
                    "or meter-<source>.json with several cameras; systemd's StateDirectory=digitd)",
                    live=True,
                ),
                "device_class": Field(
                    str,
                    "water",
                    "what it measures, for Home Assistant: water, gas or energy",
                    choices=("water", "gas", "energy"),
                    live=True,
                ),
                "unit": Field(
                    str,
                    "",
                    "unit for Home Assistant (default m³ for water and gas, kWh for energy)",
                    live=True,
                ),
            }
        ),
    }
)

# one camera of several (``sources:``): its own id and ROIs beside the source settings
SOURCE_ITEM = Schema(
    dict(
        [("id", Field(str, "", "names the source in MQTT topics and payloads (letters, digits, - and _)"))]
        + list(SOURCE.fields.items())
        + [("roi", ROI)]
    )
)

SCHEMA = Schema(
    {
        "device_id": Field(str, "digitd-01", "identifies this daemon in MQTT topics and payloads"),
        "log_level": Field(
            str,
            "INFO",
            "DEBUG, INFO, WARNING or ERROR",
            choices=("DEBUG", "INFO", "WARNING", "ERROR"),
            live=True,
        ),
        "stats_interval_s": Field(float, 10.0, "seconds between stats messages", minimum=0.5),
        "source": SOURCE,
        "roi": ROI,
        "sources": Field(
            ListOf(SOURCE_ITEM),
            [],
            "several cameras in one daemon, each with an id, its source settings and its roi "
            "(instead of source and roi); their crops share one batcher and one backend",
        ),
        "preprocess": PREPROCESS,
        "batching": Schema(
            {
                "max_batch": Field(int, 32, "most crops in one inference call", minimum=1, maximum=1024),
                "max_wait_ms": Field(
                    float,
                    0.0,
                    "longest wait for more frames before a partial batch runs (0: run at once with "
                    "the frames already queued, which batch by themselves under load)",
                    minimum=0.0,
                    maximum=1000.0,
                ),
                "queue_frames": Field(
                    int, 8, "frames buffered between capture and inference", minimum=1, maximum=1000
                ),
            }
        ),
        "backend": Schema(
            {
                "type": Field(
                    str,
                    "auto",
                    "auto, tensorrt, onnxruntime or tensorflow",
                    choices=("auto", "tensorrt", "onnxruntime", "tensorflow"),
                ),
                "onnx_model": Field(str, "models/digits.onnx", "ONNX model (onnxruntime)"),
                "onnx_precision": Field(
                    str,
                    "int8",
                    "onnxruntime: int8 runs the model's int8 copy (make quantize), unsure crops "
                    "again in float32; fp32 the model alone",
                    choices=("int8", "fp32"),
                ),
                "keras_model": Field(str, "models/digits.keras", "Keras model (tensorflow)"),
                "engine": Field(str, "models/digits.fp16.engine", "TensorRT engine (tensorrt)"),
                "threads": Field(
                    int, 1, "CPU threads per inference (onnxruntime, tensorflow)", minimum=1, maximum=64
                ),
                "rebuild_stale": Field(bool, False, "rebuild a TensorRT engine that does not match"),
                "zero_copy": Field(
                    bool, False, "TensorRT: mapped host memory instead of copies (Jetson iGPU shares DRAM)"
                ),
            }
        ),
        "postprocess": Schema(
            {
                "min_confidence": Field(
                    float,
                    0.5,
                    "below this a ROI reads as no digit (0.5: the digit is likelier than all else together)",
                    minimum=0.0,
                    maximum=1.0,
                    live=True,
                ),
                "second_look_below": Field(
                    float,
                    0.7,
                    "a crop the model is less sure of than this is read again shifted a pixel each way, "
                    "thinned and thickened, and the answers averaged (0 = never)",
                    minimum=0.0,
                    maximum=1.0,
                    live=True,
                ),
                "smoothing_frames": Field(
                    int, 5, "majority vote over the last N frames per ROI", minimum=1, maximum=1000, live=True
                ),
            }
        ),
        "http": Schema(
            {
                "enabled": Field(
                    bool, True, "serve /healthz, /metrics, /snapshot.jpg, /stream.mjpg, / and /predict"
                ),
                "bind": Field(str, "127.0.0.1", "address to listen on (0.0.0.0 exposes it to the network)"),
                "port": Field(int, 8080, "TCP port (0 = any free port)", minimum=0, maximum=65535),
                "max_body_bytes": Field(int, 10 * 1024 * 1024, "largest accepted upload", minimum=1024),
                "max_pixels": Field(int, 40000000, "largest accepted image (decompression bombs)", minimum=1),
                "stream_fps": Field(float, 10.0, "frame rate of /stream.mjpg", minimum=0.5, maximum=60.0),
                "max_streams": Field(int, 4, "concurrent /stream.mjpg clients", minimum=1, maximum=64),
                "max_connections": Field(
                    int,
                    32,
                    "concurrent HTTP connections (streams included); more are answered 503 and closed",
                    minimum=1,
                    maximum=1024,
                ),
                "idle_timeout_s": Field(
                    float,
                    30.0,
                    "close a connection that sends nothing (idle keep-alive, "
                    "stalled request) or takes nothing this long",
                    minimum=0.5,
                ),
                "token": Field(
                    str,
                    "",
                    "bearer token that PUT /api/config (the setup page's Save) needs; required when "
                    "bind is beyond loopback; use ${DIGITD_HTTP_TOKEN}",
                    secret=True,
                ),
                "token_file": Field(
                    str,
                    "",
                    "read the token from this file, e.g. ${CREDENTIALS_DIRECTORY}/http_token",
                ),
            }
        ),
        "service": Schema(
            {
                "opencv_threads": Field(
                    int,
                    1,
                    "threads OpenCV may use for one call (0: its own choice); crops are small, and "
                    "one thread per call measured less CPU per frame than two here",
                    minimum=0,
                    maximum=64,
                ),
                "health_timeout_s": Field(
                    float,
                    10.0,
                    "no published frame for this long = unhealthy "
                    "(/healthz 503; no systemd watchdog ping unless the source is being reopened)",
                    minimum=0.5,
                ),
            }
        ),
        "mqtt": Schema(
            {
                "enabled": Field(bool, True, "publish over MQTT"),
                "host": Field(str, "localhost", "broker host"),
                "port": Field(int, 1883, "broker port", minimum=1, maximum=65535),
                "prefix": Field(str, "digitd", "topic prefix"),
                "homeassistant": Field(
                    bool,
                    False,
                    "announce one device with a sensor per reading to Home Assistant (MQTT discovery, "
                    "retained config messages; availability follows <prefix>/<device_id>/availability)",
                ),
                "discovery_prefix": Field(str, "homeassistant", "Home Assistant's discovery prefix"),
                "client_id": Field(str, "", "MQTT client id (default digitd-<device_id>)"),
                "keepalive_s": Field(int, 30, "keepalive interval", minimum=5, maximum=3600),
                "qos": Field(int, 1, "QoS of prediction messages", choices=(0, 1, 2)),
                "username": Field(str, "", "broker user"),
                "password": Field(str, "", "broker password; use ${DIGITD_MQTT_PASSWORD}", secret=True),
                "password_file": Field(
                    str,
                    "",
                    "read the password from this file, e.g. "
                    "${CREDENTIALS_DIRECTORY}/mqtt_password (systemd LoadCredential)",
                ),
                "queue_size": Field(
                    int,
                    10000,
                    "messages kept while disconnected (oldest dropped)",
                    minimum=1,
                    maximum=10000000,
                ),
                "spool_path": Field(
                    str,
                    "",
                    "keep unacknowledged messages in this SQLite file across "
                    "restarts (e.g. /var/lib/digitd/outbox.sqlite); empty = memory only; a corrupt file is "
                    "moved aside to <file>.corrupt-<time>, an unwritable place exits 78",
                ),
                "reconnect_min_s": Field(float, 1.0, "first reconnect delay", minimum=0.1),
                "reconnect_max_s": Field(float, 60.0, "longest reconnect delay", minimum=0.1),
                "tls": Schema(
                    {
                        "enabled": Field(bool, False, "connect with TLS"),
                        "ca_file": Field(str, "", "CA certificate (PEM); empty = system CAs"),
                        "cert_file": Field(str, "", "client certificate (PEM)"),
                        "key_file": Field(str, "", "client key (PEM)"),
                        "insecure": Field(bool, False, "skip host name verification"),
                    }
                ),
            }
        ),
    }
)


def _type_name(kind):
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(kind, "?")


def _value_kind(value):
    """What YAML made of a value, without the value (for secrets)."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing (null)"
    return "a %s" % type(value).__name__


def _expand_env(value, path, errors):
    def replace(match):
        name = match.group(1)
        if name not in os.environ:
            errors.append("%s: environment variable %s is not set" % (path, name))
            return ""
        return os.environ[name]

    return _ENV_PATTERN.sub(replace, value)


def _check_scalar(field, value, path, errors):
    kind = field.kind
    if isinstance(value, str) and "${" in value:
        value = _expand_env(value, path, errors)
        if kind is not str:
            try:
                value = {"true": True, "false": False}[value.lower()] if kind is bool else kind(value)
            except (KeyError, ValueError):
                errors.append("%s: expected %s from the environment" % (path, _type_name(kind)))
                return field.default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is bool and not isinstance(value, bool):
        errors.append("%s: expected true or false, got %r" % (path, value))
        return field.default
    if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, kind)):
        errors.append("%s: expected %s, got %r" % (path, _type_name(kind), value))
        return field.default
    if kind is str and not isinstance(value, str):
        # YAML 1.1 reads unquoted 0123 as 83, 0x1F as 31, 12:30 as 750: converting back would
        # silently change a password or an id, so the user must quote it.
        shown = _value_kind(value) if field.secret else "%s %r" % (_value_kind(value), value)
        errors.append(
            "%s: expected a string, got %s; put it in quotes in the YAML file (YAML converts "
            "unquoted numbers, times and dates)" % (path, shown)
        )
        return field.default
    if field.choices is not None and value not in field.choices:
        errors.append("%s: %r is not one of %s" % (path, value, ", ".join(str(c) for c in field.choices)))
        return field.default
    if field.minimum is not None and value < field.minimum:
        errors.append("%s: %r is below the minimum %r" % (path, value, field.minimum))
        return field.default
    if field.maximum is not None and value > field.maximum:
        errors.append("%s: %r is above the maximum %r" % (path, value, field.maximum))
        return field.default
    return value


def _build(schema, data, path, errors):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append("%s: expected a mapping, got %r" % (path or "(top level)", data))
        data = {}
    values = {}
    secrets = []
    for key in data:
        if key not in schema.fields:
            close = difflib.get_close_matches(str(key), list(schema.fields), n=1, cutoff=0.5)
            hint = "; did you mean %r?" % close[0] if close else ""
            errors.append("%s: unknown key%s" % (_join(path, key), hint))
    for key, field in schema.fields.items():
        sub_path = _join(path, key)
        if isinstance(field, Schema):
            values[key] = _build(field, data.get(key), sub_path, errors)
        elif isinstance(field.kind, ListOf):
            items = data.get(key, field.default)
            if not isinstance(items, list):
                errors.append("%s: expected a list, got %r" % (sub_path, items))
                items = []
            values[key] = [
                _build(field.kind.schema, item, "%s[%d]" % (sub_path, index), errors)
                for index, item in enumerate(items)
            ]
        elif key in data:
            values[key] = _check_scalar(field, data[key], sub_path, errors)
            if field.secret:
                secrets.append(key)
        else:
            values[key] = field.default
    return Section(values, secrets)


def _join(path, key):
    """Dotted path; keys that are not plain names are shown quoted in brackets: roi['a b']."""
    if not (isinstance(key, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key)):
        return "%s[%r]" % (path, key)
    return "%s.%s" % (path, key) if path else key


def _cross_checks(config, errors, failed=()):
    """Checks across keys; one is skipped when a key it reads already had an error (its value is
    then the default, and a follow-up error about it would only mislead)."""

    def check(ok, keys, message):
        if not ok and not any(
            k == f or f.startswith(k + "[") or f.startswith(k + ".") for k in keys for f in failed
        ):
            errors.append(message)

    mqtt = config.mqtt
    if config.sources:
        seen_ids = set()
        for index, item in enumerate(config.sources):
            path = "sources[%d]" % index
            check(
                re.match(r"^[A-Za-z0-9_-]+$", item.id),
                (path + ".id",),
                "%s.id: %r must be letters, digits, '-' or '_' (it is part of MQTT topics)" % (path, item.id),
            )
            check(item.id not in seen_ids, (path + ".id",), "%s.id: duplicate id %r" % (path, item.id))
            seen_ids.add(item.id)
            _check_source(item, path, check)
            _check_roi(item.roi, path + ".roi", check)
    else:
        _check_source(config.source, "source", check)
        _check_roi(config.roi, "roi", check)
    check(
        mqtt.reconnect_max_s >= mqtt.reconnect_min_s,
        ("mqtt.reconnect_max_s", "mqtt.reconnect_min_s"),
        "mqtt.reconnect_max_s: smaller than reconnect_min_s",
    )
    check(
        bool(mqtt.tls.cert_file) == bool(mqtt.tls.key_file),
        ("mqtt.tls.cert_file", "mqtt.tls.key_file"),
        "mqtt.tls.key_file: cert_file and key_file go together",
    )
    check(
        re.match(r"^[^#+/\s]+$", config.device_id),
        ("device_id",),
        "device_id: %r must be non-empty without '/', '#', '+' or spaces" % config.device_id,
    )


def _check_roi(roi, prefix, check):
    check(
        roi.mode != "boxes" or roi.boxes,
        (prefix + ".mode", prefix + ".boxes"),
        "%s.boxes: mode boxes needs at least one box" % prefix,
    )
    check(
        not roi.meter.enabled or (roi.mode == "boxes" and roi.boxes),
        (prefix + ".mode", prefix + ".boxes", prefix + ".meter.enabled"),
        "%s.meter.enabled: a meter reads roi.mode boxes (its digits, most significant first)" % prefix,
    )
    check(
        not roi.meter.enabled or roi.meter.decimals <= len(roi.boxes),
        (prefix + ".meter.decimals", prefix + ".boxes"),
        "%s.meter.decimals: more decimals than boxes" % prefix,
    )
    check(
        not roi.align.reference or os.path.isfile(roi.align.reference),
        (prefix + ".align.reference",),
        "%s.align.reference: no such file %s" % (prefix, roi.align.reference),
    )
    check(
        not roi.align.reference or not os.path.isfile(roi.align.reference) or _is_image(roi.align.reference),
        (prefix + ".align.reference",),
        "%s.align.reference: %s is not an image OpenCV can read" % (prefix, roi.align.reference),
    )
    seen = set()
    for index, box in enumerate(roi.boxes):
        path = "%s.boxes[%d].id" % (prefix, index)
        check(box.id, (path,), "%s: every box needs an id" % path)
        check(not box.id or box.id not in seen, (path,), "%s: duplicate id %r" % (path, box.id))
        seen.add(box.id)


def _check_source(source, prefix, check):
    keys = (prefix + ".type", prefix + ".path")
    check(source.type != "file" or source.path, keys, "%s.path: type file needs a video file" % prefix)
    check(
        source.type != "images" or source.path, keys, "%s.path: type images needs a folder or glob" % prefix
    )
    check(
        source.type not in ("rtsp", "uri") or source.uri or source.pipeline,
        (prefix + ".type", prefix + ".uri", prefix + ".pipeline"),
        "%s.uri: type %s needs a stream address" % (prefix, source.type),
    )
    check(
        source.reopen_max_delay_s >= source.reopen_initial_delay_s,
        (prefix + ".reopen_max_delay_s", prefix + ".reopen_initial_delay_s"),
        "%s.reopen_max_delay_s: smaller than reopen_initial_delay_s" % prefix,
    )


def inputs(config):
    """[(source id, source settings, roi settings)]: one entry per camera. A config with the
    single ``source``/``roi`` form gives one entry whose id is None (topics without an id)."""
    if config.sources:
        return [(item.id, item, item.roi) for item in config.sources]
    return [(None, config.source, config.roi)]


def _read_password_file(config, errors):
    path = config.mqtt.password_file
    if not path:
        return
    if config.mqtt.password:
        errors.append("mqtt.password_file: set either password or password_file, not both")
        return
    try:
        with open(path) as handle:
            config.mqtt.password = handle.read().rstrip("\r\n")
    except OSError as exc:
        errors.append("mqtt.password_file: cannot read %s (%s)" % (path, exc.strerror or exc))


PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_image(path):
    """Whether OpenCV decodes ``path`` as an image (a reference frame must be one: the capture
    loop registers every frame to it). Decoded once per version of the file: every setup-page
    preview validates its settings."""
    status = os.stat(path)
    return _decodes(path, status.st_mtime, status.st_size)


@functools.lru_cache(maxsize=16)
def _decodes(path, mtime, size):
    import cv2

    return cv2.imread(path, cv2.IMREAD_GRAYSCALE) is not None


MODEL_KEYS = ("onnx_model", "keras_model", "engine")


def resolve_model_paths(backend, base_dirs):
    """Make the backend's relative model paths absolute: the working directory first, then each
    of ``base_dirs`` (an engine may not exist yet: its folder is enough)."""
    for key in MODEL_KEYS:
        path = getattr(backend, key)
        if os.path.isabs(path):
            continue
        for base in [os.getcwd()] + list(base_dirs):
            candidate = os.path.join(base, path)
            if os.path.exists(candidate) or key == "engine" and os.path.isdir(os.path.dirname(candidate)):
                setattr(backend, key, os.path.abspath(candidate))
                break


def from_dict(data, base_dirs=(PROJECT_ROOT,)):
    """Validate a parsed YAML mapping; return the config tree or raise ConfigError.

    Relative model paths come back absolute: found in the working directory or in one of
    ``base_dirs`` (the config file's folder, then the project's)."""
    errors = []
    config = _build(SCHEMA, data, "", errors)
    if isinstance(data, dict) and data.get("sources") and ("source" in data or "roi" in data):
        errors.append("sources: give either source and roi (one camera) or sources (several), not both")
    failed = set(e.split(":", 1)[0] for e in errors)
    _cross_checks(config, errors, failed)
    if not failed & {"mqtt.password", "mqtt.password_file"}:
        _read_password_file(config, errors)
    if not failed & {"http.token", "http.token_file", "http.bind"}:
        _check_http_token(config, errors)
    if errors:
        raise ConfigError(errors)
    resolve_model_paths(config.backend, base_dirs)
    return config


def defaults():
    """The default config, for commands that read no camera (``predict``, benchmarks)."""
    return from_dict({"source": {"type": "images", "path": "."}})


def load(path):
    """Read and validate a YAML config file."""
    import yaml

    try:
        with open(str(path)) as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(["%s: cannot read (%s)" % (path, exc.strerror or exc)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(["%s: not valid YAML: %s" % (path, str(exc).replace("\n", " "))]) from exc
    return from_dict(data, (os.path.dirname(os.path.abspath(str(path))), PROJECT_ROOT))


def live_changes(old, new, schema=SCHEMA, path=""):
    """Return (live, restart_needed) lists of dotted keys that differ between two configs."""
    live, restart = [], []
    for key, field in schema.fields.items():
        sub_path = _join(path, key)
        a, b = getattr(old, key), getattr(new, key)
        if isinstance(field, Schema):
            sub_live, sub_restart = live_changes(a, b, field, sub_path)
            live += sub_live
            restart += sub_restart
        elif a != b and not field.live and _same_length_list_of_sections(field, a, b):
            # e.g. sources: the same cameras, one's roi changed -> that roi changes live
            for index, (item_a, item_b) in enumerate(zip(a, b)):
                sub_live, sub_restart = live_changes(
                    item_a, item_b, field.kind.schema, "%s[%d]" % (sub_path, index)
                )
                live += sub_live
                restart += sub_restart
        elif a != b:
            (live if field.live else restart).append(sub_path)
    return live, restart


def _same_length_list_of_sections(field, a, b):
    return (
        isinstance(field.kind, ListOf)
        and isinstance(field.kind.schema, Schema)
        and isinstance(a, list)
        and isinstance(b, list)
        and len(a) == len(b)
    )


def section_at(config, dotted):
    """The section or list item that ``dotted`` (``sources[1].roi``, ``mqtt``; "" for the whole
    config) names in ``config``."""
    section = config
    for part in filter(None, dotted.split(".")):
        name, _, index = part.partition("[")
        section = getattr(section, name)
        if index:
            section = section[int(index.rstrip("]"))]
    return section


# -- the HTTP token (setup page and PUT /api/config) -------------------------------------------
MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host):
    """True for an address or name that only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    host = (host or "").strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_http_token(config, errors):
    """Read ``http.token_file``; a server bound beyond loopback must have a token."""
    http = config.http
    if http.token_file:
        if http.token:
            errors.append("http.token_file: set either token or token_file, not both")
            return
        try:
            with open(http.token_file) as handle:
                http.token = handle.read().strip()
        except OSError as exc:
            errors.append("http.token_file: cannot read %s (%s)" % (http.token_file, exc.strerror or exc))
            return
    key = "http.token_file" if http.token_file else "http.token"
    if http.token and len(http.token) < MIN_TOKEN_LENGTH:
        errors.append(
            "%s: the token is shorter than %d characters (make one with: openssl rand -hex 16)"
            % (key, MIN_TOKEN_LENGTH)
        )
    elif http.enabled and not http.token and not is_loopback(http.bind):
        errors.append(
            "http.token: bind %r reaches beyond this machine, so the setup API needs a token: set "
            "http.token (e.g. ${DIGITD_HTTP_TOKEN}) or http.token_file, or bind 127.0.0.1" % http.bind
        )


def masked_dict(config, schema=SCHEMA):
    """The config as a plain dict with every secret replaced by ``***`` (empty ones stay empty)."""
    out = {}
    for key, field in schema.fields.items():
        value = getattr(config, key)
        if isinstance(field, Schema):
            value = masked_dict(value, field)
        elif isinstance(field.kind, ListOf):
            value = [masked_dict(item, field.kind.schema) for item in value]
        elif field.secret and value:
            value = SECRET_MASK
        out[key] = value
    return out


SECRET_MASK = _SECRET_MASK
