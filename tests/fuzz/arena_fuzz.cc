// Fuzz target (docs/reliability.md item 9): arena memory filled with fuzzer bytes goes through the
// path a peer takes when it joins an arena, and nothing may crash, hang or touch memory
// outside the segments (built with ASan+UBSan, so an out-of-bounds access or undefined
// behaviour is a finding, not luck):
//
//   open:     Arena::attach over the segment (header checks, reap of dead holders, slot claim),
//             then Channel::open at the handle's offset
//   drain:    recv until empty/closed/corrupt; each received block is viewed, every payload
//             byte read, retained and released, released, and released once more (that last
//             one must be refused as a double release)
//   reclaim:  reap_dead_holders(): the walk over every carved cell that frees blocks of dead
//             holders; optionally census() (the invariant checker's walk of cells and lists)
//   traffic:  optionally, a fresh channel on the same arena: allocate (free lists, carve,
//             growth), send, receive, release, and destroy it with a message still queued
//             (drain_and_free)
//   close:    Channel::close, drop the channel, detach from the arena (frees our holder slot)
//
// Input format and backend: fuzz_image.h. With MEMCHANNEL_FUZZ_BACKEND=shm in the environment
// segment 0 is a real /dev/shm segment (Segment::create, then ShmBackend::probe + for_existing
// as the Python attach does) instead of heap memory; the heap backend is the default because
// ASan sees the exact end of each segment there.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/arena.h"
#include "core/channel.h"
#include "core/status.h"
#include "core/waiter.h"
#include "shm/names.h"
#include "shm/segment.h"
#include "shm/backend/shm_backend.h"
#include "tests/fuzz/fuzz_image.h"

namespace memchannel::fuzz {
namespace {

constexpr int kMaxDrain = 64;

// Keeps reads of payload bytes from being optimised away.
volatile uint64_t g_sink = 0;

// How far inputs got, printed at exit when MEMCHANNEL_FUZZ_STATS=1: a run in which nothing
// attaches or nothing is received would be fuzzing only the first check.
struct Progress {
  uint64_t inputs, attached, opened, received, reclaimed, traffic_sent;
};
Progress g_progress{};

void print_progress() {
  const Progress& p = g_progress;
  std::fprintf(stderr,
               "arena_fuzz: %llu inputs, %llu attached, %llu opened a channel, %llu messages "
               "received, %llu blocks reclaimed, %llu sent on a fresh channel\n",
               static_cast<unsigned long long>(p.inputs), static_cast<unsigned long long>(p.attached),
               static_cast<unsigned long long>(p.opened), static_cast<unsigned long long>(p.received),
               static_cast<unsigned long long>(p.reclaimed),
               static_cast<unsigned long long>(p.traffic_sent));
}

void count_input() {
  static const bool enabled = [] {
    const char* v = std::getenv("MEMCHANNEL_FUZZ_STATS");
    const bool on = v != nullptr && std::string_view(v) == "1";
    if (on) std::atexit(print_progress);
    return on;
  }();
  (void)enabled;
  ++g_progress.inputs;
}

void consume_block(Arena& arena, BlockHandle h) {
  auto v = arena.view(h);
  if (v.ok()) {
    uint64_t sum = v.value.length;
    for (uint64_t i = 0; i < v.value.length; ++i) sum += v.value.data[i];
    for (uint32_t d = 0; d < v.value.ndim; ++d) sum += static_cast<uint64_t>(v.value.shape[d]);
    for (char c : v.value.format_view()) sum += static_cast<uint8_t>(c);
    g_sink = g_sink + sum;
  }
  (void)arena.held_length(h);
  if (arena.retain(h) == Status::kOk) (void)arena.release(h);
  (void)arena.release(h);
  (void)arena.release(h);  // a second release must be refused (kDoubleRelease), never honoured
}

void traffic(const std::shared_ptr<Arena>& arena) {
  auto created = Channel::create(arena, 4, 0, 0xf022);
  if (!created.ok()) return;
  std::shared_ptr<Channel> ch = created.value;
  const WaitSpec nowait = WaitSpec::nonblocking();
  int sent = 0;
  for (uint64_t bytes : {8ull, 300ull, 5000ull}) {
    auto h = ch->allocate(bytes, PayloadLayout{}, nowait);
    if (!h.ok()) continue;
    uint64_t len = 0;
    if (uint8_t* p = arena->payload(h.value, &len)) std::memset(p, 0xab, len);
    if (ch->send(h.value, nowait) == Status::kOk) {
      ++sent;
      ++g_progress.traffic_sent;
    } else {
      (void)arena->release(h.value);
    }
  }
  const int64_t shape[2] = {3, 5};
  PayloadLayout typed{8, 2, shape, "<d"};
  auto t = ch->allocate(3 * 5 * 8, typed, nowait);
  if (t.ok() && ch->send(t.value, nowait) != Status::kOk) (void)arena->release(t.value);
  if (sent > 0) {
    auto got = ch->recv(nowait);
    if (got.ok()) consume_block(*arena, got.value);
  }
  (void)ch->stats();
  // Dropping the last handle drains what is still queued and frees the channel's cells.
}

struct PeerInput : InputHeader {
  uint64_t reclaimed_in_image;  // the arena's reclaimed_blocks counter before we attach
};

// One peer's visit. The backend maps segment 0 of `segment0_bytes` when attach asks for it.
void run_peer(std::unique_ptr<MemoryBackend> backend, uint64_t segment0_bytes, const PeerInput& in,
              void (*after_attach)(const std::string&) = nullptr, const std::string& name = {}) {
  auto attached = Arena::attach(std::move(backend), segment0_bytes);
  if (after_attach != nullptr) after_attach(name);
  if (!attached.ok()) return;
  std::shared_ptr<Arena> arena = std::move(attached.value);
  ++g_progress.attached;
  // attach() already reaped the dead holders it found: count what it freed.
  const uint64_t reclaimed_before = arena->stats().reclaimed_blocks;
  // (The counter itself is fuzzer bytes: a jump larger than segment 0 has cells is not ours.)
  const uint64_t by_attach = reclaimed_before - in.reclaimed_in_image;
  if (by_attach <= kSegment0Bytes / kUnit) g_progress.reclaimed += by_attach;
  (void)arena->stats();
  (void)arena->max_payload();

  std::shared_ptr<Channel> ch;
  auto opened = Channel::open(arena, in.channel_offset);
  if (opened.ok()) {
    ch = std::move(opened.value);
    ++g_progress.opened;
    (void)ch->stats();
    for (int i = 0; i < kMaxDrain; ++i) {
      auto got = ch->recv(WaitSpec::nonblocking());
      if (got.ok()) {
        ++g_progress.received;
        consume_block(*arena, got.value);
        continue;
      }
      // Empty, closed-and-drained, or a queue too broken to walk: stop. Any other corruption
      // (a forged descriptor) was counted and skipped: keep draining.
      if (!is_corruption(got.status) || got.status == Status::kCorruptedIndex) break;
    }
  }

  g_progress.reclaimed += arena->reap_dead_holders();
  if ((in.flags & kFlagCensus) != 0) (void)arena->census();
  if ((in.flags & kFlagTraffic) != 0) traffic(arena);

  if (ch) {
    ch->close();
    (void)ch->closed();
    (void)ch->queued();
    ch.reset();
  }
  arena->detach();
}

bool use_shm_backend() {
  static const bool shm = [] {
    const char* v = std::getenv("MEMCHANNEL_FUZZ_BACKEND");
    return v != nullptr && std::string_view(v) == "shm";
  }();
  return shm;
}

void run_over_shm(const uint8_t* image, size_t image_bytes, const PeerInput& in) {
  static const std::string prefix = shm::random_test_prefix();
  const std::string base = shm::random_segment_name(prefix);
  {
    // The file carries the segment's sentinel tail past the image (core/backend.h).
    auto seg = shm::Segment::create(base, kSegment0Bytes + kSegmentTailBytes);
    if (!seg.ok()) std::abort();  // the harness itself cannot run: not a finding about the input
    if (image_bytes != 0) std::memcpy(seg.value.data(), image, std::min<size_t>(image_bytes, kSegment0Bytes));
    std::memcpy(seg.value.data() + kSegment0Bytes, &kSegmentSentinel, sizeof kSegmentSentinel);
    auto probe = shm::ShmBackend::probe(base);
    // Segment 0's name goes as soon as the peer has mapped it, so an input that kills the
    // harness (a finding) leaves nothing behind in /dev/shm.
    auto unlink_name = [](const std::string& name) { (void)shm::Segment::unlink(name); };
    if (probe.ok()) run_peer(shm::ShmBackend::for_existing(base), probe.value, in, unlink_name, base);
  }
  // The last detach removes the segments it knows of; anything else (an image whose count
  // of segments was garbage, a segment the traffic step grew) is removed here.
  for (uint32_t i = 0; i < kMaxSegments; ++i) {
    (void)shm::Segment::unlink(i == 0 ? base : base + "." + std::to_string(i));
  }
}

}  // namespace
}  // namespace memchannel::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace memchannel;
  using namespace memchannel::fuzz;
  count_input();
  PeerInput in{parse_header(data, size), 0};
  std::vector<uint8_t> image;
  if (size > kInputHeaderBytes) image.assign(data + kInputHeaderBytes, data + size);
  constexpr size_t kReclaimed = offsetof(ArenaHeader, reclaimed_blocks);
  if (image.size() >= kReclaimed + 8) std::memcpy(&in.reclaimed_in_image, image.data() + kReclaimed, 8);
  if (use_shm_backend()) {
    run_over_shm(image.data(), image.size(), in);
  } else {
    run_peer(std::make_unique<FuzzBackend>(image.data(), image.size(), in.liveness), kSegment0Bytes, in);
  }
  return 0;
}
