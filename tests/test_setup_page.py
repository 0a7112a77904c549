"""The setup page in real headless Chromium against the real daemon (subprocess), MQTT on a real
Mosquitto: draw a box with the mouse, tune the threshold, save; the next prediction and the
file on disk follow. And the README's walkthrough on ``make demo``'s sample video."""

import json
import os
import signal
import time
import urllib.error
import urllib.request

import cv2
import pytest
import yaml

from tests.helpers import ROOT, free_port, run_daemon, write_config
from tests.synthetic import two_digit_frame

pytestmark = pytest.mark.slow
TOKEN = "browser-test-token-0123456789"
DOCS = os.environ.get("DIGITD_UPDATE_DOCS")


def still_video(path, image, frames=10, fps=5):
    """A video of one picture (Motion JPEG: every frame decodes to the same pixels)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, image.shape[1::-1])
    for _ in range(frames):
        writer.write(image)
    writer.release()
    return path


def wait_http(process, port, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError("daemon exited %s: %s" % (process.returncode, process.log_path.read_text()))
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("no healthy /healthz: %s" % process.log_path.read_text())


def still_camera_config(tmp_path, video, port, **sections):
    """A config reading ``video`` in a loop at its own pace, the HTTP server on ``port`` with
    the token from the environment, and ``sections`` (roi, mqtt, ...)."""
    return write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(video), "loop": True, "realtime": True},
        backend={"type": "onnxruntime"},
        http={"port": port, "token": "${DIGITD_TEST_HTTP_TOKEN}"},
        **sections,
    )


def open_setup_page(browser, process, port, ready_id):
    """Wait for the daemon's HTTP server, open /setup, wait for the element ``ready_id``."""
    from selenium.webdriver.common.by import By

    wait_http(process, port)
    browser.set_window_size(1300, 1000)
    browser.get("http://127.0.0.1:%d/setup" % port)
    until(browser, lambda: browser.find_elements(By.ID, ready_id))


def stop(process):
    process.send_signal(signal.SIGTERM)
    return process.wait(20)


def until(browser, condition, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda driver: condition())


def drag_on_frame(browser, start, end, steps=4):
    """Press the mouse at frame pixel ``start``, move to ``end`` in steps, release."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    stage = browser.find_element(By.ID, "stage")
    size = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.width, r.height, arguments[0].width, arguments[0].height];",
        stage,
    )
    scale_x, scale_y = size[0] / size[2], size[1] / size[3]

    def offset(point):  # Selenium measures from the element's centre
        return int(round(point[0] * scale_x - size[0] / 2)), int(round(point[1] * scale_y - size[1] / 2))

    actions = ActionChains(browser).move_to_element_with_offset(stage, *offset(start)).click_and_hold()
    x0, y0 = offset(start)
    x1, y1 = offset(end)
    done_x, done_y = 0, 0
    for step in range(1, steps + 1):
        dx, dy = round((x1 - x0) * step / steps) - done_x, round((y1 - y0) * step / steps) - done_y
        actions = actions.move_by_offset(dx, dy)
        done_x, done_y = done_x + dx, done_y + dy
    actions.release().perform()


def tensor_of(browser, roi_id):
    return browser.execute_script(
        "const c = document.querySelector('#tensors .tile[data-roi=\"' + arguments[0] + '\"] canvas');"
        "return c ? c.toDataURL() : null;",
        roi_id,
    )


def save(browser):
    from selenium.webdriver.common.by import By

    status = browser.find_element(By.ID, "status")
    browser.execute_script("arguments[0].textContent = ''", status)
    browser.find_element(By.ID, "save").click()
    until(browser, lambda: status.text.startswith(("Saved", "Not saved", "Nothing")))
    return status.text


def put(port, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(
        "http://127.0.0.1:%d/api/config" % port, json.dumps(body).encode(), headers, method="PUT"
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_draw_a_box_tune_the_threshold_save_and_the_next_prediction_follows(
    tmp_path, mnist_test, broker, subscriber_factory, chromium
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    image, labels, boxes = two_digit_frame(mnist_test, 3, 7)
    video = still_video(tmp_path / "desk.avi", image)
    port = free_port()
    config_path = still_camera_config(tmp_path, video, port, mqtt={"host": "127.0.0.1", "port": broker.port})
    config_path.write_text("# the desk camera: set up in the browser\n" + config_path.read_text())
    subscriber = subscriber_factory(broker.port, "digitd/test-01/prediction")
    process = run_daemon(config_path, env=dict(os.environ, DIGITD_TEST_HTTP_TOKEN=TOKEN))
    try:
        open_setup_page(chromium, process, port, "preprocess-threshold")
        assert chromium.find_element(By.ID, "tokenbar").is_displayed(), "the page asks for the token"
        chromium.find_element(By.ID, "token").send_keys(TOKEN)

        # boxes mode, then draw a box around the right-hand digit with the mouse and name it
        Select(chromium.find_element(By.ID, "roi-mode")).select_by_value("boxes")
        x, y, w, h = boxes[1]
        drag_on_frame(chromium, (x + 5, y + 5), (x + w - 5, y + h - 5))
        id_input = until(chromium, lambda: chromium.find_elements(By.ID, "box-0-id"))[0]
        id_input.send_keys(Keys.CONTROL, "a")
        id_input.send_keys("right")
        drawn = [int(chromium.find_element(By.ID, "box-0-" + k).get_attribute("value")) for k in "xywh"]
        assert all(abs(a - b) <= 3 for a, b in zip(drawn, (x + 5, y + 5, w - 10, h - 10))), drawn
        until(chromium, lambda: tensor_of(chromium, "right"))
        reading = chromium.find_element(By.CSS_SELECTOR, '.tile[data-roi="right"] .reading')
        until(chromium, lambda: reading.text == str(labels[1]))

        # a fixed threshold, then the level slider moved with the mouse: the 28x28 image changes
        Select(chromium.find_element(By.ID, "preprocess-threshold")).select_by_value("fixed")
        assert chromium.execute_script("return settings.preprocess.threshold") == "fixed"
        time.sleep(1.5)  # the preview of the fixed threshold, and one live refresh after it
        steady = tensor_of(chromium, "right")
        time.sleep(1.2)
        assert tensor_of(chromium, "right") == steady, "the same picture gives the same tensor"
        slider = chromium.find_element(By.ID, "preprocess-fixed_threshold")
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(chromium).drag_and_drop_by_offset(slider, -int(slider.size["width"] * 0.3), 0).perform()
        level = int(slider.get_attribute("value"))
        assert level < 100, level
        until(chromium, lambda: tensor_of(chromium, "right") != steady)
        if DOCS:
            chromium.save_screenshot(str(ROOT / "docs" / "setup-page.png"))

        # save: applied at once, the next MQTT prediction has the new ROI, the file holds it
        text = save(chromium)
        assert text.startswith("Saved") and "roi.boxes" in text and "preprocess.fixed_threshold" in text, text
        saved_at = time.monotonic()
        box = drawn
        deadline = time.monotonic() + 15
        newest = None
        while time.monotonic() < deadline:
            predictions = [p for p in subscriber.payloads("prediction") if p["rois"][0]["id"] == "right"]
            if predictions:
                newest = predictions[-1]
                break
            time.sleep(0.1)
        assert newest is not None, "no prediction with the new ROI %.1f s after saving" % (
            time.monotonic() - saved_at
        )
        assert newest["rois"] == [
            {"id": "right", "box": box, "digit": labels[1], "confidence": newest["rois"][0]["confidence"]}
        ]
        on_disk = config_path.read_text()
        assert on_disk.startswith("# the desk camera: set up in the browser\n")
        data = yaml.safe_load(on_disk)
        assert data["roi"]["mode"] == "boxes" and data["roi"]["boxes"] == [
            dict(zip(("id", "x", "y", "w", "h"), ["right"] + box))
        ]
        assert data["preprocess"]["threshold"] == "fixed" and data["preprocess"]["fixed_threshold"] == level
        assert (tmp_path / "config.yaml.bak").exists()

        # a bad value: 400, shown next to its field, the file as it was
        width = chromium.find_element(By.ID, "box-0-w")
        width.send_keys(Keys.CONTROL, "a")
        width.send_keys("0")
        assert save(chromium).startswith("Not saved")
        error = chromium.find_element(By.CSS_SELECTOR, '[data-error-for="roi.boxes[0].w"]')
        assert error.text == "0 is below the minimum 1"
        assert config_path.read_text() == on_disk
        assert (
            put(port, {"roi": {"boxes": [{"id": "right", "x": 0, "y": 0, "w": 0, "h": 5}]}}, TOKEN)[0] == 400
        )
        assert config_path.read_text() == on_disk
        if DOCS:
            chromium.save_screenshot(str(ROOT / "docs" / "setup-error.png"))

        # without the token: 401, the page says so, the file as it was
        width.send_keys(Keys.CONTROL, "a")
        width.send_keys(str(box[2]))
        chromium.find_element(By.ID, "token").clear()
        assert "token" in save(chromium)
        status, answer = put(port, {"preprocess": {"blur_kernel": 3}})
        assert status == 401 and "token" in answer["error"]
        assert config_path.read_text() == on_disk
    finally:
        assert stop(process) == 0


def test_readme_walkthrough_two_boxes_and_a_threshold_on_the_demo_video(tmp_path, chromium):
    """The README's clicks on ``make demo-setup``'s config (the sample video, looping)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from tools.demo_setup import working_config

    port = free_port()
    config_path = working_config(tmp_path, port, None)
    comments_before = [line for line in config_path.read_text().splitlines() if line.lstrip().startswith("#")]
    process = run_daemon(config_path)
    try:
        open_setup_page(chromium, process, port, "preprocess-threshold")
        if DOCS:
            time.sleep(1.5)
            chromium.save_screenshot(str(ROOT / "docs" / "setup-start.png"))
        Select(chromium.find_element(By.ID, "roi-mode")).select_by_value("boxes")
        drag_on_frame(chromium, (270, 190), (380, 300))  # around the digit in the middle
        drag_on_frame(chromium, (440, 190), (550, 300))  # blank paper to its right
        for index, name in enumerate(("digit", "blank")):
            field = chromium.find_element(By.ID, "box-%d-id" % index)
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(name)
        Select(chromium.find_element(By.ID, "preprocess-threshold")).select_by_value("fixed")
        slider = chromium.find_element(By.ID, "preprocess-fixed_threshold")
        slider.click()
        for _ in range(28):  # 128 -> 100 with the arrow keys
            slider.send_keys(Keys.ARROW_LEFT)
        until(chromium, lambda: tensor_of(chromium, "blank") and tensor_of(chromium, "digit"))
        time.sleep(1.5)
        if DOCS:
            chromium.save_screenshot(str(ROOT / "docs" / "setup-boxes.png"))
        text = save(chromium)
        assert text.startswith("Saved") and "Applied now" in text, text
        if DOCS:
            chromium.save_screenshot(str(ROOT / "docs" / "setup-saved.png"))
        data = yaml.safe_load(config_path.read_text())
        assert [b["id"] for b in data["roi"]["boxes"]] == ["digit", "blank"] and data["roi"][
            "mode"
        ] == "boxes"
        assert data["preprocess"]["threshold"] == "fixed" and data["preprocess"]["fixed_threshold"] == 100
        comments_after = [
            line for line in config_path.read_text().splitlines() if line.lstrip().startswith("#")
        ]
        assert comments_after == comments_before
    finally:
        assert stop(process) == 0


def test_use_this_frame_as_the_reference_pick_a_box_style_save_and_turn_alignment_off(tmp_path, chromium):
    """The meter's alignment reference taken from the page, a box's digit style picked in the
    box table; a later Save keeps the reference; alignment turned off again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from engine_build import meter_digits
    from tests.helpers import boxes_around

    fonts = meter_digits.drum_fonts(held_out=True)
    if not fonts:
        pytest.fail("fonts-freefont-ttf is needed (make test installs it)")
    glyphs = [meter_digits.fonts.render_glyph(fonts[0], digit) for digit in range(10)]
    frame, boxes = meter_digits.counter_frame(27051.0, glyphs, count=5)
    video = still_video(tmp_path / "meter.avi", frame)
    port = free_port()
    config_path = still_camera_config(
        tmp_path, video, port, roi={"mode": "boxes", "boxes": boxes_around(boxes)}, mqtt={"enabled": False}
    )
    reference = str(tmp_path / "reference-default.png")
    process = run_daemon(config_path, env=dict(os.environ, DIGITD_TEST_HTTP_TOKEN=TOKEN))
    try:
        open_setup_page(chromium, process, port, "box-4-style")
        state = chromium.find_element(By.ID, "align-state")
        status = chromium.find_element(By.ID, "status")
        assert state.text.startswith("off")
        assert not chromium.find_element(By.ID, "reference-off").is_enabled()
        chromium.find_element(By.ID, "token").send_keys(TOKEN)

        chromium.find_element(By.ID, "reference-capture").click()
        until(chromium, lambda: status.text.startswith(("Frame", "Not saved")))
        assert status.text.endswith("saved as the reference: %s. Alignment is on." % reference), status.text
        assert cv2.imread(reference) is not None
        assert yaml.safe_load(config_path.read_text())["roi"]["align"]["reference"] == reference
        until(chromium, lambda: "this frame: shifted" in state.text)  # the preview is registered to it
        assert state.text.startswith("on: each frame is registered to " + reference)
        if DOCS:
            chromium.save_screenshot(str(ROOT / "docs" / "setup-reference.png"))

        # the last box shows a seven-segment digit: its style, then Save; the reference stays
        Select(chromium.find_element(By.ID, "box-4-style")).select_by_value("segments")
        assert save(chromium).startswith("Saved")
        data = yaml.safe_load(config_path.read_text())
        assert [b.get("style", "auto") for b in data["roi"]["boxes"]] == ["auto"] * 4 + ["segments"]
        assert data["roi"]["align"]["reference"] == reference

        chromium.find_element(By.ID, "reference-off").click()
        until(chromium, lambda: status.text.startswith(("Alignment is off", "Not saved")))
        assert status.text == "Alignment is off (the reference file is kept).", status.text
        assert state.text.startswith("off")
        assert yaml.safe_load(config_path.read_text())["roi"]["align"]["reference"] == ""
    finally:
        assert stop(process) == 0


def test_with_two_cameras_the_page_sets_up_the_camera_picked_and_saves_into_its_entry(
    tmp_path, mnist_test, broker, subscriber_factory, chromium
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    desk, _, _ = two_digit_frame(mnist_test, 3, 7)
    shelf, shelf_labels, shelf_boxes = two_digit_frame(mnist_test, 1, 5)
    port = free_port()
    cameras = []
    for name, image in (("desk", desk), ("shelf", shelf)):
        video = still_video(tmp_path / (name + ".avi"), image)
        cameras.append(
            {
                "id": name,
                "type": "file",
                "path": str(video),
                "loop": True,
                "realtime": True,
                "roi": {"mode": "center"},
            }
        )
    config_path = write_config(
        tmp_path / "config.yaml",
        sources=cameras,
        backend={"type": "onnxruntime"},
        http={"port": port, "token": "${DIGITD_TEST_HTTP_TOKEN}"},
        mqtt={"host": "127.0.0.1", "port": broker.port},
    )
    subscriber = subscriber_factory(broker.port, "digitd/test-01/shelf/prediction")
    process = run_daemon(config_path, env=dict(os.environ, DIGITD_TEST_HTTP_TOKEN=TOKEN))
    try:
        open_setup_page(chromium, process, port, "preprocess-threshold")
        chromium.find_element(By.ID, "token").send_keys(TOKEN)
        picker = Select(until(chromium, lambda: chromium.find_elements(By.ID, "camera"))[0])
        assert chromium.find_element(By.ID, "camerabar").is_displayed()
        assert [o.text for o in picker.options] == [
            "desk",
            "shelf",
        ] and picker.first_selected_option.text == "desk"
        picker.select_by_value("shelf")
        until(chromium, lambda: chromium.execute_script("return source") == "shelf")
        until(
            chromium,
            lambda: "source=shelf" in chromium.find_element(By.ID, "streamlink").get_attribute("href"),
        )

        # the shelf camera's frame: a box around its right-hand digit reads that digit
        Select(chromium.find_element(By.ID, "roi-mode")).select_by_value("boxes")
        x, y, w, h = shelf_boxes[1]
        drag_on_frame(chromium, (x + 5, y + 5), (x + w - 5, y + h - 5))
        box_id = until(chromium, lambda: chromium.find_elements(By.ID, "box-0-id"))[0].get_attribute("value")
        read = "const r = document.querySelector('.tile[data-roi=\"' + arguments[0] + '\"] .reading');" + (
            "return r ? r.textContent : null;"
        )
        until(chromium, lambda: chromium.execute_script(read, box_id) == str(shelf_labels[1]))
        text = save(chromium)
        assert text.startswith("Saved") and "sources[1].roi" in text, text

        desk_entry, shelf_entry = yaml.safe_load(config_path.read_text())["sources"]
        assert desk_entry["roi"] == {"mode": "center"}  # the other camera as it was
        assert shelf_entry["roi"]["mode"] == "boxes" and [b["id"] for b in shelf_entry["roi"]["boxes"]] == [
            box_id
        ]
        deadline = time.monotonic() + 15
        newest = None
        while newest is None and time.monotonic() < deadline:
            newest = next(
                (p for p in subscriber.payloads("prediction") if p["rois"][0]["id"] == box_id), None
            )
            time.sleep(0.1)
        assert newest is not None and newest["rois"][0]["digit"] == shelf_labels[1], newest

        # back to the desk camera: its own settings, untouched
        picker.select_by_value("desk")
        until(chromium, lambda: chromium.execute_script("return source") == "desk")
        until(chromium, lambda: chromium.execute_script("return settings.roi.mode") == "center")
    finally:
        assert stop(process) == 0
