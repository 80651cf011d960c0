// kvplan serve over real HTTP on 127.0.0.1 (an ephemeral port), with a Beast client: 32
// concurrent streams each equal to the same request run alone; texts equal to the kvplan binary's
// `run` for the full cache, a plan and a keep ratio; admission as `kvplan capacity --kv-memory`
// predicts; a client that leaves is cancelled and its memory freed; every bad input gets its
// status while the server goes on answering; the queue's 503; shutdown (and SIGTERM on the
// binary) finishes what is in flight.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>  // Boost 1.74's Asio needs it before itself under C++20

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "executor/gpu/gpu_backend.h"
#include "executor/serve/http_server.h"
#include "planner/capacity.h"
#include "tests/support/test_support.h"

namespace kvp::serve {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using nlohmann::json;
using test::default_config;
using test::default_model;

struct Reply {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;
  bool closed = false;  // the server closed the connection after it
};

// One keep-alive connection.
class Client {
 public:
  explicit Client(int port) : stream_(io_) {
    stream_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }

  Reply send(http::verb method, const std::string& target, const std::string& body = "",
             const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, "127.0.0.1");
    for (const auto& [k, v] : headers) req.set(k, v);
    if (method == http::verb::post) req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    http::write(stream_, req);
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    beast::error_code ec;
    http::read(stream_, buffer_, parser, ec);
    Reply r;
    if (ec) {
      r.closed = true;
      return r;
    }
    const auto& res = parser.get();
    r.status = res.result_int();
    r.body = res.body();
    for (const auto& f : res) r.headers[std::string(f.name_string())] = std::string(f.value());
    r.closed = !res.keep_alive();
    return r;
  }
  Reply post(const std::string& target, const std::string& body) { return send(http::verb::post, target, body); }
  Reply get(const std::string& target) { return send(http::verb::get, target); }
  beast::tcp_stream& stream() { return stream_; }

 private:
  asio::io_context io_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
};

Reply post(int port, const std::string& target, const std::string& body) { return Client(port).post(target, body); }
Reply get(int port, const std::string& target) { return Client(port).get(target); }

// The events of a Server-Sent Events body; "[DONE]" as a string.
std::vector<json> events(const std::string& body, bool* done) {
  std::vector<json> out;
  *done = false;
  size_t at = 0;
  while (true) {
    const size_t end = body.find("\n\n", at);
    if (end == std::string::npos) break;
    const std::string event = body.substr(at, end - at);
    at = end + 2;
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    const std::string data = event.substr(6);
    if (data == "[DONE]") {
      *done = true;
      continue;
    }
    out.push_back(json::parse(data));
  }
  EXPECT_EQ(at, body.size()) << "trailing bytes after the last event";
  return out;
}

// A streamed completion's text and finish reason.
std::pair<std::string, std::string> streamed(const Reply& r) {
  bool done = false;
  std::string text, finish;
  for (const json& e : events(r.body, &done)) {
    if (e["choices"].empty()) continue;  // usage
    const json& c = e["choices"][0];
    text += c.contains("text") ? c["text"].get<std::string>() : c["delta"].value("content", "");
    if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
  }
  EXPECT_TRUE(done) << "no data: [DONE]";
  return {text, finish};
}

// The job's tokens run alone through generate(), stopping as kvplan run stops.
std::vector<int32_t> alone(const Job& job) {
  CpuBackend backend(default_model().weights);
  Decoder decoder(backend);
  const Tokenizer& tok = default_model().tokenizer;
  GenerateOptions options{
      .steps = static_cast<int>(job.prompt.size()) + job.max_tokens - 1, .sampler = job.sampler, .policy = job.policy};
  options.stop_tokens = generation_stop_tokens(tok);
  const GenerateResult r = generate(decoder, {job.prompt}, {job.budgets}, options);
  return std::vector<int32_t>(r.tokens[0].begin() + static_cast<long>(job.prompt.size()), r.tokens[0].end());
}

std::string text_of(const std::vector<int32_t>& prompt, const std::vector<int32_t>& tokens) {
  std::string text;
  int32_t prev = prompt.back();
  for (int32_t t : tokens) text += default_model().tokenizer.decode(prev, t), prev = t;
  return text;
}

// A uniform vatp plan of `budget` slots, as kvplan plan writes it.
ServedPlan vatp_plan(const std::string& name, int budget) {
  const PolicyParams params = published_defaults("vatp", budget);
  auto policy = make_policy("vatp", params);
  const ModelConfig& c = default_config();
  KvBudgets b = KvBudgets::uniform(c.n_layers, c.n_kv_heads, c.head_dim(), budget);
  b.aux_floats_per_slot = (*policy)->aux_floats_per_slot();
  return ServedPlan{
      .name = name, .path = "", .budgets = b, .policy = std::shared_ptr<const Policy>(std::move(*policy))};
}

// A server in this process on an ephemeral port.
class Server {
 public:
  Server(SchedulerOptions so, std::vector<ServedPlan> plans = {}, HttpOptions http = {},
         std::optional<ChatTemplate> chat = std::nullopt, bool load = true, bool gpu = false)
      : backend_(gpu ? std::unique_ptr<Backend>(
                           std::make_unique<GpuBackend>(default_model().weights, make_emulated_device()))
                     : std::unique_ptr<Backend>(std::make_unique<CpuBackend>(default_model().weights, 1))),
        decoder_(*backend_) {
    if (gpu) so.pool_policy = plans.empty() ? nullptr : plans[0].policy;
    http.port = 0;
    http.handle_signals = false;
    auto s = HttpServer::bind(http);
    EXPECT_TRUE(s.ok());
    http_ = std::move(s).value();
    net_ = std::thread([this] { http_->run(); });
    scheduler_ = std::make_unique<Scheduler>(decoder_, default_model().tokenizer, so);
    service_ = std::make_unique<Service>(default_model().tokenizer, *scheduler_,
                                         ServiceOptions{.model_id = "stories260K",
                                                        .plans = std::move(plans),
                                                        .chat_template = chat,
                                                        .context = default_config().seq_len,
                                                        .n_layers = default_config().n_layers,
                                                        .n_kv_heads = default_config().n_kv_heads,
                                                        .head_dim = default_config().head_dim(),
                                                        .pool_policy = so.pool_policy});
    if (load) this->load();
  }
  ~Server() { stop(); }
  void load() { http_->set_service(service_.get(), scheduler_.get()); }
  void stop() {
    if (!net_.joinable()) return;
    http_->shutdown();
    net_.join();
  }
  int port() const { return http_->port(); }
  Service& service() { return *service_; }
  Scheduler& scheduler() { return *scheduler_; }
  Backend& backend() { return *backend_; }

  // The job a request body becomes (prompt, budgets, sampler), without running it.
  std::shared_ptr<Job> job_of(const std::string& body) {
    auto parsed = parse_completion(body, false);
    EXPECT_TRUE(std::holds_alternative<CompletionParams>(parsed));
    auto job = service_->prepare(std::get<CompletionParams>(parsed), false, 0);
    EXPECT_TRUE(std::holds_alternative<std::shared_ptr<Job>>(job));
    return std::get<std::shared_ptr<Job>>(job);
  }

 private:
  std::unique_ptr<Backend> backend_;
  Decoder decoder_;
  std::unique_ptr<HttpServer> http_;  // destroyed after the scheduler, whose last events it owns
  std::thread net_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<Service> service_;
};

// Polls GET /metrics until `metric`'s line reads `value` (or fails after 20 s).
void wait_metric(int port, const std::string& line) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::string body;
  while (std::chrono::steady_clock::now() < until) {
    body = get(port, "/metrics").body;
    if (body.find("\n" + line + "\n") != std::string::npos) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ADD_FAILURE() << "no line '" << line << "' in /metrics:\n" << body;
}

TEST(ServeHttp, ThirtyTwoConcurrentStreamsEachEqualTheRequestRunAlone) {
  Server server(SchedulerOptions{.kv_memory = int64_t{1} << 30, .prefill_chunk = 32}, {vatp_plan("vatp48", 48)});
  const std::vector<std::string> prompts = {"Once upon a time",       "The dog", "Lily and Ben went to the park",
                                            "Tom had a red ball. He", "",        "One day, a little bird"};
  std::vector<std::string> bodies;
  for (int i = 0; i < 32; ++i) {
    json b = {{"prompt", prompts[i % prompts.size()]}, {"max_tokens", 20 + 7 * i}, {"stream", true}};
    if (i % 3 == 0) b["temperature"] = 0;
    if (i % 3 == 1) b["temperature"] = 0.8, b["top_p"] = 0.9, b["seed"] = 100 + i;
    if (i % 3 == 2) b["seed"] = i;  // temperature 1 (the OpenAI default)
    if (i % 4 == 1) b["kvplan"] = {{"keep", 0.3}};
    if (i % 4 == 2) b["kvplan"] = {{"plan", "vatp48"}};
    if (i % 8 == 3) b["stream_options"] = {{"include_usage", true}};
    bodies.push_back(b.dump());
  }
  std::vector<Reply> replies(bodies.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < bodies.size(); ++i) {
    clients.emplace_back([&, i] { replies[i] = post(server.port(), "/v1/completions", bodies[i]); });
  }
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < bodies.size(); ++i) {
    SCOPED_TRACE(bodies[i]);
    ASSERT_EQ(replies[i].status, 200) << replies[i].body;
    EXPECT_EQ(replies[i].headers["Content-Type"], "text/event-stream");
    const std::shared_ptr<Job> job = server.job_of(bodies[i]);
    const std::vector<int32_t> tokens = alone(*job);
    const auto [text, finish] = streamed(replies[i]);
    EXPECT_EQ(text, text_of(job->prompt, tokens));
    EXPECT_EQ(finish, static_cast<int>(tokens.size()) == job->max_tokens ? "length" : "stop");
    if (bodies[i].find("include_usage") != std::string::npos) {
      bool done = false;
      const json usage = events(replies[i].body, &done).back();
      EXPECT_TRUE(usage["choices"].empty());
      EXPECT_EQ(usage["usage"]["completion_tokens"], tokens.size());
      EXPECT_EQ(usage["usage"]["prompt_tokens"], job->prompt.size());
    }
  }
  const std::string metrics = get(server.port(), "/metrics").body;
  EXPECT_NE(metrics.find("\nkvplan_kv_bytes_in_use 0\n"), std::string::npos);
  EXPECT_NE(metrics.find("kvplan_requests_running 0\n"), std::string::npos);
  EXPECT_EQ(server.backend().kv_bytes_allocated(), 0);
}

TEST(ServeHttp, CompletionsEqualTheKvplanBinarysRun) {
  // Without plans requests get the full cache; with one, it is the default. The served plan is the
  // uniform plan `run --policy vatp --budget 40` builds.
  Server full(SchedulerOptions{.kv_memory = int64_t{1} << 30});
  Server planned(SchedulerOptions{.kv_memory = int64_t{1} << 30}, {vatp_plan("vatp40", 40)});
  struct Case {
    std::string body, run_args;
  };
  // max_tokens M after a prompt of P tokens is `run --steps P+M-1`.
  const std::vector<Case> cases = {
      {R"({"prompt":"Once upon a time","max_tokens":60,"temperature":0})", "--steps 64"},
      {R"({"prompt":"Once upon a time","max_tokens":60,"temperature":0.8,"top_p":0.9,"seed":42})",
       "--steps 64 --temperature 0.8 --top-p 0.9 --seed 42"},
      {R"({"prompt":"Once upon a time","max_tokens":120,"temperature":0,"kvplan":{"plan":"vatp40"}})",
       "--steps 124 --policy vatp --budget 40"},
      // "full" names the full cache while a plan is loaded.
      {R"({"prompt":"Once upon a time","max_tokens":60,"temperature":0,"kvplan":{"plan":"full"}})",
       "--steps 64 --policy full --budget 64"},
      // keep 0.25 of 5 + 100 - 1 = 104 positions: 26 slots.
      {R"({"prompt":"Once upon a time","max_tokens":100,"temperature":0,"kvplan":{"keep":0.25}})",
       "--steps 104 --policy vatp --budget 26"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    const Server& server = c.run_args.find("--policy") == std::string::npos ? full : planned;
    const Reply r = post(server.port(), "/v1/completions", c.body);
    ASSERT_EQ(r.status, 200) << r.body;
    const json out = json::parse(r.body);
    const test::CliResult run = test::run_kvplan("run --prompt 'Once upon a time' --json " + c.run_args);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const json ran = json::parse(run.out);
    const std::vector<int32_t> all = ran["sequences"][0]["tokens"];
    const std::vector<int32_t> generated(all.begin() + 5, all.end());
    EXPECT_EQ(out["kvplan"]["tokens"].get<std::vector<int32_t>>(), generated);
    EXPECT_EQ(out["choices"][0]["text"], text_of(std::vector<int32_t>(all.begin(), all.begin() + 5), generated));
    EXPECT_EQ(out["usage"]["prompt_tokens"], 5);
    EXPECT_EQ(out["usage"]["completion_tokens"], generated.size());
    EXPECT_EQ(out["kvplan"]["kv_bytes"], ran["kv_bytes"]);  // the same cache, byte for byte
  }
}

TEST(ServeHttpOnTheEmulatedGpu, CompletionsEqualTheBinarysRunOnTheSameBackend) {
  // The GPU pool runs the plan's policy for every request; a full-cache request keeps every
  // position under it, which gives the full cache's tokens.
  Server server(SchedulerOptions{.kv_memory = 4 << 20}, {vatp_plan("vatp40", 40)}, {}, std::nullopt, true, true);
  struct Case {
    std::string body, run_args;
  };
  const std::vector<Case> cases = {
      {R"({"prompt":"Once upon a time","max_tokens":80,"temperature":0})", "--steps 84 --policy vatp --budget 40"},
      {R"({"prompt":"Once upon a time","max_tokens":30,"temperature":0.8,"seed":9})",
       "--steps 34 --policy vatp --budget 40 --temperature 0.8 --top-p 1 --seed 9"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.body);
    const Reply r = post(server.port(), "/v1/completions", c.body);
    ASSERT_EQ(r.status, 200) << r.body;
    const json out = json::parse(r.body);
    const test::CliResult run =
        test::run_kvplan("run --backend gpu-emulated --prompt 'Once upon a time' --json " + c.run_args);
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const std::vector<int32_t> all = json::parse(run.out)["sequences"][0]["tokens"];
    EXPECT_EQ(out["kvplan"]["tokens"].get<std::vector<int32_t>>(), std::vector<int32_t>(all.begin() + 5, all.end()));
  }
  // The full cache of the CPU backend tells the same story as the pool's "full" request.
  const Reply full = post(server.port(), "/v1/completions",
                          R"({"prompt":"Once upon a time","max_tokens":30,"temperature":0,"kvplan":{"keep":1}})");
  ASSERT_EQ(full.status, 200) << full.body;
  const test::CliResult cpu = test::run_kvplan("run --prompt 'Once upon a time' --steps 34 --json");
  const std::vector<int32_t> all = json::parse(cpu.out)["sequences"][0]["tokens"];
  EXPECT_EQ(json::parse(full.body)["kvplan"]["tokens"].get<std::vector<int32_t>>(),
            std::vector<int32_t>(all.begin() + 5, all.end()));
  EXPECT_EQ(server.backend().kv_bytes_allocated(), 0);
}

TEST(ServeHttp, AdmissionFillsThePoolAsKvplanCapacityPredicts) {
  // Full-cache requests of a 6-token prompt and 200 tokens: 205 positions each.
  const std::string body = R"({"prompt":"Once upon a time there","max_tokens":200,"temperature":0,"stream":true})";
  Server probe(SchedulerOptions{.kv_memory = int64_t{1} << 30}, {}, {}, std::nullopt, false);
  const std::shared_ptr<Job> job = probe.job_of(body);
  ASSERT_EQ(job->prompt.size(), 6u);
  const int64_t pool = 7 * job->budgets.kv_bytes() + job->budgets.prefill_scratch(6, 0).kv_bytes() + 1000;
  const test::CliResult cap = test::run_kvplan(fmt::format(
      "capacity --model stories260K --hardware cpu-2core --kv-dtype f32 --context 205 --prompt-len 6 --keep 1 "
      "--kv-memory {} --json",
      pool));
  ASSERT_EQ(cap.exit_code, 0) << cap.err;
  const int64_t predicted = json::parse(cap.out)["full"]["pool_sequences"];
  EXPECT_EQ(predicted, 7);
  Server server(SchedulerOptions{.kv_memory = pool});
  std::vector<std::thread> clients;
  std::vector<Reply> replies(20);
  for (size_t i = 0; i < replies.size(); ++i) {
    clients.emplace_back([&, i] { replies[i] = post(server.port(), "/v1/completions", body); });
  }
  for (std::thread& t : clients) t.join();
  for (const Reply& r : replies) {
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(streamed(r).second, "length");
  }
  const std::string metrics = get(server.port(), "/metrics").body;
  EXPECT_NE(metrics.find(fmt::format("\nkvplan_requests_running_peak {}\n", predicted)), std::string::npos) << metrics;
  const Scheduler::Snapshot s = server.scheduler().snapshot();
  EXPECT_LE(s.peak_kv_bytes_in_use, pool);
  EXPECT_EQ(s.kv_bytes_in_use, 0);
}

TEST(ServeHttp, AClientThatLeavesIsCancelledAndItsMemoryFreed) {
  Server server(SchedulerOptions{.kv_memory = int64_t{1} << 30});
  {
    // Streaming: read the header and a first event, then hang up.
    Client c(server.port());
    http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
    req.body() = R"({"prompt":"Once","max_tokens":500,"stream":true})";
    req.prepare_payload();
    http::write(c.stream(), req);
    beast::flat_buffer buf;
    http::response_parser<http::buffer_body> parser;
    char data[64];
    parser.get().body().data = data;
    parser.get().body().size = sizeof(data);
    http::read_header(c.stream(), buf, parser);
    EXPECT_EQ(parser.get().result_int(), 200);
  }
  wait_metric(server.port(), "kvplan_requests_total{finish_reason=\"cancelled\"} 1");
  {
    // Not streaming: the client leaves while it waits for the whole answer.
    Client c(server.port());
    http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
    req.body() = R"({"prompt":"Once","max_tokens":500})";
    req.prepare_payload();
    http::write(c.stream(), req);
  }
  wait_metric(server.port(), "kvplan_requests_total{finish_reason=\"cancelled\"} 2");
  wait_metric(server.port(), "kvplan_kv_bytes_in_use 0");
  EXPECT_EQ(server.scheduler().snapshot().backend_kv_bytes, 0);
  EXPECT_NE(get(server.port(), "/metrics").body.find("kvplan_generation_tokens_total"), std::string::npos);
}

TEST(ServeHttp, EveryBadInputGetsItsStatusAndTheServerGoesOn) {
  HttpOptions http;
  http.read_timeout = std::chrono::milliseconds(300);
  http.max_body_bytes = 64 << 10;
  Server server(SchedulerOptions{.kv_memory = 4 << 20}, {vatp_plan("vatp40", 40)}, http);
  const std::string good = R"({"prompt":"Once upon a time","max_tokens":8,"temperature":0})";
  struct Case {
    std::string body;
    int status;
    std::string param;
  };
  const std::vector<Case> cases = {
      {"{\"prompt\": ", 400, ""},
      {R"({"prompt":"x","max_tokens":"8"})", 400, "max_tokens"},
      {R"({"prompt":"x","model":"gpt-4o"})", 404, "model"},
      {R"({"prompt":"x","kvplan":{"plan":"h2o"}})", 400, "kvplan.plan"},
      {R"({"prompt":"x","max_tokens":600})", 400, "prompt"},  // beyond the context
      {R"({"prompt":[1,99999]})", 400, "prompt"},             // outside the vocabulary
      {"{\"prompt\": \"\xC3\x28\"}", 400, ""},                // invalid UTF-8
      {R"({"messages":[{"role":"user","content":"hi"}]})", 400,
       "messages"},  // no chat template (on completions: prompt)
  };
  Client c(server.port());
  for (const Case& k : cases) {
    SCOPED_TRACE(k.body);
    const Reply r =
        c.post(k.body.find("messages") != std::string::npos ? "/v1/chat/completions" : "/v1/completions", k.body);
    EXPECT_EQ(r.status, k.status) << r.body;
    const json e = json::parse(r.body)["error"];
    EXPECT_EQ(e["type"], "invalid_request_error");
    if (!k.param.empty()) {
      EXPECT_EQ(e["param"], k.param);
    }
    EXPECT_FALSE(r.closed);
    EXPECT_EQ(c.post("/v1/completions", good).status, 200);  // the same connection goes on
  }
  // A cache larger than the pool.
  {
    Server tiny(SchedulerOptions{.kv_memory = 50000});
    const Reply r = post(tiny.port(), "/v1/completions", R"({"prompt":"Once","max_tokens":200})");
    EXPECT_EQ(r.status, 400);
    EXPECT_NE(r.body.find("--kv-memory"), std::string::npos) << r.body;
    EXPECT_EQ(post(tiny.port(), "/v1/completions", R"({"prompt":"Once","max_tokens":20})").status, 200);
  }
  EXPECT_EQ(c.get("/v1/nothing").status, 404);
  EXPECT_EQ(c.send(http::verb::delete_, "/v1/models").status, 405);
  // Oversized header and body: answered, then the connection closes; a new one is served.
  {
    Client big(server.port());
    const Reply r = big.send(http::verb::post, "/v1/completions", good, {{"X-Filler", std::string(20000, 'a')}});
    EXPECT_EQ(r.status, 431);
    EXPECT_TRUE(r.closed);
  }
  {
    Client big(server.port());
    const Reply r = big.post("/v1/completions", R"({"prompt":")" + std::string(70000, 'a') + "\"}");
    EXPECT_EQ(r.status, 413);
    EXPECT_TRUE(r.closed);
  }
  // A slow client that never finishes its header: dropped at the read timeout.
  {
    Client slow(server.port());
    asio::write(slow.stream(), asio::buffer(std::string("POST /v1/completions HTTP/1.1\r\nHost: x\r\n")));
    char byte;
    beast::error_code ec;
    const auto start = std::chrono::steady_clock::now();
    slow.stream().read_some(asio::buffer(&byte, 1), ec);
    EXPECT_TRUE(ec == asio::error::eof || ec == asio::error::connection_reset) << ec.message();
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(250));
  }
  EXPECT_EQ(post(server.port(), "/v1/completions", good).status, 200);
}

TEST(ServeHttp, AFullQueueAnswers503WithRetryAfter) {
  // ignore_eos: the first request runs all 500 tokens, so the second still waits when the third comes.
  const std::string body = R"({"prompt":"Once","max_tokens":500,"stream":true,"ignore_eos":true})";
  Server probe(SchedulerOptions{.kv_memory = int64_t{1} << 30}, {}, {}, std::nullopt, false);
  const std::shared_ptr<Job> job = probe.job_of(body);
  const int64_t one = job->budgets.kv_bytes() + job->budgets.prefill_scratch(2, 0).kv_bytes();
  Server server(SchedulerOptions{.kv_memory = one, .max_queue = 1});
  // The first runs (the pool holds one), the second waits, the third finds the queue full.
  std::vector<Reply> replies(2);
  std::thread first([&] { replies[0] = post(server.port(), "/v1/completions", body); });
  wait_metric(server.port(), "kvplan_requests_running 1");
  std::thread second([&] { replies[1] = post(server.port(), "/v1/completions", body); });
  wait_metric(server.port(), "kvplan_requests_waiting 1");
  const Reply full = post(server.port(), "/v1/completions", body);
  EXPECT_EQ(full.status, 503);
  EXPECT_EQ(full.headers.at("Retry-After"), "1");
  EXPECT_EQ(json::parse(full.body)["error"]["type"], "server_error");
  first.join();
  second.join();
  EXPECT_EQ(streamed(replies[0]).second, "length");
  EXPECT_EQ(streamed(replies[1]).second, "length");
  EXPECT_NE(get(server.port(), "/metrics").body.find("kvplan_requests_rejected_total{reason=\"queue_full\"} 1"),
            std::string::npos);
}

TEST(ServeHttp, HealthModelsSlotsAndMetrics) {
  Server server(SchedulerOptions{.kv_memory = 8 << 20}, {vatp_plan("vatp40", 40)}, {}, ChatTemplate::kLlama2, false);
  EXPECT_EQ(get(server.port(), "/health").status, 503);  // loading
  EXPECT_EQ(json::parse(get(server.port(), "/health").body)["status"], "loading");
  EXPECT_EQ(post(server.port(), "/v1/completions", R"({"prompt":"x"})").status, 503);
  server.load();
  EXPECT_EQ(get(server.port(), "/health").body, R"({"status":"ok"})");
  const json models = json::parse(get(server.port(), "/v1/models").body);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["id"], "stories260K");
  EXPECT_EQ(models["data"][0]["kvplan"]["plans"][0]["name"], "vatp40");
  EXPECT_EQ(models["data"][0]["kvplan"]["plans"][0]["kv_bytes"], vatp_plan("x", 40).budgets.kv_bytes());
  EXPECT_EQ(models["data"][0]["kvplan"]["chat_template"], "llama2");
  // /slots while a request runs: its position, budget and bytes.
  Client c(server.port());
  http::request<http::string_body> req{http::verb::post, "/v1/completions", 11};
  req.body() = R"({"prompt":"Once","max_tokens":500,"stream":true})";
  req.prepare_payload();
  http::write(c.stream(), req);
  wait_metric(server.port(), "kvplan_requests_running 1");
  json slots;
  do {
    slots = json::parse(get(server.port(), "/slots").body);
    ASSERT_EQ(slots["slots"].size(), 1u);
  } while (slots["slots"][0]["completion_tokens"] < 2);
  EXPECT_EQ(slots["slots"][0]["plan"], "vatp40");
  EXPECT_EQ(slots["slots"][0]["policy"], "vatp");
  EXPECT_EQ(slots["slots"][0]["budget_slots"], 40 * default_config().n_layers * default_config().n_kv_heads);
  EXPECT_EQ(slots["kv_bytes_allocated"], vatp_plan("x", 40).budgets.kv_bytes());
  // Positions run: the prompt's two, and each generated token but the newest.
  EXPECT_EQ(slots["slots"][0]["position"].get<int>(), 2 + slots["slots"][0]["completion_tokens"].get<int>() - 1);
  EXPECT_EQ(slots["slots"][0]["state"], "decode");
  const std::string metrics = get(server.port(), "/metrics").body;
  for (const char* name :
       {"kvplan_requests_running", "kvplan_requests_waiting", "kvplan_kv_bytes_in_use", "kvplan_kv_bytes_limit",
        "kvplan_prompt_tokens_total", "kvplan_generation_tokens_total", "kvplan_evicted_tokens_total",
        "kvplan_time_to_first_token_seconds", "kvplan_inter_token_latency_seconds", "kvplan_request_latency_seconds"}) {
    EXPECT_NE(metrics.find(fmt::format("# TYPE {} ", name)), std::string::npos) << name;
  }
  EXPECT_NE(metrics.find(fmt::format("kvplan_kv_bytes_limit {}\n", 8 << 20)), std::string::npos);
  EXPECT_NE(metrics.find("kvplan_time_to_first_token_seconds_bucket{le=\"+Inf\"} 1\n"), std::string::npos);
}

TEST(ServeHttp, ChatCompletionsRenderTheTemplate) {
  Server server(SchedulerOptions{.kv_memory = 8 << 20}, {}, {}, ChatTemplate::kLlama2);
  const std::vector<ChatMessage> messages = {{"system", "Tell a story."}, {"user", "A cat"}};
  const Reply r = post(server.port(), "/v1/chat/completions",
                       R"({"messages":[{"role":"system","content":"Tell a story."},{"role":"user","content":"A cat"}],
                           "max_tokens":30,"temperature":0})");
  ASSERT_EQ(r.status, 200) << r.body;
  const json out = json::parse(r.body);
  EXPECT_EQ(out["object"], "chat.completion");
  EXPECT_EQ(out["choices"][0]["message"]["role"], "assistant");
  Job job;
  job.prompt = std::get<std::vector<int32_t>>(render_chat(ChatTemplate::kLlama2, messages, default_model().tokenizer));
  job.max_tokens = 30;
  job.budgets = KvBudgets::uniform(default_config().n_layers, default_config().n_kv_heads, default_config().head_dim(),
                                   static_cast<int>(job.prompt.size()) + 29);
  const std::vector<int32_t> tokens = alone(job);
  EXPECT_EQ(out["choices"][0]["message"]["content"], text_of(job.prompt, tokens));
  EXPECT_EQ(out["usage"]["prompt_tokens"], job.prompt.size());
  // Streaming chat: the first delta names the role.
  const Reply s = post(server.port(), "/v1/chat/completions",
                       R"({"messages":[{"role":"user","content":"A cat"}],"max_tokens":5,"stream":true})");
  bool done = false;
  const std::vector<json> ev = events(s.body, &done);
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(ev[0]["choices"][0]["delta"]["role"], "assistant");
}

TEST(ServeHttp, ShutdownFinishesWhatIsInFlight) {
  auto server = std::make_unique<Server>(SchedulerOptions{.kv_memory = 8 << 20});
  Reply reply;
  std::thread client([&] {
    reply =
        post(server->port(), "/v1/completions", R"({"prompt":"Once","max_tokens":300,"temperature":0,"stream":true})");
  });
  wait_metric(server->port(), "kvplan_requests_running 1");
  const int port = server->port();
  server->stop();  // returns once the request is answered
  client.join();
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(streamed(reply).second, "length");
  beast::error_code ec;
  asio::io_context io;
  tcp::socket s(io);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), ec);
  EXPECT_TRUE(ec) << "the server still accepts connections after shutdown";
}

TEST(ServeHttp, ShutdownCancelsWhatOutlivesItsDeadline) {
  HttpOptions http;
  http.shutdown_timeout = std::chrono::milliseconds(0);
  auto server = std::make_unique<Server>(SchedulerOptions{.kv_memory = 8 << 20}, std::vector<ServedPlan>{}, http);
  Reply reply;
  std::thread client([&] {
    reply =
        post(server->port(), "/v1/completions", R"({"prompt":"Once","max_tokens":500,"temperature":0,"stream":true})");
  });
  wait_metric(server->port(), "kvplan_requests_running 1");
  server->stop();
  client.join();
  EXPECT_EQ(reply.status, 200);
  const auto [text, finish] = streamed(reply);  // the stream still ends properly, with [DONE]
  EXPECT_EQ(finish, "cancelled");
  EXPECT_EQ(server->scheduler().snapshot().kv_bytes_in_use, 0);
}

TEST(ServeHttp, TheBinaryDrainsOnSigtermAndExitsZero) {
  const std::string dir = test::make_temp_dir("serve-sigterm");
  const std::string port_file = dir + "/port";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string models = test::shared_model_dir();
    setenv("KVPLAN_MODEL_DIR", models.c_str(), 1);
    freopen((dir + "/stderr").c_str(), "w", stderr);
    execl(KVPLAN_BINARY, KVPLAN_BINARY, "serve", "--port", "0", "--port-file", port_file.c_str(), "--kv-memory", "8MiB",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  int port = 0;
  for (int i = 0; i < 2000 && port == 0; ++i) {
    std::ifstream in(port_file);
    if (!(in >> port)) port = 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_GT(port, 0) << test::read_bytes(dir + "/stderr");
  while (get(port, "/health").status != 200) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  Reply reply;
  std::thread client([&] {
    reply = post(port, "/v1/completions", R"({"prompt":"Once","max_tokens":400,"temperature":0,"stream":true})");
  });
  wait_metric(port, "kvplan_requests_running 1");
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  client.join();
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::read_bytes(dir + "/stderr");
  EXPECT_EQ(reply.status, 200);
  EXPECT_NE(streamed(reply).second, "cancelled");
  EXPECT_NE(test::read_bytes(dir + "/stderr").find("kvplan serve: stopped"), std::string::npos);
}

}  // namespace
}  // namespace kvp::serve
