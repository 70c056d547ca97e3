// A minimal blocking HTTP/1.0 client for tests (127.0.0.1 only), and a parser
// for the Prometheus text format's sample lines.
#ifndef MOR_TESTS_SERVER_METRICS_HTTP_GET_H_
#define MOR_TESTS_SERVER_METRICS_HTTP_GET_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace mor::testing {

struct HttpResponse {
  int status = 0;
  std::string headers;  // the raw header block
  std::string body;
};

// Sends `method path` to 127.0.0.1:`port` and reads the reply until the
// server closes the connection (5 s socket timeouts).
absl::StatusOr<HttpResponse> HttpRequest(int port, const std::string& method,
                                         const std::string& path);

// Sample lines of a text-format scrape: series as written ("name{a=\"b\"}")
// -> value. Comment lines are skipped; a malformed line is an error.
absl::StatusOr<std::map<std::string, double>> ParseSamples(const std::string& text);

}  // namespace mor::testing

#endif  // MOR_TESTS_SERVER_METRICS_HTTP_GET_H_
