// Finding and removing memchannel segments in /dev/shm (docs/reliability.md items 5 and 6).
//
// This layer knows names, owners and bytes, not arenas: it lists segments by prefix and
// removes those a caller-supplied predicate condemns. The predicate (from the core) reads
// the arena header in the segment's first bytes and decides, e.g., "every registered owner
// is dead" or "the creator died before finishing initialisation".
//
// What it guarantees
// - Only names that pass is_memchannel_name() and start with the given prefix are looked at;
//   a prefix that does not itself start with "memchannel-" matches nothing.
// - A segment owned by another user is never passed to the predicate and never removed.
// - The predicate sees a private, page-aligned copy of the segment's first bytes read with
//   pread(2), not a mapping: a peer truncating the file meanwhile cannot raise SIGBUS in the
//   cleaner. The copy is a snapshot; fields that a live process updates may be stale.
// - A name is unlinked only if it still refers to the same file (device and inode) the
//   predicate looked at.
// - No exception escapes; a predicate that throws counts as "keep".
//
// Concurrency: any thread, any process. Several cleaners may run at once: each unlink
// happens at most once (the loser sees ENOENT and does not report the name).
#pragma once

#include <cstdint>
#include <ctime>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shm/status.h"

namespace memchannel::shm {

// What remove_segments_if() learned about one segment before asking the predicate.
struct SegmentPeek {
  // kOk: `head` holds the first head_bytes bytes. Otherwise why not:
  //   kTooSmall       the file is shorter than head_bytes; `head` holds all of it (maybe
  //                   nothing: a creator that died, or is still working, before ftruncate)
  //   kWrongMode      mode is not 0600; `head` is empty
  //   kNotRegularFile not a regular file (symlink, FIFO, ...); `head` is empty
  //   kPermissionDenied / kSystemError  could not open or read it; `head` is empty
  Status status = Status::kOk;
  int sys_errno = 0;
  uint64_t size = 0;                 // st_size when looked at (0 if unknown)
  struct timespec modified {};       // st_mtim: lets a predicate give a creator in progress
                                     // a grace period before condemning an unsized file
  std::span<const std::byte> head;   // page-aligned; valid only during the predicate call
  int fd = -1;                       // read-only descriptor of the file judged (kOk/kTooSmall),
                                     // for liveness locks; valid only during the predicate call
};

// Returns true to unlink the segment. Called once per candidate, on the calling thread.
using RemovePredicate = std::function<bool(std::string_view name, const SegmentPeek& peek)>;

// Default number of leading bytes handed to the predicate: one page.
inline constexpr uint64_t kDefaultPeekBytes = 4096;
// Largest head a predicate may ask for (the copy lives on the heap while it runs).
inline constexpr uint64_t kMaxPeekBytes = 1ull << 24;

// Names in /dev/shm that start with `prefix` and are memchannel names, sorted. Empty when
// the prefix is not a valid memchannel prefix or /dev/shm cannot be read.
// Concurrency: any thread.
std::vector<std::string> list_segments(std::string_view prefix) noexcept;

// Offers every segment of list_segments(prefix) owned by this user to `predicate` and
// unlinks those it accepts. Returns the names this call removed. head_bytes is clamped to
// [1, kMaxPeekBytes].
// Concurrency: any thread, any process.
std::vector<std::string> remove_segments_if(std::string_view prefix,
                                            const RemovePredicate& predicate,
                                            uint64_t head_bytes = kDefaultPeekBytes) noexcept;

}  // namespace memchannel::shm
