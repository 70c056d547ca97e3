// ServingMetrics without LibTorch or gRPC traffic: an Engine over the fake
// model runner (never given work, so it stays idle) and synthetic step stats
// and request events.
#include "server/serving_metrics.h"

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "scheduler/engine.h"
#include "scheduler/flops_estimate.h"
#include "server/metrics/text_serializer.h"
#include "tests/scheduler/fake_model_runner.h"
#include "tests/server/metrics/http_get.h"

namespace mor {
namespace {

using Samples = std::map<std::string, double>;

Samples Parse(const std::vector<metrics::MetricFamily>& families) {
  auto samples = testing::ParseSamples(metrics::TextSerializer().Serialize(families));
  EXPECT_TRUE(samples.ok()) << samples.status();
  return samples.ok() ? *samples : Samples{};
}

class ServingMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    scheduler_testing::FakeRunnerOptions options;
    options.num_recursions = 3;
    options.num_depth_blocks = 101;
    options.num_unique_blocks = 101;
    auto engine = Engine::Create(std::make_unique<scheduler_testing::FakeModelRunner>(options));
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    metrics_ = std::make_shared<ServingMetrics>(*engine_, ServingMetricsOptions{"fake"});
  }

  // The registry as last set (Collect would refresh the idle engine's gauges).
  Samples Raw() const { return Parse(metrics_->registry()->Collect()); }

  std::unique_ptr<Engine> engine_;
  std::shared_ptr<ServingMetrics> metrics_;
};

TEST_F(ServingMetricsTest, StepStatsBecomePerDepthMetrics) {
  EngineStepStats stats;
  stats.scheduled_tokens = 5;
  stats.token_steps_per_depth = {5, 3, 0};
  stats.preemptions = 2;
  stats.num_running = 3;
  stats.num_waiting = 4;
  stats.kv.depth = {/*capacity=*/100, /*used=*/10, /*free=*/90, /*bytes_per_block=*/64};
  stats.kv.unique = {100, 5, 95, 32};
  stats.kv.used_blocks_per_depth = {5, 6, 3, 1};
  stats.kv.used_bytes_per_depth = {160, 384, 192, 64};
  stats.schedule_seconds = 0.001;
  stats.stage_seconds[1] = 0.004;
  stats.total_seconds = 0.01;
  metrics_->ObserveStep(stats);
  stats.token_steps_per_depth = {2, 2, 1};
  metrics_->ObserveStep(stats);

  const Samples s = Raw();
  const double flops = FlopsPerTokenRecursion(engine_->config());
  EXPECT_EQ(s.at("mor_recursion_token_steps_total{depth=\"1\"}"), 7);
  EXPECT_EQ(s.at("mor_recursion_token_steps_total{depth=\"2\"}"), 5);
  EXPECT_EQ(s.at("mor_recursion_token_steps_total{depth=\"3\"}"), 1);
  EXPECT_DOUBLE_EQ(s.at("mor_recursion_estimated_flops_total{depth=\"1\"}"), 7 * flops);
  // Depths without tokens in a step are not observed.
  EXPECT_EQ(s.at("mor_shared_block_batch_tokens_count{depth=\"1\"}"), 2);
  EXPECT_EQ(s.at("mor_shared_block_batch_tokens_count{depth=\"3\"}"), 1);
  EXPECT_EQ(s.at("mor_shared_block_batch_tokens_bucket{depth=\"1\",le=\"1\"}"), 0);
  EXPECT_EQ(s.at("mor_shared_block_batch_tokens_bucket{depth=\"1\",le=\"8\"}"), 2);
  EXPECT_EQ(s.at("mor_engine_steps_total"), 2);
  EXPECT_EQ(s.at("mor_num_preemptions_total"), 4);
  EXPECT_EQ(s.at("mor_num_requests_running"), 3);
  EXPECT_EQ(s.at("mor_num_requests_waiting"), 4);
  EXPECT_EQ(s.at("mor_kv_cache_capacity_blocks{pool=\"depth\"}"), 100);
  EXPECT_EQ(s.at("mor_kv_cache_used_blocks{pool=\"depth\"}"), 10);
  EXPECT_EQ(s.at("mor_kv_cache_used_bytes{pool=\"depth\"}"), 640);
  EXPECT_DOUBLE_EQ(s.at("mor_kv_cache_usage_ratio{pool=\"depth\"}"), 0.1);
  EXPECT_DOUBLE_EQ(s.at("mor_kv_cache_usage_ratio{pool=\"unique\"}"), 0.05);
  EXPECT_EQ(s.at("mor_kv_cache_depth_used_blocks{depth=\"1\"}"), 6);
  EXPECT_EQ(s.at("mor_kv_cache_depth_used_bytes{depth=\"2\"}"), 192);
  EXPECT_DOUBLE_EQ(s.at("mor_kv_cache_depth_usage_ratio{depth=\"3\"}"), 0.01);
  EXPECT_EQ(s.at("mor_kv_cache_depth_capacity_blocks{depth=\"2\"}"), 100);
  EXPECT_EQ(s.at("mor_engine_step_stage_duration_seconds_count{stage=\"block\"}"), 2);
  EXPECT_DOUBLE_EQ(s.at("mor_engine_step_stage_duration_seconds_sum{stage=\"block\"}"), 0.008);
  EXPECT_DOUBLE_EQ(s.at("mor_iteration_tokens_sum"), 10);

  // The engine is idle: a scrape shows no load, whatever the last step said.
  const Samples scraped = Parse(metrics_->Collect());
  EXPECT_EQ(scraped.at("mor_num_requests_running"), 0);
  EXPECT_EQ(scraped.at("mor_num_requests_waiting"), 0);
  EXPECT_EQ(scraped.at("mor_kv_cache_used_blocks{pool=\"unique\"}"), 0);
  EXPECT_EQ(scraped.at("mor_kv_cache_depth_used_blocks{depth=\"1\"}"), 0);
  EXPECT_EQ(scraped.at("mor_recursion_token_steps_total{depth=\"1\"}"), 7);
}

TEST_F(ServingMetricsTest, RequestEvents) {
  metrics_->RequestAccepted(DepthPolicy::Adaptive());
  metrics_->RequestAccepted(DepthPolicy::Fixed(2));
  metrics_->RequestAccepted(DepthPolicy::Fixed(2));
  std::vector<GeneratedToken> tokens(3);
  tokens[0].depth = 1;
  tokens[1].depth = 3;
  tokens[2].depth = 3;
  metrics_->TokensDelivered(/*adaptive=*/true, tokens, /*first=*/true, 0.25);
  metrics_->TokensDelivered(/*adaptive=*/false, tokens, /*first=*/false, 0.05);

  GenerationResult ok;
  ok.reason = FinishReason::kEos;
  ok.usage.prompt_tokens = 7;
  ok.usage.queue_seconds = 0.1;
  RequestTiming timing;
  timing.e2e_seconds = 1.0;
  timing.first_token_seconds = 0.25;
  timing.decode_seconds = 0.5;
  timing.num_tokens = 3;
  metrics_->RequestFinished(ok, timing);
  GenerationResult failed;
  failed.status = absl::InternalError("model step failed");
  failed.usage.prompt_tokens = 2;
  metrics_->RequestFinished(failed, RequestTiming{});
  metrics_->RequestRejected(absl::ResourceExhaustedError("queue full"));

  const Samples s = Raw();
  EXPECT_EQ(s.at("mor_requests_total{depth=\"3\",policy=\"adaptive\"}"), 1);
  EXPECT_EQ(s.at("mor_requests_total{depth=\"2\",policy=\"fixed\"}"), 2);
  EXPECT_EQ(s.at("mor_requests_total{depth=\"1\",policy=\"fixed\"}"), 0);
  EXPECT_EQ(s.at("mor_adaptive_exit_tokens_total{depth=\"1\"}"), 1);
  EXPECT_EQ(s.at("mor_adaptive_exit_tokens_total{depth=\"2\"}"), 0);
  EXPECT_EQ(s.at("mor_adaptive_exit_tokens_total{depth=\"3\"}"), 2);  // fixed: not counted
  EXPECT_EQ(s.at("mor_generation_tokens_total"), 6);
  EXPECT_EQ(s.at("mor_time_to_first_token_seconds_count"), 1);
  EXPECT_DOUBLE_EQ(s.at("mor_time_to_first_token_seconds_sum"), 0.25);
  EXPECT_EQ(s.at("mor_inter_token_latency_seconds_count"), 1);
  EXPECT_EQ(s.at("mor_request_success_total{finished_reason=\"eos\"}"), 1);
  EXPECT_EQ(s.at("mor_request_success_total{finished_reason=\"max_tokens\"}"), 0);
  EXPECT_EQ(s.at("mor_request_failures_total{code=\"INTERNAL\"}"), 1);
  EXPECT_EQ(s.at("mor_request_failures_total{code=\"RESOURCE_EXHAUSTED\"}"), 1);
  EXPECT_EQ(s.at("mor_prompt_tokens_total"), 9);
  EXPECT_EQ(s.at("mor_e2e_request_latency_seconds_count"), 1);  // OK outcomes only
  EXPECT_DOUBLE_EQ(s.at("mor_e2e_request_latency_seconds_sum"), 1.0);
  EXPECT_DOUBLE_EQ(s.at("mor_request_queue_time_seconds_sum"), 0.1);
  EXPECT_DOUBLE_EQ(s.at("mor_request_prefill_time_seconds_sum"), 0.15);
  EXPECT_DOUBLE_EQ(s.at("mor_request_decode_time_seconds_sum"), 0.5);
  EXPECT_DOUBLE_EQ(s.at("mor_request_time_per_output_token_seconds_sum"), 0.25);
}

TEST_F(ServingMetricsTest, ModelInfo) {
  const Samples s = Raw();
  bool found = false;
  for (const auto& [series, value] : s) {
    if (series.rfind("mor_model_info{", 0) != 0) continue;
    found = true;
    EXPECT_EQ(value, 1);
    EXPECT_THAT(series, ::testing::HasSubstr("model_name=\"fake\""));
    EXPECT_THAT(series, ::testing::HasSubstr("num_recursions=\"3\""));
    EXPECT_THAT(series, ::testing::HasSubstr("batching_mode=\"continuous_depthwise\""));
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace mor
