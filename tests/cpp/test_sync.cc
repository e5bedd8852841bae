// core/sync.h without crashes: semantics over both backends and validation of what a peer
// may have written (forged lock words, forged headers). Crash points: test_sync_crash.cc.
#include <gtest/gtest.h>

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
