#include "core/arena.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <pthread.h>
#include <thread>
#include <vector>

#include "core/arena_internal.h"
#include "core/recovery.h"

namespace memchannel {
namespace {

void bump_fork_generation() { detail::g_fork_generation.fetch_add(1, std::memory_order_relaxed); }
// Registered when the library loads, so it runs before any child handler registered later
// (the Python registry's reattaches arenas and channels and reads the new generation).
const int g_fork_handler_installed = pthread_atfork(nullptr, nullptr, bump_fork_generation);

}  // namespace

using namespace arena_internal;  // NOLINT: the implementation's own helpers

namespace detail {
// The child of every fork() bumps it (see fork_generation() in arena.h).
std::atomic<uint64_t> g_fork_generation{0};
}  // namespace detail

Arena::Arena(std::unique_ptr<MemoryBackend> backend, ArenaHeader* header, uint64_t capacity)
    : backend_(std::move(backend)), header_(header), capacity_(capacity),
      sweeps_(backend_->tracks_holders()) {}

Arena::~Arena() { detach(); }

void Arena::detach() {
  if (detached_.exchange(true, std::memory_order_acq_rel)) return;
  // A forked child that never re-attached (reattach_after_fork) holds neither the slot nor the
  // count it inherited: they are its parent's, and stay so.
  if (fork_generation_ != fork_generation()) return;
  // Dead holders still count as attached until reaped: reap them so the last live process
  // really is the last and removes the segments.
  reap_dead_holders();
  // Leaving, in the order "The attach window" (core/recovery.cc) relies on: the slot says the
  // count is being given back (a reaper of this process, killed below, gives nothing back
  // again), the count goes, then the slot, and last the liveness lock (never a live-looking
  // dead slot).
  if (holder_ != 0) header_->holders[holder_ - 1].state.store(kSlotLeaving, std::memory_order_seq_cst);
  const uint64_t before = header_->attached_holders.fetch_sub(1, std::memory_order_seq_cst);
  if (holder_ != 0) {
    free_slot(header_->holders[holder_ - 1]);
    backend_->unlock_slot(holder_ - 1);
  }
  if (holders_count(before) == 1) {
    tear_down();
  } else if (backend_->tracks_holders()) {
    release_if_abandoned();
  }
}

void Arena::tear_down() {
  // The last one by the count; but a count forged low must not remove the segments under live
  // parties: another live active slot means the count lied (restored instead). A slot still
  // claiming is a party not yet counted (its CAS will find 0: refused), one leaving has given
  // its count back already.
  uint32_t live = 0;
  const uint32_t active = active_slots(&live);
  if (live != 0) {
    uint64_t word = header_->attached_holders.load(std::memory_order_acquire);
    if (holders_count(word) == 0) {
      header_->attached_holders.compare_exchange_strong(word, holders_with_count(word, active), std::memory_order_acq_rel);
    }
    note_corruption();
    return;
  }
  remove_segments();
}

void Arena::remove_segments() {
  const uint32_t count = std::min(header_->segment_count.load(std::memory_order_acquire), kMaxSegments - 1);
  for (uint32_t i = 1; i <= count; ++i) {  // names of every segment, and of one being created
    backend_->use_segment_nonce(i, header_->segment_nonce[i].load(std::memory_order_acquire));
  }
  backend_->remove_segments(count);
}

void Arena::release_if_abandoned() {
  // After this process's detach others are still counted. If none of them is here any more
  // (each died in its attach window, or was reaped by a reaper that died before giving its unit
  // back), nobody else would ever see the count reach 0: the arena is torn down here. The
  // argument ("The attach window", core/recovery.cc): every party counted in `word` holds a
  // non-free slot and its liveness lock from before its count until after it gave it back, so
  // a party still counted when the CAS below succeeds, and counted already when `word` was
  // read, is seen in the scan with its lock held; one counted since would have moved the
  // attach sequence, and the CAS fails. Retried a few times when the word moves (someone
  // attached, left or was reaped meanwhile).
  for (int attempt = 0; attempt < 8; ++attempt) {
    uint64_t word = header_->attached_holders.load(std::memory_order_seq_cst);
    if (holders_count(word) == 0) return;  // torn down by whoever took it to 0
    for (uint32_t i = 0; i < kMaxHolders; ++i) {
      if (slot_kind(header_->holders[i].state.load(std::memory_order_seq_cst)) == kSlotFree) continue;
      // Occupied: its party is alive (or cannot be judged) and it is not ours to remove. A reap
      // in progress names a dead occupant (lock i is free); its reaper has a slot of its own,
      // or is still claiming one (not counted).
      if (backend_->lock_liveness(i) != HolderLiveness::kDead) return;
    }
    if (header_->attached_holders.compare_exchange_strong(word, holders_with_count(word, 0), std::memory_order_seq_cst)) {
      remove_segments();
      return;
    }
  }
}

void Arena::reattach_after_fork() {
  if (detached_.load(std::memory_order_acquire)) return;
  // Heap memory is private to the child after fork: its counts are its own copy.
  if (!backend_->tracks_holders()) {
    fork_generation_ = fork_generation();
    return;
  }
  holder_ = 0;  // the inherited id is the parent's: blocks it names are not ours
  if (join_holders() != Status::kOk) {
    detached_.store(true, std::memory_order_release);  // holds no count: gives none back
    return;
  }
  fork_generation_ = fork_generation();  // the slot and the count are now this process's
}

void Arena::help_carve(uint64_t cursor, uint64_t carving_word) {
  const uint32_t seg = segment_of(cursor);
  const uint64_t size = seg < kMaxSegments ? sizes_[seg].load(std::memory_order_relaxed) : 0;
  const uint64_t within = within_segment(cursor);
  const uint64_t bytes = carving_units(carving_word) << kUnitShift;
  if (within > size || bytes == 0 || bytes > size - within) {  // 0: the cursor would never move
    // No carver writes a word that does not fit: garbage. Clear it so carving can go on.
    note_corruption();
    if (uint8_t* cell = translate(cursor, kUnit)) {
      uint64_t w = carving_word;
      __atomic_compare_exchange_n(cell_word(cell), &w, uint64_t{0}, false, __ATOMIC_ACQ_REL,
                                  __ATOMIC_ACQUIRE);
    }
    return;
  }
  uint64_t c = cursor;
  header_->carve.compare_exchange_strong(c, cursor + bytes, std::memory_order_acq_rel);
}


BlockHeader* Arena::block_header(BlockRef ref) {
  if (ref == 0) return nullptr;
  auto* hdr = translate_as<BlockHeader>(ref_to_offset(ref));
  if (hdr == nullptr || load_cell_magic(hdr) != kBlockMagic) return nullptr;
  const uint32_t cls = hdr->size_class.load(std::memory_order_relaxed);
  if (cls >= kNumClasses || translate(ref_to_offset(ref), class_units(cls) << kUnitShift) == nullptr) {
    return nullptr;
  }
  return hdr;
}

QueueNode* Arena::find_node(BlockRef ref) {
  if (ref == 0) return nullptr;
  // The whole cell, inline payload included, must be mapped (a forged link may name any ref).
  auto* n = reinterpret_cast<QueueNode*>(translate(ref_to_offset(ref), kNodeBytes));
  if (n == nullptr || load_cell_magic(n) != kNodeMagic) return nullptr;
  return n;
}

QueueNode* Arena::node(BlockRef ref) {
  if (ref == 0) return nullptr;
  QueueNode* n = find_node(ref);
  if (n == nullptr) note_corruption();
  return n;
}

void Arena::publish_cell(uint8_t* cell, uint32_t magic) {
  // One 64-bit store replaces the carving word: the cell's fields written before it are
  // visible to whoever sees the magic (acquire).
  __atomic_store_n(cell_word(cell), static_cast<uint64_t>(magic) << 32, __ATOMIC_RELEASE);
}

Result<Offset> Arena::carve(uint64_t bytes, bool node, int64_t creator_wait_ns) {
  const uint64_t mine = make_carving_word(holder_, bytes >> kUnitShift);
  int64_t stalled_since = 0;
  // Repairs of a forged cursor allowed in one call: a forged segment table can make the repair
  // (back to the last segment this process maps) and grow() (on to a segment it cannot map)
  // undo each other forever; past this the arena is reported corrupt instead.
  int repairs_left = kMaxCarveRepairs;
  const auto repaired = [&](uint64_t bad) { return repairs_left-- > 0 && repair_carve(bad); };
  for (;;) {
    const uint64_t cur = header_->carve.load(std::memory_order_acquire);
    const uint32_t seg = segment_of(cur);
    const uint64_t within = within_segment(cur);
    uint8_t* base = seg < kMaxSegments ? segment_base(seg) : nullptr;
    const uint64_t size = base != nullptr ? sizes_[seg].load(std::memory_order_relaxed) : 0;
    if (base == nullptr || (within & (kUnit - 1)) != 0 || within > size ||
        (seg == 0 && within < kHeaderBytes)) {
      // A cursor outside the segments, off the 64-byte grid, or in the header: re-derived from
      // the cells (check_header), then carving goes on; reported once if that is impossible.
      if (repaired(cur)) continue;
      note_corruption();
      return {Status::kCorruptedOffset, 0};
    }
    if (size - within >= kUnit) {
      uint8_t* cell = base + within;
      const uint64_t w = load_cell_word(cell);
      if (is_carving_word(w)) {  // another carver claimed this cell: move the cursor for it
        help_carve(cur, w);
        continue;
      }
      if (w != 0) {
        // An initialised cell at the cursor: our cursor read is stale, or the cursor is forged.
        if (header_->carve.load(std::memory_order_acquire) != cur) continue;
        if (repaired(cur)) continue;
        note_corruption();
        return {Status::kCorruptedOffset, 0};
      }
      if (bytes <= size - within) {
        uint64_t expected = 0;
        if (!__atomic_compare_exchange_n(cell_word(cell), &expected, mine, false, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE)) {
          continue;
        }
        if (node) {
          MEMCHANNEL_CRASH_POINT(kNodeCarveLocked);
        } else {
          MEMCHANNEL_CRASH_POINT(kAllocCarveLocked);
        }
        // If this CAS fails, someone moved the cursor on our behalf (help_carve) or on to the
        // next segment (grow): either way the cell at `cur` is carved, and ours.
        uint64_t c = cur;
        header_->carve.compare_exchange_strong(c, cur + bytes, std::memory_order_acq_rel);
        header_->counters.carved_bytes.fetch_add(bytes, std::memory_order_relaxed);
        return {Status::kOk, cur};
      }
    }
    const Status s = grow(seg, bytes);
    if (s == Status::kInterrupted) {
      // Another live party is creating the next segment. A caller with a deadline (or the GIL)
      // does not wait here: it waits on the space EventCount, which the creator wakes.
      if (creator_wait_ns <= 0) return {Status::kOutOfCapacity, 0};
      const int64_t now = monotonic_ns();
      if (stalled_since == 0) stalled_since = now;
      if (now - stalled_since > creator_wait_ns) return {Status::kOutOfCapacity, 0};
      std::this_thread::yield();
      continue;
    }
    if (s != Status::kOk) return {s, 0};
  }
}

Result<BlockRef> Arena::pop_free(std::atomic<uint64_t>& head, bool nodes, uint32_t cls, uint64_t* word,
                                 void** cell) {
  uint64_t h = head.load(std::memory_order_acquire);
  for (;;) {
    const BlockRef ref = tagged_ref(h);
    if (ref == 0) return {Status::kEmpty, 0};
    std::atomic<uint32_t>* link = nullptr;
    uint64_t state = 0;
    bool ok = false;
    void* at = nullptr;
    if (nodes) {
      if (QueueNode* n = find_node(ref)) {
        at = n;
        link = &n->free_next;
        state = n->state.load(std::memory_order_acquire);
        ok = node_kind(state) == kNodeFree;
      }
    } else if (BlockHeader* hdr = block_header(ref)) {
      at = hdr;
      link = &hdr->next_free;
      state = hdr->state.load(std::memory_order_acquire);
      ok = state_kind(static_cast<uint32_t>(state)) == kBlockFree &&
           hdr->size_class.load(std::memory_order_relaxed) == cls;
    }
    // A stale `next` (the top was popped and re-pushed meanwhile) fails the tag CAS below.
    const BlockRef next = link != nullptr ? link->load(std::memory_order_relaxed) : 0;
    if (!ok || next == ref) {
      // Only corruption if the head still names this entry: an entry just popped by another
      // party is no longer free, and its pop moved the head (acquire pairs with its claim).
      const uint64_t again = head.load(std::memory_order_acquire);
      if (again != h) {
        h = again;
        continue;
      }
      // A head outside arena memory, a block that is held or of another class, a cycle:
      // detach the whole list. Its blocks leak rather than risk handing one out twice.
      note_corruption();
      head.compare_exchange_strong(h, make_tagged(tagged_tag(h) + 1, 0), std::memory_order_acq_rel);
      return {Status::kCorruptedIndex, 0};
    }
    if (head.compare_exchange_weak(h, make_tagged(tagged_tag(h) + 1, next),
                                   std::memory_order_acquire, std::memory_order_acquire)) {
      if (nodes) prefetch_node(next);  // most often the node this sender takes next
      *word = state;
      *cell = at;
      return {Status::kOk, ref};
    }
  }
}

void Arena::push_free(std::atomic<uint64_t>& head, BlockRef ref, std::atomic<uint32_t>* link) {
  uint64_t h = head.load(std::memory_order_relaxed);
  do {
    link->store(tagged_ref(h), std::memory_order_relaxed);
    // release: the link store and the block's last contents happen-before the next pop (acquire).
  } while (!head.compare_exchange_weak(h, make_tagged(tagged_tag(h) + 1, ref),
                                       std::memory_order_release, std::memory_order_relaxed));
}

Result<BlockRef> Arena::take_free_block(uint32_t cls, uint32_t* generation, BlockHeader** hdr_out) {
  for (int attempt = 0; attempt < kMaxClaimRetries; ++attempt) {
    uint64_t word = 0;
    void* cell = nullptr;
    auto popped = pop_free(header_->free_lists[cls].head, false, cls, &word, &cell);
    if (!popped.ok()) return popped;
    MEMCHANNEL_CRASH_POINT(kAllocPopped);
    auto* hdr = static_cast<BlockHeader*>(cell);
    uint32_t expected = static_cast<uint32_t>(word);
    const uint32_t gen = (state_generation(expected) + 1) & kGenerationMask;
    if (hdr->state.compare_exchange_strong(expected, make_state(gen, holder_, kBlockReserved),
                                           std::memory_order_acq_rel)) {
      *generation = gen;
      *hdr_out = hdr;
      return popped;
    }
    note_corruption();  // popped by us, yet claimed by someone else: listed twice
  }
  return {Status::kCorruptedIndex, 0};
}

Result<BlockHandle> Arena::allocate(uint64_t payload_bytes, const PayloadLayout& layout,
                                    int64_t creator_wait_ns, uint8_t** payload_out) {
  maybe_reap();
  if (truncated()) [[unlikely]] return {Status::kCorruptedLength, {}};
  const bool plain = is_plain_bytes(layout);
  if (!plain && (layout.ndim > kMaxNdim || layout.format.empty() ||
                 layout.format.size() > kMaxFormatLen || layout.itemsize == 0)) {
    return {Status::kInvalidArgument, {}};
  }
  if (!plain) {
    if (layout.shape == nullptr && layout.ndim > 1) return {Status::kInvalidArgument, {}};
    uint64_t elements = 1;
    for (uint32_t i = 0; i < layout.ndim && layout.shape != nullptr; ++i) {
      if (layout.shape[i] < 0 ||
          __builtin_mul_overflow(elements, static_cast<uint64_t>(layout.shape[i]), &elements)) {
        return {Status::kInvalidArgument, {}};
      }
    }
    uint64_t total = 0;
    if (layout.shape == nullptr) {
      const bool fits = layout.ndim == 0 ? payload_bytes == layout.itemsize
                                         : payload_bytes % layout.itemsize == 0;
      if (!fits) return {Status::kInvalidArgument, {}};
    } else if (__builtin_mul_overflow(elements, uint64_t{layout.itemsize}, &total) ||
               total != payload_bytes) {
      return {Status::kInvalidArgument, {}};
    }
  }
  const uint64_t meta = plain ? 0 : meta_bytes_for(layout.ndim, static_cast<uint32_t>(layout.format.size()));
  const uint64_t limit = max_payload();  // private values only; once (~64 instructions a call)
  if (payload_bytes > kMaxBlockBytes || payload_bytes > limit || payload_bytes + meta > limit) {
    return {Status::kTooLarge, {}};
  }
  const uint64_t units = (sizeof(BlockHeader) + meta + payload_bytes + kUnit - 1) >> kUnitShift;
  const uint32_t cls = class_for_units(units);
  const uint64_t class_bytes = class_units(cls) << kUnitShift;

  for (int attempt = 0; attempt < kMaxClaimRetries; ++attempt) {
    BlockRef ref = 0;
    uint32_t generation = 0;
    BlockHeader* hdr = nullptr;
    auto taken = take_free_block(cls, &generation, &hdr);
    if (taken.ok()) {
      ref = taken.value;
    } else {
      auto carved = carve(class_bytes, false, creator_wait_ns);
      if (carved.ok()) {
        uint8_t* cell = translate(carved.value, class_bytes);
        if (cell == nullptr) return {Status::kCorruptedOffset, {}};
        MEMCHANNEL_CRASH_POINT(kAllocCarved);
        auto* fresh = reinterpret_cast<BlockHeader*>(cell);
        hdr = fresh;
        generation = 1;
        fresh->state.store(make_state(generation, holder_, kBlockReserved), std::memory_order_relaxed);
        fresh->next_free.store(0, std::memory_order_relaxed);
        fresh->size_class.store(cls, std::memory_order_relaxed);
        fresh->flags.store(0, std::memory_order_relaxed);
        publish_cell(cell, kBlockMagic);
        ref = offset_to_ref(carved.value);
      } else if (carved.status == Status::kOutOfCapacity) {
        // Capacity is spent: a free block of a larger class is better than waiting.
        for (uint32_t c = cls + 1; c < kNumClasses && c <= cls + kStealClasses && ref == 0; ++c) {
          if (tagged_ref(header_->free_lists[c].head.load(std::memory_order_relaxed)) == 0) continue;
          auto stolen = take_free_block(c, &generation, &hdr);
          if (stolen.ok()) ref = stolen.value;
        }
        if (ref == 0) {
          // Allocation pressure: blocks held by dead processes may be what is missing.
          if (reap_dead_holders() > 0) continue;
          // No segment there is, or that can still be made, holds a block of this class (nor
          // of a larger one): waiting cannot help.
          if (payload_bytes + meta > reachable_payload()) return {Status::kTooLarge, {}};
          return {Status::kOutOfCapacity, {}};
        }
      } else {
        return {carved.status, {}};
      }
    }
    const uint32_t actual_cls = hdr->size_class.load(std::memory_order_relaxed);
    stripe().blocks_in_use.fetch_add(1, std::memory_order_relaxed);
    stripe().bytes_in_use.fetch_add(class_units(actual_cls) << kUnitShift,
                                             std::memory_order_relaxed);
    MEMCHANNEL_CRASH_POINT(kAllocClaimed);
    hdr->refcount.store(1, std::memory_order_relaxed);
    hdr->flags.store(0, std::memory_order_relaxed);
    hdr->length.store(payload_bytes, std::memory_order_relaxed);
    hdr->meta_bytes.store(static_cast<uint32_t>(meta), std::memory_order_relaxed);
    if (!plain) {
      auto* meta_ptr = reinterpret_cast<uint8_t*>(hdr) + sizeof(BlockHeader);
      const BlockMetaPrefix prefix{layout.itemsize, static_cast<uint16_t>(layout.ndim),
                                   static_cast<uint16_t>(layout.format.size())};
      std::memcpy(meta_ptr, &prefix, sizeof(prefix));
      int64_t one_dim = static_cast<int64_t>(payload_bytes / layout.itemsize);
      const int64_t* shape = layout.shape != nullptr ? layout.shape : &one_dim;
      std::memcpy(meta_ptr + sizeof(prefix), shape, 8ull * layout.ndim);
      std::memcpy(meta_ptr + sizeof(prefix) + 8ull * layout.ndim, layout.format.data(),
                  layout.format.size());
    }
    // The cell spans its class (translated with the class's size when carved or popped), and
    // header + meta + payload fit the requested class: the address needs no shared field.
    if (payload_out != nullptr) *payload_out = reinterpret_cast<uint8_t*>(hdr) + sizeof(BlockHeader) + meta;
    return {Status::kOk, {ref, generation}};
  }
  return {Status::kCorruptedIndex, {}};
}

Status Arena::free_block(BlockRef ref, BlockHeader* hdr, uint32_t expected_state) {
  // A tracked block's tracking ends first, while the block is still the caller's: a crash
  // between the two steps completes the tracker early (the holder is dead: its share counts as
  // released) and never leaves a free block that is still tracked.
  if (const uint32_t t = hdr->track.load(std::memory_order_relaxed); (t & 1u) != 0) end_tracking(ref, hdr, t);
  // A share token drops its share first (idempotent: a reclaimer of a freer that died after
  // this step drops it again harmlessly).
  const uint32_t flags = hdr->flags.load(std::memory_order_relaxed);
  if ((flags & kBlockFlagShare) != 0) {
    drop_share(hdr);
    count_as_token(hdr, false);  // counted as a node while a token; freed as a block below
  }
  if ((flags & kBlockFlagPooled) != 0) {
    // A pool's block goes back to its pool while the pool is open (core/pools.cc).
    PoolHeader* pool = pool_of(hdr);
    if (pool != nullptr && pool->closed.load(std::memory_order_acquire) == 0) {
      uint32_t w = expected_state;
      if (!hdr->state.compare_exchange_strong(w, make_state(state_generation(expected_state), 0, kBlockFree),
                                              std::memory_order_acq_rel)) {
        note_corruption();
        return Status::kDoubleRelease;
      }
      MEMCHANNEL_CRASH_POINT(kPoolMarkedFree);
      push_free(pool->head, ref, &hdr->next_free);
      notify_pool(pool);  // its seq_cst fence also orders the push before the look at `closed`
      if (pool->closed.load(std::memory_order_seq_cst) != 0) drain_pool(pool);  // closed meanwhile
      return Status::kOk;
    }
    hdr->flags.fetch_and(~kBlockFlagPooled, std::memory_order_relaxed);
    if (pool != nullptr) pool->count.fetch_sub(1, std::memory_order_relaxed);
  }
  uint32_t word = expected_state;
  if (!hdr->state.compare_exchange_strong(word,
                                          make_state(state_generation(expected_state), 0, kBlockFree),
                                          std::memory_order_acq_rel)) {
    note_corruption();
    return Status::kDoubleRelease;
  }
  const uint32_t cls = hdr->size_class.load(std::memory_order_relaxed);
  stripe_sub(stripe().blocks_in_use, 1);
  stripe_sub(stripe().bytes_in_use, class_units(cls) << kUnitShift);
  MEMCHANNEL_CRASH_POINT(kReleaseMarkedFree);
  push_free(header_->free_lists[cls].head, ref, &hdr->next_free);
  MEMCHANNEL_CRASH_POINT(kReleasePushed);
  notify_all(header_->space);
  return Status::kOk;
}

Status Arena::release(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return Status::kCorruptedOffset;
  }
  if ((hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
    note_corruption();  // arena structures are freed by their owner (free_cells), never here
    return Status::kCorruptedState;
  }
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  const BlockState kind = state_kind(word);
  if (kind == kBlockQueued || kind == kBlockSending) {
    // A message in a queue (its sender's handle is one generation behind: send bumps it).
    note_corruption();
    return Status::kCorruptedState;
  }
  if (state_generation(word) != h.generation || kind == kBlockFree) {
    note_corruption();
    return Status::kDoubleRelease;
  }
  if (kind != kBlockReserved && kind != kBlockReceived) {
    note_corruption();
    return Status::kCorruptedState;
  }
  // Held by another holder: a Buffer a forked child inherited from its parent (the child has a
  // slot of its own since reattach_after_fork). The block stays the parent's; nothing changes.
  if (state_holder(word) != (holder_ & 0xff)) return Status::kNotHolder;
  const uint32_t before = hdr->refcount.fetch_sub(1, std::memory_order_acq_rel);
  if (before == 0) {
    hdr->refcount.store(0, std::memory_order_relaxed);
    note_corruption();
    return Status::kDoubleRelease;
  }
  if (before > 1) return Status::kOk;
  MEMCHANNEL_CRASH_POINT(kReleaseRefDropped);
  return free_block(h.ref, hdr, word);
}

Status Arena::retain(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) return Status::kCorruptedOffset;
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  if (state_generation(word) != h.generation ||
      (state_kind(word) != kBlockReserved && state_kind(word) != kBlockReceived)) {
    return Status::kCorruptedState;
  }
  hdr->refcount.fetch_add(1, std::memory_order_relaxed);
  return Status::kOk;
}

Status Arena::mark_received(BlockHandle h) {
  BlockHeader* hdr = block_cell(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return Status::kCorruptedOffset;
  }
  uint32_t word = hdr->state.load(std::memory_order_acquire);
  for (;;) {
    const BlockState kind = state_kind(word);
    // kTransferred to us: the node we claimed was freed (as an old dummy) before we got here,
    // and the party that freed it handed the message to us (Channel::advance).
    const bool ours = kind == kBlockTransferred && state_holder(word) == holder_;
    if (state_generation(word) != h.generation || (kind != kBlockQueued && kind != kBlockSending && !ours) ||
        (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
      note_corruption();  // a forged or duplicated descriptor: not a message queued as this one
      return Status::kCorruptedState;
    }
    // A kSending block is linked but its sender has not yet marked it kQueued: take it anyway.
    if (hdr->state.compare_exchange_weak(word, make_state(h.generation, holder_, kBlockReceived),
                                         std::memory_order_acq_rel, std::memory_order_acquire)) {
      return Status::kOk;
    }
  }
}

bool Arena::transfer_message(BlockHandle message, uint32_t claimer) {
  BlockHeader* hdr = block_cell(message.ref);
  if (hdr == nullptr) return false;
  uint32_t word = hdr->state.load(std::memory_order_acquire);
  for (;;) {
    const BlockState kind = state_kind(word);
    if (state_generation(word) != message.generation || (kind != kBlockQueued && kind != kBlockSending) ||
        (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
      return false;  // taken by its claimer, freed by a reclaimer, or recycled: not ours to move
    }
    if (hdr->state.compare_exchange_weak(word, make_state(message.generation, claimer, kBlockTransferred),
                                         std::memory_order_acq_rel, std::memory_order_acquire)) {
      return true;
    }
  }
}

Status Arena::begin_send(BlockHandle h, uint32_t* previous) {
  BlockHeader* hdr = block_cell(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return Status::kCorruptedOffset;
  }
  uint32_t word = hdr->state.load(std::memory_order_acquire);
  const BlockState kind = state_kind(word);
  if (state_generation(word) != h.generation || (kind != kBlockReserved && kind != kBlockReceived) ||
      (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
    note_corruption();
    return Status::kCorruptedState;
  }
  if (state_holder(word) != (holder_ & 0xff)) return Status::kNotHolder;  // see release()
  if (hdr->refcount.load(std::memory_order_relaxed) != 1) return Status::kInvalidArgument;
  if (!hdr->state.compare_exchange_strong(word, make_state(sending_generation(h), holder_, kBlockSending),
                                          std::memory_order_acq_rel)) {
    return Status::kCorruptedState;
  }
  *previous = word;
  return Status::kOk;
}

Status Arena::abort_send(BlockHandle message, uint32_t previous) {
  BlockHeader* hdr = block_cell(message.ref);
  uint32_t word = make_state(message.generation, holder_, kBlockSending);
  if (hdr == nullptr ||
      !hdr->state.compare_exchange_strong(word, previous, std::memory_order_acq_rel)) {
    note_corruption();
    return Status::kCorruptedState;
  }
  return Status::kOk;
}

void Arena::finish_send(BlockHandle message) {
  BlockHeader* hdr = block_cell(message.ref);
  if (hdr == nullptr) return;
  uint32_t word = make_state(message.generation, holder_, kBlockSending);
  // Fails when a receiver took the message first (kSending -> kReceived): nothing to do.
  hdr->state.compare_exchange_strong(word, make_state(message.generation, 0, kBlockQueued),
                                     std::memory_order_acq_rel);
}

Result<BlockView> Arena::view(BlockHandle h) {
  Result<BlockView> out;
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return {Status::kCorruptedOffset, {}};
  }
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  if (state_generation(word) != h.generation ||
      (state_kind(word) != kBlockReserved && state_kind(word) != kBlockReceived)) {
    return {Status::kCorruptedState, {}};
  }
  if ((hdr->flags.load(std::memory_order_relaxed) & kBlockFlagShare) != 0) {
    // A share token: the view is of the block it shares, read-only (core/shares.cc).
    uint32_t generation = 0;
    BlockRef shared_ref = 0;
    hdr = shared_of(hdr, &generation, &shared_ref);
    if (hdr == nullptr) {
      note_corruption();
      return {Status::kCorruptedState, {}};
    }
    out.value.readonly = true;
  }
  // Read each peer-written field once, then check it against private bounds.
  const uint64_t class_bytes = class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift;
  const uint64_t meta = hdr->meta_bytes.load(std::memory_order_relaxed);
  const uint64_t length = hdr->length.load(std::memory_order_relaxed);
  const uint64_t room = class_bytes - sizeof(BlockHeader);
  if (meta > room || length > room - meta || (meta % kUnit) != 0) {
    note_corruption();
    return {Status::kCorruptedLength, {}};
  }
  BlockView& v = out.value;
  v.data = reinterpret_cast<uint8_t*>(hdr) + sizeof(BlockHeader) + meta;
  v.length = length;
  if (meta == 0) {
    v.itemsize = 1;
    v.ndim = 1;
    v.shape[0] = static_cast<int64_t>(length);
    v.format[0] = 'B';
    v.format_len = 1;
    return out;
  }
  const uint8_t* meta_ptr = reinterpret_cast<uint8_t*>(hdr) + sizeof(BlockHeader);
  BlockMetaPrefix prefix;
  std::memcpy(&prefix, meta_ptr, sizeof(prefix));
  if (prefix.ndim > kMaxNdim || prefix.format_len == 0 || prefix.format_len > kMaxFormatLen ||
      prefix.itemsize == 0 || meta_bytes_for(prefix.ndim, prefix.format_len) > meta) {
    note_corruption();
    return {Status::kCorruptedLength, {}};
  }
  std::memcpy(v.shape.data(), meta_ptr + sizeof(prefix), 8ull * prefix.ndim);
  std::memcpy(v.format.data(), meta_ptr + sizeof(prefix) + 8ull * prefix.ndim, prefix.format_len);
  uint64_t elements = 1;
  for (uint32_t i = 0; i < prefix.ndim; ++i) {
    if (v.shape[i] < 0 ||
        __builtin_mul_overflow(elements, static_cast<uint64_t>(v.shape[i]), &elements)) {
      note_corruption();
      return {Status::kCorruptedLength, {}};
    }
  }
  uint64_t total = 0;
  if (__builtin_mul_overflow(elements, uint64_t{prefix.itemsize}, &total) || total != length) {
    note_corruption();
    return {Status::kCorruptedLength, {}};
  }
  v.itemsize = prefix.itemsize;
  v.ndim = prefix.ndim;
  v.format_len = prefix.format_len;
  return out;
}

Result<uint64_t> Arena::held_length(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return {Status::kCorruptedOffset, 0};
  }
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  if (state_generation(word) != h.generation ||
      (state_kind(word) != kBlockReserved && state_kind(word) != kBlockReceived) ||
      (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
    return {Status::kCorruptedState, 0};
  }
  if (state_holder(word) != (holder_ & 0xff)) return {Status::kNotHolder, 0};  // see release()
  const uint64_t room = (class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift) -
                        sizeof(BlockHeader);
  const uint64_t meta = hdr->meta_bytes.load(std::memory_order_relaxed);
  const uint64_t length = hdr->length.load(std::memory_order_relaxed);
  if (meta > room || length > room - meta) {
    note_corruption();
    return {Status::kCorruptedLength, 0};
  }
  return {Status::kOk, length};
}

uint8_t* Arena::payload(BlockHandle h, uint64_t* length_out) {
  auto v = view(h);
  if (!v.ok()) return nullptr;
  if (length_out != nullptr) *length_out = v.value.length;
  return v.value.data;
}

Result<BlockRef> Arena::allocate_node(int64_t creator_wait_ns, QueueNode** found) {
  for (int attempt = 0; attempt < kMaxClaimRetries; ++attempt) {
    uint64_t word = 0;
    void* listed = nullptr;
    auto popped = pop_free(header_->node_free, true, 0, &word, &listed);
    if (popped.ok()) {
      MEMCHANNEL_CRASH_POINT(kNodePopped);
      auto* n = static_cast<QueueNode*>(listed);
      const uint64_t held = make_node_state(0, node_generation(word) + 1, holder_, kNodeHeld);
      if (!n->state.compare_exchange_strong(word, held, std::memory_order_acq_rel)) {
        note_corruption();  // popped by us, yet claimed by someone else: listed twice
        continue;
      }
      stripe().nodes_in_use.fetch_add(1, std::memory_order_relaxed);
      MEMCHANNEL_CRASH_POINT(kNodeClaimed);
      if (found != nullptr) *found = n;
      return popped;
    }
    auto carved = carve(kNodeBytes, true, creator_wait_ns);
    if (carved.ok()) {
      uint8_t* cell = translate(carved.value, kNodeBytes);
      if (cell == nullptr) return {Status::kCorruptedOffset, 0};
      MEMCHANNEL_CRASH_POINT(kNodeCarved);
      auto* n = reinterpret_cast<QueueNode*>(cell);
      n->next.store(0, std::memory_order_relaxed);
      n->state.store(make_node_state(0, 1, holder_, kNodeHeld), std::memory_order_relaxed);
      publish_cell(cell, kNodeMagic);
      stripe().nodes_in_use.fetch_add(1, std::memory_order_relaxed);
      MEMCHANNEL_CRASH_POINT(kNodeClaimed);
      if (found != nullptr) *found = n;
      return {Status::kOk, offset_to_ref(carved.value)};
    }
    if (carved.status != Status::kOutOfCapacity) return {carved.status, 0};
    // Capacity is carved: cut a free data block into nodes (a queue must not wait for a node
    // while data blocks are free), or reclaim what dead holders held.
    auto converted = convert_block_to_nodes();
    if (converted.ok()) {
      if (found != nullptr) *found = find_node(converted.value);
      return converted;
    }
    if (reap_dead_holders() > 0) continue;
    return {Status::kOutOfCapacity, 0};
  }
  return {Status::kCorruptedIndex, 0};
}

Result<BlockRef> Arena::convert_block_to_nodes() {
  for (uint32_t cls = 0; cls < kNumClasses; ++cls) {
    if (class_units(cls) % kNodeUnits != 0) continue;  // cut into whole node cells only
    if (tagged_ref(header_->free_lists[cls].head.load(std::memory_order_relaxed)) == 0) continue;
    uint32_t generation = 0;
    BlockHeader* hdr = nullptr;
    auto taken = take_free_block(cls, &generation, &hdr);
    if (!taken.ok()) continue;
    const uint64_t units = class_units(cls);
    // Counted as a block in use while it is one (a reclaimer frees it as a block).
    stripe().blocks_in_use.fetch_add(1, std::memory_order_relaxed);
    stripe().bytes_in_use.fetch_add(units << kUnitShift, std::memory_order_relaxed);
    MEMCHANNEL_CRASH_POINT(kNodeConvertClaimed);
    uint8_t* base = translate(ref_to_offset(taken.value), units << kUnitShift);
    if (base == nullptr) continue;
    const uint64_t held = make_node_state(0, 1, holder_, kNodeHeld);
    auto make_node = [&](uint8_t* cell) {
      auto* n = reinterpret_cast<QueueNode*>(cell);
      n->state.store(held, std::memory_order_relaxed);  // valid before the magic says "node"
      publish_cell(cell, kNodeMagic);
      n->next.store(0, std::memory_order_relaxed);
      n->block.store(0, std::memory_order_relaxed);
      n->generation.store(0, std::memory_order_relaxed);
      n->length.store(0, std::memory_order_relaxed);
    };
    // Cells inside the payload first: until the header cell turns, a walker sees one block
    // (kReserved by us, reclaimed whole if we die); after it, only nodes (held by us).
    for (uint64_t u = kNodeUnits; u < units; u += kNodeUnits) make_node(base + (u << kUnitShift));
    MEMCHANNEL_CRASH_POINT(kNodeConvertCells);
    make_node(base);
    stripe_sub(stripe().blocks_in_use, 1);
    stripe_sub(stripe().bytes_in_use, units << kUnitShift);
    stripe().nodes_in_use.fetch_add(units / kNodeUnits, std::memory_order_relaxed);
    MEMCHANNEL_CRASH_POINT(kNodeConverted);
    for (uint64_t u = kNodeUnits; u < units; u += kNodeUnits) free_node_from(taken.value + static_cast<BlockRef>(u), held);
    return taken;
  }
  return {Status::kOutOfCapacity, 0};
}

bool Arena::free_node_from(BlockRef ref, uint64_t expected, bool count_refusal) {
  QueueNode* n = find_node(ref);
  if (n == nullptr) {
    if (count_refusal) note_corruption();
    return false;
  }
  return free_node_at(n, ref, expected, count_refusal);
}

bool Arena::free_node_at(QueueNode* n, BlockRef ref, uint64_t expected, bool count_refusal) {
  uint64_t word = expected;
  if (node_kind(expected) == kNodeFree ||
      !n->state.compare_exchange_strong(word, make_node_state(0, node_generation(expected), 0, kNodeFree),
                                        std::memory_order_acq_rel)) {
    if (count_refusal) note_corruption();  // freed twice, or not a node
    return false;
  }
  stripe_sub(stripe().nodes_in_use, 1);
  MEMCHANNEL_CRASH_POINT(kNodeMarkedFree);
  push_free(header_->node_free, ref, &n->free_next);
  return true;
}

bool Arena::free_node_into(QueueNode* n, BlockRef ref, uint64_t expected, NodeStash* stash) {
  // Held by this process while stashed: if it dies before push_stash, its reclaimer frees the
  // node (reclaim_holder frees a dead holder's kNodeHeld nodes).
  uint64_t word = expected;
  const uint64_t held = make_node_state(0, node_generation(expected), holder_, kNodeHeld);
  if (node_kind(expected) == kNodeFree ||
      !n->state.compare_exchange_strong(word, held, std::memory_order_acq_rel)) {
    return false;  // freed first by a crash reclaimer (recover_queues): not ours
  }
  n->free_next.store(stash->first, std::memory_order_relaxed);
  if (stash->count++ == 0) stash->last_link = &n->free_next;
  stash->first = ref;
  return true;
}

void Arena::push_stash(NodeStash* stash) {
  if (stash->count == 0) return;
  // Free each (kNodeHeld(us) -> kNodeFree), then list them all with one CAS. Between the two, a
  // crash loses the stash (kNodesStashed): the window free_node has for one node.
  uint32_t freed = 0;
  for (BlockRef ref = stash->first; freed < stash->count && ref != 0; ++freed) {
    QueueNode* n = find_node(ref);
    if (n == nullptr) break;  // our own links: not reached
    const uint64_t s = n->state.load(std::memory_order_relaxed);
    n->state.store(make_node_state(0, node_generation(s), 0, kNodeFree), std::memory_order_relaxed);
    ref = n->free_next.load(std::memory_order_relaxed);
  }
  stripe_sub(stripe().nodes_in_use, freed);
  MEMCHANNEL_CRASH_POINT(kNodesStashed);
  // A chain pushes as one entry does: its last link takes the old head, the head its first.
  push_free(header_->node_free, stash->first, stash->last_link);
  *stash = NodeStash{};
}

void Arena::free_node(BlockRef ref) {
  QueueNode* n = node(ref);
  if (n == nullptr) return;
  free_node_at(n, ref, n->state.load(std::memory_order_acquire), true);
}

Result<Offset> Arena::allocate_cells(uint64_t bytes) {
  auto r = allocate(bytes, PayloadLayout{});
  if (!r.ok()) return {r.status, 0};
  // Long-lived structures are not user data: keep them out of the data-block counters, and
  // owned by the arena rather than by this process (a crash must not free them).
  BlockHeader* hdr = block_header(r.value.ref);
  if (hdr == nullptr) {  // a block that no longer passes its checks: a peer rewrote it
    note_corruption();
    return {Status::kCorruptedOffset, 0};
  }
  hdr->flags.store(kBlockFlagArena, std::memory_order_relaxed);
  hdr->state.store(make_state(r.value.generation, 0, kBlockReserved), std::memory_order_release);
  stripe().blocks_in_use.fetch_sub(1, std::memory_order_relaxed);
  stripe().bytes_in_use.fetch_sub(
      class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift,
      std::memory_order_relaxed);
  stripe().nodes_in_use.fetch_add(1, std::memory_order_relaxed);
  return {Status::kOk, ref_to_offset(r.value.ref) + sizeof(BlockHeader)};
}

void Arena::free_cells(Offset off) {
  const BlockRef ref = offset_to_ref(off - sizeof(BlockHeader));
  BlockHeader* hdr = block_header(ref);
  if (hdr == nullptr) return;
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  if (state_kind(word) != kBlockReserved) return;
  hdr->flags.store(0, std::memory_order_relaxed);
  stripe().blocks_in_use.fetch_add(1, std::memory_order_relaxed);
  stripe().bytes_in_use.fetch_add(
      class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift,
      std::memory_order_relaxed);
  stripe().nodes_in_use.fetch_sub(1, std::memory_order_relaxed);
  hdr->refcount.store(1, std::memory_order_relaxed);
  free_block(ref, hdr, word);
}

namespace {
// The calling thread's stripe number + 1 (0: not yet assigned). Constant-initialized and
// initial-exec (as t_last_taken in channel.cc): no guard and no __tls_get_addr on the per-message
// counter updates.
[[gnu::tls_model("initial-exec")]] thread_local uint32_t t_stripe_plus_one = 0;
}  // namespace

uint32_t Arena::thread_stripe() {
  static std::atomic<uint32_t> next{0};
  uint32_t s = t_stripe_plus_one;
  if (s == 0) [[unlikely]] {
    s = next.fetch_add(1, std::memory_order_relaxed) + 1;
    t_stripe_plus_one = s;
  }
  return s - 1;
}

ArenaStats Arena::stats() {
  maybe_reap();
  return counters();
}

ArenaStats Arena::counters() const {
  const ArenaCounters& c = header_->counters;
  // Sums of the stripes; a transiently negative sum (a free counted before its allocation was
  // read) reads as 0.
  auto sum = [&](std::atomic<uint64_t> CounterStripe::*field) {
    uint64_t total = 0;
    for (const CounterStripe& st : c.stripes) total += (st.*field).load(std::memory_order_relaxed);
    return static_cast<int64_t>(total) < 0 ? uint64_t{0} : total;
  };
  ArenaStats s{};
  s.capacity = capacity_;
  for (uint32_t i = 0; i < kMaxSegments; ++i) {
    const uint64_t b = sizes_[i].load(std::memory_order_relaxed);
    if (b != 0) {
      s.mapped_bytes += b;
      ++s.segments;
    }
  }
  s.carved_bytes = c.carved_bytes.load(std::memory_order_relaxed);
  s.blocks_in_use = sum(&CounterStripe::blocks_in_use);
  s.bytes_in_use = sum(&CounterStripe::bytes_in_use);
  s.bytes_copied = sum(&CounterStripe::bytes_copied);
  s.corruption_count = c.corruption_count.load(std::memory_order_relaxed);
  s.nodes_in_use = sum(&CounterStripe::nodes_in_use);
  s.attached_holders = holders_count(header_->attached_holders.load(std::memory_order_relaxed));
  s.reclaimed_blocks = header_->reclaimed_blocks.load(std::memory_order_relaxed);
  return s;
}

}  // namespace memchannel
