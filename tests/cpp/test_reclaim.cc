// Prompt reclamation (issue 10, item 19): after a peer dies, what it held (blocks, queue nodes,
// its holder slot) comes back within 1 s as soon as a survivor makes any call of the core:
// stats, send, recv, or a wait already in progress. No allocation pressure, no explicit reap
// (Arena::maybe_reap). A forked child reserves 3 blocks and receives 2 messages, then is
// SIGKILLed; the parent makes only the one kind of call under test and watches the counters
// through Arena::counters(), which never sweeps.
//
// Typed over the backends whose holders can die apart from each other: the shm backend (the
// heap backend is one process, and fork shares none of its memory).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "tests/cpp/backends.h"
#include "tests/cpp/crash_hook.h"
#include "shm/cleanup.h"

namespace memchannel::testing {
namespace {

constexpr int64_t kWithinNs = 1'000'000'000;  // the bound

enum class Call { kChannelStats, kArenaStats, kSend, kRecv, kWaitInProgress };

const char* name_of(Call c) {
  switch (c) {
    case Call::kChannelStats: return "Channel::stats";
    case Call::kArenaStats: return "Arena::stats";
    case Call::kSend: return "Channel::send";
    case Call::kRecv: return "Channel::recv";
    case Call::kWaitInProgress: return "a recv waiting";
  }
  return "?";
}

uint32_t active_slots(Arena& arena) {
  uint32_t n = 0;
  for (const HolderSlot& slot : arena_header(arena)->holders) n += slot.state.load() == kSlotActive ? 1 : 0;
  return n;
}

// The files of an arena over shm (tests/cpp/backends.h, ShmFactory).
std::string segment_path(Arena& arena) {
  return "/dev/shm/" + dynamic_cast<shm::ShmBackend&>(arena.backend()).segment_name(0);
}
bool file_exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }
// This test process's prefix (shm/names.h, random_test_prefix): what a failed check cleans.
std::string test_prefix(const std::string& path) {
  const std::string base = path.substr(path.rfind('/') + 1);
  return base.substr(0, base.size() - 32);
}
// Segment 0 and every growth segment (`<base>.<i>.<nonce>`) of the arena at `path`.
int files_of(const std::string& path) {
  const std::string base = path.substr(path.rfind('/') + 1);
  int n = 0;
  for (const std::string& name : shm::list_segments(base)) n += name == base || name.rfind(base + ".", 0) == 0;
  return n;
}

// Forks a process that attaches, reserves 3 blocks and is SIGKILLed; returns its holder id
// (0 on failure). Nobody has reaped it yet when this returns (if the caller stopped sweeping).
uint32_t kill_a_holder_of_three_blocks(Arena& arena) {
  int ready[2];
  if (::pipe(ready) != 0) return 0;
  const pid_t victim = ::fork();
  if (victim == 0) {
    ::close(ready[0]);
    arena.reattach_after_fork();
    if (arena.holder() == 0) ::_exit(5);
    for (int i = 0; i < 3; ++i) {
      if (!arena.allocate(1000, PayloadLayout{}).ok()) ::_exit(6);
    }
    const uint32_t holder = arena.holder();
    if (::write(ready[1], &holder, sizeof holder) != sizeof holder) ::_exit(8);
    for (;;) ::pause();
  }
  ::close(ready[1]);
  uint32_t holder = 0;
  if (::read(ready[0], &holder, sizeof holder) != static_cast<ssize_t>(sizeof holder)) holder = 0;
  ::close(ready[0]);
  ::kill(victim, SIGKILL);
  int wstatus = 0;
  ::waitpid(victim, &wstatus, 0);
  return holder;
}

template <typename Factory>
class ReclaimTest : public BackendTest<Factory> {
 protected:
  void run(Call call) {
    SCOPED_TRACE(name_of(call));
    auto arena = this->make_arena(64 * kMiB);
    ASSERT_NE(arena, nullptr);
    auto ch = this->make_channel(arena);
    ASSERT_NE(ch, nullptr);
    // Blocks the parent sends from during the test (allocated now: no allocation later).
    std::vector<BlockHandle> spare;
    for (int i = 0; i < 256; ++i) spare.push_back(arena->allocate(64, PayloadLayout{}).value);
    const uint64_t baseline = arena->counters().blocks_in_use;
    const uint64_t nodes_baseline = arena->counters().nodes_in_use;
    ASSERT_EQ(active_slots(*arena), 1u);
    for (int i = 0; i < 2; ++i) {
      auto h = arena->allocate(64, PayloadLayout{});
      ASSERT_TRUE(h.ok());
      ASSERT_EQ(ch->send(h.value, no_wait()), Status::kOk);
    }

    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(ready[0]);
      arena->reattach_after_fork();
      if (arena->holder() == 0) ::_exit(5);
      for (int i = 0; i < 3; ++i) {
        if (!arena->allocate(1000, PayloadLayout{}).ok()) ::_exit(6);
      }
      for (int i = 0; i < 2; ++i) {
        if (!ch->recv(no_wait()).ok()) ::_exit(7);
      }
      const char byte = 1;
      if (::write(ready[1], &byte, 1) != 1) ::_exit(8);
      for (;;) ::pause();
    }
    ::close(ready[1]);
    char byte = 0;
    ssize_t got = 0;
    do {
      got = ::read(ready[0], &byte, 1);
    } while (got < 0 && errno == EINTR);
    ::close(ready[0]);
    ASSERT_EQ(got, 1) << "the child failed before holding its blocks";
    EXPECT_EQ(arena->counters().blocks_in_use, baseline + 5) << "3 reserved and 2 received";
    EXPECT_EQ(active_slots(*arena), 2u);

    // A wait in progress: a receiver thread blocked on the empty channel, nothing else.
    std::thread waiter;
    if (call == Call::kWaitInProgress) {
      waiter = std::thread([&] {
        WaitSpec w;
        w.deadline_ns = monotonic_ns() + 10 * kWithinNs;
        auto r = ch->recv(w);
        EXPECT_EQ(r.status, Status::kClosed);
      });
    }
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int wstatus = 0;
    ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus));
    const int64_t dead_at = monotonic_ns();

    size_t sent = 0;
    bool back = false;
    while (!back && monotonic_ns() - dead_at < kWithinNs) {
      switch (call) {
        case Call::kChannelStats: (void)ch->stats(); break;
        case Call::kArenaStats: (void)arena->stats(); break;
        case Call::kSend:
          ASSERT_LT(sent, spare.size());
          ASSERT_EQ(ch->send(spare[sent++], no_wait()), Status::kOk);
          break;
        case Call::kRecv: EXPECT_EQ(ch->recv(no_wait()).status, Status::kEmpty); break;
        case Call::kWaitInProgress: break;
      }
      const ArenaStats s = arena->counters();
      back = s.blocks_in_use == baseline && active_slots(*arena) == 1 && s.attached_holders == 1;
      if (!back) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // polls a time bound
    }
    const ArenaStats s = arena->counters();
    EXPECT_TRUE(back) << "not reclaimed within 1 s: blocks_in_use " << s.blocks_in_use << " (baseline "
                      << baseline << "), active slots " << active_slots(*arena) << ", attached "
                      << s.attached_holders;
    EXPECT_EQ(s.reclaimed_blocks, 5u);
    EXPECT_EQ(s.nodes_in_use, nodes_baseline + sent);  // the two nodes the child dequeued came back
    if (waiter.joinable()) {
      ch->close();
      waiter.join();
    }
    while (true) {
      auto r = ch->recv(no_wait());
      if (!r.ok()) break;
      arena->release(r.value);
    }
    for (size_t i = sent; i < spare.size(); ++i) arena->release(spare[i]);
    expect_quiescent_arena(*arena, 0, 1);
  }
};

using HolderBackends = ::testing::Types<ShmFactory>;
TYPED_TEST_SUITE(ReclaimTest, HolderBackends, BackendNames);

TYPED_TEST(ReclaimTest, ChannelStatsReclaimsADeadPeer) { this->run(Call::kChannelStats); }
TYPED_TEST(ReclaimTest, ArenaStatsReclaimsADeadPeer) { this->run(Call::kArenaStats); }
TYPED_TEST(ReclaimTest, SendReclaimsADeadPeer) { this->run(Call::kSend); }
TYPED_TEST(ReclaimTest, RecvReclaimsADeadPeer) { this->run(Call::kRecv); }
TYPED_TEST(ReclaimTest, WaitInProgressReclaimsADeadPeer) { this->run(Call::kWaitInProgress); }

// The sweep is rate-limited per process: a burst of calls pays for one liveness sweep per
// interval, not one per call (the per-message path stays free of liveness system calls).
TYPED_TEST(ReclaimTest, SweepsAtMostOncePerInterval) {
  auto arena = this->make_arena(64 * kMiB);
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  arena->set_sweep_interval(60'000'000'000);  // a minute: no sweep during this test
  // A dead peer: a child that attaches and is killed at once.
  const pid_t pid = ::fork();
  if (pid == 0) {
    arena->reattach_after_fork();
    for (;;) ::pause();
  }
  while (active_slots(*arena) != 2) std::this_thread::yield();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  for (int i = 0; i < 10000; ++i) {
    auto h = arena->allocate(64, PayloadLayout{});
    ASSERT_TRUE(h.ok());
    ASSERT_EQ(ch->send(h.value, no_wait()), Status::kOk);
    auto r = ch->recv(no_wait());
    ASSERT_TRUE(r.ok());
    arena->release(r.value);
    (void)ch->stats();
  }
  EXPECT_EQ(active_slots(*arena), 2u) << "swept although the interval had not passed";
  arena->set_sweep_interval(0);  // due now
  (void)ch->stats();
  EXPECT_EQ(active_slots(*arena), 1u);
}

// Sweeps (any core call does: stats) until `done` or `within_ns`; returns done().
template <typename Done>
bool sweep_until(Arena& arena, Done&& done, int64_t within_ns = kWithinNs) {
  const int64_t start = monotonic_ns();
  while (!done() && monotonic_ns() - start < within_ns) {
    (void)arena.stats();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return done();
}

// A child plays a claim of a free slot and dies in it: with its identity written (before
// marking the slot active) or before writing any (the claim word then names its pid), after
// counting itself in the attach count (join_holders: slot, count, active). A plain stats() call
// must give the slot back; the count cannot be (the slot cannot say whether its claimer had
// counted itself yet), so it stays one high until the last live party leaves, which removes
// the segments all the same ("The attach window", core/recovery.cc).
void expect_dead_claimer_reclaimed(Arena& arena, bool write_identity) {
  ArenaHeader* header = arena_header(arena);
  const uint32_t attached = holders_count(header->attached_holders.load());
  const pid_t pid = ::fork();
  if (pid == 0) {
    const HolderIdentity me = arena.backend().self_identity();
    for (HolderSlot& slot : header->holders) {
      uint32_t expected = kSlotFree;
      const uint32_t claim = write_identity ? kSlotClaiming : slot_claiming(static_cast<uint64_t>(::getpid()));
      if (!slot.state.compare_exchange_strong(expected, claim)) continue;
      header->attached_holders.fetch_add(holders_joined(0));  // a claimer counts itself, then marks its slot active
      if (write_identity) {
        slot.identity[0].store(me.words[0]);
        slot.identity[1].store(me.words[1]);
      }
      ::_exit(0);  // killed here: the slot stays kSlotClaiming
    }
    ::_exit(1);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  auto claiming = [&] {
    uint32_t n = 0;
    for (const HolderSlot& slot : header->holders) n += slot_kind(slot.state.load()) == kSlotClaiming ? 1 : 0;
    return n;
  };
  ASSERT_EQ(claiming(), 1u);
  ASSERT_EQ(holders_count(header->attached_holders.load()), attached + 1);
  EXPECT_TRUE(sweep_until(arena, [&] { return claiming() == 0; })) << "the dead claimer's slot is still kSlotClaiming";
  EXPECT_EQ(holders_count(header->attached_holders.load()), attached + 1) << "given back: it may never have been counted";
  EXPECT_EQ(active_slots(arena), 1u);
}

// Killed after writing its identity, before marking the slot active (the window the 1-hour
// soak hit: the slot and the arena's attach count leaked, so the segments outlived every
// process).
TYPED_TEST(ReclaimTest, ClaimerKilledMidClaimGivesItsSlotBack) {
  auto arena = this->make_arena(4 * kMiB);
  ASSERT_NE(arena, nullptr);
  expect_dead_claimer_reclaimed(*arena, /*write_identity=*/true);
  const std::string path = segment_path(*arena);
  arena.reset();  // the last live party leaves: the dead claimer's unit does not keep the segments
  EXPECT_EQ(files_of(path), 0);
}

// Killed right after its claim, before it wrote any of its identity (core/arena_layout.h,
// HolderSlot: the claim word names the claimer's pid).
TYPED_TEST(ReclaimTest, ClaimerKilledBeforeItsIdentityGivesItsSlotBack) {
  auto arena = this->make_arena(4 * kMiB);
  ASSERT_NE(arena, nullptr);
  expect_dead_claimer_reclaimed(*arena, /*write_identity=*/false);
  const std::string path = segment_path(*arena);
  arena.reset();  // the last live party leaves: the dead claimer's unit does not keep the segments
  EXPECT_EQ(files_of(path), 0);
}

// A reaper killed half way through a reap: it had taken a dead holder's slot (kSlotReclaiming,
// naming itself) and died before freeing anything. The 10-minute soak found such a slot stuck
// for good, and with it the arena's attach count. The next sweep finds the reaper dead, takes
// the reap over and finishes it: the dead holder's blocks, both slots and the count come back.
TYPED_TEST(ReclaimTest, ReaperKilledMidReapIsFinishedByTheNextSweep) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  ArenaHeader* header = arena_header(*arena);
  const uint32_t attached = holders_count(header->attached_holders.load());
  const uint64_t baseline = arena->counters().blocks_in_use;
  arena->set_sweep_interval(-1);  // nobody sweeps before the reaper has played its part
  const uint32_t victim_holder = kill_a_holder_of_three_blocks(*arena);
  ASSERT_NE(victim_holder, 0u);
  int wstatus = 0;
  ASSERT_EQ(arena->counters().blocks_in_use, baseline + 3);
  // The reaper: attaches, takes the victim's slot for its reap, and dies.
  const pid_t reaper = ::fork();
  if (reaper == 0) {
    arena->reattach_after_fork();
    if (arena->holder() == 0) ::_exit(5);
    HolderSlot& mine = header->holders[arena->holder() - 1];
    HolderSlot& slot = header->holders[victim_holder - 1];
    uint32_t expected = kSlotActive;
    if (!slot.state.compare_exchange_strong(expected, slot_reclaiming(arena->holder(), mine.incarnation.load()))) {
      ::_exit(6);
    }
    ::kill(::getpid(), SIGKILL);
    ::_exit(7);
  }
  ASSERT_EQ(::waitpid(reaper, &wstatus, 0), reaper);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "status " << wstatus;
  ASSERT_EQ(slot_kind(header->holders[victim_holder - 1].state.load()), kSlotReclaiming);
  ASSERT_EQ(holders_count(header->attached_holders.load()), attached + 2);

  arena->set_sweep_interval(kSweepIntervalNs);
  sweep_until(*arena, [&] {
    return active_slots(*arena) == 1 && holders_count(header->attached_holders.load()) == attached &&
           slot_kind(header->holders[victim_holder - 1].state.load()) == kSlotFree;
  });
  EXPECT_EQ(slot_kind(header->holders[victim_holder - 1].state.load()), kSlotFree) << "the reap was not finished";
  EXPECT_EQ(active_slots(*arena), 1u) << "the reaper's own slot";
  EXPECT_EQ(holders_count(header->attached_holders.load()), attached);
  EXPECT_EQ(arena->counters().blocks_in_use, baseline) << "the victim's blocks";
}

// A reap begun by a process that is still attaching (it has no holder id yet) names its reaper
// by pid. While that process lives nobody takes the reap over (a reap recorded as "holder 0"
// was once taken over at once and run twice, decrementing the attach count twice: the soak's
// arena then refused every new participant as "being torn down"); once it dies, the next sweep
// finishes the reap.
TYPED_TEST(ReclaimTest, ReapByAnAttachingProcessIsTakenOverOnlyWhenItDies) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  ArenaHeader* header = arena_header(*arena);
  const uint32_t attached = holders_count(header->attached_holders.load());
  const uint64_t baseline = arena->counters().blocks_in_use;
  arena->set_sweep_interval(-1);
  const uint32_t victim_holder = kill_a_holder_of_three_blocks(*arena);
  ASSERT_NE(victim_holder, 0u);
  HolderSlot& slot = header->holders[victim_holder - 1];
  const pid_t reaper = ::fork();  // plays the attaching reaper: alive, doing nothing
  if (reaper == 0) {
    // A slotless reaper holds the slot's reap lock (core/backend.h, "Liveness locks").
    if (!arena->backend().lock_slot(kMaxHolders + victim_holder - 1)) ::_exit(3);
    for (;;) ::pause();
  }
  for (int i = 0; i < 2000 && arena->backend().lock_liveness(kMaxHolders + victim_holder - 1) != HolderLiveness::kAlive; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(arena->backend().lock_liveness(kMaxHolders + victim_holder - 1), HolderLiveness::kAlive);
  uint32_t expected = kSlotActive;
  ASSERT_TRUE(slot.state.compare_exchange_strong(expected, slot_reclaiming_by_pid(static_cast<uint64_t>(reaper))));
  arena->set_sweep_interval(kSweepIntervalNs);
  sweep_until(*arena, [] { return false; });  // several sweeps while the reaper lives
  EXPECT_EQ(slot_kind(slot.state.load()), kSlotReclaimingByPid) << "a live reaper's reap was taken over";
  EXPECT_EQ(holders_count(header->attached_holders.load()), attached + 1);
  ASSERT_EQ(::kill(reaper, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(reaper, &wstatus, 0), reaper);
  sweep_until(*arena, [&] { return slot_kind(slot.state.load()) == kSlotFree; });
  EXPECT_EQ(slot_kind(slot.state.load()), kSlotFree) << "the dead reaper's reap was not finished";
  EXPECT_EQ(holders_count(header->attached_holders.load()), attached) << "decremented once, for the victim";
  EXPECT_EQ(arena->counters().blocks_in_use, baseline);
}


// The attach window (core/recovery.cc, "The attach window"): a process that joins an arena
// (Arena::attach, or a forked child's reattach_after_fork) claims its holder slot, counts itself
// in the attach count, then marks its slot active. Killed in between, it must not keep the
// segments alive: the last live party to leave removes them (the `make test` runs of the sync
// crash tests left arenas whose every slot was free and whose count was still 1 or 2: children
// SIGKILLed while they re-attached). Stalled there alive instead, it must keep the arena working.
// Joins `arena` in a child (by fork + reattach_after_fork, or by name with Arena::attach).
std::shared_ptr<Arena> join(const std::shared_ptr<Arena>& arena, bool by_name) {
  if (!by_name) {
    arena->reattach_after_fork();
    return arena->holder() != 0 ? arena : nullptr;
  }
  const std::string base = dynamic_cast<shm::ShmBackend&>(arena->backend()).base_name();
  const auto bytes = shm::ShmBackend::probe(base);
  if (!bytes.ok()) return nullptr;
  auto attached = Arena::attach(shm::ShmBackend::for_existing(base), bytes.value);
  return attached.ok() ? attached.value : nullptr;
}

const CrashPoint kAttachWindow[] = {CrashPoint::kAttachSlotClaimed, CrashPoint::kAttachCounted};

TEST(AttachWindow, AttacherKilledInTheWindowLeavesNoSegmentsBehind) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  for (CrashPoint point : kAttachWindow) for (bool by_name : {false, true}) for (int victims : {1, 2}) {
    SCOPED_TRACE(std::string(to_string(point)) + (by_name ? " by name" : " by fork") + " x" + std::to_string(victims));
    auto arena = Arena::create(ShmFactory::make(), 4 * kMiB, 77).value;
    ASSERT_NE(arena, nullptr);
    const std::string path = segment_path(*arena);
    ASSERT_TRUE(file_exists(path));
    for (int v = 0; v < victims; ++v) {
      const pid_t pid = ::fork();
      if (pid == 0) {
        g_target.store(static_cast<uint32_t>(point));
        g_hits_left.store(1);
        set_crash_hook(kill_at_target);
        (void)join(arena, by_name);
        ::_exit(3);
      }
      ASSERT_TRUE(child_killed_at_point(pid, 3));
    }
    // The survivor keeps working (it reaps the dead attachers on the way).
    (void)arena->reap_dead_holders();
    auto block = arena->allocate(1000, PayloadLayout{});
    ASSERT_TRUE(block.ok());
    EXPECT_EQ(arena->release(block.value), Status::kOk);
    arena.reset();  // the last live party leaves
    EXPECT_EQ(files_of(path), 0) << "the segments outlived every live process";
    if (files_of(path) != 0) shm::cleanup_dead_arenas(test_prefix(path));
  }
}

// A live attacher stalled in the window: the others leaving never remove the segments under
// it once it is counted; stalled before it counted itself, it is refused (the arena is torn
// down) rather than handed an arena without segments. Either way nothing is left at the end.
std::atomic<int> g_stall_in{-1}, g_stall_out{-1};
void stall_at_target(CrashPoint p) {
  if (static_cast<uint32_t>(p) != g_target.load(std::memory_order_relaxed)) return;
  const char c = 1;
  char got = 0;
  if (::write(g_stall_in.load(), &c, 1) != 1 || ::read(g_stall_out.load(), &got, 1) != 1) ::_exit(7);
}

TEST(AttachWindow, StalledAttacherKeepsAWorkingArena) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  for (CrashPoint point : kAttachWindow) for (bool by_name : {false, true}) {
    SCOPED_TRACE(std::string(to_string(point)) + (by_name ? " by name" : " by fork"));
    const bool counted = point == CrashPoint::kAttachCounted;
    auto arena = Arena::create(ShmFactory::make(), 64 * kMiB, 77).value;
    ASSERT_NE(arena, nullptr);
    const std::string path = segment_path(*arena);
    int in[2], out[2];
    ASSERT_EQ(::pipe(in), 0);
    ASSERT_EQ(::pipe(out), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      g_stall_in.store(in[1]);
      g_stall_out.store(out[0]);
      g_target.store(static_cast<uint32_t>(point));
      set_crash_hook(stall_at_target);
      std::shared_ptr<Arena> mine = join(arena, by_name);
      set_crash_hook(nullptr);
      if (mine == nullptr) ::_exit(counted ? 4 : 0);  // refused: only before it counted itself
      if (!file_exists(path)) ::_exit(5);
      for (int i = 0; i < 8; ++i) {  // grows past segment 0: the names must still be there
        auto b = mine->allocate(1 << 20, PayloadLayout{});
        if (!b.ok()) ::_exit(6);
      }
      if (files_of(path) < 2) ::_exit(9);
      mine->detach();
      ::_exit(files_of(path) != 0 ? 8 : 0);  // the last one out removes the segments
    }
    char c = 0;
    ASSERT_EQ(::read(in[0], &c, 1), 1);  // the child is in the window
    arena.reset();                        // every other party leaves
    if (counted) {
      EXPECT_TRUE(file_exists(path)) << "removed under a live attacher";
    }
    ASSERT_EQ(::write(out[1], &c, 1), 1);
    int wstatus = 0;
    ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
    EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << "status " << wstatus;
    EXPECT_EQ(files_of(path), 0);
    for (int fd : {in[0], in[1], out[0], out[1]}) ::close(fd);
    if (files_of(path) != 0) shm::cleanup_dead_arenas(test_prefix(path));
  }
}


// An arena left by processes that all died, one of them in its attach window (counted, its slot
// never active) and the creator without detaching: every slot's lock is free, so
// cleanup_dead_arenas (`python -m memchannel cleanup`) removes it whatever its count says.
TEST(AttachWindow, CleanupRemovesAnArenaWhoseHoldersAllDied) {
  if (!kCrashHooksCompiled) GTEST_SKIP() << "built without MEMCHANNEL_TEST_HOOKS";
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  const pid_t creator = ::fork();
  if (creator == 0) {
    auto arena = Arena::create(ShmFactory::make(), 4 * kMiB, 77).value;
    if (arena == nullptr) ::_exit(2);
    const pid_t pid = ::fork();
    if (pid == 0) {
      g_target.store(static_cast<uint32_t>(CrashPoint::kAttachCounted));
      g_hits_left.store(1);
      set_crash_hook(kill_at_target);
      (void)join(arena, /*by_name=*/false);
      ::_exit(3);
    }
    int wstatus = 0;
    if (::waitpid(pid, &wstatus, 0) != pid || !WIFSIGNALED(wstatus)) ::_exit(4);
    const std::string path = segment_path(*arena);
    const uint32_t len = static_cast<uint32_t>(path.size());
    if (::write(report[1], &len, sizeof len) != sizeof len || ::write(report[1], path.data(), len) != len) ::_exit(5);
    ::_exit(0);  // dies holding its slot and count: nobody detaches
  }
  ::close(report[1]);
  uint32_t len = 0;
  ASSERT_EQ(::read(report[0], &len, sizeof len), static_cast<ssize_t>(sizeof len));
  std::string path(len, '\0');
  ASSERT_EQ(::read(report[0], path.data(), len), static_cast<ssize_t>(len));
  ::close(report[0]);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(creator, &wstatus, 0), creator);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << "status " << wstatus;
  ASSERT_EQ(files_of(path), 1);
  const std::vector<std::string> removed = shm::cleanup_dead_arenas(test_prefix(path));
  EXPECT_EQ(files_of(path), 0);
  EXPECT_EQ(std::count(removed.begin(), removed.end(), path.substr(path.rfind('/') + 1)), 1);
}

}  // namespace
}  // namespace memchannel::testing
