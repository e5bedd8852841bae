"""docs/guide-cluster.md: the same comparison on one machine and on LocalClusters.

Threads, subinterpreters and processes here; then Dask: 1 worker process x 2 threads,
2 single-thread worker processes, and 1 worker process x 2 interpreters.  compare checks
that every way returns the same results.  (Tiny sizes: the figures mean nothing here.)
"""

from memchannel import compare
from memchannel.workloads import count_primes, prime_ranges


def main():
    report = compare(count_primes, prime_ranges(6, width=4_000),
                     kinds=("serial", "threads", "interpreters", "dask", "dask-processes",
                            "dask-interpreters"),
                     workers=(2,), dask="local", overhead_tasks=5)
    print(report.table())
    # expect: kind
    # expect: LocalCluster: 1 worker process x 2 threads
    # expect: LocalCluster: 2 worker processes x 1 thread
    # expect: LocalCluster: 1 worker process x 2 interpreters
    print("results equal every way:", len({tuple(r) for r in report.results.values()}) == 1)
    # expect: results equal every way: True


if __name__ == "__main__":
    main()
