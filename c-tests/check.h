/* Tiny assertion helpers shared by the C tests. */
#ifndef LAYERPAGER_C_TESTS_CHECK_H
#define LAYERPAGER_C_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layerpager.h"

static int check_failures = 0;

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,      \
              __LINE__, #cond, pager_last_error_message());                        \
      check_failures++;                                                             \
    }                                                                               \
  } while (0)

#define CHECK_STATUS(expr, want)                                                    \
  do {                                                                              \
    pager_status_t got_ = (expr);                                                   \
    if (got_ != (want)) {                                                           \
      fprintf(stderr, "%s:%d: %s returned %d (%s), expected %s (last error: %s)\n", \
              __FILE__, __LINE__, #expr, (int)got_, pager_status_string(got_),      \
              #want, pager_last_error_message());                                   \
      check_failures++;                                                             \
    }                                                                               \
  } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, PAGER_OK)

static inline int check_report(const char *name) {
  if (check_failures) {
    fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);
    return 1;
  }
  printf("%s: all checks passed\n", name);
  return 0;
}

/* Reads a whole file into a malloc'd buffer; *len gets its size. */
static inline unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = (unsigned char *)malloc(n > 0 ? (size_t)n : 1);
  if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

#endif
