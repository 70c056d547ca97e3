#include "tests/server/metrics/http_get.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mor::testing {

absl::StatusOr<HttpResponse> HttpRequest(int port, const std::string& method,
                                         const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address;
  std::memset(&address, 0, sizeof(address));
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to 127.0.0.1:", port));
  }
  const std::string request = absl::StrCat(method, " ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\n",
                                           "Content-Length: 0\r\n\r\n");
  if (send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("send failed");
  }
  std::string reply;
  char buffer[4096];
  for (int i = 0; i < 100000; ++i) {  // bounded: 400 MB at most
    const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0) break;
    reply.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  const size_t end = reply.find("\r\n\r\n");
  if (reply.rfind("HTTP/1.", 0) != 0 || end == std::string::npos) {
    return absl::InternalError(absl::StrCat("malformed HTTP reply: ", reply.substr(0, 200)));
  }
  HttpResponse response;
  response.status = std::atoi(reply.c_str() + reply.find(' ') + 1);
  response.headers = reply.substr(0, end);
  response.body = reply.substr(end + 4);
  return response;
}

absl::StatusOr<std::map<std::string, double>> ParseSamples(const std::string& text) {
  std::map<std::string, double> samples;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) return absl::InvalidArgumentError("no value");
    const std::string number(line.substr(space + 1));
    double value = 0;
    if (number == "+Inf") {
      value = INFINITY;
    } else if (number == "-Inf") {
      value = -INFINITY;
    } else if (number == "NaN") {
      value = NAN;
    } else if (!absl::SimpleAtod(number, &value)) {
      return absl::InvalidArgumentError(absl::StrCat("bad value in: ", std::string(line)));
    }
    samples[std::string(line.substr(0, space))] = value;
  }
  return samples;
}

}  // namespace mor::testing
