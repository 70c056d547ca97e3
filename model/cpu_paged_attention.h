// A CPU attention kernel that reads K/V straight from the paged cache
// through the block tables: no gather copy, no padding, no mask tensor.
// Internal to model/; used for CPU devices (CUDA uses the gather + SDPA path
// of paged_attention.h).
#ifndef MOR_MODEL_CPU_PAGED_ATTENTION_H_
#define MOR_MODEL_CPU_PAGED_ATTENTION_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace mor {

// Host-side block tables of the rows of one level in one step.
struct CpuPagedRows {
  int32_t block_size = 16;
  std::vector<int32_t> row_group;     // [rows] group (sequence) of each row
  std::vector<int32_t> row_context;   // [rows] entries the row attends to (causal)
  std::vector<int64_t> group_offset;  // [groups + 1] ranges of `blocks`
  std::vector<int32_t> blocks;        // every group's block ids, concatenated
};

// q: [rows, heads, head_dim] (any strides with unit last stride), float or
// bfloat16; caches: [slots, kv_heads, head_dim] contiguous, same dtype.
// Returns [rows, heads * head_dim] in q's dtype. Softmax in fp32.
at::Tensor CpuPagedAttention(const at::Tensor& q, const at::Tensor& k_cache,
                             const at::Tensor& v_cache, const CpuPagedRows& rows);

}  // namespace mor

#endif  // MOR_MODEL_CPU_PAGED_ATTENTION_H_
