#include "bench/loadgen/load_report.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <numeric>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace mor::loadgen {
namespace {

using nlohmann::json;

// gRPC's status codes have absl's numbering (both are the canonical codes).
std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string PercentileKey(double p) { return absl::StrCat("p", absl::StrFormat("%g", p)); }

// Linear interpolation between closest ranks (numpy's default).
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(sorted.size() - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

// mean / median / std / min / max / percentiles of values in seconds, in ms.
json Distribution(std::vector<double> seconds, const std::vector<double>& percentiles) {
  json out;
  out["count"] = seconds.size();
  for (double& v : seconds) v *= 1e3;
  std::sort(seconds.begin(), seconds.end());
  double mean = 0, var = 0;
  if (!seconds.empty()) {
    mean = std::accumulate(seconds.begin(), seconds.end(), 0.0) / seconds.size();
    for (double v : seconds) var += (v - mean) * (v - mean);
    var /= seconds.size();
  }
  out["mean"] = mean;
  out["median"] = Percentile(seconds, 50);
  out["std"] = std::sqrt(var);
  out["min"] = seconds.empty() ? 0 : seconds.front();
  out["max"] = seconds.empty() ? 0 : seconds.back();
  for (double p : percentiles) out[PercentileKey(p)] = Percentile(seconds, p);
  return out;
}

double Tpot(const RequestRecord& r) {
  return r.output_tokens > 1 ? (r.e2e() - r.ttft()) / (r.output_tokens - 1) : 0;
}

bool MeetsSlo(const RequestRecord& r, const SloSpec& slo) {
  if (slo.ttft_ms > 0 && r.ttft() * 1e3 > slo.ttft_ms) return false;
  if (slo.tpot_ms > 0 && r.output_tokens > 1 && Tpot(r) * 1e3 > slo.tpot_ms) return false;
  if (slo.e2el_ms > 0 && r.e2e() * 1e3 > slo.e2el_ms) return false;
  return true;
}

void AddInto(std::vector<double>& sum, size_t index, double v) {
  if (sum.size() <= index) sum.resize(index + 1, 0.0);
  sum[index] += v;
}

// Latency, token and per-depth sums of a set of completed requests.
json Summarise(const std::vector<const RequestRecord*>& done, const std::vector<double>& pcts,
               double duration) {
  std::vector<double> ttft, tpot, itl, e2el, steps, depth_tokens;
  int64_t out_tokens = 0, in_tokens = 0;
  double flops = 0, queue = 0, compute = 0;
  for (const RequestRecord* r : done) {
    ttft.push_back(r->ttft());
    e2el.push_back(r->e2e());
    if (r->output_tokens > 1) tpot.push_back(Tpot(*r));
    itl.insert(itl.end(), r->itl_seconds.begin(), r->itl_seconds.end());
    out_tokens += r->output_tokens;
    in_tokens += r->prompt_tokens;
    for (int d = 0; d < r->usage.token_steps_per_depth_size(); ++d) {
      AddInto(steps, static_cast<size_t>(d),
              static_cast<double>(r->usage.token_steps_per_depth(d)));
    }
    for (size_t d = 0; d < r->depth_counts.size(); ++d)
      AddInto(depth_tokens, d, r->depth_counts[d]);
    flops += r->usage.estimated_flops();
    queue += r->usage.queue_seconds();
    compute += r->usage.compute_seconds();
  }
  json out;
  out["completed"] = done.size();
  out["input_tokens"] = in_tokens;
  out["output_tokens"] = out_tokens;
  out["output_throughput"] = duration > 0 ? out_tokens / duration : 0;
  out["ttft_ms"] = Distribution(ttft, pcts);
  out["tpot_ms"] = Distribution(tpot, pcts);
  out["itl_ms"] = Distribution(itl, pcts);
  out["e2el_ms"] = Distribution(e2el, pcts);
  json compute_json;
  compute_json["token_steps_per_depth"] = steps;
  std::vector<double> share;
  for (double s : steps) share.push_back(!steps.empty() && steps[0] > 0 ? s / steps[0] : 0);
  compute_json["reach_share"] = share;  // token steps at depth r / at depth 1
  const double total_steps = std::accumulate(steps.begin(), steps.end(), 0.0);
  std::vector<double> compute_share;
  for (double s : steps) compute_share.push_back(total_steps > 0 ? s / total_steps : 0);
  compute_json["compute_share"] = compute_share;  // of all token-recursion steps
  compute_json["generated_tokens_by_depth"] = depth_tokens;
  double depth_sum = 0, depth_n = 0;
  for (size_t d = 0; d < depth_tokens.size(); ++d) {
    depth_sum += depth_tokens[d] * static_cast<double>(d + 1);
    depth_n += depth_tokens[d];
  }
  compute_json["mean_output_depth"] = depth_n > 0 ? depth_sum / depth_n : 0;
  compute_json["estimated_flops"] = flops;
  compute_json["estimated_flops_per_output_token"] = out_tokens > 0 ? flops / out_tokens : 0;
  compute_json["mean_server_queue_ms"] = done.empty() ? 0 : 1e3 * queue / done.size();
  compute_json["mean_server_compute_ms"] = done.empty() ? 0 : 1e3 * compute / done.size();
  out["compute"] = compute_json;
  return out;
}

// Counter and histogram deltas of /metrics over the run.
json ServerProfile(const MetricSamples& before, const MetricSamples& after, double duration,
                   int32_t nr) {
  auto delta = [&](const std::string& series) {
    return Sample(after, series) - Sample(before, series);
  };
  json out;
  const double gen_tokens = SumSamples(after, "mor_generation_tokens_total") -
                            SumSamples(before, "mor_generation_tokens_total");
  out["generation_tokens"] = gen_tokens;
  out["prompt_tokens"] =
      SumSamples(after, "mor_prompt_tokens_total") - SumSamples(before, "mor_prompt_tokens_total");
  const double steps = delta("mor_engine_steps_total");
  out["engine_steps"] = steps;
  const double step_seconds = delta("mor_engine_step_duration_seconds_sum");
  out["step_seconds"] = step_seconds;
  out["busy_fraction"] = duration > 0 ? step_seconds / duration : 0;
  const double iter_n = delta("mor_iteration_tokens_count");
  out["mean_iteration_tokens"] = iter_n > 0 ? delta("mor_iteration_tokens_sum") / iter_n : 0;
  out["preemptions"] = delta("mor_num_preemptions_total");
  json stages = json::object(), per_token = json::object();
  const auto stage_after =
      SamplesByLabel(after, "mor_engine_step_stage_duration_seconds_sum", "stage");
  const auto stage_before =
      SamplesByLabel(before, "mor_engine_step_stage_duration_seconds_sum", "stage");
  for (const auto& [stage, v] : stage_after) {
    auto it = stage_before.find(stage);
    const double s = v - (it == stage_before.end() ? 0 : it->second);
    stages[stage] = s;
    per_token[stage] = gen_tokens > 0 ? 1e3 * s / gen_tokens : 0;
  }
  out["stage_seconds"] = stages;
  out["stage_ms_per_output_token"] = per_token;
  out["step_ms_per_output_token"] = gen_tokens > 0 ? 1e3 * step_seconds / gen_tokens : 0;
  std::vector<double> token_steps, rows;
  for (int d = 1; d <= nr; ++d) {
    const std::string label = absl::StrCat("{depth=\"", d, "\"}");
    token_steps.push_back(delta("mor_recursion_token_steps_total" + label));
    const double calls = delta("mor_shared_block_batch_tokens_count" + label);
    rows.push_back(calls > 0 ? delta("mor_shared_block_batch_tokens_sum" + label) / calls : 0);
  }
  out["token_steps_per_depth"] = token_steps;
  out["rows_per_block_call_at_depth"] = rows;
  const double ttft_n = delta("mor_time_to_first_token_seconds_count");
  out["server_ttft_mean_ms"] =
      ttft_n > 0 ? 1e3 * delta("mor_time_to_first_token_seconds_sum") / ttft_n : 0;
  const double queue_n = delta("mor_request_queue_time_seconds_count");
  out["server_queue_mean_ms"] =
      queue_n > 0 ? 1e3 * delta("mor_request_queue_time_seconds_sum") / queue_n : 0;
  json info = json::object();
  for (const auto& [k, v] : LabelsOf(after, "mor_model_info")) info[k] = v;
  out["model_info"] = info;
  out["max_num_seqs"] = Sample(after, "mor_scheduler_max_num_seqs");
  out["max_num_batched_tokens"] = Sample(after, "mor_scheduler_max_num_batched_tokens");
  return out;
}

json KvJson(const KvSummary& kv) {
  json out;
  out["samples"] = kv.samples;
  out["scrape_errors"] = kv.scrape_errors;
  out["mean_cached_tokens"] = kv.mean_cached_tokens;
  out["mean_used_bytes"] = kv.mean_used_bytes;
  out["mean_depth_pool_bytes"] = kv.mean_depth_pool_bytes;
  out["bytes_per_cached_token"] = kv.bytes_per_cached_token;
  out["depth_pool_bytes_per_cached_token"] = kv.depth_pool_bytes_per_cached_token;
  out["mean_used_bytes_by_depth"] = kv.mean_used_bytes_by_depth;
  out["peak_used_bytes"] = kv.peak_used_bytes;
  out["capacity_bytes"] = kv.capacity_bytes;
  out["peak_running"] = kv.peak_running;
  out["peak_waiting"] = kv.peak_waiting;
  return out;
}

json ModelJson(const mor::v1::ModelInfo& m) {
  json out;
  out["architecture"] = m.architecture();
  out["num_recursions"] = m.num_recursions();
  out["sharing_strategy"] = m.sharing_strategy();
  out["router_type"] = m.router_type();
  out["kv_mode"] = m.kv_mode();
  out["vocab_size"] = m.vocab_size();
  out["hidden_size"] = m.hidden_size();
  out["num_hidden_layers"] = m.num_hidden_layers();
  out["block_layers"] = m.block_layers();
  out["dtype"] = m.dtype();
  out["device"] = m.device();
  out["kv_block_size"] = m.kv_block_size();
  out["kv_depth_blocks"] = m.kv_depth_blocks();
  return out;
}

}  // namespace

absl::StatusOr<SloSpec> ParseSlo(absl::string_view text) {
  SloSpec slo;
  for (absl::string_view part : absl::StrSplit(text, absl::ByAnyChar(", "), absl::SkipEmpty())) {
    const std::vector<absl::string_view> kv = absl::StrSplit(part, ':');
    double ms = 0;
    if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &ms) || ms <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--goodput: '", part, "' is not <ttft|tpot|e2el>:<milliseconds>"));
    }
    if (kv[0] == "ttft") {
      slo.ttft_ms = ms;
    } else if (kv[0] == "tpot") {
      slo.tpot_ms = ms;
    } else if (kv[0] == "e2el") {
      slo.e2el_ms = ms;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--goodput: unknown metric '", kv[0], "' (ttft, tpot or e2el)"));
    }
  }
  return slo;
}

absl::StatusOr<std::vector<double>> ParsePercentiles(absl::string_view text) {
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    double p = 0;
    if (!absl::SimpleAtod(absl::StripAsciiWhitespace(part), &p) || p <= 0 || p > 100) {
      return absl::InvalidArgumentError(
          absl::StrCat("--percentiles: '", part, "' is not in (0, 100]"));
    }
    out.push_back(p);
  }
  return out;
}

json BuildReport(const ReportInputs& in) {
  const RunResult& run = *in.run;
  std::vector<const RequestRecord*> done;
  std::map<std::string, std::vector<const RequestRecord*>> by_policy;
  std::map<std::string, int64_t> errors, finish;
  int64_t sent = 0, good = 0, len_checked = 0, len_mismatch = 0;
  double late = 0;
  for (const RequestRecord& r : run.records) {
    if (!r.sent) continue;
    ++sent;
    late += std::max(0.0, r.send_seconds - r.scheduled_seconds);
    if (!r.ok()) {
      ++errors[r.done ? CodeName(r.code) : "NOT_FINISHED"];
      continue;
    }
    done.push_back(&r);
    by_policy[r.policy].push_back(&r);
    ++finish[mor::v1::FinishReason_Name(r.finish_reason)];
    if (in.slo.any() && MeetsSlo(r, in.slo)) ++good;
    if (r.finish_reason == mor::v1::FINISH_REASON_MAX_TOKENS) {
      ++len_checked;
      if (r.output_tokens != r.max_tokens ||
          static_cast<int32_t>(r.usage.completion_tokens()) != r.max_tokens) {
        ++len_mismatch;
      }
    }
  }
  const double duration = run.duration_seconds;
  json out = Summarise(done, in.percentiles, duration);
  out["tool"] = "mor_loadgen";
  out["config"] = in.config;
  out["model"] = ModelJson(in.model);
  out["num_prompts"] = run.records.size();
  out["sent"] = sent;
  out["failed"] = sent - static_cast<int64_t>(done.size());
  out["not_sent"] = static_cast<int64_t>(run.records.size()) - sent;
  out["errors"] = errors;
  out["finish_reasons"] = finish;
  out["hit_max_duration"] = run.hit_max_duration;
  out["duration_s"] = duration;
  const double in_tokens = out["input_tokens"].get<double>();
  const double out_tokens = out["output_tokens"].get<double>();
  out["request_throughput"] = duration > 0 ? done.size() / duration : 0;
  out["total_token_throughput"] = duration > 0 ? (in_tokens + out_tokens) / duration : 0;
  json goodput = nullptr;
  if (in.slo.any()) {
    goodput = json::object();
    goodput["slo_ms"] = {
        {"ttft", in.slo.ttft_ms}, {"tpot", in.slo.tpot_ms}, {"e2el", in.slo.e2el_ms}};
    goodput["good_requests"] = good;
    goodput["request_goodput"] = duration > 0 ? good / duration : 0;
    goodput["good_fraction"] = done.empty() ? 0.0 : static_cast<double>(good) / done.size();
  }
  out["goodput"] = goodput;
  // Requests that ended by max_tokens must have produced exactly max_tokens.
  out["output_len_check"] = {{"checked", len_checked}, {"mismatched", len_mismatch}};
  json policies = json::object();
  for (const auto& [name, records] : by_policy) {
    policies[name] = Summarise(records, in.percentiles, duration);
  }
  out["per_policy"] = policies;
  out["client"] = {{"threads", in.client_threads},
                   {"cpu_seconds", run.cpu_seconds},
                   {"cpu_percent_of_one_core", duration > 0 ? 100 * run.cpu_seconds / duration : 0},
                   {"peak_in_flight", run.peak_in_flight},
                   {"mean_dispatch_delay_ms", sent > 0 ? 1e3 * late / sent : 0}};
  out["kv"] = in.kv ? KvJson(*in.kv) : json(nullptr);
  out["server"] = in.metrics_before && in.metrics_after
                      ? ServerProfile(*in.metrics_before, *in.metrics_after, duration,
                                      static_cast<int32_t>(in.model.num_recursions()))
                      : json(nullptr);
  return out;
}

}  // namespace mor::loadgen
