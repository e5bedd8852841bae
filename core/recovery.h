// Crash recovery of an arena's queues (recovery.cc also holds the Arena members that claim,
// check and reap holder slots: core/arena.h, "Holders").
#pragma once

#include <cstdint>

#include "core/arena.h"

namespace memchannel {

// Crash recovery of every queue of `arena` after holder `dead` died; Arena::reap_dead_holders
// calls it before it frees the dead holder's blocks. For each channel (found by walking arena
// cells), with a consistent view of its queue (the head unchanged across the walk):
//  - a node the dead holder had named for a send but not linked: freed, and its block if
//    kSending (nothing was counted); a node it had linked: its block kSending -> kQueued, so
//    the message is delivered;
//  - a node the dead holder had claimed whose block it had not taken: the block is freed (the
//    receiver died holding the message); if the node was freed first, the party that freed it
//    made the block kTransferred to the dead holder, and the holder pass frees it;
//  - a claimed node behind the head (an old dummy its advancer died before freeing): freed.
// Returns the blocks freed. Concurrency: any thread; one caller per dead holder.
uint64_t recover_queues(Arena& arena, uint32_t dead);

}  // namespace memchannel
