// Garbage in arena memory (docs/reliability.md item 8): a peer that writes nonsense into shared
// structures gets a typed error and a bump of corruption_count, nothing crashes or reads out of
// bounds, and valid traffic still flows afterwards. Each test forges one field through the same
// translate() view a peer's garbage would travel through, using the header structs of
// arena.h / block.h / channel.h to find it.
// Runs against every backend in backends.h (plus one test over a hand-made segment 0).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/backend.h"
#include "core/block.h"
#include "core/channel.h"
#include "core/layout.h"
#include "core/status.h"
#include "tests/cpp/backends.h"

namespace memchannel::testing {
namespace {

constexpr uint64_t kPayload = 100;

Status send_value(Channel& ch, uint64_t value, uint64_t bytes = 8) {
  auto h = ch.allocate(bytes, PayloadLayout{}, no_wait());
  if (!h.ok()) return h.status;
  uint8_t* data = ch.arena()->payload(h.value);
  if (data == nullptr) return Status::kCorruptedState;
  std::memcpy(data, &value, sizeof(value));
  const Status s = ch.send(h.value, no_wait());
  if (s != Status::kOk) ch.arena()->release(h.value);
  return s;
}

Result<uint64_t> recv_value(Channel& ch) {
  auto h = ch.recv(no_wait());
  if (!h.ok()) return {h.status, 0};
  uint64_t value = 0;
  const uint8_t* data = ch.arena()->payload(h.value);
  if (data == nullptr) return {Status::kCorruptedLength, 0};
  std::memcpy(&value, data, sizeof(value));
  const Status s = ch.arena()->release(h.value);
  return {s, value};
}

// Receives until a message arrives, letting through up to `tolerated` corruption reports
// (entries the receiver counted and dropped). Returns the first other outcome.
Result<uint64_t> recv_skipping_corruption(Channel& ch, int tolerated = 4) {
  Result<uint64_t> got = recv_value(ch);
  for (int i = 0; i < tolerated && is_corruption(got.status); ++i) got = recv_value(ch);
  return got;
}

// Valid traffic flows: a fresh channel on the arena carries messages in order, and blocks of
// several classes can be allocated and released.
void expect_traffic_flows(const std::shared_ptr<Arena>& arena) {
  auto created = Channel::create(arena, 0, 0, 999);
  ASSERT_EQ(created.status, Status::kOk);
  Channel& ch = *created.value;
  for (uint64_t i = 0; i < 20; ++i) ASSERT_EQ(send_value(ch, i, 8 + i * 50), Status::kOk);
  for (uint64_t i = 0; i < 20; ++i) {
    auto got = recv_value(ch);
    ASSERT_EQ(got.status, Status::kOk);
    EXPECT_EQ(got.value, i);
  }
  EXPECT_EQ(ch.recv(no_wait()).status, Status::kEmpty);
  std::set<BlockRef> refs;
  std::vector<BlockHandle> held;
  for (uint64_t bytes : {0, 1, 100, 1000, 10000, 100000}) {
    for (int i = 0; i < 3; ++i) {
      auto h = arena->allocate(bytes, PayloadLayout{});
      ASSERT_EQ(h.status, Status::kOk) << bytes;
      EXPECT_TRUE(refs.insert(h.value.ref).second) << "block handed out twice";
      held.push_back(h.value);
    }
  }
  for (const BlockHandle& h : held) EXPECT_EQ(arena->release(h), Status::kOk);
}

template <typename Factory>
class CorruptionTest : public BackendTest<Factory> {};
TYPED_TEST_SUITE(CorruptionTest, BackendTypes, BackendNames);

// A node of `arena` with no message and no successor, to be forged into a queue by a test.
static QueueNode* blank_node(Arena& arena, BlockRef ref) {
  QueueNode* n = queue_node(arena, ref);
  n->block.store(0);
  n->generation.store(0);
  n->length.store(0);
  n->next.store(make_tagged(tagged_tag(n->next.load()) + 1, 0));
  return n;
}

// ---- Free lists --------------------------------------------------------------------------------

TYPED_TEST(CorruptionTest, FreeListHeadOutsideArenaIsDroppedAndCounted) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  const uint32_t cls = class_of_payload(kPayload);
  std::atomic<uint64_t>& head = arena_header(*arena)->free_lists[cls].head;
  auto payload_block = arena->allocate(4000, PayloadLayout{});
  ASSERT_TRUE(payload_block.ok());
  const BlockRef inside_payload = payload_block.value.ref + 2;  // zeroed payload, no block magic

  struct Bad {
    const char* what;
    BlockRef ref;
  };
  const Bad bad_refs[] = {
      {"past the end of segment 0", ref_past_segment0(*arena)},
      {"in a segment that does not exist", offset_to_ref(make_offset(7, 4096))},
      {"past the last possible segment", 0xffffffffu},
      {"into the arena header", 1},
      {"into the middle of a payload", inside_payload},
  };
  for (const Bad& bad : bad_refs) {
    SCOPED_TRACE(bad.what);
    auto spare = arena->allocate(kPayload, PayloadLayout{});
    ASSERT_TRUE(spare.ok());
    ASSERT_EQ(arena->release(spare.value), Status::kOk);  // the list is not empty
    head.store(make_tagged(tagged_tag(head.load()) + 1, bad.ref));
    const uint64_t before = corruption_count(*arena);

    auto h = arena->allocate(kPayload, PayloadLayout{});
    ASSERT_EQ(h.status, Status::kOk) << "the allocator falls back to carving";
    EXPECT_NE(h.value.ref, bad.ref);
    EXPECT_GT(corruption_count(*arena), before);
    uint8_t* data = arena->payload(h.value);
    ASSERT_NE(data, nullptr);
    std::memset(data, 0x11, kPayload);
    EXPECT_EQ(arena->release(h.value), Status::kOk);
  }
  EXPECT_EQ(arena->release(payload_block.value), Status::kOk);
  expect_traffic_flows(arena);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
}

TYPED_TEST(CorruptionTest, NodeFreeListHeadOutsideArenaIsDroppedAndCounted) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto spare = arena->allocate_node();
  ASSERT_TRUE(spare.ok());
  arena->free_node(spare.value);
  std::atomic<uint64_t>& head = arena_header(*arena)->node_free;
  head.store(make_tagged(tagged_tag(head.load()) + 1, ref_past_segment0(*arena)));
  const uint64_t before = corruption_count(*arena);
  auto n = arena->allocate_node();
  ASSERT_EQ(n.status, Status::kOk);
  EXPECT_NE(arena->node(n.value), nullptr);
  EXPECT_GT(corruption_count(*arena), before);
  arena->free_node(n.value);
  expect_traffic_flows(arena);
}

// A free-list head forged to point at a block someone holds, whose link points back at itself:
// the allocator must drop the poisoned list rather than spin on it, and keep serving the class.
// (The allocator checks a free-list entry before popping it: it must be free and of the list's
// class while the head still names it; otherwise the list is detached and the class carves.)
TYPED_TEST(CorruptionTest, FreeListCycleThroughAHeldBlockDoesNotPoisonTheClass) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  const uint32_t cls = class_of_payload(kPayload);
  auto held = arena->allocate(kPayload, PayloadLayout{});
  ASSERT_TRUE(held.ok());
  std::atomic<uint64_t>& head = arena_header(*arena)->free_lists[cls].head;
  block_header(*arena, held.value.ref)->next_free.store(held.value.ref);
  head.store(make_tagged(tagged_tag(head.load()) + 1, held.value.ref));
  const uint64_t before = corruption_count(*arena);

  for (int call = 0; call < 3; ++call) {
    SCOPED_TRACE("allocation " + std::to_string(call));
    auto h = arena->allocate(kPayload, PayloadLayout{});
    EXPECT_EQ(h.status, Status::kOk) << "the size class stays unusable after one forged link";
    if (h.ok()) {
      EXPECT_NE(h.value.ref, held.value.ref);
      EXPECT_EQ(arena->release(h.value), Status::kOk);
    }
  }
  EXPECT_GT(corruption_count(*arena), before);
  EXPECT_EQ(arena->view(held.value).status, Status::kOk);  // the holder is unaffected
  EXPECT_EQ(arena->release(held.value), Status::kOk);
}

// The same with a cycle between two free blocks: A -> B -> A. A and B are handed out once each;
// the third pop finds A (now held) at the head again and detaches the list.
TYPED_TEST(CorruptionTest, FreeListCycleBetweenFreeBlocksDoesNotPoisonTheClass) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto a = arena->allocate(kPayload, PayloadLayout{});
  auto b = arena->allocate(kPayload, PayloadLayout{});
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(arena->release(a.value), Status::kOk);
  ASSERT_EQ(arena->release(b.value), Status::kOk);  // list: B -> A
  block_header(*arena, a.value.ref)->next_free.store(b.value.ref);  // A -> B: a cycle
  const uint64_t before = corruption_count(*arena);

  std::set<BlockRef> refs;
  std::vector<BlockHandle> got;
  for (int call = 0; call < 4; ++call) {
    SCOPED_TRACE("allocation " + std::to_string(call));
    auto h = arena->allocate(kPayload, PayloadLayout{});
    EXPECT_EQ(h.status, Status::kOk);
    if (!h.ok()) continue;
    EXPECT_TRUE(refs.insert(h.value.ref).second) << "block handed out twice";
    got.push_back(h.value);
  }
  EXPECT_GT(corruption_count(*arena), before);
  for (const BlockHandle& h : got) EXPECT_EQ(arena->release(h), Status::kOk);
}

// ---- Queue links -------------------------------------------------------------------------------

// The dummy node's `next` forged to point outside the arena: the receiver reports it (typed,
// counted) instead of following it, and the rest of the arena is unaffected.
TYPED_TEST(CorruptionTest, QueueLinkOutsideArenaIsReportedAndCounted) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  QueueNode* dummy = queue_node(*arena, tagged_ref(channel_header(*ch)->head.load()));
  dummy->next.store(make_tagged(tagged_tag(dummy->next.load()) + 1, ref_past_segment0(*arena)));
  const uint64_t before = corruption_count(*arena);
  const Status s = ch->recv(no_wait()).status;
  EXPECT_TRUE(is_corruption(s)) << to_string(s);
  EXPECT_GT(corruption_count(*arena), before);
  expect_traffic_flows(arena);
}

// ... and the channel itself keeps serving: the bad link is dropped (the queue is cut after the
// last good node) and new messages get through.
TYPED_TEST(CorruptionTest, QueueRecoversFromLinkOutsideArena) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  QueueNode* dummy = queue_node(*arena, tagged_ref(channel_header(*ch)->head.load()));
  dummy->next.store(make_tagged(tagged_tag(dummy->next.load()) + 1, ref_past_segment0(*arena)));
  const Status first = ch->recv(no_wait()).status;
  EXPECT_NE(first, Status::kOk);

  EXPECT_EQ(send_value(*ch, 41), Status::kOk);
  auto got = recv_skipping_corruption(*ch);
  EXPECT_EQ(got.status, Status::kOk);
  EXPECT_EQ(got.value, 41u);
}

// A link forged in the middle of a queue: the messages before it are delivered, the receiver
// reports the break, and messages sent afterwards still arrive (those past the break are lost).
TYPED_TEST(CorruptionTest, QueueRecoversFromLinkOutsideArenaMidQueue) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  for (uint64_t i = 1; i <= 3; ++i) ASSERT_EQ(send_value(*ch, i), Status::kOk);
  const BlockRef d = tagged_ref(channel_header(*ch)->head.load());
  const BlockRef n1 = tagged_ref(queue_node(*arena, d)->next.load());
  QueueNode* node1 = queue_node(*arena, n1);
  node1->next.store(make_tagged(tagged_tag(node1->next.load()) + 1, ref_past_segment0(*arena)));
  const uint64_t before = corruption_count(*arena);

  auto one = recv_value(*ch);
  ASSERT_EQ(one.status, Status::kOk);
  EXPECT_EQ(one.value, 1u);
  const Status broken = ch->recv(no_wait()).status;
  EXPECT_TRUE(is_corruption(broken)) << to_string(broken);
  EXPECT_GT(corruption_count(*arena), before);
  expect_traffic_flows(arena);

  EXPECT_EQ(send_value(*ch, 42), Status::kOk);
  auto got = recv_skipping_corruption(*ch);
  EXPECT_EQ(got.status, Status::kOk);
  EXPECT_EQ(got.value, 42u);
}

// A send that runs into a corrupted queue either gets through (the queue was repaired) or fails
// and leaves everything as it was: the block is still the sender's to release, and no admission
// slot or byte count is left taken. (The sender repairs the queue and gets through; a send
// that cannot be linked rolls back: block kSending -> its previous state, count, bytes, node.)
TYPED_TEST(CorruptionTest, SendOntoCorruptedQueueLeavesNoLeak) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena, 0, 0);
  ASSERT_NE(ch, nullptr);
  QueueNode* dummy = queue_node(*arena, tagged_ref(channel_header(*ch)->head.load()));
  dummy->next.store(make_tagged(tagged_tag(dummy->next.load()) + 1, ref_past_segment0(*arena)));

  auto h = ch->allocate(64, PayloadLayout{}, no_wait());
  ASSERT_TRUE(h.ok());
  const Status s = ch->send(h.value, no_wait());
  if (s == Status::kOk) {
    auto got = ch->recv(no_wait());
    if (is_corruption(got.status)) got = ch->recv(no_wait());  // the repair, reported once
    EXPECT_EQ(got.status, Status::kOk);
    if (got.ok()) {
      EXPECT_EQ(arena->release(got.value), Status::kOk);
    }
  } else {
    EXPECT_TRUE(is_corruption(s)) << to_string(s);
    EXPECT_EQ(arena->release(h.value), Status::kOk) << "the refused block is not the sender's any more";
    EXPECT_EQ(ch->queued(), 0u) << "the failed send still holds an admission slot";
    EXPECT_EQ(ch->stats().bytes_queued, 0u);
  }
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
}

// The tail forged to point outside the arena: typed and counted (a head before the tail with no
// successor cannot happen honestly), and the tail is pointed back at the last node.
TYPED_TEST(CorruptionTest, QueueTailOutsideArenaIsCountedAndRepaired) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  std::atomic<uint64_t>& tail = channel_header(*ch)->tail;
  tail.store(make_tagged(tagged_tag(tail.load()) + 1, ref_past_segment0(*arena)));
  const uint64_t before = corruption_count(*arena);
  const Status s = ch->recv(no_wait()).status;
  EXPECT_TRUE(is_corruption(s) || s == Status::kEmpty) << to_string(s);
  EXPECT_GT(corruption_count(*arena), before);
  expect_traffic_flows(arena);

  EXPECT_EQ(send_value(*ch, 43), Status::kOk);
  auto got = recv_skipping_corruption(*ch);
  EXPECT_EQ(got.status, Status::kOk);
  EXPECT_EQ(got.value, 43u);
}

// A forged link to a node that was never admitted (a valid node from the arena's pool): the
// receiver drops its bogus descriptor, but must not decrement the admission count below zero.
// (The stray node is kNodeHeld, not a message of this channel: the link is cut before anything
// is claimed, and the count never drops below zero into the closed bit.)
TYPED_TEST(CorruptionTest, UnadmittedQueueEntryDoesNotUnderflowTheCount) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  auto stray = arena->allocate_node();
  ASSERT_TRUE(stray.ok());
  blank_node(*arena, stray.value);
  QueueNode* dummy = queue_node(*arena, tagged_ref(channel_header(*ch)->head.load()));
  dummy->next.store(make_tagged(tagged_tag(dummy->next.load()) + 1, stray.value));
  const uint64_t before = corruption_count(*arena);

  const Status s = ch->recv(no_wait()).status;
  EXPECT_NE(s, Status::kOk);
  EXPECT_GT(corruption_count(*arena), before);
  EXPECT_FALSE(ch->closed()) << "a forged entry closed the channel (count underflowed)";
  EXPECT_LE(ch->queued(), 1u);
  EXPECT_EQ(send_value(*ch, 44), Status::kOk);
  auto got = recv_skipping_corruption(*ch);
  EXPECT_EQ(got.status, Status::kOk);
  EXPECT_EQ(got.value, 44u);
}

// A forged link back to an already dequeued (freed) node makes a cycle. The receiver must stop,
// count it, and never free a node twice. (A node's state says where it is: the freed dummy is
// kNodeFree, so the link to it is cut; and every free is a CAS from the exact state, so a node
// can never go back on the free list while it is there.)
TYPED_TEST(CorruptionTest, QueueCycleThroughAFreedNodeNeverFreesANodeTwice) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  const BlockRef d = tagged_ref(channel_header(*ch)->head.load());
  ASSERT_EQ(send_value(*ch, 1), Status::kOk);
  const BlockRef n1 = tagged_ref(queue_node(*arena, d)->next.load());
  QueueNode* node1 = queue_node(*arena, n1);
  node1->next.store(make_tagged(tagged_tag(node1->next.load()) + 1, d));  // N1 -> D (freed below)
  auto one = recv_value(*ch);  // frees D, the old dummy
  ASSERT_EQ(one.status, Status::kOk);
  EXPECT_EQ(one.value, 1u);
  const uint64_t before = corruption_count(*arena);

  const Status s = ch->recv(no_wait()).status;
  EXPECT_NE(s, Status::kOk);
  EXPECT_GT(corruption_count(*arena), before);
  EXPECT_FALSE(ch->closed()) << "the count underflowed into the closed bit";

  std::set<BlockRef> nodes;
  std::vector<BlockRef> held;
  for (int i = 0; i < 8; ++i) {
    auto n = arena->allocate_node();
    ASSERT_TRUE(n.ok());
    EXPECT_TRUE(nodes.insert(n.value).second) << "node " << n.value << " handed out twice";
    held.push_back(n.value);
  }
  for (BlockRef r : held) arena->free_node(r);
}

// A stray node forged to look like a message of this channel (kNodeLinked with the channel's tag)
// but never sent, numbered far off: not the dummy's successor (seq), so the link to it is cut
// (counted, reported once), the counts never show the forged number, and the channel keeps
// counting and stays open.
TYPED_TEST(CorruptionTest, ForgedLinkedEntryLeavesTheCountsSane) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  auto stray = arena->allocate_node();
  ASSERT_TRUE(stray.ok());
  QueueNode* n = blank_node(*arena, stray.value);
  n->state.store(with_node_kind(n->state.load(), channel_tag(ch->offset()), 0, kNodeLinked));
  n->seq.store(1ull << 40);
  ChannelHeader* h = channel_header(*ch);
  QueueNode* dummy = queue_node(*arena, tagged_ref(h->head.load()));
  dummy->next.store(make_tagged(tagged_tag(dummy->next.load()) + 1, stray.value));
  h->tail.store(make_tagged(tagged_tag(h->tail.load()) + 1, stray.value));
  const uint64_t before = corruption_count(*arena);

  const Status s = ch->recv(no_wait()).status;
  EXPECT_TRUE(is_corruption(s)) << to_string(s);
  EXPECT_EQ(ch->recv(no_wait()).status, Status::kEmpty) << "the forged entry is cut, nothing else is queued";
  EXPECT_GE(corruption_count(*arena), before + 1) << "a bad link";
  EXPECT_EQ(ch->stats().messages_lost, 0u) << "nothing that was sent was lost";
  EXPECT_FALSE(ch->closed());
  EXPECT_EQ(ch->queued(), 0u);
  EXPECT_EQ(send_value(*ch, 45), Status::kOk);
  EXPECT_EQ(ch->queued(), 1u);
  auto got = recv_value(*ch);
  EXPECT_EQ(got.status, Status::kOk);
  EXPECT_EQ(got.value, 45u);
  EXPECT_EQ(ch->queued(), 0u);
}

// ---- Queue descriptors -------------------------------------------------------------------------

// A node whose block ref or generation is garbage: the receiver counts and skips the entry and
// delivers the next message; exactly-once holds for every other message.
TYPED_TEST(CorruptionTest, ForgedDescriptorsAreSkippedAndCounted) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto spare = arena->allocate(kPayload, PayloadLayout{});  // a block someone holds
  ASSERT_TRUE(spare.ok());
  auto payload_block = arena->allocate(4000, PayloadLayout{});
  ASSERT_TRUE(payload_block.ok());

  const BlockRef past_segment = ref_past_segment0(*arena);
  const BlockRef into_payload = payload_block.value.ref + 3;
  const BlockHandle other_holder = spare.value;
  struct Forge {
    const char* what;
    std::function<void(QueueNode&)> apply;
  };
  const std::vector<Forge> forges = {
      {"block ref past the segment", [&](QueueNode& n) { n.block.store(past_segment); }},
      {"block ref zero", [](QueueNode& n) { n.block.store(0); }},
      {"block ref into a payload", [&](QueueNode& n) { n.block.store(into_payload); }},
      {"stale generation", [](QueueNode& n) { n.generation.store(n.generation.load() - 1); }},
      {"future generation", [](QueueNode& n) { n.generation.store(n.generation.load() + 5); }},
      {"a block another holder owns", [&](QueueNode& n) {
         n.block.store(other_holder.ref);
         n.generation.store(other_holder.generation);
       }},
  };
  for (const Forge& f : forges) {
    SCOPED_TRACE(f.what);
    auto ch = this->make_channel(arena);
    ASSERT_NE(ch, nullptr);
    for (uint64_t i = 1; i <= 3; ++i) ASSERT_EQ(send_value(*ch, i), Status::kOk);
    const BlockRef d = tagged_ref(channel_header(*ch)->head.load());
    f.apply(*queue_node(*arena, tagged_ref(queue_node(*arena, d)->next.load())));
    const uint64_t before = corruption_count(*arena);

    auto two = recv_skipping_corruption(*ch);
    ASSERT_EQ(two.status, Status::kOk);
    EXPECT_EQ(two.value, 2u);
    EXPECT_GT(corruption_count(*arena), before);
    EXPECT_EQ(ch->stats().messages_lost, 1u) << "the skipped message is counted as lost";
    EXPECT_TRUE(is_corruption(ch->recv(no_wait()).status)) << "and reported once to the next call";
    auto three = recv_value(*ch);
    ASSERT_EQ(three.status, Status::kOk);
    EXPECT_EQ(three.value, 3u);
    EXPECT_EQ(ch->recv(no_wait()).status, Status::kEmpty);
    EXPECT_EQ(ch->queued(), 0u);
    EXPECT_EQ(send_value(*ch, 4), Status::kOk);
    EXPECT_EQ(recv_value(*ch).value, 4u);
  }
  EXPECT_EQ(arena->view(spare.value).status, Status::kOk);  // never delivered to anyone
  EXPECT_EQ(arena->release(spare.value), Status::kOk);
  EXPECT_EQ(arena->release(payload_block.value), Status::kOk);
  expect_traffic_flows(arena);
}

// A descriptor duplicated onto another queued message: that message is delivered once only.
TYPED_TEST(CorruptionTest, DuplicatedDescriptorIsDeliveredOnce) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  for (uint64_t i = 1; i <= 3; ++i) ASSERT_EQ(send_value(*ch, i), Status::kOk);
  const BlockRef d = tagged_ref(channel_header(*ch)->head.load());
  QueueNode* first = queue_node(*arena, tagged_ref(queue_node(*arena, d)->next.load()));
  QueueNode* second = queue_node(*arena, tagged_ref(first->next.load()));
  first->block.store(second->block.load());
  first->generation.store(second->generation.load());
  const uint64_t before = corruption_count(*arena);

  std::vector<uint64_t> values;
  for (;;) {
    auto got = recv_value(*ch);
    if (got.status == Status::kEmpty) break;
    if (got.ok()) values.push_back(got.value);
    else ASSERT_TRUE(is_corruption(got.status)) << to_string(got.status);
  }
  EXPECT_EQ(values, (std::vector<uint64_t>{2, 3}));
  EXPECT_GT(corruption_count(*arena), before);
  EXPECT_EQ(ch->queued(), 0u);
  EXPECT_EQ(send_value(*ch, 4), Status::kOk);
  EXPECT_EQ(recv_value(*ch).value, 4u);
}

// A bounded channel whose last message was renumbered past maxsize: the sender can tell no honest
// queue looks like that (the link admits at most maxsize), so it reports corruption rather than
// waiting for room that never comes, counts the messages by walking the queue, and gets in.
// Once the receiver has cut the forged link the numbers add up again.
TYPED_TEST(CorruptionTest, QueuedCountPastMaxsizeIsReported) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena, 4);
  ASSERT_NE(ch, nullptr);
  ASSERT_EQ(send_value(*ch, 1), Status::kOk);
  ChannelHeader* h = channel_header(*ch);
  QueueNode* last = queue_node(*arena, tagged_ref(h->tail.load()));
  last->seq.fetch_add(1000);
  const uint64_t before = corruption_count(*arena);
  EXPECT_EQ(send_value(*ch, 2), Status::kOk);
  EXPECT_GT(corruption_count(*arena), before);
  EXPECT_LE(ch->queued(), 4u);  // walked, never the forged 1001
  // The renumbered node is not the dummy's successor (seq): the link to it counts as forged, and
  // the two messages past it are lost, counted, and reported once.
  EXPECT_TRUE(is_corruption(ch->recv(no_wait()).status));
  EXPECT_EQ(ch->stats().messages_lost, 2u);
  EXPECT_EQ(ch->recv(no_wait()).status, Status::kEmpty);
  EXPECT_EQ(ch->queued(), 0u);
  for (uint64_t i = 0; i < 4; ++i) EXPECT_EQ(send_value(*ch, 10 + i), Status::kOk);
  EXPECT_EQ(send_value(*ch, 99), Status::kFull);  // the bound holds again
  EXPECT_EQ(ch->queued(), 4u);
}

// ---- Block headers and metadata ----------------------------------------------------------------

TYPED_TEST(CorruptionTest, BlockLengthBeyondItsClassIsRefused) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  const uint32_t cls = class_of_payload(kPayload);
  const uint64_t room = class_bytes(cls) - sizeof(BlockHeader);
  for (uint64_t forged : {room + 1, class_bytes(cls), uint64_t{1} << 40,
                          std::numeric_limits<uint64_t>::max(),
                          std::numeric_limits<uint64_t>::max() - 62}) {
    SCOPED_TRACE(forged);
    auto h = ch->allocate(kPayload, PayloadLayout{}, no_wait());
    ASSERT_TRUE(h.ok());
    BlockHeader* hdr = block_header(*arena, h.value.ref);
    hdr->length.store(forged);
    const uint64_t before = corruption_count(*arena);
    EXPECT_EQ(arena->view(h.value).status, Status::kCorruptedLength);
    EXPECT_EQ(arena->payload(h.value), nullptr);
    EXPECT_GT(corruption_count(*arena), before);
    const Status s = ch->send(h.value, no_wait());
    EXPECT_NE(s, Status::kOk);
    EXPECT_EQ(ch->queued(), 0u);
    EXPECT_EQ(arena->release(h.value), Status::kOk);
  }
  // Forged while queued: the receiver gets the block, sees the bad length, releases it.
  auto h = ch->allocate(kPayload, PayloadLayout{}, no_wait());
  ASSERT_TRUE(h.ok());
  ASSERT_EQ(ch->send(h.value, no_wait()), Status::kOk);
  block_header(*arena, h.value.ref)->length.store(room + 64);
  auto got = ch->recv(no_wait());
  ASSERT_EQ(got.status, Status::kOk);
  EXPECT_EQ(arena->view(got.value).status, Status::kCorruptedLength);
  EXPECT_EQ(arena->release(got.value), Status::kOk);

  // Forged metadata sizes.
  for (uint32_t meta : {32u, static_cast<uint32_t>(room + 64), 0xffffffc0u}) {
    SCOPED_TRACE(meta);
    auto m = arena->allocate(kPayload, PayloadLayout{});
    ASSERT_TRUE(m.ok());
    block_header(*arena, m.value.ref)->meta_bytes.store(meta);
    EXPECT_EQ(arena->view(m.value).status, Status::kCorruptedLength);
    EXPECT_EQ(arena->release(m.value), Status::kOk);
  }
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  expect_traffic_flows(arena);
  // The recycled blocks describe themselves correctly again.
  auto again = arena->allocate(kPayload, PayloadLayout{});
  ASSERT_TRUE(again.ok());
  auto v = arena->view(again.value);
  ASSERT_EQ(v.status, Status::kOk);
  EXPECT_EQ(v.value.length, kPayload);
  EXPECT_EQ(arena->release(again.value), Status::kOk);
}

TYPED_TEST(CorruptionTest, ForgedMetadataIsRefused) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  const int64_t shape[2] = {4, 8};
  PayloadLayout layout;
  layout.itemsize = 4;
  layout.ndim = 2;
  layout.shape = shape;
  layout.format = "<i";
  auto h = arena->allocate(4 * 8 * 4, layout);
  ASSERT_EQ(h.status, Status::kOk);
  ASSERT_EQ(arena->view(h.value).status, Status::kOk);
  uint8_t* meta = reinterpret_cast<uint8_t*>(block_header(*arena, h.value.ref)) + sizeof(BlockHeader);
  const uint32_t meta_bytes = block_header(*arena, h.value.ref)->meta_bytes.load();
  const std::vector<uint8_t> original(meta, meta + meta_bytes);

  auto set_prefix = [&](uint32_t itemsize, uint16_t ndim, uint16_t format_len) {
    const BlockMetaPrefix p{itemsize, ndim, format_len};
    std::memcpy(meta, &p, sizeof(p));
  };
  auto set_shape = [&](int64_t d0, int64_t d1) {
    std::memcpy(meta + sizeof(BlockMetaPrefix), &d0, 8);
    std::memcpy(meta + sizeof(BlockMetaPrefix) + 8, &d1, 8);
  };
  struct Case {
    const char* what;
    std::function<void()> forge;
  };
  const int64_t big = int64_t{1} << 40;
  const std::vector<Case> cases = {
      {"ndim 33", [&] { set_prefix(4, kMaxNdim + 1, 2); }},
      {"ndim 65535", [&] { set_prefix(4, 0xffff, 2); }},
      {"ndim beyond the metadata", [&] { set_prefix(4, 8, 2); }},
      {"shape product below length", [&] { set_shape(4, 7); }},
      {"shape product above length", [&] { set_shape(5, 8); }},
      {"negative dimension", [&] { set_shape(-4, -8); }},
      {"shape product overflows", [&] { set_shape(big, big); }},
      {"itemsize disagrees", [&] { set_prefix(8, 2, 2); }},
      {"itemsize zero", [&] { set_prefix(0, 2, 2); }},
      {"itemsize product overflows", [&] { set_prefix(0xffffffffu, 2, 2); set_shape(big, big); }},
      {"format length zero", [&] { set_prefix(4, 2, 0); }},
      {"format length beyond the metadata", [&] { set_prefix(4, 2, 1000); }},
      {"format length beyond the maximum", [&] { set_prefix(4, 2, kMaxFormatLen + 1); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::memcpy(meta, original.data(), original.size());
    c.forge();
    const uint64_t before = corruption_count(*arena);
    EXPECT_EQ(arena->view(h.value).status, Status::kCorruptedLength);
    EXPECT_EQ(arena->payload(h.value), nullptr);
    EXPECT_GT(corruption_count(*arena), before);
  }
  std::memcpy(meta, original.data(), original.size());
  auto v = arena->view(h.value);
  ASSERT_EQ(v.status, Status::kOk);
  EXPECT_EQ(v.value.ndim, 2u);
  EXPECT_EQ(v.value.format_view(), "<i");
  EXPECT_EQ(arena->release(h.value), Status::kOk);
  expect_traffic_flows(arena);
}

// ---- Releases of blocks never handed out -------------------------------------------------------

TYPED_TEST(CorruptionTest, ReleaseOfABlockNeverHandedOutIsRefused) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  auto big = arena->allocate(4000, PayloadLayout{});
  ASSERT_TRUE(big.ok());
  auto freed = arena->allocate(kPayload, PayloadLayout{});
  ASSERT_TRUE(freed.ok());
  ASSERT_EQ(arena->release(freed.value), Status::kOk);
  auto node = arena->allocate_node();
  ASSERT_TRUE(node.ok());
  const BlockRef beyond_carve = offset_to_ref(arena_header(*arena)->carve.load()) + 10;

  struct Case {
    const char* what;
    BlockHandle h;
    Status expected;
  };
  const Case cases[] = {
      {"ref zero", {0, 1}, Status::kCorruptedOffset},
      {"past the segment", {ref_past_segment0(*arena), 1}, Status::kCorruptedOffset},
      {"in a segment that does not exist", {offset_to_ref(make_offset(9, 0)), 1}, Status::kCorruptedOffset},
      {"inside a payload", {big.value.ref + 5, big.value.generation}, Status::kCorruptedOffset},
      {"a queue node", {node.value, 0}, Status::kCorruptedOffset},
      {"never carved", {beyond_carve, 1}, Status::kCorruptedOffset},
      {"a free block", freed.value, Status::kDoubleRelease},
      {"a free block, guessed generation", {freed.value.ref, freed.value.generation + 1}, Status::kDoubleRelease},
      {"a held block, wrong generation", {big.value.ref, big.value.generation + 1}, Status::kDoubleRelease},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    const uint64_t before = corruption_count(*arena);
    EXPECT_EQ(arena->release(c.h), c.expected);
    EXPECT_GT(corruption_count(*arena), before);
  }
  // A queued block released by someone who kept its handle: refused, and still delivered.
  auto queued = ch->allocate(kPayload, PayloadLayout{}, no_wait());
  ASSERT_TRUE(queued.ok());
  std::memcpy(arena->payload(queued.value), "queued!", 8);
  ASSERT_EQ(ch->send(queued.value, no_wait()), Status::kOk);
  const uint64_t before = corruption_count(*arena);
  EXPECT_EQ(arena->release(queued.value), Status::kCorruptedState);
  EXPECT_GT(corruption_count(*arena), before);
  auto got = ch->recv(no_wait());
  ASSERT_EQ(got.status, Status::kOk);
  EXPECT_EQ(std::memcmp(arena->payload(got.value), "queued!", 8), 0);
  EXPECT_EQ(arena->release(got.value), Status::kOk);

  // The refused releases changed nothing: the held block is intact, counters are exact.
  EXPECT_EQ(arena->view(big.value).status, Status::kOk);
  EXPECT_EQ(arena->stats().blocks_in_use, 1u);
  EXPECT_EQ(arena->release(big.value), Status::kOk);
  arena->free_node(node.value);
  EXPECT_EQ(arena->stats().blocks_in_use, 0u);
  EXPECT_EQ(arena->stats().bytes_in_use, 0u);
  expect_traffic_flows(arena);
}

// A channel header lives in a block the arena owns (kBlockFlagArena); no holder was ever handed
// it. A release forged with its ref and generation (both readable in arena memory) must be
// refused and counted, or the live header goes back on a free list and is handed out as a
// message buffer. Today release() ignores the flag and frees it.
TYPED_TEST(CorruptionTest, ReleaseOfAChannelHeaderBlockIsRefused) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  const BlockRef ref = offset_to_ref(ch->offset() - sizeof(BlockHeader));
  BlockHeader* hdr = block_header(*arena, ref);
  ASSERT_NE(hdr, nullptr);
  ASSERT_NE(hdr->flags.load() & kBlockFlagArena, 0u);
  const BlockHandle forged{ref, state_generation(hdr->state.load())};
  const uint64_t before = corruption_count(*arena);

  EXPECT_NE(arena->release(forged), Status::kOk);
  EXPECT_GT(corruption_count(*arena), before);
  EXPECT_EQ(arena->census().arena_cells, 1u) << "the live channel header was freed";
  // The header is not handed out again, and the channel still works.
  std::vector<BlockHandle> held;
  for (int i = 0; i < 8; ++i) {
    auto h = arena->allocate(sizeof(ChannelHeader), PayloadLayout{});
    ASSERT_TRUE(h.ok());
    EXPECT_NE(h.value.ref, ref) << "a live channel header was handed out as a buffer";
    held.push_back(h.value);
  }
  for (const BlockHandle& h : held) arena->release(h);
  EXPECT_EQ(send_value(*ch, 46), Status::kOk);
  EXPECT_EQ(recv_value(*ch).value, 46u);
}

// The same block sent as a message: refused, and the header stays where it is.
TYPED_TEST(CorruptionTest, SendOfAChannelHeaderBlockIsRefused) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  auto other = this->make_channel(arena);
  ASSERT_TRUE(ch && other);
  const BlockRef ref = offset_to_ref(other->offset() - sizeof(BlockHeader));
  const BlockHandle forged{ref, state_generation(block_header(*arena, ref)->state.load())};
  EXPECT_NE(ch->send(forged, no_wait()), Status::kOk);
  EXPECT_EQ(ch->queued(), 0u);
  EXPECT_EQ(ch->recv(no_wait()).status, Status::kEmpty);
  EXPECT_EQ(arena->census().arena_cells, 2u);
  EXPECT_EQ(send_value(*other, 47), Status::kOk);
  EXPECT_EQ(recv_value(*other).value, 47u);
}

TYPED_TEST(CorruptionTest, GarbageSizeClassIsRefused) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto h = arena->allocate(kPayload, PayloadLayout{});
  ASSERT_TRUE(h.ok());
  BlockHeader* hdr = block_header(*arena, h.value.ref);
  const uint32_t cls = hdr->size_class.load();
  for (uint32_t forged : {kNumClasses, kNumClasses + 1000, 0xffffffffu,
                          kNumClasses - 1 /* a block running past the segment */}) {
    SCOPED_TRACE(forged);
    hdr->size_class.store(forged);
    const uint64_t before = corruption_count(*arena);
    EXPECT_EQ(arena->release(h.value), Status::kCorruptedOffset);
    EXPECT_EQ(arena->view(h.value).status, Status::kCorruptedOffset);
    EXPECT_GT(corruption_count(*arena), before);
  }
  hdr->size_class.store(cls);
  EXPECT_EQ(arena->release(h.value), Status::kOk);
  expect_traffic_flows(arena);
}

// ---- Channel headers ---------------------------------------------------------------------------

TYPED_TEST(CorruptionTest, ChannelOpenRefusesWrongMagicVersionAndOffset) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  ChannelHeader* hdr = channel_header(*ch);
  auto data = arena->allocate(4000, PayloadLayout{});
  ASSERT_TRUE(data.ok());

  hdr->magic = 0x0badc0ffee0ddf00ull;
  EXPECT_EQ(Channel::open(arena, ch->offset()).status, Status::kBadMagic);
  hdr->magic = kChannelMagic;
  hdr->version = kChannelLayoutVersion + 1;
  EXPECT_EQ(Channel::open(arena, ch->offset()).status, Status::kVersionMismatch);
  hdr->version = kChannelLayoutVersion;
  hdr->maxsize = kMaxChannelSize + 5;
  EXPECT_EQ(Channel::open(arena, ch->offset()).status, Status::kCorruptedLength);
  hdr->maxsize = 0;
  EXPECT_EQ(Channel::open(arena, ref_to_offset(ref_past_segment0(*arena))).status,
            Status::kCorruptedOffset);
  EXPECT_EQ(Channel::open(arena, make_offset(0, arena_header(*arena)->segment_bytes[0].load() - 8)).status,
            Status::kCorruptedOffset);  // straddles the end of the segment
  EXPECT_EQ(Channel::open(arena, make_offset(12, 0)).status, Status::kCorruptedOffset);
  EXPECT_EQ(Channel::open(arena, ref_to_offset(data.value.ref) + sizeof(BlockHeader)).status,
            Status::kBadMagic);  // a data block is not a channel
  EXPECT_EQ(arena->release(data.value), Status::kOk);

  // Restored, the channel opens and carries traffic through both handles.
  auto opened = Channel::open(arena, ch->offset());
  ASSERT_EQ(opened.status, Status::kOk);
  EXPECT_EQ(send_value(*opened.value, 5), Status::kOk);
  EXPECT_EQ(recv_value(*ch).value, 5u);
  expect_traffic_flows(arena);
}

// docs/reliability.md item 8: "a wrong magic or version: each case returns its typed error and bumps
// a corruption counter". Channel::open returns the typed errors but never counts them.
TYPED_TEST(CorruptionTest, ChannelOpenCountsWrongMagicAndVersion) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  ChannelHeader* hdr = channel_header(*ch);

  uint64_t before = corruption_count(*arena);
  hdr->magic = 0x0badc0ffee0ddf00ull;
  EXPECT_EQ(Channel::open(arena, ch->offset()).status, Status::kBadMagic);
  EXPECT_GT(corruption_count(*arena), before) << "wrong magic not counted";
  hdr->magic = kChannelMagic;

  before = corruption_count(*arena);
  hdr->version = kChannelLayoutVersion + 7;
  EXPECT_EQ(Channel::open(arena, ch->offset()).status, Status::kVersionMismatch);
  EXPECT_GT(corruption_count(*arena), before) << "wrong version not counted";
  hdr->version = kChannelLayoutVersion;

  before = corruption_count(*arena);
  EXPECT_EQ(Channel::open(arena, ref_to_offset(ref_past_segment0(*arena))).status,
            Status::kCorruptedOffset);
  EXPECT_GT(corruption_count(*arena), before) << "offset outside the arena not counted";
}

// Offsets off the 64-byte grid (found by the arena fuzzer): a channel header there would have
// misaligned atomics, a cursor there would carve cells whose BlockRef names another cell.
TYPED_TEST(CorruptionTest, OffGridChannelOffsetIsRefusedAndForgedCarveCursorRepaired) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  auto ch = this->make_channel(arena);
  ASSERT_NE(ch, nullptr);
  uint64_t before = corruption_count(*arena);
  for (Offset delta : {Offset{1}, Offset{8}, Offset{32}, Offset{63}}) {
    EXPECT_EQ(Channel::open(arena, ch->offset() + delta).status, Status::kCorruptedOffset) << delta;
  }
  EXPECT_GE(corruption_count(*arena), before + 4);

  std::atomic<uint64_t>& carve = arena_header(*arena)->carve;
  const uint64_t cursor = carve.load();
  const uint64_t header_bytes = arena_header(*arena)->header_bytes;
  // Off the grid, and (found by the fuzzer too) on the grid but inside the arena header, where
  // a carved "block" would overwrite the header and get BlockRef 0, which means none; behind
  // the cursor (at a carved cell), and past the segments. Never followed: the cursor is re-derived
  // from the cells (counted), at the first never-carved cell, and the allocation goes on.
  std::vector<BlockHandle> held;
  for (uint64_t forged : {cursor + 8, uint64_t{0}, header_bytes - kUnit, header_bytes, make_offset(9, 0)}) {
    SCOPED_TRACE(forged);
    carve.store(forged);
    before = corruption_count(*arena);
    auto h = arena->allocate(50000, PayloadLayout{});  // held: every one is carved
    ASSERT_EQ(h.status, Status::kOk);
    EXPECT_GT(corruption_count(*arena), before);
    EXPECT_GE(ref_to_offset(h.value.ref), cursor) << "a carved cell was handed out again";
    held.push_back(h.value);
  }
  for (const BlockHandle& h : held) EXPECT_EQ(arena->release(h), Status::kOk);
  expect_traffic_flows(arena);
}

// A carving word (a carve in progress) forged at the cursor with a size past the segment: the
// next carver clears it instead of moving the cursor out of bounds or waiting on it.
TYPED_TEST(CorruptionTest, ForgedCarvingWordAtTheCursorIsCleared) {
  auto arena = this->make_arena();
  ASSERT_NE(arena, nullptr);
  const uint64_t cursor = arena_header(*arena)->carve.load();
  auto* word = reinterpret_cast<std::atomic<uint64_t>*>(arena->translate(cursor, kUnit) + kCellWordOffset);
  word->store(make_carving_word(3, kCarvingMaxUnits));
  const uint64_t before = corruption_count(*arena);
  auto h = arena->allocate(50000, PayloadLayout{});
  ASSERT_EQ(h.status, Status::kOk);
  EXPECT_GT(corruption_count(*arena), before);
  EXPECT_EQ(arena->release(h.value), Status::kOk);
  EXPECT_EQ(arena->census().carving_cells, 0u);
  expect_traffic_flows(arena);
}

// ---- Arena segment 0 (hand-made) ---------------------------------------------------------------

// A backend that serves one hand-made segment 0, as a peer (or a fuzzer) might have written it.
class ForgedSegmentBackend final : public MemoryBackend {
 public:
  explicit ForgedSegmentBackend(const std::vector<uint8_t>& bytes)
      : size_(bytes.size()), memory_(new (std::align_val_t{64}) uint8_t[bytes.size()]) {
    std::memcpy(memory_.get(), bytes.data(), bytes.size());
  }
  Result<uint8_t*> create_segment(uint32_t, uint64_t) override { return {Status::kSystemError, nullptr}; }
  Result<uint8_t*> map_segment(uint32_t index, uint64_t bytes) override {
    if (index != 0 || bytes > size_) return {Status::kCorruptedOffset, nullptr};
    return {Status::kOk, memory_.get()};
  }
  ArenaHeader& header() { return *reinterpret_cast<ArenaHeader*>(memory_.get()); }

 private:
  struct AlignedDelete {
    void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t{64}); }
  };
  uint64_t size_;
  std::unique_ptr<uint8_t[], AlignedDelete> memory_;
};

constexpr uint64_t kCapacity = 64 * 1024;  // segment 0 is the whole arena

TYPED_TEST(CorruptionTest, ArenaAttachRefusesForgedSegmentZero) {
  auto arena = this->make_arena(kCapacity);
  ASSERT_NE(arena, nullptr);
  const uint8_t* seg0 = arena->translate(0, kCapacity);
  ASSERT_NE(seg0, nullptr);
  const std::vector<uint8_t> good(seg0, seg0 + kCapacity);

  auto attach = [&](const std::function<void(ArenaHeader&)>& forge, uint64_t seg0_bytes = kCapacity) {
    auto backend = std::make_unique<ForgedSegmentBackend>(good);
    forge(backend->header());
    return Arena::attach(std::move(backend), seg0_bytes).status;
  };
  EXPECT_EQ(attach([](ArenaHeader&) {}), Status::kOk);
  EXPECT_EQ(attach([](ArenaHeader& h) { h.ready.store(0); }), Status::kNotReady);
  EXPECT_EQ(attach([](ArenaHeader& h) { h.magic = 0x1234; }), Status::kBadMagic);
  EXPECT_EQ(attach([](ArenaHeader& h) { h.version = kArenaLayoutVersion + 1; }), Status::kVersionMismatch);
  EXPECT_EQ(attach([](ArenaHeader& h) { h.header_bytes += 64; }), Status::kVersionMismatch);
  EXPECT_EQ(attach([](ArenaHeader& h) { h.capacity = kCapacity - 64; }), Status::kCorruptedLength);
  EXPECT_EQ(attach([](ArenaHeader& h) { h.capacity = ~0ull; }), Status::kCorruptedLength);
  EXPECT_EQ(attach([](ArenaHeader& h) { h.segment_bytes[0].store(kCapacity * 2); }), Status::kCorruptedLength);
  EXPECT_EQ(attach([](ArenaHeader&) {}, 16), Status::kCorruptedLength);
  EXPECT_EQ(attach([](ArenaHeader&) {}, kCapacity * 2), Status::kCorruptedOffset);  // longer than the mapping

  // A copy that attaches serves allocations, and a forged free-list head in it is survived.
  auto attached = Arena::attach(std::make_unique<ForgedSegmentBackend>(good), kCapacity);
  ASSERT_EQ(attached.status, Status::kOk);
  Arena& copy = *attached.value;
  EXPECT_EQ(copy.capacity(), kCapacity);
  std::atomic<uint64_t>& head = arena_header(copy)->free_lists[class_of_payload(kPayload)].head;
  head.store(make_tagged(7, 0x7fffffffu));
  auto h = copy.allocate(kPayload, PayloadLayout{});
  ASSERT_EQ(h.status, Status::kOk);
  EXPECT_GT(corruption_count(copy), 0u);
  EXPECT_EQ(copy.release(h.value), Status::kOk);
}

}  // namespace
}  // namespace memchannel::testing
