/* An engine reading every tensor of a model, twice, in each io mode, under a
 * budget of twice the largest tensor, and checking each byte against what
 * llama.cpp's own gguf reader read (MODEL.expected/<id>.bin).
 *
 * usage: engine_reads_model MODEL gguf|safetensors */
#include <stdint.h>

#include "check.h"

static pager_status_t open_model(const char *path, int safetensors, const pager_options_t *o, pager_t **p) {
  return safetensors ? pager_open_safetensors(path, o, p) : pager_open_gguf(path, o, p);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL gguf|safetensors\n", argv[0]);
    return 2;
  }
  const char *model = argv[1];
  int safetensors = strcmp(argv[2], "safetensors") == 0;

  /* Find the largest tensor with an unbudgeted pager. */
  pager_t *p = NULL;
  CHECK_OK(open_model(model, safetensors, NULL, &p));
  if (!p) return check_report("engine_reads_model");
  size_t n = pager_tensor_count(p);
  CHECK(n > 0);
  uint64_t largest = 0;
  for (uint32_t id = 0; id < n; id++) {
    pager_tensor_info_t info;
    CHECK_OK(pager_tensor_info(p, id, &info));
    if (info.size > largest) largest = info.size;
    uint32_t found = UINT32_MAX;
    CHECK_OK(pager_find(p, info.name, &found));
    CHECK(found == id);
  }
  pager_close(p);

  const uint32_t modes[] = {PAGER_IO_PREAD, PAGER_IO_DIRECT, PAGER_IO_MMAP};
  for (int m = 0; m < 3; m++) {
    pager_options_t opts;
    pager_options_default(&opts);
    opts.budget_bytes = 2 * largest + 8192; /* O_DIRECT rounds reads to 4 KiB pages */
    opts.io_mode = modes[m];
    opts.prefetch_threads = 1;
    p = NULL;
    CHECK_OK(open_model(model, safetensors, &opts, &p));
    if (!p) continue;
    for (int pass = 0; pass < 2; pass++) {
      for (uint32_t id = 0; id < n; id++) {
        if (id + 1 < n) CHECK_OK(pager_prefetch(p, id + 1));
        pager_tensor_t t;
        CHECK_OK(pager_acquire(p, id, &t));
        CHECK(((uintptr_t)t.data % 64) == 0);
        char path[4096];
        snprintf(path, sizeof path, "%s.expected/%u.bin", model, id);
        size_t len = 0;
        unsigned char *want = read_file(path, &len);
        CHECK(want != NULL);
        CHECK(len == t.size);
        if (want && len == t.size && memcmp(want, t.data, len) != 0) {
          fprintf(stderr, "mode %u pass %d: tensor %u differs from the reference reader\n", modes[m], pass, id);
          check_failures++;
        }
        free(want);
        CHECK_OK(pager_release(p, &t));
        CHECK(t.data == NULL && t.ticket == 0);
        pager_stats_t s;
        pager_stats_init(&s);
        CHECK_OK(pager_get_stats(p, &s));
        CHECK(s.resident_bytes <= opts.budget_bytes);
      }
    }
    pager_stats_t s;
    pager_stats_init(&s);
    CHECK_OK(pager_get_stats(p, &s));
    CHECK(s.hits + s.misses == 2 * n);
    CHECK(s.peak_resident_bytes <= opts.budget_bytes);
    CHECK(s.in_use_bytes == 0);
    CHECK(s.budget_bytes == opts.budget_bytes);
    pager_close(p);
  }
  return check_report("engine_reads_model");
}
