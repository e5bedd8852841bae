// Channel.handle: the bytes that name a channel, so that another interpreter or process can
// attach it (Channel.attach, and a pickled Channel). Wire format "MCH1":
//
//   offset size  field         written by encode_handle             checked by decode_handle
//   ------ ----  ------------  -----------------------------------  --------------------------------
//        0    4  magic         "MCH1"                               == "MCH1"            (ValueError)
//        4    1  kind          'h' heap arena, 's' shm arena        'h' or 's'           (ValueError)
//        5    8  pid           getpid() of the process that made    heap: == getpid()    (MemChannelError:
//                              the handle                             heap channels stay in one process)
//                                                                   shm: not used
//       13    8  arena_id      Arena::arena_id()                    lookup key (unknown: ChannelNotFound)
//       21    8  channel_id    Channel::channel_id()                lookup key; shm: must equal the id in
//                                                                   the header at `offset` (ChannelNotFound)
//       29    8  offset        Channel::offset(): the channel       shm: Channel::open checks it (on the
//                              header's offset in the arena         grid, inside a segment, magic, version)
//       37    8  mapped_bytes  shm: the arena's mapped bytes when   heap: == 0           (ValueError)
//                              the handle was made; heap: 0         shm: informational, not used
//       45    n  name          shm: segment-0 name; heap: nothing   shm: shm::is_memchannel_name (ValueError)
//                                                                   heap: empty          (ValueError)
//
// Integers are u64, little-endian. Every byte comes from the caller (a pickle, a pipe, another
// process): untrusted. decode_handle checks each field as above before anything uses it; what
// the ids and the offset name is checked where they are used (the registry lookup and
// Channel::open), see PyChannel::attach in pybind/channel.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace memchannel::py_glue {

inline constexpr char kHandleMagic[4] = {'M', 'C', 'H', '1'};
inline constexpr size_t kHandleFixedBytes = 45;  // magic, kind and five u64; then the name

struct HandleFields {
  bool shared = false;  // kind 's'
  uint64_t pid = 0;
  uint64_t arena_id = 0;
  uint64_t channel_id = 0;
  uint64_t offset = 0;
  uint64_t mapped_bytes = 0;
  std::string name;  // shm: segment-0 name; heap: empty
};

std::string encode_handle(const HandleFields& h);

// The fields of `bytes`, each checked as the table above says; raises otherwise.
HandleFields decode_handle(const std::string& bytes);

}  // namespace memchannel::py_glue
