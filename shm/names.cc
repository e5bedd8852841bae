#include "shm/names.h"

#include <sys/random.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace memchannel::shm {
namespace {

bool is_name_char(char c) noexcept {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool all_name_chars(std::string_view s) noexcept {
  for (const char c : s) {
    if (!is_name_char(c)) return false;
  }
  return true;
}

// Appends `bytes` as lowercase hex to `out` (capacity already reserved).
void append_hex(std::string& out, std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  for (const std::byte b : bytes) {
    const auto v = std::to_integer<unsigned>(b);
    out.push_back(kDigits[v >> 4]);
    out.push_back(kDigits[v & 0xfu]);
  }
}

std::string random_hex_after(std::string_view prefix, std::size_t random_bytes) noexcept {
  try {
    std::array<std::byte, kNameRandomBits / 8> buf{};
    if (random_bytes > buf.size()) return {};
    const std::span<std::byte> bits(buf.data(), random_bytes);
    if (!fill_random(bits)) return {};
    std::string name;
    name.reserve(prefix.size() + 2 * random_bytes);
    name.append(prefix);
    append_hex(name, bits);
    return name;
  } catch (const std::bad_alloc&) {
    return {};
  }
}

}  // namespace

bool fill_random(std::span<std::byte> out) noexcept {
  std::size_t done = 0;
  while (done < out.size()) {
    // Flags 0: the urandom pool, blocking only until it is first initialised at boot, so a
    // name made seconds after boot is still unguessable.
    const ssize_t n = ::getrandom(out.data() + done, out.size() - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<std::size_t>(n);
  }
  return true;
}

bool is_memchannel_name(std::string_view name) noexcept {
  return name.size() > kNamePrefix.size() && name.size() <= kMaxNameLength &&
         name.starts_with(kNamePrefix) && all_name_chars(name);
}

bool is_valid_prefix(std::string_view prefix) noexcept {
  return prefix.size() >= kNamePrefix.size() && prefix.size() <= kMaxPrefixLength &&
         prefix.starts_with(kNamePrefix) && all_name_chars(prefix);
}

std::string_view default_prefix() noexcept {
  // Function-local static: initialised once, thread-safe; getenv's pointer stays valid as
  // long as nobody calls setenv on this variable, which we copy away from anyway.
  static const std::string prefix = []() noexcept -> std::string {
    try {
      const char* env = std::getenv(kPrefixEnvVar);
      if (env != nullptr && is_valid_prefix(env)) return std::string(env);
      return std::string(kNamePrefix);
    } catch (const std::bad_alloc&) {
      return {};  // an empty prefix makes every generated name invalid: fails closed
    }
  }();
  return prefix;
}

std::string random_segment_name(std::string_view prefix) noexcept {
  if (!is_valid_prefix(prefix)) return {};
  return random_hex_after(prefix, kNameRandomBits / 8);
}

std::string random_segment_name() noexcept { return random_segment_name(default_prefix()); }

std::string random_test_prefix() noexcept {
  std::string prefix = random_hex_after("memchannel-test", 8);
  if (prefix.empty()) return prefix;
  try {
    prefix.push_back('-');
  } catch (const std::bad_alloc&) {
    return {};
  }
  return prefix;
}

}  // namespace memchannel::shm
