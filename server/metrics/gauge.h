// A value that can go up and down (prometheus-cpp's Gauge interface).
#ifndef MOR_SERVER_METRICS_GAUGE_H_
#define MOR_SERVER_METRICS_GAUGE_H_

#include <atomic>

#include "server/metrics/metric_family.h"

namespace mor::metrics {

// Thread-safe and lock-free (atomic updates).
class Gauge {
 public:
  static constexpr MetricType metric_type = MetricType::Gauge;

  Gauge() = default;
  explicit Gauge(double value) : value_(value) {}

  void Increment() { Increment(1.0); }
  void Increment(double value) { value_.fetch_add(value, std::memory_order_relaxed); }
  void Decrement() { Increment(-1.0); }
  void Decrement(double value) { Increment(-value); }
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  // Sets the gauge to the current Unix time in seconds.
  void SetToCurrentTime();
  double Value() const { return value_.load(std::memory_order_relaxed); }

  ClientMetric Collect() const;

 private:
  std::atomic<double> value_{0.0};
};

}  // namespace mor::metrics

#endif  // MOR_SERVER_METRICS_GAUGE_H_
