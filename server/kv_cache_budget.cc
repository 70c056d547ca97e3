#include "server/kv_cache_budget.h"

#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/status_macros.h"

namespace mor {
namespace {

bool ValidFraction(double fraction) { return fraction > 0 && fraction <= 1; }  // false for NaN

std::string GiB(int64_t bytes) {
  return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (int64_t{1} << 30));
}

}  // namespace

absl::StatusOr<KvBudgetPlan> PlanKvBudget(const KvBudgetFlags& flags) {
  KvBudgetPlan plan;
  if (flags.kv_cache_fraction_set) {
    const std::string value = absl::StrCat(flags.kv_cache_fraction);
    if (!ValidFraction(flags.kv_cache_fraction)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--kv_cache_fraction must be in (0, 1], got ", value));
    }
    if (flags.kv_cache_bytes_set || flags.kv_blocks_set) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--kv_cache_fraction cannot be combined with ",
          flags.kv_cache_bytes_set ? "--kv_cache_bytes" : "--kv_blocks",
          ": give the KV-cache budget one way (a fraction of free device memory, bytes or "
          "blocks)"));
    }
    if (!absl::StartsWith(flags.device, "cuda")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--kv_cache_fraction needs a CUDA device (--device cuda or cuda:N), got --device ",
          flags.device, "; on the CPU size the KV cache with --kv_cache_bytes or --kv_blocks"));
    }
    plan.source = KvBudgetSource::kDeviceFraction;
    plan.fraction = flags.kv_cache_fraction;
    return plan;
  }
  if (flags.kv_blocks > 0) {
    plan.source = KvBudgetSource::kBlocks;
    plan.blocks = flags.kv_blocks;
    return plan;
  }
  plan.source = KvBudgetSource::kBytes;
  plan.bytes = flags.kv_cache_bytes;
  return plan;
}

absl::StatusOr<int64_t> KvBytesFromFreeMemory(double fraction, const DeviceMemoryInfo& memory) {
  if (!ValidFraction(fraction)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv_cache_fraction must be in (0, 1], got ", fraction));
  }
  if (memory.free_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv_cache_fraction: the device reports no free memory after loading the "
                     "weights (free ",
                     memory.free_bytes, " of ", memory.total_bytes, " bytes)"));
  }
  // Exact for any memory size below 2^53 bytes.
  return static_cast<int64_t>(std::floor(fraction * static_cast<double>(memory.free_bytes)));
}

absl::StatusOr<KvFractionDecision> SizeKvFromFreeMemory(double fraction,
                                                        const DeviceMemoryInfo& memory,
                                                        const KvCacheGeometry& geometry) {
  KvFractionDecision decision;
  decision.fraction = fraction;
  decision.memory = memory;
  MOR_ASSIGN_OR_RETURN(decision.budget_bytes, KvBytesFromFreeMemory(fraction, memory));
  auto sizes = KvCacheManager::SizeFromBudget(geometry, decision.budget_bytes);
  if (!sizes.ok()) {
    return absl::Status(sizes.status().code(),
                        absl::StrCat("--kv_cache_fraction ", fraction, " of ", memory.free_bytes,
                                     " free bytes: ", sizes.status().message()));
  }
  decision.sizes = *sizes;
  return decision;
}

std::string DescribeKvFractionDecision(const KvFractionDecision& d) {
  std::string pools = absl::StrCat(d.sizes.num_depth_blocks, " depth blocks");
  if (d.sizes.num_unique_blocks > 0) {
    absl::StrAppend(&pools, " + ", d.sizes.num_unique_blocks, " unique blocks");
  }
  return absl::StrCat("--kv_cache_fraction ", d.fraction, " of ", GiB(d.memory.free_bytes),
                      " free after loading the weights (device total ", GiB(d.memory.total_bytes),
                      ", ", GiB(d.memory.allocated_bytes), " in LibTorch tensors) = budget ",
                      d.budget_bytes, " bytes (", GiB(d.budget_bytes), ") -> ", pools, ", ",
                      d.sizes.total_bytes, " bytes (", GiB(d.sizes.total_bytes), ")");
}

}  // namespace mor
