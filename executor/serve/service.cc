#include "executor/serve/service.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "planner/capacity.h"

namespace kvp::serve {

using nlohmann::json;

namespace {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json usage_json(const JobResult& r) {
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", r.completion_tokens},
          {"total_tokens", r.prompt_tokens + r.completion_tokens}};
}

}  // namespace

Service::Service(const Tokenizer& tokenizer, Scheduler& scheduler, ServiceOptions options)
    : tokenizer_(tokenizer), scheduler_(scheduler), options_(std::move(options)) {}

std::variant<std::shared_ptr<Job>, ApiError> Service::prepare(const CompletionParams& p, bool chat,
                                                              uint64_t seed_if_none) const {
  if (p.model && *p.model != options_.model_id) {
    return ApiError{.status = 404,
                    .message = fmt::format("the model '{}' is not served here (this server serves '{}')", *p.model,
                                           options_.model_id),
                    .param = "model",
                    .code = "model_not_found"};
  }
  auto job = std::make_shared<Job>();
  if (chat) {
    if (!options_.chat_template) {
      return ApiError{.status = 400,
                      .message =
                          "this model has no chat template kvplan knows (llama2, llama3, chatml); start the "
                          "server with --chat-template, or use /v1/completions",
                      .param = "messages"};
    }
    auto rendered = render_chat(*options_.chat_template, p.messages, tokenizer_);
    if (auto* e = std::get_if<ApiError>(&rendered)) return *e;
    job->prompt = std::get<std::vector<int32_t>>(std::move(rendered));
  } else if (p.prompt_tokens) {
    for (int32_t t : *p.prompt_tokens) {
      if (t >= tokenizer_.vocab_size()) {
        return ApiError{
            .status = 400,
            .message = fmt::format("'prompt': token id {} is outside the vocabulary of {}", t, tokenizer_.vocab_size()),
            .param = "prompt"};
      }
    }
    job->prompt = *p.prompt_tokens;
  } else {
    job->prompt = tokenizer_.encode(*p.prompt_text);  // as kvplan run encodes --prompt
  }
  if (job->prompt.empty()) return ApiError{.status = 400, .message = "'prompt' is empty", .param = "prompt"};
  const int prompt_len = static_cast<int>(job->prompt.size());
  // Positions run: the prompt's, then every generated token but the last.
  const int64_t positions = int64_t{prompt_len} + p.max_tokens - 1;
  if (positions > options_.context) {
    return ApiError{.status = 400,
                    .message = fmt::format("the prompt ({} tokens) and max_tokens ({}) need {} positions; the model's "
                                           "context is {}",
                                           prompt_len, p.max_tokens, positions, options_.context),
                    .param = p.prompt_tokens || p.prompt_text ? "prompt" : "messages",
                    .code = "context_length_exceeded"};
  }
  job->max_tokens = p.max_tokens;
  job->sampler = SamplerOptions{.temperature = p.temperature, .top_p = p.top_p, .seed = p.seed.value_or(seed_if_none)};
  job->stop = p.stop;
  job->ignore_eos = p.ignore_eos;

  const ServedPlan* plan = options_.plans.empty() ? nullptr : &options_.plans[0];
  if (p.plan) {
    plan = nullptr;
    std::string names;
    for (const ServedPlan& s : options_.plans) {
      if (s.name == *p.plan) plan = &s;
      names += (names.empty() ? "" : ", ") + s.name;
    }
    // "full" names the full cache unless a loaded plan has that name.
    if (!plan && *p.plan != "full") {
      return ApiError{.status = 400,
                      .message = fmt::format("kvplan.plan: no plan '{}' is loaded (loaded: {}; or \"full\")", *p.plan,
                                             names.empty() ? "none" : names),
                      .param = "kvplan.plan"};
    }
  }
  if (p.keep) {
    // A uniform budget of this share of the request's own positions (at most the context, checked
    // above), under the default plan's policy (or --keep-policy): the plan `kvplan run --policy P
    // --budget B` builds, rounded as kvplan capacity --keep rounds.
    const int budget = keep_ratio_budget(static_cast<int>(positions), *p.keep);
    const std::string name = options_.pool_policy ? std::string(options_.pool_policy->name())
                             : plan               ? std::string(plan->policy->name())
                                                  : options_.keep_policy;
    PolicyParams params = options_.pool_policy ? options_.pool_policy->params() : published_defaults(name, budget);
    if (plan && !options_.pool_policy) params.vatp_base = plan->policy->params().vatp_base;
    auto policy = make_policy(name, params);
    if (!policy.ok()) return ApiError{.status = 500, .message = policy.error().message(), .type = "server_error"};
    if ((*policy)->evicts() && budget < params.sinks + params.recent) {
      return ApiError{.status = 400,
                      .message = fmt::format("kvplan.keep: {} of {} positions is {} slots, below the {} sinks + {} "
                                             "recent tokens {} protects",
                                             *p.keep, positions, budget, params.sinks, params.recent, name),
                      .param = "kvplan.keep"};
    }
    job->budgets =
        KvBudgets::uniform(options_.n_layers, options_.n_kv_heads, options_.head_dim, budget, options_.kv_dtype);
    job->budgets.aux_floats_per_slot = (*policy)->aux_floats_per_slot();
    job->policy = std::shared_ptr<const Policy>(std::move(policy).value());
    job->plan_name = fmt::format("keep {}", *p.keep);
  } else if (plan) {
    if (!plan->policy->evicts()) {
      int32_t smallest = INT32_MAX;
      for (int32_t b : plan->budgets.budget_tokens) smallest = std::min(smallest, b);
      if (smallest < positions) {
        return ApiError{.status = 400,
                        .message = fmt::format("plan {} keeps every token in {} slots; the request needs {} positions",
                                               plan->name, smallest, positions),
                        .param = "max_tokens"};
      }
    }
    job->budgets = plan->budgets;
    job->policy = plan->policy;
    job->plan_name = plan->name;
  } else {
    job->budgets = KvBudgets::uniform(options_.n_layers, options_.n_kv_heads, options_.head_dim,
                                      static_cast<int32_t>(positions), options_.kv_dtype);  // as kvplan run --steps
    if (options_.pool_policy) {
      // Every position kept under the pool's policy: the full cache's tokens, the policy's bytes.
      job->policy = options_.pool_policy;
      job->budgets.aux_floats_per_slot = job->policy->aux_floats_per_slot();
      if (job->policy->evicts() && positions < job->policy->params().sinks + job->policy->params().recent) {
        job->budgets.budget_tokens.assign(job->budgets.budget_tokens.size(),
                                          job->policy->params().sinks + job->policy->params().recent);
      }
    }
    job->plan_name = "full";
  }
  return job;
}

std::string Service::completion_body(const std::string& id, int64_t created, bool chat, const Job& job,
                                     const JobResult& r) const {
  json choice = {{"index", 0}, {"finish_reason", r.finish_reason}};
  if (chat) {
    choice["message"] = {{"role", "assistant"}, {"content", r.text}};
  } else {
    choice["text"] = r.text;
    choice["logprobs"] = nullptr;
  }
  json out = {{"id", id},
              {"object", chat ? "chat.completion" : "text_completion"},
              {"created", created},
              {"model", options_.model_id},
              {"choices", json::array({choice})},
              {"usage", usage_json(r)}};
  out["kvplan"] = {{"plan", job.plan_name},        {"policy", job.policy ? std::string(job.policy->name()) : "full"},
                   {"kv_bytes", job.steady_bytes}, {"peak_kv_bytes", job.steady_bytes + job.scratch_bytes},
                   {"seed", job.sampler.seed},     {"tokens", r.tokens}};
  return dump(out);
}

std::string Service::chunk_event(const std::string& id, int64_t created, bool chat, std::string_view text,
                                 const std::string* finish_reason, bool first) const {
  json choice = {{"index", 0}};
  choice["finish_reason"] = finish_reason ? json(*finish_reason) : json(nullptr);
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || !finish_reason) delta["content"] = std::string(text);
    choice["delta"] = delta;
  } else {
    choice["text"] = std::string(text);
    choice["logprobs"] = nullptr;
  }
  const json out = {{"id", id},
                    {"object", chat ? "chat.completion.chunk" : "text_completion"},
                    {"created", created},
                    {"model", options_.model_id},
                    {"choices", json::array({choice})}};
  return "data: " + dump(out) + "\n\n";
}

std::string Service::usage_event(const std::string& id, int64_t created, bool chat, const JobResult& r) const {
  const json out = {{"id", id},
                    {"object", chat ? "chat.completion.chunk" : "text_completion"},
                    {"created", created},
                    {"model", options_.model_id},
                    {"choices", json::array()},
                    {"usage", usage_json(r)}};
  return "data: " + dump(out) + "\n\n";
}

std::string Service::models_body() const {
  json plans = json::array();
  for (const ServedPlan& p : options_.plans) {
    plans.push_back({{"name", p.name},
                     {"path", p.path},
                     {"policy", std::string(p.policy->name())},
                     {"kv_bytes", p.budgets.kv_bytes()}});
  }
  json model = {{"id", options_.model_id}, {"object", "model"}, {"created", 0}, {"owned_by", "kvplan"}};
  model["kvplan"] = {
      {"context", options_.context},
      {"plans", plans},
      {"kv_memory", scheduler_.options().kv_memory},
      {"chat_template",
       options_.chat_template ? json(std::string(chat_template_name(*options_.chat_template))) : json(nullptr)}};
  return dump(json{{"object", "list"}, {"data", json::array({model})}});
}

std::string Service::slots_body() const {
  const Scheduler::Snapshot s = scheduler_.snapshot();
  json slots = json::array();
  for (const SlotInfo& i : s.slots) {
    slots.push_back({{"id", fmt::format("req-{}", i.id)},
                     {"sequence", i.seq},
                     {"position", i.position},
                     {"prompt_tokens", i.prompt_tokens},
                     {"completion_tokens", i.completion_tokens},
                     {"state", i.prefilling ? "prefill" : "decode"},
                     {"kv_bytes", i.kv_bytes},
                     {"budget_slots", i.budget_slots},
                     {"policy", i.policy},
                     {"plan", i.plan}});
  }
  return dump(json{{"slots", slots},
                   {"running", s.running},
                   {"waiting", s.waiting},
                   {"kv_bytes_in_use", s.kv_bytes_in_use},
                   {"kv_bytes_limit", s.kv_memory},
                   {"kv_bytes_allocated", s.backend_kv_bytes}});
}

std::string Service::metrics_text() const {
  const Scheduler::Snapshot s = scheduler_.snapshot();
  return scheduler_.metrics().render(Gauges{.running = s.running,
                                            .waiting = s.waiting,
                                            .kv_bytes_in_use = s.kv_bytes_in_use,
                                            .kv_memory = s.kv_memory,
                                            .peak_kv_bytes_in_use = s.peak_kv_bytes_in_use,
                                            .peak_running = s.peak_running});
}

}  // namespace kvp::serve
