// Reads mor_server's Prometheus endpoint (GET /metrics, text format 0.0.4)
// over a plain HTTP/1.0 connection to a numeric loopback address.
#ifndef MOR_BENCH_LOADGEN_METRICS_SCRAPER_H_
#define MOR_BENCH_LOADGEN_METRICS_SCRAPER_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace mor::loadgen {

// Series -> value. The key is the series as exposed, labels included in the
// order the server writes them, e.g. `mor_recursion_token_steps_total{depth="2"}`.
using MetricSamples = std::map<std::string, double>;

// Parses the text format (comments and malformed lines are skipped).
MetricSamples ParsePrometheusText(absl::string_view text);

// The value of `series` (full key), or `fallback`.
double Sample(const MetricSamples& samples, const std::string& series, double fallback = 0);

// Sum over every series of metric `name` (any labels).
double SumSamples(const MetricSamples& samples, absl::string_view name);

// The label values of one label across the series of `name`, e.g. the
// stage="..." values of a histogram's _sum series. Key: label value.
std::map<std::string, double> SamplesByLabel(const MetricSamples& samples, absl::string_view name,
                                             absl::string_view label);

// The labels of the first series of `name` (e.g. mor_model_info).
std::map<std::string, std::string> LabelsOf(const MetricSamples& samples, absl::string_view name);

class MetricsScraper {
 public:
  // `address` is host:port with a numeric IPv4 host.
  static absl::StatusOr<MetricsScraper> Create(const std::string& address);

  // One GET /metrics (blocking, with `timeout` for connect and read).
  absl::StatusOr<MetricSamples> Scrape(absl::Duration timeout = absl::Seconds(5)) const;

  const std::string& address() const { return address_; }

 private:
  MetricsScraper(std::string address, std::string host, int port)
      : address_(std::move(address)), host_(std::move(host)), port_(port) {}

  std::string address_;
  std::string host_;
  int port_ = 0;
};

}  // namespace mor::loadgen

#endif  // MOR_BENCH_LOADGEN_METRICS_SCRAPER_H_
