// Whole-arena walks for tests and tools: Arena::census (counts by state) and check_invariants
// (the crash tests' full cross-check, core/invariants.h). Both read the free lists through one
// walker. Neither is on the data path.
#include "core/invariants.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "core/arena_internal.h"
#include "core/channel.h"
#include "core/node.h"

namespace memchannel {
namespace {

struct Cells {
  std::map<BlockRef, BlockHeader*> blocks;  // data blocks and arena cells
  std::map<BlockRef, QueueNode*> nodes;
};

std::string ref_name(BlockRef ref) {
  std::ostringstream os;
  os << "ref " << ref << " (segment " << segment_of(ref_to_offset(ref)) << ", offset "
     << within_segment(ref_to_offset(ref)) << ")";
  return os.str();
}

// Counts one violation and keeps its description (the first 64).
template <typename... Parts>
void note(InvariantReport& r, uint64_t& counter, const Parts&... parts) {
  ++counter;
  if (r.problems.size() >= 64) return;
  std::ostringstream os;
  (os << ... << parts);
  r.problems.push_back(os.str());
}

// The list index walk_free_lists gives the node free list (block classes are 0..kNumClasses-1).
constexpr uint32_t kNodeFreeList = kNumClasses;

// Walks every free list: the block lists by class, then the node list. For each entry
// `entry(list, ref)` checks it and returns its successor, or 0 to end that list.
template <typename Entry>
void walk_free_lists(ArenaHeader& h, Entry&& entry) {
  for (uint32_t list = 0; list <= kNodeFreeList; ++list) {
    const std::atomic<uint64_t>& head = list < kNumClasses ? h.free_lists[list].head : h.node_free;
    for (BlockRef ref = tagged_ref(head.load(std::memory_order_acquire)); ref != 0;) ref = entry(list, ref);
  }
}

}  // namespace

ArenaCensus Arena::census() {
  ArenaCensus c;
  walk_cells([&](const CellInfo& cell) {
    if (cell.kind == CellInfo::kCarving) {
      ++c.carving_cells;
      return;
    }
    if (cell.kind == CellInfo::kNode) {
      ++c.nodes;
      switch (node_kind(cell.node->state.load(std::memory_order_acquire))) {
        case kNodeFree: ++c.nodes_free; break;
        case kNodeHeld: ++c.nodes_held; break;
        case kNodeLinked: ++c.nodes_linked; break;
        case kNodeClaimed: ++c.nodes_claimed; break;
      }
      return;
    }
    ++c.blocks;
    if ((cell.block->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
      ++c.arena_cells;
      return;
    }
    switch (state_kind(cell.block->state.load(std::memory_order_acquire))) {
      case kBlockFree:
        if ((cell.block->flags.load(std::memory_order_relaxed) & kBlockFlagPooled) != 0) {
          ++c.pooled;  // idle in its pool, on the pool's list (not an arena free list)
        } else {
          ++c.free_blocks;
        }
        break;
      case kBlockReserved: ++c.reserved; break;
      case kBlockQueued: ++c.queued; break;
      case kBlockReceived: ++c.received; break;
      case kBlockSending: ++c.sending; break;
      case kBlockTransferred: ++c.transferred; break;
      case kBlockShared: ++c.shared; break;
    }
  }, &c.bad_cells);
  // Every block on a free list must be free, of the list's class, and listed once (a quiescent
  // check); the same for the node free list.
  std::set<BlockRef> listed, nodes_listed;
  walk_free_lists(*header_, [&](uint32_t list, BlockRef ref) -> BlockRef {
    if (list == kNodeFreeList) {
      QueueNode* n = find_node(ref);
      if (n == nullptr || !nodes_listed.insert(ref).second) {
        c.node_list_consistent = false;
        return 0;
      }
      if (node_kind(n->state.load(std::memory_order_acquire)) != kNodeFree) c.node_list_consistent = false;
      return n->free_next.load(std::memory_order_relaxed);
    }
    BlockHeader* hdr = block_header(ref);
    if (hdr == nullptr || !listed.insert(ref).second) {
      c.free_lists_consistent = false;
      return 0;
    }
    if (state_kind(hdr->state.load(std::memory_order_acquire)) != kBlockFree ||
        hdr->size_class.load(std::memory_order_relaxed) != list) {
      c.free_lists_consistent = false;
    }
    return hdr->next_free.load(std::memory_order_relaxed);
  });
  c.free_listed = listed.size();
  c.nodes_free_listed = nodes_listed.size();
  return c;
}

uint64_t Arena::for_each_cell(const std::function<void(const CellInfo&)>& visit) {
  uint64_t bad = 0;
  walk_cells([&](const CellInfo& c) { visit(c); }, &bad);
  return bad;
}


uint64_t InvariantReport::violations() const {
  return bad_cells + unfinished_carves + lost_blocks + bad_list_entries + listed_twice +
         orphan_messages + duplicated_messages + stale_entries + dead_held_blocks + lost_nodes +
         bad_node_list_entries + nodes_listed_twice + orphan_nodes + dead_held_nodes + bad_links +
         tails_off_queue + count_mismatches + bytes_mismatches + counter_mismatches;
}

std::string InvariantReport::describe() const {
  std::ostringstream os;
  os << "blocks " << blocks << " (free " << free_blocks << ", reserved " << reserved << ", sending "
     << sending << ", transferred " << transferred << ", queued " << queued << ", received " << received << ", arena " << arena_cells
     << "), nodes " << nodes << ", channels " << channels << ", messages " << messages
     << "; violations " << violations() << ":";
  for (const std::string& p : problems) os << "\n  " << p;
  return os.str();
}

InvariantReport check_invariants(Arena& arena) {
  InvariantReport r;
  auto* header = arena.translate_as<ArenaHeader>(0);
  if (header == nullptr) {
    note(r, r.bad_cells, "no arena header");
    return r;
  }

  // 1. Every carved cell.
  Cells cells;
  std::unordered_map<uint32_t, ChannelHeader*> channels;  // by channel tag
  uint64_t nodes_in_use = 0, bytes_in_use = 0, blocks_in_use = 0;
  r.bad_cells = arena.for_each_cell([&](const CellInfo& c) {
    const BlockRef ref = offset_to_ref(c.offset);
    if (c.kind == CellInfo::kCarving) {
      note(r, r.unfinished_carves, "unfinished carve at ", ref_name(ref), " by holder ",
           carving_holder(c.carving_word));
      return;
    }
    if (c.kind == CellInfo::kNode) {
      ++r.nodes;
      cells.nodes[ref] = c.node;
      if (node_kind(c.node->state.load(std::memory_order_acquire)) != kNodeFree) ++nodes_in_use;
      return;
    }
    ++r.blocks;
    cells.blocks[ref] = c.block;
    if ((c.block->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
      ++r.arena_cells;
      ++nodes_in_use;  // arena cells count as nodes in the arena's counters
      auto* ch = arena.translate_as<ChannelHeader>(c.offset + sizeof(BlockHeader));
      const bool fits = c.bytes >= sizeof(BlockHeader) + sizeof(ChannelHeader);
      if (fits && ch != nullptr && ch->magic == kChannelMagic) {
        channels[channel_tag(c.offset + sizeof(BlockHeader))] = ch;
      }
      return;
    }
    const uint32_t word = c.block->state.load(std::memory_order_acquire);
    switch (state_kind(word)) {
      case kBlockFree:
        if ((c.block->flags.load(std::memory_order_relaxed) & kBlockFlagPooled) != 0) {
          ++blocks_in_use;  // idle in its pool: still counted in use (core/pools.cc)
          bytes_in_use += c.bytes;
        } else {
          ++r.free_blocks;
        }
        return;
      case kBlockReserved: ++r.reserved; break;
      case kBlockQueued: ++r.queued; break;
      case kBlockReceived: ++r.received; break;
      case kBlockSending: ++r.sending; break;
      case kBlockTransferred: ++r.transferred; break;
      case kBlockShared: ++r.shared; break;
      default: note(r, r.stale_entries, "block ", ref_name(ref), " in unknown state ", word); return;
    }
    if ((c.block->flags.load(std::memory_order_relaxed) & kBlockFlagShare) != 0) {
      ++nodes_in_use;  // a share token counts as a queue node (core/shares.cc)
    } else {
      ++blocks_in_use;
      bytes_in_use += c.bytes;
    }
    const BlockState kind = state_kind(word);
    if (kind != kBlockQueued && !arena.holder_alive(state_holder(word))) {
      note(r, r.dead_held_blocks, "block ", ref_name(ref), " held by holder ", state_holder(word),
           ", which is not alive");
    }
  });
  if (r.bad_cells != 0) r.problems.push_back("the cell walk stopped at a cell it could not size");
  r.channels = channels.size();

  // 2. Free lists: every entry a free block of the list's class (a free node), each listed once.
  std::set<BlockRef> listed, nodes_listed;
  walk_free_lists(*header, [&](uint32_t list, BlockRef ref) -> BlockRef {
    if (list == kNodeFreeList) {
      auto it = cells.nodes.find(ref);
      if (it == cells.nodes.end()) {
        note(r, r.bad_node_list_entries, "node free list names ", ref_name(ref), ", not a node");
        return 0;
      }
      if (node_kind(it->second->state.load(std::memory_order_acquire)) != kNodeFree) {
        note(r, r.bad_node_list_entries, "node free list holds ", ref_name(ref), ", which is not free");
      }
      if (!nodes_listed.insert(ref).second) {
        note(r, r.nodes_listed_twice, "node free list reaches ", ref_name(ref), " twice");
        return 0;
      }
      return it->second->free_next.load(std::memory_order_relaxed);
    }
    auto it = cells.blocks.find(ref);
    if (it == cells.blocks.end()) {
      note(r, r.bad_list_entries, "free list ", list, " names ", ref_name(ref), ", not a block");
      return 0;
    }
    BlockHeader* hdr = it->second;
    if (state_kind(hdr->state.load(std::memory_order_acquire)) != kBlockFree ||
        hdr->size_class.load(std::memory_order_relaxed) != list ||
        (hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) {
      note(r, r.bad_list_entries, "free list ", list, " holds ", ref_name(ref),
           ", which is not a free block of that class");
    }
    if (!listed.insert(ref).second) {
      note(r, r.listed_twice, "free list ", list, " reaches ", ref_name(ref), " twice");
      return 0;
    }
    return hdr->next_free.load(std::memory_order_relaxed);
  });
  for (const auto& [ref, hdr] : cells.blocks) {
    // Arena cells are never free; an idle pool block is on its pool's list (core/pools.cc).
    if ((hdr->flags.load(std::memory_order_relaxed) & (kBlockFlagArena | kBlockFlagPooled)) != 0) continue;
    if (state_kind(hdr->state.load(std::memory_order_acquire)) == kBlockFree && listed.count(ref) == 0) {
      note(r, r.lost_blocks, "free block ", ref_name(ref), " is on no free list");
    }
  }

  // 3. Queues: the dummy, then messages; each message names a block queued as that message.
  std::unordered_set<BlockRef> nodes_in_queues;
  std::map<BlockRef, int> named;  // block -> queue entries naming it
  for (const auto& [tag, ch] : channels) {
    const std::string name = "channel " + std::to_string(ch->channel_id);
    const uint64_t head = ch->head.load(std::memory_order_acquire);
    const uint64_t tail = ch->tail.load(std::memory_order_acquire);
    uint64_t messages = 0;
    bool tail_seen = false;
    // The numbering: each node after the dummy is one message more, and its length more bytes.
    uint64_t numbering_breaks = 0, position_breaks = 0;
    uint64_t previous_seq = 0, previous_position = 0;
    BlockRef at = tagged_ref(head);
    for (uint64_t position = 0; at != 0; ++position) {
      auto it = cells.nodes.find(at);
      if (it == cells.nodes.end()) {
        note(r, r.bad_links, name, ": link to ", ref_name(at), ", not a node");
        break;
      }
      const uint64_t s = it->second->state.load(std::memory_order_acquire);
      const bool dummy = position == 0;
      const bool claimed_in_progress = position == 1 && node_kind(s) == kNodeClaimed;
      if (node_channel(s) != tag || (dummy && node_kind(s) != kNodeClaimed) ||
          (!dummy && node_kind(s) != kNodeLinked && !claimed_in_progress)) {
        note(r, r.bad_links, name, ": node ", ref_name(at), " at position ", position,
             " is not in the state its place needs (state ", s, ")");
        break;
      }
      if (!nodes_in_queues.insert(at).second) {
        note(r, r.bad_links, name, ": the queue reaches ", ref_name(at), " twice");
        break;
      }
      if (at == tagged_ref(tail)) tail_seen = true;
      const uint64_t seq = it->second->seq.load(std::memory_order_relaxed);
      const uint64_t bytes_at = it->second->position_bytes.load(std::memory_order_relaxed);
      if (!dummy) {
        if (seq != previous_seq + 1) ++numbering_breaks;
        if (bytes_at != previous_position + it->second->length.load(std::memory_order_relaxed)) ++position_breaks;
      }
      previous_seq = seq;
      previous_position = bytes_at;
      if (!dummy && !claimed_in_progress) {
        ++messages;
        const BlockRef block = it->second->block.load(std::memory_order_relaxed);
        const uint32_t generation = it->second->generation.load(std::memory_order_relaxed);
        auto b = cells.blocks.find(block);
        const uint32_t word = b != cells.blocks.end() ? b->second->state.load(std::memory_order_acquire) : 0;
        if (block == 0) {  // inline: the payload is in the node (core/node.h)
          if (generation != kInlineMark || it->second->length.load(std::memory_order_relaxed) > kInlineBytes) {
            note(r, r.stale_entries, name, ": message node ", ref_name(at), " names no block, and is no inline message (",
                 it->second->length.load(std::memory_order_relaxed), " bytes, generation ", generation, ")");
          }
        } else if (b == cells.blocks.end() || state_generation(word) != generation ||
            (state_kind(word) != kBlockQueued && state_kind(word) != kBlockSending)) {
          note(r, r.stale_entries, name, ": message node ", ref_name(at), " names block ", ref_name(block),
               " generation ", generation, ", which is not queued as that");
        } else {
          ++named[block];  // an entry that really names the message the block holds
        }
      }
      at = tagged_ref(it->second->next.load(std::memory_order_acquire));
    }
    r.messages += messages;
    if (!tail_seen) {
      note(r, r.tails_off_queue, name, ": the tail ", ref_name(tagged_ref(tail)), " is not on the queue");
    }
    if (numbering_breaks != 0) {
      note(r, r.count_mismatches, name, ": ", numbering_breaks, " nodes of ", messages,
           " messages are not numbered one after their predecessor");
    }
    if (position_breaks != 0) {
      note(r, r.bytes_mismatches, name, ": ", position_breaks, " nodes' byte positions do not add up");
    }
  }
  for (const auto& [block, n] : named) {
    if (n > 1) note(r, r.duplicated_messages, "block ", ref_name(block), " is named by ", n, " entries");
  }
  for (const auto& [ref, hdr] : cells.blocks) {
    const uint32_t word = hdr->state.load(std::memory_order_acquire);
    if ((hdr->flags.load(std::memory_order_relaxed) & kBlockFlagArena) != 0) continue;
    if ((state_kind(word) == kBlockQueued || state_kind(word) == kBlockSending) && named.count(ref) == 0) {
      note(r, r.orphan_messages, "block ", ref_name(ref), " is ",
           state_kind(word) == kBlockQueued ? "queued" : "being sent", " but no queue entry names it");
    }
  }

  // 4. Nodes: free ones listed, held ones by live holders, linked or claimed ones in a queue.
  for (const auto& [ref, n] : cells.nodes) {
    const uint64_t s = n->state.load(std::memory_order_acquire);
    switch (node_kind(s)) {
      case kNodeFree:
        if (nodes_listed.count(ref) == 0) {
          note(r, r.lost_nodes, "free node ", ref_name(ref), " is on no free list");
        }
        break;
      case kNodeHeld:
        if (!arena.holder_alive(node_holder(s))) {
          note(r, r.dead_held_nodes, "node ", ref_name(ref), " held by holder ", node_holder(s),
               ", which is not alive");
        }
        break;
      case kNodeLinked:
      case kNodeClaimed:
        // A node linked by a live sender that has not linked it yet is in flight, not lost.
        if (nodes_in_queues.count(ref) == 0 &&
            !(node_kind(s) == kNodeLinked && node_holder(s) != 0 && arena.holder_alive(node_holder(s)))) {
          note(r, r.orphan_nodes, "node ", ref_name(ref), " of channel tag ", node_channel(s),
               " is in no queue");
        }
        break;
    }
  }

  // 5. The arena's counters against the cells.
  const ArenaStats st = arena.counters();
  if (st.blocks_in_use != blocks_in_use || st.bytes_in_use != bytes_in_use ||
      st.nodes_in_use != nodes_in_use) {
    note(r, r.counter_mismatches, "counters say ", st.blocks_in_use, " blocks / ", st.bytes_in_use,
         " bytes / ", st.nodes_in_use, " nodes in use, the cells ", blocks_in_use, " / ", bytes_in_use,
         " / ", nodes_in_use);
  }
  return r;
}

}  // namespace memchannel
