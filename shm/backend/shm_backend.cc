#include "shm/backend/shm_backend.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <span>
#include <cstring>
#include <ctime>
#include <map>
#include <set>
#include <utility>

#include "core/recovery.h"
#include "shm/cleanup.h"
#include "shm/liveness.h"
#include "shm/names.h"

namespace memchannel::shm {
namespace {

// Segments up to this size are prefaulted when mapped: the data path then never pays the
// first-touch page fault (about 3 us per page on these machines).
constexpr uint64_t kPrefaultLimit = 256ull << 20;
// A segment younger than this may belong to a creator that is still initialising it.
constexpr time_t kCreationGraceSeconds = 5;

Prefault prefault_for(uint64_t bytes) { return bytes <= kPrefaultLimit ? Prefault::kYes : Prefault::kNo; }

memchannel::Status core_status(Status s) {
  switch (s) {
    case Status::kOk: return memchannel::Status::kOk;
    case Status::kNoSpace: return memchannel::Status::kOutOfCapacity;
    case Status::kNotFound: return memchannel::Status::kNotFound;
    case Status::kTooSmall:
    case Status::kTruncated:
    case Status::kSizeMismatch: return memchannel::Status::kCorruptedLength;
    default: return memchannel::Status::kSystemError;
  }
}

}  // namespace

std::unique_ptr<ShmBackend> ShmBackend::for_new_arena(std::string_view prefix) {
  return std::unique_ptr<ShmBackend>(
      new ShmBackend(prefix.empty() ? random_segment_name() : random_segment_name(prefix)));
}

std::unique_ptr<ShmBackend> ShmBackend::for_existing(std::string base_name) {
  return std::unique_ptr<ShmBackend>(new ShmBackend(std::move(base_name)));
}

Result<uint64_t> ShmBackend::probe(const std::string& base_name) {
  auto seg = Segment::open(base_name, 0, sizeof(ArenaHeader) + kSegmentTailBytes);
  if (!seg.ok()) return {seg.status, seg.sys_errno, 0};
  return {Status::kOk, 0, seg.value.size() - kSegmentTailBytes};
}

std::string ShmBackend::segment_name(uint32_t index) const {
  if (index == 0) return base_;
  char nonce[9];
  std::snprintf(nonce, sizeof nonce, "%08x",
                static_cast<unsigned>(index < kMaxSegments ? nonces_[index].load(std::memory_order_acquire) : 0));
  return base_ + "." + std::to_string(index) + "." + nonce;
}

uint64_t ShmBackend::new_segment_nonce() {
  uint32_t nonce = 0;  // ArenaHeader::segment_nonce holds 32 bits
  if (!fill_random(std::as_writable_bytes(std::span<uint32_t>(&nonce, 1)))) return 0;
  return nonce;
}

void ShmBackend::use_segment_nonce(uint32_t index, uint64_t nonce) {
  if (index > 0 && index < kMaxSegments) nonces_[index].store(nonce, std::memory_order_release);
}

void ShmBackend::discard_segment(uint32_t index) {
  if (index > 0 && index < kMaxSegments) Segment::unlink_if_owned(segment_name(index));
}

ShmBackend::~ShmBackend() {
  std::lock_guard<std::mutex> lock(lock_mutex_);
  if (lock_fd_ >= 0 && lock_pid_ == ::getpid()) ::close(lock_fd_);
}

int ShmBackend::lock_fd() const {
  std::lock_guard<std::mutex> lock(lock_mutex_);
  const int me = ::getpid();
  if (lock_fd_ >= 0 && lock_pid_ == me) return lock_fd_;
  // A forked child's copy names its parent's open file description (and so its locks):
  // closing the copy leaves the parent's locks alone; the child takes its own.
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
  int seg_fd = -1;
  {
    std::lock_guard<std::mutex> segs(segments_mutex_);
    seg_fd = segments_[0].fd();
  }
  if (seg_fd < 0) return -1;
  lock_fd_ = open_lock_descriptor(base_, seg_fd);
  lock_pid_ = me;
  return lock_fd_;
}

bool ShmBackend::lock_slot(uint32_t index) {
  const int fd = lock_fd();
  return fd >= 0 && take_liveness_lock(fd, index);
}

void ShmBackend::unlock_slot(uint32_t index) {
  const int fd = lock_fd();
  if (fd >= 0) drop_liveness_lock(fd, index);
}

HolderLiveness ShmBackend::lock_liveness(uint32_t index) const {
  const int fd = lock_fd();
  if (fd < 0) return HolderLiveness::kUnknown;
  switch (liveness_lock_state(fd, index)) {
    case Liveness::kAlive: return HolderLiveness::kAlive;
    case Liveness::kDead: return HolderLiveness::kDead;
    default: return HolderLiveness::kUnknown;
  }
}

namespace {
thread_local Outcome t_last_failure;
}  // namespace

Outcome take_last_failure_in_thread() { return std::exchange(t_last_failure, Outcome{}); }

memchannel::Status ShmBackend::fail(Status s, int err) {
  last_status_ = s;
  last_errno_ = err;
  t_last_failure = Outcome{s, err};
  return core_status(s);
}

memchannel::Result<uint8_t*> ShmBackend::create_segment(uint32_t index, uint64_t bytes) {
  if (index >= kMaxSegments) return {memchannel::Status::kInvalidArgument, nullptr};
  // O_EXCL: a file already at the name (squatted, or a dead creator's under a reused nonce) is
  // never adopted; Arena::create_named_segment then tries a fresh nonce (last_create_collided).
  last_status_ = Status::kOk;
  if (bytes == 0 || bytes > kMaxSegmentBytesOs - kSegmentTailBytes) return {memchannel::Status::kInvalidArgument, nullptr};
  // The file is one tail longer than the arena's segment: its sentinel (core/backend.h).
  auto seg = Segment::create(segment_name(index), bytes + kSegmentTailBytes, prefault_for(bytes));
  if (!seg.ok()) return {fail(seg.status, seg.sys_errno), nullptr};
  auto* sentinel = reinterpret_cast<std::atomic<uint64_t>*>(seg.value.data() + bytes);
  sentinel->store(kSegmentSentinel, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(segments_mutex_);
  segments_[index] = std::move(seg.value);
  sentinels_[index].store(sentinel, std::memory_order_release);
  return {memchannel::Status::kOk, reinterpret_cast<uint8_t*>(segments_[index].data())};
}

std::atomic<uint64_t>* ShmBackend::sentinel(uint32_t index) {
  return index < kMaxSegments ? sentinels_[index].load(std::memory_order_acquire) : nullptr;
}

memchannel::Result<uint8_t*> ShmBackend::map_segment(uint32_t index, uint64_t bytes) {
  if (index >= kMaxSegments) return {memchannel::Status::kCorruptedOffset, nullptr};
  {
    std::lock_guard<std::mutex> lock(segments_mutex_);
    if (segments_[index].valid()) {
      if (segments_[index].size() < bytes + kSegmentTailBytes) return {memchannel::Status::kCorruptedLength, nullptr};
      return {memchannel::Status::kOk, reinterpret_cast<uint8_t*>(segments_[index].data())};
    }
  }
  if (bytes == 0 || bytes > kMaxSegmentBytesOs - kSegmentTailBytes) return {memchannel::Status::kCorruptedLength, nullptr};
  // Open checks the file's size against `bytes` and its tail (a segment a peer truncated
  // before we map it is refused with kTruncated) and maps exactly what fstat reported.
  const uint64_t file_bytes = bytes + kSegmentTailBytes;
  auto seg = Segment::open(segment_name(index), file_bytes, file_bytes, prefault_for(bytes));
  if (!seg.ok()) return {fail(seg.status, seg.sys_errno), nullptr};
  // The sentinel: a file truncated and grown back has its size again, and zeros at its end.
  // Segment 0's is checked by Arena::attach after the header (so a file that is no arena of
  // this version is refused as that, first).
  auto* sentinel = reinterpret_cast<std::atomic<uint64_t>*>(seg.value.data() + bytes);
  if (index != 0 && sentinel->load(std::memory_order_relaxed) != kSegmentSentinel) {
    return {fail(Status::kTruncated, 0), nullptr};
  }
  std::lock_guard<std::mutex> lock(segments_mutex_);
  segments_[index] = std::move(seg.value);
  sentinels_[index].store(sentinel, std::memory_order_release);
  return {memchannel::Status::kOk, reinterpret_cast<uint8_t*>(segments_[index].data())};
}

Outcome ShmBackend::check_segments() const {
  std::lock_guard<std::mutex> lock(segments_mutex_);
  for (const Segment& seg : segments_) {
    if (!seg.valid()) continue;
    const Outcome o = seg.check();
    if (!o.ok()) return o;
  }
  return {};
}

HolderIdentity ShmBackend::self_identity() const {
  const ProcessIdentity me = shm::self_identity();
  return HolderIdentity{{me.pid, me.start_time}};
}

HolderLiveness ShmBackend::liveness(const HolderIdentity& id) const {
  if (id.words[0] == 0 || id.words[0] > 0xffffffffull) return HolderLiveness::kUnknown;
  if (id.words[1] == 0) {
    // A pid with no start time (a claim whose claimer died before writing its identity, see
    // HolderSlot in core/arena.h): no such process means dead; one with that pid may be a
    // reuse of the number, so it counts as alive (the slot waits, as before).
    const auto now = identity_of(static_cast<uint32_t>(id.words[0]));
    if (now.status == Status::kNotFound) return HolderLiveness::kDead;
    return now.ok() ? HolderLiveness::kAlive : HolderLiveness::kUnknown;
  }
  const ProcessIdentity who{static_cast<uint32_t>(id.words[0]), 0, id.words[1]};
  switch (check_alive(who)) {
    case Liveness::kAlive: return HolderLiveness::kAlive;
    case Liveness::kDead: return HolderLiveness::kDead;
    default: return HolderLiveness::kUnknown;
  }
}

void ShmBackend::remove_segments(uint32_t segments) {
  for (uint32_t i = 0; i < std::min(segments + 1, kMaxSegments); ++i) {
    // Only this user's files: another user's file planted at a name is left alone, even by
    // root. NotFound for an index never created: harmless.
    Segment::unlink_if_owned(segment_name(i));
  }
}

namespace {

// Decides from the first bytes of segment 0 whether every holder of an arena is gone. Magic and
// layout version first (core/arena_layout.h): an arena of another version, or anything that is
// not an arena header, is never judged abandoned (left alone). Liveness is the liveness locks on
// the file (any held: some process is alive, from whatever PID namespace), never a pid.
bool arena_is_abandoned(const SegmentPeek& peek) {
  const bool old_enough = std::time(nullptr) - peek.modified.tv_sec >= kCreationGraceSeconds;
  if (peek.status == Status::kTooSmall) {
    // Shorter than our header: a creator that died before sizing it (or empty), unless it
    // starts with the arena magic: an arena of another layout version, not ours to judge.
    uint64_t magic = 0;
    if (peek.head.size() >= sizeof magic) std::memcpy(&magic, peek.head.data(), sizeof magic);
    return magic != kArenaMagic && old_enough;
  }
  if (peek.status != Status::kOk || peek.head.size() < sizeof(ArenaHeader) || peek.fd < 0) return false;
  // A private, aligned copy: the file may change under us.
  auto header = std::make_unique<ArenaHeader>();
  std::memcpy(static_cast<void*>(header.get()), peek.head.data(), sizeof(ArenaHeader));
  const bool ready = header->ready.load(std::memory_order_relaxed) == kArenaReady;
  if (header->magic == 0 && !ready) {
    // A creator between sizing the file and writing the header: give it the grace period.
    if (!old_enough) return false;
  } else if (!arena_header_compatible(*header)) {
    return false;
  }
  // Held by anyone (slot locks and reap locks alike): alive. Cannot tell: alive.
  if (liveness_lock_state(peek.fd, 0, 2 * kMaxHolders) != Liveness::kDead) return false;
  return ready || old_enough;
}

bool is_growth_segment(std::string_view name) { return name.find('.') != std::string_view::npos; }

}  // namespace

std::vector<std::string> cleanup_dead_arenas(std::string_view prefix) {
  const std::string_view p = prefix.empty() ? default_prefix() : prefix;
  std::set<std::string> dead_bases;
  std::vector<std::string> removed = remove_segments_if(
      p,
      [&](std::string_view name, const SegmentPeek& peek) {
        if (is_growth_segment(name)) return false;  // extra segments: below
        if (!arena_is_abandoned(peek)) return false;
        dead_bases.emplace(name);
        return true;
      },
      sizeof(ArenaHeader));
  // Extra segments of removed arenas, and strays whose segment 0 no longer exists. The same
  // checks as above (remove_segments_if): only this user's regular 0600 files, still the file
  // judged when unlinked; another user's file is never looked at, even by root.
  const std::vector<std::string> remaining = list_segments(p);
  const std::set<std::string> bases(remaining.begin(), remaining.end());
  std::vector<std::string> extras = remove_segments_if(
      p,
      [&](std::string_view name, const SegmentPeek& peek) {
        if (!is_growth_segment(name)) return false;
        if (peek.status != Status::kOk && peek.status != Status::kTooSmall) return false;
        const std::string base(name.substr(0, name.find('.')));
        return dead_bases.count(base) != 0 || bases.count(base) == 0;
      },
      1);
  removed.insert(removed.end(), extras.begin(), extras.end());
  return removed;
}

}  // namespace memchannel::shm
