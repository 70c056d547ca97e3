// The MoR server's Prometheus metrics (names, units and HELP texts: see
// serving_metrics.cc; the list is in README.md "Metrics"). Fed from two
// places: the engine's step observer (per-step depth compute, KV per depth,
// queue, preemptions, stage times) and the gRPC layer (per-request latency,
// tokens, outcomes). The scheduler only emits plain stats; this class is the
// only code that turns them into metrics.
#ifndef MOR_SERVER_SERVING_METRICS_H_
#define MOR_SERVER_SERVING_METRICS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "scheduler/engine.h"
#include "scheduler/engine_core.h"
#include "scheduler/generation_types.h"
#include "server/metrics/registry.h"

namespace mor {

struct ServingMetricsOptions {
  // mor_model_info{model_name}: e.g. the model folder's name.
  std::string model_name;
};

// Server-side times of one request, measured by RequestMetricsSink from the
// moment the server submitted it to the engine.
struct RequestTiming {
  double e2e_seconds = 0;                     // submit -> finish
  std::optional<double> first_token_seconds;  // submit -> first token, if any
  double decode_seconds = 0;                  // first -> last token
  int64_t num_tokens = 0;                     // tokens delivered
};

// Thread-safe; updates are lock-free (atomics behind references cached at
// construction), so neither the engine thread nor gRPC threads contend on a
// mutex. Must outlive the engine's step observer and every request sink that
// points at it; `engine` must outlive it.
//
// Scrape it (Collect), not its registry: the step observer only runs after
// steps that did work, so when requests leave without a step (all aborted or
// expired) Collect zeroes the load gauges (running, waiting, KV used) of an
// idle engine.
class ServingMetrics : public metrics::Collectable {
 public:
  // Registers every family in a new registry, with the depth label 1..Nr of
  // `engine`'s model (KV: 1..num_depth_levels) and every known label value
  // (finish reasons, gRPC codes, policies) created at zero, so dashboards and
  // alerts have series before the first request.
  ServingMetrics(const Engine& engine, const ServingMetricsOptions& options);
  ServingMetrics(const ServingMetrics&) = delete;
  ServingMetrics& operator=(const ServingMetrics&) = delete;

  const std::shared_ptr<metrics::Registry>& registry() const { return registry_; }
  // The registry's families, after refreshing the load gauges of an idle
  // engine.
  std::vector<metrics::MetricFamily> Collect() const override;

  // The engine thread, after every step (Engine::SetStepObserver).
  void ObserveStep(const EngineStepStats& stats);

  // A request the engine accepted.
  void RequestAccepted(const DepthPolicy& policy);
  // A call that ends with `status` (not OK) without an engine result:
  // validation errors, a full queue, a stopped engine.
  void RequestRejected(const absl::Status& status);
  // Tokens delivered to a request (`adaptive`: its policy), with the time
  // since submission (first call) or since the previous delivery.
  void TokensDelivered(bool adaptive, absl::Span<const GeneratedToken> tokens, bool first,
                       double seconds);
  // The engine's final result of a request (OK: an outcome by finish reason;
  // otherwise a failure by code).
  void RequestFinished(const GenerationResult& result, const RequestTiming& timing);

 private:
  struct PerDepth {
    metrics::Counter* token_steps = nullptr;
    metrics::Counter* flops = nullptr;
    metrics::Histogram* batch_tokens = nullptr;
    metrics::Counter* exit_tokens = nullptr;
    metrics::Counter* fixed_requests = nullptr;
  };
  struct KvDepth {
    metrics::Gauge* used_blocks = nullptr;
    metrics::Gauge* used_bytes = nullptr;
    metrics::Gauge* usage_ratio = nullptr;
  };
  struct KvPoolGauges {
    metrics::Gauge* used_blocks = nullptr;
    metrics::Gauge* used_bytes = nullptr;
    metrics::Gauge* usage_ratio = nullptr;
    int64_t capacity = 0;
  };

  void RegisterEngineFamilies(const Engine& engine);
  void RegisterRequestFamilies(const Engine& engine);

  const Engine* const engine_;
  std::shared_ptr<metrics::Registry> registry_;
  double flops_per_token_recursion_ = 0;

  // Per-step.
  std::vector<PerDepth> depth_;    // [r-1]
  std::vector<KvDepth> kv_depth_;  // [r-1], r in 1..num_depth_levels
  KvPoolGauges kv_depth_pool_;
  std::optional<KvPoolGauges> kv_unique_pool_;  // middle_* models only
  metrics::Counter* steps_ = nullptr;
  metrics::Counter* preemptions_ = nullptr;
  metrics::Gauge* running_ = nullptr;
  metrics::Gauge* waiting_ = nullptr;
  metrics::Histogram* iteration_tokens_ = nullptr;
  metrics::Histogram* step_seconds_ = nullptr;
  // schedule, enter, block, exit, sample.
  metrics::Histogram* stage_seconds_[5] = {};

  // Per-request.
  metrics::Counter* adaptive_requests_ = nullptr;
  metrics::Counter* prompt_tokens_ = nullptr;
  metrics::Counter* generation_tokens_ = nullptr;
  metrics::Counter* success_[6] = {};    // by FinishReason
  metrics::Counter* failures_[17] = {};  // by absl::StatusCode 0..16 ([0] unused)
  metrics::Histogram* ttft_ = nullptr;
  metrics::Histogram* itl_ = nullptr;
  metrics::Histogram* tpot_ = nullptr;
  metrics::Histogram* e2e_ = nullptr;
  metrics::Histogram* queue_ = nullptr;
  metrics::Histogram* prefill_ = nullptr;
  metrics::Histogram* decode_ = nullptr;
};

}  // namespace mor

#endif  // MOR_SERVER_SERVING_METRICS_H_
