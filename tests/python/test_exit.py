"""Interpreter exit never aborts (docs/reliability.md, item 17).

Each case is a small program run in a fresh process: threads are blocked in memchannel calls
when the program ends (daemon threads in the main interpreter, subinterpreters in daemon
threads, sys.exit(n), a return, an uncaught exception, Ctrl-C), or when an interpreter is
closed under a waiting thread. The process must end with the program's own exit code, never
with SIGABRT ("terminate called without an active exception") or a fatal error.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

BAD_OUTPUT = ("terminate called", "Fatal Python error", "core dumped", "Segmentation fault")

# A daemon thread sits in one blocking call per case; `ch` exists, `mc` is imported.
BLOCKING_CALLS = {
    "Channel.recv": "ch.recv()",
    "Channel.recv_object": "ch.recv_object()",
    "Channel iteration": "[b for b in ch]",
    "Channel.send on a full channel": "full.send(b'y')",
    "Channel.send_object on a full channel": "full.send_object([1, 2])",
    "Channel.reserve on a full arena": "small.reserve(12 * 1024)",
    "Queue.get": "mc.Queue().get()",
    "SimpleQueue.get": "mc.SimpleQueue().get()",
    "JoinableQueue.get": "mc.JoinableQueue().get()",
    "Queue.put on a full queue": "fq.put(2)",
    "JoinableQueue.join": "jq.join()",
}

PRELUDE = """
import sys, threading, time
import memchannel as mc
BACKEND = {backend!r}
ch = mc.Channel(backend=BACKEND)
full = mc.Channel(1, backend=BACKEND); full.send(b"x")
small_arena = mc.Arena(capacity=256 * 1024, backend=BACKEND)
small = small_arena.channel()
held = []
while True:  # fill the arena
    try:
        held.append(small.reserve(12 * 1024, timeout=0))
    except mc.Full:
        break
fq = mc.Queue(1); fq.put(1)
jq = mc.JoinableQueue(); jq.put(1)
started = threading.Event()
"""


def run_program(source, *, env_extra=None, timeout=60, signal_after=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(source)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if signal_after is not None:
        # Ctrl-C once the program says it is ready, and its threads had time to block.
        first_line = proc.stdout.readline()
        assert first_line.strip() == "ready", (first_line, proc.stderr.read())
        time.sleep(signal_after)
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the program did not exit within {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    for bad in BAD_OUTPUT:
        assert bad not in err, f"{bad!r} in stderr:\n{err}"
    return proc.returncode, out, err


def daemon_program(call, backend, ending):
    return PRELUDE.format(backend=backend) + textwrap.dedent(f"""
        def blocked():
            started.set()
            {call}
        for _ in range(3):  # several threads, so some come back while the runtime finalizes
            threading.Thread(target=blocked, daemon=True).start()
        started.wait()
        time.sleep(0.25)  # let them block (a sleep is the point: nothing signals "blocked")
        {ending}
    """)


@pytest.mark.parametrize("call", sorted(BLOCKING_CALLS))
@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_daemon_thread_blocked_at_sys_exit(call, backend):
    rc, _, err = run_program(daemon_program(BLOCKING_CALLS[call], backend, "sys.exit(7)"))
    assert rc == 7, err


@pytest.mark.parametrize("ending,code", [("pass", 0), ("raise RuntimeError('boom')", 1),
                                         ("import os; os._exit(5)", 5)])
def test_daemon_threads_blocked_at_every_kind_of_end(ending, code):
    calls = "; ".join(f"threading.Thread(target=lambda: {c}, daemon=True).start()"
                      for c in BLOCKING_CALLS.values())
    source = PRELUDE.format(backend="shm") + f"""
{calls}
time.sleep(0.3)
{ending}
"""
    rc, _, err = run_program(source)
    assert rc == code, err


def test_daemon_thread_copying_without_the_gil_at_exit():
    # Large writes and copies drop the GIL; they come back while the runtime finalizes.
    source = """
import sys, threading, time
import memchannel as mc
ch = mc.Channel()
payload = bytes(8 << 20)
def copier():
    while True:
        buf = ch.reserve(len(payload))
        buf.write(payload)
        buf.release()
        ch.send(payload)
        ch.recv().release()
for _ in range(2):
    threading.Thread(target=copier, daemon=True).start()
time.sleep(0.3)
sys.exit(4)
"""
    for _ in range(3):
        rc, _, err = run_program(source)
        assert rc == 4, err


def test_forced_unwind_through_memchannel_frames_is_clean():
    # The second line of defence: with parking disabled, a returning wait meets CPython's
    # PyThread_exit_thread() (pthread_exit, a forced unwind through our C++ frames).
    source = daemon_program("ch.recv(timeout=0.3)\n            ch.recv()", "shm",
                            "time.sleep(0.2); sys.exit(9)")
    for _ in range(3):
        rc, _, err = run_program(source, env_extra={"MEMCHANNEL_TEST_FORCED_UNWIND": "1"})
        assert rc == 9, err


SUBINTERPRETER_PRELUDE = """
import os, sys, threading, time
import memchannel as mc
from memchannel import interpreters
ch = mc.Channel(backend={backend!r})
interp = interpreters.create()
"""

SUB_RECV = "import memchannel as mc; mc.Channel.attach({handle!r}).recv()"


@pytest.mark.parametrize("backend", ["heap", "shm"])
def test_interpreter_close_ends_a_waiting_call_in_thread(backend):
    source = SUBINTERPRETER_PRELUDE.format(backend=backend) + """
from tests_helper_exit import wait_forever
t = interp.call_in_thread(wait_forever, ch.handle)
deadline = time.monotonic() + 10
while not interp.is_running() and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.2)
t0 = time.monotonic()
interp.close()
took = time.monotonic() - t0
t.join()
print(type(t.exception).__name__, t.exception.excinfo.type_name, round(took, 3))
assert took < 1.0, took
ch.send(b"still works")
assert ch.recv().tobytes() == b"still works"
"""
    rc, out, err = run_program(source, env_extra={"PYTHONPATH": _helper_path()})
    assert rc == 0, err
    assert out.split()[:2] == ["ExecutionFailed", "WaitCancelled"], out
    assert "Exception in thread" not in err, err  # close() stopped it on purpose: no report


def test_interpreter_close_ends_a_waiting_exec_thread():
    source = SUBINTERPRETER_PRELUDE.format(backend="shm") + """
errors = []
def run():
    try:
        interp.exec(%r %% {"handle": ch.handle})
    except interpreters.ExecutionFailed as exc:
        errors.append(exc.excinfo.type_name)
t = threading.Thread(target=run); t.start()
while not interp.is_running():
    time.sleep(0.01)
time.sleep(0.2)
interp.close()
t.join()
print(errors)
""" % SUB_RECV.replace("{handle!r}", "%(handle)r")
    rc, out, err = run_program(source)
    assert rc == 0, err
    assert out.strip() == "['WaitCancelled']", (out, err)


def test_interpreter_close_of_busy_non_waiting_code_still_refuses():
    source = SUBINTERPRETER_PRELUDE.format(backend="heap") + """
t = threading.Thread(target=interp.exec, args=("import time; time.sleep(4)",)); t.start()
while not interp.is_running():
    time.sleep(0.01)
try:
    interp.close()
except interpreters.InterpreterError as exc:
    print("refused:", exc)
t.join()
interp.close()
"""
    rc, out, err = run_program(source)
    assert rc == 0, err
    assert "refused:" in out and "did not stop" in out, out


def test_ctrl_c_ends_a_subinterpreter_blocked_in_recv():
    source = SUBINTERPRETER_PRELUDE.format(backend="shm") + """
from tests_helper_exit import wait_forever
t = interp.call_in_thread(wait_forever, ch.handle)
while not interp.is_running():
    time.sleep(0.01)
print("ready", flush=True)
time.sleep(60)
"""
    t0 = time.monotonic()
    rc, _, err = run_program(source, env_extra={"PYTHONPATH": _helper_path()}, signal_after=0.5)
    assert time.monotonic() - t0 < 15
    assert rc in (130, -signal.SIGINT), (rc, err)
    assert "KeyboardInterrupt" in err


def test_daemon_thread_running_a_blocked_subinterpreter_at_exit():
    source = SUBINTERPRETER_PRELUDE.format(backend="shm") + """
from tests_helper_exit import wait_forever
threading.Thread(target=interp.call, args=(wait_forever, ch.handle), daemon=True).start()
while not interp.is_running():
    time.sleep(0.01)
time.sleep(0.2)
sys.exit(6)
"""
    rc, _, err = run_program(source, env_extra={"PYTHONPATH": _helper_path()})
    assert rc == 6, err


@pytest.mark.parametrize("kind", ["interpreters", "processes"])
def test_idle_executor_workers_waiting_for_tasks_at_exit(kind):
    # Worker interpreters and the pool's own threads wait in memchannel calls for tasks.
    source = f"""
import sys
import memchannel as mc
from memchannel import executor
pool = executor.make_executor({kind!r}, 2)
assert pool.submit(pow, 2, 5).result(timeout=60) == 32
sys.exit(3)
"""
    rc, _, err = run_program(source)
    assert rc == 3, err


def test_ctrl_c_with_an_executor_task_blocked_in_recv():
    source = """
import time
import memchannel as mc
from tests_helper_exit import wait_forever
ch = mc.Channel()
pool = mc.InterpreterPoolExecutor(2)
assert pool.submit(pow, 2, 5).result(timeout=60) == 32
fut = pool.submit(wait_forever, ch.handle)
print("ready", flush=True)
time.sleep(60)
"""
    t0 = time.monotonic()
    rc, _, err = run_program(source, env_extra={"PYTHONPATH": _helper_path()}, signal_after=1.0)
    assert time.monotonic() - t0 < 20
    assert rc in (130, -signal.SIGINT), (rc, err)


def _helper_path():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.pathsep.join([os.path.join(here, "exit_helpers"), os.environ.get("PYTHONPATH", "")])
