#pragma once
// Wall-clock time, injectable so timing logic is tested without sleeping.

#include <chrono>

namespace certagent {

using SystemTime = std::chrono::system_clock::time_point;
using Seconds = std::chrono::seconds;
using Millis = std::chrono::milliseconds;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual SystemTime now() const = 0;
};

class SystemClock final : public Clock {
 public:
  SystemTime now() const override { return std::chrono::system_clock::now(); }
};

// For tests: time moves only when told to.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(SystemTime start) : now_(start) {}
  SystemTime now() const override { return now_; }
  void advance(std::chrono::system_clock::duration d) { now_ += d; }
  void set(SystemTime t) { now_ = t; }

 private:
  SystemTime now_;
};

// Seconds since the Unix epoch, as metrics and JSON write them.
inline double to_unix_seconds(SystemTime t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

}  // namespace certagent
