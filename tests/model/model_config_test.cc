#include "model/model_config.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mor {
namespace {

using json = nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A valid MoR config: middle_cycle, L = 2 + 2 x 3.
json BaseMor() {
  return json{{"model_type", "mor"},      {"hidden_size", 64},
              {"intermediate_size", 128}, {"num_hidden_layers", 8},
              {"num_attention_heads", 4}, {"num_key_value_heads", 2},
              {"vocab_size", 100},        {"max_position_embeddings", 256},
              {"num_recursions", 3},      {"sharing_strategy", "middle_cycle"}};
}

// The minimal vanilla Llama config (required fields only).
json BaseLlama() {
  return json{{"hidden_size", 64},
              {"intermediate_size", 128},
              {"num_hidden_layers", 4},
              {"num_attention_heads", 4},
              {"vocab_size", 100}};
}

absl::StatusOr<ModelConfig> Parse(const json& j) {
  return ModelConfig::FromJson(j.dump(), "test.json");
}

ModelConfig ParseOk(const json& j) {
  absl::StatusOr<ModelConfig> c = Parse(j);
  EXPECT_TRUE(c.ok()) << c.status() << "\n" << j.dump();
  return c.ok() ? *c : ModelConfig();
}

// `base` with `patch` merged in (RFC 7386: null removes a key).
json Patched(const json& base, const json& patch) {
  json j = base;
  j.merge_patch(patch);
  return j;
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.hidden_act, b.hidden_act);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.num_recursions, b.num_recursions);
  EXPECT_EQ(a.sharing, b.sharing);
  EXPECT_EQ(a.router_type, b.router_type);
  EXPECT_EQ(a.router_arch, b.router_arch);
  EXPECT_EQ(a.router_activation, b.router_activation);
  EXPECT_EQ(a.router_alpha, b.router_alpha);
  EXPECT_EQ(a.router_threshold, b.router_threshold);
  EXPECT_EQ(a.kv_mode, b.kv_mode);
}

// ---------------------------------------------------------------------------
// Defaults

TEST(ModelConfigTest, VanillaDefaults) {
  ModelConfig c = ParseOk(BaseLlama());
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.num_recursions, 1);
  EXPECT_EQ(c.sharing, SharingStrategy::kNone);
  EXPECT_TRUE(c.is_vanilla());
  EXPECT_FALSE(c.has_router());
  EXPECT_EQ(c.router_type, RouterType::kExpertChoice);
  EXPECT_EQ(c.router_arch, RouterArch::kLinear);
  EXPECT_EQ(c.router_activation, RouterActivation::kSigmoid);
  EXPECT_DOUBLE_EQ(c.router_alpha, 0.1);
  EXPECT_DOUBLE_EQ(c.router_threshold, 0.5);
  EXPECT_EQ(c.kv_mode, KvMode::kRecursionWise);
}

TEST(ModelConfigTest, ExplicitLlamaFields) {
  ModelConfig c = ParseOk(Patched(BaseLlama(), {{"num_key_value_heads", 1},
                                                {"head_dim", 32},
                                                {"rms_norm_eps", 1e-6},
                                                {"rope_theta", 500000.0},
                                                {"max_position_embeddings", 8192},
                                                {"tie_word_embeddings", false},
                                                {"hidden_act", "silu"},
                                                {"bos_token_id", 1},
                                                {"eos_token_id", 2},
                                                {"attention_bias", false},
                                                {"torch_dtype", "bfloat16"}}));
  EXPECT_EQ(c.num_key_value_heads, 1);
  EXPECT_EQ(c.head_dim, 32);  // explicit head_dim need not be hidden / heads
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(2));
}

TEST(ModelConfigTest, HeadDimExplicitAllowsIndivisibleHidden) {
  ModelConfig c = ParseOk(Patched(BaseLlama(), {{"hidden_size", 66}, {"head_dim", 16}}));
  EXPECT_EQ(c.head_dim, 16);
}

TEST(ModelConfigTest, EosTokenIdForms) {
  EXPECT_THAT(ParseOk(Patched(BaseLlama(), {{"eos_token_id", 7}})).eos_token_ids, ElementsAre(7));
  EXPECT_THAT(ParseOk(Patched(BaseLlama(), {{"eos_token_id", {7, 9, 11}}})).eos_token_ids,
              ElementsAre(7, 9, 11));
  EXPECT_TRUE(
      ParseOk(Patched(BaseLlama(), {{"eos_token_id", json::array()}})).eos_token_ids.empty());
  json with_null = BaseLlama();
  with_null["eos_token_id"] = nullptr;
  with_null["bos_token_id"] = nullptr;
  ModelConfig c = ParseOk(with_null);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.bos_token_id, -1);
}

TEST(ModelConfigTest, LlamaWithoutMorFieldsIsVanilla) {
  ModelConfig c = ParseOk(Patched(BaseLlama(), {{"model_type", "llama"}}));
  EXPECT_TRUE(c.is_vanilla());
  EXPECT_EQ(c.num_recursions, 1);
}

TEST(ModelConfigTest, MorWithSharingNoneIsVanilla) {
  ModelConfig c =
      ParseOk(Patched(BaseMor(), {{"sharing_strategy", "none"}, {"num_recursions", 1}}));
  EXPECT_TRUE(c.is_vanilla());
  EXPECT_EQ(c.model_type, "mor");
}

TEST(ModelConfigTest, ModelTypeDefaultsFollowSharingStrategy) {
  json j = BaseMor();
  j.erase("model_type");
  EXPECT_EQ(ParseOk(j).model_type, "mor");
  EXPECT_EQ(ParseOk(BaseLlama()).model_type, "llama");
  EXPECT_EQ(ParseOk(Patched(BaseLlama(), {{"sharing_strategy", "none"}})).model_type, "llama");
  // An explicit model_type is kept as given.
  EXPECT_EQ(ParseOk(Patched(BaseMor(), {{"model_type", "llama"}})).model_type, "llama");
}

TEST(ModelConfigTest, ExpertChoiceDefaults) {
  ModelConfig c = ParseOk(BaseMor());
  EXPECT_FALSE(c.is_vanilla());
  EXPECT_TRUE(c.has_router());
  EXPECT_EQ(c.num_recursions, 3);
  EXPECT_EQ(c.sharing, SharingStrategy::kMiddleCycle);
  EXPECT_EQ(c.router_type, RouterType::kExpertChoice);
  EXPECT_EQ(c.router_arch, RouterArch::kLinear);
  EXPECT_EQ(c.router_activation, RouterActivation::kSigmoid);
  EXPECT_DOUBLE_EQ(c.router_alpha, 0.1);
  EXPECT_DOUBLE_EQ(c.router_threshold, 0.5);
  EXPECT_EQ(c.kv_mode, KvMode::kRecursionWise);
}

TEST(ModelConfigTest, TokenChoiceDefaultsToSoftmaxAndAlphaOne) {
  ModelConfig c = ParseOk(Patched(BaseMor(), {{"router_type", "token_choice"}}));
  EXPECT_EQ(c.router_activation, RouterActivation::kSoftmax);
  EXPECT_DOUBLE_EQ(c.router_alpha, 1.0);
}

TEST(ModelConfigTest, TokenChoiceSigmoidDefaultsToAlphaPointOne) {
  ModelConfig c = ParseOk(
      Patched(BaseMor(), {{"router_type", "token_choice"}, {"router_activation", "sigmoid"}}));
  EXPECT_EQ(c.router_activation, RouterActivation::kSigmoid);
  EXPECT_DOUBLE_EQ(c.router_alpha, 0.1);
}

TEST(ModelConfigTest, ExplicitRouterFields) {
  ModelConfig c = ParseOk(Patched(BaseMor(), {{"router_type", "token_choice"},
                                              {"router_arch", "mlp"},
                                              {"router_activation", "softmax"},
                                              {"router_alpha", 0.25},
                                              {"router_threshold", 0.9},
                                              {"kv_mode", "recursive_sharing"},
                                              {"sharing_strategy", "middle_sequence"}}));
  EXPECT_EQ(c.router_type, RouterType::kTokenChoice);
  EXPECT_EQ(c.router_arch, RouterArch::kMlp);
  EXPECT_EQ(c.router_activation, RouterActivation::kSoftmax);
  EXPECT_DOUBLE_EQ(c.router_alpha, 0.25);
  EXPECT_DOUBLE_EQ(c.router_threshold, 0.9);
  EXPECT_EQ(c.kv_mode, KvMode::kRecursiveSharing);
  EXPECT_EQ(c.sharing, SharingStrategy::kMiddleSequence);
}

TEST(ModelConfigTest, AllStrategiesAcceptMatchingLayerCounts) {
  for (const auto& [strategy, layers] : std::vector<std::pair<std::string, int>>{
           {"cycle", 6}, {"sequence", 6}, {"middle_cycle", 8}, {"middle_sequence", 5}}) {
    SCOPED_TRACE(strategy);
    ModelConfig c = ParseOk(
        Patched(BaseMor(), {{"sharing_strategy", strategy}, {"num_hidden_layers", layers}}));
    EXPECT_EQ(SharingStrategyName(c.sharing), strategy);
  }
}

TEST(ModelConfigTest, EnumNames) {
  EXPECT_EQ(SharingStrategyName(SharingStrategy::kNone), "none");
  EXPECT_EQ(SharingStrategyName(SharingStrategy::kCycle), "cycle");
  EXPECT_EQ(SharingStrategyName(SharingStrategy::kSequence), "sequence");
  EXPECT_EQ(SharingStrategyName(SharingStrategy::kMiddleCycle), "middle_cycle");
  EXPECT_EQ(SharingStrategyName(SharingStrategy::kMiddleSequence), "middle_sequence");
  EXPECT_EQ(RouterTypeName(RouterType::kExpertChoice), "expert_choice");
  EXPECT_EQ(RouterTypeName(RouterType::kTokenChoice), "token_choice");
  EXPECT_EQ(RouterArchName(RouterArch::kLinear), "linear");
  EXPECT_EQ(RouterArchName(RouterArch::kMlp), "mlp");
  EXPECT_EQ(RouterActivationName(RouterActivation::kSigmoid), "sigmoid");
  EXPECT_EQ(RouterActivationName(RouterActivation::kSoftmax), "softmax");
  EXPECT_EQ(KvModeName(KvMode::kRecursionWise), "recursion_wise");
  EXPECT_EQ(KvModeName(KvMode::kRecursiveSharing), "recursive_sharing");
}

// ---------------------------------------------------------------------------
// Validation: every error is InvalidArgument "test.json: field '<field>': ...".

struct BadCase {
  std::string label;
  json base;
  json patch;  // merged into base (null removes a field)
  std::string field;
};

std::ostream& operator<<(std::ostream& os, const BadCase& c) { return os << c.label; }

class ModelConfigErrorTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(ModelConfigErrorTest, RejectedNamingField) {
  const BadCase& bc = GetParam();
  json j = Patched(bc.base, bc.patch);
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_FALSE(c.ok()) << j.dump();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_THAT(std::string(c.status().message()),
              StartsWith("test.json: field '" + bc.field + "': "));
}

std::vector<BadCase> BadCases() {
  const json mor = BaseMor();
  const json llama = BaseLlama();
  const json big = json::parse("18446744073709551615");
  return {
      // Layer count vs strategy and Nr.
      {"middle_cycle_L31_Nr3", mor, {{"num_hidden_layers", 31}}, "num_hidden_layers"},
      {"middle_sequence_L9_Nr3",
       mor,
       {{"sharing_strategy", "middle_sequence"}, {"num_hidden_layers", 9}},
       "num_hidden_layers"},
      {"middle_no_block",
       mor,
       {{"num_hidden_layers", 2}, {"num_recursions", 1}},
       "num_hidden_layers"},
      {"cycle_L8_Nr3", mor, {{"sharing_strategy", "cycle"}}, "num_hidden_layers"},
      {"sequence_L7_Nr2",
       mor,
       {{"sharing_strategy", "sequence"}, {"num_hidden_layers", 7}, {"num_recursions", 2}},
       "num_hidden_layers"},
      {"recursions_exceed_layers",
       mor,
       {{"sharing_strategy", "cycle"}, {"num_hidden_layers", 2}, {"num_recursions", 4}},
       "num_recursions"},
      {"num_recursions_zero", mor, {{"num_recursions", 0}}, "num_recursions"},
      {"num_recursions_float", mor, {{"num_recursions", 1.5}}, "num_recursions"},
      {"vanilla_with_recursions", llama, {{"num_recursions", 2}}, "num_recursions"},
      {"mor_none_with_recursions", mor, {{"sharing_strategy", "none"}}, "num_recursions"},
      // Heads.
      {"kv_heads_not_dividing", mor, {{"num_key_value_heads", 3}}, "num_key_value_heads"},
      {"kv_heads_exceed_heads", mor, {{"num_key_value_heads", 8}}, "num_key_value_heads"},
      {"kv_heads_zero", mor, {{"num_key_value_heads", 0}}, "num_key_value_heads"},
      {"hidden_not_divisible", mor, {{"hidden_size", 66}}, "hidden_size"},
      {"head_dim_odd_explicit", mor, {{"head_dim", 15}}, "head_dim"},
      {"head_dim_odd_default", mor, {{"hidden_size", 60}}, "head_dim"},
      {"head_dim_zero", mor, {{"head_dim", 0}}, "head_dim"},
      {"heads_zero", mor, {{"num_attention_heads", 0}}, "num_attention_heads"},
      // Sizes.
      {"vocab_zero", mor, {{"vocab_size", 0}}, "vocab_size"},
      {"vocab_negative", mor, {{"vocab_size", -5}}, "vocab_size"},
      {"vocab_missing", mor, {{"vocab_size", nullptr}}, "vocab_size"},
      {"hidden_missing", llama, {{"hidden_size", nullptr}}, "hidden_size"},
      {"hidden_zero", mor, {{"hidden_size", 0}}, "hidden_size"},
      {"hidden_huge", mor, {{"hidden_size", big}}, "hidden_size"},
      {"hidden_over_int32", mor, {{"hidden_size", int64_t{1} << 40}}, "hidden_size"},
      {"intermediate_zero", mor, {{"intermediate_size", 0}}, "intermediate_size"},
      {"intermediate_missing", mor, {{"intermediate_size", nullptr}}, "intermediate_size"},
      {"layers_zero", llama, {{"num_hidden_layers", 0}}, "num_hidden_layers"},
      {"layers_missing", llama, {{"num_hidden_layers", nullptr}}, "num_hidden_layers"},
      {"max_pos_zero", mor, {{"max_position_embeddings", 0}}, "max_position_embeddings"},
      {"max_pos_negative", mor, {{"max_position_embeddings", -1}}, "max_position_embeddings"},
      // Llama scalars.
      {"hidden_act_gelu", mor, {{"hidden_act", "gelu"}}, "hidden_act"},
      {"rope_theta_zero", mor, {{"rope_theta", 0}}, "rope_theta"},
      {"rope_theta_negative", mor, {{"rope_theta", -10000.0}}, "rope_theta"},
      {"rms_norm_eps_zero", mor, {{"rms_norm_eps", 0.0}}, "rms_norm_eps"},
      {"rms_norm_eps_negative", mor, {{"rms_norm_eps", -1e-6}}, "rms_norm_eps"},
      {"model_type_unknown", mor, {{"model_type", "gpt2"}}, "model_type"},
      {"attention_bias", mor, {{"attention_bias", true}}, "attention_bias"},
      {"mlp_bias", mor, {{"mlp_bias", true}}, "mlp_bias"},
      {"rope_scaling", mor, {{"rope_scaling", {{"rope_type", "llama3"}}}}, "rope_scaling"},
      {"bos_negative", mor, {{"bos_token_id", -3}}, "bos_token_id"},
      {"eos_negative", mor, {{"eos_token_id", -1}}, "eos_token_id"},
      {"eos_list_negative", mor, {{"eos_token_id", {1, -2}}}, "eos_token_id"},
      // Enums.
      {"sharing_foo", mor, {{"sharing_strategy", "foo"}}, "sharing_strategy"},
      {"router_type_unknown", mor, {{"router_type", "top_k"}}, "router_type"},
      {"router_arch_unknown", mor, {{"router_arch", "conv"}}, "router_arch"},
      {"router_activation_unknown", mor, {{"router_activation", "relu"}}, "router_activation"},
      {"expert_choice_softmax", mor, {{"router_activation", "softmax"}}, "router_activation"},
      {"kv_mode_unknown", mor, {{"kv_mode", "paged"}}, "kv_mode"},
      // Router scalars.
      {"threshold_zero", mor, {{"router_threshold", 0.0}}, "router_threshold"},
      {"threshold_one", mor, {{"router_threshold", 1.0}}, "router_threshold"},
      {"threshold_negative", mor, {{"router_threshold", -0.1}}, "router_threshold"},
      {"threshold_above_one", mor, {{"router_threshold", 1.5}}, "router_threshold"},
      {"alpha_zero", mor, {{"router_alpha", 0.0}}, "router_alpha"},
      {"alpha_negative", mor, {{"router_alpha", -0.5}}, "router_alpha"},
      // Wrong JSON types.
      {"hidden_string", mor, {{"hidden_size", "64"}}, "hidden_size"},
      {"hidden_float", mor, {{"hidden_size", 64.5}}, "hidden_size"},
      {"hidden_bool", mor, {{"hidden_size", true}}, "hidden_size"},
      {"layers_array", mor, {{"num_hidden_layers", {8}}}, "num_hidden_layers"},
      {"tie_string", mor, {{"tie_word_embeddings", "yes"}}, "tie_word_embeddings"},
      {"rope_theta_string", mor, {{"rope_theta", "big"}}, "rope_theta"},
      {"eps_object", mor, {{"rms_norm_eps", {{"v", 1}}}}, "rms_norm_eps"},
      {"hidden_act_number", mor, {{"hidden_act", 3}}, "hidden_act"},
      {"model_type_number", mor, {{"model_type", 1}}, "model_type"},
      {"sharing_number", mor, {{"sharing_strategy", 3}}, "sharing_strategy"},
      {"router_type_bool", mor, {{"router_type", false}}, "router_type"},
      {"kv_mode_array", mor, {{"kv_mode", {"recursion_wise"}}}, "kv_mode"},
      {"alpha_bool", mor, {{"router_alpha", true}}, "router_alpha"},
      {"threshold_string", mor, {{"router_threshold", "0.5"}}, "router_threshold"},
      {"bos_string", mor, {{"bos_token_id", "a"}}, "bos_token_id"},
      {"eos_string", mor, {{"eos_token_id", "x"}}, "eos_token_id"},
      {"eos_list_with_string", mor, {{"eos_token_id", {1, "x"}}}, "eos_token_id"},
      {"eos_object", mor, {{"eos_token_id", {{"a", 1}}}}, "eos_token_id"},
      {"attention_bias_string", mor, {{"attention_bias", "no"}}, "attention_bias"},
  };
}

INSTANTIATE_TEST_SUITE_P(All, ModelConfigErrorTest, ::testing::ValuesIn(BadCases()),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           return info.param.label;
                         });

TEST(ModelConfigTest, MiddleCycleLayerCountMessage) {
  absl::StatusOr<ModelConfig> c = Parse(Patched(BaseMor(), {{"num_hidden_layers", 31}}));
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("31"));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("middle_cycle"));
}

TEST(ModelConfigTest, UnknownSharingMessageQuotesValue) {
  absl::StatusOr<ModelConfig> c = Parse(Patched(BaseMor(), {{"sharing_strategy", "foo"}}));
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("\"foo\""));
}

TEST(ModelConfigTest, InvalidJsonDocuments) {
  for (const std::string text :
       {"", "{", "{\"hidden_size\": }", "not json", "[1, 2]", "42", "null", "\"str\""}) {
    SCOPED_TRACE(text);
    absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(text, "bad.json");
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), StartsWith("bad.json: "));
  }
}

TEST(ModelConfigTest, DefaultSourceIsConfigJson) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson("{}");
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), StartsWith("config.json: field '"));
}

// ---------------------------------------------------------------------------
// FromFile

class ModelConfigFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           ("model_config_test_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string WriteFile(const std::string& name, const std::string& text) {
    std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  std::filesystem::path dir_;
};

TEST_F(ModelConfigFileTest, ReadsFile) {
  std::string path = WriteFile("config.json", BaseMor().dump(2));
  absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sharing, SharingStrategy::kMiddleCycle);
}

TEST_F(ModelConfigFileTest, MissingFileIsNotFoundNamingPath) {
  std::string path = (dir_ / "absent.json").string();
  absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(path));
}

TEST_F(ModelConfigFileTest, ErrorsNameThePath) {
  std::string path = WriteFile("config.json", Patched(BaseMor(), {{"vocab_size", 0}}).dump());
  absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), StartsWith(path + ": field 'vocab_size': "));

  std::string garbage = WriteFile("garbage.json", "{{{");
  c = ModelConfig::FromFile(garbage);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(garbage));
}

TEST_F(ModelConfigFileTest, DirectoryIsRejected) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromFile(dir_.string());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(dir_.string()));
}

// ---------------------------------------------------------------------------
// Layer plan

LayerPlan PlanFor(const std::string& strategy, int layers, int nr) {
  json j = BaseMor();
  j["sharing_strategy"] = strategy;
  j["num_hidden_layers"] = layers;
  j["num_recursions"] = nr;
  return ParseOk(j).MakeLayerPlan();
}

using Layers = std::vector<std::vector<int>>;

TEST(LayerPlanTest, Vanilla) {
  LayerPlan p = ParseOk(BaseLlama()).MakeLayerPlan();
  EXPECT_TRUE(p.prefix_unique_layers.empty());
  EXPECT_TRUE(p.suffix_unique_layers.empty());
  EXPECT_EQ(p.recursion_layers, (Layers{{0, 1, 2, 3}}));
  EXPECT_EQ(p.num_unique_layers, 0);
  EXPECT_EQ(p.num_shared_layers, 4);
  EXPECT_EQ(p.block_layers, 4);
  EXPECT_TRUE(p.recursions_share_weights);
}

TEST(LayerPlanTest, Cycle) {
  LayerPlan p = PlanFor("cycle", 6, 3);
  EXPECT_TRUE(p.prefix_unique_layers.empty());
  EXPECT_TRUE(p.suffix_unique_layers.empty());
  EXPECT_EQ(p.recursion_layers, (Layers{{0, 1}, {0, 1}, {0, 1}}));
  EXPECT_EQ(p.num_unique_layers, 0);
  EXPECT_EQ(p.num_shared_layers, 2);
  EXPECT_EQ(p.block_layers, 2);
  EXPECT_TRUE(p.recursions_share_weights);

  p = PlanFor("cycle", 8, 2);
  EXPECT_EQ(p.recursion_layers, (Layers{{0, 1, 2, 3}, {0, 1, 2, 3}}));
  EXPECT_EQ(p.num_shared_layers, 4);
}

TEST(LayerPlanTest, Sequence) {
  LayerPlan p = PlanFor("sequence", 6, 3);
  EXPECT_TRUE(p.prefix_unique_layers.empty());
  EXPECT_EQ(p.recursion_layers, (Layers{{0, 0}, {0, 1}, {1, 1}}));
  EXPECT_EQ(p.num_unique_layers, 0);
  EXPECT_EQ(p.num_shared_layers, 2);
  EXPECT_EQ(p.block_layers, 2);
  EXPECT_FALSE(p.recursions_share_weights);

  p = PlanFor("sequence", 8, 2);
  EXPECT_EQ(p.recursion_layers, (Layers{{0, 0, 1, 1}, {2, 2, 3, 3}}));
  EXPECT_EQ(p.num_shared_layers, 4);
  EXPECT_FALSE(p.recursions_share_weights);
}

TEST(LayerPlanTest, SequenceDegenerateCasesShareWeights) {
  // B = 1: every recursion applies shared layer 0.
  LayerPlan p = PlanFor("sequence", 3, 3);
  EXPECT_EQ(p.recursion_layers, (Layers{{0}, {0}, {0}}));
  EXPECT_TRUE(p.recursions_share_weights);
  // Nr = 1: one recursion.
  p = PlanFor("sequence", 4, 1);
  EXPECT_EQ(p.recursion_layers, (Layers{{0, 1, 2, 3}}));
  EXPECT_TRUE(p.recursions_share_weights);
}

TEST(LayerPlanTest, MiddleCycle) {
  LayerPlan p = PlanFor("middle_cycle", 8, 3);
  EXPECT_THAT(p.prefix_unique_layers, ElementsAre(0));
  EXPECT_THAT(p.suffix_unique_layers, ElementsAre(1));
  EXPECT_EQ(p.recursion_layers, (Layers{{0, 1}, {0, 1}, {0, 1}}));
  EXPECT_EQ(p.num_unique_layers, 2);
  EXPECT_EQ(p.num_shared_layers, 2);
  EXPECT_EQ(p.block_layers, 2);
  EXPECT_TRUE(p.recursions_share_weights);
}

TEST(LayerPlanTest, MiddleSequence) {
  LayerPlan p = PlanFor("middle_sequence", 8, 3);
  EXPECT_THAT(p.prefix_unique_layers, ElementsAre(0));
  EXPECT_THAT(p.suffix_unique_layers, ElementsAre(1));
  EXPECT_EQ(p.recursion_layers, (Layers{{0, 0}, {0, 1}, {1, 1}}));
  EXPECT_EQ(p.num_unique_layers, 2);
  EXPECT_EQ(p.num_shared_layers, 2);
  EXPECT_EQ(p.block_layers, 2);
  EXPECT_FALSE(p.recursions_share_weights);

  p = PlanFor("middle_sequence", 5, 3);  // B = 1
  EXPECT_EQ(p.recursion_layers, (Layers{{0}, {0}, {0}}));
  EXPECT_TRUE(p.recursions_share_weights);
}

// Checks the plan against the doc's formulas for many (strategy, B, Nr).
TEST(LayerPlanTest, MatchesFormulasExhaustively) {
  for (const std::string strategy : {"cycle", "sequence", "middle_cycle", "middle_sequence"}) {
    const bool middle = strategy.rfind("middle_", 0) == 0;
    const bool cycle = strategy.find("cycle") != std::string::npos;
    for (int nr = 1; nr <= 4; ++nr) {
      for (int b = 1; b <= 4; ++b) {
        SCOPED_TRACE(strategy + " Nr=" + std::to_string(nr) + " B=" + std::to_string(b));
        LayerPlan p = PlanFor(strategy, (middle ? 2 : 0) + b * nr, nr);
        ASSERT_EQ(p.recursion_layers.size(), static_cast<size_t>(nr));
        EXPECT_EQ(p.block_layers, b);
        EXPECT_EQ(p.num_shared_layers, b);
        EXPECT_EQ(p.num_unique_layers, middle ? 2 : 0);
        std::vector<int> uses(b, 0);
        bool all_same = true;
        for (int r = 0; r < nr; ++r) {
          ASSERT_EQ(p.recursion_layers[r].size(), static_cast<size_t>(b));
          for (int j = 0; j < b; ++j) {
            int u = r * b + j;
            int expected = cycle ? u % b : u / nr;
            EXPECT_EQ(p.recursion_layers[r][j], expected);
            ++uses[p.recursion_layers[r][j]];
          }
          all_same = all_same && p.recursion_layers[r] == p.recursion_layers[0];
        }
        for (int s = 0; s < b; ++s) EXPECT_EQ(uses[s], nr) << "shared layer " << s;
        EXPECT_EQ(p.recursions_share_weights, all_same);
        if (cycle) {
          EXPECT_TRUE(p.recursions_share_weights);
        } else if (nr > 1 && b > 1) {
          EXPECT_FALSE(p.recursions_share_weights);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Round trip

TEST(ModelConfigTest, ToJsonRoundTrips) {
  std::vector<json> configs = {
      BaseLlama(),
      Patched(BaseLlama(), {{"bos_token_id", 1},
                            {"eos_token_id", {2, 3}},
                            {"head_dim", 32},
                            {"tie_word_embeddings", false},
                            {"rms_norm_eps", 1e-6},
                            {"rope_theta", 500000.5}}),
      Patched(BaseLlama(), {{"eos_token_id", 5}}),
      BaseMor(),
      Patched(BaseMor(), {{"router_type", "token_choice"},
                          {"router_arch", "mlp"},
                          {"router_activation", "sigmoid"},
                          {"router_alpha", 0.3},
                          {"router_threshold", 0.123456789},
                          {"kv_mode", "recursive_sharing"},
                          {"sharing_strategy", "middle_sequence"}}),
      Patched(BaseMor(), {{"sharing_strategy", "cycle"}, {"num_hidden_layers", 9}}),
      Patched(BaseMor(), {{"sharing_strategy", "sequence"},
                          {"num_hidden_layers", 6},
                          {"router_type", "token_choice"}}),
  };
  for (const json& j : configs) {
    SCOPED_TRACE(j.dump());
    ModelConfig original = ParseOk(j);
    std::string text = original.ToJson();
    absl::StatusOr<ModelConfig> again = ModelConfig::FromJson(text, "roundtrip.json");
    ASSERT_TRUE(again.ok()) << again.status() << "\n" << text;
    ExpectSameConfig(original, *again);
    EXPECT_EQ(again->ToJson(), text);
  }
}

TEST(ModelConfigTest, ToJsonUsesConfigStrings) {
  ModelConfig c = ParseOk(Patched(BaseMor(), {{"router_type", "token_choice"}}));
  json j = json::parse(c.ToJson());
  EXPECT_EQ(j["sharing_strategy"], "middle_cycle");
  EXPECT_EQ(j["router_type"], "token_choice");
  EXPECT_EQ(j["router_arch"], "linear");
  EXPECT_EQ(j["router_activation"], "softmax");
  EXPECT_EQ(j["kv_mode"], "recursion_wise");
  EXPECT_EQ(j["num_recursions"], 3);
  EXPECT_EQ(j["head_dim"], 16);
  EXPECT_FALSE(j.contains("bos_token_id"));
  EXPECT_FALSE(j.contains("eos_token_id"));
}

}  // namespace
}  // namespace mor
