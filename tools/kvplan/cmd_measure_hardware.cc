// kvplan measure-hardware: the rates the capacity model needs for this machine's CPU backend,
// measured with kvplan's own kernels (tools/kvplan/hardware_probe.h says what each is), printed as
// the lines of a configs/hardware file.
#include <cstdio>

#include "tools/kvplan/command.h"
#include "tools/kvplan/hardware_probe.h"

namespace kvp::cli {
namespace {

struct MeasureFlags {
  int threads = 2;
  double seconds = 0.5;  // per measurement, at least
};

Status run_measure(const MeasureFlags& flags) {
  if (flags.threads < 1) return make_error("--threads: expected at least 1, found {}", flags.threads);
  ThreadPool pool(flags.threads);
  HardwareProbe probe(pool, flags.seconds, 3);
  std::fprintf(stderr, "measure-hardware: read bandwidth (1 GiB, %d threads)\n", flags.threads);
  std::printf("bandwidth_bytes_per_s: %.4g\n", probe.read_bandwidth());
  std::printf("matmul_flops:\n");
  constexpr WeightType kTypes[] = {WeightType::kF32, WeightType::kF16, WeightType::kBF16, WeightType::kQ8_0};
  for (WeightType type : kTypes) {
    std::fprintf(stderr, "measure-hardware: %s weight products (5632 x 2048, 32 rows)\n",
                 std::string(weight_type_name(type)).c_str());
    std::printf("  %s: %.4g\n", std::string(weight_type_name(type)).c_str(), probe.matmul_flops(type));
    std::fflush(stdout);
  }
  for (int rows : {1, 4, 32}) {
    std::vector<std::pair<std::string, StreamRate>> rates;
    for (WeightType type : kTypes) {
      std::fprintf(stderr,
                   "measure-hardware: %s weight products streamed from memory (256 x 2048 and 5632 x 2048, 1 GiB of "
                   "copies each, %d rows)\n",
                   std::string(weight_type_name(type)).c_str(), rows);
      rates.emplace_back(std::string(weight_type_name(type)), probe.stream_rate(type, rows));
    }
    const std::string key = rows == 4 ? "matmul_stream" : fmt::format("matmul_stream{}", rows);
    std::printf("%s_flops:\n", key.c_str());
    for (const auto& [type, r] : rates) std::printf("  %s: %.4g\n", type.c_str(), r.flops);
    std::printf("%s_call_s:\n", key.c_str());
    for (const auto& [type, r] : rates) std::printf("  %s: %.4g\n", type.c_str(), r.call_s);
    std::fflush(stdout);
  }
  std::fprintf(stderr, "measure-hardware: decode attention (4 KV heads x 4129 slots per fork/join, head_dim 64, group 8)\n");
  const HardwareProbe::Attention one = probe.attention(4);
  std::printf("attention_flops: %.4g\n", one.flops);
  std::printf("evict_slot_s: %.4g\n", one.evict_slot_s);
  std::fprintf(stderr, "measure-hardware: decode attention (128 KV heads x 4129 slots per fork/join)\n");
  std::printf("attention_batch_flops: %.4g\n", probe.attention(128).flops);
  std::printf("sync_s: %.4g\n", probe.sync_seconds());
  std::printf("delta_copy: true  # the CPU backend gathers DELTA's chosen tokens before attending them\n");
  return ok_status();
}

}  // namespace

Command add_measure_hardware_command(CLI::App& app) {
  auto flags = std::make_shared<MeasureFlags>();
  CLI::App* sub = app.add_subcommand(
      "measure-hardware",
      "Measure this machine's rates for the capacity model with kvplan's CPU kernels; prints configs/hardware lines");
  sub->add_option("--threads", flags->threads, "Threads, as kvplan run --threads (default 2)");
  sub->add_option("--seconds", flags->seconds, "Least time per measurement (default 0.5)");
  return {sub, [flags] { return run_measure(*flags); }};
}

}  // namespace kvp::cli
