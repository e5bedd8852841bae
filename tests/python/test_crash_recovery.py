"""Crash model (docs/reliability.md items 1, 2, 5, 6): a SIGKILLed process costs the others nothing but
its own unsent data; cleanup removes what dead processes leave behind."""

import multiprocessing as mp
import os
import struct
import subprocess
import sys
import threading
import time

import pytest

import memchannel as mc
from conftest import SHM_PREFIX

# Messages that hold a block: longer than the 64 bytes that travel inline in a queue node.
BLOCK_PAD = b"." * 64

CTX = mp.get_context("spawn")


def segments():
    return [n for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIX)]


def hold_blocks_then_wait(inbox, outbox, ready):
    """Child: reserve 3 blocks, receive 2, send 2 messages, then wait to be killed."""
    reserved = [inbox.reserve(1000) for _ in range(3)]
    received = [inbox.recv(timeout=30) for _ in range(2)]
    outbox.send(b"sent before death 1" + BLOCK_PAD)
    outbox.send(b"sent before death 2" + BLOCK_PAD)
    ready.send(b"holding")
    time.sleep(3600)
    del reserved, received


def wait_until(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_sigkilled_holder_blocks_return_and_its_sent_messages_arrive():
    arena = mc.Arena()
    inbox, outbox, ready = arena.channel(), arena.channel(), arena.channel()
    baseline = arena.stats()["blocks_in_use"]
    inbox.send(b"to be received 1" + BLOCK_PAD)
    inbox.send(b"to be received 2" + BLOCK_PAD)
    child = CTX.Process(daemon=True, target=hold_blocks_then_wait, args=(inbox, outbox, ready))
    child.start()
    assert bytes(ready.recv(timeout=60)) == b"holding"
    ready_done = arena.stats()["blocks_in_use"]
    # 3 reserved + 2 received held by the child, 2 queued for us.
    assert ready_done == baseline + 3 + 2 + 2
    child.kill()
    child.join(10)
    # Its queued messages are still delivered.
    assert bytes(outbox.recv(timeout=5)) == b"sent before death 1" + BLOCK_PAD
    assert bytes(outbox.recv(timeout=5)) == b"sent before death 2" + BLOCK_PAD
    # A blocked wait notices the death (liveness checks between wait slices) and reclaims.
    with pytest.raises(mc.Empty):
        inbox.recv(timeout=0.5)
    assert wait_until(lambda: arena.stats()["blocks_in_use"] == baseline, 2.0), arena.stats()
    stats = arena.stats()
    assert stats["reclaimed_blocks"] == 5
    assert stats["corruption_count"] == 0  # nothing was freed twice
    census = arena.census()
    assert census["free_lists_consistent"] and census["bad_cells"] == 0
    assert census["reserved"] == 0 and census["received"] == 0
    assert census["sending"] == census["transferred"] == census["carving_cells"] == 0
    assert census["node_list_consistent"]
    # The survivors keep working.
    outbox.send(b"still works")
    assert bytes(outbox.recv(timeout=5)) == b"still works"


def fill_arena_then_wait(ch, ready):
    # Three 1 MiB blocks fill a 4 MiB arena (blocks of one size class: freed blocks are
    # reused by requests of the same class; the arena does not merge blocks).
    held = [ch.reserve(1 << 20) for _ in range(3)]
    ready.send(b"full")
    time.sleep(3600)
    del held


def test_sender_blocked_on_a_full_arena_resumes_when_the_holder_dies():
    arena = mc.Arena(capacity=4 << 20)
    ch, ready = arena.channel(), mc.Channel()
    child = CTX.Process(daemon=True, target=fill_arena_then_wait, args=(ch, ready))
    child.start()
    assert bytes(ready.recv(timeout=60)) == b"full"
    with pytest.raises(mc.Full):
        ch.send(bytes(1 << 20), timeout=0.2)  # no room while the child lives
    done = threading.Event()

    def sender():
        ch.send(bytes(1 << 20), timeout=30)  # blocks: the arena is full
        done.set()

    t = threading.Thread(target=sender)
    t.start()
    time.sleep(0.2)
    assert not done.is_set()
    child.kill()
    t.join(30)
    assert done.is_set()
    assert ch.recv(timeout=5).nbytes == 1 << 20


def receive_forever(ch):
    while True:
        ch.recv().release()


def test_receiver_blocked_in_recv_keeps_working_when_a_peer_dies():
    ch = mc.Channel()
    got = []
    t = threading.Thread(target=lambda: got.append(bytes(ch.recv(timeout=30))))
    t.start()
    peer = CTX.Process(daemon=True, target=time.sleep, args=(3600,))
    peer.start()
    attached = CTX.Process(daemon=True, target=receive_forever, args=(mc.Channel(),))
    attached.start()
    time.sleep(0.3)
    peer.kill()
    attached.kill()
    ch.send(b"after the deaths")
    t.join(30)
    assert got == [b"after the deaths"]


def test_sender_blocked_on_full_channel_is_served_by_surviving_receiver():
    ch = mc.Channel(maxsize=1)
    ch.send(b"first")
    victim = CTX.Process(daemon=True, target=time.sleep, args=(3600,))
    victim.start()
    done = threading.Event()
    t = threading.Thread(target=lambda: (ch.send(b"second", timeout=30), done.set()))
    t.start()
    time.sleep(0.2)
    victim.kill()
    assert bytes(ch.recv(timeout=5)) == b"first"
    t.join(30)
    assert done.is_set() and bytes(ch.recv(timeout=5)) == b"second"


CREATOR = """
import os, sys, time, memchannel as mc
arena = mc.Arena()
ch = arena.channel()
ch.send(b"x" * 100000)
held = ch.reserve(5000)
print(ch.handle.hex(), flush=True)
time.sleep(3600)
"""

ATTACHER = """
import sys, time, memchannel as mc
ch = mc.Channel.attach(bytes.fromhex(sys.argv[1]))
buf = ch.recv()
print("attached", flush=True)
time.sleep(3600)
"""


def test_cleanup_removes_everything_after_all_participants_are_sigkilled():
    env = dict(os.environ)
    before = set(segments())
    creator = subprocess.Popen([sys.executable, "-c", CREATOR], stdout=subprocess.PIPE, text=True, env=env)
    handle = creator.stdout.readline().strip()
    attacher = subprocess.Popen([sys.executable, "-c", ATTACHER, handle], stdout=subprocess.PIPE,
                                text=True, env=env)
    assert attacher.stdout.readline().strip() == "attached"
    ours = sorted(set(segments()) - before)
    assert ours, "the arena's segments exist while its processes live"
    # While they live, cleanup must not touch them.
    out = subprocess.run([sys.executable, "-m", "memchannel", "cleanup"], capture_output=True,
                         text=True, env=env, check=True).stdout
    assert set(ours) <= set(segments()), out
    for p in (creator, attacher):
        p.kill()
        p.wait()
    out = subprocess.run([sys.executable, "-m", "memchannel", "cleanup"], capture_output=True,
                         text=True, env=env, check=True).stdout
    for name in ours:
        assert name not in segments()
        assert name in out
    # A handle to the removed arena now fails clearly.
    with pytest.raises(mc.ChannelNotFound):
        mc.Channel.attach(bytes.fromhex(handle))


def test_attacher_that_exits_does_not_unlink_segments_others_use():
    ch = mc.Channel()
    ours = [ch._arena.name]
    code = "import sys, memchannel as mc; ch = mc.Channel.attach(bytes.fromhex(sys.argv[1])); ch.send(b'hi')"
    subprocess.run([sys.executable, "-c", code, ch.handle.hex()], check=True)
    assert set(ours) <= set(segments())
    assert bytes(ch.recv(timeout=5)) == b"hi"


def test_half_initialised_segment_is_refused_and_cleaned_up():
    name = SHM_PREFIX + "0123456789abcdef0123456789abcdef"
    path = "/dev/shm/" + name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, 4 << 20)  # sized, but the header was never written (creator died)
    finally:
        os.close(fd)
    os.utime(path, (time.time() - 60, time.time() - 60))
    handle = b"MCH1s" + struct.pack("<5Q", os.getpid(), 1, 1, 4096, 0) + name.encode()
    with pytest.raises(mc.MemChannelError, match="never fully initialised"):
        mc.Channel.attach(handle)
    out = subprocess.run([sys.executable, "-m", "memchannel", "cleanup"], capture_output=True,
                         text=True, check=True).stdout
    assert name in out and not os.path.exists(path)


def test_segment_with_wrong_mode_or_magic_is_refused():
    name = SHM_PREFIX + "fedcba9876543210fedcba9876543210"
    path = "/dev/shm/" + name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, 4 << 20)
        os.pwrite(fd, b"NOTMAGIC" + b"\x01" * 64, 0)
        os.pwrite(fd, struct.pack("<I", 0x52454459), 32)  # the "ready" word: looks published
    finally:
        os.close(fd)
    handle = b"MCH1s" + struct.pack("<5Q", os.getpid(), 1, 1, 4096, 0) + name.encode()
    try:
        with pytest.raises(mc.CorruptionError, match="not a memchannel arena"):
            mc.Channel.attach(handle)
        os.chmod(path, 0o644)
        with pytest.raises(mc.MemChannelError, match="mode"):
            mc.Channel.attach(handle)
    finally:
        os.unlink(path)


def test_segments_are_created_0600_under_umask_000():
    code = ("import os, memchannel as mc; os.umask(0); ch = mc.Channel(); "
            "import stat; print(oct(stat.S_IMODE(os.stat('/dev/shm/' + ch._arena.name).st_mode)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0o600"


def test_nothing_left_in_dev_shm_after_a_clean_run(tmp_path):
    script = tmp_path / "clean_run.py"
    script.write_text("""
import multiprocessing as mp, memchannel as mc
def child(ch):
    ch.send(b"from child")
if __name__ == "__main__":
    mp.set_start_method("spawn")
    ch = mc.Channel()
    big = mc.Channel(arena=mc.Arena())
    for _ in range(20):
        big.send(bytes(1 << 20))  # grows the arena: extra segments
    p = mp.Process(target=child, args=(ch,)); p.start(); p.join()
    assert bytes(ch.recv()) == b"from child"
""")
    prefix = SHM_PREFIX + "clean-"
    env = dict(os.environ, MEMCHANNEL_SHM_PREFIX=prefix)
    subprocess.run([sys.executable, str(script)], check=True, env=env)
    assert [n for n in os.listdir("/dev/shm") if n.startswith(prefix)] == []


def reserve_and_receive_then_wait(ch, ready):
    """Child: reserve 3 blocks and receive 2 messages, then wait to be killed."""
    reserved = [ch.reserve(1000) for _ in range(3)]
    received = [ch.recv(timeout=30) for _ in range(2)]
    ready.send(b"holding")
    time.sleep(3600)
    del reserved, received


def test_dead_peer_blocks_come_back_within_a_second_of_a_plain_stats_call():
    # Prompt reclamation: no allocation pressure, no Arena.reap(), no blocking wait; polling
    # stats() is enough, and the blocks and the holder slot are back within 1 s of the death.
    arena = mc.Arena()
    ch, ready = arena.channel(), arena.channel()
    baseline = ch.stats()["blocks_in_use"]
    attached = ch.stats()["attached_processes"]
    ch.send(b"to be received 1" + BLOCK_PAD)
    ch.send(b"to be received 2" + BLOCK_PAD)
    child = CTX.Process(daemon=True, target=reserve_and_receive_then_wait, args=(ch, ready))
    child.start()
    msg = ready.recv(timeout=60)
    assert bytes(msg) == b"holding"
    msg.release()
    assert ch.stats()["blocks_in_use"] == baseline + 3 + 2
    assert ch.stats()["attached_processes"] == attached + 1
    child.kill()
    child.join(10)
    assert child.exitcode == -9
    died = time.monotonic()
    while time.monotonic() - died < 1.0:
        stats = ch.stats()
        if stats["blocks_in_use"] == baseline and stats["attached_processes"] == attached:
            break
        time.sleep(0.01)
    stats = ch.stats()
    assert stats["blocks_in_use"] == baseline, stats
    assert stats["attached_processes"] == attached, stats
    assert stats["reclaimed_blocks"] == 5
    assert stats["corruption_count"] == 0
