// bench/cold-working-set.cc: how much slower a small working set is when code touches it again after a pause.
// A 1 MiB pointer chase (4096 lines in random order) timed back to back, after 30 ms of spinning (which touches
// nothing), and after a 30 ms sleep. On the development VM the chase costs ~8 ns a line back to back and ~80-160 ns
// after either pause: other tenants and the hypervisor evict the caches within milliseconds, so any work that runs
// now and then (a metrics scrape every 100 ms) pays memory latency for everything it touches. See bench/RESULTS.md
// "Observability overhead, fourth pass".
//   g++ -O2 bench/cold-working-set.cc -o /tmp/cold && /tmp/cold
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main() {
  const size_t lines = 4096, stride = 32;  // one node per 256 bytes: 1 MiB
  std::vector<size_t> next(lines * stride);
  std::vector<size_t> order(lines);
  for (size_t i = 0; i < lines; i++) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937(1));
  for (size_t i = 0; i < lines; i++) next[order[i] * stride] = order[(i + 1) % lines] * stride;
  auto chase = [&] {
    size_t j = 0;
    for (size_t i = 0; i < lines; i++) j = next[j];
    return j;
  };
  for (const std::string mode : {"warm", "spin30", "sleep30", "warm"}) {
    std::vector<double> ts;
    for (int it = 0; it < 61; it++) {
      if (mode == "spin30") {
        const double end = now() + 0.03;
        while (now() < end) {
        }
      }
      if (mode == "sleep30") usleep(30000);
      const double t0 = now();
      volatile size_t sink = chase();
      (void)sink;
      ts.push_back(now() - t0);
    }
    std::sort(ts.begin(), ts.end());
    std::printf("%-8s 1 MiB chase: median %7.1f us, %6.1f ns a line\n", mode.c_str(), ts[30] * 1e6,
                ts[30] * 1e9 / lines);
  }
}
