"""3.14's concurrent.interpreters API on 3.12/3.13: an interpreter, a queue, an echo.

Run: python docs/examples/interpreters_queue.py (guide: docs/interpreters.md)."""

from memchannel import interpreters


def echo(inbox: interpreters.Queue, outbox: interpreters.Queue) -> None:
    """Runs in the other interpreter: blocking gets, no polling."""
    while (item := inbox.get()) is not None:
        outbox.put(item * 2)


def main() -> None:
    requests = interpreters.create_queue()
    replies = interpreters.create_queue(maxsize=10)
    interp = interpreters.create()
    # expect: whence: _interpreters module
    print("whence:", interp.whence)
    # expect: lambda: 42
    print("lambda:", interp.call(lambda: 6 * 7))
    worker = interp.call_in_thread(echo, requests, replies)
    for n in (1, 2, 3):
        requests.put(n)
        # expect: echoed: 2
        print("echoed:", replies.get(timeout=10))
    requests.put(None)
    worker.join()
    try:
        replies.get(timeout=0.1)
    except interpreters.QueueEmpty:  # a queue.Empty too
        # expect: empty after the echo
        print("empty after the echo")
    interp.close()
    try:
        interp.close()
    except interpreters.InterpreterNotFoundError:
        # expect: closed twice: InterpreterNotFoundError
        print("closed twice: InterpreterNotFoundError")


if __name__ == "__main__":
    main()
