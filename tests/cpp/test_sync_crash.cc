// A process killed at each step of the sync primitives (core/sync.h, CrashPoint kSync*): a
// forked child attaches its own holder slot, runs one operation and SIGKILLs itself at the
// point; the parent then checks that nothing hangs and each primitive says what the design
// says (docs/guide-sync.md, "When a process dies"): an abandoned lock is taken over with
// kPeerDied, a bounded semaphore's permits come back to exactly its bound, a condition's live
// waiter is still woken, a barrier breaks, an event waiter still wakes. Part of
// test_crash_points (tests/cpp/CMakeLists.txt).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <thread>

#include "core/arena.h"
#include "core/sync.h"
#include "tests/cpp/backends.h"

namespace memchannel::testing {
namespace {

constexpr uint32_t kNoPoint = static_cast<uint32_t>(CrashPoint::kCount);
std::atomic<uint32_t> g_point{kNoPoint};

void kill_here(CrashPoint p) {
  if (static_cast<uint32_t>(p) == g_point.load(std::memory_order_relaxed)) {
    ::kill(::getpid(), SIGKILL);
    ::_exit(99);
  }
}



struct Fixture {
  std::shared_ptr<Arena> arena;
  std::shared_ptr<Sync> sync;
};

Fixture make(SyncKind kind, uint32_t value = 0, uint32_t limit = 0, uint32_t flags = 0) {
  Fixture f;
  f.arena = Arena::create(ShmFactory::make(), 4u << 20, 77).value;
  f.sync = Sync::create(f.arena, kind, value, limit, flags, 5).value;
  return f;
}

// Forks a child that re-attaches, runs `body` with the crash hook aimed at `point` (kNone:
// none), and exits 0 if it was not killed. Returns the child's wait status.
template <typename Body>
int in_child(Fixture& f, CrashPoint point, Body&& body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    f.arena->reattach_after_fork();
    f.sync->reattach_after_fork();
    g_point.store(static_cast<uint32_t>(point));
    set_crash_hook(kill_here);
    body();
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

bool killed(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL; }

class SyncCrashPoints : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  }
};

TEST_F(SyncCrashPoints, LockTakenThenKilled) {
  for (SyncKind kind : {SyncKind::kLock, SyncKind::kRLock}) {
    Fixture f = make(kind);
    ASSERT_TRUE(killed(in_child(f, CrashPoint::kSyncLockTaken, [&] { f.sync->lock_acquire(within(1)); })));
    EXPECT_EQ(until_done([&](const WaitSpec& w) { return f.sync->lock_acquire(w); }), Status::kPeerDied);
    EXPECT_TRUE(f.sync->owned_here());
    EXPECT_EQ(f.sync->lock_release(), Status::kOk);
    EXPECT_EQ(f.sync->lock_acquire(WaitSpec::nonblocking()), Status::kOk);
    EXPECT_EQ(f.sync->lock_release(), Status::kOk);
  }
}

// The same steps through the bindings' inline fast paths (lock_try_fast, lock_release_fast).
TEST_F(SyncCrashPoints, LockFastPathStepsThenKilled) {
  Fixture f = make(SyncKind::kLock);
  ASSERT_TRUE(killed(in_child(f, CrashPoint::kSyncLockTaken, [&] {
    if (!f.sync->lock_try_fast()) ::_exit(4);
  })));
  EXPECT_FALSE(f.sync->lock_try_fast());  // held by the dead child: the general path judges it
  EXPECT_EQ(until_done([&](const WaitSpec& w) { return f.sync->lock_acquire(w); }), Status::kPeerDied);
  EXPECT_EQ(f.sync->lock_release(), Status::kOk);
  ASSERT_TRUE(killed(in_child(f, CrashPoint::kSyncLockReleased, [&] {
    if (!f.sync->lock_try_fast() || !f.sync->lock_release_fast()) ::_exit(4);
  })));
  EXPECT_FALSE(f.sync->locked());
  EXPECT_TRUE(f.sync->lock_try_fast());
  EXPECT_FALSE(f.sync->lock_try_fast());  // not re-entrant
  EXPECT_TRUE(f.sync->lock_release_fast());
  EXPECT_FALSE(f.sync->lock_release_fast());  // not held: the general path reports it
  EXPECT_EQ(f.sync->lock_release(), Status::kNotHolder);
}

TEST_F(SyncCrashPoints, TakeoverThenKilled) {
  Fixture f = make(SyncKind::kLock);
  // A first child exits holding the lock (no release, no detach: a dead owner).
  ASSERT_EQ(in_child(f, CrashPoint::kCount, [&] { f.sync->lock_acquire(within(1)); }), 0);
  ASSERT_TRUE(killed(in_child(f, CrashPoint::kSyncLockTakeover, [&] {
    until_done([&](const WaitSpec& w) { return f.sync->lock_acquire(w); });
  })));
  EXPECT_EQ(until_done([&](const WaitSpec& w) { return f.sync->lock_acquire(w); }), Status::kPeerDied);
  EXPECT_EQ(f.sync->lock_release(), Status::kOk);
}

TEST_F(SyncCrashPoints, ReleasedBeforeWake) {
  Fixture f = make(SyncKind::kLock);
  ASSERT_TRUE(killed(in_child(f, CrashPoint::kSyncLockReleased, [&] {
    f.sync->lock_acquire(within(1));
    f.sync->lock_release();
  })));
  EXPECT_EQ(f.sync->lock_acquire(WaitSpec::nonblocking()), Status::kOk);  // free: nobody was told, nobody needs to be
  EXPECT_EQ(f.sync->lock_release(), Status::kOk);
}

TEST_F(SyncCrashPoints, SemaphoreStepsKeepTheBound) {
  for (CrashPoint p : {CrashPoint::kSyncSemIntent, CrashPoint::kSyncSemTaken, CrashPoint::kSyncSemReleased}) {
    Fixture f = make(SyncKind::kBoundedSemaphore, 2, 2, kSyncReclaim);
    ASSERT_TRUE(killed(in_child(f, p, [&] {
      f.sync->sem_acquire(within(1));
      f.sync->sem_release(1);
    }))) << to_string(p);
    f.sync->recover();
    EXPECT_EQ(f.sync->sem_value(), 2u) << to_string(p);  // every permit back, never above the bound
    EXPECT_EQ(f.sync->sem_acquire(within(1)), Status::kOk);
    EXPECT_EQ(f.sync->sem_acquire(within(1)), Status::kOk);
    EXPECT_EQ(f.sync->sem_acquire(WaitSpec::nonblocking()), Status::kTimedOut);
  }
}

// Another live holder (this process) keeps one permit throughout while a child is killed at
// each semaphore step: afterwards the permits are counted exactly (what the child held comes
// back, nothing more), for the bounded semaphore (a later release by the live holder is not
// "released too many times") and the unbounded one (no extra permit).
TEST_F(SyncCrashPoints, SemaphoreStepsExactWithAnotherHolder) {
  const CrashPoint points[] = {CrashPoint::kSyncSemIntent, CrashPoint::kSyncSemTaken, CrashPoint::kSyncSemReleased};
  for (SyncKind kind : {SyncKind::kSemaphore, SyncKind::kBoundedSemaphore}) {
    for (CrashPoint p : points) {
      // hit 1: the child's acquire; hit 2: its release (kSyncSemIntent is reached by both).
      // fast: the child first takes and gives back a permit, so the killed steps are the
      // inline fast paths (sem_try, sem_release_one); else the general ones.
      for (int hit = 1; hit <= (p == CrashPoint::kSyncSemIntent ? 2 : 1); ++hit) for (bool fast : {false, true}) {
        SCOPED_TRACE(std::string(to_string(p)) + " hit " + std::to_string(hit) + (fast ? " fast" : " general"));
        Fixture f = make(kind, 3, 3, kSyncReclaim);
        ASSERT_EQ(f.sync->sem_acquire(within(1)), Status::kOk);  // the live holder's permit
        ASSERT_TRUE(killed(in_child(f, p, [&, hit, fast] {
          g_point.store(kNoPoint);
          if (fast) {
            if (f.sync->sem_try() != Status::kOk || f.sync->sem_release_one() != Status::kOk) ::_exit(4);
          }
          if (hit == 1) g_point.store(static_cast<uint32_t>(p));
          if (fast ? f.sync->sem_try() != Status::kOk : f.sync->sem_acquire(within(1)) != Status::kOk) ::_exit(4);
          g_point.store(static_cast<uint32_t>(p));
          if (fast) f.sync->sem_release_one();
          else f.sync->sem_release(1);
        }))) << to_string(p);
        f.sync->recover();
        EXPECT_EQ(f.sync->sem_value(), 2u) << to_string(p) << " hit " << hit;  // this process still holds one
        EXPECT_EQ(f.sync->sem_release(1), Status::kOk) << to_string(p) << " hit " << hit;
        EXPECT_EQ(f.sync->sem_value(), 3u) << to_string(p) << " hit " << hit;
        f.sync->recover();
        EXPECT_EQ(f.sync->sem_value(), 3u) << to_string(p) << " hit " << hit;
      }
    }
  }
}

// A child holds two permits and dies (no crash point: a plain exit); a recoverer is killed as
// it gives them back; the next recover() finishes the job exactly once.
TEST_F(SyncCrashPoints, SemaphoreRecoveryKilledMidway) {
  for (SyncKind kind : {SyncKind::kSemaphore, SyncKind::kBoundedSemaphore}) {
    Fixture f = make(kind, 4, 4, kSyncReclaim);
    ASSERT_EQ(f.sync->sem_acquire(within(1)), Status::kOk);  // the live holder's permit
    ASSERT_EQ(in_child(f, CrashPoint::kCount, [&] {
      f.sync->sem_acquire(within(1));
      f.sync->sem_acquire(within(1));
    }), 0);
    EXPECT_EQ(f.sync->sem_value(), 1u);
    ASSERT_TRUE(killed(in_child(f, CrashPoint::kSyncSemReclaimed, [&] { f.sync->recover(); })));
    f.sync->recover();
    f.sync->recover();
    EXPECT_EQ(f.sync->sem_value(), 3u);
    EXPECT_EQ(f.sync->sem_release(1), Status::kOk);
    EXPECT_EQ(f.sync->sem_value(), 4u);
  }
}

// Children with two threads each take and give back permits (and recover() now and then)
// while the parent holds one permit and SIGKILLs them at random moments; a live holder's
// release never finds the bound exceeded, and once all are dead the count is exact.
TEST_F(SyncCrashPoints, SemaphoreRandomKillsKeepTheCountExact) {
  for (SyncKind kind : {SyncKind::kSemaphore, SyncKind::kBoundedSemaphore}) {
    Fixture f = make(kind, 5, 5, kSyncReclaim);
    ASSERT_EQ(f.sync->sem_acquire(within(1)), Status::kOk);
    for (int round = 0; round < 12; ++round) {
      pid_t pids[3];
      for (pid_t& pid : pids) {
        pid = ::fork();
        if (pid == 0) {
          f.arena->reattach_after_fork();
          f.sync->reattach_after_fork();
          const auto work = [&](uint32_t salt) {
            for (uint32_t i = 0;; ++i) {
              const uint32_t n = 1 + (i * 7 + salt) % 2;
              uint32_t got = 0;
              // The inline fast paths (sem_try, sem_release_one) and the general ones, mixed.
              for (uint32_t k = 0; k < n; ++k) {
                got += (n == 1 ? f.sync->sem_try() : f.sync->sem_acquire(WaitSpec::nonblocking())) == Status::kOk;
              }
              const Status r = got == 1 ? f.sync->sem_release_one() : got != 0 ? f.sync->sem_release(got) : Status::kOk;
              if (r != Status::kOk) ::_exit(3);  // bound exceeded
              if (i % 64 == 0) f.sync->recover();
            }
          };
          std::thread other(work, 1);
          work(0);
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500 + 700 * round));
      for (pid_t pid : pids) ::kill(pid, SIGKILL);
      for (pid_t pid : pids) {
        int status = 0;
        ::waitpid(pid, &status, 0);
        ASSERT_TRUE(killed(status)) << "round " << round;  // not an _exit(3)
      }
      f.sync->recover();
      ASSERT_EQ(f.sync->sem_value(), 4u) << "round " << round;
    }
    EXPECT_EQ(f.sync->sem_release(1), Status::kOk);
    EXPECT_EQ(f.sync->sem_value(), 5u);
  }
}

TEST_F(SyncCrashPoints, SemaphoreWaiterGetsADeadHoldersPermit) {
  Fixture f = make(SyncKind::kSemaphore, 1, 1, kSyncReclaim);
  ASSERT_TRUE(killed(in_child(f, CrashPoint::kSyncSemTaken, [&] { f.sync->sem_acquire(within(1)); })));
  EXPECT_EQ(f.sync->sem_value(), 0u);
  EXPECT_EQ(until_done([&](const WaitSpec& w) { return f.sync->sem_acquire(w); }), Status::kOk);
}

TEST_F(SyncCrashPoints, ConditionLiveWaiterStillWoken) {
  for (CrashPoint p : {CrashPoint::kSyncCondRegistered, CrashPoint::kSyncCondLeaving}) {
    Fixture f = make(SyncKind::kCondition);
    if (p == CrashPoint::kSyncCondRegistered) {
      ASSERT_TRUE(killed(in_child(f, p, [&] { f.sync->cond_register(); })));
    } else {
      // The child registers and waits; it is killed as it leaves with the parent's signal.
      const pid_t pid = ::fork();
      if (pid == 0) {
        f.arena->reattach_after_fork();
        f.sync->reattach_after_fork();
        g_point.store(static_cast<uint32_t>(p));
        set_crash_hook(kill_here);
        f.sync->cond_register();
        until_done([&](const WaitSpec& w) { return f.sync->cond_wait(w); });
        ::_exit(0);
      }
      while (f.sync->cond_waiting() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      EXPECT_EQ(f.sync->cond_notify(1), 1u);
      int status = 0;
      ::waitpid(pid, &status, 0);
      ASSERT_TRUE(killed(status));
    }
    f.sync->recover();
    Status got = Status::kInterrupted;
    f.sync->cond_register();
    std::thread waiter([&] { got = until_done([&](const WaitSpec& w) { return f.sync->cond_wait(w); }); });
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    f.sync->cond_notify(1);
    waiter.join();
    EXPECT_EQ(got, Status::kOk) << to_string(p);  // woken (at worst early: a spurious wake-up)
  }
}

TEST_F(SyncCrashPoints, BarrierBreaksWhenAnArrivalDies) {
  Fixture f = make(SyncKind::kBarrier, 0, 3);
  ASSERT_TRUE(killed(in_child(f, CrashPoint::kSyncBarrierArrived, [&] { f.sync->barrier_arrive(within(1)); })));
  auto t = f.sync->barrier_arrive(within(1));
  ASSERT_EQ(t.status, Status::kOk);
  EXPECT_EQ(t.value.index, 1u);
  EXPECT_EQ(until_done([&](const WaitSpec& w) { return f.sync->barrier_wait(t.value, w); }), Status::kClosed);
  EXPECT_TRUE(f.sync->barrier_is_broken());
  f.sync->barrier_reset();
  std::thread a([&] {
    auto ta = f.sync->barrier_arrive(within(5));
    if (!ta.value.last) until_done([&](const WaitSpec& w) { return f.sync->barrier_wait(ta.value, w); });
    else f.sync->barrier_release(ta.value);
  });
  std::thread b([&] {
    auto tb = f.sync->barrier_arrive(within(5));
    if (!tb.value.last) until_done([&](const WaitSpec& w) { return f.sync->barrier_wait(tb.value, w); });
    else f.sync->barrier_release(tb.value);
  });
  auto tc = f.sync->barrier_arrive(within(5));
  Status mine = Status::kOk;
  if (tc.value.last) f.sync->barrier_release(tc.value);
  else mine = until_done([&](const WaitSpec& w) { return f.sync->barrier_wait(tc.value, w); });
  a.join();
  b.join();
  EXPECT_EQ(mine, Status::kOk);
  EXPECT_FALSE(f.sync->barrier_is_broken());
}

// Parent and child pass round 0 together; the child is then killed before it arrives in
// round 1. The parent, waiting in round 1, finds the barrier broken within a few liveness
// slices instead of at its deadline.
TEST_F(SyncCrashPoints, BarrierBreaksWhenAPartyDiesBeforeArriving) {
  Fixture f = make(SyncKind::kBarrier, 0, 2);
  const auto pass = [&] {
    auto t = f.sync->barrier_arrive(within(5));
    if (t.status != Status::kOk) return t.status;
    if (t.value.last) {
      f.sync->barrier_release(t.value);
      return Status::kOk;
    }
    return until_done([&](const WaitSpec& w) { return f.sync->barrier_wait(t.value, w); }, 5);
  };
  const pid_t pid = ::fork();
  if (pid == 0) {
    f.arena->reattach_after_fork();
    f.sync->reattach_after_fork();
    if (pass() != Status::kOk) ::_exit(4);
    ::pause();  // round 0 passed; never arrives in round 1
    ::_exit(0);
  }
  ASSERT_EQ(pass(), Status::kOk);  // round 0, with the child
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(killed(status));
  const int64_t t0 = monotonic_ns();
  auto t = f.sync->barrier_arrive(within(5));
  ASSERT_EQ(t.status, Status::kOk);
  EXPECT_EQ(until_done([&](const WaitSpec& w) { return f.sync->barrier_wait(t.value, w); }, 5), Status::kClosed);
  EXPECT_LT(monotonic_ns() - t0, 2'000'000'000);  // broken by the liveness check, not by the 5 s deadline
  EXPECT_TRUE(f.sync->barrier_is_broken());
}

// A party that detached before it died is no longer expected: the next round, made of two
// threads of this process, passes although it is slower than a liveness slice.
TEST_F(SyncCrashPoints, BarrierPartyThatDetachedIsNotMissed) {
  Fixture f = make(SyncKind::kBarrier, 0, 2);
  const auto pass = [&](Sync& b) {
    auto t = b.barrier_arrive(within(5));
    if (t.status != Status::kOk) return t.status;
    if (t.value.last) {
      b.barrier_release(t.value);
      return Status::kOk;
    }
    return until_done([&](const WaitSpec& w) { return b.barrier_wait(t.value, w); }, 5);
  };
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    f.arena->reattach_after_fork();
    f.sync->reattach_after_fork();
    if (pass(*f.sync) != Status::kOk) ::_exit(4);
    f.sync->detach();
    const char done = 1;
    if (::write(fds[1], &done, 1) != 1) ::_exit(5);
    ::pause();
    ::_exit(0);
  }
  ASSERT_EQ(pass(*f.sync), Status::kOk);  // round 0, with the child
  char done = 0;
  ASSERT_EQ(::read(fds[0], &done, 1), 1);  // the child has detached
  ::close(fds[0]);
  ::close(fds[1]);
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(killed(status));
  Status second = Status::kInterrupted;
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // several 50 ms slices
    second = pass(*f.sync);
  });
  EXPECT_EQ(pass(*f.sync), Status::kOk);
  late.join();
  EXPECT_EQ(second, Status::kOk);
  EXPECT_FALSE(f.sync->barrier_is_broken());
}

TEST_F(SyncCrashPoints, EventSetBeforeWake) {
  Fixture f = make(SyncKind::kEvent);
  Status got = Status::kInterrupted;
  std::thread waiter([&] { got = until_done([&](const WaitSpec& w) { return f.sync->event_wait(w); }); });
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  ASSERT_TRUE(killed(in_child(f, CrashPoint::kSyncEventSet, [&] { f.sync->event_set(); })));
  waiter.join();
  EXPECT_EQ(got, Status::kOk);  // the flag is set; the waiter sees it at its next slice at the latest
}

}  // namespace
}  // namespace memchannel::testing
