// Process identity and liveness that pid reuse cannot fool (docs/reliability.md item 4).
//
// A pid alone names "whichever process has this number now": after a crash the kernel may
// hand the number to an unrelated process, and kill(pid, 0) would call the dead owner alive.
// A ProcessIdentity adds the process's start time (field 22 of /proc/<pid>/stat, clock ticks
// since boot). Start time has clock-tick resolution (10 ms), and the kernel hands out pids
// cyclically, so for a new process to share both pid and start time with a dead one the
// pid counter would have to wrap through pid_max within one tick. tmpfs segments do not
// survive a reboot, so identities stored in a segment are never compared across boots.
//
// Limits: identities are meaningful within one pid namespace (the one /proc is mounted
// from). Processes in different pid namespaces sharing one /dev/shm see different pids for
// each other and must not compare identities: arena holders are judged by liveness locks
// (below), which hold across namespaces; pid identities are kept for diagnostics.
//
// ProcessIdentity is stored in shared memory by the core, so it is fixed-width, standard
// layout, trivially copyable and has no implicit padding:
//
//     0               4               8                              16
//    +---------------+---------------+-------------------------------+
//    |  pid (u32)    | reserved (0)  |  start_time (u64, clock ticks) |
//    +---------------+---------------+-------------------------------+
//
// An identity read from shared memory is untrusted: check_alive() only uses it as a lookup
// key into /proc, so a garbage identity yields kDead or kUnknown, never a crash.
//
// Concurrency: every function here may be called from any thread, in any process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>

#include "shm/status.h"

namespace memchannel::shm {

struct ProcessIdentity {
  uint32_t pid = 0;         // 0 means "no process": never a user process's pid
  uint32_t reserved = 0;    // explicit padding, always 0, so the struct has no hidden bytes
  uint64_t start_time = 0;  // field 22 of /proc/<pid>/stat; 0 when it could not be read

  friend bool operator==(const ProcessIdentity&, const ProcessIdentity&) = default;
};

static_assert(sizeof(ProcessIdentity) == 16);
static_assert(alignof(ProcessIdentity) == 8);
static_assert(offsetof(ProcessIdentity, pid) == 0);
static_assert(offsetof(ProcessIdentity, reserved) == 4);
static_assert(offsetof(ProcessIdentity, start_time) == 8);
static_assert(std::is_standard_layout_v<ProcessIdentity>);
static_assert(std::is_trivially_copyable_v<ProcessIdentity>);
static_assert(std::has_unique_object_representations_v<ProcessIdentity>);

enum class Liveness : uint8_t {
  kAlive,    // a process with this pid and this start time is running (or stopped)
  kDead,     // no such pid, a zombie, or the pid now belongs to a different process
  kUnknown,  // /proc could not be read or parsed, or the identity has no start time
};

const char* to_string(Liveness liveness) noexcept;

// The calling process's identity. start_time is 0 if /proc is unavailable (then
// check_alive() of this identity answers kUnknown, never kDead). Reads /proc/self/stat on
// every call, so it stays correct in a forked child.
// Concurrency: any thread.
ProcessIdentity self_identity() noexcept;

// The identity of a running process. kNotFound when the pid does not exist or has exited
// (zombie); kSystemError (with errno) when /proc cannot be read or parsed.
// Concurrency: any thread.
Result<ProcessIdentity> identity_of(uint32_t pid) noexcept;

// Whether the process named by `id` still runs. See Liveness for the exact meaning.
// Concurrency: any thread, any process.
Liveness check_alive(const ProcessIdentity& id) noexcept;

// The fields of /proc/<pid>/stat the liveness check needs. Exposed for tests.
struct ProcStat {
  uint32_t pid = 0;         // field 1
  char state = '?';         // field 3: R S D Z T t X ...
  uint64_t start_time = 0;  // field 22
};

// Parses the text of /proc/<pid>/stat. The command name (field 2) is "(comm)" and comm may
// hold spaces, parentheses and digits, so parsing starts after the *last* ')'.
// Returns nullopt on anything malformed.
std::optional<ProcStat> parse_proc_stat(std::string_view text) noexcept;

// ---- Liveness locks (docs/shm.md, "Liveness") ----------------------------------------------
// A pid means nothing to a process in another PID namespace; a lock on a file they share does.
// An attached process holds an open-file-description lock (F_OFD_SETLK) on byte `index` of its
// arena's segment 0 while it occupies holder slot `index`; the kernel drops it when the last
// descriptor of that description closes, i.e. when the process dies. Another user cannot open
// the file (0600), so cannot hold or test these locks.

// A descriptor of its own open file description on the file of segment `base` whose mapping
// descriptor is `segment_fd` (checked to be the same file). -1 on failure.
int open_lock_descriptor(std::string_view base, int segment_fd) noexcept;
// Takes the lock on byte `index` through `fd`; false if another description holds it.
bool take_liveness_lock(int fd, uint64_t index) noexcept;
void drop_liveness_lock(int fd, uint64_t index) noexcept;
// kAlive if another open file description holds a lock on [index, index + count), kDead if
// none does, kUnknown if the kernel cannot tell (then a caller must treat it as alive).
Liveness liveness_lock_state(int fd, uint64_t index, uint64_t count = 1) noexcept;

}  // namespace memchannel::shm
