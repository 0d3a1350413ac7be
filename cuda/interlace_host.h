// Host-side pieces shared by the CPU and CUDA implementations: input checks, the pass-through copy and the
// backward pass's set-up and last step.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace tin {

// x viewed as [N, T, C * S]: channels [0, channels) in G groups of L = (channels / G) * S elements per frame are
// interlaced, the rest of each frame (the pass-through channels) is copied. The kernels iterate over [N, T, G, L];
// a group's row is runs of contiguous elements (interlace_element.h), set by x's layout.
struct InterlaceShape {
  int64_t batch;
  int64_t frames;
  int64_t groups;
  int64_t row;           // elements of one group in one frame
  int64_t frame_stride;  // elements from one frame of a sample to the next: C * S
  int64_t channels;      // interlaced channels
  int64_t total_channels;
  int64_t run;           // contiguous elements of a row: the row (channels-first) or C / G (channels-last)
  int64_t run_stride;    // elements from one run to the next: C (channels-last)
  int64_t group_stride;  // elements from group g's row start to group g + 1's: L or C / G
};

// [N, T, C, *S] stored as [N, T, *S, C] contiguous (and not also channels-first, as when S = 1).
inline bool is_channels_last(const at::Tensor& x) {
  if (x.dim() < 4 || x.is_contiguous()) return false;
  std::vector<int64_t> order = {0, 1};
  for (int64_t d = 3; d < x.dim(); ++d) order.push_back(d);
  order.push_back(2);
  return x.permute(order).is_contiguous();
}

// x as the kernels read it: as it is when channels-first or channels-last, else copied to channels-first.
inline at::Tensor kernel_layout(const at::Tensor& x) {
  return x.is_contiguous() || is_channels_last(x) ? x : x.contiguous();
}

// A second line of defence: the Python wrapper already raises ValueError naming the shapes, but the op can be called
// directly as torch.ops.tin.interlace, and a kernel must never read out of bounds. channels < 0: all of them. The runs
// follow x's layout as kernel_layout(x) keeps it; an empty row (S = 0) is one run of 1 that no loop enters, so that
// row / run never divides by zero.
inline InterlaceShape check_interlace_inputs(const at::Tensor& x, const at::Tensor& offsets, const at::Tensor& weights,
                                             int64_t channels) {
  TORCH_CHECK(x.dim() >= 3, "tin::interlace: x must be [N, T, C, *S], got ", x.sizes());
  TORCH_CHECK(offsets.dim() == 2, "tin::interlace: offsets must be [N, G], got ", offsets.sizes());
  TORCH_CHECK(weights.dim() == 3, "tin::interlace: weights must be [N, T, G], got ", weights.sizes());
  const int64_t n = x.size(0), t = x.size(1), c = x.size(2), g = offsets.size(1);
  const int64_t moved = channels < 0 ? c : channels;
  TORCH_CHECK(moved <= c, "tin::interlace: channels=", channels, " exceeds C=", c, " of x ", x.sizes());
  TORCH_CHECK(g >= 1 && moved >= g && moved % g == 0, "tin::interlace: the ", moved, " interlaced channels of x ",
              x.sizes(), " are not divisible by G=", g, " of offsets ", offsets.sizes());
  TORCH_CHECK(offsets.size(0) == n, "tin::interlace: offsets ", offsets.sizes(), " do not match the batch of x ",
              x.sizes());
  TORCH_CHECK(weights.size(0) == n && weights.size(1) == t && weights.size(2) == g, "tin::interlace: weights ",
              weights.sizes(), " must be [N, T, G] = [", n, ", ", t, ", ", g, "]");
  TORCH_CHECK(offsets.scalar_type() == x.scalar_type() && weights.scalar_type() == x.scalar_type(),
              "tin::interlace: x, offsets and weights must share a dtype");
  TORCH_CHECK(offsets.device() == x.device() && weights.device() == x.device(),
              "tin::interlace: x, offsets and weights must be on one device");
  int64_t spatial = 1;
  for (int64_t d = 3; d < x.dim(); ++d) spatial *= x.size(d);
  const int64_t per_group = moved / g, row = per_group * spatial;
  if (is_channels_last(x)) return InterlaceShape{n, t, g, row, c * spatial, moved, c, per_group, c, per_group};
  return InterlaceShape{n, t, g, row, c * spatial, moved, c, std::max<int64_t>(row, 1), row, row};
}

// dst's pass-through channels [channels, C) are src's (a plain copy: the forward's output, the backward's grad_x).
inline void copy_pass_through(const at::Tensor& src, const at::Tensor& dst, const InterlaceShape& shape) {
  if (shape.channels < shape.total_channels && src.numel() > 0) {
    const int64_t rest = shape.total_channels - shape.channels;
    dst.narrow(2, shape.channels, rest).copy_(src.narrow(2, shape.channels, rest));
  }
}

// What both backward passes set up before their kernels run: checked shapes, inputs in one kernel layout (x's), the
// input gradient to fill in it, and zeroed per-(n, t, g) accumulators (in the accumulation dtype) for the parameter
// gradients. A gradient that is not wanted gets an empty tensor and no kernel.
struct BackwardBuffers {
  InterlaceShape shape;
  at::Tensor grad, x, offsets, weights;
  at::Tensor grad_x;
  at::Tensor interp, diff;
  bool param_grads;
};

inline BackwardBuffers prepare_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& offsets,
                                        const at::Tensor& weights, int64_t channels, bool input_grad,
                                        bool param_grads) {
  const InterlaceShape shape = check_interlace_inputs(x, offsets, weights, channels);
  TORCH_CHECK(grad.sizes() == x.sizes(), "tin::interlace_backward: grad ", grad.sizes(), " != x ", x.sizes());
  TORCH_CHECK(grad.scalar_type() == x.scalar_type() && grad.device() == x.device(),
              "tin::interlace_backward: grad must have x's dtype and device");
  const at::Tensor x_k = kernel_layout(x);
  const bool same_layout = is_channels_last(x_k) ? is_channels_last(grad) : grad.is_contiguous();
  const at::Tensor grad_k = same_layout ? grad : at::empty_like(x_k).copy_(grad);
  BackwardBuffers b{shape, grad_k, x_k, offsets.contiguous(), weights.contiguous()};
  b.grad_x = input_grad ? at::empty_like(b.x) : at::empty({0}, x.options());
  const auto acc_dtype = at::toOpMathType(x.scalar_type());
  b.interp = at::zeros({param_grads ? shape.batch : 0, shape.frames, shape.groups}, x.options().dtype(acc_dtype));
  b.diff = at::zeros_like(b.interp);
  b.param_grads = param_grads;
  return b;
}

// The kernels leave, per (n, t, g), the row sums `interp` = d loss / d w and `diff` = d loss / d f / w (both in the
// accumulation dtype). Offsets only move the fraction f, so d loss / d offset = sum over t of w * diff.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_backward(const BackwardBuffers& b) {
  if (b.grad_x.numel() > 0) copy_pass_through(b.grad, b.grad_x, b.shape);
  if (!b.param_grads) {
    return {b.grad_x, at::empty({0}, b.offsets.options()), at::empty({0}, b.weights.options())};
  }
  at::Tensor grad_weights = b.interp.to(b.weights.scalar_type());
  at::Tensor grad_offsets = b.diff.mul(b.weights.to(b.diff.scalar_type())).sum(1).to(b.offsets.scalar_type());
  return {b.grad_x, grad_offsets, grad_weights};
}

}  // namespace tin
