// llama-paged: stock llama.cpp greedy generation, with the weights paged by
// layerpager under a budget (or, with --no-pager, as llama.cpp loads them).
//
//     llama-paged -m MODEL.gguf [--budget N%|SIZE|auto] [-p PROMPT] [-n TOKENS]
//                 [--no-pager] [--print-ids] [--io auto|pread|direct|mmap]
//                 [--readers N|auto] [-t THREADS] [--trace FILE] [--predict]
//                 [--compute-ms MS]
//
// Prints the text (with --print-ids, one token id per line instead), then
// one line of figures: tokens/s, CPU ms per token, MiB read per token and
// its bound (model minus what the budget leaves tensors: less the staging
// page where O_DIRECT reads are staged), peak resident vs budget, peak RSS, the
// raw O_DIRECT speed of the file (the faster of a probe before the run and
// one after, once everything is freed), and the tokens/s
// that speed allows: max(compute, bytes read / raw speed) per token, with
// the run's share of it (--compute-ms gives the compute time per token of
// a run without the pager; without it, only the reads bound); for a
// mixture-of-experts model a second line: MiB routed and read per token,
// the expert hit ratio, and how often pre-gating named the routed experts.
// --trace FILE writes the routing (token, layer, experts) for `layerpager
// plan --moe --trace FILE`; --predict turns pre-gating on.
// Modelled on llama.cpp's examples/simple/simple.cpp.

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "layerpager-ggml.h"
#include "llama.h"

static void usage(const char * argv0) {
    fprintf(stderr,
            "usage: %s -m MODEL.gguf [--budget N%%|SIZE|auto] [-p PROMPT] [-n TOKENS] [--no-pager] [--print-ids]\n"
            "          [--io auto|pread|direct|mmap] [--readers N|auto] [-t THREADS] [--trace FILE] [--predict]\n"
            "          [--compute-ms MS]\n",
            argv0);
}

// Peak resident set of this process (VmHWM), in bytes.
static uint64_t peak_rss_bytes() {
    FILE * f = fopen("/proc/self/status", "r");
    if (f == nullptr) {
        return 0;
    }
    char line[256];
    uint64_t kb = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = strtoull(line + 6, nullptr, 10);
        }
    }
    fclose(f);
    return kb * 1024;
}

static double cpu_seconds() {
    rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

static double mib(uint64_t bytes) { return bytes / 1048576.0; }

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    std::string model_path;
    std::string prompt = "The capital of France is";
    int n_predict = 32;
    int n_threads = 1;
    bool use_pager = true;
    bool print_ids = false;
    std::string trace_path;
    double compute_ms = 0;
    layerpager_ggml_params lp = layerpager_ggml_default_params();
    lp.budget_share = 0.5;

    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        const bool has_value = i + 1 < argc;
        if (a == "-m" && has_value) {
            model_path = argv[++i];
        } else if (a == "-p" && has_value) {
            prompt = argv[++i];
        } else if (a == "-n" && has_value) {
            n_predict = atoi(argv[++i]);
        } else if (a == "-t" && has_value) {
            n_threads = atoi(argv[++i]);
        } else if ((a == "--budget" || a == "--readers" || a == "--io") && has_value) {
            // The same values as llama.cpp's tools take for --pager-budget, --pager-readers, --pager-io.
            const std::string error = layerpager_ggml_parse_option(&lp, a.c_str() + 2, argv[++i]);
            if (!error.empty()) {
                fprintf(stderr, "llama-paged: %s\n", error.c_str());
                return 1;
            }
        } else if (a == "--trace" && has_value) {
            trace_path = argv[++i];
        } else if (a == "--compute-ms" && has_value) {
            compute_ms = atof(argv[++i]);
        } else if (a == "--predict") {
            lp.predict_experts = true;
        } else if (a == "--no-pager") {
            use_pager = false;
        } else if (a == "--print-ids") {
            print_ids = true;
        } else {
            usage(argv[0]);
            return 1;
        }
    }
    if (model_path.empty() || n_predict < 1 || n_threads < 1) {
        usage(argv[0]);
        return 1;
    }

    llama_log_set([](ggml_log_level level, const char * text, void *) {
        if (level >= GGML_LOG_LEVEL_WARN) {
            fputs(text, stderr);
        }
    }, nullptr);
    llama_backend_init();

    llama_model_params model_params = llama_model_default_params();
    model_params.use_extra_bufts = false;  // the same CPU kernels with and without the pager
    llama_context_params ctx_params = llama_context_default_params();
    ctx_params.n_threads = n_threads;
    ctx_params.n_threads_batch = n_threads;

    // The physical bound: the file's raw O_DIRECT speed, measured before
    // anything is loaded (so that its buffers add nothing to the peak), and
    // again at the end, once everything is freed.
    double raw = 0;
    uint32_t depth = 0;
    if (use_pager && pager_measure_read_speed(model_path.c_str(), &raw, &depth) != PAGER_OK) {
        fprintf(stderr, "llama-paged: raw speed of %s: %s\n", model_path.c_str(), pager_last_error_message());
    }

    // The pager: opened on the model file, wired into both parameter sets.
    layerpager_ggml * pager = nullptr;
    uint64_t budget = 0;
    if (use_pager) {
        pager = layerpager_ggml_init(model_path.c_str(), &lp);
        if (pager == nullptr) {
            return 1;
        }
        pager_stats_t opened;
        pager_stats_init(&opened);
        budget = pager_get_stats(layerpager_ggml_pager(pager), &opened) == PAGER_OK ? opened.budget_bytes : 0;
        layerpager_ggml_wire(pager, &model_params, &ctx_params);
        if (!trace_path.empty() && !layerpager_ggml_set_trace(pager, trace_path.c_str())) {
            return 1;
        }
    }

    llama_model * model = llama_model_load_from_file(model_path.c_str(), model_params);
    if (model == nullptr) {
        fprintf(stderr, "llama-paged: unable to load %s\n", model_path.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), nullptr, 0, true, true);
    std::vector<llama_token> tokens(n_prompt);
    if (llama_tokenize(vocab, prompt.c_str(), prompt.size(), tokens.data(), tokens.size(), true, true) < 0) {
        fprintf(stderr, "llama-paged: failed to tokenize the prompt\n");
        return 1;
    }
    ctx_params.n_ctx = n_prompt + n_predict;
    ctx_params.n_batch = n_prompt;
    llama_context * ctx = llama_init_from_model(model, ctx_params);
    if (ctx == nullptr) {
        fprintf(stderr, "llama-paged: failed to create the context\n");
        return 1;
    }
    llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

    // The prompt, then one token at a time; figures count the generation.
    llama_batch batch = llama_batch_get_one(tokens.data(), (int32_t) tokens.size());
    pager_stats_t before;
    pager_stats_init(&before);
    layerpager_ggml_moe_stats moe_before = {};
    double cpu_before = 0;
    auto t_before = std::chrono::steady_clock::now();
    int n_generated = 0;
    llama_token next = 0;
    for (int i = 0; i < n_predict; i++) {
        if (llama_decode(ctx, batch) != 0 || (pager && layerpager_ggml_take_error(pager))) {
            fprintf(stderr, "llama-paged: decode failed\n");
            return 1;
        }
        if (i == 0) {
            // Measured from the first generated token on: the prompt's
            // batch is one pass as well, but not a token.
            if (pager) {
                pager_get_stats(layerpager_ggml_pager(pager), &before);
                layerpager_ggml_moe(pager, &moe_before);
            }
            cpu_before = cpu_seconds();
            t_before = std::chrono::steady_clock::now();
        }
        next = llama_sampler_sample(smpl, ctx, -1);
        if (print_ids) {
            printf("%d\n", next);
        } else {
            char piece[256];
            const int n = llama_token_to_piece(vocab, next, piece, sizeof piece, 0, true);
            if (n > 0) {
                fwrite(piece, 1, (size_t) n, stdout);
            }
        }
        fflush(stdout);
        n_generated++;
        if (llama_vocab_is_eog(vocab, next)) {
            break;
        }
        batch = llama_batch_get_one(&next, 1);
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_before).count();
    const double cpu = cpu_seconds() - cpu_before;
    // Tokens decoded after the first measurement point.
    const int measured = n_generated > 1 ? n_generated - 1 : 1;
    if (!print_ids) {
        printf("\n");
    }
    // The figures are printed once everything is freed: a second probe of
    // the raw speed runs then, inside whatever memory limit the run had,
    // and the faster of the two is the bound's (a shared disk has slow
    // seconds, and one on the only probe made a run look faster than the
    // disk).
    std::string summary;
    std::vector<std::string> details;
    double read_per_token = 0;
    const double peak_rss = mib(peak_rss_bytes());
    char line[512];
    if (pager) {
        pager_stats_t after;
        pager_stats_init(&after);
        pager_get_stats(layerpager_ggml_pager(pager), &after);
        const uint64_t model_bytes = layerpager_ggml_model_bytes(pager);
        // What the budget leaves tensors: less the staging memory O_DIRECT reads
        // land in and the share kept for the buffers' page tables.
        const uint64_t for_tensors = budget - std::min(budget, after.staging_bytes + after.page_table_bytes);
        const uint64_t bound = model_bytes > for_tensors && budget > 0 ? model_bytes - for_tensors : 0;
        read_per_token = (double) (after.bytes_read - before.bytes_read) / measured;
        snprintf(line, sizeof line,
                 "llama-paged: pager budget %.1f MiB (%.0f%% of %.1f MiB) | %.2f tokens/s | %.1f CPU ms/token | "
                 "%.1f MiB read/token (bound %.1f) | peak resident %.1f MiB | peak RSS %.1f MiB | ",
                 mib(budget), 100.0 * budget / model_bytes, mib(model_bytes), measured / wall, 1000 * cpu / measured,
                 read_per_token / 1048576.0, mib(bound), mib(after.peak_resident_bytes), peak_rss);
        summary = line;
        // Where a token's time goes: acquires that waited for a read in
        // flight (or for budget), misses, and tensors a read-ahead brought in.
        snprintf(line, sizeof line,
                 "llama-paged: per token | waited %.1f ms | reading %.1f ms (all threads) | %.1f misses | "
                 "%.1f read-ahead hits | %.1f hits",
                 (after.wait_ns - before.wait_ns) / 1e6 / measured, (after.read_ns - before.read_ns) / 1e6 / measured,
                 (double) (after.misses - before.misses) / measured,
                 (double) (after.prefetch_hits - before.prefetch_hits) / measured,
                 (double) (after.hits - before.hits) / measured);
        details.emplace_back(line);
        layerpager_ggml_moe_stats moe;
        if (layerpager_ggml_moe(pager, &moe)) {
            const uint64_t tokens = moe.tokens - moe_before.tokens;
            const uint64_t acquires = moe.expert_acquires - moe_before.expert_acquires;
            const uint64_t predicted = moe.predicted - moe_before.predicted;
            const double per_token = tokens ? 1.0 / tokens : 0;
            snprintf(line, sizeof line,
                     "llama-paged: moe | %.2f MiB routed/token | %.2f MiB read/token | expert hits %.1f%% | "
                     "prediction accuracy %.1f%% | %.2f MiB predicted, not routed/token",
                     mib(moe.routed_bytes - moe_before.routed_bytes) * per_token,
                     mib(after.bytes_read - before.bytes_read) * per_token,
                     acquires ? 100.0 * (moe.expert_hits - moe_before.expert_hits) / acquires : 0.0,
                     predicted ? 100.0 * (moe.predicted_routed - moe_before.predicted_routed) / predicted : 0.0,
                     mib(moe.predicted_unrouted_bytes - moe_before.predicted_unrouted_bytes) * per_token);
            details.emplace_back(line);
        }
        // What the pager ended with: io mode, readers, the pass it learned.
        if (pager_describe(layerpager_ggml_pager(pager), line, sizeof line, nullptr) == PAGER_OK) {
            fprintf(stderr, "llama-paged: at the end: %s\n", line);
        }
    } else {
        snprintf(line, sizeof line, "llama-paged: no pager | %.2f tokens/s | %.1f CPU ms/token | peak RSS %.1f MiB",
                 measured / wall, 1000 * cpu / measured, peak_rss);
        summary = line;
    }
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    layerpager_ggml_free(pager);
    if (use_pager) {
        double raw_after = 0;
        uint32_t depth_after = 0;
        if (pager_measure_read_speed(model_path.c_str(), &raw_after, &depth_after) == PAGER_OK && raw_after > raw) {
            raw = raw_after;
            depth = depth_after;
        }
        char bound_text[160] = "raw speed not measured";
        if (raw > 0) {
            const double bound_s = std::max(compute_ms / 1000.0, read_per_token / raw);
            snprintf(bound_text, sizeof bound_text, "raw O_DIRECT %.2f GB/s (depth %u) | bound %.2f tokens/s%s | %.2fx the bound",
                     raw / 1e9, depth, 1.0 / bound_s, compute_ms > 0 ? "" : " (reads only)",
                     (measured / wall) * bound_s);
        }
        summary += bound_text;
    }
    printf("%s\n", summary.c_str());
    for (const std::string & d : details) {
        printf("%s\n", d.c_str());
    }
    llama_backend_free();
    return 0;
}
