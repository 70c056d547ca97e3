#include "model/mor_weights.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/status_macros.h"

namespace mor {
namespace {

absl::StatusOr<at::ScalarType> ToScalarType(const TensorView& view) {
  switch (view.dtype) {
    case TensorDType::kF32:
      return at::kFloat;
    case TensorDType::kBF16:
      return at::kBFloat16;
    case TensorDType::kF16:
      return at::kHalf;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          view.file, ": tensor '", view.name, "' has dtype ",
          std::string(TensorDTypeName(view.dtype)), "; weights must be F32, BF16 or F16"));
  }
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Reads the tensors of a checkpoint, checking shapes and converting dtype.
class TensorReader {
 public:
  TensorReader(const SafetensorsCheckpoint& checkpoint, at::ScalarType dtype, at::Device device)
      : checkpoint_(checkpoint), dtype_(dtype), device_(device) {}

  // The first of `aliases` present in the checkpoint, with shape `shape`.
  absl::StatusOr<at::Tensor> Read(const std::vector<std::string>& aliases,
                                  const std::vector<int64_t>& shape,
                                  std::optional<at::ScalarType> dtype = std::nullopt) {
    const std::string* found = nullptr;
    for (const std::string& name : aliases) {
      if (checkpoint_.Contains(name)) {
        found = &name;
        break;
      }
    }
    if (found == nullptr) {
      return absl::NotFoundError(absl::StrCat(
          checkpoint_.directory(), ": missing tensor '", aliases.front(), "'",
          aliases.size() > 1 ? absl::StrCat(" (or any alias: ", absl::StrJoin(aliases, ", "), ")")
                             : ""));
    }
    MOR_ASSIGN_OR_RETURN(TensorView view, checkpoint_.Get(*found));
    if (view.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(view.file, ": tensor '", view.name,
                                                     "' has shape ", ShapeString(view.shape),
                                                     ", expected ", ShapeString(shape)));
    }
    // Aliases of a tied tensor stored more than once must agree in shape.
    for (const std::string& name : aliases) {
      if (&name == found || !checkpoint_.Contains(name)) continue;
      MOR_ASSIGN_OR_RETURN(TensorView other, checkpoint_.Get(name));
      if (other.shape != view.shape) {
        return absl::InvalidArgumentError(
            absl::StrCat(other.file, ": tensor '", name, "' has shape ", ShapeString(other.shape),
                         " but its tied alias '", view.name, "' has ", ShapeString(view.shape)));
      }
    }
    MOR_ASSIGN_OR_RETURN(at::ScalarType disk_type, ToScalarType(view));
    const auto options = at::TensorOptions().dtype(disk_type);
    at::Tensor raw;
    if (reinterpret_cast<uintptr_t>(view.data) % TensorDTypeSize(view.dtype) == 0) {
      raw = at::from_blob(const_cast<uint8_t*>(view.data), view.shape, options);
    } else {
      // safetensors does not promise aligned tensor data: copy it out first.
      raw = at::empty(view.shape, options);
      std::memcpy(raw.data_ptr(), view.data, view.nbytes);
    }
    return raw.to(device_, dtype.value_or(dtype_), /*non_blocking=*/false, /*copy=*/true);
  }

  absl::StatusOr<at::Tensor> Read(const std::string& name, const std::vector<int64_t>& shape) {
    return Read(std::vector<std::string>{name}, shape);
  }

  bool Contains(const std::string& name) const { return checkpoint_.Contains(name); }

 private:
  const SafetensorsCheckpoint& checkpoint_;
  at::ScalarType dtype_;
  at::Device device_;
};

absl::StatusOr<LayerWeights> ReadLayer(TensorReader& reader, const ModelConfig& config,
                                       const std::vector<std::string>& prefixes) {
  const int64_t d = config.hidden_size;
  const int64_t hd = config.head_dim;
  const int64_t q_out = config.num_attention_heads * hd;
  const int64_t kv_out = config.num_key_value_heads * hd;
  const int64_t ff = config.intermediate_size;
  auto names = [&](const std::string& suffix) {
    std::vector<std::string> out;
    for (const std::string& p : prefixes) out.push_back(absl::StrCat(p, ".", suffix));
    return out;
  };
  LayerWeights layer;
  MOR_ASSIGN_OR_RETURN(layer.input_norm, reader.Read(names("input_layernorm.weight"), {d}));
  MOR_ASSIGN_OR_RETURN(layer.post_norm, reader.Read(names("post_attention_layernorm.weight"), {d}));
  MOR_ASSIGN_OR_RETURN(at::Tensor q, reader.Read(names("self_attn.q_proj.weight"), {q_out, d}));
  MOR_ASSIGN_OR_RETURN(at::Tensor k, reader.Read(names("self_attn.k_proj.weight"), {kv_out, d}));
  MOR_ASSIGN_OR_RETURN(at::Tensor v, reader.Read(names("self_attn.v_proj.weight"), {kv_out, d}));
  MOR_ASSIGN_OR_RETURN(layer.wo, reader.Read(names("self_attn.o_proj.weight"), {d, q_out}));
  MOR_ASSIGN_OR_RETURN(at::Tensor gate, reader.Read(names("mlp.gate_proj.weight"), {ff, d}));
  MOR_ASSIGN_OR_RETURN(at::Tensor up, reader.Read(names("mlp.up_proj.weight"), {ff, d}));
  MOR_ASSIGN_OR_RETURN(layer.w_down, reader.Read(names("mlp.down_proj.weight"), {d, ff}));
  layer.wqkv = at::cat({q, k, v}, 0).contiguous();
  layer.w_gate_up = at::cat({gate, up}, 0).contiguous();
  return layer;
}

absl::StatusOr<RouterWeights> ReadRouter(TensorReader& reader, const ModelConfig& config,
                                         const std::string& prefix, int64_t out_width) {
  const int64_t d = config.hidden_size;
  RouterWeights router;
  if (config.router_arch == RouterArch::kLinear) {
    MOR_ASSIGN_OR_RETURN(
        router.w1, reader.Read(absl::StrCat(prefix, ".mor_router.router.weight"), {out_width, d}));
  } else {
    MOR_ASSIGN_OR_RETURN(
        router.w1, reader.Read(absl::StrCat(prefix, ".mor_router.router.0.weight"), {2 * d, d}));
    MOR_ASSIGN_OR_RETURN(router.w2, reader.Read(absl::StrCat(prefix, ".mor_router.router.2.weight"),
                                                {out_width, 2 * d}));
  }
  return router;
}

}  // namespace

absl::StatusOr<MorWeights> LoadMorWeights(const SafetensorsCheckpoint& checkpoint,
                                          const ModelConfig& config, const LayerPlan& plan,
                                          at::ScalarType dtype, at::Device device) {
  TensorReader reader(checkpoint, dtype, device);
  const int64_t d = config.hidden_size;
  const int64_t vocab = config.vocab_size;
  const int nr = config.num_recursions;
  const bool expert = config.router_type == RouterType::kExpertChoice;
  const int p = plan.prefix_unique_layers.empty() ? 0 : 1;

  MorWeights weights;
  MOR_ASSIGN_OR_RETURN(weights.embed, reader.Read("model.embed_tokens.weight", {vocab, d}));
  MOR_ASSIGN_OR_RETURN(weights.final_norm, reader.Read("model.norm.weight", {d}));
  if (config.tie_word_embeddings && !reader.Contains("lm_head.weight")) {
    weights.lm_head = weights.embed;
  } else {
    MOR_ASSIGN_OR_RETURN(weights.lm_head, reader.Read("lm_head.weight", {vocab, d}));
  }

  if (config.is_vanilla()) {
    for (int s = 0; s < plan.num_shared_layers; ++s) {
      MOR_ASSIGN_OR_RETURN(LayerWeights layer,
                           ReadLayer(reader, config, {absl::StrCat("model.layers.", s)}));
      weights.shared_layers.push_back(std::move(layer));
    }
    return weights;
  }

  // Unique layers: first is model.layers.0, last follows the MoR layers.
  if (plan.num_unique_layers > 0) {
    const int last_index = p + (expert ? nr : 1);
    MOR_ASSIGN_OR_RETURN(LayerWeights first, ReadLayer(reader, config, {"model.layers.0"}));
    MOR_ASSIGN_OR_RETURN(LayerWeights last,
                         ReadLayer(reader, config, {absl::StrCat("model.layers.", last_index)}));
    weights.unique_layers.push_back(std::move(first));
    weights.unique_layers.push_back(std::move(last));
  }

  // Shared layers: every (recursion, slot) that applies a shared layer names it.
  std::vector<std::vector<std::string>> aliases(plan.num_shared_layers);
  for (int r = 1; r <= nr; ++r) {
    for (int j = 0; j < plan.block_layers; ++j) {
      const int shared = plan.recursion_layers[r - 1][j];
      aliases[shared].push_back(
          expert ? absl::StrCat("model.layers.", p + r - 1, ".block.", j)
                 : absl::StrCat("model.layers.", p, ".block_list.", r - 1, ".", j));
    }
  }
  for (int s = 0; s < plan.num_shared_layers; ++s) {
    MOR_ASSIGN_OR_RETURN(LayerWeights layer, ReadLayer(reader, config, aliases[s]));
    weights.shared_layers.push_back(std::move(layer));
  }

  if (expert) {
    for (int r = 1; r <= nr; ++r) {
      MOR_ASSIGN_OR_RETURN(RouterWeights router,
                           ReadRouter(reader, config, absl::StrCat("model.layers.", p + r - 1), 1));
      weights.routers.push_back(std::move(router));
    }
  } else {
    const std::string prefix = absl::StrCat("model.layers.", p);
    MOR_ASSIGN_OR_RETURN(RouterWeights router, ReadRouter(reader, config, prefix, nr));
    const std::string bias_name = absl::StrCat(prefix, ".router_bias");
    if (reader.Contains(bias_name)) {
      MOR_ASSIGN_OR_RETURN(router.bias, reader.Read({bias_name}, {nr}, at::kFloat));
    } else {
      router.bias = at::zeros({nr}, at::TensorOptions().dtype(at::kFloat).device(device));
    }
    weights.routers.push_back(std::move(router));
  }
  return weights;
}

}  // namespace mor
