"""Functions run in subinterpreters and child processes by the tests. This module imports
nothing that cannot load in an isolated subinterpreter (numpy cannot)."""

import struct


def interpreter_sender(handle, sender_id, count):
    import memchannel as mc

    ch = mc.Channel.attach(handle)
    for seq in range(count):
        ch.send(struct.pack("<II", sender_id, seq))
    return count


def process_with_two_interpreters(ch, process_id, count):
    from memchannel import interpreters

    workers = [interpreters.create() for _ in range(2)]
    threads = [
        w.call_in_thread(interpreter_sender, ch.handle, process_id * 2 + i, count)
        for i, w in enumerate(workers)
    ]
    for t in threads:
        t.join()
    for w in workers:
        w.close()


def fork_test_child(ch, back):
    """test_fork: a multiprocessing child (fork or forkserver) that uses the parent's channels
    and exits normally."""
    pad = b"." * 64  # as test_fork's PAD: messages that hold blocks
    ch.send(b"from the child" + pad)
    got = back.recv(timeout=10)
    assert bytes(got) == b"to the child" + pad, bytes(got)
    got.release()
