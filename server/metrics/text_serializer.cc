#include "server/metrics/text_serializer.h"

#include <charconv>
#include <cmath>
#include <sstream>

namespace mor::metrics {
namespace {

std::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::Counter:
      return "counter";
    case MetricType::Gauge:
      return "gauge";
    case MetricType::Histogram:
      return "histogram";
    case MetricType::Untyped:
      return "untyped";
  }
  return "untyped";
}

// name{a="x",b="y"[,le="bound"]} value
void WriteSample(std::ostream& out, const std::string& name, std::string_view suffix,
                 const ClientMetric& metric, const std::string& value,
                 const char* extra_label = nullptr, const std::string& extra_value = {}) {
  out << name << suffix;
  if (!metric.label.empty() || extra_label != nullptr) {
    out << '{';
    const char* separator = "";
    for (const ClientMetric::Label& label : metric.label) {
      out << separator << label.name << "=\"" << EscapeLabelValue(label.value) << '"';
      separator = ",";
    }
    if (extra_label != nullptr) {
      out << separator << extra_label << "=\"" << EscapeLabelValue(extra_value) << '"';
    }
    out << '}';
  }
  out << ' ' << value << '\n';
}

}  // namespace

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

void TextSerializer::Serialize(std::ostream& out, const std::vector<MetricFamily>& families) const {
  for (const MetricFamily& family : families) {
    out << "# HELP " << family.name << ' ' << EscapeHelp(family.help) << '\n';
    out << "# TYPE " << family.name << ' ' << TypeName(family.type) << '\n';
    for (const ClientMetric& metric : family.metric) {
      switch (family.type) {
        case MetricType::Counter:
          WriteSample(out, family.name, "", metric, FormatValue(metric.counter.value));
          break;
        case MetricType::Gauge:
          WriteSample(out, family.name, "", metric, FormatValue(metric.gauge.value));
          break;
        case MetricType::Untyped:
          WriteSample(out, family.name, "", metric, FormatValue(metric.untyped.value));
          break;
        case MetricType::Histogram: {
          const ClientMetric::Histogram& h = metric.histogram;
          for (const ClientMetric::Bucket& bucket : h.bucket) {
            WriteSample(out, family.name, "_bucket", metric,
                        std::to_string(bucket.cumulative_count), "le",
                        FormatValue(bucket.upper_bound));
          }
          WriteSample(out, family.name, "_sum", metric, FormatValue(h.sample_sum));
          WriteSample(out, family.name, "_count", metric, std::to_string(h.sample_count));
          break;
        }
      }
    }
  }
}

std::string TextSerializer::Serialize(const std::vector<MetricFamily>& families) const {
  std::ostringstream out;
  Serialize(out, families);
  return out.str();
}

}  // namespace mor::metrics
