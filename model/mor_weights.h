// LibTorch weights of an MoR (or vanilla Llama) model, loaded from a
// safetensors checkpoint under the names of docs/model-format.md.
// Internal to model/: includes ATen.
#ifndef MOR_MODEL_MOR_WEIGHTS_H_
#define MOR_MODEL_MOR_WEIGHTS_H_

#include <ATen/ATen.h>

#include <vector>

#include "absl/status/statusor.h"
#include "model/model_config.h"
#include "model/safetensors_file.h"

namespace mor {

// One Llama decoder layer, with q/k/v and gate/up fused so each runs as one
// matmul. All tensors are in the compute dtype on the compute device.
struct LayerWeights {
  at::Tensor input_norm;  // [d]
  at::Tensor post_norm;   // [d]
  at::Tensor wqkv;        // [(H + 2 KVH) * hd, d]
  at::Tensor wo;          // [d, H * hd]
  at::Tensor w_gate_up;   // [2 * d_ff, d]
  at::Tensor w_down;      // [d, d_ff]
};

// A router: linear (w1 only) or mlp (w1 -> GELU -> w2). Output width 1 for
// expert choice, Nr for token choice. `bias` is token choice's router_bias
// ([Nr], fp32; zeros when absent from the checkpoint).
struct RouterWeights {
  at::Tensor w1;
  at::Tensor w2;  // undefined for linear routers
  at::Tensor bias;
};

struct MorWeights {
  at::Tensor embed;                         // [V, d]
  at::Tensor final_norm;                    // [d]
  at::Tensor lm_head;                       // [V, d]; the same storage as embed when tied
  std::vector<LayerWeights> unique_layers;  // indexed by LayerPlan unique ids
  std::vector<LayerWeights> shared_layers;  // indexed by LayerPlan shared ids
  std::vector<RouterWeights> routers;       // expert choice: Nr; token choice: 1
};

// Loads every tensor the config needs (shared tensors once, whichever alias
// the file holds), checks shapes, converts to `dtype` on `device`. Errors name
// the checkpoint file, tensor and problem.
absl::StatusOr<MorWeights> LoadMorWeights(const SafetensorsCheckpoint& checkpoint,
                                          const ModelConfig& config, const LayerPlan& plan,
                                          at::ScalarType dtype, at::Device device);

}  // namespace mor

#endif  // MOR_MODEL_MOR_WEIGHTS_H_
