#include "server/metrics/registry.h"

namespace mor::metrics {

std::vector<MetricFamily> Registry::Collect() const {
  std::vector<MetricFamily> out;
  absl::MutexLock lock(&mu_);
  for (const Entry& entry : families_) {
    for (MetricFamily& family : entry.family->Collect()) out.push_back(std::move(family));
  }
  return out;
}

}  // namespace mor::metrics
