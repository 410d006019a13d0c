/* Read-ahead never costs a demand, tried as an engine would break it.
 *
 * First the deterministic reproducers: a slow callback source whose
 * read-aheads hold the whole budget when the engine asks for another tensor.
 * Then a matrix: 1-8 engine threads x 0-4 readers x every io mode x budgets
 * from 1x to 3x the largest charge, sweeping the model for several passes
 * with a declared schedule or none, a pinned tensor and router hints. Every
 * byte is checked, resident bytes stay within the budget at every snapshot,
 * no acquire fails for budget that read-aheads hold, and none stalls.
 *
 * usage: readahead_stress MODEL.gguf [quick] */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "check.h"

#define MIB (1024u * 1024u)
/* Far above any read of the fixture, far below the stalls this catches
 * (a wait_ms of 3 s, a waiter nobody wakes). */
#define STALL_MS 2000.0

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- a byte source whose every read is slow ---- */

typedef struct {
  unsigned char *bytes;
  size_t len;
  int delay_ms;
  pthread_mutex_t lock;
  int reads;
} slow_source;

static int slow_read_at(void *user, uint64_t offset, void *dst, size_t len) {
  slow_source *s = (slow_source *)user;
  pthread_mutex_lock(&s->lock);
  s->reads++;
  pthread_mutex_unlock(&s->lock);
  sleep_ms(s->delay_ms);
  if (offset + len > s->len) return 34; /* ERANGE */
  memcpy(dst, s->bytes + offset, len);
  return 0;
}

static int slow_reads(slow_source *s) {
  pthread_mutex_lock(&s->lock);
  int n = s->reads;
  pthread_mutex_unlock(&s->lock);
  return n;
}

/* Three 1 MiB tensors, budget 2 MiB, two readers: prefetch 1 and 2, then
 * acquire 0. It must succeed, as soon as a read-ahead ends, whatever
 * wait_ms says. */
static void demand_beats_read_aheads(uint32_t wait_ms) {
  slow_source s = {NULL, 3 * MIB, 300, PTHREAD_MUTEX_INITIALIZER, 0};
  s.bytes = (unsigned char *)malloc(s.len);
  for (size_t i = 0; i < s.len; i++) s.bytes[i] = (unsigned char)(i * 13 + (i >> 11));
  pager_tensor_desc_t descs[3] = {{"t0", 0, MIB}, {"t1", MIB, MIB}, {"t2", 2 * MIB, MIB}};
  pager_source_t src = {&s, s.len, slow_read_at, NULL};
  pager_options_t o;
  pager_options_default(&o);
  o.budget_bytes = 2 * MIB;
  o.prefetch_threads = 2;
  o.wait_ms = wait_ms;
  pager_t *p = NULL;
  CHECK_OK(pager_open_source(&src, descs, 3, &o, &p));
  if (!p) return;
  CHECK_OK(pager_prefetch(p, 1));
  CHECK_OK(pager_prefetch(p, 2));
  double deadline = now_ms() + 10000;
  while (slow_reads(&s) < 2 && now_ms() < deadline) sleep_ms(1);
  CHECK(slow_reads(&s) == 2);
  double t0 = now_ms();
  pager_tensor_t t;
  CHECK_OK(pager_acquire(p, 0, &t));
  double took = now_ms() - t0;
  if (took >= 900) {
    fprintf(stderr, "wait_ms %u: acquire behind two read-aheads took %.0f ms\n", wait_ms, took);
    check_failures++;
  }
  if (t.data) CHECK(memcmp(t.data, s.bytes, MIB) == 0);
  CHECK_OK(pager_release(p, &t));
  pager_stats_t st;
  pager_stats_init(&st);
  CHECK_OK(pager_get_stats(p, &st));
  CHECK(st.peak_resident_bytes <= o.budget_bytes);
  pager_close(p);
  free(s.bytes);
}

/* ---- the matrix ---- */

typedef struct {
  const unsigned char *file;
  pager_t *pager;
  uint32_t n;
  uint32_t start;
  int passes;
  uint64_t budget;
  int hints;
  /* results */
  int bad_status, bad_bytes, over_budget, stalls;
  double slowest_ms;
  char first_error[256];
} sweeper;

static void note_error(sweeper *w, const char *what, pager_status_t st) {
  if (w->first_error[0] == 0)
    snprintf(w->first_error, sizeof w->first_error, "%s: %s: %s", what, pager_status_string(st),
             pager_last_error_message());
}

static void *sweep(void *arg) {
  sweeper *w = (sweeper *)arg;
  for (int pass = 0; pass < w->passes; pass++) {
    for (uint32_t k = 0; k < w->n; k++) {
      uint32_t id = (w->start + k) % w->n;
      if (w->hints && k % 7 == 0) {
        uint32_t next[2] = {(id + 1) % w->n, (id + 2) % w->n};
        pager_status_t st = pager_hint(w->pager, next, 2);
        if (st != PAGER_OK) {
          w->bad_status++;
          note_error(w, "hint", st);
        }
      }
      pager_tensor_info_t info;
      if (pager_tensor_info(w->pager, id, &info) != PAGER_OK) {
        w->bad_status++;
        continue;
      }
      double t0 = now_ms();
      pager_tensor_t t;
      pager_status_t st = pager_acquire(w->pager, id, &t);
      double took = now_ms() - t0;
      if (took > w->slowest_ms) w->slowest_ms = took;
      if (took > STALL_MS) w->stalls++;
      if (st != PAGER_OK) {
        w->bad_status++;
        note_error(w, "acquire", st);
        continue;
      }
      if (t.size != info.size || (t.size && memcmp(t.data, w->file + info.offset, t.size) != 0))
        w->bad_bytes++;
      pager_stats_t s;
      pager_stats_init(&s);
      if (pager_get_stats(w->pager, &s) != PAGER_OK || s.resident_bytes > w->budget ||
          s.peak_resident_bytes > w->budget)
        w->over_budget++;
      if (pager_release(w->pager, &t) != PAGER_OK) w->bad_status++;
    }
  }
  return NULL;
}

/* What one tensor is charged in `io_mode` at most: O_DIRECT reads whole
 * pages around it. */
static uint64_t charge_of(const pager_tensor_info_t *info, uint32_t io_mode) {
  if (io_mode != PAGER_IO_DIRECT) return info->size;
  uint64_t start = info->offset / 4096 * 4096;
  uint64_t end = (info->offset + info->size + 4095) / 4096 * 4096;
  return end - start;
}

static void run_config(const char *path, const unsigned char *file, uint32_t io_mode, uint32_t readers,
                       int threads, double budget_x, int schedule, int passes) {
  pager_options_t o;
  pager_options_default(&o);
  o.io_mode = io_mode;
  o.prefetch_threads = readers;
  pager_t *p = NULL;
  CHECK_OK(pager_open_gguf(path, &o, &p));
  if (!p) return;
  uint32_t n = (uint32_t)pager_tensor_count(p);
  uint64_t largest = 0, smallest = UINT64_MAX;
  uint32_t smallest_id = 0;
  for (uint32_t i = 0; i < n; i++) {
    pager_tensor_info_t info;
    CHECK_OK(pager_tensor_info(p, i, &info));
    uint64_t c = charge_of(&info, io_mode);
    if (c > largest) largest = c;
    if (c < smallest) {
      smallest = c;
      smallest_id = i;
    }
  }
  pager_close(p);
  uint64_t budget = (uint64_t)(budget_x * (double)largest);
  /* One engine thread holds nothing when it asks, so it may never get a
   * budget error; several wait for each other's releases. */
  o.budget_bytes = budget;
  o.wait_ms = threads > 1 ? 30000 : 0;
  CHECK_OK(pager_open_gguf(path, &o, &p));
  if (!p) return;
  int pinned = budget >= 2 * largest + smallest;
  if (pinned) CHECK_OK(pager_pin(p, smallest_id));
  if (schedule) {
    uint32_t *order = (uint32_t *)malloc(n * sizeof *order);
    for (uint32_t i = 0; i < n; i++) order[i] = i;
    CHECK_OK(pager_set_schedule(p, order, n));
    free(order);
  }
  pthread_t tids[8];
  sweeper ws[8];
  for (int i = 0; i < threads; i++) {
    memset(&ws[i], 0, sizeof ws[i]);
    ws[i].file = file;
    ws[i].pager = p;
    ws[i].n = n;
    ws[i].start = (uint32_t)((uint64_t)i * n / (uint64_t)threads);
    ws[i].passes = passes;
    ws[i].budget = budget;
    ws[i].hints = i == 0;
    pthread_create(&tids[i], NULL, sweep, &ws[i]);
  }
  for (int i = 0; i < threads; i++) {
    pthread_join(tids[i], NULL);
    sweeper *w = &ws[i];
    if (w->bad_status || w->bad_bytes || w->over_budget || w->stalls) {
      fprintf(stderr,
              "io %u, %u readers, %d threads, budget %.1fx (%llu), schedule %d: thread %d: "
              "%d bad statuses, %d bad tensors, %d over budget, %d stalls (slowest %.0f ms); %s\n",
              io_mode, readers, threads, budget_x, (unsigned long long)budget, schedule, i,
              w->bad_status, w->bad_bytes, w->over_budget, w->stalls, w->slowest_ms, w->first_error);
      check_failures++;
    }
  }
  if (pinned) CHECK_OK(pager_unpin(p, smallest_id));
  pager_stats_t s;
  pager_stats_init(&s);
  CHECK_OK(pager_get_stats(p, &s));
  CHECK(s.peak_resident_bytes <= budget);
  CHECK(s.in_use_bytes == 0);
  pager_close(p);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL.gguf [quick]\n", argv[0]);
    return 2;
  }
  int quick = argc > 2 && strcmp(argv[2], "quick") == 0;
  demand_beats_read_aheads(0);
  demand_beats_read_aheads(1000);

  size_t len = 0;
  unsigned char *file = read_file(argv[1], &len);
  CHECK(file != NULL);
  if (!file) return check_report("readahead_stress");
  static const int all_threads[] = {1, 2, 4, 8}, quick_threads[] = {1, 4};
  static const uint32_t all_readers[] = {0, 1, 2, 4}, quick_readers[] = {0, 2};
  static const double all_budgets[] = {1.0, 1.5, 2.0, 3.0}, quick_budgets[] = {1.0, 2.0};
  const int *thr = quick ? quick_threads : all_threads;
  const uint32_t *rd = quick ? quick_readers : all_readers;
  const double *bx = quick ? quick_budgets : all_budgets;
  int n_thr = quick ? 2 : 4, n_rd = quick ? 2 : 4, n_bx = quick ? 2 : 4;
  int configs = 0;
  for (uint32_t io = PAGER_IO_PREAD; io <= PAGER_IO_MMAP; io++)
    for (int a = 0; a < n_thr; a++)
      for (int b = 0; b < n_rd; b++)
        for (int c = 0; c < n_bx; c++) {
          run_config(argv[1], file, io, rd[b], thr[a], bx[c], (a + b + c) % 2, quick ? 2 : 3);
          configs++;
        }
  printf("readahead_stress: %d configurations swept\n", configs);
  free(file);
  return check_report("readahead_stress");
}
