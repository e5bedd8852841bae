// Errors: the one place where the core's (and the shm layer's) statuses become Python
// exceptions, and where C++ exceptions become a set Python error in the CPython slots.
//
// Every site that turns a Status into an exception calls raise_status(); the Status ->
// exception-class table and every message composed from a Status live in errors.cc. The
// classes are those of memchannel.errors, kept in this interpreter's module state
// (pybind/state.h): a raise looks them up there, it never imports.
#pragma once

#include <pybind11/pybind11.h>

#include <cxxabi.h>

#include <cstdint>
#include <new>
#include <string>
#include <string_view>

#include "core/status.h"
#include "shm/status.h"

namespace memchannel::py_glue {

namespace py = pybind11;

// The exception classes of memchannel.errors, as indexes into ModuleState::errors.
enum class ErrorClass : uint8_t {
  kMemChannelError,
  kEmpty,
  kFull,
  kChannelClosed,
  kChannelNotFound,
  kCapacityError,
  kCorruptionError,
  kWaitCancelled,
};
inline constexpr size_t kErrorClassCount = 8;
static_assert(static_cast<size_t>(ErrorClass::kWaitCancelled) + 1 == kErrorClassCount);

// The name of `cls` in memchannel.errors.
const char* error_class_name(ErrorClass cls);

// Bytes from an untrusted source (a forged block's format, a handle's name) for a message:
// printable ASCII as is, other bytes and backslashes escaped (\xNN), at most 80 shown.
std::string printable(std::string_view bytes);

// Raises memchannel.errors.<cls>(message) of this interpreter.
[[noreturn]] void raise_error(ErrorClass cls, const std::string& message);

// What a failed core call was doing, where that changes the translation: creating or attaching
// a shared-memory arena fails for reasons of its segments (recorded by the shm backend of this
// thread), so those statuses say so and name the segment instead of taking the per-call meaning.
enum class Origin : uint8_t {
  kCall,       // any call; `context` says what failed (may be empty: the class's default message)
  kShmCreate,  // Arena::create over a ShmBackend; `context` is the segment-0 name
  kShmAttach,  // Arena::attach over a ShmBackend; `context` is the segment-0 name
};

// The one translation of a core Status into a Python exception.
//   kEmpty -> Empty, kFull / kOutOfCapacity -> Full, kClosed -> ChannelClosed,
//   kTooLarge -> CapacityError, kInvalidArgument -> ValueError, kNotFound -> ChannelNotFound,
//   corruption (and kDoubleRelease) -> CorruptionError, anything else -> MemChannelError;
// with Origin::kShmAttach: kNotReady -> MemChannelError (a creator died), kBadMagic and
// kVersionMismatch -> CorruptionError, kNotFound -> ChannelNotFound, else MemChannelError;
// with Origin::kShmCreate: kOutOfCapacity as for a call ("creating a shm arena"), anything
// else MemChannelError with the segment's reason.
[[noreturn]] void raise_status(Status s, const std::string& context, Origin origin = Origin::kCall);

// The shm layer's status of probing segment 0 of an existing arena (`segment`) before an
// attach: kNotFound -> ChannelNotFound, anything else -> MemChannelError with the errno.
[[noreturn]] void raise_status(shm::Status s, int sys_errno, const std::string& segment);

// Runs the body of a CPython slot or METH_FASTCALL method, turning C++ exceptions (pybind11's
// included) into a set Python error and returning `on_error`. Not noexcept, and
// abi::__forced_unwind (pthread_exit at interpreter exit) passes through: see pybind/gil.h.
template <typename F>
auto guarded(F&& f, decltype(f()) on_error) -> decltype(f()) {
  try {
    return f();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return on_error;
}

}  // namespace memchannel::py_glue
