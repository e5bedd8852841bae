#include "pybind/errors.h"

#include <cstdio>
#include <cstring>

#include "pybind/state.h"
#include "shm/backend/shm_backend.h"

namespace memchannel::py_glue {
namespace {

// The reason a shm arena could not be created or attached, from what its backend (already
// destroyed by the failed Arena::create / attach) recorded for this thread.
std::string shm_reason(Status s) {
  if (s == Status::kNoHolderSlot) return to_string(s);
  const shm::Outcome o = shm::take_last_failure_in_thread();
  if (o.ok()) return to_string(s);
  std::string why = shm::to_string(o.status);
  if (o.sys_errno != 0) why += std::string(" (errno ") + std::to_string(o.sys_errno) + ": " + std::strerror(o.sys_errno) + ")";
  return why;
}

[[noreturn]] void raise_attach_status(Status s, const std::string& name) {
  switch (s) {
    case Status::kNotReady:
      raise_error(ErrorClass::kMemChannelError, "shared-memory arena '" + name +
                                                    "' was never fully initialised (its creator died while "
                                                    "creating it); `python -m memchannel cleanup` removes it");
    case Status::kBadMagic:
    case Status::kVersionMismatch:
      raise_error(ErrorClass::kCorruptionError, "shared-memory segment '" + name +
                                                    "' is not a memchannel arena of this version (" +
                                                    to_string(s) + ")");
    case Status::kNotFound:
      raise_error(ErrorClass::kChannelNotFound, "the shared-memory arena '" + name + "' is being torn down");
    default:
      raise_error(ErrorClass::kMemChannelError,
                  "cannot attach to shared-memory arena '" + name + "': " + shm_reason(s));
  }
}

}  // namespace

const char* error_class_name(ErrorClass cls) {
  switch (cls) {
    case ErrorClass::kMemChannelError: return "MemChannelError";
    case ErrorClass::kEmpty: return "Empty";
    case ErrorClass::kFull: return "Full";
    case ErrorClass::kChannelClosed: return "ChannelClosed";
    case ErrorClass::kChannelNotFound: return "ChannelNotFound";
    case ErrorClass::kCapacityError: return "CapacityError";
    case ErrorClass::kCorruptionError: return "CorruptionError";
    case ErrorClass::kWaitCancelled: return "WaitCancelled";
  }
  return "MemChannelError";
}

std::string printable(std::string_view f) {
  std::string out;
  for (size_t i = 0; i < f.size() && i < 80; ++i) {
    const unsigned char c = static_cast<unsigned char>(f[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char esc[8];
      std::snprintf(esc, sizeof(esc), "\\x%02x", c);
      out += esc;
    }
  }
  if (f.size() > 80) out += "...";
  return out;
}

[[noreturn]] void raise_error(ErrorClass cls, const std::string& message) {
  PyObject* type = module_state().errors[static_cast<size_t>(cls)];
  PyErr_SetString(type, message.c_str());
  throw py::error_already_set();
}

[[noreturn]] void raise_status(Status s, const std::string& context, Origin origin) {
  if (origin == Origin::kShmAttach) raise_attach_status(s, context);
  if (origin == Origin::kShmCreate) {
    if (s == Status::kOutOfCapacity) raise_status(s, "creating a shm arena");
    raise_error(ErrorClass::kMemChannelError, "creating a shm arena '" + context + "': " + shm_reason(s));
  }
  switch (s) {
    case Status::kEmpty: raise_error(ErrorClass::kEmpty, context.empty() ? "channel is empty" : context);
    case Status::kFull: raise_error(ErrorClass::kFull, context.empty() ? "channel is full" : context);
    case Status::kClosed:
      raise_error(ErrorClass::kChannelClosed, context.empty() ? "channel is closed" : context);
    case Status::kTooLarge: raise_error(ErrorClass::kCapacityError, context);
    case Status::kOutOfCapacity: raise_error(ErrorClass::kFull, "arena out of capacity: " + context);
    case Status::kInvalidArgument: throw py::value_error(context);
    case Status::kNotFound: raise_error(ErrorClass::kChannelNotFound, context);
    case Status::kSystemError: raise_error(ErrorClass::kMemChannelError, "system error: " + context);
    default:
      if (is_corruption(s) || s == Status::kDoubleRelease) {
        raise_error(ErrorClass::kCorruptionError, std::string(to_string(s)) + ": " + context);
      }
      raise_error(ErrorClass::kMemChannelError,
                  std::string(to_string(s)) + (context.empty() ? "" : ": " + context));
  }
}

[[noreturn]] void raise_status(shm::Status s, int sys_errno, const std::string& segment) {
  if (s == shm::Status::kNotFound) {
    raise_error(ErrorClass::kChannelNotFound, "the shared-memory arena '" + segment +
                                                  "' no longer exists (every process using it has detached)");
  }
  const std::string why =
      std::string(shm::to_string(s)) + (sys_errno != 0 ? std::string(" (") + std::strerror(sys_errno) + ")" : "");
  raise_error(ErrorClass::kMemChannelError, "refusing to open shared-memory arena '" + segment + "': " + why);
}

}  // namespace memchannel::py_glue
