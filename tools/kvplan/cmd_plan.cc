// kvplan plan: write a plan.yaml. For now a uniform plan from flags; trace-driven allocation comes
// with the planner.
#include <cstdio>

#include "executor/recorder.h"
#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

namespace kvp::cli {
namespace {

struct PlanCommandFlags {
  ModelFlags model;
  PlanFlags plan;
  std::string out;
};

Status plan(const PlanCommandFlags& flags) {
  if (flags.plan.policy.empty()) return make_error("--policy: needed (full, window, h2o, vatp, tova, snapkv, knorm, random)");
  if (flags.plan.budget <= 0) return make_error("--budget: expected the slots per layer and KV head, found {}", flags.plan.budget);
  KVP_ASSIGN_OR_RETURN(LoadedModel model, load_model(flags.model.model, flags.model.tokenizer));
  KVP_ASSIGN_OR_RETURN(std::string fingerprint, model_fingerprint(model));
  KVP_ASSIGN_OR_RETURN(Plan p, flags.plan.uniform(plan_model(model.weights.config(), fingerprint), flags.plan.policy,
                                                  flags.plan.budget));
  p.provenance["tool"] = std::string("kvplan ") + KVP_VERSION;
  KVP_RETURN_IF_ERROR(p.save(flags.out));
  std::printf("wrote %s: policy %s (sinks %d, recent %d), %d slots per layer and KV head, %lld KV bytes per sequence\n",
              flags.out.c_str(), p.policy.c_str(), p.params.sinks, p.params.recent, flags.plan.budget,
              static_cast<long long>(p.kv_bytes_per_sequence));
  return ok_status();
}

}  // namespace

Command add_plan_command(CLI::App& app) {
  auto flags = std::make_shared<PlanCommandFlags>();
  CLI::App* sub = app.add_subcommand("plan", "Write a plan.yaml: a uniform plan from --policy and --budget");
  flags->model.add_to(sub);
  flags->plan.add_to(sub);
  sub->add_option("--out", flags->out, "plan.yaml to write")->required();
  return {sub, [flags] { return plan(*flags); }};
}

}  // namespace kvp::cli
