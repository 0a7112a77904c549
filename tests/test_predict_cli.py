"""``python -m daemon predict`` on photos of any size, polarity and format."""

import json

import cv2
import numpy as np
import pytest

from tests import synthetic
from tests.helpers import run_cli, write_config
from tests.synthetic import photo


def test_predict_reads_photos_in_many_formats(tmp_path, mnist_test):
    images, labels = mnist_test
    files, expected = [], []
    for i, (suffix, transform) in enumerate(
        [
            (".jpg", lambda im: cv2.cvtColor(im, cv2.COLOR_GRAY2BGR)),
            (".png", lambda im: im.astype(np.uint16) * 257),  # 16-bit
            (".png", lambda im: cv2.cvtColor(im, cv2.COLOR_GRAY2BGRA)),
            (".bmp", lambda im: im),
        ]
    ):
        path = tmp_path / ("digit%d%s" % (i, suffix))
        cv2.imwrite(str(path), transform(photo(images[10 + i], dark_on_light=i != 3)))
        files.append(path)
        expected.append(int(labels[10 + i]))
    result = run_cli("predict", "--json", *files)
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["file"] for o in outputs] == [str(f) for f in files]
    assert [o["digits"][0]["digit"] for o in outputs] == expected
    for output in outputs:
        assert output["number"] == str(output["digits"][0]["digit"])
        x, y, w, h = output["digits"][0]["box"]
        assert 300 < x < 700 and 200 < y < 500 and 50 < w < 400 and 100 < h < 400


def test_predict_human_output_and_blank_paper(tmp_path, mnist_test):
    digit = tmp_path / "seven.png"
    cv2.imwrite(str(digit), photo(mnist_test[0][0]))
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 300), 220, np.uint8))
    result = run_cli("predict", digit, blank)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("%s: %d" % (digit, mnist_test[1][0]))
    assert lines[1] == "%s: no digit found" % blank


def test_unreadable_inputs_give_clear_errors_and_exit_1(tmp_path, mnist_test):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), photo(mnist_test[0][0]))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:200])
    result = run_cli("predict", "--json", text, truncated, tmp_path / "missing.png", good)
    assert result.returncode == 1
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert "not a decodable image" in outputs[0]["error"]
    assert "not a decodable image" in outputs[1]["error"]
    assert "No such file" in outputs[2]["error"]
    assert outputs[3]["digits"][0]["digit"] == mnist_test[1][0]
    assert "Traceback" not in result.stderr


def with_exif_orientation(jpeg, orientation):
    """A JPEG with an EXIF APP1 segment whose IFD0 holds one tag: Orientation."""
    import struct

    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_exif_orientation_is_applied_like_a_photo_viewer(tmp_path):
    """A phone stores a portrait photo sideways and flags it; OpenCV's IMREAD_COLOR applies
    the flag and is the reference here, for all eight orientations."""
    from daemon.predict import decode_image

    pattern = np.zeros((60, 100, 3), np.uint8)
    pattern[5:20, 5:40] = (255, 255, 255)  # a block in the top-left corner: rotations differ
    pattern[40:55, 80:95] = (0, 0, 255)
    ok, encoded = cv2.imencode(".jpg", pattern, [cv2.IMWRITE_JPEG_QUALITY, 100])
    for orientation in range(1, 9):
        data = with_exif_orientation(encoded.tobytes(), orientation)
        path = tmp_path / ("o%d.jpg" % orientation)
        path.write_bytes(data)
        reference = cv2.imread(str(path), cv2.IMREAD_COLOR)
        decoded = decode_image(data)
        assert decoded.shape == reference.shape, orientation
        assert np.abs(decoded.astype(int) - reference).max() <= 2, orientation
    assert decode_image(with_exif_orientation(encoded.tobytes(), 6)).shape[:2] == (100, 60)


MARKS = {
    "dash": lambda im: cv2.line(im, (60, 100), (140, 104), 40, 9),
    "rule": lambda im: cv2.line(im, (10, 120), (190, 120), 40, 4),
    "box corner": lambda im: (
        cv2.line(im, (50, 60), (150, 60), 40, 6),
        cv2.line(im, (50, 60), (50, 160), 40, 6),
    ),
}


def read_marks(tmp_path, names):
    files = []
    for name in names:
        image = np.full((200, 200), 215, np.uint8)
        MARKS[name](image)
        files.append(tmp_path / (name.replace(" ", "_") + ".png"))
        cv2.imwrite(str(files[-1]), image)
    result = run_cli("predict", "--json", *files)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_marks_that_are_not_digits_read_as_no_digit(tmp_path):
    """A dash and a ruled line are no digits: no digit is reported."""
    outputs = read_marks(tmp_path, ["dash", "rule"])
    assert [o["number"] for o in outputs] == [None, None]
    assert all(d["digit"] is None for o in outputs for d in o["digits"]), outputs


def test_a_box_corner_reads_as_no_digit(tmp_path):
    (output,) = read_marks(tmp_path, ["box corner"])
    assert output["number"] is None


def test_decompression_bombs_in_any_format_are_refused_before_decoding():
    """A 2 KB lossless WebP or a TIFF of 7000 x 7000 uniform pixels (49 megapixels, over the
    40 MP limit) is refused from its header, in microseconds, before OpenCV allocates it; a
    format whose size cannot be read first (JPEG 2000) is refused outright."""
    import time

    from daemon.predict import ImageError, decode_image

    big = np.full((7000, 7000), 200, np.uint8)
    bombs = {
        "webp": cv2.imencode(".webp", big, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(),
        "tiff": cv2.imencode(".tiff", big)[1].tobytes(),
        "pgm": b"P5\n# a comment\n7000 7000\n255\n" + b"\x00" * 100,
    }
    del big
    assert len(bombs["webp"]) < 10000
    for name, data in bombs.items():
        started = time.perf_counter()
        with pytest.raises(ImageError, match="7000x7000 pixels exceeds the limit"):
            decode_image(data)
        assert time.perf_counter() - started < 0.5, name
    small = np.zeros((40, 60), np.uint8)
    for extension in (".webp", ".tiff", ".pgm"):
        assert decode_image(cv2.imencode(extension, small)[1].tobytes()).shape[:2] == (40, 60)
    with pytest.raises(ImageError, match="unsupported format"):
        decode_image(cv2.imencode(".jp2", small)[1].tobytes())


def test_predict_reads_a_4x4_grid_with_the_configs_roi_settings(tmp_path, mnist_test):
    rng = np.random.default_rng(44)  # handwritten digits only: this runs on Python 3.6 too (no fonts)
    image, truth = synthetic.sudoku_image(
        rng, *mnist_test, (), cell=80, empty_fraction=0.3, rows=4, cols=4, box=2
    )
    path = tmp_path / "four.png"
    cv2.imwrite(str(path), image)
    config = write_config(
        tmp_path / "grid4.yaml",
        source={"type": "images", "path": str(tmp_path)},
        roi={"mode": "grid", "grid_rows": 4, "grid_cols": 4},
    )
    result = run_cli("predict", "--roi", "grid", "-c", config, "--json", path)
    assert result.returncode == 0, result.stderr
    grid = json.loads(result.stdout)["grid"]
    assert len(grid) == 4 and all(len(row) == 4 for row in grid), grid
    right = sum(grid[r][c] == truth[r][c] for r in range(4) for c in range(4))
    assert right >= 15, (grid, truth)
    # without the config, the same photo is cut as a 9x9 sudoku
    default = json.loads(run_cli("predict", "--roi", "grid", "--json", path).stdout)["grid"]
    assert len(default) == 9


def test_predict_boxes_needs_a_config_with_boxes(tmp_path, mnist_test):
    path = tmp_path / "one.png"
    cv2.imwrite(str(path), photo(mnist_test[0][0]))
    result = run_cli("predict", "--roi", "boxes", path)
    assert result.returncode == 78 and "roi.boxes" in result.stderr
    config = write_config(
        tmp_path / "boxes.yaml",
        source={"type": "images", "path": str(tmp_path)},
        roi={
            "mode": "boxes",
            "boxes": [
                {"id": "paper", "x": 0, "y": 0, "w": 300, "h": 900},
                {"id": "middle", "x": 400, "y": 250, "w": 400, "h": 400},
            ],
        },
    )
    result = run_cli("predict", "--roi", "boxes", "-c", config, "--json", path)
    assert result.returncode == 0, result.stderr
    digits = json.loads(result.stdout)["digits"]
    assert [d["digit"] for d in digits] == [int(mnist_test[1][0])], digits


def test_roi_full_reads_a_tall_box_whole_as_one_digit(tmp_path):
    paths = []
    for digit in (2, 3, 5, 8):
        path = tmp_path / ("%d.png" % digit)
        cv2.imwrite(str(path), synthetic.tall_digit(digit))
        paths.append(path)
    full = run_cli("predict", "--roi", "full", "--json", *paths)
    assert full.returncode == 0, full.stderr
    results = [json.loads(line) for line in full.stdout.splitlines()]
    assert [len(r["digits"]) for r in results] == [1, 1, 1, 1]
    assert [r["number"] for r in results] == ["2", "3", "5", "8"]
    # the ink found spans more of the height than the centre square (60 px) could hold
    assert all(r["digits"][0]["box"][3] > 60 for r in results)
