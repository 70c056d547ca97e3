// The set of metric families a server exposes (prometheus-cpp's Registry and
// its BuildCounter / BuildGauge / BuildHistogram builders):
//
//   auto registry = std::make_shared<Registry>();
//   Family<Counter>& requests = BuildCounter()
//       .Name("mor_requests_total").Help("Requests accepted").Register(*registry);
//   Counter& adaptive = requests.Add({{"policy", "adaptive"}});
//   adaptive.Increment();
//
// Thread-safe: registration and Collect take the registry's mutex (then each
// family's); metric updates take none.
#ifndef MOR_SERVER_METRICS_REGISTRY_H_
#define MOR_SERVER_METRICS_REGISTRY_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/metrics/counter.h"
#include "server/metrics/family.h"
#include "server/metrics/gauge.h"
#include "server/metrics/histogram.h"
#include "server/metrics/metric_family.h"
#include "server/metrics/names.h"

namespace mor::metrics {

class Registry : public Collectable {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Every non-empty family, in registration order.
  std::vector<MetricFamily> Collect() const override;

  // The family `name`: created, or the existing one when a family of the same
  // type and constant labels is registered under that name (prometheus-cpp's
  // InsertBehavior::Merge). The same name with another type or other constant
  // labels aborts. The family lives as long as the registry.
  template <typename T>
  Family<T>& Add(const std::string& name, const std::string& help, const Labels& labels) {
    absl::MutexLock lock(&mu_);
    for (const Entry& entry : families_) {
      if (entry.name != name) continue;
      if (entry.type != T::metric_type || entry.constant_labels != labels) {
        MetricsUsageError("metric family '" + name +
                          "' registered twice with another type or constant labels");
      }
      return *static_cast<Family<T>*>(entry.family.get());
    }
    auto family = std::make_unique<Family<T>>(name, help, labels);
    Family<T>& ref = *family;
    families_.push_back(Entry{name, T::metric_type, labels, std::move(family)});
    return ref;
  }

 private:
  struct Entry {
    std::string name;
    MetricType type;
    Labels constant_labels;
    std::unique_ptr<Collectable> family;
  };
  mutable absl::Mutex mu_;
  std::vector<Entry> families_ ABSL_GUARDED_BY(mu_);
};

namespace detail {

template <typename T>
class Builder {
 public:
  Builder& Name(const std::string& name) {
    name_ = name;
    return *this;
  }
  Builder& Help(const std::string& help) {
    help_ = help;
    return *this;
  }
  // Constant labels carried by every series of the family.
  Builder& Labels(const metrics::Labels& labels) {
    labels_ = labels;
    return *this;
  }
  Family<T>& Register(Registry& registry) { return registry.Add<T>(name_, help_, labels_); }

 private:
  std::string name_;
  std::string help_;
  metrics::Labels labels_;
};

}  // namespace detail

inline detail::Builder<Counter> BuildCounter() { return {}; }
inline detail::Builder<Gauge> BuildGauge() { return {}; }
inline detail::Builder<Histogram> BuildHistogram() { return {}; }

}  // namespace mor::metrics

#endif  // MOR_SERVER_METRICS_REGISTRY_H_
