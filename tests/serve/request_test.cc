// kvplan serve's pieces without the network: stop strings and UTF-8 hold-back in streamed text,
// the OpenAI request parser (valid requests accepted, each bad field refused by name), the chat
// renderings against hand-written token sequences, and the Prometheus histogram.
#include <gtest/gtest.h>

#include <variant>

#include "executor/serve/chat_template.h"
#include "executor/serve/metrics.h"
#include "executor/serve/openai.h"
#include "executor/serve/stop_matcher.h"
#include "tests/support/test_support.h"

namespace kvp::serve {
namespace {

std::string feed_all(StopMatcher& m, const std::vector<std::string>& pieces, std::vector<std::string>* emitted) {
  std::string out;
  for (const std::string& p : pieces) {
    std::string e = m.feed(p);
    emitted->push_back(e);
    out += e;
  }
  if (!m.stopped()) out += m.flush();
  return out;
}

TEST(StopMatcher, PassesTextThroughWithoutStops) {
  StopMatcher m({});
  std::vector<std::string> emitted;
  EXPECT_EQ(feed_all(m, {"Once", " upon", " a time"}, &emitted), "Once upon a time");
  EXPECT_EQ(emitted, (std::vector<std::string>{"Once", " upon", " a time"}));
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, CutsBeforeAStopSpanningPieces) {
  StopMatcher m({"The end"});
  std::vector<std::string> emitted;
  EXPECT_EQ(feed_all(m, {"happy. T", "he e", "nd. More"}, &emitted), "happy. ");
  EXPECT_TRUE(m.stopped());
  // "T" and "he e" may begin the stop: held back, never emitted.
  EXPECT_EQ(emitted, (std::vector<std::string>{"happy. ", "", ""}));
  EXPECT_EQ(m.text(), "happy. ");
  EXPECT_EQ(m.feed("ignored"), "");
}

TEST(StopMatcher, ReleasesAHeldPrefixThatDoesNotStop) {
  StopMatcher m({"\n\n", "END"});
  std::vector<std::string> emitted;
  EXPECT_EQ(feed_all(m, {"a\n", "b E", "Nx"}, &emitted), "a\nb ENx");
  EXPECT_EQ(emitted, (std::vector<std::string>{"a", "\nb ", "ENx"}));
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, TheEarliestOfSeveralStopsWins) {
  StopMatcher m({"cat", "a c"});
  std::vector<std::string> emitted;
  EXPECT_EQ(feed_all(m, {"a cat"}, &emitted), "");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcher, HoldsBackAnUnfinishedUtf8Character) {
  StopMatcher m({});
  // "é" is C3 A9, "€" is E2 82 AC: byte-fallback tokens give them one byte at a time.
  EXPECT_EQ(m.feed("caf\xC3"), "caf");
  EXPECT_EQ(m.feed("\xA9 "), "\xC3\xA9 ");
  EXPECT_EQ(m.feed("\xE2\x82"), "");
  EXPECT_EQ(m.feed("\xAC"), "\xE2\x82\xAC");
  EXPECT_EQ(m.feed("\xE2"), "");
  EXPECT_EQ(m.flush(), "\xE2");  // the end: what is held goes out as it is
}

TEST(StopMatcher, CompleteUtf8Prefix) {
  EXPECT_EQ(complete_utf8_prefix("abc"), 3u);
  EXPECT_EQ(complete_utf8_prefix("ab\xC3"), 2u);
  EXPECT_EQ(complete_utf8_prefix("ab\xC3\xA9"), 4u);
  EXPECT_EQ(complete_utf8_prefix("\xF0\x9F\x98"), 0u);
  EXPECT_EQ(complete_utf8_prefix("\xF0\x9F\x98\x80"), 4u);
  EXPECT_EQ(complete_utf8_prefix(""), 0u);
}

CompletionParams ok(const std::string& body, bool chat = false) {
  auto r = parse_completion(body, chat);
  if (auto* e = std::get_if<ApiError>(&r)) ADD_FAILURE() << body << ": " << e->message;
  return std::holds_alternative<CompletionParams>(r) ? std::get<CompletionParams>(r) : CompletionParams{};
}

ApiError refused(const std::string& body, bool chat = false) {
  auto r = parse_completion(body, chat);
  EXPECT_TRUE(std::holds_alternative<ApiError>(r)) << body << " was accepted";
  return std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r) : ApiError{};
}

TEST(ParseCompletion, AcceptsTheOpenAiFields) {
  const CompletionParams p = ok(R"({"model":"stories260K","prompt":"Once","max_tokens":40,"temperature":0.7,
      "top_p":0.9,"seed":7,"stop":["\n","The end"],"stream":true,"stream_options":{"include_usage":true},"ignore_eos":true,
      "n":1,"logprobs":null,"user":"x","kvplan":{"plan":"vatp25"}})");
  EXPECT_EQ(p.model, "stories260K");
  EXPECT_EQ(p.prompt_text, "Once");
  EXPECT_EQ(p.max_tokens, 40);
  EXPECT_FLOAT_EQ(p.temperature, 0.7f);
  EXPECT_FLOAT_EQ(p.top_p, 0.9f);
  EXPECT_EQ(p.seed, 7u);
  EXPECT_EQ(p.stop, (std::vector<std::string>{"\n", "The end"}));
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
  EXPECT_TRUE(p.ignore_eos);
  EXPECT_EQ(p.plan, "vatp25");
  EXPECT_FALSE(p.keep);
}

TEST(ParseCompletion, DefaultsAndPromptForms) {
  const CompletionParams d = ok(R"({"prompt":"x"})");
  EXPECT_EQ(d.max_tokens, 16);
  EXPECT_FLOAT_EQ(d.temperature, 1.0f);
  EXPECT_FLOAT_EQ(d.top_p, 1.0f);
  EXPECT_FALSE(d.seed);
  EXPECT_FALSE(d.stream);
  EXPECT_FALSE(d.ignore_eos);
  EXPECT_EQ(ok(R"({"prompt":["one"]})").prompt_text, "one");
  EXPECT_EQ(ok(R"({"prompt":[1, 403, 407]})").prompt_tokens, (std::vector<int32_t>{1, 403, 407}));
  EXPECT_EQ(ok(R"({"prompt":"x","stop":"\n"})").stop, std::vector<std::string>{"\n"});
  EXPECT_DOUBLE_EQ(*ok(R"({"prompt":"x","kvplan":{"keep":0.25}})").keep, 0.25);
  const CompletionParams chat = ok(R"({"messages":[{"role":"system","content":"Be brief."},
      {"role":"user","content":"Hi"}],"max_completion_tokens":5})",
                                   true);
  ASSERT_EQ(chat.messages.size(), 2u);
  EXPECT_EQ(chat.messages[1].content, "Hi");
  EXPECT_EQ(chat.max_tokens, 5);
}

TEST(ParseCompletion, RefusesEachBadFieldByName) {
  struct Case {
    std::string body, param;
  };
  const std::vector<Case> cases = {
      {R"({"max_tokens":4})", "prompt"},
      {R"({"prompt":5})", "prompt"},
      {R"({"prompt":["a","b"]})", "prompt"},
      {R"({"prompt":[1,-2]})", "prompt"},
      {R"({"prompt":[1,2.5]})", "prompt"},
      {R"({"prompt":"x","max_tokens":0})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":"9"})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":1.5})", "max_tokens"},
      {R"({"prompt":"x","temperature":3})", "temperature"},
      {R"({"prompt":"x","temperature":"hot"})", "temperature"},
      {R"({"prompt":"x","top_p":0})", "top_p"},
      {R"({"prompt":"x","top_p":1.5})", "top_p"},
      {R"({"prompt":"x","seed":-1})", "seed"},
      {R"({"prompt":"x","n":2})", "n"},
      {R"({"prompt":"x","stream":"yes"})", "stream"},
      {R"({"prompt":"x","ignore_eos":1})", "ignore_eos"},
      {R"({"prompt":"x","stream_options":{"include_usage":1}})", "stream_options.include_usage"},
      {R"({"prompt":"x","stop":[1]})", "stop"},
      {R"({"prompt":"x","stop":["a","b","c","d","e"]})", "stop"},
      {R"({"prompt":"x","model":3})", "model"},
      {R"({"prompt":"x","kvplan":"vatp"})", "kvplan"},
      {R"({"prompt":"x","kvplan":{"keep":0}})", "kvplan.keep"},
      {R"({"prompt":"x","kvplan":{"keep":1.5}})", "kvplan.keep"},
      {R"({"prompt":"x","kvplan":{"plan":7}})", "kvplan.plan"},
      {R"({"prompt":"x","kvplan":{"plan":"a","keep":0.5}})", "kvplan.keep"},
  };
  for (const Case& c : cases) {
    const ApiError e = refused(c.body);
    EXPECT_EQ(e.status, 400) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body << ": " << e.message;
    EXPECT_NE(e.message.find(c.param.substr(c.param.rfind('.') + 1)), std::string::npos) << e.message;
  }
  EXPECT_EQ(refused(R"({"messages":[]})", true).param, "messages");
  EXPECT_EQ(refused(R"({"messages":[{"role":"robot","content":"x"}]})", true).param, "messages[0].role");
  EXPECT_EQ(refused(R"({"messages":[{"role":"user"}]})", true).param, "messages[0]");
}

TEST(ParseCompletion, RefusesBodiesThatAreNotJsonObjectsOrUtf8) {
  EXPECT_NE(refused("{\"prompt\": ").message.find("not valid JSON"), std::string::npos);
  EXPECT_NE(refused("[1,2]").message.find("JSON object"), std::string::npos);
  EXPECT_NE(refused("{\"prompt\": \"caf\xC3\"}").message.find("UTF-8"), std::string::npos);
  EXPECT_NE(refused("").message.find("not valid JSON"), std::string::npos);
  // A number beyond double's range (found by tools/fuzz.sh: it threw out_of_range, not parse_error).
  EXPECT_NE(refused(R"({"prompt":"x","max_tokens":1e999})").message.find("not valid JSON"), std::string::npos);
  // The same bytes, valid: accepted.
  EXPECT_EQ(ok("{\"prompt\": \"caf\xC3\xA9\"}").prompt_text, "caf\xC3\xA9");
}

TEST(ErrorBody, IsAnOpenAiErrorObject) {
  EXPECT_EQ(error_body(ApiError{.status = 400, .message = "bad", .param = "top_p"}),
            R"({"error":{"code":null,"message":"bad","param":"top_p","type":"invalid_request_error"}})");
}

TEST(ChatTemplate, RecognisedByItsMarkers) {
  EXPECT_EQ(recognise_chat_template("{% for m in messages %}<|start_header_id|>{{ m.role }}"), ChatTemplate::kLlama3);
  EXPECT_EQ(recognise_chat_template("{{'<|im_start|>' + message['role']}}"), ChatTemplate::kChatMl);
  EXPECT_EQ(recognise_chat_template("{{ bos_token + '[INST] ' + content + ' [/INST]' }}"), ChatTemplate::kLlama2);
  EXPECT_EQ(recognise_chat_template("{{'<|user|>' + message['content'] + '<|end|>'}}"), std::nullopt);  // phi-3
  EXPECT_EQ(recognise_chat_template(""), std::nullopt);
  EXPECT_EQ(parse_chat_template("chatml"), ChatTemplate::kChatMl);
  EXPECT_EQ(parse_chat_template("vicuna"), std::nullopt);
}

std::vector<int32_t> rendered(ChatTemplate t, const std::vector<ChatMessage>& m, const Tokenizer& tok) {
  auto r = render_chat(t, m, tok);
  if (auto* e = std::get_if<ApiError>(&r)) ADD_FAILURE() << e->message;
  return std::holds_alternative<ApiError>(r) ? std::vector<int32_t>{} : std::get<std::vector<int32_t>>(r);
}

std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(ChatTemplate, Llama2TurnsAsTheReferenceTemplateWritesThem) {
  const Tokenizer& tok = test::default_model().tokenizer;
  const std::vector<ChatMessage> m = {{"system", "Be kind."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}};
  const std::vector<int32_t> want = concat({tok.encode("[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST]"),
                                            tok.encode(" Hello ", false),
                                            {tok.eos(), tok.bos()},
                                            tok.encode("[INST] Bye [/INST]", false)});
  EXPECT_EQ(rendered(ChatTemplate::kLlama2, m, tok), want);
  auto bad = render_chat(ChatTemplate::kLlama2, {{"user", "a"}, {"user", "b"}}, tok);
  ASSERT_TRUE(std::holds_alternative<ApiError>(bad));
  EXPECT_EQ(std::get<ApiError>(bad).param, "messages[1].role");
  // stories260K's vocabulary has no <|im_start|>: the error names the piece.
  auto missing = render_chat(ChatTemplate::kChatMl, {{"user", "a"}}, tok);
  ASSERT_TRUE(std::holds_alternative<ApiError>(missing));
  EXPECT_NE(std::get<ApiError>(missing).message.find("<|im_start|>"), std::string::npos);
}

// A small vocabulary with the special pieces of ChatML and Llama 3 as control tokens.
Tokenizer chat_vocabulary(std::string chat_template = {}) {
  Vocabulary v;
  v.chat_template = std::move(chat_template);
  v.kind = TokenizerKind::kSentencePiece;
  v.pieces = {"<unk>", "<s>", "</s>"};
  for (int b = 0; b < 256; ++b) v.pieces.push_back(fmt::format("<0x{:02X}>", b));
  v.types.assign(v.pieces.size(), TokenType::kByte);
  v.types[0] = TokenType::kUnknown;
  v.types[1] = v.types[2] = TokenType::kControl;
  for (const char* s : {"<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}) {
    v.pieces.push_back(s);
    v.types.push_back(TokenType::kControl);
  }
  v.scores.assign(v.pieces.size(), 0.0f);
  v.bos = 1;
  v.eos = 2;
  auto t = Tokenizer::create(std::move(v), "test vocabulary");
  EXPECT_TRUE(t.ok()) << t.error().message();
  return std::move(t).value();
}

TEST(ChatTemplate, ChatMlAndLlama3PutSpecialPiecesAsIds) {
  const Tokenizer tok = chat_vocabulary();
  const int32_t im_start = tok.find_piece("<|im_start|>"), im_end = tok.find_piece("<|im_end|>");
  ASSERT_GE(im_start, 0);
  const std::vector<ChatMessage> m = {{"system", "S"}, {"user", "U"}};
  EXPECT_EQ(rendered(ChatTemplate::kChatMl, m, tok), concat({{tok.bos(), im_start},
                                                             tok.encode("system\nS", false),
                                                             {im_end},
                                                             tok.encode("\n", false),
                                                             {im_start},
                                                             tok.encode("user\nU", false),
                                                             {im_end},
                                                             tok.encode("\n", false),
                                                             {im_start},
                                                             tok.encode("assistant\n", false)}));
  const int32_t sh = tok.find_piece("<|start_header_id|>"), eh = tok.find_piece("<|end_header_id|>"),
                eot = tok.find_piece("<|eot_id|>");
  EXPECT_EQ(rendered(ChatTemplate::kLlama3, {{"user", "U"}}, tok), concat({{tok.bos(), sh},
                                                                           tok.encode("user", false),
                                                                           {eh},
                                                                           tok.encode("\n\nU", false),
                                                                           {eot, sh},
                                                                           tok.encode("assistant", false),
                                                                           {eh},
                                                                           tok.encode("\n\n", false)}));
}

// SmolLM2-135M-Instruct's template (tokenizer_config.json's text, Apache-2.0); its GGUF holds the
// same with each \n escape decoded to a newline.
constexpr std::string_view kSmolLm2Template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou "
    "are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";

TEST(ChatTemplate, ChatMlOpensWithTheTemplatesDefaultSystemMessage) {
  EXPECT_EQ(recognise_chat_template(kSmolLm2Template), ChatTemplate::kChatMl);
  const std::string system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
  EXPECT_EQ(chatml_default_system(kSmolLm2Template), system);
  std::string decoded(kSmolLm2Template);
  for (size_t at; (at = decoded.find("\\n")) != std::string::npos;) decoded.replace(at, 2, "\n");
  EXPECT_EQ(chatml_default_system(decoded), system);
  EXPECT_EQ(chatml_default_system("{{'<|im_start|>' + message['role']}}"), "");  // none to insert
  // A system turn that is not a literal (a variable) is not taken for one.
  EXPECT_EQ(chatml_default_system("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n' + sys + "
                                  "'<|im_end|>' }}{% endif %}"),
            "");
  const Tokenizer tok = chat_vocabulary(std::string(kSmolLm2Template));
  const int32_t im_start = tok.find_piece("<|im_start|>"), im_end = tok.find_piece("<|im_end|>");
  const std::vector<int32_t> user_turn = concat({{im_start}, tok.encode("user\nU", false), {im_end},
                                                 tok.encode("\n", false), {im_start}, tok.encode("assistant\n", false)});
  EXPECT_EQ(rendered(ChatTemplate::kChatMl, {{"user", "U"}}, tok),
            concat({{tok.bos(), im_start}, tok.encode("system\n" + system, false), {im_end}, tok.encode("\n", false),
                    user_turn}));
  // The conversation's own system message replaces it.
  EXPECT_EQ(rendered(ChatTemplate::kChatMl, {{"system", "S"}, {"user", "U"}}, tok),
            concat({{tok.bos(), im_start}, tok.encode("system\nS", false), {im_end}, tok.encode("\n", false), user_turn}));
}

TEST(Histogram, CumulativeBucketsSumAndCount) {
  Histogram h({0.1, 0.2, 0.4});
  for (double v : {0.05, 0.1, 0.15, 0.5, 0.3}) h.observe(v);
  std::string out;
  h.render("x", &out);
  EXPECT_EQ(out,
            "x_bucket{le=\"0.1\"} 2\nx_bucket{le=\"0.2\"} 3\nx_bucket{le=\"0.4\"} 4\nx_bucket{le=\"+Inf\"} 5\n"
            "x_sum 1.1\nx_count 5\n");
}

}  // namespace
}  // namespace kvp::serve
