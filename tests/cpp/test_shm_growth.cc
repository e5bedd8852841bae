// Arena growth over shared memory: a process that dies while it creates a segment (the entry
// of the segment table is its creating word, the file may or may not exist, sized or not) does
// not stop the arena from growing: the next party that needs the segment finds the creator
// dead, takes the entry over and creates the segment again (Arena::grow). A creator that is
// alive but slow never makes anyone wait inside the core: allocation reports kOutOfCapacity at
// once, and Channel::allocate waits on the space EventCount with the caller's deadline, woken
// when the segment is published.
//
// The crash tests need a build with MEMCHANNEL_TEST_HOOKS (they skip otherwise); the forged
// entry tests run in every build.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/arena.h"
#include "core/channel.h"
#include "core/futex.h"
#include "core/invariants.h"
#include "core/status.h"
#include "shm/cleanup.h"
#include "shm/names.h"
#include "shm/segment.h"
#include "shm/backend/shm_backend.h"
#include "tests/cpp/backends.h"

namespace memchannel::testing {
namespace {

constexpr uint64_t kKiB = 1ull << 10;
constexpr uint64_t kPayload = 256 * kKiB;  // a few of these fill segment 0 (4 MiB)
constexpr uint64_t kCapacity = 64 * kMiB;

std::atomic<uint32_t> g_target{0};

void kill_at_target(CrashPoint p) {
  if (static_cast<uint32_t>(p) != g_target.load(std::memory_order_relaxed)) return;
  ::kill(::getpid(), SIGKILL);
  ::_exit(99);  // not reached
}

struct Shared {
  std::string name;
  std::shared_ptr<Arena> arena;
};

Shared make_shared_arena() {
  static const std::string prefix = shm::random_test_prefix();
  auto backend = shm::ShmBackend::for_new_arena(prefix);
  Shared s;
  s.name = backend->base_name();
  auto created = Arena::create(std::move(backend), kCapacity, 21);
  EXPECT_EQ(created.status, Status::kOk);
  s.arena = created.value;
  return s;
}

std::shared_ptr<Arena> attach(const std::string& name) {
  auto probe = shm::ShmBackend::probe(name);
  EXPECT_TRUE(probe.ok());
  auto attached = Arena::attach(shm::ShmBackend::for_existing(name), probe.value);
  EXPECT_EQ(attached.status, Status::kOk);
  return attached.value;
}

// Allocates kPayload blocks until one lives in segment 1 (the arena grew); returns them.
std::vector<BlockHandle> allocate_until_grown(Arena& arena) {
  std::vector<BlockHandle> held;
  for (int i = 0; i < 64; ++i) {
    auto h = arena.allocate(kPayload, PayloadLayout{});
    if (!h.ok()) {
      ADD_FAILURE() << "allocation " << i << ": " << to_string(h.status);
      break;
    }
    held.push_back(h.value);
    if (segment_of(ref_to_offset(h.value.ref)) >= 1) break;
  }
  return held;
}

int64_t elapsed_ms(int64_t since_ns) { return (monotonic_ns() - since_ns) / 1'000'000; }

// A child attaches and fills segment 0 until it must create segment 1; it is SIGKILLed at
// `point`, inside the creation. The parent (and a third party) must still grow the arena.
void run_killed_creator(CrashPoint point) {
  SCOPED_TRACE(to_string(point));
  Shared s = make_shared_arena();
  ASSERT_NE(s.arena, nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    auto mine = attach(s.name);
    if (mine == nullptr) ::_exit(2);
    g_target.store(static_cast<uint32_t>(point));
    set_crash_hook(&kill_at_target);
    allocate_until_grown(*mine);
    ::_exit(3);  // never reached the point
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) << "child status " << wstatus;
  ArenaHeader* header = arena_header(*s.arena);
  const uint64_t entry = header->segment_bytes[1].load();
  ASSERT_TRUE(is_creating_word(entry)) << "the child died inside the creation of segment 1";
  ASSERT_EQ(creating_holder(entry), 2u) << "the creator's holder id is recorded";

  // The dead creator's slot is still active (nobody reaped it yet): growth does not wait for it.
  const int64_t t0 = monotonic_ns();
  std::vector<BlockHandle> held = allocate_until_grown(*s.arena);
  EXPECT_LT(elapsed_ms(t0), 1000) << "growth waited for a dead creator";
  ASSERT_FALSE(held.empty());
  const BlockHandle last = held.back();
  ASSERT_GE(segment_of(ref_to_offset(last.ref)), 1u) << "the arena grew past the dead creator's segment";
  EXPECT_EQ(header->segment_bytes[1].load() > 0 && !is_creating_word(header->segment_bytes[1].load()), true);
  uint64_t len = 0;
  uint8_t* data = s.arena->payload(last, &len);
  ASSERT_NE(data, nullptr);
  std::memset(data, 0x5a, len);

  // A third party maps the replaced segment: the same bytes (not the dead creator's file).
  {
    auto other = attach(s.name);
    ASSERT_NE(other, nullptr);
    uint8_t* seen = other->translate(ref_to_offset(last.ref) + sizeof(BlockHeader), kPayload);
    ASSERT_NE(seen, nullptr);
    EXPECT_EQ(seen[0], 0x5a);
    EXPECT_EQ(seen[kPayload - 1], 0x5a);
    other->detach();
  }
  // The dead child's blocks come back; the arena is consistent.
  s.arena->reap_dead_holders();
  for (const BlockHandle& h : held) EXPECT_EQ(s.arena->release(h), Status::kOk);
  const InvariantReport r = check_invariants(*s.arena);
  EXPECT_EQ(r.violations(), 0u) << r.describe();
  EXPECT_EQ(s.arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(s.arena->stats().corruption_count, 0u);
  s.arena.reset();  // the last holder removes every segment, the replaced one included
  EXPECT_TRUE(shm::list_segments(s.name).empty()) << "a segment (or the dead creator's file) outlived the arena";
}

// A backend whose growth-segment nonces come from a script first (then from ShmBackend): lets
// a test squat the exact names growth will try. Everything else is the ShmBackend's.
class ScriptedNonces final : public MemoryBackend {
 public:
  ScriptedNonces(std::unique_ptr<shm::ShmBackend> inner, std::vector<uint64_t> script)
      : inner_(std::move(inner)), script_(std::move(script)) {}
  Result<uint8_t*> create_segment(uint32_t i, uint64_t b) override { return inner_->create_segment(i, b); }
  Result<uint8_t*> map_segment(uint32_t i, uint64_t b) override { return inner_->map_segment(i, b); }
  bool tracks_holders() const override { return true; }
  HolderIdentity self_identity() const override { return inner_->self_identity(); }
  void remove_segments(uint32_t n) override { inner_->remove_segments(n); }
  uint64_t new_segment_nonce() override {
    if (next_ < script_.size()) return script_[next_++];
    return inner_->new_segment_nonce();
  }
  void use_segment_nonce(uint32_t i, uint64_t n) override { inner_->use_segment_nonce(i, n); }
  bool last_create_collided() const override { return inner_->last_create_collided(); }
  void discard_segment(uint32_t i) override { inner_->discard_segment(i); }
  bool lock_slot(uint32_t i) override { return inner_->lock_slot(i); }
  void unlock_slot(uint32_t i) override { inner_->unlock_slot(i); }
  HolderLiveness lock_liveness(uint32_t i) const override { return inner_->lock_liveness(i); }

 private:
  std::unique_ptr<shm::ShmBackend> inner_;
  std::vector<uint64_t> script_;
  size_t next_ = 0;
};

// Growth-segment names carry a recorded random nonce (docs/shm.md, "Threat model"): a file
// squatting the name growth tries is never adopted nor removed; the next nonce is tried, the
// arena grows, and teardown removes exactly the arena's own segments.
TEST(ShmGrowth, SquattedSegmentNamesAreSkipped) {
  const std::string prefix = shm::random_test_prefix();
  auto backend = shm::ShmBackend::for_new_arena(prefix);
  const std::string name = backend->base_name();
  const std::vector<uint64_t> squatted = {0x1111, 0x2222, 0x3333};
  std::vector<std::string> planted;
  for (uint64_t n : squatted) {
    char hex[9];
    std::snprintf(hex, sizeof hex, "%08llx", static_cast<unsigned long long>(n));
    planted.push_back(name + ".1." + hex);
    auto seg = shm::Segment::create(planted.back(), 4096);
    ASSERT_TRUE(seg.ok());
  }
  planted.push_back(name + ".1");  // the old, predictable name
  ASSERT_TRUE(shm::Segment::create(planted.back(), 4096).ok());
  {
    auto created = Arena::create(std::make_unique<ScriptedNonces>(std::move(backend), squatted), kCapacity, 22);
    ASSERT_EQ(created.status, Status::kOk);
    std::shared_ptr<Arena> arena = created.value;
    std::vector<BlockHandle> held = allocate_until_grown(*arena);
    ASSERT_FALSE(held.empty());
    EXPECT_GE(segment_of(ref_to_offset(held.back().ref)), 1u) << "growth stopped at a squatted name";
    const uint64_t nonce = arena_header(*arena)->segment_nonce[1].load();
    for (uint64_t n : squatted) EXPECT_NE(nonce, n);
    // Another process maps segment 1 by the recorded name: the same memory.
    uint64_t len = 0;
    uint8_t* data = arena->payload(held.back(), &len);
    ASSERT_NE(data, nullptr);
    data[0] = 0x7e;
    auto other = attach(name);
    ASSERT_NE(other, nullptr);
    uint8_t* seen = other->translate(ref_to_offset(held.back().ref) + sizeof(BlockHeader), 1);
    ASSERT_NE(seen, nullptr);
    EXPECT_EQ(seen[0], 0x7e);
    other->detach();
    for (const BlockHandle& h : held) EXPECT_EQ(arena->release(h), Status::kOk);
  }
  // Teardown removed the arena's segments and none of the squatters' files.
  for (const std::string& p : planted) {
    EXPECT_TRUE(shm::Segment::unlink(p).ok()) << p << " was removed by teardown";
  }
  EXPECT_TRUE(shm::list_segments(name).empty());
}

TEST(ShmGrowth, CreatorKilledAfterClaimingTheEntryIsReplaced) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  run_killed_creator(CrashPoint::kGrowSegmentClaimed);
}

TEST(ShmGrowth, CreatorKilledAfterCreatingTheFileIsReplaced) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  run_killed_creator(CrashPoint::kGrowSegmentCreated);
}

// Fills segment 0 so that the next kPayload allocation needs segment 1, without creating it.
std::vector<BlockHandle> fill_segment0(Arena& arena) {
  std::vector<BlockHandle> held;
  ArenaHeader* header = arena_header(arena);
  const uint64_t seg0 = header->segment_bytes[0].load();
  for (int i = 0; i < 64; ++i) {
    const uint64_t carve = header->carve.load();
    if (segment_of(carve) != 0 || within_segment(carve) + kPayload * 2 > seg0) break;
    auto h = arena.allocate(kPayload, PayloadLayout{});
    EXPECT_TRUE(h.ok());
    if (!h.ok()) break;
    held.push_back(h.value);
  }
  return held;
}

// An entry left "creating" by nobody alive (the legacy word, holder 0xff) is taken over at once.
TEST(ShmGrowth, EntryOfAnUnknownCreatorIsReplacedAtOnce) {
  Shared s = make_shared_arena();
  ASSERT_NE(s.arena, nullptr);
  std::vector<BlockHandle> held = fill_segment0(*s.arena);
  arena_header(*s.arena)->segment_bytes[1].store(kSegmentCreating);
  const int64_t t0 = monotonic_ns();
  auto h = s.arena->allocate(kPayload, PayloadLayout{});
  EXPECT_LT(elapsed_ms(t0), 500);
  ASSERT_EQ(h.status, Status::kOk);
  EXPECT_EQ(segment_of(ref_to_offset(h.value.ref)), 1u);
  held.push_back(h.value);
  for (const BlockHandle& b : held) EXPECT_EQ(s.arena->release(b), Status::kOk);
}

// A live creator that takes its time: nonblocking calls return at once, timed calls at their
// deadline (to within 50 ms), and a waiter is woken when the segment is published.
TEST(ShmGrowth, LiveCreatorNeverMakesACallWaitPastItsDeadline) {
  Shared s = make_shared_arena();
  ASSERT_NE(s.arena, nullptr);
  auto peer = attach(s.name);  // a live holder of this process: the "creator"
  ASSERT_NE(peer, nullptr);
  auto ch = Channel::create(s.arena, 0, 0, 5);
  ASSERT_EQ(ch.status, Status::kOk);
  std::vector<BlockHandle> held = fill_segment0(*s.arena);
  ArenaHeader* header = arena_header(*s.arena);
  const uint32_t creator = peer->holder();
  const uint64_t word =
      make_creating_word(creator, header->holders[creator - 1].incarnation.load());
  header->segment_bytes[1].store(word);

  int64_t t0 = monotonic_ns();
  auto nb = ch.value->allocate(kPayload, PayloadLayout{}, no_wait());
  EXPECT_EQ(nb.status, Status::kFull);
  EXPECT_LT(elapsed_ms(t0), 50) << "a nonblocking call waited";
  std::printf("live creator in the way: nonblocking allocate returned after %lld ms\n",
              static_cast<long long>(elapsed_ms(t0)));

  for (int64_t timeout_ms : {0, 100, 500}) {
    WaitSpec w;
    t0 = monotonic_ns();
    w.deadline_ns = t0 + timeout_ms * 1'000'000;
    auto timed = ch.value->allocate(kPayload, PayloadLayout{}, w);
    const int64_t took = elapsed_ms(t0);
    EXPECT_EQ(timed.status, Status::kFull);
    EXPECT_GE(took, timeout_ms - 1);
    EXPECT_LE(took, timeout_ms + 50) << "timeout " << timeout_ms << " ms";
    std::printf("live creator in the way: timeout %lld ms returned after %lld ms\n",
                static_cast<long long>(timeout_ms), static_cast<long long>(took));
  }

  // The creator finishes (here: gives the entry back, as a failed creation does, and wakes the
  // waiters); a blocked allocation then grows the arena itself.
  std::atomic<bool> done{false};
  Result<BlockHandle> got;
  std::thread waiter([&] {
    got = ch.value->allocate(kPayload, PayloadLayout{}, forever());
    done.store(true);
  });
  ::usleep(50'000);
  EXPECT_FALSE(done.load()) << "the waiter did not wait for the creator";
  header->segment_bytes[1].store(0);
  notify_all(s.arena->space());
  waiter.join();
  ASSERT_EQ(got.status, Status::kOk);
  EXPECT_EQ(segment_of(ref_to_offset(got.value.ref)), 1u);
  held.push_back(got.value);
  for (const BlockHandle& b : held) EXPECT_EQ(s.arena->release(b), Status::kOk);
}

// All 128 holder slots taken by live processes: a distinct status, not "out of capacity".
TEST(ShmGrowth, HolderSlotExhaustionHasItsOwnStatus) {
  Shared s = make_shared_arena();
  ASSERT_NE(s.arena, nullptr);
  std::vector<std::shared_ptr<Arena>> holders;
  Status last = Status::kOk;
  for (uint32_t i = 0; i < kMaxHolders + 1; ++i) {
    auto probe = shm::ShmBackend::probe(s.name);
    ASSERT_TRUE(probe.ok());
    auto attached = Arena::attach(shm::ShmBackend::for_existing(s.name), probe.value);
    if (!attached.ok()) {
      last = attached.status;
      break;
    }
    holders.push_back(attached.value);
  }
  EXPECT_EQ(holders.size(), kMaxHolders - 1);
  EXPECT_EQ(last, Status::kNoHolderSlot);
  EXPECT_NE(std::string(to_string(last)).find("128"), std::string::npos);
  holders.clear();
  EXPECT_EQ(s.arena->stats().attached_holders, 1u);
}

}  // namespace
}  // namespace memchannel::testing
