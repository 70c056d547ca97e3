#include "server/metrics/exposer.h"

#include <dlfcn.h>
#include <pthread.h>

#include <cstring>
#include <mutex>
#include <utility>

#include "civetweb.h"
#include "server/metrics/text_serializer.h"

// civetweb 1.15 as built by Debian creates its master and worker threads with
// a hard-coded 100 KiB stack (compile-time USE_STACK_SIZE; no runtime option:
// mg_get_valid_options() lists none). glibc carves the static TLS of every
// loaded library out of each thread's stack, and the torch wheel's libraries
// need more than that (cuBLASLt alone has 92 KiB of TLS, libtorch_cpu 26 KiB),
// so pthread_create fails with EINVAL and mg_start fails. This definition
// interposes the libc function (civetweb calls it through its PLT; the
// executable's definition wins): while the calling thread is inside mg_start
// (which creates the master thread and every worker), a size below
// kCivetwebStackBytes is raised to it. Every other call is passed on unchanged.
namespace {

constexpr size_t kCivetwebStackBytes = size_t{2} << 20;
thread_local bool enlarge_thread_stacks = false;

}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t stack_size) noexcept {
  using Fn = int (*)(pthread_attr_t*, size_t);
  static const Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  if (enlarge_thread_stacks && stack_size < kCivetwebStackBytes) stack_size = kCivetwebStackBytes;
  return real(attr, stack_size);
}

namespace mor::metrics {

absl::StatusOr<std::unique_ptr<Exposer>> Exposer::Create(const std::string& bind_address,
                                                         ExposerOptions options) {
  static std::once_flag init_once;
  std::call_once(init_once, [] { mg_init_library(0); });
  if (bind_address.empty()) return absl::InvalidArgumentError("empty metrics address");
  std::unique_ptr<Exposer> exposer(new Exposer(std::move(options)));
  const std::string threads = std::to_string(exposer->options_.num_threads);
  const char* config[] = {"listening_ports",
                          bind_address.c_str(),
                          "num_threads",
                          threads.c_str(),
                          "request_timeout_ms",
                          "10000",
                          nullptr};
  mg_callbacks callbacks;
  std::memset(&callbacks, 0, sizeof(callbacks));
  // Silence civetweb's own error log: failures come back through mg_start2.
  callbacks.log_message = [](const mg_connection*, const char*) { return 1; };
  mg_init_data init;
  std::memset(&init, 0, sizeof(init));
  init.callbacks = &callbacks;
  init.user_data = exposer.get();
  init.configuration_options = config;
  char error_text[256] = {0};
  unsigned error_code = 0;
  mg_error_data error;
  std::memset(&error, 0, sizeof(error));
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);

  enlarge_thread_stacks = true;
  exposer->context_ = mg_start2(&init, &error);
  enlarge_thread_stacks = false;
  if (exposer->context_ == nullptr) {
    return absl::UnavailableError("cannot serve metrics on " + bind_address + ": " +
                                  (error_text[0] != 0 ? error_text : "civetweb failed to start"));
  }
  mg_set_request_handler(exposer->context_, exposer->options_.uri.c_str(), &Exposer::HandleRequest,
                         exposer.get());
  return exposer;
}

Exposer::~Exposer() {
  if (context_ != nullptr) mg_stop(context_);
}

void Exposer::RegisterCollectable(const std::weak_ptr<Collectable>& collectable) {
  absl::MutexLock lock(&mu_);
  collectables_.push_back(collectable);
}

void Exposer::RemoveCollectable(const std::weak_ptr<Collectable>& collectable) {
  absl::MutexLock lock(&mu_);
  const std::shared_ptr<Collectable> target = collectable.lock();
  std::erase_if(collectables_, [&](const std::weak_ptr<Collectable>& c) {
    const std::shared_ptr<Collectable> locked = c.lock();
    return locked == nullptr || locked == target;
  });
}

std::vector<int> Exposer::GetListeningPorts() const {
  mg_server_port ports[8];
  const int n = mg_get_server_ports(context_, 8, ports);
  std::vector<int> out;
  for (int i = 0; i < n; ++i) out.push_back(ports[i].port);
  return out;
}

int Exposer::port() const {
  const std::vector<int> ports = GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

std::string Exposer::Scrape() {
  std::vector<std::shared_ptr<Collectable>> alive;
  {
    absl::MutexLock lock(&mu_);
    std::erase_if(collectables_, [](const std::weak_ptr<Collectable>& c) { return c.expired(); });
    for (const std::weak_ptr<Collectable>& c : collectables_) {
      if (std::shared_ptr<Collectable> locked = c.lock()) alive.push_back(std::move(locked));
    }
  }
  std::vector<MetricFamily> families;
  for (const std::shared_ptr<Collectable>& c : alive) {
    for (MetricFamily& family : c->Collect()) families.push_back(std::move(family));
  }
  return TextSerializer().Serialize(families);
}

int Exposer::HandleRequest(mg_connection* connection, void* self) {
  const mg_request_info* request = mg_get_request_info(connection);
  const bool head = std::strcmp(request->request_method, "HEAD") == 0;
  if (!head && std::strcmp(request->request_method, "GET") != 0) {
    mg_send_http_error(connection, 405, "Only GET and HEAD are allowed on %s", request->local_uri);
    return 405;
  }
  const std::string body = static_cast<Exposer*>(self)->Scrape();
  mg_send_http_ok(connection, kTextContentType, static_cast<long long>(body.size()));
  if (!head) mg_write(connection, body.data(), body.size());
  return 200;
}

}  // namespace mor::metrics
