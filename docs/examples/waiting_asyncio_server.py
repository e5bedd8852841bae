"""An asyncio server on loopback that hands requests to subinterpreter workers over channels
and awaits their replies: listener -> workers -> sender.

* listener: asyncio.start_server on 127.0.0.1; each connection's request lines go to the
  `requests` channel with `send_object_async` (a full channel makes the listener wait, which
  is back-pressure on the clients);
* workers: isolated subinterpreters (own GIL: they compute in parallel), each blocking in
  `recv_object` on `requests` and sending `(request id, reply)` to `replies`;
* sender: one coroutine awaiting `replies.recv_object_async()` and writing each reply to the
  connection whose request it answers.

The loop waits on the replies channel with no thread and no polling (one listener socket per
loop: docs/design.md, "Waiting on several channels: fd readiness").

Run: python docs/examples/waiting_asyncio_server.py   (from docs/guide-waiting.md)
"""
import asyncio
import hashlib
import itertools

import memchannel as mc
from memchannel import interpreters


def work(requests, replies):  # runs in a worker subinterpreter until `requests` is closed
    import hashlib  # noqa: F811 - imported inside the worker interpreter

    for request_id, text in iter(lambda: _next(requests), None):
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        replies.send_object((request_id, f"{text.upper()} {digest}"))


def _next(requests):
    try:
        return requests.recv_object()
    except mc.ChannelClosed:
        return None


async def serve(n_workers=2, n_clients=3, per_client=5):
    requests, replies = mc.Channel(maxsize=16), mc.Channel()
    workers = [interpreters.create() for _ in range(n_workers)]
    threads = [w.call_in_thread(work, requests, replies) for w in workers]
    pending = {}  # request id -> the future its connection awaits
    ids = itertools.count()

    async def sender():  # replies -> connections, until replies is closed and drained
        while True:
            try:
                request_id, text = await replies.recv_object_async()
            except mc.ChannelClosed:
                return
            pending.pop(request_id).set_result(text)

    async def on_connection(reader, writer):  # listener: one per client connection
        while line := await reader.readline():
            request_id = next(ids)
            pending[request_id] = asyncio.get_running_loop().create_future()
            await requests.send_object_async((request_id, line.decode().strip()))
            writer.write((await pending[request_id]).encode() + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sending = asyncio.create_task(sender())

    async def client(k):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for i in range(per_client):
            writer.write(f"client {k} request {i}\n".encode())
            await writer.drain()
            answers.append((await reader.readline()).decode().strip())
        writer.close()
        await writer.wait_closed()
        return answers

    results = await asyncio.gather(*(client(k) for k in range(n_clients)))
    server.close()
    await server.wait_closed()
    requests.close()  # the workers finish what is queued, then return
    for t in threads:  # (a thread only for this final join, not for any wait on a channel)
        await asyncio.to_thread(t.join)
    replies.close()
    await sending
    for w in workers:
        w.close()
    return results


if __name__ == "__main__":
    results = asyncio.run(serve())
    # expect: first answer: CLIENT 0 REQUEST 0
    print("first answer:", results[0][0])
    expected = hashlib.sha256(b"client 2 request 4").hexdigest()[:12]
    # expect: last answer ok: True
    print("last answer ok:", results[2][4] == f"CLIENT 2 REQUEST 4 {expected}")
    # expect: answers: 15
    print("answers:", sum(map(len, results)))
