#pragma once
// The built-in http-01 responder (RFC 8555 §8.3): serves
// GET /.well-known/acme-challenge/<token> -> key authorization, for the tokens of the
// authorizations in flight, and 404 for everything else. Started on first use and kept
// running (the listen address is the operator's choice, e.g. port 80 or a port a front proxy
// forwards to). Small limits on connections, header size and time, since anyone may connect.

#include "core/result.h"

#include <boost/asio/any_io_executor.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace certagent::renewers::acme {

class Http01Responder {
 public:
  // `listen` is "host:port" ("0.0.0.0:80", "[::]:80", "127.0.0.1:5002"). Binding failures
  // (port taken, no permission for a low port) are configuration errors.
  [[nodiscard]] static Result<std::unique_ptr<Http01Responder>> start(boost::asio::any_io_executor executor,
                                                                      const std::string& listen);
  ~Http01Responder();  // stops listening and closes open connections
  Http01Responder(const Http01Responder&) = delete;
  Http01Responder& operator=(const Http01Responder&) = delete;

  void add(const std::string& token, const std::string& key_authorization);
  void remove(const std::string& token);
  std::uint16_t port() const;
  std::uint64_t served() const;  // challenge answers given (200s)

  struct State;

 private:
  explicit Http01Responder(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;  // shared with the accept loop and the connections
};

}  // namespace certagent::renewers::acme
