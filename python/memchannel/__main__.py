"""Command line: ``python -m memchannel <command>``.

    info      versions, backends, per-interpreter GIL, /dev/shm room, segments and holders
    list      list memchannel segments in /dev/shm and the live processes that map them
    cleanup   remove shared-memory segments whose every process is dead (--dry-run: only show)
    demo      the demo (`make demo`)
    bench     where the side-by-side benchmarks are (`python -m bench.harness` in a checkout)
    compare   process vs interpreter vs thread parallelism on a workload (--dask, --ray: on a cluster too)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from collections.abc import Sequence

SHM_DIR = "/dev/shm"


def _version() -> str:
    from . import __version__

    return __version__


def _prefix(args: argparse.Namespace) -> str:
    return args.prefix or ""


def _arena_of(segment: str) -> str:
    """An arena's segments are NAME, NAME.1.<nonce>, NAME.2.<nonce>, ... (the growth segments;
    the nonce is 8 random hex digits the arena records, docs/shm.md)."""
    match = re.fullmatch(r"(.+)\.\d+\.[0-9a-f]{8}", segment)
    return match.group(1) if match else segment


def _mapping_processes(names: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """For each segment name: the live processes that have it mapped, as (pid, command).

    Read from /proc/PID/maps, so it sees every process this user may inspect (all of them
    for root); a process that attached to an arena maps its segments until it detaches.
    """
    wanted = {f"{SHM_DIR}/{name}": name for name in names}
    found: dict[str, list[tuple[int, str]]] = {name: [] for name in names}
    if not wanted:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                # address perms offset dev inode path
                paths = {parts[5].rstrip("\n") for parts in (line.split(maxsplit=5) for line in maps)
                         if len(parts) == 6}
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone, or not ours to read
        for path in paths:
            # A segment unlinked while mapped shows as "/dev/shm/NAME (deleted)".
            name = wanted.get(path)
            if name is not None:
                found[name].append((pid, command or f"[{pid}]"))
    return found


def _segments(prefix: str) -> list[tuple[str, int, list[tuple[int, str]]]]:
    from . import _memchannel

    names = _memchannel._list_segments(prefix)
    holders = _mapping_processes(names)
    rows = []
    for name in names:
        try:
            size = os.stat(f"{SHM_DIR}/{name}").st_size
        except OSError:
            size = -1
        rows.append((name, size, holders[name]))
    return rows


def _print_segments(rows: list[tuple[str, int, list[tuple[int, str]]]], indent: str = "") -> None:
    """One line per arena (its first segment, with the live processes that map the arena),
    then its growth segments indented under it."""
    if not rows:
        print(f"{indent}no memchannel segments in {SHM_DIR}")
        return
    for name, size, holders in rows:
        if _arena_of(name) != name and any(n == _arena_of(name) for n, _, _ in rows):
            print(f"{indent}  {name}\t{size} bytes")
            continue
        pids: dict[int, str] = {}
        for other, _, who in rows:
            if _arena_of(other) == name:
                pids.update(who)
        listed = ", ".join(f"{pid} ({command[:40]})" for pid, command in sorted(pids.items()))
        print(f"{indent}{name}\t{size} bytes\tlive processes: {listed or 'none'}")


def _cmd_list(args: argparse.Namespace) -> int:
    _print_segments(_segments(_prefix(args)))
    return 0


def _cmd_cleanup(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _cleanup_dry_run(_prefix(args))
    from . import _memchannel

    removed = _memchannel._cleanup(_prefix(args))
    if removed:
        for name in removed:
            print(f"removed {SHM_DIR}/{name}")
        print(f"{len(removed)} segment(s) of dead processes removed")
    else:
        print("nothing to remove: every memchannel segment has a live process attached")
    return 0


def _cleanup_dry_run(prefix: str) -> int:
    """What `cleanup` would remove: the arenas none of whose segments a live process maps.

    `cleanup` itself decides from the holder registry inside each arena; an attached process
    maps its arena's segments until it detaches, so the two agree except in two corners: a
    process that maps a segment without being a holder (a fork child that inherited the
    mapping, while the holders are dead) keeps it here, and a segment whose creator is still
    initialising it (no mapping yet, for a moment) is listed here while cleanup waits for it.
    """
    rows = _segments(prefix)
    arenas: dict[str, list[tuple[str, int, list[tuple[int, str]]]]] = {}
    for row in rows:
        arenas.setdefault(_arena_of(row[0]), []).append(row)
    doomed = [row for group in arenas.values() if not any(holders for _, _, holders in group)
              for row in group]
    for name, size, _ in doomed:
        print(f"would remove {SHM_DIR}/{name}\t{size} bytes")
    kept = len(rows) - len(doomed)
    if doomed:
        print(f"{len(doomed)} segment(s) would be removed, {kept} kept (a live process maps them); "
              "nothing was removed (--dry-run)")
    else:
        print(f"nothing to remove: {kept} segment(s), each arena mapped by a live process; "
              "nothing was removed (--dry-run)")
    return 0


def _per_interpreter_gil() -> str:
    """Whether an isolated subinterpreter (its own GIL) can import the extension: tried."""
    try:
        from . import interpreters

        with interpreters.create() as interp:
            interp.exec("import memchannel._memchannel")
    except Exception as exc:  # any failure means "no", with the reason
        return f"no ({type(exc).__name__}: {exc})"
    return "yes (an isolated subinterpreter with its own GIL imported memchannel._memchannel)"


def _human(nbytes: int) -> str:
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{nbytes} B"
        value /= 1024
    raise AssertionError("unreachable")


def _cmd_info(args: argparse.Namespace) -> int:
    import memchannel

    try:
        from . import _build_info  # written by CMakeLists.txt into the installed package
    except ImportError:
        _build_info = None  # type: ignore[assignment]
    print(f"memchannel {_version()} ({os.path.dirname(os.path.abspath(memchannel.__file__))})")
    print(f"Python {platform.python_version()} ({platform.python_implementation()}, {sys.executable})")
    if _build_info is not None:
        print(f"pybind11 {_build_info.pybind11} (built against)")
        print(f"Boost {_build_info.boost}")
        werror = ", -Werror" if _build_info.werror else ""
        print(f"compiler {_build_info.compiler} ({_build_info.build_type}{werror})")
    else:
        print("pybind11 unknown (no build record in this install)")
    try:
        import numpy
    except ImportError:
        print("numpy not installed (optional: arrays and dtypes work without it)")
    else:
        print(f"numpy {numpy.__version__}")
    print("backends: shm (shared memory: any process on this host; the default), "
          "heap (this process only)")
    print(f"per-interpreter GIL: {_per_interpreter_gil()}")
    try:
        st = os.statvfs(SHM_DIR)
    except OSError as exc:
        print(f"{SHM_DIR}: unavailable ({exc.strerror})")
    else:
        size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        print(f"{SHM_DIR}: size {_human(size)}, free {_human(free)} ({size} and {free} bytes)")
    rows = _segments(_prefix(args))
    print(f"segments: {len(rows)}")
    _print_segments(rows, indent="  ")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.main(args.rest)


def _cmd_bench(args: argparse.Namespace) -> int:
    print("the side-by-side benchmarks are not part of the installed package: from a source "
          "checkout, run `python -m bench.harness` (or `make bench`, which installs the peers "
          "first) in the repository's top directory", file=sys.stderr)
    return 2


def _cmd_compare(args: argparse.Namespace) -> int:
    from . import compare

    return compare.main(args.rest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memchannel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"memchannel {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    prefix_help = "segment name prefix (default: memchannel- or $MEMCHANNEL_SHM_PREFIX)"
    p = sub.add_parser("info", help="versions, backends, /dev/shm room, segments and their holders")
    p.add_argument("--prefix", help=prefix_help)
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("cleanup", help="remove segments left by dead processes")
    p.add_argument("--prefix", help=prefix_help)
    p.add_argument("--dry-run", action="store_true",
                   help="list the segments no live process maps (what cleanup removes), remove nothing")
    p.set_defaults(func=_cmd_cleanup)
    p = sub.add_parser("list", help="list memchannel segments and the live processes that map them")
    p.add_argument("--prefix", help=prefix_help)
    p.set_defaults(func=_cmd_list)
    for name, func, text in (("demo", _cmd_demo, "run the demo"),
                             ("bench", _cmd_bench, "where the benchmark harness is (a source checkout)"),
                             ("compare", _cmd_compare, "compare processes, interpreters and threads")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.set_defaults(func=func, passthrough=True)
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error("unrecognized arguments: " + " ".join(rest))
    args.rest = rest
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
