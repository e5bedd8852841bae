"""A worker that waits on a work channel and a control channel at once.

The worker thread blocks in memchannel.select() over both channels: no thread per channel, no
polling. A "pause" on the control channel is seen even while work keeps arriving (select
rotates between ready channels, so neither starves), and "stop" ends the worker, which then
drains nothing more.

Run: python docs/examples/waiting_worker_control.py   (from docs/guide-waiting.md)
"""
import struct
import threading

import memchannel as mc


def worker(work, control, results):
    done = 0
    while True:
        ch, buf = mc.select([work, control])
        if ch is control:
            command = bytes(buf).decode()
            buf.release()
            print("control:", command)
            if command == "stop":
                break
            continue
        (n,) = struct.unpack("<Q", buf)
        buf.release()
        results.send(struct.pack("<Q", n * n))
        done += 1
    results.send_object(("done", done))


if __name__ == "__main__":
    work = mc.Channel(maxsize=64)
    control = mc.Channel(backend="heap")  # another backend, another arena: select does not mind
    results = mc.Channel()
    t = threading.Thread(target=worker, args=(work, control, results))
    t.start()
    for n in range(100):
        work.send(struct.pack("<Q", n))
    total = sum(struct.unpack("<Q", results.recv(timeout=10))[0] for _ in range(100))
    # expect: sum of squares: 328350
    print("sum of squares:", total)
    # expect: control: stop
    control.send(b"stop")
    # expect: worker says: ('done', 100)
    print("worker says:", results.recv_object(timeout=10))
    t.join()

    # wait() looks without taking: which channels are ready, as multiprocessing.connection.wait.
    work.send(b"\0" * 8)
    control.close()
    # expect: ready: ['work', 'control']
    print("ready:", ["work" if c is work else "control" for c in mc.wait([work, control], timeout=1)])
