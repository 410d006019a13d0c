// layerpager-ggml: run a llama.cpp model whose weights do not fit in RAM,
// with the weights paged by layerpager under a byte budget.
//
// A fork adds this file and layerpager-ggml.cpp, links layerpager, and makes
// one call between llama_model_default_params() / llama_context_default_params()
// and loading the model:
//
//     layerpager_ggml_params lp = layerpager_ggml_default_params();
//     lp.budget_bytes = 2ull << 30;
//     layerpager_ggml * pager = layerpager_ggml_init(model_path, &lp);   // NULL: see the log
//     layerpager_ggml_wire(pager, &model_params, &ctx_params);           // before load / init
//     llama_model * model = llama_model_load_from_file(model_path, model_params);
//     llama_context * ctx = llama_init_from_model(model, ctx_params);
//     ... generate as usual ...
//     llama_free(ctx); llama_model_free(model); layerpager_ggml_free(pager);
//
// What wire() does: every weight goes into a placeholder host buffer type
// (address space reserved PROT_NONE: set_tensor copies nothing, a read that
// bypasses the pager faults at once instead of reading garbage); the
// scheduler's eval callback acquires a node's weights right before the node
// computes, points the weights' data at the pager's buffers, and releases
// them after it (chaining any cb_eval the caller had set); load_mode becomes
// MMAP (the loader then uploads nothing) and use_extra_bufts false (CPU
// repacking changes the layout of weights at load).
//
// Mixture-of-experts models: init splits every merged expert weight
// (blk.N.ffn_{up,gate,down}_exps.weight) into one pager slice per expert,
// placed so that expert e sits at e * nb[2] from one base (no copy). The
// callback stops the graph after each router's top-k (ffn_moe_topk-N),
// hints the routed experts at once, and has each MUL_MAT_ID acquire only
// the experts its ids name; with predict_experts, the next layer's router
// applied to this layer's input names likely experts, and the confident
// guesses are hinted a layer early (read-aheads: never at a demand's cost);
// it keeps a copy of each router it uses (n_embd x n_expert floats per
// layer, 18 KiB for SmolLM2's, 1 MiB for Qwen3-30B-A3B's) outside the budget.
// The routing is read on the host: a router computed on another device is
// not seen (its experts are then acquired as MUL_MAT_ID names them,
// unhinted). A batch must fit one expert tensor's routed experts in the
// budget beside what is in use, or decode fails with a message naming the
// budget it needs.
//
// Stock llama.cpp maps the model with MAP_POPULATE, which reads the whole
// file into the page cache once at load (transient: the kernel may drop it,
// and the pager never reads from the mapping). The patch in
// ggml/patches/llama-mmap-no-prefetch.patch lets LLAMA_MMAP_NO_PREFETCH=1
// turn that off; layerpager_ggml_init sets the variable.
//
// llama.cpp's own tools (llama-server, llama-cli, llama-perplexity,
// llama-bench) take the pager with --pager-budget through
// ggml/patches/llama-tools-pager.patch, which calls this file from
// common_init_from_params (configure llama.cpp with -DLLAMA_LAYERPAGER=ON).
//
// Checked against llama.cpp as vendored by llama-cpp-python 0.3.36 (ggml
// 0c1e570). Needs ggml's internal ggml-backend-impl.h for the buffer type.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ggml-backend.h"
#include "layerpager.h"
#include "llama.h"

struct layerpager_ggml;

struct layerpager_ggml_params {
    uint64_t budget_bytes;      // bytes of weights kept resident; 0 = unlimited (or budget_share)
    double budget_share;        // when budget_bytes is 0: the budget as a share of the weights (0.5 = half);
                                // 0 = unlimited. Given at open, so that PAGER_IO_AUTO chooses for it
    uint32_t io_mode;           // PAGER_IO_AUTO (default), PAGER_IO_PREAD, PAGER_IO_DIRECT, PAGER_IO_MMAP
    uint32_t prefetch_threads;  // background readers; default 1
    uint32_t wait_ms;           // how long an acquire waits for budget held by other threads
    bool predict_experts;       // MoE: read the next layer's likely experts a layer ahead (pre-gating); default
                                // false: it measured 0.9-1.0x on the SmolLM2 upcycle (the disk, not the lead, limits)
    bool follow_memory;         // the budget shrinks when the rest of the process needs the memory limit's
                                // room and grows back up to its value (pager_options_t.follow_memory); default false
};

// What the routing of a mixture-of-experts model cost, since init. A unit is
// one (layer, expert) pair: its slice of each of the layer's expert tensors.
struct layerpager_ggml_moe_stats {
    uint64_t tokens;                    // tokens routed
    uint64_t routed_units;              // units routed (a batch's repeats once)
    uint64_t routed_bytes;              // their bytes
    uint64_t expert_acquires;           // expert slices acquired for MUL_MAT_ID nodes
    uint64_t expert_hits;               // of them resident when acquired
    uint64_t predicted;                 // units pre-gating hinted
    uint64_t predicted_routed;          // of them routed then
    uint64_t predicted_unrouted_bytes;  // bytes of the others (read only where not resident)
};

layerpager_ggml_params layerpager_ggml_default_params(void);

// Sets one field of *params from a command-line value, as llama.cpp's tools
// take them (--pager-<option> VALUE):
//   "budget"  SIZE (bytes, or with a K/M/G/T suffix, binary: 512M, 1.5G, 2GiB),
//             N% of the weights (0 < N <= 100), or "auto" (what the memory limit leaves)
//   "io"      auto, pread, direct or mmap
//   "readers" a count of background readers (0 to 64), or "auto"
// Returns "" when set, else a one-line message saying what is wrong (and
// leaves *params as it was). A budget of 0 is refused: no weight would fit.
std::string layerpager_ggml_parse_option(layerpager_ggml_params * params, const char * option, const char * value);

// Whether the parameters page the weights: a budget was given.
bool layerpager_ggml_has_budget(const layerpager_ggml_params * params);

// Opens the pager on the model file. Returns NULL (and logs why) on failure,
// and when the budget is below the largest weight (or expert slice) that
// must be resident at once.
layerpager_ggml * layerpager_ggml_init(const char * model_path, const layerpager_ggml_params * params);

// Fills the parameters so that llama.cpp loads the model's weights into the
// pager's placeholder buffers and acquires them while it computes. Call it
// before llama_model_load_from_file and llama_init_from_model; a cb_eval
// already in ctx_params is kept and called as before.
void layerpager_ggml_wire(layerpager_ggml * lg, llama_model_params * model_params, llama_context_params * ctx_params);

// The pager (for stats, budgets, schedules). Valid until layerpager_ggml_free.
pager_t * layerpager_ggml_pager(layerpager_ggml * lg);

// Sum of the sizes of the model's tensors, for budgets given as a share.
uint64_t layerpager_ggml_model_bytes(layerpager_ggml * lg);

// Whether an eval callback failed to acquire a weight (the graph was then
// aborted; the message was logged). Reset by each call.
bool layerpager_ggml_take_error(layerpager_ggml * lg);

// Copies the MoE figures into *out; false (and *out untouched) when the
// model has no expert tensors. Call it between llama_decode calls (the eval
// callback updates the figures while a graph computes).
bool layerpager_ggml_moe(layerpager_ggml * lg, layerpager_ggml_moe_stats * out);

// Writes the routing to `path` from now on, one line per token and MoE
// layer: "TOKEN LAYER EXPERT..." (the input of `layerpager plan --moe
// --trace`). False (and logged) if the file cannot be created.
bool layerpager_ggml_set_trace(layerpager_ggml * lg, const char * path);

// The pager's figures in the Prometheus text format, each name led by
// `prefix` ("llamacpp:" in llama-server's /metrics): resident bytes, budget,
// peak resident bytes, bytes read, hits, misses, evictions, read and wait
// seconds. "" when lg is NULL.
std::string layerpager_ggml_prometheus(layerpager_ggml * lg, const char * prefix);

// Frees the pager. Call after llama_free and llama_model_free.
void layerpager_ggml_free(layerpager_ggml * lg);

// Owns a layerpager_ggml; declare it before the model and the context, so
// that it is freed after them.
struct layerpager_ggml_deleter {
    void operator()(layerpager_ggml * lg) const { layerpager_ggml_free(lg); }
};
using layerpager_ggml_ptr = std::unique_ptr<layerpager_ggml, layerpager_ggml_deleter>;
