// Torpor's addition to node-llama-cpp's addon: a context's CPU threads kept alive between decodes.
//
// node-llama-cpp 3.22.1 never attaches a ggml threadpool to its contexts, so every llama_decode on
// the CPU creates its worker threads and joins them again (ggml_graph_compute's "disposable"
// threadpool), and the calling thread is whichever libuv pool thread the decode job landed on.
// llama-server attaches one persistent threadpool per context (common_init_from_params); in
// process, SmolLM2 decoded a token in 11-18 ms without it against 7.4-7.9 ms for llama-server
// (docs/benchmarks.md). A persistent pool's workers wait for the next graph, polling for a while
// (`poll`, 0-100: 0 goes straight to a condition variable) and then sleeping, so an idle context
// holds sleeping threads and no CPU.
//
// The pool is freed right after the context (llama_free) in disposeMemory, the one place
// node-llama-cpp frees it, so no decode can still be using it.
#include "AddonContext.h"

#include "ggml-backend.h"
#include "ggml-cpu.h"

// attachThreadpool(threads, poll): true when attached; false where there is no CPU backend
// (the context then keeps ggml's per-decode threads, as before) or one is attached already.
Napi::Value AddonContext::AttachThreadpool(const Napi::CallbackInfo& info) {
    if (disposed || ctx == nullptr) {
        Napi::Error::New(info.Env(), "Context is disposed").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    if (!info[0].IsNumber() || !info[1].IsNumber()) {
        Napi::TypeError::New(info.Env(), "attachThreadpool(threads, poll) takes two numbers").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    const int threads = info[0].As<Napi::Number>().Int32Value();
    const int poll = info[1].As<Napi::Number>().Int32Value();
    if (threads < 1 || threads > GGML_MAX_N_THREADS || poll < 0 || poll > 100) {
        Napi::RangeError::New(info.Env(), "attachThreadpool: threads must be 1-512 and poll 0-100").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    if (torporThreadpool != nullptr) return Napi::Boolean::New(info.Env(), false);

    // The CPU backend is a library loaded at run time (one per CPU variant): its threadpool calls
    // are reached through the backend registry, as llama.cpp's common code does.
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu == nullptr) return Napi::Boolean::New(info.Env(), false);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(cpu);
    auto* newPool = (decltype(ggml_threadpool_new)*) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new");
    auto* freePool = (decltype(ggml_threadpool_free)*) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_free");
    if (newPool == nullptr || freePool == nullptr) return Napi::Boolean::New(info.Env(), false);

    ggml_threadpool_params params = ggml_threadpool_params_default(threads);
    params.poll = (uint32_t) poll;
    ggml_threadpool_t pool = newPool(&params);
    if (pool == nullptr) return Napi::Boolean::New(info.Env(), false);
    // node-llama-cpp may lower a context's threads per batch (its threads splitter), never above
    // what the context was created with: a pool of that size serves every batch.
    llama_attach_threadpool(ctx, pool, nullptr);
    torporThreadpool = pool;
    torporThreadpoolFree = freePool;
    return Napi::Boolean::New(info.Env(), true);
}

void AddonContext::freeTorporThreadpool() {
    if (torporThreadpool == nullptr) return;
    torporThreadpoolFree(torporThreadpool);
    torporThreadpool = nullptr;
}
