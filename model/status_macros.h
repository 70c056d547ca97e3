// Small Status helpers. Abseil 20220623 (Debian 12) predates
// ABSL_RETURN_IF_ERROR / ASSIGN_OR_RETURN, so the project carries its own.
#ifndef MOR_MODEL_STATUS_MACROS_H_
#define MOR_MODEL_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MOR_STATUS_CONCAT_INNER_(a, b) a##b
#define MOR_STATUS_CONCAT_(a, b) MOR_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` yields a non-OK absl::Status.
#define MOR_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status mor_status_ = (expr);       \
    if (!mor_status_.ok()) return mor_status_; \
  } while (0)

// `lhs` = value of the absl::StatusOr `rexpr`, or returns its error.
#define MOR_ASSIGN_OR_RETURN(lhs, rexpr) \
  MOR_ASSIGN_OR_RETURN_IMPL_(MOR_STATUS_CONCAT_(mor_statusor_, __LINE__), lhs, rexpr)

#define MOR_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)   \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // MOR_MODEL_STATUS_MACROS_H_
