// Torpor's addition to node-llama-cpp's addon: greedy generation for every sequence of a context in
// one native loop, as llama-server's slots run.
//
// node-llama-cpp composes each batch in JavaScript, decodes it in a pool job, resolves a promise per
// sequence, samples, and hands each token to its LlamaChat before the next batch is composed: on 2
// cores, 4 greedy sessions on one context spent 0.65-0.70 ms between two decodes that way, all of it
// on the critical path (the decode needs the tokens sampled from the one before). Here one pool job
// decodes a batch, takes each sequence's greedy token off the logits, composes the next batch and
// decodes it, for up to `maxSteps` steps; the tokens go to JavaScript as each step ends, while the
// next step computes.
//
// JavaScript owns the exclusion: a run holds node-llama-cpp's context lock (nothing else decodes,
// samples or edits the KV cache of this context meanwhile) and a job holds its sequence's evaluation
// lock. Jobs join and are cancelled at any time; the loop takes both in at the start of its next
// step. A run ends after `maxSteps` steps, or after one once told that someone else waits for the
// context (a sampled turn's batch, a state save); the jobs still generating carry over to the
// next run.
//
//   decodeLoopJoin(job, sequenceId, keep, tokens: Uint32Array, maxTokens, stopTokens: Uint32Array)
//   decodeLoopCancel(job)
//   decodeLoopRun(maxSteps, onEvents(Uint32Array)): Promise<number>   (the jobs left)
//   decodeLoopYield()   (the run under way ends after its current step: someone else waits)
//
// Events are quadruples [job, kind, a, b]: kind 0 a token sampled (a = token; never a stop token),
// kind 1 the job is over (a = reason: 0 a stop token, 1 maxTokens, 2 cancelled, 3 the decode failed;
// b = how many of the sequence's tokens the KV cache now holds). A sampled token is decoded in the
// next step, so the last one of a job (and a stop token) never is: as node-llama-cpp leaves it.
#include "AddonContext.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <unordered_set>
#include <vector>

#include "TorporGreedy.h"

struct TorporDecodeJob {
    uint32_t id = 0;
    llama_seq_id seq = 0;
    llama_pos keep = 0;
    llama_pos pos = 0;
    std::vector<llama_token> pending;  // the prompt's tokens still to decode, or the one sampled token
    size_t next = 0;                   // the first of `pending` not yet decoded
    int32_t maxTokens = 0;
    int32_t generated = 0;
    std::unordered_set<llama_token> stops;
};

struct TorporDecodeLoop {
    std::mutex mutex;  // guards joins and cancels: the JS thread adds while a run takes
    std::deque<TorporDecodeJob> joins;
    std::unordered_set<uint32_t> cancels;
    std::vector<TorporDecodeJob> active;  // only a run's worker changes it; runs never overlap
    bool running = false;
    // Someone else waits for the context (a sampled turn's batch, a state save): the run ends after
    // the step under way instead of after maxSteps. Cleared as a run starts.
    std::atomic<bool> yield{false};
};

namespace {

enum : uint32_t { EVENT_TOKEN = 0, EVENT_DONE = 1 };
enum : uint32_t { DONE_STOP = 0, DONE_LENGTH = 1, DONE_CANCELLED = 2, DONE_FAILED = 3 };

TorporDecodeLoop& loopOf(AddonContext* context) {
    if (!context->torporDecodeLoop) context->torporDecodeLoop = std::make_shared<TorporDecodeLoop>();
    return *context->torporDecodeLoop;
}

class DecodeLoopWorker : public Napi::AsyncProgressQueueWorker<uint32_t> {
    public:
        DecodeLoopWorker(const Napi::Env& env, AddonContext* context, std::shared_ptr<TorporDecodeLoop> loop, int32_t maxSteps, const Napi::Function& onEvents)
            : Napi::AsyncProgressQueueWorker<uint32_t>(onEvents, "TorporDecodeLoop"),
              context(context), loop(std::move(loop)), maxSteps(maxSteps), deferred(Napi::Promise::Deferred::New(env)) {
            context->Ref();
        }
        ~DecodeLoopWorker() { context->Unref(); }
        Napi::Promise GetPromise() { return deferred.Promise(); }

    protected:
        void Execute(const ExecutionProgress& progress) override {
            llama_context* ctx = context->ctx;
            const llama_vocab* vocab = llama_model_get_vocab(llama_get_model(ctx));
            const int32_t vocabSize = llama_vocab_n_tokens(vocab);
            llama_memory_t memory = llama_get_memory(ctx);
            const int32_t capacity = (int32_t) llama_n_batch(ctx);
            llama_batch batch = llama_batch_init(capacity, 0, 1);
            std::vector<uint32_t> events;
            std::vector<int32_t> logitRow;  // per active job: its row in the batch's logits, or -1
            auto& active = loop->active;

            for (int32_t step = 0; step < maxSteps && !(step > 0 && loop->yield.load(std::memory_order_relaxed)); step++) {
                events.clear();
                takeJoinsAndCancels(memory, events);
                if (active.empty()) {
                    if (!events.empty()) progress.Send(events.data(), events.size());
                    break;
                }
                // Sequence order: llama.cpp computes one ubatch only for sequences whose ids follow
                // each other in the batch (runtime/sessions/batch-composition.ts).
                std::sort(active.begin(), active.end(), [](const TorporDecodeJob& a, const TorporDecodeJob& b) { return a.seq < b.seq; });
                // Every generating job's one token first; prompts share what room is left, in order.
                int32_t room = capacity;
                for (const auto& job : active) if (job.pending.size() - job.next == 1) room--;
                batch.n_tokens = 0;
                logitRow.assign(active.size(), -1);
                for (size_t j = 0; j < active.size(); j++) {
                    auto& job = active[j];
                    size_t left = job.pending.size() - job.next;
                    size_t take = left;
                    if (left > 1) {
                        take = std::min<size_t>(left, (size_t) std::max(room, 0));
                        room -= (int32_t) take;
                    }
                    // More generating sequences than a batch holds: the rest wait for the next step.
                    take = std::min<size_t>(take, (size_t) (capacity - batch.n_tokens));
                    if (take == 0) continue;
                    for (size_t t = 0; t < take; t++) {
                        const int32_t i = batch.n_tokens++;
                        batch.token[i] = job.pending[job.next + t];
                        batch.pos[i] = job.pos + (llama_pos) t;
                        batch.n_seq_id[i] = 1;
                        batch.seq_id[i][0] = job.seq;
                        batch.logits[i] = (job.next + t + 1 == job.pending.size()) ? 1 : 0;
                        if (batch.logits[i]) logitRow[j] = i;
                    }
                    job.next += take;
                    job.pos += (llama_pos) take;
                }

                const int32_t r = batch.n_tokens > 0 ? llama_decode(ctx, batch) : 0;
                if (r != 0) {
                    // What a failed decode left is not known: each job's sequence goes back to the
                    // tokens it kept, which JavaScript then knows exactly.
                    for (auto& job : active) finish(memory, job, DONE_FAILED, events);
                    active.clear();
                    progress.Send(events.data(), events.size());
                    break;
                }

                std::vector<TorporDecodeJob> still;
                still.reserve(active.size());
                for (size_t j = 0; j < active.size(); j++) {
                    auto& job = active[j];
                    if (logitRow[j] < 0) { still.push_back(std::move(job)); continue; }
                    const float* logits = llama_get_logits_ith(ctx, logitRow[j]);
                    const llama_token token = logits == nullptr ? LLAMA_TOKEN_NULL : torpor::firstHighest(logits, vocabSize);
                    if (token == LLAMA_TOKEN_NULL) { finish(memory, job, DONE_FAILED, events); continue; }
                    if (llama_vocab_is_eog(vocab, token) || job.stops.count(token) > 0) { finish(memory, job, DONE_STOP, events); continue; }
                    events.insert(events.end(), { job.id, EVENT_TOKEN, (uint32_t) token, 0 });
                    job.generated++;
                    if (job.generated >= job.maxTokens) { finish(memory, job, DONE_LENGTH, events); continue; }
                    job.pending.assign(1, token);
                    job.next = 0;
                    still.push_back(std::move(job));
                }
                active = std::move(still);
                if (!events.empty()) progress.Send(events.data(), events.size());
            }
            llama_batch_free(batch);
            std::lock_guard<std::mutex> lock(loop->mutex);
            loop->running = false;
        }

        void OnProgress(const uint32_t* data, size_t count) override {
            if (data == nullptr || count == 0) return;
            Napi::Env env = Env();
            Napi::HandleScope scope(env);
            auto events = Napi::Uint32Array::New(env, count);
            std::copy(data, data + count, events.Data());
            Callback().Call({ events });
        }
        // Counted here, on the JS thread after every event of the run was handed over: a job that
        // joined after the run's last step is counted too, so JavaScript can tell a job lost from
        // one the next run takes.
        void OnOK() override {
            std::lock_guard<std::mutex> lock(loop->mutex);
            deferred.Resolve(Napi::Number::New(Env(), (uint32_t) (loop->active.size() + loop->joins.size())));
        }
        void OnError(const Napi::Error& err) override { deferred.Reject(err.Value()); }

    private:
        AddonContext* context;
        std::shared_ptr<TorporDecodeLoop> loop;
        int32_t maxSteps;
        Napi::Promise::Deferred deferred;

        void takeJoinsAndCancels(llama_memory_t memory, std::vector<uint32_t>& events) {
            std::deque<TorporDecodeJob> joins;
            std::unordered_set<uint32_t> cancels;
            {
                std::lock_guard<std::mutex> lock(loop->mutex);
                joins.swap(loop->joins);
                cancels.swap(loop->cancels);
            }
            for (auto& job : joins) {
                // What the sequence holds past the tokens the prompt shares goes before its prompt does.
                llama_memory_seq_rm(memory, job.seq, job.keep, -1);
                job.pos = job.keep;
                loop->active.push_back(std::move(job));
            }
            if (cancels.empty()) return;
            std::vector<TorporDecodeJob> still;
            for (auto& job : loop->active) {
                if (cancels.count(job.id) > 0) finish(memory, job, DONE_CANCELLED, events);
                else still.push_back(std::move(job));
            }
            loop->active = std::move(still);
        }

        // A prompt cut off midway (cancelled, failed) leaves the sequence at the tokens it kept, as if
        // the turn had not begun; a generating job keeps what it decoded.
        void finish(llama_memory_t memory, TorporDecodeJob& job, uint32_t reason, std::vector<uint32_t>& events) {
            const bool midPrompt = job.generated == 0 && job.next < job.pending.size();
            if (reason == DONE_FAILED || midPrompt) {
                llama_memory_seq_rm(memory, job.seq, job.keep, -1);
                job.pos = job.keep;
            }
            events.insert(events.end(), { job.id, EVENT_DONE, reason, (uint32_t) job.pos });
        }
};

}  // namespace

Napi::Value AddonContext::DecodeLoopJoin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (disposed || ctx == nullptr) {
        Napi::Error::New(env, "Context is disposed").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (info.Length() < 6 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsTypedArray()
        || !info[4].IsNumber() || !info[5].IsTypedArray()) {
        Napi::TypeError::New(env, "decodeLoopJoin(job, sequenceId, keep, tokens: Uint32Array, maxTokens, stopTokens: Uint32Array)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const auto tokens = info[3].As<Napi::Uint32Array>();
    const auto stops = info[5].As<Napi::Uint32Array>();
    TorporDecodeJob job;
    job.id = info[0].As<Napi::Number>().Uint32Value();
    job.seq = info[1].As<Napi::Number>().Int32Value();
    job.keep = info[2].As<Napi::Number>().Int32Value();
    job.maxTokens = info[4].As<Napi::Number>().Int32Value();
    const int32_t vocabSize = llama_vocab_n_tokens(llama_model_get_vocab(model->model));
    if (tokens.ElementLength() == 0 || job.keep < 0 || job.maxTokens < 1 || job.seq < 0
        || job.keep + (int64_t) tokens.ElementLength() + job.maxTokens > (int64_t) llama_n_ctx_seq(ctx) + 1) {
        Napi::RangeError::New(env, "decodeLoopJoin: at least one token to decode, at least one to generate, all within the sequence's context").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    job.pending.resize(tokens.ElementLength());
    for (size_t i = 0; i < tokens.ElementLength(); i++) {
        if ((int64_t) tokens[i] >= vocabSize) {
            Napi::RangeError::New(env, "decodeLoopJoin: a token outside the model's vocabulary").ThrowAsJavaScriptException();
            return env.Undefined();
        }
        job.pending[i] = (llama_token) tokens[i];
    }
    for (size_t i = 0; i < stops.ElementLength(); i++) job.stops.insert((llama_token) stops[i]);
    auto& loop = loopOf(this);
    std::lock_guard<std::mutex> lock(loop.mutex);
    loop.joins.push_back(std::move(job));
    return env.Undefined();
}

Napi::Value AddonContext::DecodeLoopCancel(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsNumber()) {
        Napi::TypeError::New(info.Env(), "decodeLoopCancel(job)").ThrowAsJavaScriptException();
        return info.Env().Undefined();
    }
    auto& loop = loopOf(this);
    std::lock_guard<std::mutex> lock(loop.mutex);
    loop.cancels.insert(info[0].As<Napi::Number>().Uint32Value());
    return info.Env().Undefined();
}

Napi::Value AddonContext::DecodeLoopYield(const Napi::CallbackInfo& info) {
    loopOf(this).yield.store(true, std::memory_order_relaxed);
    return info.Env().Undefined();
}

Napi::Value AddonContext::DecodeLoopRun(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (disposed || ctx == nullptr) {
        Napi::Error::New(env, "Context is disposed").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsFunction()) {
        Napi::TypeError::New(env, "decodeLoopRun(maxSteps, onEvents)").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    const int32_t maxSteps = info[0].As<Napi::Number>().Int32Value();
    if (maxSteps < 1) {
        Napi::RangeError::New(env, "decodeLoopRun: maxSteps must be at least 1").ThrowAsJavaScriptException();
        return env.Undefined();
    }
    loopOf(this);
    {
        std::lock_guard<std::mutex> lock(torporDecodeLoop->mutex);
        if (torporDecodeLoop->running) {
            Napi::Error::New(env, "decodeLoopRun: a run of this context's loop is in progress").ThrowAsJavaScriptException();
            return env.Undefined();
        }
        torporDecodeLoop->running = true;
        torporDecodeLoop->yield.store(false, std::memory_order_relaxed);
    }
    auto* worker = new DecodeLoopWorker(env, this, torporDecodeLoop, maxSteps, info[1].As<Napi::Function>());
    worker->Queue();
    return worker->GetPromise();
}
