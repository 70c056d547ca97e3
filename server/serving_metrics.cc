#include "server/serving_metrics.h"

#include <algorithm>
#include <string>

#include "scheduler/flops_estimate.h"
#include "scheduler/scheduler.h"

#ifndef MOR_VERSION
#define MOR_VERSION "unknown"
#endif

namespace mor {
namespace {

using metrics::BuildCounter;
using metrics::BuildGauge;
using metrics::BuildHistogram;
using metrics::Counter;
using metrics::Family;
using metrics::Gauge;
using metrics::Histogram;

// vLLM's buckets (vllm/v1/metrics/loggers.py).
const Histogram::BucketBoundaries kTtftBuckets = {
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
    1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
const Histogram::BucketBoundaries kTokenLatencyBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                                          0.3,  0.4,   0.5,  0.75,  1.0, 2.5,  5.0,
                                                          7.5,  10.0,  20.0, 40.0,  80.0};
const Histogram::BucketBoundaries kRequestLatencyBuckets = {
    0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const Histogram::BucketBoundaries kTokenCountBuckets = {1,   8,    16,   32,   64,   128,  256,
                                                        512, 1024, 2048, 4096, 8192, 16384};
const Histogram::BucketBoundaries kStepSecondsBuckets = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0,  10.0};

constexpr const char* kStageNames[5] = {"schedule", "enter", "block", "exit", "sample"};

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string Depth(int r) { return std::to_string(r); }

Histogram* NewHistogram(metrics::Registry& registry, const std::string& name,
                        const std::string& help, const Histogram::BucketBoundaries& buckets) {
  return &BuildHistogram().Name(name).Help(help).Register(registry).Add({}, buckets);
}

}  // namespace

ServingMetrics::ServingMetrics(const Engine& engine, const ServingMetricsOptions& options)
    : engine_(&engine),
      registry_(std::make_shared<metrics::Registry>()),
      flops_per_token_recursion_(FlopsPerTokenRecursion(engine.config())) {
  const ModelConfig& config = engine.config();
  const SchedulerConfig& scheduler = engine.scheduler_config();
  BuildGauge()
      .Name("mor_model_info")
      .Help(
          "Model and build facts as labels (value 1): server version, model name, "
          "architecture, recursions Nr, sharing strategy, router type, KV mode, batching "
          "mode, device, dtype.")
      .Register(*registry_)
      .Add({{"version", MOR_VERSION},
            {"model_name", options.model_name},
            {"architecture", config.model_type},
            {"num_recursions", std::to_string(config.num_recursions)},
            {"sharing_strategy", std::string(SharingStrategyName(config.sharing))},
            {"router_type", config.sharing == SharingStrategy::kNone
                                ? std::string("none")
                                : std::string(RouterTypeName(config.router_type))},
            {"kv_mode", std::string(KvModeName(config.kv_mode))},
            {"batching_mode", BatchingModeName(scheduler.mode)},
            {"device", engine.device()},
            {"dtype", engine.dtype()}})
      .Set(1);
  auto config_gauge = [&](const std::string& name, const std::string& help, double value) {
    BuildGauge().Name(name).Help(help).Register(*registry_).Add({}).Set(value);
  };
  config_gauge("mor_scheduler_max_num_seqs", "Most requests running at once (--max_num_seqs).",
               scheduler.max_num_seqs);
  config_gauge("mor_scheduler_max_num_batched_tokens",
               "Token budget of one engine step (--max_num_batched_tokens).",
               scheduler.max_num_batched_tokens);
  config_gauge("mor_scheduler_max_queued_requests",
               "Most requests waiting for admission before Generate fails with "
               "RESOURCE_EXHAUSTED (--max_queued_requests).",
               scheduler.max_queued_requests);
  RegisterEngineFamilies(engine);
  RegisterRequestFamilies(engine);
}

void ServingMetrics::RegisterEngineFamilies(const Engine& engine) {
  metrics::Registry& r = *registry_;
  const int nr = engine.config().num_recursions;
  auto& steps = BuildCounter()
                    .Name("mor_recursion_token_steps_total")
                    .Help(
                        "Token-recursion steps executed: tokens (prompt tokens and generated "
                        "tokens fed back, recomputation after preemption included) that ran "
                        "recursion `depth` (1..Nr) of the shared block.")
                    .Register(r);
  auto& flops = BuildCounter()
                    .Name("mor_recursion_estimated_flops_total")
                    .Help(
                        "Estimated FLOPs of the shared block at recursion `depth`: token "
                        "steps x 2 x the block's linear-layer parameters (attention scores, "
                        "unique layers, embedding and LM head not counted).")
                    .Register(r);
  auto& batch = BuildHistogram()
                    .Name("mor_shared_block_batch_tokens")
                    .Help(
                        "Shared-block batch size per depth: the tokens at recursion `depth` "
                        "in one engine step (continuous depth-wise: rows of the step's "
                        "shared-block call at that depth; depth-grouped: the depth's call). "
                        "Observed once per step for each depth with at least one token.")
                    .Register(r);
  depth_.resize(nr);
  for (int d = 1; d <= nr; ++d) {
    depth_[d - 1].token_steps = &steps.Add({{"depth", Depth(d)}});
    depth_[d - 1].flops = &flops.Add({{"depth", Depth(d)}});
    depth_[d - 1].batch_tokens = &batch.Add({{"depth", Depth(d)}}, kTokenCountBuckets);
  }

  const KvCacheGeometry& g = engine.kv_geometry();
  auto& pool_capacity = BuildGauge()
                            .Name("mor_kv_cache_capacity_blocks")
                            .Help(
                                "Usable KV blocks of each pool (the reserved null block "
                                "excluded). pool=depth: the one pool every recursion depth "
                                "draws from; pool=unique: unique first/last layers.")
                            .Register(r);
  auto& pool_capacity_bytes = BuildGauge()
                                  .Name("mor_kv_cache_capacity_bytes")
                                  .Help("K+V bytes of each pool's usable blocks.")
                                  .Register(r);
  auto& pool_used = BuildGauge()
                        .Name("mor_kv_cache_used_blocks")
                        .Help("KV blocks in use in each pool after the latest step.")
                        .Register(r);
  auto& pool_used_bytes = BuildGauge()
                              .Name("mor_kv_cache_used_bytes")
                              .Help("K+V bytes of the blocks in use in each pool.")
                              .Register(r);
  auto& pool_ratio = BuildGauge()
                         .Name("mor_kv_cache_usage_ratio")
                         .Help(
                             "Used / usable blocks of each pool, 0..1 (vLLM's "
                             "kv_cache_usage_perc, per pool).")
                         .Register(r);
  auto add_pool = [&](const std::string& pool, int64_t blocks, int64_t bytes_per_block) {
    KvPoolGauges gauges;
    gauges.capacity = std::max<int64_t>(0, blocks - 1);
    pool_capacity.Add({{"pool", pool}}).Set(static_cast<double>(gauges.capacity));
    pool_capacity_bytes.Add({{"pool", pool}})
        .Set(static_cast<double>(gauges.capacity * bytes_per_block));
    gauges.used_blocks = &pool_used.Add({{"pool", pool}});
    gauges.used_bytes = &pool_used_bytes.Add({{"pool", pool}});
    gauges.usage_ratio = &pool_ratio.Add({{"pool", pool}});
    return gauges;
  };
  kv_depth_pool_ = add_pool("depth", g.num_depth_blocks, g.bytes_per_depth_block());
  if (g.num_unique_layers > 0) {
    kv_unique_pool_ = add_pool("unique", g.num_unique_blocks, g.bytes_per_unique_block());
  }
  auto& depth_capacity = BuildGauge()
                             .Name("mor_kv_cache_depth_capacity_blocks")
                             .Help(
                                 "Most KV blocks recursion `depth` can hold: the depths share "
                                 "one physical pool, so each depth's capacity is the whole "
                                 "depth pool (see mor_kv_cache_capacity_blocks).")
                             .Register(r);
  auto& depth_used = BuildGauge()
                         .Name("mor_kv_cache_depth_used_blocks")
                         .Help(
                             "Depth-pool KV blocks held by the depth-`depth` block tables "
                             "(blocks of tokens that reached that recursion).")
                         .Register(r);
  auto& depth_bytes = BuildGauge()
                          .Name("mor_kv_cache_depth_used_bytes")
                          .Help("K+V bytes held by the depth-`depth` block tables.")
                          .Register(r);
  auto& depth_ratio = BuildGauge()
                          .Name("mor_kv_cache_depth_usage_ratio")
                          .Help(
                              "Depth-`depth` blocks / usable depth-pool blocks, 0..1; the "
                              "depths' ratios add up to mor_kv_cache_usage_ratio{pool=\"depth\"}.")
                          .Register(r);
  kv_depth_.resize(g.num_depth_levels);
  for (int d = 1; d <= g.num_depth_levels; ++d) {
    depth_capacity.Add({{"depth", Depth(d)}}).Set(static_cast<double>(kv_depth_pool_.capacity));
    kv_depth_[d - 1].used_blocks = &depth_used.Add({{"depth", Depth(d)}});
    kv_depth_[d - 1].used_bytes = &depth_bytes.Add({{"depth", Depth(d)}});
    kv_depth_[d - 1].usage_ratio = &depth_ratio.Add({{"depth", Depth(d)}});
  }

  steps_ = &BuildCounter()
                .Name("mor_engine_steps_total")
                .Help("Engine steps that ran the model.")
                .Register(r)
                .Add({});
  preemptions_ = &BuildCounter()
                      .Name("mor_num_preemptions_total")
                      .Help(
                          "Requests preempted (KV blocks freed, recomputed later) because "
                          "the KV cache ran out.")
                      .Register(r)
                      .Add({});
  running_ = &BuildGauge()
                  .Name("mor_num_requests_running")
                  .Help("Requests being computed after the latest step.")
                  .Register(r)
                  .Add({});
  waiting_ = &BuildGauge()
                  .Name("mor_num_requests_waiting")
                  .Help("Requests waiting for admission after the latest step.")
                  .Register(r)
                  .Add({});
  iteration_tokens_ =
      NewHistogram(r, "mor_iteration_tokens", "Tokens entering the model in one engine step.",
                   kTokenCountBuckets);
  step_seconds_ =
      NewHistogram(r, "mor_engine_step_duration_seconds",
                   "Wall time of one engine step (schedule, model, sample).", kStepSecondsBuckets);
  auto& stages = BuildHistogram()
                     .Name("mor_engine_step_stage_duration_seconds")
                     .Help(
                         "Wall time of one engine step's stages: schedule; model enter "
                         "(embedding and unique first layers), block (the shared-block "
                         "recursions), exit (unique last layers and LM head); sample.")
                     .Register(r);
  for (int s = 0; s < 5; ++s) {
    stage_seconds_[s] = &stages.Add({{"stage", kStageNames[s]}}, kStepSecondsBuckets);
  }
}

void ServingMetrics::RegisterRequestFamilies(const Engine& engine) {
  metrics::Registry& r = *registry_;
  const int nr = engine.config().num_recursions;
  auto& policies = BuildCounter()
                       .Name("mor_requests_total")
                       .Help(
                           "Requests accepted by the engine, by recursion policy: "
                           "policy=\"fixed\" with depth = the requested depth, or "
                           "policy=\"adaptive\" (the router decides per token) with depth = "
                           "Nr, the deepest it may go.")
                       .Register(r);
  adaptive_requests_ = &policies.Add({{"policy", "adaptive"}, {"depth", Depth(nr)}});
  auto& exits = BuildCounter()
                    .Name("mor_adaptive_exit_tokens_total")
                    .Help(
                        "Generated tokens of adaptive-routing requests by exit depth: the "
                        "recursions the router gave the position whose output is the token "
                        "(the depth returned with each token). Fixed-depth requests and "
                        "prompt tokens are not counted.")
                    .Register(r);
  for (int d = 1; d <= nr; ++d) {
    depth_[d - 1].fixed_requests = &policies.Add({{"policy", "fixed"}, {"depth", Depth(d)}});
    depth_[d - 1].exit_tokens = &exits.Add({{"depth", Depth(d)}});
  }
  prompt_tokens_ = &BuildCounter()
                        .Name("mor_prompt_tokens_total")
                        .Help("Prompt tokens of requests the engine finished (any outcome).")
                        .Register(r)
                        .Add({});
  generation_tokens_ = &BuildCounter()
                            .Name("mor_generation_tokens_total")
                            .Help("Generated tokens delivered to requests.")
                            .Register(r)
                            .Add({});
  auto& success = BuildCounter()
                      .Name("mor_request_success_total")
                      .Help(
                          "Requests the engine finished, by finished_reason (eos, "
                          "stop_token, stop_string, max_tokens, cancelled: client gone or "
                          "shutdown, deadline).")
                      .Register(r);
  for (int i = 0; i < 6; ++i) {
    const auto reason = static_cast<FinishReason>(i);
    success_[i] = &success.Add({{"finished_reason", Lower(FinishReasonName(reason))}});
  }
  auto& failures = BuildCounter()
                       .Name("mor_request_failures_total")
                       .Help(
                           "Generate / GenerateUnary calls that ended with an error, by gRPC "
                           "status code (INVALID_ARGUMENT: validation, RESOURCE_EXHAUSTED: "
                           "queue full, UNAVAILABLE: shutting down, INTERNAL: model failure).")
                       .Register(r);
  for (int code = 1; code <= 16; ++code) {
    failures_[code] =
        &failures.Add({{"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(code))}});
  }
  ttft_ = NewHistogram(r, "mor_time_to_first_token_seconds",
                       "Time from submission to the first generated token.", kTtftBuckets);
  itl_ =
      NewHistogram(r, "mor_inter_token_latency_seconds",
                   "Time between successive token deliveries of a request.", kTokenLatencyBuckets);
  tpot_ = NewHistogram(r, "mor_request_time_per_output_token_seconds",
                       "Per request: (last token - first token time) / (tokens - 1); requests "
                       "with at least 2 tokens.",
                       kTokenLatencyBuckets);
  e2e_ = NewHistogram(r, "mor_e2e_request_latency_seconds",
                      "Time from submission to the engine's final result (OK outcomes).",
                      kRequestLatencyBuckets);
  queue_ = NewHistogram(r, "mor_request_queue_time_seconds",
                        "Time a request waited in the engine before it was first scheduled.",
                        kRequestLatencyBuckets);
  prefill_ = NewHistogram(r, "mor_request_prefill_time_seconds",
                          "Time from first scheduling to the first token.", kRequestLatencyBuckets);
  decode_ =
      NewHistogram(r, "mor_request_decode_time_seconds",
                   "Time from the first to the last token of a request.", kRequestLatencyBuckets);
}

void ServingMetrics::ObserveStep(const EngineStepStats& stats) {
  steps_->Increment();
  preemptions_->Increment(static_cast<double>(stats.preemptions));
  running_->Set(stats.num_running);
  waiting_->Set(stats.num_waiting);
  iteration_tokens_->Observe(static_cast<double>(stats.scheduled_tokens));
  const size_t depths = std::min(stats.token_steps_per_depth.size(), depth_.size());
  for (size_t i = 0; i < depths; ++i) {
    const double n = static_cast<double>(stats.token_steps_per_depth[i]);
    if (n <= 0) continue;
    depth_[i].token_steps->Increment(n);
    depth_[i].flops->Increment(n * flops_per_token_recursion_);
    depth_[i].batch_tokens->Observe(n);
  }
  const KvUsage& kv = stats.kv;
  auto set_pool = [](KvPoolGauges& pool, const KvPoolUsage& usage) {
    pool.used_blocks->Set(static_cast<double>(usage.used));
    pool.used_bytes->Set(static_cast<double>(usage.used * usage.bytes_per_block));
    pool.usage_ratio->Set(pool.capacity > 0 ? static_cast<double>(usage.used) / pool.capacity : 0);
  };
  set_pool(kv_depth_pool_, kv.depth);
  if (kv_unique_pool_) set_pool(*kv_unique_pool_, kv.unique);
  for (size_t d = 1; d <= kv_depth_.size() && d < kv.used_blocks_per_depth.size(); ++d) {
    const double used = static_cast<double>(kv.used_blocks_per_depth[d]);
    kv_depth_[d - 1].used_blocks->Set(used);
    if (d < kv.used_bytes_per_depth.size()) {
      kv_depth_[d - 1].used_bytes->Set(static_cast<double>(kv.used_bytes_per_depth[d]));
    }
    kv_depth_[d - 1].usage_ratio->Set(kv_depth_pool_.capacity > 0 ? used / kv_depth_pool_.capacity
                                                                  : 0);
  }
  step_seconds_->Observe(stats.total_seconds);
  stage_seconds_[0]->Observe(stats.schedule_seconds);
  for (int s = 0; s < 3; ++s) stage_seconds_[s + 1]->Observe(stats.stage_seconds[s]);
  stage_seconds_[4]->Observe(stats.sample_seconds);
}

std::vector<metrics::MetricFamily> ServingMetrics::Collect() const {
  if (engine_->idle()) {
    // No request is queued or running, so none holds KV blocks.
    running_->Set(0);
    waiting_->Set(0);
    for (const KvPoolGauges* pool :
         {&kv_depth_pool_, kv_unique_pool_ ? &*kv_unique_pool_ : nullptr}) {
      if (pool == nullptr) continue;
      pool->used_blocks->Set(0);
      pool->used_bytes->Set(0);
      pool->usage_ratio->Set(0);
    }
    for (const KvDepth& depth : kv_depth_) {
      depth.used_blocks->Set(0);
      depth.used_bytes->Set(0);
      depth.usage_ratio->Set(0);
    }
  }
  return registry_->Collect();
}

void ServingMetrics::RequestAccepted(const DepthPolicy& policy) {
  if (policy.adaptive()) {
    adaptive_requests_->Increment();
  } else if (policy.fixed_depth >= 1 && policy.fixed_depth <= static_cast<int>(depth_.size())) {
    depth_[policy.fixed_depth - 1].fixed_requests->Increment();
  }
}

void ServingMetrics::RequestRejected(const absl::Status& status) {
  const int code = static_cast<int>(status.code());
  failures_[code >= 1 && code <= 16 ? code : static_cast<int>(absl::StatusCode::kUnknown)]
      ->Increment();
}

void ServingMetrics::TokensDelivered(bool adaptive, absl::Span<const GeneratedToken> tokens,
                                     bool first, double seconds) {
  generation_tokens_->Increment(static_cast<double>(tokens.size()));
  (first ? ttft_ : itl_)->Observe(seconds);
  if (!adaptive) return;
  for (const GeneratedToken& token : tokens) {
    if (token.depth >= 1 && token.depth <= static_cast<int>(depth_.size())) {
      depth_[token.depth - 1].exit_tokens->Increment();
    }
  }
}

void ServingMetrics::RequestFinished(const GenerationResult& result, const RequestTiming& timing) {
  prompt_tokens_->Increment(result.usage.prompt_tokens);
  if (!result.status.ok()) {
    RequestRejected(result.status);
    return;
  }
  success_[static_cast<int>(result.reason)]->Increment();
  e2e_->Observe(timing.e2e_seconds);
  queue_->Observe(result.usage.queue_seconds);
  if (timing.first_token_seconds) {
    prefill_->Observe(std::max(0.0, *timing.first_token_seconds - result.usage.queue_seconds));
    decode_->Observe(timing.decode_seconds);
    if (timing.num_tokens >= 2) {
      tpot_->Observe(timing.decode_seconds / static_cast<double>(timing.num_tokens - 1));
    }
  }
}

}  // namespace mor
