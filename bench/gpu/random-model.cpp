// Writes a GGUF model with random weights in a real model's shape (llama architecture), for the
// probe on a machine where nothing can be downloaded and a real 8B model does not fit the files
// that can be carried.
#include "random-model.h"

#include "ggml.h"
#include "gguf.h"
#include "probe-args.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

// SentencePiece-style vocabulary like the test fixtures' (specials, 256 byte tokens, ChatML markers,
// printable ASCII), padded with unused pieces to the requested size so the output layer has a real
// model's width.
static void add_vocabulary(gguf_context * g, int n_vocab) {
    std::vector<std::string> tokens = { "<unk>", "<s>", "</s>" };
    std::vector<int32_t> types = { 2, 3, 3 };
    char buf[32];
    for (int b = 0; b < 256; b++) {
        std::snprintf(buf, sizeof buf, "<0x%02X>", b);
        tokens.push_back(buf);
        types.push_back(6);
    }
    tokens.push_back("<|im_start|>"); types.push_back(3);
    tokens.push_back("<|im_end|>");   types.push_back(3);
    tokens.push_back("\xe2\x96\x81"); types.push_back(1);
    for (int c = 0x21; c <= 0x7e; c++) { tokens.push_back(std::string(1, (char) c)); types.push_back(1); }
    for (int i = (int) tokens.size(); i < n_vocab; i++) {
        std::snprintf(buf, sizeof buf, "<unused%d>", i);
        tokens.push_back(buf);
        types.push_back(5);
    }
    std::vector<const char *> ptrs;
    std::vector<float> scores;
    for (size_t i = 0; i < tokens.size(); i++) { ptrs.push_back(tokens[i].c_str()); scores.push_back(-(float) i); }
    gguf_set_val_str(g, "tokenizer.ggml.model", "llama");
    gguf_set_arr_str(g, "tokenizer.ggml.tokens", ptrs.data(), ptrs.size());
    gguf_set_arr_data(g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores.data(), scores.size());
    gguf_set_arr_data(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types.data(), types.size());
    gguf_set_val_u32(g, "tokenizer.ggml.bos_token_id", 1);
    gguf_set_val_u32(g, "tokenizer.ggml.eos_token_id", 260);
    gguf_set_val_u32(g, "tokenizer.ggml.unknown_token_id", 0);
    gguf_set_val_bool(g, "tokenizer.ggml.add_bos_token", true);
    gguf_set_val_bool(g, "tokenizer.ggml.add_eos_token", false);
}

// Random blocks of the tensor type, built once and written over and over: the bytes are valid
// (finite scales), their values do not matter for speed, and generating gigabytes would cost minutes.
static std::vector<uint8_t> random_blocks(ggml_type type, size_t bytes) {
    std::mt19937_64 rng(42);
    std::vector<uint8_t> pool(bytes);
    for (auto & b : pool) b = (uint8_t) rng();
    const size_t block = ggml_type_size(type);
    const ggml_fp16_t scale = ggml_fp32_to_fp16(0.002f);
    if (type == GGML_TYPE_F16) {
        std::uniform_real_distribution<float> u(-0.02f, 0.02f);
        for (size_t i = 0; i + 1 < bytes; i += 2) { ggml_fp16_t h = ggml_fp32_to_fp16(u(rng)); std::memcpy(&pool[i], &h, 2); }
    } else if (type == GGML_TYPE_Q4_0 || type == GGML_TYPE_Q8_0) {
        for (size_t i = 0; i + block <= bytes; i += block) std::memcpy(&pool[i], &scale, 2); // d leads each block
    } else {
        die("make-model: type must be f16, q8_0 or q4_0");
    }
    return pool;
}

int make_model(const std::string & out, const Args & a) {
    const int layers = arg_int(a, "layers", 32), embd = arg_int(a, "embd", 4096), ff = arg_int(a, "ff", 14336);
    const int heads = arg_int(a, "heads", 32), kv_heads = arg_int(a, "kv_heads", 8), n_vocab = arg_int(a, "vocab", 32000);
    const std::string type_name = arg_str(a, "type", "q4_0");
    const ggml_type type = type_name == "f16" ? GGML_TYPE_F16 : type_name == "q8_0" ? GGML_TYPE_Q8_0 : type_name == "q4_0" ? GGML_TYPE_Q4_0 : GGML_TYPE_COUNT;
    if (type == GGML_TYPE_COUNT) die("make-model: type must be f16, q8_0 or q4_0, not " + type_name);
    if (embd % heads || heads % kv_heads || n_vocab < 400) die("make-model: embd must divide by heads, heads by kv_heads, and vocab be at least 400");
    const int head_dim = embd / heads;
    const double t0 = now_ms();

    gguf_context * g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", "llama");
    gguf_set_val_str(g, "general.name", "torpor-probe random weights");
    gguf_set_val_u32(g, "general.file_type", type == GGML_TYPE_F16 ? 1 : type == GGML_TYPE_Q8_0 ? 7 : 2);
    gguf_set_val_u32(g, "llama.context_length", 131072);
    gguf_set_val_u32(g, "llama.embedding_length", embd);
    gguf_set_val_u32(g, "llama.block_count", layers);
    gguf_set_val_u32(g, "llama.feed_forward_length", ff);
    gguf_set_val_u32(g, "llama.attention.head_count", heads);
    gguf_set_val_u32(g, "llama.attention.head_count_kv", kv_heads);
    gguf_set_val_u32(g, "llama.rope.dimension_count", head_dim);
    gguf_set_val_f32(g, "llama.rope.freq_base", 500000.0f);
    gguf_set_val_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_set_val_u32(g, "llama.vocab_size", n_vocab);
    add_vocabulary(g, n_vocab);

    ggml_init_params ip = { (size_t) (16 + 9 * layers) * ggml_tensor_overhead(), nullptr, true };
    ggml_context * meta = ggml_init(ip);
    std::vector<ggml_tensor *> tensors;
    auto add = [&](const std::string & name, ggml_type t, int64_t ne0, int64_t ne1) {
        ggml_tensor * x = ne1 ? ggml_new_tensor_2d(meta, t, ne0, ne1) : ggml_new_tensor_1d(meta, t, ne0);
        ggml_set_name(x, name.c_str());
        gguf_add_tensor(g, x);
        tensors.push_back(x);
    };
    add("token_embd.weight", type, embd, n_vocab);
    for (int i = 0; i < layers; i++) {
        const std::string p = "blk." + std::to_string(i) + ".";
        add(p + "attn_norm.weight", GGML_TYPE_F32, embd, 0);
        add(p + "attn_q.weight", type, embd, embd);
        add(p + "attn_k.weight", type, embd, (int64_t) head_dim * kv_heads);
        add(p + "attn_v.weight", type, embd, (int64_t) head_dim * kv_heads);
        add(p + "attn_output.weight", type, embd, embd);
        add(p + "ffn_norm.weight", GGML_TYPE_F32, embd, 0);
        add(p + "ffn_gate.weight", type, embd, ff);
        add(p + "ffn_up.weight", type, embd, ff);
        add(p + "ffn_down.weight", type, ff, embd);
    }
    add("output_norm.weight", GGML_TYPE_F32, embd, 0);
    add("output.weight", type, embd, n_vocab);

    const std::string tmp = out + ".tmp";
    if (!gguf_write_to_file(g, tmp.c_str(), true)) die("make-model: cannot write " + tmp);
    FILE * f = std::fopen(tmp.c_str(), "ab");
    if (!f) die("make-model: cannot append to " + tmp);
    const size_t align = gguf_get_alignment(g);
    const std::vector<uint8_t> pool = random_blocks(type, (size_t) ggml_type_size(type) * (16u << 20) / ggml_type_size(type));
    const std::vector<float> ones(embd, 1.0f);
    const std::vector<uint8_t> zeros(align, 0);
    size_t total = 0;
    for (ggml_tensor * x : tensors) {
        const size_t n = ggml_nbytes(x);
        if (x->type == GGML_TYPE_F32) {
            std::fwrite(ones.data(), 1, n, f);
        } else {
            for (size_t done = 0; done < n;) {
                const size_t chunk = std::min(n - done, pool.size());
                std::fwrite(pool.data(), 1, chunk, f);
                done += chunk;
            }
        }
        const size_t pad = (align - n % align) % align;
        std::fwrite(zeros.data(), 1, pad, f);
        total += n + pad;
    }
    if (std::fclose(f) != 0 || std::rename(tmp.c_str(), out.c_str()) != 0) die("make-model: cannot finish " + out);
    std::printf("model: %s, llama %d layers, embd %d, ff %d, heads %d/%d, vocab %d, %s, %.2f GiB, written in %.1f s\n",
                out.c_str(), layers, embd, ff, heads, kv_heads, n_vocab, type_name.c_str(), total / 1073741824.0, (now_ms() - t0) / 1000);
    ggml_free(meta);
    gguf_free(g);
    return 0;
}

