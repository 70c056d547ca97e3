// The metrics library: exposition format, escaping, histogram buckets,
// families and registry, and exact totals under concurrent updates.
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics/counter.h"
#include "server/metrics/family.h"
#include "server/metrics/gauge.h"
#include "server/metrics/histogram.h"
#include "server/metrics/registry.h"
#include "server/metrics/text_serializer.h"

namespace mor::metrics {
namespace {

std::string Scrape(const Registry& registry) {
  return TextSerializer().Serialize(registry.Collect());
}

TEST(TextSerializerTest, GoldenExposition) {
  Registry registry;
  auto& requests = BuildCounter()
                       .Name("test_requests_total")
                       .Help("Requests.")
                       .Labels({{"server", "a"}})
                       .Register(registry);
  requests.Add({{"code", "OK"}}).Increment(3);
  requests.Add({{"code", "INTERNAL"}}).Increment();
  BuildGauge()
      .Name("test_queue_size")
      .Help("Queued requests.")
      .Register(registry)
      .Add({})
      .Set(-2.5);
  auto& latency = BuildHistogram().Name("test_latency_seconds").Help("Latency.").Register(registry);
  Histogram& h = latency.Add({{"depth", "1"}}, Histogram::BucketBoundaries{0.1, 1, 10});
  h.Observe(0.05);
  h.Observe(0.1);
  h.Observe(5);
  h.Observe(100);
  BuildCounter().Name("test_empty_total").Help("No series: not exposed.").Register(registry);

  EXPECT_EQ(Scrape(registry),
            "# HELP test_requests_total Requests.\n"
            "# TYPE test_requests_total counter\n"
            "test_requests_total{server=\"a\",code=\"INTERNAL\"} 1\n"
            "test_requests_total{server=\"a\",code=\"OK\"} 3\n"
            "# HELP test_queue_size Queued requests.\n"
            "# TYPE test_queue_size gauge\n"
            "test_queue_size -2.5\n"
            "# HELP test_latency_seconds Latency.\n"
            "# TYPE test_latency_seconds histogram\n"
            "test_latency_seconds_bucket{depth=\"1\",le=\"0.1\"} 2\n"
            "test_latency_seconds_bucket{depth=\"1\",le=\"1\"} 2\n"
            "test_latency_seconds_bucket{depth=\"1\",le=\"10\"} 3\n"
            "test_latency_seconds_bucket{depth=\"1\",le=\"+Inf\"} 4\n"
            "test_latency_seconds_sum{depth=\"1\"} 105.15\n"
            "test_latency_seconds_count{depth=\"1\"} 4\n");
}

TEST(TextSerializerTest, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  EXPECT_EQ(EscapeHelp("back\\slash \"quoted\"\nnext"), "back\\\\slash \"quoted\"\\nnext");

  Registry registry;
  BuildGauge()
      .Name("test_info")
      .Help("Line one\nline two \\ end")
      .Register(registry)
      .Add({{"path", "C:\\dir\\\"x\"\n"}})
      .Set(1);
  EXPECT_EQ(Scrape(registry),
            "# HELP test_info Line one\\nline two \\\\ end\n"
            "# TYPE test_info gauge\n"
            "test_info{path=\"C:\\\\dir\\\\\\\"x\\\"\\n\"} 1\n");
}

TEST(TextSerializerTest, FormatsValues) {
  EXPECT_EQ(FormatValue(0), "0");
  EXPECT_EQ(FormatValue(42), "42");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(FormatValue(1e-05), "1e-05");
  EXPECT_EQ(FormatValue(-3.25), "-3.25");
  EXPECT_EQ(FormatValue(9007199254740992.0), "9007199254740992");
  EXPECT_EQ(FormatValue(NAN), "NaN");
  EXPECT_EQ(FormatValue(INFINITY), "+Inf");
  EXPECT_EQ(FormatValue(-INFINITY), "-Inf");
}

TEST(HistogramTest, BucketsAreInclusiveUpperBoundsAndCumulative) {
  Histogram h({1, 2, 4});
  for (double v : {0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, -1.0}) h.Observe(v);
  h.Observe(NAN);  // counted in +Inf only
  const ClientMetric m = h.Collect();
  ASSERT_EQ(m.histogram.bucket.size(), 4u);
  EXPECT_EQ(m.histogram.bucket[0].cumulative_count, 3u);  // -1, 0.5, 1
  EXPECT_EQ(m.histogram.bucket[1].cumulative_count, 5u);  // + 1.5, 2
  EXPECT_EQ(m.histogram.bucket[2].cumulative_count, 7u);  // + 3, 4
  EXPECT_EQ(m.histogram.bucket[3].cumulative_count, 9u);  // + 4.5, NaN
  EXPECT_TRUE(std::isinf(m.histogram.bucket[3].upper_bound));
  EXPECT_EQ(m.histogram.sample_count, 9u);
  EXPECT_TRUE(std::isnan(m.histogram.sample_sum));
  EXPECT_EQ(h.count(), 9u);
}

TEST(HistogramTest, SumCountAndObserveMultiple) {
  Histogram h({10, 20});
  h.Observe(5);
  h.Observe(15);
  h.ObserveMultiple({1, 0, 2}, 100);
  const ClientMetric m = h.Collect();
  EXPECT_EQ(m.histogram.bucket[0].cumulative_count, 2u);
  EXPECT_EQ(m.histogram.bucket[1].cumulative_count, 3u);
  EXPECT_EQ(m.histogram.bucket[2].cumulative_count, 5u);
  EXPECT_EQ(m.histogram.sample_count, 5u);
  EXPECT_DOUBLE_EQ(m.histogram.sample_sum, 120);
}

TEST(HistogramTest, TrailingInfIsImplicit) {
  Histogram h({1, INFINITY});
  EXPECT_EQ(h.bucket_boundaries(), Histogram::BucketBoundaries{1});
  EXPECT_EQ(h.Collect().histogram.bucket.size(), 2u);
}

TEST(HistogramTest, BucketHelpers) {
  EXPECT_EQ(ExponentialBuckets(1, 2, 4), (Histogram::BucketBoundaries{1, 2, 4, 8}));
  EXPECT_EQ(LinearBuckets(0.5, 0.5, 3), (Histogram::BucketBoundaries{0.5, 1, 1.5}));
}

TEST(HistogramDeathTest, UnsortedBucketsAbort) {
  EXPECT_DEATH(Histogram({1, 1}), "strictly increasing");
}

TEST(CounterTest, IgnoresNegativeIncrements) {
  Counter c;
  c.Increment();
  c.Increment(2.5);
  c.Increment(-10);
  EXPECT_DOUBLE_EQ(c.Value(), 3.5);
}

TEST(GaugeTest, SetIncrementDecrement) {
  Gauge g;
  g.Set(5);
  g.Increment();
  g.Decrement(2.5);
  EXPECT_DOUBLE_EQ(g.Value(), 3.5);
  g.SetToCurrentTime();
  EXPECT_GT(g.Value(), 1.6e9);
}

TEST(FamilyTest, AddReturnsTheSameSeriesForTheSameLabels) {
  Registry registry;
  auto& family = BuildCounter().Name("test_total").Help("h").Register(registry);
  Counter& a = family.Add({{"x", "1"}});
  Counter& b = family.Add({{"x", "1"}});
  Counter& c = family.Add({{"x", "2"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &c);
  EXPECT_TRUE(family.Has({{"x", "2"}}));
  family.Remove(&c);
  EXPECT_FALSE(family.Has({{"x", "2"}}));
  family.Remove(&c);  // unknown now: ignored
  EXPECT_EQ(registry.Collect().at(0).metric.size(), 1u);
}

TEST(RegistryTest, SameNameAndTypeMerges) {
  Registry registry;
  auto& a = BuildGauge().Name("test_g").Help("h").Register(registry);
  auto& b = BuildGauge().Name("test_g").Help("h").Register(registry);
  EXPECT_EQ(&a, &b);
}

TEST(RegistryDeathTest, MisuseAborts) {
  EXPECT_DEATH(
      {
        Registry registry;
        BuildGauge().Name("test_x").Register(registry);
        BuildCounter().Name("test_x").Register(registry);
      },
      "registered twice");
  EXPECT_DEATH(
      {
        Registry registry;
        BuildGauge().Name("0bad").Register(registry);
      },
      "invalid metric name");
  EXPECT_DEATH(
      {
        Registry registry;
        BuildGauge().Name("test_y").Register(registry).Add({{"__reserved", "v"}});
      },
      "invalid label name");
  EXPECT_DEATH(
      {
        Registry registry;
        BuildGauge().Name("test_z").Labels({{"a", "1"}}).Register(registry).Add({{"a", "2"}});
      },
      "also a constant label");
}

TEST(ConcurrencyTest, ConcurrentUpdatesSumExactly) {
  Registry registry;
  auto& counters = BuildCounter().Name("test_total").Help("h").Register(registry);
  Counter& shared = counters.Add({});
  Gauge& gauge = BuildGauge().Name("test_gauge").Help("h").Register(registry).Add({});
  Histogram& histogram = BuildHistogram()
                             .Name("test_seconds")
                             .Help("h")
                             .Register(registry)
                             .Add({}, Histogram::BucketBoundaries{1, 2, 3});
  constexpr int kThreads = 8;
  constexpr int kIterations = 100000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter& own = counters.Add({{"thread", std::to_string(t % 2)}});
      for (int i = 0; i < kIterations; ++i) {
        shared.Increment();
        own.Increment(2);
        gauge.Increment();
        gauge.Decrement();
        histogram.Observe(i % 4);  // 0, 1, 2, 3: one per bucket except +Inf
      }
    });
  }
  // Scrapes run concurrently with the updates.
  for (int i = 0; i < 20; ++i) EXPECT_FALSE(Scrape(registry).empty());
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(shared.Value(), double{kThreads} * kIterations);
  EXPECT_EQ(counters.Add({{"thread", "0"}}).Value(), 2.0 * (kThreads / 2) * kIterations);
  EXPECT_EQ(gauge.Value(), 0);
  const ClientMetric m = histogram.Collect();
  EXPECT_EQ(m.histogram.sample_count, uint64_t{kThreads} * kIterations);
  EXPECT_EQ(m.histogram.bucket[0].cumulative_count, uint64_t{kThreads} * kIterations / 2);
  EXPECT_EQ(m.histogram.bucket[3].cumulative_count, uint64_t{kThreads} * kIterations);
  EXPECT_EQ(m.histogram.sample_sum, 1.5 * kThreads * kIterations);
}

}  // namespace
}  // namespace mor::metrics
