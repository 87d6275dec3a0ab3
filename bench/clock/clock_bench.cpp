// The daemon's certificate loops (real timers, real io_context, 1,000 certificates) under a wall
// clock that someone keeps setting. The clock is injected: a SystemClock plus an offset that the
// bench moves, calling ClockWatch::clock_was_set() each time, as the kernel's timerfd would
// (TFD_TIMER_CANCEL_ON_SET). The host's clock is never touched. The broker is the unit tests'
// fake one (signs at once with its own CA) on the same clock: a local CA.
//
//   clock_bench [--certs N] [--idle-seconds S] [--old]
//
// Prints (1) the idle CPU and the loop wake-ups while the clock steps +0.5 ms every 100 ms
// (--old: every clock change wakes every loop, as before ClockWatch ignored sub-second steps),
// and (2) for each step (+0.5 ms, +6 min, -1 h, +1 h, +3 h), the time from the step until every
// certificate is valid again and every loop asleep, and how many were re-issued.

#include "agent/certificate_loop.h"
#include "agent/clock_watch.h"
#include "core/logging.h"
#include "tests/support/fake_renewer.h"
#include "tests/support/test_support.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace certagent {
namespace {

using namespace std::chrono_literals;

// The host's clocks, with the wall clock moved by the bench.
class SteppedClock final : public Clock {
 public:
  SystemTime now() const override { return std::chrono::system_clock::now() + offset_; }
  SteadyTime steady_now() const override { return std::chrono::steady_clock::now(); }
  void step(std::chrono::nanoseconds d) { offset_ += std::chrono::duration_cast<SystemTime::duration>(d); }

 private:
  SystemTime::duration offset_{};
};

// Counts every wait a loop starts: each one is a wake-up and a re-arm.
class CountingTimer final : public LoopTimer {
 public:
  CountingTimer(std::unique_ptr<LoopTimer> inner, std::uint64_t& waits) : inner_(std::move(inner)), waits_(waits) {}
  boost::asio::awaitable<void> wait(std::optional<SystemTime> wall, std::optional<SteadyTime> steady) override {
    ++waits_;
    co_await inner_->wait(wall, steady);
  }
  void cancel() override { inner_->cancel(); }

 private:
  std::unique_ptr<LoopTimer> inner_;
  std::uint64_t& waits_;
};

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct Bench {
  int certs{1000};
  int idle_seconds{10};
  bool old_behaviour{false};

  boost::asio::io_context io;
  SteppedClock clock;
  test::TempDir dir{"certagent-clock-bench"};
  CertificateStore store;
  Metrics metrics;
  std::unique_ptr<AuditLog> audit;
  boost::asio::thread_pool workers{1};
  test::FakeRenewer* broker{nullptr};
  std::shared_ptr<BrokerHandle> handle;
  std::vector<std::shared_ptr<CertificateLoop>> loops;
  std::uint64_t waits{0};

  void start() {
    audit = std::make_unique<AuditLog>(dir / "audit.log");
    auto renewer = std::make_unique<test::FakeRenewer>(clock);
    broker = renewer.get();
    broker->lifetime = 2h;
    test::write_file(dir / "root.pem", broker->root_pem());
    config::BrokerConfig bc;
    bc.name = "fake";
    bc.type = "fake";
    bc.max_in_flight = 16;
    handle = std::make_shared<BrokerHandle>(bc, std::move(renewer), io.get_executor());
    std::vector<config::CertificateConfig> configs;
    for (int i = 0; i < certs; ++i) {
      config::CertificateConfig c;
      c.name = "c" + std::to_string(i);
      c.broker = "fake";
      c.common_name = c.name + ".test";
      c.dns_names = {c.common_name};
      c.lifetime = 2h;
      c.max_lifetime = 3h;
      c.renew_at = 0.66;
      c.jitter = 0.1;
      c.trust_bundle = dir / "root.pem";
      configs.push_back(c);
    }
    store.configure(configs);
    auto system_timers = system_loop_timers(clock);
    for (const auto& c : configs) {
      LoopServices s;
      s.executor = io.get_executor();
      s.workers = &workers;
      s.clock = &clock;
      s.store = &store;
      s.metrics = &metrics;
      s.audit = audit.get();
      s.state_dir = dir.path();
      s.timers = [this, system_timers](const boost::asio::any_io_executor& ex) -> std::unique_ptr<LoopTimer> {
        return std::make_unique<CountingTimer>(system_timers(ex), waits);
      };
      auto loop = std::make_shared<CertificateLoop>(s, c, handle, std::vector<std::shared_ptr<reloaders::Reloader>>{},
                                                    std::vector<std::shared_ptr<reloaders::Reloader>>{});
      boost::asio::co_spawn(io, loop->run(), boost::asio::detached);
      loops.push_back(loop);
    }
  }

  bool all_valid_and_asleep() const {
    const auto now = clock.now();
    for (const auto& [name, e] : store.entries())
      if (e.renewing || effective_state(e, now) != CertState::valid) return false;
    return true;
  }

  // Runs the io_context until every certificate is valid, polling every millisecond.
  std::chrono::duration<double> run_until_valid() {
    const auto t0 = std::chrono::steady_clock::now();
    while (!all_valid_and_asleep()) io.run_one_for(1ms);
    // Drain what is ready (loops re-arming) so the next phase starts from a quiet loop.
    io.poll();
    return std::chrono::steady_clock::now() - t0;
  }

  void wake_all() {
    for (auto& l : loops) l->wake();
  }
};

int run(int argc, char** argv) {
  Bench b;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--certs") && i + 1 < argc) b.certs = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--idle-seconds") && i + 1 < argc) b.idle_seconds = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--old")) b.old_behaviour = true;
    else {
      std::fprintf(stderr, "usage: clock_bench [--certs N] [--idle-seconds S] [--old]\n");
      return 2;
    }
  }
  log::get("agent")->set_level(spdlog::level::off);  // 1,000 expiry lines per step otherwise
  b.start();
  const double cpu0 = cpu_seconds();
  const auto issued = b.run_until_valid();
  std::printf("issued %d certificates in %.2f s (%.2f s CPU)\n", b.broker->issued, issued.count(),
              cpu_seconds() - cpu0);

  ClockWatch watch(b.io.get_executor(), b.clock, [&](std::chrono::nanoseconds) { b.wake_all(); });

  // (1) Idle under +0.5 ms every 100 ms.
  {
    boost::asio::steady_timer ticker(b.io);
    int steps = 0;
    const int total = b.idle_seconds * 10;
    std::function<void()> tick = [&] {
      ticker.expires_after(100ms);
      ticker.async_wait([&](boost::system::error_code) {
        b.clock.step(500us);
        if (b.old_behaviour) b.wake_all();  // what every clock change did before
        else watch.clock_was_set();
        if (++steps < total) tick();
      });
    };
    const auto waits0 = b.waits;
    const double c0 = cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    tick();
    while (steps < total) b.io.run_one();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double cpu = cpu_seconds() - c0;
    std::printf("idle %d certificates, +0.5 ms every 100 ms for %.1f s (%s): CPU %.3f s = %.2f %% of one core, "
                "%llu loop wake-ups, %llu clock_jump acted on, %llu ignored\n",
                b.certs, wall, b.old_behaviour ? "every change wakes every loop" : "ClockWatch >= 1 s", cpu,
                100.0 * cpu / wall, static_cast<unsigned long long>(b.waits - waits0),
                static_cast<unsigned long long>(watch.jumps()), static_cast<unsigned long long>(watch.ignored()));
  }

  // (2) Recovery after each kind of step.
  struct Step {
    const char* name;
    std::chrono::nanoseconds d;
  };
  for (const Step s : {Step{"+0.5ms", 500us}, Step{"+6min", 6min}, Step{"-1h", -1h}, Step{"+1h", 1h},
                       Step{"+3h", 3h}}) {
    const int before = b.broker->issued;
    const auto waits0 = b.waits;
    const double c0 = cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    b.clock.step(s.d);
    watch.clock_was_set();
    b.run_until_valid();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - t0;
    std::printf("step %-7s all %d valid %.3f s after the step; re-issued %d; %llu loop wake-ups; CPU %.3f s\n",
                s.name, b.certs, took.count(), b.broker->issued - before,
                static_cast<unsigned long long>(b.waits - waits0), cpu_seconds() - c0);
  }
  for (auto& l : b.loops) l->stop();
  b.io.poll();
  b.workers.join();
  return 0;
}

}  // namespace
}  // namespace certagent

int main(int argc, char** argv) { return certagent::run(argc, argv); }
