// The one place where absl::Status becomes grpc::Status.
#ifndef MOR_SERVER_GRPC_STATUS_H_
#define MOR_SERVER_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace mor {

// Same code (the two enums share their numbering), same message.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace mor

#endif  // MOR_SERVER_GRPC_STATUS_H_
