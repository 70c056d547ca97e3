#include "bench/loadgen/prompt_source.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "grpcpp/grpcpp.h"

namespace mor::loadgen {

PromptSource PromptSource::Random(int32_t vocab_size) {
  return PromptSource(vocab_size, {}, "random token ids");
}

absl::StatusOr<PromptSource> PromptSource::FromTokens(std::vector<uint32_t> tokens,
                                                      std::string description) {
  if (tokens.empty()) return absl::InvalidArgumentError("the prompt corpus has no tokens");
  return PromptSource(0, std::move(tokens), std::move(description));
}

absl::StatusOr<PromptSource> PromptSource::FromTextFile(const std::string& path, int64_t max_bytes,
                                                        mor::v1::MorService::Stub& stub) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read dataset ", path));
  std::string text(static_cast<size_t>(std::max<int64_t>(0, max_bytes)), '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  std::vector<uint32_t> ids;
  for (absl::string_view doc : absl::StrSplit(text, "\n\n", absl::SkipWhitespace())) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    mor::v1::TokenizeRequest request;
    request.set_text(std::string(absl::StripAsciiWhitespace(doc)));
    mor::v1::TokenizeResponse response;
    const grpc::Status status = stub.Tokenize(&context, request, &response);
    if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      return absl::FailedPreconditionError(
          absl::StrCat("--dataset ", path,
                       " needs a server with a tokenizer (Tokenize is UNIMPLEMENTED): "
                       "start mor_server with --tokenizer, or use --dataset random"));
    }
    if (!status.ok()) {
      return absl::UnavailableError(
          absl::StrCat("Tokenize failed while reading ", path, ": ", status.error_message()));
    }
    ids.insert(ids.end(), response.token_ids().begin(), response.token_ids().end());
  }
  std::string description = absl::StrCat(path, " (", ids.size(), " tokens)");
  return FromTokens(std::move(ids), std::move(description));
}

absl::StatusOr<std::vector<uint32_t>> PromptSource::Make(int32_t length,
                                                         std::mt19937_64& rng) const {
  std::vector<uint32_t> out(static_cast<size_t>(std::max(1, length)));
  if (tokens_.empty()) {
    std::uniform_int_distribution<uint32_t> id(0, static_cast<uint32_t>(vocab_size_ - 1));
    for (uint32_t& t : out) t = id(rng);
    return out;
  }
  if (out.size() > tokens_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("a ", out.size(), "-token prompt is longer than ", description_));
  }
  std::uniform_int_distribution<size_t> start(0, tokens_.size() - out.size());
  const size_t s = start(rng);
  std::copy(tokens_.begin() + static_cast<std::ptrdiff_t>(s),
            tokens_.begin() + static_cast<std::ptrdiff_t>(s + out.size()), out.begin());
  return out;
}

}  // namespace mor::loadgen
