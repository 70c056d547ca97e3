#include "server/response_conversion.h"

#include <string>

namespace mor {
namespace {

std::string Str(std::string_view s) { return std::string(s); }

}  // namespace

v1::FinishReason ToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kStopToken:
      return v1::FINISH_REASON_STOP_TOKEN;
    case FinishReason::kStopString:
      return v1::FINISH_REASON_STOP_STRING;
    case FinishReason::kMaxTokens:
      return v1::FINISH_REASON_MAX_TOKENS;
    case FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kDeadline:
      return v1::FINISH_REASON_DEADLINE;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void FillUsage(const GenerationUsage& usage, v1::Usage* out) {
  out->set_prompt_tokens(static_cast<uint32_t>(usage.prompt_tokens));
  out->set_completion_tokens(static_cast<uint32_t>(usage.completion_tokens));
  out->clear_token_steps_per_depth();
  for (int64_t n : usage.token_steps_per_depth) {
    out->add_token_steps_per_depth(static_cast<uint64_t>(n));
  }
  out->set_estimated_flops(usage.estimated_flops);
  out->set_queue_seconds(usage.queue_seconds);
  out->set_compute_seconds(usage.compute_seconds);
}

v1::ModelInfo MakeModelInfo(const Engine& engine, const RequestLimits& limits) {
  const ModelConfig& config = engine.config();
  const KvCacheGeometry& geometry = engine.kv_geometry();
  v1::ModelInfo info;
  info.set_architecture(config.model_type);
  info.set_num_recursions(static_cast<uint32_t>(config.num_recursions));
  info.set_sharing_strategy(Str(SharingStrategyName(config.sharing)));
  if (config.has_router()) {
    info.set_router_type(Str(RouterTypeName(config.router_type)));
    info.set_router_arch(Str(RouterArchName(config.router_arch)));
  }
  info.set_kv_mode(Str(KvModeName(config.kv_mode)));
  info.set_vocab_size(static_cast<uint32_t>(config.vocab_size));
  info.set_max_context(static_cast<uint32_t>(config.max_position_embeddings));
  info.set_dtype(engine.dtype());
  info.set_device(engine.device());
  info.set_hidden_size(static_cast<uint32_t>(config.hidden_size));
  info.set_num_hidden_layers(static_cast<uint32_t>(config.num_hidden_layers));
  info.set_block_layers(static_cast<uint32_t>(geometry.block_layers));
  info.set_num_unique_layers(static_cast<uint32_t>(geometry.num_unique_layers));
  for (int64_t id : config.eos_token_ids) info.add_eos_token_ids(static_cast<uint32_t>(id));
  info.set_kv_block_size(static_cast<uint32_t>(geometry.block_size));
  info.set_kv_depth_blocks(static_cast<uint64_t>(geometry.num_depth_blocks - 1));
  info.set_max_tokens_cap(static_cast<uint32_t>(limits.max_tokens_cap));
  return info;
}

}  // namespace mor
