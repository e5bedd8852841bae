"""One argument switches the executor; memchannel.compare runs the same work every way,
checks the results agree, and reports what each way costs.

Run: python docs/examples/parallelism_compare.py   (from docs/guide-parallelism.md)
(The guide's full-size runs: python -m memchannel compare --workload cpu|arrays --png ...)
"""
import os

import memchannel as mc
from memchannel.compare import ResultsDiffer
from memchannel.executor import make_executor


def sum_of_squares(n):
    return sum(i * i for i in range(n))


def which_process(x):  # a result that depends on where the task ran
    return x, os.getpid()


if __name__ == "__main__":
    for kind in ("serial", "threads", "interpreters", "processes", "processes-pickle"):
        with make_executor(kind, max_workers=2) as pool:
            print(f"{kind}:", list(pool.map(sum_of_squares, [10, 100, 1000])))

    report = mc.compare(sum_of_squares, [30_000] * 8, workers=(2,), overhead_tasks=20)
    print(report.table())  # timings vary from run to run and machine to machine
    print("kinds:", [row.kind for row in report.rows])
    print("same results every way:", len({tuple(r) for r in report.results.values()}) == 1)

    try:
        mc.compare(which_process, [1, 2], kinds=("serial", "processes"), workers=(1,))
    except ResultsDiffer as exc:
        print("ResultsDiffer:", str(exc).split(":")[0])

# expect: serial: [285, 328350, 332833500]
# expect: threads: [285, 328350, 332833500]
# expect: interpreters: [285, 328350, 332833500]
# expect: processes: [285, 328350, 332833500]
# expect: processes-pickle: [285, 328350, 332833500]
# expect: kind
# expect: interpreters      2
# expect: kinds: ['serial', 'threads', 'interpreters', 'processes', 'processes-pickle']
# expect: same results every way: True
# expect: ResultsDiffer: results differ by kind
