"""The MQTT outboxes in this process: bounded memory, and the SQLite spool across restarts."""

import pytest

from daemon.outbox import MemoryOutbox, Message, SpoolError, SqliteOutbox, create_outbox


def message(number):
    return Message("digitd/t/prediction", b'{"frame": %d}' % number, 1, False)


def drain(outbox):
    out = []
    while True:
        taken = outbox.take()
        if taken is None:
            return out
        key, item = taken
        outbox.ack(key)
        out.append(item.payload)


def test_a_full_memory_outbox_drops_the_oldest_and_keeps_the_order():
    outbox = MemoryOutbox(3)
    dropped = [outbox.append(message(n)) for n in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert drain(outbox) == [b'{"frame": 2}', b'{"frame": 3}', b'{"frame": 4}']
    assert len(outbox) == 0


def test_a_message_given_back_is_sent_first_and_handed_ones_are_never_dropped():
    outbox = MemoryOutbox(2)
    outbox.append(message(1))
    key, _ = outbox.take()  # handed to paho, not yet acknowledged
    outbox.append(message(2))
    assert outbox.append(message(3)) == 1  # drops pending 2, never the handed 1
    outbox.give_back(key)
    assert drain(outbox) == [b'{"frame": 1}', b'{"frame": 3}']


def test_the_spool_keeps_unacknowledged_messages_across_a_restart(tmp_path):
    path = str(tmp_path / "spool" / "outbox.sqlite")
    first = create_outbox(10, path)
    assert isinstance(first, SqliteOutbox) and first.durable
    for n in range(4):
        first.append(message(n))
    key, _ = first.take()
    first.ack(key)  # frame 0 was delivered
    first.take()  # frame 1 was handed over but never acknowledged
    first.close()
    second = SqliteOutbox(10, path)
    assert drain(second) == [b'{"frame": %d}' % n for n in (1, 2, 3)]
    second.close()
    assert drain(SqliteOutbox(10, path)) == []


def test_a_smaller_queue_after_a_restart_drops_the_oldest_spooled(tmp_path):
    path = str(tmp_path / "outbox.sqlite")
    first = SqliteOutbox(10, path)
    for n in range(6):
        first.append(message(n))
    first.close()
    second = SqliteOutbox(2, path)
    assert second.dropped_at_start == 4
    assert drain(second) == [b'{"frame": 4}', b'{"frame": 5}']


def test_a_spool_where_nothing_can_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot create the directory"):
        SqliteOutbox(10, str(blocker / "outbox.sqlite"))
