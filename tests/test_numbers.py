"""Reading numbers (segment mode), grids (grid mode) and printed digits, on generated images.

With DIGITD_UPDATE_DOCS=1 the worst failures are written to docs/failures/ for a look.
"""

import json
import os

import cv2
import numpy as np
import pytest

from engine_build import fonts
from tests import synthetic
from tests.helpers import ROOT, run_cli, run_daemon, write_config

pytestmark = pytest.mark.slow

DOCS = ROOT / "docs" / "failures"


@pytest.fixture(scope="module")
def held_out_fonts():
    found = fonts.find_fonts(fonts.HELD_OUT_FAMILIES)
    if not found:
        pytest.fail("fonts-freefont-ttf is needed (make test installs it)")
    return found


def save_failures(name, failures):
    """Keep the worst few (image, caption) for a person to look at."""
    if not os.environ.get("DIGITD_UPDATE_DOCS"):
        return
    DOCS.mkdir(parents=True, exist_ok=True)
    for old in DOCS.glob("%s_*.png" % name):
        old.unlink()
    for index, (image, caption) in enumerate(failures[:6]):
        (text_width, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        extra = max(0, text_width + 8 - image.shape[1])
        canvas = cv2.copyMakeBorder(image, 0, 28, 0, extra, cv2.BORDER_CONSTANT, value=(255, 255, 255))
        cv2.putText(canvas, caption, (4, canvas.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 200), 1)
        cv2.imwrite(str(DOCS / ("%s_%d.png" % (name, index))), canvas)


def test_segment_reads_91_percent_of_handwritten_numbers(reader, mnist_test, capsys):
    rng = np.random.default_rng(2026)
    right, failures, total = 0, [], 300
    for _ in range(total):
        image, truth = synthetic.number_image(rng, *mnist_test)
        got = reader.read_still(image, "segment")["number"]
        if got == truth:
            right += 1
        else:
            failures.append((image, "truth %s read %s" % (truth, got)))
    save_failures("numbers", failures)
    with capsys.disabled():
        print("\nsegment: %d of %d numbers read exactly (%.1f %%)" % (right, total, 100.0 * right / total))
    # 97.7 % on the clean images of before; these add vignetting, shadows, table margins and
    # JPEG, and the code of before read 59 % of them
    assert right / float(total) >= 0.91


def test_a_number_in_bold_marker_close_up_is_read_dark_on_light_and_light_on_dark(reader, mnist_test):
    """Big digits in a bold marker (strokes about 15 px on a 420 px page): the page's
    polarity was judged by its thin features, and the gaps between such strokes are thinner
    than the strokes. Judged the wrong way round, the stroke mask took the gaps for ink and
    not one of these numbers read; the paper's median now overrules a verdict it clearly
    contradicts."""
    right = {"dark on light": 0, "light on dark": 0}
    for seed in range(10):
        page, truth = synthetic.bold_marker_page(np.random.default_rng(seed), *mnist_test)
        right["dark on light"] += reader.read_still(page, "segment")["number"] == truth
        right["light on dark"] += reader.read_still(255 - page, "segment")["number"] == truth
    assert min(right.values()) >= 7, right


def test_segment_reads_numbers_half_in_a_shadow(reader, mnist_test):
    """A shadow's edge across the page halves the contrast of the strokes on its dark side:
    under the stroke mask's fixed floor, their digits went missing (77 % of these read before
    the paper was evenly lit, 91 % after)."""
    from engine_build.eval_real import Degradation

    rng = np.random.default_rng(2028)
    shadow = Degradation(shadow=0.5)
    total = 100
    right = 0
    for _ in range(total):
        image, truth = synthetic.number_image(rng, *mnist_test)
        right += reader.read_still(shadow.apply(image), "segment")["number"] == truth
    assert right >= 0.86 * total, right


def test_a_digit_beside_a_dark_margin_is_read_in_every_frame(reader, mnist_test):
    """The benchmark's number: a sheet on a table, a dark bar at its left edge, the first
    digit close to it, sensor noise on each frame. The paper's light measured on too coarse
    a copy bled the bar into the paper beside it; the bar's stroke grew and took the digit
    (20 of 150 frames read without their first digit)."""
    from bench import modes

    frame, _, is_right = modes.scenes(*mnist_test, ())["segment"]
    wrong = []
    for seed in range(20):
        result = reader.read_still(modes.noisy(frame, seed), "segment")
        if not is_right(result):
            wrong.append((seed, result["number"]))
    assert not wrong, wrong


def test_grid_reads_98_percent_of_sudoku_cells(reader, mnist_test, held_out_fonts, capsys):
    rng = np.random.default_rng(2027)
    right = cells = empty_right = empties = 0
    failures = []
    for _ in range(25):
        image, truth = synthetic.sudoku_image(rng, *mnist_test, held_out_fonts)
        grid = reader.read_still(image, "grid")["grid"]
        wrong = [(r, c) for r in range(9) for c in range(9) if grid[r][c] != truth[r][c]]
        cells += 81
        right += 81 - len(wrong)
        empties += sum(v is None for row in truth for v in row)
        empty_right += sum(grid[r][c] is None for r in range(9) for c in range(9) if truth[r][c] is None)
        if wrong:
            failures.append(
                (image, "%d wrong: %s" % (len(wrong), ", ".join("r%dc%d" % w for w in wrong[:4])))
            )
    save_failures("sudoku", sorted(failures, key=lambda f: -int(f[1].split()[0])))
    with capsys.disabled():
        print(
            "\ngrid: %d of %d cells right (%.2f %%), empty cells %d of %d"
            % (right, cells, 100.0 * right / cells, empty_right, empties)
        )
    assert right / float(cells) >= 0.98
    assert empty_right / float(empties) >= 0.98


def test_printed_digits_in_fonts_never_trained_on(reader, held_out_fonts, capsys):
    rng = np.random.default_rng(2028)
    right = total = 0
    reads = []
    for path in held_out_fonts:
        for digit in range(10):
            for _ in range(6):
                crop = synthetic.printed_crop(rng, path, digit)
                result = reader.read_still(crop, "center")
                got, confidence = None, 0.0
                if result["digits"]:
                    got, confidence = result["digits"][0]["digit"], result["digits"][0]["confidence"]
                total += 1
                right += got == digit
                caption = "%s %d read %s (%.2f)" % (os.path.basename(path)[:-4], digit, got, confidence)
                reads.append((got == digit, confidence, cv2.resize(crop, (180, 180)), caption))
    # Failures first, then the least confident right answers: the weak spots worth a look.
    reads.sort(key=lambda r: (r[0], r[1]))
    save_failures("printed", [(image, caption) for _, _, image, caption in reads])
    with capsys.disabled():
        print("\nprinted digits, unseen fonts: %d of %d (%.2f %%)" % (right, total, 100.0 * right / total))
    assert right / float(total) >= 0.99


def test_predict_cli_reads_numbers_and_grids(tmp_path, mnist_test, held_out_fonts):
    rng = np.random.default_rng(5)
    number, truth = synthetic.number_image(rng, *mnist_test)
    while len(truth) < 4:
        number, truth = synthetic.number_image(rng, *mnist_test)
    cv2.imwrite(str(tmp_path / "number.png"), number)
    sudoku, grid_truth = synthetic.sudoku_image(rng, *mnist_test, held_out_fonts)
    cv2.imwrite(str(tmp_path / "sudoku.jpg"), sudoku)
    segment = run_cli("predict", "--roi", "segment", "--json", tmp_path / "number.png")
    assert segment.returncode == 0, segment.stderr
    result = json.loads(segment.stdout)
    assert len(result["digits"]) == len(truth)
    assert all(len(d["box"]) == 4 and 0 <= d["confidence"] <= 1 for d in result["digits"])
    xs = [d["box"][0] for d in result["digits"]]
    assert xs == sorted(xs)
    grid = json.loads(run_cli("predict", "--roi", "grid", "--json", tmp_path / "sudoku.jpg").stdout)["grid"]
    assert len(grid) == 9 and all(len(row) == 9 for row in grid)
    assert sum(grid[r][c] == grid_truth[r][c] for r in range(9) for c in range(9)) >= 78


def number_video(path, numbers, mnist_test, frames_each=10):
    """A 640x480 video showing each handwritten number for ``frames_each`` frames."""
    images, labels = mnist_test
    rng = np.random.default_rng(9)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
    truth = []
    for digits in numbers:
        sheet = synthetic.paper(rng, 640, 480)
        x = 140
        for digit in digits:
            index = int(rng.choice(np.flatnonzero(labels == int(digit))))
            glyph = synthetic.mnist_glyph(images[index], 80)
            synthetic.ink(sheet, glyph, x, 200, 0.9)
            x += glyph.shape[1] + 18
        frame = cv2.cvtColor(np.clip(sheet, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        for _ in range(frames_each):
            writer.write(frame)
            truth.append(digits)
    writer.release()
    return truth


@pytest.mark.mqtt
def test_daemon_publishes_a_multi_digit_number_from_video(
    tmp_path, mnist_test, broker, subscriber_factory, schemas
):
    video = tmp_path / "meter.mp4"
    truth = number_video(video, ["4071", "4072", "31337"], mnist_test)
    config = write_config(
        tmp_path / "config.yaml",
        source={"type": "file", "path": str(video)},
        roi={"mode": "segment"},
        backend={"type": "onnxruntime"},
        mqtt={"host": "127.0.0.1", "port": broker.port},
    )
    subscriber = subscriber_factory(broker.port)
    process = run_daemon(config)
    assert process.wait(60) == 0, process.log_path.read_text()
    assert subscriber.wait_for(lambda s: len(s.on("prediction")) >= len(truth), timeout=10)
    predictions = subscriber.payloads("prediction")
    for payload in predictions:
        schemas["prediction"].validate(payload)
    right = sum(p["number"] == truth[p["frame"] - 1] for p in predictions)
    assert right >= 0.9 * len(truth)
    states = [s["number"] for s in subscriber.payloads("state")]
    assert "4071" in states and "31337" in states
    assert len(predictions[0]["rois"]) == 4 and predictions[0]["rois"][0]["id"] == "d0_0"


def sheet_with_rows(rng, mnist_test, rows, height=70, line_gap=25, width=520):
    """Handwritten rows of digits (MNIST test digits) stacked ``line_gap`` px apart."""
    images, labels = mnist_test
    sheet = synthetic.paper(rng, width, 80 + len(rows) * (height + line_gap))
    truths = []
    for index, count in enumerate(rows):
        picks = rng.integers(0, len(images), count)
        x, y = 40, 40 + index * (height + line_gap)
        for pick in picks:
            glyph = synthetic.mnist_glyph(images[pick], height)
            synthetic.ink(sheet, glyph, x, y, 0.9)
            x += glyph.shape[1] + 22
        truths.append("".join(str(labels[p]) for p in picks))
    return sheet, "\n".join(truths)


def test_digits_stacked_in_columns_stay_in_their_lines(reader, mnist_test):
    """Two lines a third of a digit apart: digits above each other are not merged into one."""
    rng = np.random.default_rng(11)
    right = 0
    for _ in range(10):
        sheet, truth = sheet_with_rows(rng, mnist_test, [4, 4], line_gap=22)
        number = reader.read_still(synthetic.finish(sheet, rng, max_rotation=1.0), "segment")["number"]
        assert number is not None and number.count("\n") == 1, (truth, number)  # two lines, never one
        right += number == truth
    # the misses are wide, bold 3s the model takes for two touching digits, not merged lines
    assert right >= 7


def test_shadows_rules_and_dashes_are_not_read_as_digits(reader, mnist_test):
    """A hand's shadow twice a digit's height, a ruled line under the number and a dash
    after it: the number alone is read."""
    rng = np.random.default_rng(12)
    right = 0
    for _ in range(10):
        sheet, truth = sheet_with_rows(rng, mnist_test, [5], height=60)
        height, width = sheet.shape
        cv2.line(sheet, (10, 112), (width - 10, 112), 60, 2)  # the rule the digits sit on
        cv2.line(sheet, (width - 90, 70), (width - 55, 72), 50, 5)  # a dash after the number
        yy, xx = np.mgrid[0:height, 0:width]
        shadow = ((xx - width * 0.85) / 70.0) ** 2 + ((yy - height * 0.6) / 120.0) ** 2 < 1
        sheet *= 1 - 0.45 * cv2.GaussianBlur(shadow.astype(np.float32), (0, 0), 8)
        right += (
            reader.read_still(synthetic.finish(sheet, rng, max_rotation=1.0), "segment")["number"] == truth
        )
    assert right >= 9
