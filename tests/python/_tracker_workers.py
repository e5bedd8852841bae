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
