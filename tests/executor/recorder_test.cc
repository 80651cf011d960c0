// Recording traces: what the trace holds is what the executor computed (attention recomputed from
// the recorded q, k, v equals the live attention output), F32 and F16 traces agree, and a damaged
// or foreign trace is refused with the file and the field named.
#include "executor/recorder.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "common/file_util.h"
#include "common/sha256.h"
#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "planner/trace_stats.h"
#include "tests/support/test_support.h"
#include "traces/trace.h"
#include "traces/trace_writer.h"

namespace kvp {
namespace {

namespace fs = std::filesystem;
using test::default_model;

// Recomputed (double) against live (f32) attention outputs, relative to the largest output.
constexpr double kMaxRelErrF32 = 1e-5;
// binary16 keeps 11 significant bits; this model's q and k reach |x| ~ 35, so rounding them moves
// attention logits by a few hundredths and outputs by about 1% of their largest value.
constexpr double kMaxRelErrF16 = 2e-2;

const char* kText =
    "Once upon a time, there was a little dog named Max. Max liked to run in the park.\n"
    "One day he found a big red ball.\n\n"
    "Sue had a cat. The cat was very happy and liked to sleep in the sun all day long.\n";

std::string corpus_file() {
  const std::string path = test::make_temp_dir("corpus") + "/stories.txt";
  test::write_bytes(path, kText);
  return path;
}

Corpus small_corpus() {
  auto c = load_corpus(corpus_file(), default_model().tokenizer, default_model().weights.config().seq_len);
  EXPECT_TRUE(c.ok());
  return *c;
}

std::string record_small(TensorDtype dtype) {
  const std::string dir = test::make_temp_dir("trace") + "/trace";
  auto stats = record_trace(default_model(), small_corpus(),
                            {.out_dir = dir, .prompt_len = 8, .qkv_dtype = dtype, .tool_version = "test"});
  EXPECT_TRUE(stats.ok()) << stats.error().message();
  return dir;
}

// Captures the live attention output of every layer during a forward pass.
class AttentionCapture final : public ForwardObserver {
 public:
  explicit AttentionCapture(int n_layers) : attn_(n_layers) {}
  void after_attention(int layer_idx, const Backend& b) override {
    attn_[layer_idx].resize(size_t(b.n_rows()) * b.config().q_dim());
    b.read(Act::kAttn, attn_[layer_idx]);
  }
  std::vector<std::vector<float>> attn_;
};

void expect_trace_reproduces_live_attention(TensorDtype dtype, double tolerance) {
  const std::string dir = record_small(dtype);
  auto trace = Trace::open(dir);
  ASSERT_TRUE(trace.ok()) << trace.error().message();
  const ModelConfig& c = default_model().weights.config();
  const Corpus corpus = small_corpus();
  ASSERT_EQ(trace->n_sequences(), static_cast<int>(corpus.sequences.size()));
  for (int s = 0; s < trace->n_sequences(); ++s) {
    const std::vector<int32_t>& tokens = corpus.sequences[s];
    EXPECT_EQ(trace->tokens(s), tokens);
    const int T = static_cast<int>(tokens.size());
    CpuBackend backend(default_model().weights);
    Decoder decoder(backend);
    backend.reset_sequences({full_cache_budgets(c, T)});
    StepRows rows;
    std::vector<int32_t> logit_rows;
    for (int t = 0; t < T; ++t) {
      rows.add(tokens[t], t, 0);
      logit_rows.push_back(t);
    }
    AttentionCapture live(c.n_layers);
    std::vector<float> logits;
    decoder.forward(rows, logit_rows, &logits, &live);

    // ref_logprob is the live model's log-probability of each next token.
    const std::vector<float> ref = trace->ref_logprob(s);
    for (int t = 0; t + 1 < T; ++t) {
      const float* row = logits.data() + size_t(t) * c.vocab_size;
      double mx = -INFINITY, sum = 0;
      for (int i = 0; i < c.vocab_size; ++i) mx = std::max(mx, double(row[i]));
      for (int i = 0; i < c.vocab_size; ++i) sum += std::exp(row[i] - mx);
      EXPECT_NEAR(ref[t], row[tokens[t + 1]] - mx - std::log(sum), 1e-5);
    }
    std::vector<double> probs;
    for (int l = 0; l < c.n_layers; ++l) {
      const TraceLayer layer = trace->layer(s, l);
      double scale = 0, err = 0;
      for (int t = 0; t < T; ++t) {
        for (int h = 0; h < c.n_heads; ++h) {
          causal_attention_row(layer.q.data(), layer.k.data(), c.n_heads, c.n_kv_heads, c.head_dim(), h, t, &probs);
          const int kvh = h / c.group_size();
          for (int d = 0; d < c.head_dim(); ++d) {
            double o = 0;
            for (int j = 0; j <= t; ++j) o += probs[j] * layer.v[(size_t(j) * c.n_kv_heads + kvh) * c.head_dim() + d];
            const double got = live.attn_[l][size_t(t) * c.q_dim() + h * c.head_dim() + d];
            scale = std::max(scale, std::abs(got));
            err = std::max(err, std::abs(o - got));
          }
        }
      }
      EXPECT_LE(err, tolerance * scale) << "sequence " << s << " layer " << l;
    }
    // Layer 0's residual input is the token embedding.
    const TraceLayer layer0 = trace->layer(s, 0);
    const float* embedding = default_model().weights.token_embedding().f32();
    for (int t = 0; t < T; ++t) {
      double ss = 0;
      for (int i = 0; i < c.dim; ++i) {
        const double e = embedding[size_t(tokens[t]) * c.dim + i];
        ss += e * e;
      }
      EXPECT_NEAR(layer0.resid_norm[t], std::sqrt(ss), 1e-5);
    }
  }
}

TEST(Recorder, AttentionFromTheF32TraceReproducesTheLiveAttention) {
  expect_trace_reproduces_live_attention(TensorDtype::kF32, kMaxRelErrF32);
}

TEST(Recorder, AttentionFromTheF16TraceReproducesTheLiveAttention) {
  expect_trace_reproduces_live_attention(TensorDtype::kF16, kMaxRelErrF16);
}

TEST(Recorder, ManifestDescribesModelSequencesAndFiles) {
  auto trace = Trace::open(record_small(TensorDtype::kF16));
  ASSERT_TRUE(trace.ok()) << trace.error().message();
  const TraceManifest& m = trace->manifest();
  EXPECT_EQ(m.model.fingerprint, "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696");
  EXPECT_EQ(m.model.n_layers, 5);
  EXPECT_EQ(m.qkv_dtype, TensorDtype::kF16);
  EXPECT_EQ(m.sequences.size(), 2u);
  EXPECT_EQ(m.sequences[0].file, "seq-00000.safetensors");
  EXPECT_EQ(m.sequences[0].prompt_len, 8);
  const std::vector<float> wo = trace->wo(3);
  ASSERT_EQ(wo.size(), 64u * 64u);
  EXPECT_EQ(std::memcmp(wo.data(), default_model().weights.layer(3).wo.data, wo.size() * 4), 0);
}

// ---- Damaged and foreign traces ----

std::string copy_of(const std::string& trace_dir) {
  const std::string dir = test::make_temp_dir("copy") + "/trace";
  fs::copy(trace_dir, dir, fs::copy_options::recursive);
  return dir;
}

const std::string& pristine() {
  static const std::string dir = record_small(TensorDtype::kF32);
  return dir;
}

// Rewrites a file's JSON header in place (same length, space-padded).
void edit_header(const std::string& path, const std::function<void(nlohmann::ordered_json&)>& edit) {
  std::string bytes = test::read_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  nlohmann::ordered_json header = nlohmann::ordered_json::parse(bytes.substr(8, n));
  edit(header);
  std::string json = header.dump();
  ASSERT_LE(json.size(), n);
  json.resize(n, ' ');
  bytes.replace(8, n, json);
  test::write_bytes(path, bytes);
}

void set_manifest_sha(const std::string& dir, const std::string& file) {
  const std::string manifest = dir + "/manifest.yaml";
  std::string text = test::read_bytes(manifest);
  const size_t at = text.find("file: " + file);
  const size_t sha = text.find("sha256: ", at) + 8;
  text.replace(sha, 64, *sha256_file(dir + "/" + file));
  test::write_bytes(manifest, text);
}

struct Damage {
  std::string name;
  std::function<void(const std::string& dir)> apply;
  std::string expect;
  friend void PrintTo(const Damage& d, std::ostream* os) { *os << d.name; }
};

std::vector<Damage> damages() {
  const std::string seq0 = "/seq-00000.safetensors";
  return {
      {"truncated_file",
       [=](const std::string& d) {
         fs::resize_file(d + seq0, fs::file_size(d + seq0) - 1000);
       },
       "seq-00000.safetensors: tensor"},
      {"header_length_past_end",
       [=](const std::string& d) {
         std::string b = test::read_bytes(d + seq0);
         const uint64_t huge = 1ull << 40;
         std::memcpy(b.data(), &huge, 8);
         test::write_bytes(d + seq0, b);
       },
       "runs past the end"},
      {"overlapping_offsets",
       [=](const std::string& d) {
         edit_header(d + seq0, [](nlohmann::ordered_json& h) {
           auto& o = h["layer.0.k"]["data_offsets"];
           const int64_t shift = 64;
           o = {o[0].get<int64_t>() - shift, o[1].get<int64_t>() - shift};
         });
       },
       "overlap"},
      {"out_of_range_offsets",
       [=](const std::string& d) {
         edit_header(d + seq0, [](nlohmann::ordered_json& h) {
           auto& end = h["layer.4.resid_norm"]["data_offsets"][1];
           end = end.get<int64_t>() + 8;  // past the end of the data buffer, same digit count
         });
       },
       "out of range"},
      {"wrong_dtype",
       [=](const std::string& d) {
         auto f = SafetensorsFile::open(d + seq0);
         SafetensorsWriter w;
         for (const TensorInfo& t : f->tensors()) {
           if (t.name == "layer.0.q") {
             std::vector<float> x(t.element_count());
             f->read_floats(t, x);
             w.add_float_as(t.name, TensorDtype::kF16, t.shape, x);
           } else {
             w.add(t.name, t.dtype, t.shape, f->bytes(t));
           }
         }
         ASSERT_TRUE(w.write(d + seq0).ok());
         set_manifest_sha(d, "seq-00000.safetensors");
       },
       "tensor layer.0.q: dtype: expected F32, found F16"},
      {"bad_checksum",
       [=](const std::string& d) {
         std::string b = test::read_bytes(d + seq0);
         b[b.size() - 3] ^= 0x40;
         test::write_bytes(d + seq0, b);
       },
       "seq-00000.safetensors: sha256"},
      {"missing_file", [](const std::string& d) { fs::remove(d + "/seq-00001.safetensors"); },
       "seq-00001.safetensors: cannot open"},
      {"missing_manifest", [](const std::string& d) { fs::remove(d + "/manifest.yaml"); },
       "did not finish"},
      {"manifest_unknown_field",
       [](const std::string& d) {
         test::write_bytes(d + "/manifest.yaml", test::read_bytes(d + "/manifest.yaml") + "extra: 1\n");
       },
       "extra: unknown field"},
      {"manifest_future_version",
       [](const std::string& d) {
         std::string m = test::read_bytes(d + "/manifest.yaml");
         m.replace(m.find("version: 2"), 10, "version: 3");
         test::write_bytes(d + "/manifest.yaml", m);
       },
       "version: this kvplan reads versions 1 and 2, found 3"},
      {"manifest_model_not_a_map",  // found by trace_manifest_fuzz: threw from yaml-cpp before
       [](const std::string& d) {
         std::string m = test::read_bytes(d + "/manifest.yaml");
         const size_t from = m.find("model:\n"), to = m.find("recorder:");
         m.replace(from, to - from, "model: 3\n");
         test::write_bytes(d + "/manifest.yaml", m);
       },
       "manifest.yaml: model: expected a map of fields, found '3'"},
      {"manifest_key_not_a_name",  // found by trace_manifest_fuzz too
       [](const std::string& d) {
         test::write_bytes(d + "/manifest.yaml", test::read_bytes(d + "/manifest.yaml") + "? [a, b]\n: 1\n");
       },
       "manifest.yaml: document: expected field names, found a key that is a list or a map"},
      {"manifest_layers_disagree",
       [](const std::string& d) {
         std::string m = test::read_bytes(d + "/manifest.yaml");
         m.replace(m.find("n_layers: 5"), 11, "n_layers: 4");
         test::write_bytes(d + "/manifest.yaml", m);
       },
       "recorder.layers[4]: expected increasing layer indices in 0..3, found '4'"},
  };
}

class DamagedTrace : public ::testing::TestWithParam<Damage> {};

TEST_P(DamagedTrace, IsRefusedNamingFileAndField) {
  const std::string dir = copy_of(pristine());
  GetParam().apply(dir);
  auto trace = Trace::open(dir);
  ASSERT_FALSE(trace.ok());
  EXPECT_NE(trace.error().message().find(GetParam().expect), std::string::npos) << trace.error().message();
  EXPECT_EQ(trace.error().message().find('\n'), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Cases, DamagedTrace, ::testing::ValuesIn(damages()),
                         [](const auto& info) { return info.param.name; });

TEST(Recorder, ATraceOfAnotherModelIsRefused) {
  ASSERT_TRUE(Trace::open(pristine()).ok());
  const std::string other = std::string(64, 'a');
  auto trace = Trace::open(pristine(), {.expected_fingerprint = other, .expected_model_name = "other.bin"});
  ASSERT_FALSE(trace.ok());
  EXPECT_NE(trace.error().message().find("model.fingerprint"), std::string::npos);
  EXPECT_NE(trace.error().message().find("other.bin"), std::string::npos);
}

// ---- Interrupted writes ----

TEST(Recorder, AWriterAbandonedBeforeFinishLeavesNothing) {
  const std::string parent = test::make_temp_dir("abandon");
  {
    auto w = TraceWriter::create(parent + "/trace", false);
    ASSERT_TRUE(w.ok());
    SafetensorsWriter f;
    const std::vector<int32_t> tokens = {1, 2, 3};
    f.add_i32("tokens", {3}, tokens);
    ASSERT_TRUE(w->add_sequence(f, 1, 3).ok());
  }
  EXPECT_TRUE(fs::is_empty(parent)) << "neither the trace nor its staging directory remains";
}

TEST(Recorder, RefusesToOverwriteWithoutForce) {
  const std::string dir = copy_of(pristine());
  auto again = record_trace(default_model(), small_corpus(), {.out_dir = dir, .prompt_len = 8});
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().message().find("--force"), std::string::npos);
  auto forced = record_trace(default_model(), small_corpus(),
                             {.out_dir = dir, .prompt_len = 4, .overwrite = true});
  ASSERT_TRUE(forced.ok()) << forced.error().message();
  EXPECT_EQ(Trace::open(dir)->prompt_len(0), 4);
}

TEST(Recorder, AKilledRecordingLeavesNoValidTraceBehind) {
  // A long recording, killed early: whatever is at --out must be absent or a whole trace.
  const std::string dir = test::make_temp_dir("kill");
  const std::string corpus = dir + "/c.jsonl";
  test::CliResult made = test::run_kvplan("corpus --sample 24 --length 400 --out " + corpus + " --json");
  ASSERT_EQ(made.exit_code, 0) << made.err;
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::freopen("/dev/null", "w", stderr);
    ::freopen("/dev/null", "w", stdout);
    ::execl(KVPLAN_BINARY, "kvplan", "record", "--corpus", corpus.c_str(), "--out",
            (dir + "/trace").c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::usleep(150 * 1000);
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (fs::exists(dir + "/trace")) {
    EXPECT_TRUE(Trace::open(dir + "/trace").ok()) << "finished before the kill, so it must be whole";
  } else {
    EXPECT_FALSE(Trace::open(dir + "/trace").ok());
  }
}

// ---- Interoperability ----

TEST(Recorder, PlainPythonListsTheTensors) {
  const std::string out = test::make_temp_dir("py") + "/out.json";
  const std::string cmd = "python3 " + test::shell_quote(std::string(KVP_SOURCE_DIR) + "/tools/trace_ls.py") +
                          " --json " + test::shell_quote(pristine() + "/seq-00000.safetensors") + " > " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto j = nlohmann::json::parse(test::read_bytes(out));
  ASSERT_EQ(j.size(), 1u);
  const auto& tensors = j[0]["tensors"];
  ASSERT_EQ(tensors.size(), 2u + 4u * 5u);
  EXPECT_EQ(tensors[0]["name"], "tokens");
  EXPECT_EQ(tensors[0]["dtype"], "I32");
  EXPECT_EQ(tensors[2]["name"], "layer.0.q");
  EXPECT_EQ(tensors[2]["shape"], nlohmann::json({small_corpus().sequences[0].size(), 8, 8}));
}

}  // namespace
}  // namespace kvp
