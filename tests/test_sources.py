"""Frame sources with real video files and image folders."""

import re
import struct
import time

import cv2
import numpy as np
import pytest

from daemon import config
from daemon.sources import SourceError, create_source
from tests.helpers import run_daemon, write_config


def source_settings(**values):
    values.setdefault("reopen_initial_delay_s", 0.05)
    values.setdefault("reopen_max_delay_s", 0.2)
    return config.from_dict({"source": values}).source


def write_numbered_video(path, count, fps=30.0, size=(160, 120)):
    """Each frame's brightness encodes its number (frame i has level 10 + 2*i)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(count):
        writer.write(np.full((size[1], size[0], 3), 10 + 2 * i, np.uint8))
    writer.release()
    return path


def drain(source, limit=1000):
    frames = []
    while len(frames) < limit:
        frame = source.read(timeout=1.0)
        if frame is None:
            if source.finished:
                break
            continue
        frames.append(frame)
    return frames


def test_file_source_delivers_every_frame_in_order(tmp_path):
    video = write_numbered_video(tmp_path / "n.avi", 40)
    source = create_source(source_settings(type="file", path=str(video))).start()
    frames = drain(source)
    source.close()
    assert [f.index for f in frames] == list(range(1, 41))
    levels = [int(f.image.mean()) for f in frames]
    assert all(abs(level - (10 + 2 * i)) <= 2 for i, level in enumerate(levels))
    assert source.stats.dropped == 0


def test_loop_restarts_the_file(tmp_path):
    video = write_numbered_video(tmp_path / "n.avi", 5)
    source = create_source(source_settings(type="file", path=str(video), loop=True)).start()
    frames = drain(source, limit=12)
    source.close()
    assert [f.index for f in frames] == list(range(1, 13))
    assert int(frames[5].image.mean()) == int(frames[0].image.mean())


def test_realtime_file_paces_and_counts_dropped_frames(tmp_path):
    video = write_numbered_video(tmp_path / "n.avi", 30, fps=100.0)
    source = create_source(source_settings(type="file", path=str(video), realtime=True)).start()
    started = time.monotonic()
    taken = []
    while not source.finished and time.monotonic() - started < 5:
        frame = source.read(timeout=0.2)
        if frame is not None:
            taken.append(frame.index)
            time.sleep(0.05)  # a slow consumer: the grabber must drop, not queue
    source.close()
    elapsed = time.monotonic() - started
    assert elapsed >= 0.25  # 30 frames at 100 fps
    assert taken == sorted(taken) and len(taken) < 30
    assert source.stats.dropped > 0
    assert source.stats.dropped + len(taken) <= 30


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        create_source(source_settings(type="file", path=str(tmp_path / "nope.mp4"))).start()


def test_corrupt_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with pytest.raises(SourceError) as error:
        create_source(source_settings(type="file", path=str(bad))).start()
    assert "bad.mp4" in str(error.value)


def test_wait_for_source_retries_until_the_file_appears(tmp_path):
    target = tmp_path / "later.avi"
    source = create_source(source_settings(type="file", path=str(target), wait_for_source=True))
    import threading

    threading.Timer(0.3, write_numbered_video, args=(target, 3)).start()
    source.start()
    frames = drain(source)
    source.close()
    assert [f.index for f in frames] == [1, 2, 3]
    assert source.stats.failures >= 1


def test_image_folder_skips_unreadable_files(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / ("img%d.png" % i)), np.full((20, 20), 50 * i, np.uint8))
    (tmp_path / "img1b.png").write_bytes(b"not a png")
    source = create_source(source_settings(type="images", path=str(tmp_path))).start()
    frames = drain(source)
    source.close()
    assert [int(f.image.mean()) for f in frames] == [0, 50, 100]
    assert source.stats.failures == 1


def test_gstreamer_pipelines_are_built_for_csi():
    from daemon.sources.capture import csi_pipeline, pipeline_elements

    pipeline = csi_pipeline(1, 1280, 720, 30, 2)
    assert pipeline.startswith("nvarguscamerasrc sensor-id=1 !")
    assert "width=(int)1280, height=(int)720, framerate=(fraction)30/1" in pipeline
    assert (
        "nvvidconv flip-method=2 ! video/x-raw, format=(string)GRAY8 ! appsink" in pipeline
    )  # no CPU colour
    assert pipeline.endswith("appsink drop=true max-buffers=1 sync=false")
    assert pipeline_elements(pipeline) == ["nvarguscamerasrc", "nvvidconv", "appsink"]
    assert "framerate=(fraction)1/4" in csi_pipeline(0, 640, 480, 0.25, 0)  # was 0/1
    assert "framerate=(fraction)2997/100" in csi_pipeline(0, 640, 480, 29.97, 0)


OPENCV4_INFO = """
  Video I/O:
    DC1394:                      NO
    FFMPEG:                      YES
    GStreamer:                   YES (1.14.5)
    v4l/v4l2:                    YES (linux/videodev2.h)
"""
OPENCV3_INFO = """
  Video I/O:
    FFMPEG:                      YES
      avcodec:                   YES (ver 57.107.100)
    GStreamer:
      base:                      YES (ver 1.14.5)
      video:                     YES (ver 1.14.5)
      app:                       YES (ver 1.14.5)
    libv4l/libv4l2:              NO
"""


def test_has_gstreamer_reads_opencv_3_and_4_build_information():
    from daemon.sources.capture import has_gstreamer

    assert has_gstreamer(OPENCV4_INFO) and has_gstreamer(OPENCV3_INFO)
    assert not has_gstreamer(OPENCV4_INFO.replace("YES (1.14.5)", "NO"))
    assert not has_gstreamer(OPENCV3_INFO.replace("base:                      YES", "base: NO"))
    assert not has_gstreamer("  Video I/O:\n    FFMPEG: YES\n")


def test_a_capture_that_never_opens_fails_within_the_timeout(monkeypatch):
    """cv2.VideoCapture blocking forever (busy camera, pipeline that never starts) must not hang
    the daemon: the open gives up, and the capture is released should it open later."""
    import threading

    from daemon.sources import capture as capture_module

    unblock = threading.Event()
    released = threading.Event()

    class StuckCapture(object):
        def __init__(self, *args):
            unblock.wait(10)

        def release(self):
            released.set()

    monkeypatch.setattr(capture_module.cv2, "VideoCapture", StuckCapture)
    started = time.monotonic()
    with pytest.raises(SourceError, match="opening csi sensor 0 did not finish within 0 s"):
        capture_module.open_capture("pipeline", 0, 0.3, "csi sensor 0")
    assert time.monotonic() - started < 2.0
    unblock.set()
    assert released.wait(5), "a capture that opened after the timeout must be released"


def test_csi_without_gstreamer_opencv_says_why():
    from daemon.sources.capture import has_gstreamer

    if has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(SourceError, match="no GStreamer support"):
        create_source(source_settings(type="csi")).start()


def _atoms(data, start=0, end=None):
    end = len(data) if end is None else end
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        yield kind, start, size
        start += size


def faststart(data):
    """The same MP4 with its index (moov) before the media data, as cameras and web encoders write it;
    the chunk offsets in stco are moved by the size of the index."""
    moov = bytearray(next(data[i : i + n] for kind, i, n in _atoms(data) if kind == b"moov"))

    def shift(start, end):
        for kind, i, size in _atoms(moov, start, end):
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                shift(i + 8, i + size)
            elif kind == b"stco":
                for n in range(struct.unpack(">I", moov[i + 12 : i + 16])[0]):
                    at = i + 16 + 4 * n
                    moov[at : at + 4] = struct.pack(
                        ">I", struct.unpack(">I", moov[at : at + 4])[0] + len(moov)
                    )

    shift(8, len(moov))
    ftyp = next(data[i : i + n] for kind, i, n in _atoms(data) if kind == b"ftyp")
    rest = b"".join(data[i : i + n] for kind, i, n in _atoms(data) if kind not in (b"ftyp", b"moov"))
    return ftyp + bytes(moov) + rest


def test_a_truncated_video_ends_where_its_data_ends(tmp_path):
    whole = tmp_path / "whole.mp4"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (160, 120))
    for i in range(240):
        image = np.full((120, 160, 3), 210, np.uint8)
        cv2.putText(image, str(i % 10), (50, 95), cv2.FONT_HERSHEY_SIMPLEX, 3, (20, 20, 20), 8)
        writer.write(image)
    writer.release()
    data = faststart(whole.read_bytes())
    video = tmp_path / "cut.mp4"
    video.write_bytes(data[: len(data) // 2])  # the index still says 240 frames
    config_path = write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(video), "loop": False},
        backend={"type": "onnxruntime"},
        mqtt={"enabled": False},
    )
    process = run_daemon(config_path)
    try:
        code = process.wait(90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    log = process.log_path.read_text()
    assert code == 0, log
    frames_in = int(re.findall(r"stopped after (\d+) frames in", log)[-1])
    assert 60 < frames_in < 240, log
    assert "WARNING" in log and "ended early" in log
    assert "reopening" not in log


@pytest.mark.slow
def test_sigterm_stops_the_daemon_while_it_waits_for_a_missing_file(tmp_path):
    import signal

    config_path = write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(tmp_path / "not-yet.mp4"), "wait_for_source": True},
        backend={"type": "onnxruntime"},
        mqtt={"enabled": False},
    )
    process = run_daemon(config_path)
    try:
        deadline = time.monotonic() + 60
        while "waiting for it" not in process.log_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, process.log_path.read_text()
            time.sleep(0.2)
        time.sleep(2.0)  # a few reopen attempts with growing delays
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, process.log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.slow
def test_a_reopened_source_that_is_slow_to_deliver_is_not_dropped_as_stalled(tmp_path, caplog):
    """Like an RTSP camera: opening takes longer than stall_timeout_s. After one read failure the
    source is reopened; the fresh handle must get its own stall_timeout_s to deliver."""
    from daemon.sources.base import FrameSource

    class SlowToOpenCamera(FrameSource):
        live = True
        reads = 0

        def describe(self):
            return "slow camera"

        def _open(self):
            time.sleep(1.5)
            self.warming_up = True

        def _read_image(self):
            type(self).reads += 1
            if type(self).reads == 10:
                raise SourceError("camera/stream returned no frame")
            time.sleep(0.6 if self.warming_up else 0.03)  # the first frame after opening takes a while
            self.warming_up = False
            return np.zeros((8, 8, 3), np.uint8)

        def _release(self):
            pass

    settings = source_settings(type="v4l2", stall_timeout_s=1.0, reopen_initial_delay_s=0.1)
    source = SlowToOpenCamera(settings).start()
    try:
        frames = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(frames) < 60:
            frame = source.read(timeout=0.3)
            if frame is not None:
                frames.append(frame)
        assert len(frames) >= 60, "the reopened source was dropped: %s" % caplog.text
        assert source.stats.reconnects == 1
        assert "no frame for" not in caplog.text
    finally:
        source.close()
