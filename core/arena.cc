#include "core/arena.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

namespace memchannel {
namespace {

constexpr uint64_t kInitialSegmentBytes = 4ull << 20;
constexpr uint64_t kHeaderBytes = (sizeof(ArenaHeader) + kUnit - 1) & ~(kUnit - 1);
constexpr int kMaxClaimRetries = 16;     // free-list entries that fail validation before giving up
constexpr uint32_t kStealClasses = 16;   // larger classes searched when capacity is exhausted

uint64_t round_up_pow2(uint64_t v) { return v <= 1 ? 1 : (1ull << std::bit_width(v - 1)); }

bool is_plain_bytes(const PayloadLayout& layout) {
  return layout.itemsize == 1 && layout.ndim == 1 && layout.format == "B";
}

}  // namespace

Arena::Arena(std::unique_ptr<MemoryBackend> backend, ArenaHeader* header, uint64_t capacity)
    : backend_(std::move(backend)), header_(header), capacity_(capacity) {}

Arena::~Arena() { detach(); }

void Arena::detach() {
  if (detached_.exchange(true, std::memory_order_acq_rel)) return;
  // Dead holders still count as attached until reaped: reap them so the last live process
  // really is the last and removes the segments.
  reap_dead_holders();
  if (holder_ != 0) {
    HolderSlot& slot = header_->holders[holder_ - 1];
    slot.state.store(kSlotFree, std::memory_order_release);
  }
  if (header_->attached_holders.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    backend_->remove_segments(header_->segment_count.load(std::memory_order_acquire));
  }
}

void Arena::reattach_after_fork() {
  if (!backend_->tracks_holders() || detached_.load(std::memory_order_acquire)) return;
  uint32_t attached = header_->attached_holders.load(std::memory_order_acquire);
  do {
    if (attached == 0) {
      detached_.store(true, std::memory_order_release);
      return;
    }
  } while (!header_->attached_holders.compare_exchange_weak(attached, attached + 1,
                                                            std::memory_order_acq_rel));
  holder_ = 0;
  if (claim_holder_slot() != Status::kOk) {
    header_->attached_holders.fetch_sub(1, std::memory_order_acq_rel);
    detached_.store(true, std::memory_order_release);
  }
}

Status Arena::claim_holder_slot() {
  for (int round = 0; round < 2; ++round) {
    for (uint32_t i = 0; i < kMaxHolders; ++i) {
      HolderSlot& slot = header_->holders[i];
      uint32_t expected = kSlotFree;
      if (!slot.state.compare_exchange_strong(expected, kSlotClaiming, std::memory_order_acq_rel)) {
        continue;
      }
      const HolderIdentity me = backend_->self_identity();
      slot.identity[0].store(me.words[0], std::memory_order_relaxed);
      slot.identity[1].store(me.words[1], std::memory_order_relaxed);
      slot.state.store(kSlotActive, std::memory_order_release);  // identity visible to reapers
      holder_ = i + 1;
      return Status::kOk;
    }
    reap_dead_holders();  // all slots taken: free those of dead processes, then retry
  }
  return Status::kOutOfCapacity;
}

template <typename Visit>
void Arena::walk_blocks(Visit&& visit, uint64_t* nodes, uint64_t* bad_cells) {
  const uint32_t count = std::min(header_->segment_count.load(std::memory_order_acquire), kMaxSegments);
  const uint64_t carve_at = header_->carve.load(std::memory_order_acquire);
  for (uint32_t seg = 0; seg < count; ++seg) {
    uint8_t* base = segment_base(seg);
    if (base == nullptr) continue;
    const uint64_t size = sizes_[seg].load(std::memory_order_relaxed);
    const uint64_t end = seg == segment_of(carve_at) ? std::min(within_segment(carve_at), size) : size;
    uint64_t at = seg == 0 ? kHeaderBytes : 0;
    while (at + kUnit <= end) {
      const uint32_t magic = __atomic_load_n(reinterpret_cast<uint32_t*>(base + at + kCellMagicOffset),
                                             __ATOMIC_RELAXED);
      if (magic == kNodeMagic) {
        ++*nodes;
        at += kUnit;
        continue;
      }
      if (magic != kBlockMagic) {
        // A segment's unused tail is zero; anything else before the carve cursor is a cell
        // carved by a party that died before writing its header. Its size is unknown: stop.
        if (seg == segment_of(carve_at) || magic != 0) ++*bad_cells;
        break;
      }
      auto* hdr = reinterpret_cast<BlockHeader*>(base + at);
      const uint32_t cls = hdr->size_class.load(std::memory_order_relaxed);
      if (cls >= kNumClasses) { ++*bad_cells; break; }
      const uint64_t bytes = class_units(cls) << kUnitShift;
      if (bytes > end - at) { ++*bad_cells; break; }
      visit(make_offset(seg, at), hdr);
      at += bytes;
    }
  }
}

uint64_t Arena::reclaim_holder(uint32_t holder_id) {
  uint64_t freed = 0, nodes = 0, bad = 0;
  walk_blocks([&](Offset off, BlockHeader* hdr) {
    const uint32_t word = hdr->state.load(std::memory_order_acquire);
    const BlockState kind = state_kind(word);
    if (state_holder(word) != holder_id || (kind != kBlockReserved && kind != kBlockReceived)) return;
    hdr->refcount.store(1, std::memory_order_relaxed);
    if (free_block(offset_to_ref(off), hdr, word) == Status::kOk) ++freed;
  }, &nodes, &bad);
  return freed;
}

uint64_t Arena::reap_dead_holders() {
  if (!backend_->tracks_holders()) return 0;
  uint64_t freed = 0;
  for (uint32_t i = 0; i < kMaxHolders; ++i) {
    HolderSlot& slot = header_->holders[i];
    if (i + 1 == holder_ || slot.state.load(std::memory_order_acquire) != kSlotActive) continue;
    const HolderIdentity id{{slot.identity[0].load(std::memory_order_relaxed),
                             slot.identity[1].load(std::memory_order_relaxed)}};
    if (backend_->liveness(id) != HolderLiveness::kDead) continue;
    uint32_t expected = kSlotActive;
    if (!slot.state.compare_exchange_strong(expected, kSlotReclaiming, std::memory_order_acq_rel)) {
      continue;  // another party reclaims it
    }
    const uint64_t n = reclaim_holder(i + 1);
    slot.reclaimed_blocks.fetch_add(n, std::memory_order_relaxed);
    header_->reclaimed_blocks.fetch_add(n, std::memory_order_relaxed);
    freed += n;
    slot.state.store(kSlotFree, std::memory_order_release);
    header_->attached_holders.fetch_sub(1, std::memory_order_acq_rel);
  }
  return freed;
}

ArenaCensus Arena::census() {
  ArenaCensus c;
  std::vector<BlockRef> free_blocks;
  walk_blocks([&](Offset off, BlockHeader* hdr) {
    ++c.blocks;
    if ((hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
      ++c.arena_cells;
      return;
    }
    switch (state_kind(hdr->state.load(std::memory_order_acquire))) {
      case kBlockFree: ++c.free_blocks; free_blocks.push_back(offset_to_ref(off)); break;
      case kBlockReserved: ++c.reserved; break;
      case kBlockQueued: ++c.queued; break;
      case kBlockReceived: ++c.received; break;
    }
  }, &c.nodes, &c.bad_cells);
  // Every block on a free list must be free and listed once (a quiescent check).
  std::vector<BlockRef> listed;
  for (uint32_t cls = 0; cls < kNumClasses; ++cls) {
    BlockRef ref = tagged_ref(header_->free_lists[cls].head.load(std::memory_order_acquire));
    for (uint64_t steps = 0; ref != 0; ++steps) {
      BlockHeader* hdr = block_header(ref);
      if (hdr == nullptr || steps > c.blocks) { c.free_lists_consistent = false; break; }
      if (state_kind(hdr->state.load(std::memory_order_acquire)) != kBlockFree) c.free_lists_consistent = false;
      listed.push_back(ref);
      ref = hdr->next_free.load(std::memory_order_relaxed);
    }
  }
  std::sort(listed.begin(), listed.end());
  if (std::adjacent_find(listed.begin(), listed.end()) != listed.end()) c.free_lists_consistent = false;
  c.free_listed = listed.size();
  return c;
}

Result<std::shared_ptr<Arena>> Arena::create(std::unique_ptr<MemoryBackend> backend,
                                             uint64_t capacity, uint64_t arena_id) {
  if (capacity < kHeaderBytes + kUnit * 16) return {Status::kInvalidArgument, nullptr};
  const uint64_t seg0 = std::min({capacity, kInitialSegmentBytes, kMaxSegmentBytes});
  auto seg = backend->create_segment(0, seg0);
  if (!seg.ok()) return {seg.status, nullptr};
  auto* header = new (seg.value) ArenaHeader{};  // memory is zero-filled; this starts lifetimes
  header->magic = kArenaMagic;
  header->version = kArenaLayoutVersion;
  header->header_bytes = static_cast<uint32_t>(kHeaderBytes);
  header->capacity = capacity;
  header->arena_id = arena_id;
  header->segment_bytes[0].store(seg0, std::memory_order_relaxed);
  header->segment_count.store(1, std::memory_order_relaxed);
  header->carve.store(make_offset(0, kHeaderBytes), std::memory_order_relaxed);
  header->counters.carved_bytes.store(kHeaderBytes, std::memory_order_relaxed);
  std::shared_ptr<Arena> arena(new Arena(std::move(backend), header, capacity));
  arena->sizes_[0].store(seg0, std::memory_order_relaxed);
  arena->bases_[0].store(seg.value, std::memory_order_release);
  header->attached_holders.store(1, std::memory_order_relaxed);  // the creator
  if (arena->backend_->tracks_holders()) {
    const Status s = arena->claim_holder_slot();
    if (s != Status::kOk) return {s, nullptr};
  }
  // Published last: an opener that sees kArenaReady sees every field above (acquire).
  header->ready.store(kArenaReady, std::memory_order_release);
  return {Status::kOk, std::move(arena)};
}

Result<std::shared_ptr<Arena>> Arena::attach(std::unique_ptr<MemoryBackend> backend,
                                             uint64_t segment0_bytes) {
  if (segment0_bytes < kHeaderBytes || segment0_bytes > kMaxSegmentBytes) {
    return {Status::kCorruptedLength, nullptr};
  }
  auto seg = backend->map_segment(0, segment0_bytes);
  if (!seg.ok()) return {seg.status, nullptr};
  auto* header = reinterpret_cast<ArenaHeader*>(seg.value);
  if (header->ready.load(std::memory_order_acquire) != kArenaReady) return {Status::kNotReady, nullptr};
  if (header->magic != kArenaMagic) return {Status::kBadMagic, nullptr};
  if (header->version != kArenaLayoutVersion || header->header_bytes != kHeaderBytes) {
    return {Status::kVersionMismatch, nullptr};
  }
  const uint64_t capacity_untrusted = header->capacity;
  if (capacity_untrusted < segment0_bytes ||
      capacity_untrusted > kMaxSegmentBytes * kMaxSegments ||
      header->segment_bytes[0].load(std::memory_order_acquire) != segment0_bytes) {
    return {Status::kCorruptedLength, nullptr};
  }
  // Join the holders unless the last one is already tearing the arena down.
  uint32_t attached = header->attached_holders.load(std::memory_order_acquire);
  do {
    if (attached == 0 || attached > kMaxHolders) return {Status::kNotFound, nullptr};
  } while (!header->attached_holders.compare_exchange_weak(attached, attached + 1,
                                                           std::memory_order_acq_rel));
  std::shared_ptr<Arena> arena(new Arena(std::move(backend), header, capacity_untrusted));
  arena->sizes_[0].store(segment0_bytes, std::memory_order_relaxed);
  arena->bases_[0].store(seg.value, std::memory_order_release);
  if (arena->backend_->tracks_holders()) {
    arena->reap_dead_holders();
    const Status s = arena->claim_holder_slot();
    if (s != Status::kOk) return {s, nullptr};
  }
  return {Status::kOk, std::move(arena)};
}

uint64_t Arena::max_payload() const {
  const uint64_t seg0 = sizes_[0].load(std::memory_order_relaxed);
  const uint64_t largest_segment =
      std::min(std::max(capacity_ - seg0, seg0 - kHeaderBytes), kMaxSegmentBytes);
  const uint64_t block = std::min(largest_segment, kMaxBlockBytes);
  // The largest class that fits, minus the header.
  const uint32_t cls = class_for_units(block >> kUnitShift);
  uint64_t bytes = class_units(cls) << kUnitShift;
  if (bytes > block) bytes = cls == 0 ? 0 : class_units(cls - 1) << kUnitShift;
  return bytes > sizeof(BlockHeader) ? bytes - sizeof(BlockHeader) : 0;
}

uint8_t* Arena::map_segment_slow(uint32_t index) {
  const uint64_t bytes_untrusted = header_->segment_bytes[index].load(std::memory_order_acquire);
  if (bytes_untrusted == 0 || bytes_untrusted == kSegmentCreating ||
      bytes_untrusted > kMaxSegmentBytes) {
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(map_mutex_);
  uint8_t* base = bases_[index].load(std::memory_order_acquire);
  if (base != nullptr) return base;
  auto mapped = backend_->map_segment(index, bytes_untrusted);
  if (!mapped.ok()) return nullptr;
  sizes_[index].store(bytes_untrusted, std::memory_order_relaxed);
  bases_[index].store(mapped.value, std::memory_order_release);  // pairs with segment_base's load
  return mapped.value;
}

BlockHeader* Arena::block_header(BlockRef ref) {
  if (ref == 0) return nullptr;
  auto* hdr = translate_as<BlockHeader>(ref_to_offset(ref));
  if (hdr == nullptr || hdr->magic != kBlockMagic) return nullptr;
  const uint32_t cls = hdr->size_class.load(std::memory_order_relaxed);
  if (cls >= kNumClasses || translate(ref_to_offset(ref), class_units(cls) << kUnitShift) == nullptr) {
    return nullptr;
  }
  return hdr;
}

QueueNode* Arena::node(BlockRef ref) {
  if (ref == 0) return nullptr;
  auto* n = translate_as<QueueNode>(ref_to_offset(ref));
  if (n == nullptr || n->magic != kNodeMagic) {
    note_corruption();
    return nullptr;
  }
  return n;
}

Status Arena::grow(uint32_t current, uint64_t at_least) {
  const uint32_t next = current + 1;
  if (next >= kMaxSegments) return Status::kOutOfCapacity;
  const uint64_t existing = header_->segment_bytes[next].load(std::memory_order_acquire);
  if (existing == kSegmentCreating) {  // another party is creating it: let it finish
    std::this_thread::yield();
    return Status::kOk;
  }
  if (existing == 0) {
    uint64_t total = 0;
    for (uint32_t i = 0; i < next; ++i) {
      const uint64_t b = header_->segment_bytes[i].load(std::memory_order_acquire);
      if (b == kSegmentCreating || b > kMaxSegmentBytes) return Status::kOutOfCapacity;
      total += b;
    }
    if (total >= capacity_) return Status::kOutOfCapacity;
    const uint64_t current_size = sizes_[current].load(std::memory_order_relaxed);
    uint64_t size = std::max(std::min(current_size * 2, kMaxSegmentBytes), round_up_pow2(at_least));
    size = std::min({size, capacity_ - total, kMaxSegmentBytes});
    if (size < at_least) return Status::kOutOfCapacity;
    uint64_t expected = 0;
    if (!header_->segment_bytes[next].compare_exchange_strong(expected, kSegmentCreating,
                                                              std::memory_order_acq_rel)) {
      return Status::kOk;  // someone else claimed it; retry against their segment
    }
    auto created = backend_->create_segment(next, size);
    if (!created.ok()) {
      header_->segment_bytes[next].store(0, std::memory_order_release);
      return created.status == Status::kSystemError ? Status::kOutOfCapacity : created.status;
    }
    {
      std::lock_guard<std::mutex> lock(map_mutex_);
      sizes_[next].store(size, std::memory_order_relaxed);
      bases_[next].store(created.value, std::memory_order_release);
    }
    header_->segment_bytes[next].store(size, std::memory_order_release);
    header_->segment_count.store(next + 1, std::memory_order_release);
  }
  // Move the carve cursor past the full segment (whoever gets there first).
  uint64_t cur = header_->carve.load(std::memory_order_acquire);
  while (segment_of(cur) == current &&
         !header_->carve.compare_exchange_weak(cur, make_offset(next, 0), std::memory_order_acq_rel)) {
  }
  return Status::kOk;
}

Result<Offset> Arena::carve(uint64_t bytes) {
  for (;;) {
    uint64_t cur = header_->carve.load(std::memory_order_acquire);
    const uint32_t seg = segment_of(cur);
    if (seg >= kMaxSegments || segment_base(seg) == nullptr) {
      note_corruption();
      return {Status::kCorruptedOffset, 0};
    }
    const uint64_t size = sizes_[seg].load(std::memory_order_relaxed);
    const uint64_t within = within_segment(cur);
    if (within <= size && bytes <= size - within) {
      if (header_->carve.compare_exchange_weak(cur, cur + bytes, std::memory_order_acq_rel)) {
        header_->counters.carved_bytes.fetch_add(bytes, std::memory_order_relaxed);
        return {Status::kOk, cur};
      }
      continue;
    }
    const Status s = grow(seg, bytes);
    if (s != Status::kOk) return {s, 0};
  }
}

Result<BlockRef> Arena::pop_free(std::atomic<uint64_t>& head, bool nodes) {
  uint64_t h = head.load(std::memory_order_acquire);
  for (;;) {
    const BlockRef ref = tagged_ref(h);
    if (ref == 0) return {Status::kEmpty, 0};
    std::atomic<uint32_t>* link = nullptr;
    if (nodes) {
      QueueNode* n = node(ref);
      if (n != nullptr) link = &n->free_next;
    } else if (BlockHeader* hdr = block_header(ref)) {
      link = &hdr->next_free;
    }
    if (link == nullptr) {
      // The list head points outside arena memory: drop the list rather than follow it.
      note_corruption();
      head.compare_exchange_strong(h, make_tagged(tagged_tag(h) + 1, 0), std::memory_order_acq_rel);
      return {Status::kCorruptedIndex, 0};
    }
    // A stale `next` (the top was popped and re-pushed meanwhile) fails the tag CAS below.
    const BlockRef next = link->load(std::memory_order_relaxed);
    if (head.compare_exchange_weak(h, make_tagged(tagged_tag(h) + 1, next),
                                   std::memory_order_acquire, std::memory_order_acquire)) {
      return {Status::kOk, ref};
    }
  }
}

void Arena::push_free(std::atomic<uint64_t>& head, BlockRef ref, bool nodes) {
  std::atomic<uint32_t>* link = nodes ? &node(ref)->free_next : &block_header(ref)->next_free;
  uint64_t h = head.load(std::memory_order_relaxed);
  do {
    link->store(tagged_ref(h), std::memory_order_relaxed);
    // release: the link store and the block's last contents happen-before the next pop (acquire).
  } while (!head.compare_exchange_weak(h, make_tagged(tagged_tag(h) + 1, ref),
                                       std::memory_order_release, std::memory_order_relaxed));
}

Result<BlockHandle> Arena::allocate(uint64_t payload_bytes, const PayloadLayout& layout) {
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
  if (payload_bytes > kMaxBlockBytes || payload_bytes > max_payload() ||
      payload_bytes + meta > max_payload()) {
    return {Status::kTooLarge, {}};
  }
  const uint64_t units = (sizeof(BlockHeader) + meta + payload_bytes + kUnit - 1) >> kUnitShift;
  const uint32_t cls = class_for_units(units);
  const uint64_t class_bytes = class_units(cls) << kUnitShift;

  for (int attempt = 0; attempt < kMaxClaimRetries; ++attempt) {
    BlockRef ref = 0;
    auto popped = pop_free(header_->free_lists[cls].head, false);
    if (popped.ok()) {
      ref = popped.value;
    } else {
      auto carved = carve(class_bytes);
      if (carved.ok()) {
        auto* fresh = reinterpret_cast<BlockHeader*>(translate(carved.value, class_bytes));
        if (fresh == nullptr) return {Status::kCorruptedOffset, {}};
        fresh->size_class.store(cls, std::memory_order_relaxed);
        fresh->magic = kBlockMagic;
        ref = offset_to_ref(carved.value);
      } else if (carved.status == Status::kOutOfCapacity) {
        // Capacity is spent: a free block of a larger class is better than waiting.
        for (uint32_t c = cls + 1; c < kNumClasses && c <= cls + kStealClasses && ref == 0; ++c) {
          auto stolen = pop_free(header_->free_lists[c].head, false);
          if (stolen.ok()) ref = stolen.value;
        }
        if (ref == 0) {
          // Allocation pressure: blocks held by dead processes may be what is missing.
          if (reap_dead_holders() > 0) continue;
          return {Status::kOutOfCapacity, {}};
        }
      } else {
        return {carved.status, {}};
      }
    }
    BlockHeader* hdr = block_header(ref);
    if (hdr == nullptr) {
      note_corruption();
      continue;
    }
    uint32_t word = hdr->state.load(std::memory_order_acquire);
    if (state_kind(word) != kBlockFree) {  // on a free list but not free: drop it, count it
      note_corruption();
      continue;
    }
    const uint32_t generation = (state_generation(word) + 1) & kGenerationMask;
    if (!hdr->state.compare_exchange_strong(word, make_state(generation, holder_, kBlockReserved),
                                            std::memory_order_acq_rel)) {
      note_corruption();
      continue;
    }
    const uint32_t actual_cls = hdr->size_class.load(std::memory_order_relaxed);
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
    header_->counters.blocks_in_use.fetch_add(1, std::memory_order_relaxed);
    header_->counters.bytes_in_use.fetch_add(class_units(actual_cls) << kUnitShift,
                                             std::memory_order_relaxed);
    return {Status::kOk, {ref, generation}};
  }
  return {Status::kCorruptedIndex, {}};
}

Status Arena::free_block(BlockRef ref, BlockHeader* hdr, uint32_t expected_state) {
  uint32_t word = expected_state;
  if (!hdr->state.compare_exchange_strong(word,
                                          make_state(state_generation(expected_state), 0, kBlockFree),
                                          std::memory_order_acq_rel)) {
    note_corruption();
    return Status::kDoubleRelease;
  }
  const uint32_t cls = hdr->size_class.load(std::memory_order_relaxed);
  header_->counters.blocks_in_use.fetch_sub(1, std::memory_order_relaxed);
  header_->counters.bytes_in_use.fetch_sub(class_units(cls) << kUnitShift, std::memory_order_relaxed);
  push_free(header_->free_lists[cls].head, ref, false);
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
  if (state_generation(word) != h.generation || kind == kBlockFree) {
    note_corruption();
    return Status::kDoubleRelease;
  }
  if (kind != kBlockReserved && kind != kBlockReceived) {
    note_corruption();
    return Status::kCorruptedState;
  }
  const uint32_t before = hdr->refcount.fetch_sub(1, std::memory_order_acq_rel);
  if (before == 0) {
    hdr->refcount.store(0, std::memory_order_relaxed);
    note_corruption();
    return Status::kDoubleRelease;
  }
  if (before > 1) return Status::kOk;
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

Status Arena::mark_queued(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
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
  if (hdr->refcount.load(std::memory_order_relaxed) != 1) return Status::kInvalidArgument;
  if (!hdr->state.compare_exchange_strong(word, make_state(h.generation, 0, kBlockQueued),
                                          std::memory_order_acq_rel)) {
    return Status::kCorruptedState;
  }
  return Status::kOk;
}

Status Arena::mark_received(BlockHandle h) {
  BlockHeader* hdr = block_header(h.ref);
  if (hdr == nullptr) {
    note_corruption();
    return Status::kCorruptedOffset;
  }
  uint32_t expected = make_state(h.generation, 0, kBlockQueued);
  if (!hdr->state.compare_exchange_strong(expected, make_state(h.generation, holder_, kBlockReceived),
                                          std::memory_order_acq_rel)) {
    note_corruption();
    return Status::kCorruptedState;
  }
  return Status::kOk;
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

Result<BlockRef> Arena::allocate_node() {
  auto popped = pop_free(header_->node_free, true);
  BlockRef ref = 0;
  if (popped.ok()) {
    ref = popped.value;
  } else {
    auto carved = carve(kUnit);
    if (!carved.ok()) return {carved.status, 0};
    auto* n = reinterpret_cast<QueueNode*>(translate(carved.value, kUnit));
    if (n == nullptr) return {Status::kCorruptedOffset, 0};
    n->magic = kNodeMagic;
    ref = offset_to_ref(carved.value);
  }
  header_->counters.nodes_in_use.fetch_add(1, std::memory_order_relaxed);
  return {Status::kOk, ref};
}

void Arena::free_node(BlockRef ref) {
  if (node(ref) == nullptr) return;
  header_->counters.nodes_in_use.fetch_sub(1, std::memory_order_relaxed);
  push_free(header_->node_free, ref, true);
}

Result<Offset> Arena::allocate_cells(uint64_t bytes) {
  auto r = allocate(bytes, PayloadLayout{});
  if (!r.ok()) return {r.status, 0};
  // Long-lived structures are not user data: keep them out of the data-block counters, and
  // owned by the arena rather than by this process (a crash must not free them).
  BlockHeader* hdr = block_header(r.value.ref);
  hdr->flags.store(kBlockFlagArena, std::memory_order_relaxed);
  hdr->state.store(make_state(r.value.generation, 0, kBlockReserved), std::memory_order_release);
  header_->counters.blocks_in_use.fetch_sub(1, std::memory_order_relaxed);
  header_->counters.bytes_in_use.fetch_sub(
      class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift,
      std::memory_order_relaxed);
  header_->counters.nodes_in_use.fetch_add(1, std::memory_order_relaxed);
  return {Status::kOk, ref_to_offset(r.value.ref) + sizeof(BlockHeader)};
}

void Arena::free_cells(Offset off) {
  const BlockRef ref = offset_to_ref(off - sizeof(BlockHeader));
  BlockHeader* hdr = block_header(ref);
  if (hdr == nullptr) return;
  const uint32_t word = hdr->state.load(std::memory_order_acquire);
  if (state_kind(word) != kBlockReserved) return;
  hdr->flags.store(0, std::memory_order_relaxed);
  header_->counters.blocks_in_use.fetch_add(1, std::memory_order_relaxed);
  header_->counters.bytes_in_use.fetch_add(
      class_units(hdr->size_class.load(std::memory_order_relaxed)) << kUnitShift,
      std::memory_order_relaxed);
  header_->counters.nodes_in_use.fetch_sub(1, std::memory_order_relaxed);
  hdr->refcount.store(1, std::memory_order_relaxed);
  free_block(ref, hdr, word);
}

ArenaStats Arena::stats() const {
  const ArenaCounters& c = header_->counters;
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
  s.blocks_in_use = c.blocks_in_use.load(std::memory_order_relaxed);
  s.bytes_in_use = c.bytes_in_use.load(std::memory_order_relaxed);
  s.bytes_copied = c.bytes_copied.load(std::memory_order_relaxed);
  s.corruption_count = c.corruption_count.load(std::memory_order_relaxed);
  s.nodes_in_use = c.nodes_in_use.load(std::memory_order_relaxed);
  s.attached_holders = header_->attached_holders.load(std::memory_order_relaxed);
  s.reclaimed_blocks = header_->reclaimed_blocks.load(std::memory_order_relaxed);
  return s;
}

}  // namespace memchannel
