#include "sinkline/common/shutdown.h"

#include <pthread.h>
#include <signal.h>

namespace sinkline {
namespace {

sigset_t ShutdownSet() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

}  // namespace

void BlockShutdownSignals() {
  sigset_t set = ShutdownSet();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A peer that vanishes must not kill the process through SIGPIPE.
  signal(SIGPIPE, SIG_IGN);
}

int WaitForShutdownSignal(const std::function<void()>& on_hup) {
  sigset_t set = ShutdownSet();
  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) {
      if (on_hup) on_hup();
      continue;
    }
    return sig;
  }
}

}  // namespace sinkline
