// EventCount (waiter.h): no lost wake-ups under a ping-pong stress, with and without the spin
// phase; deadlines return kTimedOut no earlier than the deadline; slices return kInterrupted;
// broadcast wake-ups reach every waiter. The EventCounts live in arena memory, where channels
// keep theirs, so the futex words are those of each backend. No upper timing bound is asserted:
// a lost wake-up shows as a hang, which the ctest timeout catches.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <new>
#include <thread>
#include <vector>

#include "core/arena.h"
#include "core/futex.h"
#include "core/status.h"
#include "core/waiter.h"
#include "tests/cpp/backends.h"

namespace memchannel::testing {
namespace {

constexpr int64_t kMs = 1000000;

template <typename Factory>
class WaiterTest : public BackendTest<Factory> {
 public:
  void SetUp() override {
    arena_ = this->make_arena(16 * kMiB);
    ASSERT_NE(arena_, nullptr);
  }

  // A zeroed EventCount in arena memory.
  EventCount& event_count() {
    auto cells = arena_->allocate_cells(sizeof(EventCount));
    EXPECT_EQ(cells.status, Status::kOk);
    void* mem = arena_->translate(cells.value, sizeof(EventCount));
    EXPECT_NE(mem, nullptr);
    return *new (mem) EventCount{};
  }

 private:
  std::shared_ptr<Arena> arena_;
};
TYPED_TEST_SUITE(WaiterTest, BackendTypes, BackendNames);

WaitSpec spec(int64_t spin_ns, int64_t deadline_ns = WaitSpec::kForever,
              int64_t slice_ns = WaitSpec::kForever) {
  WaitSpec w;
  w.spin_ns = spin_ns;
  w.deadline_ns = deadline_ns;
  w.slice_ns = slice_ns;
  return w;
}

// Two threads hand a turn back and forth `rounds` times: ping waits on `to_ping` for an even
// turn, pong on `to_pong` for an odd one; each makes the other's predicate true, then notifies.
// A single lost wake-up leaves both asleep forever. Returns the number of failed waits.
int ping_pong(EventCount& to_ping, EventCount& to_pong, uint64_t rounds, int64_t ping_spin,
              int64_t pong_spin) {
  std::atomic<uint64_t> turn{0};
  std::atomic<int> failures{0};
  std::thread pong([&] {
    const WaitSpec w = spec(pong_spin);
    for (uint64_t r = 0; r < rounds; ++r) {
      const Status s = wait_until(to_pong, w, [&] { return turn.load(std::memory_order_acquire) == 2 * r + 1; });
      if (s != Status::kOk) failures.fetch_add(1);
      turn.store(2 * r + 2, std::memory_order_release);
      notify_all(to_ping);
    }
  });
  const WaitSpec w = spec(ping_spin);
  for (uint64_t r = 0; r < rounds; ++r) {
    const Status s = wait_until(to_ping, w, [&] { return turn.load(std::memory_order_acquire) == 2 * r; });
    if (s != Status::kOk) failures.fetch_add(1);
    turn.store(2 * r + 1, std::memory_order_release);
    notify_all(to_pong);
  }
  pong.join();
  if (turn.load() != 2 * rounds) failures.fetch_add(1);
  return failures.load();
}

constexpr uint64_t kRounds = 100000;

TYPED_TEST(WaiterTest, PingPongLosesNoWakeUpOnTheFutexPath) {
  EventCount& a = this->event_count();
  EventCount& b = this->event_count();
  EXPECT_EQ(ping_pong(a, b, kRounds, 0, 0), 0);
  // Sleepers were registered and woken: the futex path really ran.
  EXPECT_GT(uint64_t{a.seq.load()} + b.seq.load(), 0u);
  EXPECT_EQ(a.waiters.load(), 0u);
  EXPECT_EQ(b.waiters.load(), 0u);
}

TYPED_TEST(WaiterTest, PingPongLosesNoWakeUpWithSpin) {
  EventCount& a = this->event_count();
  EventCount& b = this->event_count();
  EXPECT_EQ(ping_pong(a, b, kRounds, 20000, 20000), 0);
  EXPECT_EQ(a.waiters.load(), 0u);
  EXPECT_EQ(b.waiters.load(), 0u);
}

TYPED_TEST(WaiterTest, PingPongLosesNoWakeUpWhenOnlyOneSideSpins) {
  EventCount& a = this->event_count();
  EventCount& b = this->event_count();
  EXPECT_EQ(ping_pong(a, b, kRounds, 20000, 0), 0);
  EXPECT_EQ(a.waiters.load(), 0u);
  EXPECT_EQ(b.waiters.load(), 0u);
}

// Both directions share one EventCount: every wake-up is broadcast, and a wake-up meant for the
// peer must not be swallowed by the thread that caused it.
TYPED_TEST(WaiterTest, PingPongThroughOneSharedEventCount) {
  EventCount& shared = this->event_count();
  EXPECT_EQ(ping_pong(shared, shared, kRounds, 0, 0), 0);
  EXPECT_EQ(shared.waiters.load(), 0u);
}

// One notifier, several waiters on one EventCount, each waiting for the same generation: one
// notify_all wakes all of them, every round.
TYPED_TEST(WaiterTest, BroadcastWakesEveryWaiter) {
  EventCount& go = this->event_count();
  EventCount& done = this->event_count();
  constexpr int kWaiters = 4;
  constexpr uint64_t kGenerations = 5000;
  std::atomic<uint64_t> generation{0};
  std::atomic<uint64_t> acks{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> pool;
  for (int i = 0; i < kWaiters; ++i) {
    pool.emplace_back([&, i] {
      const WaitSpec w = spec(i % 2 == 0 ? 0 : 20000);
      for (uint64_t g = 1; g <= kGenerations; ++g) {
        if (wait_until(go, w, [&] { return generation.load(std::memory_order_acquire) >= g; }) != Status::kOk) {
          failures.fetch_add(1);
        }
        acks.fetch_add(1, std::memory_order_acq_rel);
        notify_all(done);
      }
    });
  }
  for (uint64_t g = 1; g <= kGenerations; ++g) {
    generation.store(g, std::memory_order_release);
    notify_all(go);
    const uint64_t want = g * kWaiters;
    if (wait_until(done, spec(0), [&] { return acks.load(std::memory_order_acquire) >= want; }) != Status::kOk) {
      failures.fetch_add(1);
    }
  }
  for (auto& t : pool) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(acks.load(), kGenerations * kWaiters);
  EXPECT_EQ(go.waiters.load(), 0u);
}

// A sleeper registered on the futex word is woken by one notify_all, which bumps the word once.
TYPED_TEST(WaiterTest, NotifyWakesARegisteredSleeper) {
  EventCount& ec = this->event_count();
  std::atomic<bool> ready{false};
  Status result = Status::kTimedOut;
  std::thread sleeper([&] { result = wait_until(ec, spec(0), [&] { return ready.load(); }); });
  while (ec.waiters.load() < 1) std::this_thread::yield();
  const uint32_t seq_before = ec.seq.load();
  ready.store(true);
  notify_all(ec);
  sleeper.join();
  EXPECT_EQ(result, Status::kOk);
  EXPECT_EQ(ec.seq.load(), seq_before + 1);
  EXPECT_EQ(ec.waiters.load(), 0u);
}

// Without a registered sleeper a notifier does not touch the futex word.
TYPED_TEST(WaiterTest, NotifyWithoutSleepersLeavesTheWordAlone) {
  EventCount& ec = this->event_count();
  for (int i = 0; i < 100; ++i) notify_all(ec);
  EXPECT_EQ(ec.seq.load(), 0u);
  EXPECT_EQ(ec.waiters.load(), 0u);
}

// ---- Deadlines --------------------------------------------------------------------------------

TYPED_TEST(WaiterTest, DeadlineReturnsTimedOutNoEarlierThanTheDeadline) {
  EventCount& ec = this->event_count();
  // Spin shorter than, and longer than, the time to the deadline.
  for (int64_t spin : {int64_t{0}, int64_t{20000}, 50 * kMs}) {
    SCOPED_TRACE(spin);
    int calls = 0;
    const int64_t deadline = monotonic_ns() + 20 * kMs;
    const Status s = wait_until(ec, spec(spin, deadline), [&] {
      ++calls;
      return false;
    });
    EXPECT_EQ(s, Status::kTimedOut);
    EXPECT_GE(monotonic_ns(), deadline);
    EXPECT_GE(calls, 1);
    EXPECT_EQ(ec.waiters.load(), 0u);
  }
}

TYPED_TEST(WaiterTest, PastDeadlineDoesNotBlock) {
  EventCount& ec = this->event_count();
  for (const WaitSpec& w : {spec(0, 0), spec(20000, monotonic_ns() - 1), WaitSpec::nonblocking()}) {
    EXPECT_EQ(wait_until(ec, w, [] { return false; }), Status::kTimedOut);
    EXPECT_EQ(wait_until(ec, w, [] { return true; }), Status::kOk);  // ready wins over the deadline
  }
  EXPECT_EQ(ec.waiters.load(), 0u);
  EXPECT_EQ(ec.seq.load(), 0u);
}

// A waiter that times out does not swallow a wake-up meant for another waiter.
TYPED_TEST(WaiterTest, TimedOutWaiterDoesNotSwallowAnotherWaitersWakeUp) {
  EventCount& ec = this->event_count();
  std::atomic<bool> for_long{false};
  Status long_result = Status::kTimedOut;
  std::thread long_waiter([&] { long_result = wait_until(ec, spec(0), [&] { return for_long.load(); }); });
  while (ec.waiters.load() < 1) std::this_thread::yield();
  const int64_t deadline = monotonic_ns() + 5 * kMs;
  EXPECT_EQ(wait_until(ec, spec(0, deadline), [] { return false; }), Status::kTimedOut);
  for_long.store(true);
  notify_all(ec);
  long_waiter.join();
  EXPECT_EQ(long_result, Status::kOk);
  EXPECT_EQ(ec.waiters.load(), 0u);
}

// ---- Slices -----------------------------------------------------------------------------------

TYPED_TEST(WaiterTest, SliceReturnsInterruptedNoEarlierThanTheSlice) {
  EventCount& ec = this->event_count();
  for (int64_t spin : {int64_t{0}, int64_t{20000}}) {
    SCOPED_TRACE(spin);
    const int64_t start = monotonic_ns();
    EXPECT_EQ(wait_until(ec, spec(spin, WaitSpec::kForever, 10 * kMs), [] { return false; }),
              Status::kInterrupted);
    EXPECT_GE(monotonic_ns(), start + 10 * kMs);
    // A slice that ends after the deadline: the deadline decides.
    const int64_t deadline = monotonic_ns() + 5 * kMs;
    EXPECT_EQ(wait_until(ec, spec(spin, deadline, 50 * kMs), [] { return false; }),
              Status::kTimedOut);
    EXPECT_GE(monotonic_ns(), deadline);
    // A slice that ends before the deadline: interrupted, not timed out.
    EXPECT_EQ(wait_until(ec, spec(spin, monotonic_ns() + 500 * kMs, 5 * kMs), [] { return false; }),
              Status::kInterrupted);
  }
  EXPECT_EQ(ec.waiters.load(), 0u);
}

// The caller's loop around slices (check signals, call again) ends when the condition holds.
TYPED_TEST(WaiterTest, RetryingAfterSlicesEndsWhenReady) {
  EventCount& ec = this->event_count();
  std::atomic<bool> ready{false};
  std::atomic<int> interrupted{0};
  Status result = Status::kTimedOut;
  std::thread waiter([&] {
    for (;;) {
      result = wait_until(ec, spec(0, WaitSpec::kForever, 1 * kMs), [&] { return ready.load(); });
      if (result != Status::kInterrupted) break;
      interrupted.fetch_add(1);
    }
  });
  while (interrupted.load() < 3) std::this_thread::yield();  // several slices ran out
  ready.store(true);
  notify_all(ec);
  waiter.join();
  EXPECT_EQ(result, Status::kOk);
  EXPECT_GE(interrupted.load(), 3);
  EXPECT_EQ(ec.waiters.load(), 0u);
}

}  // namespace
}  // namespace memchannel::testing
