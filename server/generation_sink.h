// Where the Engine delivers one request's output.
#ifndef MOR_SERVER_GENERATION_SINK_H_
#define MOR_SERVER_GENERATION_SINK_H_

#include "absl/types/span.h"
#include "server/generation_types.h"

namespace mor {

// Implemented by the gRPC reactors (and by tests). Both methods are called on
// the engine thread, never while the engine holds its lock, so they may call
// Engine::Abort; they must not block (queue the data and return).
//
// Lifetime: the sink must stay valid from Engine::Submit until OnFinished is
// called. OnFinished is called exactly once, last; after it returns the engine
// never touches the sink again, so OnFinished may (indirectly) delete it.
class GenerationSink {
 public:
  virtual ~GenerationSink() = default;

  // New tokens, in order (one or more).
  virtual void OnTokens(absl::Span<const GeneratedToken> tokens) = 0;
  virtual void OnFinished(const GenerationResult& result) = 0;
};

}  // namespace mor

#endif  // MOR_SERVER_GENERATION_SINK_H_
