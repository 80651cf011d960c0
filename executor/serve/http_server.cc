#include "executor/serve/http_server.h"

// Boost 1.74's Asio uses std::exchange without including <utility> under C++20.
#include <fmt/format.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <ctime>
#include <deque>
#include <random>
#include <sstream>
#include <utility>

namespace kvp::serve {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

class Session;

}  // namespace

struct HttpServer::Impl {
  HttpOptions options;
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  asio::signal_set signals{io};
  asio::steady_timer drain_timer{io};
  std::chrono::steady_clock::time_point drain_deadline;
  std::atomic<Service*> service{nullptr};
  std::atomic<Scheduler*> scheduler{nullptr};
  bool stopping = false;
  int in_flight = 0;  // completions submitted and not yet answered in full
  uint64_t next_id = 1;
  std::mt19937_64 seeds{std::random_device{}()};

  void accept();
  void begin_shutdown();
  void drain();
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, HttpServer::Impl& server) : stream_(std::move(socket)), server_(server) {}

  void start() { read_request(); }

 private:
  using Request = http::request<http::string_body>;

  void read_request() {
    if (closed_) return;
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(server_.options.max_header_bytes));
    parser_->body_limit(server_.options.max_body_bytes);
    stream_.expires_after(server_.options.read_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
        ec == asio::error::operation_aborted) {
      return close();
    }
    if (ec == beast::error::timeout) return close();  // a slow or idle client: the connection goes
    if (ec == http::error::header_limit) {
      return fail(431, fmt::format("the request's header is over {} bytes", server_.options.max_header_bytes), "");
    }
    if (ec == http::error::body_limit) {
      return fail(413, fmt::format("the request's body is over {} bytes", server_.options.max_body_bytes), "");
    }
    if (ec) return fail(400, fmt::format("malformed HTTP request: {}", ec.message()), "");
    stream_.expires_never();
    request_ = parser_->release();
    keep_alive_ = request_.keep_alive();
    try {
      route();
    } catch (const std::exception& e) {
      // A bug, not the client's fault: answer 500 and keep serving everyone else (a job already
      // submitted is cancelled and answers when it ends).
      if (job_) {
        job_->cancelled = true;
        return;
      }
      respond(500,
              error_body(ApiError{
                  .status = 500, .message = fmt::format("internal error: {}", e.what()), .type = "server_error"}),
              "application/json");
    }
  }

  // Answers and closes: the request could not be read, so the connection cannot go on.
  void fail(int status, const std::string& message, const std::string& param) {
    keep_alive_ = false;
    respond(status, error_body(ApiError{.status = status, .message = message, .param = param}), "application/json");
  }

  void route() {
    std::string_view target(request_.target().data(), request_.target().size());
    target = target.substr(0, target.find('?'));
    const http::verb method = request_.method();
    Service* service = server_.service.load();
    auto only = [&](http::verb allowed) {
      if (method == allowed) return true;
      respond(405,
              error_body(ApiError{
                  .status = 405, .message = fmt::format("{} takes {}", target, std::string(http::to_string(allowed)))}),
              "application/json", {{"Allow", std::string(http::to_string(allowed))}});
      return false;
    };
    const bool known = target == "/health" || target == "/metrics" || target == "/slots" || target == "/v1/models" ||
                       target == "/v1/completions" || target == "/v1/chat/completions";
    if (!known) {
      return respond(404, error_body(ApiError{.status = 404, .message = fmt::format("no endpoint {}", target)}),
                     "application/json");
    }
    if (target == "/health") {
      if (!only(http::verb::get)) return;
      if (!service) return respond(503, R"({"status":"loading"})", "application/json");
      if (server_.stopping) return respond(503, R"({"status":"stopping"})", "application/json");
      return respond(200, R"({"status":"ok"})", "application/json");
    }
    if (!service) {
      return respond(503,
                     error_body(ApiError{.status = 503, .message = "the model is loading", .type = "server_error"}),
                     "application/json", {{"Retry-After", "1"}});
    }
    if (target == "/metrics") {
      if (only(http::verb::get)) respond(200, service->metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
      return;
    }
    if (target == "/slots") {
      if (only(http::verb::get)) respond(200, service->slots_body(), "application/json");
      return;
    }
    if (target == "/v1/models") {
      if (only(http::verb::get)) respond(200, service->models_body(), "application/json");
      return;
    }
    if (!only(http::verb::post)) return;
    complete(*service, target == "/v1/chat/completions");
  }

  void complete(Service& service, bool chat) {
    if (server_.stopping) {
      return respond(
          503, error_body(ApiError{.status = 503, .message = "the server is shutting down", .type = "server_error"}),
          "application/json");
    }
    auto parsed = parse_completion(request_.body(), chat);
    if (auto* e = std::get_if<ApiError>(&parsed)) {
      if (Scheduler* s = server_.scheduler.load()) s->metrics().request_rejected("invalid");
      return respond(e->status, error_body(*e), "application/json");
    }
    const CompletionParams& params = std::get<CompletionParams>(parsed);
    auto prepared = service.prepare(params, chat, server_.seeds() >> 11);
    if (auto* e = std::get_if<ApiError>(&prepared)) {
      if (Scheduler* s = server_.scheduler.load()) s->metrics().request_rejected("invalid");
      return respond(e->status, error_body(*e), "application/json");
    }
    job_ = std::get<std::shared_ptr<Job>>(std::move(prepared));
    chat_ = chat;
    stream_mode_ = params.stream;
    include_usage_ = params.include_usage;
    id_ = fmt::format("{}-{}", chat ? "chatcmpl" : "cmpl", server_.next_id++);
    created_ = static_cast<int64_t>(std::time(nullptr));
    std::weak_ptr<Session> weak = weak_from_this();
    asio::io_context& io = server_.io;
    job_->on_text = [weak, &io](std::string_view text) {
      asio::post(io, [weak, t = std::string(text)] {
        if (auto self = weak.lock()) self->on_text(t);
      });
    };
    job_->on_done = [weak, &io](const JobResult& r) {
      asio::post(io, [weak, r] {
        if (auto self = weak.lock()) self->on_done(r);
      });
    };
    Scheduler& scheduler = *server_.scheduler.load();
    switch (scheduler.submit(job_)) {
      case Scheduler::Submit::kQueued:
        break;
      case Scheduler::Submit::kQueueFull:
        job_.reset();
        return respond(
            503,
            error_body(ApiError{.status = 503,
                                .message = fmt::format("the queue is full ({} requests waiting); retry later",
                                                       scheduler.options().max_queue),
                                .type = "server_error"}),
            "application/json", {{"Retry-After", "1"}});
      case Scheduler::Submit::kTooLarge: {
        const int64_t need = job_->steady_bytes + job_->scratch_bytes;
        job_.reset();
        return respond(
            400,
            error_body(ApiError{.status = 400,
                                .message = fmt::format("the request's KV cache and prefill need {} bytes, more "
                                                       "than the server's pool of {} (--kv-memory)",
                                                       need, scheduler.options().kv_memory),
                                .param = "max_tokens"}),
            "application/json");
      }
      case Scheduler::Submit::kStopping:
        job_.reset();
        return respond(
            503, error_body(ApiError{.status = 503, .message = "the server is shutting down", .type = "server_error"}),
            "application/json");
    }
    ++server_.in_flight;  // until its answer is written in full, or the connection closes
    in_flight_ = true;
    keep_until_done_ = shared_from_this();  // alive until on_done, whatever the connection does
    if (stream_mode_) {
      queue(
          "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
          "Transfer-Encoding: chunked\r\n" +
          std::string(keep_alive_ ? "Connection: keep-alive\r\n" : "Connection: close\r\n") + "\r\n");
    }
    watch();
  }

  // While a completion runs, a read on the connection tells a client that left (its end of file
  // or reset cancels the request); bytes it sends meanwhile are the next request's.
  void watch() {
    if (watching_ || closed_ || buffer_.size() > 65536) return;
    watching_ = true;
    stream_.expires_never();
    stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
      self->watching_ = false;
      if (ec) {
        if (self->job_) self->job_->cancelled = true;
        self->gone_ = true;
        if (!self->job_) self->close();
        return;
      }
      self->buffer_.commit(n);
      if (self->job_) {
        self->watch();
      } else if (self->after_response_) {
        self->after_response_ = false;
        self->read_request();
      }
    });
  }

  static std::string chunk(std::string_view data) { return fmt::format("{:x}\r\n{}\r\n", data.size(), data); }

  void on_text(const std::string& text) {
    if (!job_ || !stream_mode_ || gone_) return;
    queue(chunk(server_.service.load()->chunk_event(id_, created_, chat_, text, nullptr, first_chunk_)));
    first_chunk_ = false;
  }

  void on_done(const JobResult& r) {
    if (!job_) return;
    std::shared_ptr<Job> job = std::move(job_);
    std::shared_ptr<Session> keep = std::move(keep_until_done_);
    if (gone_) return close();
    Service& service = *server_.service.load();
    if (stream_mode_) {
      std::string tail = chunk(service.chunk_event(id_, created_, chat_, "", &r.finish_reason, first_chunk_));
      if (include_usage_) tail += chunk(service.usage_event(id_, created_, chat_, r));
      tail += chunk("data: [DONE]\n\n");
      tail += "0\r\n\r\n";
      queue(std::move(tail));
      response_queued_ = true;
    } else {
      respond(200, service.completion_body(id_, created_, chat_, *job, r), "application/json");
    }
  }

  void respond(int status, std::string body, const char* content_type,
               std::vector<std::pair<std::string, std::string>> headers = {}) {
    http::response<http::string_body> res{static_cast<http::status>(status),
                                          request_.version() ? request_.version() : 11};
    res.set(http::field::server, "kvplan");
    res.set(http::field::content_type, content_type);
    for (const auto& [k, v] : headers) res.set(k, v);
    res.keep_alive(keep_alive_);
    res.body() = std::move(body);
    res.prepare_payload();
    std::ostringstream out;
    out << res;
    queue(out.str());
    response_queued_ = true;
  }

  // Writes queue in order; a client more than max_pending_output behind is dropped.
  void queue(std::string bytes) {
    if (closed_) return;
    pending_bytes_ += bytes.size();
    out_.push_back(std::move(bytes));
    if (pending_bytes_ > server_.options.max_pending_output) {
      if (job_) job_->cancelled = true;
      gone_ = true;
      out_.clear();
      return;
    }
    write_next();
  }

  void write_next() {
    if (writing_ || out_.empty() || closed_) return;
    writing_ = true;
    asio::async_write(stream_, asio::buffer(out_.front()), [self = shared_from_this()](beast::error_code ec, size_t) {
      self->writing_ = false;
      self->pending_bytes_ -= self->out_.front().size();
      self->out_.pop_front();
      if (ec) {
        if (self->job_) self->job_->cancelled = true;
        self->gone_ = true;
        if (!self->job_) self->close();
        return;
      }
      if (!self->out_.empty()) return self->write_next();
      if (self->response_queued_ && !self->job_) self->response_done();
    });
  }

  // The whole response is written: next request, or close.
  void response_done() {
    release_in_flight();
    response_queued_ = false;
    first_chunk_ = true;
    if (!keep_alive_ || gone_) return close();
    if (watching_) {
      after_response_ = true;  // the watch read goes on as the next request's first bytes
    } else {
      read_request();
    }
  }

  // A completion's answer is out (or can no longer go out): shutdown may now stop the network.
  void release_in_flight() {
    if (!in_flight_) return;
    in_flight_ = false;
    --server_.in_flight;
  }

  void close() {
    release_in_flight();
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  beast::tcp_stream stream_;
  HttpServer::Impl& server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Request request_;
  bool keep_alive_ = true;
  std::deque<std::string> out_;
  size_t pending_bytes_ = 0;
  bool writing_ = false, watching_ = false, after_response_ = false, response_queued_ = false;
  bool closed_ = false, gone_ = false;
  bool in_flight_ = false;  // counted in server_.in_flight
  // The completion in flight.
  std::shared_ptr<Job> job_;
  std::shared_ptr<Session> keep_until_done_;
  bool chat_ = false, stream_mode_ = false, include_usage_ = false, first_chunk_ = true;
  std::string id_;
  int64_t created_ = 0;
};

}  // namespace

void HttpServer::Impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (!acceptor.is_open()) return;  // closed for shutdown
    } else {
      socket.set_option(tcp::no_delay(true), ec);
      std::make_shared<Session>(std::move(socket), *this)->start();
    }
    accept();
  });
}

void HttpServer::Impl::begin_shutdown() {
  if (stopping) return;
  stopping = true;
  beast::error_code ec;
  acceptor.close(ec);
  if (Scheduler* s = scheduler.load()) s->stop_admitting();
  drain_deadline = std::chrono::steady_clock::now() + options.shutdown_timeout;
  drain();
}

void HttpServer::Impl::drain() {
  Scheduler* s = scheduler.load();
  if (in_flight == 0 && (!s || s->idle())) {
    io.stop();
    return;
  }
  if (s && std::chrono::steady_clock::now() >= drain_deadline) s->cancel_all();
  drain_timer.expires_after(std::chrono::milliseconds(10));
  drain_timer.async_wait([this](beast::error_code) { drain(); });
}

HttpServer::HttpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpServer::~HttpServer() = default;

Result<std::unique_ptr<HttpServer>> HttpServer::bind(const HttpOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  beast::error_code ec;
  const asio::ip::address address = asio::ip::make_address(options.host, ec);
  if (ec) return make_error("--host: '{}' is not an IP address ({})", options.host, ec.message());
  if (options.port < 0 || options.port > 65535) return make_error("--port: expected 0..65535, found {}", options.port);
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(options.port));
  impl->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl->acceptor.bind(endpoint, ec);
  if (!ec) impl->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return make_error("--host/--port: cannot listen on {}:{}: {}", options.host, options.port, ec.message());
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

int HttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }

void HttpServer::set_service(Service* service, Scheduler* scheduler) {
  impl_->scheduler = scheduler;
  impl_->service = service;
}

void HttpServer::shutdown() {
  asio::post(impl_->io, [impl = impl_.get()] { impl->begin_shutdown(); });
}

void HttpServer::run() {
  Impl& s = *impl_;
  if (s.options.handle_signals) {
    s.signals.add(SIGINT);
    s.signals.add(SIGTERM);
    s.signals.async_wait([&s](beast::error_code ec, int) {
      if (!ec) s.begin_shutdown();
    });
  }
  s.accept();
  s.io.run();
}

}  // namespace kvp::serve
