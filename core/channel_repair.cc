// Channel's repair of a queue found forged (docs/shm.md, "Forged links"): the walk that finds
// where the links stop being honest, the cut there, the count of what was cut off and the
// freeing of its blocks. Split from channel.cc, which keeps the per-message path.
#include <algorithm>
#include <unordered_set>
#include <utility>
#include <vector>

#include "core/channel.h"
#include "core/queue_walk.h"

namespace memchannel {

Channel::Repair Channel::repair() {
  // Nothing in a truncated arena is repaired: the queue's words may read as the zeros the lost
  // pages left, and what was queued is counted from what survives (truncation_loss).
  if (!arena_->confirm_intact()) return Repair::kFailed;
  for (int attempt = 0; attempt < kRepairAttempts; ++attempt) {
    const uint64_t head = header_->head.load(std::memory_order_acquire);
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    QueueNode* first = arena_->find_node(tagged_ref(head));
    const uint64_t head_state = first != nullptr ? first->state.load(std::memory_order_acquire) : 0;
    if (first == nullptr || node_channel(head_state) != tag_ || node_kind(head_state) != kNodeClaimed) {
      if (head != header_->head.load(std::memory_order_acquire)) continue;
      // A forged head hides the dummy, which is still there: point the head back at it, and
      // nothing is lost.
      if (const BlockRef dummy = find_dummy(tail); dummy != 0) {
        uint64_t expected = head;
        if (!header_->head.compare_exchange_strong(expected, make_tagged(tagged_tag(head) + 1, dummy),
                                                   std::memory_order_acq_rel)) {
          continue;
        }
        note_repair(0);
        return Repair::kRepaired;
      }
      // No dummy found: a fresh one. If the messages it led to are still there (the dummy's own
      // cell was forged, its successors were not), the fresh dummy is numbered just before
      // the first of them and linked to it: nothing is lost. Otherwise every message of this
      // channel still linked is behind the lost head: counted lost (they stay where they are;
      // nothing reaches them).
      QueueNode* orphan = nullptr;
      const BlockRef orphan_ref = find_orphaned_start(&orphan);
      const uint64_t stranded = orphan_ref != 0 ? 0 : count_linked();
      auto fresh = arena_->allocate_node();
      if (!fresh.ok()) return Repair::kFailed;
      QueueNode* old_tail = arena_->find_node(tagged_ref(tail));
      const bool numbered = old_tail != nullptr && node_in_channel(old_tail->state.load(std::memory_order_acquire));
      uint64_t seq = numbered ? old_tail->seq.load(std::memory_order_relaxed) : 0;
      uint64_t position = numbered ? old_tail->position_bytes.load(std::memory_order_relaxed) : 0;
      if (orphan != nullptr) {
        seq = orphan->seq.load(std::memory_order_relaxed) - 1;
        position = orphan->position_bytes.load(std::memory_order_relaxed) - orphan->length.load(std::memory_order_relaxed);
      }
      QueueNode* fresh_node = arena_->find_node(fresh.value);
      const uint64_t claimed = make_dummy(fresh_node, tag_, seq, position, closed() && orphan == nullptr);
      if (orphan != nullptr) {
        fresh_node->next.store(next_link(fresh_node->next.load(std::memory_order_relaxed), orphan_ref),
                               std::memory_order_release);
      }
      uint64_t expected = head;
      if (!header_->head.compare_exchange_strong(expected, make_tagged(tagged_tag(head) + 1, fresh.value),
                                                 std::memory_order_acq_rel)) {
        arena_->free_node_from(fresh.value, claimed);
        continue;
      }
      if (orphan == nullptr) {  // with the chain re-anchored, the tail is put back from its walk
        uint64_t t = header_->tail.load(std::memory_order_acquire);
        while (!header_->tail.compare_exchange_weak(t, make_tagged(tagged_tag(t) + 1, fresh.value),
                                                    std::memory_order_acq_rel)) {
        }
      }
      note_repair(stranded);
      return Repair::kRepaired;
    }
    // Messages, and a claimed node only right after the dummy (a receive in progress).
    bool tail_on_walk = tagged_ref(tail) == tagged_ref(head);
    const QueueWalk walk = walk_queue(
        *arena_, first, tagged_ref(head), tag_,
        [](uint64_t s, bool after_dummy) {
          return node_kind(s) == kNodeLinked || (node_kind(s) == kNodeClaimed && after_dummy);
        },
        [&](BlockRef ref, QueueNode*, uint64_t) {
          if (ref == tagged_ref(tail)) tail_on_walk = true;
          return true;
        });
    QueueNode* last = walk.last;
    const BlockRef last_ref = walk.last_ref;
    const uint64_t link = walk.link;
    const bool broken = walk.broken;
    if (head != header_->head.load(std::memory_order_acquire)) continue;  // a receiver moved it
    if (broken) {
      if (!cut_after(last, last_ref, link, tail)) continue;  // the link moved: look again
      return Repair::kRepaired;
    }
    if (!tail_on_walk) {
      uint64_t t = tail;
      if (header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(tail) + 1, last_ref),
                                                std::memory_order_acq_rel)) {
        note_repair(0);  // a forged tail: every message is still on the walk
        return Repair::kRepaired;
      }
    }
    return Repair::kIntact;  // nothing wrong on a still queue (any more)
  }
  return Repair::kFailed;
}

void Channel::note_message_lost(bool report) {
  header_->messages_lost.fetch_add(1, std::memory_order_relaxed);
  if (report) header_->repair_epoch.fetch_add(1, std::memory_order_release);
}

void Channel::note_repair(uint64_t lost) {
  if (lost != 0) header_->messages_lost.fetch_add(lost, std::memory_order_relaxed);
  header_->repair_epoch.fetch_add(1, std::memory_order_release);
  arena_->note_corruption();
  notify_all(header_->not_full);
  notify_all(header_->not_empty);
}

bool Channel::cut_after(QueueNode* last, BlockRef last_ref, uint64_t link, uint64_t tail) {
  uint64_t expected = link;
  if (!last->next.compare_exchange_strong(expected, next_link(link, 0, closed()), std::memory_order_acq_rel)) {
    return false;
  }
  const uint64_t base = last->seq.load(std::memory_order_relaxed);
  // The tail onto the cut, so senders link after `last` again (a tail a sender has since moved
  // past a node it linked after the cut may be moved back: senders help it forward again).
  for (int i = 0; i < 64; ++i) {
    uint64_t t = header_->tail.load(std::memory_order_acquire);
    if (tagged_ref(t) == last_ref) break;
    const BlockRef after_cut = tagged_ref(last->next.load(std::memory_order_acquire));
    if (after_cut != 0 && after_cut == tagged_ref(t)) break;
    if (header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(t) + 1, last_ref), std::memory_order_acq_rel)) {
      break;
    }
  }
  // The part cut off ends at the old tail's chain: sealed there (after the tail moved, so no
  // sender sees a sealed end at the tail and takes the channel for closed), so no message sent
  // from now on joins it; its messages, numbered past `last`, are lost and counted.
  uint64_t lost = 0;
  QueueNode* old_tail = arena_->find_node(tagged_ref(tail));
  if (old_tail != nullptr && tagged_ref(tail) != last_ref && node_in_channel(old_tail->state.load(std::memory_order_acquire))) {
    for (int attempt = 0; attempt < kRepairAttempts; ++attempt) {
      const uint64_t tail_seq = old_tail->seq.load(std::memory_order_relaxed);
      if (tail_seq <= base || tail_seq - base > kMaxQueueSteps) break;  // not past the cut: nothing to count
      const QueueWalk end = walk_queue(
          *arena_, old_tail, tagged_ref(tail), tag_, [](uint64_t st, bool) { return node_state_in_queue(st); },
          [](BlockRef, QueueNode*, uint64_t) { return true; });
      uint64_t e = end.link;
      const bool sealed_already = link_sealed(e) && tagged_ref(e) == 0;
      if (sealed_already ||
          end.last->next.compare_exchange_strong(e, next_link(e, 0, true), std::memory_order_acq_rel)) {
        const uint64_t end_seq = end.last->seq.load(std::memory_order_relaxed);
        lost = end_seq > base ? count_linked_between(base, end_seq) : 0;
        if (lost != 0) free_cut_off(base, end_seq, end.last_ref);
        break;
      }
    }
  }
  note_repair(lost);
  return true;
}

void Channel::free_cut_off(uint64_t base, uint64_t end_seq, BlockRef end_ref) {
  // The part cut off is the messages numbered in (base, end_seq] whose valid links lead to its
  // sealed end `end_ref`. Nothing reaches them from the head any more; a node a sender has not
  // linked yet (its next is 0, not the sealed end) is never among them. Each is freed by CAS
  // from the state walked, its block only if kQueued at the node's generation (a block still
  // kSending belongs to a sender finishing its send: left, with its node, as before).
  std::vector<std::pair<BlockRef, uint64_t>> candidates;
  arena_->for_each_cell([&](const CellInfo& c) {
    if (c.kind != CellInfo::kNode) return;
    const uint64_t st = c.node->state.load(std::memory_order_acquire);
    const uint64_t seq = c.node->seq.load(std::memory_order_relaxed);
    if (node_channel(st) == tag_ && node_kind(st) == kNodeLinked && seq > base && seq <= end_seq) {
      candidates.emplace_back(offset_to_ref(c.offset), st);
    }
  });
  std::vector<std::pair<BlockRef, uint64_t>> members;
  for (const auto& [ref, st] : candidates) {
    QueueNode* n = arena_->find_node(ref);
    if (n == nullptr) continue;
    bool reaches = ref == end_ref;
    if (!reaches) {
      const QueueWalk w = walk_queue(
          *arena_, n, ref, tag_, [](uint64_t s2, bool) { return node_kind(s2) == kNodeLinked; },
          [](BlockRef, QueueNode*, uint64_t) { return true; });
      reaches = w.last_ref == end_ref && !w.broken;
    }
    if (reaches) members.emplace_back(ref, st);
  }
  for (const auto& [ref, st] : members) {
    QueueNode* n = arena_->find_node(ref);
    if (n == nullptr) continue;
    const BlockHandle message{n->block.load(std::memory_order_relaxed), n->generation.load(std::memory_order_relaxed)};
    if (n->state.load(std::memory_order_acquire) != st) continue;  // moved on: not ours to free
    BlockHeader* block = arena_->find_block(message.ref);
    const uint32_t bs = block != nullptr ? block->state.load(std::memory_order_acquire) : 0;
    if (block != nullptr && state_generation(bs) == message.generation) {
      if (state_kind(bs) != kBlockQueued) continue;  // a sender still finishing: leave both
      arena_->reclaim_block(message.ref, bs);
    }
    arena_->free_node_from(ref, st, /*count_refusal=*/false);
  }
}

uint64_t Channel::count_linked_between(uint64_t base, uint64_t end_seq) {
  // The numbers say end_seq - base (the part cut off is numbered without gaps). A forged end
  // number could say more than was ever sent: then the count is bounded by the messages of this
  // channel that exist, numbered in (base, end_seq].
  uint64_t in_use = 0, linked = 0;
  arena_->for_each_cell([&](const CellInfo& c) {
    if (c.kind != CellInfo::kNode) return;
    const uint64_t st = c.node->state.load(std::memory_order_acquire);
    const uint64_t seq = c.node->seq.load(std::memory_order_relaxed);
    if (node_kind(st) != kNodeFree) ++in_use;
    if (node_channel(st) == tag_ && node_kind(st) == kNodeLinked && seq > base && seq <= end_seq) ++linked;
  });
  return end_seq - base <= in_use ? end_seq - base : linked;
}

BlockRef Channel::find_dummy(uint64_t tail) {
  // Candidates: claimed nodes of this channel (the dummy, old dummies not yet freed, a message
  // being received). The dummy is the one numbered highest among those whose links lead, by
  // valid steps, to the tail.
  std::vector<std::pair<uint64_t, BlockRef>> claimed;
  arena_->for_each_cell([&](const CellInfo& c) {
    if (c.kind != CellInfo::kNode) return;
    const uint64_t st = c.node->state.load(std::memory_order_acquire);
    if (node_channel(st) == tag_ && node_kind(st) == kNodeClaimed) {
      claimed.emplace_back(c.node->seq.load(std::memory_order_relaxed), offset_to_ref(c.offset));
    }
  });
  std::sort(claimed.rbegin(), claimed.rend());
  const BlockRef tail_ref = tagged_ref(tail);
  // With the tail forged too (it names no node the dummy leads to), the dummy is the one
  // numbered highest whose links lead, by valid steps, to the end of a queue (a link naming no
  // node): the tail is then repaired from the walk (repair(), "a forged tail").
  BlockRef to_end = 0;
  for (const auto& [seq, ref] : claimed) {
    QueueNode* n = arena_->find_node(ref);
    if (n == nullptr) continue;
    bool reaches = ref == tail_ref;
    const QueueWalk w = walk_queue(
        *arena_, n, ref, tag_, [](uint64_t st, bool) { return node_state_in_queue(st); },
        [&](BlockRef r, QueueNode*, uint64_t) {
          reaches |= r == tail_ref;
          return !reaches;
        });
    if (reaches) return ref;
    if (to_end == 0 && !w.broken && tagged_ref(w.link) == 0) to_end = ref;
  }
  return to_end;
}

BlockRef Channel::find_orphaned_start(QueueNode** node) {
  // A message of this channel (kNodeLinked) named by the link of a cell that is not one of the
  // channel's queue nodes any more (the dummy, forged), from which valid links lead to the end
  // of a queue. Of several, the one whose chain ends numbered highest (the live end).
  std::vector<std::pair<BlockRef, BlockRef>> links;  // (from, to)
  arena_->for_each_cell([&](const CellInfo& c) {
    if (c.kind != CellInfo::kNode) return;
    const BlockRef to = tagged_ref(c.node->next.load(std::memory_order_acquire));
    if (to != 0) links.emplace_back(offset_to_ref(c.offset), to);
  });
  BlockRef best = 0;
  uint64_t best_end = 0;
  for (const auto& [from, to] : links) {
    QueueNode* n = arena_->find_node(to);
    QueueNode* f = arena_->find_node(from);
    if (n == nullptr || f == nullptr) continue;
    if (node_in_channel(f->state.load(std::memory_order_acquire))) continue;  // an honest predecessor
    const uint64_t st = n->state.load(std::memory_order_acquire);
    if (node_channel(st) != tag_ || node_kind(st) != kNodeLinked || n->seq.load(std::memory_order_relaxed) == 0) continue;
    const QueueWalk w = walk_queue(
        *arena_, n, to, tag_, [](uint64_t s2, bool) { return node_kind(s2) == kNodeLinked; },
        [](BlockRef, QueueNode*, uint64_t) { return true; });
    if (w.broken || tagged_ref(w.link) != 0) continue;
    const uint64_t end = w.last->seq.load(std::memory_order_relaxed);
    if (best == 0 || end > best_end) {
      best = to;
      best_end = end;
      *node = n;
    }
  }
  return best;
}

uint64_t Channel::count_linked() {
  // A message is linked when a node's link names it; a sender's node that waits for room is
  // kNodeLinked already but named by no link (it joins the repaired queue when it links).
  std::unordered_set<BlockRef> named;
  std::vector<BlockRef> mine;
  arena_->for_each_cell([&](const CellInfo& c) {
    if (c.kind != CellInfo::kNode) return;
    const uint64_t st = c.node->state.load(std::memory_order_acquire);
    if (const BlockRef to = tagged_ref(c.node->next.load(std::memory_order_acquire)); to != 0) named.insert(to);
    if (node_channel(st) == tag_ && node_kind(st) == kNodeLinked) mine.push_back(offset_to_ref(c.offset));
  });
  uint64_t linked = 0;
  for (const BlockRef ref : mine) linked += named.count(ref);
  return linked;
}

}  // namespace memchannel
