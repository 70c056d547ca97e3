#include "server/metrics/counter.h"

namespace mor::metrics {

ClientMetric Counter::Collect() const {
  ClientMetric metric;
  metric.counter.value = Value();
  return metric;
}

}  // namespace mor::metrics
