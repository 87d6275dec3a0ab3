#pragma once
// Memory for secrets (private key PEM, the socket's key bundles, unsealed broker secrets) that
// stays out of core dumps and swap: its pages are mlock()ed and marked MADV_DONTDUMP (and
// MADV_WIPEONFORK: a child between fork and exec sees zeros). Every block is wiped when it is
// given back.
//
// Blocks up to 2 KiB come from 16 KiB slabs, one size class per power of two (32 B .. 2 KiB);
// larger ones get a mapping of their own, unmapped when freed. Slabs are kept for reuse.
// When pages cannot be locked (RLIMIT_MEMLOCK, LimitMEMLOCK=), they are still left out of dumps:
// one warning is logged the first time (note_lock_failure) and nothing fails.
//
// Thread-safe (keys are made on worker threads, broker secrets unsealed on the TPM thread).

#include <cstddef>
#include <new>
#include <string_view>

namespace certagent::locked_memory {

// A block of at least `bytes` (aligned to 32 bytes or more). Throws std::bad_alloc when no
// mapping can be made, as operator new does.
void* allocate(std::size_t bytes);
// Wipes the block and gives it back; `bytes` as passed to allocate(). Null is ignored.
void deallocate(void* p, std::size_t bytes) noexcept;

struct Stats {
  std::size_t mapped_bytes{0};  // pages mapped for secrets (slabs and large blocks)
  std::size_t locked_bytes{0};  // of which locked in RAM
  std::size_t in_use_bytes{0};  // handed out, rounded up to the block size
  int lock_error{0};            // errno of the first failed mlock()/madvise(), 0 if none
};
Stats stats();

// Records that `what` ("secret memory", "OpenSSL's secure heap") could not be locked or kept
// out of dumps (`error` is an errno value). The first call in the process logs one warning
// (event=memory_lock_failed) with the RLIMIT_MEMLOCK in force and what to do; later calls only
// count.
void note_lock_failure(std::string_view what, int error);

// A standard allocator over the locked blocks, for containers that hold secrets.
template <class T>
struct LockedAllocator {
  using value_type = T;
  LockedAllocator() noexcept = default;
  template <class U>
  LockedAllocator(const LockedAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    static_assert(alignof(T) <= 32, "locked blocks are aligned to 32 bytes");
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(locked_memory::allocate(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t n) noexcept { locked_memory::deallocate(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const LockedAllocator<U>&) const noexcept {
    return true;
  }
};

}  // namespace certagent::locked_memory
