// Crash safety of the file sink: a writer process commits generations in a tight loop and is
// SIGKILLed at random moments, 200 times. After every kill, and all the while from a reader
// thread, the directory must hold one consistent set: bundle.pem's key matches its certificate,
// the files under one resolution of ..data match, and load_current() succeeds.
#include "agent/file_sink.h"

#include "tests/support/test_support.h"
#include "tests/unit/agent/test_material.h"

#include <signal.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <random>
#include <set>
#include <thread>

namespace certagent {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string data_target(const fs::path& dir) {
  std::error_code ec;
  auto t = fs::read_symlink(dir / "..data", ec);
  return ec ? std::string() : t.string();
}

config::FilesConfig files_config(const fs::path& dir) {
  config::FilesConfig c;
  c.dir = dir;
  c.keep = 3;
  return c;
}

// Problems seen by any check; the first few are kept for the report.
struct Findings {
  std::mutex mu;
  std::vector<std::string> problems;
  std::atomic<int> checks{0};
  void add(std::string p) {
    std::lock_guard lock(mu);
    if (problems.size() < 10) problems.push_back(std::move(p));
  }
  std::size_t count() {
    std::lock_guard lock(mu);
    return problems.size();
  }
};

// One round of the reader's checks. `committed`: a generation has been swapped in before.
void check_directory(const fs::path& dir, const FileSink& sink, bool committed, Findings& f,
                     const char* who) {
  auto bundle = test::read_file(dir / "bundle.pem");
  if (!bundle.empty()) {
    ++f.checks;
    if (!test::pem_key_matches_cert(bundle, bundle)) f.add(std::string(who) + ": bundle.pem mismatch");
  } else if (committed && fs::exists(dir / "..data")) {
    // Empty read with a current generation: a torn or vanished current file.
    if (test::read_file(dir / "bundle.pem").empty()) f.add(std::string(who) + ": bundle.pem empty");
  }
  auto target = data_target(dir);
  if (!target.empty()) {
    auto cert = test::read_file(dir / target / "cert.pem");
    auto key = test::read_file(dir / target / "key.pem");
    if (!cert.empty() && !key.empty()) {
      ++f.checks;
      if (!test::pem_key_matches_cert(key, cert)) {
        f.add(std::string(who) + ": cert.pem/key.pem mismatch in " + target);
      }
    } else if (data_target(dir) == target) {
      f.add(std::string(who) + ": current generation " + target + " incomplete");
    }
  }
  auto before = data_target(dir);
  auto l = sink.load_current();
  if (l && l->has_value()) {
    ++f.checks;
  } else if (l && !committed && before.empty()) {
    // nullopt before the first commit: fine
  } else if (data_target(dir) == before) {
    f.add(std::string(who) + ": load_current " + (l ? "nullopt after a commit" : l.error().message));
  }
}

TEST(FileSinkCrash, KilledWriterNeverLeavesAMismatch) {
  test::quiet_logs();
  // tmpfs when available: a SIGKILL does not care about fsync, and the kill points then spread
  // over whole commits even on a loaded machine.
  test::ScratchDir tmp;
  const auto dir = tmp / "live";
  std::chrono::microseconds commit_time{};
  {
    std::vector<Material> materials;
    for (int i = 0; i < 16; ++i) materials.push_back(test::make_test_material("crash" + std::to_string(i)));
    test::write_file(tmp / "materials", test::encode_materials(materials), fs::perms(0600));
    // How long one commit takes here, to aim the kills inside commits.
    FileSink calibrate(files_config(tmp / "calibrate"));
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(calibrate.commit(materials[static_cast<std::size_t>(i) % 16]));
    commit_time = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::steady_clock::now() - t0) / 20;
  }
  const auto kill_window = std::max<std::chrono::microseconds>(3 * commit_time, 1ms);
  FileSink sink(files_config(dir));
  Findings findings;
  std::atomic<bool> committed{false};
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    FileSink reader_sink(files_config(dir));
    while (!stop.load()) {
      bool c = committed.load() || !data_target(dir).empty();
      if (c) committed = true;
      check_directory(dir, reader_sink, c, findings, "reader");
    }
  });

  std::mt19937 rng(std::random_device{}());
  std::set<std::string> generations_seen;
  int kills_mid_loop = 0, early_kills = 0;
  const auto started = std::chrono::steady_clock::now();
  // 200 kills take ~5-10 s; a heavily loaded CI box may stop early (still at least 50).
  const auto budget = started + 45s;
  for (int round = 0; round < 200 && findings.count() == 0; ++round) {
    if (round >= 50 && std::chrono::steady_clock::now() > budget) break;
    const auto before = data_target(dir);
    test::Process writer({CERTAGENT_FILE_SINK_WRITER, dir.string(), (tmp / "materials").string(), "3"},
                         test::Process::Options{.stderr_file = tmp / "writer.err"});
    if (round % 4 == 3) {
      // Kill anywhere from start-up through the first commits (leftover cleanup included).
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 10000));
      ++early_kills;
    } else {
      // Wait for this writer's first swap, then kill at a random point of the following ones.
      bool swapped = test::wait_until([&] { return data_target(dir) != before || !writer.running(); },
                                      10s, 1ms);
      ASSERT_TRUE(swapped) << "writer made no commit within 10 s";
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % kill_window.count()));
      ++kills_mid_loop;
    }
    writer.kill_now();
    auto status = writer.wait_exit(0ms);
    ASSERT_TRUE(status);
    ASSERT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL)
        << "writer exited by itself: " << test::read_file(tmp / "writer.err");
    auto now = data_target(dir);
    if (!now.empty()) {
      generations_seen.insert(now);
      committed = true;
    }
    check_directory(dir, sink, committed.load(), findings, "after kill");
  }
  stop = true;
  reader.join();
  const auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  for (const auto& p : findings.problems) ADD_FAILURE() << p;
  EXPECT_EQ(findings.count(), 0u);
  // Every mid-loop kill came after a swap, so most rounds leave a new current generation; a
  // loaded machine runs fewer rounds (at least 50), so the bound is relative to the kills made.
  EXPECT_GE(kills_mid_loop, 30) << "too few kills inside the commit loop";
  EXPECT_GE(generations_seen.size(), static_cast<std::size_t>(kills_mid_loop) * 3 / 4)
      << "too few distinct generations: the kills hit too early";

  // A fresh commit cleans up whatever the kills left: only our links, ..data and `keep`
  // generations remain.
  auto g = sink.commit(test::make_test_material("final"));
  ASSERT_TRUE(g) << g.error().message;
  std::set<std::string> names;
  int gens = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto name = e.path().filename().string();
    if (FileSink::is_generation_name(name)) {
      ++gens;
    } else {
      names.insert(name);
    }
  }
  EXPECT_LE(gens, 3);
  std::set<std::string> expected(FileSink::file_names().begin(), FileSink::file_names().end());
  expected.insert("..data");
  EXPECT_EQ(names, expected);
  std::printf("crash test on %s: %d kills (%d early, %d mid-loop), commit %.2f ms, %zu distinct "
              "current generations, %d consistency checks, %.1f s\n",
              tmp.path().parent_path().c_str(), kills_mid_loop + early_kills, early_kills,
              kills_mid_loop, commit_time.count() / 1000.0, generations_seen.size(),
              findings.checks.load(), elapsed);
}

}  // namespace
}  // namespace certagent
