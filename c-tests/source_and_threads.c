/* An engine with its own byte source and allocator (pinned host memory in
 * real life), and several threads acquiring from one pager.
 *
 * usage: source_and_threads MODEL.gguf */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>

#include "check.h"

#define N_TENSORS 16
#define TENSOR_BYTES 4096

typedef struct {
  unsigned char *bytes;
  size_t len;
  int destroyed;
  int fail_errno;
} memory_source;

static int memory_read_at(void *user, uint64_t offset, void *dst, size_t len) {
  memory_source *m = (memory_source *)user;
  if (m->fail_errno) return m->fail_errno;
  if (offset + len > m->len) return 34; /* ERANGE */
  memcpy(dst, m->bytes + offset, len);
  return 0;
}

static void memory_destroy(void *user) { ((memory_source *)user)->destroyed++; }

typedef struct {
  pthread_mutex_t lock;
  long live_blocks;
  long total_allocs;
} counting_allocator;

static void *counting_alloc(void *user, size_t size, size_t alignment) {
  counting_allocator *a = (counting_allocator *)user;
  void *p = NULL;
  if (posix_memalign(&p, alignment < sizeof(void *) ? sizeof(void *) : alignment, size) != 0) return NULL;
  pthread_mutex_lock(&a->lock);
  a->live_blocks++;
  a->total_allocs++;
  pthread_mutex_unlock(&a->lock);
  return p;
}

static void counting_free(void *user, void *ptr, size_t size) {
  counting_allocator *a = (counting_allocator *)user;
  (void)size;
  free(ptr);
  pthread_mutex_lock(&a->lock);
  a->live_blocks--;
  pthread_mutex_unlock(&a->lock);
}

static unsigned char expected_byte(size_t i) { return (unsigned char)(i * 7 + (i >> 9)); }

typedef struct {
  pager_t *pager;
  unsigned seed;
  int failures;
} worker_args;

static void *worker(void *arg) {
  worker_args *w = (worker_args *)arg;
  for (int i = 0; i < 2000; i++) {
    w->seed = w->seed * 1103515245u + 12345u;
    uint32_t id = (w->seed >> 16) % N_TENSORS;
    pager_tensor_t t;
    pager_status_t st = pager_acquire(w->pager, id, &t);
    if (st == PAGER_ERR_BUDGET || st == PAGER_ERR_TIMEOUT) continue;
    if (st != PAGER_OK) {
      w->failures++;
      continue;
    }
    const unsigned char *b = (const unsigned char *)t.data;
    for (size_t k = 0; k < t.size; k += 511)
      if (b[k] != expected_byte((size_t)id * TENSOR_BYTES + k)) w->failures++;
    if (pager_release(w->pager, &t) != PAGER_OK) w->failures++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
    return 2;
  }
  memory_source mem;
  memset(&mem, 0, sizeof mem);
  mem.len = (size_t)N_TENSORS * TENSOR_BYTES;
  mem.bytes = (unsigned char *)malloc(mem.len);
  for (size_t i = 0; i < mem.len; i++) mem.bytes[i] = expected_byte(i);

  pager_tensor_desc_t descs[N_TENSORS];
  char names[N_TENSORS][32];
  for (int i = 0; i < N_TENSORS; i++) {
    snprintf(names[i], sizeof names[i], "blk.%d.weight", i);
    descs[i].name = names[i];
    descs[i].offset = (uint64_t)i * TENSOR_BYTES;
    descs[i].size = TENSOR_BYTES;
  }
  pager_source_t src = {&mem, mem.len, memory_read_at, memory_destroy};
  counting_allocator alloc_state = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
  pager_allocator_t alloc = {&alloc_state, counting_alloc, counting_free};

  pager_options_t o;
  pager_options_default(&o);
  o.budget_bytes = 6 * TENSOR_BYTES;
  o.allocator = &alloc;
  o.wait_ms = 5;
  o.prefetch_threads = 2;
  o.alignment = 256;
  pager_t *p = NULL;
  /* A failing source (from the start, so that read-ahead fails too): the
   * acquire reports the errno, the next one retries. */
  mem.fail_errno = 5;
  CHECK_OK(pager_open_source(&src, descs, N_TENSORS, &o, &p));
  if (!p) return check_report("source_and_threads");
  CHECK(pager_tensor_count(p) == N_TENSORS);
  pager_tensor_t t;
  CHECK_STATUS(pager_acquire_by_name(p, "blk.3.weight", &t), PAGER_ERR_IO);
  CHECK(strstr(pager_last_error_message(), "errno 5") != NULL);
  mem.fail_errno = 0;
  CHECK_OK(pager_acquire_by_name(p, "blk.3.weight", &t));
  CHECK(((uintptr_t)t.data % 256) == 0);
  CHECK(((const unsigned char *)t.data)[5] == expected_byte(3 * TENSOR_BYTES + 5));
  CHECK_OK(pager_release(p, &t));

  uint32_t schedule[N_TENSORS];
  for (uint32_t i = 0; i < N_TENSORS; i++) schedule[i] = i;
  CHECK_OK(pager_set_schedule(p, schedule, N_TENSORS));

  pthread_t threads[4];
  worker_args args[4];
  for (int i = 0; i < 4; i++) {
    args[i].pager = p;
    args[i].seed = (unsigned)i * 977u + 1u;
    args[i].failures = 0;
    pthread_create(&threads[i], NULL, worker, &args[i]);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(threads[i], NULL);
    CHECK(args[i].failures == 0);
  }
  pager_stats_t s;
  pager_stats_init(&s);
  CHECK_OK(pager_get_stats(p, &s));
  CHECK(s.peak_resident_bytes <= o.budget_bytes);
  CHECK(s.in_use_bytes == 0);
  CHECK(s.hits + s.misses > 0);

  /* Experts as slices. */
  uint32_t first = 0;
  CHECK_OK(pager_split_experts(p, 5, 4, &first));
  CHECK(first == N_TENSORS);
  CHECK(pager_tensor_count(p) == N_TENSORS + 4);
  pager_tensor_info_t info;
  CHECK_OK(pager_tensor_info(p, first + 2, &info));
  CHECK(strcmp(info.name, "blk.5.weight#2") == 0);
  CHECK(info.size == TENSOR_BYTES / 4);
  CHECK(info.ggml_type == UINT32_MAX);
  uint32_t hints[2] = {first + 1, first + 2};
  CHECK_OK(pager_hint(p, hints, 2));
  CHECK_OK(pager_acquire(p, first + 2, &t));
  CHECK(((const unsigned char *)t.data)[0] == expected_byte(5 * TENSOR_BYTES + 2 * TENSOR_BYTES / 4));
  CHECK_OK(pager_release(p, &t));

  CHECK(mem.destroyed == 0);
  pager_close(p);
  CHECK(mem.destroyed == 1);
  CHECK(alloc_state.live_blocks == 0);
  CHECK(alloc_state.total_allocs > 0);
  /* Tensors are carved from a few chunks of the engine's allocator (pinned
   * memory is slow to allocate), not one allocation per miss. */
  CHECK(alloc_state.total_allocs <= 8);

  /* The same bytes through a file and an explicit table. */
  pager_tensor_desc_t file_descs[2] = {{"magic", 0, 4}, {"rest", 4, 60}};
  CHECK_OK(pager_open_table(argv[1], file_descs, 2, NULL, &p));
  CHECK_OK(pager_acquire_by_name(p, "magic", &t));
  CHECK(memcmp(t.data, "GGUF", 4) == 0);
  CHECK_OK(pager_release(p, &t));
  pager_close(p);
  free(mem.bytes);
  return check_report("source_and_threads");
}
