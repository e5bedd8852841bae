"""Command line: ``python -m memchannel <command>``.

    cleanup   remove shared-memory segments whose every process is dead
    list      list memchannel segments in /dev/shm
    demo      the demo (`make demo`)
    bench     side-by-side benchmarks (from a source checkout: `make bench`)
    compare   process vs interpreter vs thread parallelism on a workload
"""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_cleanup(args) -> int:
    from . import _memchannel

    removed = _memchannel._cleanup(args.prefix or "")
    if removed:
        for name in removed:
            print(f"removed /dev/shm/{name}")
        print(f"{len(removed)} segment(s) of dead processes removed")
    else:
        print("nothing to remove: every memchannel segment has a live process attached")
    return 0


def _cmd_list(args) -> int:
    from . import _memchannel

    names = _memchannel._list_segments(args.prefix or "")
    for name in names:
        try:
            size = os.stat(f"/dev/shm/{name}").st_size
        except OSError:
            size = -1
        print(f"{name}\t{size} bytes")
    if not names:
        print("no memchannel segments in /dev/shm")
    return 0


def _cmd_demo(args) -> int:
    from . import demo

    return demo.main(args.rest)


def _find_checkout() -> str | None:
    for start in (os.getcwd(), os.path.dirname(os.path.abspath(__file__))):
        d = start
        while d != os.path.dirname(d):
            if os.path.isdir(os.path.join(d, "bench", "harness")):
                return d
            d = os.path.dirname(d)
    return None


def _cmd_bench(args) -> int:
    checkout = _find_checkout()
    if checkout is None:
        print("the benchmark harness lives in the source checkout (bench/harness); run "
              "`make bench` or `python -m memchannel bench` from the repository", file=sys.stderr)
        return 2
    sys.path.insert(0, checkout)
    os.chdir(checkout)
    from bench.harness import cli

    return cli.main(args.rest)


def _cmd_compare(args) -> int:
    from . import compare

    return compare.main(args.rest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memchannel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cleanup", help="remove segments left by dead processes")
    p.add_argument("--prefix", help="segment name prefix (default: memchannel- or $MEMCHANNEL_SHM_PREFIX)")
    p.set_defaults(func=_cmd_cleanup)
    p = sub.add_parser("list", help="list memchannel segments")
    p.add_argument("--prefix")
    p.set_defaults(func=_cmd_list)
    for name, func, text in (("demo", _cmd_demo, "run the demo"),
                             ("bench", _cmd_bench, "run the side-by-side benchmarks"),
                             ("compare", _cmd_compare, "compare processes, interpreters and threads")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.set_defaults(func=func, passthrough=True)
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error("unrecognized arguments: " + " ".join(rest))
    args.rest = rest
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
