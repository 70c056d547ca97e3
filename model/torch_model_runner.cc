#include "model/torch_model_runner.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/Allocator.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/DeviceType.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <thread>
#include <unordered_set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "model/mor_model.h"
#include "model/mor_weights.h"
#include "model/safetensors_file.h"
#include "model/status_macros.h"

namespace mor {
namespace {

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return at::Device(at::kCPU);
  absl::string_view rest = name;
  if (absl::ConsumePrefix(&rest, "cuda")) {
    int index = 0;
    if (!rest.empty() && !(absl::ConsumePrefix(&rest, ":") && absl::SimpleAtoi(rest, &index))) {
      return absl::InvalidArgumentError(
          absl::StrCat("device '", name, "': expected cpu, cuda or cuda:N"));
    }
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", name, "': this LibTorch has no usable CUDA device"));
    }
    if (index < 0 || index >= static_cast<int>(at::getNumGPUs())) {
      return absl::InvalidArgumentError(
          absl::StrCat("device '", name, "': only ", at::getNumGPUs(), " CUDA device(s)"));
    }
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device '", name, "': expected cpu, cuda or cuda:N"));
}

absl::StatusOr<at::ScalarType> ParseDType(const std::string& name, const at::Device& device) {
  if (name == "float32" || name == "fp32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16") {
    if (device.is_cpu()) {
      return absl::InvalidArgumentError("dtype float16 is supported on CUDA only; use bfloat16");
    }
    return at::kHalf;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype '", name, "': expected float32, bfloat16 or float16"));
}

std::string CanonicalDType(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    default:
      return "float32";
  }
}

}  // namespace

absl::StatusOr<DeviceMemoryInfo> QueryDeviceMemory(const std::string& device_name) {
  try {
    MOR_ASSIGN_OR_RETURN(at::Device device, ParseDevice(device_name));
    if (!device.is_cuda()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", device_name, "': memory is reported for CUDA devices only"));
    }
    // The CUDA caching allocator (c10_cuda): cudaMemGetInfo on the device,
    // and its own counters of reserved and allocated bytes.
    c10::DeviceAllocator* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    const auto [driver_free, total] = allocator->getMemoryInfo(device.index());
    const c10::CachingDeviceAllocator::DeviceStats stats =
        allocator->getDeviceStats(device.index());
    constexpr auto kAll = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    const int64_t reserved = stats.reserved_bytes[kAll].current;
    const int64_t allocated = stats.allocated_bytes[kAll].current;
    DeviceMemoryInfo info;
    info.total_bytes = static_cast<int64_t>(total);
    info.free_bytes =
        static_cast<int64_t>(driver_free) + std::max<int64_t>(0, reserved - allocated);
    info.allocated_bytes = allocated;
    return info;
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("querying the memory of device '", device_name, "': ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<ModelRunner>> CreateTorchModelRunner(
    const ModelRunnerOptions& options) {
  MOR_ASSIGN_OR_RETURN(std::unique_ptr<TorchModelRunner> runner, TorchModelRunner::Create(options));
  return std::unique_ptr<ModelRunner>(std::move(runner));
}

absl::StatusOr<std::unique_ptr<TorchModelRunner>> TorchModelRunner::Create(
    const ModelRunnerOptions& options) {
  try {
    if (options.block_size <= 0 || options.block_size > 1024) {
      return absl::InvalidArgumentError(
          absl::StrCat("block_size must be in 1..1024 (got ", options.block_size, ")"));
    }
    if (options.num_state_slots < 0 || options.num_state_slots > (1 << 24)) {
      return absl::InvalidArgumentError("num_state_slots must be in 0..16777216");
    }
    auto check_blocks = [](int64_t depth_blocks, int64_t unique_blocks) -> absl::Status {
      if (depth_blocks < 2 || unique_blocks < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("KV pools need at least 2 blocks (block 0 is reserved); got ",
                         depth_blocks, " depth and ", unique_blocks, " unique blocks"));
      }
      return absl::OkStatus();
    };
    if (!options.kv_pool_sizer) {
      MOR_RETURN_IF_ERROR(check_blocks(options.num_depth_blocks, options.num_unique_blocks));
    }
    MOR_ASSIGN_OR_RETURN(at::Device device, ParseDevice(options.device));
    MOR_ASSIGN_OR_RETURN(at::ScalarType dtype, ParseDType(options.dtype, device));
    const int threads = options.num_threads > 0
                            ? options.num_threads
                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(threads);

    const std::filesystem::path dir(options.model_dir);
    MOR_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile((dir / "config.json").string()));
    MOR_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                         SafetensorsCheckpoint::OpenDirectory(options.model_dir));
    const LayerPlan plan = config.MakeLayerPlan();
    MOR_ASSIGN_OR_RETURN(MorWeights weights,
                         LoadMorWeights(*checkpoint, config, plan, dtype, device));

    KvCacheGeometry geometry = MakeKvCacheGeometry(config, options.block_size,
                                                   static_cast<int32_t>(c10::elementSize(dtype)));
    // The weights are on the device now: a sizer sees the memory they left.
    KvPoolBlocks blocks{options.num_depth_blocks, options.num_unique_blocks};
    if (options.kv_pool_sizer) {
      MOR_ASSIGN_OR_RETURN(blocks, options.kv_pool_sizer(geometry));
      MOR_RETURN_IF_ERROR(check_blocks(blocks.num_depth_blocks, blocks.num_unique_blocks));
    }
    geometry.num_depth_blocks = blocks.num_depth_blocks;
    geometry.num_unique_blocks =
        plan.num_unique_layers == 0
            ? 0
            : (blocks.num_unique_blocks > 0 ? blocks.num_unique_blocks : blocks.num_depth_blocks);
    if (options.attention != "auto" && options.attention != "sdpa") {
      return absl::InvalidArgumentError(
          absl::StrCat("attention '", options.attention, "': expected auto or sdpa"));
    }
    auto model =
        std::make_unique<MorModel>(std::move(config), std::move(weights), geometry, dtype, device,
                                   options.attention, options.num_state_slots, options.depth_aware);
    return std::unique_ptr<TorchModelRunner>(
        new TorchModelRunner(std::move(model), CanonicalDType(dtype)));
  } catch (const std::exception& e) {
    return absl::InternalError(
        absl::StrCat("loading model from '", options.model_dir, "': ", e.what()));
  }
}

TorchModelRunner::TorchModelRunner(std::unique_ptr<MorModel> model, std::string dtype_name)
    : model_(std::move(model)), dtype_name_(std::move(dtype_name)) {}

TorchModelRunner::~TorchModelRunner() = default;

const ModelConfig& TorchModelRunner::config() const { return model_->config(); }
const KvCacheGeometry& TorchModelRunner::kv_geometry() const { return model_->geometry(); }
std::string TorchModelRunner::device() const { return model_->device().str(); }

absl::Status TorchModelRunner::Validate(std::span<const SequenceChunk> chunks) const {
  const ModelConfig& config = model_->config();
  const KvCacheGeometry& geometry = model_->geometry();
  std::unordered_set<const SequenceKv*> seen;
  for (size_t c = 0; c < chunks.size(); ++c) {
    const SequenceChunk& chunk = chunks[c];
    auto error = [&](auto&&... parts) {
      return absl::InvalidArgumentError(absl::StrCat("chunk ", c, ": ", parts...));
    };
    if (chunk.tokens.empty()) return error("no tokens");
    if (chunk.kv == nullptr) return error("no KV tables");
    if (!seen.insert(chunk.kv).second) return error("sequence appears twice in one step");
    if (chunk.start_position < 0 ||
        chunk.start_position + static_cast<int64_t>(chunk.tokens.size()) >
            config.max_position_embeddings) {
      return error("positions ", chunk.start_position, "..",
                   chunk.start_position + chunk.tokens.size() - 1,
                   " exceed max_position_embeddings ", config.max_position_embeddings);
    }
    for (int32_t id : chunk.tokens) {
      if (id < 0 || id >= config.vocab_size) {
        return error("token id ", id, " outside the vocabulary [0, ", config.vocab_size, ")");
      }
    }
    if (chunk.policy.fixed_depth < 0 || chunk.policy.fixed_depth > config.num_recursions) {
      return error("depth ", chunk.policy.fixed_depth, " outside 1..", config.num_recursions);
    }
    if (static_cast<int>(chunk.kv->depths.size()) != geometry.num_depth_levels) {
      return error("expected ", geometry.num_depth_levels, " depth tables, got ",
                   chunk.kv->depths.size());
    }
    auto check_table = [&](const KvTable& table, const char* what) -> absl::Status {
      if (table.num_tokens < 0 ||
          static_cast<int64_t>(table.blocks.size()) * geometry.block_size < table.num_tokens) {
        return error(what, " table holds ", table.num_tokens, " entries but only ",
                     table.blocks.size(), " blocks");
      }
      return absl::OkStatus();
    };
    MOR_RETURN_IF_ERROR(check_table(chunk.kv->unique, "unique"));
    for (const KvTable& table : chunk.kv->depths) MOR_RETURN_IF_ERROR(check_table(table, "depth"));
    // Every token takes recursion 1, so depth 1 holds every earlier token.
    if (chunk.kv->depths[0].num_tokens != chunk.start_position ||
        (geometry.num_unique_layers > 0 && chunk.kv->unique.num_tokens != chunk.start_position)) {
      return error("start_position ", chunk.start_position,
                   " does not match the KV cache, which holds ", chunk.kv->depths[0].num_tokens,
                   " tokens");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<StepResult> TorchModelRunner::Step(std::span<const SequenceChunk> chunks,
                                                  KvBlockAllocator& allocator) {
  MOR_RETURN_IF_ERROR(Validate(chunks));
  if (chunks.empty()) return StepResult{};
  try {
    return model_->Forward(chunks, allocator);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("model step failed: ", e.what()));
  }
}

}  // namespace mor

namespace mor {

int32_t TorchModelRunner::num_state_slots() const { return model_->num_state_slots(); }
bool TorchModelRunner::depth_aware() const { return model_->depth_aware(); }

absl::Status TorchModelRunner::ValidateDepthwise(std::span<const DepthwiseGroup> groups) const {
  const ModelConfig& config = model_->config();
  const KvCacheGeometry& geometry = model_->geometry();
  std::unordered_set<const SequenceKv*> seen_kv;
  std::unordered_set<int32_t> seen_slots;
  for (size_t g = 0; g < groups.size(); ++g) {
    const DepthwiseGroup& group = groups[g];
    auto error = [&](auto&&... parts) {
      return absl::InvalidArgumentError(absl::StrCat("group ", g, ": ", parts...));
    };
    if (group.kv == nullptr) return error("no KV tables");
    if (!seen_kv.insert(group.kv).second) return error("sequence appears twice in one step");
    if (group.slots.empty()) return error("no tokens");
    if (static_cast<int>(group.kv->depths.size()) != geometry.num_depth_levels) {
      return error("expected ", geometry.num_depth_levels, " depth tables, got ",
                   group.kv->depths.size());
    }
    for (int32_t slot : group.slots) {
      if (slot < 0 || slot >= model_->num_state_slots()) {
        return error("state slot ", slot, " outside [0, ", model_->num_state_slots(), ")");
      }
      if (!seen_slots.insert(slot).second) return error("state slot ", slot, " used twice");
    }
    const int64_t end = group.start_position + static_cast<int64_t>(group.slots.size());
    if (group.start_position < 0 || end > config.max_position_embeddings) {
      return error("positions exceed max_position_embeddings ", config.max_position_embeddings);
    }
    if (group.policy.fixed_depth < 0 || group.policy.fixed_depth > config.num_recursions) {
      return error("depth ", group.policy.fixed_depth, " outside 1..", config.num_recursions);
    }
    if (group.enter) {
      if (group.tokens.size() != group.slots.size()) return error("tokens and slots differ");
      for (int32_t id : group.tokens) {
        if (id < 0 || id >= config.vocab_size) {
          return error("token id ", id, " outside the vocabulary [0, ", config.vocab_size, ")");
        }
      }
      if (group.kv->depths[0].num_tokens != group.start_position ||
          (geometry.num_unique_layers > 0 && group.kv->unique.num_tokens != group.start_position)) {
        return error("start_position ", group.start_position,
                     " does not match the KV cache, which holds ", group.kv->depths[0].num_tokens,
                     " tokens");
      }
    } else {
      if (group.depth < 2 || group.depth > config.num_recursions) {
        return error("recursion ", group.depth, " outside 2..", config.num_recursions,
                     " (recursion 1 is taken when entering)");
      }
      if (group.active.size() != group.slots.size()) return error("active mask size differs");
      if (std::none_of(group.active.begin(), group.active.end(), [](uint8_t a) { return a; })) {
        return error("no active token");
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<DepthwiseStepResult> TorchModelRunner::StepDepthwise(
    std::span<const DepthwiseGroup> groups, KvBlockAllocator& allocator) {
  MOR_RETURN_IF_ERROR(ValidateDepthwise(groups));
  if (groups.empty()) return DepthwiseStepResult{};
  try {
    return model_->ForwardDepthwise(groups, allocator);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("model depth-wise step failed: ", e.what()));
  }
}

}  // namespace mor
