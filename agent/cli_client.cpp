#include "agent/cli_client.h"

#include "agent/file_sink.h"
#include "core/config/names.h"
#include "core/material.h"
#include "agent/socket_server.h"

#include <openssl/crypto.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <vector>

namespace certagent::cli {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace json = boost::json;
using local = asio::local::stream_protocol;

namespace {

// Received bytes may hold a private key: every buffer the client reads into is wiped when freed.
template <class T>
struct WipingAllocator {
  using value_type = T;
  WipingAllocator() = default;
  template <class U>
  WipingAllocator(const WipingAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, std::size_t n) noexcept {
    OPENSSL_cleanse(p, n * sizeof(T));
    std::allocator<T>().deallocate(p, n);
  }
  template <class U>
  bool operator==(const WipingAllocator<U>&) const noexcept {
    return true;
  }
};

using WipedString = std::basic_string<char, std::char_traits<char>, WipingAllocator<char>>;
using WipedBody = bhttp::basic_string_body<char, std::char_traits<char>, WipingAllocator<char>>;

constexpr std::size_t kMaxResponseBody = 4 << 20;

struct Received {
  unsigned status{0};
  std::string content_type;
  WipedString body;
};

Result<Received> exchange(const std::filesystem::path& socket_path, bhttp::verb method,
                          std::string_view target, std::chrono::milliseconds timeout) {
  asio::io_context io;
  beast::basic_stream<local> stream(io);
  beast::basic_flat_buffer<WipingAllocator<char>> buffer;
  bhttp::request<bhttp::empty_body> request(method, target, 11);
  request.set(bhttp::field::host, "localhost");
  request.set(bhttp::field::user_agent, "certagent-cli");
  request.keep_alive(false);
  request.prepare_payload();
  bhttp::response_parser<WipedBody> parser;
  parser.body_limit(kMaxResponseBody);
  boost::system::error_code failure;
  std::string step = "connect";

  stream.expires_after(timeout);
  stream.async_connect(local::endpoint(socket_path.string()), [&](boost::system::error_code ec) {
    if (ec) {
      failure = ec;
      return;
    }
    step = "send";
    bhttp::async_write(stream, request, [&](boost::system::error_code ec, std::size_t) {
      if (ec) {
        failure = ec;
        return;
      }
      step = "read";
      bhttp::async_read(stream, buffer, parser, [&](boost::system::error_code ec, std::size_t) {
        failure = ec;
      });
    });
  });
  io.run();

  if (failure) {
    std::string message = "cannot talk to the daemon at " + socket_path.string() + " (" + step +
                          "): " + failure.message();
    if (step == "connect") message += " (is certagent running? is --socket right?)";
    if (failure == beast::error::timeout) message += " (no answer within the timeout)";
    return make_error(std::move(message));
  }
  Received received;
  auto& response = parser.get();
  received.status = response.result_int();
  received.content_type = std::string(response[bhttp::field::content_type]);
  received.body = std::move(response.body());
  return received;
}

Result<bhttp::verb> parse_method(std::string_view method) {
  const auto verb = bhttp::string_to_verb(method);
  if (verb == bhttp::verb::unknown) return make_error("unknown HTTP method " + std::string(method));
  return verb;
}

// The daemon's {"error":"..."} code, or the body's start when it is something else.
std::string error_code(std::string_view body) {
  boost::system::error_code ec;
  const auto v = json::parse(body, ec);
  if (!ec && v.is_object()) {
    if (const auto* e = v.as_object().if_contains("error"); e && e->is_string()) {
      return std::string(e->as_string());
    }
  }
  return std::string(body.substr(0, 200));
}

// A message for a failed answer about certificate `name`.
std::string describe_failure(unsigned status, std::string_view body, const std::string& name,
                             std::string_view what) {
  const std::string code = error_code(body);
  switch (status) {
    case 403:
      return "permission denied: this user may not " + std::string(what) + " '" + name +
             "' (see socket.allow_uids/allow_gids, socket.admin_uids)";
    case 404:
      return "unknown certificate '" + name + "'";
    case 503:
      if (code == "expired") return "certificate '" + name + "' has expired and no new one is held";
      if (code == "not_issued") return "certificate '" + name + "' has not been issued yet";
      if (code == "not_yet_valid")
        return "certificate '" + name + "' is not valid yet (is this host's clock behind? see certagent status)";
      return "daemon busy: " + code;
    default:
      return "daemon answered " + std::to_string(status) + ": " + code;
  }
}

std::string string_field(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

std::string format_remaining(std::chrono::seconds left) {
  if (left.count() <= 0) return "expired";
  const auto s = left.count();
  const long long d = s / 86400, h = (s % 86400) / 3600, m = (s % 3600) / 60;
  char buf[32];
  if (d > 0) {
    std::snprintf(buf, sizeof buf, "%lldd%lldh", d, h);
  } else if (h > 0) {
    std::snprintf(buf, sizeof buf, "%lldh%lldm", h, m);
  } else if (m > 0) {
    std::snprintf(buf, sizeof buf, "%lldm%llds", m, static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  }
  return buf;
}

std::string text_or_dash(const json::value* v) {
  if (!v || !v->is_string() || v->as_string().empty()) return "-";
  return std::string(v->as_string());
}

// Parses a bundle with every buffer, the parser's own included, wiped when freed.
json::value parse_wiped(std::string_view text, boost::system::error_code& ec) {
  json::parser parser(json_wiping_storage());
  parser.reset(json_wiping_storage());
  parser.write(text.data(), text.size(), ec);
  if (ec) return nullptr;
  return parser.release();
}

// Builds the Material the file sink writes from a bundle; the key goes straight into a Secret.
Result<Material> material_from_bundle(const json::value& bundle) {
  if (!bundle.is_object()) return make_error("the daemon's answer is not a JSON object");
  const auto& o = bundle.as_object();
  Material m;
  m.cert_pem = string_field(o, "certificate_pem");
  m.chain_pem = string_field(o, "chain_pem");
  if (const auto* k = o.if_contains("private_key_pem"); k && k->is_string()) {
    m.key_pem = Secret(k->as_string().data(), k->as_string().size());
  }
  m.serial_hex = string_field(o, "serial");
  m.sha256_hex = string_field(o, "sha256");
  auto not_before = parse_rfc3339(string_field(o, "not_before"));
  auto not_after = parse_rfc3339(string_field(o, "not_after"));
  if (m.cert_pem.empty() || m.key_pem.empty() || !not_before || !not_after) {
    return make_error(
        "the daemon's bundle lacks certificate_pem, private_key_pem, not_before or not_after");
  }
  m.not_before = *not_before;
  m.not_after = *not_after;
  return m;
}

}  // namespace

Result<SocketResponse> socket_request(const std::filesystem::path& socket_path,
                                      std::string_view method, std::string_view target,
                                      std::chrono::milliseconds timeout) {
  auto verb = parse_method(method);
  if (!verb) return verb.error();
  auto received = exchange(socket_path, *verb, target, timeout);
  if (!received) return received.error();
  SocketResponse response;
  response.status = received->status;
  response.content_type = std::move(received->content_type);
  response.body.assign(received->body.data(), received->body.size());
  return response;
}

int cli_status(const std::filesystem::path& socket_path, bool as_json, std::ostream& out,
               std::ostream& err) {
  auto received = exchange(socket_path, bhttp::verb::get, "/v1/certificates", kSocketTimeout);
  if (!received) {
    err << "certagent status: " << received.error().message << "\n";
    return 1;
  }
  const std::string_view body(received->body.data(), received->body.size());
  if (received->status != 200) {
    err << "certagent status: " << describe_failure(received->status, body, "", "list") << "\n";
    return 1;
  }
  if (as_json) {
    out << body << "\n";
    return 0;
  }
  boost::system::error_code ec;
  const auto list = json::parse(body, ec);
  const json::array* certs = nullptr;
  if (!ec && list.is_object()) {
    if (const auto* c = list.as_object().if_contains("certificates"); c && c->is_array()) {
      certs = &c->as_array();
    }
  }
  if (!certs) {
    err << "certagent status: unexpected answer from the daemon\n";
    return 1;
  }

  const json::array* brokers = nullptr;
  if (const auto* b = list.as_object().if_contains("brokers"); b && b->is_array()) brokers = &b->as_array();
  print_status_table(*certs, out, brokers);
  return 0;
}

namespace {

const json::object* broker_named(const json::array* brokers, std::string_view name) {
  if (!brokers) return nullptr;
  for (const auto& b : *brokers)
    if (const auto* o = b.if_object(); o && string_field(*o, "name") == name) return o;
  return nullptr;
}

// BROKER_UP: up | down | - (not known yet).
std::string up_text(const json::value* v) {
  if (!v || !v->is_bool()) return "-";
  return v->get_bool() ? "up" : "down";
}

// BROKER_ACCEPTS: yes | no:<reason> (the broker refuses us) | config:<reason> (our own
// configuration for it is broken) | - (not known yet).
std::string accepts_text(const json::value* v, const json::object* broker) {
  if (!v || !v->is_bool()) return "-";
  if (v->get_bool()) return "yes";
  std::string reason = broker ? string_field(*broker, "reason") : std::string();
  const bool ours = broker && string_field(*broker, "cause") == "local_config";
  return std::string(ours ? "config" : "no") + (reason.empty() ? "" : ":" + reason);
}

}  // namespace

void print_status_table(const json::array& certs, std::ostream& out, const json::array* brokers) {
  const auto now = std::chrono::system_clock::now();
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"NAME", "STATE", "SERIAL", "NOT_AFTER", "EXPIRES_IN", "NEXT_RENEWAL", "CLOCK", "BROKER_UP",
                  "BROKER_ACCEPTS"});
  for (const auto& v : certs) {
    if (!v.is_object()) continue;
    const auto& o = v.as_object();
    std::string expires_in = "-";
    if (auto not_after = parse_rfc3339(string_field(o, "not_after"))) {
      expires_in =
          format_remaining(std::chrono::duration_cast<std::chrono::seconds>(*not_after - now));
    }
    // A host clock behind the broker's fails renewals closed: say so where people look first.
    std::string clock = "ok";
    if (const auto* skew = o.if_contains("clock_skew_seconds"); skew && skew->is_int64() && skew->as_int64() != 0) {
      const auto seconds = skew->as_int64();
      clock = seconds > 0 ? format_remaining(std::chrono::seconds(seconds)) + "_behind_broker"
                          : format_remaining(std::chrono::seconds(-seconds)) + "_ahead_of_broker";
    }
    const json::object* broker = broker_named(brokers, string_field(o, "broker"));
    rows.push_back({text_or_dash(o.if_contains("name")), text_or_dash(o.if_contains("state")),
                    text_or_dash(o.if_contains("serial")), text_or_dash(o.if_contains("not_after")),
                    expires_in, text_or_dash(o.if_contains("next_renewal")), clock,
                    up_text(o.if_contains("broker_up")), accepts_text(o.if_contains("broker_accepts"), broker)});
  }
  std::vector<std::size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 2, ' ');
    }
    out << line << "\n";
  }
  // What is wrong with a broker, and what to change, in a sentence each.
  if (!brokers) return;
  for (const auto& v : *brokers) {
    const auto* b = v.if_object();
    if (!b) continue;
    const std::string name = string_field(*b, "name"), type = string_field(*b, "type");
    const auto* up = b->if_contains("up");
    const auto* accepts = b->if_contains("accepts");
    if (up && up->is_bool() && !up->get_bool())
      out << "broker " << name << " (" << type << "): down: " << string_field(*b, "down_detail") << "\n";
    if (accepts && accepts->is_bool() && !accepts->get_bool()) {
      const bool ours = string_field(*b, "cause") == "local_config";
      out << "broker " << name << " (" << type << "): "
          << (ours ? "our configuration for it is broken" : "it answers but refuses us") << " ("
          << string_field(*b, "reason") << "): " << string_field(*b, "detail") << "\n";
    }
  }
}

int cli_fetch(const std::filesystem::path& socket_path, const std::string& name,
              const std::optional<std::filesystem::path>& out_dir, std::ostream& out,
              std::ostream& err) {
  if (!config::valid_name(name)) {
    err << "certagent fetch: invalid certificate name '" << name << "' (expected " << config::kNameExpected
        << ")\n";
    return 2;
  }
  auto received = exchange(socket_path, bhttp::verb::get, "/v1/certificates/" + name,
                           kSocketTimeout);
  if (!received) {
    err << "certagent fetch: " << received.error().message << "\n";
    return 1;
  }
  const std::string_view body(received->body.data(), received->body.size());
  if (received->status != 200) {
    err << "certagent fetch: " << describe_failure(received->status, body, name, "fetch") << "\n";
    return 1;
  }
  if (!out_dir) {
    out << body << "\n";
    return 0;
  }
  boost::system::error_code ec;
  const json::value bundle = parse_wiped(body, ec);
  if (ec) {
    err << "certagent fetch: the daemon's answer is not JSON: " << ec.message() << "\n";
    return 1;
  }
  auto material = material_from_bundle(bundle);
  if (!material) {
    err << "certagent fetch: " << material.error().message << "\n";
    return 1;
  }
  config::FilesConfig files;
  files.dir = *out_dir;
  FileSink sink(files);
  auto written = sink.commit(*material);
  if (!written) {
    err << "certagent fetch: writing " << out_dir->string() << ": " << written.error().message
        << "\n";
    return 1;
  }
  out << "wrote " << out_dir->string() << " (serial " << material->serial_hex << ", not after "
      << format_rfc3339(material->not_after) << ")\n";
  return 0;
}

int cli_renew(const std::filesystem::path& socket_path, const std::string& name,
              std::ostream& out, std::ostream& err) {
  if (!config::valid_name(name)) {
    err << "certagent renew: invalid certificate name '" << name << "' (expected " << config::kNameExpected
        << ")\n";
    return 2;
  }
  auto received = exchange(socket_path, bhttp::verb::post, "/v1/certificates/" + name + "/renew",
                           kSocketTimeout);
  if (!received) {
    err << "certagent renew: " << received.error().message << "\n";
    return 1;
  }
  const std::string_view body(received->body.data(), received->body.size());
  if (received->status != 202 && received->status != 200) {
    err << "certagent renew: " << describe_failure(received->status, body, name, "renew") << "\n";
    return 1;
  }
  out << "renewal of '" << name << "' requested\n";
  return 0;
}

}  // namespace certagent::cli
