#pragma once
// The part of a broker or reloader entry that belongs to its plug-in (an ACME directory, an
// nginx command, ...). core/ knows no plug-in: it holds that part type-erased, compares it (a
// reload, SIGHUP, tells what changed by ==) and has it write itself into `check-config`
// output. The plug-in declares the struct, reads it (catalog.h) and gets it back by type.

#include <concepts>
#include <memory>
#include <stdexcept>
#include <typeinfo>
#include <utility>

namespace certagent::config {

class ConfigWriter;

// A plug-in's settings: a plain value with == and dump(ConfigWriter&), which writes its keys
// into the entry's mapping in the order `check-config` shows them.
template <class T>
concept PluginSettings = std::copy_constructible<T> && std::equality_comparable<T> &&
                         requires(const T& t, ConfigWriter& w) { t.dump(w); };

class SettingsSlot {
 public:
  SettingsSlot() = default;
  // The same_as test comes first: checking PluginSettings<SettingsSlot> would ask whether
  // SettingsSlot is copy constructible while declaring its copy constructor (clang recurses).
  template <class T>
    requires(!std::same_as<T, SettingsSlot> && PluginSettings<T>)
  SettingsSlot(T value) : held_(std::make_shared<const Held<T>>(std::move(value))) {}  // NOLINT: implicit by design

  bool empty() const { return !held_; }
  template <class T>
  const T* get_if() const {
    const auto* h = dynamic_cast<const Held<T>*>(held_.get());
    return h ? &h->value : nullptr;
  }
  // The settings as T; throws std::bad_cast when they are something else (a programming error:
  // the registry hands a plug-in only entries of its own type).
  template <class T>
  const T& as() const {
    if (const T* v = get_if<T>()) return *v;
    throw std::bad_cast();
  }
  void dump(ConfigWriter& w) const {
    if (held_) held_->dump(w);
  }
  // exec: its `timeout` is the command's own limit and written with the command (T::kDumpsTimeout).
  bool dumps_timeout() const { return held_ && held_->dumps_timeout(); }

  bool operator==(const SettingsSlot& other) const {
    if (!held_ || !other.held_) return !held_ && !other.held_;
    return held_->equals(*other.held_);
  }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual bool equals(const Base& other) const = 0;
    virtual void dump(ConfigWriter& w) const = 0;
    virtual bool dumps_timeout() const = 0;
  };
  template <class T>
  struct Held final : Base {
    explicit Held(T v) : value(std::move(v)) {}
    bool equals(const Base& other) const override {
      const auto* o = dynamic_cast<const Held*>(&other);
      return o && o->value == value;
    }
    void dump(ConfigWriter& w) const override { value.dump(w); }
    bool dumps_timeout() const override {
      if constexpr (requires { T::kDumpsTimeout; }) return T::kDumpsTimeout;
      else return false;
    }
    T value;
  };

  std::shared_ptr<const Base> held_;
};

}  // namespace certagent::config
