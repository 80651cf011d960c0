#include "executor/decoder.h"

namespace kvp {

void Decoder::forward(const StepRows& rows, std::span<const int32_t> logit_rows,
                      std::vector<float>* logits, ForwardObserver* observer) {
  Backend& b = backend_;
  b.begin_step(rows);
  b.embed();
  for (int l = 0; l < config().n_layers; ++l) {
    // Attention block: x += Wo · attention(rope(Wq·n(x)), rope(Wk·n(x)), Wv·n(x)).
    if (observer) observer->before_layer(l, b);
    b.rmsnorm(Act::kX, Act::kXb, Weight::kRmsAtt, l);
    b.matmul(Weight::kWq, l, Act::kXb, Act::kQ);
    b.matmul(Weight::kWk, l, Act::kXb, Act::kK);
    b.matmul(Weight::kWv, l, Act::kXb, Act::kV);
    b.rope(Act::kQ);
    b.rope(Act::kK);
    if (observer) observer->after_qkv(l, b);
    b.attention(l);
    if (observer) observer->after_attention(l, b);
    b.matmul_add(Weight::kWo, l, Act::kAttn, Act::kX);
    // Feed-forward block: x += W2 · (silu(W1·n(x)) ⊙ W3·n(x)).
    b.rmsnorm(Act::kX, Act::kXb, Weight::kRmsFfn, l);
    b.matmul(Weight::kW1, l, Act::kXb, Act::kHb);
    b.matmul(Weight::kW3, l, Act::kXb, Act::kHb2);
    b.swiglu(Act::kHb, Act::kHb2);
    b.matmul_add(Weight::kW2, l, Act::kHb, Act::kX);
  }
  b.select_rows(logit_rows);
  b.rmsnorm(Act::kX, Act::kXb, Weight::kRmsFinal, -1);
  b.matmul(Weight::kClassifier, -1, Act::kXb, Act::kLogits);
  if (logits) {
    logits->resize(logit_rows.size() * static_cast<size_t>(config().vocab_size));
    b.read(Act::kLogits, *logits);
  }
}

}  // namespace kvp
