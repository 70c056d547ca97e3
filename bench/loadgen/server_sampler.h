// Samples mor_server's KV-cache and queue gauges on /metrics during a run,
// next to the client's count of the tokens whose K/V the server must hold,
// giving the KV bytes per cached token as the server really allocates them.
#ifndef MOR_BENCH_LOADGEN_SERVER_SAMPLER_H_
#define MOR_BENCH_LOADGEN_SERVER_SAMPLER_H_

#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "bench/loadgen/metrics_scraper.h"

namespace mor::loadgen {

struct KvSummary {
  int32_t samples = 0;            // scrapes taken while tokens were cached
  int32_t scrape_errors = 0;      // failed scrapes (skipped)
  double mean_cached_tokens = 0;  // client side: prompt + received tokens in flight
  double mean_used_bytes = 0;     // every KV pool (block-granular)
  double mean_depth_pool_bytes = 0;
  // Sum over samples of bytes / sum over samples of cached tokens.
  double bytes_per_cached_token = 0;
  double depth_pool_bytes_per_cached_token = 0;
  std::vector<double> mean_used_bytes_by_depth;  // [d-1]
  double peak_used_bytes = 0;
  double capacity_bytes = 0;  // every pool
  double peak_running = 0;
  double peak_waiting = 0;
};

class ServerSampler {
 public:
  // Scrapes every `interval` from Start() to Stop(); `cached_tokens` is
  // called on the sampler thread. `scraper` outlives the sampler.
  ServerSampler(const MetricsScraper* scraper, absl::Duration interval,
                std::function<int64_t()> cached_tokens);
  ~ServerSampler();

  ServerSampler(const ServerSampler&) = delete;
  ServerSampler& operator=(const ServerSampler&) = delete;

  void Start();
  // Stops the thread and returns the summary (once).
  KvSummary Stop();

 private:
  void Loop();
  void Add(const MetricSamples& samples, int64_t tokens);

  const MetricsScraper* const scraper_;
  const absl::Duration interval_;
  const std::function<int64_t()> cached_tokens_;
  std::thread thread_;

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  // Owned by the sampler thread until it is joined.
  KvSummary summary_;
  double sum_tokens_ = 0, sum_bytes_ = 0, sum_depth_bytes_ = 0;
  std::vector<double> sum_by_depth_;
};

}  // namespace mor::loadgen

#endif  // MOR_BENCH_LOADGEN_SERVER_SAMPLER_H_
