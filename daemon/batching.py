"""Dynamic batching: gather crops from one or more frames, like Triton's dynamic batcher.

A batch is closed when it holds ``max_batch`` crops or ``max_wait_ms`` after its
first frame arrived, whichever comes first; with ``max_wait_ms`` 0 (the default) it takes
the frames already queued and runs at once, so batches grow only when frames queue up. Frames are never split across
batches, so a frame's results are published together.
"""

import logging
import queue
import time

log = logging.getLogger(__name__)


class DynamicBatcher(object):
    """Bounded queue of work items (each with ``crop_count``) and a batch collector."""

    def __init__(self, max_batch, max_wait_ms, queue_items):
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._queue = queue.Queue(maxsize=queue_items)
        self._carry = None  # an item that did not fit the previous batch

    def put(self, item, timeout=None):
        """Queue an item; blocks while the queue is full (backpressure). False on timeout."""
        try:
            self._queue.put(item, timeout=timeout)
            return True
        except queue.Full:
            return False

    def depth(self):
        return self._queue.qsize() + (1 if self._carry is not None else 0)

    def next_batch(self, timeout):
        """Return a list of items (possibly empty when nothing arrived within ``timeout``)."""
        first = self._carry
        self._carry = None
        if first is None:
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                return []
        batch = [first]
        crops = first.crop_count
        deadline = time.monotonic() + self.max_wait
        while crops < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if crops + item.crop_count > self.max_batch:
                self._carry = item
                break
            batch.append(item)
            crops += item.crop_count
        return batch
