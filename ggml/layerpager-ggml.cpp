// layerpager-ggml: the placeholder buffer type that holds a llama.cpp
// model's weights, and the eval callback that pages them in around each
// node. See layerpager-ggml.h for how a fork uses it.
//
// Internal header: ggml-backend-impl.h (the buffer type interface), checked
// against llama.cpp as vendored by llama-cpp-python 0.3.36 (ggml 0c1e570).

#include "layerpager-ggml.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "ggml-backend-impl.h"
#include "ggml.h"

#define LP_LOG(...) fprintf(stderr, "layerpager-ggml: " __VA_ARGS__)

namespace {

// One weight acquired for the node being computed.
struct held_weight {
    ggml_tensor * tensor;  // the source as the node sees it (a weight or a view of one)
    void * placeholder;    // its data pointer before, restored after
};

struct held_acquisition {
    const ggml_tensor * base;  // the weight
    uint32_t id;
    bool ok;                   // acquired
    pager_tensor_t acquisition;
    void * scratch;            // zeroed stand-in when the acquire failed (the graph is then aborted)
    void * rows;               // get_rows: the weight's address space with just the rows asked for
};

struct node_state {
    std::vector<held_weight> weights;
    std::vector<held_acquisition> acquisitions;
    bool user_asked = false;
};

}  // namespace

struct layerpager_ggml {
    pager_t * pager = nullptr;
    uint64_t model_bytes = 0;
    ggml_backend_buffer_type buft = {};
    std::vector<llama_model_tensor_buft_override> overrides;
    ggml_backend_sched_eval_callback user_cb_eval = nullptr;
    void * user_cb_eval_data = nullptr;
    ggml_abort_callback user_abort = nullptr;
    void * user_abort_data = nullptr;

    std::mutex lock;  // guards what follows
    std::unordered_map<const ggml_tensor *, uint32_t> ids;
    std::unordered_map<const ggml_tensor *, node_state> nodes;
    // get_rows on a paged weight (an embedding): an address space the size
    // of the weight, with only the rows a token needs read into it.
    std::unordered_map<const ggml_tensor *, void *> row_spaces;
    bool failed = false;
};

namespace {

// ---- the placeholder buffer: address space only, never readable directly

struct placeholder {
    void * base;
    size_t size;
};

const char * buft_name(ggml_backend_buffer_type_t) { return "layerpager"; }

void buffer_free(ggml_backend_buffer_t buffer) {
    auto * p = static_cast<placeholder *>(buffer->context);
    if (p->size) {
        munmap(p->base, p->size);
    }
    delete p;
}

void * buffer_base(ggml_backend_buffer_t buffer) { return static_cast<placeholder *>(buffer->context)->base; }

// The loader uploads every weight once; the pager reads it when it is used.
void buffer_set_tensor(ggml_backend_buffer_t, ggml_tensor *, const void *, size_t, size_t) {}

void buffer_memset_tensor(ggml_backend_buffer_t, ggml_tensor *, uint8_t, size_t, size_t) {}

void buffer_clear(ggml_backend_buffer_t, uint8_t) {}

bool lookup_id(layerpager_ggml * lg, const ggml_tensor * t, uint32_t * id);

// A read of a weight outside a node (rare: tools that dump a tensor) goes
// through the pager.
void buffer_get_tensor(ggml_backend_buffer_t buffer, const ggml_tensor * tensor, void * data, size_t offset, size_t size) {
    auto * lg = static_cast<layerpager_ggml *>(buffer->buft->context);
    const ggml_tensor * base = tensor->view_src ? tensor->view_src : tensor;
    const size_t view_offs = tensor->view_src ? tensor->view_offs : 0;
    uint32_t id = 0;
    pager_tensor_t t;
    if (!lookup_id(lg, base, &id) || pager_acquire(lg->pager, id, &t) != PAGER_OK) {
        LP_LOG("read of %s failed: %s\n", ggml_get_name(tensor), pager_last_error_message());
        memset(data, 0, size);
        return;
    }
    memcpy(data, static_cast<const char *>(t.data) + view_offs + offset, size);
    pager_release(lg->pager, &t);
}

ggml_backend_buffer_t buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    auto * p = new placeholder{nullptr, size};
    if (size) {
        // Reserved, never committed: the weights' addresses exist for ggml's
        // allocator, and touching one outside a node faults at once.
        p->base = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p->base == MAP_FAILED) {
            LP_LOG("reserving %zu bytes of address space failed: %s\n", size, strerror(errno));
            delete p;
            return nullptr;
        }
    }
    ggml_backend_buffer_i iface = {};
    iface.free_buffer = buffer_free;
    iface.get_base = buffer_base;
    iface.memset_tensor = buffer_memset_tensor;
    iface.set_tensor = buffer_set_tensor;
    iface.get_tensor = buffer_get_tensor;
    iface.clear = buffer_clear;
    return ggml_backend_buffer_init(buft, iface, p, size);
}

size_t buft_alignment(ggml_backend_buffer_type_t) { return 64; }

// Host memory in ggml's layout: the CPU backend computes with it in place.
bool buft_is_host(ggml_backend_buffer_type_t) { return true; }

// Whether `node` reads only some rows of its weight `src` (get_rows on a
// plain 2-D weight with host-side I32 row ids): then those rows are read,
// not the whole tensor (a token needs one row of a 100k-row embedding).
bool wants_rows_only(const ggml_tensor * node, const ggml_tensor * src) {
    const ggml_tensor * ids = node->src[1];
    return node->op == GGML_OP_GET_ROWS && node->src[0] == src && src->view_src == nullptr &&
           ggml_is_contiguous(src) && src->ne[2] == 1 && src->ne[3] == 1 && ids != nullptr &&
           ids->type == GGML_TYPE_I32 && ggml_is_contiguous(ids) && ids->buffer != nullptr &&
           ggml_backend_buffer_is_host(ids->buffer);
}

// Reads the rows of `src` that `node`'s ids name into the weight's row
// space; returns the space, or nullptr (then the whole weight is acquired).
void * read_rows(layerpager_ggml * lg, const ggml_tensor * node, const ggml_tensor * src, uint32_t id) {
    void * space = nullptr;
    {
        std::lock_guard<std::mutex> g(lg->lock);
        auto it = lg->row_spaces.find(src);
        if (it != lg->row_spaces.end()) {
            space = it->second;
        }
    }
    if (space == nullptr) {
        // Reserved, committed only where rows are written.
        space = mmap(nullptr, ggml_nbytes(src), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
        if (space == MAP_FAILED) {
            return nullptr;
        }
        std::lock_guard<std::mutex> g(lg->lock);
        lg->row_spaces[src] = space;
    }
    const ggml_tensor * ids = node->src[1];
    const int32_t * rows = static_cast<const int32_t *>(ids->data);
    const size_t row_bytes = src->nb[1];
    for (int64_t i = 0; i < ggml_nelements(ids); i++) {
        const int64_t r = rows[i];
        if (r < 0 || r >= src->ne[1]) {
            continue;  // ggml asserts on it; nothing to read
        }
        char * dst = static_cast<char *>(space) + r * row_bytes;
        if (pager_read(lg->pager, id, (uint64_t) r * row_bytes, dst, row_bytes) != PAGER_OK) {
            LP_LOG("read of row %lld of %s failed: %s\n", (long long) r, ggml_get_name(src), pager_last_error_message());
            return nullptr;
        }
    }
    return space;
}

bool is_paged(const layerpager_ggml * lg, const ggml_tensor * t) {
    return t != nullptr && t->buffer != nullptr && t->buffer->buft == &lg->buft;
}

bool lookup_id(layerpager_ggml * lg, const ggml_tensor * t, uint32_t * id) {
    std::lock_guard<std::mutex> g(lg->lock);
    auto it = lg->ids.find(t);
    if (it != lg->ids.end()) {
        *id = it->second;
        return true;
    }
    if (pager_find(lg->pager, ggml_get_name(t), id) != PAGER_OK) {
        return false;
    }
    lg->ids.emplace(t, *id);
    return true;
}

// ask = true: the node is about to compute. Acquire its weights and point
// them (and views of them) at the pager's memory; need the callback again
// after it. ask = false: it has computed; restore and release.
bool eval_callback(ggml_tensor * node, bool ask, void * user_data) {
    auto * lg = static_cast<layerpager_ggml *>(user_data);
    if (ask) {
        node_state state;
        for (int i = 0; i < GGML_MAX_SRC; i++) {
            ggml_tensor * src = node->src[i];
            if (src == nullptr) {
                continue;
            }
            ggml_tensor * base = src->view_src ? src->view_src : src;
            if (!is_paged(lg, base)) {
                continue;
            }
            held_acquisition * have = nullptr;
            for (auto & a : state.acquisitions) {
                if (a.base == base) {
                    have = &a;
                }
            }
            if (have == nullptr) {
                held_acquisition a = {};
                a.base = base;
                if (!lookup_id(lg, base, &a.id)) {
                    LP_LOG("weight %s is not in the model file\n", ggml_get_name(base));
                } else if (wants_rows_only(node, src) && (a.rows = read_rows(lg, node, src, a.id)) != nullptr) {
                    a.ok = true;
                } else if (pager_acquire(lg->pager, a.id, &a.acquisition) != PAGER_OK) {
                    LP_LOG("acquire of %s failed: %s\n", ggml_get_name(base), pager_last_error_message());
                } else {
                    a.ok = true;
                }
                if (!a.ok) {
                    // Something to compute with until the abort takes effect.
                    a.scratch = calloc(1, ggml_nbytes(base));
                    std::lock_guard<std::mutex> g(lg->lock);
                    lg->failed = true;
                }
                state.acquisitions.push_back(a);
                have = &state.acquisitions.back();
            }
            const char * data = have->scratch ? static_cast<const char *>(have->scratch)
                                : have->rows  ? static_cast<const char *>(have->rows)
                                              : static_cast<const char *>(have->acquisition.data);
            state.weights.push_back({src, src->data});
            src->data = const_cast<char *>(data) + (src->view_src ? src->view_offs : 0);
        }
        state.user_asked = lg->user_cb_eval && lg->user_cb_eval(node, true, lg->user_cb_eval_data);
        if (state.weights.empty()) {
            return state.user_asked;
        }
        std::lock_guard<std::mutex> g(lg->lock);
        lg->nodes[node] = std::move(state);
        return true;
    }
    node_state state;
    {
        std::lock_guard<std::mutex> g(lg->lock);
        auto it = lg->nodes.find(node);
        if (it == lg->nodes.end()) {
            // Asked for by the caller's callback alone.
            return lg->user_cb_eval ? lg->user_cb_eval(node, false, lg->user_cb_eval_data) : true;
        }
        state = std::move(it->second);
        lg->nodes.erase(it);
    }
    for (auto & w : state.weights) {
        w.tensor->data = w.placeholder;
    }
    for (auto & a : state.acquisitions) {
        if (a.rows != nullptr) {
            // The rows were the node's alone: give their pages back.
            madvise(a.rows, ggml_nbytes(a.base), MADV_DONTNEED);
        } else if (a.ok) {
            pager_release(lg->pager, &a.acquisition);
        }
        free(a.scratch);
    }
    bool go_on = true;
    if (state.user_asked) {
        go_on = lg->user_cb_eval(node, false, lg->user_cb_eval_data);
    }
    std::lock_guard<std::mutex> g(lg->lock);
    return go_on && !lg->failed;
}

// A failed acquire aborts the computation (llama_decode then returns 2).
bool abort_callback(void * user_data) {
    auto * lg = static_cast<layerpager_ggml *>(user_data);
    {
        std::lock_guard<std::mutex> g(lg->lock);
        if (lg->failed) {
            return true;
        }
    }
    return lg->user_abort && lg->user_abort(lg->user_abort_data);
}

}  // namespace

layerpager_ggml_params layerpager_ggml_default_params(void) {
    pager_options_t o;
    pager_options_default(&o);
    layerpager_ggml_params p = {};
    p.budget_bytes = 0;
    p.io_mode = o.io_mode;
    p.prefetch_threads = o.prefetch_threads;
    p.wait_ms = 1000;
    return p;
}

layerpager_ggml * layerpager_ggml_init(const char * model_path, const layerpager_ggml_params * params) {
    if (model_path == nullptr || params == nullptr) {
        LP_LOG("init: model_path and params are required\n");
        return nullptr;
    }
    pager_options_t o;
    pager_options_default(&o);
    o.budget_bytes = params->budget_bytes;
    o.io_mode = params->io_mode;
    o.prefetch_threads = params->prefetch_threads;
    o.wait_ms = params->wait_ms;
    pager_t * pager = nullptr;
    if (pager_open_gguf(model_path, &o, &pager) != PAGER_OK) {
        LP_LOG("open of %s failed: %s\n", model_path, pager_last_error_message());
        return nullptr;
    }
    // One line that says how the weights will be read (the io mode in
    // effect, the budget, the policy).
    char line[512];
    if (pager_describe(pager, line, sizeof line, nullptr) == PAGER_OK) {
        LP_LOG("%s\n", line);
    }
    auto * lg = new layerpager_ggml();
    lg->pager = pager;
    for (size_t i = 0; i < pager_tensor_count(pager); i++) {
        pager_tensor_info_t info;
        if (pager_tensor_info(pager, (uint32_t) i, &info) == PAGER_OK) {
            lg->model_bytes += info.size;
        }
    }
    ggml_backend_buffer_type_i iface = {};
    iface.get_name = buft_name;
    iface.alloc_buffer = buft_alloc_buffer;
    iface.get_alignment = buft_alignment;
    iface.is_host = buft_is_host;
    lg->buft.iface = iface;
    lg->buft.device = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    lg->buft.context = lg;
    // With the patch (ggml/patches), llama.cpp then maps the file without
    // reading all of it at load.
    setenv("LLAMA_MMAP_NO_PREFETCH", "1", 0);
    return lg;
}

void layerpager_ggml_wire(layerpager_ggml * lg, llama_model_params * model_params, llama_context_params * ctx_params) {
    if (lg == nullptr) {
        return;
    }
    if (model_params != nullptr) {
        // The caller's own overrides (a GPU for some tensors) come first; the
        // rest of the weights are paged.
        lg->overrides.clear();
        for (auto * o = model_params->tensor_buft_overrides; o != nullptr && o->pattern != nullptr; o++) {
            lg->overrides.push_back(*o);
        }
        lg->overrides.push_back({".*", &lg->buft});
        lg->overrides.push_back({nullptr, nullptr});
        model_params->tensor_buft_overrides = lg->overrides.data();
        model_params->load_mode = LLAMA_LOAD_MODE_MMAP;
        model_params->use_extra_bufts = false;
    }
    if (ctx_params != nullptr && ctx_params->cb_eval != eval_callback) {
        lg->user_cb_eval = ctx_params->cb_eval;
        lg->user_cb_eval_data = ctx_params->cb_eval_user_data;
        ctx_params->cb_eval = eval_callback;
        ctx_params->cb_eval_user_data = lg;
        lg->user_abort = ctx_params->abort_callback;
        lg->user_abort_data = ctx_params->abort_callback_data;
        ctx_params->abort_callback = abort_callback;
        ctx_params->abort_callback_data = lg;
    }
}

pager_t * layerpager_ggml_pager(layerpager_ggml * lg) { return lg ? lg->pager : nullptr; }

uint64_t layerpager_ggml_model_bytes(layerpager_ggml * lg) { return lg ? lg->model_bytes : 0; }

bool layerpager_ggml_take_error(layerpager_ggml * lg) {
    if (lg == nullptr) {
        return false;
    }
    std::lock_guard<std::mutex> g(lg->lock);
    bool failed = lg->failed;
    lg->failed = false;
    return failed;
}

void layerpager_ggml_free(layerpager_ggml * lg) {
    if (lg == nullptr) {
        return;
    }
    for (auto & [tensor, space] : lg->row_spaces) {
        munmap(space, ggml_nbytes(tensor));
    }
    pager_close(lg->pager);
    delete lg;
}
