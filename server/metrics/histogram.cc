#include "server/metrics/histogram.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "server/metrics/names.h"

namespace mor::metrics {

Histogram::Histogram(const BucketBoundaries& buckets) : bounds_(buckets) {
  if (!bounds_.empty() && std::isinf(bounds_.back()) && bounds_.back() > 0) bounds_.pop_back();
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (std::isnan(bounds_[i]) || (i > 0 && !(bounds_[i - 1] < bounds_[i]))) {
      MetricsUsageError("histogram bucket bounds must be strictly increasing numbers");
    }
  }
  counts_ = std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  // First bound >= value; NaN compares false everywhere and lands in +Inf.
  const size_t bucket =
      std::isnan(value)
          ? bounds_.size()
          : static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) -
                                bounds_.begin());
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

void Histogram::ObserveMultiple(const std::vector<double>& bucket_increments,
                                double sum_of_values) {
  if (bucket_increments.size() != bounds_.size() + 1) {
    MetricsUsageError("ObserveMultiple needs one increment per bucket, +Inf included");
  }
  for (size_t i = 0; i < bucket_increments.size(); ++i) {
    if (bucket_increments[i] > 0) {
      counts_[i].fetch_add(static_cast<uint64_t>(bucket_increments[i]), std::memory_order_relaxed);
    }
  }
  sum_.fetch_add(sum_of_values, std::memory_order_relaxed);
}

uint64_t Histogram::count() const {
  uint64_t total = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) total += counts_[i].load(std::memory_order_relaxed);
  return total;
}

ClientMetric Histogram::Collect() const {
  ClientMetric metric;
  uint64_t cumulative = 0;
  metric.histogram.bucket.reserve(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    ClientMetric::Bucket bucket;
    bucket.cumulative_count = cumulative;
    bucket.upper_bound = i < bounds_.size() ? bounds_[i] : INFINITY;
    metric.histogram.bucket.push_back(bucket);
  }
  metric.histogram.sample_count = cumulative;
  metric.histogram.sample_sum = sum();
  return metric;
}

Histogram::BucketBoundaries ExponentialBuckets(double start, double factor, int count) {
  if (!(start > 0) || !(factor > 1) || count < 1) {
    MetricsUsageError("ExponentialBuckets needs start > 0, factor > 1, count >= 1");
  }
  Histogram::BucketBoundaries bounds;
  double bound = start;
  for (int i = 0; i < count; ++i, bound *= factor) bounds.push_back(bound);
  return bounds;
}

Histogram::BucketBoundaries LinearBuckets(double start, double width, int count) {
  if (!(width > 0) || count < 1) MetricsUsageError("LinearBuckets needs width > 0, count >= 1");
  Histogram::BucketBoundaries bounds;
  for (int i = 0; i < count; ++i) bounds.push_back(start + i * width);
  return bounds;
}

}  // namespace mor::metrics
