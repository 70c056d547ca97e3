#include "bench/loadgen/server_sampler.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"

namespace mor::loadgen {

ServerSampler::ServerSampler(const MetricsScraper* scraper, absl::Duration interval,
                             std::function<int64_t()> cached_tokens)
    : scraper_(scraper), interval_(interval), cached_tokens_(std::move(cached_tokens)) {}

ServerSampler::~ServerSampler() {
  if (thread_.joinable()) Stop();
}

void ServerSampler::Start() {
  thread_ = std::thread([this] { Loop(); });
}

KvSummary ServerSampler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  KvSummary s = summary_;
  if (s.samples > 0) {
    s.mean_cached_tokens = sum_tokens_ / s.samples;
    s.mean_used_bytes = sum_bytes_ / s.samples;
    s.mean_depth_pool_bytes = sum_depth_bytes_ / s.samples;
    s.bytes_per_cached_token = sum_tokens_ > 0 ? sum_bytes_ / sum_tokens_ : 0;
    s.depth_pool_bytes_per_cached_token = sum_tokens_ > 0 ? sum_depth_bytes_ / sum_tokens_ : 0;
    for (double v : sum_by_depth_) s.mean_used_bytes_by_depth.push_back(v / s.samples);
  }
  return s;
}

void ServerSampler::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval_)) return;
    }
    // The client count is read just before the scrape: the server publishes
    // its gauges once per engine step, so both lag by at most one step.
    const int64_t tokens = cached_tokens_();
    absl::StatusOr<MetricSamples> samples = scraper_->Scrape();
    if (!samples.ok()) {
      ++summary_.scrape_errors;
      continue;
    }
    Add(*samples, tokens);
  }
}

void ServerSampler::Add(const MetricSamples& samples, int64_t tokens) {
  summary_.capacity_bytes = SumSamples(samples, "mor_kv_cache_capacity_bytes");
  summary_.peak_running =
      std::max(summary_.peak_running, Sample(samples, "mor_num_requests_running"));
  summary_.peak_waiting =
      std::max(summary_.peak_waiting, Sample(samples, "mor_num_requests_waiting"));
  const double used = SumSamples(samples, "mor_kv_cache_used_bytes");
  summary_.peak_used_bytes = std::max(summary_.peak_used_bytes, used);
  if (tokens <= 0) return;
  ++summary_.samples;
  sum_tokens_ += static_cast<double>(tokens);
  sum_bytes_ += used;
  sum_depth_bytes_ += Sample(samples, "mor_kv_cache_used_bytes{pool=\"depth\"}");
  const auto by_depth = SamplesByLabel(samples, "mor_kv_cache_depth_used_bytes", "depth");
  for (const auto& [depth, bytes] : by_depth) {
    size_t d = 0;
    if (!absl::SimpleAtoi(depth, &d) || d < 1 || d > 64) continue;
    if (sum_by_depth_.size() < d) sum_by_depth_.resize(d, 0.0);
    sum_by_depth_[d - 1] += bytes;
  }
}

}  // namespace mor::loadgen
