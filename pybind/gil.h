// Dropping and re-taking the GIL safely while the interpreter may be finalizing, and
// cancelling the waits of one interpreter (docs/reliability.md, item 17).
//
// Why this exists. CPython 3.12 and 3.13 end a thread that tries to take the GIL after
// finalization has started (a daemon thread once the main thread returned, any thread of a
// subinterpreter being ended) with PyThread_exit_thread(), that is pthread_exit(). glibc
// implements pthread_exit as a *forced unwind* (abi::__forced_unwind) through every frame on
// the thread's stack. C++ frames survive that only if the unwind may pass through them: a
// forced unwind that reaches a noexcept function, or a destructor (destructors are noexcept),
// calls std::terminate ("terminate called without an active exception", SIGABRT, exit 134).
// pybind11's gil_scoped_release re-takes the GIL in its destructor, so any memchannel call
// that had dropped the GIL aborted the process when it came back during finalization.
//
// The fix, at the root:
//   * the GIL is re-taken only by reacquire_gil(), a plain function (never a destructor);
//   * before re-taking it, reacquire_gil() checks whether the runtime is finalizing; if so,
//     the thread never touches Python again: it parks until the process exits (what 3.14
//     itself does for such threads), so no unwind happens at all and the process exits with
//     the program's own exit code;
//   * for the window between that check and PyEval_RestoreThread, every memchannel frame
//     that can be on the stack lets a forced unwind through (no noexcept, no catch(...) that
//     swallows; `guarded` rethrows abi::__forced_unwind), so pthread_exit ends the thread
//     cleanly instead of aborting.
#pragma once

#include <Python.h>

#include <cstdint>
#include <exception>
#include <optional>
#include <type_traits>
#include <utility>

namespace memchannel::py_glue {

// True once the runtime (the main interpreter) has started finalizing.
bool runtime_finalizing();

// Re-takes the GIL for `tstate` (from PyEval_SaveThread). Never returns while the runtime is
// finalizing: the thread parks until the process exits.
void reacquire_gil(PyThreadState* tstate);

// Runs f() with the GIL released and returns its result. Unlike py::gil_scoped_release the
// GIL is re-taken by reacquire_gil(), outside any destructor. f must not touch Python.
template <typename F>
auto without_gil(F&& f) -> decltype(f()) {
  PyThreadState* tstate = PyEval_SaveThread();
  if constexpr (std::is_void_v<decltype(f())>) {
    try {
      f();
    } catch (...) {
      reacquire_gil(tstate);
      throw;
    }
    reacquire_gil(tstate);  // outside the try: a forced unwind from here is never caught
  } else {
    std::optional<decltype(f())> result;
    try {
      result.emplace(f());
    } catch (...) {
      reacquire_gil(tstate);
      throw;
    }
    reacquire_gil(tstate);
    return std::move(*result);
  }
}

// Cancellation of blocking memchannel calls, per interpreter (by PyInterpreterState id).
// A blocking call wakes at least every kCancelSliceNs and, with the GIL held again, raises
// memchannel.WaitCancelled if its interpreter's waits were cancelled. Used by
// memchannel.interpreters: Interpreter.close() on a busy interpreter, and interpreter exit.
inline constexpr int64_t kCancelSliceNs = 100'000'000;
void cancel_waits(int64_t interpreter_id);
void uncancel_waits(int64_t interpreter_id);
// Cheap: one relaxed load unless some interpreter's waits are cancelled.
bool waits_cancelled(int64_t interpreter_id);

// The program is ending because of Ctrl-C, but CPython may report exit code 1 instead of
// dying by SIGINT: its "KeyboardInterrupt reached the top" flag is process-wide and is reset
// by any exec() of source text in any interpreter (a subinterpreter that memchannel stopped
// and that then imports a module doing so). This registers a C atexit handler that ends the
// process by SIGINT after Python has finalized, as CPython itself does for such an exit.
void exit_by_sigint_at_exit();

}  // namespace memchannel::py_glue
