// A deterministic, torch-free ModelRunner for engine tests. The logits make
// token (last + 1) % vocab the most likely, then (last + 2) % vocab, and so
// on; every token reaches the fixed depth (adaptive: `adaptive_depth`). KV
// blocks are drawn from the allocator exactly as the real model does (one
// block per `block_size` entries of each table a token writes).
#ifndef MOR_TESTS_SERVER_FAKE_MODEL_RUNNER_H_
#define MOR_TESTS_SERVER_FAKE_MODEL_RUNNER_H_

#include <atomic>
#include <string>

#include "absl/time/time.h"
#include "model/model_runner.h"

namespace mor::testing {

class FakeModelRunner : public ModelRunner {
 public:
  // vocab 16, Nr 3 (cycle, one layer per recursion), context 64, eos {15}.
  static ModelConfig DefaultConfig();

  explicit FakeModelRunner(ModelConfig config = DefaultConfig(), int32_t block_size = 4,
                           int64_t num_blocks = 64);

  const ModelConfig& config() const override { return config_; }
  const KvCacheGeometry& kv_geometry() const override { return geometry_; }
  std::string device() const override { return "cpu"; }
  std::string dtype() const override { return "float32"; }
  absl::StatusOr<StepResult> Step(std::span<const SequenceChunk> chunks,
                                  KvBlockAllocator& allocator) override;

  // Sleeps this long in every Step (any thread may set it).
  void set_step_delay(absl::Duration delay) { step_delay_ns_ = absl::ToInt64Nanoseconds(delay); }
  int adaptive_depth = 2;

 private:
  ModelConfig config_;
  KvCacheGeometry geometry_;
  std::atomic<int64_t> step_delay_ns_{0};
};

}  // namespace mor::testing

#endif  // MOR_TESTS_SERVER_FAKE_MODEL_RUNNER_H_
