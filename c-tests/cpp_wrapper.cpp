// The C++ wrapper as an engine uses it: RAII pager and tensor guards,
// exceptions carrying status and message, and the non-throwing forms.
//
// usage: cpp_wrapper MODEL.gguf
#include <cstdio>
#include <cstring>
#include <vector>

#include "layerpager.hpp"

static int failures = 0;
#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "%s:%d: EXPECT failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                      \
    }                                                                  \
  } while (0)

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  const char *model = argv[1];
  {
    layerpager::Pager pager = layerpager::Pager::open_gguf(model, layerpager::Options().budget(1 << 20).prefetch_threads(0));
    EXPECT(pager.tensor_count() > 10);
    std::uint32_t id = pager.find("blk.0.attn_q.weight");
    pager_tensor_info_t info = pager.info(id);
    EXPECT(std::strcmp(info.name, "blk.0.attn_q.weight") == 0);
    {
      layerpager::Tensor q = pager.acquire("blk.0.attn_q.weight");
      EXPECT(q.valid() && q.size() == info.size && q.bytes().size() == info.size);
      layerpager::Tensor moved = std::move(q);
      EXPECT(!q.valid() && moved.valid());
      EXPECT(pager.stats().in_use_bytes == info.size);
    }
    EXPECT(pager.stats().in_use_bytes == 0);
    EXPECT(pager.stats().misses == 1);

    // Two "experts" of attn_q, placed: the second at base + half, with the parent's bytes.
    std::uint32_t first = 0;
    const void *base = nullptr;
    EXPECT(info.size % 2 == 0);
    EXPECT(pager.try_split_experts(id, 2, &first).ok());
    EXPECT(pager.try_place_slices(id, &base).ok() && base != nullptr);
    {
      layerpager::Tensor whole = pager.acquire(id);
      layerpager::Tensor second = pager.acquire(first + 1);
      EXPECT(second.data() == static_cast<const unsigned char *>(base) + info.size / 2);
      EXPECT(std::memcmp(second.data(), static_cast<const unsigned char *>(whole.data()) + info.size / 2,
                         info.size / 2) == 0);
    }
    EXPECT(pager.try_place_slices(id, nullptr).code() == PAGER_ERR_INVALID_ARGUMENT);

    try {
      pager.acquire("no.such.tensor");
      EXPECT(false);
    } catch (const layerpager::Error &e) {
      EXPECT(e.status() == PAGER_ERR_NOT_FOUND);
      EXPECT(std::strstr(e.what(), "no.such.tensor") != nullptr);
    }
    try {
      layerpager::Pager::open_gguf("/nonexistent/model.gguf");
      EXPECT(false);
    } catch (const layerpager::Error &e) {
      EXPECT(e.status() == PAGER_ERR_IO);
    }

    // Non-throwing forms.
    layerpager::Tensor t;
    layerpager::Status s = pager.try_acquire(9999999u, &t);
    EXPECT(!s && s.code() == PAGER_ERR_INVALID_ARGUMENT && !s.message().empty());
    EXPECT(pager.try_acquire(id, &t).ok() && t.valid());
    EXPECT(t.release().ok() && !t.valid());
    EXPECT(t.release().ok());  // twice: nothing

    // A guard outliving its pager's close: bytes stay valid until released.
    layerpager::Tensor held = pager.acquire(id);
    std::vector<std::byte> copy(held.bytes().begin(), held.bytes().end());
    pager.close();
    EXPECT(std::memcmp(copy.data(), held.data(), copy.size()) == 0);
    EXPECT(held.release().ok());
  }
  layerpager::Pager none;
  layerpager::Status s = layerpager::Pager::try_open_safetensors(model, layerpager::Options(), &none);
  EXPECT(s.code() == PAGER_ERR_FORMAT && !none.is_open());
  if (failures) {
    std::fprintf(stderr, "cpp_wrapper: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("cpp_wrapper: all checks passed\n");
  return 0;
}
