// Arena block allocator: round trips over the size classes, metadata, exclusive hand-out under
// concurrency (including the ABA interleaving the tagged free-list heads exist to defeat),
// growth within capacity, stealing from larger classes, double release and refcounting.
// Runs against every backend in backends.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/arena.h"
#include "core/layout.h"
#include "core/status.h"
#include "tests/cpp/backends.h"

namespace memchannel::testing {
namespace {

constexpr uint64_t kKiB = 1ull << 10;

Result<BlockHandle> allocate_bytes(Arena& arena, uint64_t bytes) {
  return arena.allocate(bytes, PayloadLayout{});
}

bool aligned64(const void* p) { return reinterpret_cast<uintptr_t>(p) % 64 == 0; }

// A byte that depends on where it sits and who wrote it, so overlapping blocks show up.
uint8_t pattern_byte(uint64_t owner, uint64_t index) {
  return static_cast<uint8_t>((owner * 131 + index * 7 + 1) & 0xff);
}

template <typename Factory>
class AllocatorTest : public BackendTest<Factory> {};
TYPED_TEST_SUITE(AllocatorTest, BackendTypes, BackendNames);

// ---- Round trips ---------------------------------------------------------------------------

TYPED_TEST(AllocatorTest, RoundTripAcrossSizeClassBoundaries) {
  auto arena = this->make_arena(128 * kMiB);
  ASSERT_NE(arena, nullptr);
  std::vector<uint64_t> sizes = {0, 1, 2, 63, 64, 65, 127, 128, 129, 1000};
  for (uint64_t boundary : {uint64_t{64}, 4 * kKiB, 64 * kKiB, kMiB, 16 * kMiB}) {
    // Payload on either side of the boundary, and payloads whose block (payload + 64-byte
    // header) exactly fills the boundary class.
    for (uint64_t delta : {uint64_t{1}, uint64_t{63}, uint64_t{64}, uint64_t{65}}) {
      if (delta <= boundary) sizes.push_back(boundary - delta);
    }
    sizes.push_back(boundary);
    sizes.push_back(boundary + 1);
  }
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());

  for (uint64_t size : sizes) {
    SCOPED_TRACE("payload bytes " + std::to_string(size));
    auto h = allocate_bytes(*arena, size);
    ASSERT_EQ(h.status, Status::kOk) << to_string(h.status);
    ASSERT_TRUE(h.value.valid());

    uint64_t length = ~0ull;
    uint8_t* data = arena->payload(h.value, &length);
    ASSERT_NE(data, nullptr);
    EXPECT_EQ(length, size);
    EXPECT_TRUE(aligned64(data));
    if (size > 0) {
      data[0] = 0xa5;
      data[size - 1] = 0x5a;
    }

    auto v = arena->view(h.value);
    ASSERT_EQ(v.status, Status::kOk);
    EXPECT_EQ(v.value.data, data);
    EXPECT_EQ(v.value.length, size);
    EXPECT_EQ(v.value.itemsize, 1u);
    EXPECT_EQ(v.value.ndim, 1u);
    EXPECT_EQ(v.value.shape[0], static_cast<int64_t>(size));
    EXPECT_EQ(v.value.format_view(), "B");

    // The block is big enough and of the class the size maps to (or larger: stolen).
    const BlockHeader* hdr = block_header(*arena, h.value.ref);
    ASSERT_NE(hdr, nullptr);
    const uint32_t cls = hdr->size_class.load();
    EXPECT_GE(cls, class_of_payload(size));
    EXPECT_GE(class_bytes(cls), size + sizeof(BlockHeader));

    const ArenaStats held = arena->stats();
    EXPECT_EQ(held.blocks_in_use, 1u);
    EXPECT_EQ(held.bytes_in_use, class_bytes(cls));

    ASSERT_EQ(arena->release(h.value), Status::kOk);
    const ArenaStats after = arena->stats();
    EXPECT_EQ(after.blocks_in_use, 0u);
    EXPECT_EQ(after.bytes_in_use, 0u);
  }
  EXPECT_EQ(corruption_count(*arena), 0u);
  const ArenaStats s = arena->stats();
  EXPECT_LE(s.mapped_bytes, s.capacity);
  EXPECT_LE(s.carved_bytes, s.capacity);
}

TYPED_TEST(AllocatorTest, ReleasedBlocksAreReusedNotReCarved) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  auto first = allocate_bytes(*arena, 1000);
  ASSERT_EQ(first.status, Status::kOk);
  ASSERT_EQ(arena->release(first.value), Status::kOk);
  const uint64_t carved = arena->stats().carved_bytes;
  for (int i = 0; i < 1000; ++i) {
    auto h = allocate_bytes(*arena, 1000);
    ASSERT_EQ(h.status, Status::kOk);
    EXPECT_EQ(h.value.ref, first.value.ref);       // the one free block of the class, again
    EXPECT_NE(h.value.generation, first.value.generation);  // with a new generation
    ASSERT_EQ(arena->release(h.value), Status::kOk);
  }
  EXPECT_EQ(arena->stats().carved_bytes, carved);
}

TYPED_TEST(AllocatorTest, MetadataRoundTripsThroughView) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);

  struct Case {
    std::string name;
    uint32_t itemsize;
    std::vector<int64_t> shape;
    std::string format;
  };
  std::vector<Case> cases = {
      {"3-d doubles", 8, {2, 3, 4}, "<d"},
      {"2-d int32", 4, {10, 10}, "i"},
      {"scalar", 8, {}, "q"},
      {"empty array", 4, {0, 7}, "f"},
      {"struct format", 12, {5}, "T{<i:a:<d:b:}"},
      {"max ndim", 2, std::vector<int64_t>(kMaxNdim, 1), "h"},
      {"longest format", 1, {100}, std::string(kMaxFormatLen, 'B')},
  };
  cases[5].shape[7] = 3;  // max ndim with a non-trivial dimension: 3 items of 2 bytes

  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    uint64_t items = 1;
    for (int64_t d : c.shape) items *= static_cast<uint64_t>(d);
    const uint64_t bytes = items * c.itemsize;
    PayloadLayout layout;
    layout.itemsize = c.itemsize;
    layout.ndim = static_cast<uint32_t>(c.shape.size());
    layout.shape = c.shape.data();
    layout.format = c.format;

    auto h = arena->allocate(bytes, layout);
    ASSERT_EQ(h.status, Status::kOk) << to_string(h.status);
    auto v = arena->view(h.value);
    ASSERT_EQ(v.status, Status::kOk) << to_string(v.status);
    EXPECT_TRUE(aligned64(v.value.data));
    EXPECT_EQ(v.value.length, bytes);
    EXPECT_EQ(v.value.itemsize, c.itemsize);
    ASSERT_EQ(v.value.ndim, c.shape.size());
    for (size_t i = 0; i < c.shape.size(); ++i) EXPECT_EQ(v.value.shape[i], c.shape[i]) << i;
    EXPECT_EQ(v.value.format_view(), c.format);
    // The payload sits after the metadata, inside the block.
    const auto* hdr = reinterpret_cast<const uint8_t*>(block_header(*arena, h.value.ref));
    EXPECT_GE(v.value.data, hdr + sizeof(BlockHeader) + sizeof(BlockMetaPrefix));
    if (bytes > 0) std::memset(v.value.data, 0xee, bytes);  // does not clobber the metadata
    auto again = arena->view(h.value);
    ASSERT_EQ(again.status, Status::kOk);
    EXPECT_EQ(again.value.format_view(), c.format);
    EXPECT_EQ(arena->release(h.value), Status::kOk);
  }

  // One dimension inferred from the length when no shape is given.
  PayloadLayout ints;
  ints.itemsize = 4;
  ints.ndim = 1;
  ints.format = "<i";
  auto h = arena->allocate(40, ints);
  ASSERT_EQ(h.status, Status::kOk);
  auto v = arena->view(h.value);
  ASSERT_EQ(v.status, Status::kOk);
  EXPECT_EQ(v.value.ndim, 1u);
  EXPECT_EQ(v.value.shape[0], 10);
  EXPECT_EQ(v.value.format_view(), "<i");
  EXPECT_EQ(arena->release(h.value), Status::kOk);

  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(corruption_count(*arena), 0u);
}

// allocate()'s payload_out (the address a sender fills, computed without reading the header
// back) is the address view() derives from the header: carved and reused blocks, plain bytes
// and blocks with metadata.
TYPED_TEST(AllocatorTest, PayloadOutIsTheViewedPayload) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  std::vector<int64_t> shape = {3, 5};
  PayloadLayout doubles;
  doubles.itemsize = 8;
  doubles.ndim = 2;
  doubles.shape = shape.data();
  doubles.format = "<d";
  const PayloadLayout plain{};
  for (int round = 0; round < 2; ++round) {  // round 1 reuses the blocks round 0 released
    for (uint64_t size : {uint64_t{0}, uint64_t{1}, uint64_t{64}, uint64_t{4000}, 3 * 5 * uint64_t{8}}) {
      const bool meta = size == 3 * 5 * 8;
      SCOPED_TRACE("round " + std::to_string(round) + ", payload bytes " + std::to_string(size) +
                   (meta ? " with metadata" : ""));
      uint8_t* out = nullptr;
      auto h = arena->allocate(size, meta ? doubles : plain, Arena::kDefaultCreatorWaitNs, &out);
      ASSERT_EQ(h.status, Status::kOk) << to_string(h.status);
      uint64_t length = ~0ull;
      EXPECT_EQ(out, arena->payload(h.value, &length));
      EXPECT_EQ(length, size);
      if (size > 0) std::memset(out, 0x5a, size);  // inside the block: the view still checks out
      auto v = arena->view(h.value);
      ASSERT_EQ(v.status, Status::kOk) << to_string(v.status);
      if (meta) {
        EXPECT_EQ(v.value.format_view(), "<d");
      }
      EXPECT_EQ(arena->release(h.value), Status::kOk);
    }
  }
  uint8_t* untouched = nullptr;
  auto refused = arena->allocate(arena->max_payload() + 1, plain, Arena::kDefaultCreatorWaitNs, &untouched);
  EXPECT_EQ(refused.status, Status::kTooLarge);
  EXPECT_EQ(untouched, nullptr);  // written on kOk only
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(corruption_count(*arena), 0u);
}

TYPED_TEST(AllocatorTest, InvalidLayoutsAreRejectedBeforeAnythingChanges) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  const ArenaStats before = arena->stats();
  std::vector<int64_t> shape(kMaxNdim + 1, 1);

  PayloadLayout too_many_dims;
  too_many_dims.ndim = kMaxNdim + 1;
  too_many_dims.shape = shape.data();
  too_many_dims.format = "b";
  EXPECT_EQ(arena->allocate(1, too_many_dims).status, Status::kInvalidArgument);

  PayloadLayout empty_format;
  empty_format.itemsize = 2;
  empty_format.format = "";
  EXPECT_EQ(arena->allocate(8, empty_format).status, Status::kInvalidArgument);

  PayloadLayout zero_itemsize;
  zero_itemsize.itemsize = 0;
  zero_itemsize.format = "x";
  EXPECT_EQ(arena->allocate(8, zero_itemsize).status, Status::kInvalidArgument);

  const std::string long_format(kMaxFormatLen + 1, 'B');
  PayloadLayout format_too_long;
  format_too_long.format = long_format;
  EXPECT_EQ(arena->allocate(8, format_too_long).status, Status::kInvalidArgument);

  const ArenaStats after = arena->stats();
  EXPECT_EQ(after.blocks_in_use, before.blocks_in_use);
  EXPECT_EQ(after.carved_bytes, before.carved_bytes);
  EXPECT_EQ(after.corruption_count, 0u);
}

// A shape whose item count times itemsize is not the payload length is a caller error: it must
// be refused by allocate() (kInvalidArgument), not handed out as a block that view() then
// reports as corrupted arena memory.
TYPED_TEST(AllocatorTest, ShapeThatDisagreesWithLengthIsRejected) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  const int64_t shape[2] = {3, 5};
  PayloadLayout layout;
  layout.itemsize = 4;
  layout.ndim = 2;
  layout.shape = shape;
  layout.format = "i";
  auto h = arena->allocate(100, layout);  // 3 * 5 * 4 = 60 bytes, not 100
  EXPECT_EQ(h.status, Status::kInvalidArgument);
  if (h.ok()) {
    auto v = arena->view(h.value);
    EXPECT_EQ(v.status, Status::kOk) << "allocate() accepted the layout, view() rejects it: "
                                     << to_string(v.status);
    arena->release(h.value);
  }
  EXPECT_EQ(corruption_count(*arena), 0u) << "a caller error was counted as arena corruption";
}

// PayloadLayout says shape == nullptr means "one dimension of length/itemsize". With ndim > 1
// there is no such shape: allocate() must refuse it, not copy 8 * ndim bytes out of a single
// int64_t (arena.cc reads past `one_dim` on its stack).
TYPED_TEST(AllocatorTest, MissingShapeWithSeveralDimensionsIsRejected) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  PayloadLayout layout;
  layout.itemsize = 1;
  layout.ndim = 4;
  layout.shape = nullptr;
  layout.format = "b";
  auto h = arena->allocate(64, layout);
  EXPECT_EQ(h.status, Status::kInvalidArgument);
  if (h.ok()) arena->release(h.value);
}

TYPED_TEST(AllocatorTest, NodesRoundTrip) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  std::set<BlockRef> refs;
  std::vector<BlockRef> held;
  for (int i = 0; i < 100; ++i) {
    auto n = arena->allocate_node();
    ASSERT_EQ(n.status, Status::kOk);
    EXPECT_TRUE(refs.insert(n.value).second) << "node handed out twice";
    EXPECT_NE(arena->node(n.value), nullptr);
    EXPECT_TRUE(aligned64(arena->node(n.value)));
    held.push_back(n.value);
  }
  EXPECT_EQ(arena->stats().nodes_in_use, 100u);
  for (BlockRef r : held) arena->free_node(r);
  EXPECT_EQ(arena->stats().nodes_in_use, 0u);
  // Freed nodes are reused.
  const uint64_t carved = arena->stats().carved_bytes;
  for (int i = 0; i < 100; ++i) {
    auto n = arena->allocate_node();
    ASSERT_EQ(n.status, Status::kOk);
    EXPECT_EQ(refs.count(n.value), 1u);
    held[static_cast<size_t>(i)] = n.value;
  }
  EXPECT_EQ(arena->stats().carved_bytes, carved);
  for (BlockRef r : held) arena->free_node(r);
  EXPECT_EQ(corruption_count(*arena), 0u);
}

// ---- Exclusive hand-out under concurrency ---------------------------------------------------

// Threads allocate blocks of mixed sizes and hold them all; then no two held blocks overlap and
// every payload still holds what its owner wrote.
TYPED_TEST(AllocatorTest, ConcurrentAllocationsNeverOverlap) {
  for (int threads : {2, 4, 8}) {
    SCOPED_TRACE(std::to_string(threads) + " threads");
    auto arena = this->make_arena(64 * kMiB);
    ASSERT_NE(arena, nullptr);
    constexpr int kPerThread = 400;
    struct Held {
      BlockHandle h;
      uint64_t bytes;
      uint64_t owner;
    };
    std::vector<std::vector<Held>> held(static_cast<size_t>(threads));
    std::atomic<int> failures{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        std::mt19937_64 rng(static_cast<uint64_t>(t) + 1);
        auto& mine = held[static_cast<size_t>(t)];
        for (int i = 0; i < kPerThread; ++i) {
          const uint64_t bytes = rng() % (6 * kKiB);
          auto h = allocate_bytes(*arena, bytes);
          if (!h.ok()) {
            failures.fetch_add(1);
            continue;
          }
          const uint64_t owner = static_cast<uint64_t>(t) * kPerThread + static_cast<uint64_t>(i);
          uint8_t* data = arena->payload(h.value);
          if (data == nullptr) {
            failures.fetch_add(1);
            continue;
          }
          for (uint64_t k = 0; k < bytes; ++k) data[k] = pattern_byte(owner, k);
          mine.push_back({h.value, bytes, owner});
          // Churn some blocks so the free lists are in play, not only the carve cursor.
          if (rng() % 3 == 0) {
            if (arena->release(mine.back().h) != Status::kOk) failures.fetch_add(1);
            mine.pop_back();
          }
        }
      });
    }
    for (auto& th : pool) th.join();
    EXPECT_EQ(failures.load(), 0);

    // Every held block is distinct and the byte ranges of whole blocks are disjoint.
    std::vector<std::pair<Offset, Offset>> ranges;
    std::set<BlockRef> refs;
    for (const auto& mine : held) {
      for (const Held& b : mine) {
        EXPECT_TRUE(refs.insert(b.h.ref).second) << "block " << b.h.ref << " handed out twice";
        const BlockHeader* hdr = block_header(*arena, b.h.ref);
        ASSERT_NE(hdr, nullptr);
        const Offset begin = ref_to_offset(b.h.ref);
        ranges.emplace_back(begin, begin + class_bytes(hdr->size_class.load()));
        const uint8_t* data = arena->payload(b.h);
        ASSERT_NE(data, nullptr);
        for (uint64_t k = 0; k < b.bytes; ++k) {
          if (data[k] != pattern_byte(b.owner, k)) {
            ADD_FAILURE() << "payload of block " << b.h.ref << " overwritten at byte " << k;
            break;
          }
        }
      }
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      EXPECT_LE(ranges[i - 1].second, ranges[i].first) << "blocks overlap";
    }
    EXPECT_EQ(arena->stats().blocks_in_use, refs.size());

    for (const auto& mine : held) {
      for (const Held& b : mine) EXPECT_EQ(arena->release(b.h), Status::kOk);
    }
    const ArenaStats s = arena->stats();
    EXPECT_EQ(s.blocks_in_use, 0u);
    EXPECT_EQ(s.bytes_in_use, 0u);
    EXPECT_EQ(s.corruption_count, 0u);
    expect_quiescent_arena(*arena, 0);
  }
}

// The ABA interleaving, driven step by step. Thread A is about to pop X: it has read the head
// word (top X) and X's link (Y). Meanwhile others pop X, pop Y and push X back, so the top is
// X again but Y is now held. A's CAS would install Y, a held block, as the new top; an untagged
// Treiber stack accepts it because the top ref matches. The tagged head must refuse it.
TYPED_TEST(AllocatorTest, AbaInterleavingFailsTheStaleCas) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  constexpr uint64_t kBytes = 100;
  const uint32_t cls = class_of_payload(kBytes);
  auto x = allocate_bytes(*arena, kBytes);
  auto y = allocate_bytes(*arena, kBytes);
  auto z = allocate_bytes(*arena, kBytes);
  ASSERT_TRUE(x.ok() && y.ok() && z.ok());
  // Free list of the class: X -> Y -> Z.
  ASSERT_EQ(arena->release(z.value), Status::kOk);
  ASSERT_EQ(arena->release(y.value), Status::kOk);
  ASSERT_EQ(arena->release(x.value), Status::kOk);

  std::atomic<uint64_t>& head = arena_header(*arena)->free_lists[cls].head;
  // Thread A's reads.
  const uint64_t a_seen = head.load();
  ASSERT_EQ(tagged_ref(a_seen), x.value.ref);
  const BlockRef a_next = block_header(*arena, x.value.ref)->next_free.load();
  ASSERT_EQ(a_next, y.value.ref);

  // The others: pop X, pop Y, push X.
  auto x2 = allocate_bytes(*arena, kBytes);
  auto y2 = allocate_bytes(*arena, kBytes);
  ASSERT_TRUE(x2.ok() && y2.ok());
  ASSERT_EQ(x2.value.ref, x.value.ref);
  ASSERT_EQ(y2.value.ref, y.value.ref);
  ASSERT_EQ(arena->release(x2.value), Status::kOk);
  const uint64_t now = head.load();
  ASSERT_EQ(tagged_ref(now), x.value.ref) << "not the ABA situation: the top differs";

  // Thread A resumes: its CAS must fail although the top ref is the same.
  uint64_t expected = a_seen;
  EXPECT_FALSE(head.compare_exchange_strong(expected, make_tagged(tagged_tag(a_seen) + 1, a_next)))
      << "the tag did not change across pop, pop, push: an ABA pop would hand out Y twice";
  EXPECT_EQ(head.load(), now);

  // The list is intact: the next allocation gets X again, never the held Y.
  auto x3 = allocate_bytes(*arena, kBytes);
  ASSERT_TRUE(x3.ok());
  EXPECT_EQ(x3.value.ref, x.value.ref);
  EXPECT_NE(x3.value.ref, y2.value.ref);
  auto w = allocate_bytes(*arena, kBytes);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w.value.ref, z.value.ref);  // Z, the block under Y, is next
  EXPECT_EQ(arena->view(y2.value).status, Status::kOk);  // Y still exclusively held
  EXPECT_EQ(arena->stats().blocks_in_use, 3u);
  for (auto h : {x3.value, y2.value, w.value}) EXPECT_EQ(arena->release(h), Status::kOk);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(corruption_count(*arena), 0u);
}

// The same interleaving on the queue-node free list.
TYPED_TEST(AllocatorTest, AbaInterleavingFailsTheStaleCasOnNodes) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  auto x = arena->allocate_node();
  auto y = arena->allocate_node();
  auto z = arena->allocate_node();
  ASSERT_TRUE(x.ok() && y.ok() && z.ok());
  arena->free_node(z.value);
  arena->free_node(y.value);
  arena->free_node(x.value);

  std::atomic<uint64_t>& head = arena_header(*arena)->node_free;
  const uint64_t a_seen = head.load();
  ASSERT_EQ(tagged_ref(a_seen), x.value);
  const BlockRef a_next = queue_node(*arena, x.value)->free_next.load();
  ASSERT_EQ(a_next, y.value);

  auto x2 = arena->allocate_node();
  auto y2 = arena->allocate_node();
  ASSERT_TRUE(x2.ok() && y2.ok());
  ASSERT_EQ(x2.value, x.value);
  ASSERT_EQ(y2.value, y.value);
  arena->free_node(x2.value);
  ASSERT_EQ(tagged_ref(head.load()), x.value);

  uint64_t expected = a_seen;
  EXPECT_FALSE(head.compare_exchange_strong(expected, make_tagged(tagged_tag(a_seen) + 1, a_next)));
  auto x3 = arena->allocate_node();
  ASSERT_TRUE(x3.ok());
  EXPECT_EQ(x3.value, x.value);
  auto w = arena->allocate_node();
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w.value, z.value);
  for (BlockRef r : {x3.value, y2.value, w.value}) arena->free_node(r);
  EXPECT_EQ(arena->stats().nodes_in_use, 0u);
}

// The ABA interleaving by brute force: many threads hammer allocate/release of one class (and of
// queue nodes) with tiny pools, so the list tops recycle constantly. An ownership table indexed
// by block ref records the holder; a block handed to two threads at once is caught at once.
TYPED_TEST(AllocatorTest, HammeringOneClassNeverHandsABlockToTwoHolders) {
  // One segment only: every ref is below segment0_bytes / 64, which sizes the ownership table.
  constexpr uint64_t kCapacity = 4 * kMiB;
  auto arena = this->make_arena(kCapacity);
  ASSERT_NE(arena, nullptr);
  constexpr int kThreads = 8;
  constexpr int kOps = 200000;
  constexpr uint64_t kBytes = 48;
  std::vector<std::atomic<uint32_t>> block_owner(kCapacity / kUnit);
  std::vector<std::atomic<uint32_t>> node_owner(kCapacity / kUnit);
  std::atomic<int> double_handouts{0};
  std::atomic<int> errors{0};
  std::atomic<int> start{0};

  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t) {
    pool.emplace_back([&, t] {
      const uint32_t me = static_cast<uint32_t>(t) + 1;
      std::mt19937 rng(me);
      std::vector<BlockHandle> blocks;
      std::vector<BlockRef> nodes;
      start.fetch_add(1);
      while (start.load() < kThreads) std::this_thread::yield();
      for (int op = 0; op < kOps; ++op) {
        const uint32_t r = static_cast<uint32_t>(rng());
        if ((r & 1) == 0) {
          if (blocks.size() < 3 && (blocks.empty() || (r & 2) != 0)) {
            auto h = allocate_bytes(*arena, kBytes);
            if (!h.ok() || h.value.ref >= block_owner.size()) {
              errors.fetch_add(1);
              continue;
            }
            if (block_owner[h.value.ref].exchange(me) != 0) double_handouts.fetch_add(1);
            uint8_t* data = arena->payload(h.value);
            if (data == nullptr) {
              errors.fetch_add(1);
              continue;
            }
            std::memset(data, static_cast<int>(me), kBytes);
            blocks.push_back(h.value);
          } else {
            const BlockHandle h = blocks.back();
            blocks.pop_back();
            const uint8_t* data = arena->payload(h);
            if (data == nullptr || data[0] != me || data[kBytes - 1] != me) double_handouts.fetch_add(1);
            if (block_owner[h.ref].exchange(0) != me) double_handouts.fetch_add(1);
            if (arena->release(h) != Status::kOk) errors.fetch_add(1);
          }
        } else {
          if (nodes.size() < 3 && (nodes.empty() || (r & 2) != 0)) {
            auto n = arena->allocate_node();
            if (!n.ok() || n.value >= node_owner.size()) {
              errors.fetch_add(1);
              continue;
            }
            if (node_owner[n.value].exchange(me) != 0) double_handouts.fetch_add(1);
            nodes.push_back(n.value);
          } else {
            const BlockRef n = nodes.back();
            nodes.pop_back();
            if (node_owner[n].exchange(0) != me) double_handouts.fetch_add(1);
            arena->free_node(n);
          }
        }
      }
      for (const BlockHandle& h : blocks) {
        block_owner[h.ref].store(0);
        if (arena->release(h) != Status::kOk) errors.fetch_add(1);
      }
      for (BlockRef n : nodes) {
        node_owner[n].store(0);
        arena->free_node(n);
      }
    });
  }
  for (auto& th : pool) th.join();
  EXPECT_EQ(double_handouts.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  const ArenaStats s = arena->stats();
  EXPECT_EQ(s.blocks_in_use, 0u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.nodes_in_use, 0u);
  EXPECT_EQ(s.corruption_count, 0u);
  expect_quiescent_arena(*arena, 0);
  // At most a handful of blocks per thread were ever needed: the lists were recycled, not
  // bypassed by carving.
  EXPECT_LE(s.carved_bytes, 4 * kCapacity / 64);
}

// ---- Capacity, growth, stealing -------------------------------------------------------------

TYPED_TEST(AllocatorTest, GrowthAddsSegmentsUpToCapacity) {
  constexpr uint64_t kCapacity = 32 * kMiB;
  auto arena = this->make_arena(kCapacity);
  ASSERT_NE(arena, nullptr);
  EXPECT_EQ(arena->stats().segments, 1u);
  const uint64_t payload = kMiB - sizeof(BlockHeader);  // a block of exactly 1 MiB
  std::vector<BlockHandle> held;
  Status last = Status::kOk;
  for (int i = 0; i < 64; ++i) {
    auto h = allocate_bytes(*arena, payload);
    if (!h.ok()) {
      last = h.status;
      break;
    }
    uint8_t* data = arena->payload(h.value);
    ASSERT_NE(data, nullptr);
    data[0] = 1;
    data[payload - 1] = 2;
    held.push_back(h.value);
  }
  EXPECT_EQ(last, Status::kOutOfCapacity);
  const ArenaStats full = arena->stats();
  EXPECT_GT(full.segments, 1u);
  EXPECT_LE(full.mapped_bytes, kCapacity);
  EXPECT_LE(full.carved_bytes, kCapacity);
  EXPECT_EQ(full.blocks_in_use, held.size());
  EXPECT_EQ(full.bytes_in_use, held.size() * kMiB);
  // Whole segments are never wasted: at least three quarters of the capacity became blocks.
  EXPECT_GE(held.size() * kMiB, kCapacity * 3 / 4);
  // Still full on a retry, for smaller requests that cannot steal a 1 MiB block either.
  EXPECT_EQ(allocate_bytes(*arena, payload).status, Status::kOutOfCapacity);

  // Capacity comes back with a release.
  ASSERT_EQ(arena->release(held.back()), Status::kOk);
  held.pop_back();
  auto again = allocate_bytes(*arena, payload);
  ASSERT_EQ(again.status, Status::kOk);
  held.push_back(again.value);
  EXPECT_EQ(arena->stats().segments, full.segments);

  for (const BlockHandle& h : held) EXPECT_EQ(arena->release(h), Status::kOk);
  const ArenaStats s = arena->stats();
  EXPECT_EQ(s.blocks_in_use, 0u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.corruption_count, 0u);
}

TYPED_TEST(AllocatorTest, TooLargeBeyondMaxPayload) {
  for (uint64_t capacity : {64 * kKiB, 4 * kMiB, 5 * kMiB, 64 * kMiB}) {
    SCOPED_TRACE("capacity " + std::to_string(capacity));
    auto arena = this->make_arena(capacity);
    ASSERT_NE(arena, nullptr);
    const uint64_t max = arena->max_payload();
    ASSERT_GT(max, 0u);
    EXPECT_LE(max, capacity);
    EXPECT_EQ(allocate_bytes(*arena, max + 1).status, Status::kTooLarge);
    EXPECT_EQ(allocate_bytes(*arena, kMaxBlockBytes + 1).status, Status::kTooLarge);
    EXPECT_EQ(allocate_bytes(*arena, ~0ull).status, Status::kTooLarge);
    // The largest payload fits a fresh arena.
    auto h = allocate_bytes(*arena, max);
    ASSERT_EQ(h.status, Status::kOk) << to_string(h.status);
    uint8_t* data = arena->payload(h.value);
    ASSERT_NE(data, nullptr);
    data[max - 1] = 7;
    EXPECT_EQ(arena->release(h.value), Status::kOk);
    EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  }
}

// With capacity spent, a request takes a free block of a larger class rather than failing.
TYPED_TEST(AllocatorTest, StealsALargerClassWhenCapacityIsSpent) {
  constexpr uint64_t kCapacity = 64 * kKiB;  // one segment, no growth
  auto arena = this->make_arena(kCapacity);
  ASSERT_NE(arena, nullptr);
  constexpr uint64_t kBig = 320;   // 6 units: class 5
  constexpr uint64_t kSmall = 64;  // 2 units: class 1
  ASSERT_LT(class_of_payload(kSmall), class_of_payload(kBig));

  std::vector<BlockHandle> big;
  std::vector<BlockHandle> tiny;
  for (;;) {
    auto h = allocate_bytes(*arena, kBig);
    if (!h.ok()) {
      ASSERT_EQ(h.status, Status::kOutOfCapacity);
      break;
    }
    big.push_back(h.value);
  }
  for (;;) {  // the remainder, in the smallest blocks, so nothing is left to carve
    auto h = allocate_bytes(*arena, 0);
    if (!h.ok()) {
      ASSERT_EQ(h.status, Status::kOutOfCapacity);
      break;
    }
    tiny.push_back(h.value);
  }
  ASSERT_FALSE(big.empty());
  EXPECT_EQ(allocate_bytes(*arena, kSmall).status, Status::kOutOfCapacity);

  for (const BlockHandle& h : big) ASSERT_EQ(arena->release(h), Status::kOk);
  const uint64_t tiny_bytes = tiny.size() * class_bytes(class_of_payload(0));
  ASSERT_EQ(arena->stats().bytes_in_use, tiny_bytes);

  // Every small request is now served from the big blocks.
  std::set<BlockRef> big_refs;
  for (const BlockHandle& h : big) big_refs.insert(h.ref);
  std::vector<BlockHandle> small;
  for (size_t i = 0; i < big.size(); ++i) {
    auto h = allocate_bytes(*arena, kSmall);
    ASSERT_EQ(h.status, Status::kOk) << "request " << i << ": " << to_string(h.status);
    EXPECT_EQ(big_refs.count(h.value.ref), 1u);
    EXPECT_EQ(block_header(*arena, h.value.ref)->size_class.load(), class_of_payload(kBig));
    auto v = arena->view(h.value);
    ASSERT_EQ(v.status, Status::kOk);
    EXPECT_EQ(v.value.length, kSmall);
    small.push_back(h.value);
  }
  // Accounted at the size of the block actually handed out.
  EXPECT_EQ(arena->stats().bytes_in_use, tiny_bytes + small.size() * class_bytes(class_of_payload(kBig)));
  EXPECT_EQ(allocate_bytes(*arena, kSmall).status, Status::kOutOfCapacity);

  // Released, a stolen block returns to its own class and serves that class again.
  for (const BlockHandle& h : small) ASSERT_EQ(arena->release(h), Status::kOk);
  for (size_t i = 0; i < big.size(); ++i) {
    auto h = allocate_bytes(*arena, kBig);
    ASSERT_EQ(h.status, Status::kOk);
    big[i] = h.value;
  }
  for (const BlockHandle& h : big) ASSERT_EQ(arena->release(h), Status::kOk);
  for (const BlockHandle& h : tiny) ASSERT_EQ(arena->release(h), Status::kOk);
  const ArenaStats s = arena->stats();
  EXPECT_EQ(s.blocks_in_use, 0u);
  EXPECT_EQ(s.bytes_in_use, 0u);
  EXPECT_EQ(s.corruption_count, 0u);
}

// ---- Release and refcounts ------------------------------------------------------------------

TYPED_TEST(AllocatorTest, DoubleReleaseIsReportedAndCounted) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  auto h = allocate_bytes(*arena, 500);
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(arena->release(h.value), Status::kOk);
  EXPECT_EQ(arena->release(h.value), Status::kDoubleRelease);
  EXPECT_EQ(corruption_count(*arena), 1u);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);  // not decremented twice

  // The block is free exactly once: two allocations get two different blocks.
  auto a = allocate_bytes(*arena, 500);
  auto b = allocate_bytes(*arena, 500);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a.value.ref, b.value.ref);
  EXPECT_EQ(a.value.ref, h.value.ref);

  // A stale handle to a recycled block: the new holder is unaffected.
  EXPECT_EQ(arena->release(h.value), Status::kDoubleRelease);
  EXPECT_EQ(corruption_count(*arena), 2u);
  EXPECT_EQ(arena->view(a.value).status, Status::kOk);
  EXPECT_EQ(arena->stats().blocks_in_use, 2u);
  EXPECT_EQ(arena->release(a.value), Status::kOk);
  EXPECT_EQ(arena->release(b.value), Status::kOk);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(arena->stats().bytes_in_use, 0u);
}

TYPED_TEST(AllocatorTest, RetainAndReleaseCountHolders) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  auto h = allocate_bytes(*arena, 200);
  ASSERT_TRUE(h.ok());
  const BlockHeader* hdr = block_header(*arena, h.value.ref);
  EXPECT_EQ(hdr->refcount.load(), 1u);
  ASSERT_EQ(arena->retain(h.value), Status::kOk);
  ASSERT_EQ(arena->retain(h.value), Status::kOk);
  EXPECT_EQ(hdr->refcount.load(), 3u);

  EXPECT_EQ(arena->release(h.value), Status::kOk);
  EXPECT_EQ(arena->release(h.value), Status::kOk);
  EXPECT_EQ(arena->stats().blocks_in_use, 1u);  // one holder left
  EXPECT_EQ(arena->view(h.value).status, Status::kOk);
  EXPECT_EQ(hdr->refcount.load(), 1u);

  EXPECT_EQ(arena->release(h.value), Status::kOk);  // the last holder frees it
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(arena->release(h.value), Status::kDoubleRelease);
  EXPECT_EQ(arena->retain(h.value), Status::kCorruptedState);  // cannot revive a free block

  // Concurrent holders: each thread retains once, the owner's release does not free it, the
  // last of the threads' releases does.
  const uint64_t corruption_before = corruption_count(*arena);
  auto shared = allocate_bytes(*arena, 200);
  ASSERT_TRUE(shared.ok());
  constexpr int kHolders = 8;
  for (int i = 0; i < kHolders; ++i) ASSERT_EQ(arena->retain(shared.value), Status::kOk);
  ASSERT_EQ(arena->release(shared.value), Status::kOk);
  std::vector<std::thread> pool;
  std::atomic<int> bad{0};
  for (int i = 0; i < kHolders; ++i) {
    pool.emplace_back([&] {
      for (int k = 0; k < 1000; ++k) {
        if (arena->retain(shared.value) != Status::kOk) bad.fetch_add(1);
        if (arena->release(shared.value) != Status::kOk) bad.fetch_add(1);
      }
      if (arena->release(shared.value) != Status::kOk) bad.fetch_add(1);
    });
  }
  for (auto& th : pool) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(corruption_count(*arena), corruption_before);
}

// A handle whose block was released is stale: view()/payload() must not describe the freed
// block (retain() already refuses it). Today view() only compares generations, and a release
// keeps the generation, so the stale handle still yields a pointer into a free block until the
// block is reallocated.
TYPED_TEST(AllocatorTest, ViewOfReleasedHandleIsRefused) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  auto h = allocate_bytes(*arena, 200);
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(arena->release(h.value), Status::kOk);
  EXPECT_NE(arena->view(h.value).status, Status::kOk);
  EXPECT_EQ(arena->payload(h.value), nullptr);
}

// ---- Nodes from blocks, the send protocol, node states ------------------------------------------

// With the capacity carved into data blocks and no free node, allocate_node cuts a free data block
// (the smallest free one) into nodes: one handed out, the rest on the node free list. Everything
// stays accounted for, and the nodes serve queues like carved ones.
TYPED_TEST(AllocatorTest, NodesAreCutFromAFreeBlockOnceCapacityIsCarved) {
  auto arena = this->make_arena(64 * kKiB);
  ASSERT_NE(arena, nullptr);
  std::vector<BlockHandle> large, tiny;
  for (;;) {
    auto h = allocate_bytes(*arena, 1000);
    if (!h.ok()) break;
    large.push_back(h.value);
  }
  for (;;) {
    auto h = allocate_bytes(*arena, 0);
    if (!h.ok()) break;
    tiny.push_back(h.value);
  }
  ASSERT_GE(large.size(), 2u);
  const BlockRef cut = large.back().ref;
  ASSERT_EQ(arena->release(large.back()), Status::kOk);
  large.pop_back();
  const uint64_t units = class_units(class_of_payload(1000));
  const uint64_t carved = arena->stats().carved_bytes;

  auto first = arena->allocate_node();
  ASSERT_EQ(first.status, Status::kOk);
  EXPECT_EQ(first.value, cut) << "the block's first cell is the node handed out";
  EXPECT_EQ(arena->stats().carved_bytes, carved);
  EXPECT_EQ(arena->stats().nodes_in_use, 1u);
  std::set<BlockRef> nodes{first.value};
  ASSERT_EQ(units % kNodeUnits, 0u) << "a class cut into whole node cells";
  for (uint64_t i = 1; i < units / kNodeUnits; ++i) {
    auto n = arena->allocate_node();
    ASSERT_EQ(n.status, Status::kOk) << i;
    EXPECT_TRUE(n.value > cut && n.value < cut + units) << "a node from the same block";
    EXPECT_EQ((n.value - cut) % kNodeUnits, 0u) << "on the block's node-cell grid";
    EXPECT_TRUE(nodes.insert(n.value).second) << "node handed out twice";
  }
  EXPECT_EQ(arena->allocate_node().status, Status::kOutOfCapacity) << "no free block is left to cut";
  EXPECT_EQ(arena->census().nodes, units / kNodeUnits);
  for (BlockRef r : nodes) arena->free_node(r);
  for (const BlockHandle& h : large) ASSERT_EQ(arena->release(h), Status::kOk);
  for (const BlockHandle& h : tiny) ASSERT_EQ(arena->release(h), Status::kOk);
  EXPECT_EQ(arena->stats().nodes_in_use, 0u);
  EXPECT_EQ(corruption_count(*arena), 0u);
  expect_quiescent_arena(*arena, 0);
}

// begin_send moves a block its holder holds alone to kSending at the next generation; abort_send
// restores it exactly; finish_send queues it. Shared blocks, stale handles and arena cells are
// refused, and nothing changes.
TYPED_TEST(AllocatorTest, SendProtocolTransitions) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  auto h = allocate_bytes(*arena, 100);
  ASSERT_TRUE(h.ok());
  BlockHeader* hdr = block_header(*arena, h.value.ref);
  const uint32_t reserved = hdr->state.load();
  uint32_t previous = 0;
  ASSERT_EQ(arena->begin_send(h.value, &previous), Status::kOk);
  EXPECT_EQ(previous, reserved);
  const BlockHandle message{h.value.ref, Arena::sending_generation(h.value)};
  EXPECT_EQ(state_kind(hdr->state.load()), kBlockSending);
  EXPECT_EQ(state_generation(hdr->state.load()), message.generation);
  EXPECT_EQ(arena->release(h.value), Status::kCorruptedState) << "a message being sent is not releasable";
  EXPECT_EQ(arena->abort_send(message, previous), Status::kOk);
  EXPECT_EQ(hdr->state.load(), reserved);

  ASSERT_EQ(arena->retain(h.value), Status::kOk);
  EXPECT_EQ(arena->begin_send(h.value, &previous), Status::kInvalidArgument) << "two holders";
  EXPECT_EQ(hdr->state.load(), reserved);
  ASSERT_EQ(arena->release(h.value), Status::kOk);

  const uint64_t before = corruption_count(*arena);
  EXPECT_EQ(arena->begin_send({h.value.ref, h.value.generation + 3}, &previous), Status::kCorruptedState);
  EXPECT_GT(corruption_count(*arena), before);

  ASSERT_EQ(arena->begin_send(h.value, &previous), Status::kOk);
  arena->finish_send(message);
  EXPECT_EQ(state_kind(hdr->state.load()), kBlockQueued);
  EXPECT_EQ(arena->mark_received(h.value), Status::kCorruptedState) << "the old generation is not it";
  ASSERT_EQ(arena->mark_received(message), Status::kOk);
  EXPECT_EQ(arena->mark_received(message), Status::kCorruptedState) << "received once";
  EXPECT_EQ(arena->release(message), Status::kOk);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
}

// A node is freed once: the second free is refused and counted, and the node free list holds it
// once (the next two allocations get two different nodes).
TYPED_TEST(AllocatorTest, NodeDoubleFreeIsRefusedAndCounted) {
  auto arena = this->make_arena(16 * kMiB);
  ASSERT_NE(arena, nullptr);
  auto n = arena->allocate_node();
  ASSERT_TRUE(n.ok());
  const uint64_t held = queue_node(*arena, n.value)->state.load();
  EXPECT_EQ(node_kind(held), kNodeHeld);
  EXPECT_EQ(node_holder(held), arena->holder());
  arena->free_node(n.value);
  EXPECT_EQ(node_kind(queue_node(*arena, n.value)->state.load()), kNodeFree);
  const uint64_t before = corruption_count(*arena);
  arena->free_node(n.value);
  EXPECT_FALSE(arena->free_node_from(n.value, held)) << "a stale state word";
  EXPECT_EQ(corruption_count(*arena), before + 2);
  EXPECT_EQ(arena->stats().nodes_in_use, 0u);
  auto a = arena->allocate_node();
  auto b = arena->allocate_node();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a.value, b.value);
  EXPECT_NE(node_generation(queue_node(*arena, a.value)->state.load()), node_generation(held))
      << "a new incarnation";
  arena->free_node(a.value);
  arena->free_node(b.value);
  expect_quiescent_arena(*arena, 0);
}

}  // namespace
}  // namespace memchannel::testing
