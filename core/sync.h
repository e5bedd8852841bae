// Sync: locks, semaphores, events, conditions and barriers living in arena memory, shared by
// threads, interpreters and processes, and safe when a holder dies (docs/guide-sync.md, and
// docs/design.md "Synchronization primitives").
//
// One SyncHeader per primitive, in arena cells (Arena::allocate_cells, like a channel header):
// owned by the arena, not by the process that made it, so it outlives its creator. Its
// lifetime is the count of Sync objects attached to it (`attached`); the last detach frees it.
// A process killed while attached leaves its count behind: the header then lives as long as
// the arena (the last process to detach removes the arena's segments).
//
// Waiting: locks sleep on the lock word (a futex mutex with a waiters bit: a release wakes one
// sleeper, and makes a system call only when one sleeps); every other wait is the header's
// EventCount (core/waiter.h). Futexes: no polling, no helper thread. A wait returns each slice (WaitSpec::slice_ns) and, before it does, checks
// the liveness of whoever it waits for (Arena::occupant_alive: holder slot + incarnation), so
// no wait hangs on a dead process.
//
// Owner identity (Lock, RLock): the lock word is kLockWaiters (someone sleeps on the word) |
// kLockHeld | incarnation(22) << 8 | holder(8),
// the acquirer's holder slot and the incarnation of its occupancy. A waiter that finds the
// word's occupant dead (or the word forged: no such holder, no held bit) takes the lock over
// by CAS from the exact word it judged, and is told (Status::kPeerDied: acquired, previous
// owner died). Threads of one process share a holder; an RLock also records the owning
// thread (a process-local token) and its depth, written only by the owner.
//
// Per-holder table (Semaphore, Condition, Barrier): entry[holder - 1], one 8-byte word per
// holder slot. recover() gives back what a dead occupant's entry says it held: permits come
// back (a bounded semaphore never above its bound), waiters are unregistered, a barrier breaks.
//
// Semaphore (with kSyncReclaim): every acquire and release is one CAS on the semaphore word
// (`state`), which holds the count and names the operation it made: the holder, the holder's
// operation sequence number, and the change of that holder's entry (+1 for an acquire, -n for
// a release). Until that change is folded into the holder's entry (entry seq == word seq),
// the word is the record of it; anyone about to replace the word folds it first (idempotent:
// a CAS from seq - 1 to seq), so the word never drops an unfolded change, and a dead holder's
// permits are exactly entry count + (the word's change, if unfolded). Recovery returns them
// with one CAS of the word that also names the entry's decrement (holder = the dead slot), so
// a recoverer killed midway leaves the rest to the next (docs/guide-sync.md, "Semaphore
// word"). Entry: count(32, signed: negative for a holder that released more than it
// acquired, which gives back nothing) | incarnation(16) | seq(16).
// Condition: entry = count(32, signed) | incarnation(32), its registered waiters; two steps
// (the word, then the entry), ordered so that a process killed in between errs towards a
// spurious wake-up, never a hang. Barrier: the generation of its last arrival (the registered
// parties: see recover()).
// (tests/cpp/test_sync_crash.cc, SyncCrashPoints.)
//
//   SyncHeader (in arena cells)
//   +-------------------------------+ 0     identity: magic, version, kind, sync id, limit,
//   |                               |       flags (immutable after create)
//   +-------------------------------+ 64    word: lock word / event flag
//   |                               |       owner_thread, depth (RLock), state (Semaphore:
//   |                               |       see make_sem; Condition: waiting(32)|signals(32);
//   |                               |       Barrier: see make_barrier)
//   +-------------------------------+ 128   changed: EventCount every waiter sleeps on
//   +-------------------------------+ 192   attached: Sync objects using this header
//   +-------------------------------+ 256   holders[128]: per-holder table (8 bytes each)
//   +-------------------------------+ 1280
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>

#include "core/arena.h"
#include "core/crash_points.h"
#include "core/status.h"
#include "core/waiter.h"

namespace memchannel {

inline constexpr uint64_t kSyncMagic = 0x31434e5953434d4dull;  // "MMCSYNC1"
inline constexpr uint32_t kSyncLayoutVersion = 2;  // 2: the semaphore word and entries (make_sem)

enum class SyncKind : uint32_t {
  kLock = 1,
  kRLock = 2,
  kSemaphore = 3,
  kBoundedSemaphore = 4,
  kEvent = 5,
  kCondition = 6,
  kBarrier = 7,
};
constexpr bool valid_sync_kind(uint32_t k) { return k >= 1 && k <= 7; }

// flags
inline constexpr uint32_t kSyncReclaim = 1;  // Semaphore: give back a dead holder's permits

// The lock word.
inline constexpr uint32_t kLockHeld = 1u << 30;
inline constexpr uint32_t kLockWaiters = 1u << 31;  // someone sleeps on the word: wake on release
inline constexpr uint32_t kLockIncarnationMask = 0x3fffff;  // 22 bits
constexpr uint32_t make_lock_word(uint32_t holder, uint32_t incarnation) {
  return kLockHeld | ((incarnation & kLockIncarnationMask) << 8) | (holder & 0xff);
}
constexpr uint32_t lock_holder(uint32_t w) { return w & 0xff; }
constexpr uint32_t lock_incarnation(uint32_t w) { return (w >> 8) & kLockIncarnationMask; }
static_assert(lock_holder(make_lock_word(128, 0x3fffff)) == 128);
static_assert(lock_incarnation(make_lock_word(128, 0x123456)) == 0x123456 % (1u << 22));

// A per-holder table entry (Semaphore, Condition): count(32, signed) << 32 | incarnation(32).
// The count is in the high half so that adding or subtracting 1 << 32 changes only the count
// (a carry out of the top is dropped): one fetch_add per update.
constexpr uint64_t make_entry(uint32_t incarnation, int32_t count) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(count)) << 32) | incarnation;
}
constexpr uint32_t entry_incarnation(uint64_t e) { return static_cast<uint32_t>(e); }
constexpr int32_t entry_count(uint64_t e) { return static_cast<int32_t>(static_cast<uint32_t>(e >> 32)); }
static_assert(entry_count(make_entry(7, -3)) == -3 && entry_incarnation(make_entry(7, -3)) == 7);
static_assert(entry_count(make_entry(7, 1) + (~0ull << 32)) == 0);

// Semaphore word (`state`): count(32) | holder(8) << 32 | seq(16) << 40 | delta(8, signed) << 56:
// the permits available, and the last operation: its holder slot (0: none), that holder's
// operation number and the change it makes to the holder's entry count. A release of more
// than kSemMaxDelta permits is made in steps.
inline constexpr uint32_t kSemMaxDelta = 127;
constexpr uint64_t make_sem(uint32_t count, uint32_t holder, uint32_t seq, int32_t delta) {
  return count | (static_cast<uint64_t>(holder & 0xff) << 32) | (static_cast<uint64_t>(seq & 0xffff) << 40) |
         (static_cast<uint64_t>(static_cast<uint8_t>(static_cast<int8_t>(delta))) << 56);
}
constexpr uint32_t sem_count(uint64_t w) { return static_cast<uint32_t>(w); }
constexpr uint32_t sem_holder(uint64_t w) { return static_cast<uint32_t>(w >> 32) & 0xff; }
constexpr uint32_t sem_seq(uint64_t w) { return static_cast<uint32_t>(w >> 40) & 0xffff; }
constexpr int32_t sem_delta(uint64_t w) { return static_cast<int8_t>(static_cast<uint8_t>(w >> 56)); }
static_assert(sem_count(make_sem(0xffffffffu, 128, 0xffff, -127)) == 0xffffffffu);
static_assert(sem_holder(make_sem(7, 128, 0xffff, -127)) == 128 && sem_seq(make_sem(7, 128, 0xffff, -127)) == 0xffff);
static_assert(sem_delta(make_sem(7, 128, 0xffff, -127)) == -127 && sem_delta(make_sem(7, 1, 2, 127)) == 127);
// Semaphore entry: count(32, signed) << 32 | incarnation(16) << 16 | seq(16).
constexpr uint64_t make_sem_entry(int32_t count, uint32_t incarnation, uint32_t seq) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(count)) << 32) | ((incarnation & 0xffff) << 16) | (seq & 0xffff);
}
constexpr int32_t sem_entry_count(uint64_t e) { return static_cast<int32_t>(static_cast<uint32_t>(e >> 32)); }
constexpr uint32_t sem_entry_incarnation(uint64_t e) { return static_cast<uint32_t>(e >> 16) & 0xffff; }
constexpr uint32_t sem_entry_seq(uint64_t e) { return static_cast<uint32_t>(e) & 0xffff; }
static_assert(sem_entry_count(make_sem_entry(-5, 0x12345, 0xfffff)) == -5);
static_assert(sem_entry_incarnation(make_sem_entry(-5, 0x12345, 0xfffff)) == 0x2345);
static_assert(sem_entry_seq(make_sem_entry(-5, 0x12345, 0xfffff)) == 0xffff);

// Barrier state word: generation(30) << 34 | reset(1) << 33 | broken(1) << 32 | arrived(32).
// arrived == parties while the last arrival runs the action (before it releases the others).
constexpr uint64_t barrier_generation(uint64_t s) { return s >> 34; }
constexpr bool barrier_broken(uint64_t s) { return ((s >> 32) & 1) != 0; }
constexpr bool barrier_was_reset(uint64_t s) { return ((s >> 33) & 1) != 0; }
constexpr uint32_t barrier_arrived(uint64_t s) { return static_cast<uint32_t>(s); }
constexpr uint64_t make_barrier(uint64_t generation, bool reset, bool broken, uint32_t arrived) {
  return ((generation & 0x3fffffffull) << 34) | (uint64_t{reset} << 33) | (uint64_t{broken} << 32) | arrived;
}
static_assert(barrier_generation(make_barrier(0x3fffffff, true, false, 7)) == 0x3fffffff);
static_assert(barrier_was_reset(make_barrier(1, true, false, 7)) && !barrier_broken(make_barrier(1, true, false, 7)));

struct SyncHeader {
  uint64_t magic;
  uint32_t version;
  uint32_t kind;        // SyncKind
  uint64_t sync_id;
  uint32_t limit;       // BoundedSemaphore: the bound; Barrier: parties
  uint32_t flags;
  uint64_t reserved0_[4];
  alignas(kCacheLine) std::atomic<uint32_t> word;    // lock word / permits / event flag
  uint32_t reserved1_;
  std::atomic<uint64_t> owner_thread;                // RLock: owner's thread token
  std::atomic<uint32_t> depth;                       // RLock: recursion depth (owner-written)
  uint32_t reserved2_;
  std::atomic<uint64_t> state;                       // Condition / Barrier
  alignas(kCacheLine) EventCount changed;
  alignas(kCacheLine) std::atomic<uint32_t> attached;
  uint32_t reserved3_;
  alignas(kCacheLine) std::atomic<uint64_t> holders[kMaxHolders];
};
static_assert(std::is_standard_layout_v<SyncHeader>);
static_assert(offsetof(SyncHeader, kind) == 12);
static_assert(offsetof(SyncHeader, sync_id) == 16);
static_assert(offsetof(SyncHeader, limit) == 24);
static_assert(offsetof(SyncHeader, word) == 64);
static_assert(offsetof(SyncHeader, owner_thread) == 72);
static_assert(offsetof(SyncHeader, depth) == 80);
static_assert(offsetof(SyncHeader, state) == 88);
static_assert(offsetof(SyncHeader, changed) == 128);
static_assert(offsetof(SyncHeader, attached) == 192);
static_assert(offsetof(SyncHeader, holders) == 256);
static_assert(sizeof(SyncHeader) == 1280);
static_assert(std::atomic<uint64_t>::is_always_lock_free && std::atomic<uint32_t>::is_always_lock_free);

// What Barrier::arrive tells its caller.
struct BarrierTicket {
  uint64_t generation = 0;
  uint32_t index = 0;   // arrival order, 0 .. parties - 1
  bool last = false;    // index == parties - 1: run the action, then barrier_release
};

// Concurrency: every member may be called from any thread (and, over a shared backend, any
// process) at once. Waiting members return kOk, kTimedOut (deadline; also block=False),
// kInterrupted (slice over: check signals, call again with the same spec), or as stated.
class Sync {
 public:
  // value: Semaphore's initial permits, Event's initial flag (0/1), else 0. limit: the
  // bound (BoundedSemaphore, >= value) or parties (Barrier, >= 1).
  static Result<std::shared_ptr<Sync>> create(std::shared_ptr<Arena> arena, SyncKind kind, uint32_t value,
                                              uint32_t limit, uint32_t flags, uint64_t sync_id);
  // Opens the primitive at `offset` of `arena` (validated: grid, bounds, magic, version, kind,
  // id). kNotFound if it is being freed or its id differs.
  static Result<std::shared_ptr<Sync>> open(std::shared_ptr<Arena> arena, Offset offset, uint64_t sync_id);
  Sync(const Sync&) = delete;
  Sync& operator=(const Sync&) = delete;
  ~Sync();
  // Gives back this object's attach (the last frees the header). Idempotent.
  void detach();
  // In a forked child: take an attach of its own (the inherited one is the parent's).
  bool reattach_after_fork();
  bool held_here() const { return fork_generation_.load(std::memory_order_relaxed) == fork_generation(); }

  SyncKind kind() const { return kind_; }
  uint32_t limit() const { return limit_; }
  uint64_t sync_id() const { return sync_id_; }
  Offset offset() const { return offset_; }
  const std::shared_ptr<Arena>& arena() const { return arena_; }

  // Lock / RLock. acquire: kOk, kPeerDied (acquired; the previous owner died holding it),
  // kTimedOut, kInterrupted. release: kOk; kNotHolder when not locked (Lock) or not owned by
  // this thread (RLock).
  Status lock_acquire(const WaitSpec& wait);
  // One attempt without any liveness check or clock read (the uncontended fast path):
  // kOk, or kFull (held, or no permit); callers then wait with lock_acquire / sem_acquire.
  Status lock_try();
  Status sem_try() { return sem_try_fast() ? Status::kOk : try_sem(); }
  // release(1), with the same fast path.
  Status sem_release_one() { return sem_release_fast() ? Status::kOk : sem_release(1); }
  Status lock_release();
  // Lock (not RLock): the uncontended acquire and release inline (the bindings' fast path).
  // false: nothing done (held, not held, or a sleeper to wake): take lock_try / lock_release.
  bool lock_try_fast() {
    if (kind_ != SyncKind::kLock) return false;
    uint32_t w = 0;
    if (!header_->word.compare_exchange_strong(w, make_lock_word(arena_->holder(), arena_->incarnation()),
                                               std::memory_order_acquire, std::memory_order_relaxed)) {
      return false;
    }
    MEMCHANNEL_CRASH_POINT(kSyncLockTaken);
    return true;
  }
  bool lock_release_fast() {
    if (kind_ != SyncKind::kLock) return false;
    uint32_t w = header_->word.load(std::memory_order_relaxed);
    if (w == 0 || (w & kLockWaiters) != 0) return false;
    if (!header_->word.compare_exchange_strong(w, 0, std::memory_order_seq_cst, std::memory_order_relaxed)) return false;
    MEMCHANNEL_CRASH_POINT(kSyncLockReleased);
    return true;
  }
  bool locked() const;
  bool owned_here() const;  // RLock: by this thread; Lock: locked by anyone
  // Condition support: release an RLock completely (*depth gets its depth), and take it back.
  Status rlock_release_all(uint32_t* depth);
  Status rlock_restore(uint32_t depth, const WaitSpec& wait);

  // Semaphore. release: kFull when a bounded semaphore would exceed its bound (nothing done).
  Status sem_acquire(const WaitSpec& wait);
  Status sem_release(uint32_t n);
  uint32_t sem_value() const;

  // Event.
  void event_set();
  void event_clear();
  bool event_is_set() const;
  Status event_wait(const WaitSpec& wait);

  // Condition: cond_register before releasing the lock, then cond_wait: kOk (notified),
  // kTimedOut (unregistered), kInterrupted (still registered: call again).
  void cond_register();
  Status cond_wait(const WaitSpec& wait);
  uint32_t cond_notify(uint32_t n);  // returns how many waiters it granted a wake-up
  uint32_t cond_waiting() const;

  // Barrier. arrive: kOk, kClosed (broken), or (while the round before runs its action) as a
  // wait. wait: kOk (released), kClosed (broken),
  // kTimedOut (the wait broke the barrier), kInterrupted.
  Result<BarrierTicket> barrier_arrive(const WaitSpec& wait);
  Status barrier_wait(const BarrierTicket& t, const WaitSpec& wait);
  void barrier_release(const BarrierTicket& t);
  void barrier_abort();
  void barrier_reset();
  uint32_t barrier_waiting() const;
  bool barrier_is_broken() const;

  // Applies the per-holder entries of dead holders (see the header comment); returns how many
  // holders it reclaimed. Waits call it each slice; tests call it directly.
  uint32_t recover();
  // Permits / waiters / participations reclaimed by this object's recover() calls.
  uint64_t reclaimed() const { return reclaimed_.load(std::memory_order_relaxed); }

 private:
  Sync(std::shared_ptr<Arena> arena, SyncHeader* header, Offset offset);
  uint32_t my_lock_word() const;
  uint32_t my_incarnation() const;
  static uint64_t thread_token();
  // One attempt: kOk, kPeerDied, or kFull (held by a live owner).
  Status try_lock(bool check_owner);
  void take_owner();  // RLock: record this thread, depth 1
  Status try_sem();
  // Semaphore accounting (make_sem): this process's holder slot if it keeps an entry (a
  // reclaiming semaphore on a backend that tracks holders), else 0; adopts the slot's entry
  // from a dead earlier occupant on first use.
  uint32_t sem_slot() {
    if (!sem_tracked_) return 0;
    const uint32_t holder = arena_->holder();
    // Adopted already by this object for this occupancy (a forked child has another slot).
    if (holder == sem_adopted_holder_.load(std::memory_order_relaxed) &&
        (arena_->incarnation() & 0xffff) == sem_adopted_incarnation_.load(std::memory_order_relaxed)) {
      return holder;
    }
    return sem_adopt();
  }
  uint32_t sem_adopt();
  // The uncontended semaphore steps inline: the word names this holder's last change, folded
  // (the steady state of a holder that takes and gives back permits); no sequence wrap, no
  // count at a limit. One CAS of the word, one of the entry (which a helper may have done).
  // false: nothing done, take the general path (try_sem, sem_release).
  bool sem_try_fast() {
    const uint32_t mine = sem_slot();
    if (mine == 0) return false;
    std::atomic<uint64_t>& entry = header_->holders[mine - 1];
    const uint64_t e = entry.load(std::memory_order_acquire);
    uint64_t w = header_->state.load(std::memory_order_acquire);
    if (sem_holder(w) != mine || sem_seq(w) != sem_entry_seq(e) || sem_count(w) == 0 || sem_entry_seq(e) == 0xffff ||
        sem_entry_count(e) == std::numeric_limits<int32_t>::max()) {
      return false;
    }
    MEMCHANNEL_CRASH_POINT(kSyncSemIntent);
    // count - 1, seq + 1 (no carry: seq < 0xffff), delta +1.
    const uint64_t next = (((w - 1) + (uint64_t{1} << 40)) & ~(uint64_t{0xff} << 56)) | (uint64_t{1} << 56);
    if (!header_->state.compare_exchange_strong(w, next, std::memory_order_acq_rel, std::memory_order_relaxed)) return false;
    MEMCHANNEL_CRASH_POINT(kSyncSemTaken);
    uint64_t expected = e;  // entry count + 1 (mod 2^32 in the high half), seq + 1
    entry.compare_exchange_strong(expected, e + (uint64_t{1} << 32) + 1, std::memory_order_acq_rel, std::memory_order_relaxed);
    return true;
  }
  bool sem_release_fast() {
    const uint32_t mine = sem_slot();
    if (mine == 0) return false;
    std::atomic<uint64_t>& entry = header_->holders[mine - 1];
    const uint64_t e = entry.load(std::memory_order_acquire);
    uint64_t w = header_->state.load(std::memory_order_acquire);
    if (sem_holder(w) != mine || sem_seq(w) != sem_entry_seq(e) || sem_count(w) >= sem_bound_ ||
        sem_entry_seq(e) == 0xffff || sem_entry_count(e) == std::numeric_limits<int32_t>::min()) {
      return false;
    }
    MEMCHANNEL_CRASH_POINT(kSyncSemIntent);
    // count + 1 (< bound <= 0xffffffff: no carry), seq + 1, delta -1.
    const uint64_t next = (((w + 1) + (uint64_t{1} << 40)) & ~(uint64_t{0xff} << 56)) | (uint64_t{0xff} << 56);
    if (!header_->state.compare_exchange_strong(w, next, std::memory_order_seq_cst, std::memory_order_relaxed)) return false;
    MEMCHANNEL_CRASH_POINT(kSyncSemReleased);
    uint64_t expected = e;  // entry count - 1 (mod 2^32 in the high half), seq + 1
    entry.compare_exchange_strong(expected, e - (uint64_t{1} << 32) + 1, std::memory_order_acq_rel, std::memory_order_relaxed);
    // As notify_all after a seq_cst RMW (sync.cc, wake_after_rmw).
    if (header_->changed.waiters.load(std::memory_order_seq_cst) != 0) wake_changed();
    return true;
  }
  void wake_changed();
  // Folds the change named by semaphore word `w` into its holder's entry (if not yet).
  void sem_fold(uint64_t w);
  // Gives back what holder slot i + 1 (occupant incarnation `incarnation`, dead) held; returns
  // the permits put back in the count.
  uint32_t sem_recover_slot(uint32_t i, uint32_t incarnation);
  Result<BarrierTicket> try_arrive();  // kFull while the last arrival runs the action
  // Whether this object's next liveness check is due (at most one per kOwnerCheckNs).
  bool check_due();
  void add_entry(int64_t delta);
  // Waits with `ready`, running the liveness checks at each slice end.
  template <typename Ready>
  Status wait_for(const WaitSpec& wait, Ready&& ready);
  void free_header();

  std::shared_ptr<Arena> arena_;
  SyncHeader* header_;
  Offset offset_;
  SyncKind kind_;        // private copies, read once at open
  uint32_t limit_;
  uint32_t flags_;
  uint64_t sync_id_;
  bool tracked_;         // the backend tracks holders (shm)
  bool sem_tracked_;     // a semaphore that keeps per-holder entries: kSyncReclaim and tracked_
  uint32_t sem_bound_;   // a semaphore's bound: limit_ (BoundedSemaphore) or 0xffffffff
  // Semaphore: the holder slot and incarnation whose entry this object adopted (sem_slot).
  std::atomic<uint32_t> sem_adopted_holder_{0};
  std::atomic<uint32_t> sem_adopted_incarnation_{0};
  std::atomic<uint64_t> reclaimed_{0};
  std::atomic<int64_t> next_check_ns_{0};
  std::atomic<uint64_t> fork_generation_{fork_generation()};
  std::atomic<bool> attached_{true};
  std::mutex reattach_mutex_;
};

}  // namespace memchannel
