// Status codes of the shared-memory OS layer (shm/). Nothing in shm/ throws across its public
// API: every fallible call returns a Status, plus the errno of the system call that failed so
// the Python glue can say what happened and what to do. Boost.Interprocess exceptions and
// std::bad_alloc are caught at the shm/ boundary and turned into these codes.
//
// Kept apart from core/status.h on purpose: shm/ must not depend on core/, and these codes
// describe the operating system's answer (owner, mode, size of a file), not channel state.
#pragma once

#include <cstdint>

namespace memchannel::shm {

enum class Status : uint32_t {
  kOk = 0,
  kNotFound,          // no segment with that name (never created, or already unlinked)
  kAlreadyExists,     // create(): something already sits at that name; it was not touched
  kInvalidName,       // not a memchannel segment name (see names.h)
  kInvalidArgument,   // a size of zero, or larger than this platform can map
  kWrongOwner,        // the segment belongs to another user: never trust or adopt it
  kWrongMode,         // the segment's mode is not exactly 0600: someone else may write it
  kNotRegularFile,    // a symlink, FIFO, directory or device sits at that name
  kTooSmall,          // smaller than the minimum the caller needs (e.g. creator died before sizing)
  kSizeMismatch,      // larger than the size the caller expected
  kTruncated,         // smaller than expected, or shrunk after it was mapped
  kNoSpace,           // /dev/shm (tmpfs) cannot hold the segment's pages
  kPermissionDenied,  // the OS refused access (EACCES / EPERM)
  kOutOfMemory,       // the process could not allocate bookkeeping memory
  kTooManyFiles,      // EMFILE / ENFILE: the process's (or system's) open-file limit is reached
  kSystemError,       // any other system call failure; sys_errno says which
};

const char* to_string(Status status) noexcept;

// The errno of a failed open/create/mmap/unlink as a Status (EEXIST -> kAlreadyExists,
// ENOENT -> kNotFound, ELOOP -> kNotRegularFile, ...); unlisted values give kSystemError.
Status status_from_errno(int err) noexcept;

// The outcome of a call that returns no value.
struct Outcome {
  Status status = Status::kOk;
  int sys_errno = 0;  // errno of the failing system call, 0 when none was involved
  bool ok() const noexcept { return status == Status::kOk; }
};

// A value or the reason there is none. `value` is default-constructed when !ok().
template <typename T>
struct Result {
  Status status = Status::kOk;
  int sys_errno = 0;  // errno of the failing system call, 0 when none was involved
  T value{};
  bool ok() const noexcept { return status == Status::kOk; }
};

}  // namespace memchannel::shm
