// Where arena memory comes from. The MemChannel algorithm (Arena, Channel) is written once,
// over offsets; a backend only creates and maps segments. Two exist: HeapBackend (process
// memory, for threads and subinterpreters) and the shared-memory backend in shm/.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "core/status.h"

namespace memchannel {

struct HolderIdentity {
  uint64_t words[2] = {0, 0};
  bool operator==(const HolderIdentity&) const = default;
};

enum class HolderLiveness { kAlive, kDead, kUnknown };

// The tail of a segment file a peer can truncate (shm): kSegmentTailBytes past the arena's
// bytes of the segment, holding kSegmentSentinel in its first word. Truncation always removes
// the end of a file, so a segment whose sentinel still reads right has lost nothing; one that
// reads anything else (zeros: the pages are gone, whether the file was regrown or not) has
// been cut, or its sentinel was forged (Arena::confirm_intact tells the two apart with fstat).
// The arena never allocates the tail: its segment sizes exclude it.
inline constexpr uint64_t kSegmentTailBytes = 64;
inline constexpr uint64_t kSegmentSentinel = 0x4c544e5345434d4dull;  // "MMCESNTL"

class MemoryBackend {
 public:
  virtual ~MemoryBackend() = default;

  // Creates segment `index` of `bytes` bytes (zero-filled) and maps it; returns its base.
  // Called by exactly one thread/process per index (the arena arbitrates).
  // Concurrency: any thread, serialised per index by the caller.
  virtual Result<uint8_t*> create_segment(uint32_t index, uint64_t bytes) = 0;

  // Maps an existing segment of `bytes` bytes that another party created. Returns its base.
  // Concurrency: any thread; the arena calls it at most once per index per process.
  virtual Result<uint8_t*> map_segment(uint32_t index, uint64_t bytes) = 0;

  // Last system error (errno) seen by create/map, for messages.
  virtual int last_errno() const { return 0; }

  // --- Holders (processes) sharing the arena. A backend whose users can die independently
  // (shared memory) tracks them so their blocks can be reclaimed; the heap backend does not.
  virtual bool tracks_holders() const { return false; }
  // This process's identity, stored in its holder slot (two opaque words, e.g. pid and start
  // time). Concurrency: any thread.
  virtual HolderIdentity self_identity() const { return {}; }
  // Whether the process with `identity` still runs. Must not be fooled by pid reuse.
  virtual HolderLiveness liveness(const HolderIdentity&) const { return HolderLiveness::kAlive; }
  // Called by the last holder to detach: remove the segments (`segments` of them exist).
  virtual void remove_segments(uint32_t /*segments*/) {}

  // --- Growth-segment names (shm): segment i > 0 is named after a nonce the arena records in
  // its segment table (ArenaHeader::segment_nonce) before the segment is created, so no other
  // party can predict a name from the base name (docs/shm.md, "Threat model").
  // A fresh random nonce (0 from backends whose segments have no names).
  virtual uint64_t new_segment_nonce() { return 0; }
  // The nonce of segment `index`, as the segment table records it, for create/map/remove.
  virtual void use_segment_nonce(uint32_t /*index*/, uint64_t /*nonce*/) {}
  // Whether the last create_segment failed because a file already sat at the name (squatted).
  virtual bool last_create_collided() const { return false; }
  // Removes what a creator that died half way left at segment `index`'s name (if ours).
  virtual void discard_segment(uint32_t /*index*/) {}

  // The sentinel word at the end of segment `index` as this process maps it (kSegmentTailBytes
  // past the segment's bytes), or nullptr when the backend's segments cannot be truncated
  // (heap). Valid once create_segment / map_segment succeeded for `index`, until destruction.
  virtual std::atomic<uint64_t>* sentinel(uint32_t /*index*/) { return nullptr; }

  // Whether every segment this process maps is still whole (shm: not truncated by a peer);
  // kCorruptedLength once one is not. Called by every sweep. Concurrency: any thread.
  virtual Status check_mappings() const { return Status::kOk; }

  // --- Liveness locks (shm): each attached process holds lock `index` (its holder slot, or
  // kMaxHolders + slot while it reaps without a slot of its own) for as long as it occupies it;
  // the kernel drops it when the process dies, in whatever PID namespace it runs.
  // Takes lock `index` for this process; false if another party holds it.
  virtual bool lock_slot(uint32_t /*index*/) { return true; }
  virtual void unlock_slot(uint32_t /*index*/) {}
  // kAlive if another party holds lock `index`, kDead if nobody does, kUnknown if it cannot tell.
  virtual HolderLiveness lock_liveness(uint32_t /*index*/) const { return HolderLiveness::kAlive; }
};

}  // namespace memchannel
