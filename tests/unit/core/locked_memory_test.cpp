// The locked allocator behind Secret: its pages are locked in RAM ("lo"), left out of core
// dumps ("dd") and wiped in a forked child ("wf") as the kernel reports them in
// /proc/self/smaps; blocks are wiped when freed; when locking is refused (RLIMIT_MEMLOCK) it
// still works, keeps pages out of dumps, and warns once.

#include "core/locked_memory.h"
#include "core/secret.h"

#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace certagent {
namespace {

const std::string kPem =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVcB/UNPxalR9zDYA\n"
    "-----END PRIVATE KEY-----\n";

// The VmFlags of the mapping that holds `address`, as a set ("rd", "wr", "lo", "dd", ...).
// Empty when no mapping holds it.
std::set<std::string> vm_flags(const void* address) {
  const auto a = reinterpret_cast<std::uintptr_t>(address);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      inside = a >= lo && a < hi;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) {
      std::istringstream words(line.substr(8));
      std::set<std::string> flags;
      for (std::string w; words >> w;) flags.insert(w);
      return flags;
    }
  }
  return {};
}

bool holds(const std::set<std::string>& flags, const std::string& flag) { return flags.count(flag) > 0; }

TEST(LockedMemory, SmallAndLargeBlocksAreLockedAndLeftOutOfDumps) {
  for (std::size_t size : {1u, 100u, 2048u, 2049u, 40000u}) {
    void* p = locked_memory::allocate(size);
    std::memset(p, 0x5a, size);  // usable over its whole size
    const auto flags = vm_flags(p);
    EXPECT_TRUE(holds(flags, "lo")) << size << " bytes: not locked";
    EXPECT_TRUE(holds(flags, "dd")) << size << " bytes: would be dumped";
    EXPECT_TRUE(holds(flags, "wf")) << size << " bytes: not wiped on fork";
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 32, 0u);
    locked_memory::deallocate(p, size);
  }
  EXPECT_EQ(locked_memory::stats().lock_error, 0);
  EXPECT_GE(locked_memory::stats().locked_bytes, 16u * 1024);
}

TEST(LockedMemory, ABlockIsWipedWhenFreed) {
  // A small block stays mapped in its slab once freed: read it back. Past the first 8 bytes
  // (the free list's link) every byte must be zero.
  auto* p = static_cast<char*>(locked_memory::allocate(kPem.size()));
  std::memcpy(p, kPem.data(), kPem.size());
  locked_memory::deallocate(p, kPem.size());
  EXPECT_TRUE(std::all_of(p + 8, p + kPem.size(), [](char c) { return c == 0; }));
  // The next block of that size is the same one, handed out clean.
  auto* again = static_cast<char*>(locked_memory::allocate(kPem.size()));
  EXPECT_EQ(again, p);
  EXPECT_TRUE(std::all_of(again, again + kPem.size(), [](char c) { return c == 0; }));
  locked_memory::deallocate(again, kPem.size());

  // A large block is unmapped once freed: no mapping holds its address any more.
  void* large = locked_memory::allocate(64 * 1024);
  EXPECT_FALSE(vm_flags(large).empty());
  locked_memory::deallocate(large, 64 * 1024);
  EXPECT_TRUE(vm_flags(large).empty());
}

TEST(LockedMemory, SecretBytesLiveInLockedMemoryAndAreWipedAsItGrows) {
  Secret token(std::string("short"));  // no small-string buffer inside the object
  EXPECT_TRUE(holds(vm_flags(token.data()), "lo"));
  EXPECT_TRUE(holds(vm_flags(token.data()), "dd"));
  EXPECT_EQ(token.view(), "short");

  Secret pem;
  pem.append(kPem.substr(0, 20));
  const char* first = pem.data();
  pem.append(kPem.substr(20));  // outgrows the first block: it is wiped as it is given back
  EXPECT_EQ(pem.view(), kPem);
  EXPECT_NE(pem.data(), first);
  EXPECT_TRUE(std::all_of(first + 8, first + 20, [](char c) { return c == 0; }));
  EXPECT_TRUE(holds(vm_flags(pem.data()), "dd"));

  Secret taken(std::string{kPem});
  EXPECT_EQ(taken.view(), kPem);

  const std::size_t in_use = locked_memory::stats().in_use_bytes;
  { Secret copy = taken.clone(); }
  EXPECT_EQ(locked_memory::stats().in_use_bytes, in_use);
}

// Drops CAP_IPC_LOCK (which lets root lock past RLIMIT_MEMLOCK) from the effective set.
bool drop_ipc_lock() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  data[CAP_TO_INDEX(CAP_IPC_LOCK)].effective &= ~CAP_TO_MASK(CAP_IPC_LOCK);
  return ::syscall(SYS_capset, &header, data) == 0;
}

TEST(LockedMemory, WithoutTheRightToLockItStillWorksKeepsPagesOutOfDumpsAndWarnsOnce) {
  // In a child: the limit and the capability are process-wide, and the warning is once per
  // process. The child reports through its exit code; its stderr (the log) goes to a file.
  char log_template[] = "/tmp/locked-memory-log-XXXXXX";
  const int log_fd = ::mkstemp(log_template);
  ASSERT_GE(log_fd, 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(log_fd, 2);
    rlimit none{0, 0};
    if (::setrlimit(RLIMIT_MEMLOCK, &none) != 0 || !drop_ipc_lock()) _exit(10);
    // Fresh sizes: the parent's slabs are inherited, and locks are not (fork).
    void* a = locked_memory::allocate(50000);
    void* b = locked_memory::allocate(60000);
    Secret s(std::string(3000, 'k'));
    if (s.view() != std::string(3000, 'k')) _exit(11);
    const auto fa = vm_flags(a);
    if (holds(fa, "lo")) _exit(12);
    if (!holds(fa, "dd")) _exit(13);
    if (locked_memory::stats().lock_error == 0) _exit(14);
    locked_memory::deallocate(a, 50000);
    locked_memory::deallocate(b, 60000);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  std::ifstream in(log_template);
  std::stringstream log;
  log << in.rdbuf();
  ::close(log_fd);
  ::unlink(log_template);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "child check " << WEXITSTATUS(status) << " failed\n" << log.str();
  const std::string text = log.str();
  std::size_t warnings = 0;
  for (auto at = text.find("event=memory_lock_failed"); at != std::string::npos;
       at = text.find("event=memory_lock_failed", at + 1))
    ++warnings;
  EXPECT_EQ(warnings, 1u) << text;
  EXPECT_NE(text.find("memlock_limit_bytes=0"), std::string::npos) << text;
}

}  // namespace
}  // namespace certagent
