#include "agent/file_sink.h"

#include "tests/support/test_support.h"
#include "tests/unit/agent/test_material.h"

#include <boost/json/parse.hpp>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <thread>

namespace certagent {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

class QuietLogs : public ::testing::Environment {
  void SetUp() override { test::quiet_logs(); }
};
const auto* const kQuietLogs = ::testing::AddGlobalTestEnvironment(new QuietLogs);

config::FilesConfig files_config(const fs::path& dir, std::uint32_t keep = 3,
                                 std::string owner = {}, std::string group = {}) {
  config::FilesConfig c;
  c.dir = dir;
  c.keep = keep;
  c.owner = std::move(owner);
  c.group = std::move(group);
  return c;
}

std::string data_target(const fs::path& dir) {
  std::error_code ec;
  auto t = fs::read_symlink(dir / "..data", ec);
  return ec ? std::string() : t.string();
}

std::vector<std::string> generations(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    if (FileSink::is_generation_name(name)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

// Runs `body` in a forked child (for process-wide limits, privileges or a private mount
// namespace). The body returns "" on success, "SKIP: why" to skip, or a failure description.
struct ChildOutcome {
  bool ok{false};
  bool skipped{false};
  std::string message;
};

// Secret memory is MADV_WIPEONFORK (keys never reach a forked child), so a child that commits
// material restores its keys from plain copies taken before the fork (test keys only).
struct KeysForChild {
  std::vector<std::pair<Material*, std::string>> keys;
  void add(Material& m) { keys.emplace_back(&m, std::string(m.key_pem.view())); }
  void restore() {
    for (auto& [m, k] : keys) m->key_pem = Secret(k);
  }
};

ChildOutcome run_in_child(const std::function<std::string()>& body) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return {false, false, "pipe failed"};
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    std::string msg;
    try {
      msg = body();
    } catch (const std::exception& e) {
      msg = std::string("exception: ") + e.what();
    }
    (void)!::write(pipefd[1], msg.data(), msg.size());
    ::_exit(msg.empty() ? 0 : msg.rfind("SKIP:", 0) == 0 ? 77 : 1);
  }
  ::close(pipefd[1]);
  std::string msg;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) msg.append(buf, static_cast<std::size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) return {false, false, "child died: " + msg};
  int code = WEXITSTATUS(status);
  return {code == 0, code == 77, msg};
}

// --- layout --------------------------------------------------------------------------------

TEST(FileSink, CommitWritesTheLayout) {
  TempDir tmp;
  const auto dir = tmp / "live";
  FileSink sink(files_config(dir));
  auto m = test::make_test_material("web.internal");
  m.broker_state["lemur_id"] = "42";

  auto gen = sink.commit(m);
  ASSERT_TRUE(gen) << gen.error().message;
  EXPECT_EQ(gen->parent_path(), dir);
  const auto gen_name = gen->filename().string();
  EXPECT_TRUE(FileSink::is_generation_name(gen_name)) << gen_name;
  EXPECT_NE(gen_name.find("." + m.serial_hex), std::string::npos) << gen_name;
  EXPECT_EQ(data_target(dir), gen_name);

  for (const auto& name : FileSink::file_names()) {
    EXPECT_TRUE(fs::is_symlink(dir / name)) << name;
    EXPECT_EQ(fs::read_symlink(dir / name), fs::path("..data") / name);
    EXPECT_TRUE(fs::is_regular_file(*gen / name)) << name;
  }
  EXPECT_EQ(test::read_file(dir / "cert.pem"), m.cert_pem);
  EXPECT_EQ(test::read_file(dir / "chain.pem"), "");
  EXPECT_EQ(test::read_file(dir / "fullchain.pem"), m.cert_pem);
  EXPECT_EQ(test::read_file(dir / "key.pem"), m.key_pem.view());
  EXPECT_EQ(test::read_file(dir / "bundle.pem"), std::string(m.key_pem.view()) + m.cert_pem);

  EXPECT_EQ(mode_of(dir / "key.pem"), 0600u);
  EXPECT_EQ(mode_of(dir / "bundle.pem"), 0600u);
  EXPECT_EQ(mode_of(dir / "cert.pem"), 0644u);
  EXPECT_EQ(mode_of(dir / "chain.pem"), 0644u);
  EXPECT_EQ(mode_of(dir / "fullchain.pem"), 0644u);
  EXPECT_EQ(mode_of(dir / "meta.json"), 0644u);
  EXPECT_EQ(mode_of(*gen), 0755u);

  auto meta = boost::json::parse(test::read_file(dir / "meta.json")).as_object();
  EXPECT_EQ(meta.at("serial").as_string(), m.serial_hex);
  EXPECT_EQ(meta.at("sha256").as_string(), m.sha256_hex);
  EXPECT_EQ(meta.at("broker").as_string(), "dev");
  EXPECT_EQ(meta.at("state").as_object().at("lemur_id").as_string(), "42");
  const std::string nb(meta.at("not_before").as_string());
  ASSERT_EQ(nb.size(), 20u) << nb;  // 2026-11-22T10:15:30Z
  EXPECT_EQ(nb[10], 'T');
  EXPECT_EQ(nb.back(), 'Z');
  EXPECT_TRUE(meta.at("not_after").is_string());
}

TEST(FileSink, ChainGoesIntoFullchainAndBundle) {
  TempDir tmp;
  auto ca = test::make_test_ca("Test Issuing CA");
  auto m = test::make_test_material("api.internal", std::chrono::hours(96), &ca);
  FileSink sink(files_config(tmp / "live"));
  ASSERT_TRUE(sink.commit(m));
  EXPECT_EQ(test::read_file(tmp / "live" / "chain.pem"), ca.cert_pem);
  EXPECT_EQ(test::read_file(tmp / "live" / "fullchain.pem"), m.cert_pem + ca.cert_pem);
  EXPECT_EQ(test::read_file(tmp / "live" / "bundle.pem"),
            std::string(m.key_pem.view()) + m.cert_pem + ca.cert_pem);
  auto bundle = test::read_file(tmp / "live" / "bundle.pem");
  EXPECT_TRUE(test::pem_key_matches_cert(bundle, bundle));
}

TEST(FileSink, LoadCurrentRoundTrips) {
  TempDir tmp;
  auto ca = test::make_test_ca("Test Issuing CA");
  auto m = test::make_test_material("api.internal", std::chrono::hours(96), &ca);
  m.broker = "corp";
  m.broker_state = {{"lemur_id", "7"}, {"order", "https://acme/order/1"}};
  FileSink sink(files_config(tmp / "live"));
  ASSERT_TRUE(sink.commit(m));

  FileSink reader(files_config(tmp / "live"));
  auto loaded = reader.load_current();
  ASSERT_TRUE(loaded) << loaded.error().message;
  ASSERT_TRUE(loaded->has_value());
  const Material& l = **loaded;
  EXPECT_EQ(l.cert_pem, m.cert_pem);
  EXPECT_EQ(l.chain_pem, m.chain_pem);
  EXPECT_EQ(l.key_pem.view(), m.key_pem.view());
  EXPECT_EQ(l.serial_hex, m.serial_hex);
  EXPECT_EQ(l.sha256_hex, m.sha256_hex);
  EXPECT_EQ(l.not_before, m.not_before);
  EXPECT_EQ(l.not_after, m.not_after);
  EXPECT_EQ(l.broker, "corp");
  EXPECT_EQ(l.broker_state, m.broker_state);
}

TEST(FileSink, LoadCurrentWithoutGenerationIsNullopt) {
  TempDir tmp;
  FileSink missing(files_config(tmp / "does" / "not" / "exist"));
  auto r = missing.load_current();
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->has_value());

  fs::create_directories(tmp / "empty");
  test::write_file(tmp / "empty" / "unrelated.txt", "hello");
  FileSink empty(files_config(tmp / "empty"));
  r = empty.load_current();
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->has_value());
}

// Each corruption makes load_current() an Error (never a crash, never a wrong Material), and the
// next commit repairs the directory.
TEST(FileSink, LoadCurrentRejectsCorruptGenerations) {
  auto other = test::make_test_material("other.internal");
  struct Case {
    std::string name;
    std::function<void(const fs::path& dir, const fs::path& gen)> corrupt;
    std::string expect;  // part of the error message
  };
  const std::vector<Case> cases = {
      {"key of another certificate",
       [&](const fs::path&, const fs::path& gen) {
         test::write_file(gen / "key.pem", std::string(other.key_pem.view()), fs::perms(0600));
       },
       "does not match"},
      {"truncated key",
       [](const fs::path&, const fs::path& gen) {
         auto k = test::read_file(gen / "key.pem");
         test::write_file(gen / "key.pem", k.substr(0, k.size() / 2), fs::perms(0600));
       },
       "key.pem"},
      {"missing key", [](const fs::path&, const fs::path& gen) { fs::remove(gen / "key.pem"); },
       "key.pem"},
      {"binary garbage cert",
       [](const fs::path&, const fs::path& gen) {
         std::string junk;
         for (int i = 0; i < 4096; ++i) junk.push_back(static_cast<char>((i * 131 + 7) & 0xff));
         test::write_file(gen / "cert.pem", junk);
       },
       "cert.pem"},
      {"cert of another key",
       [&](const fs::path&, const fs::path& gen) { test::write_file(gen / "cert.pem", other.cert_pem); },
       "does not match"},
      {"bundle torn",
       [](const fs::path&, const fs::path& gen) {
         auto b = test::read_file(gen / "bundle.pem");
         test::write_file(gen / "bundle.pem", b.substr(0, b.size() - 10), fs::perms(0600));
       },
       "bundle.pem"},
      {"fullchain differs",
       [&](const fs::path&, const fs::path& gen) { test::write_file(gen / "fullchain.pem", other.cert_pem); },
       "fullchain.pem"},
      {"meta.json not JSON",
       [](const fs::path&, const fs::path& gen) { test::write_file(gen / "meta.json", "{\"serial\":"); },
       "meta.json"},
      {"meta.json an array",
       [](const fs::path&, const fs::path& gen) { test::write_file(gen / "meta.json", "[1,2]"); },
       "meta.json"},
      {"meta.json wrong sha256",
       [](const fs::path&, const fs::path& gen) {
         auto meta = test::read_file(gen / "meta.json");
         auto pos = meta.find("\"sha256\":\"") + 10;
         meta[pos] = meta[pos] == 'a' ? 'b' : 'a';
         test::write_file(gen / "meta.json", meta);
       },
       "sha256"},
      {"meta.json state not strings",
       [](const fs::path&, const fs::path& gen) {
         auto meta = test::read_file(gen / "meta.json");
         meta.replace(meta.find("\"state\":{}"), 10, "\"state\":{\"x\":1}");
         test::write_file(gen / "meta.json", meta);
       },
       "state"},
      {"huge chain",
       [](const fs::path&, const fs::path& gen) {
         test::write_file(gen / "chain.pem", std::string(2 << 20, 'A'));
       },
       "larger than"},
      {"key.pem a symlink",
       [&](const fs::path& dir, const fs::path& gen) {
         test::write_file(dir / "elsewhere.pem", std::string(other.key_pem.view()));
         fs::remove(gen / "key.pem");
         fs::create_symlink("../elsewhere.pem", gen / "key.pem");
       },
       "key.pem"},
      {"..data a regular file",
       [](const fs::path& dir, const fs::path&) {
         fs::remove(dir / "..data");
         test::write_file(dir / "..data", "not a link");
       },
       "not a symlink"},
      {"..data dangling",
       [](const fs::path&, const fs::path& gen) { fs::remove_all(gen); },
       "opening the generation"},
      {"..data pointing elsewhere",
       [](const fs::path& dir, const fs::path&) {
         fs::remove(dir / "..data");
         fs::create_symlink("/etc", dir / "..data");
       },
       "not a certagent generation"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    test::ScratchDir tmp;
    const auto dir = tmp / "live";
    FileSink sink(files_config(dir));
    auto m = test::make_test_material("web.internal");
    auto gen = sink.commit(m);
    ASSERT_TRUE(gen) << gen.error().message;
    c.corrupt(dir, *gen);
    auto r = sink.load_current();
    ASSERT_FALSE(r) << "corruption not detected";
    EXPECT_NE(r.error().message.find(c.expect), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.find("PRIVATE KEY"), std::string::npos) << r.error().message;
    // The caller then issues a new certificate: the commit repairs everything.
    auto fresh = test::make_test_material("web.internal");
    auto again = sink.commit(fresh);
    ASSERT_TRUE(again) << again.error().message;
    auto l = sink.load_current();
    ASSERT_TRUE(l) << l.error().message;
    ASSERT_TRUE(l->has_value());
    EXPECT_EQ((*l)->cert_pem, fresh.cert_pem);
  }
}

// --- generations --------------------------------------------------------------------------------

TEST(FileSink, KeepPrunesTheOldestGenerations) {
  test::ScratchDir tmp;  // many commits: tmpfs keeps it fast
  const auto dir = tmp / "live";
  FileSink sink(files_config(dir, 2));
  ASSERT_TRUE(sink.commit(test::make_test_material("a")));
  // Foreign things that merely look similar are never touched.
  fs::create_directory(dir / "..foo");
  fs::create_directory(dir / "..2020-01-01T00-00-00.000000Z.XYZ");  // uppercase: not ours
  test::write_file(dir / "notes.txt", "mine");
  test::write_file(dir / "..data.tmp-zz", "not hex: not ours");

  std::vector<fs::path> gens;
  for (int i = 0; i < 5; ++i) {
    auto g = sink.commit(test::make_test_material("a"));
    ASSERT_TRUE(g) << g.error().message;
    gens.push_back(*g);
  }
  EXPECT_EQ(generations(dir),
            (std::vector<std::string>{gens[3].filename().string(), gens[4].filename().string()}));
  EXPECT_EQ(data_target(dir), gens[4].filename().string());
  EXPECT_TRUE(fs::is_directory(dir / "..foo"));
  EXPECT_TRUE(fs::is_directory(dir / "..2020-01-01T00-00-00.000000Z.XYZ"));
  EXPECT_EQ(test::read_file(dir / "notes.txt"), "mine");
  EXPECT_TRUE(fs::exists(dir / "..data.tmp-zz"));

  FileSink keep_one(files_config(dir, 1));
  auto g = keep_one.commit(test::make_test_material("a"));
  ASSERT_TRUE(g);
  EXPECT_EQ(generations(dir), std::vector<std::string>{g->filename().string()});
  FileSink keep_zero(files_config(dir, 0));  // treated as 1: the current one always stays
  g = keep_zero.commit(test::make_test_material("a"));
  ASSERT_TRUE(g);
  EXPECT_EQ(generations(dir), std::vector<std::string>{g->filename().string()});
}

TEST(FileSink, GenerationNamesAreUniqueAndInCommitOrder) {
  test::ScratchDir tmp;  // many commits: tmpfs keeps it fast
  FileSink sink(files_config(tmp / "live", 100));
  auto m = test::make_test_material("same");  // same serial every time: only the time differs
  std::vector<std::string> names;
  for (int i = 0; i < 30; ++i) {
    auto g = sink.commit(m);
    ASSERT_TRUE(g) << g.error().message;
    names.push_back(g->filename().string());
  }
  auto sorted = names;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, names);
  EXPECT_EQ(std::unique(sorted.begin(), sorted.end()), sorted.end());
  EXPECT_EQ(generations(tmp / "live").size(), 30u);
}

TEST(FileSink, GenerationNamePattern) {
  EXPECT_TRUE(FileSink::is_generation_name("..2026-11-22T10-15-30.123456Z.abc123"));
  EXPECT_TRUE(FileSink::is_generation_name("..2026-11-22T10-15-30.123456Z.0-2"));
  EXPECT_FALSE(FileSink::is_generation_name("..data"));
  EXPECT_FALSE(FileSink::is_generation_name("..data.tmp-abcd"));
  EXPECT_FALSE(FileSink::is_generation_name("..2026-11-22T10-15-30.123456Z."));
  EXPECT_FALSE(FileSink::is_generation_name("..2026-11-22T10-15-30.123456Z.ABC"));
  EXPECT_FALSE(FileSink::is_generation_name("..2026-11-22T10-15-30.123456Z.ab-"));
  EXPECT_FALSE(FileSink::is_generation_name("..2026-11-22T10:15:30.123456Z.ab"));
  EXPECT_FALSE(FileSink::is_generation_name(".2026-11-22T10-15-30.123456Z.ab"));
  EXPECT_FALSE(FileSink::is_generation_name("..2026-11-22T10-15-30.123456Z.ab/x"));
}

// --- robustness --------------------------------------------------------------------------------

TEST(FileSink, CreatesTheMissingDirectoryAndParents0755) {
  TempDir tmp;
  const auto dir = tmp / "a" / "b" / "live";
  mode_t old = ::umask(077);  // the daemon may run with a strict umask
  FileSink sink(files_config(dir));
  auto g = sink.commit(test::make_test_material("x"));
  ::umask(old);
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(mode_of(tmp / "a"), 0755u);
  EXPECT_EQ(mode_of(tmp / "a" / "b"), 0755u);
  EXPECT_EQ(mode_of(dir), 0755u);
  EXPECT_EQ(mode_of(dir / "cert.pem"), 0644u);
  EXPECT_EQ(mode_of(dir / "key.pem"), 0600u);
  EXPECT_EQ(mode_of(*g), 0755u);
}

TEST(FileSink, ReplacesForeignFilesAtOurNamesAndLeavesTheRest) {
  TempDir tmp;
  const auto dir = tmp / "live";
  fs::create_directories(dir);
  test::write_file(dir / "cert.pem", "an old hand-copied certificate");
  test::write_file(dir / "key.pem", "an old key", fs::perms(0600));
  test::write_file(dir / "..data", "a regular file where our link goes");
  test::write_file(dir / "README", "keep me");
  fs::create_directory(dir / "archive");
  fs::create_symlink("/nonexistent", dir / "chain.pem");

  FileSink sink(files_config(dir));
  auto m = test::make_test_material("x");
  auto g = sink.commit(m);
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_TRUE(fs::is_symlink(dir / "..data"));
  for (const auto& name : FileSink::file_names()) {
    EXPECT_EQ(fs::read_symlink(dir / name), fs::path("..data") / name) << name;
  }
  EXPECT_EQ(test::read_file(dir / "cert.pem"), m.cert_pem);
  EXPECT_EQ(test::read_file(dir / "README"), "keep me");
  EXPECT_TRUE(fs::is_directory(dir / "archive"));
  auto l = sink.load_current();
  ASSERT_TRUE(l && l->has_value());
}

TEST(FileSink, ReplacesADanglingData) {
  TempDir tmp;
  const auto dir = tmp / "live";
  fs::create_directories(dir);
  fs::create_symlink("..2020-01-01T00-00-00.000000Z.ab", dir / "..data");
  FileSink sink(files_config(dir));
  auto l = sink.load_current();
  EXPECT_FALSE(l);  // broken, so the caller issues a new one
  auto g = sink.commit(test::make_test_material("x"));
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(data_target(dir), g->filename().string());
}

TEST(FileSink, ADirectoryWhereALinkGoesIsAnErrorAndNothingIsWritten) {
  for (std::string name : {"..data", "cert.pem"}) {
    SCOPED_TRACE(name);
    TempDir tmp;
    const auto dir = tmp / "live";
    fs::create_directories(dir / name);
    FileSink sink(files_config(dir));
    auto g = sink.commit(test::make_test_material("x"));
    ASSERT_FALSE(g);
    EXPECT_NE(g.error().message.find("is a directory"), std::string::npos) << g.error().message;
    EXPECT_NE(g.error().message.find(name), std::string::npos) << g.error().message;
    EXPECT_TRUE(generations(dir).empty());
    EXPECT_TRUE(fs::is_directory(dir / name));
  }
}

TEST(FileSink, RejectsAKeyThatDoesNotMatchAndKeepsTheCurrentGeneration) {
  TempDir tmp;
  const auto dir = tmp / "live";
  FileSink sink(files_config(dir));
  auto good = test::make_test_material("x");
  auto g = sink.commit(good);
  ASSERT_TRUE(g);
  auto other = test::make_test_material("y");
  Material bad = test::make_test_material("x");
  bad.key_pem = other.key_pem.clone();
  auto r = sink.commit(bad);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("does not match"), std::string::npos) << r.error().message;
  EXPECT_EQ(generations(dir), std::vector<std::string>{g->filename().string()});
  EXPECT_EQ(test::read_file(dir / "cert.pem"), good.cert_pem);
}

TEST(FileSink, RejectsMalformedMaterial) {
  TempDir tmp;
  FileSink sink(files_config(tmp / "live"));
  auto base = [] { return test::make_test_material("x"); };
  {
    auto m = base();
    m.cert_pem = "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n";
    EXPECT_FALSE(sink.commit(m));
  }
  {
    auto m = base();
    m.key_pem = Secret();
    auto r = sink.commit(m);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("no private key"), std::string::npos);
  }
  {
    auto m = base();
    m.serial_hex = "deadbeef";
    auto r = sink.commit(m);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("serial"), std::string::npos);
  }
  {
    auto m = base();
    m.chain_pem = "not a chain";
    EXPECT_FALSE(sink.commit(m));
  }
  {
    auto m = base();  // the serial in another spelling is the same serial
    std::string upper = "00" + m.serial_hex;
    for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    m.serial_hex = upper;
    auto r = sink.commit(m);
    EXPECT_TRUE(r) << r.error().message;
  }
}

TEST(FileSink, AppliesOwnerAndGroupKeysStay0600) {
  TempDir tmp;
  const auto dir = tmp / "live";
  std::string owner, group;
  uid_t uid;
  gid_t gid;
  if (::geteuid() == 0) {
    owner = "nobody";
    group = "nogroup";
    uid = 65534;
    gid = 65534;
  } else {  // without root only our own ids can be given away
    uid = ::geteuid();
    gid = ::getegid();
    owner = ::getpwuid(uid)->pw_name;
    group = ::getgrgid(gid)->gr_name;
  }
  FileSink sink(files_config(dir, 3, owner, group));
  auto g = sink.commit(test::make_test_material("x"));
  ASSERT_TRUE(g) << g.error().message;
  for (const auto& name : FileSink::file_names()) {
    struct stat st {};
    ASSERT_EQ(::stat((dir / name).c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, uid) << name;
    EXPECT_EQ(st.st_gid, gid) << name;
  }
  EXPECT_EQ(mode_of(dir / "key.pem"), 0600u);
  EXPECT_EQ(mode_of(dir / "bundle.pem"), 0600u);
  EXPECT_EQ(mode_of(dir / "cert.pem"), 0644u);
  // The generation directory stays the writer's, so it can prune without CAP_DAC_OVERRIDE.
  struct stat st {};
  ASSERT_EQ(::stat(g->c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, ::geteuid());
  EXPECT_EQ(st.st_mode & 07777, 0755u);

  // Numeric ids work too.
  FileSink numeric(files_config(dir, 3, std::to_string(uid), std::to_string(gid)));
  EXPECT_TRUE(numeric.commit(test::make_test_material("x")));
}

TEST(FileSink, UnknownOwnerOrGroupIsAClearErrorAndNothingIsSwapped) {
  TempDir tmp;
  const auto dir = tmp / "live";
  FileSink sink(files_config(dir));
  auto good = test::make_test_material("x");
  auto g = sink.commit(good);
  ASSERT_TRUE(g);
  FileSink bad_user(files_config(dir, 3, "no-such-user-certagent"));
  auto r = bad_user.commit(test::make_test_material("x"));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("no such user \"no-such-user-certagent\""), std::string::npos)
      << r.error().message;
  FileSink bad_group(files_config(dir, 3, "", "no-such-group-certagent"));
  r = bad_group.commit(test::make_test_material("x"));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("no such group"), std::string::npos) << r.error().message;
  EXPECT_EQ(generations(dir), std::vector<std::string>{g->filename().string()});
  EXPECT_EQ(test::read_file(dir / "cert.pem"), good.cert_pem);
}

// Writing fails half-way (EFBIG from RLIMIT_FSIZE, as ENOSPC would): clear error, the partial
// generation is removed, the current one is untouched.
TEST(FileSink, WriteErrorRemovesThePartialGenerationAndKeepsTheCurrent) {
  TempDir tmp;
  const auto dir = tmp / "live";
  FileSink sink(files_config(dir));
  auto good = test::make_test_material("x");
  auto g = sink.commit(good);
  ASSERT_TRUE(g);
  auto ca = test::make_test_ca("CA");
  auto big = test::make_test_material("y", std::chrono::hours(96), &ca);
  // Every file is smaller than fullchain.pem (cert + chain) except bundle.pem (key + fullchain):
  // a limit one byte short of fullchain fails exactly those two. Sizes vary by a few bytes per
  // run (DER signature lengths), so the limit is derived, not fixed.
  const rlim_t limit = big.fullchain_pem().size() - 1;
  ASSERT_LT(big.cert_pem.size(), limit);

  KeysForChild keys;
  keys.add(big);
  auto outcome = run_in_child([&]() -> std::string {
    keys.restore();
    ::signal(SIGXFSZ, SIG_IGN);
    rlimit lim{limit, limit};  // cert.pem and chain.pem fit, fullchain.pem does not
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) return "setrlimit failed";
    auto r = sink.commit(big);
    if (r) return "commit succeeded despite the file size limit";
    if (r.error().message.find("File too large") == std::string::npos) {
      return "unexpected error: " + r.error().message;
    }
    if (r.error().message.find("fullchain.pem") == std::string::npos) {
      return "error does not name the file: " + r.error().message;
    }
    return "";
  });
  ASSERT_TRUE(outcome.ok) << outcome.message;
  EXPECT_EQ(generations(dir), std::vector<std::string>{g->filename().string()});
  auto l = sink.load_current();
  ASSERT_TRUE(l && l->has_value());
  EXPECT_EQ((*l)->cert_pem, good.cert_pem);
  EXPECT_TRUE(sink.commit(big));  // and without the limit it works
}

// A real full file system: a tiny tmpfs in a private mount namespace (needs root).
TEST(FileSink, NoSpaceLeftRemovesThePartialGenerationAndKeepsTheCurrent) {
  // CI and the development machines run the suite as root; elsewhere this is a clear failure.
  ASSERT_EQ(::geteuid(), 0u) << "mounting a tmpfs needs root: run the suite as root";
  TempDir tmp;
  auto ca = test::make_test_ca("CA");
  std::vector<Material> materials;
  for (int i = 0; i < 4; ++i) materials.push_back(test::make_test_material("x", std::chrono::hours(1), &ca));
  const auto mnt = tmp / "mnt";
  fs::create_directories(mnt);
  KeysForChild keys;
  keys.add(materials[0]);
  keys.add(materials[1]);
  auto outcome = run_in_child([&]() -> std::string {
    keys.restore();
    if (::unshare(CLONE_NEWNS) != 0) return std::string("unshare(CLONE_NEWNS): ") + strerror(errno);
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) return "mount private failed";
    // 8 pages: one generation takes 6 (one per file), the second cannot fit.
    if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=32k,mode=0755") != 0) {
      return std::string("mount tmpfs: ") + strerror(errno);
    }
    FileSink sink(files_config(mnt / "live"));
    auto first = sink.commit(materials[0]);
    if (!first) return "first commit failed: " + first.error().message;
    auto second = sink.commit(materials[1]);
    if (second) return "second commit fit into the tiny tmpfs; test is miscalibrated";
    if (second.error().message.find("No space left on device") == std::string::npos) {
      return "unexpected error: " + second.error().message;
    }
    std::vector<std::string> gens = generations(mnt / "live");
    if (gens != std::vector<std::string>{first->filename().string()}) {
      return "partial generation left behind (" + std::to_string(gens.size()) + " generations)";
    }
    auto l = sink.load_current();
    if (!l || !l->has_value()) return "current generation unreadable after ENOSPC";
    if ((*l)->cert_pem != materials[0].cert_pem) return "current generation changed";
    if (!test::pem_key_matches_cert(test::read_file(mnt / "live" / "bundle.pem"),
                                    test::read_file(mnt / "live" / "bundle.pem"))) {
      return "bundle.pem mismatched after ENOSPC";
    }
    return "";
  });
  ASSERT_FALSE(outcome.skipped) << outcome.message;
  EXPECT_TRUE(outcome.ok) << outcome.message;
}

TEST(FileSink, PermissionDeniedIsAClearError) {
  TempDir tmp;
  const auto ro = tmp / "ro";
  fs::create_directories(ro);
  fs::permissions(ro, fs::perms(0555));
  auto m = test::make_test_material("x");
  KeysForChild keys;
  keys.add(m);
  auto outcome = run_in_child([&]() -> std::string {
    keys.restore();
    if (::geteuid() == 0) {  // root ignores modes: become nobody
      if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) {
        return "dropping privileges failed";
      }
    }
    for (const auto& dir : {ro, ro / "sub" / "live"}) {
      FileSink sink(files_config(dir));
      auto r = sink.commit(m);
      if (r) return "commit into " + dir.string() + " succeeded";
      if (r.error().message.find("Permission denied") == std::string::npos ||
          r.error().message.find(ro.string()) == std::string::npos) {
        return "unclear error: " + r.error().message;
      }
    }
    return "";
  });
  EXPECT_TRUE(outcome.ok) << outcome.message;
  EXPECT_TRUE(fs::is_empty(ro));
}

TEST(FileSink, CleansUpAfterACrashedCommit) {
  TempDir tmp;
  const auto dir = tmp / "live";
  FileSink sink(files_config(dir, 3));
  auto g1 = sink.commit(test::make_test_material("x"));
  ASSERT_TRUE(g1);
  // What a writer killed mid-commit leaves: a newer generation never swapped in, half written,
  // and temp symlinks.
  const std::string partial = "..2999-01-01T00-00-00.000000Z.abc";
  fs::create_directory(dir / partial);
  test::write_file(dir / partial / "cert.pem", "half");
  fs::create_symlink(partial, dir / "..data.tmp-0123abcd");
  fs::create_symlink("..data/cert.pem", dir / "..cert.pem.tmp-beef");

  auto g2 = sink.commit(test::make_test_material("x"));
  ASSERT_TRUE(g2) << g2.error().message;
  EXPECT_EQ(generations(dir),
            (std::vector<std::string>{g1->filename().string(), g2->filename().string()}));
  EXPECT_FALSE(fs::exists(dir / "..data.tmp-0123abcd"));
  EXPECT_FALSE(fs::is_symlink(dir / "..cert.pem.tmp-beef"));
  // The new generation still sorts after the previous one.
  EXPECT_LT(g1->filename().string(), g2->filename().string());
}

TEST(FileSink, CleansUpWhenNoGenerationWasEverSwappedIn) {
  TempDir tmp;
  const auto dir = tmp / "live";
  fs::create_directories(dir / "..2026-01-01T00-00-00.000000Z.ab");  // crash before the first swap
  FileSink sink(files_config(dir));
  auto g = sink.commit(test::make_test_material("x"));
  ASSERT_TRUE(g) << g.error().message;
  EXPECT_EQ(generations(dir), std::vector<std::string>{g->filename().string()});
}

TEST(FileSink, ASecondWriterIsRefused) {
  TempDir tmp;
  const auto dir = tmp / "live";
  fs::create_directories(dir);
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  FileSink sink(files_config(dir));
  auto r = sink.commit(test::make_test_material("x"));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("another certagent"), std::string::npos) << r.error().message;
  ::close(fd);
  EXPECT_TRUE(sink.commit(test::make_test_material("x")));
}

TEST(FileSink, RemoveAllGenerationsLeavesOnlyForeignFiles) {
  TempDir tmp;
  const auto dir = tmp / "live";
  FileSink sink(files_config(dir));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sink.commit(test::make_test_material("x")));
  test::write_file(dir / "README", "keep");
  fs::create_symlink("elsewhere", dir / "custom.pem");
  ASSERT_TRUE(sink.remove_all_generations());
  EXPECT_EQ(entries(dir), (std::vector<std::string>{"README", "custom.pem"}));
  auto l = sink.load_current();
  ASSERT_TRUE(l);
  EXPECT_FALSE(l->has_value());
  // Idempotent, and fine on a missing directory.
  EXPECT_TRUE(sink.remove_all_generations());
  FileSink missing(files_config(tmp / "nope"));
  EXPECT_TRUE(missing.remove_all_generations());
  // And a later commit starts over.
  EXPECT_TRUE(sink.commit(test::make_test_material("x")));
}

// --- readers during writes -----------------------------------------------------------------------

TEST(FileSink, ReadersNeverSeeAMismatchDuring500Commits) {
  test::ScratchDir tmp;
  const auto dir = tmp / "live";
  std::vector<Material> materials;
  for (int i = 0; i < 16; ++i) materials.push_back(test::make_test_material("r" + std::to_string(i)));
  FileSink sink(files_config(dir, 3));
  ASSERT_TRUE(sink.commit(materials[0]));

  std::atomic<bool> stop{false};
  std::atomic<int> checks{0}, mismatches{0}, load_failures{0};
  std::string first_failure;
  std::thread reader([&] {
    FileSink reader_sink(files_config(dir, 3));
    while (!stop.load()) {
      // A reader opening bundle.pem: one open(), one generation.
      auto bundle = test::read_file(dir / "bundle.pem");
      if (!bundle.empty()) {
        ++checks;
        if (!test::pem_key_matches_cert(bundle, bundle)) ++mismatches;
      }
      // A reader resolving ..data once.
      auto target = data_target(dir);
      auto cert = test::read_file(dir / target / "cert.pem");
      auto key = test::read_file(dir / target / "key.pem");
      if (!cert.empty() && !key.empty()) {  // empty: pruned meanwhile, never half-written
        ++checks;
        if (!test::pem_key_matches_cert(key, cert)) ++mismatches;
      }
      auto before = data_target(dir);
      auto l = reader_sink.load_current();
      if (!l || !l->has_value()) {
        // Only acceptable if the generation it read was pruned under it.
        if (data_target(dir) == before) {
          if (++load_failures == 1) first_failure = l ? "nullopt" : l.error().message;
        }
      } else {
        ++checks;
      }
    }
  });
  // At least 500 commits, and on until the reader has made 500 checks alongside them (a busy
  // machine may give the reader fewer turns); 5,000 commits at most.
  int commits = 0;
  while (commits < 500 || (checks.load() <= 500 && commits < 5000)) {
    ++commits;
    auto g = sink.commit(materials[static_cast<std::size_t>(commits) % materials.size()]);
    ASSERT_TRUE(g) << g.error().message;
  }
  stop = true;
  reader.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(load_failures.load(), 0) << first_failure;
  EXPECT_GT(checks.load(), 500) << "the reader hardly ran during " << commits << " commits";
  EXPECT_EQ(generations(dir).size(), 3u);
  RecordProperty("reader_checks", checks.load());
}

}  // namespace
}  // namespace certagent
