// mor_loadgen: the serving benchmark's load generator (vLLM `bench serve`
// style) for mor_server.
//
//   mor_loadgen --num_prompts 200 --request_rate 8 --policy 1:2:3 --json_out run.json
//   mor_loadgen --request_rate inf --max_concurrency 64 --metrics_address 127.0.0.1:9400
//
// N prompts (random token ids, or windows of a text corpus tokenized by the
// server) arrive as a Poisson process at --request_rate (inf: all at t = 0),
// optionally capped at --max_concurrency calls in flight; each request asks
// for a recursion policy from the --policy mix and a number of output tokens
// from the output-length distribution. Streaming calls run on the gRPC async
// API with the client's own completion-queue threads. The report (a table on
// stdout, JSON with --json_out / --json) is measured on the client: request
// and output-token throughput, TTFT / TPOT / ITL / E2E latency (mean, median,
// percentiles), goodput under --goodput SLOs, per-policy latency and the
// per-depth compute of the final usage messages, and the client's own CPU
// use. With --metrics_address it also samples the server's KV gauges during
// the run and reports the /metrics deltas (engine stages, per-depth batches).
//
// Bounded: at most 100000 prompts and --max_duration (<= 1 h) from the first
// request; calls still running then are cancelled. It targets 127.0.0.1 (or
// localhost / [::1]) only, unless --allow_remote_host.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench/loadgen/load_report.h"
#include "bench/loadgen/load_runner.h"
#include "bench/loadgen/metrics_scraper.h"
#include "bench/loadgen/prompt_source.h"
#include "bench/loadgen/server_sampler.h"
#include "bench/loadgen/workload.h"
#include "model/status_macros.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051", "mor_server's gRPC address (loopback only).");
ABSL_FLAG(bool, allow_remote_host, false,
          "Allow an --address / --metrics_address that is not 127.0.0.1, localhost or [::1].");
ABSL_FLAG(std::string, metrics_address, "",
          "host:port of the server's Prometheus endpoint (e.g. 127.0.0.1:9400): sample its KV "
          "gauges during the run and report the /metrics deltas. Empty: client side only.");
ABSL_FLAG(absl::Duration, metrics_interval, absl::Milliseconds(250),
          "How often the KV gauges are sampled during the run (with --metrics_address); 0 = only "
          "before and after.");
ABSL_FLAG(int32_t, num_prompts, 100, "Requests to send (1..100000).");
ABSL_FLAG(std::string, request_rate, "inf",
          "Requests per second (Poisson arrivals), or inf: every request at t = 0.");
ABSL_FLAG(double, burstiness, 1.0,
          "Shape of the gamma-distributed inter-arrival times: 1 = Poisson, < 1 burstier.");
ABSL_FLAG(int32_t, max_concurrency, 0, "Most requests in flight (0 = unlimited, up to 4096).");
ABSL_FLAG(std::string, dataset, "random",
          "random (uniform token ids) or a text file (documents separated by blank lines) that "
          "the server's tokenizer turns into a token stream; prompts are windows of it.");
ABSL_FLAG(int64_t, dataset_max_bytes, 4 << 20, "Most bytes of the --dataset file to read.");
ABSL_FLAG(int32_t, input_len, 32, "Prompt tokens per request.");
ABSL_FLAG(double, input_range_ratio, 0.0,
          "Prompt lengths uniform in [input_len x (1 - r), input_len x (1 + r)].");
ABSL_FLAG(int32_t, output_len, 32, "Output tokens per request (max_tokens).");
ABSL_FLAG(double, output_range_ratio, 0.0,
          "Output lengths uniform in [output_len x (1 - r), output_len x (1 + r)].");
ABSL_FLAG(std::string, policy, "adaptive",
          "Recursion-policy mix, colon separated: adaptive, default (the server's) or a fixed "
          "depth; request i takes entry i mod n. '1:2:3' = a third at each fixed depth.");
ABSL_FLAG(bool, ignore_eos, true,
          "Generate exactly max_tokens (do not stop at EOS), as vLLM's benchmark does.");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature (0 = greedy).");
ABSL_FLAG(uint64_t, seed, 0, "Seed of prompts, lengths and arrival times.");
ABSL_FLAG(int32_t, warmup_requests, 0,
          "Untimed requests sent at once before the run (short prompts, --warmup_output_len).");
ABSL_FLAG(int32_t, warmup_output_len, 4, "Output tokens of each warm-up request.");
ABSL_FLAG(absl::Duration, max_duration, absl::Minutes(5),
          "Hard limit of the run (<= 1h): nothing starts after it; calls in flight are cancelled.");
ABSL_FLAG(absl::Duration, request_timeout, absl::Minutes(2), "Deadline of each call.");
ABSL_FLAG(int32_t, client_threads, 2, "Completion-queue threads (one gRPC channel each).");
ABSL_FLAG(std::string, percentiles, "50,90,99", "Latency percentiles to report.");
ABSL_FLAG(std::string, goodput, "",
          "SLOs for goodput in ms, e.g. 'ttft:2000,tpot:100' (ttft, tpot, e2el).");
ABSL_FLAG(std::string, label, "", "Name of the run, echoed in the JSON.");
ABSL_FLAG(std::string, json_out, "", "Write the report as JSON to this file.");
ABSL_FLAG(bool, json, false, "Also print the report as one JSON line on stdout.");
ABSL_FLAG(bool, quiet, false, "Do not print the table.");

namespace mor::loadgen {
namespace {

constexpr int32_t kMaxPrompts = 100000;
constexpr int32_t kMaxConcurrency = 4096;

// Accepts loopback hosts only (unless allowed); "localhost" -> 127.0.0.1.
absl::StatusOr<std::string> CheckAddress(const std::string& address, const char* flag) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " must be host:port (got '", address, "')"));
  }
  const std::string host = address.substr(0, colon);
  if (host == "127.0.0.1" || host == "[::1]") return address;
  if (host == "localhost") return absl::StrCat("127.0.0.1:", port);
  if (absl::GetFlag(FLAGS_allow_remote_host)) return address;
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag, " ", address,
                   ": mor_loadgen only targets 127.0.0.1 (pass --allow_remote_host to load "
                   "another host on purpose)"));
}

absl::StatusOr<double> ParseRate(const std::string& text) {
  if (text == "inf" || text == "Inf" || text == "infinity") {
    return std::numeric_limits<double>::infinity();
  }
  double rate = 0;
  if (!absl::SimpleAtod(text, &rate) || !(rate > 0) || std::isinf(rate)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--request_rate must be > 0 or inf (got '", text, "')"));
  }
  return rate;
}

absl::Status CheckBounds() {
  const int32_t n = absl::GetFlag(FLAGS_num_prompts);
  if (n < 1 || n > kMaxPrompts) {
    return absl::InvalidArgumentError(absl::StrCat("--num_prompts must be in 1..", kMaxPrompts));
  }
  const int32_t c = absl::GetFlag(FLAGS_max_concurrency);
  if (c < 0 || c > kMaxConcurrency) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_concurrency must be in 0..", kMaxConcurrency));
  }
  const absl::Duration d = absl::GetFlag(FLAGS_max_duration);
  if (d <= absl::ZeroDuration() || d > absl::Hours(1)) {
    return absl::InvalidArgumentError("--max_duration must be in (0, 1h]");
  }
  if (absl::GetFlag(FLAGS_request_timeout) <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--request_timeout must be positive");
  }
  if (absl::GetFlag(FLAGS_input_len) < 1 || absl::GetFlag(FLAGS_output_len) < 1) {
    return absl::InvalidArgumentError("--input_len and --output_len must be >= 1");
  }
  for (double r :
       {absl::GetFlag(FLAGS_input_range_ratio), absl::GetFlag(FLAGS_output_range_ratio)}) {
    if (r < 0 || r >= 1) return absl::InvalidArgumentError("range ratios must be in [0, 1)");
  }
  if (absl::GetFlag(FLAGS_warmup_requests) < 0 ||
      absl::GetFlag(FLAGS_warmup_requests) > kMaxConcurrency) {
    return absl::InvalidArgumentError(
        absl::StrCat("--warmup_requests must be in 0..", kMaxConcurrency));
  }
  return absl::OkStatus();
}

nlohmann::json ConfigJson(const std::string& address, const std::string& dataset) {
  nlohmann::json c;
  c["label"] = absl::GetFlag(FLAGS_label);
  c["address"] = address;
  c["num_prompts"] = absl::GetFlag(FLAGS_num_prompts);
  c["request_rate"] = absl::GetFlag(FLAGS_request_rate);
  c["burstiness"] = absl::GetFlag(FLAGS_burstiness);
  c["max_concurrency"] = absl::GetFlag(FLAGS_max_concurrency);
  c["dataset"] = dataset;
  c["input_len"] = absl::GetFlag(FLAGS_input_len);
  c["input_range_ratio"] = absl::GetFlag(FLAGS_input_range_ratio);
  c["output_len"] = absl::GetFlag(FLAGS_output_len);
  c["output_range_ratio"] = absl::GetFlag(FLAGS_output_range_ratio);
  c["policy"] = absl::GetFlag(FLAGS_policy);
  c["ignore_eos"] = absl::GetFlag(FLAGS_ignore_eos);
  c["temperature"] = absl::GetFlag(FLAGS_temperature);
  c["seed"] = absl::GetFlag(FLAGS_seed);
  c["warmup_requests"] = absl::GetFlag(FLAGS_warmup_requests);
  c["max_duration_s"] = absl::ToDoubleSeconds(absl::GetFlag(FLAGS_max_duration));
  c["client_threads"] = absl::GetFlag(FLAGS_client_threads);
  return c;
}

// /metrics once the engine is idle: the server publishes a step's statistics
// after the step, so the last final message can arrive before the counters
// of its step. Scrapes until nothing runs and two scrapes agree (<= 2 s).
absl::StatusOr<MetricSamples> SettledMetrics(const MetricsScraper& scraper) {
  MOR_ASSIGN_OR_RETURN(MetricSamples last, scraper.Scrape());
  const absl::Time give_up = absl::Now() + absl::Seconds(2);
  while (absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
    MOR_ASSIGN_OR_RETURN(MetricSamples next, scraper.Scrape());
    const bool idle = Sample(next, "mor_num_requests_running") == 0 &&
                      Sample(next, "mor_num_requests_waiting") == 0;
    const bool stable =
        Sample(next, "mor_engine_steps_total") == Sample(last, "mor_engine_steps_total") &&
        SumSamples(next, "mor_generation_tokens_total") ==
            SumSamples(last, "mor_generation_tokens_total");
    last = std::move(next);
    if (idle && stable) break;
  }
  return last;
}

// Untimed requests at t = 0 so that the timed run starts on a warm server.
absl::Status WarmUp(LoadRunner& runner, const WorkloadOptions& timed, const PromptSource& prompts,
                    const mor::v1::GenerateRequest& base) {
  WorkloadOptions w = timed;
  w.num_prompts = absl::GetFlag(FLAGS_warmup_requests);
  if (w.num_prompts == 0) return absl::OkStatus();
  w.input_len = std::min(timed.input_len, 16);
  w.input_range_ratio = 0;
  w.output_len = std::max(1, absl::GetFlag(FLAGS_warmup_output_len));
  w.output_range_ratio = 0;
  w.request_rate = std::numeric_limits<double>::infinity();
  w.seed = timed.seed + 0x5eed;
  MOR_ASSIGN_OR_RETURN(std::vector<RequestSpec> specs, BuildWorkload(w, prompts));
  const RunResult result = runner.Run(specs, base);
  for (const RequestRecord& r : result.records) {
    if (!r.ok()) {
      return absl::UnavailableError(
          absl::StrCat("a warm-up request failed: ", r.error.empty() ? "not finished" : r.error));
    }
  }
  return absl::OkStatus();
}

absl::Status Run() {
  MOR_RETURN_IF_ERROR(CheckBounds());
  MOR_ASSIGN_OR_RETURN(const std::string address,
                       CheckAddress(absl::GetFlag(FLAGS_address), "address"));
  MOR_ASSIGN_OR_RETURN(const double rate, ParseRate(absl::GetFlag(FLAGS_request_rate)));
  MOR_ASSIGN_OR_RETURN(std::vector<PolicySpec> policies,
                       ParsePolicyMix(absl::GetFlag(FLAGS_policy)));
  MOR_ASSIGN_OR_RETURN(const SloSpec slo, ParseSlo(absl::GetFlag(FLAGS_goodput)));
  MOR_ASSIGN_OR_RETURN(const std::vector<double> percentiles,
                       ParsePercentiles(absl::GetFlag(FLAGS_percentiles)));
  std::optional<MetricsScraper> scraper;
  if (!absl::GetFlag(FLAGS_metrics_address).empty()) {
    MOR_ASSIGN_OR_RETURN(const std::string metrics_address,
                         CheckAddress(absl::GetFlag(FLAGS_metrics_address), "metrics_address"));
    MOR_ASSIGN_OR_RETURN(scraper, MetricsScraper::Create(metrics_address));
  }

  LoadRunnerOptions runner_options;
  runner_options.address = address;
  runner_options.client_threads = absl::GetFlag(FLAGS_client_threads);
  runner_options.max_concurrency = absl::GetFlag(FLAGS_max_concurrency);
  runner_options.max_duration = absl::GetFlag(FLAGS_max_duration);
  runner_options.request_timeout = absl::GetFlag(FLAGS_request_timeout);
  MOR_ASSIGN_OR_RETURN(std::unique_ptr<LoadRunner> runner, LoadRunner::Create(runner_options));

  mor::v1::ModelInfo model;
  {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const grpc::Status status =
        runner->stub().GetModelInfo(&context, mor::v1::GetModelInfoRequest(), &model);
    if (!status.ok()) {
      return absl::UnavailableError(absl::StrCat("GetModelInfo: ", status.error_message()));
    }
  }
  MOR_RETURN_IF_ERROR(CheckPolicyDepths(policies, static_cast<int32_t>(model.num_recursions())));

  const std::string dataset = absl::GetFlag(FLAGS_dataset);
  std::optional<PromptSource> prompts;
  if (dataset == "random") {
    prompts = PromptSource::Random(static_cast<int32_t>(model.vocab_size()));
  } else {
    MOR_ASSIGN_OR_RETURN(prompts,
                         PromptSource::FromTextFile(dataset, absl::GetFlag(FLAGS_dataset_max_bytes),
                                                    runner->stub()));
  }

  WorkloadOptions workload;
  workload.num_prompts = absl::GetFlag(FLAGS_num_prompts);
  workload.input_len = absl::GetFlag(FLAGS_input_len);
  workload.input_range_ratio = absl::GetFlag(FLAGS_input_range_ratio);
  workload.output_len = absl::GetFlag(FLAGS_output_len);
  workload.output_range_ratio = absl::GetFlag(FLAGS_output_range_ratio);
  workload.request_rate = rate;
  workload.burstiness = absl::GetFlag(FLAGS_burstiness);
  workload.policies = policies;
  workload.seed = absl::GetFlag(FLAGS_seed);
  const double longest = std::floor(workload.input_len * (1 + workload.input_range_ratio)) +
                         std::floor(workload.output_len * (1 + workload.output_range_ratio));
  if (longest > model.max_context()) {
    return absl::InvalidArgumentError(absl::StrCat("prompt + output may reach ", longest,
                                                   " tokens, more than the model's context ",
                                                   model.max_context()));
  }
  MOR_ASSIGN_OR_RETURN(const std::vector<RequestSpec> specs, BuildWorkload(workload, *prompts));

  mor::v1::GenerateRequest base;
  base.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  base.mutable_sampling()->set_seed(absl::GetFlag(FLAGS_seed));
  base.mutable_stopping()->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  base.set_return_depths(true);

  std::fprintf(stderr,
               "mor_loadgen: %d requests to %s (%s, Nr=%u), rate %s req/s, max concurrency %d, "
               "policy %s, prompts: %s\n",
               workload.num_prompts, address.c_str(), model.architecture().c_str(),
               model.num_recursions(), absl::GetFlag(FLAGS_request_rate).c_str(),
               runner_options.max_concurrency, absl::GetFlag(FLAGS_policy).c_str(),
               prompts->description().c_str());
  MOR_RETURN_IF_ERROR(WarmUp(*runner, workload, *prompts, base));

  ReportInputs inputs;
  inputs.model = model;
  inputs.config = ConfigJson(address, prompts->description());
  inputs.percentiles = percentiles;
  inputs.slo = slo;
  inputs.client_threads = runner_options.client_threads;
  std::unique_ptr<ServerSampler> sampler;
  if (scraper) {
    MOR_ASSIGN_OR_RETURN(inputs.metrics_before, SettledMetrics(*scraper));
    if (absl::GetFlag(FLAGS_metrics_interval) > absl::ZeroDuration()) {
      sampler = std::make_unique<ServerSampler>(&*scraper, absl::GetFlag(FLAGS_metrics_interval),
                                                [&runner] { return runner->cached_tokens(); });
      sampler->Start();
    }
  }
  const RunResult result = runner->Run(specs, base);
  if (sampler) inputs.kv = sampler->Stop();
  if (scraper) {
    MOR_ASSIGN_OR_RETURN(inputs.metrics_after, SettledMetrics(*scraper));
  }
  inputs.run = &result;
  const nlohmann::json report = BuildReport(inputs);
  if (!absl::GetFlag(FLAGS_quiet)) std::printf("%s", FormatReportTable(report).c_str());
  if (absl::GetFlag(FLAGS_json)) std::printf("%s\n", report.dump().c_str());
  std::fflush(stdout);
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << report.dump(1) << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", json_out));
  }
  if (report["completed"].get<int64_t>() == 0) {
    return absl::UnavailableError("no request completed");
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace mor::loadgen

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Load generator for mor_server (vLLM bench-serve metrics, per recursion depth).\n\n"
      "Usage: mor_loadgen [--address 127.0.0.1:50051] [--num_prompts N] [--request_rate R|inf]\n"
      "       [--max_concurrency C] [--policy adaptive|1:2:3] [--input_len L] [--output_len L]\n"
      "       [--metrics_address 127.0.0.1:9400] [--goodput ttft:2000] [--json_out FILE]");
  const std::vector<char*> rest = absl::ParseCommandLine(argc, argv);
  if (rest.size() > 1) {
    std::fprintf(stderr, "mor_loadgen: unexpected argument '%s'\n", rest[1]);
    return 2;
  }
  const absl::Status status = mor::loadgen::Run();
  if (!status.ok()) {
    std::fprintf(stderr, "mor_loadgen: error: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
