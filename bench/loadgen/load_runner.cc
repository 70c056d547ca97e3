#include "bench/loadgen/load_runner.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"

namespace mor::loadgen {
namespace {

absl::Time ToAbslTime(Clock::time_point t) {
  return absl::Now() + absl::FromChrono(t - Clock::now());
}

}  // namespace

mor::v1::GenerateRequest MakeRequest(const RequestSpec& spec,
                                     const mor::v1::GenerateRequest& base) {
  mor::v1::GenerateRequest request = base;
  request.set_request_id(absl::StrCat("loadgen-", spec.index));
  request.mutable_tokens()->mutable_ids()->Assign(spec.prompt.begin(), spec.prompt.end());
  request.mutable_stopping()->set_max_tokens(static_cast<uint32_t>(spec.max_tokens));
  switch (spec.policy.kind) {
    case PolicySpec::Kind::kServerDefault:
      request.clear_recursion();
      break;
    case PolicySpec::Kind::kAdaptive:
      request.mutable_recursion()->mutable_adaptive();
      break;
    case PolicySpec::Kind::kFixed:
      request.mutable_recursion()->set_fixed_depth(static_cast<uint32_t>(spec.policy.depth));
      break;
  }
  return request;
}

absl::StatusOr<std::unique_ptr<LoadRunner>> LoadRunner::Create(const LoadRunnerOptions& options) {
  if (options.client_threads < 1 || options.client_threads > 64) {
    return absl::InvalidArgumentError("--client_threads must be in 1..64");
  }
  std::unique_ptr<LoadRunner> runner(new LoadRunner(options));
  for (int32_t i = 0; i < options.client_threads; ++i) {
    grpc::ChannelArguments args;
    // A distinct argument per channel keeps gRPC from sharing one subchannel
    // (TCP connection) between them.
    args.SetInt("mor.loadgen.channel", i);
    args.SetMaxReceiveMessageSize(64 << 20);
    auto channel =
        grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(), args);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to ", options.address, " within 10 s"));
    }
    runner->stubs_.push_back(mor::v1::MorService::NewStub(channel));
    runner->channels_.push_back(std::move(channel));
  }
  return runner;
}

void LoadRunner::PollLoop(grpc::CompletionQueue* cq) {
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) {
    auto* call = static_cast<StreamCall*>(tag);
    if (call->Proceed(ok)) {
      absl::MutexLock lock(&mu_);
      calls_.erase(call);
      --in_flight_;
    }
  }
}

void LoadRunner::CancelAll() {
  absl::MutexLock lock(&mu_);
  for (auto& [ptr, call] : calls_) call->Cancel();
}

RunResult LoadRunner::Run(const std::vector<RequestSpec>& specs,
                          const mor::v1::GenerateRequest& base) {
  RunResult result;
  result.records.resize(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    RequestRecord& r = result.records[i];
    r.index = specs[i].index;
    r.policy = specs[i].policy.Name();
    r.prompt_tokens = static_cast<int32_t>(specs[i].prompt.size());
    r.max_tokens = specs[i].max_tokens;
    r.scheduled_seconds = specs[i].arrival_seconds;
  }
  const size_t num_threads = stubs_.size();
  std::vector<std::unique_ptr<grpc::CompletionQueue>> cqs;
  std::vector<std::thread> threads;
  for (size_t t = 0; t < num_threads; ++t) {
    cqs.push_back(std::make_unique<grpc::CompletionQueue>());
    threads.emplace_back([this, cq = cqs.back().get()] { PollLoop(cq); });
  }

  const double cpu_start = bench::ProcessCpuSeconds();
  const Clock::time_point start = Clock::now();
  const Clock::time_point stop = start + absl::ToChronoNanoseconds(options_.max_duration);
  const absl::Time stop_time = ToAbslTime(stop);
  const int32_t limit = options_.max_concurrency > 0 ? options_.max_concurrency : INT32_MAX;
  const auto timeout = absl::ToChronoNanoseconds(options_.request_timeout);
  for (size_t i = 0; i < specs.size(); ++i) {
    const Clock::time_point arrival =
        start + std::chrono::duration_cast<Clock::duration>(
                    std::chrono::duration<double>(specs[i].arrival_seconds));
    if (arrival >= stop) {
      result.hit_max_duration = true;
      break;
    }
    if (arrival > Clock::now()) std::this_thread::sleep_until(arrival);
    mor::v1::GenerateRequest request = MakeRequest(specs[i], base);
    auto call = std::make_unique<StreamCall>(&result.records[i], start, &cached_tokens_);
    StreamCall* raw = call.get();
    {
      absl::MutexLock lock(&mu_);
      auto slot_free = [this, limit]()
                           ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ < limit; };
      if (!mu_.AwaitWithDeadline(absl::Condition(&slot_free), stop_time)) {
        result.hit_max_duration = true;
        break;
      }
      ++in_flight_;
      result.peak_in_flight = std::max(result.peak_in_flight, in_flight_);
      calls_.emplace(raw, std::move(call));
      // Started under the lock so that CancelAll never sees a call that is
      // registered but not started.
      raw->Start(*stubs_[i % num_threads], cqs[i % num_threads].get(), request,
                 Clock::now() + timeout);
    }
  }
  {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
    if (!mu_.AwaitWithDeadline(absl::Condition(&idle), stop_time)) result.hit_max_duration = true;
  }
  if (result.hit_max_duration) {
    CancelAll();
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
    mu_.AwaitWithTimeout(absl::Condition(&idle), absl::Seconds(30));
  }
  double last_end = 0;
  for (const RequestRecord& r : result.records) {
    if (r.done) last_end = std::max(last_end, r.end_seconds);
  }
  result.duration_seconds = last_end;
  result.cpu_seconds = bench::ProcessCpuSeconds() - cpu_start;
  for (auto& cq : cqs) cq->Shutdown();
  for (std::thread& t : threads) t.join();
  return result;
}

}  // namespace mor::loadgen
