/* The header included twice in one translation unit and in two translation
 * units of one binary (with double_include_b.c): no duplicate definitions. */
#include "layerpager.h"
#include "layerpager.h"

#include <stdio.h>
#include <string.h>

const char *version_from_b(void);

int main(void) {
  pager_options_t opts;
  pager_options_default(&opts);
  if (strcmp(version_from_b(), pager_version()) != 0 || opts.alignment != 64) {
    fprintf(stderr, "double_include: mismatch\n");
    return 1;
  }
  printf("double_include: all checks passed\n");
  return 0;
}
