#include "shm/segment.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <boost/interprocess/exceptions.hpp>
#include <boost/interprocess/permissions.hpp>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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

// ---- SIGBUS guard --------------------------------------------------------------------------
//
// A table of the live mappings (address, length, descriptor) that the handler reads with
// atomics only; writers (map / unmap, never in a handler) serialise on a spin flag. The
// handler uses async-signal-safe calls only: fstat, mmap, sched_yield, sigaction, raise. It
// makes fstat and mmap as raw system calls, past any sanitizer's interceptors: ThreadSanitizer
// models an intercepted mmap as a write of the range and would report every thread that then
// reads the zero pages (without faulting, so without meeting the handler) as racing with it.

constexpr int kGuardSlots = 1024;  // mappings guarded at once (an arena has at most 64 segments)

struct GuardSlot {
  std::atomic<uintptr_t> start{0};       // 0 = free; published last by guard_register
  std::atomic<uint64_t> length{0};
  std::atomic<int> fd{-1};
  std::atomic<uint64_t> faults{0};       // faults absorbed in this mapping
  std::atomic<uintptr_t> claimed{0};     // lowest address whose replacement a handler claimed
  std::atomic<uintptr_t> replaced{0};    // lowest address whose replacement is done
  bool in_use = false;                   // writers only, under g_table_lock
};

GuardSlot g_slots[kGuardSlots];
std::atomic_flag g_table_lock = ATOMIC_FLAG_INIT;
std::atomic<uint64_t> g_faults_total{0};
struct sigaction g_previous {};          // written once, before the handler is installed
std::atomic<int> g_guard_state{0};       // 0 not yet, 1 installing, 2 installed, 3 disabled/failed
uintptr_t g_page = 4096;

constexpr uintptr_t kNoClaim = ~uintptr_t{0};

uintptr_t round_up_page(uintptr_t v) { return (v + g_page - 1) & ~(g_page - 1); }

// Private zero pages over [from, from + bytes) of an existing mapping.
bool map_zero_pages(uintptr_t from, uintptr_t bytes) {
  const long r = ::syscall(SYS_mmap, from, bytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  return r != -1 && static_cast<uintptr_t>(r) == from;
}

bool file_size(int fd, uint64_t* size) {
  struct stat st {};
  if (::syscall(SYS_fstat, fd, &st) != 0 || st.st_size < 0) return false;
  *size = static_cast<uint64_t>(st.st_size);
  return true;
}

// What the kernel would have done without the guard: the previous handler, or the default
// action (terminate with SIGBUS, as if no handler had ever been installed).
void chain_sigbus(int sig, siginfo_t* info, void* context) {
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(sig, &dfl, nullptr);
  // A fault re-executes the access on return and dies of it; a signal sent by a process must
  // be sent again (it is blocked until this handler returns, then delivered).
  if (info == nullptr || info->si_code <= 0) ::raise(sig);
}

// Replaces [from, to) of slot `s` with private zero pages. The first handler to claim the
// range does it; one that faults on an already claimed range waits until it is done.
bool replace_tail(GuardSlot& s, uintptr_t from, uintptr_t to, uintptr_t addr) {
  for (;;) {
    uintptr_t claimed = s.claimed.load(std::memory_order_acquire);
    if (claimed <= addr) {
      // Another thread is replacing a range that covers this address: wait for it (an mmap).
      for (int spins = 0; s.replaced.load(std::memory_order_acquire) > addr; ++spins) {
        if (spins > (1 << 20)) return false;
        ::sched_yield();
      }
      return true;
    }
    if (!s.claimed.compare_exchange_strong(claimed, from, std::memory_order_acq_rel)) continue;
    // Up to the previous claim (or the end): what lies above it is being or was replaced.
    const uintptr_t until = claimed == kNoClaim ? to : claimed;
    if (!map_zero_pages(from, until - from)) return false;
    s.replaced.store(from, std::memory_order_release);
    return true;
  }
}

bool absorb_sigbus(uintptr_t addr) {
  for (GuardSlot& s : g_slots) {
    const uintptr_t start = s.start.load(std::memory_order_acquire);
    if (start == 0 || addr < start) continue;
    const uint64_t length = s.length.load(std::memory_order_relaxed);
    if (addr - start >= length) continue;
    const uintptr_t end = start + round_up_page(length);
    const uintptr_t page = addr & ~(g_page - 1);
    uintptr_t file_end = start;  // where the file's pages end in this mapping
    uint64_t size = 0;
    if (file_size(s.fd.load(std::memory_order_relaxed), &size)) {
      const uint64_t covered = round_up_page(size);
      file_end = covered >= end - start ? end : start + covered;
    }
    bool ok = false;
    if (page >= file_end) {
      ok = replace_tail(s, file_end, end, addr);  // the whole lost tail at once
    } else {
      // Inside the file (truncated and grown back, or tmpfs could not allocate the page):
      // the page's contents are gone either way; a private zero page ends the faulting.
      ok = map_zero_pages(page, g_page);
    }
    if (!ok) return false;
    s.faults.fetch_add(1, std::memory_order_relaxed);
    g_faults_total.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  // Only a fault on a page past end of file (BUS_ADRERR) is ours; BUS_MCEERR_* (memory
  // errors), BUS_ADRALN and signals sent by processes (si_code <= 0) are not.
  if (info != nullptr && info->si_code == BUS_ADRERR &&
      absorb_sigbus(reinterpret_cast<uintptr_t>(info->si_addr))) {
    errno = saved_errno;
    return;
  }
  errno = saved_errno;
  chain_sigbus(sig, info, context);
}

bool install_guard() noexcept {
  int state = g_guard_state.load(std::memory_order_acquire);
  if (state == 2) return true;
  if (state == 3) return false;
  if (state == 0 && g_guard_state.compare_exchange_strong(state, 1, std::memory_order_acq_rel)) {
    const char* env = std::getenv("MEMCHANNEL_SIGBUS_GUARD");
    bool installed = false;
    if (env == nullptr || std::strcmp(env, "0") != 0) {
      const long page = ::sysconf(_SC_PAGESIZE);
      if (page > 0) g_page = static_cast<uintptr_t>(page);
      struct sigaction sa {};
      sa.sa_sigaction = on_sigbus;
      sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
      sigemptyset(&sa.sa_mask);
      installed = ::sigaction(SIGBUS, &sa, &g_previous) == 0;
    }
    g_guard_state.store(installed ? 2 : 3, std::memory_order_release);
    return installed;
  }
  // Another thread is installing it: wait for its outcome.
  while ((state = g_guard_state.load(std::memory_order_acquire)) == 1) ::sched_yield();
  return state == 2;
}

void lock_table() noexcept {
  while (g_table_lock.test_and_set(std::memory_order_acquire)) ::sched_yield();
}
void unlock_table() noexcept { g_table_lock.clear(std::memory_order_release); }

// Registers a mapping; returns its slot, or -1 when it stays unguarded.
int guard_register(void* address, uint64_t length, int fd) noexcept {
  if (address == nullptr || length == 0 || !install_guard()) return -1;
  lock_table();
  int found = -1;
  for (int i = 0; i < kGuardSlots; ++i) {
    if (!g_slots[i].in_use) {
      found = i;
      break;
    }
  }
  if (found >= 0) {
    GuardSlot& s = g_slots[found];
    s.in_use = true;
    s.length.store(length, std::memory_order_relaxed);
    s.fd.store(fd, std::memory_order_relaxed);
    s.faults.store(0, std::memory_order_relaxed);
    s.claimed.store(kNoClaim, std::memory_order_relaxed);
    s.replaced.store(kNoClaim, std::memory_order_relaxed);
    s.start.store(reinterpret_cast<uintptr_t>(address), std::memory_order_release);
  }
  unlock_table();
  return found;
}

// Called before the mapping goes away (an access racing with the unmap is the caller's bug,
// with or without the guard).
void guard_unregister(int slot) noexcept {
  if (slot < 0) return;
  lock_table();
  g_slots[slot].start.store(0, std::memory_order_release);
  g_slots[slot].in_use = false;
  unlock_table();
}

}  // namespace

bool sigbus_guard_installed() noexcept {
  return g_guard_state.load(std::memory_order_acquire) == 2;
}

uint64_t sigbus_faults_absorbed() noexcept {
  return g_faults_total.load(std::memory_order_relaxed);
}

Segment::Segment(std::string name, bip::shared_memory_object&& shm,
                 bip::mapped_region&& region) noexcept
    : name_(std::move(name)), shm_(std::move(shm)), region_(std::move(region)) {
  guard_slot_ = guard_register(region_.get_address(), region_.get_size(),
                               shm_.get_mapping_handle().handle);
  struct stat st {};
  if (::fstat(shm_.get_mapping_handle().handle, &st) == 0) blocks_ = static_cast<uint64_t>(st.st_blocks);
}

Segment::~Segment() { guard_unregister(guard_slot_); }

Segment::Segment(Segment&& other) noexcept
    : name_(std::move(other.name_)),
      shm_(std::move(other.shm_)),
      region_(std::move(other.region_)),
      guard_slot_(std::exchange(other.guard_slot_, -1)),
      blocks_(other.blocks_) {
  other.name_.clear();
}

Segment& Segment::operator=(Segment&& other) noexcept {
  if (this != &other) {
    // Leave the guard and unmap before closing, as the destructor does.
    guard_unregister(std::exchange(guard_slot_, -1));
    region_ = std::move(other.region_);
    shm_ = std::move(other.shm_);
    name_ = std::move(other.name_);
    guard_slot_ = std::exchange(other.guard_slot_, -1);
    blocks_ = other.blocks_;
    other.name_.clear();
  }
  return *this;
}

uint64_t Segment::truncation_faults() const noexcept {
  return guard_slot_ < 0 ? 0 : g_slots[guard_slot_].faults.load(std::memory_order_relaxed);
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

Outcome Segment::unlink_if_owned(std::string_view name) noexcept {
  if (!is_memchannel_name(name)) return {Status::kInvalidName, 0};
  try {
    const std::string path = std::string(kShmDirectory) + "/" + std::string(name);
    struct stat seen {};
    if (::lstat(path.c_str(), &seen) != 0) return {status_from_errno(errno), errno};
    if (!S_ISREG(seen.st_mode)) return {Status::kNotRegularFile, 0};
    if (seen.st_uid != ::geteuid()) return {Status::kWrongOwner, 0};
    if ((seen.st_mode & 07777) != kSegmentMode) return {Status::kWrongMode, 0};
    // Checked again on a descriptor (no symlink followed, no FIFO waited for), then by name
    // right before the unlink: a file swapped in meanwhile is left alone.
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return {status_from_errno(errno), errno};
    struct stat st {};
    const bool same = ::fstat(fd, &st) == 0 && st.st_dev == seen.st_dev && st.st_ino == seen.st_ino &&
                      S_ISREG(st.st_mode) && st.st_uid == ::geteuid() && (st.st_mode & 07777) == kSegmentMode;
    struct stat now {};
    const bool still = same && ::lstat(path.c_str(), &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino;
    ::close(fd);
    if (!still) return {Status::kWrongOwner, 0};
    const std::string shm_name = "/" + std::string(name);
    if (::shm_unlink(shm_name.c_str()) != 0) return {status_from_errno(errno), errno};
    return {};
  } catch (const std::bad_alloc&) {
    return {Status::kOutOfMemory, ENOMEM};
  }
}

Outcome Segment::check() const noexcept {
  if (!valid()) return {Status::kInvalidArgument, 0};
  // Pages the guard replaced are private now: the mapping no longer is the file, whatever
  // size the file has grown back to.
  if (truncation_faults() != 0) return {Status::kTruncated, 0};
  struct stat st {};
  if (::fstat(fd(), &st) != 0) return {Status::kSystemError, errno};
  if (static_cast<uint64_t>(st.st_size) < size()) return {Status::kTruncated, 0};
  // Pages gone since it was mapped: truncated and grown back (its contents are zeros now).
  if (static_cast<uint64_t>(st.st_blocks) < blocks_) return {Status::kTruncated, 0};
  return {};
}

}  // namespace memchannel::shm
