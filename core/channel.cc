#include "core/channel.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <new>
#include <utility>

#include "core/channel_internal.h"
#include "core/queue_walk.h"

namespace memchannel {
namespace {

using namespace channel_internal;  // NOLINT: the waits and as_flow

// The node whose message this thread took last (its ref and its state word as claimed). When
// the same thread later frees that node as an old dummy (one receiver: always), it knows the
// block is kReceived already and does not touch the block header, which a sender on another
// core may be reusing by then. A thread-local of trivial type: no guard, no sharing.
struct LastTaken {
  const void* channel;
  BlockRef node;
  uint64_t state;
};
// initial-exec: read and written on every receive, it is a plain %fs-relative access instead
// of a __tls_get_addr call (24 bytes of the static TLS surplus glibc keeps for dlopen'd modules).
[[gnu::tls_model("initial-exec")]] thread_local LastTaken t_last_taken{nullptr, 0, 0};

}  // namespace

Channel::Channel(std::shared_ptr<Arena> arena, ChannelHeader* header, Offset offset)
    : arena_(std::move(arena)),
      header_(header),
      offset_(offset),
      tag_(channel_tag(offset)),
      maxsize_(header->maxsize),
      maxbytes_(header->maxbytes),
      channel_id_(header->channel_id),
      limits_check_(header->limits_check),
      seen_repair_epoch_(header->repair_epoch.load(std::memory_order_relaxed)) {}

Result<std::shared_ptr<Channel>> Channel::create(std::shared_ptr<Arena> arena, uint64_t maxsize,
                                                 uint64_t maxbytes, uint64_t channel_id) {
  if (maxsize > kMaxChannelSize) return {Status::kInvalidArgument, nullptr};
  auto cells = arena->allocate_cells(sizeof(ChannelHeader));
  if (!cells.ok()) return {cells.status, nullptr};
  auto dummy = arena->allocate_node();
  if (!dummy.ok()) {
    arena->free_cells(cells.value);
    return {dummy.status, nullptr};
  }
  make_dummy(arena->find_node(dummy.value), channel_tag(cells.value));
  void* mem = arena->translate(cells.value, sizeof(ChannelHeader));
  auto* header = new (mem) ChannelHeader{};
  header->magic = kChannelMagic;
  header->version = kChannelLayoutVersion;
  header->maxsize = maxsize;
  header->maxbytes = maxbytes;
  header->channel_id = channel_id;
  header->limits_check = limits_digest(maxsize, maxbytes, channel_id);
  header->head.store(make_tagged(0, dummy.value), std::memory_order_relaxed);
  header->tail.store(make_tagged(0, dummy.value), std::memory_order_relaxed);
  header->attached.store(attach_word(1), std::memory_order_release);
  return {Status::kOk, std::shared_ptr<Channel>(new Channel(std::move(arena), header, cells.value))};
}

Result<std::shared_ptr<Channel>> Channel::open(std::shared_ptr<Arena> arena, Offset offset) {
  // Channel headers sit 64 bytes into a block: an offset off the grid is forged, and its
  // atomics would be misaligned.
  auto* header = (offset % kUnit) == 0 ? arena->translate_as<ChannelHeader>(offset) : nullptr;
  if (header == nullptr) {
    arena->note_corruption();
    return {Status::kCorruptedOffset, nullptr};
  }
  if (header->magic != kChannelMagic) {
    arena->note_corruption();
    return {Status::kBadMagic, nullptr};
  }
  if (header->version != kChannelLayoutVersion) {
    arena->note_corruption();
    return {Status::kVersionMismatch, nullptr};
  }
  // A limit or id a peer forged (the digest disagrees): refused until a party that holds the
  // true values puts them back (its next send or recv: repair_reported).
  if (header->maxsize > kMaxChannelSize ||
      header->limits_check != limits_digest(header->maxsize, header->maxbytes, header->channel_id)) {
    arena->note_corruption();
    return {Status::kCorruptedLength, nullptr};
  }
  if (!take_attach(*arena, header)) return {Status::kNotFound, nullptr};  // already being torn down
  return {Status::kOk, std::shared_ptr<Channel>(new Channel(std::move(arena), header, offset))};
}

bool Channel::take_attach(Arena& arena, ChannelHeader* header) {
  uint64_t w = header->attached.load(std::memory_order_acquire);
  for (;;) {
    if (w == kAttachPinned) return true;  // the count was given up: nobody frees the channel
    if (!attach_word_valid(w) || attach_count(w) >= 0xfffffff0u) {
      // Forged (see attach_word): pinned, counted once by the party that pins it.
      if (header->attached.compare_exchange_weak(w, kAttachPinned, std::memory_order_acq_rel)) {
        arena.note_corruption();
        return true;
      }
      continue;
    }
    if (attach_count(w) == 0) return false;
    if (header->attached.compare_exchange_weak(w, attach_word(attach_count(w) + 1), std::memory_order_acq_rel)) {
      return true;
    }
  }
}

void Channel::restore_limits() {
  header_->maxsize = maxsize_;
  header_->maxbytes = maxbytes_;
  header_->channel_id = channel_id_;
  header_->limits_check = limits_check_;
  arena_->note_corruption();
}

Channel::~Channel() { detach(); }

void Channel::detach() {
  if (!attached_.exchange(false, std::memory_order_acq_rel)) return;
  // Inherited across fork() and not re-attached: the count is the parent's (shared memory) or
  // a private copy nobody else uses (heap). Either way this process gives back nothing.
  if (!held_here()) return;
  uint64_t w = header_->attached.load(std::memory_order_acquire);
  for (;;) {
    if (w == kAttachPinned) return;  // nobody frees a channel whose count was given up
    if (!attach_word_valid(w) || attach_count(w) == 0) {  // forged: this object held one
      if (header_->attached.compare_exchange_weak(w, kAttachPinned, std::memory_order_acq_rel)) {
        arena_->note_corruption();
        return;
      }
      continue;
    }
    const uint32_t left = attach_count(w) - 1;
    if (header_->attached.compare_exchange_weak(w, attach_word(left), std::memory_order_acq_rel)) {
      if (left == 0) drain_and_free();
      return;
    }
  }
}

bool Channel::reattach_after_fork() {
  std::lock_guard<std::mutex> lock(reattach_mutex_);
  if (held_here()) return attached_.load(std::memory_order_acquire);
  const uint64_t now = fork_generation();
  if (!attached_.load(std::memory_order_acquire)) {
    fork_generation_.store(now, std::memory_order_relaxed);
    return false;
  }
  if (!arena_->backend().tracks_holders()) {
    fork_generation_.store(now, std::memory_order_relaxed);  // heap: the child's own copy
    return true;
  }
  if (!take_attach(*arena_, header_)) {  // the parent was tearing it down as it forked
    attached_.store(false, std::memory_order_release);
    fork_generation_.store(now, std::memory_order_relaxed);
    return false;
  }
  inherited_.store(true, std::memory_order_release);
  fork_generation_.store(now, std::memory_order_relaxed);
  return true;
}

void Channel::drain_and_free() {
  // A repair reports itself once (a corruption status) and the queue then serves again.
  for (int failures = 0; failures < 16;) {
    bool empty = false;
    SmallMessage dropped;
    auto got = try_dequeue(&empty, nullptr, &dropped);
    if (got.ok()) {
      if (got.value.ref != 0) arena_->release(got.value);
      continue;
    }
    if (empty) break;
    ++failures;
  }
  const uint64_t head = header_->head.load(std::memory_order_acquire);
  if (QueueNode* dummy = arena_->find_node(tagged_ref(head))) {
    const uint64_t s = dummy->state.load(std::memory_order_acquire);
    if (node_channel(s) == tag_ && node_kind(s) == kNodeClaimed) arena_->free_node_from(tagged_ref(head), s);
  }
  header_->magic = 0;
  arena_->free_cells(offset_);
}

bool Channel::node_in_channel(uint64_t state) const {
  return node_channel(state) == tag_ &&
         (node_kind(state) == kNodeLinked || node_kind(state) == kNodeClaimed);
}

Channel::Counts Channel::walk_counts(uint64_t head, uint64_t limit) const {
  Counts c;
  QueueNode* first = arena_->find_node(tagged_ref(head));
  if (first == nullptr) return c;
  walk_queue(
      *arena_, first, tagged_ref(head), tag_, [](uint64_t s, bool) { return node_state_in_queue(s); },
      [&](BlockRef, QueueNode* n, uint64_t s) {
        if (node_kind(s) == kNodeLinked) {  // a claimed one has been received
          ++c.queued;
          c.bytes += n->length.load(std::memory_order_relaxed);
        }
        return c.queued < limit;
      });
  return c;
}

void Channel::seal() {
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    QueueNode* last = arena_->find_node(tagged_ref(tail));
    const uint64_t last_state = last != nullptr ? last->state.load(std::memory_order_acquire) : 0;
    const uint64_t next = last != nullptr ? last->next.load(std::memory_order_acquire) : 0;
    if (tail != header_->tail.load(std::memory_order_acquire)) continue;
    if (last == nullptr || !node_in_channel(last_state)) {
      if (repair() == Repair::kFailed) return;  // the closed flag still refuses new sends
      continue;
    }
    const BlockRef next_ref = tagged_ref(next);
    if (next_ref == 0) {
      if (link_sealed(next)) return;
      uint64_t expected = next;
      if (last->next.compare_exchange_weak(expected, next_link(next, 0, true), std::memory_order_acq_rel,
                                           std::memory_order_relaxed)) {
        return;
      }
      continue;
    }
    QueueNode* successor = arena_->find_node(next_ref);
    if (successor == nullptr || !node_in_channel(successor->state.load(std::memory_order_acquire)) ||
        successor->seq.load(std::memory_order_relaxed) != last->seq.load(std::memory_order_relaxed) + 1) {
      if (tail != header_->tail.load(std::memory_order_acquire) ||
          last->next.load(std::memory_order_acquire) != next) {
        continue;
      }
      if (repair() == Repair::kFailed) return;
      continue;
    }
    uint64_t t = tail;
    header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(tail) + 1, next_ref),
                                          std::memory_order_release, std::memory_order_relaxed);
  }
  arena_->note_corruption();
}

void Channel::advance(uint64_t head, QueueNode* first, uint64_t head_state, BlockRef next, Arena::NodeStash* stash) {
  uint64_t expected = head;
  if (header_->head.compare_exchange_strong(expected, make_tagged(tagged_tag(head) + 1, next),
                                            std::memory_order_acq_rel, std::memory_order_relaxed)) {
    MEMCHANNEL_CRASH_POINT(kRecvHeadAdvanced);
    const BlockRef first_ref = tagged_ref(head);
    const uint32_t claimer = node_holder(head_state);
    const LastTaken& mine = t_last_taken;
    if (claimer != 0 && !(mine.node == first_ref && mine.state == head_state && mine.channel == header_)) {
      // The old dummy is a message node claimed by `claimer` (holder 0: a dummy made as one, or
      // an untracked holder that cannot die apart from us). Its claimer may not have taken the
      // block yet: it is slow, or it was killed between its claim and mark_received. Freeing
      // the node would then leave the block kQueued with nothing naming it (the soak's leak),
      // so the message goes to the claimer first: kQueued/kSending at the node's generation ->
      // kTransferred(claimer). The claimer's mark_received takes it from there, or the
      // reclaimer of the claimer frees it as a block the claimer held. A reclaimer that freed
      // the block first makes the CAS fail (the state moved on); so does the claimer's own
      // mark_received. The descriptor is read while the state still names this incarnation.
      const BlockHandle message{first->block.load(std::memory_order_relaxed),
                                first->generation.load(std::memory_order_relaxed)};
      std::atomic_thread_fence(std::memory_order_acquire);
      if (message.ref != 0 && first->state.load(std::memory_order_relaxed) == head_state &&
          arena_->transfer_message(message, claimer)) {
        MEMCHANNEL_CRASH_POINT(kRecvTransferred);
      }
    }
    // Refused only if a crash reclaimer freed this old dummy first (recover_queues).
    if (stash != nullptr) {
      arena_->free_node_into(first, first_ref, head_state, stash);
    } else {
      arena_->free_node_at(first, first_ref, head_state, /*count_refusal=*/false);
    }
    MEMCHANNEL_CRASH_POINT(kRecvOldHeadFreed);
    // One message fewer counted. A batch (stash) tells blocked senders once, at its end
    // (recv_many): the notify's seq_cst fence then costs once per batch, not per message.
    if (stash == nullptr) notify_room_if_bounded();
  }
}

Result<BlockHandle> Channel::try_dequeue(bool* empty, bool* drained, SmallMessage* small, Arena::NodeStash* stash) {
  *empty = false;
  if (drained != nullptr) *drained = false;
  for (uint64_t step = 0; step < kMaxQueueSteps; ++step) {
    const uint64_t head = header_->head.load(std::memory_order_acquire);
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    QueueNode* first = arena_->find_node(tagged_ref(head));
    const uint64_t head_state = first != nullptr ? first->state.load(std::memory_order_acquire) : 0;
    // acquire: pairs with enqueue's link CAS (release), so the successor's state and descriptor
    // written before the link are visible.
    const uint64_t next = first != nullptr ? first->next.load(std::memory_order_acquire) : 0;
    QueueNode* second = arena_->find_node(tagged_ref(next));
    const uint64_t second_state = second != nullptr ? second->state.load(std::memory_order_acquire) : 0;
    // The successor's number: one past the dummy's in an honest queue (see channel.h, Trust).
    const bool numbered = second != nullptr && first != nullptr &&
                          second->seq.load(std::memory_order_relaxed) == first->seq.load(std::memory_order_relaxed) + 1;
    // Everything above was read while the head named `first` (same tag: no dequeue between):
    // `first` was the dummy, `second` its successor, and second_state the state of that very
    // incarnation of the node (nothing frees or reuses a node before the head passes it). A
    // claim from second_state therefore claims the first message, never a recycled node.
    if (head != header_->head.load(std::memory_order_acquire)) continue;
    // The head, unchanged, is this channel's dummy: nothing frees it before the head moves.
    if (first == nullptr || node_channel(head_state) != tag_ || node_kind(head_state) != kNodeClaimed) {
      if (repair() != Repair::kRepaired) arena_->note_corruption();  // seen, if not repaired here
      (void)repair_reported();  // reported now: this object's next call serves again
      return {Status::kCorruptedIndex, {}};
    }
    const BlockRef next_ref = tagged_ref(next);
    if (next_ref == 0) {
      if (tagged_ref(head) == tagged_ref(tail)) {
        *empty = true;
        if (drained != nullptr) *drained = link_sealed(next);
        return {Status::kEmpty, {}};
      }
      // The head is before the tail, so the dummy has a successor: unless the tail is not in
      // the queue at all (the head was unchanged across both reads).
      if (repair() != Repair::kRepaired) arena_->note_corruption();  // seen, if not repaired here
      (void)repair_reported();  // reported now: this object's next call serves again
      return {Status::kCorruptedIndex, {}};
    }
    if (second == nullptr || next_ref == tagged_ref(head) || !node_in_channel(second_state) || !numbered) {
      // Nodes after the dummy are freed only after the head passed them: with the head and
      // its link unchanged, this link leads outside the queue (out of bounds, a free or held
      // node, another channel's node, a cycle).
      if (head != header_->head.load(std::memory_order_acquire) ||
          first->next.load(std::memory_order_acquire) != next) {
        continue;
      }
      if (repair() != Repair::kRepaired) arena_->note_corruption();  // seen, if not repaired here
      (void)repair_reported();  // reported now: this object's next call serves again
      return {Status::kCorruptedIndex, {}};
    }
    if (tagged_ref(head) == tagged_ref(tail)) {
      // The tail lags behind a linked node: help it before moving the head past it.
      uint64_t t = tail;
      header_->tail.compare_exchange_strong(t, make_tagged(tagged_tag(tail) + 1, next_ref),
                                            std::memory_order_release, std::memory_order_relaxed);
      continue;
    }
    if (node_kind(second_state) == kNodeClaimed) {
      advance(head, first, head_state, next_ref, stash);  // another receiver owns it: move the head for it
      continue;
    }
    // Read the message before claiming it: once claimed, others may move the head onto the
    // node and past it, and free it, before this thread reads on. A claim that succeeds proves
    // the node is still the incarnation these fields were read from (its generation is in the
    // state word).
    const BlockHandle block{second->block.load(std::memory_order_relaxed),
                            second->generation.load(std::memory_order_relaxed)};
    // A batch takes the message after this one next: its node's lines start coming now.
    if (stash != nullptr) arena_->prefetch_node(tagged_ref(second->next.load(std::memory_order_relaxed)));
    // An inline message (ref 0) is copied out now, for the same reason; its length is checked
    // after the claim (a forged one loses that message only).
    const uint64_t inline_length = block.ref == 0 ? second->length.load(std::memory_order_relaxed) : 0;
    const bool inline_ok = block.ref == 0 && block.generation == kInlineMark && inline_length <= kInlineBytes;
    if (inline_ok) load_inline(second, inline_length, small);
    // Claim the message: whoever turns the node kNodeClaimed owns it.
    const uint64_t claimed = with_node_kind(second_state, tag_, arena_->holder(), kNodeClaimed);
    uint64_t expected = second_state;
    if (!second->state.compare_exchange_strong(expected, claimed, std::memory_order_acq_rel)) continue;
    MEMCHANNEL_CRASH_POINT(kRecvClaimed);
    if (block.ref == 0) {
      // Nothing to take: the payload is the caller's copy, the node the queue's next dummy.
      small->node = next_ref;  // for the caller's truncation check
      advance(head, first, head_state, next_ref, stash);
      if (!inline_ok) [[unlikely]] {
        arena_->note_corruption();
        note_message_lost(true);  // a forged descriptor: the message is gone; serve the next
        continue;
      }
      return {Status::kOk, block};
    }
    const Status taken = arena_->mark_received(block);
    MEMCHANNEL_CRASH_POINT(kRecvTaken);
    advance(head, first, head_state, next_ref, stash);  // frees `first`, most often the node taken last
    if (taken == Status::kOk && node_holder(claimed) != 0) t_last_taken = {header_, next_ref, claimed};
    if (taken != Status::kOk) [[unlikely]] {
      note_message_lost(true);  // a forged descriptor: the message is gone; serve the next
      continue;
    }
    return {Status::kOk, block};
  }
  arena_->note_corruption();
  return {Status::kCorruptedIndex, {}};
}

// Repair (counted as corruption when it changes something). With the head unchanged from the start of a
// walk to its end, the walk sees the queue as it is: the dummy, then messages, each link stable
// (links change only from 0, at the end). The walk follows links while they lead to this
// channel's nodes in the right state, and stops at the first that does not, or at a node seen
// before (a cycle). Then:
//  - the link out of the last good node is cut (CAS from the bad value to 0), so senders link
//    after it again; the messages past the break were unreachable already and are lost (their
//    blocks stay kQueued and their nodes are not freed: a crash reclaimer frees such nodes only
//    when they are claimed ones);
//  - a tail that was not on the walk is pointed at the last good node (CAS from the value read
//    before the walk);
//  - a head that is not this channel's dummy is replaced by a fresh dummy (CAS), the tail
//    pointed at it, and everything the old head led to is lost;
//  - a cut link of a closed channel is sealed (kLinkClosed) rather than cleared.
// Every change is a CAS from a value the walk saw, so an honest operation that raced the repair
// is never undone: the repair retries instead. Senders that had already read a tail in the lost
// part link after it and their messages are lost too. The counts need no repair: they follow
// from the nodes' numbers (a fresh dummy continues the numbering of the tail it replaces).

Result<BlockHandle> Channel::recv(const WaitSpec& wait, SmallMessage* small) {
  arena_->maybe_reap();
  if (const Status r = repair_reported(); r != Status::kOk) [[unlikely]] return {r, {}};
  if (arena_->truncated() || !arena_->intact(offset_, offset_, offset_)) [[unlikely]] {
    return {Status::kCorruptedLength, {}};
  }
  SmallMessage local;
  SmallMessage* into = small != nullptr ? small : &local;
  Result<BlockHandle> got;
  bool drained = false;
  const Status s = wait_sweeping(
      *arena_, header_->not_empty, header_->receivers_spin_until, wait,
      [&] {
        bool empty = false;
        got = try_dequeue(&empty, &drained, into);  // drained: the dummy's link is sealed
        return got.ok() || !empty || drained || arena_->truncated();  // a sweep found a truncation
      },
      [&] { return counts().queued; });  // messages left for other receivers
  if (s != Status::kOk) return {as_flow(s, Status::kEmpty), {}};
  if (got.ok()) {
    // The message's block (or node, copied already) and the channel are still there (else the
    // message is lost, counted).
    if (!arena_->intact(ref_to_offset(got.value.ref != 0 ? got.value.ref : into->node), offset_, offset_))
        [[unlikely]] {
      return {taken_from_truncated(), {}};
    }
    if (got.value.ref == 0 && small == nullptr) return materialize(local);
    return got;
  }
  if (arena_->truncated()) [[unlikely]] return {Status::kCorruptedLength, {}};
  if (drained) return {Status::kClosed, {}};
  return got;
}

Result<BlockHandle> Channel::materialize(const SmallMessage& small) {
  uint8_t* dst = nullptr;  // from allocate's own values: the block is ours and fresh
  auto block = arena_->allocate(small.length, PayloadLayout{}, Arena::kNoCreatorWait, &dst);
  if (!block.ok()) {
    note_message_lost(false);
    return {Status::kOutOfCapacity, {}};
  }
  if (small.length != 0) std::memcpy(dst, small.bytes, small.length);
  return block;
}

Result<size_t> Channel::recv_many(BlockHandle* out, size_t max, const WaitSpec& wait, SmallMessage* smalls) {
  arena_->maybe_reap();
  if (const Status r = repair_reported(); r != Status::kOk) [[unlikely]] return {r, 0};
  if (arena_->truncated() || !arena_->intact(offset_, offset_, offset_)) [[unlikely]] {
    return {Status::kCorruptedLength, 0};
  }
  if (max == 0) return {Status::kInvalidArgument, 0};
  size_t got = 0;
  bool drained = false;
  Status first = Status::kOk;
  SmallMessage local;
  // On every return: the old dummies this batch freed go back to the node free list together,
  // then, if the head moved, blocked senders are told once (advance skips it for a stash).
  struct BatchEnd {
    Channel& ch;
    const size_t& taken;
    Arena::NodeStash stash;
    ~BatchEnd() {
      const bool moved = taken != 0 || stash.count != 0;
      ch.arena_->push_stash(&stash);
      if (moved) ch.notify_room_if_bounded();
    }
  } freed{*this, got, {}};
  const Status s = wait_sweeping(
      *arena_, header_->not_empty, header_->receivers_spin_until, wait,
      [&] {
        while (got < max) {
          bool empty = false;
          // drained: the dummy's link is sealed
          auto taken = try_dequeue(&empty, &drained, smalls != nullptr ? &smalls[got] : &local, &freed.stash);
          if (taken.ok()) {
            if (taken.value.ref == 0 && smalls == nullptr) {
              auto block = materialize(local);
              if (!block.ok()) {
                if (got == 0) first = block.status;  // else returned with what was taken
                return true;
              }
              taken.value = block.value;
            }
            out[got++] = taken.value;
            continue;
          }
          if (got != 0) return true;  // what there is; an error is met again by the next call
          first = taken.status;
          return !empty || drained || arena_->truncated();  // a sweep found a truncation
        }
        return true;
      },
      [&] { return counts().queued; });  // messages left for other receivers
  if (got != 0) {
    // Every block taken, and the channel, still there (else all of them are lost, counted).
    bool whole = true;
    for (size_t i = 0; i < got; ++i) {
      const BlockRef in = out[i].ref != 0 ? out[i].ref : smalls[i].node;  // materialized: ref != 0
      whole &= arena_->intact(ref_to_offset(in), offset_, offset_);
    }
    if (!whole) [[unlikely]] {
      for (size_t i = 0; i < got; ++i) (void)taken_from_truncated();
      return {Status::kCorruptedLength, 0};
    }
    return {Status::kOk, got};
  }
  if (arena_->truncated()) [[unlikely]] return {Status::kCorruptedLength, 0};
  if (s != Status::kOk) return {as_flow(s, Status::kEmpty), 0};
  if (drained) return {Status::kClosed, 0};
  return {first, 0};
}

void Channel::close() {
  // The flag first: senders check it before they take a node, and a repair seals what it cuts.
  header_->closed.store(1, std::memory_order_seq_cst);
  seal();
  notify_all(header_->not_empty);
  notify_all(header_->not_full);
  notify_all(arena_->space());
  notify_fd(FdKind::kReadable);
  notify_fd(FdKind::kWritable);
}

bool Channel::closed() const { return header_->closed.load(std::memory_order_acquire) != 0; }

Channel::Counts Channel::counts() const {
  Counts c;
  for (int attempt = 0; attempt < kRepairAttempts; ++attempt) {
    const uint64_t head = header_->head.load(std::memory_order_acquire);
    const QueueNode* first = arena_->find_node(tagged_ref(head));
    if (first == nullptr) return c;
    const uint64_t head_seq = first->seq.load(std::memory_order_relaxed);
    const uint64_t head_position = first->position_bytes.load(std::memory_order_relaxed);
    // The last node: the tail, or the few nodes a lagging tail has not reached yet.
    const uint64_t tail = header_->tail.load(std::memory_order_acquire);
    const QueueNode* last = arena_->find_node(tagged_ref(tail));
    if (last == nullptr) return c;
    uint64_t seq = last->seq.load(std::memory_order_relaxed);
    uint64_t position = last->position_bytes.load(std::memory_order_relaxed);
    for (int steps = 0; steps < 8; ++steps) {
      const QueueNode* n = arena_->find_node(tagged_ref(last->next.load(std::memory_order_acquire)));
      if (n == nullptr || !node_in_channel(n->state.load(std::memory_order_acquire)) ||
          n->seq.load(std::memory_order_relaxed) != seq + 1) {
        break;
      }
      last = n;
      seq = n->seq.load(std::memory_order_relaxed);
      position = n->position_bytes.load(std::memory_order_relaxed);
    }
    // The head unchanged from before the dummy's numbers were read to after the last node's:
    // both describe the queue as it was at one moment (a head read earlier than the last node
    // would count messages linked after it moved on, more than the channel ever held).
    const bool still = header_->head.load(std::memory_order_acquire) == head;
    c.sent = seq;
    c.received = head_seq;
    if (seq >= head_seq && position >= head_position && (seq != head_seq || position == head_position) &&
        (maxsize_ == 0 || seq - head_seq <= maxsize_)) {
      c.queued = seq - head_seq;
      c.bytes = position - head_position;
      if (still) return c;
      continue;
    }
    if (!still) continue;
    const Counts walked = walk_counts(head, kMaxQueueSteps);  // numbers no honest queue holds
    c.queued = walked.queued;
    c.bytes = walked.bytes;
    return c;
  }
  // The head kept moving: the last look, within the channel's bounds.
  if (maxsize_ != 0) c.queued = std::min(c.queued, maxsize_);
  if (maxbytes_ != 0) c.bytes = std::min(c.bytes, std::max(maxbytes_, arena_->max_payload()));
  return c;
}

uint64_t Channel::queued() const { return counts().queued; }

ChannelStats Channel::stats() const {
  arena_->maybe_reap();
  (void)arena_->intact(offset_, offset_, offset_);  // a truncation changes messages_lost
  ChannelStats s{};
  const Counts c = counts();
  s.queued = c.queued;
  s.closed = closed();
  s.bytes_queued = c.bytes;
  s.sent = c.sent;
  s.received = c.received;
  s.maxsize = maxsize_;
  s.maxbytes = maxbytes_;
  s.messages_lost = header_->messages_lost.load(std::memory_order_relaxed);
  if (arena_->truncated()) [[unlikely]] s.messages_lost = truncation_loss(c, s.messages_lost);
  return s;
}

Status Channel::linked_into_truncated(QueueNode* node, uint64_t linked_state) {
  // Still exactly as linked: no receiver has claimed it, and none will deliver it (a receiver
  // claiming it now finds the truncation too, and counts it: taken_from_truncated). The sender
  // is told, so it is not lost: it stays counted as queued, which the adjustment takes back.
  // (A node lost with the pages: its sender is told; the count is then an upper bound anyway.)
  if (node == nullptr || node->state.load(std::memory_order_acquire) == linked_state) {
    header_->truncation_adjust.fetch_sub(1, std::memory_order_relaxed);
    return Status::kCorruptedLength;
  }
  return Status::kOk;  // claimed already: delivered, or counted lost by its receiver
}

Status Channel::taken_from_truncated() {
  header_->truncation_adjust.fetch_add(1, std::memory_order_relaxed);
  return Status::kCorruptedLength;
}

uint64_t Channel::truncation_loss(const Counts& c, uint64_t lost) const {
  // The counts come from the channel header and the nodes at both ends of the queue (their
  // numbers): exact while those survive. Lost pages read as zeros (the SIGBUS guard's private
  // pages, or a file grown back), so a magic word tells whether each is still there.
  const auto survives = [&](uint64_t end) {
    const QueueNode* n = arena_->find_node(tagged_ref(end));
    return n != nullptr && node_in_channel(n->state.load(std::memory_order_acquire));
  };
  const bool whole = header_->magic == kChannelMagic && survives(header_->head.load(std::memory_order_acquire)) &&
                     survives(header_->tail.load(std::memory_order_acquire)) && c.sent >= c.received;
  if (whole) {
    const uint64_t total = lost + c.queued + header_->truncation_adjust.load(std::memory_order_relaxed);
    return static_cast<int64_t>(total) < 0 ? 0 : total;
  }
  // Gone with the lost pages: at most what the channel could hold (its private limit, plus a
  // message per holder caught between taking one and finding the truncation), or the arena.
  const uint64_t arena_bound = arena_->capacity() / (2 * kUnit);  // a node and a block each
  return maxsize_ != 0 ? std::min(maxsize_ + kMaxHolders, arena_bound) : arena_bound;
}

}  // namespace memchannel
