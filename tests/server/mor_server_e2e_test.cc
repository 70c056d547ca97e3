// End to end: a MorServer on 127.0.0.1 (ephemeral port) serving a tiny random
// MoR model with the LibTorch runner, driven through the generated gRPC stubs.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "model/model_runner.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"
#include "proto/mor/v1/mor.grpc.pb.h"
#include "scheduler/engine.h"
#include "scheduler/flops_estimate.h"
#include "server/mor_server.h"
#include "tests/server/tiny_model.h"

namespace mor {
namespace {

using ::testing::HasSubstr;

constexpr int kMaxTokensCap = 600;
constexpr uint32_t kNumRecursions = 3;

struct StreamResult {
  grpc::Status status;
  std::vector<uint32_t> tokens;
  std::vector<uint32_t> depths;
  int num_chunks = 0;
  bool has_final = false;
  v1::GenerateResponse::Final final;
};

class MorServerE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ =
        new std::string(absl::StrCat(::testing::TempDir(), "/mor_server_e2e_", getpid(), "/tiny"));
    ASSERT_TRUE(testing::WriteTinyMorModel(*model_dir_, testing::TinyMorConfig()).ok());
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    std::filesystem::remove_all(std::filesystem::path(*model_dir_).parent_path(), ec);
    delete model_dir_;
  }

  void SetUp() override { StartServer(EngineOptions{}); }

  void StartServer(EngineOptions engine_options,
                   absl::Duration max_connection_age = absl::InfiniteDuration()) {
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(1));
    server_.reset();
    ModelRunnerOptions options;
    options.model_dir = *model_dir_;
    options.block_size = 4;
    options.num_depth_blocks = 1024;
    options.num_threads = 1;
    auto runner = CreateTorchModelRunner(options);
    ASSERT_TRUE(runner.ok()) << runner.status();
    auto engine = Engine::Create(std::move(*runner), engine_options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    MorServerOptions server_options;
    server_options.listen_address = "127.0.0.1:0";
    server_options.limits.max_tokens_cap = kMaxTokensCap;
    server_options.max_connection_age = max_connection_age;
    auto server = MorServer::Start(std::move(*engine), server_options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_GT(server_->port(), 0);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::MorService::NewStub(channel_);
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::Seconds(1));
  }

  static void SetDeadline(grpc::ClientContext* context,
                          absl::Duration timeout = absl::Seconds(30)) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }

  static v1::GenerateRequest Request(std::vector<uint32_t> prompt, uint32_t max_tokens) {
    v1::GenerateRequest request;
    request.mutable_tokens()->mutable_ids()->Add(prompt.begin(), prompt.end());
    request.mutable_stopping()->set_max_tokens(max_tokens);
    request.mutable_stopping()->set_ignore_eos(true);
    request.set_return_depths(true);
    return request;
  }

  StreamResult Stream(const v1::GenerateRequest& request) {
    StreamResult result;
    grpc::ClientContext context;
    SetDeadline(&context);
    auto reader = stub_->Generate(&context, request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
      EXPECT_FALSE(result.has_final) << "a message after the final one";
      if (response.has_chunk()) {
        ++result.num_chunks;
        result.tokens.insert(result.tokens.end(), response.chunk().token_ids().begin(),
                             response.chunk().token_ids().end());
        result.depths.insert(result.depths.end(), response.chunk().depths().begin(),
                             response.chunk().depths().end());
      } else if (response.has_final()) {
        result.has_final = true;
        result.final = response.final();
      }
    }
    result.status = reader->Finish();
    return result;
  }

  grpc::Status Unary(const v1::GenerateRequest& request, v1::GenerateUnaryResponse* response) {
    grpc::ClientContext context;
    SetDeadline(&context);
    return stub_->GenerateUnary(&context, request, response);
  }

  // Waits until the engine is idle with every KV block back in its pool.
  bool WaitForAllBlocksFree(absl::Duration timeout = absl::Seconds(10)) {
    Engine& engine = server_->engine();
    const KvCacheGeometry& g = engine.kv_geometry();
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (engine.idle() && engine.free_blocks(KvPool::kDepth) == g.num_depth_blocks - 1 &&
          engine.free_blocks(KvPool::kUnique) == g.num_unique_blocks - 1) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  static std::string* model_dir_;
  std::unique_ptr<MorServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::MorService::Stub> stub_;
};

std::string* MorServerE2eTest::model_dir_ = nullptr;

TEST_F(MorServerE2eTest, StreamingGreedyEqualsUnary) {
  const v1::GenerateRequest request = Request({5, 6, 7, 8}, 12);
  const StreamResult stream = Stream(request);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  ASSERT_TRUE(stream.has_final);
  EXPECT_GE(stream.num_chunks, 1);
  EXPECT_EQ(stream.tokens.size(), 12u);
  EXPECT_EQ(stream.depths.size(), 12u);
  for (uint32_t depth : stream.depths) {
    EXPECT_GE(depth, 1u);
    EXPECT_LE(depth, kNumRecursions);
  }
  EXPECT_EQ(stream.final.finish_reason(), v1::FINISH_REASON_MAX_TOKENS);
  EXPECT_THAT(stream.final.request_id(), HasSubstr("req-"));

  v1::GenerateUnaryResponse unary;
  ASSERT_TRUE(Unary(request, &unary).ok());
  EXPECT_EQ(std::vector<uint32_t>(unary.token_ids().begin(), unary.token_ids().end()),
            stream.tokens);
  EXPECT_EQ(std::vector<uint32_t>(unary.depths().begin(), unary.depths().end()), stream.depths);
  EXPECT_EQ(unary.finish_reason(), v1::FINISH_REASON_MAX_TOKENS);
  EXPECT_EQ(unary.usage().prompt_tokens(), 4u);
  EXPECT_EQ(unary.usage().completion_tokens(), 12u);
  EXPECT_EQ(stream.final.usage().completion_tokens(), 12u);
  EXPECT_EQ(std::vector<uint64_t>(unary.usage().token_steps_per_depth().begin(),
                                  unary.usage().token_steps_per_depth().end()),
            std::vector<uint64_t>(stream.final.usage().token_steps_per_depth().begin(),
                                  stream.final.usage().token_steps_per_depth().end()));
  // Every fed token (prompt + all generated but the last) takes recursion 1.
  ASSERT_EQ(unary.usage().token_steps_per_depth_size(), static_cast<int>(kNumRecursions));
  EXPECT_EQ(unary.usage().token_steps_per_depth(0), 4u + 12u - 1u);
}

TEST_F(MorServerE2eTest, SeededSamplingIsReproducible) {
  v1::GenerateRequest request = Request({9, 10, 11}, 10);
  request.mutable_sampling()->set_temperature(1.0f);
  request.mutable_sampling()->set_seed(1234);
  request.set_top_logprobs(3);
  v1::GenerateUnaryResponse a, b;
  ASSERT_TRUE(Unary(request, &a).ok());
  ASSERT_TRUE(Unary(request, &b).ok());
  EXPECT_EQ(std::vector<uint32_t>(a.token_ids().begin(), a.token_ids().end()),
            std::vector<uint32_t>(b.token_ids().begin(), b.token_ids().end()));
  ASSERT_EQ(a.logprobs_size(), 10);
  EXPECT_EQ(a.logprobs(0).top_size(), 3);
  EXPECT_EQ(a.logprobs(0).token_id(), a.token_ids(0));
}

TEST_F(MorServerE2eTest, FixedDepthUsesNoDeeperRecursion) {
  const double flops_per_step = FlopsPerTokenRecursion(server_->engine().config());
  for (uint32_t d = 1; d <= kNumRecursions; ++d) {
    v1::GenerateRequest request = Request({3, 4, 5}, 6);
    request.mutable_recursion()->set_fixed_depth(d);
    const StreamResult stream = Stream(request);
    ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
    ASSERT_TRUE(stream.has_final);
    const v1::Usage& usage = stream.final.usage();
    ASSERT_EQ(usage.token_steps_per_depth_size(), static_cast<int>(kNumRecursions));
    uint64_t total = 0;
    for (uint32_t r = 1; r <= kNumRecursions; ++r) {
      const uint64_t steps = usage.token_steps_per_depth(r - 1);
      EXPECT_EQ(steps, r <= d ? 3u + 6u - 1u : 0u) << "depth " << d << " recursion " << r;
      total += steps;
    }
    EXPECT_DOUBLE_EQ(usage.estimated_flops(), static_cast<double>(total) * flops_per_step);
    for (uint32_t depth : stream.depths) EXPECT_EQ(depth, d);
  }
}

TEST_F(MorServerE2eTest, StopTokenEndsGeneration) {
  const StreamResult greedy = Stream(Request({20, 21}, 8));
  ASSERT_TRUE(greedy.status.ok());
  ASSERT_EQ(greedy.tokens.size(), 8u);
  v1::GenerateRequest request = Request({20, 21}, 8);
  request.mutable_stopping()->add_stop_token_ids(greedy.tokens[2]);
  const StreamResult stopped = Stream(request);
  ASSERT_TRUE(stopped.status.ok());
  EXPECT_EQ(stopped.final.finish_reason(), v1::FINISH_REASON_STOP_TOKEN);
  ASSERT_FALSE(stopped.tokens.empty());
  EXPECT_LE(stopped.tokens.size(), 3u);
  EXPECT_EQ(stopped.tokens.back(), greedy.tokens[2]);
}

struct InvalidCase {
  std::string name;
  std::function<void(v1::GenerateRequest&)> mutate;
  grpc::StatusCode code;
  std::string field;  // must appear in the message
};

TEST_F(MorServerE2eTest, InvalidRequestsNameTheField) {
  const std::vector<InvalidCase> cases = {
      {"no input", [](auto& r) { r.clear_tokens(); }, grpc::INVALID_ARGUMENT, "input"},
      {"empty ids", [](auto& r) { r.mutable_tokens()->clear_ids(); }, grpc::INVALID_ARGUMENT,
       "tokens.ids"},
      {"text without a tokenizer", [](auto& r) { r.set_text("hello"); }, grpc::FAILED_PRECONDITION,
       "tokenizer"},
      {"id outside vocab", [](auto& r) { r.mutable_tokens()->set_ids(1, 97); },
       grpc::INVALID_ARGUMENT, "tokens.ids[1]"},
      {"depth 0", [](auto& r) { r.mutable_recursion()->set_fixed_depth(0); },
       grpc::INVALID_ARGUMENT, "recursion.fixed_depth"},
      {"depth Nr+1", [](auto& r) { r.mutable_recursion()->set_fixed_depth(4); },
       grpc::INVALID_ARGUMENT, "recursion.fixed_depth"},
      {"negative temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-1); },
       grpc::INVALID_ARGUMENT, "sampling.temperature"},
      {"top_p 0", [](auto& r) { r.mutable_sampling()->set_top_p(0); }, grpc::INVALID_ARGUMENT,
       "sampling.top_p"},
      {"top_p > 1", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }, grpc::INVALID_ARGUMENT,
       "sampling.top_p"},
      {"max_tokens 0", [](auto& r) { r.mutable_stopping()->set_max_tokens(0); },
       grpc::INVALID_ARGUMENT, "stopping.max_tokens"},
      {"max_tokens over cap",
       [](auto& r) { r.mutable_stopping()->set_max_tokens(kMaxTokensCap + 1); },
       grpc::INVALID_ARGUMENT, "max_tokens_cap"},
      {"over context",
       [](auto& r) {
         r.mutable_tokens()->clear_ids();
         for (int i = 0; i < 500; ++i) r.mutable_tokens()->add_ids(5);
         r.mutable_stopping()->set_max_tokens(kMaxTokensCap);
       },
       grpc::INVALID_ARGUMENT, "context"},
      {"stop token outside vocab", [](auto& r) { r.mutable_stopping()->add_stop_token_ids(500); },
       grpc::INVALID_ARGUMENT, "stopping.stop_token_ids[0]"},
      {"stop strings without a tokenizer", [](auto& r) { r.mutable_stopping()->add_stop("\n"); },
       grpc::FAILED_PRECONDITION, "stopping.stop"},
      {"too many logprobs", [](auto& r) { r.set_top_logprobs(21); }, grpc::INVALID_ARGUMENT,
       "top_logprobs"},
      {"request id with a newline", [](auto& r) { r.set_request_id("a\nb"); },
       grpc::INVALID_ARGUMENT, "request_id"},
      {"min_tokens > max_tokens", [](auto& r) { r.mutable_stopping()->set_min_tokens(9); },
       grpc::INVALID_ARGUMENT, "stopping.min_tokens"},
  };
  for (const InvalidCase& c : cases) {
    v1::GenerateRequest request = Request({1, 2, 3}, 8);
    c.mutate(request);
    const StreamResult stream = Stream(request);
    EXPECT_EQ(stream.status.error_code(), c.code)
        << c.name << ": " << stream.status.error_message();
    EXPECT_THAT(stream.status.error_message(), HasSubstr(c.field)) << c.name;
    EXPECT_TRUE(stream.tokens.empty()) << c.name;
    v1::GenerateUnaryResponse unary;
    const grpc::Status status = Unary(request, &unary);
    EXPECT_EQ(status.error_code(), c.code) << c.name << " (unary)";
    EXPECT_THAT(status.error_message(), HasSubstr(c.field)) << c.name << " (unary)";
  }
  EXPECT_EQ(server_->engine().counters().requests_submitted, 0);
}

TEST_F(MorServerE2eTest, GetModelInfo) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.architecture(), "mor");
  EXPECT_EQ(info.num_recursions(), kNumRecursions);
  EXPECT_EQ(info.sharing_strategy(), "middle_cycle");
  EXPECT_EQ(info.router_type(), "expert_choice");
  EXPECT_EQ(info.router_arch(), "linear");
  EXPECT_EQ(info.kv_mode(), "recursion_wise");
  EXPECT_EQ(info.vocab_size(), 97u);
  EXPECT_EQ(info.max_context(), 1024u);
  EXPECT_EQ(info.dtype(), "float32");
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.hidden_size(), 32u);
  EXPECT_EQ(info.num_hidden_layers(), 5u);
  EXPECT_EQ(info.block_layers(), 1u);
  EXPECT_EQ(info.num_unique_layers(), 2u);
  EXPECT_THAT(info.eos_token_ids(), ::testing::ElementsAre(2u));
  EXPECT_EQ(info.kv_block_size(), 4u);
  EXPECT_EQ(info.max_tokens_cap(), static_cast<uint32_t>(kMaxTokensCap));
}

TEST_F(MorServerE2eTest, TokenizeWithoutATokenizerIsFailedPrecondition) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::TokenizeRequest request;
  request.set_text("hi");
  v1::TokenizeResponse response;
  EXPECT_EQ(stub_->Tokenize(&context, request, &response).error_code(), grpc::FAILED_PRECONDITION);
}

TEST_F(MorServerE2eTest, HealthIsServing) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  for (const std::string service : {"", "mor.v1.MorService"}) {
    grpc::ClientContext context;
    SetDeadline(&context);
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, request, &response).ok()) << service;
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
}

// Server reflection lists MorService. The reflection protos are not installed,
// so the request is hand-encoded: ServerReflectionRequest{list_services: ""}
// (field 7, length-delimited, empty).
TEST_F(MorServerE2eTest, ReflectionListsTheService) {
  grpc::GenericStub stub(channel_);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  SetDeadline(&context);
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&cq](intptr_t want) {
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  const std::string request("\x3a\x00", 2);
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  call->Write(request_buffer, reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  grpc::ByteBuffer response_buffer;
  call->Read(&response_buffer, reinterpret_cast<void*>(4));
  ASSERT_TRUE(step(4));
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response_buffer.Dump(&slices).ok());
  std::string response;
  for (const grpc::Slice& s : slices) response.append(s.begin(), s.end());
  EXPECT_THAT(response, HasSubstr("mor.v1.MorService"));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(MorServerE2eTest, CancelMidStreamFreesAllKvBlocks) {
  grpc::ClientContext context;
  SetDeadline(&context);
  auto reader = stub_->Generate(&context, Request({1, 2, 3, 4, 5}, 500));
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));
  ASSERT_TRUE(response.has_chunk());
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::CANCELLED);
  EXPECT_TRUE(WaitForAllBlocksFree());
  const EngineCounters counters = server_->engine().counters();
  EXPECT_EQ(counters.requests_cancelled, 1);
  EXPECT_LT(counters.tokens_generated, 500);
}

TEST_F(MorServerE2eTest, DeadlineStopsGenerationAndFreesBlocks) {
  grpc::ClientContext context;
  SetDeadline(&context, absl::Milliseconds(30));
  v1::GenerateUnaryResponse response;
  const grpc::Status status =
      stub_->GenerateUnary(&context, Request({1, 2, 3, 4, 5}, 500), &response);
  // The engine stops at the deadline too: its answer may still beat the
  // client's timer, carrying FINISH_REASON_DEADLINE.
  if (status.ok()) {
    EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_DEADLINE);
  } else {
    EXPECT_EQ(status.error_code(), grpc::DEADLINE_EXCEEDED);
  }
  EXPECT_TRUE(WaitForAllBlocksFree());
  EXPECT_LT(server_->engine().counters().tokens_generated, 500);
}

TEST_F(MorServerE2eTest, ShutdownEndsInFlightStreams) {
  StreamResult result;
  std::thread client([&] { result = Stream(Request({1, 2, 3}, 500)); });
  while (server_->engine().idle()) absl::SleepFor(absl::Milliseconds(1));
  const absl::Time start = absl::Now();
  server_->Shutdown(absl::Milliseconds(50));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  client.join();
  // Either the engine's CANCELLED final made it out before the call was
  // cancelled, or the call itself was cancelled.
  if (result.status.ok()) {
    EXPECT_TRUE(result.has_final);
    EXPECT_EQ(result.final.finish_reason(), v1::FINISH_REASON_CANCELLED);
  } else {
    EXPECT_THAT(result.status.error_code(), ::testing::AnyOf(grpc::CANCELLED, grpc::UNAVAILABLE));
  }
  EXPECT_LT(result.tokens.size(), 500u);
}

// 64 concurrent streams with mixed depth policies: each gets exactly the
// greedy tokens it gets when run alone.
TEST_F(MorServerE2eTest, ConcurrentMixedDepthStreamsMatchOneAtATime) {
  constexpr int kStreams = 64;
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    std::vector<uint32_t> prompt;
    for (int t = 0; t <= i % 9; ++t) prompt.push_back(static_cast<uint32_t>((i * 7 + t * 3) % 60));
    v1::GenerateRequest request = Request(prompt, 4 + i % 5);
    if (i % 4 != 0) request.mutable_recursion()->set_fixed_depth(i % 4);
    requests.push_back(request);
  }
  std::vector<std::vector<uint32_t>> alone;
  for (const v1::GenerateRequest& request : requests) {
    StreamResult result = Stream(request);
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    alone.push_back(result.tokens);
  }
  std::vector<StreamResult> together(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { together[i] = Stream(requests[i]); });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status.error_message();
    EXPECT_EQ(together[i].tokens, alone[i]) << "stream " << i;
    if (requests[i].recursion().has_fixed_depth()) {
      const auto& steps = together[i].final.usage().token_steps_per_depth();
      for (int r = requests[i].recursion().fixed_depth(); r < steps.size(); ++r) {
        EXPECT_EQ(steps[r], 0u) << "stream " << i << " depth " << r + 1;
      }
    }
  }
  EXPECT_TRUE(WaitForAllBlocksFree());
}

// A full waiting queue turns new requests away with RESOURCE_EXHAUSTED.
TEST_F(MorServerE2eTest, QueueFullIsResourceExhausted) {
  EngineOptions options;
  options.scheduler.max_num_seqs = 1;
  options.scheduler.max_queued_requests = 2;
  StartServer(options);
  // One long request runs; two more wait; the next one finds the queue full.
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>>> readers;
  for (int i = 0; i < 3; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    SetDeadline(contexts.back().get());
    readers.push_back(stub_->Generate(contexts.back().get(), Request({1, 2, 3}, kMaxTokensCap)));
    v1::GenerateResponse first;
    if (i == 0) {
      ASSERT_TRUE(readers.back()->Read(&first));  // the first one is running
    }
  }
  // Wait until all three reached the engine (the queued two may still be in
  // gRPC's hands), so the probes below run while the queue is full: the first
  // request alone runs for kMaxTokensCap tokens.
  for (int i = 0; i < 2000 && server_->engine().counters().requests_submitted < 3; ++i) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(server_->engine().counters().requests_submitted, 3);
  grpc::Status status;
  // The engine publishes its queue length after each step: a probe accepted in
  // that window just times out (short deadline) and the next one is refused.
  for (int attempt = 0; attempt < 100; ++attempt) {
    grpc::ClientContext context;
    SetDeadline(&context, absl::Milliseconds(300));
    v1::GenerateUnaryResponse response;
    status = stub_->GenerateUnary(&context, Request({4, 5}, 2), &response);
    if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("max_queued_requests"));
  for (auto& context : contexts) context->TryCancel();
  for (auto& reader : readers) reader->Finish();
  EXPECT_TRUE(WaitForAllBlocksFree());
}

// --max_connection_age: the server sends GOAWAY to old connections (so
// DNS-balancing clients re-resolve); the channel goes idle and the next call
// reconnects and succeeds.
TEST_F(MorServerE2eTest, MaxConnectionAgeSendsGoawayAndClientsReconnect) {
  StartServer(EngineOptions{}, absl::Milliseconds(200));
  const StreamResult first = Stream(Request({1, 2}, 2));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_EQ(channel_->GetState(false), GRPC_CHANNEL_READY);
  bool went_idle = false;
  for (int i = 0; i < 300 && !went_idle; ++i) {  // the age has jitter; ~3 s at most
    absl::SleepFor(absl::Milliseconds(10));
    went_idle = channel_->GetState(false) != GRPC_CHANNEL_READY;
  }
  EXPECT_TRUE(went_idle) << "no GOAWAY after max_connection_age";
  const StreamResult second = Stream(Request({3, 4}, 2));
  EXPECT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(second.tokens.size(), 2u);
}

}  // namespace
}  // namespace mor
