"""Saving config.yaml from the setup API: only changed keys rewritten, comments, quoting and
permissions kept, the previous file as .bak, nothing written when the result would not load."""

import os

import pytest

from daemon import config, config_file


def test_changed_values_are_written_and_everything_else_is_kept_byte_for_byte(tmp_path):
    path = tmp_path / "config.yaml"
    original = (
        "# camera 2\nsource: {type: v4l2}   # USB\nroi:\n  mode: boxes\n  boxes:\n"
        "  - {id: a, x: 1, y: 2, w: 30, h: 40}   # the first\npreprocess:\n  blur_kernel: 5\n"
    )
    path.write_text(original)
    os.chmod(str(path), 0o600)
    boxes = [{"id": "a", "x": 1, "y": 2, "w": 30, "h": 40}, {"id": "b", "x": 50, "y": 2, "w": 30, "h": 40}]
    changes = [(("roi", "boxes"), boxes), (("device_id",), "yes"), (("preprocess", "blur_kernel"), 5)]
    expected = config.from_dict(
        {"device_id": "yes", "source": {"type": "v4l2"}, "roi": {"mode": "boxes", "boxes": boxes}}
    )
    backup = config_file.save(str(path), changes, expected)
    assert path.read_text() == (
        "# camera 2\nsource: {type: v4l2}   # USB\nroi:\n  mode: boxes\n  boxes:\n"
        "  - {id: a, x: 1, y: 2, w: 30, h: 40}   # the first\n  - {id: b, x: 50, y: 2, w: 30, h: 40}\n"
        "preprocess:\n  blur_kernel: 5\ndevice_id: 'yes'\n"
    )
    assert config.load(path).device_id == "yes", "a string YAML 1.1 reads as true is quoted"
    assert open(backup).read() == original
    assert os.stat(str(path)).st_mode & 0o777 == 0o600, "a file holding secrets stays private"
    assert [name for name in os.listdir(str(tmp_path)) if name.endswith(".tmp")] == []


def test_nothing_is_written_when_the_result_would_not_read_back_as_meant(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("source: {type: v4l2}\n")
    meant = config.from_dict({"source": {"type": "v4l2"}, "preprocess": {"blur_kernel": 7}})
    with pytest.raises(config_file.ConfigFileError):
        config_file.save(str(path), [(("preprocess", "blur_kernel"), 3)], meant)
    assert path.read_text() == "source: {type: v4l2}\n" and not (tmp_path / "config.yaml.bak").exists()
