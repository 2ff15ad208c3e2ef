// Torpor's addition to node-llama-cpp's addon: greedy tokens read straight off the logits.
//
// node-llama-cpp 3.22.1 samples every token as a job on Node's pool (sampleToken): the sampler
// copies the whole vocabulary into a candidates array (49,152 entries for SmolLM2) under the
// context's sampler mutex, then runs its chain over it. For a greedy sampler with nothing else in
// its chain that chain is an argmax, and the copy and the round trip through the pool cost more
// than it: four sessions sharing a context spent 0.39-0.46 ms of each step's 0.7 ms between decodes
// on four such jobs (2 pool threads, 2 cores).
//
// sampleGreedy takes the tokens a decoded batch asks for and, when every sampler is plain greedy,
// returns them at once, computed on the calling thread from the logits: the first highest logit,
// as llama.cpp's greedy sampler picks it (llama_sampler_greedy_apply: strict >, from index 0). The
// caller holds the context between its decodes (node-llama-cpp awaits every sample of a batch
// before the next decode), so the logits are the batch's own. Any other sampler (temperature,
// penalties, token bias, grammar, XTC), or a logit row llama.cpp does not have, and it returns null
// without touching anything: the caller then uses sampleToken, whose result is the same.
#include "AddonContext.h"
#include "AddonGrammarEvaluationState.h"

#include <vector>

#include "TorporGreedy.h"

namespace {

bool plainGreedy(const AddonSampler* s) {
    return !s->disposed && s->greedySampler != nullptr && s->xtcSampler == nullptr && s->tokenBiasSampler == nullptr &&
        s->repeatPenaltySampler == nullptr && s->dryRepeatPenaltySampler == nullptr &&
        (s->grammarEvaluationState == nullptr || s->grammarEvaluationState->sampler == nullptr);
}

}  // namespace

// sampleGreedy(batchLogitIndexes: number[], samplers: AddonSampler[]): number[] | null
Napi::Value AddonContext::SampleGreedy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (disposed || ctx == nullptr) {
        Napi::Error::New(env, "Context is disposed").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsArray()) {
        Napi::TypeError::New(env, "sampleGreedy(batchLogitIndexes, samplers) takes two arrays").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const auto indexArray = info[0].As<Napi::Array>();
    const auto samplerArray = info[1].As<Napi::Array>();
    const uint32_t n = indexArray.Length();
    if (samplerArray.Length() != n || n == 0) {
        Napi::RangeError::New(env, "sampleGreedy: one sampler per index, at least one").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    std::vector<int32_t> indexes(n);
    std::vector<AddonSampler*> samplers(n);
    for (uint32_t i = 0; i < n; i++) {
        const Napi::Value index = indexArray.Get(i);
        const Napi::Value sampler = samplerArray.Get(i);
        if (!index.IsNumber() || !sampler.IsObject()) {
            Napi::TypeError::New(env, "sampleGreedy: indexes are numbers and samplers AddonSampler objects").ThrowAsJavaScriptException();
            return env.Undefined();
        }
        indexes[i] = index.As<Napi::Number>().Int32Value();
        samplers[i] = Napi::ObjectWrap<AddonSampler>::Unwrap(sampler.As<Napi::Object>());
        if (samplers[i] == nullptr || !plainGreedy(samplers[i])) return env.Null();
    }

    const int32_t vocabSize = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    std::vector<llama_token> tokens(n);
    {
        std::lock_guard<std::mutex> samplingLock(sharedSamplerData.mutex);
        for (uint32_t i = 0; i < n; i++) {
            // A backend sampler (llama.cpp's own, on the device) would have chosen candidates: not ours to read.
            if (llama_get_sampled_probs_ith(ctx, indexes[i]) != nullptr || llama_get_sampled_logits_ith(ctx, indexes[i]) != nullptr) return env.Null();
            const float* logits = llama_get_logits_ith(ctx, indexes[i]);
            if (logits == nullptr || vocabSize <= 0) return env.Null();
            tokens[i] = torpor::firstHighest(logits, vocabSize);
        }
    }

    Napi::Array out = Napi::Array::New(env, n);
    for (uint32_t i = 0; i < n; i++) {
        // Nothing in a plain greedy sampler keeps history; accepted as sampleToken does, for any that one day does.
        samplers[i]->acceptToken(tokens[i]);
        out.Set(i, Napi::Number::New(env, static_cast<uint32_t>(tokens[i])));
    }
    return out;
}
