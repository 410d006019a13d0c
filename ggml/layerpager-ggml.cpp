// layerpager-ggml: the placeholder buffer type that holds a llama.cpp
// model's weights, and the eval callback that pages them in around each
// node. See layerpager-ggml.h for how a fork uses it.
//
// Internal header: ggml-backend-impl.h (the buffer type interface), checked
// against llama.cpp as vendored by llama-cpp-python 0.3.36 (ggml 0c1e570).

#include "layerpager-ggml.h"

#include <sys/mman.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
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
    std::vector<pager_tensor_t> experts;  // routed expert slices a MUL_MAT_ID computes with
    int routed_layer = -1;                // ffn_moe_topk-<layer>: read the router's picks after it
    int gated_layer = -1;                 // ffn_moe_logits-<layer>: predict the next layer's picks after it
    bool user_asked = false;
};

// A merged expert weight (ffn_{gate,up,down}_exps, ggml [in, out, n_expert]),
// split into one pager slice per expert, placed at the parent's layout.
struct expert_tensor {
    uint32_t first;       // the slice id of expert 0
    uint32_t n_expert;
    uint64_t slice_bytes;
    const void * base;    // where the parent's byte 0 sits in the placement window
    int layer;
};

struct moe_layer {
    std::vector<uint32_t> parents;  // the layer's expert tensors (pager ids)
    uint32_t router = UINT32_MAX;   // ffn_gate_inp (F32 [n_embd, n_expert]), for pre-gating
    std::vector<float> router_weights;  // read at the first prediction
    bool router_unusable = false;
    std::vector<int32_t> predicted;  // experts pre-gating hinted for this layer's coming tokens
    std::vector<int32_t> hinted;     // experts hinted at this layer's last top-k
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

    // Mixture of experts (set up at init, then touched by the eval callback,
    // which ggml calls from one thread).
    bool predict = true;
    std::unordered_map<uint32_t, expert_tensor> experts;  // by parent id
    std::vector<moe_layer> layers;                        // by block index
    int first_moe_layer = -1;
    int64_t n_used = 0;  // experts per token, learned from the first top-k seen
    layerpager_ggml_moe_stats moe = {};
    FILE * trace = nullptr;
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

// ---- mixture of experts: the router's picks, placed experts, pre-gating

// The layer in a node name `prefix<layer>` (llama.cpp names MoE nodes
// "ffn_moe_topk-12"), or -1.
int layer_in(const char * name, const char * prefix) {
    const size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) != 0) {
        return -1;
    }
    char * end = nullptr;
    const long layer = strtol(name + n, &end, 10);
    return end != name + n && *end == '\0' && layer >= 0 && layer < 1 << 20 ? (int) layer : -1;
}

const expert_tensor * expert_tensor_of(layerpager_ggml * lg, const ggml_tensor * weight) {
    uint32_t id = 0;
    if (lg->experts.empty() || weight->view_src != nullptr || !lookup_id(lg, weight, &id)) {
        return nullptr;
    }
    auto it = lg->experts.find(id);
    return it == lg->experts.end() ? nullptr : &it->second;
}

// The j-th expert an ids tensor (I32 [n_used, n_tokens], a view of the
// router's argsort: rows need not be contiguous) names for token t.
int32_t pick_at(const ggml_tensor * ids, int64_t t, int64_t j) {
    return *reinterpret_cast<const int32_t *>(static_cast<const char *>(ids->data) + t * ids->nb[1] + j * ids->nb[0]);
}

// The distinct experts an ids tensor names, in ascending order.
std::vector<int32_t> routed_experts(const ggml_tensor * ids, int64_t n_expert) {
    std::vector<int32_t> picks;
    if (ids == nullptr || ids->type != GGML_TYPE_I32 || ids->data == nullptr || ids->buffer == nullptr ||
        !ggml_backend_buffer_is_host(ids->buffer)) {
        return picks;  // not readable here (a router on another device): nothing known
    }
    for (int64_t t = 0; t < ids->ne[1]; t++) {
        for (int64_t j = 0; j < ids->ne[0]; j++) {
            const int32_t e = pick_at(ids, t, j);
            if (e >= 0 && e < n_expert) {
                picks.push_back(e);
            }
        }
    }
    std::sort(picks.begin(), picks.end());
    picks.erase(std::unique(picks.begin(), picks.end()), picks.end());
    return picks;
}

// Bytes of one (layer, expert) unit: its slice of every expert tensor.
uint64_t unit_bytes(const layerpager_ggml * lg, int layer) {
    uint64_t bytes = 0;
    for (uint32_t parent : lg->layers[layer].parents) {
        bytes += lg->experts.at(parent).slice_bytes;
    }
    return bytes;
}

// Reads ahead the slices of `picks` in every expert tensor of `layer`, in
// the order the layer computes them.
void hint_experts(layerpager_ggml * lg, int layer, const std::vector<int32_t> & picks) {
    std::vector<uint32_t> ids;
    for (uint32_t parent : lg->layers[layer].parents) {
        for (int32_t e : picks) {
            ids.push_back(lg->experts.at(parent).first + (uint32_t) e);
        }
    }
    if (!ids.empty()) {
        pager_hint(lg->pager, ids.data(), ids.size());
    }
}

// After the router's top-k of `layer` (node ffn_moe_topk-<layer>): count,
// trace, score the prediction, and hint the routed experts.
void observe_routing(layerpager_ggml * lg, int layer, const ggml_tensor * topk) {
    if (layer >= (int) lg->layers.size() || lg->layers[layer].parents.empty()) {
        return;
    }
    moe_layer & L = lg->layers[layer];
    const int64_t n_expert = lg->experts.at(L.parents[0]).n_expert;
    const std::vector<int32_t> picks = routed_experts(topk, n_expert);
    if (lg->n_used == 0) {
        lg->n_used = topk->ne[0];
    }
    if (layer == lg->first_moe_layer) {
        lg->moe.tokens += (uint64_t) topk->ne[1];
    }
    const uint64_t unit = unit_bytes(lg, layer);
    lg->moe.routed_units += picks.size();
    lg->moe.routed_bytes += picks.size() * unit;
    if (!L.predicted.empty()) {
        std::vector<int32_t> right;
        std::set_intersection(L.predicted.begin(), L.predicted.end(), picks.begin(), picks.end(),
                              std::back_inserter(right));
        lg->moe.predicted += L.predicted.size();
        lg->moe.predicted_routed += right.size();
        lg->moe.predicted_unrouted_bytes += (L.predicted.size() - right.size()) * unit;
        L.predicted.clear();
    }
    if (lg->trace != nullptr && !picks.empty()) {
        // One line per token and layer: token, layer, its experts.
        const uint64_t first_token = lg->moe.tokens - (uint64_t) topk->ne[1];
        for (int64_t t = 0; t < topk->ne[1]; t++) {
            fprintf(lg->trace, "%llu %d", (unsigned long long) (first_token + t), layer);
            for (int64_t j = 0; j < topk->ne[0]; j++) {
                fprintf(lg->trace, " %d", pick_at(topk, t, j));
            }
            fputc('\n', lg->trace);
        }
    }
    hint_experts(lg, layer, picks);
    L.hinted = picks;
}

// Pre-gating: after the router of `layer` has its input (node
// ffn_moe_logits-<layer>, src[1] the normed hidden state), the next MoE
// layer's router applied to that same state names the experts it will
// likely pick; the confident guesses are hinted (read ahead, never at a
// demand's cost) a layer before their top-k is known.
void predict_next_layer(layerpager_ggml * lg, int layer, const ggml_tensor * hidden) {
    const int next = layer + 1;
    if (!lg->predict || lg->n_used == 0 || next >= (int) lg->layers.size() || lg->layers[next].parents.empty() ||
        hidden == nullptr || hidden->type != GGML_TYPE_F32 || hidden->nb[0] != sizeof(float) || hidden->ne[1] > 8 ||
        hidden->buffer == nullptr || !ggml_backend_buffer_is_host(hidden->buffer)) {
        return;  // a batch routes to many experts anyway: no prediction
    }
    moe_layer & L = lg->layers[next];
    const int64_t n_embd = hidden->ne[0];
    const int64_t n_expert = lg->experts.at(L.parents[0]).n_expert;
    if (L.router_weights.empty() && !L.router_unusable) {
        // The router, read once (n_embd x n_expert floats: small beside the
        // experts), outside the budget.
        pager_tensor_info_t info;
        L.router_unusable = L.router == UINT32_MAX || pager_tensor_info(lg->pager, L.router, &info) != PAGER_OK ||
                            info.ggml_type != GGML_TYPE_F32 || info.dims[0] != (uint64_t) n_embd ||
                            info.dims[1] != (uint64_t) n_expert;
        if (!L.router_unusable) {
            L.router_weights.resize((size_t) (n_embd * n_expert));
            if (pager_read(lg->pager, L.router, 0, L.router_weights.data(), info.size) != PAGER_OK) {
                L.router_weights.clear();
                L.router_unusable = true;
            }
        }
    }
    if (L.router_unusable) {
        return;
    }
    std::vector<int32_t> predicted;
    std::vector<std::pair<float, int32_t>> logits((size_t) n_expert);
    const int64_t k = std::min<int64_t>(lg->n_used, n_expert);
    for (int64_t t = 0; t < hidden->ne[1]; t++) {
        const float * x = reinterpret_cast<const float *>(static_cast<const char *>(hidden->data) + t * hidden->nb[1]);
        for (int64_t e = 0; e < n_expert; e++) {
            const float * w = L.router_weights.data() + e * n_embd;
            float sum = 0;
            for (int64_t i = 0; i < n_embd; i++) {
                sum += w[i] * x[i];
            }
            logits[(size_t) e] = {sum, (int32_t) e};
        }
        std::sort(logits.begin(), logits.end(), [](const auto & a, const auto & b) { return a.first > b.first; });
        // Only confident guesses: a top-k logit more than one standard
        // deviation of the logits above the first one left out (on the
        // SmolLM2 upcycle: 89% right, against 73% for the plain top-k).
        double mean = 0;
        double var = 0;
        for (const auto & l : logits) {
            mean += l.first;
        }
        mean /= (double) n_expert;
        for (const auto & l : logits) {
            var += (l.first - mean) * (l.first - mean);
        }
        const double sd = std::sqrt(var / (double) n_expert);
        const double left_out = k < n_expert ? logits[(size_t) k].first : -INFINITY;
        for (int64_t j = 0; j < k; j++) {
            if (logits[(size_t) j].first - left_out > sd) {
                predicted.push_back(logits[(size_t) j].second);
            }
        }
    }
    std::sort(predicted.begin(), predicted.end());
    predicted.erase(std::unique(predicted.begin(), predicted.end()), predicted.end());
    L.predicted = predicted;
    hint_experts(lg, next, predicted);
}

// MiB to one decimal, rounded up: a budget given as printed is enough.
double mib_rounded_up(uint64_t bytes) { return std::ceil(bytes / 1048576.0 * 10) / 10; }

// A MUL_MAT_ID on a placed expert tensor: acquire only the experts its ids
// (the router's top-k, computed already) name; each is then at its
// e * nb[2] offset from the placement base. Returns false if one failed.
bool acquire_routed(layerpager_ggml * lg, const ggml_tensor * node, const expert_tensor & x, node_state & state) {
    std::vector<int32_t> picks = routed_experts(node->src[2], x.n_expert);
    std::vector<uint32_t> ids;
    for (int32_t e : picks) {
        ids.push_back(x.first + (uint32_t) e);
    }
    if (ids.size() > 1 && picks != lg->layers[x.layer].hinted) {
        // Not hinted at the top-k (a router this callback cannot read): the
        // readers fetch some while this thread reads others.
        pager_hint(lg->pager, ids.data(), ids.size());
    }
    pager_stats_t before;
    pager_stats_init(&before);
    pager_get_stats(lg->pager, &before);
    // Acquired from the back of the hinted list: the readers take it from
    // the front, so that this thread reads one while they read another,
    // instead of waiting for the read a reader has just begun (measured:
    // fewer waits and 0.7 MiB/token less read at 50%).
    std::reverse(ids.begin(), ids.end());
    std::reverse(picks.begin(), picks.end());
    for (size_t i = 0; i < ids.size(); i++) {
        pager_tensor_t t;
        const pager_status_t status = pager_acquire(lg->pager, ids[i], &t);
        if (status != PAGER_OK) {
            pager_stats_t now;
            pager_stats_init(&now);
            pager_get_stats(lg->pager, &now);
            // A placed slice is charged the pages it touches.
            const uint64_t slice_charge = (x.slice_bytes + 4095) / 4096 * 4096 + 4096;
            const uint64_t others = now.in_use_bytes - std::min<uint64_t>(now.in_use_bytes, i * x.slice_bytes);
            if (status == PAGER_ERR_BUDGET || status == PAGER_ERR_TIMEOUT) {
                LP_LOG("the budget of %.1f MiB cannot hold the %zu experts of %s this batch routes to beside the "
                       "weights in use: it needs a budget of at least %.1f MiB; %.1f MiB holds any batch (all %u "
                       "experts)\n",
                       now.budget_bytes / 1048576.0, ids.size(), ggml_get_name(node->src[0]),
                       mib_rounded_up(others + ids.size() * slice_charge),
                       mib_rounded_up(others + x.n_expert * slice_charge), x.n_expert);
            } else {
                LP_LOG("acquire of expert %d of %s failed: %s\n", picks[i], ggml_get_name(node->src[0]),
                       pager_last_error_message());
            }
            return false;
        }
        state.experts.push_back(t);
    }
    pager_stats_t after;
    pager_stats_init(&after);
    pager_get_stats(lg->pager, &after);
    lg->moe.expert_acquires += ids.size();
    lg->moe.expert_hits += after.hits - before.hits;
    return true;
}

// ask = true: the node is about to compute. Acquire its weights and point
// them (and views of them) at the pager's memory; need the callback again
// after it. ask = false: it has computed; restore and release.
bool eval_callback(ggml_tensor * node, bool ask, void * user_data) {
    auto * lg = static_cast<layerpager_ggml *>(user_data);
    if (ask) {
        node_state state;
        if (!lg->experts.empty()) {
            // Stop after the router's top-k (its picks then exist before the
            // experts' MUL_MAT_IDs are asked for) and after the router's
            // logits (its input is the state pre-gating predicts from).
            state.routed_layer = layer_in(ggml_get_name(node), "ffn_moe_topk-");
            state.gated_layer = layer_in(ggml_get_name(node), "ffn_moe_logits-");
        }
        for (int i = 0; i < GGML_MAX_SRC; i++) {
            ggml_tensor * src = node->src[i];
            if (src == nullptr) {
                continue;
            }
            ggml_tensor * base = src->view_src ? src->view_src : src;
            if (!is_paged(lg, base)) {
                continue;
            }
            const expert_tensor * x = node->op == GGML_OP_MUL_MAT_ID && i == 0 ? expert_tensor_of(lg, src) : nullptr;
            if (x != nullptr) {
                if (!acquire_routed(lg, node, *x, state)) {
                    std::lock_guard<std::mutex> g(lg->lock);
                    lg->failed = true;
                }
                // The routed experts are in place; the others are never read.
                state.weights.push_back({src, src->data});
                src->data = const_cast<void *>(x->base);
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
        if (state.weights.empty() && state.routed_layer < 0 && state.gated_layer < 0) {
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
    if (state.routed_layer >= 0) {
        observe_routing(lg, state.routed_layer, node);
    }
    if (state.gated_layer >= 0) {
        predict_next_layer(lg, state.gated_layer, node->src[1]);
    }
    for (auto & w : state.weights) {
        w.tensor->data = w.placeholder;
    }
    for (auto & t : state.experts) {
        pager_release(lg->pager, &t);
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

// Splits every merged expert weight of the file (blk.N.ffn_{up,gate,down,
// gate_up}_exps.weight with an expert dimension) into one slice per expert,
// placed at the parent's layout, and notes each layer's router.
void setup_experts(layerpager_ggml * lg) {
    const size_t n = pager_tensor_count(lg->pager);  // the file's tensors, before slices
    static const char * const kinds[] = {"gate_up", "gate", "up", "down"};  // the order ggml computes them in
    std::vector<std::vector<std::pair<int, uint32_t>>> parents;
    for (size_t id = 0; id < n; id++) {
        pager_tensor_info_t info;
        int layer = -1;
        char kind[16] = {0};
        int consumed = 0;
        if (pager_tensor_info(lg->pager, (uint32_t) id, &info) != PAGER_OK ||
            sscanf(info.name, "blk.%d.ffn_%15[a-z_]%n", &layer, kind, &consumed) != 2 || layer < 0 || layer >= 1 << 20) {
            continue;
        }
        const std::string rest = kind;
        if ((size_t) layer >= parents.size()) {
            parents.resize((size_t) layer + 1);
            lg->layers.resize((size_t) layer + 1);
        }
        if (rest == "gate_inp" && strcmp(info.name + consumed, ".weight") == 0) {
            lg->layers[(size_t) layer].router = (uint32_t) id;
            continue;
        }
        int rank = -1;
        for (int k = 0; k < 4; k++) {
            if (rest == std::string(kinds[k]) + "_exps" && strcmp(info.name + consumed, ".weight") == 0) {
                rank = k;
            }
        }
        if (rank < 0 || info.n_dims != 3 || info.dims[2] < 2) {
            continue;
        }
        expert_tensor x = {};
        x.n_expert = (uint32_t) info.dims[2];
        x.slice_bytes = info.size / x.n_expert;
        x.layer = layer;
        if (pager_split_experts(lg->pager, (uint32_t) id, x.n_expert, &x.first) != PAGER_OK ||
            pager_place_slices(lg->pager, (uint32_t) id, &x.base) != PAGER_OK) {
            LP_LOG("%s stays one tensor: %s\n", info.name, pager_last_error_message());
            continue;
        }
        lg->experts[(uint32_t) id] = x;
        parents[(size_t) layer].push_back({rank, (uint32_t) id});
    }
    for (size_t layer = 0; layer < parents.size(); layer++) {
        std::sort(parents[layer].begin(), parents[layer].end());
        for (auto & p : parents[layer]) {
            lg->layers[layer].parents.push_back(p.second);
        }
        if (!parents[layer].empty() && lg->first_moe_layer < 0) {
            lg->first_moe_layer = (int) layer;
        }
    }
    if (!lg->experts.empty()) {
        LP_LOG("%zu expert tensors split into %u experts each and placed: only routed experts are read%s\n",
               lg->experts.size(), lg->experts.begin()->second.n_expert,
               lg->predict ? "; the next layer's predicted and read a layer ahead" : "");
    }
}

// Whether the budget holds the largest weight that is acquired whole (an
// expert tensor split into slices counts as its largest slice); logs why not.
bool fits_budget(layerpager_ggml * lg) {
    pager_stats_t stats;
    pager_stats_init(&stats);
    if (pager_get_stats(lg->pager, &stats) != PAGER_OK || stats.budget_bytes == 0) {
        return true;
    }
    uint64_t largest = 0;
    std::string name;
    for (size_t id = 0; id < pager_tensor_count(lg->pager); id++) {
        pager_tensor_info_t info;
        if (lg->experts.count((uint32_t) id) != 0 || pager_tensor_info(lg->pager, (uint32_t) id, &info) != PAGER_OK) {
            continue;
        }
        if (info.size > largest) {
            largest = info.size;
            name = info.name;
        }
    }
    if (stats.budget_bytes >= largest) {
        return true;
    }
    LP_LOG("the budget (%llu bytes) is below the largest weight, %s (%llu bytes, %.2f MiB): give at least that\n",
           (unsigned long long) stats.budget_bytes, name.c_str(), (unsigned long long) largest, largest / 1048576.0);
    return false;
}

}  // namespace

layerpager_ggml_params layerpager_ggml_default_params(void) {
    pager_options_t o;
    pager_options_default(&o);
    layerpager_ggml_params p = {};
    p.budget_bytes = 0;
    p.budget_share = 0;
    p.io_mode = o.io_mode;
    p.prefetch_threads = o.prefetch_threads;
    p.wait_ms = 1000;
    p.predict_experts = false;
    p.follow_memory = false;
    return p;
}

std::string layerpager_ggml_parse_option(layerpager_ggml_params * params, const char * option, const char * value) {
    if (params == nullptr || option == nullptr || value == nullptr) {
        return "parse_option: params, option and value are required";
    }
    const std::string name = option;
    const std::string text = value;
    layerpager_ggml_params p = *params;
    if (name == "budget") {
        char * end = nullptr;
        errno = 0;
        const double number = strtod(value, &end);
        std::string unit = end != nullptr ? end : "";
        if (text == "auto") {
            p.budget_bytes = PAGER_BUDGET_AUTO;
            p.budget_share = 0;
        } else if (end == value || errno != 0 || !std::isfinite(number) || number < 0) {
            return "pager budget '" + text + "': expected SIZE (512M, 2G), N% of the weights or auto";
        } else if (unit == "%") {
            if (number <= 0 || number > 100) {
                return "pager budget '" + text + "': a share must be above 0% and at most 100%";
            }
            p.budget_bytes = 0;
            p.budget_share = number / 100;
        } else {
            static const char * const suffixes = "KMGT";
            double bytes = number;
            if (!unit.empty()) {
                const char * at = strchr(suffixes, toupper((unsigned char) unit[0]));
                const std::string after = unit.substr(1);
                if (at == nullptr || !(after.empty() || after == "B" || after == "iB" || after == "i")) {
                    return "pager budget '" + text + "': unknown unit '" + unit + "' (use K, M, G or T, or N%)";
                }
                bytes = std::ldexp(number, 10 * (int) (at - suffixes + 1));
            }
            if (bytes < 1) {
                return "pager budget '" + text + "': a budget of 0 holds no weight (leave the option out to run unpaged)";
            }
            if (bytes >= 18446744073709549568.0) {
                return "pager budget '" + text + "': too large";
            }
            p.budget_bytes = (uint64_t) bytes;
            p.budget_share = 0;
        }
    } else if (name == "io") {
        static const std::pair<const char *, uint32_t> modes[] = {
            {"auto", PAGER_IO_AUTO}, {"pread", PAGER_IO_PREAD}, {"direct", PAGER_IO_DIRECT}, {"mmap", PAGER_IO_MMAP}};
        const auto * mode = std::find_if(std::begin(modes), std::end(modes),
                                         [&](const auto & m) { return text == m.first; });
        if (mode == std::end(modes)) {
            return "pager io '" + text + "': expected auto, pread, direct or mmap";
        }
        p.io_mode = mode->second;
    } else if (name == "readers") {
        char * end = nullptr;
        const long readers = strtol(value, &end, 10);
        if (text == "auto") {
            p.prefetch_threads = PAGER_READERS_AUTO;
        } else if (text.empty() || *end != '\0' || readers < 0 || readers > 64) {
            return "pager readers '" + text + "': expected a count from 0 to 64, or auto";
        } else {
            p.prefetch_threads = (uint32_t) readers;
        }
    } else {
        return "unknown pager option '" + name + "'";
    }
    *params = p;
    return "";
}

bool layerpager_ggml_has_budget(const layerpager_ggml_params * params) {
    return params != nullptr && (params->budget_bytes != 0 || params->budget_share > 0);
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
    o.follow_memory = params->follow_memory ? 1 : 0;
    pager_t * pager = nullptr;
    if (o.budget_bytes == 0 && params->budget_share > 0) {
        // The share needs the weights' size: an open with no budget reads
        // only the index. The pager is then opened with the budget, so that
        // the io mode is chosen for it (O_DIRECT where the file does not fit
        // beside it).
        pager_options_t index_only = o;
        index_only.prefetch_threads = 0;
        if (pager_open_gguf(model_path, &index_only, &pager) != PAGER_OK) {
            LP_LOG("open of %s failed: %s\n", model_path, pager_last_error_message());
            return nullptr;
        }
        uint64_t weights = 0;
        for (size_t i = 0; i < pager_tensor_count(pager); i++) {
            pager_tensor_info_t info;
            if (pager_tensor_info(pager, (uint32_t) i, &info) == PAGER_OK) {
                weights += info.size;
            }
        }
        pager_close(pager);
        pager = nullptr;
        o.budget_bytes = std::max<uint64_t>(1, (uint64_t) ((double) weights * params->budget_share));
    }
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
    lg->predict = params->predict_experts;
    setup_experts(lg);
    if (!fits_budget(lg)) {
        layerpager_ggml_free(lg);
        return nullptr;
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
    if (lg->trace != nullptr) {
        fclose(lg->trace);
    }
    pager_close(lg->pager);
    delete lg;
}

std::string layerpager_ggml_prometheus(layerpager_ggml * lg, const char * prefix) {
    pager_stats_t s;
    pager_stats_init(&s);
    if (lg == nullptr || pager_get_stats(lg->pager, &s) != PAGER_OK) {
        return "";
    }
    struct metric {
        const char * name;
        const char * type;
        double value;
        const char * help;
    };
    const metric metrics[] = {
        {"pager_resident_bytes", "gauge", (double) s.resident_bytes, "Weight bytes held in memory by the pager."},
        {"pager_budget_bytes", "gauge", (double) s.budget_bytes, "The pager's budget for weight bytes (0: unlimited)."},
        {"pager_peak_resident_bytes", "gauge", (double) s.peak_resident_bytes, "Highest pager_resident_bytes seen."},
        {"pager_read_bytes_total", "counter", (double) s.bytes_read, "Weight bytes read from the model file."},
        {"pager_hits_total", "counter", (double) s.hits, "Weight acquisitions served from memory."},
        {"pager_misses_total", "counter", (double) s.misses, "Weight acquisitions that waited for a read."},
        {"pager_evictions_total", "counter", (double) s.evictions, "Weights evicted to make room."},
        {"pager_read_seconds_total", "counter", s.read_ns / 1e9, "Time spent reading weights."},
        {"pager_wait_seconds_total", "counter", s.wait_ns / 1e9, "Time acquisitions waited for reads or budget."},
    };
    const std::string lead = prefix != nullptr ? prefix : "";
    std::string out;
    char value[64];
    for (const metric & m : metrics) {
        snprintf(value, sizeof value, "%.17g", m.value);
        out += "# HELP " + lead + m.name + " " + m.help + "\n";
        out += "# TYPE " + lead + m.name + " " + m.type + "\n";
        out += lead + m.name + " " + value + "\n";
    }
    return out;
}

bool layerpager_ggml_moe(layerpager_ggml * lg, layerpager_ggml_moe_stats * out) {
    if (lg == nullptr || out == nullptr || lg->experts.empty()) {
        return false;
    }
    *out = lg->moe;
    return true;
}

bool layerpager_ggml_set_trace(layerpager_ggml * lg, const char * path) {
    if (lg == nullptr || path == nullptr) {
        return false;
    }
    FILE * f = fopen(path, "w");
    if (f == nullptr) {
        LP_LOG("trace file %s: %s\n", path, strerror(errno));
        return false;
    }
    if (lg->trace != nullptr) {
        fclose(lg->trace);
    }
    lg->trace = f;
    return true;
}
