// Names of memchannel shared-memory segments.
//
// A segment name is `<prefix><32 lowercase hex digits>`: the prefix starts with "memchannel-"
// and the hex digits are 128 bits from getrandom(2). The name is the only thing that keeps
// an unrelated process of the same user from guessing a segment, so it never contains the
// pid, a counter or a time, and carries more than the 64 random bits docs/design.md
// (Shared-memory rules) asks for. Names are also what cleanup matches on, so every name must pass is_memchannel_name().
//
// Test isolation: a test picks its own prefix with random_test_prefix() and passes it
// everywhere (or sets MEMCHANNEL_SHM_PREFIX for child processes), so parallel test runs
// never collide in /dev/shm and a sweep of one prefix never touches another run's segments.
//
// Concurrency: every function here may be called from any thread, in any process.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>

namespace memchannel::shm {

inline constexpr std::string_view kNamePrefix = "memchannel-";
// Random bits in the suffix of every generated name (hex: 4 bits per character).
inline constexpr std::size_t kNameRandomBits = 128;
inline constexpr std::size_t kNameRandomChars = kNameRandomBits / 4;
// NAME_MAX for a file in /dev/shm; shm_open() names carry no leading '/' here.
inline constexpr std::size_t kMaxNameLength = 255;
// Longest prefix that still leaves room for the random suffix.
inline constexpr std::size_t kMaxPrefixLength = kMaxNameLength - kNameRandomChars;

// Where glibc's shm_open() keeps named segments on Linux; cleanup scans it.
inline constexpr std::string_view kShmDirectory = "/dev/shm";

// Environment variable that overrides default_prefix() (read once per process).
inline constexpr const char* kPrefixEnvVar = "MEMCHANNEL_SHM_PREFIX";

// True when `name` may name a memchannel segment: starts with "memchannel-", has at least
// one character after it, at most kMaxNameLength characters, only [A-Za-z0-9._-].
// Everything shm/ does with a name (create, open, unlink, cleanup) checks this first, so a
// caller can never reach a path outside /dev/shm or a file of another program.
bool is_memchannel_name(std::string_view name) noexcept;

// True when names built from `prefix` pass is_memchannel_name(): a prefix starting with
// "memchannel-", made of [A-Za-z0-9._-], at most kMaxPrefixLength long.
bool is_valid_prefix(std::string_view prefix) noexcept;

// The prefix random_segment_name() uses when given none: MEMCHANNEL_SHM_PREFIX if set and
// valid when first asked, else "memchannel-". Read once so every segment of a process
// shares it; the environment variable exists so test harnesses can isolate child processes.
std::string_view default_prefix() noexcept;

// `prefix` followed by kNameRandomChars hex digits from getrandom(2).
// Returns an empty string (which every shm/ call rejects with kInvalidName) when the prefix
// is invalid or the kernel has no randomness to give; it never falls back to weaker sources.
std::string random_segment_name(std::string_view prefix) noexcept;
std::string random_segment_name() noexcept;  // uses default_prefix()

// A fresh prefix for one test: "memchannel-test<16 hex digits>-". Empty on failure.
std::string random_test_prefix() noexcept;

// Fills `out` from getrandom(2) (retrying on EINTR and short reads). False on failure.
bool fill_random(std::span<std::byte> out) noexcept;

}  // namespace memchannel::shm
