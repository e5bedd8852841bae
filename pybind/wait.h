// Waiting: the GIL released around blocking core calls, float timeouts on the monotonic clock,
// Ctrl-C in the main interpreter, and the cancellation of an interpreter's waits.
//
// One rule for every call that takes a timeout (timeout_seconds), one way to build the core's
// WaitSpec from (block, timeout) (make_wait), and one wait loop (wait_with_gil_released).
// Header-only: these sit on the per-message path and are inlined into it.
#pragma once

#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "core/futex.h"
#include "core/status.h"
#include "core/waiter.h"
#include "pybind/errors.h"
#include "pybind/gil.h"

namespace memchannel::py_glue {

inline constexpr int64_t kSignalSliceNs = 100'000'000;    // main interpreter: check signals at 10 Hz
inline constexpr int64_t kLivenessSliceNs = 200'000'000;  // shm: look for dead peers at 5 Hz

// A timeout argument in seconds, or -1 for None. One rule for every call that takes a timeout
// (send, recv, reserve, send_object, ...), checked even with block=False: None or any real
// number (int, float, numpy integers and floats, anything with __index__ or __float__) that is
// not negative and not NaN; bools (Python's and numpy's) are refused, they are not durations.
inline double timeout_seconds(PyObject* t) {
  if (t == Py_None) return -1;
  double seconds = 0;
  if (PyFloat_Check(t)) {
    seconds = PyFloat_AS_DOUBLE(t);
  } else {
    const char* type_name = Py_TYPE(t)->tp_name;
    const bool numpy_bool = std::strcmp(type_name, "numpy.bool") == 0 || std::strcmp(type_name, "numpy.bool_") == 0;
    const bool index = !PyBool_Check(t) && !numpy_bool && PyIndex_Check(t);
    const bool real = !PyBool_Check(t) && !numpy_bool && !index && Py_TYPE(t)->tp_as_number != nullptr &&
                      Py_TYPE(t)->tp_as_number->nb_float != nullptr;
    if (!index && !real) {
      throw py::type_error("timeout must be None or a number of seconds (int or float), got " +
                           std::string(type_name));
    }
    py::object number = py::reinterpret_steal<py::object>(index ? PyNumber_Index(t) : PyNumber_Float(t));
    if (!number) throw py::error_already_set();
    if (index) {
      seconds = PyLong_AsDouble(number.ptr());
      if (seconds == -1.0 && PyErr_Occurred()) {  // beyond a double: as good as infinite, or negative
        PyErr_Clear();
        seconds = PyObject_RichCompareBool(number.ptr(), py::int_(0).ptr(), Py_LT) == 1 ? -1.0 : HUGE_VAL;
      }
    } else {
      seconds = PyFloat_AS_DOUBLE(number.ptr());
    }
  }
  if (std::isnan(seconds) || seconds < 0) {
    throw py::value_error("timeout must be a non-negative number of seconds or None, got " +
                          std::string(py::repr(t)));
  }
  return seconds;
}

inline WaitSpec make_wait(bool block, const py::object& timeout, bool shared = false) {
  WaitSpec spec;
  const double seconds = timeout_seconds(timeout.ptr());
  if (!block) return WaitSpec::nonblocking();
  if (seconds >= 0) {
    if (seconds < 1e9) {
      spec.deadline_ns = monotonic_ns() + static_cast<int64_t>(seconds * 1e9);
      if (seconds == 0) spec.spin_ns = 0;
    }
  }
  // Every blocking wait wakes at least every kCancelSliceNs, so it can be cancelled
  // (Interpreter.close(), interpreter exit); on shared memory it also reclaims dead peers.
  spec.slice_ns = kCancelSliceNs;
  if (shared) spec.slice_ns = kLivenessSliceNs;
  if (PyInterpreterState_Get() == PyInterpreterState_Main()) spec.slice_ns = kSignalSliceNs;
  return spec;
}

template <typename R>
Status status_of(const R& r) {
  if constexpr (std::is_same_v<R, Status>) return r; else return r.status;
}

// Runs `attempt(spec)` without the GIL until it returns something other than kInterrupted,
// checking between slices for signals (KeyboardInterrupt), for a cancellation of this
// interpreter's waits (WaitCancelled). Dead peers are reclaimed by the core's own waits
// (Channel's sweeping waits), so a wait never depends on a dead process. The GIL is re-taken
// by reacquire_gil(), never by a destructor: see pybind/gil.h for why that matters at
// interpreter exit.
template <typename Attempt>
auto wait_with_gil_released(WaitSpec spec, Attempt&& attempt) {
  const int64_t interp_id = PyInterpreterState_GetID(PyInterpreterState_Get());
  for (;;) {
    auto result = without_gil([&] { return attempt(spec); });
    if (status_of(result) != Status::kInterrupted) return result;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (waits_cancelled(interp_id)) {
      raise_error(ErrorClass::kWaitCancelled, "the wait was cancelled: this interpreter is being closed");
    }
  }
}

// Runs f() (which may drop the GIL and wait) while the caller owns `objs`. A forced unwind
// out of f() (pthread_exit of a thread that came back while the runtime finalizes, see
// pybind/gil.h) must not Py_DECREF them: the thread no longer has a thread state, and the
// decref would free into an allocator it cannot reach. They are leaked instead (the process
// is exiting); any other exception leaves them to their destructors, GIL held.
template <typename F, typename... Objects>
auto keeping(F&& f, Objects&... objs) -> decltype(f()) {
  try {
    return f();
  } catch (abi::__forced_unwind&) {
    (static_cast<void>(objs.release()), ...);
    throw;
  }
}

// The channel operations are lock-free and take well under a microsecond, less than dropping
// and re-taking the GIL (two mutex round trips). So a call first tries once with the GIL held
// and drops the GIL only when it has to wait (channel full or empty, arena out of space).
template <typename Attempt>
auto attempt_then_wait(const WaitSpec& spec, Attempt&& attempt) {
  auto first = attempt(WaitSpec::nonblocking());
  const Status s = status_of(first);
  if ((s != Status::kFull && s != Status::kEmpty) || spec.deadline_ns == 0) return first;
  return wait_with_gil_released(spec, std::forward<Attempt>(attempt));
}

}  // namespace memchannel::py_glue
