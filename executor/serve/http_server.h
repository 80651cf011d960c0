// kvplan serve's HTTP/1.1 server: Boost.Beast over Asio, one network thread for every connection
// (keep-alive, pipelining, Server-Sent Events in chunked encoding), the model on the scheduler's
// thread. Beast rather than cpp-httplib: measured on this machine, a Beast hello server answers
// 48-69K requests/s at 1-128 keep-alive clients where cpp-httplib's thread-per-connection pool
// answers 0.3K (defaults) to 28K (tuned), and Beast is header-only where Debian's cpp-httplib is a
// shared library that maps libssl, libcrypto, brotli and zlib into every kvplan command (+2.6 ms
// start-up). docs/SERVING.md has the figures.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "common/status.h"
#include "executor/serve/service.h"

namespace kvp::serve {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                                    // 0: an ephemeral port (port() says which)
  size_t max_header_bytes = 16 << 10;                 // beyond: 431
  size_t max_body_bytes = 1 << 20;                    // beyond: 413
  std::chrono::milliseconds read_timeout{30000};      // a request not received in time: the connection closes
  size_t max_pending_output = 4 << 20;                // a streaming client this far behind is cancelled
  std::chrono::milliseconds shutdown_timeout{10000};  // SIGINT/SIGTERM: in-flight requests get this long
  bool handle_signals = true;
};

class HttpServer {
 public:
  // Binds and listens (an error names the address); serves nothing until run().
  static Result<std::unique_ptr<HttpServer>> bind(const HttpOptions& options);
  ~HttpServer();

  int port() const;
  // Runs the network on the calling thread until shutdown (a signal, or shutdown()). Until
  // set_service, /health answers 503 "loading" and every other endpoint 503.
  void run();
  // Thread-safe. `service` outlives the server.
  void set_service(Service* service, Scheduler* scheduler);
  // Thread-safe: stop accepting, let in-flight requests finish (or cancel them at the deadline),
  // then return from run().
  void shutdown();

  struct Impl;

 private:
  explicit HttpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvp::serve
