"""ROI extraction: centre square and fixed boxes."""

import numpy as np

from daemon import config, roi


def test_center_is_a_square_in_the_middle():
    frame = np.zeros((480, 640, 3), np.uint8)
    (region,) = roi.CenterRoi(200).extract(frame)
    assert region.id == "center" and region.box == (220, 140, 200, 200)
    assert region.crop.shape == (200, 200, 3)


def test_center_shrinks_to_a_small_frame():
    (region,) = roi.CenterRoi(200).extract(np.zeros((100, 150), np.uint8))
    assert region.box == (25, 0, 100, 100)


def test_boxes_keep_ids_and_are_clipped_to_the_frame():
    settings = config.from_dict(
        {
            "source": {"type": "v4l2"},
            "roi": {
                "mode": "boxes",
                "boxes": [
                    {"id": "a", "x": 10, "y": 20, "w": 30, "h": 40},
                    {"id": "edge", "x": 620, "y": 470, "w": 50, "h": 50},
                    {"id": "outside", "x": 900, "y": 0, "w": 10, "h": 10},
                ],
            },
        }
    )
    extractor = roi.create_extractor(settings.roi)
    frame = np.arange(480 * 640, dtype=np.uint32).reshape(480, 640)
    regions = extractor.extract(frame)
    assert [r.id for r in regions] == ["a", "edge", "outside"]
    assert regions[0].box == (10, 20, 30, 40) and regions[0].crop[0, 0] == frame[20, 10]
    assert regions[1].box == (620, 470, 20, 10)
    assert regions[2].box[2] == 0 and regions[2].crop.size == 0


def test_full_is_the_whole_frame_whatever_its_shape():
    (region,) = roi.FullRoi().extract(np.zeros((32, 20), np.uint8))
    assert region.box == (0, 0, 20, 32) and region.crop.shape == (32, 20)


def test_a_box_with_its_own_polarity_reads_light_on_dark_digits(reader):
    """A meter shows white drums beside black-on-white ones: each box says which it holds."""
    from daemon.reader import Reader
    from tests.test_predict_cli import tall_digit

    frame = np.hstack([tall_digit(3), 255 - tall_digit(7)])  # dark on light, then light on dark
    boxes = [{"id": "a", "x": 0, "y": 0, "w": 60, "h": 96}, {"id": "b", "x": 60, "y": 0, "w": 60, "h": 96}]
    read = {}
    for polarity in ("dark_on_light", "light_on_dark"):
        boxes[1]["polarity"] = polarity
        settings = config.from_dict({"source": {"type": "v4l2"}, "roi": {"mode": "boxes", "boxes": boxes}})
        box_reader = Reader.from_config(settings, reader.backend, reader.lock)
        image = box_reader.prepare(frame)
        read[polarity] = [r.digit for r in box_reader.readings(image, box_reader.infer(image.prepared))]
    assert read["light_on_dark"] == [3, 7]
    assert read["dark_on_light"][1] != 7  # told the wrong ink, the box reads the paper
