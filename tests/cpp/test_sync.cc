// core/sync.h without crashes: semantics over both backends and validation of what a peer
// may have written (forged lock words, forged headers). Crash points: test_sync_crash.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "core/arena.h"
#include "core/sync.h"
#include "tests/cpp/backends.h"

namespace memchannel::testing {
namespace {



template <typename F>
class SyncTest : public ::testing::Test {};
using Backends = ::testing::Types<HeapFactory, ShmFactory>;
TYPED_TEST_SUITE(SyncTest, Backends);

TYPED_TEST(SyncTest, LockExcludesThreads) {
  std::shared_ptr<Arena> arena = Arena::create(TypeParam::make(), 4u << 20, 1).value;
  auto lock = Sync::create(arena, SyncKind::kLock, 0, 0, 0, 2).value;
  int counter = 0;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        ASSERT_EQ(until_done([&](const WaitSpec& w) { return lock->lock_acquire(w); }), Status::kOk);
        ++counter;
        ASSERT_EQ(lock->lock_release(), Status::kOk);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, 80000);
  EXPECT_EQ(lock->lock_release(), Status::kNotHolder);
}

TYPED_TEST(SyncTest, SemaphoreAndBound) {
  std::shared_ptr<Arena> arena = Arena::create(TypeParam::make(), 4u << 20, 1).value;
  auto s = Sync::create(arena, SyncKind::kBoundedSemaphore, 1, 1, kSyncReclaim, 3).value;
  EXPECT_EQ(s->sem_acquire(WaitSpec::nonblocking()), Status::kOk);
  EXPECT_EQ(s->sem_acquire(WaitSpec::nonblocking()), Status::kTimedOut);
  EXPECT_EQ(s->sem_release(1), Status::kOk);
  EXPECT_EQ(s->sem_release(1), Status::kFull);
  EXPECT_EQ(Sync::create(arena, SyncKind::kBoundedSemaphore, 2, 1, 0, 4).status, Status::kInvalidArgument);
}

// Threads of one process over two objects of one reclaiming BoundedSemaphore(2) (the same
// holder entry), fast and general paths mixed: never more than two holders at once, and the
// count and this holder's entry end where they started.
TYPED_TEST(SyncTest, SemaphoreExcludesThreadsAndKeepsItsAccounts) {
  std::shared_ptr<Arena> arena = Arena::create(TypeParam::make(), 4u << 20, 1).value;
  auto a = Sync::create(arena, SyncKind::kBoundedSemaphore, 2, 2, kSyncReclaim, 5).value;
  auto b = Sync::open(arena, a->offset(), 5).value;
  std::atomic<int> inside{0}, most{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Sync& s = t % 2 == 0 ? *a : *b;
      for (int i = 0; i < 20000; ++i) {
        const bool fast = (i + t) % 3 != 0;
        Status got = fast ? s.sem_try() : Status::kFull;
        if (got != Status::kOk) got = until_done([&](const WaitSpec& w) { return s.sem_acquire(w); });
        ASSERT_EQ(got, Status::kOk);
        const int now = inside.fetch_add(1) + 1;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        inside.fetch_sub(1);
        ASSERT_EQ(fast ? s.sem_release_one() : s.sem_release(1), Status::kOk);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(most.load(), 2);
  EXPECT_EQ(a->sem_value(), 2u);
  EXPECT_EQ(a->sem_release(1), Status::kFull);
  EXPECT_EQ(a->recover(), 0u);  // nobody is dead
  if (arena->holder() != 0) {
    auto* h = arena->template translate_as<SyncHeader>(a->offset());
    ASSERT_NE(h, nullptr);
    if (h == nullptr) return;
    EXPECT_EQ(sem_entry_count(h->holders[arena->holder() - 1].load()), 0);  // every permit given back
  }
}

// A release of more than kSemMaxDelta permits is made in steps; the bound is checked for all.
TYPED_TEST(SyncTest, LargeReleasesAreExact) {
  std::shared_ptr<Arena> arena = Arena::create(TypeParam::make(), 4u << 20, 1).value;
  auto s = Sync::create(arena, SyncKind::kSemaphore, 0, 0, kSyncReclaim, 6).value;
  EXPECT_EQ(s->sem_release(300), Status::kOk);
  EXPECT_EQ(s->sem_value(), 300u);
  for (int i = 0; i < 300; ++i) ASSERT_EQ(s->sem_acquire(WaitSpec::nonblocking()), Status::kOk);
  EXPECT_EQ(s->sem_acquire(WaitSpec::nonblocking()), Status::kTimedOut);
  auto bounded = Sync::create(arena, SyncKind::kBoundedSemaphore, 100, 300, kSyncReclaim, 7).value;
  EXPECT_EQ(bounded->sem_release(201), Status::kFull);  // nothing done
  EXPECT_EQ(bounded->sem_value(), 100u);
  EXPECT_EQ(bounded->sem_release(200), Status::kOk);
  EXPECT_EQ(bounded->sem_value(), 300u);
}

// A semaphore word naming an impossible holder (a forged peer) is counted as corruption and
// replaced by the next operation; the count in it still works.
TEST(SyncForged, ForgedSemaphoreWordIsNotTrusted) {
  std::shared_ptr<Arena> arena = Arena::create(ShmFactory::make(), 4u << 20, 1).value;
  auto s = Sync::create(arena, SyncKind::kBoundedSemaphore, 2, 2, kSyncReclaim, 8).value;
  auto* h = arena->translate_as<SyncHeader>(s->offset());
  ASSERT_NE(h, nullptr);
  if (h == nullptr) return;
  h->state.store(make_sem(2, 200, 7, 5));
  const uint64_t before = arena->counters().corruption_count;
  EXPECT_EQ(s->sem_acquire(WaitSpec::nonblocking()), Status::kOk);
  EXPECT_GT(arena->counters().corruption_count, before);
  EXPECT_EQ(s->sem_value(), 1u);
  EXPECT_EQ(s->sem_release(1), Status::kOk);
  EXPECT_EQ(s->sem_value(), 2u);
  EXPECT_EQ(s->recover(), 0u);
}

TYPED_TEST(SyncTest, OpenValidates) {
  std::shared_ptr<Arena> arena = Arena::create(TypeParam::make(), 4u << 20, 1).value;
  auto s = Sync::create(arena, SyncKind::kEvent, 0, 0, 0, 9).value;
  EXPECT_EQ(Sync::open(arena, s->offset(), 10).status, Status::kNotFound);  // wrong id
  EXPECT_EQ(Sync::open(arena, s->offset() + 8, 9).status, Status::kCorruptedOffset);  // off the grid
  EXPECT_EQ(Sync::open(arena, 1ull << 40, 9).status, Status::kCorruptedOffset);  // outside any segment
  auto* h = arena->template translate_as<SyncHeader>(s->offset());
  ASSERT_NE(h, nullptr);
  if (h == nullptr) return;
  h->kind = 99;
  EXPECT_EQ(Sync::open(arena, s->offset(), 9).status, Status::kCorruptedState);
  h->kind = static_cast<uint32_t>(SyncKind::kEvent);
  auto again = Sync::open(arena, s->offset(), 9);
  ASSERT_EQ(again.status, Status::kOk);
  again.value->event_set();
  EXPECT_TRUE(s->event_is_set());
}

TEST(SyncForged, ForgedOwnerIsTakenOverNotTrusted) {
  auto arena = Arena::create(ShmFactory::make(), 4u << 20, 1).value;
  auto lock = Sync::create(arena, SyncKind::kLock, 0, 0, 0, 2).value;
  auto* h = arena->translate_as<SyncHeader>(lock->offset());
  ASSERT_NE(h, nullptr);
  if (h == nullptr) return;
  const uint64_t before = arena->counters().corruption_count;
  for (uint32_t forged : {0xffu | kLockHeld, 0x12345u, 0xffffffffu, kLockHeld /* holder 0 */}) {
    h->word.store(forged);
    EXPECT_EQ(until_done([&](const WaitSpec& w) { return lock->lock_acquire(w); }), Status::kPeerDied) << forged;
    EXPECT_EQ(lock->lock_release(), Status::kOk);
  }
  EXPECT_GE(arena->counters().corruption_count, before + 3);
  // Forged per-holder entries: a dead occupant's huge count cannot push a bounded semaphore
  // above its bound.
  auto sem = Sync::create(arena, SyncKind::kBoundedSemaphore, 1, 1, kSyncReclaim, 3).value;
  auto* sh = arena->translate_as<SyncHeader>(sem->offset());
  ASSERT_NE(sh, nullptr);
  if (sh == nullptr) return;
  sh->holders[100].store(make_entry(0xdead, 0x7fffffff));
  sem->recover();
  EXPECT_EQ(sem->sem_value(), 1u);
}

}  // namespace
}  // namespace memchannel::testing
