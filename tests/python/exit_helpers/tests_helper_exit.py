"""Functions the interpreter-exit tests run in subinterpreters and pool workers (importable
by name there, as interpreters.call() and the executor need)."""


def wait_forever(handle):
    import memchannel as mc

    return mc.Channel.attach(handle).recv()
