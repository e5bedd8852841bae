#include "shm/backend/shm_backend.h"

#include <algorithm>
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
  auto seg = Segment::open(base_name, 0, sizeof(ArenaHeader));
  if (!seg.ok()) return {seg.status, seg.sys_errno, 0};
  return {Status::kOk, 0, seg.value.size()};
}

std::string ShmBackend::segment_name(uint32_t index) const {
  return index == 0 ? base_ : base_ + "." + std::to_string(index);
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
  auto seg = Segment::create(segment_name(index), bytes, prefault_for(bytes));
  if (!seg.ok() && seg.status == Status::kAlreadyExists && index > 0) {
    // The arena's segment table gave this index to us alone (Arena::grow): a file already at
    // its name is what a creator that died half way left (sized or not). Replace it.
    Segment::unlink(segment_name(index));
    seg = Segment::create(segment_name(index), bytes, prefault_for(bytes));
  }
  if (!seg.ok()) return {fail(seg.status, seg.sys_errno), nullptr};
  std::lock_guard<std::mutex> lock(segments_mutex_);
  segments_[index] = std::move(seg.value);
  return {memchannel::Status::kOk, reinterpret_cast<uint8_t*>(segments_[index].data())};
}

memchannel::Result<uint8_t*> ShmBackend::map_segment(uint32_t index, uint64_t bytes) {
  if (index >= kMaxSegments) return {memchannel::Status::kCorruptedOffset, nullptr};
  {
    std::lock_guard<std::mutex> lock(segments_mutex_);
    if (segments_[index].valid()) {
      if (segments_[index].size() < bytes) return {memchannel::Status::kCorruptedLength, nullptr};
      return {memchannel::Status::kOk, reinterpret_cast<uint8_t*>(segments_[index].data())};
    }
  }
  // Open checks the file's size against `bytes` (a segment a peer truncated before we map it
  // is refused with kTruncated) and maps exactly what fstat reported.
  auto seg = Segment::open(segment_name(index), bytes, bytes, prefault_for(bytes));
  if (!seg.ok()) return {fail(seg.status, seg.sys_errno), nullptr};
  std::lock_guard<std::mutex> lock(segments_mutex_);
  segments_[index] = std::move(seg.value);
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
    Segment::unlink(segment_name(i));  // NotFound for an index never created: harmless
  }
}

namespace {

// Decides from the first bytes of segment 0 whether every holder of an arena is gone.
bool arena_is_abandoned(const SegmentPeek& peek) {
  const bool old_enough = std::time(nullptr) - peek.modified.tv_sec >= kCreationGraceSeconds;
  if (peek.status == Status::kTooSmall) return old_enough;  // creator died before sizing it
  if (peek.status != Status::kOk || peek.head.size() < sizeof(ArenaHeader)) return false;
  // A private, aligned copy: the mapping is read-only and may change under us.
  auto header = std::make_unique<ArenaHeader>();
  std::memcpy(static_cast<void*>(header.get()), peek.head.data(), sizeof(ArenaHeader));
  const bool any_live = any_holder_may_live(*header, *ShmBackend::for_existing(std::string()), !old_enough);
  if (header->ready.load(std::memory_order_relaxed) != kArenaReady) return !any_live && old_enough;
  return !any_live;
}

}  // namespace

std::vector<std::string> cleanup_dead_arenas(std::string_view prefix) {
  const std::string_view p = prefix.empty() ? default_prefix() : prefix;
  std::set<std::string> dead_bases;
  std::vector<std::string> removed = remove_segments_if(
      p,
      [&](std::string_view name, const SegmentPeek& peek) {
        if (name.find('.') != std::string_view::npos) return false;  // extra segments: below
        if (!arena_is_abandoned(peek)) return false;
        dead_bases.emplace(name);
        return true;
      },
      sizeof(ArenaHeader));
  // Extra segments of removed arenas, and strays whose segment 0 no longer exists.
  const std::vector<std::string> remaining = list_segments(p);
  const std::set<std::string> bases(remaining.begin(), remaining.end());
  for (const std::string& name : remaining) {
    const size_t dot = name.find('.');
    if (dot == std::string::npos) continue;
    const std::string base = name.substr(0, dot);
    if (dead_bases.count(base) != 0 || bases.count(base) == 0) {
      if (Segment::unlink(name).ok()) removed.push_back(name);
    }
  }
  return removed;
}

}  // namespace memchannel::shm
