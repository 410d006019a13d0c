/* Expert slices under stress, as an engine would break them: a model of 8
 * layers, each with two dense tensors and three merged expert tensors of 64
 * experts (1,536 slices of 4,000 bytes: not a page multiple, so O_DIRECT
 * rounds and pages are shared by neighbours), every merged tensor split.
 * 1, 2 and 4 engine threads x 0, 1 and 2 readers x every io mode x budgets
 * from a few slices to half the model: each thread acquires random experts
 * and dense tensors, hints the next layer's experts every few acquires,
 * checks every byte, and checks that the resident bytes never pass the
 * budget. With wait_ms set, no acquire may fail; with many slices resident
 * the victims are sampled, which this also covers. Every run is made twice:
 * with the slices in buffers of their own, and placed in their parents'
 * windows (pager_place_slices), where each acquired expert must sit at
 * base + e * SLICE and neighbours share pages.
 *
 * usage: moe_stress SCRATCH_DIR [quick] */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define LAYERS 8u
#define EXPERTS 64u
#define PARTS 3u
#define DENSE 2u
#define SLICE 4000u
#define DENSE_SIZE 6000u
#define PERIOD 251u

static unsigned char byte_at(uint64_t o) { return (unsigned char)((o % PERIOD) * 7u % PERIOD); }
static unsigned char pattern[DENSE_SIZE + PERIOD];

typedef struct {
  pager_t *pager;
  uint32_t first[LAYERS * PARTS];
  uint32_t dense[LAYERS * DENSE];
  uint64_t offset[LAYERS * (DENSE + PARTS) + LAYERS * PARTS * EXPERTS];
  /* Where each slice must be handed out when placed, else NULL. */
  const unsigned char *place[LAYERS * (DENSE + PARTS) + LAYERS * PARTS * EXPERTS];
  uint64_t budget;
} model_t;

typedef struct {
  model_t *m;
  uint32_t seed, n;
  unsigned long failures, wrong, over;
} worker_t;

static uint32_t next(uint32_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 17;
  *x ^= *x << 5;
  return *x;
}

static void *work(void *arg) {
  worker_t *w = arg;
  model_t *m = w->m;
  uint32_t x = w->seed;
  for (uint32_t i = 0; i < w->n; i++) {
    uint32_t layer = next(&x) % LAYERS, id, size;
    if (next(&x) % 4 == 0) {
      id = m->dense[layer * DENSE + next(&x) % DENSE];
      size = DENSE_SIZE;
    } else {
      id = m->first[layer * PARTS + next(&x) % PARTS] + next(&x) % EXPERTS;
      size = SLICE;
    }
    if (i % 5 == 0) {
      uint32_t lp = ((layer + 1) % LAYERS) * PARTS + next(&x) % PARTS;
      uint32_t hint[2] = {m->first[lp] + next(&x) % EXPERTS, m->first[lp] + next(&x) % EXPERTS};
      if (pager_hint(m->pager, hint, 2) != PAGER_OK) w->failures++;
    }
    pager_tensor_t t;
    if (pager_acquire(m->pager, id, &t) != PAGER_OK) {
      fprintf(stderr, "acquire %u: %s\n", id, pager_last_error_message());
      w->failures++;
      continue;
    }
    if (t.size != size || memcmp(t.data, pattern + m->offset[id] % PERIOD, size) != 0) w->wrong++;
    if (m->place[id] && (const unsigned char *)t.data != m->place[id]) w->wrong++;
    pager_stats_t s;
    pager_stats_init(&s);
    if (pager_get_stats(m->pager, &s) != PAGER_OK || (m->budget && s.resident_bytes > m->budget)) w->over++;
    if (pager_release(m->pager, &t) != PAGER_OK) w->failures++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int quick = argc > 2 && strcmp(argv[2], "quick") == 0;
  for (uint32_t i = 0; i < sizeof pattern; i++) pattern[i] = byte_at(i);
  char path[4096];
  snprintf(path, sizeof path, "%s/moe_stress.bin", argv[1]);
  enum { N = LAYERS * (DENSE + PARTS) };
  static pager_tensor_desc_t descs[N];
  static char names[N][64];
  static model_t m;
  uint64_t offset = 0;
  for (uint32_t l = 0; l < LAYERS; l++)
    for (uint32_t k = 0; k < DENSE + PARTS; k++) {
      uint32_t i = l * (DENSE + PARTS) + k;
      uint64_t size = k < DENSE ? DENSE_SIZE : (uint64_t)SLICE * EXPERTS;
      if (k < DENSE)
        snprintf(names[i], sizeof names[i], "blk.%u.attn_%u.weight", l, k);
      else
        snprintf(names[i], sizeof names[i], "blk.%u.ffn_%u_exps.weight", l, k - DENSE);
      descs[i] = (pager_tensor_desc_t){names[i], offset, size};
      m.offset[i] = offset;
      offset += size;
    }
  FILE *f = fopen(path, "wb");
  CHECK(f != NULL);
  if (!f) return 1;
  for (uint64_t o = 0; o < offset; o++) fputc(byte_at(o), f);
  fclose(f);

  const uint32_t io_modes[] = {PAGER_IO_AUTO, PAGER_IO_PREAD, PAGER_IO_DIRECT, PAGER_IO_MMAP};
  const uint32_t threads[] = {1, 2, 4};
  const uint32_t readers[] = {0, 1, 2};
  /* Budgets: room for a few slices per thread (page-rounded under
   * O_DIRECT), then a quarter and half of the model. */
  const uint64_t budgets[] = {24 * 4096, offset / 4, offset / 2};
  unsigned runs = 0;
  for (unsigned io = 0; io < sizeof io_modes / sizeof *io_modes; io++)
    for (unsigned t = 0; t < sizeof threads / sizeof *threads; t++)
      for (unsigned r = 0; r < sizeof readers / sizeof *readers; r++)
        for (unsigned b = 0; b < sizeof budgets / sizeof *budgets; b++)
          for (unsigned placed = 0; placed < 2; placed++) {
            if (quick && (t != 1 || r == 2)) continue;
            pager_options_t o;
            pager_options_default(&o);
            o.io_mode = io_modes[io];
            o.prefetch_threads = readers[r];
            o.budget_bytes = budgets[b];
            o.wait_ms = 5000;
            m.budget = budgets[b];
            m.pager = NULL;
            CHECK_OK(pager_open_table(path, descs, N, &o, &m.pager));
            if (!m.pager) continue;
            for (uint32_t l = 0; l < LAYERS; l++) {
              for (uint32_t k = 0; k < DENSE; k++) m.dense[l * DENSE + k] = l * (DENSE + PARTS) + k;
              for (uint32_t p = 0; p < PARTS; p++) {
                uint32_t parent = l * (DENSE + PARTS) + DENSE + p, first = 0;
                CHECK_OK(pager_split_experts(m.pager, parent, EXPERTS, &first));
                m.first[l * PARTS + p] = first;
                const void *base = NULL;
                if (placed) CHECK_OK(pager_place_slices(m.pager, parent, &base));
                for (uint32_t e = 0; e < EXPERTS; e++) {
                  m.offset[first + e] = m.offset[parent] + (uint64_t)e * SLICE;
                  m.place[first + e] = base ? (const unsigned char *)base + (uint64_t)e * SLICE : NULL;
                }
              }
            }
            pthread_t th[4];
            worker_t w[4];
            for (uint32_t i = 0; i < threads[t]; i++) {
              w[i] = (worker_t){&m, 0x2545f491u * (i + 1) + runs, quick ? 1500 : 3000, 0, 0, 0};
              pthread_create(&th[i], NULL, work, &w[i]);
            }
            unsigned long failures = 0, wrong = 0, over = 0;
            for (uint32_t i = 0; i < threads[t]; i++) {
              pthread_join(th[i], NULL);
              failures += w[i].failures;
              wrong += w[i].wrong;
              over += w[i].over;
            }
            if (failures || wrong || over)
              fprintf(stderr, "io %u, %u threads, %u readers, budget %llu%s: %lu failed, %lu wrong, %lu over budget\n",
                      io_modes[io], threads[t], readers[r], (unsigned long long)budgets[b], placed ? ", placed" : "",
                      failures, wrong, over);
            CHECK(failures == 0 && wrong == 0 && over == 0);
            pager_stats_t s;
            pager_stats_init(&s);
            CHECK_OK(pager_get_stats(m.pager, &s));
            CHECK(s.in_use_bytes == 0);
            pager_close(m.pager);
            runs++;
          }
  remove(path);
  printf("moe_stress: %u runs\n", runs);
  return check_failures ? 1 : 0;
}
