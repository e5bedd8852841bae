// Backend factories for the core's conformance tests.
//
// Every core test suite is a TYPED_TEST_SUITE over `BackendTypes`, so the same tests run
// against every MemoryBackend (one conformance suite for every implementation of the
// concept). To run them against another backend, add its factory type to
// `BackendTypes` below; a factory is any type with
//
//     static std::unique_ptr<memchannel::MemoryBackend> make();   // a fresh, empty backend
//     static const char* name();                                  // test-name suffix
//
// Helpers here also locate shared structures (arena header, block headers, queue nodes,
// channel headers) in arena memory, so corruption tests can forge fields through the same
// translate() API a peer's garbage would travel through.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>

#include "core/arena.h"
#include "core/backend.h"
#include "core/block.h"
#include "core/channel.h"
#include "core/futex.h"
#include "core/heap_backend.h"
#include "core/invariants.h"
#include "core/layout.h"
#include "core/status.h"
#include "shm/names.h"
#include "shm/backend/shm_backend.h"

namespace memchannel {

// GoogleTest prints a Status by name ("kFull (full)") instead of as raw bytes.
inline void PrintTo(Status s, std::ostream* os) {
  *os << static_cast<uint32_t>(s) << " (" << to_string(s) << ")";
}

}  // namespace memchannel

namespace memchannel::testing {

// In-process memory: threads of this process share the arena.
struct HeapFactory {
  static std::unique_ptr<MemoryBackend> make() { return std::make_unique<HeapBackend>(); }
  static const char* name() { return "Heap"; }
};

// Named shared-memory segments; each arena gets a random test prefix, and the last detach
// (the Arena's destructor) removes its segments.
struct ShmFactory {
  static std::unique_ptr<MemoryBackend> make() {
    static const std::string prefix = shm::random_test_prefix();
    return shm::ShmBackend::for_new_arena(prefix);
  }
  static const char* name() { return "Shm"; }
};

// The backends every core suite runs against. Adding a backend is one entry here.
using BackendTypes = ::testing::Types<HeapFactory, ShmFactory>;

// Names typed tests after their backend ("ArenaTest/Heap.RoundTrip") instead of "/0".
struct BackendNames {
  template <typename Factory>
  static std::string GetName(int) { return Factory::name(); }
};

inline constexpr uint64_t kMiB = 1ull << 20;

// A fixture that hands out arenas (and channels) over the backend `Factory` makes.
template <typename Factory>
class BackendTest : public ::testing::Test {
 public:
  // A fresh arena of `capacity` bytes; fails the test (and returns nullptr) if it cannot.
  std::shared_ptr<Arena> make_arena(uint64_t capacity = 64 * kMiB) {
    auto created = Arena::create(Factory::make(), capacity, next_arena_id_++);
    EXPECT_EQ(created.status, Status::kOk) << to_string(created.status);
    return created.value;
  }

  std::shared_ptr<Channel> make_channel(const std::shared_ptr<Arena>& arena, uint64_t maxsize = 0,
                                        uint64_t maxbytes = 0) {
    auto created = Channel::create(arena, maxsize, maxbytes, next_channel_id_++);
    EXPECT_EQ(created.status, Status::kOk) << to_string(created.status);
    return created.value;
  }

 private:
  uint64_t next_arena_id_ = 1;
  uint64_t next_channel_id_ = 1;
};

// ---- Locating structures in arena memory (tests only: they trust what they read). ----

inline ArenaHeader* arena_header(Arena& arena) {
  auto* header = arena.translate_as<ArenaHeader>(0);
  if (header == nullptr) std::abort();  // segment 0 is always mapped in a live arena
  return header;
}

inline BlockHeader* block_header(Arena& arena, BlockRef ref) {
  return arena.translate_as<BlockHeader>(ref_to_offset(ref));
}

inline QueueNode* queue_node(Arena& arena, BlockRef ref) {
  return arena.translate_as<QueueNode>(ref_to_offset(ref));
}

inline ChannelHeader* channel_header(Channel& channel) {
  return channel.arena()->translate_as<ChannelHeader>(channel.offset());
}

// The size class a payload of `payload_bytes` plain bytes lands in.
constexpr uint32_t class_of_payload(uint64_t payload_bytes) {
  return class_for_units((sizeof(BlockHeader) + payload_bytes + kUnit - 1) >> kUnitShift);
}

constexpr uint64_t class_bytes(uint32_t cls) { return class_units(cls) << kUnitShift; }

// A block reference one past the end of segment 0: inside the address space of the arena
// format, outside anything this process mapped.
inline BlockRef ref_past_segment0(Arena& arena) {
  return offset_to_ref(arena_header(arena)->segment_bytes[0].load() + kUnit * 16);
}

inline uint64_t corruption_count(const Arena& arena) { return arena.counters().corruption_count; }

// With no operation in flight: every carved cell is a known block or node, every free block is
// on exactly one free list (none lost, none listed twice), `held` data blocks are not free, and
// `channels` blocks hold channel headers; the same for queue nodes; and the full invariant
// checker (core/invariants.h: queues, counts, holders, counters) finds nothing.
inline void expect_quiescent_arena(Arena& arena, uint64_t held, uint64_t channels = 0) {
  const ArenaCensus c = arena.census();
  EXPECT_TRUE(c.free_lists_consistent);
  EXPECT_EQ(c.bad_cells, 0u);
  EXPECT_EQ(c.carving_cells, 0u) << "cells left half-carved";
  EXPECT_EQ(c.free_blocks, c.free_listed) << "free blocks missing from the free lists";
  EXPECT_EQ(c.reserved + c.sending + c.queued + c.received, held);
  EXPECT_EQ(c.arena_cells, channels);
  EXPECT_TRUE(c.node_list_consistent);
  EXPECT_EQ(c.nodes_free, c.nodes_free_listed) << "free queue nodes missing from the node free list";
  const InvariantReport r = check_invariants(arena);
  EXPECT_TRUE(r.ok()) << r.describe();
}

// Non-blocking, and blocking without deadline, wait specifications.
inline WaitSpec no_wait() { return WaitSpec::nonblocking(); }
inline WaitSpec forever(int64_t spin_ns = 20000) {
  WaitSpec w;
  w.spin_ns = spin_ns;
  return w;
}

// A deadline `seconds` from now, woken every 50 ms as the bindings' waits are (to check
// liveness and signals), and the bindings' loop over such slices.
inline WaitSpec within(double seconds) {
  WaitSpec w;
  w.deadline_ns = monotonic_ns() + static_cast<int64_t>(seconds * 1e9);
  w.slice_ns = 50'000'000;
  return w;
}
template <typename Op>
Status until_done(Op&& op, double seconds = 10) {
  const WaitSpec w = within(seconds);
  for (;;) {
    const Status s = op(w);
    if (s != Status::kInterrupted) return s;
  }
}

}  // namespace memchannel::testing

