// Segment: one named POSIX shared-memory segment (/dev/shm/<name>) mapped read-write.
//
// What it guarantees
// - create() never adopts anything: the file is made with O_CREAT|O_EXCL (a pre-existing
//   file, symlink or FIFO at the name gives kAlreadyExists and is left untouched), then set to
//   mode 0600 with fchmod whatever the umask, sized with ftruncate, and its pages reserved in
//   tmpfs with posix_fallocate. A segment that does not fit in /dev/shm therefore fails here
//   with kNoSpace (and the half-made file is unlinked) instead of raising SIGBUS on the first
//   touch of an unbacked page later.
// - open() trusts nothing it finds: the file must be a regular file (symlinks are not
//   followed), owned by geteuid(), mode exactly 0600, and its size must cover what the
//   caller needs. The mapping is exactly the size fstat reported (re-checked after mmap), so
//   the mapping never extends past end-of-file at open time.
// - A peer that truncates the file after it was mapped cannot kill this process with SIGBUS.
//   Truncation removes the pages past the new end from every mapping, and the next touch of
//   one raises SIGBUS; no check before the access can close that race. So every mapping is
//   registered with a process-wide SIGBUS guard (installed the first time a segment is
//   mapped; MEMCHANNEL_SIGBUS_GUARD=0 in the environment leaves SIGBUS alone). On a SIGBUS
//   whose address lies past the end of file inside a registered mapping, the guard replaces
//   the lost tail of that mapping with private zero pages (mmap MAP_FIXED) and lets the access
//   run again: reads see zeros (which the arena's validation rejects as corruption), writes
//   land in private memory no peer sees. The segment is then truncated for good: check()
//   returns kTruncated from then on, even if the file grows back. Any other SIGBUS (another
//   mapping, a hardware error, kill -BUS) goes to the handler that was there before, or to
//   the default action, exactly as without the guard. Limits: a handler installed *after*
//   the guard (e.g. faulthandler.enable() called later) sees the fault first; and the guard
//   covers mappings made through this class only. docs/shm.md lists what is protected.
// - check()/still_valid() re-fstat the open descriptor: callers that meet an offset or length
//   that does not make sense call it before touching more memory, and report kTruncated
//   rather than read on. A file truncated and grown back has its old size but fewer pages
//   (st_blocks; tmpfs pages were reserved at creation): reported as kTruncated too, so the
//   data lost with the pages is never taken for zeros someone wrote.
// - The destructor unmaps and closes; it never unlinks. Only the creator decides when a name
//   goes away (docs/design.md, Shared-memory rules), through unlink().
// - No exception escapes: Boost.Interprocess's interprocess_exception and std::bad_alloc are
//   caught here and returned as a Status with the errno of the failing call.
//
// Concurrency: create/open/unlink: any thread, any process. A Segment object itself is not
// synchronised: one thread at a time per object (const members may run concurrently). The
// mapped bytes are shared with every process that maps the name; their protocol is the
// caller's business.
#pragma once

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "shm/status.h"

namespace memchannel::shm {

static_assert(sizeof(std::size_t) == 8, "shm/ assumes a 64-bit address space");

// Mode of every memchannel segment: read-write for the owning user, nothing for anyone else.
inline constexpr uint32_t kSegmentMode = 0600;
// Largest segment create() accepts; keeps sizes within off_t and far below the address space.
inline constexpr uint64_t kMaxSegmentBytesOs = 1ull << 46;

// Whether to fault every page into this process's page tables at map time (MAP_POPULATE).
// Fresh shared pages cost microseconds each on first touch; prefaulting moves that cost to
// creation instead of the first send.
enum class Prefault : uint8_t { kNo, kYes };

class Segment {
 public:
  // An empty segment: valid() is false, data() is null, size() is 0.
  Segment() noexcept = default;
  ~Segment();  // leaves the SIGBUS guard, unmaps and closes (Boost members); never unlinks
  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&& other) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  // Creates /dev/shm/<name> of exactly `bytes` bytes (zero-filled), see the guarantees above.
  // Errors: kInvalidName, kInvalidArgument (bytes 0 or > kMaxSegmentBytesOs), kAlreadyExists,
  // kNoSpace, kPermissionDenied, kOutOfMemory, kSystemError. On any error no file is left.
  // Concurrency: any thread, any process.
  static Result<Segment> create(std::string_view name, uint64_t bytes,
                                Prefault prefault = Prefault::kNo) noexcept;

  // Opens and maps an existing segment after checking who made it and how big it is.
  //   expected_bytes: 0 = any size (>= min_bytes); otherwise the size must equal it exactly
  //                   (smaller: kTruncated, larger: kSizeMismatch).
  //   min_bytes:      smaller files give kTooSmall. The default 1 refuses a file whose creator
  //                   died between creating and sizing it.
  // Errors: kInvalidName, kNotFound, kNotRegularFile, kWrongOwner, kWrongMode, kTooSmall,
  // kTruncated, kSizeMismatch, kPermissionDenied, kOutOfMemory, kSystemError.
  // Concurrency: any thread, any process.
  static Result<Segment> open(std::string_view name, uint64_t expected_bytes = 0,
                              uint64_t min_bytes = 1, Prefault prefault = Prefault::kNo) noexcept;

  // Removes the name from /dev/shm. Existing mappings stay valid until unmapped.
  // Errors: kInvalidName, kNotFound, kPermissionDenied, kSystemError.
  // Concurrency: any thread, any process.
  static Outcome unlink(std::string_view name) noexcept;
  // The same, only for a file this user may trust: a regular file (no symlink followed), owned
  // by geteuid(), mode exactly 0600, and still the same file (device, inode) when it is
  // unlinked. Everything that removes a segment it did not just create goes through here
  // (teardown, cleanup, replacing a dead creator's growth segment), so another user's file,
  // planted at a name memchannel would use, is never removed, even by root.
  // Errors: those of unlink, and kWrongOwner, kWrongMode, kNotRegularFile (nothing removed).
  // Concurrency: any thread, any process.
  static Outcome unlink_if_owned(std::string_view name) noexcept;

  // Re-fstats the descriptor: kOk while the file still covers the mapping, kTruncated once a
  // peer has shrunk it (touching the lost tail raises SIGBUS, which the guard absorbs) or once
  // the guard has replaced pages of this mapping, kSystemError if fstat fails. Growth is fine.
  // Call it when a value read from the segment looks out of range.
  // Concurrency: any thread.
  Outcome check() const noexcept;
  bool still_valid() const noexcept { return check().ok(); }
  // SIGBUS faults the guard absorbed for this mapping (0 if it is not guarded).
  // Concurrency: any thread.
  uint64_t truncation_faults() const noexcept;
  // Whether this mapping is registered with the SIGBUS guard (false when the guard is
  // disabled, could not be installed, or its table of mappings is full).
  bool guarded() const noexcept { return guard_slot_ >= 0; }

  // Concurrency (all accessors): any thread.
  bool valid() const noexcept { return region_.get_address() != nullptr; }
  std::byte* data() const noexcept { return static_cast<std::byte*>(region_.get_address()); }
  uint64_t size() const noexcept { return region_.get_size(); }
  const std::string& name() const noexcept { return name_; }
  int fd() const noexcept;  // -1 when empty; owned by the Segment, do not close

 private:
  Segment(std::string name, boost::interprocess::shared_memory_object&& shm,
          boost::interprocess::mapped_region&& region) noexcept;

  std::string name_;                                // without the leading '/'
  boost::interprocess::shared_memory_object shm_;   // owns the descriptor; closed last
  boost::interprocess::mapped_region region_;       // owns the mapping; unmapped first
  int guard_slot_ = -1;                             // entry in the SIGBUS guard's table
  uint64_t blocks_ = 0;                             // st_blocks when mapped (check: pages lost)
};

// The process-wide SIGBUS guard (see "What it guarantees" above).
// Whether it is installed (it is installed by the first create()/open() that maps a segment,
// unless MEMCHANNEL_SIGBUS_GUARD=0). Concurrency: any thread.
bool sigbus_guard_installed() noexcept;
// SIGBUS faults absorbed so far in this process, over all segments. Concurrency: any thread.
uint64_t sigbus_faults_absorbed() noexcept;

}  // namespace memchannel::shm
