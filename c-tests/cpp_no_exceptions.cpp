// The wrapper in an engine built with -fno-exceptions: only the
// non-throwing forms exist, and they carry status and message.
//
// usage: cpp_no_exceptions MODEL.gguf
#include <cstdio>

#include "layerpager.hpp"

static_assert(LAYERPAGER_HAS_EXCEPTIONS == 0, "build this test with -fno-exceptions");

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  layerpager::Pager pager;
  layerpager::Status s = layerpager::Pager::try_open_gguf(argv[1], layerpager::Options(), &pager);
  if (!s) {
    std::fprintf(stderr, "open: %s: %s\n", s.name(), s.message().c_str());
    return 1;
  }
  layerpager::Tensor t;
  if (!pager.try_acquire("token_embd.weight", &t) || t.size() == 0) return 1;
  std::uint32_t id = 0;
  s = pager.try_find("missing", &id);
  if (s.code() != PAGER_ERR_NOT_FOUND || s.message().find("missing") == std::string::npos) return 1;
  std::printf("cpp_no_exceptions: all checks passed\n");
  return 0;
}
