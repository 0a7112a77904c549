"""The benchmark's own arithmetic: a latency is matched to the frame it belongs to, a reading
is checked against the right truth, and the Nano scale reads 7-Zip's output right."""

import pytest

from bench import nano
from bench.run import check_readings, subscriber_latencies

pytestmark = pytest.mark.host


def test_latency_runs_from_reading_the_frame_to_the_subscriber_matched_by_frame_number():
    recorded = {
        7: {"read_started": 100.000, "decoded": 100.002},
        8: {"read_started": 100.033, "decoded": 100.0351},
    }
    # arrivals out of order; the payload's ts is the decode time rounded to 1 ms
    received = [(100.0380, {"frame": 8, "ts": 100.035}), (100.0050, {"frame": 7, "ts": 100.002})]
    result = subscriber_latencies(received, recorded)
    assert result["matched"] == 2 and result["mismatched"] == 0
    assert result["read_to_subscriber_ms"] == pytest.approx([5.0, 5.0])
    assert result["decoded_to_subscriber_ms"] == pytest.approx([2.9, 3.0])


def test_a_message_from_another_run_or_an_unknown_frame_is_not_counted_as_a_latency():
    recorded = {1: {"read_started": 50.0, "decoded": 50.001}}
    received = [(50.004, {"frame": 1, "ts": 49.5}), (50.004, {"frame": 2, "ts": 50.001})]
    result = subscriber_latencies(received, recorded)
    assert result["matched"] == 0 and result["mismatched"] == 2


def test_readings_are_checked_frame_by_frame_and_digit_by_digit():
    truth = {1: "1234", 2: "1234", 3: "5678"}
    recorded = {
        1: {"number": "1234"},
        2: {"number": "1?34"},
        3: {"read_started": 0.0},  # dropped before publishing: not checked
    }
    assert check_readings(recorded, truth) == {
        "frames_checked": 2,
        "frames_read_right": 1,
        "digits_checked": 8,
        "digits_read_right": 7,
    }


def test_the_nano_scale_takes_the_per_core_rating_of_the_total_line():
    output = "Avr:      3153    98   3378   3315  |      43358    97   3893   3781\nTot:              98   3635   3548\n"
    assert nano.parse_total_rating_per_core(output) == 3635
    scale = nano.scale(2908.0)
    assert scale["nano_slower"] == 2.0
    row = nano.budget_row("grid", 20.0, 2.0)
    assert row["nano_ms_one_core"] == 40.0 and row["left_of_frame_ms"] == pytest.approx(-6.7)
