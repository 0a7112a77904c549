"""MqttPublisher in this process against a real Mosquitto: topics, availability, order, and what
happens while the broker is away."""

import time

import pytest

from daemon import config
from daemon.publish import MqttPublisher
from tests.helpers import Broker, free_port

pytestmark = pytest.mark.mqtt


def publisher_for(port, **mqtt):
    settings = {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}
    settings.update(mqtt)
    loaded = config.from_dict(
        {"source": {"type": "images", "path": "."}, "device_id": "unit", "mqtt": settings}
    )
    return MqttPublisher(loaded.mqtt, "unit")


def test_messages_arrive_in_order_with_availability_and_offline_on_stop(broker, subscriber_factory):
    subscriber = subscriber_factory(broker.port)
    publisher = publisher_for(broker.port).start()
    for frame in range(20):
        publisher.publish("prediction", {"frame": frame})
    publisher.publish("state", {"number": "7"}, qos=1, retain=True)
    assert subscriber.wait_for(lambda s: len(s.on("prediction")) == 20, timeout=10)
    publisher.stop(flush_timeout=5)
    assert subscriber.wait_for(
        lambda s: [p for _, p, _ in s.on("availability")][-1:] == [b"offline"], timeout=5
    )
    assert [p["frame"] for p in subscriber.payloads("prediction")] == list(range(20))
    assert subscriber.on("prediction")[0][0] == "digitd/unit/prediction"
    assert [p for _, p, _ in subscriber.on("availability")] == [b"online", b"offline"]
    assert publisher.stats.connects == 1 and publisher.stats.dropped == 0


def test_messages_wait_for_a_broker_that_starts_late_and_the_oldest_go_when_the_queue_is_full(
    tmp_path, subscriber_factory
):
    port = free_port()
    publisher = publisher_for(port, queue_size=5).start()
    try:
        for frame in range(8):
            publisher.publish("prediction", {"frame": frame})
        assert publisher.pending() == 5 and publisher.stats.dropped == 3
        deadline = time.monotonic() + 10
        while not publisher.stats.last_error and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not publisher.stats.connected and "connection refused" in publisher.stats.last_error
        broker = Broker(tmp_path, port=port).start()
        try:
            subscriber = subscriber_factory(port)
            # the subscriber came after the flush may have started: wait until the outbox is empty
            assert subscriber.wait_for(lambda s: publisher.pending() == 0, timeout=15)
            publisher.publish("prediction", {"frame": 8})
            assert subscriber.wait_for(
                lambda s: 8 in [p["frame"] for p in s.payloads("prediction")], timeout=10
            )
            assert publisher.stats.connected and publisher.stats.last_reconnect_s is not None
        finally:
            publisher.stop(flush_timeout=2)
            broker.stop()
    finally:
        publisher.stop(flush_timeout=0)


def test_messages_from_several_threads_keep_their_order_whether_handed_over_at_once_or_queued(
    broker, subscriber_factory
):
    """A message is handed to paho by the thread that publishes it when nothing older waits,
    else by the sender thread: mixing both (paced and burst publishers) loses and reorders
    nothing."""
    import random
    import threading

    subscriber = subscriber_factory(broker.port)
    publisher = publisher_for(broker.port).start()
    assert subscriber.wait_for(lambda s: publisher.stats.connected, timeout=10)
    handed_by = set()
    hand = publisher._hand

    def spy(key, message):
        handed_by.add(threading.current_thread().name)
        return hand(key, message)

    publisher._hand = spy

    def paced(name):
        pick = random.Random(name)
        for index in range(150):
            publisher.publish("prediction", {"source": name, "index": index})
            time.sleep(pick.choice((0, 0, 0.002)))

    threads = [threading.Thread(target=paced, args=(name,), name=name) for name in ("cam0", "cam1", "cam2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert subscriber.wait_for(lambda s: len(s.on("prediction")) == 450, timeout=20)
    publisher.stop(flush_timeout=5)
    for name in ("cam0", "cam1", "cam2"):
        indices = [p["index"] for p in subscriber.payloads("prediction") if p["source"] == name]
        assert indices == list(range(150)), name
    # both ways were taken: by a publishing thread and by the sender
    assert "mqtt-sender" in handed_by and handed_by & {"cam0", "cam1", "cam2"}
    assert publisher.stats.dropped == 0 and publisher.stats.published == 450
