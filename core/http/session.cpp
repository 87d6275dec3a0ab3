#include "core/http/session.h"

#include "core/logging.h"

#include <openssl/crypto.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/write.hpp>

#include <array>
#include <cstdio>
#include <deque>
#include <exception>
#include <optional>

namespace certagent::http::detail {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

constexpr auto kUseTuple = asio::as_tuple(asio::use_awaitable);

// After an error answer the client may still be sending (a 413 body): read and drop up to this
// much for up to this long, so closing does not reset the connection before it read the answer.
constexpr std::size_t kLingerBytes = 1 << 20;
constexpr auto kLingerTime = 1s;

spdlog::logger* logger() {
  static const auto l = log::get("http.server");
  return l.get();
}

// Wipes a response body holding key material when it goes out of scope, whatever path the
// coroutine leaves by (sent, failed, or destroyed with the io_context).
class BodyWipe {
 public:
  explicit BodyWipe(Reply& reply) : reply_(reply) {}
  BodyWipe(const BodyWipe&) = delete;
  BodyWipe& operator=(const BodyWipe&) = delete;
  ~BodyWipe() {
    auto& body = reply_.response.body();
    if (reply_.sensitive && !body.empty()) OPENSSL_cleanse(body.data(), body.size());
  }

 private:
  Reply& reply_;
};

// One connection: reads requests in a loop, answers each, or turns into a chunked stream.
// A watchdog timer enforces the deadline of whatever the connection is doing.
template <class Protocol>
class Session final : public SessionBase, public std::enable_shared_from_this<Session<Protocol>> {
 public:
  using Socket = typename Protocol::socket;

  Session(std::shared_ptr<ServerCore> core, Socket socket, Peer peer)
      : core_(std::move(core)),
        socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        wake_(socket_.get_executor()),
        peer_(std::move(peer)) {}

  void start() {
    it_ = core_->add(this);
    arm(Phase::reading, core_->limits.request_timeout);
    watch_deadline();
    asio::co_spawn(socket_.get_executor(), run(this->shared_from_this()), asio::detached);
  }

  // ResponseStream
  bool write(Chunk chunk) override {
    if (closed_ || finishing_) return false;
    if (!chunk || chunk->empty()) return true;  // an empty chunk would end the stream
    if (queue_.size() >= core_->limits.max_queued_chunks) {
      logger()->debug("event=stream_client_too_slow action=closed pid={} uid={}", peer_.pid, peer_.uid);
      core_->reject("slow_consumer");
      close();
      return false;
    }
    queue_.push_back(std::move(chunk));
    // Otherwise the writer is busy with the queue, or has been woken to finish a partial write.
    if (!writing_ && queue_.size() == 1) write_now();
    return true;
  }
  void finish() override {
    if (closed_ || finishing_) return;
    finishing_ = true;
    wake_.cancel();
  }
  bool closed() const override { return closed_; }
  void on_close(std::function<void()> callback) override {
    if (closed_) {
      if (callback) callback();
      return;
    }
    on_close_ = std::move(callback);
  }
  const Peer& peer() const override { return peer_; }

  void shutdown() override { close(); }

 private:
  enum class Phase { idle, reading, writing };

  // Sets the deadline of the current step. The watchdog timer sleeps until the deadline it
  // armed and is woken only when the new one is earlier, so the common case (a later deadline)
  // costs no timer work.
  void arm(Phase phase, SteadyClock::duration d) {
    phase_ = phase;
    deadline_ = SteadyClock::now() + d;
    if (deadline_ < armed_) timer_.cancel();
  }
  void disarm() {
    phase_ = Phase::idle;
    deadline_ = SteadyClock::time_point::max();
  }

  void watch_deadline() {
    armed_ = deadline_;
    timer_.expires_at(armed_);
    timer_.async_wait([self = this->shared_from_this()](boost::system::error_code) {
      self->on_deadline();
    });
  }

  // The timer fired or was cancelled: act if the current deadline has passed, else sleep again.
  void on_deadline() {
    if (closed_) return;
    if (deadline_ <= SteadyClock::now()) {
      if (phase_ != Phase::reading) {
        close();
        return;
      }
      // Stop the read and let run() answer 408 (or close, if nothing came).
      timed_out_ = true;
      boost::system::error_code ec;
      socket_.cancel(ec);
      disarm();
    }
    watch_deadline();
  }

  bool gone() const { return closed_ || core_->stopped; }

  asio::awaitable<void> run(std::shared_ptr<Session> self) {
    const auto& limits = core_->limits;
    bool served_any = false;
    for (;;) {
      std::optional<bhttp::request_parser<bhttp::string_body>> parser(std::in_place);
      parser->header_limit(static_cast<std::uint32_t>(
          std::min<std::size_t>(limits.max_header_bytes, UINT32_MAX)));
      parser->body_limit(limits.max_body_bytes);
      timed_out_ = false;
      arm(Phase::reading, limits.request_timeout);
      auto [ec, n] = co_await bhttp::async_read(socket_, buffer_, *parser, kUseTuple);
      disarm();
      if (gone()) break;
      if (ec) {
        const bool got_bytes = parser->got_some() || buffer_.size() > 0;
        co_await on_read_error(ec, got_bytes, served_any);
        break;
      }
      served_any = true;
      Request request = parser->release();
      parser.reset();
      Reply reply = call_handler(request);
      if (gone()) break;
      if (reply.stream) {
        co_await serve_stream(self, std::move(reply), request.version());
        co_return;
      }
      BodyWipe wipe(reply);
      const bool keep_alive = request.keep_alive();
      const unsigned version = request.version();
      request = {};
      if (!co_await send(reply, version, keep_alive)) break;
      if (!keep_alive) {
        boost::system::error_code ignored;
        socket_.shutdown(asio::socket_base::shutdown_send, ignored);
        break;
      }
    }
    close();
  }

  Reply call_handler(const Request& request) {
    try {
      return core_->handler(request, peer_);
    } catch (const std::exception& e) {
      logger()->error("event=handler_failed target={} error={}", log::quote(request.target()),
                      log::quote(e.what()));
      return error_reply(bhttp::status::internal_server_error, "internal_error");
    }
  }

  asio::awaitable<bool> send(Reply& reply, unsigned version, bool keep_alive) {
    Response& response = reply.response;
    response.version(version);
    response.keep_alive(keep_alive);
    arm(Phase::writing, core_->limits.request_timeout);
    if (!reply.secret_body) {
      response.prepare_payload();
      auto [ec, n] = co_await bhttp::async_write(socket_, response, kUseTuple);
      disarm();
      co_return !ec && !closed_;
    }
    // A key bundle: sent from its locked chunk, never copied into the response body.
    const Chunk body = reply.secret_body;
    const std::size_t size = std::min(reply.secret_body_size, body->size());
    response.body().clear();
    response.content_length(size);
    bhttp::response_serializer<bhttp::string_body> serializer(response);
    auto [ec, n] = co_await bhttp::async_write_header(socket_, serializer, kUseTuple);
    if (!ec && !closed_ && size > 0) {
      auto [ec2, n2] = co_await asio::async_write(socket_, asio::buffer(body->data(), size), kUseTuple);
      ec = ec2;
    }
    disarm();
    co_return !ec && !closed_;
  }

  asio::awaitable<void> on_read_error(boost::system::error_code ec, bool got_bytes,
                                      bool served_any) {
    if (timed_out_) {
      // A client that never sent a byte, or an idle kept-alive one, is simply closed.
      if (got_bytes || !served_any) core_->reject("timeout");
      if (got_bytes) co_await answer_error(bhttp::status::request_timeout, "request_timeout");
      co_return;
    }
    if (ec.category() != bhttp::make_error_code(bhttp::error::end_of_stream).category() ||
        ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message) {
      co_return;  // closed or reset by the client: nobody to answer
    }
    if (ec == bhttp::error::header_limit) {
      core_->reject("header_too_large");
      co_await answer_error(bhttp::status::request_header_fields_too_large, "header_too_large");
    } else if (ec == bhttp::error::body_limit) {
      core_->reject("body_too_large");
      co_await answer_error(bhttp::status::payload_too_large, "body_too_large");
    } else {
      core_->reject("bad_request");
      logger()->debug("event=bad_request pid={} uid={} error={}", peer_.pid, peer_.uid,
                      log::quote(ec.message()));
      co_await answer_error(bhttp::status::bad_request, "bad_request");
    }
  }

  // Answers an error, then drains what the client still sends for a short while before the
  // connection is closed (see kLingerBytes).
  asio::awaitable<void> answer_error(bhttp::status status, std::string_view code) {
    Reply reply = error_reply(status, code);
    if (!co_await send(reply, 11, false)) co_return;
    boost::system::error_code ec;
    socket_.shutdown(asio::socket_base::shutdown_send, ec);
    buffer_.clear();
    std::array<char, 2048> scratch;
    std::size_t drained = 0;
    arm(Phase::writing, kLingerTime);  // the watchdog closes the socket at the deadline
    while (!closed_ && drained < kLingerBytes) {
      auto [rec, n] = co_await socket_.async_read_some(asio::buffer(scratch), kUseTuple);
      if (rec) break;
      drained += n;
    }
    disarm();
  }

  asio::awaitable<void> serve_stream(std::shared_ptr<Session> self, Reply reply,
                                     unsigned version) {
    bhttp::response<bhttp::empty_body> header(std::move(reply.response.base()));
    header.version(version);
    header.keep_alive(false);
    header.chunked(true);
    bhttp::response_serializer<bhttp::empty_body> serializer(header);
    arm(Phase::writing, core_->limits.request_timeout);
    auto [ec, n] = co_await bhttp::async_write_header(socket_, serializer, kUseTuple);
    disarm();
    if (ec || gone()) {
      close();
      co_return;
    }
    streaming_ = true;
    ++core_->streams;
    // A watcher may stay for days: give back what reading the request took.
    buffer_.clear();
    buffer_.shrink_to_fit();
    // For write_now(): a send that would block returns at once instead.
    boost::system::error_code nb;
    socket_.non_blocking(true, nb);
    asio::co_spawn(socket_.get_executor(), watch_peer(self), asio::detached);
    auto callback = std::move(reply.stream);
    reply = Reply{};
    try {
      callback(self);
    } catch (const std::exception& e) {
      logger()->error("event=stream_handler_failed error={}", log::quote(e.what()));
      close();
    }
    callback = nullptr;
    co_await write_chunks();
    close();
  }

  using ChunkBuffers = std::array<asio::const_buffer, 3>;

  // The front chunk in chunked framing: size line, data, CRLF.
  ChunkBuffers frame_front() {
    static constexpr std::string_view kCrlf = "\r\n";
    const Chunk& chunk = queue_.front();
    const int len = std::snprintf(size_line_.data(), size_line_.size(), "%zx\r\n", chunk->size());
    return {asio::buffer(size_line_.data(), static_cast<std::size_t>(len)),
            asio::buffer(chunk->data(), chunk->size()), asio::buffer(kCrlf)};
  }

  // The writer is idle and one chunk is queued: most chunks fit the socket's buffer, so send it
  // now with one non-blocking send instead of a round trip through the writer coroutine. What
  // does not fit is left to the writer.
  void write_now() {
    const ChunkBuffers buffers = frame_front();
    boost::system::error_code ec;
    const std::size_t n = socket_.write_some(buffers, ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) {
      ec = {};
    } else if (ec) {
      close();
      return;
    }
    if (n == asio::buffer_size(buffers)) {
      queue_.pop_front();
      return;
    }
    front_sent_ = n;
    wake_.cancel();
  }

  asio::awaitable<void> write_chunks() {
    static constexpr std::string_view kLast = "0\r\n\r\n";
    while (!closed_) {
      if (queue_.empty()) {
        if (finishing_) {
          writing_ = true;
          arm(Phase::writing, core_->limits.request_timeout);
          co_await asio::async_write(socket_, asio::buffer(kLast), kUseTuple);
          disarm();
          writing_ = false;
          boost::system::error_code ignored;
          socket_.shutdown(asio::socket_base::shutdown_send, ignored);
          break;
        }
        wake_.expires_at(SteadyClock::time_point::max());
        co_await wake_.async_wait(kUseTuple);
        continue;
      }
      const Chunk chunk = queue_.front();  // held: close() may clear the queue meanwhile
      boost::beast::buffers_suffix<ChunkBuffers> rest(frame_front());
      rest.consume(front_sent_);
      writing_ = true;
      arm(Phase::writing, core_->limits.request_timeout);
      auto [ec, n] = co_await asio::async_write(socket_, rest, kUseTuple);
      disarm();
      writing_ = false;
      if (ec || closed_) break;
      front_sent_ = 0;
      queue_.pop_front();
    }
  }

  // A streaming client sends nothing more; end of file or an error means it has gone.
  asio::awaitable<void> watch_peer([[maybe_unused]] std::shared_ptr<Session> self) {
    std::array<char, 64> scratch;
    for (;;) {
      auto [ec, n] = co_await socket_.async_read_some(asio::buffer(scratch), kUseTuple);
      if (ec || closed_) break;
    }
    close();
  }

  void close() {
    if (closed_) return;
    auto self = this->shared_from_this();  // callbacks below may drop other owners
    closed_ = true;
    boost::system::error_code ec;
    socket_.close(ec);
    timer_.cancel();
    wake_.cancel();
    queue_.clear();
    if (streaming_) --core_->streams;
    core_->remove(it_);
    if (on_close_) {
      auto callback = std::move(on_close_);
      on_close_ = nullptr;
      callback();
    }
  }

  std::shared_ptr<ServerCore> core_;
  Socket socket_;
  asio::steady_timer timer_;  // the watchdog
  asio::steady_timer wake_;   // wakes the stream writer
  Peer peer_;
  boost::beast::flat_buffer buffer_;
  ServerCore::SessionList::iterator it_;

  Phase phase_{Phase::idle};
  SteadyClock::time_point deadline_{SteadyClock::time_point::max()};
  SteadyClock::time_point armed_{SteadyClock::time_point::max()};
  bool timed_out_{false};
  bool closed_{false};
  bool finishing_{false};
  bool streaming_{false};
  bool writing_{false};          // the writer coroutine has a write in flight
  std::size_t front_sent_{0};    // bytes of the front chunk's framing already sent
  std::array<char, 24> size_line_{};
  std::deque<Chunk> queue_;
  std::function<void()> on_close_;
};

}  // namespace

void start_session(std::shared_ptr<ServerCore> core, local::socket socket, Peer peer) {
  std::make_shared<Session<local>>(std::move(core), std::move(socket), std::move(peer))->start();
}

void start_session(std::shared_ptr<ServerCore> core, tcp::socket socket, Peer peer) {
  std::make_shared<Session<tcp>>(std::move(core), std::move(socket), std::move(peer))->start();
}

}  // namespace certagent::http::detail
