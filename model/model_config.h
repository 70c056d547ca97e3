// Model configuration parsed from an HF-style config.json (docs/model-format.md).
// Torch-free: the scheduler and server read it too.
#ifndef MOR_MODEL_MODEL_CONFIG_H_
#define MOR_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mor {

enum class SharingStrategy { kNone, kCycle, kSequence, kMiddleCycle, kMiddleSequence };
enum class RouterType { kExpertChoice, kTokenChoice };
enum class RouterArch { kLinear, kMlp };
enum class RouterActivation { kSigmoid, kSoftmax };
enum class KvMode { kRecursionWise, kRecursiveSharing };

std::string_view SharingStrategyName(SharingStrategy s);
std::string_view RouterTypeName(RouterType t);
std::string_view RouterArchName(RouterArch a);
std::string_view RouterActivationName(RouterActivation a);
std::string_view KvModeName(KvMode m);

// Which decoder layers run where. Layer ids index ModelConfig's unique or shared
// layer lists (see docs/model-format.md, "Layer plan").
struct LayerPlan {
  // Unique layers before and after the recursions (middle_*: {0} and {1}; they
  // index the unique-layer list, whose KV lives in the unique KV level).
  std::vector<int> prefix_unique_layers;
  std::vector<int> suffix_unique_layers;
  // recursion_layers[r-1][j] = shared layer applied by recursion r at slot j.
  // For cycle strategies every recursion lists the same layers.
  std::vector<std::vector<int>> recursion_layers;
  int num_unique_layers = 0;  // distinct unique layers
  int num_shared_layers = 0;  // distinct shared layers
  int block_layers = 0;       // B: slots per recursion
  // True when every recursion applies the same layers (cycle, middle_cycle,
  // vanilla): tokens at different depths can then share one block call.
  bool recursions_share_weights = true;
};

struct ModelConfig {
  // Llama fields.
  std::string model_type = "llama";
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;  // L, unrolled
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // defaults to hidden_size / num_attention_heads
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = true;
  std::string hidden_act = "silu";
  int64_t bos_token_id = -1;           // -1: none
  std::vector<int64_t> eos_token_ids;  // may be empty

  // MoR fields. A vanilla model has sharing == kNone and num_recursions == 1.
  int num_recursions = 1;
  SharingStrategy sharing = SharingStrategy::kNone;
  RouterType router_type = RouterType::kExpertChoice;
  RouterArch router_arch = RouterArch::kLinear;
  RouterActivation router_activation = RouterActivation::kSigmoid;
  double router_alpha = 0.1;
  double router_threshold = 0.5;
  KvMode kv_mode = KvMode::kRecursionWise;

  bool is_vanilla() const { return sharing == SharingStrategy::kNone; }
  bool has_router() const { return !is_vanilla(); }

  // Parses and validates (every inconsistency is an InvalidArgument naming the
  // field: non-positive sizes, heads not dividing hidden_size, kv heads not
  // dividing heads, L not matching the strategy and Nr, unknown enum strings,
  // threshold outside (0, 1), vanilla with Nr > 1, ...). `source` names the file
  // in error messages.
  static absl::StatusOr<ModelConfig> FromJson(std::string_view json_text,
                                              std::string_view source = "config.json");
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);

  // The layer plan implied by the strategy (valid for a validated config).
  LayerPlan MakeLayerPlan() const;

  // Serialises back to config.json text (round-trips through FromJson).
  std::string ToJson() const;
};

}  // namespace mor

#endif  // MOR_MODEL_MODEL_CONFIG_H_
