// Status codes of the MemChannel core. The core never throws: every operation that can fail
// returns a Status, and the Python glue translates it in one place (`raise_status`, in pybind/).
#pragma once

#include <cstdint>

namespace memchannel {

enum class Status : uint32_t {
  kOk = 0,
  // Flow control: normal outcomes of a non-blocking or timed call.
  kEmpty,             // nothing queued (recv with block=False, or timeout)
  kFull,              // maxsize/maxbytes reached or arena out of capacity (send with timeout)
  kTimedOut,          // a blocking wait reached its deadline
  kInterrupted,       // a wait returned early so the caller can check for signals; retry
  kClosed,            // channel closed (send), or closed and drained (recv)
  // Caller errors: bad arguments, detected before any shared state changes.
  kInvalidArgument,
  kTooLarge,          // request larger than the arena can ever hold
  kOutOfCapacity,     // arena capacity exhausted right now
  kSystemError,       // mmap / futex / segment creation failed (errno kept by the backend)
  // Corruption: a value read from arena memory failed validation. Each bumps a counter.
  kCorruptedOffset,   // an offset or block reference outside any mapped segment
  kCorruptedLength,   // a length or metadata size that does not fit its block
  kCorruptedIndex,    // a queue / free-list link that is out of bounds or cycles
  kCorruptedState,    // a block state word that does not match the transition
  kDoubleRelease,     // releasing a block that is already free (or has a newer generation)
  kBadMagic,          // a header without the expected magic word
  kVersionMismatch,   // a header written by an incompatible layout version
  kNotReady,          // a header whose creator never finished initialising it
  kPeerDied,          // the process that held a resource is gone
  kNotFound,          // no such channel / arena
  kNotHolder,         // the block is held by another process (e.g. inherited across fork())
  kNoHolderSlot,      // every holder slot of a shared arena is taken by a live process
};

constexpr const char* to_string(Status s) {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kEmpty: return "empty";
    case Status::kFull: return "full";
    case Status::kTimedOut: return "timed out";
    case Status::kInterrupted: return "interrupted";
    case Status::kClosed: return "channel closed";
    case Status::kInvalidArgument: return "invalid argument";
    case Status::kTooLarge: return "request larger than the arena can hold";
    case Status::kOutOfCapacity: return "arena out of capacity";
    case Status::kSystemError: return "system error";
    case Status::kCorruptedOffset: return "corrupted offset in channel memory";
    case Status::kCorruptedLength: return "corrupted length in channel memory";
    case Status::kCorruptedIndex: return "corrupted queue or free-list index";
    case Status::kCorruptedState: return "corrupted block state";
    case Status::kDoubleRelease: return "block released twice";
    case Status::kBadMagic: return "bad magic word";
    case Status::kVersionMismatch: return "layout version mismatch";
    case Status::kNotReady: return "segment never finished initialising";
    case Status::kPeerDied: return "peer process died";
    case Status::kNotFound: return "not found";
    case Status::kNotHolder:
      return "this block belongs to another process (a Buffer inherited across fork() stays its "
             "parent's: the child cannot send it, and releasing it there frees nothing)";
    case Status::kNoHolderSlot:
      return "all 128 process slots of this shared-memory arena are taken by live processes (at "
             "most 128 processes can use one arena at once; close or exit processes that no longer "
             "use it, or give another group of processes its own arena)";
  }
  return "unknown status";
}

constexpr bool is_corruption(Status s) {
  return s >= Status::kCorruptedOffset && s <= Status::kNotReady;
}

// A value or the reason there is none. Kept trivial: the core's hot path returns these by value.
template <typename T>
struct Result {
  Status status = Status::kOk;
  T value{};
  bool ok() const { return status == Status::kOk; }
};

}  // namespace memchannel
