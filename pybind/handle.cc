#include "pybind/handle.h"

#include <pybind11/pybind11.h>

#include <cstring>
#include <unistd.h>

#include "pybind/errors.h"
#include "shm/names.h"

namespace memchannel::py_glue {
namespace {

namespace py = pybind11;

constexpr size_t kKindAt = 4;
constexpr size_t kPidAt = 5, kArenaIdAt = 13, kChannelIdAt = 21, kOffsetAt = 29, kMappedBytesAt = 37;
static_assert(kMappedBytesAt + 8 == kHandleFixedBytes);

void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t get_u64(const std::string& in, size_t at) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(in[at + static_cast<size_t>(i)]);
  return v;
}

[[noreturn]] void not_a_handle() {
  throw py::value_error("not a memchannel channel handle (expected the bytes of Channel.handle)");
}

}  // namespace

std::string encode_handle(const HandleFields& h) {
  std::string out(kHandleMagic, sizeof(kHandleMagic));
  out.push_back(h.shared ? 's' : 'h');
  put_u64(out, h.pid);
  put_u64(out, h.arena_id);
  put_u64(out, h.channel_id);
  put_u64(out, h.offset);
  put_u64(out, h.mapped_bytes);
  out += h.name;
  return out;
}

HandleFields decode_handle(const std::string& bytes) {
  if (bytes.size() < kHandleFixedBytes || std::memcmp(bytes.data(), kHandleMagic, sizeof(kHandleMagic)) != 0 ||
      (bytes[kKindAt] != 'h' && bytes[kKindAt] != 's')) {
    not_a_handle();
  }
  HandleFields h;
  h.shared = bytes[kKindAt] == 's';
  h.pid = get_u64(bytes, kPidAt);
  h.arena_id = get_u64(bytes, kArenaIdAt);
  h.channel_id = get_u64(bytes, kChannelIdAt);
  h.offset = get_u64(bytes, kOffsetAt);
  h.mapped_bytes = get_u64(bytes, kMappedBytesAt);
  h.name = bytes.substr(kHandleFixedBytes);
  if (!h.shared) {
    if (h.pid != static_cast<uint64_t>(getpid())) {
      raise_error(ErrorClass::kMemChannelError,
                  "this is a backend='heap' channel of another process (pid " + std::to_string(h.pid) +
                      "); heap channels only connect threads and subinterpreters of one process. "
                      "Create the channel with backend='shm' to cross processes");
    }
    if (h.mapped_bytes != 0 || !h.name.empty()) not_a_handle();
  } else if (!shm::is_memchannel_name(h.name)) {
    throw py::value_error("not a memchannel segment name: '" + printable(h.name) + "'");
  }
  return h;
}

}  // namespace memchannel::py_glue
