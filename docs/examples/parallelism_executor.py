"""InterpreterPoolExecutor: a concurrent.futures executor whose workers are isolated
subinterpreters (each with its own GIL), on CPython 3.12 and 3.13.

Run: python docs/examples/parallelism_executor.py   (from docs/guide-parallelism.md)

Tasks are found by module and qualified name, like multiprocessing's spawn: the functions
below live in this script, which each worker imports again under another name, so the
work at the bottom stays under `if __name__ == "__main__":`.
"""
import memchannel as mc
from memchannel import interpreters


def count_primes(bounds):  # pure-Python CPU work: runs in parallel in interpreters
    start, stop = bounds
    count = 0
    for n in range(start, stop):
        if n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1)):
            count += 1
    return count


def check_positive(x):
    if x < 0:
        raise ValueError(f"negative input: {x}")
    return x


SCALE = 1


def set_scale(scale):  # the initializer: runs once in each new worker
    global SCALE
    SCALE = scale


def scaled(x):
    return x * SCALE


if __name__ == "__main__":
    ranges = [(n, n + 10_000) for n in range(0, 80_000, 10_000)]
    with mc.InterpreterPoolExecutor(max_workers=2) as pool:
        print("primes per range:", list(pool.map(count_primes, ranges)))
        print("with chunksize=4:", list(pool.map(count_primes, ranges, chunksize=4)))

        future = pool.submit(check_positive, -3)
        try:
            future.result()
        except ValueError as exc:  # the worker's exception, same type
            print("ValueError:", exc)
            print("worker traceback attached:", "check_positive" in str(exc.__cause__))

    with mc.InterpreterPoolExecutor(2, initializer=set_scale, initargs=(10,)) as pool:
        print("initialized workers:", list(pool.map(scaled, [1, 2, 3])))
    print("SCALE here is still", SCALE)
    print("interpreters left after shutdown:", len(interpreters.list_all()))  # only main

# expect: primes per range: [1229, 1033, 983, 958, 930, 924, 878, 902]
# expect: with chunksize=4: [1229, 1033, 983, 958, 930, 924, 878, 902]
# expect: ValueError: negative input: -3
# expect: worker traceback attached: True
# expect: initialized workers: [10, 20, 30]
# expect: SCALE here is still 1
# expect: interpreters left after shutdown: 1
