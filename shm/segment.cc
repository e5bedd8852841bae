#include "shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/permissions.hpp>

#include <cerrno>
#include <new>
#include <utility>

#include "shm/names.h"

namespace memchannel::shm {
namespace bip = boost::interprocess;

namespace {

Result<Segment> failure(Status status, int err = 0) noexcept { return {status, err, {}}; }

Result<Segment> failure_from(const bip::interprocess_exception& e) noexcept {
  const int err = e.get_native_error();
  return failure(err != 0 ? status_from_errno(err) : Status::kSystemError, err);
}

bip::map_options_t map_options(Prefault prefault) noexcept {
  return prefault == Prefault::kYes ? MAP_POPULATE : bip::default_map_options;
}

// Which file create() made, so a failed create removes its own file and nothing else (a
// same-user peer could have replaced the name in between).
struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  bool known = false;
};

void unlink_if_same_file(const std::string& name, const FileId& id) noexcept {
  if (!id.known) return;
  try {
    const std::string path = std::string(kShmDirectory) + "/" + name;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) return;
    if (st.st_dev != id.dev || st.st_ino != id.ino) return;
    const std::string shm_name = "/" + name;
    ::shm_unlink(shm_name.c_str());
  } catch (const std::bad_alloc&) {
    // Nothing more we can do; cleanup will find the file (its creator is gone).
  }
}

}  // namespace

Segment::Segment(std::string name, bip::shared_memory_object&& shm,
                 bip::mapped_region&& region) noexcept
    : name_(std::move(name)), shm_(std::move(shm)), region_(std::move(region)) {}

Segment::Segment(Segment&& other) noexcept
    : name_(std::move(other.name_)),
      shm_(std::move(other.shm_)),
      region_(std::move(other.region_)) {
  other.name_.clear();
}

Segment& Segment::operator=(Segment&& other) noexcept {
  if (this != &other) {
    // Unmap before closing, as the destructor does.
    region_ = std::move(other.region_);
    shm_ = std::move(other.shm_);
    name_ = std::move(other.name_);
    other.name_.clear();
  }
  return *this;
}

int Segment::fd() const noexcept { return valid() ? shm_.get_mapping_handle().handle : -1; }

Result<Segment> Segment::create(std::string_view name, uint64_t bytes, Prefault prefault) noexcept {
  if (!is_memchannel_name(name)) return failure(Status::kInvalidName);
  if (bytes == 0 || bytes > kMaxSegmentBytesOs) return failure(Status::kInvalidArgument);

  std::string name_str;
  FileId created;
  try {
    name_str.assign(name);
    // O_CREAT|O_EXCL: an existing file (or symlink, or FIFO) at the name is an error, never
    // opened. The initial mode is 0600 & ~umask, which is never wider than 0600.
    bip::shared_memory_object shm(bip::create_only, name_str.c_str(), bip::read_write,
                                  bip::permissions(kSegmentMode));
    const int fd = shm.get_mapping_handle().handle;
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      // Cannot identify the file; O_EXCL made it an instant ago, so removing it by name is
      // the lesser risk compared with leaving an unsized file behind.
      const int err = errno;
      ::shm_unlink(("/" + name_str).c_str());
      return failure(Status::kSystemError, err);
    }
    created = FileId{st.st_dev, st.st_ino, true};

    // Boost fchmods too but ignores the result; a umask like 0177 would otherwise leave the
    // creator without write access, so the mode is forced and checked here.
    if (::fchmod(fd, kSegmentMode) != 0) {
      const int err = errno;
      unlink_if_same_file(name_str, created);
      return failure(Status::kSystemError, err);
    }
    if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      const int err = errno;
      unlink_if_same_file(name_str, created);
      return failure(err == EFBIG ? Status::kInvalidArgument : status_from_errno(err), err);
    }
    // ftruncate alone leaves a sparse tmpfs file: pages would be allocated on first touch and
    // a full /dev/shm would then kill the toucher with SIGBUS. Reserving them now turns that
    // into an error here. tmpfs refuses up front when the request exceeds its size limit and
    // releases what it allocated when it runs out part-way.
    int rc = 0;
    do {
      rc = ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
    } while (rc == EINTR);
    if (rc != 0) {
      unlink_if_same_file(name_str, created);
      // ENOMEM here means the memory cgroup cannot hold the pages: same meaning for the caller.
      return failure(rc == ENOSPC || rc == ENOMEM ? Status::kNoSpace : status_from_errno(rc), rc);
    }
    bip::mapped_region region(shm, bip::read_write, 0, static_cast<std::size_t>(bytes), nullptr,
                              map_options(prefault));
    return {Status::kOk, 0, Segment(std::move(name_str), std::move(shm), std::move(region))};
  } catch (const bip::interprocess_exception& e) {
    unlink_if_same_file(name_str, created);
    return failure_from(e);
  } catch (const std::bad_alloc&) {
    unlink_if_same_file(name_str, created);
    return failure(Status::kOutOfMemory, ENOMEM);
  } catch (...) {
    unlink_if_same_file(name_str, created);
    return failure(Status::kSystemError);
  }
}

Result<Segment> Segment::open(std::string_view name, uint64_t expected_bytes, uint64_t min_bytes,
                              Prefault prefault) noexcept {
  if (!is_memchannel_name(name)) return failure(Status::kInvalidName);
  bool opened = false;
  try {
    std::string name_str(name);
    // shm_open adds O_NOFOLLOW and O_CLOEXEC: a symlink at the name fails with ELOOP.
    bip::shared_memory_object shm(bip::open_only, name_str.c_str(), bip::read_write);
    opened = true;
    const int fd = shm.get_mapping_handle().handle;
    struct stat st {};
    if (::fstat(fd, &st) != 0) return failure(Status::kSystemError, errno);
    // Checked on the descriptor, not the path, so the file checked is the file mapped.
    if (!S_ISREG(st.st_mode)) return failure(Status::kNotRegularFile);
    if (st.st_uid != ::geteuid()) return failure(Status::kWrongOwner);
    if ((st.st_mode & 07777) != kSegmentMode) return failure(Status::kWrongMode);

    const auto size = static_cast<uint64_t>(st.st_size);
    if (expected_bytes != 0 && size < expected_bytes) return failure(Status::kTruncated);
    if (expected_bytes != 0 && size > expected_bytes) return failure(Status::kSizeMismatch);
    if (size == 0 || size < min_bytes) return failure(Status::kTooSmall);
    if (size > kMaxSegmentBytesOs) return failure(Status::kSizeMismatch);

    bip::mapped_region region(shm, bip::read_write, 0, static_cast<std::size_t>(size), nullptr,
                              map_options(prefault));
    // A peer may have shrunk the file between fstat and mmap; the mapping would then already
    // reach past end-of-file. Checking once more makes "the mapping fits the file" hold at
    // the moment open() returns.
    if (::fstat(fd, &st) != 0) return failure(Status::kSystemError, errno);
    if (static_cast<uint64_t>(st.st_size) < size) return failure(Status::kTruncated);
    return {Status::kOk, 0, Segment(std::move(name_str), std::move(shm), std::move(region))};
  } catch (const bip::interprocess_exception& e) {
    // glibc's shm_open reports a directory (EISDIR) as EINVAL; the name itself was
    // validated above, so EINVAL can only mean "not a file".
    if (!opened && e.get_native_error() == EINVAL) return failure(Status::kNotRegularFile, EINVAL);
    return failure_from(e);
  } catch (const std::bad_alloc&) {
    return failure(Status::kOutOfMemory, ENOMEM);
  } catch (...) {
    return failure(Status::kSystemError);
  }
}

Outcome Segment::unlink(std::string_view name) noexcept {
  if (!is_memchannel_name(name)) return {Status::kInvalidName, 0};
  try {
    const std::string shm_name = "/" + std::string(name);
    if (::shm_unlink(shm_name.c_str()) != 0) {
      const int err = errno;
      return {status_from_errno(err), err};
    }
    return {};
  } catch (const std::bad_alloc&) {
    return {Status::kOutOfMemory, ENOMEM};
  }
}

Outcome Segment::check() const noexcept {
  if (!valid()) return {Status::kInvalidArgument, 0};
  struct stat st {};
  if (::fstat(fd(), &st) != 0) return {Status::kSystemError, errno};
  if (static_cast<uint64_t>(st.st_size) < size()) return {Status::kTruncated, 0};
  return {};
}

}  // namespace memchannel::shm
