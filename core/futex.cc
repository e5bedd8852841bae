#include "core/futex.h"

#include <cerrno>
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace memchannel {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
static_assert(std::atomic<uint32_t>::is_always_lock_free);

FutexWait futex_wait(std::atomic<uint32_t>* word, uint32_t expected, int64_t timeout_ns) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout_ns / 1000000000);
    ts.tv_nsec = static_cast<long>(timeout_ns % 1000000000);
    tsp = &ts;
  }
  // FUTEX_WAIT's timeout is relative and measured on CLOCK_MONOTONIC.
  const long rc = syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, tsp,
                          nullptr, 0);
  if (rc == 0) return FutexWait::kWoken;
  switch (errno) {
    case EAGAIN: return FutexWait::kValueChanged;
    case ETIMEDOUT: return FutexWait::kTimedOut;
    case EINTR: return FutexWait::kInterrupted;
    default: return FutexWait::kSpurious;  // callers re-check their condition
  }
}

int futex_wake(std::atomic<uint32_t>* word, int count) {
  const long rc = syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, count, nullptr, nullptr, 0);
  return rc > 0 ? static_cast<int>(rc) : 0;
}

void cpu_yield() { sched_yield(); }

int64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace memchannel
