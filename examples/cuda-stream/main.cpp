// cuda-stream: a model swept through layerpager into GPU memory, as an
// engine that offloads layers does it. Each acquired tensor is copied to the
// device with cudaMemcpyAsync on a stream and released when the copy's event
// has completed, so that the next acquire (and the background reads) overlap
// the copy. Two host-buffer setups are measured side by side:
//   - the pager's own buffers (pageable memory),
//   - pinned memory through pager_allocator_t (cudaHostAlloc / cudaFreeHost):
//     the pager takes a few large chunks and carves tensors out of them, so
//     the slow pinned allocation happens a handful of times, not per miss;
// beside cudaMemcpy from one pinned and one pageable buffer in the same run.
//
//   cuda-stream MODEL.gguf [budget_fraction=0.5] [passes=3] [readers=auto]
//
// readers=auto is PAGER_READERS_AUTO: half the cores (1 to 8) when the file
// is served from the page cache, 1 when reads go to the device.
//
// One untimed pass first (with RAM to spare, the default io mode then serves
// the file from the page cache); GB/s are tensor bytes copied to the device
// per second of the timed passes.

#include <cuda_runtime_api.h>  // the runtime API alone: a plain C++ compiler builds this file

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "layerpager.h"

namespace {

bool cuda_ok(cudaError_t e, const char * what) {
    if (e != cudaSuccess) {
        std::fprintf(stderr, "cuda-stream: %s: %s\n", what, cudaGetErrorString(e));
        return false;
    }
    return true;
}

#define CUDA(call)                  \
    do {                            \
        if (!cuda_ok((call), #call)) \
            std::exit(1);           \
    } while (0)

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Pinned host memory for the pager, counting the calls.
struct PinnedCalls {
    unsigned allocs = 0;
    unsigned frees = 0;
};

void * pinned_alloc(void * user, size_t size, size_t alignment) {
    if (alignment > 4096) {
        return nullptr;  // cudaHostAlloc gives page-aligned memory
    }
    void * p = nullptr;
    if (cudaHostAlloc(&p, size, cudaHostAllocDefault) != cudaSuccess) {
        return nullptr;
    }
    static_cast<PinnedCalls *>(user)->allocs++;
    return p;
}

void pinned_free(void * user, void * p, size_t) {
    cudaFreeHost(p);
    static_cast<PinnedCalls *>(user)->frees++;
}

// cudaMemcpy of `bytes` from `src`, `reps` times, in GB/s.
double memcpy_gbps(void * dst, const void * src, size_t bytes, int reps) {
    CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));  // warm-up
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; i++) {
        CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    }
    return double(bytes) * reps / seconds_since(t0) / 1e9;
}

struct InFlight {
    pager_tensor_t tensor;
    cudaEvent_t done;
};

struct SweepResult {
    double gbps = 0;
    uint64_t peak_resident = 0;
    uint64_t budget = 0;
    uint64_t bytes_read = 0;
    bool ok = false;
};

// Copies of at most `depth` tensors in flight; device slots reused in turn.
constexpr size_t depth = 4;

SweepResult sweep(const char * path, double fraction, int passes, uint32_t readers, PinnedCalls * pinned) {
    SweepResult r;
    pager_options_t o;
    pager_options_default(&o);
    pager_allocator_t alloc = {pinned, pinned_alloc, pinned_free};
    o.prefetch_threads = readers;
    o.wait_ms = 1000;
    if (pinned != nullptr) {
        o.allocator = &alloc;
    }
    pager_t * p = nullptr;
    // The model's size first, for the budget.
    if (pager_open_gguf(path, nullptr, &p) != PAGER_OK) {
        std::fprintf(stderr, "cuda-stream: open: %s\n", pager_last_error_message());
        return r;
    }
    uint64_t model = 0, largest = 0;
    uint32_t n = (uint32_t) pager_tensor_count(p);
    for (uint32_t id = 0; id < n; id++) {
        pager_tensor_info_t info;
        pager_tensor_info(p, id, &info);
        model += info.size;
        largest = info.size > largest ? info.size : largest;
    }
    pager_close(p);
    o.budget_bytes = (uint64_t) (double(model) * fraction);
    if (o.budget_bytes < (depth + 1) * (largest + 8192)) {
        std::fprintf(stderr, "cuda-stream: a budget of %.2f holds too few tensors to overlap copies\n", fraction);
        return r;
    }
    if (pager_open_gguf(path, &o, &p) != PAGER_OK) {
        std::fprintf(stderr, "cuda-stream: open: %s\n", pager_last_error_message());
        return r;
    }
    std::vector<uint32_t> order(n);
    for (uint32_t id = 0; id < n; id++) {
        order[id] = id;
    }
    pager_set_schedule(p, order.data(), n);
    char line[512];
    if (pager_describe(p, line, sizeof line, nullptr) == PAGER_OK) {
        std::printf("  %s\n", line);
    }

    cudaStream_t stream;
    CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::vector<void *> slots(depth);
    for (auto & s : slots) {
        CUDA(cudaMalloc(&s, largest));
    }
    std::deque<InFlight> inflight;
    std::vector<cudaEvent_t> spare;
    bool failed = false;
    auto release_front = [&](bool wait) {
        InFlight & f = inflight.front();
        if (wait) {
            CUDA(cudaEventSynchronize(f.done));
        } else if (cudaEventQuery(f.done) != cudaSuccess) {
            return false;
        }
        pager_release(p, &f.tensor);
        spare.push_back(f.done);
        inflight.pop_front();
        return true;
    };
    uint64_t copied = 0;
    std::chrono::steady_clock::time_point t0;
    for (int pass = 0; pass <= passes && !failed; pass++) {
        if (pass == 1) {
            while (!inflight.empty()) {
                release_front(true);
            }
            t0 = std::chrono::steady_clock::now();
            copied = 0;
        }
        for (uint32_t i = 0; i < n; i++) {
            // Release what the device has finished with, then make room.
            while (!inflight.empty() && release_front(false)) {
            }
            if (inflight.size() >= depth) {
                release_front(true);
            }
            InFlight f;
            if (pager_acquire(p, order[i], &f.tensor) != PAGER_OK) {
                std::fprintf(stderr, "cuda-stream: acquire: %s\n", pager_last_error_message());
                failed = true;
                break;
            }
            if (spare.empty()) {
                cudaEvent_t e;
                CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
                spare.push_back(e);
            }
            f.done = spare.back();
            spare.pop_back();
            CUDA(cudaMemcpyAsync(slots[i % depth], f.tensor.data, f.tensor.size, cudaMemcpyHostToDevice, stream));
            CUDA(cudaEventRecord(f.done, stream));
            copied += f.tensor.size;
            inflight.push_back(f);
        }
    }
    while (!inflight.empty()) {
        release_front(true);
    }
    double secs = seconds_since(t0);
    pager_stats_t s;
    pager_stats_init(&s);
    pager_get_stats(p, &s);
    r.gbps = double(copied) / secs / 1e9;
    r.peak_resident = s.peak_resident_bytes;
    r.budget = s.budget_bytes;
    r.bytes_read = s.bytes_read;
    r.ok = !failed && s.peak_resident_bytes <= s.budget_bytes;
    for (auto e : spare) {
        cudaEventDestroy(e);
    }
    for (auto d : slots) {
        cudaFree(d);
    }
    cudaStreamDestroy(stream);
    pager_close(p);  // frees the pinned chunks
    return r;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [budget_fraction=0.5] [passes=3] [readers=auto|N]\n", argv[0]);
        return 2;
    }
    const char * path = argv[1];
    double fraction = argc > 2 ? std::atof(argv[2]) : 0.5;
    int passes = argc > 3 ? std::atoi(argv[3]) : 3;
    uint32_t readers = PAGER_READERS_AUTO;
    if (argc > 4 && std::strcmp(argv[4], "auto") != 0) {
        readers = (uint32_t) std::atoi(argv[4]);
    }
    if (!(fraction > 0 && fraction <= 1) || passes < 1) {
        std::fprintf(stderr, "cuda-stream: budget_fraction in (0, 1], passes >= 1\n");
        return 2;
    }
    cudaDeviceProp prop;
    CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s | model %s | budget %.0f%% | %d passes | readers %s (see each pager's line)\n",
                prop.name, path, fraction * 100, passes, argc > 4 ? argv[4] : "auto");

    // References: one 256 MiB buffer, pinned and pageable.
    const size_t ref = 256u << 20;
    void * dev = nullptr;
    void * host_pinned = nullptr;
    CUDA(cudaMalloc(&dev, ref));
    CUDA(cudaHostAlloc(&host_pinned, ref, cudaHostAllocDefault));
    std::vector<char> host_pageable(ref, 1);
    std::memset(host_pinned, 1, ref);
    double pinned_ref = memcpy_gbps(dev, host_pinned, ref, 8);
    double pageable_ref = memcpy_gbps(dev, host_pageable.data(), ref, 8);
    CUDA(cudaFreeHost(host_pinned));
    CUDA(cudaFree(dev));

    std::printf("pager's own buffers (pageable):\n");
    SweepResult own = sweep(path, fraction, passes, readers, nullptr);
    PinnedCalls calls;
    std::printf("pinned arena (cudaHostAlloc through pager_allocator_t):\n");
    SweepResult pinned = sweep(path, fraction, passes, readers, &calls);
    if (!own.ok || !pinned.ok) {
        std::fprintf(stderr, "cuda-stream: a sweep failed or passed its budget\n");
        return 1;
    }
    std::printf("\n%-52s %8s\n", "host -> device", "GB/s");
    std::printf("%-52s %8.2f\n", "cudaMemcpy, one pinned 256 MiB buffer", pinned_ref);
    std::printf("%-52s %8.2f\n", "cudaMemcpy, one pageable 256 MiB buffer", pageable_ref);
    std::printf("%-52s %8.2f\n", "pager, own buffers, cudaMemcpyAsync + events", own.gbps);
    std::printf("%-52s %8.2f  (%.2fx the pageable path, %.2fx pinned cudaMemcpy)\n",
                "pager, pinned arena, cudaMemcpyAsync + events", pinned.gbps, pinned.gbps / own.gbps,
                pinned.gbps / pinned_ref);
    std::printf("pinned allocator: %u cudaHostAlloc, %u cudaFreeHost for %d passes; peak resident %.1f of %.1f MiB\n",
                calls.allocs, calls.frees, passes + 1, pinned.peak_resident / 1048576.0, pinned.budget / 1048576.0);
    return 0;
}
