// Name rules of the Prometheus data model, and how the library reports
// misuse.
#ifndef MOR_SERVER_METRICS_NAMES_H_
#define MOR_SERVER_METRICS_NAMES_H_

#include <string>
#include <string_view>

#include "server/metrics/metric_family.h"

namespace mor::metrics {

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool IsValidMetricName(std::string_view name);
// [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" (reserved).
bool IsValidLabelName(std::string_view name);

// Misuse (an invalid name, a duplicate family, bad buckets) is a programming
// error found at startup: prometheus-cpp throws std::invalid_argument; this
// library prints `message` and aborts (exceptions do not cross our module
// boundaries).
[[noreturn]] void MetricsUsageError(const std::string& message);

// Aborts unless every name in `labels` is valid; `what` names the caller.
void CheckLabelNames(const Labels& labels, std::string_view what);

}  // namespace mor::metrics

#endif  // MOR_SERVER_METRICS_NAMES_H_
