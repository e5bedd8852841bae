"""Functions the select/fileno/asyncio tests run in other processes and subinterpreters
(importable by spawn; no numpy)."""

import struct
import time


def send_after(ch, delay, payload):
    time.sleep(delay)
    ch.send(payload)


def send_numbered(ch, tag, count):
    for i in range(count):
        ch.send(struct.pack("<II", tag, i))
    return count


def send_each_numbered(chans, count):
    for i in range(count):
        for tag, ch in enumerate(chans):
            ch.send(struct.pack("<II", tag, i))
    return count


def echo(inbox, outbox, count):
    for _ in range(count):
        with inbox.recv(timeout=30) as buf:
            outbox.send(buf)


def close_after(ch, delay):
    time.sleep(delay)
    ch.close()


def select_forever(chans, ready):
    """Block in select() (registered in every channel's fd wait-list) until killed."""
    import memchannel as mc

    ready.send(b"in select")
    mc.select(chans)
