// Engine results -> mor.v1 response messages.
#ifndef MOR_SERVER_RESPONSE_CONVERSION_H_
#define MOR_SERVER_RESPONSE_CONVERSION_H_

#include <string>
#include <vector>

#include "absl/types/span.h"
#include "model/tokenizer.h"
#include "proto/mor/v1/mor.pb.h"
#include "scheduler/engine.h"
#include "scheduler/generation_types.h"
#include "server/request_validation.h"

namespace mor {

// What the client asked to see of each token.
struct OutputOptions {
  bool return_depths = false;
  bool return_logprobs = false;  // GenerateRequest.top_logprobs > 0
  // Text output: set when the model has a tokenizer (not owned).
  const Tokenizer* tokenizer = nullptr;
  std::vector<std::string> stop_strings;
};

v1::FinishReason ToProto(FinishReason reason);
void FillUsage(const GenerationUsage& usage, v1::Usage* out);
v1::ModelInfo MakeModelInfo(const Engine& engine, const RequestLimits& limits);

// Appends `tokens` to a message with token_ids / depths / logprobs fields
// (GenerateResponse::Chunk or GenerateUnaryResponse).
template <typename Message>
void AppendTokens(absl::Span<const GeneratedToken> tokens, const OutputOptions& options,
                  Message* out) {
  for (const GeneratedToken& token : tokens) {
    out->add_token_ids(static_cast<uint32_t>(token.token_id));
    if (options.return_depths) out->add_depths(static_cast<uint32_t>(token.depth));
    if (options.return_logprobs) {
      v1::TokenLogprobs* logprobs = out->add_logprobs();
      logprobs->set_token_id(static_cast<uint32_t>(token.token_id));
      logprobs->set_logprob(token.logprob);
      for (const auto& [id, logprob] : token.top_logprobs) {
        v1::TopLogprob* top = logprobs->add_top();
        top->set_token_id(static_cast<uint32_t>(id));
        top->set_logprob(logprob);
      }
    }
  }
}

}  // namespace mor

#endif  // MOR_SERVER_RESPONSE_CONVERSION_H_
