// The one walk over a channel's descriptor queue, from its dummy along the links, that every
// reader of a whole queue uses (Channel's counts and repair, crash recovery's snapshot).
//
// Trust: the links and states are in shared memory. The walk follows a link only to a cell
// that is a node (magic, in bounds), of this channel, in a state `accept` allows, numbered one
// past the node it leaves (seq), not seen before, within kMaxQueueSteps; anything else stops it as `broken`. It reads a moving queue:
// callers that need a still one compare the head before and after.
#pragma once

#include <cstdint>
#include <unordered_set>

#include "core/arena.h"

namespace memchannel {

// A corrupted queue can hold a cycle; no honest operation needs anywhere near this many steps.
inline constexpr uint64_t kMaxQueueSteps = 1ull << 22;

struct QueueWalk {
  BlockRef last_ref = 0;      // the last node accepted (the dummy if none was)
  QueueNode* last = nullptr;
  uint64_t link = 0;          // the link read out of `last`: 0-ref at the end, else where it stopped
  bool broken = false;        // stopped at a link that leaves the queue (not at its end)
};

// Walks the nodes after `first` (the dummy, ref `first_ref`) of channel `tag`. For each node
// `accept(state, right_after_dummy)` decides whether it belongs there; `visit(ref, node, state)`
// sees each accepted node and may end the walk early by returning false (not broken).
template <typename Accept, typename Visit>
QueueWalk walk_queue(Arena& arena, QueueNode* first, BlockRef first_ref, uint32_t tag, Accept&& accept,
                     Visit&& visit) {
  QueueWalk w;
  w.last = first;
  w.last_ref = first_ref;
  w.link = first->next.load(std::memory_order_acquire);
  std::unordered_set<BlockRef> seen{first_ref};
  for (uint64_t steps = 0;; ++steps) {
    const BlockRef ref = tagged_ref(w.link);
    if (ref == 0) return w;
    QueueNode* n = arena.find_node(ref);
    const uint64_t s = n != nullptr ? n->state.load(std::memory_order_acquire) : 0;
    // The expected successor: of this channel, in an allowed state, numbered one past `last`.
    if (n == nullptr || steps >= kMaxQueueSteps || !seen.insert(ref).second || node_channel(s) != tag ||
        !accept(s, w.last_ref == first_ref) ||
        n->seq.load(std::memory_order_relaxed) != w.last->seq.load(std::memory_order_relaxed) + 1) {
      w.broken = true;
      return w;
    }
    if (!visit(ref, n, s)) return w;
    w.last = n;
    w.last_ref = ref;
    w.link = n->next.load(std::memory_order_acquire);
  }
}

// A node state a queue may hold after its dummy: a message, or one claimed by a receiver.
inline bool node_state_in_queue(uint64_t s) { return node_kind(s) == kNodeLinked || node_kind(s) == kNodeClaimed; }

// Turns a freshly allocated node into a queue's dummy: no message, no successor, and state
// "consumed message" (claimed, by nobody in particular) of channel `tag`, numbered as if it
// were message `seq` ending at byte `position`. Returns that state.
inline uint64_t make_dummy(QueueNode* node, uint32_t tag, uint64_t seq = 0, uint64_t position = 0, bool sealed = false) {
  node->block.store(0, std::memory_order_relaxed);
  node->generation.store(0, std::memory_order_relaxed);
  node->length.store(0, std::memory_order_relaxed);
  node->seq.store(seq, std::memory_order_relaxed);
  node->position_bytes.store(position, std::memory_order_relaxed);
  node->next.store(next_link(node->next.load(std::memory_order_relaxed), 0, sealed), std::memory_order_relaxed);
  const uint64_t claimed = with_node_kind(node->state.load(std::memory_order_relaxed), tag, 0, kNodeClaimed);
  node->state.store(claimed, std::memory_order_release);
  return claimed;
}
// Walks a repair or a recount retries while receivers keep moving the head.
inline constexpr int kRepairAttempts = 16;

}  // namespace memchannel
