/* Threads acquiring, releasing, pinning and reading stats while the main
 * thread closes the pager: every call answers with a status, acquisitions
 * held across the close stay readable until released, and the pager is
 * freed exactly once (AddressSanitizer and valgrind watch). Then many
 * open/close cycles, which must not leak.
 *
 * usage: close_race MODEL.gguf */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "check.h"

typedef struct {
  pager_t *pager;
  unsigned seed;
  int unexpected;
  long calls;
} worker_args;

static void *worker(void *arg) {
  worker_args *w = (worker_args *)arg;
  uint32_t n = 39;
  pager_tensor_t held[4];
  int n_held = 0;
  for (;;) {
    w->seed = w->seed * 1103515245u + 12345u;
    uint32_t id = (w->seed >> 16) % n;
    pager_status_t st;
    switch ((w->seed >> 8) % 5) {
      case 0:
      case 1:
        if (n_held < 4) {
          st = pager_acquire(w->pager, id, &held[n_held]);
          if (st == PAGER_OK) {
            volatile unsigned char b = ((const unsigned char *)held[n_held].data)[0];
            (void)b;
            n_held++;
          } else if (st != PAGER_ERR_CLOSED && st != PAGER_ERR_BUDGET && st != PAGER_ERR_TIMEOUT) {
            w->unexpected++;
          }
        }
        break;
      case 2:
        if (n_held > 0) {
          n_held--;
          /* Valid after close too: the acquisition keeps the pager alive. */
          if (pager_release(w->pager, &held[n_held]) != PAGER_OK) w->unexpected++;
        }
        break;
      case 3: {
        pager_stats_t s;
        pager_stats_init(&s);
        st = pager_get_stats(w->pager, &s);
        if (st != PAGER_OK && st != PAGER_ERR_CLOSED) w->unexpected++;
        break;
      }
      default:
        st = pager_prefetch(w->pager, id);
        if (st != PAGER_OK && st != PAGER_ERR_CLOSED) w->unexpected++;
    }
    w->calls++;
    if (w->calls > 2000 && pager_tensor_count(w->pager) == 0) break; /* closed */
  }
  for (int i = 0; i < n_held; i++) {
    volatile unsigned char b = ((const unsigned char *)held[i].data)[held[i].size - 1];
    (void)b;
    if (pager_release(w->pager, &held[i]) != PAGER_OK) w->unexpected++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  for (int round = 0; round < 3; round++) {
    pager_options_t o;
    pager_options_default(&o);
    o.budget_bytes = 400000;
    o.wait_ms = 2;
    pager_t *p = NULL;
    CHECK_OK(pager_open_gguf(argv[1], &o, &p));
    if (!p) break;
    pthread_t threads[3];
    worker_args args[3];
    for (int i = 0; i < 3; i++) {
      args[i].pager = p;
      args[i].seed = (unsigned)(round * 31 + i + 1);
      args[i].unexpected = 0;
      args[i].calls = 0;
      pthread_create(&threads[i], NULL, worker, &args[i]);
    }
    struct timespec pause = {0, 20 * 1000 * 1000};
    nanosleep(&pause, NULL);
    pager_close(p);
    for (int i = 0; i < 3; i++) {
      pthread_join(threads[i], NULL);
      CHECK(args[i].unexpected == 0);
      CHECK(args[i].calls > 2000);
    }
    /* Freed now: the handle answers, nothing is touched. */
    pager_tensor_t t;
    CHECK_STATUS(pager_acquire(p, 0, &t), PAGER_ERR_CLOSED);
    memset(&t, 0, sizeof t);
    CHECK_STATUS(pager_release(p, &t), PAGER_ERR_INVALID_HANDLE);
  }
  for (int i = 0; i < 200; i++) {
    pager_t *p = NULL;
    CHECK_OK(pager_open_gguf(argv[1], NULL, &p));
    pager_tensor_t t;
    CHECK_OK(pager_acquire(p, (uint32_t)(i % 39), &t));
    if (i % 2) {
      CHECK_OK(pager_release(p, &t));
      pager_close(p);
    } else {
      pager_close(p);
      CHECK_OK(pager_release(p, &t));
    }
  }
  return check_report("close_race");
}
