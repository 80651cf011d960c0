#include "executor/serve/chat_template.h"

#include <fmt/format.h>

namespace kvp::serve {

std::string_view chat_template_name(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::kLlama2:
      return "llama2";
    case ChatTemplate::kLlama3:
      return "llama3";
    case ChatTemplate::kChatMl:
      return "chatml";
  }
  return "?";
}

std::optional<ChatTemplate> parse_chat_template(std::string_view name) {
  for (ChatTemplate t : {ChatTemplate::kLlama2, ChatTemplate::kLlama3, ChatTemplate::kChatMl}) {
    if (name == chat_template_name(t)) return t;
  }
  return std::nullopt;
}

std::optional<ChatTemplate> recognise_chat_template(std::string_view text) {
  if (text.find("<|start_header_id|>") != std::string_view::npos) return ChatTemplate::kLlama3;
  if (text.find("<|im_start|>") != std::string_view::npos) return ChatTemplate::kChatMl;
  if (text.find("[INST]") != std::string_view::npos) return ChatTemplate::kLlama2;
  return std::nullopt;
}

std::string chatml_default_system(std::string_view text) {
  // The template's Jinja string literal spells the newline as an escape (tokenizer_config.json's
  // text) or, once a converter has decoded it (GGUF), as the character itself.
  constexpr std::string_view kClose = "<|im_end|>";
  if (text.find("!= 'system'") == std::string_view::npos && text.find("!= \"system\"") == std::string_view::npos) return {};
  for (const std::string_view open : {std::string_view("<|im_start|>system\\n"), std::string_view("<|im_start|>system\n")}) {
    const size_t at = text.find(open);
    if (at == std::string_view::npos) continue;
    const size_t from = at + open.size(), end = text.find(kClose, from);
    if (end == std::string_view::npos) return {};
    const std::string_view body = text.substr(from, end - from);
    if (body.find_first_of("'\"{}+") != std::string_view::npos) return {};  // not a literal
    std::string out;
    for (size_t i = 0; i < body.size(); ++i) {
      if (body[i] == '\\' && i + 1 < body.size() && body[i + 1] == 'n') {
        out += '\n';
        ++i;
      } else {
        out += body[i];
      }
    }
    return out;
  }
  return {};
}

namespace {

// Tokens built segment by segment: text through the tokenizer, special pieces by id.
class Builder {
 public:
  // `bos`: start with BOS where the vocabulary adds one (a whole prompt, or its first segment).
  explicit Builder(const Tokenizer& tok, bool bos = true) : tok_(tok) {
    if (bos && tok.vocabulary().add_bos && tok.bos() >= 0) out_.push_back(tok.bos());
  }
  void text(std::string_view s) {
    if (s.empty()) return;
    const std::vector<int32_t> ids = tok_.encode(s, false);
    out_.insert(out_.end(), ids.begin(), ids.end());
  }
  void special(std::string_view piece) {
    const int32_t id = tok_.find_piece(piece);
    if (id < 0 && !error) {
      error =
          ApiError{.status = 400,
                   .message = fmt::format("the chat template needs the piece {} and the model's vocabulary has none "
                                          "(choose another with --chat-template)",
                                          piece),
                   .param = "messages"};
    }
    if (id >= 0) out_.push_back(id);
  }
  void id(int32_t token) { out_.push_back(token); }
  std::optional<ApiError> error;
  std::vector<int32_t> take() { return std::move(out_); }

 private:
  const Tokenizer& tok_;
  std::vector<int32_t> out_;
};

// ChatML's default system turn (chatml_default_system of the tokenizer's own template), when the
// conversation does not open with a system message of its own.
void default_system_turn(Builder& b, const Tokenizer& tokenizer, bool has_system) {
  const std::string system = chatml_default_system(tokenizer.vocabulary().chat_template);
  if (system.empty() || has_system) return;
  b.special("<|im_start|>");
  b.text("system\n" + system);
  b.special("<|im_end|>");
  b.text("\n");
}

// Where the assistant's reply begins (Llama 2 has no header: its reply follows [/INST]).
void assistant_header(Builder& b, ChatTemplate t) {
  if (t == ChatTemplate::kLlama3) {
    b.special("<|start_header_id|>");
    b.text("assistant");
    b.special("<|end_header_id|>");
    b.text("\n\n");
  } else if (t == ChatTemplate::kChatMl) {
    b.special("<|im_start|>");
    b.text("assistant\n");
  }
}

}  // namespace

std::variant<std::vector<int32_t>, ApiError> render_chat(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                                         const Tokenizer& tokenizer) {
  Builder b(tokenizer);
  switch (t) {
    case ChatTemplate::kLlama3:
      // <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> ..., then the assistant's header.
      for (const ChatMessage& m : messages) {
        b.special("<|start_header_id|>");
        b.text(m.role);
        b.special("<|end_header_id|>");
        b.text("\n\n" + m.content);
        b.special("<|eot_id|>");
      }
      assistant_header(b, t);
      break;
    case ChatTemplate::kChatMl:
      default_system_turn(b, tokenizer, !messages.empty() && messages[0].role == "system");
      for (const ChatMessage& m : messages) {
        b.special("<|im_start|>");
        b.text(m.role + "\n" + m.content);
        b.special("<|im_end|>");
        b.text("\n");
      }
      assistant_header(b, t);
      break;
    case ChatTemplate::kLlama2: {
      // [INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s><s>[INST] user [/INST]
      // The system message joins the first user turn; turns must alternate user, assistant.
      size_t i = 0;
      std::string system;
      if (!messages.empty() && messages[0].role == "system") system = messages[i++].content;
      bool first = true;
      for (size_t k = 0; i < messages.size(); ++i, ++k) {
        const ChatMessage& m = messages[i];
        if (m.role != (k % 2 == 0 ? "user" : "assistant")) {
          return ApiError{.status = 400,
                          .message =
                              "the llama2 chat template needs an optional system message, then user and "
                              "assistant turns alternating from user",
                          .param = fmt::format("messages[{}].role", i)};
        }
        if (m.role == "user") {
          if (!first) b.id(tokenizer.bos());
          std::string turn = "[INST] ";
          if (first && !system.empty()) turn += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
          b.text(turn + m.content + " [/INST]");
          first = false;
        } else {
          b.text(" " + m.content + " ");
          b.id(tokenizer.eos());  // </s>: EOS and BOS by id, however the vocabulary spells them
        }
      }
      if (messages.back().role != "user") {
        return ApiError{.status = 400,
                        .message = "the llama2 chat template needs the last message from the user",
                        .param = "messages"};
      }
      break;
    }
  }
  if (b.error) return *b.error;
  return b.take();
}

std::variant<ChatFrame, ApiError> chat_frame(ChatTemplate t, const Tokenizer& tokenizer) {
  Builder open(tokenizer), close(tokenizer, false);
  switch (t) {
    case ChatTemplate::kLlama3:
      open.special("<|start_header_id|>");
      open.text("user");
      open.special("<|end_header_id|>");
      open.text("\n\n");
      close.special("<|eot_id|>");
      break;
    case ChatTemplate::kChatMl:
      default_system_turn(open, tokenizer, false);
      open.special("<|im_start|>");
      open.text("user\n");
      close.special("<|im_end|>");
      close.text("\n");
      break;
    case ChatTemplate::kLlama2:
      open.text("[INST] ");
      close.text(" [/INST]");
      break;
  }
  assistant_header(close, t);
  if (open.error) return *open.error;
  if (close.error) return *close.error;
  return ChatFrame{.open = open.take(), .close = close.take()};
}

}  // namespace kvp::serve
