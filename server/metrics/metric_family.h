// Snapshot types of the metrics library (shaped like prometheus-cpp's
// client_metric.h / metric_family.h / collectable.h, so that code written
// against these swaps to prometheus-cpp with few changes).
//
// A Collectable produces MetricFamily snapshots; the TextSerializer turns
// them into the Prometheus text exposition format 0.0.4.
#ifndef MOR_SERVER_METRICS_METRIC_FAMILY_H_
#define MOR_SERVER_METRICS_METRIC_FAMILY_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mor::metrics {

// Label name -> value. Ordered, so a label set has one canonical form.
using Labels = std::map<std::string, std::string>;

enum class MetricType { Counter, Gauge, Histogram, Untyped };

// One time series' value at collection time.
struct ClientMetric {
  struct Label {
    std::string name;
    std::string value;
  };
  std::vector<Label> label;  // constant labels, then the series' own

  struct Counter {
    double value = 0.0;
  };
  Counter counter;

  struct Gauge {
    double value = 0.0;
  };
  Gauge gauge;

  struct Bucket {
    uint64_t cumulative_count = 0;  // observations <= upper_bound
    double upper_bound = 0.0;       // the last bucket is +Inf
  };
  struct Histogram {
    uint64_t sample_count = 0;
    double sample_sum = 0.0;
    std::vector<Bucket> bucket;
  };
  Histogram histogram;

  struct Untyped {
    double value = 0;
  };
  Untyped untyped;
};

struct MetricFamily {
  std::string name;
  std::string help;
  MetricType type = MetricType::Untyped;
  std::vector<ClientMetric> metric;
};

// Anything that can be scraped (a Registry, a Family).
class Collectable {
 public:
  virtual ~Collectable() = default;
  // Thread-safe; may run concurrently with metric updates.
  virtual std::vector<MetricFamily> Collect() const = 0;
};

}  // namespace mor::metrics

#endif  // MOR_SERVER_METRICS_METRIC_FAMILY_H_
