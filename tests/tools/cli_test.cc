// The kvplan binary end to end: the story of the main job, machine-readable output, and bad
// input — malformed models and tokenizers, nonsense flags — each answered with one line on
// stderr naming the file or flag, and a non-zero exit, never a crash.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>

#include "common/file_util.h"
#include "executor/model/gguf_format.h"
#include "planner/plan/plan.h"
#include "tests/support/test_support.h"

namespace kvp {
namespace {

using test::run_kvplan;
using test::shell_quote;

TEST(Cli, RunTellsTheOracleStoryWithoutFlags) {
  const test::CliResult r = run_kvplan("run");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, test::default_model_oracle().text + "\n");
  EXPECT_NE(r.err.find("tokens/s"), std::string::npos);
}

// The GPU backend's kernels under the CPU emulation tell the same story; a GPU backend that cannot
// start says why.
TEST(Cli, RunOnTheEmulatedGpuBackendTellsTheOracleStory) {
  const test::CliResult r = run_kvplan("run --backend gpu-emulated");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, test::default_model_oracle().text + "\n");
  const test::CliResult bad = run_kvplan("run --backend gpu-emulated --weights-dtype f8");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("f8"), std::string::npos) << bad.err;
}

TEST(Cli, RunJsonHasTokensTextAndKvBytes) {
  const test::CliResult r =
      run_kvplan("run --prompt 'Once upon a time' --prompt 'The dog' --steps 40 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["sequences"].size(), 2u);
  EXPECT_EQ(j["sequences"][0]["tokens"].size(), 41u);
  EXPECT_EQ(j["sequences"][0]["text"].get<std::string>().rfind("Once upon a time", 0), 0u);
  // Two sequences of 40 positions: 2 x 5 layers x 4 heads x 40 slots x 72 bytes.
  EXPECT_EQ(j["kv_bytes"].get<int64_t>(), 2 * 5 * 4 * 40 * 72);
}

// A 300-token prompt file in chunks of 64, evicting to a VATP budget of 64 as it goes: the
// prefill's peak KV is the caches plus budget + chunk slots per head, as predicted.
// A prompt of at least 300 stories260K tokens into `path`; its token count.
int write_long_prompt(const std::string& path) {
  std::string text;
  while (test::default_model().tokenizer.encode(text).size() < 300) text += "Lily saw a big red ball in the park. ";
  test::write_bytes(path, text);
  return static_cast<int>(test::default_model().tokenizer.encode(text).size());
}

TEST(Cli, RunPrefillsAPromptFileInChunksAndReportsItsPeak) {
  const std::string dir = test::make_temp_dir("prefill");
  const int P = write_long_prompt(dir + "/p.txt");
  const test::CliResult r = run_kvplan("run --prompt-file " + dir + "/p.txt --steps 400 --policy vatp --budget 64 "
                                       "--prefill-chunk 64 --prefill-evict --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_tokens"].get<int>(), P);
  // stories260K: 5 layers x 4 KV heads; a VATP slot is 2 x 8 x 4 + 8 + 4 = 76 bytes.
  EXPECT_EQ(j["kv_bytes"].get<int64_t>(), 5 * 4 * 64 * 76);
  EXPECT_EQ(j["peak_kv_bytes"].get<int64_t>(), 5 * 4 * (64 + 64 + 64) * 76);
  EXPECT_EQ(j["predicted_peak_kv_bytes"], j["peak_kv_bytes"]);
  EXPECT_GT(j["prefill_tokens_per_s"].get<double>(), 0.0);
  const test::CliResult whole = run_kvplan("run --prompt-file " + dir + "/p.txt --steps 400 --policy vatp --budget 64 --json");
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  EXPECT_EQ(nlohmann::json::parse(whole.out)["peak_kv_bytes"].get<int64_t>(), 5 * 4 * (64 + P) * 76);
}

// The emulated GPU backend takes a 300-token prompt in chunks of 128 (held whole until the last):
// the CPU's tokens and the same peak, predicted; and under --prefill-evict (cut to budget after
// each chunk) the CPU's --prefill-evict tokens and its smaller peak, predicted.
TEST(Cli, RunOnTheEmulatedGpuBackendInChunksMatchesTheCpu) {
  const std::string dir = test::make_temp_dir("gpuchunks");
  const int P = write_long_prompt(dir + "/p.txt");
  const std::string chunked = "run --prompt-file " + dir + "/p.txt --steps 400 --policy vatp --budget 64 --prefill-chunk 128 --json";
  const test::CliResult cpu = run_kvplan(chunked), gpu = run_kvplan(chunked + " --backend gpu-emulated");
  ASSERT_EQ(gpu.exit_code, 0) << gpu.err;
  const auto c = nlohmann::json::parse(cpu.out), g = nlohmann::json::parse(gpu.out);
  EXPECT_EQ(g["sequences"][0]["tokens"], c["sequences"][0]["tokens"]);
  EXPECT_EQ(g["peak_kv_bytes"].get<int64_t>(), 5 * 4 * (64 + P) * 76);
  EXPECT_EQ(g["predicted_peak_kv_bytes"], g["peak_kv_bytes"]);
  const test::CliResult cpu_evict = run_kvplan(chunked + " --prefill-evict"),
                        gpu_evict = run_kvplan(chunked + " --backend gpu-emulated --prefill-evict");
  ASSERT_EQ(gpu_evict.exit_code, 0) << gpu_evict.err;
  const auto ce = nlohmann::json::parse(cpu_evict.out), ge = nlohmann::json::parse(gpu_evict.out);
  EXPECT_EQ(ge["sequences"][0]["tokens"], ce["sequences"][0]["tokens"]);
  // Budget 64 + a chunk of 128 per head while prefilling.
  EXPECT_EQ(ge["peak_kv_bytes"].get<int64_t>(), 5 * 4 * (64 + 64 + 128) * 76);
  EXPECT_EQ(ge["predicted_peak_kv_bytes"], ge["peak_kv_bytes"]);
}

// plan prints the prefill's peak next to the steady-state bytes, as run measures them.
TEST(Cli, PlanReportsThePrefillPeakBesideTheSteadyBytes) {
  const std::string dir = test::make_temp_dir("planpeak");
  const test::CliResult r = run_kvplan("plan --policy vatp --budget 64 --prompt-len 300 --prefill-chunk 64 --out " + dir +
                                       "/p.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // 5 layers x 4 KV heads of 76-byte VATP slots: 64 kept; + 300 held whole, or + min(300, 64 + 64).
  EXPECT_NE(r.out.find("a 300-token prompt: " + std::to_string(20 * (64 + 300) * 76) + " bytes (held whole), " +
                       std::to_string(20 * (64 + 128) * 76) + " with --prefill-evict --prefill-chunk 64; " +
                       std::to_string(20 * 64 * 76) + " steady"),
            std::string::npos)
      << r.out;
}

// plan --memory takes the policy's default sinks and recent at the budget the memory buys: 60,800
// bytes over 5 layers × 4 KV heads of 76-byte VATP slots is 40 slots, so VATP's recent is 20.
TEST(Cli, PlanMemoryTakesThePolicysDefaultsAtTheBudgetItBuys) {
  const std::string dir = test::make_temp_dir("planmemory");
  ASSERT_EQ(run_kvplan("corpus --sample 2 --length 96 --out " + dir + "/c.jsonl").exit_code, 0);
  ASSERT_EQ(run_kvplan("record --corpus " + dir + "/c.jsonl --prompt-len 16 --out " + dir + "/t").exit_code, 0);
  const test::CliResult r = run_kvplan("plan --trace " + dir + "/t --policy vatp --memory 60800 --allocation uniform "
                                       "--out " + dir + "/p.yaml");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto plan = Plan::load(dir + "/p.yaml");
  ASSERT_TRUE(plan.ok()) << plan.error().message();
  EXPECT_EQ(plan->budgets[0][0], 40);
  EXPECT_EQ(plan->params.sinks, 4);
  EXPECT_EQ(plan->params.recent, 20);
}

// The libraries the dynamic loader maps for `args`, from glibc's LD_DEBUG=libs trace.
std::string loaded_libraries(const std::string& env, const std::string& args) {
  const std::string dir = test::make_temp_dir("ldd");
  const std::string trace = dir + "/trace";
  const std::string command = env + " LD_DEBUG=libs LD_DEBUG_OUTPUT=" + shell_quote(trace) + " " +
                              shell_quote(KVPLAN_BINARY) + " " + args + " >/dev/null 2>&1";
  EXPECT_EQ(std::system(command.c_str()), 0) << command;
  std::string all;
  for (const auto& e : std::filesystem::directory_iterator(dir)) all += test::read_bytes(e.path().string());
  return all;
}

// The CPU path never maps cudart or cuBLAS: they come with the CUDA plugin, loaded only when a GPU
// is asked for (and a plugin that cannot be loaded is reported, not fatal).
TEST(Cli, TheCpuPathStartsWithoutTheCudaLibraries) {
  const std::string run = loaded_libraries("", "run --steps 16");
  ASSERT_NE(run.find("libstdc++"), std::string::npos) << "LD_DEBUG traced nothing";
  EXPECT_EQ(run.find("libcudart"), std::string::npos);
  EXPECT_EQ(run.find("libcublas"), std::string::npos);
  EXPECT_EQ(loaded_libraries("", "--help").find("libcudart"), std::string::npos);
#if KVP_HAVE_CUDA
  const std::string devices = loaded_libraries("", "inspect --devices");
  EXPECT_NE(devices.find("libkvplan_cuda.so"), std::string::npos);
  EXPECT_NE(devices.find("libcudart"), std::string::npos);
  const std::string dir = test::make_temp_dir("noplugin");
  const std::string command = "KVPLAN_CUDA_PLUGIN=" + dir + "/none.so " + shell_quote(KVPLAN_BINARY) +
                              " inspect --devices --json > " + dir + "/out";
  ASSERT_EQ(std::system(command.c_str()), 0);
  const auto j = nlohmann::json::parse(test::read_bytes(dir + "/out"));
  EXPECT_NE(j.dump().find(dir + "/none.so"), std::string::npos) << j.dump();
#endif
}

TEST(Cli, InspectDescribesTheDefaultModel) {
  const test::CliResult r = run_kvplan("inspect --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["parameters"].get<int64_t>(), 260032);
  EXPECT_EQ(j["n_kv_heads"].get<int>(), 4);
  EXPECT_EQ(j["sha256"], "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696");
}

std::string shared_model(const std::string& relative) {
  return shell_quote(test::shared_model_dir() + "/" + relative);
}

TEST(Cli, RunsAndInspectsTheGgufByName) {
  KVP_REQUIRE_FIXTURE("stories260K/stories260K.gguf");
  const test::CliResult r = run_kvplan("run --model stories260K.gguf --prompt 'Once upon a time' --steps 256");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, test::default_model_oracle().text + "\n");
  const test::CliResult i = run_kvplan("inspect stories260K.gguf --json");
  ASSERT_EQ(i.exit_code, 0) << i.err;
  const auto j = nlohmann::json::parse(i.out);
  EXPECT_EQ(j["format"], "gguf");
  EXPECT_EQ(j["architecture"], "llama");
  EXPECT_EQ(j["tokenizer_kind"], "sentencepiece");
  EXPECT_EQ(j["vocab_size"].get<int>(), 512);
  EXPECT_EQ(j["rope"]["style"], "interleaved");
  EXPECT_EQ(j["tensor_types"]["f32"]["tensors"].get<int>(), 48);
  EXPECT_EQ(j["sha256"], "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d");
}

TEST(Cli, TokenizePrintsIdsAndPieces) {
  KVP_REQUIRE_FIXTURE("vocab/ggml-vocab-gpt-2.gguf");
  KVP_REQUIRE_FIXTURE("llama-2-tiny-random/llama-2-tiny-random.gguf");
  const test::CliResult r = run_kvplan("tokenize --model " + shared_model("llama-2-tiny-random/llama-2-tiny-random.gguf") +
                                       " --text 'Once upon a time' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["ids"], nlohmann::json::parse("[1, 9038, 2501, 263, 931]"));
  EXPECT_EQ(j["pieces"][1], "\xE2\x96\x81Once");
  EXPECT_EQ(j["text"], "Once upon a time");
  const test::CliResult no_bos = run_kvplan("tokenize --text 'Once upon a time' --no-bos --ids");
  ASSERT_EQ(no_bos.exit_code, 0) << no_bos.err;
  EXPECT_EQ(no_bos.out, "403 407 261 378\n");
  const std::string dir = test::make_temp_dir("tok");
  test::write_bytes(dir + "/t.txt", "Hello world");
  const test::CliResult file = run_kvplan("tokenize --model " + shared_model("vocab/ggml-vocab-gpt-2.gguf") + " --file " +
                                          dir + "/t.txt --ids");
  ASSERT_EQ(file.exit_code, 0) << file.err;
  EXPECT_EQ(file.out, "15496 995\n");  // llama.cpp's ids for "Hello world" (ggml-vocab-gpt-2.gguf.out)
}

TEST(Cli, ConvertToAShardedHfFolderThenRunItAndSizeIt) {
  const std::string dir = test::make_temp_dir("convert");
  const test::CliResult c = run_kvplan("convert --to hf --shards 2 --out " + dir + "/hf");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_TRUE(std::filesystem::exists(dir + "/hf/model.safetensors.index.json"));
  const test::CliResult r = run_kvplan("run --model " + dir + "/hf --prompt 'Once upon a time' --steps 256");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, test::default_model_oracle().text + "\n");
  const test::CliResult q = run_kvplan("convert --dtype q8_0 --out " + dir + "/q8.gguf");
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const test::CliResult cap = run_kvplan("capacity --model " + dir + "/q8.gguf --hardware cpu-2core --keep 0.5 --json");
  ASSERT_EQ(cap.exit_code, 0) << cap.err;
  const auto j = nlohmann::json::parse(cap.out);
  // The file's own tensor bytes: q8_0 matrices, f16 for the 172-wide ffn_down, f32 norms.
  auto m = load_model(dir + "/q8.gguf", "");
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_EQ(j["weight_bytes"].get<int64_t>(), m->weights.weight_bytes());
}

TEST(Cli, InspectDevicesSaysPlainlyWhetherThereIsAGpu) {
  const test::CliResult r = run_kvplan("inspect --devices");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("CUDA device"), std::string::npos) << r.out;
}

TEST(Cli, HelpExplainsEverySubcommand) {
  const test::CliResult r = run_kvplan("--help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("run"), std::string::npos);
  EXPECT_NE(r.out.find("inspect"), std::string::npos);
  const test::CliResult run_help = run_kvplan("run --help");
  EXPECT_NE(run_help.out.find("--temperature"), std::string::npos);
}

TEST(Cli, ServeRefusesAPlanForAnotherModelAndCapacitySizesItsPool) {
  KVP_REQUIRE_FIXTURE("llama-2-tiny-random/llama-2-tiny-random.gguf");
  const std::string dir = test::make_temp_dir("serve-cli");
  ASSERT_EQ(run_kvplan("plan --policy vatp --budget 32 --model llama-2-tiny-random --out " + dir + "/other.yaml").exit_code,
            0);
  const test::CliResult r = run_kvplan("serve --port 0 --plan " + dir + "/other.yaml");
  EXPECT_EQ(r.exit_code, 1);
  // The progress line (it listens while the model loads), then the error naming the plan's field.
  const std::string last = r.err.substr(r.err.rfind('\n', r.err.size() - 2) + 1);
  EXPECT_NE(last.find("other.yaml: model"), std::string::npos) << r.err;
  EXPECT_EQ(test::line_count(r.err), 2) << r.err;
  // A GPU backend's pool runs one policy: a second plan with another is refused by name.
  ASSERT_EQ(run_kvplan("plan --policy vatp --budget 32 --out " + dir + "/vatp.yaml").exit_code, 0);
  ASSERT_EQ(run_kvplan("plan --policy h2o --budget 32 --out " + dir + "/h2o.yaml").exit_code, 0);
  const test::CliResult g =
      run_kvplan("serve --port 0 --backend gpu-emulated --plan " + dir + "/vatp.yaml --plan " + dir + "/h2o.yaml");
  EXPECT_EQ(g.exit_code, 1);
  EXPECT_NE(g.err.find("h2o.yaml: policy: the gpu-emulated backend serves one policy"), std::string::npos) << g.err;
  // capacity --kv-memory: (pool - scratch) / steady requests at once. stories260K at 100 positions,
  // full f32 cache: 20 heads x 100 slots x 72 bytes = 144000 per sequence; a 10-token prompt's
  // scratch 20 x 10 x 72 = 14400; a 1 MiB pool holds (1048576 - 14400) / 144000 = 7. At keep 0.5
  // under vatp (one value norm per slot more): 20 x 50 x 76 = 76000, and (1048576 - 14400) / 76000 = 13.
  const test::CliResult c = run_kvplan(
      "capacity --model stories260K --hardware cpu-2core --kv-dtype f32 --context 100 --prompt-len 10 --keep 0.5 "
      "--policy vatp --kv-memory 1MiB --json");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const nlohmann::json j = nlohmann::json::parse(c.out);
  EXPECT_EQ(j["kv_memory"], 1048576);
  EXPECT_EQ(j["full"]["kv_bytes_per_sequence"], 144000);
  EXPECT_EQ(j["full"]["pool_sequences"], 7);
  EXPECT_EQ(j["full"]["pool_sequences_at_peak"], 1048576 / (144000 + 14400));
  EXPECT_EQ(j["plan"]["kv_bytes_per_sequence"], 76000);
  EXPECT_EQ(j["plan"]["pool_sequences"], 13);
}

TEST(Cli, CorpusRecordInspectMakeAndDescribeATrace) {
  const std::string dir = test::make_temp_dir("clitrace");
  const test::CliResult corpus =
      run_kvplan("corpus --sample 3 --length 48 --seed 5 --out " + dir + "/c.jsonl");
  ASSERT_EQ(corpus.exit_code, 0) << corpus.err;
  EXPECT_NE(corpus.out.find("wrote 3 sequences of 48 tokens"), std::string::npos);
  const test::CliResult record =
      run_kvplan("record --corpus " + dir + "/c.jsonl --prompt-len 16 --dtype f16 --out " + dir + "/t --json");
  ASSERT_EQ(record.exit_code, 0) << record.err;
  EXPECT_EQ(nlohmann::json::parse(record.out)["n_tokens"], 3 * 48);
  const test::CliResult inspect = run_kvplan("inspect " + dir + "/t --json");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  const auto j = nlohmann::json::parse(inspect.out);
  EXPECT_EQ(j["n_sequences"], 3);
  EXPECT_EQ(j["qkv_dtype"], "F16");
  ASSERT_EQ(j["layers"].size(), 5u);
  ASSERT_EQ(j["layers"][0]["heads"].size(), 4u);
  const auto& head = j["layers"][0]["heads"][0];
  EXPECT_GT(head["vnorm_l1"]["mean"].get<double>(), 0);
  EXPECT_GE(head["first_token_attention"].get<double>(), 0);
  EXPECT_LE(head["first_token_attention"].get<double>(), 1);
  EXPECT_LE(head["entropy_normalised"].get<double>(), 1.0 + 1e-9);
  // The text form names its columns.
  const test::CliResult text = run_kvplan("inspect " + dir + "/t");
  ASSERT_EQ(text.exit_code, 0);
  EXPECT_NE(text.out.find("attn on pos 0"), std::string::npos);
}

TEST(Cli, RecordBoundsATraceAndRefusesNonsenseBounds) {
  const std::string dir = test::make_temp_dir("clibounded");
  ASSERT_EQ(run_kvplan("corpus --sample 2 --length 48 --seed 5 --out " + dir + "/c.jsonl").exit_code, 0);
  const test::CliResult record = run_kvplan("record --corpus " + dir + "/c.jsonl --prompt-len 16 --dtype bf16 --layers 0,2-3 "
                                            "--query-stride 4 --chunk 10 --out " + dir + "/t --json");
  ASSERT_EQ(record.exit_code, 0) << record.err;
  // Per sequence: tokens and ref_logprob 4 * 48 + 4 * 47; per layer resid_norm 4 * 48, k and v
  // 2 * 48 * 32 * 2, and the 12 queries at 3, 7, ..., 47 (2 * 12 * 64).
  EXPECT_EQ(nlohmann::json::parse(record.out)["tensor_bytes"], 2 * (4 * 48 + 4 * 47 + 3 * (4 * 48 + 2 * 2 * 48 * 32 + 2 * 12 * 64)));
  const test::CliResult inspect = run_kvplan("inspect " + dir + "/t --json");
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  const auto j = nlohmann::json::parse(inspect.out);
  EXPECT_EQ(j["recorded_layers"], nlohmann::json({0, 2, 3}));
  EXPECT_EQ(j["query_stride"], 4);
  EXPECT_EQ(j["qkv_dtype"], "BF16");
  EXPECT_EQ(j["layers"].size(), 3u);
  const test::CliResult sweep = run_kvplan("sweep --trace " + dir + "/t --policies vatp --budgets 16 --no-greedy --no-plots --out " + dir + "/s");
  EXPECT_EQ(sweep.exit_code, 0) << sweep.err;
  EXPECT_NE(sweep.err.find("records layers 0,2,3 of 5 (the others' errors are interpolated) and keeps every 4th query"),
            std::string::npos)
      << sweep.err;

  for (const auto& [flags, message] : {std::pair{"--layers 2,1", "--layers: expected increasing layer indices, found 1 after 2"},
                                       {"--layers 0-9", "--layers: expected increasing layer indices in 0..4, found 5"},
                                       {"--layers x", "--layers: expected layer indices and ranges such as 0,4,8 or 0-3, found 'x'"},
                                       {"--layers 0-2000000000",  // refused as written, not after listing 2e9 layers
                                        "--layers: expected layer indices and ranges such as 0,4,8 or 0-3, found '0-2000000000'"},
                                       {"--query-stride 0", "--query-stride: expected at least 1, found 0"},
                                       {"--dtype f8", "--dtype: expected f32, f16 or bf16, found 'f8'"}}) {
    const test::CliResult bad = run_kvplan("record --corpus " + dir + "/c.jsonl " + flags + " --out " + dir + "/bad");
    EXPECT_NE(bad.exit_code, 0) << flags;
    EXPECT_NE(bad.err.find(message), std::string::npos) << flags << ": " << bad.err;
    EXPECT_FALSE(std::filesystem::exists(dir + "/bad")) << flags;
  }
}

TEST(Cli, PlanThenRunAndEvalEnforceIt) {
  const std::string dir = test::make_temp_dir("cliplan");
  const test::CliResult plan =
      run_kvplan("plan --policy vatp --budget 24 --sinks 2 --recent 6 --out " + dir + "/plan.yaml");
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  const std::string yaml = test::read_bytes(dir + "/plan.yaml");
  EXPECT_NE(yaml.find("name: vatp"), std::string::npos);
  // 5 layers x 4 heads x 24 slots x (2 x 8 x 4 + 4 + 4 + 4 for the value norm) bytes.
  EXPECT_NE(yaml.find("kv_bytes_per_sequence: 36480"), std::string::npos) << yaml;

  const test::CliResult run = run_kvplan("run --plan " + dir + "/plan.yaml --steps 100 --json");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const auto j = nlohmann::json::parse(run.out);
  EXPECT_EQ(j["kv_bytes"], 36480);
  EXPECT_EQ(j["predicted_kv_bytes"], 36480);
  EXPECT_EQ(j["sequences"][0]["tokens"].size(), 101u);

  const std::string corpus = dir + "/c.jsonl";
  ASSERT_EQ(run_kvplan("corpus --sample 3 --length 80 --out " + corpus).exit_code, 0);
  const test::CliResult eval = run_kvplan("eval --plan " + dir + "/plan.yaml --corpus " + corpus +
                                          " --prompt-len 16 --out " + dir + "/m.yaml --eviction-log " + dir +
                                          "/ev.csv --json");
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  const auto m = nlohmann::json::parse(eval.out);
  EXPECT_EQ(m["kv_bytes_per_sequence"], 36480);
  EXPECT_EQ(m["n_predicted_tokens"], 3 * (80 - 16));
  EXPECT_GT(m["delta_nll"].get<double>(), 0.0);
  const std::string log = test::read_bytes(dir + "/ev.csv");
  EXPECT_EQ(log.rfind("seq,step,layer,head,evicted_pos,score\n", 0), 0u);
  // Positions 0..78 are fed (the last token is only predicted): 79 - 24 evictions per head.
  EXPECT_EQ(test::line_count(log), 1 + 3 * 20 * (79 - 24));
  EXPECT_NE(test::read_bytes(dir + "/m.yaml").find("format: kvplan-measured"), std::string::npos);

  const test::CliResult full = run_kvplan("eval --policy full --budget 80 --corpus " + corpus +
                                          " --prompt-len 16 --out " + dir + "/f.yaml --json");
  ASSERT_EQ(full.exit_code, 0) << full.err;
  EXPECT_EQ(nlohmann::json::parse(full.out)["delta_nll"], 0.0);
}

TEST(Cli, EvalGridWritesCsvAndMarkdown) {
  const std::string dir = test::make_temp_dir("cligrid");
  ASSERT_EQ(run_kvplan("corpus --sample 2 --length 60 --out " + dir + "/c.jsonl").exit_code, 0);
  const test::CliResult grid = run_kvplan("eval --grid --policies full,h2o,vatp --budgets 16,32 --corpus " + dir +
                                          "/c.jsonl --prompt-len 16 --out " + dir + "/g");
  ASSERT_EQ(grid.exit_code, 0) << grid.err;
  const std::string csv = test::read_bytes(dir + "/g/grid.csv");
  EXPECT_EQ(test::line_count(csv), 1 + 1 + 2 + 2);  // header, full once, h2o and vatp at 2 budgets
  EXPECT_NE(csv.find("\nvatp,32,"), std::string::npos);
  EXPECT_NE(test::read_bytes(dir + "/g/grid.md").find("| vatp |"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(dir + "/g/measured/h2o-16.yaml"));
}

// The header of a float32 .npy file: its shape, as numpy would read it ("(2, 44)").
std::string npy_shape(const std::string& path) {
  const std::string bytes = test::read_bytes(path);
  if (bytes.rfind(std::string("\x93NUMPY\x01\x00", 8), 0) != 0 || bytes.find("'descr': '<f4'") == std::string::npos) {
    return "not a float32 .npy: " + path;
  }
  const size_t open = bytes.find("'shape': (") + 9, close = bytes.find(')', open);
  return bytes.substr(open, close - open + 1);
}

// Per position for studies: eval's ΔNLL of every predicted token, sweep's energy at every step.
TEST(Cli, EvalAndSweepWritePerPositionArrays) {
  const std::string dir = test::make_temp_dir("clipositions");
  ASSERT_EQ(run_kvplan("corpus --sample 2 --length 60 --out " + dir + "/c.jsonl").exit_code, 0);
  const test::CliResult one = run_kvplan("eval --policy h2o --budget 16 --corpus " + dir + "/c.jsonl --prompt-len 16 --out " +
                                         dir + "/m.yaml --positions " + dir + "/m.npy");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(npy_shape(dir + "/m.npy"), "(2, 44)");  // 60 - 16 predicted tokens per sequence
  const test::CliResult grid = run_kvplan("eval --grid --policies h2o,vatp --budgets 16,32 --corpus " + dir +
                                          "/c.jsonl --prompt-len 16 --out " + dir + "/g --positions " + dir + "/gp");
  ASSERT_EQ(grid.exit_code, 0) << grid.err;
  EXPECT_EQ(npy_shape(dir + "/gp/vatp-32.npy"), "(2, 44)");
  ASSERT_EQ(run_kvplan("record --corpus " + dir + "/c.jsonl --prompt-len 16 --out " + dir + "/t").exit_code, 0);
  const test::CliResult sweep = run_kvplan("sweep --trace " + dir + "/t --policies h2o --budgets 8,16 --sinks 2 --recent 2 "
                                           "--no-plots --out " + dir + "/s --step-energies " + dir + "/se");
  ASSERT_EQ(sweep.exit_code, 0) << sweep.err;
  // [sequences, layers, steps]: 5 layers, decode steps at positions 16..59.
  EXPECT_EQ(npy_shape(dir + "/se/h2o-uniform-8.npy"), "(2, 5, 44)");
  EXPECT_EQ(npy_shape(dir + "/se/h2o-greedy-16.npy"), "(2, 5, 44)");
  // A directory that cannot be made is named.
  test::write_bytes(dir + "/file", "x");
  const test::CliResult bad = run_kvplan("sweep --trace " + dir + "/t --policies h2o --budgets 8 --no-greedy --no-plots --out " +
                                         dir + "/s2 --step-energies " + dir + "/file/sub");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--step-energies: cannot create"), std::string::npos) << bad.err;
}

TEST(Cli, TracePlansAreByteIdenticalAndSweepsWriteTheirReports) {
  const std::string dir = test::make_temp_dir("cliplanner");
  ASSERT_EQ(run_kvplan("corpus --sample 3 --length 96 --out " + dir + "/c.jsonl").exit_code, 0);
  ASSERT_EQ(run_kvplan("record --corpus " + dir + "/c.jsonl --prompt-len 16 --out " + dir + "/t").exit_code, 0);
  for (const char* out : {"/p1.yaml", "/p2.yaml"}) {
    const test::CliResult plan = run_kvplan("plan --trace " + dir + "/t --policy vatp --keep 0.25 --sinks 2 --recent 4 --out " +
                                            dir + out);
    ASSERT_EQ(plan.exit_code, 0) << plan.err;
  }
  const std::string p1 = test::read_bytes(dir + "/p1.yaml");
  EXPECT_EQ(p1, test::read_bytes(dir + "/p2.yaml"));
  EXPECT_NE(p1.find("allocation: greedy"), std::string::npos);
  EXPECT_NE(p1.find("replay_resid_energy"), std::string::npos);
  // The plan runs, and its bytes are what it says.
  const test::CliResult run = run_kvplan("run --plan " + dir + "/p1.yaml --steps 64 --json");
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const auto j = nlohmann::json::parse(run.out);
  EXPECT_EQ(j["kv_bytes"], j["predicted_kv_bytes"]);

  // Per layer and KV head: byte-identical too, within the same memory, and it runs. TOVA keeps one
  // set per layer, so it cannot be given per-head budgets.
  for (const char* out : {"/h1.yaml", "/h2.yaml"}) {
    const test::CliResult plan = run_kvplan("plan --trace " + dir + "/t --policy vatp --keep 0.25 --sinks 2 --recent 4 "
                                            "--allocation greedy-head --out " + dir + out);
    ASSERT_EQ(plan.exit_code, 0) << plan.err;
  }
  const std::string h1 = test::read_bytes(dir + "/h1.yaml");
  EXPECT_EQ(h1, test::read_bytes(dir + "/h2.yaml"));
  EXPECT_NE(h1.find("allocation: greedy-head"), std::string::npos);
  auto per_head = Plan::load(dir + "/h1.yaml");
  auto per_layer = Plan::load(dir + "/p1.yaml");
  ASSERT_TRUE(per_head.ok() && per_layer.ok());
  EXPECT_LE(per_head->kv_budgets().total_slots(), int64_t(0.25 * per_head->model.n_layers * per_head->model.n_kv_heads * 96));
  const test::CliResult run_head = run_kvplan("run --plan " + dir + "/h1.yaml --steps 64 --json");
  ASSERT_EQ(run_head.exit_code, 0) << run_head.err;
  EXPECT_EQ(nlohmann::json::parse(run_head.out)["kv_bytes"], per_head->kv_bytes_per_sequence);
  const test::CliResult tova = run_kvplan("plan --trace " + dir + "/t --policy tova --keep 0.25 --sinks 2 --recent 4 "
                                          "--allocation greedy-head --out " + dir + "/tova.yaml");
  EXPECT_NE(tova.exit_code, 0);
  EXPECT_NE(tova.err.find("keeps one set of positions per layer"), std::string::npos) << tova.err;

  const test::CliResult sweep = run_kvplan("sweep --trace " + dir + "/t --policies h2o,vatp,tova --budgets 8,16,32 --sinks 2 "
                                           "--recent 4 --no-plots --per-head --out " + dir + "/s");
  ASSERT_EQ(sweep.exit_code, 0) << sweep.err;
  const std::string csv = test::read_bytes(dir + "/s/sweep.csv");
  EXPECT_EQ(csv.rfind("policy,allocation,budget,", 0), 0u);
  EXPECT_NE(csv.find("\nvatp,uniform,32,"), std::string::npos);
  EXPECT_NE(csv.find("\nvatp,greedy-head,16,"), std::string::npos);
  EXPECT_EQ(csv.find("\ntova,greedy-head,"), std::string::npos) << "tova keeps one set per layer";
  EXPECT_NE(test::read_bytes(dir + "/s/sweep.md").find("| h2o |"), std::string::npos);

  const test::CliResult cap = run_kvplan("capacity --model-config llama-2-7b --hardware a100-80gb --context 4096 --keep 0.5 --json");
  ASSERT_EQ(cap.exit_code, 0) << cap.err;
  const auto c = nlohmann::json::parse(cap.out);
  EXPECT_EQ(c["full"]["kv_bytes_per_sequence"], int64_t{32} * 32 * 4096 * 520);
  EXPECT_GT(c["plan"]["max_batch"].get<int64_t>(), c["full"]["max_batch"].get<int64_t>());
}

TEST(Cli, CalibratePlanEvalAndCheckCloseTheLoop) {
  const std::string dir = test::make_temp_dir("cliloop");
  ASSERT_EQ(run_kvplan("corpus --sample 4 --length 96 --seed 3 --out " + dir + "/c.jsonl").exit_code, 0);
  ASSERT_EQ(run_kvplan("record --corpus " + dir + "/c.jsonl --prompt-len 16 --out " + dir + "/t").exit_code, 0);
  const test::CliResult grid = run_kvplan("eval --grid --policies window,h2o,vatp,tova --budgets 8,16,24 --sinks 2 "
                                          "--recent 4 --prompt-len 16 --corpus " + dir + "/c.jsonl --out " + dir + "/g --json");
  ASSERT_EQ(grid.exit_code, 0) << grid.err;
  const test::CliResult cal = run_kvplan("calibrate --trace " + dir + "/t --measured " + dir + "/g/measured/*.yaml --out " +
                                         dir + "/calib.yaml --json");
  ASSERT_EQ(cal.exit_code, 0) << cal.err;
  const auto c = nlohmann::json::parse(cal.out);
  EXPECT_EQ(c["n_points"], 12);
  EXPECT_GT(c["spearman"].get<double>(), 0.5);

  const test::CliResult plan = run_kvplan("plan --trace " + dir + "/t --policy vatp --keep 0.25 --sinks 2 --recent 4 "
                                          "--calibration " + dir + "/calib.yaml --out " + dir + "/plan.yaml");
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_NE(plan.out.find("predicted ("), std::string::npos) << plan.out;
  const std::string p = test::read_bytes(dir + "/plan.yaml");
  for (const char* key : {"delta_nll:", "delta_nll_low:", "top1_agreement_high:", "calibration_range:"}) {
    EXPECT_NE(p.find(key), std::string::npos) << key;
  }
  ASSERT_EQ(run_kvplan("eval --plan " + dir + "/plan.yaml --prompt-len 16 --corpus " + dir + "/c.jsonl --out " + dir +
                       "/m.yaml --json").exit_code, 0);
  const test::CliResult check = run_kvplan("check --plan " + dir + "/plan.yaml --measured " + dir + "/m.yaml --json");
  ASSERT_EQ(check.exit_code, 0) << check.err;
  const auto k = nlohmann::json::parse(check.out);
  EXPECT_TRUE(k["memory_exact"].get<bool>());
  EXPECT_TRUE(k["calibrated"].get<bool>());
  EXPECT_EQ(k["metrics"]["kv_bytes_per_sequence"]["predicted"], k["metrics"]["kv_bytes_per_sequence"]["measured"]);
  EXPECT_TRUE(k["metrics"]["delta_nll"].contains("interval"));

  // A measurement whose bytes differ from the plan's: a one-line error naming the field, exit 1.
  std::string m = test::read_bytes(dir + "/m.yaml");
  const size_t at = m.find("  kv_bytes_per_sequence: ");
  ASSERT_NE(at, std::string::npos);
  m.insert(at + std::string("  kv_bytes_per_sequence: ").size(), "9");
  test::write_bytes(dir + "/bad.yaml", m);
  const test::CliResult bad = run_kvplan("check --plan " + dir + "/plan.yaml --measured " + dir + "/bad.yaml");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("bad.yaml: metrics.kv_bytes_per_sequence"), std::string::npos) << bad.err;

  // A sweep with the calibration writes predictions and runnable plans for every configuration.
  const test::CliResult sweep = run_kvplan("sweep --trace " + dir + "/t --policies h2o,vatp --budgets 8,16 --sinks 2 "
                                           "--recent 4 --pyramid --calibration " + dir + "/calib.yaml --plans-out " + dir +
                                           "/plans --no-plots --out " + dir + "/s");
  ASSERT_EQ(sweep.exit_code, 0) << sweep.err;
  EXPECT_NE(test::read_bytes(dir + "/s/sweep.csv").find(",pred_delta_nll,"), std::string::npos);
  const test::CliResult many = run_kvplan("eval --plans " + dir + "/plans/vatp-uniform-16.yaml " + dir +
                                          "/plans/vatp-pyramid-16.yaml --prompt-len 16 --corpus " + dir +
                                          "/c.jsonl --out " + dir + "/e");
  ASSERT_EQ(many.exit_code, 0) << many.err;
  const std::string csv = test::read_bytes(dir + "/e/plans.csv");
  EXPECT_NE(csv.find("\nvatp-uniform-16,vatp,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("\nvatp-pyramid-16,vatp,"), std::string::npos) << csv;
}

struct BadInvocation {
  std::string name;
  std::function<std::string(const std::string& dir)> args;  // given a scratch directory
  std::string expect_in_error;
  friend void PrintTo(const BadInvocation& b, std::ostream* os) { *os << b.name; }
};

std::string corrupted_model(const std::string& dir, const std::function<void(std::string&)>& edit) {
  std::string bytes = test::read_bytes(test::default_model().files.model_path);
  edit(bytes);
  const std::string path = dir + "/bad.bin";
  test::write_bytes(path, bytes);
  return path;
}

std::string with_tokenizer(const std::string& model_path) {
  return "--model " + shell_quote(model_path) + " --tokenizer " +
         shell_quote(test::default_model().files.tokenizer_path);
}

std::vector<BadInvocation> bad_invocations() {
  return {
      {"truncated_model",
       [](const std::string& d) {
         return "run " + with_tokenizer(corrupted_model(d, [](std::string& b) { b.resize(b.size() / 2); }));
       },
       "file length"},
      {"absurd_dimension",
       [](const std::string& d) {
         return "run " + with_tokenizer(corrupted_model(d, [](std::string& b) {
                  const int32_t v = -7;
                  std::memcpy(b.data() + 8, &v, 4);
                }));
       },
       "n_layers"},
      {"nan_weight",
       [](const std::string& d) {
         return "run " + with_tokenizer(corrupted_model(d, [](std::string& b) {
                  std::memset(b.data() + 1000, 0xFF, 4);
                }));
       },
       "not finite"},
      {"missing_model", [](const std::string& d) { return "run --model " + d + "/none.bin"; },
       "cannot open"},
      {"directory_as_model", [](const std::string& d) { return "inspect " + d; },
       "no model in it"},
      {"truncated_tokenizer",
       [](const std::string& d) {
         const std::string tok = d + "/tok.bin";
         test::write_bytes(tok, test::read_bytes(test::default_model().files.tokenizer_path).substr(0, 3000));
         return "run --tokenizer " + tok;
       },
       "tok.bin: piece"},
      {"steps_beyond_context", [](const std::string&) { return "run --steps 100000"; }, "--steps"},
      {"truncated_gguf",
       [](const std::string& d) {
         const LoadedModel& m = test::default_model();  // its GGUF copy, cut inside the tensor data
         EXPECT_TRUE(save_gguf(d + "/full.gguf", m.weights, m.tokenizer).ok());
         test::write_bytes(d + "/t.gguf", test::read_bytes(d + "/full.gguf").substr(0, 700000));
         return "run --model " + d + "/t.gguf";
       },
       "t.gguf: tensor"},
      {"hf_unsupported_architecture",
       [](const std::string& d) {
         std::filesystem::create_directory(d + "/m");
         test::write_bytes(d + "/m/config.json", R"({"architectures": ["MixtralForCausalLM"], "hidden_size": 64})");
         return "inspect " + d + "/m";
       },
       "'MixtralForCausalLM' is not supported"},
      {"hf_sliding_window",
       [](const std::string& d) {
         std::filesystem::create_directory(d + "/m");
         test::write_bytes(d + "/m/config.json",
                           R"({"architectures": ["MistralForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
                               "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512,
                               "max_position_embeddings": 32768, "sliding_window": 4096})");
         return "run --model " + d + "/m";
       },
       "sliding-window attention (4096) is not supported"},
      {"hf_missing_weights",
       [](const std::string& d) {
         std::filesystem::create_directory(d + "/m");
         test::write_bytes(d + "/m/config.json",
                           R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
                               "num_hidden_layers": 1, "num_attention_heads": 8, "vocab_size": 512,
                               "max_position_embeddings": 512})");
         return "run --model " + d + "/m";
       },
       "no model.safetensors"},
      {"tokenize_text_and_file",
       [](const std::string& d) { return "tokenize --text hi --file " + d + "/x.txt"; }, "--text and --file"},
      {"convert_q8_0_to_hf", [](const std::string& d) { return "convert --to hf --dtype q8_0 --out " + d + "/x"; },
       "q8_0"},
      {"convert_unknown_dtype", [](const std::string& d) { return "convert --dtype f8 --out " + d + "/x.gguf"; },
       "--dtype: expected f32, f16, bf16, q8_0, q4_0 or q4_1"},
      {"negative_top_p", [](const std::string&) { return "run --temperature 1 --top-p -0.5"; },
       "--top-p"},
      {"not_a_number", [](const std::string&) { return "run --steps many"; }, "--steps"},
      {"unknown_flag", [](const std::string&) { return "run --budget-of-doom 3"; },
       "--budget-of-doom"},
      {"unknown_command", [](const std::string&) { return "fly"; }, "fly"},
      {"record_missing_corpus",
       [](const std::string& d) { return "record --corpus " + d + "/none.jsonl --out " + d + "/t"; },
       "none.jsonl: cannot open"},
      {"record_bad_dtype",
       [](const std::string& d) {
         test::write_bytes(d + "/c.txt", "Once upon a time.");
         return "record --corpus " + d + "/c.txt --dtype bf8 --out " + d + "/t";
       },
       "--dtype"},
      {"record_into_existing_dir",
       [](const std::string& d) {
         test::write_bytes(d + "/c.txt", "Once upon a time.");
         return "record --corpus " + d + "/c.txt --out " + d;
       },
       "already exists"},
      {"record_without_out", [](const std::string&) { return "record --corpus x.txt"; }, "--out"},
      {"corpus_length_too_long",
       [](const std::string& d) { return "corpus --sample 1 --length 5000 --out " + d + "/c.jsonl"; },
       "--length"},
      {"plan_for_another_model",
       [](const std::string& d) {
         const std::string other = d + "/other.bin";
         test::write_bytes(other, test::read_bytes(test::default_model().files.model_path));
         std::string b = test::read_bytes(other);
         b[b.size() - 1] ^= 1;  // a different model file: another fingerprint
         test::write_bytes(other, b);
         run_kvplan("plan --policy h2o --budget 32 --model " + other + " --tokenizer " +
                    shell_quote(test::default_model().files.tokenizer_path) + " --out " + d + "/p.yaml");
         return "run --plan " + d + "/p.yaml";
       },
       "model.fingerprint"},
      {"plan_budget_below_protected", [](const std::string& d) {
         return "plan --policy vatp --budget 10 --sinks 4 --recent 16 --out " + d + "/p.yaml"; }, "--budget"},
      {"plan_unknown_policy", [](const std::string& d) { return "plan --policy lru --budget 10 --out " + d + "/p.yaml"; },
       "'lru'"},
      {"run_plan_and_policy", [](const std::string& d) { return "run --plan " + d + "/p.yaml --policy h2o --budget 8"; },
       "give one"},
      {"run_full_policy_too_small", [](const std::string&) { return "run --policy full --budget 32 --steps 64"; },
       "budget 32 is below --steps 64"},
      {"eval_prompt_too_long",
       [](const std::string& d) {
         test::write_bytes(d + "/c.txt", "Once upon a time.");
         return "eval --policy h2o --budget 32 --corpus " + d + "/c.txt --prompt-len 64";
       },
       "leaves nothing to evaluate"},
      {"bad_recent", [](const std::string&) { return "run --policy h2o --budget 32 --recent 1x"; }, "--recent"},
      {"plan_two_limits", [](const std::string& d) { return "plan --trace " + d + " --policy h2o --keep 0.5 --memory 1000 --out " + d + "/p.yaml"; },
       "exactly one memory limit"},
      {"plan_bad_allocation", [](const std::string& d) { return "plan --trace " + d + " --policy h2o --keep 0.5 --allocation best --out " + d + "/p.yaml"; },
       "--allocation"},
      {"calibrate_unreadable_measured",
       [](const std::string& d) {
         test::write_bytes(d + "/m.yaml", "format: kvplan-measured\nversion: 1\n");
         return "calibrate --trace " + d + "/none --measured " + d + "/m.yaml --out " + d + "/c.yaml";
       },
       "no such trace"},
      {"plan_corrupt_calibration",
       [](const std::string& d) {
         test::write_bytes(d + "/calib.yaml", "format: kvplan-calibration\nversion: 1\nmodel: {}\n");
         run_kvplan("corpus --sample 1 --length 48 --out " + d + "/c.jsonl");
         run_kvplan("record --corpus " + d + "/c.jsonl --prompt-len 16 --out " + d + "/t");
         return "plan --policy vatp --budget 16 --sinks 2 --recent 4 --calibration " + d + "/calib.yaml --trace " + d +
                "/t --out " + d + "/p.yaml";
       },
       "calib.yaml: model.fingerprint"},
      {"check_other_configuration",
       [](const std::string& d) {
         run_kvplan("plan --policy vatp --budget 32 --out " + d + "/a.yaml");
         run_kvplan("corpus --sample 1 --length 80 --out " + d + "/c.jsonl");
         run_kvplan("eval --policy h2o --budget 32 --corpus " + d + "/c.jsonl --out " + d + "/m.yaml --json");
         return "check --plan " + d + "/a.yaml --measured " + d + "/m.yaml";
       },
       "m.yaml: config: measured h2o"},
      {"check_missing_plan", [](const std::string& d) { return "check --plan " + d + "/p.yaml --measured " + d + "/m.yaml"; },
       "p.yaml"},
      {"run_prefill_chunk_zero", [](const std::string&) { return "run --prefill-chunk 0"; }, "--prefill-chunk"},
      {"capacity_unknown_hardware", [](const std::string&) { return "capacity --hardware tpu-v9 --keep 0.5"; }, "tpu-v9"},
      {"capacity_bad_kv_memory", [](const std::string&) { return "capacity --keep 0.5 --kv-memory 12parsecs"; },
       "--kv-memory: unknown unit 'parsecs'"},
      {"capacity_unknown_keep_policy", [](const std::string&) { return "capacity --keep 0.5 --policy lru"; },
       "--policy"},
      {"serve_bad_kv_memory", [](const std::string&) { return "serve --port 0 --kv-memory lots"; }, "--kv-memory"},
      {"serve_on_a_tpu", [](const std::string&) { return "serve --port 0 --backend tpu"; }, "--backend: expected cpu"},
      {"serve_unknown_chat_template", [](const std::string&) { return "serve --port 0 --chat-template vicuna"; },
       "--chat-template: expected llama2, llama3 or chatml"},
      {"serve_bad_host", [](const std::string&) { return "serve --host 300.1.1.1"; }, "--host: '300.1.1.1'"},
      {"serve_unknown_keep_policy", [](const std::string&) { return "serve --port 0 --keep-policy lru"; },
       "--keep-policy"},
      {"think_ratio_of_one", [](const std::string&) { return "run --policy vatp --budget 32 --think 1.5"; },
       "--think: expected a ratio in [0, 1), found 1.5"},
      {"mustafar_negative", [](const std::string&) { return "run --policy vatp --budget 32 --mustafar-v -0.2"; },
       "--mustafar-v: expected a ratio in [0, 1), found -0.2"},
      {"plan_file_and_think",
       [](const std::string& d) {
         run_kvplan("plan --policy vatp --budget 32 --out " + d + "/p.yaml");
         return "run --plan " + d + "/p.yaml --think 0.4";
       },
       "--think"},
      {"plan_file_sparsity_above_one",
       [](const std::string& d) {
         run_kvplan("plan --policy vatp --budget 32 --mustafar 0.5 --out " + d + "/p.yaml");
         std::string yaml = test::read_bytes(d + "/p.yaml");
         const size_t at = yaml.find("keys: 0.5");
         if (at != std::string::npos) yaml.replace(at, 9, "keys: 1.5");
         test::write_bytes(d + "/p.yaml", yaml);
         return "run --plan " + d + "/p.yaml";
       },
       "sparsity.keys: expected a ratio in [0, 1), found 1.5"},
      {"plan_choice_without_memory",
       [](const std::string& d) { return "plan --trace " + d + " --policy vatp --keep 0.5 --think-ratios 0,0.4 --out " + d + "/p.yaml"; },
       "give --memory"},
      {"plan_choice_bad_ratio",
       [](const std::string& d) {
         return "plan --trace " + d + " --policy vatp --memory 9000 --mustafar-ratios 0,half --out " + d + "/p.yaml";
       },
       "--mustafar-ratios: expected ratios in [0, 1)"},
      {"sweep_missing_trace", [](const std::string& d) { return "sweep --trace " + d + "/none --out " + d + "/s"; },
       "no such trace"},
      {"inspect_damaged_trace",
       [](const std::string& d) {
         std::filesystem::create_directory(d + "/t");
         test::write_bytes(d + "/t/manifest.yaml", "format: kvplan-trace\nversion: 1\n");
         return "inspect " + d + "/t";
       },
       "manifest.yaml: model: missing"},
  };
}

class CliBadInput : public ::testing::TestWithParam<BadInvocation> {};

TEST_P(CliBadInput, OneLineErrorAndNonZeroExit) {
  const std::string dir = test::make_temp_dir("clibad");
  const test::CliResult r = run_kvplan(GetParam().args(dir));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_LT(r.exit_code, 128) << "killed by a signal: " << r.err;
  EXPECT_EQ(test::line_count(r.err), 1) << r.err;
  EXPECT_NE(r.err.find(GetParam().expect_in_error), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

INSTANTIATE_TEST_SUITE_P(Cases, CliBadInput, ::testing::ValuesIn(bad_invocations()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace kvp
