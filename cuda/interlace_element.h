// Per-element math of the temporal interlace op, shared by the CPU kernel (interlace_cpu.cpp) and the CUDA kernel
// (interlace_cuda.cu). Everything that decides *what* is computed lives here; the kernels only decide *where*
// (which thread or loop iteration handles which element). The CPU tests therefore check the CUDA path's math too.
//
// Layout: x is [N, T, C, S] (S = product of trailing dims), channels-first ([N, T, C, S] contiguous) or channels-last
// ([N, T, S, C] contiguous: a channels_last conv activation). Channels are split into G equal groups; in frame t,
// group g of sample n is a row of L = (C / G) * S elements: one contiguous run (channels-first), or S runs of C / G
// channels, C apart (channels-last). Frames are C * S apart in both, so a row's elements pair up across frames.
//
//   out[n, t, c] = w[n, t, g] * ((1 - f) * x[n, t - k, c] + f * x[n, t - k - 1, c]),  k = floor(b), f = b - k
//
// with b = offsets[n, g] and frames outside [0, T) contributing zero.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TIN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TIN_HOST_DEVICE inline
#endif

namespace tin {

// Two source frames feeding one destination frame. A source outside [0, T) is flagged and never read: zero padding
// must not touch memory, and must give 0 even where x holds inf (0 * inf would be NaN).
template <typename acc_t>
struct Taps {
  int64_t src0;
  int64_t src1;
  acc_t coef0;
  acc_t coef1;
  bool in0;
  bool in1;
};

TIN_HOST_DEVICE bool frame_in_range(int64_t t, int64_t num_frames) { return t >= 0 && t < num_frames; }

// b = k + f with k = floor(b) and f in [0, 1).
template <typename acc_t>
TIN_HOST_DEVICE void split_offset(acc_t offset, int64_t& shift, acc_t& frac) {
  const acc_t whole = floor(offset);
  shift = static_cast<int64_t>(whole);
  frac = offset - whole;
}

// Forward: output frame t reads frames t - k (weight (1 - f) * w) and t - k - 1 (weight f * w).
// With weight = 1 these are also the taps of d out / d w.
template <typename acc_t>
TIN_HOST_DEVICE Taps<acc_t> forward_taps(int64_t t, int64_t num_frames, int64_t shift, acc_t frac, acc_t weight) {
  Taps<acc_t> taps;
  taps.src0 = t - shift;
  taps.src1 = t - shift - 1;
  taps.in0 = frame_in_range(taps.src0, num_frames);
  taps.in1 = frame_in_range(taps.src1, num_frames);
  taps.coef0 = taps.in0 ? (acc_t(1) - frac) * weight : acc_t(0);
  taps.coef1 = taps.in1 ? frac * weight : acc_t(0);
  return taps;
}

// Backward w.r.t. x, as a gather: input frame s was read by output frame s + k (with (1 - f) * w[s + k]) and by
// output frame s + k + 1 (with f * w[s + k + 1]). `weights` points at w[n, 0, g]; consecutive frames are
// `weight_stride` apart. Weights of frames outside [0, T) are never read.
template <typename acc_t, typename scalar_t>
TIN_HOST_DEVICE Taps<acc_t> input_grad_taps(int64_t s, int64_t num_frames, int64_t shift, acc_t frac,
                                            const scalar_t* weights, int64_t weight_stride) {
  Taps<acc_t> taps;
  taps.src0 = s + shift;
  taps.src1 = s + shift + 1;
  taps.in0 = frame_in_range(taps.src0, num_frames);
  taps.in1 = frame_in_range(taps.src1, num_frames);
  taps.coef0 = taps.in0 ? (acc_t(1) - frac) * static_cast<acc_t>(weights[taps.src0 * weight_stride]) : acc_t(0);
  taps.coef1 = taps.in1 ? frac * static_cast<acc_t>(weights[taps.src1 * weight_stride]) : acc_t(0);
  return taps;
}

// The row of frame `frame` of a [T, row_stride] block, or nullptr when the frame is padding.
template <typename scalar_t>
TIN_HOST_DEVICE const scalar_t* frame_row(const scalar_t* base, int64_t frame, bool in_range, int64_t frame_stride) {
  return in_range ? base + frame * frame_stride : nullptr;
}

// One output element: coef0 * row0[i] + coef1 * row1[i], padding rows skipped.
template <typename acc_t, typename scalar_t>
TIN_HOST_DEVICE acc_t gather_element(const Taps<acc_t>& taps, const scalar_t* row0, const scalar_t* row1,
                                     int64_t i) {
  acc_t value = acc_t(0);
  if (taps.in0) value += taps.coef0 * static_cast<acc_t>(row0[i]);
  if (taps.in1) value += taps.coef1 * static_cast<acc_t>(row1[i]);
  return value;
}

// One element's share of the parameter gradients of output frame t, given `taps` = forward_taps(..., weight = 1):
//   interp += gy * ((1 - f) x0 + f x1)   ->  summed over the row, this is d loss / d w[n, t, g]
//   diff   += gy * (x1 - x0)             ->  times w[n, t, g], summed over rows and frames: d loss / d offsets[n, g]
template <typename acc_t, typename scalar_t>
TIN_HOST_DEVICE void accumulate_param_grads(const Taps<acc_t>& taps, acc_t grad_out, const scalar_t* row0,
                                            const scalar_t* row1, int64_t i, acc_t& interp, acc_t& diff) {
  const acc_t x0 = taps.in0 ? static_cast<acc_t>(row0[i]) : acc_t(0);
  const acc_t x1 = taps.in1 ? static_cast<acc_t>(row1[i]) : acc_t(0);
  interp += grad_out * (taps.coef0 * x0 + taps.coef1 * x1);
  diff += grad_out * (x1 - x0);
}

}  // namespace tin
