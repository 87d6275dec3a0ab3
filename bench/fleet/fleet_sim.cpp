// Fleet simulation: N hosts, one certificate each, scheduled by the daemon's own renewal
// policy (agent/renewal_policy.h: renew_point, retry_delay) on a simulated clock with a seeded
// RNG, against one broker. A discrete-event run (min-heap of next-attempt times) records what
// the broker sees every second: accepted, rejected with 503 + Retry-After (over its ceiling) and
// refused (down). Prints the rate over time, peak/mean ratios and recovery times, and draws
// PNG charts into bench/fleet/out/ (or the directory given as argv[1]).

#include "agent/renewal_policy.h"
#include "bench/fleet/png.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <optional>
#include <queue>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace certagent::bench {
namespace {

using namespace std::chrono_literals;
using Ms = std::chrono::milliseconds;
constexpr std::int64_t kHour = 3600;

enum class RetryAfterMode { fixed, slot };

struct Scenario {
  std::string name;
  std::string title;
  int hosts{100000};
  Ms lifetime{96h};
  double renew_at{0.5};
  double jitter{0.1};
  std::int64_t horizon_s{192 * kHour};
  // Initial state.
  enum class Start { steady, bake, expiring_in_outage } start{Start::steady};
  // Broker.
  std::int64_t outage_from_s{-1};
  std::int64_t outage_to_s{-1};
  int ceiling{0};  // accepted requests per second; 0 = unlimited
  RetryAfterMode retry_after_mode{RetryAfterMode::fixed};
  std::int64_t retry_after_s{60};
  // expiring_in_outage: the hosts' retries are simulated from here on (the refused rate of a
  // long outage is stationary: expired hosts retry within the 30 s cap; simulating all 6 h
  // costs 90 M events for the same figure).
  std::int64_t simulate_from_s{0};
  // Proposal under test: Retry-After plus the full-jitter backoff instead of max() of both.
  bool jitter_after_retry_after{false};
  std::uint64_t seed{1};
};

struct Result {
  std::vector<std::uint32_t> accepted, rejected, refused;  // per second
  std::int64_t last_invalid_end_s{0};  // the last moment a host got out of "nothing valid"
  std::uint64_t events{0};
  double wall_ms{0};
};

struct Host {
  SystemTime not_after{};  // epoch = no material
  int failures{0};
};

struct Broker {
  const Scenario& s;
  std::int64_t second{-1};
  int used{0};
  double next_slot{0};  // slot mode: the next free second, fractional

  enum class Answer { accept, reject, refuse };
  Answer answer(double t, std::int64_t& retry_after_s) {
    const auto sec = static_cast<std::int64_t>(t);
    if (sec >= s.outage_from_s && sec < s.outage_to_s) return Answer::refuse;
    if (s.ceiling == 0) return Answer::accept;
    if (sec != second) {
      second = sec;
      used = 0;
    }
    if (used < s.ceiling) {
      ++used;
      return Answer::accept;
    }
    if (s.retry_after_mode == RetryAfterMode::fixed) {
      retry_after_s = s.retry_after_s;
    } else {
      // A broker that hands out its future capacity: each refused caller gets its own slot,
      // so callers that honour Retry-After come back at the advertised rate.
      next_slot = std::max(next_slot, t + 1.0) + 1.0 / s.ceiling;
      retry_after_s = static_cast<std::int64_t>(std::ceil(next_slot - t));
    }
    return Answer::reject;
  }
};

Result simulate(const Scenario& s) {
  const auto wall_start = std::chrono::steady_clock::now();
  const SystemTime epoch{};  // simulated time t seconds = epoch + 1e9 s + t (never the "none" value)
  const SystemTime origin = epoch + std::chrono::seconds(1'000'000'000);
  auto at = [&](double t) {
    return origin + std::chrono::duration_cast<SystemTime::duration>(std::chrono::duration<double>(t));
  };
  auto secs = [&](SystemTime tp) { return std::chrono::duration<double>(tp - origin).count(); };

  std::mt19937_64 rng(s.seed);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_real_distribution<double> jitter_u(-s.jitter, s.jitter);

  Result r;
  const auto horizon = static_cast<std::size_t>(s.horizon_s);
  r.accepted.assign(horizon, 0);
  r.rejected.assign(horizon, 0);
  r.refused.assign(horizon, 0);

  std::vector<Host> hosts(static_cast<std::size_t>(s.hosts));
  using Event = std::pair<double, std::uint32_t>;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> queue;
  const double renew_period = std::chrono::duration<double>(s.lifetime).count() * s.renew_at;
  for (std::uint32_t h = 0; h < hosts.size(); ++h) {
    switch (s.start) {
      case Scenario::Start::steady: {
        // The stationary state: next renewals spread evenly over one renewal period, each on
        // a certificate issued one renewal period before it.
        const double first = unit(rng) * renew_period;
        hosts[h].not_after = at(first - renew_period) + s.lifetime;
        queue.push({first, h});
        break;
      }
      case Scenario::Start::bake:
        // Nothing on disk: requested at once when the host boots, all within one minute.
        queue.push({unit(rng) * 60.0, h});
        break;
      case Scenario::Start::expiring_in_outage: {
        // Worst case: every certificate's not_after falls inside the outage, and its renewal
        // is already failing (first retry within the 30 s expired cap).
        const double expiry = s.outage_from_s + unit(rng) * (s.outage_to_s - s.outage_from_s);
        hosts[h].not_after = at(expiry);
        hosts[h].failures = 5;
        queue.push({static_cast<double>(s.simulate_from_s) + unit(rng) * 30.0, h});
        break;
      }
    }
  }

  Broker broker{s};
  while (!queue.empty()) {
    const auto [t, h] = queue.top();
    queue.pop();
    if (t >= static_cast<double>(s.horizon_s)) break;
    ++r.events;
    Host& host = hosts[h];
    const auto sec = static_cast<std::size_t>(t);
    const SystemTime now = at(t);
    std::int64_t retry_after_s = 0;
    const std::optional<SystemTime> not_after =
        host.not_after == SystemTime{} ? std::nullopt : std::optional<SystemTime>(host.not_after);
    switch (broker.answer(t, retry_after_s)) {
      case Broker::Answer::accept: {
        ++r.accepted[sec];
        if (!not_after || *not_after <= now) r.last_invalid_end_s = static_cast<std::int64_t>(t);
        host.not_after = now + s.lifetime;
        host.failures = 0;
        const SystemTime next = policy::renew_point(now, host.not_after, s.renew_at, jitter_u(rng));
        queue.push({secs(next), h});
        break;
      }
      case Broker::Answer::reject:
      case Broker::Answer::refuse: {
        const bool rejected = retry_after_s > 0;
        ++(rejected ? r.rejected[sec] : r.refused[sec]);
        ++host.failures;
        std::optional<policy::Duration> ra;
        if (rejected) ra = std::chrono::seconds(retry_after_s);
        policy::Duration delay;
        if (rejected && s.jitter_after_retry_after) {
          delay = *ra + policy::backoff_delay(host.failures, policy::backoff_cap(now, not_after),
                                              unit(rng));
        } else {
          delay = policy::retry_delay(host.failures, now, not_after, ra, false, unit(rng));
        }
        queue.push({t + std::chrono::duration<double>(delay).count(), h});
        break;
      }
    }
  }
  r.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - wall_start).count();
  return r;
}

struct Stats {
  double mean{0};
  std::uint64_t peak{0};
  std::int64_t peak_at{0};
};

// Mean and worst bucket of `v` summed into buckets of `width` seconds over [from, to).
Stats stats(const std::vector<std::uint32_t>& v, std::int64_t from, std::int64_t to, std::int64_t width) {
  Stats st;
  std::uint64_t total = 0;
  std::int64_t buckets = 0;
  for (std::int64_t b = from; b + width <= to; b += width) {
    std::uint64_t sum = 0;
    for (std::int64_t i = b; i < b + width; ++i) sum += v[static_cast<std::size_t>(i)];
    total += sum;
    ++buckets;
    if (sum > st.peak) {
      st.peak = sum;
      st.peak_at = b;
    }
  }
  st.mean = buckets ? static_cast<double>(total) / static_cast<double>(buckets) : 0;
  return st;
}

std::vector<std::uint32_t> sum(const Result& r) {
  std::vector<std::uint32_t> all(r.accepted.size());
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = r.accepted[i] + r.rejected[i] + r.refused[i];
  return all;
}

void print_ratio_line(const char* label, const std::vector<std::uint32_t>& v, std::int64_t from,
                      std::int64_t to) {
  std::printf("  %-22s", label);
  for (std::int64_t w : {1, 60, 600}) {
    const Stats st = stats(v, from, to, w);
    const double mean_rate = st.mean / static_cast<double>(w);
    const double peak_rate = static_cast<double>(st.peak) / static_cast<double>(w);
    std::printf("  %4llds: mean %8.2f/s peak %8.2f/s (t=%6.2fh) x%-6.2f", static_cast<long long>(w),
                mean_rate, peak_rate, static_cast<double>(st.peak_at) / kHour,
                mean_rate > 0 ? peak_rate / mean_rate : 0.0);
  }
  std::printf("\n");
}

// A text histogram of total requests/s in `rows` buckets.
void print_histogram(const Result& r, std::int64_t from, std::int64_t to, int rows) {
  const std::int64_t width = std::max<std::int64_t>(1, (to - from) / rows);
  const auto all = sum(r);
  std::uint64_t top = 0;
  std::vector<std::array<double, 3>> lines;
  for (std::int64_t b = from; b + width <= to; b += width) {
    std::uint64_t acc = 0, rej = 0, ref = 0, worst = 0;
    for (std::int64_t i = b; i < b + width; ++i) {
      const auto k = static_cast<std::size_t>(i);
      acc += r.accepted[k];
      rej += r.rejected[k];
      ref += r.refused[k];
      worst = std::max<std::uint64_t>(worst, all[k]);
    }
    top = std::max(top, (acc + rej + ref) / static_cast<std::uint64_t>(width) + 1);
    lines.push_back({static_cast<double>(acc) / width, static_cast<double>(rej + ref) / width,
                     static_cast<double>(worst)});
  }
  std::int64_t b = from;
  for (const auto& l : lines) {
    const int bar = static_cast<int>(50.0 * (l[0] + l[1]) / static_cast<double>(top));
    std::printf("    %7.2fh  ok %9.2f/s  refused+503 %9.2f/s  worst-s %6.0f  |%s\n",
                static_cast<double>(b) / kHour, l[0], l[1], l[2], std::string(static_cast<std::size_t>(bar), '#').c_str());
    b += width;
  }
}

// requests/s (all answers) per pixel column: the worst second of the column as a bar, the
// accepted mean as a line on top; a dashed line marks the ceiling.
void plot(const Result& r, std::int64_t from, std::int64_t to, const std::filesystem::path& path,
          int ceiling, std::int64_t tick_s) {
  constexpr int kW = 800, kH = 260, kLeft = 40, kBottom = 20, kTop = 10;
  Bitmap img(kW, kH);
  const int plot_w = kW - kLeft - 10, plot_h = kH - kBottom - kTop;
  const auto all = sum(r);
  const double per_col = static_cast<double>(to - from) / plot_w;
  std::vector<double> worst(plot_w, 0), ok(plot_w, 0);
  double top = ceiling;
  for (int c = 0; c < plot_w; ++c) {
    const auto b0 = from + static_cast<std::int64_t>(c * per_col);
    const auto b1 = std::max(b0 + 1, from + static_cast<std::int64_t>((c + 1) * per_col));
    double acc = 0;
    for (auto i = b0; i < b1 && i < to; ++i) {
      worst[c] = std::max<double>(worst[c], all[static_cast<std::size_t>(i)]);
      acc += r.accepted[static_cast<std::size_t>(i)];
    }
    ok[c] = acc / static_cast<double>(b1 - b0);
    top = std::max(top, worst[c]);
  }
  top = std::max(1.0, top * 1.05);
  const int base = kH - kBottom;
  auto y_of = [&](double v) { return base - static_cast<int>(v / top * plot_h); };
  for (int c = 0; c < plot_w; ++c) {
    if (worst[c] > 0) img.vline(kLeft + c, base, y_of(worst[c]));
  }
  // Frame, ticks every tick_s on x, 4 ticks on y.
  img.hline(kLeft, kLeft + plot_w, base);
  img.vline(kLeft - 1, base, kTop);
  for (std::int64_t t = from; t <= to; t += tick_s) {
    const int x = kLeft + static_cast<int>(static_cast<double>(t - from) / per_col);
    img.vline(x, base, base + 6);
  }
  for (int q = 1; q <= 4; ++q) img.hline(kLeft - 6, kLeft - 1, base - q * plot_h / 4);
  if (ceiling > 0) img.hline(kLeft, kLeft + plot_w, y_of(ceiling), 6);
  img.write_png(path);
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

void report(const Scenario& s, const Result& r, std::int64_t from, std::int64_t to, int rows) {
  std::printf("\n== %s: %s\n", s.name.c_str(), s.title.c_str());
  std::printf("  hosts %d, lifetime %lldh, renew_at %.2f, jitter %.2f, ceiling %s, events %llu, "
              "simulated in %.0f ms\n",
              s.hosts, static_cast<long long>(std::chrono::duration_cast<std::chrono::hours>(s.lifetime).count()),
              s.renew_at, s.jitter, s.ceiling ? (std::to_string(s.ceiling) + "/s").c_str() : "none",
              static_cast<unsigned long long>(r.events), r.wall_ms);
  std::printf("  window %.1fh..%.1fh; per bucket width: mean rate, worst bucket, peak/mean\n",
              static_cast<double>(from) / kHour, static_cast<double>(to) / kHour);
  print_ratio_line("all requests", sum(r), from, to);
  print_ratio_line("accepted", r.accepted, from, to);
  std::uint64_t worst_rej = 0, worst_ref = 0, worst_acc = 0;
  for (std::int64_t i = from; i < to; ++i) {
    worst_rej = std::max<std::uint64_t>(worst_rej, r.rejected[static_cast<std::size_t>(i)]);
    worst_ref = std::max<std::uint64_t>(worst_ref, r.refused[static_cast<std::size_t>(i)]);
    worst_acc = std::max<std::uint64_t>(worst_acc, r.accepted[static_cast<std::size_t>(i)]);
  }
  std::printf("  worst second: accepted %llu, 503+Retry-After %llu, refused while down %llu\n",
              static_cast<unsigned long long>(worst_acc), static_cast<unsigned long long>(worst_rej),
              static_cast<unsigned long long>(worst_ref));
  if (s.ceiling)
    std::printf("  accepted above the ceiling in any second: %s\n", worst_acc > static_cast<std::uint64_t>(s.ceiling) ? "YES" : "no (by construction)");
  std::printf("  last host without a valid certificate got one at t=%.3fh\n",
              static_cast<double>(r.last_invalid_end_s) / kHour);
  if (rows > 0) print_histogram(r, from, to, rows);
}

}  // namespace
}  // namespace certagent::bench

int main(int argc, char** argv) {
  using namespace certagent::bench;
  const std::filesystem::path out = argc > 1 ? argv[1] : std::filesystem::path(CERTAGENT_FLEET_OUT);
  std::filesystem::create_directories(out);
  std::printf("fleet_sim: machine nproc=%u cpu=\"%s\"; policy functions from agent/renewal_policy.cpp\n",
              std::thread::hardware_concurrency(), cpu_model().c_str());

  // (a) steady state over two lifetimes.
  Scenario a{.name = "a-steady", .title = "steady state, renewals spread over one renewal period"};
  auto ra = simulate(a);
  report(a, ra, 0, a.horizon_s, 16);
  plot(ra, 0, a.horizon_s, out / "fleet-steady.png", 0, 12 * kHour);

  // (b) image bake: every host boots within the same minute with nothing on disk.
  Scenario b{.name = "b-bake", .title = "all hosts deployed within the same 60 s, nothing on disk",
             .start = Scenario::Start::bake};
  auto rb = simulate(b);
  report(b, rb, 0, b.horizon_s, 16);
  std::printf("  after the first minute (t >= 1h):\n");
  print_ratio_line("all requests", sum(rb), kHour, b.horizon_s);
  // From 1 h on: the first minute (1,700/s) would flatten the echo waves to nothing.
  plot(rb, kHour, b.horizon_s, out / "fleet-bake.png", 0, 12 * kHour);
  // The echo of the bake, per jitter: how far the later waves stay above the steady mean.
  std::printf("  jitter sweep, image bake, window 24h..192h (600 s buckets; steady mean %.3f/s):\n",
              100000.0 / (96 * 3600 * 0.5));
  for (double j : {0.1, 0.2, 0.3, 0.5}) {
    Scenario bj = b;
    bj.jitter = j;
    auto rj = simulate(bj);
    const Stats st = stats(sum(rj), 24 * kHour, bj.horizon_s, 600);
    std::printf("    jitter %.1f: worst 10 min %.2f/s at %.1fh, peak / steady mean = %.2f\n", j,
                static_cast<double>(st.peak) / 600, static_cast<double>(st.peak_at) / kHour,
                static_cast<double>(st.peak) / 600 / (100000.0 / (96 * 3600 * 0.5)));
  }

  // (c) a 6 h outage during which every certificate expired; the broker comes back with a
  // ceiling of 50 accepted/s and answers 503 + Retry-After to the rest.
  const std::int64_t down_from = 0, down_to = 6 * kHour;
  Scenario c{.name = "c-outage-fixed-retry-after",
             .title = "6 h outage, all certificates expired in it; back with 50/s, 503 + Retry-After: 60",
             .horizon_s = 8 * kHour, .start = Scenario::Start::expiring_in_outage,
             .outage_from_s = down_from, .outage_to_s = down_to, .ceiling = 50,
             .retry_after_mode = RetryAfterMode::fixed, .retry_after_s = 60,
             .simulate_from_s = down_to - 1200};
  auto rc = simulate(c);
  report(c, rc, 0, c.horizon_s, 0);
  std::printf("  during the outage (its last 15 min, stationary):\n");
  print_ratio_line("refused", rc.refused, down_to - 900, down_to);
  std::printf("  after recovery (6h..8h):\n");
  print_ratio_line("all requests", sum(rc), down_to, c.horizon_s);
  print_ratio_line("accepted", rc.accepted, down_to, c.horizon_s);
  print_ratio_line("rejected 503", rc.rejected, down_to, c.horizon_s);
  std::printf("  time to all-valid after recovery: %.0f s\n",
              static_cast<double>(rc.last_invalid_end_s - down_to));
  print_histogram(rc, down_to - 600, down_to + 3600, 14);
  plot(rc, down_to - 600, down_to + 3600, out / "fleet-outage-fixed.png", c.ceiling, 600);

  Scenario c2 = c;
  c2.name = "c-outage-slot-retry-after";
  c2.title = "same, the broker's Retry-After hands out its future capacity (one slot per caller)";
  c2.retry_after_mode = RetryAfterMode::slot;
  auto rc2 = simulate(c2);
  report(c2, rc2, 0, c2.horizon_s, 0);
  std::printf("  after recovery (6h..8h):\n");
  print_ratio_line("all requests", sum(rc2), down_to, c2.horizon_s);
  print_ratio_line("rejected 503", rc2.rejected, down_to, c2.horizon_s);
  std::printf("  after the first contact (6h+60s..8h):\n");
  print_ratio_line("all requests", sum(rc2), down_to + 60, c2.horizon_s);
  std::printf("  time to all-valid after recovery: %.0f s\n",
              static_cast<double>(rc2.last_invalid_end_s - down_to));
  print_histogram(rc2, down_to - 600, down_to + 3600, 14);
  // After the first contact, so that the ceiling is visible.
  plot(rc2, down_to + 60, down_to + 3600, out / "fleet-outage-slot.png", c2.ceiling, 600);

  Scenario c3 = c;
  c3.name = "c-outage-fixed-plus-jitter";
  c3.title = "fixed Retry-After: 60, hosts add the full-jitter backoff on top (proposal)";
  c3.jitter_after_retry_after = true;
  auto rc3 = simulate(c3);
  report(c3, rc3, 0, c3.horizon_s, 0);
  std::printf("  after recovery (6h..8h):\n");
  print_ratio_line("all requests", sum(rc3), down_to, c3.horizon_s);
  print_ratio_line("rejected 503", rc3.rejected, down_to, c3.horizon_s);
  std::printf("  time to all-valid after recovery: %.0f s\n",
              static_cast<double>(rc3.last_invalid_end_s - down_to));
  plot(rc3, down_to - 600, down_to + 3600, out / "fleet-outage-fixed-jitter.png", c3.ceiling, 600);

  // (c') the realistic case: a steady fleet and a 6 h outage expire nothing (48 h of margin);
  // the backlog of due renewals comes back at once.
  Scenario c4{.name = "c-outage-steady-fleet",
              .title = "steady fleet, broker down 24h..30h (nothing expires), back with 50/s",
              .horizon_s = 36 * kHour, .outage_from_s = 24 * kHour, .outage_to_s = 30 * kHour,
              .ceiling = 50, .retry_after_mode = RetryAfterMode::fixed, .retry_after_s = 60};
  auto rc4 = simulate(c4);
  report(c4, rc4, 0, c4.horizon_s, 0);
  std::printf("  during the outage:\n");
  print_ratio_line("refused", rc4.refused, 24 * kHour, 30 * kHour);
  std::printf("  after recovery (30h..36h):\n");
  print_ratio_line("all requests", sum(rc4), 30 * kHour, c4.horizon_s);
  plot(rc4, 22 * kHour, 36 * kHour, out / "fleet-outage-steady.png", c4.ceiling, kHour);
  std::printf("\nPNG charts in %s\n", out.string().c_str());
  return 0;
}
