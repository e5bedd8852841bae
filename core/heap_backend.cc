#include "core/heap_backend.h"

#include <cerrno>
#include <sys/mman.h>

namespace memchannel {

HeapBackend::~HeapBackend() {
  for (uint32_t i = 0; i < kMaxSegments; ++i) {
    if (bases_[i] != nullptr) munmap(bases_[i], sizes_[i]);
  }
}

Result<uint8_t*> HeapBackend::create_segment(uint32_t index, uint64_t bytes) {
  if (index >= kMaxSegments || bases_[index] != nullptr) return {Status::kInvalidArgument, nullptr};
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    last_errno_ = errno;
    return {Status::kSystemError, nullptr};
  }
  bases_[index] = static_cast<uint8_t*>(p);
  sizes_[index] = bytes;
  return {Status::kOk, bases_[index]};
}

Result<uint8_t*> HeapBackend::map_segment(uint32_t index, uint64_t bytes) {
  // One process: every segment was created by this backend; "mapping" is a lookup.
  if (index >= kMaxSegments || bases_[index] == nullptr || sizes_[index] < bytes) {
    return {Status::kCorruptedOffset, nullptr};
  }
  return {Status::kOk, bases_[index]};
}

}  // namespace memchannel
