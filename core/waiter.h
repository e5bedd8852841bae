// EventCount: sleep until a condition becomes true, without lost wake-ups and without polling.
//
//   waiter                                   notifier
//   ------                                   --------
//   waiters += 1          (seq_cst)          make the condition true (e.g. push)
//   key = seq             (acquire)          fence (seq_cst)
//   if condition: done                       if waiters != 0:
//   futex_wait(seq, key)                         seq += 1 (release); futex_wake(seq, all)
//   waiters -= 1
//
// The two seq_cst points form a Dekker pair: either the notifier sees the waiter registered
// (and bumps seq, so the futex_wait returns at once or is woken), or the waiter's condition
// check sees the notifier's change. A notifier with no registered waiter pays one fence and
// one load. Before registering, a waiter spins briefly: a futex round trip costs ~10 us, a
// spinning hand-off well under 1 us.
//
// Lives in arena memory (fixed-width atomics, no pointers). Several conditions may share one
// EventCount; wake-ups are broadcast, so a waiter that times out never swallows a wake-up
// meant for another. A later select() over several channels can register one futex word with
// several EventCounts without changing this layout (the spare word is reserved for it).
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/futex.h"
#include "core/status.h"

namespace memchannel {

struct EventCount {
  std::atomic<uint32_t> seq;      // bumped by notifiers that saw a waiter; the futex word
  std::atomic<uint32_t> waiters;  // registered sleepers
};
static_assert(std::is_standard_layout_v<EventCount>);
static_assert(sizeof(EventCount) == 8);

// How a blocking call may wait.
struct WaitSpec {
  static constexpr int64_t kForever = std::numeric_limits<int64_t>::max();
  int64_t deadline_ns = kForever;   // monotonic; kForever = no limit; <= now = do not block
  int64_t slice_ns = kForever;      // return kInterrupted after this long so callers can check
                                    // signals and peer liveness, then call again
  int64_t spin_ns = 20000;          // spin this long before sleeping

  static WaitSpec nonblocking() { WaitSpec w; w.deadline_ns = 0; w.spin_ns = 0; return w; }
};

// Concurrency: any thread, any process.
inline void notify_all(EventCount& ec) {
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the waiter's fence below
  if (ec.waiters.load(std::memory_order_relaxed) != 0) {
    ec.seq.fetch_add(1, std::memory_order_release);
    futex_wake(&ec.seq, std::numeric_limits<int>::max());
  }
}

// Waits until ready() returns true. Returns kOk when it did, kTimedOut at the deadline,
// kInterrupted when a signal arrived or the slice ran out (ready() was false each time).
// Concurrency: any thread, any process.
template <typename Ready>
Status wait_until(EventCount& ec, const WaitSpec& spec, Ready&& ready) {
  if (ready()) return Status::kOk;
  const int64_t start = monotonic_ns();
  if (spec.deadline_ns <= start) return Status::kTimedOut;
  // Spin phase: cheap checks while the peer is probably about to act.
  if (spec.spin_ns > 0) {
    const int64_t spin_end = start + spec.spin_ns;
    for (uint32_t i = 1;; ++i) {
      for (int k = 0; k < 32; ++k) cpu_relax();
      if (ready()) return Status::kOk;
      if ((i & 7) == 0 && monotonic_ns() >= spin_end) break;
    }
  }
  const int64_t slice_end =
      spec.slice_ns == WaitSpec::kForever ? WaitSpec::kForever : start + spec.slice_ns;
  const int64_t until = spec.deadline_ns < slice_end ? spec.deadline_ns : slice_end;
  for (;;) {
    ec.waiters.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with notify_all's fence
    const uint32_t key = ec.seq.load(std::memory_order_acquire);
    if (ready()) {
      ec.waiters.fetch_sub(1, std::memory_order_relaxed);
      return Status::kOk;
    }
    int64_t timeout = -1;
    if (until != WaitSpec::kForever) {
      timeout = until - monotonic_ns();
      if (timeout <= 0) {
        ec.waiters.fetch_sub(1, std::memory_order_relaxed);
        return until == spec.deadline_ns ? Status::kTimedOut : Status::kInterrupted;
      }
    }
    const FutexWait r = futex_wait(&ec.seq, key, timeout);
    ec.waiters.fetch_sub(1, std::memory_order_relaxed);
    if (ready()) return Status::kOk;
    if (r == FutexWait::kInterrupted) return Status::kInterrupted;
    if (r == FutexWait::kTimedOut || (until != WaitSpec::kForever && monotonic_ns() >= until)) {
      return until == spec.deadline_ns ? Status::kTimedOut : Status::kInterrupted;
    }
  }
}

}  // namespace memchannel
