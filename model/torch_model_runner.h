// ModelRunner implemented with LibTorch (CPU or CUDA). The exception
// boundary of model/: no c10::Error leaves this class.
#ifndef MOR_MODEL_TORCH_MODEL_RUNNER_H_
#define MOR_MODEL_TORCH_MODEL_RUNNER_H_

#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "model/model_runner.h"

namespace mor {

class MorModel;

class TorchModelRunner : public ModelRunner {
 public:
  static absl::StatusOr<std::unique_ptr<TorchModelRunner>> Create(
      const ModelRunnerOptions& options);
  ~TorchModelRunner() override;

  const ModelConfig& config() const override;
  const KvCacheGeometry& kv_geometry() const override;
  std::string device() const override;
  std::string dtype() const override { return dtype_name_; }

  absl::StatusOr<StepResult> Step(std::span<const SequenceChunk> chunks,
                                  KvBlockAllocator& allocator) override;
  int32_t num_state_slots() const override;
  bool depth_aware() const override;
  absl::StatusOr<DepthwiseStepResult> StepDepthwise(std::span<const DepthwiseGroup> groups,
                                                    KvBlockAllocator& allocator) override;

 private:
  TorchModelRunner(std::unique_ptr<MorModel> model, std::string dtype_name);
  absl::Status Validate(std::span<const SequenceChunk> chunks) const;
  absl::Status ValidateDepthwise(std::span<const DepthwiseGroup> groups) const;

  std::unique_ptr<MorModel> model_;
  std::string dtype_name_;
};

}  // namespace mor

#endif  // MOR_MODEL_TORCH_MODEL_RUNNER_H_
