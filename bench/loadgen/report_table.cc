// FormatReportTable (declared in load_report.h): the vLLM-style result block.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "bench/loadgen/load_report.h"

namespace mor::loadgen {
namespace {

using nlohmann::json;

constexpr int kWidth = 50;

double Num(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

std::string Line(const std::string& name, const std::string& value) {
  return absl::StrFormat("%-40s %s\n", name, value);
}

std::string Title(const std::string& title) {
  const int pad = std::max(0, kWidth - static_cast<int>(title.size()));
  return absl::StrCat(std::string(pad / 2, '-'), title, std::string(pad - pad / 2, '-'), "\n");
}

std::string F(double v, int digits = 2) { return absl::StrFormat("%.*f", digits, v); }

std::string I(double v) { return absl::StrFormat("%.0f", v); }

std::string Latency(const json& report, const char* key, const std::string& name,
                    const std::string& title) {
  const json& d = report[key];
  std::string out = Title(title);
  out += Line(absl::StrCat("Mean ", name, " (ms):"), F(Num(d, "mean")));
  out += Line(absl::StrCat("Median ", name, " (ms):"), F(Num(d, "median")));
  for (auto it = d.begin(); it != d.end(); ++it) {
    if (it.key().size() > 1 && it.key()[0] == 'p' && it.key() != "p50") {
      out += Line(absl::StrCat("P", it.key().substr(1), " ", name, " (ms):"),
                  F(it.value().get<double>()));
    }
  }
  return out;
}

// "1: 100% 2: 45% 3: 21%" from a per-depth vector.
std::string PerDepth(const json& values, bool percent) {
  std::vector<std::string> parts;
  for (size_t d = 0; d < values.size(); ++d) {
    const double v = values[d].get<double>();
    parts.push_back(percent ? absl::StrFormat("%zu: %.0f%%", d + 1, 100 * v)
                            : absl::StrFormat("%zu: %.1f", d + 1, v));
  }
  return parts.empty() ? "-" : absl::StrJoin(parts, "  ");
}

std::string Mib(double bytes) { return absl::StrFormat("%.1f MiB", bytes / (1 << 20)); }

}  // namespace

std::string FormatReportTable(const json& r) {
  std::string out =
      absl::StrCat(std::string(11, '='), " Serving Benchmark Result ", std::string(13, '='), "\n");
  const json& m = r["model"];
  out +=
      Line("Model:", absl::StrCat(m.value("architecture", ""), " Nr=", m.value("num_recursions", 0),
                                  " L=", m.value("num_hidden_layers", 0), " ", m.value("dtype", ""),
                                  " on ", m.value("device", "")));
  const json& c = r["config"];
  if (c.is_object()) {
    out += Line("Load:", absl::StrCat("rate ", c.value("request_rate", std::string("?")),
                                      " req/s, max concurrency ", c.value("max_concurrency", 0),
                                      ", policy ", c.value("policy", std::string("?"))));
  }
  out += Line("Successful requests:", I(Num(r, "completed")));
  std::string failed = I(Num(r, "failed"));
  if (Num(r, "not_sent") > 0) absl::StrAppend(&failed, " (+", I(Num(r, "not_sent")), " not sent)");
  out += Line("Failed requests:", failed);
  if (!r["errors"].empty()) out += Line("Errors:", r["errors"].dump());
  out += Line("Benchmark duration (s):", F(Num(r, "duration_s")));
  out += Line("Total input tokens:", I(Num(r, "input_tokens")));
  out += Line("Total generated tokens:", I(Num(r, "output_tokens")));
  out += Line("Request throughput (req/s):", F(Num(r, "request_throughput")));
  out += Line("Output token throughput (tok/s):", F(Num(r, "output_throughput")));
  out += Line("Total token throughput (tok/s):", F(Num(r, "total_token_throughput")));
  if (r["goodput"].is_object()) {
    out += Line("Request goodput (req/s):", F(Num(r["goodput"], "request_goodput")));
    out += Line(
        "  requests within SLO:",
        absl::StrFormat("%.0f (%.0f%%); SLO ms %s", Num(r["goodput"], "good_requests"),
                        100 * Num(r["goodput"], "good_fraction"), r["goodput"]["slo_ms"].dump()));
  }
  out += Latency(r, "ttft_ms", "TTFT", "Time to First Token");
  out += Latency(r, "tpot_ms", "TPOT", "Time per Output Token (excl. 1st token)");
  out += Latency(r, "itl_ms", "ITL", "Inter-token Latency");
  out += Latency(r, "e2el_ms", "E2EL", "End-to-end Latency");
  out += Title("Per recursion policy");
  out += absl::StrFormat("%-10s %6s %8s %9s %17s %17s\n", "policy", "reqs", "out tok", "tok/s",
                         "TTFT p50/p99 ms", "TPOT p50/p99 ms");
  for (auto it = r["per_policy"].begin(); it != r["per_policy"].end(); ++it) {
    const json& p = it.value();
    out += absl::StrFormat(
        "%-10s %6.0f %8.0f %9.1f %8.1f/%-8.1f %8.1f/%-8.1f\n", it.key(), Num(p, "completed"),
        Num(p, "output_tokens"), Num(p, "output_throughput"), Num(p["ttft_ms"], "median"),
        Num(p["ttft_ms"], "p99"), Num(p["tpot_ms"], "median"), Num(p["tpot_ms"], "p99"));
  }
  out += Title("Compute (final usage messages)");
  const json& comp = r["compute"];
  out += Line("Tokens reaching depth (of depth 1):", PerDepth(comp["reach_share"], true));
  out += Line("Share of token-recursion steps:", PerDepth(comp["compute_share"], true));
  out += Line("Mean depth of generated tokens:", F(Num(comp, "mean_output_depth")));
  out += Line("Est. block GFLOPs per output token:",
              F(Num(comp, "estimated_flops_per_output_token") / 1e9, 3));
  out += Line("Mean server queue / compute (ms):",
              absl::StrCat(F(Num(comp, "mean_server_queue_ms")), " / ",
                           F(Num(comp, "mean_server_compute_ms"))));
  out += Title("Client");
  const json& cl = r["client"];
  out += Line(
      "Client CPU (s, % of one core):",
      absl::StrFormat("%.2f s, %.1f%% (%d threads)", Num(cl, "cpu_seconds"),
                      Num(cl, "cpu_percent_of_one_core"), static_cast<int>(Num(cl, "threads"))));
  out += Line("Peak requests in flight:", I(Num(cl, "peak_in_flight")));
  if (r["server"].is_object()) {
    const json& s = r["server"];
    out += Title("Server (/metrics deltas)");
    out += Line(
        "Engine steps / busy fraction:",
        absl::StrFormat("%.0f / %.0f%%", Num(s, "engine_steps"), 100 * Num(s, "busy_fraction")));
    std::vector<std::string> stages;
    for (const char* stage : {"schedule", "enter", "block", "exit", "sample"}) {
      if (s["stage_ms_per_output_token"].contains(stage)) {
        stages.push_back(
            absl::StrFormat("%s %.3f", stage, s["stage_ms_per_output_token"][stage].get<double>()));
      }
    }
    out += Line("Stage ms per output token:", absl::StrJoin(stages, ", "));
    out += Line("Rows per shared-block call at depth:",
                PerDepth(s["rows_per_block_call_at_depth"], false));
    out += Line(
        "Server mean TTFT / queue (ms):",
        absl::StrCat(F(Num(s, "server_ttft_mean_ms")), " / ", F(Num(s, "server_queue_mean_ms"))));
    out += Line("Preemptions:", I(Num(s, "preemptions")));
  }
  if (r["kv"].is_object()) {
    const json& kv = r["kv"];
    out += Line("KV bytes per cached token:",
                absl::StrFormat("%.0f (%.0f samples, mean %.0f tokens cached)",
                                Num(kv, "bytes_per_cached_token"), Num(kv, "samples"),
                                Num(kv, "mean_cached_tokens")));
    out += Line("KV peak / capacity:", absl::StrCat(Mib(Num(kv, "peak_used_bytes")), " / ",
                                                    Mib(Num(kv, "capacity_bytes"))));
  }
  out += std::string(kWidth, '=') + "\n";
  return out;
}

}  // namespace mor::loadgen
