#include "shm/liveness.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <string>

namespace memchannel::shm {
namespace {

// /proc/<pid>/stat is about 52 numbers and a comm of at most 15 bytes: well under 4 KiB.
using StatBuffer = std::array<char, 4096>;

struct StatRead {
  int err = 0;            // errno of open/read; 0 on success
  std::size_t size = 0;   // bytes read
};

// Reads a whole /proc stat file without allocating: liveness checks run in the wait loops of
// processes that may be short of memory.
StatRead read_stat_file(const char* path, StatBuffer& buf) noexcept {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {errno, 0};
  std::size_t used = 0;
  int err = 0;
  while (used < buf.size()) {
    const ssize_t n = ::read(fd, buf.data() + used, buf.size() - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  ::close(fd);
  if (err == 0 && used == buf.size()) err = EOVERFLOW;  // larger than any stat line can be
  return {err, used};
}

StatRead read_pid_stat(uint32_t pid, StatBuffer& buf) noexcept {
  char path[32];
  std::snprintf(path, sizeof path, "/proc/%u/stat", pid);
  return read_stat_file(path, buf);
}

// A pid that cannot name a process: 0 is the idle task / "none", and pids are positive ints.
bool impossible_pid(uint32_t pid) noexcept { return pid == 0 || pid > static_cast<uint32_t>(INT_MAX); }

bool is_exited_state(char state) noexcept { return state == 'Z' || state == 'X' || state == 'x'; }

// The process is gone (or never existed): as opposed to /proc being unreadable.
bool is_gone_errno(int err) noexcept { return err == ENOENT || err == ESRCH; }

template <typename T>
bool parse_unsigned(std::string_view token, T& out) noexcept {
  if (token.empty()) return false;
  const auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), out);
  return ec == std::errc() && end == token.data() + token.size();
}

}  // namespace

const char* to_string(Liveness liveness) noexcept {
  switch (liveness) {
    case Liveness::kAlive: return "alive";
    case Liveness::kDead: return "dead";
    case Liveness::kUnknown: return "unknown";
  }
  return "unknown liveness";
}

std::optional<ProcStat> parse_proc_stat(std::string_view text) noexcept {
  // "<pid> (<comm>) <state> <ppid> ... <starttime> ...": fields after comm never contain
  // ')', so the last ')' ends comm whatever comm contains.
  const std::size_t open_paren = text.find(" (");
  const std::size_t close_paren = text.rfind(')');
  if (open_paren == std::string_view::npos || close_paren == std::string_view::npos ||
      close_paren < open_paren + 2) {
    return std::nullopt;
  }
  ProcStat out;
  if (!parse_unsigned(text.substr(0, open_paren), out.pid)) return std::nullopt;

  std::string_view rest = text.substr(close_paren + 1);
  // Fields 3.. are separated by single spaces; field 22 is the 20th after comm.
  constexpr int kFirstField = 3;
  constexpr int kStartTimeField = 22;
  for (int field = kFirstField; field <= kStartTimeField; ++field) {
    if (rest.empty() || rest.front() != ' ') return std::nullopt;
    rest.remove_prefix(1);
    const std::size_t end = rest.find_first_of(" \n");
    const std::string_view token = rest.substr(0, end);
    rest.remove_prefix(token.size());
    if (token.empty()) return std::nullopt;
    if (field == kFirstField) {
      if (token.size() != 1) return std::nullopt;
      out.state = token.front();
    } else if (field == kStartTimeField) {
      if (!parse_unsigned(token, out.start_time)) return std::nullopt;
    }
  }
  return out;
}

Result<ProcessIdentity> identity_of(uint32_t pid) noexcept {
  if (impossible_pid(pid)) return {Status::kNotFound, 0, {}};
  StatBuffer buf;
  const StatRead r = read_pid_stat(pid, buf);
  if (r.err != 0) {
    return {is_gone_errno(r.err) ? Status::kNotFound : Status::kSystemError, r.err, {}};
  }
  const std::optional<ProcStat> stat = parse_proc_stat(std::string_view(buf.data(), r.size));
  if (!stat || stat->pid != pid) return {Status::kSystemError, EINVAL, {}};
  if (is_exited_state(stat->state)) return {Status::kNotFound, 0, {}};
  return {Status::kOk, 0, ProcessIdentity{pid, 0, stat->start_time}};
}

ProcessIdentity self_identity() noexcept {
  const auto pid = static_cast<uint32_t>(::getpid());
  ProcessIdentity id{pid, 0, 0};
  StatBuffer buf;
  const StatRead r = read_stat_file("/proc/self/stat", buf);
  if (r.err != 0) return id;
  const std::optional<ProcStat> stat = parse_proc_stat(std::string_view(buf.data(), r.size));
  // A /proc mounted from another pid namespace would describe some other process.
  if (stat && stat->pid == pid) id.start_time = stat->start_time;
  return id;
}

Liveness check_alive(const ProcessIdentity& id) noexcept {
  if (impossible_pid(id.pid)) return Liveness::kDead;
  StatBuffer buf;
  const StatRead r = read_pid_stat(id.pid, buf);
  if (r.err != 0) return is_gone_errno(r.err) ? Liveness::kDead : Liveness::kUnknown;
  const std::optional<ProcStat> stat = parse_proc_stat(std::string_view(buf.data(), r.size));
  if (!stat || stat->pid != id.pid) return Liveness::kUnknown;
  // A zombie has finished: it holds no memory and will never release what it owned.
  if (is_exited_state(stat->state)) return Liveness::kDead;
  if (id.start_time == 0) return Liveness::kUnknown;
  // Same pid, different start: the pid was reused by an unrelated process.
  if (stat->start_time != id.start_time) return Liveness::kDead;
  return Liveness::kAlive;
}

namespace {
struct flock lock_range(short type, uint64_t index, uint64_t count) noexcept {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(index);
  fl.l_len = static_cast<off_t>(count);
  fl.l_pid = 0;  // required by F_OFD_*
  return fl;
}
}  // namespace

int open_lock_descriptor(std::string_view base, int segment_fd) noexcept {
  try {
    const std::string path = "/dev/shm/" + std::string(base);
    const int fd = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return -1;
    struct stat a {}, b {};
    if (::fstat(fd, &a) != 0 || ::fstat(segment_fd, &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
      ::close(fd);  // the name no longer is the segment we map
      return -1;
    }
    return fd;
  } catch (...) {
    return -1;
  }
}

bool take_liveness_lock(int fd, uint64_t index) noexcept {
  struct flock fl = lock_range(F_WRLCK, index, 1);
  while (::fcntl(fd, F_OFD_SETLK, &fl) != 0) {
    if (errno != EINTR) return false;
  }
  return true;
}

void drop_liveness_lock(int fd, uint64_t index) noexcept {
  struct flock fl = lock_range(F_UNLCK, index, 1);
  while (::fcntl(fd, F_OFD_SETLK, &fl) != 0 && errno == EINTR) {
  }
}

Liveness liveness_lock_state(int fd, uint64_t index, uint64_t count) noexcept {
  struct flock fl = lock_range(F_WRLCK, index, count);
  while (::fcntl(fd, F_OFD_GETLK, &fl) != 0) {
    if (errno != EINTR) return Liveness::kUnknown;
  }
  return fl.l_type == F_UNLCK ? Liveness::kDead : Liveness::kAlive;
}

}  // namespace memchannel::shm
