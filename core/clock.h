#pragma once
// Wall-clock and monotonic time, injectable so timing logic is tested without sleeping.
// Renew points and expiry are wall-clock instants (certificates say them so); waits that are
// durations (backoff) run on the monotonic clock, which a clock step does not move.

#include <chrono>

namespace certagent {

using SystemTime = std::chrono::system_clock::time_point;
using SteadyTime = std::chrono::steady_clock::time_point;
using Seconds = std::chrono::seconds;
using Millis = std::chrono::milliseconds;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual SystemTime now() const = 0;
  virtual SteadyTime steady_now() const = 0;
};

class SystemClock final : public Clock {
 public:
  SystemTime now() const override { return std::chrono::system_clock::now(); }
  SteadyTime steady_now() const override { return std::chrono::steady_clock::now(); }
};

// For tests: time moves only when told to. advance() is time passing (both clocks move);
// step() and set() are someone setting the wall clock (the monotonic clock stays).
class ManualClock final : public Clock {
 public:
  explicit ManualClock(SystemTime start) : now_(start) {}
  SystemTime now() const override { return now_; }
  SteadyTime steady_now() const override { return steady_; }
  void advance(std::chrono::system_clock::duration d) {
    now_ += d;
    steady_ += std::chrono::duration_cast<SteadyTime::duration>(d);
  }
  void step(std::chrono::system_clock::duration d) { now_ += d; }
  void set(SystemTime t) { now_ = t; }

 private:
  SystemTime now_;
  SteadyTime steady_{std::chrono::hours(1)};
};

// Seconds since the Unix epoch, as metrics and JSON write them.
inline double to_unix_seconds(SystemTime t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

}  // namespace certagent
