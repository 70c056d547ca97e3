// The measurements of a run, as vLLM's `bench serve` reports them (client
// side: request and output-token throughput, TTFT / TPOT / ITL / E2E latency,
// goodput under SLOs), plus MoR's recursion depth as a dimension (per-policy
// latency, per-depth compute from the final usage messages) and, when the
// server's /metrics was scraped, its KV memory and engine-stage profile.
#ifndef MOR_BENCH_LOADGEN_LOAD_REPORT_H_
#define MOR_BENCH_LOADGEN_LOAD_REPORT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "bench/loadgen/load_runner.h"
#include "bench/loadgen/metrics_scraper.h"
#include "bench/loadgen/server_sampler.h"
#include "nlohmann/json.hpp"
#include "proto/mor/v1/mor.pb.h"

namespace mor::loadgen {

// Service-level objectives in milliseconds; 0 = not set. A request is "good"
// when it meets every SLO that is set (vLLM's goodput).
struct SloSpec {
  double ttft_ms = 0;
  double tpot_ms = 0;
  double e2el_ms = 0;
  bool any() const { return ttft_ms > 0 || tpot_ms > 0 || e2el_ms > 0; }
};

// "ttft:2000,tpot:100" (also space-separated, as vLLM's --goodput).
absl::StatusOr<SloSpec> ParseSlo(absl::string_view text);

// Percentiles such as "50,90,99" (each in (0, 100]).
absl::StatusOr<std::vector<double>> ParsePercentiles(absl::string_view text);

struct ReportInputs {
  const RunResult* run = nullptr;
  mor::v1::ModelInfo model;
  nlohmann::json config;  // the run's options, echoed
  std::vector<double> percentiles = {50, 90, 99};
  SloSpec slo;
  int32_t client_threads = 0;
  std::optional<KvSummary> kv;
  // /metrics just before and after the run.
  std::optional<MetricSamples> metrics_before, metrics_after;
};

// The whole report as JSON (latencies in ms, throughputs per second).
nlohmann::json BuildReport(const ReportInputs& inputs);

// A table for people, from BuildReport's JSON.
std::string FormatReportTable(const nlohmann::json& report);

}  // namespace mor::loadgen

#endif  // MOR_BENCH_LOADGEN_LOAD_REPORT_H_
