// EventCount: sleep until a condition becomes true, without lost wake-ups and without polling.
//
//   waiter                                   notifier
//   ------                                   --------
//   waiters += 1          (seq_cst)          make the condition true (e.g. push)
//   key = seq             (acquire)          fence (seq_cst)
//   if condition: done                       if waiters != 0:
//   futex_wait(seq, key)                         seq += 1 (release); woken = futex_wake(seq, all)
//   not woken: waiters -= 1                      waiters -= woken
//
// The two seq_cst points form a Dekker pair: either the notifier sees the waiter registered
// (and bumps seq, so the futex_wait returns at once or is woken), or the waiter's condition
// check sees the notifier's change. A notifier with no registered waiter pays one fence and
// one load. Before registering, a waiter spins briefly: a futex round trip costs ~10 us, a
// spinning hand-off well under 1 us.
//
// The count is of sleepers not yet woken: a notifier subtracts the number futex_wake reports
// woken, and a sleeper subtracts itself only when it leaves the futex otherwise (timeout,
// signal, value changed), as the receivers' wake-one count below does. So notifiers that come
// while a woken sleeper waits for a CPU make no futex call for it. A sleeper killed while
// counted, or a notifier killed between its wake and its subtraction, leaves the count too
// high (futex calls that wake nobody), never too low.
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
  std::atomic<uint32_t> waiters;  // registered sleepers not yet woken
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

// Bumps the futex word and wakes up to `count` sleepers, taking off the count those the kernel
// says it woke (an EventCount and the receivers' WakeOneCount below both count sleepers not yet
// woken). For a caller that ordered its change before its look at `waiters` (a fence, or a
// seq_cst RMW). Concurrency: any thread, any process.
template <typename Count>
inline void wake_sleepers(Count& ec, int count) {
  ec.seq.fetch_add(1, std::memory_order_release);
  const int woken = futex_wake(&ec.seq, count);
  if (woken > 0) ec.waiters.fetch_sub(static_cast<uint32_t>(woken), std::memory_order_relaxed);
}

// Every sleeper. Concurrency: any thread, any process.
inline void wake_all_sleepers(EventCount& ec) { wake_sleepers(ec, std::numeric_limits<int>::max()); }

// Concurrency: any thread, any process.
inline void notify_all(EventCount& ec) {
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the waiter's fence below
  if (ec.waiters.load(std::memory_order_relaxed) != 0) wake_all_sleepers(ec);
}

// How long a waiter spins on the CPU alone before its spin starts yielding (ns).
inline constexpr int64_t kSpinBeforeYieldNs = 4000;
// A low-water sleeper's re-checks (wait_until's recheck_ns) back off up to this long (ns).
inline constexpr int64_t kMaxRecheckNs = 64'000'000;

// Waits until ready() returns true. Returns kOk when it did, kTimedOut at the deadline,
// kInterrupted when a signal arrived or the slice ran out (ready() was false each time).
//
// With a low water (wait_until_low_water below): `ready` is the mark the spin and the sleep
// wait for, and `any` the plain condition, taken at the first look, after a wake-up, at each
// re-check and at the deadline. recheck_ns > 0: for an EventCount whose notifiers may decline
// a wake-up (notify_all_if), the sleep is cut after recheck_ns to look again (with `any`),
// doubling each time up to kMaxRecheckNs: a sleeper then sees a declined condition no later
// than about the time it has slept already.
// Concurrency: any thread, any process.
template <typename Ready, typename Any>
Status wait_until_low_water(EventCount& ec, const WaitSpec& spec, Ready&& ready, Any&& any, int64_t recheck_ns) {
  if (any()) return Status::kOk;
  const int64_t start = monotonic_ns();
  if (spec.deadline_ns <= start) return Status::kTimedOut;
  // Spin phase: cheap checks while the peer is probably about to act; past
  // kSpinBeforeYieldNs the spin yields the CPU between looks (a peer that shares this CPU, and
  // would make the condition true, then runs instead of waiting for our spin to end).
  if (spec.spin_ns > 0) {
    int64_t spin_end = spec.spin_ns >= WaitSpec::kForever - start ? WaitSpec::kForever : start + spec.spin_ns;
    if (spec.deadline_ns < spin_end) spin_end = spec.deadline_ns;  // a yield may take a while: not past the deadline
    const int64_t yield_from = start + kSpinBeforeYieldNs;
    bool yielding = false;
    for (uint32_t i = 1;; ++i) {
      if (yielding) {
        cpu_yield();
      } else {
        for (int k = 0; k < 32; ++k) cpu_relax();
      }
      if (ready()) return Status::kOk;
      if ((i & 7) == 0 || yielding) {
        const int64_t now = monotonic_ns();
        if (now >= spin_end) break;
        yielding = now >= yield_from;
      }
    }
  }
  const int64_t slice_end =
      spec.slice_ns == WaitSpec::kForever ? WaitSpec::kForever : start + spec.slice_ns;
  const int64_t until = spec.deadline_ns < slice_end ? spec.deadline_ns : slice_end;
  int64_t recheck = recheck_ns;
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
        if (any()) return Status::kOk;  // short of the mark, but what the caller asked for
        return until == spec.deadline_ns ? Status::kTimedOut : Status::kInterrupted;
      }
    }
    const bool capped = recheck > 0 && (timeout < 0 || timeout > recheck);
    if (capped) timeout = recheck;
    const FutexWait r = futex_wait(&ec.seq, key, timeout);
    // Woken: the notifier took us off the count. Any other return: we take ourselves off.
    if (r != FutexWait::kWoken) ec.waiters.fetch_sub(1, std::memory_order_relaxed);
    if (any()) return Status::kOk;
    if (r == FutexWait::kInterrupted) return Status::kInterrupted;
    if (r == FutexWait::kTimedOut && capped) {  // our own re-check, not the caller's limit
      recheck = recheck < kMaxRecheckNs / 2 ? 2 * recheck : kMaxRecheckNs;
      continue;
    }
    if (r == FutexWait::kTimedOut || (until != WaitSpec::kForever && monotonic_ns() >= until)) {
      return until == spec.deadline_ns ? Status::kTimedOut : Status::kInterrupted;
    }
  }
}

template <typename Ready>
Status wait_until(EventCount& ec, const WaitSpec& spec, Ready&& ready) {
  return wait_until_low_water(ec, spec, ready, ready, 0);
}

// notify_all for a low-water EventCount (a full channel's senders: Channel::notify_room): the
// sleepers are woken only when wanted() says so, asked only once one is registered. A wake-up
// it declines is owed by a later notifier whose wanted() agrees, or taken by the sleeper's own
// re-check (wait_until's recheck_ns): so its waiters must wait with one.
// Concurrency: any thread, any process.
template <typename Wanted>
inline void notify_all_if(EventCount& ec, Wanted&& wanted) {
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the waiter's fence
  if (ec.waiters.load(std::memory_order_relaxed) != 0 && wanted()) wake_all_sleepers(ec);
}

// ---- Wake-one waiting (a queue's receivers) ------------------------------------------------
//
// EventCount above broadcasts: every sleeper wakes for each message. Receivers of a channel
// wait here instead (docs/design.md, "Waiting"):
//  * One wake-up per message: a sender wakes one sleeper (FUTEX_WAKE 1). A woken receiver
//    always takes a message or finds the queue empty, and a message it did not get was taken
//    by someone (ready() dequeues), so no message is left behind with its wake-up spent.
//  * The count is of sleepers not yet woken: a waker subtracts the number futex_wake reports
//    woken, and a sleeper subtracts itself only when it leaves the futex for another reason
//    (timeout, signal, value changed). A woken sleeper costs its sender no second futex call.
//  * A spinning receiver announces itself: `spin_until` holds the end of its spin (monotonic
//    ns; 0 = none). A sender that finds a spinner makes no futex call at all: the spinner
//    takes the message, or passes the wake-up on when it stops spinning (below).
//
// Why no wake-up is lost. Sleeper Q, sender S, spinner P:
//
//   Q: waiters += 1 (RMW); fence; key = seq; ready()? else futex_wait(seq, key)
//   S: link the message;   fence; waiters == 0? done; spinner announced? done;
//                                 seq += 1; futex_wake(1)
//   P: spin_until = end;   spin on ready() ... stop: spin_until = 0 (store); fence;
//      q = more(); wake min(q, waiters) sleepers; then leave with its message, or sleep as Q
//
// (1) Q against S is EventCount's Dekker pair: S's load of `waiters` after its fence either
// sees Q registered, and then S bumps seq (Q's futex_wait returns at once, or sleeps and is
// woken), or it does not, and then Q's fence comes after S's in the single total order of
// seq_cst fences, so Q's ready() after it sees the link. (2) S skips its wake-up only after
// reading a non-zero `spin_until` written by some spinner P, earlier in that word's
// modification order than P's own store of 0 (a store by P that follows it). S's load, after
// S's fence, did not see that store, which P made before P's fence: so S's fence precedes P's,
// and P's reads after its fence see S's link. So every message whose wake-up was skipped
// because of P is either taken already or counted in P's q, and P wakes a sleeper for each
// (all of them if fewer sleep). A woken receiver takes a message or finds the queue empty, so
// no message is left with a sleeper asleep. A sleeper that registered so late that P's load of
// `waiters` missed it has its fence after P's, and its own ready() sees the message (1).
// Several senders may skip for one spinner (a burst): q counts them all, so one hand-on per
// stop covers a burst, and a spinner that clears another's announcement only makes senders
// wake more than needed (the other re-announces at its next clock check).
//
// Crashes and forged values. A spinner killed while announced stops covering when its
// announcement expires: at most kMaxSpinLease after it last wrote it (an announcement further
// in the future than that is not believed). A message whose wake-up was skipped in that window
// waits until a sleeper's next slice (on shared memory every wait wakes at least every sweep
// interval) or the next receiver; later messages wake sleepers as usual. A sleeper killed
// while counted, or a waker killed between its futex_wake and the subtraction, leaves the
// count too high: senders then make futex calls that wake nobody, never too few. Only a count
// too low could lose a wake-up, and no crash makes one: the only subtraction by a party other
// than the sleeper is of sleepers the kernel says it woke. A forged low count or announcement
// (a peer writing the header) delays a sleeper to its next slice, as a forged EventCount does.
struct WakeOneCount {
  std::atomic<uint32_t> seq;      // bumped by wakers; the futex word
  std::atomic<uint32_t> waiters;  // registered sleepers not yet woken
};
static_assert(std::is_standard_layout_v<WakeOneCount>);
static_assert(sizeof(WakeOneCount) == 8);

// The longest a spinner's announcement is believed ahead of the reader's clock (ns). A spinner
// that spins longer re-announces as it goes.
inline constexpr int64_t kMaxSpinLease = 200000;
namespace wake_detail {
// Whether a live spinner is announced: spin_until in (now, now + kMaxSpinLease].
inline bool spinner_announced(const std::atomic<int64_t>& spin_until) {
  const int64_t until = spin_until.load(std::memory_order_relaxed);
  if (until <= 0) return false;
  const int64_t now = monotonic_ns();
  return until > now && until - now <= kMaxSpinLease;
}
}  // namespace wake_detail

// After making n waiters' conditions true (e.g. n pushes, one chain): wakes up to n sleepers,
// unless nobody sleeps or a spinner is announced (it hands on all n: its count of what is
// queued includes them). Concurrency: any thread, any process.
inline void notify_n(WakeOneCount& ec, const std::atomic<int64_t>& spin_until, uint64_t n) {
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with the waiters' fences
  const uint32_t sleeping = ec.waiters.load(std::memory_order_relaxed);
  if (sleeping == 0 || n == 0) return;
  if (wake_detail::spinner_announced(spin_until)) return;
  const uint64_t k = n < sleeping ? n : sleeping;
  wake_sleepers(ec, k < static_cast<uint64_t>(std::numeric_limits<int>::max()) ? static_cast<int>(k)
                                                                                 : std::numeric_limits<int>::max());
}

// notify_n for one message. Concurrency: any thread, any process.
inline void notify_one(WakeOneCount& ec, const std::atomic<int64_t>& spin_until) { notify_n(ec, spin_until, 1); }

// Wakes every sleeper (close, repair). Concurrency: any thread, any process.
inline void notify_all(WakeOneCount& ec) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (ec.waiters.load(std::memory_order_relaxed) != 0) wake_sleepers(ec, std::numeric_limits<int>::max());
}

// As wait_until above, for a consuming ready() (one that takes what it waits for: a message).
// more() says how many are left for other waiters (e.g. messages queued): a spinner asks it
// when it stops spinning, to pass on the wake-ups senders skipped because of it. Returns as
// wait_until does.
// Concurrency: any thread, any process.
template <typename Ready, typename More>
Status wait_until(WakeOneCount& ec, std::atomic<int64_t>& spin_until, const WaitSpec& spec, Ready&& ready,
                  More&& more) {
  if (ready()) return Status::kOk;
  const int64_t start = monotonic_ns();
  if (spec.deadline_ns <= start) return Status::kTimedOut;
  if (spec.spin_ns > 0) {
    int64_t spin_end = spec.spin_ns >= WaitSpec::kForever - start ? WaitSpec::kForever : start + spec.spin_ns;
    if (spec.deadline_ns < spin_end) spin_end = spec.deadline_ns;  // a yield may take a while: not past the deadline
    int64_t lease = spin_end - start > kMaxSpinLease ? start + kMaxSpinLease : spin_end;
    spin_until.store(lease, std::memory_order_relaxed);
    // Past kSpinBeforeYieldNs the spin yields the CPU between looks: a receiver that shares
    // a CPU with its sender (more parties than CPUs) then lets the sender run instead of
    // burning the time the sender needs to produce what it waits for; on a CPU of its own the
    // yield returns at once.
    const int64_t yield_from = start + kSpinBeforeYieldNs;
    bool yielding = false;
    bool got = false;
    for (uint32_t i = 1;; ++i) {
      if (yielding) {
        cpu_yield();
      } else {
        for (int k = 0; k < 32; ++k) cpu_relax();
      }
      if (ready()) {
        got = true;
        break;
      }
      if ((i & 7) == 0 || yielding) {
        const int64_t now = monotonic_ns();
        if (now >= spin_end) break;
        yielding = now >= yield_from;
        if (lease - now < kMaxSpinLease / 2) {
          lease = spin_end - now > kMaxSpinLease ? now + kMaxSpinLease : spin_end;
          spin_until.store(lease, std::memory_order_relaxed);
        } else if (spin_until.load(std::memory_order_relaxed) != lease) {
          spin_until.store(lease, std::memory_order_relaxed);  // another spinner stopped and cleared it
        }
      }
    }
    // Stop announcing, then pass on the wake-ups senders skipped because of us: see (2) above.
    // Every message such a sender linked is visible after this fence; one sleeper per queued
    // message (each takes one or finds the queue empty, so none is left behind), whether we
    // leave with a message or go to sleep (then we take one more ourselves: harmless).
    spin_until.store(0, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (const uint32_t sleeping = ec.waiters.load(std::memory_order_relaxed); sleeping != 0) {
      const uint64_t left = more();
      if (left != 0) {
        const uint64_t n = left < sleeping ? left : sleeping;
        wake_sleepers(ec, n < static_cast<uint64_t>(std::numeric_limits<int>::max())
                                  ? static_cast<int>(n) : std::numeric_limits<int>::max());
      }
    }
    if (got) return Status::kOk;
  }
  const int64_t slice_end =
      spec.slice_ns == WaitSpec::kForever ? WaitSpec::kForever : start + spec.slice_ns;
  const int64_t until = spec.deadline_ns < slice_end ? spec.deadline_ns : slice_end;
  for (;;) {
    ec.waiters.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with notify_one's fence
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
    // Woken: the waker took us off the count. Any other return: we take ourselves off.
    if (r != FutexWait::kWoken) ec.waiters.fetch_sub(1, std::memory_order_relaxed);
    if (ready()) return Status::kOk;
    if (r == FutexWait::kInterrupted) return Status::kInterrupted;
    if (r == FutexWait::kTimedOut || (until != WaitSpec::kForever && monotonic_ns() >= until)) {
      return until == spec.deadline_ns ? Status::kTimedOut : Status::kInterrupted;
    }
  }
}

}  // namespace memchannel
