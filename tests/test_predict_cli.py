"""``python -m daemon predict`` on photos of any size, polarity and format."""

import json

import cv2
import numpy as np

from tests.conftest import run_cli
from tests.test_preprocess import paper_crop


def photo(digit28, size=(1200, 900), dark_on_light=True):
    """A large 'photo': paper with a lighting gradient and the digit in the middle."""
    width, height = size
    sheet = np.tile(np.linspace(190, 230, width, dtype=np.float32), (height, 1))
    crop = paper_crop(digit28, size=400, digit_size=300).astype(np.float32)
    y0, x0 = (height - 400) // 2, (width - 400) // 2
    sheet[y0 : y0 + 400, x0 : x0 + 400] = np.minimum(sheet[y0 : y0 + 400, x0 : x0 + 400], crop)
    image = np.clip(sheet, 0, 255).astype(np.uint8)
    return image if dark_on_light else 255 - image


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
