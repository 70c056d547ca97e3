#include "bench/loadgen/metrics_scraper.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace mor::loadgen {
namespace {

// Closes the descriptor on scope exit.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Index one past the `}` that closes the label set starting at `open`, or npos.
size_t LabelsEnd(absl::string_view line, size_t open) {
  bool quoted = false;
  for (size_t i = open + 1; i < line.size(); ++i) {
    if (quoted && line[i] == '\\') {
      ++i;
    } else if (line[i] == '"') {
      quoted = !quoted;
    } else if (!quoted && line[i] == '}') {
      return i + 1;
    }
  }
  return absl::string_view::npos;
}

// `name` or `name{...}` of a series key.
absl::string_view NameOf(absl::string_view series) {
  return series.substr(0, std::min(series.size(), series.find('{')));
}

// label="value" pairs of a series key (no escapes expected in our labels).
std::map<std::string, std::string> ParseLabels(absl::string_view series) {
  std::map<std::string, std::string> out;
  const size_t open = series.find('{');
  if (open == absl::string_view::npos) return out;
  absl::string_view body = series.substr(open + 1);
  absl::ConsumeSuffix(&body, "}");
  while (!body.empty()) {
    const size_t eq = body.find("=\"");
    if (eq == absl::string_view::npos) break;
    const std::string key(absl::StripAsciiWhitespace(body.substr(0, eq)));
    const size_t close = body.find('"', eq + 2);
    if (close == absl::string_view::npos) break;
    out[key] = std::string(body.substr(eq + 2, close - eq - 2));
    body = body.substr(close + 1);
    absl::ConsumePrefix(&body, ",");
  }
  return out;
}

}  // namespace

MetricSamples ParsePrometheusText(absl::string_view text) {
  MetricSamples out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    size_t key_end = line.find_first_of(" \t{");
    if (key_end == absl::string_view::npos) continue;
    if (line[key_end] == '{') key_end = LabelsEnd(line, key_end);
    if (key_end == absl::string_view::npos) continue;
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(line.substr(key_end));
    rest = rest.substr(0, std::min(rest.size(), rest.find_first_of(" \t")));
    double value = 0;
    if (rest == "+Inf") {
      value = HUGE_VAL;
    } else if (!absl::SimpleAtod(rest, &value)) {
      continue;
    }
    out[std::string(line.substr(0, key_end))] = value;
  }
  return out;
}

double Sample(const MetricSamples& samples, const std::string& series, double fallback) {
  auto it = samples.find(series);
  return it == samples.end() ? fallback : it->second;
}

double SumSamples(const MetricSamples& samples, absl::string_view name) {
  double sum = 0;
  for (auto it = samples.lower_bound(std::string(name)); it != samples.end(); ++it) {
    const absl::string_view n = NameOf(it->first);
    if (n != name) {
      if (!absl::StartsWith(it->first, name)) break;
      continue;
    }
    sum += it->second;
  }
  return sum;
}

std::map<std::string, double> SamplesByLabel(const MetricSamples& samples, absl::string_view name,
                                             absl::string_view label) {
  std::map<std::string, double> out;
  for (auto it = samples.lower_bound(std::string(name)); it != samples.end(); ++it) {
    if (!absl::StartsWith(it->first, name)) break;
    if (NameOf(it->first) != name) continue;
    const auto labels = ParseLabels(it->first);
    auto found = labels.find(std::string(label));
    if (found != labels.end()) out[found->second] += it->second;
  }
  return out;
}

std::map<std::string, std::string> LabelsOf(const MetricSamples& samples, absl::string_view name) {
  for (auto it = samples.lower_bound(std::string(name)); it != samples.end(); ++it) {
    if (!absl::StartsWith(it->first, name)) break;
    if (NameOf(it->first) == name) return ParseLabels(it->first);
  }
  return {};
}

absl::StatusOr<MetricsScraper> MetricsScraper::Create(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_address must be host:port (got '", address, "')"));
  }
  std::string host = address.substr(0, colon);
  if (host == "localhost") host = "127.0.0.1";
  in_addr probe{};
  if (inet_pton(AF_INET, host.c_str(), &probe) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics_address needs a numeric IPv4 host (got '", host, "')"));
  }
  return MetricsScraper(address, std::move(host), port);
}

absl::StatusOr<MetricSamples> MetricsScraper::Scrape(absl::Duration timeout) const {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  const int timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  timeval tv{};
  tv.tv_sec = timeout_ms / 1000;
  tv.tv_usec = (timeout_ms % 1000) * 1000;
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  inet_pton(AF_INET, host_.c_str(), &addr.sin_addr);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to http://", address_, "/metrics: ", std::strerror(errno)));
  }
  const std::string request =
      absl::StrCat("GET /metrics HTTP/1.0\r\nHost: ", address_, "\r\nConnection: close\r\n\r\n");
  if (send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return absl::UnavailableError(absl::StrCat("sending to ", address_, " failed"));
  }
  std::string response;
  char buf[16384];
  constexpr size_t kMaxBytes = 16 << 20;
  while (response.size() < kMaxBytes) {
    const ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(
          absl::StrCat("reading http://", address_, "/metrics: ", std::strerror(errno)));
    }
    response.append(buf, static_cast<size_t>(n));
  }
  const size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos || !absl::StartsWith(response, "HTTP/1.") ||
      response.find(" 200 ") > response.find("\r\n")) {
    return absl::UnavailableError(absl::StrCat(
        "unexpected answer from http://", address_,
        "/metrics: ", response.substr(0, std::min<size_t>(80, response.find("\r\n")))));
  }
  return ParsePrometheusText(absl::string_view(response).substr(body + 4));
}

}  // namespace mor::loadgen
