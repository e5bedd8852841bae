// ShmBackend: arena segments in named POSIX shared memory, so one arena spans processes.
//
// Segment 0 of an arena is named `<prefix><32 hex random chars>` (the base name, 128 random
// bits, never the pid); segment i > 0 is `<base>.<i>.<8 hex>`, after a nonce of 32 fresh random
// bits the arena records in its segment table (a name another user squats is skipped). Segments are created O_EXCL with mode
// 0600 and their pages reserved up front (a full /dev/shm fails creation, never SIGBUS later);
// openers check owner, mode and size (shm/segment.h). Every attached process occupies a
// holder slot in the arena header with its identity (pid + start time, so pid reuse cannot
// fool the liveness check) and holds an OFD lock on byte `slot` of segment 0's file, which the
// kernel drops when it dies: liveness is judged by that lock, the same from every PID namespace
// that shares /dev/shm (docs/shm.md, "Liveness"). The last process to detach unlinks all
// segments, each only after checking it is this user's (Segment::unlink_if_owned).
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/arena.h"
#include "core/backend.h"
#include "shm/segment.h"
#include "shm/status.h"

namespace memchannel::shm {

class ShmBackend final : public MemoryBackend {
 public:
  // For a new arena; names start with `prefix` (empty: default_prefix()).
  static std::unique_ptr<ShmBackend> for_new_arena(std::string_view prefix = {});
  // For the existing arena whose segment 0 is `base_name`.
  static std::unique_ptr<ShmBackend> for_existing(std::string base_name);
  // Size of segment 0 of an existing arena (the arena's bytes: the file less its
  // kSegmentTailBytes tail, core/backend.h), or why it cannot be opened.
  static Result<uint64_t> probe(const std::string& base_name);

  memchannel::Result<uint8_t*> create_segment(uint32_t index, uint64_t bytes) override;
  memchannel::Result<uint8_t*> map_segment(uint32_t index, uint64_t bytes) override;
  int last_errno() const override { return last_errno_; }

  bool tracks_holders() const override { return true; }
  HolderIdentity self_identity() const override;
  HolderLiveness liveness(const HolderIdentity& id) const override;
  void remove_segments(uint32_t segments) override;
  uint64_t new_segment_nonce() override;
  void use_segment_nonce(uint32_t index, uint64_t nonce) override;
  bool last_create_collided() const override { return last_status_ == Status::kAlreadyExists; }
  void discard_segment(uint32_t index) override;
  memchannel::Status check_mappings() const override {
    return check_segments().ok() ? memchannel::Status::kOk : memchannel::Status::kCorruptedLength;
  }
  std::atomic<uint64_t>* sentinel(uint32_t index) override;
  bool lock_slot(uint32_t index) override;
  void unlock_slot(uint32_t index) override;
  HolderLiveness lock_liveness(uint32_t index) const override;
  ~ShmBackend() override;

  const std::string& base_name() const { return base_; }
  std::string segment_name(uint32_t index) const;
  // The shm-level reason of the last failure (wrong owner, wrong mode, no space, ...).
  Status last_shm_status() const { return last_status_; }
  // Re-checks every segment this process has mapped (Segment::check): kTruncated once a peer
  // has shrunk one below its mapping or the SIGBUS guard has replaced pages of one (their
  // contents are lost: reads there see zeros, writes stay private), kOk otherwise. The first
  // failing segment's outcome is returned. Concurrency: any thread.
  Outcome check_segments() const;

 private:
  explicit ShmBackend(std::string base) : base_(std::move(base)) {}
  memchannel::Status fail(Status s, int err);

  // The descriptor this process's liveness locks are held on: its own open file description of
  // segment 0 (opened again in a forked child, whose inherited one is its parent's). -1: none.
  int lock_fd() const;

  std::string base_;
  std::array<std::atomic<uint64_t>, kMaxSegments> nonces_{};  // segment i's name (i > 0)
  mutable std::mutex lock_mutex_;
  mutable int lock_fd_ = -1;
  mutable int lock_pid_ = 0;                    // the process that opened lock_fd_
  mutable std::mutex segments_mutex_;           // create/map (rare) against check_segments
  std::array<Segment, kMaxSegments> segments_;  // this process's mappings
  std::array<std::atomic<std::atomic<uint64_t>*>, kMaxSegments> sentinels_{};  // in segments_[i]
  Status last_status_ = Status::kOk;
  int last_errno_ = 0;
};

// The shm-level reason and errno of the last failure of any ShmBackend in this thread since the
// previous call (which it clears): an Arena::create or attach that fails destroys its backend,
// so the caller asks here (take it once before the call to drop an older failure).
Outcome take_last_failure_in_thread();

// Removes the segments of arenas whose every holder is dead (or whose creator died before
// finishing initialisation), and stray `<base>.<i>` segments whose base is gone. Returns the
// names removed. Concurrency: any process; a live arena is never touched.
std::vector<std::string> cleanup_dead_arenas(std::string_view prefix = {});

}  // namespace memchannel::shm
