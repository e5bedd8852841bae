// Invariant checker for arena memory (docs/reliability.md item 3): after a crash and the reclamation
// of the dead process, every block must be in exactly one place and every index in bounds.
//
// check_invariants() walks every carved cell, every free list and every channel queue of an
// arena and cross-checks them:
//   - each data block is in exactly one place: kFree and on the free list of its class (once),
//     or kQueued/kSending and named by exactly one message of exactly one queue, or
//     kReserved/kReceived/kSending/kTransferred by a live holder;
//   - each queue node is free and on the node free list (once), held by a live holder, or in
//     exactly one channel's queue (the dummy, then messages);
//   - every free-list entry and queue link is in bounds, of the right kind, and acyclic; each
//     tail is on its queue; each channel's count and bytes equal what its queue holds;
//   - no cell is left half-carved, and the arena's counters match the cells.
// It reads shared memory without locks and assumes nothing changes meanwhile: call it when no
// operation is in flight (tests, tools). It never writes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/arena.h"

namespace memchannel {

struct InvariantReport {
  // What was found.
  uint64_t blocks = 0, free_blocks = 0, reserved = 0, sending = 0, queued = 0, received = 0;
  uint64_t shared = 0;  // blocks shared read-only, owned by their tokens (core/shares.cc)
  uint64_t transferred = 0;  // claimed messages handed to their claimer (held by it)
  uint64_t arena_cells = 0, nodes = 0, channels = 0, messages = 0;

  // Violations: all zero in a consistent arena.
  uint64_t bad_cells = 0;            // cells that cannot be sized (the walk stopped there)
  uint64_t unfinished_carves = 0;    // cells still holding a carving word
  uint64_t lost_blocks = 0;          // kFree blocks on no free list
  uint64_t bad_list_entries = 0;     // free-list entries out of bounds, not free, of another class
  uint64_t listed_twice = 0;         // blocks (or a cycle) on the free lists more than once
  uint64_t orphan_messages = 0;      // kQueued/kSending blocks that no queue entry names (lost)
  uint64_t duplicated_messages = 0;  // blocks named by more than one queue entry
  uint64_t stale_entries = 0;        // queue entries whose block is not that message
  uint64_t dead_held_blocks = 0;     // blocks held (or being sent) by holders that are not alive
  uint64_t lost_nodes = 0;           // kNodeFree nodes not on the node free list
  uint64_t bad_node_list_entries = 0;
  uint64_t nodes_listed_twice = 0;
  uint64_t orphan_nodes = 0;         // kNodeLinked/kNodeClaimed nodes in no queue
  uint64_t dead_held_nodes = 0;      // kNodeHeld nodes of holders that are not alive
  uint64_t bad_links = 0;            // heads that are not dummies, links leaving the channel, cycles
  uint64_t tails_off_queue = 0;      // tails not on their queue
  uint64_t count_mismatches = 0;     // channels whose nodes are not numbered 1, 2, 3... from the dummy
  uint64_t bytes_mismatches = 0;     // channels whose nodes' byte positions do not add their lengths
  uint64_t counter_mismatches = 0;   // arena counters (blocks/bytes/nodes in use) != the cells

  std::vector<std::string> problems;  // one line per violation

  uint64_t violations() const;
  bool ok() const { return violations() == 0; }
  std::string describe() const;  // counts and problems, for test failure messages
};

// Quiescent check of `arena`; see the header comment.
InvariantReport check_invariants(Arena& arena);

}  // namespace memchannel
