"""The setup page and its API: ``GET /setup``, ``GET``/``PUT /api/config``, ``GET``/``POST /api/preview``,
``POST /api/reference`` (the newest frame becomes the alignment reference).

Reading is open like ``/snapshot.jpg``; changing the config (PUT) needs ``Authorization:
Bearer <http.token>`` whenever a token is set (and the daemon refuses to start bound beyond
loopback without one). Without a token the server is loopback-only and a PUT must name a
loopback host (a DNS-rebinding page cannot). Requests that change state must come from the
daemon's own origin when a browser sends them (``Origin`` equals ``Host``). The token is only
ever read from that header, never from a cookie, so another site cannot make a browser send it.

A PUT is validated with the schema ``check-config`` uses, written into the file keeping its
comments (daemon.config_file), and applied the way SIGHUP applies a reload: through the
capture loop (``Pipeline.request_reload``), live keys at once, the rest reported as needing
a restart. Secrets are masked in every answer.
"""

import base64
import copy
import hmac
import html
import json
import logging
import os
import threading
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from daemon import config as config_module
from daemon import config_file

log = logging.getLogger(__name__)

SETUP_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "setup.html")
PREVIEW_SECTIONS = ("roi", "preprocess", "postprocess")
EDITABLE_SECTIONS = PREVIEW_SECTIONS  # the page's fields and their documentation
APPLY_TIMEOUT_S = 5.0  # the capture loop picks a reload up within about half a second
CROP_PREVIEW_SIDE = 96
_SAVE_LOCK = threading.Lock()  # one PUT at a time: each reads, edits and replaces the file


class Refused(Exception):
    """A request the API turns down: HTTP ``status``, a message, extra headers, error list
    (daemon.web answers it as ``{"error": message, "errors": [...]}``)."""

    def __init__(self, status, message, headers=None, errors=None):
        Exception.__init__(self, message)
        self.status = status
        self.headers = headers or {}
        self.errors = errors


# -- checks -----------------------------------------------------------------------------------
def _host_name(host):
    """The name in a Host header, without the port (``[::1]:8080`` -> ``::1``)."""
    host = host.strip()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def check_origin(request):
    """A browser's state-changing request must come from a page this server served."""
    origin = request.headers.get("Origin")
    host = request.headers.get("Host", "")
    if origin is None:
        if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
            raise Refused(403, "cross-site request refused")
        return  # not a browser (curl, scripts): the token decides
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        raise Refused(403, "Origin %s does not match this server (%s); request refused" % (origin, host))


def check_token(web, request):
    """``Authorization: Bearer <http.token>`` when a token is set; else a loopback Host."""
    token = web.settings.token
    if not token:
        if not config_module.is_loopback(_host_name(request.headers.get("Host", ""))):
            raise Refused(403, "without http.token, changes are accepted only on a loopback address")
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Refused(
            401,
            "a valid token is needed: send Authorization: Bearer <http.token>",
            {"WWW-Authenticate": 'Bearer realm="digitd"'},
        )


def read_body(web, request):
    """The request's body bytes, within ``http.max_body_bytes`` (also POST /predict's)."""
    try:
        length = int(request.headers.get("Content-Length") or -1)
    except ValueError:
        length = -1
    if length < 0:
        raise Refused(411, "Content-Length required")
    if length > web.settings.max_body_bytes:
        request.close_connection = True  # do not read a body we refuse
        raise Refused(413, "body of %d bytes exceeds the limit of %d" % (length, web.settings.max_body_bytes))
    return request.rfile.read(length)


def read_json_body(web, request):
    """The request's JSON object, within ``http.max_body_bytes``."""
    try:
        data = json.loads(read_body(web, request).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, "the body is not JSON: %s" % exc) from exc
    if not isinstance(data, dict):
        raise Refused(400, "the body must be a JSON object (config sections)")
    return data


# -- the page -----------------------------------------------------------------------------------
def setup_page(web):
    """The setup page (daemon/static/setup.html) with the device's name."""
    with open(SETUP_PAGE, "rb") as handle:
        page = handle.read().decode("utf-8")
    return page.replace("{{device}}", html.escape(web.pipeline.config.device_id))


def field_docs(schema=config_module.SCHEMA, path=""):
    """Per dotted key of the editable sections: type, default, limits, choices, doc, live; the
    keys of a list's items as ``roi.boxes[].style``."""
    out = {}
    for key, field in schema.fields.items():
        dotted = "%s.%s" % (path, key) if path else key
        if not path and key not in EDITABLE_SECTIONS:
            continue
        if isinstance(field, config_module.Schema):
            out.update(field_docs(field, dotted))
            continue
        kind = "list" if isinstance(field.kind, config_module.ListOf) else field.kind.__name__
        if kind == "list":
            out.update(field_docs(field.kind.schema, dotted + "[]"))
        out[dotted] = {
            "type": kind,
            "default": field.default,
            "doc": field.doc,
            "choices": list(field.choices) if field.choices else None,
            "minimum": field.minimum,
            "maximum": field.maximum,
            "live": field.live,
        }
    return out


# -- GET /api/config ----------------------------------------------------------------------------
def get_config(web, request):
    """The config file's settings as JSON (secrets masked), what still waits for a restart,
    whether a token is needed to save, and the editable fields' documentation. With several
    cameras ``sources`` lists their ids, ``source`` is the one asked for (``?source=<id>``,
    default the first) and ``config.roi`` is that camera's ROI settings."""
    running = web.pipeline.config
    source_id = source_asked(web, request)
    body = {
        "file": web.config_path,
        "token_required": bool(web.settings.token),
        "restart_pending": [],
        "fields": field_docs(),
    }
    if web.config_path:
        try:
            on_disk = config_module.load(web.config_path)
        except config_module.ConfigError as exc:
            body["config"] = config_module.masked_dict(running)
            body["file_errors"] = exc.errors
        else:
            body["config"] = config_module.masked_dict(on_disk)
            body["restart_pending"] = config_module.live_changes(running, on_disk)[1]
    else:
        body["config"] = config_module.masked_dict(running)
    body["sources"] = [i for i in web.pipeline.source_ids() if i is not None]
    body["source"] = source_id
    if source_id is not None:
        roi = _source_roi(body["config"], source_id)
        if roi is None:  # the file on disk no longer has that camera: the running one's
            roi = _camera_roi(running, source_id).as_dict()
        body["config"]["roi"] = roi
    return body


# -- PUT /api/config ----------------------------------------------------------------------------
def _effective(config, keys):
    value = config
    for key in keys:
        value = getattr(value, key)
    if isinstance(value, list):
        return [item.as_dict() if isinstance(item, config_module.Section) else item for item in value]
    return value


def merge_request(plain, body, current):
    """Apply the request ``body`` onto the file's ``plain`` data; return (merged data, changes):
    the (key path, value) pairs that differ from the ``current`` validated config (all given
    keys when the file does not validate). A secret sent back as ``***`` stays as it is."""
    merged = copy.deepcopy(plain)
    changes = []

    def walk(schema, given, target, keys):
        for key, value in given.items():
            field = schema.fields.get(key) if isinstance(key, str) else None
            path = keys + (key,)
            if isinstance(field, config_module.Schema) and isinstance(value, dict):
                if not isinstance(target.get(key), dict):
                    target[key] = {}
                walk(field, value, target[key], path)
                continue
            if field is not None and getattr(field, "secret", False) and value == config_module.SECRET_MASK:
                continue
            target[key] = value
            if field is None or isinstance(field, config_module.Schema):
                continue  # the schema check reports it
            if current is None or _effective(current, path) != value:
                changes.append((path, value))

    walk(config_module.SCHEMA, body, merged, ())
    return merged, changes


def _dotted(keys):
    return ".".join(str(k) for k in keys)


def _apply_through_capture_loop(web, path):
    """Have the capture loop load the saved file and apply it (as SIGHUP does); wait for it.
    Returns (live keys, restart keys) or None when the loop did not get to it in time."""
    done = threading.Event()
    outcome = {}

    def reload():
        try:
            fresh = config_module.load(path)
            outcome["keys"] = web.pipeline.apply_config(fresh)
        except config_module.ConfigError as exc:
            log.error("saved config did not load: %s", "; ".join(exc.errors))
        finally:
            done.set()

    web.pipeline.request_reload(reload)
    if not done.wait(APPLY_TIMEOUT_S):
        return None
    return outcome.get("keys")


def put_config(web, request):
    """Validate, save (comments kept, previous file as .bak) and apply a config change."""
    check_origin(request)
    check_token(web, request)
    _config_path(web)
    source_id = source_asked(web, request)
    body = read_json_body(web, request)
    return _save_and_apply(web, _body_for_camera(source_id, body))


def _config_path(web):
    if not web.config_path:
        raise Refused(409, "the daemon was started without a config file; nothing to save to")
    return web.config_path


def _save_and_apply(web, body_for, reload_anyway=False):
    """Merge ``body_for(the file's plain data, its validated config or None)`` into the
    config file, validate it, save it
    and have the capture loop apply it; with ``reload_anyway`` it is applied even when no key
    changed (a file the config names was replaced). The answer PUT /api/config gives."""
    path = web.config_path
    base_dirs = (os.path.dirname(os.path.abspath(path)), config_module.PROJECT_ROOT)
    with _SAVE_LOCK:
        try:
            plain = config_file.plain_data(config_file.read_text(path), path)
        except config_file.ConfigFileError as exc:
            raise Refused(500, str(exc)) from exc
        try:
            current = config_module.from_dict(plain, base_dirs)
        except config_module.ConfigError:
            current = None  # the file is broken already: every given key is written
        merged, changes = merge_request(plain, body_for(plain, current), current)
        try:
            new = config_module.from_dict(merged, base_dirs)
        except config_module.ConfigError as exc:
            raise Refused(
                400, "%d error(s); the file is unchanged" % len(exc.errors), errors=exc.errors
            ) from exc
        backup = None
        if changes:
            try:
                backup = config_file.save(path, changes, new)
            except config_file.ConfigFileError as exc:
                log.error("saving the config failed: %s", exc)
                raise Refused(500, str(exc)) from exc
            log.info("config saved from the setup API: %s", ", ".join(_dotted(k) for k, _ in changes))
        applied = _apply_through_capture_loop(web, path) if changes or reload_anyway else None
    pending = (bool(changes) or reload_anyway) and applied is None
    live, restart = applied if applied is not None else config_module.live_changes(web.pipeline.config, new)
    if applied is not None and live:
        log.info("setup API: applied live: %s", ", ".join(live))
    if restart:
        log.warning("setup API: these keys need a restart to change: %s", ", ".join(restart))
    return {
        "saved": bool(changes),
        "file": path,
        "backup": backup,
        "changed": [_dotted(k) for k, _ in changes],
        "applied_live": live if not pending else [],
        "live_pending": live if pending else [],
        "needs_restart": restart,
    }


# -- POST /api/reference ------------------------------------------------------------------------
def reference_path(config_path, source_id):
    """Where a camera's alignment reference is kept: beside the config file."""
    folder = os.path.dirname(os.path.abspath(config_path))
    return os.path.join(folder, "reference-%s.png" % (source_id or "default"))


def _body_for_camera(source_id, body):
    """A request body whose ``roi`` is camera ``source_id``'s: under ``roi`` with the single
    source/roi form, else merged into that camera's entry of ``sources`` (the list is written
    whole, the rest as it is). Only the keys whose values differ from the camera's settings
    now go into its entry: the page sends every key, and the whole default ``roi`` would be
    pinned into each camera's entry. The other sections stay where they are."""

    def body_for(plain, current):
        if source_id is None or "roi" not in body:
            return body
        effective = _camera_roi(current, source_id) if current is not None else None
        effective = effective.as_dict() if effective is not None else {}
        items = copy.deepcopy(plain.get("sources") or [])
        for item in items:
            if isinstance(item, dict) and item.get("id") == source_id:
                roi = item.get("roi") if isinstance(item.get("roi"), dict) else {}
                item["roi"] = _merge(roi, _changed_only(copy.deepcopy(body["roi"]), effective))
                merged = dict((key, value) for key, value in body.items() if key != "roi")
                merged["sources"] = items
                return merged
        raise Refused(409, "the config file has no source %r (any more); nothing saved" % source_id)

    return body_for


def _changed_only(given, effective):
    """The keys of ``given`` (nested dicts) whose values differ from ``effective``'s."""
    out = {}
    for key, value in given.items():
        now = effective.get(key) if isinstance(effective, dict) else None
        if isinstance(value, dict) and isinstance(now, dict):
            inner = _changed_only(value, now)
            if inner:
                out[key] = inner
        elif value != now:
            out[key] = value
    return out


def post_reference(web, request):
    """Save the camera's newest raw frame (as the camera gave it, not registered) as the
    alignment reference, lossless PNG beside the config file, name it as
    ``roi.align.reference`` in the config and apply it: from the next frame on, every frame
    is registered to it. ``?source=<id>`` picks a camera (default the first)."""
    check_origin(request)
    check_token(web, request)
    path = _config_path(web)
    if request.headers.get("Content-Length"):
        read_body(web, request)  # nothing is read from it; within the limit, then ignored
    source_id = source_asked(web, request)
    view = web.pipeline.latest_view(source_id)
    if view is None:
        raise Refused(
            409, "no frame has been captured yet: nothing to save as the reference", {"Retry-After": "1"}
        )
    image = view.frame.image
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise Refused(500, "the frame could not be encoded as PNG")
    target = reference_path(path, source_id)
    existed = os.path.exists(target)
    try:
        config_file.write_file_atomically(target, png.tobytes())
    except OSError as exc:
        log.error("saving the reference frame failed: %s", exc)
        raise Refused(
            500, "cannot write the reference frame %s (%s); nothing changed" % (target, exc.strerror or exc)
        ) from exc
    try:
        change = {"roi": {"align": {"reference": target}}}
        answer = _save_and_apply(web, _body_for_camera(source_id, change), reload_anyway=True)
    except Refused:
        if not existed:
            _remove_quietly(target)
        raise
    log.info("setup API: frame %d saved as the alignment reference %s", view.frame.index, target)
    answer["reference"] = target
    answer["frame"] = {"index": view.frame.index, "width": int(image.shape[1]), "height": int(image.shape[0])}
    return answer


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def query_value(request, name, default=None):
    """The first value of ``name`` in the request's query string (``default`` without one);
    the HTTP handlers and the setup API read ``?source=``, ``?raw=``, ``?roi=`` with it."""
    values = [v for k, v in parse_qsl(urlsplit(request.path).query) if k == name]
    return values[0] if values else default


def source_asked(web, request):
    """The camera whose ROIs a setup request is about: ``?source=<id>``, the first camera by
    default, or None with the single source/roi form (404 for a camera there is not)."""
    ids = web.pipeline.source_ids()
    source_id = query_value(request, "source")
    if ids == [None]:
        if source_id is not None:
            raise Refused(404, "no source %r: the config has one camera (source and roi)" % source_id)
        return None
    if source_id is None:
        return ids[0]
    if source_id not in ids:
        raise Refused(404, "no source %r (sources: %s)" % (source_id, ", ".join(ids)))
    return source_id


def _camera_roi(config, source_id):
    """Camera ``source_id``'s ROI settings in a validated config (with several cameras), or
    None."""
    for camera_id, _, roi in config_module.inputs(config):
        if source_id is not None and camera_id == source_id:
            return roi
    return None


def _source_roi(config_dict, source_id):
    """The ``roi`` of camera ``source_id`` in a config as a dict, or None when it has none."""
    for item in config_dict.get("sources") or []:
        if isinstance(item, dict) and item.get("id") == source_id:
            return item.get("roi")
    return None


# -- GET/POST /api/preview ----------------------------------------------------------------------
def _query_overrides(pairs):
    """``preprocess.threshold=fixed``, ``roi.boxes=[...]`` query pairs -> nested dict (values
    read as JSON when they parse, else as text)."""
    out = {}
    for dotted, text in pairs:
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        section = out
        keys = dotted.split(".")
        for key in keys[:-1]:
            section = section.setdefault(key, {})
            if not isinstance(section, dict):
                raise Refused(400, "%s: conflicting query keys" % dotted)
        section[keys[-1]] = value
    return out


def _merge(base, overrides):
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _image_data_url(image, side=CROP_PREVIEW_SIDE):
    if image is None or image.size == 0:
        return None
    scale = min(1.0, float(side) / max(image.shape[:2]))
    if scale < 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def preview_settings(web, overrides, source_id=None):
    """The running ROI/preprocess/postprocess settings with ``overrides`` applied, validated;
    the ROI settings are camera ``source_id``'s when there are several."""
    unknown = sorted(set(overrides) - set(PREVIEW_SECTIONS))
    if unknown:
        raise Refused(
            400, "only roi, preprocess and postprocess settings can be previewed, not %s" % ", ".join(unknown)
        )
    running = web.pipeline.config
    data = {section: getattr(running, section).as_dict() for section in PREVIEW_SECTIONS}
    camera_roi = _camera_roi(running, source_id)
    if camera_roi is not None:
        data["roi"] = camera_roi.as_dict()
    _merge(data, overrides)
    data["source"] = {"type": "images", "path": "."}
    try:
        return config_module.from_dict(data)
    except config_module.ConfigError as exc:
        raise Refused(400, "%d error(s) in the settings" % len(exc.errors), errors=exc.errors) from exc


def preview(web, overrides, with_frame=False, source_id=None):
    """Read camera ``source_id``'s newest frame (default the first camera's) with the given
    settings (nothing saved or applied); ``with_frame`` adds that frame as a JPEG data URL, so
    a page shows the very picture the crops came from."""
    from daemon.reader import Reader

    settings = preview_settings(web, overrides, source_id)
    view = web.pipeline.latest_view(source_id)
    if view is None:
        raise Refused(503, "no frame yet", {"Retry-After": "1"})
    if not web.uploads.acquire(False):
        raise Refused(503, "busy reading uploads; try again shortly", {"Retry-After": "1"})
    try:
        reader = web.pipeline.preview_reader(settings)
        image = view.frame.image
        prepared = reader.prepare(image)
        readings = reader.readings(prepared, reader.infer(prepared.prepared))
    finally:
        web.uploads.release()
    rois = []
    for region, item, reading in zip(prepared.rois, prepared.prepared, readings):
        tensor = np.clip(np.rint(item.tensor[:, :, 0] * 255.0), 0, 255).astype(np.uint8)
        rois.append(
            {
                "id": reading.roi_id,
                "box": [int(v) for v in reading.box],
                "digit": reading.digit,
                "confidence": round(float(reading.confidence), 4),
                "transition": bool(reading.transition),
                "empty": bool(item.empty),
                "empty_reason": item.reason or None,
                "tensor": tensor.tolist(),
                "crop": _image_data_url(region.crop),
            }
        )
    outline = prepared.outline
    frame = {"index": view.frame.index, "width": int(image.shape[1]), "height": int(image.shape[0])}
    if with_frame:  # the picture the crops were cut from: registered to the reference with roi.align
        shown = image if prepared.roi_image is None else prepared.roi_image
        frame["jpeg"] = _image_data_url(shown, side=max(shown.shape[:2]))
    return {
        "frame": frame,
        "alignment": prepared.alignment,
        "number": Reader.frame_payload(readings)["number"],
        "outline": None
        if outline is None
        else [[round(float(x), 1), round(float(y), 1)] for x, y in outline],
        "rois": rois,
    }


def get_preview(web, request):
    """``GET /api/preview?preprocess.fixed_threshold=90&...``: the newest frame read with those
    settings (``frame=1``: with the frame's JPEG)."""
    query = [
        (k, v)
        for k, v in parse_qsl(urlsplit(request.path).query, keep_blank_values=True)
        if k not in ("frame", "source")
    ]
    return preview(web, _query_overrides(query), _wants_frame(request), source_asked(web, request))


def post_preview(web, request):
    """``POST /api/preview`` with ``{"roi": {...}, "preprocess": {...}}``: as GET, settings in JSON."""
    check_origin(request)
    source_id = source_asked(web, request)
    return preview(web, read_json_body(web, request), _wants_frame(request), source_id)


def _wants_frame(request):
    """``?frame=1``: include the frame itself in the answer."""
    return ("frame", "1") in parse_qsl(urlsplit(request.path).query)
