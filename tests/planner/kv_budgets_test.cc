#include "planner/plan/kv_budgets.h"

#include <gtest/gtest.h>

namespace kvp {
namespace {

TEST(KvBudgets, BytesOfAUniformCacheByHand) {
  // stories260K at 512 positions: 5 layers x 4 KV heads x 512 slots, each slot
  // 2 x 8 x 4 bytes of key and value + 4 (position) + 4 (score) = 72 bytes.
  const KvBudgets b = KvBudgets::uniform(5, 4, 8, 512);
  EXPECT_EQ(b.total_slots(), 5 * 4 * 512);
  EXPECT_EQ(b.slot_bytes(), 72);
  EXPECT_EQ(b.kv_bytes(), 737280);
}

TEST(KvBudgets, RaggedBudgetsAndF16) {
  KvBudgets b = KvBudgets::uniform(2, 3, 128, 0, KvDtype::kF16);
  b.budget_tokens = {1, 17, 97, 513, 0, 2};
  EXPECT_EQ(b.budget(1, 0), 513);
  EXPECT_EQ(b.total_slots(), 630);
  EXPECT_EQ(b.slot_bytes(), 2 * 128 * 2 + 8);
  EXPECT_EQ(b.kv_bytes(), 630 * 520);
}

TEST(KvBudgets, DtypeNamesRoundTripAndUnknownIsAnError) {
  for (KvDtype d : {KvDtype::kF32, KvDtype::kF16}) {
    auto parsed = parse_kv_dtype(kv_dtype_name(d));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, d);
  }
  auto bad = parse_kv_dtype("bf8");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("'bf8'"), std::string::npos);
}

}  // namespace
}  // namespace kvp
