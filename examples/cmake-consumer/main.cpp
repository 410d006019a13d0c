// A forward pass as an engine writes it: open the model under a budget,
// declare the order of the pass, acquire each weight right before use.
#include <cstdio>
#include <vector>

#include <layerpager.hpp>

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
    return 2;
  }
  try {
    layerpager::Pager pager =
        layerpager::Pager::open_gguf(argv[1], layerpager::Options().budget(512u << 20).prefetch_threads(1));
    std::vector<std::uint32_t> order(pager.tensor_count());
    for (std::uint32_t i = 0; i < order.size(); i++) order[i] = i;
    pager.set_schedule(order.data(), order.size());
    unsigned long checksum = 0;
    for (int token = 0; token < 2; token++) {
      for (std::uint32_t id : order) {
        layerpager::Tensor w = pager.acquire(id);  // resident until the end of this scope
        for (std::byte b : w.bytes()) checksum += static_cast<unsigned char>(b);
      }
    }
    pager_stats_t s = pager.stats();
    std::printf("engine_demo: %zu tensors, checksum %lu, hits %llu, misses %llu\n", order.size(), checksum,
                (unsigned long long)s.hits, (unsigned long long)s.misses);
  } catch (const layerpager::Error &e) {
    std::fprintf(stderr, "engine_demo: %s\n", e.what());
    return 1;
  }
  return 0;
}
