// Offsets, block references and size classes shared by every structure in arena memory.
//
// Arena memory is a set of up to kMaxSegments segments. An arena offset names a byte in it:
//
//     63              32 31                          0
//    +------------------+-----------------------------+
//    |  segment index   |  byte offset in the segment |
//    +------------------+-----------------------------+
//
// A BlockRef is an offset divided by 64 (every block and node is 64-byte aligned), so it fits
// in 32 bits and a tagged link (tag << 32 | ref) fits one 64-bit atomic: that is how the
// lock-free lists defeat ABA. Ref 0 is offset 0 of segment 0, the arena header, so it means
// "none".
#pragma once

#include <bit>
#include <cstdint>

namespace memchannel {

inline constexpr uint32_t kCacheLine = 64;
inline constexpr uint32_t kMaxSegments = 64;
inline constexpr uint32_t kSegmentShift = 32;
inline constexpr uint64_t kMaxSegmentBytes = 1ull << 31;  // keeps in-segment offsets in 31 bits
inline constexpr uint32_t kUnitShift = 6;                 // 64-byte allocation unit
inline constexpr uint64_t kUnit = 1ull << kUnitShift;

using Offset = uint64_t;
using BlockRef = uint32_t;

constexpr uint32_t segment_of(Offset off) { return static_cast<uint32_t>(off >> kSegmentShift); }
constexpr uint64_t within_segment(Offset off) { return off & 0xffffffffull; }
constexpr Offset make_offset(uint32_t segment, uint64_t within) {
  return (static_cast<uint64_t>(segment) << kSegmentShift) | within;
}
constexpr Offset ref_to_offset(BlockRef ref) { return static_cast<Offset>(ref) << kUnitShift; }
constexpr BlockRef offset_to_ref(Offset off) { return static_cast<BlockRef>(off >> kUnitShift); }

// Tagged link: a reference plus a modification counter, swapped as one word.
constexpr uint64_t make_tagged(uint32_t tag, BlockRef ref) {
  return (static_cast<uint64_t>(tag) << 32) | ref;
}
constexpr BlockRef tagged_ref(uint64_t t) { return static_cast<BlockRef>(t & 0xffffffffull); }
constexpr uint32_t tagged_tag(uint64_t t) { return static_cast<uint32_t>(t >> 32); }

// Size classes, in 64-byte units: 1..8 units exactly, then four classes per doubling
// (10, 12, 14, 16, 20, 24, 28, 32, ...), so a block wastes at most 25% of its size.
inline constexpr uint32_t kExactClasses = 8;
inline constexpr uint64_t kMaxBlockBytes = 1ull << 30;  // 1 GiB; larger requests are kTooLarge

constexpr uint64_t class_units(uint32_t cls) {
  if (cls < kExactClasses) return cls + 1;
  const uint32_t group = (cls - kExactClasses) / 4;
  const uint32_t step = (cls - kExactClasses) % 4;
  return (8ull << group) + (step + 1ull) * (2ull << group);
}

constexpr uint32_t class_for_units(uint64_t units) {
  if (units <= kExactClasses) return units == 0 ? 0 : static_cast<uint32_t>(units - 1);
  const uint32_t group = static_cast<uint32_t>(std::bit_width(units - 1)) - 4;
  const uint64_t base = 8ull << group;
  const uint64_t step = 2ull << group;
  const uint64_t steps_up = (units - base + step - 1) / step;  // 1..4
  return kExactClasses + 4 * group + static_cast<uint32_t>(steps_up - 1);
}

inline constexpr uint32_t kNumClasses = class_for_units(kMaxBlockBytes >> kUnitShift) + 1;

static_assert(class_units(class_for_units(9)) == 10);
static_assert(class_units(class_for_units(16)) == 16);
static_assert(class_units(class_for_units(17)) == 20);
static_assert(class_units(class_for_units(33)) == 40);
static_assert(class_units(kNumClasses - 1) == (kMaxBlockBytes >> kUnitShift));

}  // namespace memchannel
