// Observations counted into fixed buckets (prometheus-cpp's Histogram
// interface), plus bucket helpers.
#ifndef MOR_SERVER_METRICS_HISTOGRAM_H_
#define MOR_SERVER_METRICS_HISTOGRAM_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "server/metrics/metric_family.h"

namespace mor::metrics {

// Thread-safe and lock-free: Observe is a binary search over the bounds and
// two relaxed atomic adds (the bucket's count and the sum). A scrape running
// concurrently may see an observation in its bucket before it sees it in the
// sum; the exposed _count always equals the +Inf bucket (both are derived from
// the same bucket snapshot).
class Histogram {
 public:
  static constexpr MetricType metric_type = MetricType::Histogram;
  // Upper bounds, strictly increasing, without +Inf (it is implicit).
  using BucketBoundaries = std::vector<double>;

  // Bounds that are not strictly increasing abort (a programming error);
  // a trailing +Inf is dropped.
  explicit Histogram(const BucketBoundaries& buckets);

  // Counts `value` into the first bucket whose bound is >= value (Prometheus
  // buckets are inclusive upper bounds). NaN is counted in +Inf only.
  void Observe(double value);
  // Adds pre-bucketed counts: `bucket_increments` has one entry per bound plus
  // one for +Inf; `sum_of_values` is added to the sum. A size mismatch aborts.
  void ObserveMultiple(const std::vector<double>& bucket_increments, double sum_of_values);

  const BucketBoundaries& bucket_boundaries() const { return bounds_; }
  uint64_t count() const;
  double sum() const { return sum_.load(std::memory_order_relaxed); }

  ClientMetric Collect() const;

 private:
  BucketBoundaries bounds_;
  // counts_[i]: observations in (bounds_[i-1], bounds_[i]]; the last is +Inf.
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<double> sum_{0.0};
};

// `count` bounds start, start * factor, ... (start > 0, factor > 1).
Histogram::BucketBoundaries ExponentialBuckets(double start, double factor, int count);
// `count` bounds start, start + width, ... (width > 0).
Histogram::BucketBoundaries LinearBuckets(double start, double width, int count);

}  // namespace mor::metrics

#endif  // MOR_SERVER_METRICS_HISTOGRAM_H_
