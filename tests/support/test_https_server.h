#pragma once
// A small HTTP(S) server for tests, on 127.0.0.1 and a port of its own, running on its own
// thread: the handler decides every answer, including misbehaviour (raw bytes, dropped
// connections, delays, huge bodies). Used as the "broker that answers garbage".

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace certagent::test {

class TestHttpsServer {
 public:
  struct Request {
    std::string method;
    std::string target;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;
  };
  struct Reply {
    unsigned status{200};
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    bool close{false};                      // Connection: close
    bool drop_after{false};                 // close the socket after answering, without saying so
    std::optional<std::string> raw;         // written verbatim instead of a response, then closed
    std::chrono::milliseconds delay{0};     // before answering
  };
  using Handler = std::function<Reply(const Request&)>;

  // TLS when cert_pem is non-empty, plain HTTP otherwise.
  TestHttpsServer(const std::string& cert_pem, const std::string& key_pem, Handler handler);
  ~TestHttpsServer();
  TestHttpsServer(const TestHttpsServer&) = delete;
  TestHttpsServer& operator=(const TestHttpsServer&) = delete;

  int port() const { return port_; }
  std::string url() const;  // "https://127.0.0.1:PORT"
  int connections() const { return connections_.load(); }
  int requests() const { return requests_.load(); }
  void set_handler(Handler handler);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
  int port_{0};
  bool tls_{true};
  std::atomic<int> connections_{0};
  std::atomic<int> requests_{0};
};

// An HTTP Date header value (IMF-fixdate, RFC 9110): "Sun, 06 Dec 2026 06:05:00 GMT".
std::string http_date(std::chrono::system_clock::time_point t);

}  // namespace certagent::test
