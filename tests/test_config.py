"""config.yaml schema: defaults, errors with paths, secrets, check-config exit codes."""

import cv2
import numpy as np
import pytest

from daemon import config
from tests.helpers import ROOT, run_cli


def test_shipped_config_is_valid_and_typed():
    loaded = config.load(ROOT / "config.yaml")
    assert loaded.source.type == "file"
    assert loaded.batching.max_batch == 32
    assert isinstance(loaded.postprocess.min_confidence, float)
    assert loaded.mqtt.prefix == "digitd"


def test_missing_keys_take_their_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("source: {type: v4l2}\n")
    loaded = config.load(path)
    assert loaded.roi.size == 200 and loaded.mqtt.qos == 1 and loaded.backend.type == "auto"


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(config.ConfigError) as error:
        config.from_dict({"source": {"type": "v4l2", "devcie": "/dev/video1"}})
    assert error.value.errors == ["source.devcie: unknown key; did you mean 'device'?"]


def test_every_error_is_reported_with_its_path(monkeypatch):
    monkeypatch.delenv("DIGITD_TEST_UNSET", raising=False)
    with pytest.raises(config.ConfigError) as error:
        config.from_dict(
            {
                "source": {"type": "webcam"},
                "roi": {"size": "big"},
                "batching": {"max_batch": 0},
                "mqtt": {"password": "${DIGITD_TEST_UNSET}", "port": 70000},
            }
        )
    errors = error.value.errors
    assert any(e.startswith("source.type: 'webcam' is not one of") for e in errors)
    assert "roi.size: expected an integer, got 'big'" in errors
    assert "batching.max_batch: 0 is below the minimum 1" in errors
    assert "mqtt.password: environment variable DIGITD_TEST_UNSET is not set" in errors
    assert "mqtt.port: 70000 is above the maximum 65535" in errors


def test_secret_comes_from_environment_and_is_masked(monkeypatch):
    monkeypatch.setenv("DIGITD_MQTT_PASSWORD", "s3cret-value")
    loaded = config.from_dict({"source": {"type": "v4l2"}, "mqtt": {"password": "${DIGITD_MQTT_PASSWORD}"}})
    assert loaded.mqtt.password == "s3cret-value"
    assert "s3cret-value" not in repr(loaded)
    assert "s3cret-value" not in repr(loaded.mqtt)


def test_boxes_are_validated_item_by_item():
    with pytest.raises(config.ConfigError) as error:
        config.from_dict(
            {
                "source": {"type": "v4l2"},
                "roi": {
                    "mode": "boxes",
                    "boxes": [
                        {"id": "a", "x": 0, "y": 0, "w": 0, "h": 5},
                        {"id": "a", "w": 3, "h": 3, "z": 1},
                    ],
                },
            }
        )
    assert "roi.boxes[0].w: 0 is below the minimum 1" in error.value.errors
    assert "roi.boxes[1].z: unknown key" in error.value.errors


def test_live_changes_are_separated_from_restart_changes():
    old = config.from_dict({"source": {"type": "v4l2"}})
    new = config.from_dict({"source": {"type": "v4l2", "fps": 15}, "postprocess": {"min_confidence": 0.9}})
    live, restart = config.live_changes(old, new)
    assert live == ["postprocess.min_confidence"]
    assert restart == ["source.fps"]


def test_a_box_style_must_be_one_of_the_known_ones_and_check_config_names_the_key(tmp_path):
    path = tmp_path / "meter.yaml"
    path.write_text(
        "source: {type: v4l2}\nroi:\n  mode: boxes\n  boxes:\n"
        "    - {id: d0, x: 0, y: 0, w: 20, h: 30, style: drum}\n"
        "    - {id: d1, x: 20, y: 0, w: 20, h: 30, style: lcd}\n"
    )
    result = run_cli("check-config", "-c", path)
    assert result.returncode == 78
    assert (
        "roi.boxes[1].style: 'lcd' is not one of auto, drum, segments, handwritten, printed" in result.stderr
    )
    path.write_text(path.read_text().replace("style: lcd", "style: segments"))
    assert [b.style for b in config.load(path).roi.boxes] == ["drum", "segments"]


def test_with_several_cameras_a_cameras_roi_changes_live_and_its_capture_settings_need_a_restart():
    def cameras(water_boxes, gas_fps=30, third=False):
        items = [
            {"id": "water", "type": "v4l2", "roi": {"mode": "boxes", "boxes": water_boxes}},
            {"id": "gas", "type": "v4l2", "fps": gas_fps},
        ]
        if third:
            items.append({"id": "oil", "type": "v4l2"})
        return config.from_dict({"sources": items})

    box = {"id": "d0", "x": 0, "y": 0, "w": 20, "h": 30}
    old = cameras([box])
    live, restart = config.live_changes(old, cameras([dict(box, x=5)], gas_fps=15))
    assert live == ["sources[0].roi.boxes"] and restart == ["sources[1].fps"]
    assert config.live_changes(old, cameras([box], third=True)) == ([], ["sources"])
    assert config.section_at(old, "sources[1]").fps == 30 and config.section_at(old, "") is old


def test_a_reference_frame_that_is_not_an_image_is_a_config_error_not_a_crash(tmp_path):
    """The capture loop registers every frame to the reference: a file that does not decode
    must be refused where the config is checked (check-config, SIGHUP, the setup page's Save)."""
    reference = tmp_path / "reference.png"
    reference.write_bytes(b"this is not a PNG")
    with pytest.raises(config.ConfigError) as error:
        config.from_dict({"source": {"type": "v4l2"}, "roi": {"align": {"reference": str(reference)}}})
    assert error.value.errors == ["roi.align.reference: %s is not an image OpenCV can read" % reference]
    cv2.imwrite(str(reference), np.zeros((40, 60), np.uint8))
    loaded = config.from_dict({"source": {"type": "v4l2"}, "roi": {"align": {"reference": str(reference)}}})
    assert loaded.roi.align.reference == str(reference)


def test_check_config_cli_exits_78_naming_all_three_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "device_id: x\nsource:\n  type: file\n  path: a.mp4\n  fps: fast\nroi:\n  sise: 100\n"
        "mqtt:\n  password: ${DIGITD_SURELY_UNSET_VAR}\n"
    )
    result = run_cli("check-config", "-c", path)
    assert result.returncode == 78
    assert "source.fps: expected a number, got 'fast'" in result.stderr
    assert "roi.sise: unknown key; did you mean 'size'?" in result.stderr
    assert "mqtt.password: environment variable DIGITD_SURELY_UNSET_VAR is not set" in result.stderr


def test_check_config_cli_accepts_the_shipped_file():
    result = run_cli("check-config", "-c", ROOT / "config.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_unreadable_or_invalid_yaml_is_exit_78(tmp_path):
    missing = run_cli("check-config", "-c", tmp_path / "nope.yaml")
    assert missing.returncode == 78 and "cannot read" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("source: [unclosed\n")
    result = run_cli("check-config", "-c", broken)
    assert result.returncode == 78 and "not valid YAML" in result.stderr


@pytest.mark.parametrize(
    "written, parsed",
    [
        ("0123", "83"),
        ("0x1F", "31"),
        ("12:30", "750"),
        ("1_000", "1000"),
        ("2024-01-02", "2024-01-02"),
        ("[hunter, two]", "hunter"),
        ("0.50", "0.5"),
    ],
)
def test_unquoted_yaml_numbers_are_not_turned_into_secrets_or_ids(tmp_path, written, parsed):
    path = tmp_path / "c.yaml"
    path.write_text(
        "device_id: %s\nsource: {type: v4l2}\nmqtt:\n  username: %s\n  password: %s\n"
        % (written, written, written)
    )
    result = run_cli("check-config", "-c", path)
    assert result.returncode == 78, result.stdout
    for key in ("device_id", "mqtt.username", "mqtt.password"):
        line = [e for e in result.stderr.splitlines() if e.strip().startswith(key + ":")]
        assert line and "quote" in line[0], result.stderr
    password_line = [e for e in result.stderr.splitlines() if "mqtt.password:" in e][0]
    assert parsed not in password_line and written not in password_line, "the secret was echoed"


def test_quoted_values_stay_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "device_id: '0123'\nsource: {type: v4l2}\nmqtt:\n  password: \"0x1F\"\n  username: '12:30'\n"
    )
    loaded = config.load(path)
    assert (loaded.device_id, loaded.mqtt.password, loaded.mqtt.username) == ("0123", "0x1F", "12:30")


def test_cross_checks_are_listed_together_with_field_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "source: {type: webcam}\nroi: {mode: boxes}\nbatching: {max_batch: 0}\n"
        "mqtt: {reconnect_min_s: 5, reconnect_max_s: 1, port: 0}\n"
    )
    result = run_cli("check-config", "-c", path)
    assert result.returncode == 78
    errors = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert "roi.boxes: mode boxes needs at least one box" in errors
    assert "mqtt.reconnect_max_s: smaller than reconnect_min_s" in errors
    assert "batching.max_batch: 0 is below the minimum 1" in errors
    assert any(e.startswith("source.type: 'webcam' is not one of") for e in errors)
    assert not any(e.startswith("source.path") for e in errors), (
        "no follow-up error for a type that was wrong"
    )
    assert len(errors) == 5, errors


def test_beyond_loopback_the_http_token_is_required_and_read_from_env_or_file(tmp_path, monkeypatch):
    source = {"type": "v4l2"}
    assert config.from_dict({"source": source, "http": {"bind": "::1"}}).http.token == ""
    with pytest.raises(config.ConfigError) as error:
        config.from_dict({"source": source, "http": {"bind": "0.0.0.0"}})
    assert len(error.value.errors) == 1 and error.value.errors[0].startswith(
        "http.token: bind '0.0.0.0' reaches beyond this machine, so the setup API needs a token"
    )
    assert config.from_dict({"source": source, "http": {"bind": "0.0.0.0", "enabled": False}})
    with pytest.raises(config.ConfigError) as error:
        config.from_dict({"source": source, "http": {"bind": "0.0.0.0", "token": "short"}})
    assert "shorter than 16 characters" in error.value.errors[0] and "short'" not in error.value.errors[0]
    monkeypatch.setenv("DIGITD_TEST_HTTP_TOKEN", "from-the-environment-123")
    loaded = config.from_dict(
        {"source": source, "http": {"bind": "0.0.0.0", "token": "${DIGITD_TEST_HTTP_TOKEN}"}}
    )
    assert loaded.http.token == "from-the-environment-123" and "from-the-environment" not in repr(loaded)
    token_file = tmp_path / "http_token"
    token_file.write_text("from-a-credential-file-456\n")
    loaded = config.from_dict(
        {"source": source, "http": {"bind": "192.168.1.20", "token_file": str(token_file)}}
    )
    assert loaded.http.token == "from-a-credential-file-456"
    assert config.masked_dict(loaded)["http"]["token"] == "***"


def test_the_daemon_refuses_to_start_beyond_loopback_without_a_token(tmp_path):
    path = tmp_path / "open.yaml"
    path.write_text("source: {type: v4l2}\nhttp: {bind: 0.0.0.0}\n")
    result = run_cli("run", "-c", path)
    assert result.returncode == 78
    assert "http.token: bind '0.0.0.0' reaches beyond this machine" in result.stderr
