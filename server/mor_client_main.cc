// mor_client: a small command-line client for mor_server.
//
//   mor_client --tokens 1,2,3 --depth 2 --max_tokens 16   # stream tokens + depths
//   mor_client --tokens 1,2,3 --unary                     # one GenerateUnary call
//   mor_client --info                                     # print ModelInfo
//   mor_client --health                                   # grpc.health.v1 Check
//
// Generation prints one line per token, "token=<id> depth=<d>", as the tokens
// arrive, then one "finish=<reason> ..." line with the usage. Exit code 0 on
// success, 1 on an RPC error (printed to stderr), 2 on bad flags.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "proto/mor/v1/mor.grpc.pb.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051", "Server address, host:port.");
ABSL_FLAG(std::string, tokens, "", "Prompt token ids, comma-separated (e.g. 1,2,3).");
ABSL_FLAG(int32_t, depth, 0, "Fixed recursion depth 1..Nr; 0 = adaptive (the router decides).");
ABSL_FLAG(int32_t, max_tokens, 16, "Tokens to generate; 0 = the server's default.");
ABSL_FLAG(int32_t, min_tokens, 0, "Tokens to generate before EOS / stop tokens may end it.");
ABSL_FLAG(std::string, stop_token_ids, "", "Comma-separated token ids that stop generation.");
ABSL_FLAG(bool, ignore_eos, false, "Do not stop at the model's EOS token.");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature; 0 = greedy.");
ABSL_FLAG(int32_t, top_k, 0, "Top-k sampling; 0 = off.");
ABSL_FLAG(double, top_p, 1.0, "Nucleus sampling mass in (0, 1].");
ABSL_FLAG(int64_t, seed, -1, "Sampling seed; -1 = let the server pick.");
ABSL_FLAG(int32_t, top_logprobs, 0, "Also print this many top log-probabilities per token.");
ABSL_FLAG(std::string, request_id, "", "Request id for the server log.");
ABSL_FLAG(bool, unary, false, "Use GenerateUnary instead of the streaming Generate.");
ABSL_FLAG(bool, info, false, "Print the server's ModelInfo and exit.");
ABSL_FLAG(bool, health, false, "Print the server's grpc.health.v1 status and exit.");
ABSL_FLAG(std::string, tokenize, "", "Print the token ids the server's tokenizer gives this text.");
ABSL_FLAG(std::vector<std::string>, stop, {}, "Stop strings, comma-separated (text mode).");
ABSL_FLAG(bool, color, true,
          "Text mode on a terminal: colour each piece of text by the recursion depth of its "
          "token (1 = blue ... Nr = red); --nocolor annotates nothing.");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(120), "Deadline of the call.");

namespace {

// gRPC's status codes have absl's numbering (both are the canonical codes).
std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

int RpcError(const grpc::Status& status) {
  std::fprintf(stderr, "mor_client: error: %s: %s\n", CodeName(status.error_code()).c_str(),
               status.error_message().c_str());
  return 1;
}

bool ParseIds(const std::string& text, std::vector<uint32_t>* ids) {
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    uint32_t id = 0;
    if (!absl::SimpleAtoi(part, &id)) return false;
    ids->push_back(id);
  }
  return true;
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
}

template <typename Message>
void PrintTokens(const Message& message) {
  for (int i = 0; i < message.token_ids_size(); ++i) {
    std::printf("token=%u", message.token_ids(i));
    if (i < message.depths_size()) std::printf(" depth=%u", message.depths(i));
    if (i < message.logprobs_size()) {
      const mor::v1::TokenLogprobs& lp = message.logprobs(i);
      std::printf(" logprob=%.4f top=", lp.logprob());
      for (int k = 0; k < lp.top_size(); ++k) {
        std::printf("%s%u:%.4f", k ? "," : "", lp.top(k).token_id(), lp.top(k).logprob());
      }
    }
    std::printf("\n");
  }
  std::fflush(stdout);
}

void PrintFinal(const std::string& request_id, mor::v1::FinishReason reason,
                const mor::v1::Usage& usage) {
  std::string reason_name = mor::v1::FinishReason_Name(reason);
  const std::string prefix = "FINISH_REASON_";
  if (reason_name.rfind(prefix, 0) == 0) reason_name = reason_name.substr(prefix.size());
  std::printf(
      "finish=%s request_id=%s prompt_tokens=%u completion_tokens=%u token_steps_per_depth=%s "
      "estimated_flops=%.4g queue_seconds=%.4f compute_seconds=%.4f\n",
      reason_name.c_str(), request_id.c_str(), usage.prompt_tokens(), usage.completion_tokens(),
      absl::StrJoin(usage.token_steps_per_depth(), ",").c_str(), usage.estimated_flops(),
      usage.queue_seconds(), usage.compute_seconds());
  std::fflush(stdout);
}

int Info(mor::v1::MorService::Stub& stub) {
  grpc::ClientContext context;
  SetDeadline(&context);
  mor::v1::ModelInfo info;
  const grpc::Status status = stub.GetModelInfo(&context, mor::v1::GetModelInfoRequest(), &info);
  if (!status.ok()) return RpcError(status);
  std::printf("%s", info.DebugString().c_str());
  return 0;
}

int Health(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status =
      stub->Check(&context, grpc::health::v1::HealthCheckRequest(), &response);
  if (!status.ok()) return RpcError(status);
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return 0;
}

int Tokenize(mor::v1::MorService::Stub& stub, const std::string& text) {
  grpc::ClientContext context;
  SetDeadline(&context);
  mor::v1::TokenizeRequest request;
  request.set_text(text);
  mor::v1::TokenizeResponse response;
  const grpc::Status status = stub.Tokenize(&context, request, &response);
  if (!status.ok()) return RpcError(status);
  std::printf("%s\n", absl::StrJoin(response.token_ids(), ",").c_str());
  return 0;
}

// Text mode: streams the completion's text to stdout as it arrives; with
// colour, each piece is coloured by the depth its last token reached.
int GenerateText(mor::v1::MorService::Stub& stub, const mor::v1::GenerateRequest& request) {
  static const char* const kDepthColors[] = {"\033[34m", "\033[36m", "\033[32m",
                                             "\033[33m", "\033[35m", "\033[31m"};
  const bool color = absl::GetFlag(FLAGS_color) && isatty(fileno(stdout));
  grpc::ClientContext context;
  SetDeadline(&context);
  auto reader = stub.Generate(&context, request);
  mor::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.has_chunk()) {
      const auto& chunk = response.chunk();
      if (color && chunk.depths_size() > 0) {
        const uint32_t depth = chunk.depths(chunk.depths_size() - 1);
        std::printf("%s%s\033[0m", kDepthColors[std::min<uint32_t>(depth, 6) - 1],
                    chunk.text().c_str());
      } else {
        std::printf("%s", chunk.text().c_str());
      }
      std::fflush(stdout);
    }
    if (response.has_final()) {
      std::printf("\n");
      const auto& usage = response.final().usage();
      std::string reason = mor::v1::FinishReason_Name(response.final().finish_reason());
      std::fprintf(stderr, "[%s, %u tokens, token steps per depth %s]\n", reason.c_str(),
                   usage.completion_tokens(),
                   absl::StrJoin(usage.token_steps_per_depth(), ",").c_str());
    }
  }
  const grpc::Status status = reader->Finish();
  return status.ok() ? 0 : RpcError(status);
}

int Generate(mor::v1::MorService::Stub& stub, const mor::v1::GenerateRequest& request) {
  grpc::ClientContext context;
  SetDeadline(&context);
  if (absl::GetFlag(FLAGS_unary)) {
    mor::v1::GenerateUnaryResponse response;
    const grpc::Status status = stub.GenerateUnary(&context, request, &response);
    if (!status.ok()) return RpcError(status);
    PrintTokens(response);
    PrintFinal(response.request_id(), response.finish_reason(), response.usage());
    return 0;
  }
  auto reader = stub.Generate(&context, request);
  mor::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (response.has_chunk()) PrintTokens(response.chunk());
    if (response.has_final()) {
      PrintFinal(response.final().request_id(), response.final().finish_reason(),
                 response.final().usage());
    }
  }
  const grpc::Status status = reader->Finish();
  return status.ok() ? 0 : RpcError(status);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Client for mor_server.\n\nUsage: mor_client \"prompt text\" [--depth N] [--max_tokens N] "
      "[--stop s1,s2] [--address host:port]\n       mor_client --tokens 1,2,3 [--depth N] "
      "[--max_tokens N] [--unary]\n       mor_client --info | --health | --tokenize \"text\"");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  auto channel =
      grpc::CreateChannel(absl::GetFlag(FLAGS_address), grpc::InsecureChannelCredentials());
  auto stub = mor::v1::MorService::NewStub(channel);
  if (absl::GetFlag(FLAGS_info)) return Info(*stub);
  if (absl::GetFlag(FLAGS_health)) return Health(channel);
  if (!absl::GetFlag(FLAGS_tokenize).empty()) return Tokenize(*stub, absl::GetFlag(FLAGS_tokenize));

  mor::v1::GenerateRequest request;
  request.set_request_id(absl::GetFlag(FLAGS_request_id));
  const bool text_mode = positional.size() > 1;
  if (text_mode) {
    request.set_text(absl::StrJoin(positional.begin() + 1, positional.end(), " "));
  } else {
    std::vector<uint32_t> ids;
    if (!ParseIds(absl::GetFlag(FLAGS_tokens), &ids) || ids.empty()) {
      std::fprintf(stderr,
                   "mor_client: give a prompt text or --tokens with comma-separated token ids "
                   "(see --help)\n");
      return 2;
    }
    request.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  }
  for (const std::string& stop : absl::GetFlag(FLAGS_stop))
    request.mutable_stopping()->add_stop(stop);
  std::vector<uint32_t> stop_ids;
  if (!ParseIds(absl::GetFlag(FLAGS_stop_token_ids), &stop_ids)) {
    std::fprintf(stderr, "mor_client: --stop_token_ids needs comma-separated token ids\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_depth) > 0) {
    request.mutable_recursion()->set_fixed_depth(static_cast<uint32_t>(absl::GetFlag(FLAGS_depth)));
  }
  mor::v1::StoppingCriteria* stopping = request.mutable_stopping();
  if (absl::GetFlag(FLAGS_max_tokens) > 0) {
    stopping->set_max_tokens(static_cast<uint32_t>(absl::GetFlag(FLAGS_max_tokens)));
  }
  stopping->set_min_tokens(static_cast<uint32_t>(std::max(0, absl::GetFlag(FLAGS_min_tokens))));
  stopping->mutable_stop_token_ids()->Add(stop_ids.begin(), stop_ids.end());
  stopping->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  mor::v1::SamplingParams* sampling = request.mutable_sampling();
  sampling->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  sampling->set_top_k(static_cast<uint32_t>(std::max(0, absl::GetFlag(FLAGS_top_k))));
  sampling->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    sampling->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  }
  request.set_return_depths(true);
  request.set_top_logprobs(static_cast<uint32_t>(std::max(0, absl::GetFlag(FLAGS_top_logprobs))));
  return text_mode ? GenerateText(*stub, request) : Generate(*stub, request);
}
