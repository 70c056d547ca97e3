// Rough model-FLOPs accounting reported in Usage.estimated_flops.
#ifndef MOR_SERVER_FLOPS_ESTIMATE_H_
#define MOR_SERVER_FLOPS_ESTIMATE_H_

#include <cstdint>

#include "model/model_config.h"

namespace mor {

// Parameters in the linear layers of one recursion block (B decoder layers:
// q, k, v, o projections and the SwiGLU gate, up and down projections). Norm
// weights and routers are negligible and not counted. For a vanilla model the
// block is all L layers.
int64_t BlockLinearParams(const ModelConfig& config);

// FLOPs for one token going through one recursion: 2 x BlockLinearParams (one
// multiply and one add per weight). Attention scores (which grow with the
// context), the unique first/last layers, the embedding and the LM head are
// not included, so the estimate compares recursion depths, not hardware use.
double FlopsPerTokenRecursion(const ModelConfig& config);

}  // namespace mor

#endif  // MOR_SERVER_FLOPS_ESTIMATE_H_
