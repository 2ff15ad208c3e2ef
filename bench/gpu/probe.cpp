// torpor GPU probe: measures, through llama.h (the API node-llama-cpp drives), what the runtime
// relies on, on a machine that has a GPU but no Node.js: the backend and offloaded layers, device
// memory given back when a context is freed, per-sequence state save/load (host copy, file, cold
// file), whether a restored sequence continues exactly like the original, and batched decode at
// several sequence counts. It also writes the model it measures, with random weights of a real
// model's shape, because nothing can be downloaded there and a real 8B model does not fit the 64 MiB
// that can be carried. Output: a readable report on stdout and one JSON object (--json FILE).
//
//   torpor-probe make-model OUT.gguf [layers=32 embd=4096 ff=14336 heads=32 kv_heads=8 vocab=32000 type=q4_0]
//   torpor-probe run MODEL.gguf [ngl=999 ctx=8192 state_tokens=4096 prompt=512 gen=128 seqs=1,4,16
//                                fa=off,on repeats=3 threads=N dir=/tmp json=FILE]
#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "probe-args.h"
#include "random-model.h"

static std::vector<std::string> g_log_lines;

static void log_sink(ggml_log_level level, const char * text, void *) {
    const std::string line(text);
    // Only what says where the model went: the offload summary and the devices used.
    if (line.find("offload") != std::string::npos || line.find("using device") != std::string::npos ||
        line.find("CUDA") != std::string::npos || level == GGML_LOG_LEVEL_ERROR) {
        g_log_lines.push_back(line);
    }
}

struct DeviceMemory { size_t free = 0, total = 0; };

static ggml_backend_dev_t measured_device() {
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        if (ggml_backend_dev_type(d) == GGML_BACKEND_DEVICE_TYPE_GPU) return d;
    }
    return ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
}

static DeviceMemory device_memory() {
    DeviceMemory m;
    ggml_backend_dev_memory(measured_device(), &m.free, &m.total);
    return m;
}

static double rss_mib() {
    long pages = 0, resident = 0;
    FILE * f = std::fopen("/proc/self/statm", "r");
    if (f) { if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0; std::fclose(f); }
    return resident * (double) sysconf(_SC_PAGESIZE) / 1048576.0;
}

static std::ostringstream g_json;
static bool g_json_first = true;

static void record(const std::string & key, double value, const char * unit, const std::string & label) {
    std::printf("  %-58s %12.2f %s\n", label.c_str(), value, unit);
    g_json << (g_json_first ? "" : ",") << "\n  \"" << key << "\": " << value;
    g_json_first = false;
}

struct Decoder {
    llama_context * ctx;
    llama_batch batch;
    int n_vocab;

    void add(llama_token t, llama_pos pos, llama_seq_id seq, bool logits) {
        const int i = batch.n_tokens++;
        batch.token[i] = t; batch.pos[i] = pos; batch.n_seq_id[i] = 1; batch.seq_id[i][0] = seq; batch.logits[i] = logits;
    }
    void decode() {
        if (llama_decode(ctx, batch) != 0) die("llama_decode failed (out of memory for the batch or the KV cache?)");
        batch.n_tokens = 0;
    }
    llama_token argmax(int i) const {
        const float * l = llama_get_logits_ith(ctx, i);
        return (llama_token) (std::max_element(l, l + n_vocab) - l);
    }
    // Fills `seq` with n tokens from position 0 in chunks of n_batch; returns the last position's argmax.
    llama_token prefill(llama_seq_id seq, const std::vector<llama_token> & tokens, int n_batch) {
        llama_token next = 0;
        for (size_t i = 0; i < tokens.size(); i++) {
            const bool last = i + 1 == tokens.size();
            add(tokens[i], (llama_pos) i, seq, last);
            if (batch.n_tokens == n_batch || last) {
                const int idx = batch.n_tokens - 1;
                decode();
                if (last) next = argmax(idx);
            }
        }
        return next;
    }
    // Greedy continuation of one sequence on its own, for comparing an original with its restored copy.
    std::vector<llama_token> continue_greedy(llama_seq_id seq, llama_token first, llama_pos pos, int n) {
        std::vector<llama_token> out;
        llama_token t = first;
        for (int i = 0; i < n; i++) {
            add(t, pos + i, seq, true);
            decode();
            t = argmax(0);
            out.push_back(t);
        }
        return out;
    }
};

static std::vector<llama_token> random_tokens(int n, int n_vocab, unsigned seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> d(300, n_vocab - 1);
    std::vector<llama_token> t(n);
    for (auto & x : t) x = d(rng);
    return t;
}

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

static void drop_cache(const std::string & path) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

static double fsync_file(const std::string & path) {
    const double t0 = now_ms();
    int fd = open(path.c_str(), O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); }
    return now_ms() - t0;
}

// Plain read of a file with its pages dropped: the bandwidth a cold rehydrate is held against.
static double cold_read_ms(const std::string & path, std::vector<uint8_t> & buf) {
    drop_cache(path);
    const double t0 = now_ms();
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return -1;
    size_t off = 0;
    ssize_t n;
    while ((n = read(fd, buf.data() + off, std::min<size_t>(buf.size() - off, 8u << 20))) > 0) off += n;
    close(fd);
    return now_ms() - t0;
}

static llama_context * new_context(llama_model * model, int n_ctx_per_seq, int n_seq, int threads, bool flash_attn = false) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) n_ctx_per_seq * n_seq;
    cp.n_seq_max = n_seq;
    cp.n_batch = 2048;
    cp.n_ubatch = 512;
    cp.n_threads = cp.n_threads_batch = threads;
    cp.kv_unified = false; // as node-llama-cpp creates them: one KV stream per sequence
    cp.swa_full = false;
    // node-llama-cpp leaves flash attention off unless asked (llama-server's default is auto: on
    // where the backend has it), so the probe measures torpor's default unless told fa=on.
    cp.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) die("llama_init_from_model failed for " + std::to_string(n_seq) + " x " + std::to_string(n_ctx_per_seq) + " tokens");
    return ctx;
}

static int run(const std::string & model_path, const Args & a) {
    const int ngl = arg_int(a, "ngl", 999), n_ctx = arg_int(a, "ctx", 8192), state_tokens = arg_int(a, "state_tokens", 4096);
    const int prompt = arg_int(a, "prompt", 512), gen = arg_int(a, "gen", 128);
    const int threads = arg_int(a, "threads", std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
    const std::string dir = arg_str(a, "dir", "/tmp"), json_path = arg_str(a, "json", "");
    std::vector<int> seq_counts;
    { std::stringstream ss(arg_str(a, "seqs", "1,4,16")); std::string x; while (std::getline(ss, x, ',')) seq_counts.push_back(std::stoi(x)); }
    const int max_seqs = *std::max_element(seq_counts.begin(), seq_counts.end());
    std::vector<std::string> fa_modes;
    { std::stringstream ss(arg_str(a, "fa", "off")); std::string x; while (std::getline(ss, x, ',')) fa_modes.push_back(x); }
    const int repeats = std::max(1L, arg_int(a, "repeats", 3));
    if (state_tokens + 64 > n_ctx || prompt + gen > n_ctx) die("ctx must exceed state_tokens + 64 and prompt + gen");

    llama_log_set(log_sink, nullptr);
    llama_backend_init();
    std::printf("system: %s\n", llama_print_system_info());
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        size_t f, t; ggml_backend_dev_memory(d, &f, &t);
        std::printf("device %zu: %s (%s), %.1f of %.1f GiB free\n", i, ggml_backend_dev_name(d), ggml_backend_dev_description(d), f / 1073741824.0, t / 1073741824.0);
    }
    g_json << "{\n  \"device\": \"" << ggml_backend_dev_description(measured_device()) << "\"";
    g_json_first = false;

    const DeviceMemory m0 = device_memory();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = ngl;
    double t0 = now_ms();
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) die("cannot load " + model_path);
    const double load_ms = now_ms() - t0;
    const DeviceMemory m1 = device_memory();
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::printf("backend (what llama.cpp logged about placement):\n");
    for (const auto & l : g_log_lines) std::printf("  %s", l.c_str());
    std::printf("model: %d layers, %d asked on the GPU\n", llama_model_n_layer(model), ngl);

    std::printf("\nmodel and context memory (%s):\n", ggml_backend_dev_description(measured_device()));
    record("model_load_ms", load_ms, "ms", "model load");
    record("model_device_mib", (double) (m0.free - m1.free) / 1048576.0, "MiB", "device memory taken by the model");

    // One session's context: what creating it costs, what it takes, and whether freeing gives it back.
    t0 = now_ms();
    llama_context * ctx = new_context(model, n_ctx, 1, threads);
    record("context_create_ms", now_ms() - t0, "ms", "create a " + std::to_string(n_ctx) + "-token context");
    const DeviceMemory m2 = device_memory();
    record("context_device_mib", ((double) m1.free - (double) m2.free) / 1048576.0, "MiB", "device memory taken by the context");
    Decoder d1 { ctx, llama_batch_init(2048, 0, 1), n_vocab };
    const std::vector<llama_token> history = random_tokens(state_tokens, n_vocab, 7);
    t0 = now_ms();
    d1.prefill(0, history, 2048);
    record("prefill_tok_per_s", state_tokens / ((now_ms() - t0) / 1000), "tok/s", "prefill of " + std::to_string(state_tokens) + " tokens, 1 sequence");
    const double rss_before_free = rss_mib();
    t0 = now_ms();
    llama_batch_free(d1.batch);
    llama_free(ctx);
    record("context_free_ms", now_ms() - t0, "ms", "free the context");
    const DeviceMemory m3 = device_memory();
    record("context_device_returned_mib", ((double) m3.free - (double) m2.free) / 1048576.0, "MiB", "device memory given back by the free");
    record("context_device_leftover_mib", ((double) m1.free - (double) m3.free) / 1048576.0, "MiB", "device memory still held after the free (0 = all back)");
    record("host_rss_returned_mib", rss_before_free - rss_mib(), "MiB", "host RSS given back by the free");

    // Per-sequence state in a shared context, as torpor's multi-sequence pool uses it, with flash
    // attention off and on: without it llama.cpp keeps V transposed, and a sequence's V cells are
    // then copied one row at a time.
    bool same = true;
    for (const std::string & fa : fa_modes) {
        const std::string sfx = fa == "on" ? "_fa" : "";
        std::printf("\nper-sequence state, %d tokens, in a 2-sequence context, flash attention %s (median of %d):\n", state_tokens, fa.c_str(), repeats);
        ctx = new_context(model, n_ctx, 2, threads, fa == "on");
        Decoder d2 { ctx, llama_batch_init(2048, 0, 2), n_vocab };
        const llama_token next = d2.prefill(0, history, 2048);
        llama_memory_t mem = llama_get_memory(ctx);
        const size_t state_size = llama_state_seq_get_size(ctx, 0);
        const double gib = state_size / 1073741824.0;
        record("state_mib" + sfx, state_size / 1048576.0, "MiB", "state size (KV cache of the sequence)");
        std::vector<uint8_t> host(state_size), readbuf(state_size + (1u << 20));
        std::vector<double> get, set, save, sync, warm, cold, plain;
        const std::string file = dir + "/torpor-probe-state.bin";
        std::vector<llama_token> tokens_out(state_tokens + 64);
        size_t n_out = 0;
        for (int r = 0; r < repeats; r++) {
            t0 = now_ms();
            llama_state_seq_get_data(ctx, host.data(), host.size(), 0);
            get.push_back(now_ms() - t0);
            t0 = now_ms();
            if (llama_state_seq_set_data(ctx, host.data(), host.size(), 1) == 0) die("llama_state_seq_set_data refused the state");
            set.push_back(now_ms() - t0);
            llama_memory_seq_rm(mem, 1, -1, -1);
            t0 = now_ms();
            if (llama_state_seq_save_file(ctx, file.c_str(), 0, history.data(), history.size()) == 0) die("save to " + file + " failed");
            save.push_back(now_ms() - t0);
            sync.push_back(fsync_file(file));
            t0 = now_ms();
            if (llama_state_seq_load_file(ctx, file.c_str(), 1, tokens_out.data(), tokens_out.size(), &n_out) == 0) die("load from " + file + " failed");
            warm.push_back(now_ms() - t0);
            llama_memory_seq_rm(mem, 1, -1, -1);
            drop_cache(file);
            t0 = now_ms();
            if (llama_state_seq_load_file(ctx, file.c_str(), 1, tokens_out.data(), tokens_out.size(), &n_out) == 0) die("cold load from " + file + " failed");
            cold.push_back(now_ms() - t0);
            plain.push_back(cold_read_ms(file, readbuf));
            if (r + 1 < repeats) llama_memory_seq_rm(mem, 1, -1, -1);
        }
        record("state_get_ms" + sfx, median(get), "ms", "copy out to host memory (llama_state_seq_get_data)");
        record("state_get_gib_per_s" + sfx, gib / (median(get) / 1000), "GiB/s", "  bandwidth");
        record("state_set_ms" + sfx, median(set), "ms", "copy in from host memory (llama_state_seq_set_data)");
        record("state_set_gib_per_s" + sfx, gib / (median(set) / 1000), "GiB/s", "  bandwidth");
        record("save_file_ms" + sfx, median(save), "ms", "save to a file, no fsync (llama_state_seq_save_file)");
        record("save_fsync_ms" + sfx, median(sync), "ms", "  then fsync");
        record("load_file_warm_ms" + sfx, median(warm), "ms", "load from the file, in the page cache");
        record("load_file_cold_ms" + sfx, median(cold), "ms", "load from the file, pages dropped (cold)");
        record("read_file_cold_ms" + sfx, median(plain), "ms", "  plain read() of the same file, cold (the floor)");
        record("load_cold_vs_read" + sfx, median(plain) / median(cold), "x", "  cold load / read bandwidth");
        // The restored copy must continue exactly like the original (greedy), each decoded on its own.
        const std::vector<llama_token> a_out = d2.continue_greedy(0, next, state_tokens, 32);
        const std::vector<llama_token> b_out = d2.continue_greedy(1, next, state_tokens, 32);
        const bool equal = a_out == b_out && n_out == (size_t) state_tokens;
        same = same && equal;
        std::printf("  %-58s %12s\n", "restored sequence continues like the original (32 greedy)", equal ? "yes" : "NO");
        g_json << ",\n  \"restored_continuation_equal" << sfx << "\": " << (equal ? "true" : "false");
        std::remove(file.c_str());
        llama_batch_free(d2.batch);
        llama_free(ctx);
    }

    // Batched decode: one context with max_seqs sequences, every active sequence in one batch per step.
    for (const std::string & fa : fa_modes) {
    std::printf("\nbatched decode, flash attention %s, prompt %d + %d generated tokens per sequence:\n", fa.c_str(), prompt, gen);
    ctx = new_context(model, prompt + gen + 8, max_seqs, threads, fa == "on");
    Decoder db { ctx, llama_batch_init(std::max(2048, max_seqs), 0, max_seqs), n_vocab };
    const std::string suffix = fa == "on" ? "_fa" : "";
    for (int n : seq_counts) {
        llama_memory_clear(llama_get_memory(ctx), true);
        std::vector<llama_token> last(n);
        for (int s = 0; s < n; s++) last[s] = db.prefill(s, random_tokens(prompt, n_vocab, 100 + s), 2048);
        t0 = now_ms();
        for (int step = 0; step < gen; step++) {
            for (int s = 0; s < n; s++) db.add(last[s], prompt + step, s, true);
            db.decode();
            for (int s = 0; s < n; s++) last[s] = db.argmax(s);
        }
        const double secs = (now_ms() - t0) / 1000;
        record("decode_tok_per_s_" + std::to_string(n) + suffix, n * gen / secs, "tok/s", std::to_string(n) + " sequence(s): all together");
        record("decode_tok_per_s_per_seq_" + std::to_string(n) + suffix, gen / secs, "tok/s", "  each");
    }
    llama_batch_free(db.batch);
    llama_free(ctx);
    }
    llama_model_free(model);
    const DeviceMemory m4 = device_memory();
    record("device_leftover_after_model_free_mib", ((double) m0.free - (double) m4.free) / 1048576.0, "MiB", "device memory still held after the model is freed");
    llama_backend_free();

    g_json << "\n}\n";
    if (!json_path.empty()) {
        FILE * f = std::fopen(json_path.c_str(), "w");
        if (f) { std::fputs(g_json.str().c_str(), f); std::fclose(f); }
    }
    return same ? 0 : 1;
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s make-model OUT.gguf [key=value...] | run MODEL.gguf [key=value...]\n", argv[0]);
        return 2;
    }
    Args a;
    for (int i = 3; i < argc; i++) {
        const char * eq = std::strchr(argv[i], '=');
        if (!eq) die(std::string("arguments are key=value, not ") + argv[i]);
        a[std::string(argv[i], (size_t) (eq - argv[i]))] = eq + 1;
    }
    const std::string cmd = argv[1];
    if (cmd == "make-model") return make_model(argv[2], a);
    if (cmd == "run") return run(argv[2], a);
    die("unknown command " + cmd + " (make-model or run)");
}
