// kvplan-load: a closed-loop load generator for kvplan serve (tools/serve-bench.sh drives it).
//
// C clients, one thread and one keep-alive connection each, send streaming /v1/completions
// requests back to back until N are done, timing each request's first token (TTFT) and the gaps
// between its tokens (inter-token latency) as the Server-Sent Events arrive. It prints p50/p99 of
// both, generated tokens/s and requests/s, and writes them as JSON. Written in C++ rather than
// Python because an asyncio client on this 2-core machine tops out near the server's own rate
// (about 16K events/s), which would time the client instead of the server.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>  // Boost 1.74's Asio needs it before itself under C++20

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

const char* const kPrompts[] = {"Once upon a time", "The little dog",      "Lily and Ben went to the park",
                                "One day, a bird",  "Tom had a red ball",  "The sun was hot",
                                "Mom said",         "There was a big tree"};

struct Outcome {
  int status = 0;
  double ttft_s = -1, latency_s = 0;
  std::vector<double> itl_s;
  int64_t tokens = 0;
};

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

Outcome one_request(beast::tcp_stream& stream, beast::flat_buffer& buffer, const std::string& body) {
  http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
  req.set(http::field::host, "127.0.0.1");
  req.set(http::field::content_type, "application/json");
  req.body() = body;
  req.prepare_payload();
  const Clock::time_point start = Clock::now();
  http::write(stream, req);
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  http::read_header(stream, buffer, parser);
  Outcome out;
  out.status = parser.get().result_int();
  std::string pending;
  char chunk[16384];
  Clock::time_point last{};
  while (!parser.is_done()) {
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof(chunk);
    beast::error_code ec;
    http::read_some(stream, buffer, parser, ec);
    if (ec == http::error::need_buffer) ec = {};
    if (ec) throw beast::system_error(ec);
    const Clock::time_point now = Clock::now();
    pending.append(chunk, sizeof(chunk) - parser.get().body().size);
    for (size_t end; (end = pending.find("\n\n")) != std::string::npos; pending.erase(0, end + 2)) {
      const std::string_view data = std::string_view(pending).substr(6, end - 6);  // after "data: "
      if (out.status != 200 || data == "[DONE]") continue;
      const json e = json::parse(data);
      if (e["choices"].empty()) {
        out.tokens = e["usage"]["completion_tokens"];
      } else if (!e["choices"][0]["text"].get<std::string>().empty()) {
        if (out.ttft_s < 0) {
          out.ttft_s = seconds(start, now);
        } else {
          out.itl_s.push_back(seconds(last, now));
        }
        last = now;
      }
    }
  }
  out.latency_s = seconds(start, Clock::now());
  return out;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5))];
}

json run_level(const std::string& host, int port, int concurrency, int requests, int max_tokens, const json& kvplan,
               const std::vector<std::string>& prompts) {
  std::atomic<int> next{0};
  std::mutex mu;
  std::vector<Outcome> outcomes;
  std::atomic<int> errors{0};
  const Clock::time_point start = Clock::now();
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c) {
    clients.emplace_back([&] {
      try {
        asio::io_context io;
        beast::tcp_stream stream(io);
        stream.connect(tcp::endpoint(asio::ip::make_address(host), static_cast<unsigned short>(port)));
        stream.socket().set_option(tcp::no_delay(true));
        beast::flat_buffer buffer;
        for (int i; (i = next++) < requests;) {
          json body = {{"prompt",
                        prompts.empty() ? std::string(kPrompts[i % std::size(kPrompts)]) : prompts[i % prompts.size()]},
                       {"max_tokens", max_tokens},
                       {"temperature", 0},
                       {"stream", true},
                       {"stream_options", {{"include_usage", true}}}};
          if (!kvplan.is_null()) body["kvplan"] = kvplan;
          Outcome o = one_request(stream, buffer, body.dump());
          std::lock_guard lock(mu);
          outcomes.push_back(std::move(o));
        }
      } catch (const std::exception& e) {
        ++errors;
        std::fprintf(stderr, "kvplan-load: client: %s\n", e.what());
      }
    });
  }
  for (std::thread& t : clients) t.join();
  const double wall = seconds(start, Clock::now());
  std::vector<double> ttft, itl;
  int64_t tokens = 0;
  int ok = 0;
  for (const Outcome& o : outcomes) {
    if (o.status != 200) continue;
    ++ok;
    tokens += o.tokens;
    if (o.ttft_s >= 0) ttft.push_back(o.ttft_s);
    itl.insert(itl.end(), o.itl_s.begin(), o.itl_s.end());
  }
  return {{"concurrency", concurrency},
          {"requests", outcomes.size()},
          {"ok", ok},
          {"rejected", static_cast<int>(outcomes.size()) - ok},
          {"client_errors", errors.load()},
          {"wall_s", wall},
          {"tokens", tokens},
          {"tokens_per_s", tokens / wall},
          {"requests_per_s", ok / wall},
          {"ttft_p50_s", percentile(ttft, 0.5)},
          {"ttft_p99_s", percentile(ttft, 0.99)},
          {"itl_p50_s", percentile(itl, 0.5)},
          {"itl_p99_s", percentile(itl, 0.99)}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "kvplan-load: closed-loop streaming clients against kvplan serve; TTFT, inter-token latency, "
      "tokens/s and requests/s per concurrency level",
      "kvplan-load"};
  std::string host = "127.0.0.1", concurrency = "1,8,32,128", kvplan_text, label, out;
  int port = 8080, requests = 64, max_tokens = 128;
  app.add_option("--host", host, "Server address (default 127.0.0.1)");
  app.add_option("--port", port, "Server port (default 8080)");
  app.add_option("--concurrency", concurrency, "Comma-separated client counts (default 1,8,32,128)");
  app.add_option("--requests", requests, "Requests per level, at least one per client (default 64)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-tokens", max_tokens, "max_tokens of each request (default 128)")->check(CLI::PositiveNumber);
  app.add_option("--kvplan", kvplan_text, "The requests' \"kvplan\" field as JSON, e.g. '{\"keep\": 0.25}'");
  std::vector<std::string> prompts;
  app.add_option("--prompt", prompts, "Prompt text, repeatable, used in turn (default: eight short story openings)");
  app.add_option("--label", label, "A name for this run in the output");
  app.add_option("--json", out, "Write the results to this file");
  CLI11_PARSE(app, argc, argv);
  json kvplan;
  if (!kvplan_text.empty()) {
    try {
      kvplan = json::parse(kvplan_text);
    } catch (const json::exception& e) {
      std::fprintf(stderr, "kvplan-load: --kvplan: not JSON: %s\n", e.what());
      return 2;
    }
  }
  json levels = json::array();
  size_t at = 0;
  while (at <= concurrency.size()) {
    const size_t comma = std::min(concurrency.find(',', at), concurrency.size());
    const int c = std::atoi(concurrency.substr(at, comma - at).c_str());
    at = comma + 1;
    if (c < 1) {
      std::fprintf(stderr, "kvplan-load: --concurrency: expected client counts >= 1, found '%s'\n",
                   concurrency.c_str());
      return 2;
    }
    // At least one request per client, so that every client of a level is busy.
    const json r = run_level(host, port, c, std::max(requests, c), max_tokens, kvplan, prompts);
    auto ms = [&](const char* k) {
      return r[k].get<double>() < 0 ? std::string("-") : fmt::format("{:.2f}", 1e3 * r[k].get<double>());
    };
    std::printf("%s c=%4d: %8.0f tok/s %7.1f req/s  TTFT p50 %s p99 %s ms  ITL p50 %s p99 %s ms  rejected %d\n",
                label.empty() ? "run" : label.c_str(), c, r["tokens_per_s"].get<double>(),
                r["requests_per_s"].get<double>(), ms("ttft_p50_s").c_str(), ms("ttft_p99_s").c_str(),
                ms("itl_p50_s").c_str(), ms("itl_p99_s").c_str(), r["rejected"].get<int>());
    std::fflush(stdout);
    if (r["client_errors"].get<int>() > 0) return 1;
    levels.push_back(r);
  }
  if (!out.empty()) {
    std::ofstream f(out + ".tmp");
    f << json{{"label", label}, {"max_tokens", max_tokens}, {"kvplan", kvplan}, {"levels", levels}}.dump(2) << "\n";
    f.close();
    if (!f || std::rename((out + ".tmp").c_str(), out.c_str()) != 0) {
      std::fprintf(stderr, "kvplan-load: --json: cannot write %s\n", out.c_str());
      return 1;
    }
  }
  return 0;
}
