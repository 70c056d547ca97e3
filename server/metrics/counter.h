// A monotonically increasing value (prometheus-cpp's Counter interface).
#ifndef MOR_SERVER_METRICS_COUNTER_H_
#define MOR_SERVER_METRICS_COUNTER_H_

#include <atomic>

#include "server/metrics/metric_family.h"

namespace mor::metrics {

// Thread-safe and lock-free: Increment is one atomic read-modify-write, so
// many threads may update one counter while a scrape reads it.
class Counter {
 public:
  static constexpr MetricType metric_type = MetricType::Counter;

  Counter() = default;

  // Adds 1.
  void Increment() { Increment(1.0); }
  // Adds `value`; negative values are ignored (a counter never goes down).
  void Increment(double value) {
    if (value < 0.0) return;
    value_.fetch_add(value, std::memory_order_relaxed);
  }
  double Value() const { return value_.load(std::memory_order_relaxed); }

  ClientMetric Collect() const;

 private:
  std::atomic<double> value_{0.0};
};

}  // namespace mor::metrics

#endif  // MOR_SERVER_METRICS_COUNTER_H_
