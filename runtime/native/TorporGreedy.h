// The greedy pick shared by sampleGreedy (AddonContextSampleGreedy.cpp) and the decode loop
// (AddonContextDecodeLoop.cpp): one definition, so both choose the token llama.cpp's greedy sampler does.
#pragma once

#include "llama.h"
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace torpor {

// The index llama_sampler_greedy_apply selects over candidates in token order: it moves only on a
// strictly higher logit, so the first of equal highest logits wins, a NaN is never chosen unless it
// is first (then nothing compares higher and it stays), and -0 and +0 tie. Two passes: the highest
// value (NaNs skipped), then its first index. SSE2 is part of x86-64, so every build has it.
inline llama_token firstHighest(const float* logits, int32_t n) {
    float highest = logits[0];
    if (highest != highest) return 0;
    int32_t t = 1;
#if defined(__SSE2__)
    __m128 acc = _mm_set1_ps(highest);
    for (; t + 4 <= n; t += 4) {
        // maxps returns its second operand when either is NaN: acc, which is never NaN.
        acc = _mm_max_ps(_mm_loadu_ps(logits + t), acc);
    }
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, acc);
    for (float lane : lanes) highest = lane > highest ? lane : highest;
#endif
    for (; t < n; t++) highest = logits[t] > highest ? logits[t] : highest;
    for (int32_t i = 0; i < n; i++) {
        if (logits[i] == highest) return i;
    }
    return 0;
}

}  // namespace torpor
