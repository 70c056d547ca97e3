// Torch-free description of the paged, recursion-wise KV cache: the block tables
// a sequence owns and the allocator interface the model draws blocks from.
//
// Layout (docs/model-format.md, "KV cache"): K/V live in paged blocks of
// `block_size` tokens. There are two physical pools:
//   * the depth pool: a block holds the K/V of the B slots (layers) of one
//     recursion for `block_size` tokens; every recursion depth draws from it,
//     each (sequence, depth) pair with its own table, so a depth a sequence's
//     tokens never reach holds no blocks;
//   * the unique pool: a block holds the unique first/last layers (middle_*
//     strategies only); one table per sequence, covering every token.
// In recursive-sharing mode only depth 1 has a table. Entries at one depth are
// stored compactly in position order: entry i of the depth-r table is the i-th
// token of the sequence that took recursion r.
#ifndef MOR_MODEL_KV_CACHE_TYPES_H_
#define MOR_MODEL_KV_CACHE_TYPES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mor {

enum class KvPool { kUnique = 0, kDepth = 1 };

// One block table: physical block ids and the number of entries written.
struct KvTable {
  std::vector<int32_t> blocks;
  int32_t num_tokens = 0;
};

// All tables of one sequence. Owned by the caller (the scheduler); the model
// appends blocks (through KvBlockAllocator) and advances num_tokens.
struct SequenceKv {
  KvTable unique;               // unused when the model has no unique layers
  std::vector<KvTable> depths;  // depths[r-1] for r in 1..num_depth_levels
};

// Shape of the KV cache, reported by the model so the caller can size pools.
struct KvCacheGeometry {
  int32_t block_size = 16;
  int32_t num_unique_layers = 0;  // layers in a unique-pool block (0: no pool)
  int32_t block_layers = 0;       // B: layers in a depth-pool block
  int32_t num_depth_levels = 0;   // Nr, or 1 for recursive sharing / vanilla
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t dtype_bytes = 4;
  int64_t num_unique_blocks = 0;  // capacity of each pool (block 0 reserved)
  int64_t num_depth_blocks = 0;

  // Bytes of K+V in one block of each pool.
  int64_t bytes_per_unique_block() const {
    return int64_t{2} * num_unique_layers * block_size * num_kv_heads * head_dim * dtype_bytes;
  }
  int64_t bytes_per_depth_block() const {
    return int64_t{2} * block_layers * block_size * num_kv_heads * head_dim * dtype_bytes;
  }
};

struct ModelConfig;

// The cache shape of `config` (docs/model-format.md "KV cache"): unique-pool
// layers, B layers per depth block, Nr depth levels (1 for recursive sharing
// and vanilla). Block counts are left 0 for the caller to fill.
KvCacheGeometry MakeKvCacheGeometry(const ModelConfig& config, int32_t block_size,
                                    int32_t dtype_bytes);

// Bytes per element of "float32", "bfloat16" / "float16" (0 if unknown).
int32_t DTypeBytes(const std::string& dtype);

// Hands out physical blocks. Implemented by the scheduler's KV manager (and by
// SimpleBlockAllocator for tests). Called only from the engine thread, during
// ModelRunner::Step, exactly when a table needs one more block.
class KvBlockAllocator {
 public:
  virtual ~KvBlockAllocator() = default;
  // A free block of `pool` for the table at `depth` (1-based; 0 for the
  // unique table), or ResourceExhausted. Block 0 is never returned.
  virtual absl::StatusOr<int32_t> Allocate(KvPool pool, int depth) = 0;
};

}  // namespace mor

#endif  // MOR_MODEL_KV_CACHE_TYPES_H_
