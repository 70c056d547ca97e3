// The civetweb exposer, in a process without LibTorch (the server e2e test
// covers one with LibTorch's large static TLS). One exposer is shared by the
// tests: stopping civetweb takes about 2 s.
#include "server/metrics/exposer.h"

#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/registry.h"
#include "server/metrics/text_serializer.h"
#include "tests/server/metrics/http_get.h"

namespace mor::metrics {
namespace {

using ::mor::testing::HttpRequest;
using ::mor::testing::HttpResponse;
using ::testing::HasSubstr;

class ExposerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new std::shared_ptr<Registry>(std::make_shared<Registry>());
    BuildCounter()
        .Name("test_scrapes_total")
        .Help("A counter.")
        .Register(**registry_)
        .Add({{"path", "/metrics"}})
        .Increment(7);
    auto exposer = Exposer::Create("127.0.0.1:0");
    ASSERT_TRUE(exposer.ok()) << exposer.status();
    exposer_ = exposer->release();
    exposer_->RegisterCollectable(*registry_);
  }
  static void TearDownTestSuite() {
    delete exposer_;
    delete registry_;
  }

  static HttpResponse Get(const std::string& method, const std::string& path) {
    auto response = HttpRequest(exposer_->port(), method, path);
    EXPECT_TRUE(response.ok()) << response.status();
    return response.ok() ? *response : HttpResponse{};
  }

  static std::shared_ptr<Registry>* registry_;
  static Exposer* exposer_;
};

std::shared_ptr<Registry>* ExposerTest::registry_ = nullptr;
Exposer* ExposerTest::exposer_ = nullptr;

TEST_F(ExposerTest, ServesTheTextFormat) {
  ASSERT_GT(exposer_->port(), 0);
  const HttpResponse response = Get("GET", "/metrics");
  EXPECT_EQ(response.status, 200);
  EXPECT_THAT(response.headers, HasSubstr(kTextContentType));
  EXPECT_EQ(response.body, TextSerializer().Serialize((*registry_)->Collect()));
  EXPECT_THAT(response.body, HasSubstr("test_scrapes_total{path=\"/metrics\"} 7\n"));
}

TEST_F(ExposerTest, HeadHasNoBody) {
  const HttpResponse response = Get("HEAD", "/metrics");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(response.body, "");
}

TEST_F(ExposerTest, OtherMethodsAndPathsAreRejected) {
  EXPECT_EQ(Get("POST", "/metrics").status, 405);
  EXPECT_EQ(Get("GET", "/").status, 404);
  EXPECT_EQ(Get("GET", "/etc/passwd").status, 404);
}

TEST_F(ExposerTest, ExpiredCollectablesAreSkipped) {
  auto extra = std::make_shared<Registry>();
  BuildGauge().Name("test_extra").Help("Extra.").Register(*extra).Add({}).Set(1);
  exposer_->RegisterCollectable(extra);
  EXPECT_THAT(Get("GET", "/metrics").body, HasSubstr("test_extra 1\n"));
  extra.reset();
  const std::string body = Get("GET", "/metrics").body;
  EXPECT_THAT(body, ::testing::Not(HasSubstr("test_extra")));
  EXPECT_THAT(body, HasSubstr("test_scrapes_total"));
}

TEST_F(ExposerTest, ATakenPortIsAnError) {
  auto second = Exposer::Create("127.0.0.1:" + std::to_string(exposer_->port()));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("cannot serve metrics"));
}

TEST_F(ExposerTest, AMalformedAddressIsAnError) {
  EXPECT_FALSE(Exposer::Create("not an address").ok());
  EXPECT_FALSE(Exposer::Create("").ok());
}

}  // namespace
}  // namespace mor::metrics
