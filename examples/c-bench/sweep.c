/* Forward-pass sweep through the C API, side by side with the seed pager's
 * design (LRU, read on demand), as an engine would measure it.
 *
 *   sweep MODEL.gguf [budget_fraction=0.5] [passes=3] [compute_gbps=0]
 *
 * For each configuration: open, run the passes (acquire each tensor in file
 * order, spin for its simulated compute time, release) with the file's page
 * cache dropped before each pass (outside the timing: a machine whose RAM
 * cannot cache the model), and print wall time, bytes read against the lower
 * bound M + (P-1)(M-B), hit ratio, and peak RSS growth against the budget. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "layerpager.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long rss_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  size_t n = strlen(field);
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, field, n) == 0) kb = atol(line + n);
  if (f) fclose(f);
  return kb;
}

static void drop_cache(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd >= 0) {
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

static double raw_pread_seconds(const char *path, uint64_t *bytes) {
  drop_cache(path);
  int fd = open(path, O_RDONLY);
  size_t chunk = 8u << 20;
  char *buf = malloc(chunk);
  double t = now_s();
  uint64_t off = 0;
  ssize_t n;
  while ((n = pread(fd, buf, chunk, (off_t)off)) > 0) off += (uint64_t)n;
  t = now_s() - t;
  close(fd);
  free(buf);
  *bytes = off;
  return t;
}

typedef struct {
  const char *label;
  uint32_t policy;
  uint32_t prefetch_threads;
  int declare_schedule;
} config;

static int run(const char *path, const config *c, double fraction, int passes, double gbps, uint64_t *model_out) {
  pager_options_t o;
  pager_options_default(&o);
  o.policy = c->policy;
  o.prefetch_threads = c->prefetch_threads;
  pager_t *p = NULL;
  if (pager_open_gguf(path, &o, &p) != PAGER_OK) {
    fprintf(stderr, "open: %s\n", pager_last_error_message());
    return 1;
  }
  size_t n = pager_tensor_count(p);
  uint64_t model = 0;
  uint32_t *order = malloc(n * sizeof *order);
  for (uint32_t i = 0; i < n; i++) {
    pager_tensor_info_t info;
    pager_tensor_info(p, i, &info);
    model += info.size;
    order[i] = i;
  }
  *model_out = model;
  uint64_t budget = (uint64_t)((double)model * fraction);
  if (pager_set_budget(p, budget) != PAGER_OK) return 1;
  if (c->declare_schedule) pager_set_schedule(p, order, n);
  long rss_before = rss_kb("VmRSS:");
  int fd = open("/proc/self/clear_refs", O_WRONLY);
  if (fd >= 0) {
    if (write(fd, "5", 1) < 0) perror("clear_refs");
    close(fd);
  }
  double wall = 0;
  volatile unsigned char sink = 0;
  for (int pass = 0; pass < passes; pass++) {
    drop_cache(path);
    double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
      pager_tensor_t t;
      if (pager_acquire(p, order[i], &t) != PAGER_OK) {
        fprintf(stderr, "acquire: %s\n", pager_last_error_message());
        return 1;
      }
      sink ^= ((const unsigned char *)t.data)[t.size / 2];
      if (gbps > 0) {
        double until = now_s() + (double)t.size / (gbps * 1e9);
        while (now_s() < until) {
        }
      }
      pager_release(p, &t);
    }
    wall += now_s() - t0;
  }
  long peak = rss_kb("VmHWM:") - rss_before;
  pager_stats_t s;
  pager_stats_init(&s);
  pager_get_stats(p, &s);
  uint64_t keep = budget < model ? budget : model;
  uint64_t bound = model + (uint64_t)(passes - 1) * (model - keep);
  printf("%-38s %8.3f s %7.1f%% hits %9.1f MiB read %6.3fx bound  peak RSS +%7.1f MiB (budget %.1f MiB)\n",
         c->label, wall, 100.0 * (double)s.hits / (double)(s.hits + s.misses), (double)s.bytes_read / 1048576.0,
         (double)s.bytes_read / (double)bound, (double)peak / 1024.0, (double)budget / 1048576.0);
  free(order);
  pager_close(p);
  (void)sink;
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL.gguf [budget_fraction] [passes] [compute_gbps]\n", argv[0]);
    return 2;
  }
  const char *path = argv[1];
  double fraction = argc > 2 ? atof(argv[2]) : 0.5;
  int passes = argc > 3 ? atoi(argv[3]) : 3;
  double gbps = argc > 4 ? atof(argv[4]) : 0;
  uint64_t raw_bytes = 0;
  double raw = raw_pread_seconds(path, &raw_bytes);
  printf("raw pread: %.1f MiB in %.3f s = %.2f GB/s (cold); budget %.0f%%, %d passes, compute %s\n",
         (double)raw_bytes / 1048576.0, raw, (double)raw_bytes / raw / 1e9, fraction * 100, passes,
         gbps > 0 ? argv[4] : "none");
  const config configs[] = {
      {"seed design: LRU, read on demand", PAGER_POLICY_LRU, 0, 0},
      {"layerpager: schedule declared", PAGER_POLICY_AUTO, 2, 1},
      {"layerpager: no schedule (learned)", PAGER_POLICY_AUTO, 2, 0},
  };
  uint64_t model = 0;
  for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
    if (run(path, &configs[i], fraction, passes, gbps, &model)) return 1;
  return 0;
}
