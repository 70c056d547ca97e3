#include "tests/model/tiny_model.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "model/safetensors_file.h"
#include "nlohmann/json.hpp"

namespace mor::testing {
namespace {

class TensorWriter {
 public:
  TensorWriter(const TinyModelOptions& options) : options_(options), rng_(options.seed) {}

  // A [rows, cols] (or [rows] when cols == 0) tensor with values around `mean`.
  void Add(const std::string& name, int64_t rows, int64_t cols, float mean, float stddev) {
    if (name == options_.omit_tensor) return;
    if (name == options_.wrong_shape_tensor) ++rows;
    std::normal_distribution<float> normal(mean, stddev);
    const int64_t n = rows * (cols > 0 ? cols : 1);
    std::vector<float> values(n);
    for (float& v : values) v = normal(rng_);
    TensorToWrite t;
    t.name = name;
    t.dtype = TensorDType::kF32;
    t.shape = cols > 0 ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows};
    t.data.assign(reinterpret_cast<const char*>(values.data()), n * sizeof(float));
    tensors_.push_back(std::move(t));
  }

  void AddLayer(const std::string& prefix) {
    const int d = options_.hidden_size;
    const int hd = d / options_.num_heads;
    const int ff = options_.intermediate_size;
    Add(prefix + ".input_layernorm.weight", d, 0, 1.0f, 0.1f);
    Add(prefix + ".post_attention_layernorm.weight", d, 0, 1.0f, 0.1f);
    Add(prefix + ".self_attn.q_proj.weight", options_.num_heads * hd, d, 0, 0.1f);
    Add(prefix + ".self_attn.k_proj.weight", options_.num_kv_heads * hd, d, 0, 0.1f);
    Add(prefix + ".self_attn.v_proj.weight", options_.num_kv_heads * hd, d, 0, 0.1f);
    Add(prefix + ".self_attn.o_proj.weight", d, options_.num_heads * hd, 0, 0.1f);
    Add(prefix + ".mlp.gate_proj.weight", ff, d, 0, 0.1f);
    Add(prefix + ".mlp.up_proj.weight", ff, d, 0, 0.1f);
    Add(prefix + ".mlp.down_proj.weight", d, ff, 0, 0.1f);
  }

  const std::vector<TensorToWrite>& tensors() const { return tensors_; }

 private:
  const TinyModelOptions& options_;
  std::mt19937_64 rng_;
  std::vector<TensorToWrite> tensors_;
};

}  // namespace

absl::Status WriteTinyModel(const std::string& dir, const TinyModelOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  const bool vanilla = options.sharing == "none";
  const int layers =
      vanilla ? options.block_layers : 2 + options.block_layers * options.num_recursions;

  nlohmann::json config = {
      {"model_type", vanilla ? "llama" : "mor"},
      {"hidden_size", options.hidden_size},
      {"intermediate_size", options.intermediate_size},
      {"num_hidden_layers", layers},
      {"num_attention_heads", options.num_heads},
      {"num_key_value_heads", options.num_kv_heads},
      {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},
      {"vocab_size", options.vocab_size},
      {"max_position_embeddings", options.max_position_embeddings},
      {"tie_word_embeddings", true},
      {"hidden_act", "silu"},
      {"eos_token_id", 2},
  };
  if (!vanilla) {
    config["num_recursions"] = options.num_recursions;
    config["sharing_strategy"] = options.sharing;
    config["router_type"] = "expert_choice";
    config["router_arch"] = "linear";
    config["kv_mode"] = "recursion_wise";
  }
  std::ofstream(absl::StrCat(dir, "/config.json")) << config.dump(2);

  TensorWriter writer(options);
  writer.Add("model.embed_tokens.weight", options.vocab_size, options.hidden_size, 0, 1.0f);
  writer.Add("model.norm.weight", options.hidden_size, 0, 1.0f, 0.1f);
  if (vanilla) {
    for (int l = 0; l < layers; ++l) writer.AddLayer(absl::StrCat("model.layers.", l));
  } else {
    writer.AddLayer("model.layers.0");
    for (int j = 0; j < options.block_layers; ++j) {
      writer.AddLayer(absl::StrCat("model.layers.1.block.", j));
    }
    for (int r = 1; r <= options.num_recursions; ++r) {
      writer.Add(absl::StrCat("model.layers.", r, ".mor_router.router.weight"), 1,
                 options.hidden_size, 0, 0.5f);
    }
    writer.AddLayer(absl::StrCat("model.layers.", options.num_recursions + 1));
  }
  return WriteSafetensors(absl::StrCat(dir, "/model.safetensors"), writer.tensors());
}

}  // namespace mor::testing
