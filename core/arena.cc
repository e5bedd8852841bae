#include "core/arena.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <thread>

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
  // Published last: an opener that sees kArenaReady sees every field above (acquire).
  header->ready.store(kArenaReady, std::memory_order_release);
  std::shared_ptr<Arena> arena(new Arena(std::move(backend), header, capacity));
  arena->sizes_[0].store(seg0, std::memory_order_relaxed);
  arena->bases_[0].store(seg.value, std::memory_order_release);
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
  std::shared_ptr<Arena> arena(new Arena(std::move(backend), header, capacity_untrusted));
  arena->sizes_[0].store(segment0_bytes, std::memory_order_relaxed);
  arena->bases_[0].store(seg.value, std::memory_order_release);
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

uint8_t* Arena::segment_base(uint32_t index) {
  uint8_t* base = bases_[index].load(std::memory_order_acquire);
  if (base != nullptr) return base;
  const uint64_t bytes_untrusted = header_->segment_bytes[index].load(std::memory_order_acquire);
  if (bytes_untrusted == 0 || bytes_untrusted == kSegmentCreating ||
      bytes_untrusted > kMaxSegmentBytes) {
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(map_mutex_);
  base = bases_[index].load(std::memory_order_acquire);
  if (base != nullptr) return base;
  auto mapped = backend_->map_segment(index, bytes_untrusted);
  if (!mapped.ok()) return nullptr;
  sizes_[index].store(bytes_untrusted, std::memory_order_relaxed);
  bases_[index].store(mapped.value, std::memory_order_release);  // pairs with the load above
  return mapped.value;
}

uint8_t* Arena::translate(Offset off, uint64_t len) {
  const uint32_t seg = segment_of(off);
  if (seg >= kMaxSegments) return nullptr;
  uint8_t* base = segment_base(seg);
  if (base == nullptr) return nullptr;
  const uint64_t size = sizes_[seg].load(std::memory_order_relaxed);
  const uint64_t within = within_segment(off);
  if (within > size || len > size - within) return nullptr;
  return base + within;
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

Result<BlockHandle> Arena::allocate(uint64_t payload_bytes, const PayloadLayout& layout,
                                    uint32_t holder) {
  const bool plain = is_plain_bytes(layout);
  if (!plain && (layout.ndim > kMaxNdim || layout.format.empty() ||
                 layout.format.size() > kMaxFormatLen || layout.itemsize == 0)) {
    return {Status::kInvalidArgument, {}};
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
        if (ref == 0) return {Status::kOutOfCapacity, {}};
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
    const uint32_t generation = (state_generation(word) + 1) & 0xffffff;
    if (!hdr->state.compare_exchange_strong(word, make_state(generation, kBlockReserved),
                                            std::memory_order_acq_rel)) {
      note_corruption();
      continue;
    }
    const uint32_t actual_cls = hdr->size_class.load(std::memory_order_relaxed);
    hdr->refcount.store(1, std::memory_order_relaxed);
    hdr->length.store(payload_bytes, std::memory_order_relaxed);
    hdr->meta_bytes.store(static_cast<uint32_t>(meta), std::memory_order_relaxed);
    hdr->holder.store(holder, std::memory_order_relaxed);
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
                                          make_state(state_generation(expected_state), kBlockFree),
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
  if (state_generation(word) != h.generation || (kind != kBlockReserved && kind != kBlockReceived)) {
    return Status::kCorruptedState;
  }
  if (hdr->refcount.load(std::memory_order_relaxed) != 1) return Status::kInvalidArgument;
  if (!hdr->state.compare_exchange_strong(word, make_state(h.generation, kBlockQueued),
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
  uint32_t expected = make_state(h.generation, kBlockQueued);
  if (!hdr->state.compare_exchange_strong(expected, make_state(h.generation, kBlockReceived),
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
  if (state_generation(word) != h.generation) return {Status::kCorruptedState, {}};
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
  auto r = allocate(bytes, PayloadLayout{}, 0);
  if (!r.ok()) return {r.status, 0};
  // Long-lived structures are not user data: keep them out of the data-block counters.
  BlockHeader* hdr = block_header(r.value.ref);
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
  return s;
}

}  // namespace memchannel
