// kvplan serve: the planned configuration live, behind an OpenAI-style HTTP API with continuous
// batching under a KV pool (executor/serve/).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/file_util.h"
#include "executor/generator.h"
#include "executor/gpu/gpu_backend.h"
#include "executor/recorder.h"
#include "executor/serve/http_server.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct ServeFlags {
  ModelFlags model;
  std::vector<std::string> plans;
  std::string kv_memory;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string port_file;
  int max_queue = 64;
  int max_running = 256;
  int prefill_chunk = 512;
  bool prefill_evict = false;
  std::string backend = "cpu";
  std::string weights_dtype = "f32";
  std::string chat_template;
  std::string keep_policy = "vatp";
  double read_timeout_s = 30;
  double shutdown_timeout_s = 10;
};

}  // namespace

// "1073741824", "64MiB", "1.5GiB", "512KiB", "2GB": bytes; errors name `flag`.
Result<int64_t> parse_byte_count(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || !(value > 0)) {
    return make_error("{}: expected a byte count like 268435456, 256MiB or 1GiB, found '{}'", flag, text);
  }
  const std::string unit(end);
  double scale = 0;
  for (const auto& [name, s] : std::initializer_list<std::pair<const char*, double>>{{"", 1},
                                                                                     {"B", 1},
                                                                                     {"KiB", 1024.0},
                                                                                     {"MiB", 1048576.0},
                                                                                     {"GiB", 1073741824.0},
                                                                                     {"KB", 1e3},
                                                                                     {"MB", 1e6},
                                                                                     {"GB", 1e9}}) {
    if (unit == name) scale = s;
  }
  if (scale == 0) return make_error("{}: unknown unit '{}' in '{}' (B, KiB, MiB, GiB, KB, MB, GB)", flag, unit, text);
  const double bytes = value * scale;
  if (bytes > 9.0e18) return make_error("{}: '{}' is too large", flag, text);
  return static_cast<int64_t>(bytes);
}

namespace {

Status serve(const ServeFlags& flags) {
  if (flags.backend != "cpu" && flags.backend != "cuda" && flags.backend != "gpu-emulated") {
    return make_error("--backend: expected cpu, cuda or gpu-emulated, found '{}'", flags.backend);
  }
  const bool device = flags.backend != "cpu";
  if (flags.max_queue < 0) return make_error("--max-queue: expected 0 or more, found {}", flags.max_queue);
  if (flags.max_running < 1) return make_error("--max-running: expected at least 1, found {}", flags.max_running);
  if (flags.prefill_chunk < 1) return make_error("--prefill-chunk: expected at least 1, found {}", flags.prefill_chunk);
  if (!(flags.read_timeout_s > 0))
    return make_error("--read-timeout: expected seconds > 0, found {}", flags.read_timeout_s);
  if (!(flags.shutdown_timeout_s >= 0)) {
    return make_error("--shutdown-timeout: expected seconds >= 0, found {}", flags.shutdown_timeout_s);
  }
  std::optional<serve::ChatTemplate> forced_template;
  if (!flags.chat_template.empty()) {
    forced_template = serve::parse_chat_template(flags.chat_template);
    if (!forced_template) {
      return make_error("--chat-template: expected llama2, llama3 or chatml, found '{}'", flags.chat_template);
    }
  }
  auto known = make_policy(flags.keep_policy, published_defaults(flags.keep_policy, 64));
  if (!known.ok()) return make_error("--keep-policy: {}", known.error().message());
  std::optional<int64_t> kv_memory;
  if (!flags.kv_memory.empty()) {
    KVP_ASSIGN_OR_RETURN(kv_memory, parse_byte_count("--kv-memory", flags.kv_memory));
  }

  // Listen first, so that /health says "loading" while the model loads.
  serve::HttpOptions http{
      .host = flags.host,
      .port = flags.port,
      .read_timeout = std::chrono::milliseconds(static_cast<int64_t>(flags.read_timeout_s * 1e3)),
      .shutdown_timeout = std::chrono::milliseconds(static_cast<int64_t>(flags.shutdown_timeout_s * 1e3))};
  KVP_ASSIGN_OR_RETURN(std::unique_ptr<serve::HttpServer> server, serve::HttpServer::bind(http));
  if (!flags.port_file.empty()) {
    KVP_RETURN_IF_ERROR(write_file_atomic(flags.port_file, fmt::format("{}\n", server->port())));
  }
  std::fprintf(stderr, "kvplan serve: listening on http://%s:%d (loading the model)\n", flags.host.c_str(),
               server->port());
  std::thread network([&] { server->run(); });
  // Until the model is served, an error return stops the network first.
  struct StopOnError {
    serve::HttpServer* server;
    std::thread* network;
    ~StopOnError() {
      if (!server) return;
      server->shutdown();
      network->join();
    }
  } stop_on_error{server.get(), &network};

  KVP_ASSIGN_OR_RETURN(LoadedModel model,
                       load_model(flags.model.model, flags.model.tokenizer, flags.model.load_options()));
  const ModelConfig& config = model.weights.config();
  std::vector<serve::ServedPlan> plans;
  if (!flags.plans.empty()) {
    KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
    for (const std::string& arg : flags.plans) {
      const size_t eq = arg.find('=');
      const std::string path = eq == std::string::npos ? arg : arg.substr(eq + 1);
      const std::string name =
          eq == std::string::npos ? std::filesystem::path(path).stem().string() : arg.substr(0, eq);
      for (const auto& p : plans) {
        if (p.name == name) return make_error("--plan: two plans are named '{}' (name them: --plan NAME=FILE)", name);
      }
      KVP_ASSIGN_OR_RETURN(Plan plan, Plan::load(path));
      KVP_RETURN_IF_ERROR(plan.check_model(plan_model(config, fingerprint), path, model.files.model_path));
      if (!device && plan.kv_dtype != KvDtype::kF32) {
        return make_error("{}: kv_dtype: the cpu backend stores f32, the plan asks for {}", path,
                          kv_dtype_name(plan.kv_dtype));
      }
      KVP_ASSIGN_OR_RETURN(auto policy, make_policy(plan.policy, plan.params));
      if (device && plan.compression.any()) {
        return make_error("{}: {}: the GPU backend's serving pool holds dense caches only (serve it with --backend cpu)",
                          path, plan.compression.think() ? "key_channels" : "sparsity");
      }
      if (device && policy->cut_period() > 0) {
        return make_error("{}: policy: {} runs on the GPU backend in run and eval, not in its serving pool (serve it "
                          "with --backend cpu)", path, plan.policy);
      }
      if (device) {
        // One policy and element type for the device's whole pool: the first plan's.
        if (const Status runs = GpuBackend::supports(*policy); !runs.ok()) {
          return make_error("{}: policy: {}", path, runs.error().message());
        }
        if (!plans.empty()) {
          const Policy& first = *plans[0].policy;
          if (first.name() != policy->name() || first.params().sinks != plan.params.sinks ||
              first.params().recent != plan.params.recent || plans[0].budgets.dtype != plan.kv_dtype) {
            return make_error(
                "{}: policy: the {} backend serves one policy and KV dtype for all requests; {} has {} "
                "(sinks {}, recent {}, {}), the first plan {} (sinks {}, recent {}, {})",
                path, flags.backend, name, plan.policy, plan.params.sinks, plan.params.recent,
                kv_dtype_name(plan.kv_dtype), first.name(), first.params().sinks, first.params().recent,
                kv_dtype_name(plans[0].budgets.dtype));
          }
        }
      }
      plans.push_back(serve::ServedPlan{.name = name,
                                        .path = path,
                                        .budgets = plan.kv_budgets(),
                                        .policy = std::shared_ptr<const Policy>(std::move(policy))});
    }
  }
  KVP_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                       make_backend(flags.backend, flags.weights_dtype, model.weights, flags.model.threads));
  Decoder decoder(*backend);
  // A device backend's pool runs the first plan's policy and KV dtype (or --keep-policy's, f32).
  std::shared_ptr<const Policy> pool_policy;
  KvDtype kv_dtype = KvDtype::kF32;
  if (device) {
    if (!plans.empty()) {
      pool_policy = plans[0].policy;
      kv_dtype = plans[0].budgets.dtype;
    } else {
      KVP_ASSIGN_OR_RETURN(auto p, make_policy(flags.keep_policy, published_defaults(flags.keep_policy, 64)));
      pool_policy = std::shared_ptr<const Policy>(std::move(p));
    }
    if (const Status runs = GpuBackend::supports(*pool_policy); !runs.ok()) {
      return make_error("--keep-policy: {}", runs.error().message());
    }
  }
  // Default pool: 16 full caches of the whole context, and one prompt's scratch.
  const KvBudgets full = full_cache_budgets(config, config.seq_len);
  const int64_t pool = kv_memory.value_or(16 * full.kv_bytes() + full.prefill_scratch(config.seq_len, 0).kv_bytes());
  serve::Scheduler scheduler(decoder, model.tokenizer,
                             serve::SchedulerOptions{.kv_memory = pool,
                                                     .max_queue = flags.max_queue,
                                                     .max_running = flags.max_running,
                                                     .prefill_chunk = flags.prefill_chunk,
                                                     .prefill_evict = flags.prefill_evict,
                                                     .kv_dtype = kv_dtype,
                                                     .pool_policy = pool_policy});
  serve::ServiceOptions options{
      .model_id = std::filesystem::path(model.files.model_path).stem().string(),
      .plans = std::move(plans),
      .keep_policy = flags.keep_policy,
      .chat_template = forced_template ? forced_template
                                       : serve::recognise_chat_template(model.tokenizer.vocabulary().chat_template),
      .context = config.seq_len,
      .n_layers = config.n_layers,
      .n_kv_heads = config.n_kv_heads,
      .head_dim = config.head_dim(),
      .pool_policy = pool_policy,
      .kv_dtype = kv_dtype};
  serve::Service service(model.tokenizer, scheduler, options);
  server->set_service(&service, &scheduler);
  std::string plan_names;
  for (const auto& p : options.plans) plan_names += (plan_names.empty() ? "" : ", ") + p.name;
  std::fprintf(stderr, "kvplan serve: ready: model %s, plans [%s]%s, KV pool %lld bytes, chat template %s\n",
               options.model_id.c_str(), plan_names.c_str(), options.plans.empty() ? " (full cache)" : "",
               static_cast<long long>(pool),
               options.chat_template ? std::string(serve::chat_template_name(*options.chat_template)).c_str() : "none");
  stop_on_error.server = nullptr;
  network.join();  // until SIGINT or SIGTERM, and the drain of what was in flight
  std::fprintf(stderr, "kvplan serve: stopped\n");
  return ok_status();
}

}  // namespace

Command add_serve_command(CLI::App& app) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* sub = app.add_subcommand(
      "serve",
      "Serve the model over an OpenAI-style HTTP API (/v1/completions, /v1/chat/completions, /v1/models, "
      "/health, /metrics, /slots), batching requests continuously under a KV pool with each request's plan");
  flags->model.add_to(sub);
  sub->add_option("--plan", flags->plans,
                  "A plan.yaml requests may name (\"kvplan\": {\"plan\": NAME}); NAME=FILE names it, else the file's "
                  "stem. Repeat for several; the first is the default (none: the full cache)");
  sub->add_option(
      "--kv-memory", flags->kv_memory,
      "The KV pool in bytes (256MiB, 1GiB, ...): a request is admitted when its cache and prompt scratch fit "
      "beside the running ones (default: 16 full caches of the model's context)");
  sub->add_option("--host", flags->host, "Address to listen on (default 127.0.0.1: this machine only)");
  sub->add_option("--port", flags->port, "Port (default 8080; 0: any free port, see --port-file)");
  sub->add_option("--port-file", flags->port_file, "Write the port listened on to this file");
  sub->add_option("--max-queue", flags->max_queue, "Requests waiting for admission before 503 (default 64)");
  sub->add_option("--max-running", flags->max_running, "Requests decoding at once at most (default 256)");
  sub->add_option(
      "--prefill-chunk", flags->prefill_chunk,
      "Prompt rows per step, all prefilling requests together, between the others' decode rows (default 512)");
  sub->add_flag("--prefill-evict", flags->prefill_evict,
                "Cut each prompt to budget after every chunk of --prefill-chunk positions (smaller prefill peak)");
  sub->add_option("--backend", flags->backend,
                  "cpu (default: each request its own policy), cuda or gpu-emulated (one KV pool reserved up front, "
                  "every request under the first plan's policy and KV dtype)");
  sub->add_option("--weights-dtype", flags->weights_dtype,
                  "Matrix weights on a GPU backend: f32 (default), f16 or q8_0");
  sub->add_option("--chat-template", flags->chat_template,
                  "llama2, llama3 or chatml for /v1/chat/completions (default: recognised from the model's template)");
  sub->add_option("--keep-policy", flags->keep_policy,
                  "Policy of requests that ask {\"keep\": r} when no plan is loaded (default vatp)");
  sub->add_option("--read-timeout", flags->read_timeout_s, "Seconds a client has to send a request (default 30)");
  sub->add_option("--shutdown-timeout", flags->shutdown_timeout_s,
                  "SIGINT/SIGTERM: seconds in-flight requests get to finish before they are cancelled (default 10)");
  return {sub, [flags] { return serve(*flags); }};
}

}  // namespace kvp::cli
