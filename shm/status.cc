#include "shm/status.h"

#include <cerrno>

namespace memchannel::shm {

const char* to_string(Status status) noexcept {
  switch (status) {
    case Status::kOk: return "ok";
    case Status::kNotFound: return "shared-memory segment not found";
    case Status::kAlreadyExists: return "a file already exists at that shared-memory name";
    case Status::kInvalidName: return "not a valid memchannel segment name";
    case Status::kInvalidArgument: return "invalid segment size";
    case Status::kWrongOwner: return "segment is owned by another user";
    case Status::kWrongMode: return "segment mode is not 0600";
    case Status::kNotRegularFile: return "not a regular shared-memory file";
    case Status::kTooSmall: return "segment is smaller than required";
    case Status::kSizeMismatch: return "segment size differs from the expected size";
    case Status::kTruncated: return "segment was truncated";
    case Status::kNoSpace: return "not enough free space in /dev/shm";
    case Status::kPermissionDenied: return "permission denied";
    case Status::kOutOfMemory: return "out of memory";
    case Status::kTooManyFiles:
      return "too many open files (each shared-memory segment holds a file descriptor; raise the "
             "limit with `ulimit -n` or resource.setrlimit(RLIMIT_NOFILE), or use fewer arenas)";
    case Status::kSystemError: return "system error";
  }
  return "unknown shm status";
}

Status status_from_errno(int err) noexcept {
  switch (err) {
    case 0: return Status::kOk;
    case EEXIST: return Status::kAlreadyExists;
    case ENOENT: return Status::kNotFound;
    case EACCES:
    case EPERM: return Status::kPermissionDenied;
    case ENOSPC: return Status::kNoSpace;
    case ELOOP:  // shm_open passes O_NOFOLLOW: a symlink sits at the name
    case EISDIR: return Status::kNotRegularFile;
    case ENAMETOOLONG: return Status::kInvalidName;
    case ENOMEM: return Status::kOutOfMemory;
    case EMFILE:
    case ENFILE: return Status::kTooManyFiles;
    default: return Status::kSystemError;
  }
}

}  // namespace memchannel::shm
