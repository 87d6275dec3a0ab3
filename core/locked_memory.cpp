#include "core/locked_memory.h"

#include "core/logging.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>

namespace certagent::locked_memory {
namespace {

constexpr std::size_t kMinBlock = 32;
constexpr std::size_t kMaxSmallBlock = 2048;
constexpr std::size_t kSlabBytes = 16 * 1024;
constexpr std::size_t kClasses = std::countr_zero(kMaxSmallBlock) - std::countr_zero(kMinBlock) + 1;

struct FreeBlock {
  FreeBlock* next;
};

struct Arena {
  std::mutex mutex;
  std::array<FreeBlock*, kClasses> free{};
  Stats stats;
};

// Never destroyed: a Secret in a static object may be freed after main() returns.
Arena& arena() {
  static Arena* a = new Arena;
  return *a;
}

std::size_t page_size() {
  static const std::size_t size = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

std::size_t round_to_pages(std::size_t bytes) {
  const std::size_t page = page_size();
  return (bytes + page - 1) / page * page;
}

std::size_t block_size(std::size_t bytes) { return std::bit_ceil(std::max(bytes, kMinBlock)); }

std::size_t class_of(std::size_t block) {
  return static_cast<std::size_t>(std::countr_zero(block) - std::countr_zero(kMinBlock));
}

// The kernel's mlock/munlock, not libc's: AddressSanitizer replaces those with no-ops that
// return success, so in the sanitized build our pages would be reported locked without being
// locked, and the refusal path (RLIMIT_MEMLOCK) could not be tested. The regions are ours and
// small, so locking them for real is harmless there too.
int lock_pages(void* p, std::size_t bytes) { return static_cast<int>(::syscall(SYS_mlock, p, bytes)); }
int unlock_pages(void* p, std::size_t bytes) { return static_cast<int>(::syscall(SYS_munlock, p, bytes)); }

// Called with the arena locked; reports outside it.
void* map_locked(std::size_t bytes, Arena& a, int* failure) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  // Out of dumps first: that needs no privilege and holds even when locking is refused.
  if (::madvise(p, bytes, MADV_DONTDUMP) != 0) *failure = errno;
  // Linux >= 4.14; on an older kernel the child of a fork keeps a copy until it execs.
  (void)::madvise(p, bytes, MADV_WIPEONFORK);
  if (lock_pages(p, bytes) == 0) {
    a.stats.locked_bytes += bytes;
  } else if (*failure == 0) {
    *failure = errno;
  }
  if (*failure != 0 && a.stats.lock_error == 0) a.stats.lock_error = *failure;
  a.stats.mapped_bytes += bytes;
  return p;
}

}  // namespace

void* allocate(std::size_t bytes) {
  Arena& a = arena();
  int failure = 0;
  void* out = nullptr;
  if (bytes > kMaxSmallBlock) {
    const std::size_t size = round_to_pages(bytes);
    {
      std::lock_guard lock(a.mutex);
      out = map_locked(size, a, &failure);
      if (out) a.stats.in_use_bytes += size;
    }
  } else {
    const std::size_t block = block_size(bytes);
    auto& head = a.free[class_of(block)];
    std::lock_guard lock(a.mutex);
    if (!head) {
      auto* slab = static_cast<char*>(map_locked(kSlabBytes, a, &failure));
      if (slab) {
        for (std::size_t off = kSlabBytes; off >= block; off -= block) {
          auto* b = reinterpret_cast<FreeBlock*>(slab + off - block);
          b->next = head;
          head = b;
        }
      }
    }
    if (head) {
      out = head;
      head = head->next;
      std::memset(out, 0, sizeof(FreeBlock));
      a.stats.in_use_bytes += block;
    }
  }
  if (failure != 0) note_lock_failure("secret memory", failure);
  if (!out) throw std::bad_alloc();
  return out;
}

void deallocate(void* p, std::size_t bytes) noexcept {
  if (!p) return;
  Arena& a = arena();
  if (bytes > kMaxSmallBlock) {
    const std::size_t size = round_to_pages(bytes);
    OPENSSL_cleanse(p, bytes);
    std::lock_guard lock(a.mutex);
    if (unlock_pages(p, size) == 0 && a.stats.locked_bytes >= size) a.stats.locked_bytes -= size;
    ::munmap(p, size);
    a.stats.mapped_bytes -= size;
    a.stats.in_use_bytes -= size;
    return;
  }
  const std::size_t block = block_size(bytes);
  OPENSSL_cleanse(p, block);
  std::lock_guard lock(a.mutex);
  auto* b = static_cast<FreeBlock*>(p);
  auto& head = a.free[class_of(block)];
  b->next = head;
  head = b;
  a.stats.in_use_bytes -= block;
}

Stats stats() {
  Arena& a = arena();
  std::lock_guard lock(a.mutex);
  return a.stats;
}

void note_lock_failure(std::string_view what, int error) {
  static std::atomic<bool> warned{false};
  if (warned.exchange(true)) return;
  rlimit limit{};
  std::string memlock = "unknown";
  if (::getrlimit(RLIMIT_MEMLOCK, &limit) == 0)
    memlock = limit.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(limit.rlim_cur);
  log::get("memory")->warn(
      "event=memory_lock_failed what={} error={} memlock_limit_bytes={} effect=\"private keys "
      "stay out of core dumps but may be written to swap\" fix=\"raise LimitMEMLOCK= (ulimit -l) "
      "or run without swap\"",
      log::quote(what), log::quote(std::strerror(error)), memlock);
}

}  // namespace certagent::locked_memory
