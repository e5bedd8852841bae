#include "shm/cleanup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <new>

#include "shm/names.h"
#include "shm/segment.h"

namespace memchannel::shm {
namespace {

// Page alignment, so a predicate may overlay the same header structs it overlays on a
// mapping (those are at most cache-line aligned).
constexpr std::align_val_t kPeekAlignment{4096};

struct AlignedDelete {
  void operator()(std::byte* p) const noexcept { ::operator delete[](p, kPeekAlignment); }
};
using PeekBuffer = std::unique_ptr<std::byte[], AlignedDelete>;

struct DirClose {
  void operator()(DIR* d) const noexcept { ::closedir(d); }
};

class FdGuard {
 public:
  explicit FdGuard(int fd) noexcept : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const noexcept { return fd_; }
  void reset(int fd) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

bool same_file(const struct stat& a, const struct stat& b) noexcept {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Reads up to `want` bytes from offset 0. Returns the count, or -1 with errno set.
int64_t read_head(int fd, std::byte* out, uint64_t want) noexcept {
  uint64_t got = 0;
  while (got < want) {
    const ssize_t n = ::pread(fd, out + got, want - got, static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) break;  // end of file: the file is shorter than it was at fstat
    got += static_cast<uint64_t>(n);
  }
  return static_cast<int64_t>(got);
}

// Fills `peek` for the regular file `path` that lstat described as `seen`. Returns false
// when the name no longer refers to that file (gone or replaced): skip it this round.
bool peek_regular_file(const std::string& path, const struct stat& seen, std::byte* buffer,
                       uint64_t head_bytes, FdGuard& fd_out, SegmentPeek& peek) noexcept {
  // O_NONBLOCK: if the name was swapped for a FIFO since lstat, open must not wait for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return false;
    peek.status = status_from_errno(err);
    peek.sys_errno = err;
    return true;
  }
  fd_out.reset(fd);
  peek.fd = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    peek.status = Status::kSystemError;
    peek.sys_errno = errno;
    return true;
  }
  if (!same_file(st, seen)) return false;
  peek.size = static_cast<uint64_t>(st.st_size);
  peek.modified = st.st_mtim;
  if ((st.st_mode & 07777) != kSegmentMode) {
    peek.status = Status::kWrongMode;
    return true;
  }
  const int64_t got = read_head(fd, buffer, head_bytes);
  if (got < 0) {
    peek.status = Status::kSystemError;
    peek.sys_errno = errno;
    return true;
  }
  peek.head = std::span<const std::byte>(buffer, static_cast<std::size_t>(got));
  peek.status = static_cast<uint64_t>(got) < head_bytes ? Status::kTooSmall : Status::kOk;
  return true;
}

}  // namespace

std::vector<std::string> list_segments(std::string_view prefix) noexcept {
  if (!is_valid_prefix(prefix)) return {};
  try {
    const std::string dir_path(kShmDirectory);
    const std::unique_ptr<DIR, DirClose> dir(::opendir(dir_path.c_str()));
    if (!dir) return {};
    std::vector<std::string> names;
    while (const dirent* entry = ::readdir(dir.get())) {
      const std::string_view name(entry->d_name);
      if (name.starts_with(prefix) && is_memchannel_name(name)) names.emplace_back(name);
    }
    std::sort(names.begin(), names.end());
    return names;
  } catch (const std::bad_alloc&) {
    return {};
  }
}

std::vector<std::string> remove_segments_if(std::string_view prefix,
                                            const RemovePredicate& predicate,
                                            uint64_t head_bytes) noexcept {
  std::vector<std::string> removed;
  if (!predicate) return removed;
  head_bytes = std::clamp<uint64_t>(head_bytes, 1, kMaxPeekBytes);
  try {
    const std::vector<std::string> candidates = list_segments(prefix);
    if (candidates.empty()) return removed;
    removed.reserve(candidates.size());  // push_back after a successful unlink cannot fail
    const PeekBuffer buffer(
        static_cast<std::byte*>(::operator new[](static_cast<std::size_t>(head_bytes), kPeekAlignment)));
    const uid_t self = ::geteuid();

    for (const std::string& name : candidates) {
      const std::string path = std::string(kShmDirectory) + "/" + name;
      struct stat seen {};
      if (::lstat(path.c_str(), &seen) != 0) continue;  // already gone
      // Another user's segment is not ours to judge, even when running as root.
      if (seen.st_uid != self) continue;

      SegmentPeek peek;
      peek.size = static_cast<uint64_t>(seen.st_size);
      peek.modified = seen.st_mtim;
      FdGuard fd(-1);  // kept open while the predicate runs, so the inode stays the one judged
      if (!S_ISREG(seen.st_mode)) {
        peek.status = Status::kNotRegularFile;
      } else if (!peek_regular_file(path, seen, buffer.get(), head_bytes, fd, peek)) {
        continue;
      }

      bool condemned = false;
      try {
        condemned = predicate(name, peek);
      } catch (...) {
        condemned = false;  // a predicate that cannot decide must not destroy anything
      }
      if (!condemned) continue;

      // Unlink only the file that was judged, not a newcomer under the same name.
      struct stat now {};
      if (::lstat(path.c_str(), &now) != 0 || !same_file(now, seen)) continue;
      const std::string shm_name = "/" + name;
      if (::shm_unlink(shm_name.c_str()) == 0) removed.push_back(name);
    }
  } catch (const std::bad_alloc&) {
    // Report what was removed before memory ran out.
  }
  return removed;
}

}  // namespace memchannel::shm
