// Writes the arena fuzz target's seed corpus and dictionary (run by ctest before the fuzz
// runs, so the seeds always match the current layout):
//
//   arena_fuzz_seeds <corpus dir> <dictionary file>
//
// Each seed is a real arena image in one of the states a peer can meet: empty; messages
// queued (plain and typed); a closed channel; blocks held by two other processes (reserved,
// received) beside free lists of several classes and recycled queue nodes; a drained channel;
// two channels. Each image is written with a few liveness modes and step flags (fuzz_image.h).
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/block.h"
#include "core/channel.h"
#include "tests/fuzz/fuzz_image.h"

namespace memchannel::fuzz {
namespace {

// Segment memory shared by every Arena object of one seed (two "processes" = two Arenas).
struct SeedStore {
  SegmentBuffer segments[kMaxSegments];
};

class SeedBackend final : public MemoryBackend {
 public:
  SeedBackend(std::shared_ptr<SeedStore> store, uint64_t pid) : store_(std::move(store)), pid_(pid) {}
  Result<uint8_t*> create_segment(uint32_t index, uint64_t bytes) override {
    if (index >= kMaxSegments || bytes > kSegment0Bytes) return {Status::kSystemError, nullptr};
    store_->segments[index] = SegmentBuffer(bytes);
    return {Status::kOk, store_->segments[index].data()};
  }
  Result<uint8_t*> map_segment(uint32_t index, uint64_t bytes) override {
    if (index >= kMaxSegments || store_->segments[index].size() < bytes) return {Status::kNotFound, nullptr};
    return {Status::kOk, store_->segments[index].data()};
  }
  const char* kind() const override { return "seed"; }
  bool tracks_holders() const override { return true; }
  HolderIdentity self_identity() const override { return {{pid_, 1}}; }
  HolderLiveness liveness(const HolderIdentity&) const override { return HolderLiveness::kAlive; }

 private:
  std::shared_ptr<SeedStore> store_;
  uint64_t pid_;
};

constexpr uint64_t kPidA = 1001;  // odd: dead under kByIdentity
constexpr uint64_t kPidB = 1002;  // even: alive under kByIdentity

struct World {
  std::shared_ptr<SeedStore> store = std::make_shared<SeedStore>();
  std::shared_ptr<Arena> a, b;  // holder A (creator) and holder B (attached)
  std::vector<std::shared_ptr<Channel>> channels;

  World() {
    auto created = Arena::create(std::make_unique<SeedBackend>(store, kPidA), kSegment0Bytes, 77);
    if (!created.ok()) std::abort();
    a = created.value;
  }
  void attach_b() {
    auto attached = Arena::attach(std::make_unique<SeedBackend>(store, kPidB), kSegment0Bytes);
    if (!attached.ok()) std::abort();
    b = attached.value;
  }
  Channel& channel(uint64_t maxsize = 0, uint64_t maxbytes = 0) {
    auto ch = Channel::create(a, maxsize, maxbytes, 100 + channels.size());
    if (!ch.ok()) std::abort();
    channels.push_back(ch.value);
    return *channels.back();
  }
  void send(Channel& ch, uint64_t bytes, const PayloadLayout& layout = PayloadLayout{}) {
    auto h = ch.allocate(bytes, layout, WaitSpec::nonblocking());
    if (!h.ok()) std::abort();
    uint64_t len = 0;
    uint8_t* p = a->payload(h.value, &len);
    for (uint64_t i = 0; i < len; ++i) p[i] = static_cast<uint8_t>(i * 7 + bytes);
    if (ch.send(h.value, WaitSpec::nonblocking()) != Status::kOk) std::abort();
  }
  // Segment 0 without its zero tail (the harness zero-pads), rounded up to whole cells.
  std::vector<uint8_t> image() const {
    const SegmentBuffer& s0 = store->segments[0];
    uint64_t end = s0.size();
    while (end > 0 && s0.data()[end - 1] == 0) --end;
    end = std::min<uint64_t>((end + kUnit - 1) & ~(kUnit - 1), s0.size());
    return {s0.data(), s0.data() + end};
  }
};

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::fprintf(stderr, "cannot write %s: %s\n", path.c_str(), std::strerror(errno));
    std::exit(1);
  }
}

int g_written = 0;

void emit(const std::string& dir, const std::string& name, const World& w, uint64_t channel_offset) {
  const std::vector<uint8_t> img = w.image();
  const struct { uint8_t liveness, flags; } variants[] = {
      {kAllDead, 0}, {kAllDead, kFlagTraffic | kFlagCensus}, {kByIdentity, kFlagCensus},
      {kAllAlive, kFlagTraffic}, {kAllUnknown, 0}};
  for (const auto& v : variants) {
    std::vector<uint8_t> input;
    write_header(input, InputHeader{channel_offset, v.liveness, v.flags});
    input.insert(input.end(), img.begin(), img.end());
    char suffix[32];
    std::snprintf(suffix, sizeof suffix, "-l%u-f%u", v.liveness, v.flags);
    write_file(dir + "/seed-" + name + suffix, input);
    ++g_written;
  }
}

void write_dictionary(const std::string& path) {
  std::string out = "# arena fuzz dictionary (generated by arena_fuzz_seeds)\n";
  auto word = [&](const char* name, const void* p, size_t n) {
    out += name;
    out += "=\"";
    char hex[8];
    for (size_t i = 0; i < n; ++i) {
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<const uint8_t*>(p)[i]);
      out += hex;
    }
    out += "\"\n";
  };
  const uint64_t arena_magic = kArenaMagic, channel_magic = kChannelMagic, seg0 = kSegment0Bytes,
                 creating = kSegmentCreating, closed = kClosedBit;
  const uint32_t ready = kArenaReady, block_magic = kBlockMagic, node_magic = kNodeMagic,
                 version = kArenaLayoutVersion, active = kSlotActive;
  word("arena_magic", &arena_magic, 8);
  word("channel_magic", &channel_magic, 8);
  word("segment0_bytes", &seg0, 8);
  word("segment_creating", &creating, 8);
  word("closed_bit", &closed, 8);
  word("arena_ready", &ready, 4);
  word("block_magic", &block_magic, 4);
  word("node_magic", &node_magic, 4);
  word("layout_version", &version, 4);
  word("slot_active", &active, 4);
  const uint32_t states[] = {make_state(1, 1, kBlockReserved), make_state(1, 2, kBlockReceived),
                             make_state(1, 0, kBlockQueued), make_state(2, 0, kBlockFree)};
  for (uint32_t s : states) word("block_state", &s, 4);
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr || std::fputs(out.c_str(), f) < 0 || std::fclose(f) != 0) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

}  // namespace
}  // namespace memchannel::fuzz

int main(int argc, char** argv) {
  using namespace memchannel;
  using namespace memchannel::fuzz;
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <corpus dir> <dictionary file>\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    std::perror("mkdir");
    return 1;
  }
  const WaitSpec nowait = WaitSpec::nonblocking();
  {
    World w;  // a bare arena
    emit(dir, "empty", w, 0);
  }
  {
    World w;
    Channel& ch = w.channel();
    for (uint64_t bytes : {0, 1, 100, 1000, 4000}) w.send(ch, bytes);
    emit(dir, "queued", w, ch.offset());
  }
  {
    World w;
    Channel& ch = w.channel(8, 1 << 14);
    const int64_t shape[3] = {2, 3, 4};
    w.send(ch, 2 * 3 * 4 * 4, PayloadLayout{4, 3, shape, "<i4"});
    w.send(ch, 16, PayloadLayout{8, 1, nullptr, "Q"});
    w.send(ch, 8, PayloadLayout{8, 0, nullptr, "d"});
    emit(dir, "typed", w, ch.offset());
  }
  {
    World w;
    Channel& ch = w.channel();
    w.send(ch, 10);
    w.send(ch, 20);
    ch.close();
    emit(dir, "closed", w, ch.offset());
  }
  {
    World w;
    w.attach_b();
    Channel& ch = w.channel();
    // Free lists of several classes, and recycled queue nodes.
    for (uint64_t bytes : {10, 200, 700, 3000}) {
      auto h = w.a->allocate(bytes, PayloadLayout{});
      if (!h.ok()) return 1;
      w.a->release(h.value);
    }
    for (uint64_t bytes : {5, 50, 500, 1500}) w.send(ch, bytes);
    // B receives one and holds it; A receives one and holds it; A reserves two more.
    auto through_b = Channel::open(w.b, ch.offset());
    if (!through_b.ok()) return 1;
    w.channels.push_back(through_b.value);
    auto rb = through_b.value->recv(nowait);  // recorded under B's holder id
    auto ra = ch.recv(nowait);                // under A's
    if (!rb.ok() || !ra.ok()) return 1;
    auto held_a1 = w.a->allocate(64, PayloadLayout{});
    auto held_a2 = w.a->allocate(900, PayloadLayout{});
    auto held_b = w.b->allocate(300, PayloadLayout{});
    if (!held_a1.ok() || !held_a2.ok() || !held_b.ok()) return 1;
    emit(dir, "held", w, ch.offset());
  }
  {
    World w;
    Channel& ch = w.channel();
    for (uint64_t bytes : {8, 64, 640}) w.send(ch, bytes);
    for (int i = 0; i < 3; ++i) {
      auto got = ch.recv(nowait);
      if (!got.ok()) return 1;
      w.a->release(got.value);
    }
    emit(dir, "drained", w, ch.offset());
  }
  {
    World w;
    Channel& one = w.channel();
    Channel& two = w.channel(2);
    w.send(one, 33);
    w.send(two, 44);
    w.send(two, 55);
    emit(dir, "two-channels", w, two.offset());
  }
  write_dictionary(argv[2]);
  std::printf("wrote %d seeds to %s and the dictionary %s\n", g_written, dir.c_str(), argv[2]);
  return 0;
}
