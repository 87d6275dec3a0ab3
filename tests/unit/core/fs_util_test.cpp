#include "core/fs_util.h"

#include "tests/support/test_support.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace certagent {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

TEST(WriteFileAtomic, CreatesWithExactModeRegardlessOfUmask) {
  TempDir tmp;
  mode_t old = ::umask(0);
  auto r = write_file_atomic(tmp / "state.json", "{}", 0600);
  ::umask(old);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(test::read_file(tmp / "state.json"), "{}");
  EXPECT_EQ(mode_of(tmp / "state.json"), 0600u);

  old = ::umask(077);
  r = write_file_atomic(tmp / "public.pem", "cert", 0644);
  ::umask(old);
  ASSERT_TRUE(r);
  EXPECT_EQ(mode_of(tmp / "public.pem"), 0644u);
}

TEST(WriteFileAtomic, ReplacesContentAndLeavesNoTempFile) {
  TempDir tmp;
  test::write_file(tmp / "f", "old content that is longer");
  ASSERT_TRUE(write_file_atomic(tmp / "f", "new", 0640));
  EXPECT_EQ(test::read_file(tmp / "f"), "new");
  EXPECT_EQ(mode_of(tmp / "f"), 0640u);
  int count = 0;
  for (const auto& e : fs::directory_iterator(tmp.path())) {
    (void)e;
    ++count;
  }
  EXPECT_EQ(count, 1);
}

TEST(WriteFileAtomic, ReplacesASymlinkInsteadOfFollowingIt) {
  TempDir tmp;
  test::write_file(tmp / "target", "do not touch");
  fs::create_symlink("target", tmp / "link");
  ASSERT_TRUE(write_file_atomic(tmp / "link", "mine", 0600));
  EXPECT_FALSE(fs::is_symlink(tmp / "link"));
  EXPECT_EQ(test::read_file(tmp / "link"), "mine");
  EXPECT_EQ(test::read_file(tmp / "target"), "do not touch");
}

TEST(WriteFileAtomic, ClearErrors) {
  TempDir tmp;
  auto r = write_file_atomic(tmp / "missing" / "f", "x", 0600);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("missing"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("No such file"), std::string::npos) << r.error().message;
  fs::create_directory(tmp / "adir");
  r = write_file_atomic(tmp / "adir", "x", 0600);
  ASSERT_FALSE(r);  // rename over a directory fails; the temp file is gone
  int count = 0;
  for (const auto& e : fs::directory_iterator(tmp.path())) {
    (void)e;
    ++count;
  }
  EXPECT_EQ(count, 1);
  EXPECT_FALSE(write_file_atomic(tmp / "..", "x", 0600));
}

TEST(WriteFileAtomic, LargeContent) {
  TempDir tmp;
  std::string big(3 << 20, 'z');
  ASSERT_TRUE(write_file_atomic(tmp / "big", big, 0600));
  EXPECT_EQ(test::read_file(tmp / "big"), big);
}

TEST(FsUtil, MakeDirectoriesUsesTheExactMode) {
  TempDir tmp;
  mode_t old = ::umask(077);
  auto r = fs_util::make_directories(tmp / "a" / "b", 0755);
  ::umask(old);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(mode_of(tmp / "a"), 0755u);
  EXPECT_EQ(mode_of(tmp / "a" / "b"), 0755u);
  EXPECT_TRUE(fs_util::make_directories(tmp / "a" / "b", 0700));  // existing: untouched
  EXPECT_EQ(mode_of(tmp / "a" / "b"), 0755u);
  test::write_file(tmp / "file", "x");
  r = fs_util::make_directories(tmp / "file" / "sub", 0755);
  ASSERT_FALSE(r);
}

TEST(FsUtil, ReadFileAtRefusesSymlinksAndLargeFiles) {
  TempDir tmp;
  test::write_file(tmp / "small", "hello");
  fs::create_symlink("small", tmp / "link");
  test::write_file(tmp / "big", std::string(100, 'x'));
  int dirfd = ::open(tmp.path().c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(dirfd, 0);
  auto r = fs_util::read_file_at(dirfd, "small", 50, "small");
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, "hello");
  EXPECT_FALSE(fs_util::read_file_at(dirfd, "link", 50, "link"));
  auto big = fs_util::read_file_at(dirfd, "big", 50, "big");
  ASSERT_FALSE(big);
  EXPECT_NE(big.error().message.find("larger than"), std::string::npos);
  ::close(dirfd);
}

}  // namespace
}  // namespace certagent
