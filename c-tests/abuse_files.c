/* Opens every file in a directory of damaged models with both openers and
 * every io mode; an accepted file has each tensor acquired and released.
 * Every call must answer with a status; AddressSanitizer and valgrind watch.
 *
 * usage: abuse_files DIR */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <stdint.h>

#include "check.h"

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  DIR *dir = opendir(argv[1]);
  if (!dir) return 2;
  struct dirent *e;
  int files = 0, accepted = 0;
  const uint32_t modes[] = {PAGER_IO_PREAD, PAGER_IO_DIRECT, PAGER_IO_MMAP};
  while ((e = readdir(dir)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
    files++;
    for (int m = 0; m < 3; m++) {
      for (int kind = 0; kind < 2; kind++) {
        pager_options_t o;
        pager_options_default(&o);
        o.io_mode = modes[m];
        o.budget_bytes = 1 << 20;
        o.prefetch_threads = (uint32_t)m; /* 0, 1 and 2 readers */
        pager_t *p = (pager_t *)0x1;
        pager_status_t st = kind ? pager_open_safetensors(path, &o, &p) : pager_open_gguf(path, &o, &p);
        if (st != PAGER_OK) {
          CHECK(p == NULL);
          CHECK(st == PAGER_ERR_FORMAT || st == PAGER_ERR_OUT_OF_BOUNDS || st == PAGER_ERR_IO);
          CHECK(strlen(pager_last_error_message()) > 0);
          continue;
        }
        accepted++;
        size_t n = pager_tensor_count(p);
        for (uint32_t id = 0; id < n; id++) {
          pager_tensor_t t;
          st = pager_acquire(p, id, &t);
          CHECK(st == PAGER_OK || st == PAGER_ERR_BUDGET);
          if (st == PAGER_OK) CHECK_OK(pager_release(p, &t));
        }
        pager_close(p);
      }
    }
  }
  closedir(dir);
  printf("abuse_files: %d files, %d opens accepted\n", files, accepted);
  CHECK(files >= 100);
  return check_report("abuse_files");
}
