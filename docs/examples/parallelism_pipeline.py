"""listener -> processing workers -> sender, with memchannel channels between the stages.

A listener thread reads requests from an input channel and submits each to an
InterpreterPoolExecutor; a sender thread writes the replies, in order, to an output
channel.  The input channel lives in the pool's memory (`pool.channel()`), so the Buffer
the listener receives is handed to the worker with no copy.

Run: python docs/examples/parallelism_pipeline.py   (from docs/guide-parallelism.md)
"""
import queue
import struct
import threading
from concurrent.futures import Future

import memchannel as mc


def handle(request):  # runs in a worker interpreter; gets the memchannel.Buffer
    with memoryview(request) as view:
        (request_id,) = struct.unpack_from("<I", view, 0)
        checksum = sum(view[4:]) & 0xFFFF
    return struct.pack("<IH", request_id, checksum)


def listener(inbox, pool, in_flight):
    for request in inbox:  # until the channel is closed and drained
        in_flight.put(pool.submit(handle, request))
        del request  # the pool owns it now
    in_flight.put(None)


def sender(in_flight, outbox):
    while (future := in_flight.get()) is not None:
        outbox.send(future.result())
    outbox.close()


if __name__ == "__main__":
    with mc.InterpreterPoolExecutor(max_workers=2) as pool:
        inbox, outbox = pool.channel(), mc.Channel()
        in_flight: queue.SimpleQueue[Future[bytes] | None] = queue.SimpleQueue()
        stages = [threading.Thread(target=listener, args=(inbox, pool, in_flight)),
                  threading.Thread(target=sender, args=(in_flight, outbox))]
        for stage in stages:
            stage.start()

        for request_id in range(100):  # the network side: requests in...
            inbox.send(struct.pack("<I", request_id) + bytes([request_id % 256]) * 4096)
        inbox.close()
        replies = [struct.unpack("<IH", bytes(buf)) for buf in outbox]  # ...replies out
        for stage in stages:
            stage.join()

    print("replies:", len(replies))
    print("in request order:", [r[0] for r in replies] == list(range(100)))
    print("reply 7:", replies[7])

# expect: replies: 100
# expect: in request order: True
# expect: reply 7: (7, 28672)
