/* A C engine built with: cc main.c $(pkg-config --cflags --libs layerpager) */
#include <stdio.h>

#include <layerpager.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
    return 2;
  }
  pager_options_t opts;
  pager_options_default(&opts);
  opts.budget_bytes = 256u << 20;
  pager_t *pager = NULL;
  pager_status_t st = pager_open_gguf(argv[1], &opts, &pager);
  if (st != PAGER_OK) {
    fprintf(stderr, "open: %s: %s\n", pager_status_string(st), pager_last_error_message());
    return 1;
  }
  pager_tensor_t w;
  st = pager_acquire_by_name(pager, "token_embd.weight", &w);
  if (st != PAGER_OK) {
    fprintf(stderr, "acquire: %s: %s\n", pager_status_string(st), pager_last_error_message());
    pager_close(pager);
    return 1;
  }
  printf("pkg-config demo: layerpager %s, token_embd.weight is %llu bytes\n", pager_version(),
         (unsigned long long)w.size);
  pager_release(pager, &w);
  pager_close(pager);
  return 0;
}
