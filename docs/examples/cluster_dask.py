"""docs/guide-cluster.md: Dask workers that run pure-Python tasks in subinterpreters.

A LocalCluster of one worker process with 2 threads; the plugin gives the worker 2
isolated subinterpreters; annotated tasks run there, the others in the worker's threads.
"""

import dask
from distributed import Client, LocalCluster

from memchannel.dask import InterpreterExecutorPlugin, interpreter_stats, profiler_off
from memchannel.workloads import count_primes, prime_ranges


def main():
    ranges = prime_ranges(8, width=5_000)
    # Dask's profiler cannot run beside subinterpreters (the guide says why): off.
    with dask.config.set(profiler_off()):
        cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                               host="127.0.0.1", dashboard_address=":0")
    with cluster, Client(cluster) as client:
        client.register_plugin(InterpreterExecutorPlugin())   # 2 interpreters: the threads

        in_threads = client.gather(client.map(count_primes, ranges, pure=False))
        with dask.annotate(executor="interpreters"):
            futures = client.map(count_primes, ranges, pure=False)
        in_interpreters = client.gather(futures)
        print("primes per range:", in_interpreters)
        print("same as in the worker's threads:", in_interpreters == in_threads)
        # expect: same as in the worker's threads: True

        # An error keeps its type; the subinterpreter's traceback is a note on it.
        with dask.annotate(executor="interpreters"):
            bad = client.submit(count_primes, (10,), pure=False)   # not a (start, stop) pair
        try:
            bad.result()
        except ValueError as exc:
            print("error:", type(exc).__name__, "-", exc)
            print("note names the task:", "in count_primes" in "".join(exc.__notes__))
        # expect: error: ValueError
        # expect: note names the task: True

        stats = list(client.run(interpreter_stats).values())[0]
        print("interpreters in the worker:", stats["workers"], "tasks done:", stats["tasks_done"])
        # expect: interpreters in the worker: 2


if __name__ == "__main__":   # worker processes are spawned: they import this file
    main()
