"""Child-process bodies for test_tracker.py (importable by spawn and forkserver)."""

import os
import signal
import time


def hold_then_release(ch, seconds):
    buf = ch.recv(timeout=30)
    time.sleep(seconds)
    buf.release()


def receive_then_die(ch, ready):
    buf = ch.recv(timeout=30)
    ready.set()
    assert buf
    os.kill(os.getpid(), signal.SIGKILL)


def forward(inbox, outbox):
    outbox.send(inbox.recv(timeout=30))


def check_share_and_release(ch, results, expected_sum):
    import numpy as np

    buf = ch.recv(timeout=30)
    a = np.asarray(buf)
    results.put((buf.readonly, bool(a.flags.writeable), float(a.sum()) == expected_sum))
    del a
    buf.release()


def hold_share_then_die(ch, ready):
    buf = ch.recv(timeout=30)
    assert buf.readonly
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def release_frames(ch, n):
    for _ in range(n):
        ch.recv(timeout=30).release()


def hold_frame_then_die(ch, ready):
    buf = ch.recv(timeout=30)
    ready.set()
    assert buf
    os.kill(os.getpid(), signal.SIGKILL)


def share_digest(ch, results):
    import hashlib

    with ch.recv(timeout=30) as buf:
        with memoryview(buf) as m:
            results.put((buf.readonly, m.readonly, hashlib.sha256(m).hexdigest()))
