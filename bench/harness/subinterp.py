"""Run code in an isolated subinterpreter (own GIL) on a thread of its own.

Uses ``memchannel.interpreters`` when it is importable and works, else the stdlib's
private modules directly: ``_interpreters`` (3.13) or ``_xxsubinterpreters`` (3.12).
"""

import os
import threading

# MEMCHANNEL_BENCH_SUBINTERP=stdlib forces the stdlib modules (to tell their bugs apart)
FORCE = os.environ.get("MEMCHANNEL_BENCH_SUBINTERP", "")


class _Stdlib:
    name = "stdlib"

    def __init__(self):
        try:
            import _interpreters as mod
            self._run = mod.exec
        except ImportError:
            import _xxsubinterpreters as mod
            self._run = mod.run_string
        self.mod = mod
        try:
            self.id = mod.create("isolated")
        except TypeError:
            self.id = mod.create(isolated=True)

    def exec(self, code):
        err = self._run(self.id, code)
        if err is not None:          # 3.13 returns an exception snapshot instead of raising
            raise RuntimeError(f"subinterpreter raised: {getattr(err, 'formatted', err)}")

    def close(self):
        self.mod.destroy(self.id)


class _Memchannel:
    name = "memchannel.interpreters"

    def __init__(self):
        from memchannel import interpreters
        self.interp = interpreters.create()

    def exec(self, code):
        self.interp.exec(code)

    def close(self):
        self.interp.close()


def backend_name():
    if FORCE == "stdlib":
        return _Stdlib.name
    try:
        from memchannel import interpreters  # noqa: F401
        return _Memchannel.name
    except Exception:  # noqa: BLE001 - not there yet, or not importable here
        return _Stdlib.name


def create():
    if FORCE == "stdlib":
        return _Stdlib()
    try:
        return _Memchannel()
    except Exception:  # noqa: BLE001 - fall back to the stdlib modules
        return _Stdlib()


class SubinterpreterThread:
    """A thread whose whole life is ``interp.exec(code)`` in a fresh isolated interpreter."""

    def __init__(self, code):
        self.code = code
        self.error = None
        self.interp = create()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self):
        try:
            self.interp.exec(self.code)
        except BaseException as exc:  # noqa: BLE001 - reported by the worker
            self.error = exc

    def start(self):
        self.thread.start()

    def is_alive(self):
        return self.thread.is_alive()

    def join(self, timeout=None):
        self.thread.join(timeout)
        if not self.thread.is_alive():
            try:
                self.interp.close()
            except Exception:  # noqa: BLE001 - best effort
                pass
