// How mor_server sizes the KV cache from its flags (torch-free, so it can be
// unit-tested): a byte budget (--kv_cache_bytes), a block count
// (--kv_blocks), or a fraction of the CUDA device memory left free once the
// weights are loaded (--kv_cache_fraction).
#ifndef MOR_SERVER_KV_CACHE_BUDGET_H_
#define MOR_SERVER_KV_CACHE_BUDGET_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/kv_cache_types.h"
#include "model/model_runner.h"
#include "scheduler/kv_cache_manager.h"

namespace mor {

// The KV flags as given; *_set: given on the command line (--kv_blocks:
// nonzero, its "unset" value being 0).
struct KvBudgetFlags {
  int64_t kv_cache_bytes = int64_t{1} << 30;  // the default when not set
  bool kv_cache_bytes_set = false;
  int64_t kv_blocks = 0;
  bool kv_blocks_set = false;
  double kv_cache_fraction = 0;
  bool kv_cache_fraction_set = false;
  std::string device = "cpu";  // --device
};

enum class KvBudgetSource { kBytes, kBlocks, kDeviceFraction };

struct KvBudgetPlan {
  KvBudgetSource source = KvBudgetSource::kBytes;
  int64_t bytes = 0;    // kBytes
  int64_t blocks = 0;   // kBlocks
  double fraction = 0;  // kDeviceFraction
};

// Checks the flags before anything loads. --kv_cache_fraction must be in
// (0, 1], needs a CUDA --device (cuda, cuda:N) and cannot be combined with
// --kv_cache_bytes or --kv_blocks: InvalidArgument otherwise, naming the
// flags. Without it, --kv_blocks > 0 wins over --kv_cache_bytes (as before).
absl::StatusOr<KvBudgetPlan> PlanKvBudget(const KvBudgetFlags& flags);

// The byte budget `fraction` x memory.free_bytes (rounded down).
// InvalidArgument for a fraction outside (0, 1] or free memory <= 0.
absl::StatusOr<int64_t> KvBytesFromFreeMemory(double fraction, const DeviceMemoryInfo& memory);

// What --kv_cache_fraction chose, for the startup log.
struct KvFractionDecision {
  double fraction = 0;
  DeviceMemoryInfo memory;
  int64_t budget_bytes = 0;  // fraction x free
  KvPoolSizes sizes;         // KvCacheManager::SizeFromBudget(geometry, budget_bytes)
};

// Budget from the free memory, then pools from the budget. Errors name
// --kv_cache_fraction and the memory figures.
absl::StatusOr<KvFractionDecision> SizeKvFromFreeMemory(double fraction,
                                                        const DeviceMemoryInfo& memory,
                                                        const KvCacheGeometry& geometry);

// One line for the log: fraction, free, total, budget and the blocks per pool.
std::string DescribeKvFractionDecision(const KvFractionDecision& decision);

}  // namespace mor

#endif  // MOR_SERVER_KV_CACHE_BUDGET_H_
