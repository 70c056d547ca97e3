// ServingMetrics end to end: a MorServer with /metrics on 127.0.0.1 (ephemeral
// ports) serving the tiny random MoR model with the LibTorch runner. The
// process carries LibTorch's large static TLS, so this also checks that the
// civetweb exposer starts there (server/metrics/exposer.cc). One server is
// shared by the tests of a process (stopping civetweb takes ~2 s); tests
// compare scrapes before and after their own requests.
#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "model/model_runner.h"
#include "proto/mor/v1/mor.grpc.pb.h"
#include "scheduler/engine.h"
#include "scheduler/flops_estimate.h"
#include "server/mor_server.h"
#include "tests/server/metrics/http_get.h"
#include "tests/server/tiny_model.h"

namespace mor {
namespace {

using ::testing::HasSubstr;
using Samples = std::map<std::string, double>;

constexpr int kNumRecursions = 3;

class ServingMetricsE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(
        absl::StrCat(::testing::TempDir(), "/serving_metrics_e2e_", getpid(), "/tiny"));
    ASSERT_TRUE(testing::WriteTinyMorModel(*dir_, testing::TinyMorConfig()).ok());
    ModelRunnerOptions options;
    options.model_dir = *dir_;
    options.block_size = 4;
    options.num_depth_blocks = 1024;
    options.num_threads = 1;
    auto runner = CreateTorchModelRunner(options);
    ASSERT_TRUE(runner.ok()) << runner.status();
    auto engine = Engine::Create(std::move(*runner));
    ASSERT_TRUE(engine.ok()) << engine.status();
    MorServerOptions server_options;
    server_options.listen_address = "127.0.0.1:0";
    server_options.metrics_address = "127.0.0.1:0";
    server_options.metrics.model_name = "tiny";
    auto server = MorServer::Start(std::move(*engine), server_options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = server->release();
    channel_ = new std::shared_ptr<grpc::Channel>(
        grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  }
  static void TearDownTestSuite() {
    delete channel_;
    delete server_;
    std::error_code ec;
    std::filesystem::remove_all(std::filesystem::path(*dir_).parent_path(), ec);
    delete dir_;
  }

  static Samples Scrape() {
    auto response = testing::HttpRequest(server_->metrics_port(), "GET", "/metrics");
    EXPECT_TRUE(response.ok()) << response.status();
    if (!response.ok()) return {};
    auto samples = testing::ParseSamples(response->body);
    EXPECT_TRUE(samples.ok()) << samples.status();
    return samples.ok() ? *samples : Samples{};
  }

  static v1::GenerateRequest Request(std::vector<uint32_t> prompt, uint32_t max_tokens,
                                     int depth /* 0: adaptive */) {
    v1::GenerateRequest request;
    request.mutable_tokens()->mutable_ids()->Add(prompt.begin(), prompt.end());
    request.mutable_stopping()->set_max_tokens(max_tokens);
    request.mutable_stopping()->set_ignore_eos(true);
    request.set_return_depths(true);
    if (depth > 0) {
      request.mutable_recursion()->set_fixed_depth(depth);
    } else {
      request.mutable_recursion()->mutable_adaptive();
    }
    return request;
  }

  // Streams `request`; returns the final message (or fails the test).
  static v1::GenerateResponse::Final Stream(const v1::GenerateRequest& request,
                                            std::vector<uint32_t>* depths = nullptr) {
    auto stub = v1::MorService::NewStub(*channel_);
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    auto reader = stub->Generate(&context, request);
    v1::GenerateResponse response;
    v1::GenerateResponse::Final final;
    while (reader->Read(&response)) {
      if (response.has_final()) final = response.final();
      if (response.has_chunk() && depths != nullptr) {
        depths->insert(depths->end(), response.chunk().depths().begin(),
                       response.chunk().depths().end());
      }
    }
    const grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    return final;
  }

  static double Delta(const Samples& before, const Samples& after, const std::string& series) {
    auto b = before.find(series);
    auto a = after.find(series);
    EXPECT_NE(a, after.end()) << series << " missing";
    return (a == after.end() ? 0 : a->second) - (b == before.end() ? 0 : b->second);
  }

  static std::string* dir_;
  static MorServer* server_;
  static std::shared_ptr<grpc::Channel>* channel_;
};

std::string* ServingMetricsE2eTest::dir_ = nullptr;
MorServer* ServingMetricsE2eTest::server_ = nullptr;
std::shared_ptr<grpc::Channel>* ServingMetricsE2eTest::channel_ = nullptr;

TEST_F(ServingMetricsE2eTest, PerDepthComputeAgreesWithTheUsageOfTheRpcs) {
  const Samples before = Scrape();
  // Concurrent mixed-depth streams, so steps batch several requests.
  std::vector<v1::GenerateResponse::Final> finals(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&finals, i] {
      finals[i] = Stream(Request({static_cast<uint32_t>(3 + i), 4, 5, 6}, 5 + i, i % 4));
    });
  }
  for (std::thread& t : threads) t.join();
  std::vector<double> expected(kNumRecursions, 0);
  for (const auto& final : finals) {
    ASSERT_EQ(final.usage().token_steps_per_depth_size(), kNumRecursions);
    for (int r = 0; r < kNumRecursions; ++r) expected[r] += final.usage().token_steps_per_depth(r);
  }
  // The step observer runs after the step that delivered the final message:
  // poll (bounded) until the counters catch up.
  Samples after;
  for (int attempt = 0; attempt < 100; ++attempt) {
    after = Scrape();
    bool equal = true;
    for (int r = 1; r <= kNumRecursions; ++r) {
      equal &= Delta(before, after,
                     absl::StrCat("mor_recursion_token_steps_total{depth=\"", r, "\"}")) ==
               expected[r - 1];
    }
    if (equal) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  const double flops_per_step = FlopsPerTokenRecursion(server_->engine().config());
  for (int r = 1; r <= kNumRecursions; ++r) {
    const std::string depth = absl::StrCat("{depth=\"", r, "\"}");
    EXPECT_EQ(Delta(before, after, "mor_recursion_token_steps_total" + depth), expected[r - 1])
        << "depth " << r;
    EXPECT_NEAR(Delta(before, after, "mor_recursion_estimated_flops_total" + depth),
                expected[r - 1] * flops_per_step, 1e-6 * expected[r - 1] * flops_per_step + 1);
    // Every step's depth-r rows are one observation of the batch histogram.
    EXPECT_EQ(Delta(before, after, "mor_shared_block_batch_tokens_sum" + depth), expected[r - 1]);
  }
  EXPECT_GT(expected[2], 0);  // the fixed depth-3 requests reached depth 3
  EXPECT_EQ(Delta(before, after, "mor_requests_total{depth=\"3\",policy=\"adaptive\"}"), 2);
  for (int d = 1; d <= kNumRecursions; ++d) {
    EXPECT_EQ(Delta(before, after,
                    absl::StrCat("mor_requests_total{depth=\"", d, "\",policy=\"fixed\"}")),
              2);
  }
  EXPECT_EQ(Delta(before, after, "mor_request_success_total{finished_reason=\"max_tokens\"}"), 8);
  double generated = 0;
  for (int i = 0; i < 8; ++i) generated += 5 + i;
  EXPECT_EQ(Delta(before, after, "mor_generation_tokens_total"), generated);
  EXPECT_EQ(Delta(before, after, "mor_prompt_tokens_total"), 8 * 4);
  for (const char* histogram :
       {"mor_time_to_first_token_seconds", "mor_e2e_request_latency_seconds",
        "mor_request_queue_time_seconds", "mor_request_prefill_time_seconds",
        "mor_request_decode_time_seconds", "mor_request_time_per_output_token_seconds"}) {
    EXPECT_EQ(Delta(before, after, absl::StrCat(histogram, "_count")), 8) << histogram;
  }
  // One inter-token gap per token after the first.
  EXPECT_EQ(Delta(before, after, "mor_inter_token_latency_seconds_count"), generated - 8);
  EXPECT_EQ(after.at("mor_num_requests_running"), 0);
  EXPECT_EQ(after.at("mor_kv_cache_used_blocks{pool=\"depth\"}"), 0);
}

TEST_F(ServingMetricsE2eTest, AdaptiveExitDepthsMatchTheReturnedDepths) {
  const Samples before = Scrape();
  std::vector<double> exits(kNumRecursions, 0);
  for (uint32_t first = 10; first < 14; ++first) {
    std::vector<uint32_t> depths;
    Stream(Request({first, 11, 12}, 12, /*adaptive*/ 0), &depths);
    ASSERT_EQ(depths.size(), 12u);
    for (uint32_t d : depths) exits.at(d - 1) += 1;
  }
  Stream(Request({1, 2, 3}, 4, /*depth*/ 2));  // fixed: not counted
  const Samples after = Scrape();
  for (int r = 1; r <= kNumRecursions; ++r) {
    EXPECT_EQ(
        Delta(before, after, absl::StrCat("mor_adaptive_exit_tokens_total{depth=\"", r, "\"}")),
        exits[r - 1])
        << "depth " << r;
  }
}

TEST_F(ServingMetricsE2eTest, FailuresAreCountedByCode) {
  const Samples before = Scrape();
  auto stub = v1::MorService::NewStub(*channel_);
  v1::GenerateRequest empty = Request({1}, 4, 0);
  empty.mutable_tokens()->clear_ids();
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    v1::GenerateUnaryResponse response;
    EXPECT_EQ(stub->GenerateUnary(&context, empty, &response).error_code(), grpc::INVALID_ARGUMENT);
  }
  // A streaming call fails the same way.
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, Request({1}, 4, kNumRecursions + 1));
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::INVALID_ARGUMENT);
  const Samples after = Scrape();
  EXPECT_EQ(Delta(before, after, "mor_request_failures_total{code=\"INVALID_ARGUMENT\"}"), 3);
  EXPECT_EQ(Delta(before, after, "mor_request_failures_total{code=\"INTERNAL\"}"), 0);
}

TEST_F(ServingMetricsE2eTest, ScrapeDescribesTheModelAndIsWellFormed) {
  auto response = testing::HttpRequest(server_->metrics_port(), "GET", "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  const std::string& body = response->body;
  EXPECT_THAT(body, HasSubstr("mor_model_info{architecture=\"mor\",batching_mode=\""
                              "continuous_depthwise\",device=\"cpu\",dtype=\"float32\",kv_mode="
                              "\"recursion_wise\",model_name=\"tiny\",num_recursions=\"3\","));
  EXPECT_THAT(body, HasSubstr("version=\"" MOR_TEST_VERSION "\"} 1\n"));
  auto samples = testing::ParseSamples(body);
  ASSERT_TRUE(samples.ok()) << samples.status();
  // Every sample's family has HELP and TYPE lines, with a mor_ name.
  for (const auto& [series, value] : *samples) {
    std::string family = series.substr(0, series.find('{'));
    EXPECT_EQ(family.rfind("mor_", 0), 0u) << family;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      const std::string s(suffix);
      if (family.size() > s.size() && family.ends_with(s) &&
          body.find("# TYPE " + family.substr(0, family.size() - s.size()) + " histogram") !=
              std::string::npos) {
        family.resize(family.size() - s.size());
      }
    }
    EXPECT_THAT(body, HasSubstr("# HELP " + family + " ")) << series;
    EXPECT_THAT(body, HasSubstr("# TYPE " + family + " ")) << series;
  }
  EXPECT_EQ(samples->at("mor_kv_cache_depth_capacity_blocks{depth=\"3\"}"), 1023);
}

}  // namespace
}  // namespace mor
