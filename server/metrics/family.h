// A metric family: one name, help text and type, with one series per label
// set (prometheus-cpp's Family<T>).
#ifndef MOR_SERVER_METRICS_FAMILY_H_
#define MOR_SERVER_METRICS_FAMILY_H_

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/metrics/metric_family.h"
#include "server/metrics/names.h"

namespace mor::metrics {

// T is Counter, Gauge or Histogram. Add / Remove / Has / Collect take the
// family's mutex; updating a series through the reference Add returned takes
// no lock (hot paths keep the reference and never call Add per event).
// References stay valid until Remove or the family's destruction.
template <typename T>
class Family : public Collectable {
 public:
  // Use the Build* builders of registry.h rather than this constructor.
  // Invalid names abort (names.h).
  Family(std::string name, std::string help, Labels constant_labels)
      : name_(std::move(name)),
        help_(std::move(help)),
        constant_labels_(std::move(constant_labels)) {
    if (!IsValidMetricName(name_)) MetricsUsageError("invalid metric name '" + name_ + "'");
    CheckLabelNames(constant_labels_, name_);
  }
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;

  // The series with `labels`, created from `args` (T's constructor arguments,
  // e.g. the buckets of a Histogram) when new; an existing series is returned
  // as is. Invalid label names, or names that repeat a constant label, abort.
  template <typename... Args>
  T& Add(const Labels& labels, Args&&... args) {
    absl::MutexLock lock(&mu_);
    auto it = metrics_.find(labels);
    if (it != metrics_.end()) return *it->second;
    CheckLabelNames(labels, name_);
    for (const auto& [label, value] : labels) {
      if (constant_labels_.count(label) != 0) {
        MetricsUsageError(name_ + ": label '" + label + "' is also a constant label");
      }
    }
    auto metric = std::make_unique<T>(std::forward<Args>(args)...);
    T& ref = *metric;
    metrics_.emplace(labels, std::move(metric));
    return ref;
  }

  // Removes the series `metric` (from Add); unknown pointers are ignored.
  void Remove(T* metric) {
    absl::MutexLock lock(&mu_);
    for (auto it = metrics_.begin(); it != metrics_.end(); ++it) {
      if (it->second.get() == metric) {
        metrics_.erase(it);
        return;
      }
    }
  }

  bool Has(const Labels& labels) const {
    absl::MutexLock lock(&mu_);
    return metrics_.count(labels) != 0;
  }

  const std::string& GetName() const { return name_; }
  const std::string& GetHelp() const { return help_; }
  const Labels& GetConstantLabels() const { return constant_labels_; }

  // One MetricFamily with every series (none when the family is empty).
  std::vector<MetricFamily> Collect() const override {
    MetricFamily family;
    family.name = name_;
    family.help = help_;
    family.type = T::metric_type;
    absl::MutexLock lock(&mu_);
    if (metrics_.empty()) return {};
    family.metric.reserve(metrics_.size());
    for (const auto& [labels, metric] : metrics_) {
      ClientMetric client = metric->Collect();
      for (const auto& [label, value] : constant_labels_) client.label.push_back({label, value});
      for (const auto& [label, value] : labels) client.label.push_back({label, value});
      family.metric.push_back(std::move(client));
    }
    std::vector<MetricFamily> out;
    out.push_back(std::move(family));
    return out;
  }

 private:
  const std::string name_;
  const std::string help_;
  const Labels constant_labels_;
  mutable absl::Mutex mu_;
  std::map<Labels, std::unique_ptr<T>> metrics_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mor::metrics

#endif  // MOR_SERVER_METRICS_FAMILY_H_
