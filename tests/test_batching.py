"""Dynamic batcher: fills to max_batch, flushes after max_wait_ms, never splits a frame."""

import threading
import time

from daemon.batching import DynamicBatcher


class Item(object):
    def __init__(self, crops, name=""):
        self.crop_count = crops
        self.name = name


def test_full_batch_is_returned_without_waiting():
    batcher = DynamicBatcher(max_batch=4, max_wait_ms=1000, queue_items=10)
    for i in range(5):
        batcher.put(Item(1, i))
    started = time.monotonic()
    batch = batcher.next_batch(timeout=1)
    assert [b.name for b in batch] == [0, 1, 2, 3]
    assert time.monotonic() - started < 0.5
    assert [b.name for b in batcher.next_batch(timeout=1)] == [4]


def test_partial_batch_is_flushed_after_max_wait():
    batcher = DynamicBatcher(max_batch=32, max_wait_ms=50, queue_items=10)
    batcher.put(Item(1))
    started = time.monotonic()
    batch = batcher.next_batch(timeout=1)
    waited = time.monotonic() - started
    assert len(batch) == 1 and 0.04 <= waited < 0.5


def test_crops_from_several_frames_are_gathered_as_they_arrive():
    batcher = DynamicBatcher(max_batch=6, max_wait_ms=300, queue_items=10)
    batcher.put(Item(2, "a"))

    def late():
        time.sleep(0.05)
        batcher.put(Item(2, "b"))
        batcher.put(Item(3, "c"))

    threading.Thread(target=late).start()
    batch = batcher.next_batch(timeout=1)
    assert [b.name for b in batch] == ["a", "b"]  # "c" would overflow 6 crops
    assert [b.name for b in batcher.next_batch(timeout=1)] == ["c"]


def test_empty_queue_returns_empty_list_after_timeout():
    assert DynamicBatcher(4, 1, 2).next_batch(timeout=0.05) == []


def test_put_blocks_when_queue_is_full_for_backpressure():
    batcher = DynamicBatcher(4, 1, queue_items=1)
    assert batcher.put(Item(1), timeout=0.01)
    assert not batcher.put(Item(1), timeout=0.05)
    assert batcher.depth() == 1
