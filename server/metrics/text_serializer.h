// Prometheus text exposition format 0.0.4 (prometheus-cpp's TextSerializer).
#ifndef MOR_SERVER_METRICS_TEXT_SERIALIZER_H_
#define MOR_SERVER_METRICS_TEXT_SERIALIZER_H_

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "server/metrics/metric_family.h"

namespace mor::metrics {

// The Content-Type of the format.
inline constexpr char kTextContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Stateless and thread-safe.
class TextSerializer {
 public:
  // For each family: "# HELP", "# TYPE", then one line per sample (histograms:
  // _bucket lines with cumulative counts and le="+Inf" last, then _sum and
  // _count). Values are shortest round-trip decimals, "NaN", "+Inf", "-Inf";
  // no timestamps.
  void Serialize(std::ostream& out, const std::vector<MetricFamily>& families) const;
  std::string Serialize(const std::vector<MetricFamily>& families) const;
};

// Label values escape backslash, double quote and line feed.
std::string EscapeLabelValue(std::string_view value);
// HELP text escapes backslash and line feed.
std::string EscapeHelp(std::string_view help);
// How the format writes a sample value.
std::string FormatValue(double value);

}  // namespace mor::metrics

#endif  // MOR_SERVER_METRICS_TEXT_SERIALIZER_H_
