/* The pager at mixture-of-experts scale, through the C API: an engine with
 * 48 layers (58 for DeepSeek-V3's count), each with two small dense tensors
 * and three merged expert tensors of N experts, every expert part an 8 KiB
 * slice, every merged tensor split with pager_split_experts. Two threads
 * acquire random experts, with a pager_hint of 2 experts every 7th acquire,
 * in the default io mode; the file sits in the page cache, so reads are
 * short and the pager's own work shows.
 *
 *   moe_scale [acquires_per_thread=20000]
 *
 * For each slice count (1,152 / 18,432 / 44,544) and budget (50%, 100%) it
 * first checks every byte of a pass of random experts against the file,
 * then prints: time per expert acquire (two threads at once), the hit
 * ratio, the pager's CPU per miss (process CPU time less time inside the
 * reads), and a dense hit of the same run for comparison. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layerpager.h"

#define SLICE 8192u
#define DENSE 2u
#define PARTS 3u
#define PERIOD 251u

static double now_s(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Byte at file offset o: periodic, so a slice compares against a window of
 * one pattern buffer. */
static unsigned char byte_at(uint64_t o) { return (unsigned char)((o % PERIOD) * 31u % PERIOD); }
static unsigned char pattern[SLICE + PERIOD];

typedef struct {
  uint32_t layers, experts;
  uint32_t *first;   /* first slice id of (layer, part) */
  uint32_t *dense;   /* dense ids, DENSE per layer */
  uint64_t *offset;  /* file offset of each id (tensors and slices) */
} model_t;

typedef struct {
  pager_t *pager;
  const model_t *m;
  uint32_t seed, n;
  int dense_only, verify;
  unsigned long bad;
  double seconds;
  pthread_barrier_t *barrier;
} worker_t;

static uint32_t next(uint32_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 17;
  *x ^= *x << 5;
  return *x;
}

static void *work(void *arg) {
  worker_t *w = arg;
  const model_t *m = w->m;
  uint32_t x = w->seed;
  pthread_barrier_wait(w->barrier);
  double t0 = now_s(CLOCK_MONOTONIC);
  for (uint32_t i = 0; i < w->n; i++) {
    uint32_t id;
    if (w->dense_only) {
      id = m->dense[next(&x) % (m->layers * DENSE)];
    } else {
      uint32_t lp = next(&x) % (m->layers * PARTS);
      id = m->first[lp] + next(&x) % m->experts;
      if (i % 7 == 0) {
        /* The router's choice for a coming layer. */
        uint32_t h[2] = {m->first[(lp + PARTS) % (m->layers * PARTS)] + next(&x) % m->experts,
                         m->first[(lp + PARTS) % (m->layers * PARTS)] + next(&x) % m->experts};
        if (pager_hint(w->pager, h, 2) != PAGER_OK) w->bad++;
      }
    }
    pager_tensor_t t;
    if (pager_acquire(w->pager, id, &t) != PAGER_OK) {
      w->bad++;
      continue;
    }
    /* The timed runs leave the bytes alone: touching 8 KiB of a random
     * slice among 150 MB costs a cache and TLB miss that is the engine's,
     * not the pager's. */
    if (w->verify && (t.size != SLICE || memcmp(t.data, pattern + m->offset[id] % PERIOD, SLICE) != 0))
      w->bad++;
    pager_release(w->pager, &t);
  }
  w->seconds = now_s(CLOCK_MONOTONIC) - t0;
  return NULL;
}

/* Writes the model's file and opens a pager on it with the experts split. */
static pager_t *open_model(const char *path, model_t *m, uint64_t budget_percent, uint64_t *weights) {
  uint32_t per_layer = DENSE + PARTS;
  uint32_t n = m->layers * per_layer;
  pager_tensor_desc_t *descs = calloc(n, sizeof *descs);
  char (*names)[64] = calloc(n, sizeof *names);
  uint64_t offset = 0;
  for (uint32_t l = 0; l < m->layers; l++) {
    for (uint32_t k = 0; k < per_layer; k++) {
      uint32_t i = l * per_layer + k;
      if (k < DENSE)
        snprintf(names[i], sizeof names[i], "blk.%u.attn_%u.weight", l, k);
      else
        snprintf(names[i], sizeof names[i], "blk.%u.ffn_%s_exps.weight", l,
                 (const char *[]){"gate", "up", "down"}[k - DENSE]);
      uint64_t size = k < DENSE ? SLICE : (uint64_t)SLICE * m->experts;
      descs[i] = (pager_tensor_desc_t){names[i], offset, size};
      offset += size;
    }
  }
  FILE *f = fopen(path, "wb");
  unsigned char *chunk = malloc(1 << 20);
  for (uint64_t o = 0; o < offset; o += 1 << 20) {
    uint64_t len = offset - o < (1 << 20) ? offset - o : (1 << 20);
    for (uint64_t i = 0; i < len; i++) chunk[i] = byte_at(o + i);
    fwrite(chunk, 1, len, f);
  }
  fclose(f);
  free(chunk);
  *weights = offset;
  pager_options_t o;
  pager_options_default(&o);
  o.budget_bytes = offset / 100 * budget_percent;
  pager_t *p = NULL;
  if (pager_open_table(path, descs, n, &o, &p) != PAGER_OK) {
    fprintf(stderr, "open: %s\n", pager_last_error_message());
    exit(1);
  }
  uint32_t total = n + m->layers * PARTS * m->experts;
  m->offset = calloc(total, sizeof *m->offset);
  m->first = calloc(m->layers * PARTS, sizeof *m->first);
  m->dense = calloc(m->layers * DENSE, sizeof *m->dense);
  for (uint32_t i = 0; i < n; i++) m->offset[i] = descs[i].offset;
  for (uint32_t l = 0; l < m->layers; l++) {
    for (uint32_t k = 0; k < DENSE; k++) m->dense[l * DENSE + k] = l * per_layer + k;
    for (uint32_t part = 0; part < PARTS; part++) {
      uint32_t parent = l * per_layer + DENSE + part, first;
      if (pager_split_experts(p, parent, m->experts, &first) != PAGER_OK) {
        fprintf(stderr, "split: %s\n", pager_last_error_message());
        exit(1);
      }
      m->first[l * PARTS + part] = first;
      for (uint32_t e = 0; e < m->experts; e++)
        m->offset[first + e] = descs[parent].offset + (uint64_t)e * SLICE;
    }
  }
  free(descs);
  free(names);
  return p;
}

static double run(pager_t *p, const model_t *m, uint32_t n, int dense_only, int verify, unsigned long *bad) {
  pthread_barrier_t barrier;
  pthread_barrier_init(&barrier, NULL, 2);
  worker_t w[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    w[i] = (worker_t){p, m, 0x9e3779b9u * (uint32_t)(i + 1) + n, n, dense_only, verify, 0, 0, &barrier};
    pthread_create(&th[i], NULL, work, &w[i]);
  }
  double slowest = 0;
  for (int i = 0; i < 2; i++) {
    pthread_join(th[i], NULL);
    *bad += w[i].bad;
    if (w[i].seconds > slowest) slowest = w[i].seconds;
  }
  pthread_barrier_destroy(&barrier);
  return slowest;
}

int main(int argc, char **argv) {
  uint32_t n = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 20000;
  for (uint32_t i = 0; i < sizeof pattern; i++) pattern[i] = byte_at(i);
  char path[] = "/tmp/moe_scale_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return 1;
  close(fd);
  printf("two threads x %u random expert acquires, a hint of 2 experts every 7th, default io mode\n", n);
  printf("%7s %8s %7s %9s %14s %8s %14s %14s\n", "layers", "slices", "budget", "wall s", "ns/acquire",
         "hits", "us CPU/miss", "dense hit ns");
  const uint32_t shapes[3][2] = {{48, 8}, {48, 128}, {58, 256}};
  unsigned long bad = 0;
  for (int s = 0; s < 3; s++) {
    for (int b = 0; b < 2; b++) {
      model_t m = {shapes[s][0], shapes[s][1], NULL, NULL, NULL};
      uint64_t weights = 0, percent = b == 0 ? 50 : 100;
      pager_t *p = open_model(path, &m, percent, &weights);
      run(p, &m, n / 4, 0, 1, &bad); /* every byte checked */
      for (uint32_t lp = 0; lp < m.layers * PARTS; lp++) /* then every expert once */
        for (uint32_t e = 0; e < m.experts; e++) {
          pager_tensor_t t;
          if (pager_acquire(p, m.first[lp] + e, &t) == PAGER_OK) pager_release(p, &t);
        }
      pager_stats_t before, after;
      pager_stats_init(&before);
      pager_stats_init(&after);
      pager_get_stats(p, &before);
      double cpu0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
      double wall = run(p, &m, n, 0, 0, &bad);
      double cpu = now_s(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
      pager_get_stats(p, &after);
      double dense = run(p, &m, n, 1, 0, &bad);
      uint64_t hits = after.hits - before.hits, misses = after.misses - before.misses;
      double read_s = (double)(after.read_ns - before.read_ns) * 1e-9;
      char per_miss[32] = "-"; /* with under 1% misses the figure means nothing */
      if (misses * 100 >= hits + misses)
        snprintf(per_miss, sizeof per_miss, "%.2f", (cpu - read_s) / (double)misses * 1e6);
      printf("%7u %8u %6llu%% %9.3f %14.1f %7.1f%% %14s %14.1f\n", m.layers, m.layers * PARTS * m.experts,
             (unsigned long long)percent, wall, wall / n * 1e9, 100.0 * (double)hits / (double)(hits + misses),
             per_miss, dense / n * 1e9);
      fflush(stdout);
      pager_close(p);
      free(m.first);
      free(m.dense);
      free(m.offset);
    }
  }
  unlink(path);
  if (bad) {
    fprintf(stderr, "%lu acquires failed or returned wrong bytes\n", bad);
    return 1;
  }
  return 0;
}
