#include "tests/server/tiny_model.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "model/safetensors_file.h"

namespace mor::testing {
namespace {

class TensorMaker {
 public:
  explicit TensorMaker(uint64_t seed) : rng_(seed) {}

  // Normal(mean, std) values of the given shape.
  TensorToWrite Make(const std::string& name, std::vector<int64_t> shape, float std,
                     float mean = 0.0f) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    std::vector<float> values(static_cast<size_t>(n));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : values) v = mean + std * normal(rng_);
    TensorToWrite t{name, TensorDType::kF32, std::move(shape), std::string()};
    t.data.resize(values.size() * sizeof(float));
    std::memcpy(t.data.data(), values.data(), t.data.size());
    return t;
  }

 private:
  std::mt19937_64 rng_;
};

void AddLayer(TensorMaker& maker, const ModelConfig& c, const std::string& prefix,
              std::vector<TensorToWrite>& out) {
  const int64_t d = c.hidden_size, hd = c.head_dim, inter = c.intermediate_size;
  const float kProj = 0.08f;
  out.push_back(
      maker.Make(prefix + ".self_attn.q_proj.weight", {c.num_attention_heads * hd, d}, kProj));
  out.push_back(
      maker.Make(prefix + ".self_attn.k_proj.weight", {c.num_key_value_heads * hd, d}, kProj));
  out.push_back(
      maker.Make(prefix + ".self_attn.v_proj.weight", {c.num_key_value_heads * hd, d}, kProj));
  out.push_back(
      maker.Make(prefix + ".self_attn.o_proj.weight", {d, c.num_attention_heads * hd}, kProj));
  out.push_back(maker.Make(prefix + ".mlp.gate_proj.weight", {inter, d}, kProj));
  out.push_back(maker.Make(prefix + ".mlp.up_proj.weight", {inter, d}, kProj));
  out.push_back(maker.Make(prefix + ".mlp.down_proj.weight", {d, inter}, kProj));
  out.push_back(maker.Make(prefix + ".input_layernorm.weight", {d}, 0.1f, 1.0f));
  out.push_back(maker.Make(prefix + ".post_attention_layernorm.weight", {d}, 0.1f, 1.0f));
}

}  // namespace

ModelConfig TinyMorConfig(int64_t vocab_size, int64_t max_context,
                          std::vector<int64_t> eos_token_ids) {
  ModelConfig c;
  c.model_type = "mor";
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_recursions = 3;
  c.num_hidden_layers = 2 + 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.vocab_size = vocab_size;
  c.max_position_embeddings = max_context;
  c.bos_token_id = 1;
  c.eos_token_ids = std::move(eos_token_ids);
  c.sharing = SharingStrategy::kMiddleCycle;
  c.router_type = RouterType::kExpertChoice;
  c.router_arch = RouterArch::kLinear;
  c.kv_mode = KvMode::kRecursionWise;
  return c;
}

absl::Status WriteTinyMorModel(const std::string& dir, const ModelConfig& c, uint64_t seed) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  {
    std::ofstream config(dir + "/config.json");
    config << c.ToJson();
    if (!config) return absl::InternalError(absl::StrCat("cannot write ", dir, "/config.json"));
  }
  TensorMaker maker(seed);
  std::vector<TensorToWrite> tensors;
  const int64_t d = c.hidden_size;
  tensors.push_back(maker.Make("model.embed_tokens.weight", {c.vocab_size, d}, 0.5f));
  tensors.push_back(maker.Make("model.norm.weight", {d}, 0.1f, 1.0f));
  // Unique first and last layers (middle_*), the shared block (written once,
  // under recursion 1's alias), one router per recursion.
  AddLayer(maker, c, "model.layers.0", tensors);
  AddLayer(maker, c, absl::StrCat("model.layers.", c.num_recursions + 1), tensors);
  AddLayer(maker, c, "model.layers.1.block.0", tensors);
  const float router_std = 3.0f / std::sqrt(static_cast<float>(d));
  for (int r = 1; r <= c.num_recursions; ++r) {
    tensors.push_back(maker.Make(absl::StrCat("model.layers.", r, ".mor_router.router.weight"),
                                 {1, d}, router_std));
  }
  return WriteSafetensors(dir + "/model.safetensors", tensors);
}

}  // namespace mor::testing
