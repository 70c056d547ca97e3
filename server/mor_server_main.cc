// mor_server: serves a MoR (or vanilla Llama) model over gRPC (mor.v1.MorService,
// grpc.health.v1.Health and server reflection).
//
// SIGINT / SIGTERM shut it down gracefully (health NOT_SERVING, in-flight calls
// get --shutdown_grace, then the engine stops) with exit code 0.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "model/model_runner.h"
#include "server/engine.h"
#include "server/mor_server.h"

ABSL_FLAG(std::string, listen_address, "127.0.0.1:50051",
          "host:port to serve on (port 0 picks a free port). Use 0.0.0.0:<port> to accept "
          "connections from other machines.");
ABSL_FLAG(std::string, model_dir, "",
          "Model directory: config.json + model.safetensors (or shards with "
          "model.safetensors.index.json). Required.");
ABSL_FLAG(std::string, device, "cpu", "Where the model runs: cpu, cuda or cuda:N.");
ABSL_FLAG(std::string, dtype, "float32",
          "Compute dtype: float32, bfloat16 or float16 (float16 on CUDA only).");
ABSL_FLAG(int32_t, block_size, 16, "Tokens per KV-cache block.");
ABSL_FLAG(int64_t, kv_blocks, 1024,
          "KV-cache blocks per pool (the depth pool, and the unique-layer pool of middle_* "
          "models), including one reserved block. A request needs about "
          "depths x (prompt + max_tokens) / block_size depth blocks.");
ABSL_FLAG(int32_t, max_tokens_cap, 4096,
          "Largest StoppingCriteria.max_tokens a request may ask for (also the default when "
          "a request sets none, bounded by the model's context).");
ABSL_FLAG(int32_t, threads, 0, "Intra-op CPU threads for the model; 0 = all cores.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(5),
          "On SIGINT/SIGTERM, how long in-flight calls may run before they are cancelled.");

namespace {

int Fail(const std::string& message) {
  std::fprintf(stderr, "mor_server: error: %s\n", message.c_str());
  return 1;
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
  model_options.num_depth_blocks = absl::GetFlag(FLAGS_kv_blocks);
  model_options.num_threads = absl::GetFlag(FLAGS_threads);
  if (absl::GetFlag(FLAGS_max_tokens_cap) < 1) return Fail("--max_tokens_cap must be >= 1");

  const absl::Time load_start = absl::Now();
  auto runner = mor::CreateTorchModelRunner(model_options);
  if (!runner.ok()) return Fail(runner.status().ToString());
  auto engine = mor::Engine::Create(std::move(*runner));
  if (!engine.ok()) return Fail(engine.status().ToString());
  const mor::ModelConfig& config = (*engine)->config();
  const std::string model_line = absl::StrCat(
      config.model_type, " ", std::string(mor::SharingStrategyName(config.sharing)),
      " Nr=", config.num_recursions, " d=", config.hidden_size, " L=", config.num_hidden_layers,
      " vocab=", config.vocab_size, " on ", (*engine)->device(), " ", (*engine)->dtype());

  mor::MorServerOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen_address);
  options.limits.max_tokens_cap = absl::GetFlag(FLAGS_max_tokens_cap);
  auto server = mor::MorServer::Start(std::move(*engine), options);
  if (!server.ok()) return Fail(server.status().ToString());
  std::fprintf(stderr, "mor_server: loaded %s (%s) in %.1fs; listening on %s\n",
               model_options.model_dir.c_str(), model_line.c_str(),
               absl::ToDoubleSeconds(absl::Now() - load_start), (*server)->address().c_str());

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::fprintf(stderr, "mor_server: %s received, shutting down\n",
               signal_number == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->Shutdown(absl::GetFlag(FLAGS_shutdown_grace));
  server->reset();
  std::fprintf(stderr, "mor_server: stopped\n");
  return 0;
}
