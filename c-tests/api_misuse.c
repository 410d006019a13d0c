/* Every misuse in the contract gets its status, and nothing crashes:
 * NULLs, unknown names and ids, bad options, damaged files, double release,
 * stale copies, forged tickets, calls on a closed pager, release after close.
 *
 * usage: api_misuse MODEL.gguf SCRATCH_DIR */
#include <stddef.h>
#include <stdint.h>

#include "check.h"

static void write_prefix(const char *src, const char *dst, size_t keep) {
  size_t len = 0;
  unsigned char *buf = read_file(src, &len);
  FILE *f = fopen(dst, "wb");
  if (buf && f) fwrite(buf, 1, keep < len ? keep : len, f);
  if (f) fclose(f);
  free(buf);
}

static void statuses_and_version(void) {
  CHECK(strcmp(pager_status_string(PAGER_OK), "ok") == 0);
  CHECK(strcmp(pager_status_string(-1), "unknown status") == 0);
  CHECK(strcmp(pager_status_string(12), "unknown status") == 0);
  CHECK(strcmp(pager_status_string(PAGER_ERR_PANIC), "unknown status") != 0);
  CHECK(pager_last_error_message() != NULL);
  char want[64];
  snprintf(want, sizeof want, "%d.%d.%d", LAYERPAGER_VERSION_MAJOR, LAYERPAGER_VERSION_MINOR,
           LAYERPAGER_VERSION_PATCH);
  CHECK(strcmp(pager_version(), want) == 0);
  CHECK(strcmp(pager_version(), LAYERPAGER_VERSION_STRING) == 0);
  CHECK(sizeof(pager_status_t) == sizeof(int32_t));
}

static void nulls_everywhere(const char *model) {
  pager_t *p = (pager_t *)0x1;
  CHECK_STATUS(pager_open_gguf(NULL, NULL, &p), PAGER_ERR_INVALID_ARGUMENT);
  CHECK(p == NULL);
  CHECK_STATUS(pager_open_gguf(model, NULL, NULL), PAGER_ERR_INVALID_ARGUMENT);
  CHECK(strstr(pager_last_error_message(), "out is NULL") != NULL);
  CHECK_STATUS(pager_open_safetensors(NULL, NULL, &p), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_open_table(model, NULL, 3, NULL, &p), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_open_source(NULL, NULL, 0, NULL, &p), PAGER_ERR_INVALID_ARGUMENT);
  pager_options_default(NULL);
  pager_close(NULL);
  CHECK(pager_tensor_count(NULL) == 0);
  uint32_t id = 0;
  pager_tensor_t t;
  pager_tensor_info_t info;
  pager_stats_t s;
  pager_stats_init(&s);
  CHECK_STATUS(pager_find(NULL, "x", &id), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_tensor_info(NULL, 0, &info), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_acquire(NULL, 0, &t), PAGER_ERR_INVALID_ARGUMENT);
  CHECK(t.data == NULL);
  CHECK_STATUS(pager_acquire_by_name(NULL, "x", &t), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_release(NULL, &t), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_pin(NULL, 0), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_unpin(NULL, 0), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_prefetch(NULL, 0), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_set_schedule(NULL, &id, 1), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_set_budget(NULL, 0), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_add_slice(NULL, 0, 0, 1, &id), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_split_experts(NULL, 0, 2, &id), PAGER_ERR_INVALID_ARGUMENT);
  const void *base = NULL;
  CHECK_STATUS(pager_place_slices(NULL, 0, &base), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_hint(NULL, &id, 1), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_get_stats(NULL, &s), PAGER_ERR_INVALID_ARGUMENT);
  size_t len = 7;
  char line[256];
  CHECK_STATUS(pager_describe(NULL, line, sizeof line, &len), PAGER_ERR_INVALID_ARGUMENT);
  CHECK(len == 7);
  /* The raw speed of a file: NULL path or out, a missing file; then a real
     one, with and without the depth. */
  double speed = -1;
  uint32_t depth = 0;
  CHECK_STATUS(pager_measure_read_speed(NULL, &speed, &depth), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_measure_read_speed(model, NULL, &depth), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_measure_read_speed("/nonexistent/model.gguf", &speed, &depth), PAGER_ERR_IO);
  CHECK(strstr(pager_last_error_message(), "nonexistent") != NULL);
  CHECK(speed == -1 && depth == 0);
  CHECK_OK(pager_measure_read_speed(model, &speed, &depth));
  CHECK(speed > 0 && (depth == 1 || depth == 2 || depth == 4 || depth == 8));
  CHECK_OK(pager_measure_read_speed(model, &speed, NULL));

  CHECK_OK(pager_open_gguf(model, NULL, &p));
  CHECK_STATUS(pager_describe(p, NULL, 4, &len), PAGER_ERR_INVALID_ARGUMENT);
  /* The length alone, then the line, then a truncated line. */
  CHECK_OK(pager_describe(p, NULL, 0, &len));
  CHECK(len > 20 && len < sizeof line);
  CHECK_OK(pager_describe(p, line, sizeof line, NULL));
  CHECK(strlen(line) == len && strstr(line, "io pread") != NULL && strstr(line, "unlimited") != NULL);
  memset(line, 'x', sizeof line);
  CHECK_OK(pager_describe(p, line, 6, &len));
  CHECK(strlen(line) == 5 && line[6] == 'x');
  CHECK_STATUS(pager_find(p, NULL, &id), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_find(p, "token_embd.weight", NULL), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_tensor_info(p, 0, NULL), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_acquire(p, 0, NULL), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_acquire_by_name(p, NULL, &t), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_release(p, NULL), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_set_schedule(p, NULL, 2), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_OK(pager_set_schedule(p, NULL, 0));
  CHECK_STATUS(pager_hint(p, NULL, 1), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_add_slice(p, 0, 0, 1, NULL), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_split_experts(p, 0, 2, NULL), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_place_slices(p, 0, NULL), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_get_stats(p, NULL), PAGER_ERR_INVALID_ARGUMENT);
  pager_close(p);
}

static void unknown_names_and_ids(const char *model) {
  pager_t *p = NULL;
  CHECK_OK(pager_open_gguf(model, NULL, &p));
  uint32_t id = 12345;
  CHECK_STATUS(pager_find(p, "blk.99.attn_q.weight", &id), PAGER_ERR_NOT_FOUND);
  CHECK(id == 12345);
  CHECK(strstr(pager_last_error_message(), "blk.99.attn_q.weight") != NULL);
  CHECK_STATUS(pager_find(p, "\xff\xfe", &id), PAGER_ERR_INVALID_ARGUMENT);
  uint32_t n = (uint32_t)pager_tensor_count(p);
  pager_tensor_t t;
  pager_tensor_info_t info;
  CHECK_STATUS(pager_acquire(p, n, &t), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_acquire(p, UINT32_MAX, &t), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_acquire_by_name(p, "nope", &t), PAGER_ERR_NOT_FOUND);
  CHECK_STATUS(pager_tensor_info(p, n, &info), PAGER_ERR_INVALID_ARGUMENT);
  CHECK(info.name == NULL && info.size == 0);
  CHECK_STATUS(pager_pin(p, n), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_unpin(p, 0), PAGER_ERR_INVALID_ARGUMENT); /* not pinned */
  CHECK_STATUS(pager_prefetch(p, n), PAGER_ERR_INVALID_ARGUMENT);
  uint32_t sched[2] = {0, n};
  CHECK_STATUS(pager_set_schedule(p, sched, 2), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_hint(p, sched, 2), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(pager_add_slice(p, 0, 0, UINT64_MAX, &id), PAGER_ERR_OUT_OF_BOUNDS);
  CHECK_STATUS(pager_split_experts(p, 0, 0, &id), PAGER_ERR_INVALID_ARGUMENT);
  /* Placement: an unknown parent, a slice as parent, a slice already resident. */
  const void *base = NULL, *again = NULL;
  CHECK_STATUS(pager_place_slices(p, n, &base), PAGER_ERR_INVALID_ARGUMENT);
  uint32_t slice = 0;
  CHECK_OK(pager_add_slice(p, 0, 0, 64, &slice));
  CHECK_STATUS(pager_place_slices(p, slice, &base), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_OK(pager_acquire(p, slice, &t));
  CHECK_STATUS(pager_place_slices(p, 0, &base), PAGER_ERR_INVALID_ARGUMENT);
  CHECK(base == NULL && strstr(pager_last_error_message(), "before the first acquire") != NULL);
  CHECK_OK(pager_release(p, &t));
  CHECK_OK(pager_place_slices(p, 1, &base));
  CHECK_OK(pager_place_slices(p, 1, &again));
  CHECK(base != NULL && base == again);
  pager_close(p);
}

static void bad_options(const char *model) {
  pager_options_t o;
  pager_t *p = (pager_t *)0x1;
  pager_options_default(&o);
  CHECK(o.struct_size == sizeof(pager_options_t));
  CHECK(o.alignment == 64 && o.policy == PAGER_POLICY_AUTO && o.io_mode == PAGER_IO_AUTO);
  CHECK(o.prefetch_threads == 1 && o.budget_bytes == 0 && o.wait_ms == 0 && o.allocator == NULL);
  CHECK(o.follow_memory == 0 && o.on_budget_change == NULL && o.budget_change_user_data == NULL);
  /* Following the memory limit needs a budget to follow it with. */
  o.follow_memory = 1;
  CHECK_STATUS(pager_open_gguf(model, &o, &p), PAGER_ERR_INVALID_ARGUMENT);
  CHECK(strstr(pager_last_error_message(), "follow_memory") != NULL);
  o.budget_bytes = PAGER_BUDGET_AUTO;
  CHECK_OK(pager_open_gguf(model, &o, &p));
  char line[256];
  CHECK_OK(pager_describe(p, line, sizeof line, NULL));
  CHECK(strstr(line, "follows the memory limit") != NULL);
  CHECK_OK(pager_set_budget(p, 64u << 20)); /* a new ceiling */
  pager_close(p);
  pager_options_default(&o);
  o.policy = 77;
  CHECK_STATUS(pager_open_gguf(model, &o, &p), PAGER_ERR_INVALID_ARGUMENT);
  CHECK(p == NULL);
  pager_options_default(&o);
  o.io_mode = 9;
  CHECK_STATUS(pager_open_gguf(model, &o, &p), PAGER_ERR_INVALID_ARGUMENT);
  pager_options_default(&o);
  o.alignment = 48;
  CHECK_STATUS(pager_open_gguf(model, &o, &p), PAGER_ERR_INVALID_ARGUMENT);
  pager_options_default(&o);
  o.struct_size = 0;
  CHECK_STATUS(pager_open_gguf(model, &o, &p), PAGER_ERR_INVALID_ARGUMENT);
  pager_allocator_t half = {NULL, NULL, NULL};
  pager_options_default(&o);
  o.allocator = &half;
  CHECK_STATUS(pager_open_gguf(model, &o, &p), PAGER_ERR_INVALID_ARGUMENT);
  /* An older, shorter struct: only budget_bytes is read past struct_size. */
  pager_options_default(&o);
  o.struct_size = 16;
  o.policy = 77; /* past the caller's struct: ignored */
  CHECK_OK(pager_open_gguf(model, &o, &p));
  pager_close(p);
}

static void damaged_files(const char *model, const char *scratch) {
  char path[4096];
  pager_t *p = (pager_t *)0x1;
  snprintf(path, sizeof path, "%s/does-not-exist.gguf", scratch);
  CHECK_STATUS(pager_open_gguf(path, NULL, &p), PAGER_ERR_IO);
  CHECK(p == NULL);
  CHECK(strstr(pager_last_error_message(), "errno 2") != NULL);
  CHECK_STATUS(pager_open_safetensors(model, NULL, &p), PAGER_ERR_FORMAT);
  size_t keeps[] = {0, 3, 4, 8, 16, 24, 100, 1000, 4000, 20000};
  for (size_t i = 0; i < sizeof keeps / sizeof keeps[0]; i++) {
    snprintf(path, sizeof path, "%s/truncated-%zu.gguf", scratch, keeps[i]);
    write_prefix(model, path, keeps[i]);
    pager_status_t st = pager_open_gguf(path, NULL, &p);
    CHECK(st == PAGER_ERR_FORMAT || st == PAGER_ERR_OUT_OF_BOUNDS);
    CHECK(p == NULL);
    CHECK(strlen(pager_last_error_message()) > 10);
  }
  /* A table entry past the end of the file. */
  pager_tensor_desc_t descs[2] = {{"a", 0, 16}, {"b", 16, UINT64_MAX / 2}};
  CHECK_STATUS(pager_open_table(model, descs, 2, NULL, &p), PAGER_ERR_OUT_OF_BOUNDS);
  pager_tensor_desc_t dup[2] = {{"a", 0, 16}, {"a", 16, 16}};
  CHECK_STATUS(pager_open_table(model, dup, 2, NULL, &p), PAGER_ERR_FORMAT);
  pager_tensor_desc_t unnamed[1] = {{NULL, 0, 16}};
  CHECK_STATUS(pager_open_table(model, unnamed, 1, NULL, &p), PAGER_ERR_INVALID_ARGUMENT);
}

static void handles(const char *model) {
  pager_options_t o;
  pager_options_default(&o);
  pager_t *p = NULL;
  CHECK_OK(pager_open_gguf(model, &o, &p));
  pager_tensor_t t, copy, t2;
  CHECK_OK(pager_acquire(p, 1, &t));
  copy = t;
  CHECK_OK(pager_release(p, &t));
  CHECK_STATUS(pager_release(p, &t), PAGER_ERR_INVALID_HANDLE);
  CHECK_STATUS(pager_release(p, &copy), PAGER_ERR_INVALID_HANDLE);
  CHECK_OK(pager_acquire(p, 1, &t2));
  CHECK_STATUS(pager_release(p, &copy), PAGER_ERR_INVALID_HANDLE); /* stale copy, tensor re-acquired */
  pager_tensor_t forged = t2;
  forged.ticket ^= 0x5a5a;
  CHECK_STATUS(pager_release(p, &forged), PAGER_ERR_INVALID_HANDLE);
  forged = t2;
  forged.id = 2;
  CHECK_STATUS(pager_release(p, &forged), PAGER_ERR_INVALID_HANDLE);

  /* A ticket of another pager. */
  pager_t *q = NULL;
  CHECK_OK(pager_open_gguf(model, &o, &q));
  CHECK_STATUS(pager_release(q, &t2), PAGER_ERR_INVALID_HANDLE);
  pager_close(q);

  /* Close with an acquisition outstanding: bytes stay valid, calls refuse. */
  unsigned char first = ((const unsigned char *)t2.data)[0];
  pager_close(p);
  pager_close(p); /* twice: nothing */
  CHECK(((const unsigned char *)t2.data)[0] == first);
  uint32_t id;
  pager_tensor_t t3;
  pager_stats_t s;
  pager_stats_init(&s);
  CHECK_STATUS(pager_acquire(p, 0, &t3), PAGER_ERR_CLOSED);
  CHECK_STATUS(pager_find(p, "token_embd.weight", &id), PAGER_ERR_CLOSED);
  CHECK_STATUS(pager_get_stats(p, &s), PAGER_ERR_CLOSED);
  CHECK_STATUS(pager_pin(p, 0), PAGER_ERR_CLOSED);
  CHECK_STATUS(pager_set_budget(p, 1), PAGER_ERR_CLOSED);
  CHECK(pager_tensor_count(p) == 0);
  CHECK_OK(pager_release(p, &t2)); /* the last release frees the pager */
  /* The freed pager's handle stays a tombstone: calls get statuses. */
  CHECK_STATUS(pager_release(p, &t2), PAGER_ERR_INVALID_HANDLE);
  CHECK_STATUS(pager_acquire(p, 0, &t3), PAGER_ERR_CLOSED);
  pager_close(p);

  /* A pointer that is not a pager. */
  uint64_t junk[16] = {0};
  CHECK_STATUS(pager_acquire((pager_t *)junk, 0, &t3), PAGER_ERR_INVALID_HANDLE);
  CHECK_STATUS(pager_acquire((pager_t *)((char *)junk + 1), 0, &t3), PAGER_ERR_INVALID_HANDLE);
}

static void budget_rules(const char *model) {
  pager_options_t o;
  pager_options_default(&o);
  pager_t *p = NULL;
  CHECK_OK(pager_open_gguf(model, &o, &p));
  pager_tensor_info_t a, b;
  CHECK_OK(pager_tensor_info(p, 1, &a));
  CHECK_OK(pager_tensor_info(p, 2, &b));
  pager_close(p);
  o.budget_bytes = a.size + b.size - 1;
  o.wait_ms = 20;
  o.prefetch_threads = 0; /* exact miss counts below */
  /* Charges of exactly the tensors' sizes (O_DIRECT, the default under a
     budget, charges whole pages). */
  o.io_mode = PAGER_IO_PREAD;
  CHECK_OK(pager_open_gguf(model, &o, &p));
  pager_tensor_t ta, tb;
  CHECK_OK(pager_acquire(p, 1, &ta));
  CHECK_STATUS(pager_acquire(p, 2, &tb), PAGER_ERR_TIMEOUT);
  CHECK(tb.data == NULL);
  CHECK_STATUS(pager_pin(p, 3), PAGER_ERR_TIMEOUT);
  CHECK_OK(pager_release(p, &ta));
  CHECK_OK(pager_acquire(p, 2, &tb));
  CHECK_OK(pager_release(p, &tb));
  CHECK_OK(pager_set_budget(p, 0));
  pager_stats_t s;
  pager_stats_init(&s);
  CHECK_OK(pager_get_stats(p, &s));
  CHECK(s.budget_bytes == 0 && s.misses == 3 && s.in_use_bytes == 0);
  CHECK_OK(pager_set_budget(p, 1));
  CHECK_STATUS(pager_acquire(p, 1, &ta), PAGER_ERR_BUDGET);
  pager_close(p);
}

/* pager_read: a range of a tensor into the caller's memory, resident or
 * not, with its misuses refused. */
static void ranges(const char *model) {
  pager_options_t o;
  pager_options_default(&o);
  o.prefetch_threads = 0;
  pager_t *p = NULL;
  CHECK_OK(pager_open_gguf(model, &o, &p));
  if (!p) return;
  pager_tensor_info_t info;
  CHECK_OK(pager_tensor_info(p, 1, &info));
  unsigned char row[64];
  CHECK_STATUS(pager_read(p, 1, 0, NULL, sizeof row), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_OK(pager_read(p, 1, 0, NULL, 0));
  CHECK_STATUS(pager_read(p, 1, info.size - 10, row, sizeof row), PAGER_ERR_OUT_OF_BOUNDS);
  CHECK_STATUS(pager_read(p, 1, UINT64_MAX - 8, row, sizeof row), PAGER_ERR_OUT_OF_BOUNDS);
  CHECK_STATUS(pager_read(p, 999999, 0, row, sizeof row), PAGER_ERR_INVALID_ARGUMENT);
  CHECK_OK(pager_read(p, 1, 16, row, sizeof row));
  pager_stats_t s;
  pager_stats_init(&s);
  CHECK_OK(pager_get_stats(p, &s));
  CHECK(s.resident_bytes == 0 && s.bytes_read == sizeof row);
  /* The stats are versioned: an unset struct_size is refused, a caller
   * built against an older, shorter struct gets only what it holds. */
  pager_stats_t unset;
  memset(&unset, 0, sizeof unset);
  CHECK_STATUS(pager_get_stats(p, &unset), PAGER_ERR_INVALID_ARGUMENT);
  pager_stats_t older;
  memset(&older, 0xAB, sizeof older);
  older.struct_size = (uint32_t)offsetof(pager_stats_t, bytes_read);
  CHECK_OK(pager_get_stats(p, &older));
  CHECK(older.struct_size == offsetof(pager_stats_t, bytes_read) && older.misses == s.misses);
  pager_stats_init(NULL);
  CHECK(older.bytes_read == 0xABABABABABABABABull && older.wait_ns == 0xABABABABABABABABull);
  pager_tensor_t t;
  CHECK_OK(pager_acquire(p, 1, &t));
  if (t.data) CHECK(memcmp(row, (const unsigned char *)t.data + 16, sizeof row) == 0);
  CHECK_OK(pager_release(p, &t));
  pager_close(p);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL.gguf SCRATCH_DIR\n", argv[0]);
    return 2;
  }
  statuses_and_version();
  nulls_everywhere(argv[1]);
  unknown_names_and_ids(argv[1]);
  bad_options(argv[1]);
  damaged_files(argv[1], argv[2]);
  handles(argv[1]);
  budget_rules(argv[1]);
  ranges(argv[1]);
  return check_report("api_misuse");
}
