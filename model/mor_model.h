// The MoR forward pass in LibTorch over the paged, recursion-wise KV cache
// (docs/model-format.md). Internal to model/: TorchModelRunner wraps it with
// input validation and the exception boundary.
#ifndef MOR_MODEL_MOR_MODEL_H_
#define MOR_MODEL_MOR_MODEL_H_

#include <ATen/ATen.h>

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/kv_cache_types.h"
#include "model/model_config.h"
#include "model/model_runner.h"
#include "model/mor_weights.h"
#include "model/paged_attention.h"
#include "model/paged_kv_cache.h"

namespace mor {

class MorModel {
 public:
  // `attention`: "auto" (CPU paged kernel on CPU, gather + SDPA elsewhere) or
  // "sdpa" (gather + SDPA everywhere).
  MorModel(ModelConfig config, MorWeights weights, const KvCacheGeometry& geometry,
           at::ScalarType dtype, at::Device device, const std::string& attention = "auto",
           int32_t num_state_slots = 0, bool depth_aware = true);

  const ModelConfig& config() const { return config_; }
  const LayerPlan& plan() const { return plan_; }
  const KvCacheGeometry& geometry() const { return cache_.geometry(); }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }

  // One step over validated chunks (see ModelRunner::Step). May throw
  // c10::Error; the caller converts it.
  absl::StatusOr<StepResult> Forward(std::span<const SequenceChunk> chunks,
                                     KvBlockAllocator& allocator);

  // One continuous depth-wise step over validated groups (see
  // ModelRunner::StepDepthwise; mor_model_depthwise.cc). May throw.
  absl::StatusOr<DepthwiseStepResult> ForwardDepthwise(std::span<const DepthwiseGroup> groups,
                                                       KvBlockAllocator& allocator);
  int32_t num_state_slots() const { return num_state_slots_; }
  bool depth_aware() const { return depth_aware_; }
  // Token-choice depth assigned to a slot's token when it entered.
  int32_t slot_depth(int32_t slot) const { return slot_depth_[slot]; }

 private:
  // Rows of the step's activations and where they come from.
  struct StepRows;

  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight) const;
  at::Tensor Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;
  // One decoder layer on rows `x` whose attention metadata is `batch`; writes
  // their K/V into `k_cache`/`v_cache` when `write_kv`.
  at::Tensor DecoderLayer(const LayerWeights& w, const at::Tensor& x, const at::Tensor& cos,
                          const at::Tensor& sin, at::Tensor k_cache, at::Tensor v_cache,
                          const AttentionBatch& batch, bool write_kv) const;
  at::Tensor RouterLogits(const RouterWeights& router, const at::Tensor& h) const;

  // Attention metadata for `rows` (indices into the step's rows) at one KV
  // level; grows the tables through `allocator` when `write` is set.
  // `dummy` (optional, per row): rows computed only to be masked, routed to
  // the reserved null block.
  absl::StatusOr<AttentionBatch> PrepareLevel(const StepRows& step,
                                              const std::vector<int64_t>& rows,
                                              std::vector<KvTable*>& tables, KvPool pool, int depth,
                                              bool write, KvBlockAllocator& allocator,
                                              const std::vector<uint8_t>* dummy = nullptr);
  static void CommitLevel(const StepRows& step, const std::vector<int64_t>& rows,
                          std::vector<KvTable*>& tables);

  // Runs recursion r's block on `x` (rows `rows`), returning Block_r(x).
  absl::StatusOr<at::Tensor> RunRecursion(int r, const StepRows& step,
                                          const std::vector<int64_t>& rows, const at::Tensor& x,
                                          const at::Tensor& cos, const at::Tensor& sin,
                                          KvBlockAllocator& allocator,
                                          const std::vector<uint8_t>* dummy = nullptr);

  absl::Status RunExpertChoice(const StepRows& step, at::Tensor& h, const at::Tensor& cos,
                               const at::Tensor& sin, KvBlockAllocator& allocator,
                               StepResult& result);
  absl::Status RunTokenChoice(const StepRows& step, at::Tensor& h, const at::Tensor& cos,
                              const at::Tensor& sin, KvBlockAllocator& allocator,
                              StepResult& result);
  absl::Status RunUniqueLayers(const std::vector<int>& layers, const StepRows& step,
                               const AttentionBatch& batch, at::Tensor& h, const at::Tensor& cos,
                               const at::Tensor& sin);

  at::Tensor IndexTensor(const std::vector<int64_t>& rows) const;

  // Attention metadata for rows given by their table and entry index at one
  // KV level (rows sharing a table form one group); grows the tables through
  // `allocator` when `write`. Used by the depth-wise step.
  absl::StatusOr<AttentionBatch> PrepareRows(const std::vector<KvTable*>& row_table,
                                             const std::vector<int32_t>& row_entry,
                                             const std::vector<int>& row_depth, KvPool pool,
                                             bool write, KvBlockAllocator& allocator);
  // Depth-wise stages (mor_model_depthwise.cc).
  struct DepthwiseRows;
  absl::Status EnterGroups(std::span<const DepthwiseGroup> groups, KvBlockAllocator& allocator,
                           DepthwiseStepResult& result);
  absl::Status RecurseGroups(std::span<const DepthwiseGroup> groups, KvBlockAllocator& allocator,
                             DepthwiseStepResult& result);
  absl::Status ExitGroups(std::span<const DepthwiseGroup> groups, DepthwiseStepResult& result,
                          KvBlockAllocator& allocator);

  ModelConfig config_;
  LayerPlan plan_;
  MorWeights weights_;
  PagedKvCache cache_;
  at::ScalarType dtype_;
  at::Device device_;
  bool use_cpu_attention_;
  // False: every token runs every recursion and results are masked (the
  // no-depth-awareness benchmark reference).
  bool depth_aware_ = true;
  KvTable null_table_{{0}, 0};  // the reserved block 0, for masked rows
  // Depth-wise state of tokens in flight, indexed by slot.
  int32_t num_state_slots_ = 0;
  at::Tensor state_;                 // [slots, d] hidden state
  at::Tensor entry_state_;           // [slots, d] MoR input H1 (token choice)
  at::Tensor slot_gate_;             // [slots] fp32 gate g (token choice)
  std::vector<int32_t> slot_depth_;  // assigned depth (token choice)
  at::Tensor rope_cos_;              // [max_positions, head_dim / 2] fp32
  at::Tensor rope_sin_;
};

}  // namespace mor

#endif  // MOR_MODEL_MOR_MODEL_H_
