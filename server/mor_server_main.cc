// mor_server: serves a MoR (or vanilla Llama) model over gRPC (mor.v1.MorService,
// grpc.health.v1.Health and server reflection).
//
// SIGINT / SIGTERM shut it down gracefully (health NOT_SERVING, in-flight calls
// get --shutdown_grace, then the engine stops) with exit code 0.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "model/kv_cache_types.h"
#include "model/model_config.h"
#include "model/model_runner.h"
#include "model/tokenizer.h"
#include "scheduler/engine.h"
#include "scheduler/kv_cache_manager.h"
#include "server/kv_cache_budget.h"
#include "server/mor_server.h"

ABSL_FLAG(std::string, listen_address, "127.0.0.1:50051",
          "host:port to serve on (port 0 picks a free port). Use 0.0.0.0:<port> to accept "
          "connections from other machines.");
ABSL_FLAG(
    std::string, metrics_address, "127.0.0.1:9400",
    "host:port (numeric host) of the Prometheus metrics endpoint GET /metrics (port 0 picks a "
    "free port); empty disables metrics.");
ABSL_FLAG(std::string, model_dir, "",
          "Model directory: config.json + model.safetensors (or shards with "
          "model.safetensors.index.json). Required.");
ABSL_FLAG(std::string, tokenizer, "",
          "tokenizer.json for text prompts, streamed text, stop strings and Tokenize. Default: "
          "<model_dir>/tokenizer.json when it exists; 'none' serves token ids only.");
ABSL_FLAG(std::string, device, "cpu", "Where the model runs: cpu, cuda or cuda:N.");
ABSL_FLAG(std::string, dtype, "float32",
          "Compute dtype: float32, bfloat16 or float16 (float16 on CUDA only).");
ABSL_FLAG(int32_t, block_size, 16, "Tokens per KV-cache block.");
ABSL_FLAG(std::optional<int64_t>, kv_cache_bytes, std::nullopt,
          "KV-cache memory budget in bytes (default 1 GiB = 1073741824), split between the depth "
          "pool (all recursion depths, per-depth block tables) and the unique-layer pool of "
          "middle_* models. Ignored when --kv_blocks is set; not allowed with "
          "--kv_cache_fraction.");
ABSL_FLAG(int64_t, kv_blocks, 0,
          "KV-cache blocks per pool (including one reserved block), instead of "
          "--kv_cache_bytes. A request needs about depths x (prompt + max_tokens) / block_size "
          "depth blocks.");
ABSL_FLAG(std::optional<double>, kv_cache_fraction, std::nullopt,
          "CUDA only: KV-cache budget as a fraction in (0, 1] of the device memory that is FREE "
          "once the model weights are loaded, instead of --kv_cache_bytes / --kv_blocks (which "
          "it cannot be combined with). Free = what the CUDA driver reports free (memory used by "
          "other processes counts as taken) plus memory LibTorch's caching allocator holds "
          "unused. Unlike vLLM's gpu_memory_utilization it is not a share of total memory: 0.9 "
          "gives the KV pools 90% of what the weights left, and the other 10% stays for "
          "activations (they grow with --max_num_batched_tokens), the --state_slots buffers and "
          "CUDA/cuBLAS workspaces. The budget is split between the pools as for "
          "--kv_cache_bytes; free, total, budget and blocks are logged at startup. Default: "
          "unset (off).");
ABSL_FLAG(std::string, batching_mode, "continuous_depthwise",
          "continuous_depthwise (one shared-block call carries tokens at different recursion "
          "depths from different requests; the paper's continuous depth-wise batching), "
          "depth_grouped (each step carries its tokens through all their recursions, rows "
          "ordered by depth) or no_depth_awareness (every token through all recursions, "
          "results masked; for benchmarks).");
ABSL_FLAG(int32_t, max_num_seqs, 256, "Most requests running at once.");
ABSL_FLAG(int32_t, max_num_batched_tokens, 2048,
          "Token budget of one engine step (depth-wise: rows of one shared-block call); also "
          "the largest prefill chunk.");
ABSL_FLAG(int32_t, max_queued_requests, 1024,
          "Most requests waiting for admission; beyond it Generate fails with "
          "RESOURCE_EXHAUSTED.");
ABSL_FLAG(bool, priority_scheduling, false,
          "Admit and keep requests by GenerateRequest.priority (higher first), then arrival; "
          "preempt the lowest priority first. Off: first come, first served.");
ABSL_FLAG(bool, static_batching, false,
          "Admit a new batch only when every running request finished (for comparisons).");
ABSL_FLAG(int32_t, state_slots, 4096,
          "Continuous depth-wise mode: hidden-state slots for tokens in flight.");
ABSL_FLAG(int32_t, max_tokens_cap, 4096,
          "Largest StoppingCriteria.max_tokens a request may ask for (also the default when "
          "a request sets none, bounded by the model's context).");
ABSL_FLAG(std::string, default_recursion, "adaptive",
          "Recursion policy of requests that set none: adaptive (the router decides per "
          "token) or a fixed depth 1..Nr.");
ABSL_FLAG(absl::Duration, max_request_duration, absl::InfiniteDuration(),
          "Longest a request may run (e.g. 120s); a client deadline further away is "
          "shortened to it. The request then ends with DEADLINE_EXCEEDED.");
ABSL_FLAG(int32_t, threads, 0, "Intra-op CPU threads for the model; 0 = all cores.");
ABSL_FLAG(absl::Duration, max_connection_age, absl::InfiniteDuration(),
          "Send GOAWAY on client connections older than this (gRPC's max connection age), so "
          "clients that balance over DNS, e.g. a Kubernetes headless Service with round_robin, "
          "re-resolve and reach new replicas; inf = never. Calls in flight may finish within "
          "--max_connection_age_grace.");
ABSL_FLAG(absl::Duration, max_connection_age_grace, absl::InfiniteDuration(),
          "After --max_connection_age, how long calls in flight may run before the connection "
          "is closed; inf = until they end.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "On SIGINT/SIGTERM, how long in-flight calls may run before they are cancelled.");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "mor_server: error: %s\n", message.c_str());
  return 1;
}

// The model folder's name ("models/default/" -> "default").
std::string ModelName(const std::string& model_dir) {
  std::filesystem::path path = std::filesystem::path(model_dir).lexically_normal();
  if (!path.has_filename()) path = path.parent_path();
  return path.filename().string();
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves a Mixture-of-Recursions model over gRPC (mor.v1.MorService, grpc.health.v1, "
      "reflection).\n\nUsage: mor_server --model_dir <dir> [--listen_address host:port] "
      "[--device cpu|cuda:N] [--dtype float32|bfloat16|float16] [flags...]");
  absl::ParseCommandLine(argc, argv);

  // Block the shutdown signals before any thread starts so that every thread
  // inherits the mask and only sigwait() below sees them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (absl::GetFlag(FLAGS_model_dir).empty()) return Fail("--model_dir is required (see --help)");
  mor::ModelRunnerOptions model_options;
  model_options.model_dir = absl::GetFlag(FLAGS_model_dir);
  model_options.device = absl::GetFlag(FLAGS_device);
  model_options.dtype = absl::GetFlag(FLAGS_dtype);
  model_options.block_size = absl::GetFlag(FLAGS_block_size);
  model_options.num_threads = absl::GetFlag(FLAGS_threads);
  model_options.num_state_slots = absl::GetFlag(FLAGS_state_slots);
  auto mode = mor::ParseBatchingMode(absl::GetFlag(FLAGS_batching_mode));
  if (!mode.ok()) return Fail(mode.status().ToString());
  model_options.depth_aware = *mode != mor::BatchingMode::kNoDepthAwareness;

  // KV pools: from --kv_blocks, split from the byte budget, or (CUDA) from a
  // fraction of the memory free once the weights are loaded.
  mor::KvBudgetFlags kv_flags;
  if (const std::optional<int64_t> bytes = absl::GetFlag(FLAGS_kv_cache_bytes)) {
    kv_flags.kv_cache_bytes = *bytes;
    kv_flags.kv_cache_bytes_set = true;
  }
  kv_flags.kv_blocks = absl::GetFlag(FLAGS_kv_blocks);
  kv_flags.kv_blocks_set = kv_flags.kv_blocks != 0;
  if (const std::optional<double> fraction = absl::GetFlag(FLAGS_kv_cache_fraction)) {
    kv_flags.kv_cache_fraction = *fraction;
    kv_flags.kv_cache_fraction_set = true;
  }
  kv_flags.device = model_options.device;
  auto kv_plan = mor::PlanKvBudget(kv_flags);
  if (!kv_plan.ok()) return Fail(std::string(kv_plan.status().message()));
  if (kv_plan->source == mor::KvBudgetSource::kDeviceFraction) {
    // Runs inside model loading, after the weights are on the device.
    model_options.kv_pool_sizer =
        [fraction = kv_plan->fraction, device = model_options.device](
            const mor::KvCacheGeometry& geometry) -> absl::StatusOr<mor::KvPoolBlocks> {
      auto memory = mor::QueryDeviceMemory(device);
      if (!memory.ok()) {
        return absl::Status(memory.status().code(),
                            absl::StrCat("--kv_cache_fraction: ", memory.status().message()));
      }
      auto decision = mor::SizeKvFromFreeMemory(fraction, *memory, geometry);
      if (!decision.ok()) return decision.status();
      std::fprintf(stderr, "mor_server: KV cache: %s\n",
                   mor::DescribeKvFractionDecision(*decision).c_str());
      return mor::KvPoolBlocks{decision->sizes.num_depth_blocks, decision->sizes.num_unique_blocks};
    };
  } else if (kv_plan->source == mor::KvBudgetSource::kBlocks) {
    model_options.num_depth_blocks = kv_plan->blocks;
  } else {
    auto config = mor::ModelConfig::FromFile(model_options.model_dir + std::string("/config.json"));
    if (!config.ok()) return Fail(config.status().ToString());
    const int32_t dtype_bytes = mor::DTypeBytes(model_options.dtype);
    if (dtype_bytes == 0) return Fail("unknown --dtype " + model_options.dtype);
    const mor::KvCacheGeometry geometry =
        mor::MakeKvCacheGeometry(*config, model_options.block_size, dtype_bytes);
    auto sizes = mor::KvCacheManager::SizeFromBudget(geometry, kv_plan->bytes);
    if (!sizes.ok()) return Fail(sizes.status().ToString());
    model_options.num_depth_blocks = sizes->num_depth_blocks;
    model_options.num_unique_blocks = sizes->num_unique_blocks;
  }
  mor::EngineOptions engine_options;
  engine_options.scheduler.mode = *mode;
  engine_options.scheduler.max_num_seqs = absl::GetFlag(FLAGS_max_num_seqs);
  engine_options.scheduler.max_num_batched_tokens = absl::GetFlag(FLAGS_max_num_batched_tokens);
  engine_options.scheduler.max_queued_requests = absl::GetFlag(FLAGS_max_queued_requests);
  engine_options.scheduler.priority_scheduling = absl::GetFlag(FLAGS_priority_scheduling);
  engine_options.scheduler.static_batching = absl::GetFlag(FLAGS_static_batching);
  if (absl::GetFlag(FLAGS_max_tokens_cap) < 1) return Fail("--max_tokens_cap must be >= 1");

  // While the model loads, the address already answers grpc.health.v1 with
  // NOT_SERVING (so orchestrators see "starting", not "down"); the real server
  // takes the same port once the model is ready.
  std::string listen_address = absl::GetFlag(FLAGS_listen_address);
  std::unique_ptr<grpc::Server> loading_server;
  {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    int port = 0;
    builder.AddListeningPort(listen_address, grpc::InsecureServerCredentials(), &port);
    loading_server = builder.BuildAndStart();
    if (loading_server == nullptr || port == 0) {
      return Fail(absl::StrCat("cannot listen on ", listen_address));
    }
    listen_address = absl::StrCat(listen_address.substr(0, listen_address.rfind(':')), ":", port);
    grpc::HealthCheckServiceInterface* health = loading_server->GetHealthCheckService();
    health->SetServingStatus(false);
    health->SetServingStatus("mor.v1.MorService", false);
    std::fprintf(stderr, "mor_server: loading %s; health NOT_SERVING on %s\n",
                 model_options.model_dir.c_str(), listen_address.c_str());
  }

  const absl::Time load_start = absl::Now();
  auto runner = mor::CreateTorchModelRunner(model_options);
  if (!runner.ok()) return Fail(runner.status().ToString());
  auto engine = mor::Engine::Create(std::move(*runner), engine_options);
  if (!engine.ok()) return Fail(engine.status().ToString());
  const mor::ModelConfig& config = (*engine)->config();
  const std::string model_line = absl::StrCat(
      config.model_type, " ", std::string(mor::SharingStrategyName(config.sharing)),
      " Nr=", config.num_recursions, " d=", config.hidden_size, " L=", config.num_hidden_layers,
      " vocab=", config.vocab_size, " on ", (*engine)->device(), " ", (*engine)->dtype(),
      "; batching ", mor::BatchingModeName(engine_options.scheduler.mode), ", KV ",
      (*engine)->kv_geometry().num_depth_blocks, " blocks of ", model_options.block_size,
      " tokens");

  // The tokenizer, when the model has one (or --tokenizer names one).
  std::shared_ptr<const mor::Tokenizer> tokenizer;
  {
    std::string path = absl::GetFlag(FLAGS_tokenizer);
    const bool explicit_path = !path.empty() && path != "none";
    if (path.empty()) path = model_options.model_dir + "/tokenizer.json";
    if (path != "none" && (explicit_path || std::filesystem::exists(path))) {
      auto loaded = mor::Tokenizer::FromFile(path);
      if (!loaded.ok()) return Fail(loaded.status().ToString());
      if ((*loaded)->id_limit() > config.vocab_size) {
        return Fail(absl::StrCat(path, " has ", (*loaded)->id_limit(),
                                 " token ids, more than the model's vocab_size ",
                                 config.vocab_size));
      }
      tokenizer = std::move(*loaded);
    }
  }

  mor::MorServerOptions options;
  options.listen_address = listen_address;
  loading_server->Shutdown();
  loading_server->Wait();
  loading_server.reset();
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  options.metrics.model_name = ModelName(model_options.model_dir);
  options.tokenizer = tokenizer;
  options.max_connection_age = absl::GetFlag(FLAGS_max_connection_age);
  options.max_connection_age_grace = absl::GetFlag(FLAGS_max_connection_age_grace);
  if (options.max_connection_age <= absl::ZeroDuration() ||
      options.max_connection_age_grace < absl::ZeroDuration()) {
    return Fail("--max_connection_age must be positive and --max_connection_age_grace >= 0");
  }
  options.limits.max_tokens_cap = absl::GetFlag(FLAGS_max_tokens_cap);
  options.limits.max_request_duration = absl::GetFlag(FLAGS_max_request_duration);
  if (options.limits.max_request_duration <= absl::ZeroDuration()) {
    return Fail("--max_request_duration must be positive");
  }
  const std::string default_recursion = absl::GetFlag(FLAGS_default_recursion);
  if (default_recursion != "adaptive") {
    int depth = 0;
    if (!absl::SimpleAtoi(default_recursion, &depth) || depth < 1 ||
        depth > config.num_recursions) {
      return Fail(absl::StrCat("--default_recursion must be adaptive or 1..", config.num_recursions,
                               " (got ", default_recursion, ")"));
    }
    options.limits.default_policy = mor::DepthPolicy::Fixed(depth);
  }
  auto server = mor::MorServer::Start(std::move(*engine), options);
  if (!server.ok()) return Fail(server.status().ToString());
  std::fprintf(stderr, "mor_server: loaded %s (%s) in %.1fs; listening on %s\n",
               model_options.model_dir.c_str(), model_line.c_str(),
               absl::ToDoubleSeconds(absl::Now() - load_start), (*server)->address().c_str());
  if ((*server)->metrics_port() != 0) {
    const std::string& address = options.metrics_address;
    std::fprintf(stderr, "mor_server: metrics on http://%s:%d/metrics\n",
                 address.substr(0, address.rfind(':')).c_str(), (*server)->metrics_port());
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::fprintf(stderr, "mor_server: %s received, shutting down\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  server->reset();
  std::fprintf(stderr, "mor_server: stopped\n");
  return 0;
}
