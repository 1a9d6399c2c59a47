// Orderly shutdown on SIGINT/SIGTERM (and reload on SIGHUP).
#pragma once

#include <functional>

namespace sinkline {

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (call it first in
// main, before other threads start, so they inherit the mask), then returns.
void BlockShutdownSignals();

// Waits for SIGINT or SIGTERM. Each SIGHUP calls `on_hup` (if set) and goes
// on waiting. Returns the signal that ended the wait.
int WaitForShutdownSignal(const std::function<void()>& on_hup = nullptr);

}  // namespace sinkline
