"""A 60 s soak in every test run (make soak runs the long one): memory flat, nothing dropped or lost."""

import json

import pytest

from tools import soak

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]


def test_one_minute_at_30_fps_keeps_memory_flat_and_loses_nothing(tmp_path, capsys):
    report = soak.run(1.0, "onnxruntime", tmp_path / "soak")
    summary = {k: v for k, v in report.items() if k != "rss_samples"}
    with capsys.disabled():
        print("\nsoak 60 s: " + json.dumps(summary))
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"
    assert report["fps"] > 25
    # make soak holds the 10-minute run to zero drops; on a shared CI machine one minute may
    # see a frame or two dropped by the grabber under a burst of load, never a lost message.
    assert report["dropped_frames"] <= 2
    assert report["lost_predictions"] == 0
    assert report["rss_growth_after_warmup_mb"] < soak.RSS_GROWTH_LIMIT_MB
    assert report["latency_p99_ms"] < 50
