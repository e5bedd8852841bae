"""fork() safety: a forked child is a new holder of the arenas and channels it inherits.

Buffers the child inherited stay its parent's: releasing them in the child, or the child's
garbage collection at exit, frees nothing, and sending one raises. Channels the child
inherited work in it with its own holder slot, and its exit (normal, through os._exit, or by
multiprocessing's fork and forkserver children) gives back only what it took: the parent's
channel, its queued messages and its arena survive.

Each scenario runs in a fresh interpreter (a script), so the child can leave the way a real
program does: falling off the end of the script (atexit, module teardown, GC).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import SHM_PREFIX

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# The parent's side, shared by the scenarios: a reserved Buffer and a received one, each
# filled with a pattern, and a message left queued, all from before the fork.
PRELUDE = textwrap.dedent(
    """
    import gc, os, sys, time
    import memchannel as mc

    BACKEND = sys.argv[1]
    SIZE = 4096
    PAD = b"." * 64  # the messages hold blocks: longer than the 64 bytes that travel inline
    ch = mc.Channel(backend=BACKEND)
    back = mc.Channel(backend=BACKEND, arena=ch._arena)
    spare = mc.Channel(backend=BACKEND, arena=ch._arena)  # for churn: same arena, empty queue
    reserved = ch.reserve(SIZE)
    memoryview(reserved)[:] = b"\\xaa" * SIZE
    ch.send(b"\\xbb" * SIZE)
    received = ch.recv()
    ch.send(b"queued before fork" + PAD)
    baseline = ch.stats()["blocks_in_use"]  # reserved + received + the queued message

    def churn(channel, byte, n=8):
        # Sends and receives messages of the Buffers' size: freed blocks of that class are
        # taken again (and written) at once.
        held = []
        for _ in range(n):
            channel.send(bytes([byte]) * SIZE)
        for _ in range(n):
            held.append(channel.recv())
        for b in held:
            b.release()

    def parent_checks(child_status, expect_child_message):
        assert os.WIFEXITED(child_status) and os.WEXITSTATUS(child_status) == 0, child_status
        churn(spare, 0xdd)
        assert bytes(reserved) == b"\\xaa" * SIZE, "the parent's reserved Buffer was overwritten"
        assert bytes(received) == b"\\xbb" * SIZE, "the parent's received Buffer was overwritten"
        assert ch.stats()["blocks_in_use"] == baseline + (1 if expect_child_message else 0), ch.stats()
        got = ch.recv(timeout=2)
        assert bytes(got) == b"queued before fork" + PAD, bytes(got)
        got.release()
        if expect_child_message:
            got = ch.recv(timeout=2)
            assert bytes(got) == b"from the child" + PAD, bytes(got)
            got.release()
        reserved.release()
        received.release()
        assert ch.stats()["blocks_in_use"] == 0, ch.stats()
        assert ch.stats()["corruption_count"] == 0, ch.stats()
        print("ARENA", ch._arena.name if BACKEND == "shm" else "")
        print("PARENT OK")
    """
)


def run_script(body, backend, timeout=60):
    script = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", script, backend], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0 and "PARENT OK" in proc.stdout, (proc.returncode, proc.stdout, proc.stderr)
    arena = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("ARENA ")]
    if backend == "shm":
        assert arena and arena[0].startswith(SHM_PREFIX)
        left = [n for n in os.listdir("/dev/shm") if n.startswith(arena[0])]
        assert left == [], "segments left in /dev/shm: %s" % left
    return proc


def test_child_releasing_inherited_buffers_frees_nothing(backend):
    run_script(
        """
        pid = os.fork()
        if pid == 0:
            reserved.release()   # the parent's blocks: the child forgets them, frees nothing
            received.release()
            assert reserved.released and received.released
            if BACKEND == "shm":
                churn(spare, 0xcc)  # would take (and overwrite) the parent's blocks if freed
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        parent_checks(status, expect_child_message=False)
        """,
        backend,
    )


def test_child_gc_of_inherited_buffers_at_exit_frees_nothing(backend):
    run_script(
        """
        pid = os.fork()
        if pid == 0:
            if BACKEND == "shm":
                churn(spare, 0xcc)
            # Leaves by falling off the script: the Buffers and channels are collected at exit.
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        parent_checks(status, expect_child_message=False)
        """,
        backend,
    )


def test_child_deleting_inherited_buffers_frees_nothing(backend):
    run_script(
        """
        pid = os.fork()
        if pid == 0:
            del reserved, received
            gc.collect()
            if BACKEND == "shm":
                churn(spare, 0xcc)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        parent_checks(status, expect_child_message=False)
        """,
        backend,
    )


def test_child_cannot_send_an_inherited_shm_buffer():
    # (On the heap backend the child's memory is a private copy: what it sends is its own.)
    run_script(
        """
        pid = os.fork()
        if pid == 0:
            for buf in (reserved, received):
                try:
                    ch.send(buf)
                except mc.MemChannelError as e:
                    assert "fork" in str(e), str(e)
                else:
                    os._exit(3)
                assert not buf.released  # still readable in the child (a private view)
            assert bytes(reserved) == b"\\xaa" * SIZE
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        parent_checks(status, expect_child_message=False)
        """,
        "shm",
    )


@pytest.mark.parametrize("exit_kind", ["normal", "os_exit"])
def test_child_uses_inherited_shm_channels_and_its_exit_keeps_the_parents(exit_kind):
    run_script(
        """
        EXIT = %r
        pid = os.fork()
        if pid == 0:
            ch.send(b"from the child" + PAD)
            got = back.recv(timeout=5)
            assert bytes(got) == b"to the child" + PAD, bytes(got)
            got.release()
            spare.send(b"child done" + PAD)
            if EXIT == "normal":
                sys.exit(0)
            mc._memchannel._detach_all()  # what multiprocessing's finalizer runs
            os._exit(0)
        back.send(b"to the child" + PAD)
        got = spare.recv(timeout=5)
        assert bytes(got) == b"child done" + PAD, bytes(got)
        got.release()
        _, status = os.waitpid(pid, 0)
        assert ch.stats()["attached_processes"] == 1, ch.stats()
        parent_checks(status, expect_child_message=True)
        """ % exit_kind,
        "shm",
    )


def test_child_killed_leaves_the_parents_channel_intact():
    run_script(
        """
        import signal
        pid = os.fork()
        if pid == 0:
            ch.send(b"from the child" + PAD)
            os.kill(os.getpid(), signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status)
        ch._arena.reap()
        parent_checks(0, expect_child_message=True)
        """,
        "shm",
    )


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_multiprocessing_children_exiting_normally_keep_the_parents_channel(method):
    run_script(
        """
        import multiprocessing as mp
        sys.path.insert(0, %r)
        from _workers import fork_test_child

        if __name__ == "__main__":
            ctx = mp.get_context(%r)
            p = ctx.Process(target=fork_test_child, args=(ch, back))
            p.start()
            back.send(b"to the child" + PAD)
            p.join(30)
            # The child's message is in; wait until the child took ours (its exit code says so).
            assert p.exitcode == 0, p.exitcode
            assert back.qsize() == 0
            parent_checks(0, expect_child_message=True)
        """ % (os.path.dirname(os.path.abspath(__file__)), method),
        "shm",
        timeout=120,
    )


@pytest.mark.parametrize("child", ["exec", "os_exit_unused", "used_normal_exit", "used_mp_finalizer"])
def test_parent_dropping_a_channel_frees_it_after_the_child_exits(child):
    # The child's exit leaves the channel's attach count as it found it: when the parent drops
    # its last object, the channel is drained and its queued message freed. (A child that never
    # uses an inherited channel, such as fork + exec, takes no attach at all.)
    run_script(
        """
        CHILD = %r
        extra = mc.Channel(backend=BACKEND, arena=ch._arena)
        extra.send(b"left queued" + PAD)
        pid = os.fork()
        if pid == 0:
            if CHILD == "exec":
                os.execv("/bin/true", ["true"])
            if CHILD == "os_exit_unused":
                os._exit(0)
            extra.send(b"from the child too" + PAD)
            if CHILD == "used_mp_finalizer":
                mc._memchannel._detach_all()
                os._exit(0)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        queued = 2 if CHILD.startswith("used") else 1
        assert extra.qsize() == queued, extra.qsize()
        assert ch.stats()["blocks_in_use"] == baseline + queued, ch.stats()
        del extra
        gc.collect()
        assert ch.stats()["blocks_in_use"] == baseline, ch.stats()
        parent_checks(status, expect_child_message=False)
        """ % child,
        "shm",
    )
