// Writes the fuzzers' seed corpora into CORPUS_DIR/{gguf,safetensors,tokenizer_json,task_trace}: a
// tiny random model as GGUF (f32 and q8_0) and as a Hugging Face folder's safetensors and
// tokenizer.json, a byte-level BPE tokenizer.json, and a small task trace. tools/fuzz.sh runs it
// before every fuzzing run.
#include <cstdio>
#include <filesystem>

#include "executor/model/gguf_format.h"
#include "executor/model/model_convert.h"
#include "planner/task_trace.h"

int main(int argc, char** argv) {
  using namespace kvp;
  namespace fs = std::filesystem;
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds CORPUS_DIR\n");
    return 2;
  }
  const fs::path dir = argv[1];
  ModelConfig c{.dim = 32, .hidden_dim = 64, .n_layers = 1, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 300, .seq_len = 64,
                .shared_classifier = false};
  const ModelWeights w = random_typed_weights(c, 1, WeightType::kF32);
  const Tokenizer tok = synthetic_tokenizer(c.vocab_size);
  fs::create_directories(dir / "gguf");
  fs::create_directories(dir / "safetensors");
  fs::create_directories(dir / "tokenizer_json");
  auto check = [](Status s) {
    if (!s.ok()) {
      std::fprintf(stderr, "make_seeds: %s\n", s.error().message().c_str());
      std::exit(1);
    }
  };
  check(save_gguf((dir / "gguf" / "tiny-f32.gguf").string(), w, tok));
  check(save_gguf((dir / "gguf" / "tiny-q8_0.gguf").string(), random_typed_weights(c, 2, WeightType::kQ8_0), tok));
  const fs::path hf = dir / "hf-tmp";
  fs::remove_all(hf);
  check(save_hf(hf.string(), with_rope_style(random_typed_weights(c, 3, WeightType::kBF16), RopeStyle::kHalf), tok));
  fs::rename(hf / "model.safetensors", dir / "safetensors" / "tiny-bf16.safetensors");
  fs::rename(hf / "tokenizer.json", dir / "tokenizer_json" / "sentencepiece.json");
  fs::remove_all(hf);
  // A small byte-level BPE vocabulary: some of GPT-2's byte characters, a few merges, Llama 3's Split regex.
  Vocabulary v;
  v.kind = TokenizerKind::kBytePair;
  // GPT-2's printable byte characters for "a".."z", " " (Ġ) and a few merged pieces.
  for (char ch = 'a'; ch <= 'z'; ++ch) v.pieces.push_back(std::string(1, ch));
  v.pieces.push_back("\xC4\xA0");  // Ġ
  v.pieces.push_back("\xC4\xA0t");
  v.pieces.push_back("he");
  v.pieces.push_back("\xC4\xA0the");
  v.pieces.push_back("<|endoftext|>");
  v.types.assign(v.pieces.size(), TokenType::kNormal);
  v.types.back() = TokenType::kControl;
  v.merges = {"\xC4\xA0 t", "h e", "\xC4\xA0t he"};
  v.pre_regexes = pre_tokenizer_regexes("llama-bpe").value();
  v.pre = "llama-bpe";
  v.add_bos = false;
  v.eos = static_cast<int32_t>(v.pieces.size()) - 1;
  Result<Tokenizer> bpe = Tokenizer::create(v, "seed");
  if (!bpe.ok()) {
    std::fprintf(stderr, "make_seeds: %s\n", bpe.error().message().c_str());
    return 1;
  }
  ModelConfig bc = c;
  bc.vocab_size = static_cast<int>(v.pieces.size());
  bc.rope_style = RopeStyle::kHalf;
  const fs::path hf2 = dir / "hf-tmp2";
  fs::remove_all(hf2);
  check(save_hf(hf2.string(), random_typed_weights(bc, 4, WeightType::kF16), *bpe));
  fs::rename(hf2 / "tokenizer.json", dir / "tokenizer_json" / "byte-level.json");
  fs::rename(hf2 / "model.safetensors", dir / "safetensors" / "tiny-f16.safetensors");
  fs::remove_all(hf2);
  // A task trace: one layer, two KV heads, two instances cut at 5 (one with a needle), two scorers.
  fs::create_directories(dir / "task_trace");
  TaskTrace tt{.model_fingerprint = std::string(64, 'a'), .n_layers = 1, .n_kv_heads = 2, .cut_point = "agnostic",
               .tasks = "t.jsonl", .scorers = {TaskTraceScorer{"h2o", {}}, TaskTraceScorer{"vatp", {}}}};
  for (int i = 0; i < 2; ++i) {
    TaskTraceInstance inst{.id = "niah_single-8-" + std::to_string(i), .family = "niah_single", .length = 8,
                           .prompt_tokens = 8, .cut = 5, .full_score = 1.0 * i, .answer_rows = 2};
    if (i == 1) inst.needles = {{1, 3}};
    inst.score = {std::vector<float>(10, 0.5f), std::vector<float>(10, 0.25f)};
    inst.aux = {{}, std::vector<float>(10, 2.0f)};
    inst.answer_attention.assign(10, 0.1f);
    tt.instances.push_back(inst);
  }
  check(tt.save((dir / "task_trace" / "small.kvtt").string()));
  std::printf("seeds written to %s\n", dir.c_str());
  return 0;
}
