// HeapBackend: arena segments in anonymous private memory of this process. Serves threads and
// subinterpreters of one process; a process's death takes all its users with it, so no
// reclamation is needed. Segments are mapped with MAP_NORESERVE and unmapped when the backend
// is destroyed (after every Arena using it is gone).
#pragma once

#include <array>
#include <cstdint>

#include "core/backend.h"
#include "core/layout.h"

namespace memchannel {

class HeapBackend final : public MemoryBackend {
 public:
  HeapBackend() = default;
  HeapBackend(const HeapBackend&) = delete;
  HeapBackend& operator=(const HeapBackend&) = delete;
  ~HeapBackend() override;

  Result<uint8_t*> create_segment(uint32_t index, uint64_t bytes) override;
  Result<uint8_t*> map_segment(uint32_t index, uint64_t bytes) override;
  int last_errno() const override { return last_errno_; }

 private:
  std::array<uint8_t*, kMaxSegments> bases_{};  // written once per index before publication
  std::array<uint64_t, kMaxSegments> sizes_{};
  int last_errno_ = 0;
};

}  // namespace memchannel
