// Per-frame hot path of the video runtime, outside the network: one pass from a BGR uint8 frame of any size to the
// normalised NCHW input, and one pass from the logit map to the annotated frame. Plain C++ (no Python, no
// framework types), multithreaded by rows, SIMD through compiler vectorisation with AVX2/AVX-512 clones.
#pragma once
#include <cstddef>
#include <cstdint>

namespace polypseg {

// Pre-processing: src = BGR uint8 [H, W, 3] with row stride `src_stride` bytes; dst = [3, h, w] planes (RGB order)
// written as float32 (dst_f32) or float16 bits (dst_f16); exactly one of the two is non-null. Bilinear resize with
// half-pixel centres (OpenCV INTER_LINEAR semantics), then (x / 255 - mean[c]) / std[c].
void preprocess_bgr(const uint8_t* src, int H, int W, std::ptrdiff_t src_stride, int h, int w, const float mean[3],
                    const float stdv[3], float* dst_f32, uint16_t* dst_f16, int threads);

// Post-processing: logits [h, w] float32 → in-place annotation of frame (BGR uint8 [H, W, 3], row stride
// `stride` bytes). The logits are resized bilinearly (half-pixel centres) to H×W; a pixel is foreground when its
// logit exceeds `logit_threshold` (= log(t / (1 - t)) for a probability threshold t, i.e. sigmoid(l) > t).
// Foreground pixels are blended with `fill` (alpha in 1/256 units, 0..256); pixels whose 3×3 neighbourhood holds
// both classes (the morphological gradient, a 2-pixel outline) get `outline`. If `mask` is non-null it receives
// the binary mask (0/1, contiguous H×W). Returns the number of foreground pixels.
int64_t overlay(uint8_t* frame, int H, int W, std::ptrdiff_t stride, const float* logits, int h, int w,
                float logit_threshold, const uint8_t fill[3], int alpha256, const uint8_t outline[3], uint8_t* mask,
                int threads);

// float32 → IEEE half bits, round to nearest even (exposed for tests).
uint16_t float_to_half(float f);

}  // namespace polypseg
