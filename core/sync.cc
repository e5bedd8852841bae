// Sync primitives in arena memory: see core/sync.h for the layout and the crash rules, and
// docs/guide-sync.md for the state machines.
#include "core/sync.h"

#include <algorithm>
#include <limits>
#include <new>
#include <utility>

#include "core/crash_points.h"

namespace memchannel {
namespace {

constexpr uint32_t kNoLimit = std::numeric_limits<uint32_t>::max();
// A contended acquire checks its owner's liveness at most this often outside slice ends.
constexpr int64_t kOwnerCheckNs = 50'000'000;

// Condition state: waiting(32) | signals(32).
constexpr uint32_t cond_waiters(uint64_t s) { return static_cast<uint32_t>(s >> 32); }
constexpr uint32_t cond_signals(uint64_t s) { return static_cast<uint32_t>(s); }
constexpr uint64_t make_cond(uint32_t waiting, uint32_t signals) {
  return (static_cast<uint64_t>(waiting) << 32) | signals;
}

// Barrier entries: incarnation(16) << 48 | generation(32) << 16 | arrivals(16).
constexpr uint64_t make_barrier_entry(uint32_t incarnation, uint64_t generation, uint32_t arrivals) {
  return (static_cast<uint64_t>(incarnation & 0xffff) << 48) | ((generation & 0xffffffffull) << 16) | (arrivals & 0xffff);
}
constexpr uint32_t barrier_entry_incarnation(uint64_t e) { return static_cast<uint32_t>(e >> 48); }
constexpr uint64_t barrier_entry_generation(uint64_t e) { return (e >> 16) & 0xffffffffull; }
constexpr uint32_t barrier_entry_arrivals(uint64_t e) { return static_cast<uint32_t>(e & 0xffff); }

// notify_all (core/waiter.h) after a seq_cst read-modify-write of the condition's word: the
// RMW orders the change before the seq_cst load of the waiter count, the way notify_all's
// fence does (a waiter registers with a seq_cst RMW and a seq_cst fence before it re-checks),
// so the fence is not needed. Saves the fence on every uncontended release.
void wake_after_rmw(EventCount& ec) {
  if (ec.waiters.load(std::memory_order_seq_cst) != 0) wake_all_sleepers(ec);
}

}  // namespace

Sync::Sync(std::shared_ptr<Arena> arena, SyncHeader* header, Offset offset)
    : arena_(std::move(arena)),
      header_(header),
      offset_(offset),
      kind_(static_cast<SyncKind>(header->kind)),
      limit_(header->limit),
      flags_(header->flags),
      sync_id_(header->sync_id),
      tracked_(arena_->backend().tracks_holders()),
      sem_tracked_(tracked_ && (flags_ & kSyncReclaim) != 0 &&
                   (kind_ == SyncKind::kSemaphore || kind_ == SyncKind::kBoundedSemaphore)),
      sem_bound_(kind_ == SyncKind::kBoundedSemaphore ? limit_ : kNoLimit) {}

void Sync::wake_changed() { wake_all_sleepers(header_->changed); }

Result<std::shared_ptr<Sync>> Sync::create(std::shared_ptr<Arena> arena, SyncKind kind, uint32_t value,
                                           uint32_t limit, uint32_t flags, uint64_t sync_id) {
  if (!valid_sync_kind(static_cast<uint32_t>(kind))) return {Status::kInvalidArgument, nullptr};
  if (kind == SyncKind::kBoundedSemaphore && value > limit) return {Status::kInvalidArgument, nullptr};
  if (kind == SyncKind::kBarrier && (limit == 0 || limit >= 0xffff)) return {Status::kInvalidArgument, nullptr};
  auto cells = arena->allocate_cells(sizeof(SyncHeader));
  if (!cells.ok()) return {cells.status, nullptr};
  void* mem = arena->translate(cells.value, sizeof(SyncHeader));
  if (mem == nullptr) return {Status::kCorruptedOffset, nullptr};
  auto* h = new (mem) SyncHeader{};
  h->version = kSyncLayoutVersion;
  h->kind = static_cast<uint32_t>(kind);
  h->sync_id = sync_id;
  h->limit = limit;
  h->flags = flags;
  const bool sem = kind == SyncKind::kSemaphore || kind == SyncKind::kBoundedSemaphore;
  h->word.store(kind == SyncKind::kEvent ? value : 0, std::memory_order_relaxed);
  h->state.store(sem ? make_sem(value, 0, 0, 0) : 0, std::memory_order_relaxed);
  h->attached.store(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  h->magic = kSyncMagic;  // last: open() refuses a header without it
  return {Status::kOk, std::shared_ptr<Sync>(new Sync(std::move(arena), h, cells.value))};
}

Result<std::shared_ptr<Sync>> Sync::open(std::shared_ptr<Arena> arena, Offset offset, uint64_t sync_id) {
  auto* h = (offset % kUnit) == 0 ? arena->translate_as<SyncHeader>(offset) : nullptr;
  if (h == nullptr) {
    arena->note_corruption();
    return {Status::kCorruptedOffset, nullptr};
  }
  if (h->magic != kSyncMagic) return {Status::kNotFound, nullptr};  // freed (or never a primitive)
  if (h->version != kSyncLayoutVersion) {
    arena->note_corruption();
    return {Status::kVersionMismatch, nullptr};
  }
  const uint32_t kind = h->kind;
  const uint32_t limit = h->limit;
  if (!valid_sync_kind(kind) ||
      (static_cast<SyncKind>(kind) == SyncKind::kBarrier && (limit == 0 || limit >= 0xffff))) {
    arena->note_corruption();
    return {Status::kCorruptedState, nullptr};
  }
  if (h->sync_id != sync_id) return {Status::kNotFound, nullptr};
  uint32_t attached = h->attached.load(std::memory_order_acquire);
  do {
    if (attached == 0) return {Status::kNotFound, nullptr};  // being freed
  } while (!h->attached.compare_exchange_weak(attached, attached + 1, std::memory_order_acq_rel));
  auto out = std::shared_ptr<Sync>(new Sync(std::move(arena), h, offset));
  // The private copies must be what was validated (a peer may rewrite the header meanwhile).
  out->kind_ = static_cast<SyncKind>(kind);
  out->limit_ = limit;
  out->sem_tracked_ = out->tracked_ && (out->flags_ & kSyncReclaim) != 0 &&
                      (out->kind_ == SyncKind::kSemaphore || out->kind_ == SyncKind::kBoundedSemaphore);
  out->sem_bound_ = out->kind_ == SyncKind::kBoundedSemaphore ? limit : kNoLimit;
  return {Status::kOk, std::move(out)};
}

Sync::~Sync() { detach(); }

void Sync::detach() {
  if (!attached_.exchange(false, std::memory_order_acq_rel)) return;
  if (!held_here()) return;  // inherited across fork() and never re-attached: the parent's count
  if (kind_ == SyncKind::kBarrier && tracked_) {
    // This holder leaves the barrier's parties: its death later is not a missing party.
    // (Another object of this process may still use the barrier; its next arrival records
    // the holder again.)
    const uint32_t holder = arena_->holder();
    if (holder != 0 && holder <= kMaxHolders) {
      std::atomic<uint64_t>& entry = header_->holders[holder - 1];
      uint64_t e = entry.load(std::memory_order_acquire);
      const uint64_t s = header_->state.load(std::memory_order_acquire);
      // Not an arrival in the round now filling: that one still counts (it is waiting).
      if (barrier_entry_incarnation(e) == (my_incarnation() & 0xffff) &&
          barrier_entry_generation(e) != (barrier_generation(s) & 0xffffffffull)) {
        entry.compare_exchange_strong(e, 0, std::memory_order_acq_rel);
      }
    }
  }
  if (header_->attached.fetch_sub(1, std::memory_order_acq_rel) == 1) free_header();
}

void Sync::free_header() {
  header_->magic = 0;
  arena_->free_cells(offset_);
}

bool Sync::reattach_after_fork() {
  std::lock_guard<std::mutex> lock(reattach_mutex_);
  if (held_here()) return attached_.load(std::memory_order_acquire);
  const uint64_t now = fork_generation();
  if (!attached_.load(std::memory_order_acquire) || !arena_->backend().tracks_holders()) {
    fork_generation_.store(now, std::memory_order_relaxed);
    return attached_.load(std::memory_order_acquire);
  }
  uint32_t attached = header_->attached.load(std::memory_order_acquire);
  do {
    if (attached == 0) {
      attached_.store(false, std::memory_order_release);
      fork_generation_.store(now, std::memory_order_relaxed);
      return false;
    }
  } while (!header_->attached.compare_exchange_weak(attached, attached + 1, std::memory_order_acq_rel));
  fork_generation_.store(now, std::memory_order_relaxed);
  return true;
}

uint32_t Sync::my_incarnation() const { return arena_->incarnation(); }
uint32_t Sync::my_lock_word() const { return make_lock_word(arena_->holder(), arena_->incarnation()); }

uint64_t Sync::thread_token() {
  static std::atomic<uint64_t> next{1};
  thread_local const uint64_t token = next.fetch_add(1, std::memory_order_relaxed);
  return token;
}

bool Sync::check_due() {
  const int64_t now = monotonic_ns();
  int64_t due = next_check_ns_.load(std::memory_order_relaxed);
  return now >= due && next_check_ns_.compare_exchange_strong(due, now + kOwnerCheckNs, std::memory_order_relaxed);
}

template <typename Ready>
Status Sync::wait_for(const WaitSpec& wait, Ready&& ready) {
  const Status s = wait_until(header_->changed, wait, ready);
  if (s == Status::kInterrupted || s == Status::kTimedOut) {
    arena_->maybe_reap();
    if (recover() != 0 && ready()) return Status::kOk;
  }
  return s;
}

// ---- Lock / RLock ---------------------------------------------------------------------------

Status Sync::try_lock(bool check_owner) {
  const uint32_t mine = my_lock_word();
  uint32_t w = header_->word.load(std::memory_order_relaxed);
  for (;;) {
    Status got = Status::kOk;
    if (w != 0) {
      if (!check_owner) return Status::kFull;
      const bool tracked = arena_->backend().tracks_holders();
      const uint32_t holder = lock_holder(w);
      const bool forged = (w & kLockHeld) == 0 || (tracked && (holder == 0 || holder > kMaxHolders));
      if (forged) {
        arena_->note_corruption();
      } else if (arena_->occupant_alive(holder, lock_incarnation(w), kLockIncarnationMask)) {
        return Status::kFull;
      }
      got = Status::kPeerDied;  // take it over from the exact word judged dead
    }
    // A takeover keeps the waiters bit: others may sleep on the word.
    const uint32_t next = got == Status::kOk ? mine : mine | (w & kLockWaiters);
    if (header_->word.compare_exchange_weak(w, next, std::memory_order_acquire, std::memory_order_relaxed)) {
      if (got == Status::kOk) {
        MEMCHANNEL_CRASH_POINT(kSyncLockTaken);
      } else {
        MEMCHANNEL_CRASH_POINT(kSyncLockTakeover);
      }
      take_owner();
      return got;
    }
  }
}

void Sync::take_owner() {
  if (kind_ == SyncKind::kRLock) {
    header_->owner_thread.store(thread_token(), std::memory_order_relaxed);
    header_->depth.store(1, std::memory_order_relaxed);
  }
}

bool Sync::owned_here() const {
  const uint32_t w = header_->word.load(std::memory_order_acquire);
  if (kind_ != SyncKind::kRLock) return w != 0;
  return (w & ~kLockWaiters) == my_lock_word() &&
         header_->owner_thread.load(std::memory_order_relaxed) == thread_token();
}

bool Sync::locked() const { return header_->word.load(std::memory_order_acquire) != 0; }

Status Sync::lock_try() {
  if (kind_ == SyncKind::kRLock && header_->word.load(std::memory_order_relaxed) != 0) return lock_acquire(WaitSpec::nonblocking());
  return try_lock(false);
}

Status Sync::lock_acquire(const WaitSpec& wait) {
  if (kind_ == SyncKind::kRLock && owned_here()) {
    const uint32_t d = header_->depth.load(std::memory_order_relaxed);
    if (d == std::numeric_limits<uint32_t>::max()) return Status::kInvalidArgument;
    header_->depth.store(d + 1, std::memory_order_relaxed);
    return Status::kOk;
  }
  Status got = try_lock(false);
  if (got != Status::kFull) return got;
  // Contended: is the owner alive? (one liveness check, at most every kOwnerCheckNs per object)
  if (check_due() && (got = try_lock(true)) != Status::kFull) return got;
  const int64_t start = monotonic_ns();
  if (wait.deadline_ns <= start) return Status::kTimedOut;
  std::atomic<uint32_t>& word = header_->word;
  // Spin while the owner is probably about to release (a futex round trip costs ~10 us).
  if (wait.spin_ns > 0) {
    const int64_t spin_end = start + wait.spin_ns;
    for (uint32_t i = 1;; ++i) {
      for (int k = 0; k < 8; ++k) cpu_relax();
      if (word.load(std::memory_order_relaxed) == 0 && try_lock(false) == Status::kOk) return Status::kOk;
      if ((i & 15) == 0 && monotonic_ns() >= spin_end) break;
    }
  }
  // Sleep on the lock word itself (a futex mutex with a waiters bit): the releaser wakes one
  // sleeper, and only when the word says someone sleeps. An acquirer that slept takes the lock
  // with the waiters bit set, since others may still sleep.
  const int64_t slice_end = wait.slice_ns == WaitSpec::kForever ? WaitSpec::kForever : start + wait.slice_ns;
  const int64_t until = std::min(wait.deadline_ns, slice_end);
  const uint32_t mine = my_lock_word() | kLockWaiters;
  for (;;) {
    uint32_t w = word.load(std::memory_order_relaxed);
    if (w == 0) {
      if (word.compare_exchange_weak(w, mine, std::memory_order_acquire, std::memory_order_relaxed)) {
        MEMCHANNEL_CRASH_POINT(kSyncLockTaken);
        take_owner();
        return Status::kOk;
      }
      continue;
    }
    if (check_due() && (got = try_lock(true)) != Status::kFull) return got;
    if ((w & kLockWaiters) == 0) {
      if (!word.compare_exchange_weak(w, w | kLockWaiters, std::memory_order_relaxed)) continue;
      w |= kLockWaiters;
    }
    int64_t timeout = -1;
    if (until != WaitSpec::kForever) {
      timeout = until - monotonic_ns();
      if (timeout <= 0) break;
    }
    futex_wait(&word, w, timeout);
  }
  // Leaving without the lock: a release may have woken this waiter rather than one that stays;
  // pass the wake-up on if the lock is free.
  if (header_->word.load(std::memory_order_relaxed) == 0) futex_wake(&header_->word, 1);
  if (until == wait.deadline_ns) return Status::kTimedOut;
  arena_->maybe_reap();  // a slice end: always look at the owner
  got = try_lock(true);
  return got != Status::kFull ? got : Status::kInterrupted;
}

Status Sync::lock_release() {
  uint32_t w = header_->word.load(std::memory_order_relaxed);
  if (kind_ == SyncKind::kRLock) {
    if (!owned_here()) return Status::kNotHolder;
    const uint32_t d = header_->depth.load(std::memory_order_relaxed);
    if (d > 1) {
      header_->depth.store(d - 1, std::memory_order_relaxed);
      return Status::kOk;
    }
    header_->depth.store(0, std::memory_order_relaxed);
    header_->owner_thread.store(0, std::memory_order_relaxed);
    const uint32_t mine = my_lock_word();
    do {
      if ((w & ~kLockWaiters) != mine) return Status::kNotHolder;
    } while (!header_->word.compare_exchange_weak(w, 0, std::memory_order_seq_cst, std::memory_order_relaxed));
  } else {
    do {
      if (w == 0) return Status::kNotHolder;
    } while (!header_->word.compare_exchange_weak(w, 0, std::memory_order_seq_cst, std::memory_order_relaxed));
  }
  MEMCHANNEL_CRASH_POINT(kSyncLockReleased);
  if ((w & kLockWaiters) != 0) futex_wake(&header_->word, 1);
  return Status::kOk;
}

Status Sync::rlock_release_all(uint32_t* depth) {
  if (kind_ != SyncKind::kRLock) {
    *depth = 1;
    return lock_release();
  }
  if (!owned_here()) return Status::kNotHolder;
  *depth = std::max<uint32_t>(1, header_->depth.load(std::memory_order_relaxed));
  header_->depth.store(1, std::memory_order_relaxed);
  return lock_release();
}

Status Sync::rlock_restore(uint32_t depth, const WaitSpec& wait) {
  const Status s = lock_acquire(wait);
  if ((s == Status::kOk || s == Status::kPeerDied) && kind_ == SyncKind::kRLock) {
    header_->depth.store(std::max<uint32_t>(1, depth), std::memory_order_relaxed);
  }
  return s;
}

// ---- Per-holder entries ---------------------------------------------------------------------

void Sync::add_entry(int64_t delta) {
  const uint32_t holder = arena_->holder();
  if (holder == 0 || holder > kMaxHolders) return;  // untracked (heap): nobody can die alone
  std::atomic<uint64_t>& entry = header_->holders[holder - 1];
  const uint32_t inc = my_incarnation();
  const uint64_t step = static_cast<uint64_t>(delta) << 32;
  uint64_t e = entry.load(std::memory_order_relaxed);
  if (entry_incarnation(e) == inc) {  // ours: nobody else writes it while we live
    entry.fetch_add(step, std::memory_order_acq_rel);
    return;
  }
  // The entry of an earlier occupant of this slot: recover() gives back what it held (it is
  // dead: its slot is ours now); then this holder starts from its own count.
  if (entry_count(e) != 0) recover();
  e = entry.load(std::memory_order_relaxed);
  while (entry_incarnation(e) != inc) {
    if (entry.compare_exchange_weak(e, make_entry(inc, 0), std::memory_order_acq_rel)) {
      e = make_entry(inc, 0);
      break;
    }
  }
  entry.fetch_add(step, std::memory_order_acq_rel);
}

uint32_t Sync::recover() {
  if (!arena_->backend().tracks_holders()) return 0;
  if (kind_ != SyncKind::kSemaphore && kind_ != SyncKind::kBoundedSemaphore && kind_ != SyncKind::kCondition &&
      kind_ != SyncKind::kBarrier) {
    return 0;
  }
  uint32_t reclaimed = 0;
  if (kind_ == SyncKind::kSemaphore || kind_ == SyncKind::kBoundedSemaphore) {
    if ((flags_ & kSyncReclaim) == 0) return 0;
    sem_fold(header_->state.load(std::memory_order_acquire));  // every entry is then complete
    for (uint32_t i = 0; i < kMaxHolders; ++i) {
      const uint64_t e = header_->holders[i].load(std::memory_order_acquire);
      if (sem_entry_count(e) == 0) continue;
      const uint32_t inc = sem_entry_incarnation(e);
      if (arena_->occupant_alive(i + 1, inc, 0xffff)) continue;
      if (sem_recover_slot(i, inc) != 0) ++reclaimed;
    }
    return reclaimed;
  }
  for (uint32_t i = 0; i < kMaxHolders; ++i) {
    uint64_t e = header_->holders[i].load(std::memory_order_acquire);
    if (e == 0) continue;
    if (kind_ == SyncKind::kBarrier) {
      const uint64_t s = header_->state.load(std::memory_order_acquire);
      if (barrier_entry_arrivals(e) == 0 || barrier_broken(s)) continue;
      // A dead holder breaks the barrier if it arrived in the round now filling (it will never
      // leave it), or if it took part in the round before and has not arrived in this one
      // while someone waits in it (it was a party and will never come). A holder that took
      // part only in older rounds, or that detached (detach() clears its entry), is not
      // expected.
      const uint64_t current = barrier_generation(s) & 0xffffffffull;
      const bool arrived_now = barrier_entry_generation(e) == current;
      const bool expected = barrier_entry_generation(e) == ((current - 1) & 0xffffffffull) &&
                            barrier_arrived(s) != 0 && barrier_generation(s) != 0;
      if (!arrived_now && !expected) continue;
      if (arena_->occupant_alive(i + 1, barrier_entry_incarnation(e), 0xffff)) continue;
      if (!header_->holders[i].compare_exchange_strong(e, 0, std::memory_order_acq_rel)) continue;
      barrier_abort();
      ++reclaimed;
      continue;
    }
    const int32_t signed_count = entry_count(e);
    if (signed_count == 0 || arena_->occupant_alive(i + 1, entry_incarnation(e), 0xffffffffu)) continue;
    if (!header_->holders[i].compare_exchange_strong(e, 0, std::memory_order_acq_rel)) continue;
    if (signed_count < 0) continue;  // it released more than it acquired: nothing to give back
    const auto count = static_cast<uint32_t>(signed_count);
    ++reclaimed;
    reclaimed_.fetch_add(count, std::memory_order_relaxed);
    {
      uint64_t s = header_->state.load(std::memory_order_relaxed);
      uint64_t next;
      do {
        const uint32_t w = cond_waiters(s) - std::min(count, cond_waiters(s));
        next = make_cond(w, std::min(cond_signals(s), w));
      } while (!header_->state.compare_exchange_weak(s, next, std::memory_order_acq_rel));
      notify_all(header_->changed);
    }
  }
  return reclaimed;
}

// ---- Semaphore ------------------------------------------------------------------------------
// One CAS of the semaphore word per acquire or release; the word names the change it makes to
// the holder's entry until that change is folded in (core/sync.h, make_sem).

uint32_t Sync::sem_adopt() {
  const uint32_t holder = arena_->holder();
  const uint32_t inc = arena_->incarnation() & 0xffff;
  if (holder == 0 || holder > kMaxHolders) return 0;
  std::atomic<uint64_t>& entry = header_->holders[holder - 1];
  uint64_t e = entry.load(std::memory_order_acquire);
  while (sem_entry_incarnation(e) != inc) {
    // The entry of an earlier occupant of this slot (dead: the slot is ours now): give back
    // what it held, then start from 0 under our incarnation (the sequence goes on).
    if (sem_entry_count(e) > 0) {
      sem_recover_slot(holder - 1, sem_entry_incarnation(e));
      e = entry.load(std::memory_order_acquire);
      continue;
    }
    sem_fold(header_->state.load(std::memory_order_acquire));  // an unfolded change of the old occupant
    const uint64_t folded = entry.load(std::memory_order_acquire);
    if (folded != e) {
      e = folded;
      continue;
    }
    if (entry.compare_exchange_weak(e, make_sem_entry(0, inc, sem_entry_seq(e)), std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
      break;
    }
  }
  // While this occupant lives, nobody else changes its entry's incarnation.
  sem_adopted_incarnation_.store(inc, std::memory_order_relaxed);
  sem_adopted_holder_.store(holder, std::memory_order_relaxed);
  return holder;
}

// Folds this holder's own change (word `next`, made from entry `e`) into its entry: one CAS
// from the entry it read, unless someone folded it first.
static void fold_own(std::atomic<uint64_t>& entry, uint64_t e, int32_t delta) {
  const int64_t c = int64_t{sem_entry_count(e)} + delta;
  if (c < std::numeric_limits<int32_t>::min() || c > std::numeric_limits<int32_t>::max()) return;  // sem_fold saturates it
  entry.compare_exchange_strong(e, make_sem_entry(static_cast<int32_t>(c), sem_entry_incarnation(e), sem_entry_seq(e) + 1),
                                std::memory_order_acq_rel, std::memory_order_relaxed);
}

void Sync::sem_fold(uint64_t w) {
  const uint32_t holder = sem_holder(w);
  if (holder == 0) return;
  if (holder > kMaxHolders) {  // forged: nobody's change (the next CAS of the word replaces it)
    arena_->note_corruption();
    return;
  }
  std::atomic<uint64_t>& entry = header_->holders[holder - 1];
  const uint32_t seq = sem_seq(w);
  uint64_t e = entry.load(std::memory_order_acquire);
  // Folded already (seq), or `w` is stale (a later change of this holder is folded, or in the
  // word now): nothing to do. A CAS of the word from a stale `w` fails.
  while (sem_entry_seq(e) == ((seq - 1) & 0xffff)) {
    const int64_t c = std::clamp<int64_t>(int64_t{sem_entry_count(e)} + sem_delta(w),
                                          std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
    if (entry.compare_exchange_weak(e, make_sem_entry(static_cast<int32_t>(c), sem_entry_incarnation(e), seq),
                                    std::memory_order_acq_rel, std::memory_order_acquire)) {
      return;
    }
  }
}

uint32_t Sync::sem_recover_slot(uint32_t i, uint32_t incarnation) {
  std::atomic<uint64_t>& entry = header_->holders[i];
  const uint32_t bound = kind_ == SyncKind::kBoundedSemaphore ? limit_ : kNoLimit;
  uint32_t returned = 0;
  uint64_t w = header_->state.load(std::memory_order_acquire);
  for (;;) {
    sem_fold(w);
    uint64_t e = entry.load(std::memory_order_acquire);
    if (sem_entry_incarnation(e) != incarnation) break;  // the slot's new occupant adopted it
    const int32_t c = sem_entry_count(e);
    if (c <= 0) {
      // A holder that released more than it acquired gives back nothing; its debt goes.
      if (c < 0 && !entry.compare_exchange_strong(e, make_sem_entry(0, incarnation, sem_entry_seq(e)),
                                                  std::memory_order_acq_rel)) {
        continue;
      }
      break;
    }
    // The permits back in the count and the entry's decrement named in the same CAS: the
    // entry changes only when the word's record of it is folded (by anyone; the word may move
    // on, but not before someone folds it).
    const uint32_t step = std::min<uint32_t>(static_cast<uint32_t>(c), kSemMaxDelta);
    const uint32_t v = sem_count(w);
    const uint32_t back = v >= bound ? 0 : std::min(step, bound - v);
    const uint64_t next = make_sem(v + back, i + 1, sem_entry_seq(e) + 1, -static_cast<int32_t>(step));
    if (header_->state.compare_exchange_weak(w, next, std::memory_order_seq_cst, std::memory_order_acquire)) {
      MEMCHANNEL_CRASH_POINT(kSyncSemReclaimed);
      sem_fold(next);
      w = next;
      returned += back;
      reclaimed_.fetch_add(back, std::memory_order_relaxed);
    }
  }
  if (returned != 0) notify_all(header_->changed);
  return returned;
}

Status Sync::try_sem() {
  const uint32_t mine = sem_slot();
  std::atomic<uint64_t>& state = header_->state;
  uint64_t w = state.load(std::memory_order_acquire);
  if (mine == 0) {
    do {
      if (sem_count(w) == 0) return Status::kFull;
      // The count only (the word's record of a change stays).
    } while (!state.compare_exchange_weak(w, w - 1, std::memory_order_acquire, std::memory_order_acquire));
    return Status::kOk;
  }
  std::atomic<uint64_t>& entry = header_->holders[mine - 1];
  for (;;) {
    const uint32_t v = sem_count(w);
    if (v == 0) return Status::kFull;
    uint64_t e = entry.load(std::memory_order_acquire);
    if (sem_holder(w) != mine || sem_entry_seq(e) != sem_seq(w)) {
      sem_fold(w);
      e = entry.load(std::memory_order_acquire);
    }
    MEMCHANNEL_CRASH_POINT(kSyncSemIntent);
    const uint64_t next = make_sem(v - 1, mine, sem_entry_seq(e) + 1, +1);
    if (state.compare_exchange_weak(w, next, std::memory_order_acq_rel, std::memory_order_acquire)) {
      MEMCHANNEL_CRASH_POINT(kSyncSemTaken);
      fold_own(entry, e, +1);
      return Status::kOk;
    }
  }
}

Status Sync::sem_acquire(const WaitSpec& wait) {
  if (try_sem() == Status::kOk) return Status::kOk;
  if (check_due() && recover() != 0 && try_sem() == Status::kOk) return Status::kOk;
  return wait_for(wait, [&] { return try_sem() == Status::kOk; });
}

Status Sync::sem_release(uint32_t n) {
  if (n == 0) return Status::kOk;
  const uint32_t bound = kind_ == SyncKind::kBoundedSemaphore ? limit_ : kNoLimit;
  const uint32_t mine = sem_slot();
  std::atomic<uint64_t>& state = header_->state;
  uint64_t w = state.load(std::memory_order_acquire);
  // The bound is checked for all n at the first step (a release of more than kSemMaxDelta
  // permits, with an entry, is made in steps of at most kSemMaxDelta).
  uint32_t left = n;
  bool first = true;
  while (left != 0) {
    const uint32_t step = mine == 0 ? left : std::min(left, kSemMaxDelta);
    const uint32_t v = sem_count(w);
    if (v > bound || bound - v < (first ? left : step)) return Status::kFull;
    uint64_t next;
    uint64_t e = 0;
    if (mine == 0) {
      next = w + step;
    } else {
      e = header_->holders[mine - 1].load(std::memory_order_acquire);
      if (sem_holder(w) != mine || sem_entry_seq(e) != sem_seq(w)) {
        sem_fold(w);
        e = header_->holders[mine - 1].load(std::memory_order_acquire);
      }
      MEMCHANNEL_CRASH_POINT(kSyncSemIntent);
      next = make_sem(v + step, mine, sem_entry_seq(e) + 1, -static_cast<int32_t>(step));
    }
    if (!state.compare_exchange_weak(w, next, std::memory_order_seq_cst, std::memory_order_acquire)) continue;
    MEMCHANNEL_CRASH_POINT(kSyncSemReleased);
    if (mine != 0) fold_own(header_->holders[mine - 1], e, -static_cast<int32_t>(step));
    w = next;
    left -= step;
    first = false;
  }
  wake_after_rmw(header_->changed);
  return Status::kOk;
}

uint32_t Sync::sem_value() const { return sem_count(header_->state.load(std::memory_order_acquire)); }

// ---- Event ----------------------------------------------------------------------------------

void Sync::event_set() {
  header_->word.exchange(1, std::memory_order_seq_cst);
  MEMCHANNEL_CRASH_POINT(kSyncEventSet);
  wake_after_rmw(header_->changed);
}

void Sync::event_clear() { header_->word.store(0, std::memory_order_release); }

bool Sync::event_is_set() const { return header_->word.load(std::memory_order_acquire) != 0; }

Status Sync::event_wait(const WaitSpec& wait) {
  return wait_for(wait, [&] { return header_->word.load(std::memory_order_acquire) != 0; });
}

// ---- Condition ------------------------------------------------------------------------------

void Sync::cond_register() {
  uint64_t s = header_->state.load(std::memory_order_relaxed);
  while (cond_waiters(s) != kNoLimit &&
         !header_->state.compare_exchange_weak(s, make_cond(cond_waiters(s) + 1, cond_signals(s)),
                                               std::memory_order_acq_rel)) {
  }
  MEMCHANNEL_CRASH_POINT(kSyncCondRegistered);
  add_entry(+1);
}

Status Sync::cond_wait(const WaitSpec& wait) {
  // Leaving (woken or timed out): the entry first, then the word, so a process killed in
  // between leaves the word one waiter too high (a spurious wake-up later), never too low.
  const auto leave = [&](bool need_signal) {
    bool left = false;
    uint64_t s = header_->state.load(std::memory_order_acquire);
    for (;;) {
      if (need_signal && cond_signals(s) == 0) {
        if (left) add_entry(+1);
        return false;
      }
      if (!left) {
        add_entry(-1);
        left = true;
        MEMCHANNEL_CRASH_POINT(kSyncCondLeaving);
      }
      const uint32_t w = cond_waiters(s) == 0 ? 0 : cond_waiters(s) - 1;
      const uint32_t sig = cond_signals(s) == 0 ? 0 : cond_signals(s) - 1;
      if (header_->state.compare_exchange_weak(s, make_cond(w, std::min(sig, w)), std::memory_order_acq_rel)) {
        return cond_signals(s) != 0;
      }
    }
  };
  const Status st = wait_for(wait, [&] { return cond_signals(header_->state.load(std::memory_order_acquire)) != 0 && leave(true); });
  if (st == Status::kTimedOut) return leave(false) ? Status::kOk : Status::kTimedOut;
  return st;
}

uint32_t Sync::cond_notify(uint32_t n) {
  uint64_t s = header_->state.load(std::memory_order_acquire);
  uint32_t k = 0;
  do {
    const uint32_t w = cond_waiters(s), sig = cond_signals(s);
    k = std::min(n, w > sig ? w - sig : 0);
    if (k == 0) return 0;
  } while (!header_->state.compare_exchange_weak(s, make_cond(cond_waiters(s), cond_signals(s) + k),
                                                 std::memory_order_acq_rel));
  notify_all(header_->changed);
  return k;
}

uint32_t Sync::cond_waiting() const {
  const uint64_t s = header_->state.load(std::memory_order_acquire);
  return cond_waiters(s) - std::min(cond_waiters(s), cond_signals(s));
}

// ---- Barrier --------------------------------------------------------------------------------

Result<BarrierTicket> Sync::barrier_arrive(const WaitSpec& wait) {
  for (;;) {
    auto r = try_arrive();
    if (r.status != Status::kFull) return r;
    // The last arrival of the round before is still running its action: wait for its release.
    const Status st = wait_for(wait, [&] {
      const uint64_t s = header_->state.load(std::memory_order_acquire);
      return barrier_broken(s) || barrier_arrived(s) < limit_;
    });
    if (st != Status::kOk) return {st, {}};
  }
}

Result<BarrierTicket> Sync::try_arrive() {
  uint64_t s = header_->state.load(std::memory_order_acquire);
  for (;;) {
    if (barrier_broken(s)) return {Status::kClosed, {}};
    const uint32_t a = barrier_arrived(s);
    if (a >= limit_) return {Status::kFull, {}};  // the last arrival of this round is still running its action
    const uint64_t next = make_barrier(barrier_generation(s), barrier_was_reset(s), false, a + 1);
    // The entry first (this holder takes part in this generation), so a death right after the
    // arrival is seen by the other parties' recover().
    const uint32_t holder = arena_->holder();
    if (holder != 0 && holder <= kMaxHolders) {
      std::atomic<uint64_t>& entry = header_->holders[holder - 1];
      uint64_t e = entry.load(std::memory_order_relaxed);
      const uint64_t gen = barrier_generation(s) & 0xffffffffull;
      const uint32_t inc = my_incarnation() & 0xffff;
      const uint32_t mine = barrier_entry_incarnation(e) == inc && barrier_entry_generation(e) == gen ? barrier_entry_arrivals(e) : 0;
      entry.store(make_barrier_entry(inc, gen, mine + 1), std::memory_order_release);
    }
    if (header_->state.compare_exchange_weak(s, next, std::memory_order_acq_rel)) {
      MEMCHANNEL_CRASH_POINT(kSyncBarrierArrived);
      BarrierTicket t;
      t.generation = barrier_generation(s);
      t.index = a;
      t.last = a + 1 == limit_;
      return {Status::kOk, t};
    }
  }
}

Status Sync::barrier_wait(const BarrierTicket& t, const WaitSpec& wait) {
  Status outcome = Status::kOk;
  const auto done = [&] {
    const uint64_t s = header_->state.load(std::memory_order_acquire);
    const uint64_t gen = barrier_generation(s);
    if (gen != t.generation) {
      // Released by the last arrival, or reset (gen + 1 with the reset bit): broken for us.
      outcome = gen == ((t.generation + 1) & 0x3fffffffull) && barrier_was_reset(s) ? Status::kClosed : Status::kOk;
      return true;
    }
    if (barrier_broken(s)) {
      outcome = Status::kClosed;
      return true;
    }
    return false;
  };
  const Status st = wait_for(wait, done);
  if (st == Status::kOk) return outcome;
  if (st == Status::kTimedOut) {
    barrier_abort();  // threading.Barrier: a wait that times out breaks the barrier
    if (done() && outcome == Status::kOk) return Status::kOk;
    return Status::kTimedOut;
  }
  return st;
}

void Sync::barrier_release(const BarrierTicket& t) {
  uint64_t s = header_->state.load(std::memory_order_acquire);
  while (barrier_generation(s) == t.generation && !barrier_broken(s)) {
    if (header_->state.compare_exchange_weak(s, make_barrier(t.generation + 1, false, false, 0), std::memory_order_acq_rel)) {
      notify_all(header_->changed);
      return;
    }
  }
}

void Sync::barrier_abort() {
  uint64_t s = header_->state.load(std::memory_order_acquire);
  while (!barrier_broken(s)) {
    const uint64_t next = make_barrier(barrier_generation(s), barrier_was_reset(s), true, barrier_arrived(s));
    if (header_->state.compare_exchange_weak(s, next, std::memory_order_acq_rel)) break;
  }
  notify_all(header_->changed);
}

void Sync::barrier_reset() {
  uint64_t s = header_->state.load(std::memory_order_acquire);
  while (!header_->state.compare_exchange_weak(s, make_barrier(barrier_generation(s) + 1, true, false, 0),
                                               std::memory_order_acq_rel)) {
  }
  notify_all(header_->changed);
}

uint32_t Sync::barrier_waiting() const {
  const uint64_t s = header_->state.load(std::memory_order_acquire);
  if (barrier_broken(s)) return 0;
  return std::min(barrier_arrived(s), limit_ == 0 ? 0 : limit_ - 1);
}

bool Sync::barrier_is_broken() const { return barrier_broken(header_->state.load(std::memory_order_acquire)); }

}  // namespace memchannel
