// The chat renderings kvplan serve knows, written out rather than run through a Jinja engine:
// Llama 2 ([INST] ... [/INST]), Llama 3 (<|start_header_id|> ... <|eot_id|>) and ChatML
// (<|im_start|> ... <|im_end|>). A model's template text (GGUF tokenizer.chat_template) is
// recognised by the markers it contains; --chat-template names one instead.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "executor/model/tokenizer.h"
#include "executor/serve/openai.h"

namespace kvp::serve {

enum class ChatTemplate { kLlama2, kLlama3, kChatMl };

std::string_view chat_template_name(ChatTemplate t);
std::optional<ChatTemplate> parse_chat_template(std::string_view name);  // llama2, llama3, chatml
// The rendering a template text stands for, by its markers; none for an unknown template.
std::optional<ChatTemplate> recognise_chat_template(std::string_view template_text);

// The system message a ChatML template text inserts when the conversation opens without one
// (SmolLM2's: "You are a helpful AI assistant named SmolLM, trained by Hugging Face"): the text of a
// literal '<|im_start|>system\n...<|im_end|>' guarded by a test that messages[0] is not a system
// message, its \n escapes undone. Empty for a template without one.
std::string chatml_default_system(std::string_view template_text);

// The prompt tokens of `messages` rendered by `t` and ending where the assistant's reply begins:
// BOS as the vocabulary adds it, text segments through the tokenizer, and the template's special
// pieces (<|eot_id|>, <|im_start|>, </s>, ...) as their ids. ChatML opens with the default system
// message of the tokenizer's own template (chatml_default_system) when `messages` has none, as
// the template does. An error names a piece the vocabulary
// lacks or a message order the template cannot render.
std::variant<std::vector<int32_t>, ApiError> render_chat(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                                         const Tokenizer& tokenizer);

// The rendering around one user message, as token segments, for prompts built segment by segment
// (kvplan tasks): `open` (BOS as the vocabulary adds it, ChatML's default system turn, the user
// turn's header) goes before the message's own tokens, `close` (the end of the user turn, then
// where the assistant's reply begins) after them. An error names a piece the vocabulary lacks.
struct ChatFrame {
  std::vector<int32_t> open, close;
};
std::variant<ChatFrame, ApiError> chat_frame(ChatTemplate t, const Tokenizer& tokenizer);

}  // namespace kvp::serve
