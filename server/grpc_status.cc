#include "server/grpc_status.h"

#include <string>

namespace mor {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  const grpc::StatusCode grpc_code = (code >= grpc::StatusCode::OK && code <= grpc::UNAUTHENTICATED)
                                         ? static_cast<grpc::StatusCode>(code)
                                         : grpc::StatusCode::UNKNOWN;
  // Debian's absl::string_view is not std::string_view: copy explicitly.
  return grpc::Status(grpc_code, std::string(status.message().data(), status.message().size()));
}

}  // namespace mor
