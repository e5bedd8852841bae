// The arena fuzz target's input format and the in-memory backend it runs over
// (docs/reliability.md item 9). Shared by the fuzz target, the standalone driver and the seed
// generator, so the three agree on every byte.
//
// An input is what a peer could hand us: the handle's channel offset, a few bits that decide
// how the world answers (which holders are dead), and the bytes of the segments themselves.
//
//   +----------------------------+ 0
//   | channel offset (u64 LE)    |  what Channel.attach(handle) would pass to Channel::open
//   | liveness mode  (u8)        |  how liveness() answers for holder identities (see below)
//   | flags          (u8)        |  kFlag*: which optional steps run
//   | reserved       (6 bytes)   |
//   +----------------------------+ 16 = kInputHeaderBytes
//   | segment 0 image            |  up to kSegment0Bytes; a shorter image is zero-padded
//   +----------------------------+ 16 + kSegment0Bytes
//   | segment 1.. images         |  consumed in order by map_segment(1), (2), ...
//   +----------------------------+
//
// The fuzzer therefore owns every byte of arena memory a peer could have written: header,
// holder slots, free lists, channel headers, queue nodes, block headers and payloads.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "core/arena.h"
#include "core/backend.h"
#include "core/layout.h"
#include "core/status.h"

namespace memchannel::fuzz {

inline constexpr size_t kInputHeaderBytes = 16;
// Segment 0 of every fuzzed arena: what probe() (fstat) would report for it.
inline constexpr uint64_t kSegment0Bytes = 64 * 1024;
// Larger segments (from fuzzed segment_bytes[i]) are refused like a full /dev/shm would be.
inline constexpr uint64_t kMaxFuzzSegmentBytes = 1 << 20;
// Identity of the process running the harness (the attaching peer).
inline constexpr HolderIdentity kSelfIdentity{{0x5e1f, 0x5e1f}};

enum LivenessMode : uint8_t {
  kAllDead = 0,        // every other holder has died: reclaim everything they held
  kAllAlive = 1,
  kAllUnknown = 2,
  kByIdentity = 3,     // odd first word dead, even alive (mixed crowds)
};
inline constexpr uint8_t kFlagTraffic = 1;  // after draining, send and receive on a new channel
inline constexpr uint8_t kFlagCensus = 2;   // run the invariant checker's walk (census)

struct InputHeader {
  uint64_t channel_offset = 0;
  uint8_t liveness = kAllDead;
  uint8_t flags = 0;
};

inline InputHeader parse_header(const uint8_t* data, size_t size) {
  InputHeader h;
  if (size >= 8) std::memcpy(&h.channel_offset, data, 8);
  if (size >= 9) h.liveness = data[8] & 3;
  if (size >= 10) h.flags = data[9];
  return h;
}

inline void write_header(std::vector<uint8_t>& out, const InputHeader& h) {
  out.resize(std::max(out.size(), kInputHeaderBytes));
  std::memcpy(out.data(), &h.channel_offset, 8);
  out[8] = h.liveness;
  out[9] = h.flags;
}

// One segment: exactly `bytes` long and 64-byte aligned, allocated with operator new so that
// AddressSanitizer puts redzones around it: any read or write past a segment's end (which in
// shared memory would be the next mapping, or SIGBUS) is a reported heap-buffer-overflow.
class SegmentBuffer {
 public:
  SegmentBuffer() = default;
  explicit SegmentBuffer(uint64_t bytes)
      : data_(static_cast<uint8_t*>(::operator new(bytes, std::align_val_t{kCacheLine}))), size_(bytes) {
    std::memset(data_, 0, bytes);
  }
  ~SegmentBuffer() { if (data_ != nullptr) ::operator delete(data_, std::align_val_t{kCacheLine}); }
  SegmentBuffer(SegmentBuffer&& o) noexcept : data_(o.data_), size_(o.size_) { o.data_ = nullptr; o.size_ = 0; }
  SegmentBuffer& operator=(SegmentBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// A MemoryBackend whose segments come from the fuzzer's bytes. It tracks holders like the shm
// backend, so attach claims a slot, detach frees it, and dead holders are reclaimed.
class FuzzBackend final : public MemoryBackend {
 public:
  FuzzBackend(const uint8_t* image, size_t image_bytes, uint8_t liveness)
      : image_(image), image_bytes_(image_bytes), liveness_(liveness) {}

  Result<uint8_t*> create_segment(uint32_t index, uint64_t bytes) override {
    if (index >= kMaxSegments || bytes == 0 || bytes > kMaxFuzzSegmentBytes) {
      return {Status::kSystemError, nullptr};  // what a full /dev/shm looks like to the arena
    }
    segments_[index] = SegmentBuffer(bytes);
    return {Status::kOk, segments_[index].data()};
  }

  Result<uint8_t*> map_segment(uint32_t index, uint64_t bytes) override {
    if (index >= kMaxSegments) return {Status::kCorruptedOffset, nullptr};
    if (segments_[index].data() != nullptr) {
      if (segments_[index].size() < bytes) return {Status::kCorruptedLength, nullptr};
      return {Status::kOk, segments_[index].data()};
    }
    if (index == 0 ? bytes != kSegment0Bytes : (bytes == 0 || bytes > kMaxFuzzSegmentBytes)) {
      return {Status::kCorruptedLength, nullptr};  // the file's size would not match
    }
    SegmentBuffer seg(bytes);
    const size_t n = consumed_ < image_bytes_ ? std::min<uint64_t>(bytes, image_bytes_ - consumed_) : 0;
    if (n != 0) std::memcpy(seg.data(), image_ + consumed_, n);
    // Segment 0 always spans its full size in the input; later ones follow in map order.
    consumed_ += index == 0 ? kSegment0Bytes : n;
    segments_[index] = std::move(seg);
    return {Status::kOk, segments_[index].data()};
  }

  bool tracks_holders() const override { return true; }
  HolderIdentity self_identity() const override { return kSelfIdentity; }
  HolderLiveness liveness(const HolderIdentity& id) const override {
    if (id == kSelfIdentity) return HolderLiveness::kAlive;
    switch (liveness_) {
      case kAllDead: return HolderLiveness::kDead;
      case kAllAlive: return HolderLiveness::kAlive;
      case kAllUnknown: return HolderLiveness::kUnknown;
      default: return (id.words[0] & 1) != 0 ? HolderLiveness::kDead : HolderLiveness::kAlive;
    }
  }

 private:
  const uint8_t* image_;
  size_t image_bytes_;
  size_t consumed_ = 0;
  uint8_t liveness_;
  SegmentBuffer segments_[kMaxSegments];
};

}  // namespace memchannel::fuzz
