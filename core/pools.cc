// Buffer pools: preallocated blocks that come back to their pool, not to the arena (the
// iceoryx2 loan pattern; memchannel Channel.pool / Arena.pool; docs/design.md "Buffer pools").
//
// A pool is a PoolHeader in an arena cell (kBlockFlagArena: never reclaimed with a process; it
// lives until the arena is removed) holding a Treiber stack of idle blocks, all of one size
// class. A pool's block carries kBlockFlagPooled and BlockHeader::pool = the cell's BlockRef,
// which every party validates before use (pool_of: magic, class). free_block, wherever it runs
// (a receiver's release, the reaper of a dead holder, a closed channel's drop), pushes a pooled
// block onto its pool's stack while the pool is open and wakes one reserver; pool_reserve pops
// and claims one (kFree -> kReserved by this holder), keeping the block's metadata (format,
// shape, length), so a frame is reserved as it was made. pool_close marks the pool closed and
// drains the idle blocks into the arena; a block coming back later sees the flag and goes to
// the arena too (a push that raced the close re-drains).
//
// Counters: a pool's blocks count as in use in the arena's stats from create_pool until they go
// back to the arena. Crash windows are the free list's: a holder killed between popping and
// claiming, or between marking free and pushing, loses that one block to the pool.
#include <climits>
#include <cstring>
#include <vector>

#include "core/arena.h"
#include "core/futex.h"

namespace memchannel {

PoolHeader* Arena::pool_at(Offset pool) {
  if (pool < sizeof(BlockHeader)) return nullptr;
  BlockHeader* cell = block_header(offset_to_ref(pool - sizeof(BlockHeader)));
  if (cell == nullptr || (cell->flags.load(std::memory_order_relaxed) & kBlockFlagArena) == 0) return nullptr;
  auto* p = translate_as<PoolHeader>(pool);
  if (p == nullptr || p->magic != kPoolMagic || p->size_class >= kNumClasses) return nullptr;
  return p;
}

PoolHeader* Arena::pool_of(BlockHeader* hdr) {
  PoolHeader* p = pool_at(ref_to_offset(hdr->pool.load(std::memory_order_relaxed)) + sizeof(BlockHeader));
  if (p == nullptr || p->size_class != hdr->size_class.load(std::memory_order_relaxed)) {
    note_corruption();
    return nullptr;
  }
  return p;
}

void Arena::notify_pool(PoolHeader* pool) {
  std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with pool_reserve's fence
  if (pool->avail_waiters.load(std::memory_order_relaxed) != 0) {
    pool->avail_seq.fetch_add(1, std::memory_order_release);
    futex_wake(&pool->avail_seq, INT_MAX);
  }
}

Result<Offset> Arena::create_pool(BlockHandle prototype, uint32_t count) {
  if (count == 0) return {Status::kInvalidArgument, 0};
  BlockHeader* proto = block_header(prototype.ref);
  if (proto == nullptr) return {Status::kCorruptedOffset, 0};
  const uint32_t word = proto->state.load(std::memory_order_acquire);
  if (state_generation(word) != prototype.generation || state_kind(word) != kBlockReserved ||
      state_holder(word) != (holder_ & 0xff) ||
      (proto->flags.load(std::memory_order_relaxed) & (kBlockFlagArena | kBlockFlagShare | kBlockFlagPooled)) != 0) {
    return {Status::kCorruptedState, 0};
  }
  const uint64_t meta = proto->meta_bytes.load(std::memory_order_relaxed);
  const uint64_t length = proto->length.load(std::memory_order_relaxed);
  auto cell = allocate_cells(sizeof(PoolHeader));
  if (!cell.ok()) return cell;
  auto* pool = translate_as<PoolHeader>(cell.value);
  if (pool == nullptr) return {Status::kCorruptedOffset, 0};
  pool->closed.store(0, std::memory_order_relaxed);
  pool->count.store(0, std::memory_order_relaxed);
  pool->head.store(0, std::memory_order_relaxed);
  pool->avail_seq.store(0, std::memory_order_relaxed);
  pool->avail_waiters.store(0, std::memory_order_relaxed);
  const BlockRef pool_ref = offset_to_ref(cell.value - sizeof(BlockHeader));
  std::vector<BlockHandle> made{prototype};
  made.reserve(count);
  for (uint32_t i = 1; i < count; ++i) {
    // The same class as the prototype: its metadata and payload as plain bytes, then the
    // prototype's metadata copied over.
    auto b = allocate(meta + length, PayloadLayout{});
    BlockHeader* hdr = b.ok() ? block_header(b.value.ref) : nullptr;
    if (hdr == nullptr) {
      for (size_t k = 1; k < made.size(); ++k) (void)release(made[k]);  // not pooled yet: back to the arena
      free_cells(cell.value);
      return {b.ok() ? Status::kCorruptedOffset : b.status, 0};
    }
    std::memcpy(reinterpret_cast<uint8_t*>(hdr) + sizeof(BlockHeader),
                reinterpret_cast<const uint8_t*>(proto) + sizeof(BlockHeader), meta);
    hdr->meta_bytes.store(static_cast<uint32_t>(meta), std::memory_order_relaxed);
    hdr->length.store(length, std::memory_order_relaxed);
    made.push_back(b.value);
  }
  pool->size_class = proto->size_class.load(std::memory_order_relaxed);
  pool->magic = kPoolMagic;
  std::atomic_thread_fence(std::memory_order_release);
  for (BlockHandle h : made) {
    BlockHeader* hdr = block_header(h.ref);
    if (hdr == nullptr) continue;
    if (hdr->size_class.load(std::memory_order_relaxed) != pool->size_class) {
      (void)release(h);  // a larger class handed out when its own ran dry: not the pool's
      continue;
    }
    hdr->pool.store(pool_ref, std::memory_order_relaxed);
    hdr->flags.fetch_or(kBlockFlagPooled, std::memory_order_relaxed);
    pool->count.fetch_add(1, std::memory_order_relaxed);
    (void)release(h);  // into the pool (free_block)
  }
  return {Status::kOk, cell.value};
}

Result<BlockHandle> Arena::pool_reserve(Offset pool_off, const WaitSpec& wait) {
  maybe_reap();
  PoolHeader* pool = pool_at(pool_off);
  if (pool == nullptr) return {Status::kCorruptedOffset, {}};
  const uint32_t cls = pool->size_class;
  Result<BlockHandle> out;
  const auto take = [&]() -> bool {
    for (int attempt = 0; attempt < 16; ++attempt) {
      uint64_t word = 0;
      void* cell = nullptr;
      auto popped = pop_free(pool->head, false, cls, &word, &cell);
      if (!popped.ok()) return false;
      MEMCHANNEL_CRASH_POINT(kPoolPopped);
      auto* hdr = static_cast<BlockHeader*>(cell);
      uint32_t expected = static_cast<uint32_t>(word);
      const uint32_t gen = (state_generation(expected) + 1) & kGenerationMask;
      if (hdr->state.compare_exchange_strong(expected, make_state(gen, holder_, kBlockReserved),
                                             std::memory_order_acq_rel)) {
        hdr->refcount.store(1, std::memory_order_relaxed);
        hdr->track.store(hdr->track.load(std::memory_order_relaxed) & ~1u, std::memory_order_relaxed);
        out.value = BlockHandle{popped.value, gen};
        return true;
      }
      note_corruption();
    }
    return false;
  };
  if (pool->closed.load(std::memory_order_acquire) != 0) return {Status::kClosed, {}};
  if (take()) return out;
  if (wait.deadline_ns <= monotonic_ns()) return {Status::kEmpty, {}};
  const int64_t start = monotonic_ns();
  const int64_t slice_end = wait.slice_ns == WaitSpec::kForever ? WaitSpec::kForever : start + wait.slice_ns;
  const int64_t until = wait.deadline_ns < slice_end ? wait.deadline_ns : slice_end;
  for (;;) {
    pool->avail_waiters.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const uint32_t key = pool->avail_seq.load(std::memory_order_acquire);
    const bool idle = tagged_ref(pool->head.load(std::memory_order_acquire)) != 0;
    const bool closed = pool->closed.load(std::memory_order_acquire) != 0;
    if (!idle && !closed) {
      int64_t timeout = -1;
      if (until != WaitSpec::kForever) timeout = until - monotonic_ns();
      if (timeout != 0 && (timeout > 0 || until == WaitSpec::kForever)) (void)futex_wait(&pool->avail_seq, key, timeout);
    }
    pool->avail_waiters.fetch_sub(1, std::memory_order_relaxed);
    if (pool->closed.load(std::memory_order_acquire) != 0) return {Status::kClosed, {}};
    if (take()) return out;
    maybe_reap();  // a dead holder's pool blocks come back through its reaper
    if (until != WaitSpec::kForever && monotonic_ns() >= until) {
      return {until == wait.deadline_ns ? Status::kEmpty : Status::kInterrupted, {}};
    }
  }
}

void Arena::drain_pool(PoolHeader* pool) {
  for (;;) {
    uint64_t word = 0;
    void* cell = nullptr;
    auto popped = pop_free(pool->head, false, pool->size_class, &word, &cell);
    if (!popped.ok()) return;
    auto* hdr = static_cast<BlockHeader*>(cell);
    uint32_t expected = static_cast<uint32_t>(word);
    const uint32_t mine = make_state(state_generation(expected), holder_, kBlockReserved);
    if (!hdr->state.compare_exchange_strong(expected, mine, std::memory_order_acq_rel)) continue;
    hdr->refcount.store(1, std::memory_order_relaxed);
    hdr->flags.fetch_and(~kBlockFlagPooled, std::memory_order_relaxed);
    pool->count.fetch_sub(1, std::memory_order_relaxed);
    (void)free_block(popped.value, hdr, mine);  // to the arena
  }
}

void Arena::pool_close(Offset pool_off) {
  PoolHeader* pool = pool_at(pool_off);
  if (pool == nullptr) return;
  pool->closed.store(1, std::memory_order_seq_cst);
  drain_pool(pool);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  pool->avail_seq.fetch_add(1, std::memory_order_release);
  futex_wake(&pool->avail_seq, INT_MAX);  // reservers waiting get kClosed
}

uint32_t Arena::pool_idle(Offset pool_off) {
  PoolHeader* pool = pool_at(pool_off);
  if (pool == nullptr) return 0;
  uint32_t n = 0;
  BlockRef ref = tagged_ref(pool->head.load(std::memory_order_acquire));
  while (ref != 0 && n <= pool->count.load(std::memory_order_relaxed)) {
    BlockHeader* hdr = block_header(ref);
    if (hdr == nullptr) break;
    ++n;
    ref = hdr->next_free.load(std::memory_order_relaxed);
  }
  return n;
}

uint32_t Arena::pool_count(Offset pool_off) {
  PoolHeader* pool = pool_at(pool_off);
  return pool == nullptr ? 0 : pool->count.load(std::memory_order_relaxed);
}

}  // namespace memchannel
