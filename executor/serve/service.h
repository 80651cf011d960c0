// What kvplan serve answers, apart from the network: requests turned into scheduler jobs (prompt,
// budgets, sampling), and the JSON and text of every endpoint. The HTTP layer (http_server.h)
// only moves bytes.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "executor/model/tokenizer.h"
#include "executor/serve/chat_template.h"
#include "executor/serve/openai.h"
#include "executor/serve/scheduler.h"
#include "planner/plan/kv_budgets.h"
#include "planner/policy/policy.h"

namespace kvp::serve {

// A loaded plan a request may name.
struct ServedPlan {
  std::string name;  // the file's stem, or NAME of --plan NAME=FILE
  std::string path;
  KvBudgets budgets;
  std::shared_ptr<const Policy> policy;
};

struct ServiceOptions {
  std::string model_id;                            // what /v1/models lists and requests may name
  std::vector<ServedPlan> plans;                   // the first is the default; none: the full cache
  std::string keep_policy = "vatp";                // the policy of {"kvplan": {"keep": r}} when no plan is loaded
  std::optional<ChatTemplate> chat_template;       // none: /v1/chat/completions answers 400
  int context = 0;                                 // the model's seq_len: prompt + max_tokens - 1 positions at most
  int n_layers = 0, n_kv_heads = 0, head_dim = 0;  // the cache's shape
  // A device backend's pool runs one policy (with its parameters) and one element type for every
  // request: full-cache and keep-ratio requests then get that policy (a budget of every position
  // never evicts). Null: the CPU backend, each request its own policy.
  std::shared_ptr<const Policy> pool_policy;
  KvDtype kv_dtype = KvDtype::kF32;
};

class Service {
 public:
  Service(const Tokenizer& tokenizer, Scheduler& scheduler, ServiceOptions options);

  // The job for a parsed request (budgets, prompt tokens, sampler), or the error to answer.
  // `seed_if_none`: the seed of a request that gives none (reported in the response).
  std::variant<std::shared_ptr<Job>, ApiError> prepare(const CompletionParams& params, bool chat,
                                                       uint64_t seed_if_none) const;

  // Response bodies. `id` and `created` identify the completion; `chat` picks the object names.
  std::string completion_body(const std::string& id, int64_t created, bool chat, const Job& job,
                              const JobResult& result) const;
  // One Server-Sent Event ("data: {...}\n\n") with a piece of text, or the closing one with the
  // finish reason; the usage event (choices empty) when the request asked for it.
  std::string chunk_event(const std::string& id, int64_t created, bool chat, std::string_view text,
                          const std::string* finish_reason, bool first) const;
  std::string usage_event(const std::string& id, int64_t created, bool chat, const JobResult& result) const;

  std::string models_body() const;
  std::string slots_body() const;
  std::string metrics_text() const;
  const ServiceOptions& options() const { return options_; }

 private:
  const Tokenizer& tokenizer_;
  Scheduler& scheduler_;
  ServiceOptions options_;
};

}  // namespace kvp::serve
