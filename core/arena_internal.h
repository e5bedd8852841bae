// What the arena's implementation files (arena.cc, arena_segments.cc, recovery.cc, census.cc)
// share and nothing else includes: constants of the header's size and growth, cell-word
// access, and the walk over every carved cell.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>

#include "core/arena.h"

namespace memchannel::arena_internal {
inline constexpr uint64_t kInitialSegmentBytes = 4ull << 20;
inline constexpr uint64_t kHeaderBytes = (sizeof(ArenaHeader) + kUnit - 1) & ~(kUnit - 1);
inline constexpr int kMaxClaimRetries = 16;     // free-list entries that fail validation before giving up
inline constexpr int kMaxCarveRepairs = 4;     // carve-cursor repairs in one carve() before it reports corruption
inline constexpr uint32_t kStealClasses = 16;  // larger classes searched when capacity is exhausted
inline constexpr int kMaxNameCollisions = 8;    // growth-segment names tried before giving up

inline uint64_t round_up_pow2(uint64_t v) { return v <= 1 ? 1 : (1ull << std::bit_width(v - 1)); }

inline bool is_plain_bytes(const PayloadLayout& layout) {
  return layout.itemsize == 1 && layout.ndim == 1 && layout.format == "B";
}

// The 64-bit word of a cell that holds its magic (see block.h, "Carving").
inline uint64_t* cell_word(uint8_t* cell) { return reinterpret_cast<uint64_t*>(cell + kCellWordOffset); }
inline uint64_t load_cell_word(uint8_t* cell) { return __atomic_load_n(cell_word(cell), __ATOMIC_ACQUIRE); }

// A counter stripe may go below zero on its own (wrapping); only the sum is meaningful.
inline void stripe_sub(std::atomic<uint64_t>& counter, uint64_t n) { counter.fetch_sub(n, std::memory_order_relaxed); }


}  // namespace memchannel::arena_internal

namespace memchannel {

using namespace arena_internal;  // NOLINT: walk_cells below uses the helpers

template <typename Visit>
void Arena::walk_cells(Visit&& visit, uint64_t* bad_cells) {
  const uint32_t count = std::min(header_->segment_count.load(std::memory_order_acquire), kMaxSegments);
  const uint64_t carve_at = header_->carve.load(std::memory_order_acquire);
  for (uint32_t seg = 0; seg < count; ++seg) {
    uint8_t* base = segment_base(seg);
    if (base == nullptr) continue;
    const uint64_t size = sizes_[seg].load(std::memory_order_relaxed);
    const uint64_t end = seg == segment_of(carve_at) ? std::min(within_segment(carve_at), size) : size;
    uint64_t at = seg == 0 ? kHeaderBytes : 0;
    while (at + kUnit <= end) {
      uint8_t* cell = base + at;
      const uint64_t word = load_cell_word(cell);
      const uint32_t magic = static_cast<uint32_t>(word >> 32);
      CellInfo info{CellInfo::kBlock, make_offset(seg, at), kUnit, nullptr, nullptr, 0};
      if (is_carving_word(word)) {
        // A carve in progress, or one whose carver died: its size is in the word.
        const uint64_t bytes = carving_units(word) << kUnitShift;
        if (bytes > end - at) { ++*bad_cells; break; }
        info.kind = CellInfo::kCarving;
        info.bytes = bytes;
        info.carving_word = word;
      } else if (magic == kNodeMagic) {
        if (kNodeBytes > end - at) { ++*bad_cells; break; }
        info.kind = CellInfo::kNode;
        info.bytes = kNodeBytes;
        info.node = reinterpret_cast<QueueNode*>(cell);
      } else if (magic == kBlockMagic) {
        auto* hdr = reinterpret_cast<BlockHeader*>(cell);
        const uint32_t cls = hdr->size_class.load(std::memory_order_relaxed);
        if (cls >= kNumClasses) { ++*bad_cells; break; }
        const uint64_t bytes = class_units(cls) << kUnitShift;
        if (bytes > end - at) { ++*bad_cells; break; }
        info.bytes = bytes;
        info.block = hdr;
      } else {
        // A segment's unused tail is zero; anything else before the carve cursor is unknown
        // (carves publish their size before the cursor moves, so it is garbage): stop.
        if (seg == segment_of(carve_at) || magic != 0 || static_cast<uint32_t>(word) != 0) ++*bad_cells;
        break;
      }
      visit(info);
      at += info.bytes;
    }
  }
}

}  // namespace memchannel
