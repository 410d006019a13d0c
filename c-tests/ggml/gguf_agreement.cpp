// ggml's own GGUF test suite as ours: the generator of llama.cpp's
// tests/test-gguf.cpp writes valid and deliberately damaged GGUF files of
// every kind it knows, for many seeds; each file is opened by ggml and by
// layerpager (through the C API, in every io mode), and the two must agree:
// the same files accepted, and for each accepted file the same tensors
// (name, offset, size, type, dims) with the same bytes.
//
// One difference is allowed and counted: a file that lacks only the
// padding after its last tensor. ggml reads the data section padded to the
// alignment and refuses it; every tensor's bytes are there, so layerpager
// accepts it (an engine streaming tensors needs no padding).
//
// Built by scripts/ggml-check.sh against the llama.cpp tree that
// scripts/llama-cpp.sh fetches (llama-cpp-python 0.3.36, ggml 0c1e570);
// it includes test-gguf.cpp whole to reuse its generator.
//
// usage: gguf_agreement OUT_DIR SEEDS

#define main test_gguf_main
#include "tests/test-gguf.cpp"
#undef main

#include "layerpager.h"

#include <cinttypes>
#include <map>

namespace {

struct tally {
    int files = 0, both_accept = 0, both_refuse = 0, padding_only = 0, mismatches = 0;
    long tensors = 0, q8_1_tensors = 0;
    uint64_t bytes = 0;
};

void mismatch(tally & t, const std::string & file, const std::string & what) {
    if (t.mismatches < 50) {
        fprintf(stderr, "MISMATCH %s: %s\n", file.c_str(), what.c_str());
    }
    t.mismatches++;
}

void quiet_log(enum ggml_log_level, const char *, void *) {}

// Compares layerpager's view of an accepted file with ggml's, bytes too.
void compare(tally & t, const std::string & path, gguf_context * g, ggml_context * ctx, pager_t * p, bool with_bytes) {
    const int64_t n = gguf_get_n_tensors(g);
    if ((int64_t) pager_tensor_count(p) != n) {
        mismatch(t, path, "tensor count " + std::to_string(pager_tensor_count(p)) + " vs ggml " + std::to_string(n));
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        pager_tensor_info_t info;
        if (pager_tensor_info(p, (uint32_t) i, &info) != PAGER_OK) {
            mismatch(t, path, "pager_tensor_info failed");
            return;
        }
        const char * name = gguf_get_tensor_name(g, i);
        const uint64_t offset = gguf_get_data_offset(g) + gguf_get_tensor_offset(g, i);
        const uint64_t size = gguf_get_tensor_size(g, i);
        const uint32_t type = (uint32_t) gguf_get_tensor_type(g, i);
        if (strcmp(info.name, name) != 0 || info.offset != offset || info.size != size || info.ggml_type != type) {
            char buf[512];
            snprintf(buf, sizeof buf, "tensor %" PRId64 ": ours '%s' at %" PRIu64 " size %" PRIu64 " type %u, ggml '%s' at %" PRIu64 " size %" PRIu64 " type %u",
                     i, info.name, info.offset, info.size, info.ggml_type, name, offset, size, type);
            mismatch(t, path, buf);
            continue;
        }
        if (type == GGML_TYPE_Q8_1) {
            t.q8_1_tensors++;
        }
        t.tensors++;
        if (!with_bytes) {
            continue;
        }
        const ggml_tensor * gt = ggml_get_tensor(ctx, name);
        for (int d = 0; d < GGML_MAX_DIMS; d++) {
            const uint64_t ours = d < (int) info.n_dims ? info.dims[d] : 1;
            if (gt == nullptr || ours != (uint64_t) gt->ne[d]) {
                mismatch(t, path, std::string("dims of ") + name);
                break;
            }
        }
        pager_tensor_t a;
        if (pager_acquire(p, (uint32_t) i, &a) != PAGER_OK) {
            mismatch(t, path, std::string("acquire of ") + name + ": " + pager_last_error_message());
            continue;
        }
        if (gt == nullptr || a.size != ggml_nbytes(gt) || (a.size && memcmp(a.data, gt->data, a.size) != 0)) {
            mismatch(t, path, std::string("bytes of ") + name);
        }
        t.bytes += a.size;
        pager_release(p, &a);
    }
}

// A GGUF of one 1-D tensor of `type` with `ne0` elements, written by hand
// so that types ggml has removed can be written too.
std::string write_one_tensor(const std::string & dir, uint32_t type, uint64_t ne0, size_t data_len) {
    const std::string path = dir + "/type-" + std::to_string(type) + ".gguf";
    std::vector<uint8_t> b;
    auto put = [&b](const void * p, size_t n) { b.insert(b.end(), (const uint8_t *) p, (const uint8_t *) p + n); };
    const uint32_t version = 3, n_dims = 1;
    const uint64_t n_tensors = 1, n_kv = 0, offset = 0;
    const std::string name = "t";
    const uint64_t name_len = name.size();
    put("GGUF", 4);
    put(&version, 4);
    put(&n_tensors, 8);
    put(&n_kv, 8);
    put(&name_len, 8);
    put(name.data(), name.size());
    put(&n_dims, 4);
    put(&ne0, 8);
    put(&type, 4);
    put(&offset, 8);
    b.resize((b.size() + 31) / 32 * 32, 0);
    b.resize(b.size() + data_len, 0x5a);
    FILE * f = fopen(path.c_str(), "wb");
    GGML_ASSERT(f && fwrite(b.data(), 1, b.size(), f) == b.size());
    fclose(f);
    return path;
}

// Every type id up to two past GGML_TYPE_COUNT: where ggml knows the type,
// the pager's size of a tensor of it is ggml's; where ggml does not (removed
// or unknown ids), the pager refuses it.
int check_type_table(const std::string & dir) {
    int bad = 0, known = 0;
    for (uint32_t type = 0; type < GGML_TYPE_COUNT + 2; type++) {
        const bool ggml_knows = type < GGML_TYPE_COUNT && ggml_blck_size((ggml_type) type) != 0;
        const uint64_t ne0 = ggml_knows ? 2 * (uint64_t) ggml_blck_size((ggml_type) type) : 256;
        const size_t nbytes = ggml_knows ? ggml_row_size((ggml_type) type, (int64_t) ne0) : 4096;
        const std::string path = write_one_tensor(dir, type, ne0, (nbytes + 31) / 32 * 32);
        pager_t * p = nullptr;
        const pager_status_t st = pager_open_gguf(path.c_str(), nullptr, &p);
        pager_tensor_info_t info = {};
        if (st == PAGER_OK) {
            pager_tensor_info(p, 0, &info);
        }
        if (ggml_knows) {
            known++;
            if (st != PAGER_OK || info.size != nbytes) {
                fprintf(stderr, "type %u (%s): ggml says %zu bytes for %" PRIu64 " elements, layerpager %s %" PRIu64 "\n",
                        type, ggml_type_name((ggml_type) type), nbytes, ne0, pager_status_string(st), info.size);
                bad++;
            }
        } else if (st != PAGER_ERR_FORMAT) {
            fprintf(stderr, "type %u: ggml has no such type, layerpager says %s\n", type, pager_status_string(st));
            bad++;
        }
        pager_close(p);
        remove(path.c_str());
    }
    printf("gguf_agreement: type table: %d types ggml knows, %d ids up to %d; %d disagreements\n", known,
           GGML_TYPE_COUNT + 2, GGML_TYPE_COUNT + 1, bad);
    return bad;
}

} // namespace

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s OUT_DIR SEEDS\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const int seeds = atoi(argv[2]);
    ggml_log_set(quiet_log, nullptr);

    const std::vector<handcrafted_file_type> kinds = {
        HANDCRAFTED_HEADER_BAD_MAGIC, HANDCRAFTED_HEADER_BAD_VERSION_0, HANDCRAFTED_HEADER_BAD_VERSION_1,
        HANDCRAFTED_HEADER_BAD_VERSION_FUTURE, HANDCRAFTED_HEADER_BAD_N_KV, HANDCRAFTED_HEADER_BAD_N_TENSORS,
        HANDCRAFTED_HEADER_EMPTY,
        HANDCRAFTED_KV_BAD_KEY_SIZE, HANDCRAFTED_KV_EMPTY_KEY, HANDCRAFTED_KV_BAD_TYPE,
        HANDCRAFTED_KV_DUPLICATE_KEY, HANDCRAFTED_KV_BAD_ALIGN, HANDCRAFTED_KV_WRONG_TYPE_ALIGN,
        HANDCRAFTED_KV_SUCCESS,
        HANDCRAFTED_TENSORS_BAD_NAME_SIZE, HANDCRAFTED_TENSORS_BAD_N_DIMS, HANDCRAFTED_TENSORS_BAD_SHAPE,
        HANDCRAFTED_TENSORS_ZERO_DIM, HANDCRAFTED_TENSORS_NE_TOO_BIG, HANDCRAFTED_TENSORS_NBYTES_TOO_BIG,
        HANDCRAFTED_TENSORS_NBYTES_PAD_WRAP, HANDCRAFTED_TENSORS_BAD_TYPE, HANDCRAFTED_TENSORS_BAD_OFFSET,
        HANDCRAFTED_TENSORS_DUPLICATE_NAME, HANDCRAFTED_TENSORS_BAD_ALIGN,
        HANDCRAFTED_TENSORS_INCONSISTENT_ALIGN, HANDCRAFTED_TENSORS_SUCCESS, HANDCRAFTED_TENSORS_CUSTOM_ALIGN,
        HANDCRAFTED_DATA_NOT_ENOUGH_DATA, HANDCRAFTED_DATA_BAD_ALIGN, HANDCRAFTED_DATA_INCONSISTENT_ALIGN,
        HANDCRAFTED_DATA_MEM_SIZE_OVERFLOW, HANDCRAFTED_DATA_SUCCESS, HANDCRAFTED_DATA_CUSTOM_ALIGN,
    };

    const int type_disagreements = check_type_table(dir);

    tally t;
    std::map<std::string, std::pair<int, int>> per_kind; // accepted by both, files
    for (int seed = 0; seed < seeds; seed++) {
        for (handcrafted_file_type kind : kinds) {
            const std::string path = dir + "/" + handcrafted_file_type_name(kind) + "-" + std::to_string(seed) + ".gguf";
            {
                FILE * tmp = get_handcrafted_file((unsigned) seed, kind);
                const std::vector<uint8_t> bytes = read_file_to_buffer(tmp);
                fclose(tmp);
                FILE * out = fopen(path.c_str(), "wb");
                GGML_ASSERT(out);
                GGML_ASSERT(fwrite(bytes.data(), 1, bytes.size(), out) == bytes.size());
                fclose(out);
            }
            t.files++;
            per_kind[handcrafted_file_type_name(kind)].second++;

            ggml_context * ctx = nullptr;
            gguf_context * full = gguf_init_from_file(path.c_str(), { /*no_alloc =*/ false, /*ctx =*/ &ctx });
            gguf_context * header = gguf_init_from_file(path.c_str(), { /*no_alloc =*/ true, /*ctx =*/ nullptr });

            int accepted = -1;
            for (uint32_t io = PAGER_IO_PREAD; io <= PAGER_IO_MMAP; io++) {
                pager_options_t o;
                pager_options_default(&o);
                o.io_mode = io;
                o.prefetch_threads = 0;
                pager_t * p = nullptr;
                const pager_status_t st = pager_open_gguf(path.c_str(), &o, &p);
                const int ours = st == PAGER_OK;
                if (accepted != -1 && ours != accepted) {
                    mismatch(t, path, "io modes disagree");
                }
                accepted = ours;
                if (ours && full) {
                    compare(t, path, full, ctx, p, true);
                } else if (ours && header) {
                    // ggml read the header but not the data: only the padding
                    // after the last tensor may be missing.
                    compare(t, path, header, nullptr, p, false);
                    uint64_t end = gguf_get_data_offset(header);
                    const int64_t n = gguf_get_n_tensors(header);
                    if (n > 0) {
                        end += gguf_get_tensor_offset(header, n - 1) + gguf_get_tensor_size(header, n - 1);
                    }
                    const size_t align = gguf_get_alignment(header);
                    FILE * f = fopen(path.c_str(), "rb");
                    fseek(f, 0, SEEK_END);
                    const uint64_t file_size = (uint64_t) ftell(f);
                    fclose(f);
                    const uint64_t padded = (end + align - 1) / align * align;
                    if (!(file_size >= end && file_size < padded)) {
                        mismatch(t, path, "we accept a file ggml refuses for more than missing padding");
                    } else if (io == PAGER_IO_PREAD) {
                        t.padding_only++;
                    }
                } else if (ours) {
                    mismatch(t, path, "we accept a file ggml cannot parse");
                } else if (full) {
                    mismatch(t, path, std::string("ggml accepts, we refuse: ") + pager_last_error_message());
                }
                pager_close(p);
            }
            if (accepted && full) {
                t.both_accept++;
                per_kind[handcrafted_file_type_name(kind)].first++;
            } else if (!accepted && !full) {
                t.both_refuse++;
            }
            if (full) {
                gguf_free(full);
            }
            if (ctx) {
                ggml_free(ctx);
            }
            if (header) {
                gguf_free(header);
            }
            remove(path.c_str());
        }
    }
    for (const auto & [name, counts] : per_kind) {
        printf("  %-28s %3d of %3d accepted by both\n", name.c_str(), counts.first, counts.second);
    }
    printf("gguf_agreement: %d files (%d seeds x %zu kinds): %d accepted by both, %d refused by both, "
           "%d lacking only trailing padding (accepted by us alone, as documented); "
           "%ld tensor comparisons over 3 io modes (%ld of Q8_1), %" PRIu64 " bytes; %d mismatches\n",
           t.files, seeds, kinds.size(), t.both_accept, t.both_refuse, t.padding_only, t.tensors,
           t.q8_1_tensors, t.bytes, t.mismatches);
    if (t.q8_1_tensors == 0) {
        fprintf(stderr, "no Q8_1 tensor was compared: raise SEEDS\n");
        return 1;
    }
    return t.mismatches == 0 && type_disagreements == 0 ? 0 : 1;
}
