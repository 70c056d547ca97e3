// Attention over the paged KV cache for a ragged batch: queries from several
// sequences (any number each), each attending causally to its own sequence's
// entries at one KV level. Internal to model/.
//
// The metadata (AttentionBatch) is built once per level per step on the host
// and reused by every layer of the level, so no per-layer mask is rebuilt.
#ifndef MOR_MODEL_PAGED_ATTENTION_H_
#define MOR_MODEL_PAGED_ATTENTION_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "model/cpu_paged_attention.h"
#include "model/kv_cache_types.h"

namespace mor {

// Host-side description of the query rows of one level in one step.
struct LevelQueries {
  // Per query row (rows in activation order): its group (one group per
  // sequence) and the compact entry index it attends up to (inclusive) at
  // this level. For writing levels this is also where its own K/V go.
  std::vector<int32_t> group;
  std::vector<int32_t> entry;
  // Per group: the sequence's table at this level (blocks must cover every
  // entry referenced).
  std::vector<const KvTable*> tables;
};

// Metadata for one level: where to write new K/V and how to attend. Two
// kernels: the CPU paged kernel reads the cache through host block tables;
// elsewhere K/V are gathered into padded tensors for one batched SDPA call.
struct AttentionBatch {
  bool use_cpu_kernel = false;
  CpuPagedRows cpu_rows;  // when use_cpu_kernel
  int64_t num_rows = 0;
  int64_t num_groups = 0;
  int64_t max_queries = 0;           // per group
  int64_t max_context = 0;           // per group
  bool one_query_per_group = false;  // rows are groups 0..n-1 in order: no padding
  at::Tensor row_slots;              // [rows] int64 flat cache slot of each row's own entry
  // Gather + SDPA path only:
  at::Tensor padded_index;   // [rows] int64 position of each row in [groups * max_queries]
  at::Tensor context_slots;  // [groups * max_context] int64 flat slots (0 = padding)
  at::Tensor mask;           // [groups, 1, max_queries, max_context] bool, true = attend
};

// `cpu_kernel` selects the CPU paged kernel (device must be the CPU).
AttentionBatch BuildAttentionBatch(const LevelQueries& queries, int32_t block_size,
                                   at::Device device, bool cpu_kernel);

// Writes `k`, `v` ([rows, kv_heads, head_dim]) into the layer caches at the
// rows' own slots.
void WriteKv(const AttentionBatch& batch, const at::Tensor& k, const at::Tensor& v,
             at::Tensor& k_cache, at::Tensor& v_cache);

// Attention of `q` ([rows, heads, head_dim], RoPE applied) over the cached
// K/V; returns [rows, heads * head_dim]. GQA: heads is a multiple of kv_heads.
at::Tensor PagedAttention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const AttentionBatch& batch);

}  // namespace mor

#endif  // MOR_MODEL_PAGED_ATTENTION_H_
