// CUDA kernels of the temporal interlace op. The math is the same inline functions the CPU kernel calls
// (interlace_element.h); here one thread computes one output element (no idle or duplicate threads), and one block
// reduces one (sample, frame, group) row for the parameter gradients. Half and bfloat16 accumulate in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "interlace_element.h"
#include "interlace_host.h"

namespace tin {
namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t elements) { return std::min<int64_t>((elements + kThreads - 1) / kThreads, int64_t(1) << 30); }

// Element idx of x viewed as [N, T, G, L] (a row's element lies row_offset past the row's start). kInputGrad picks
// the taps: forward (out frame t reads t-k, t-k-1) or backward w.r.t. x (input frame s is read by s+k, s+k+1).
template <typename scalar_t, bool kInputGrad>
__global__ void gather_kernel(const scalar_t* __restrict__ src, const scalar_t* __restrict__ offsets,
                              const scalar_t* __restrict__ weights, scalar_t* __restrict__ dst, InterlaceShape shape,
                              int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t frame_stride = shape.frame_stride;
  const int64_t frame_elements = shape.groups * shape.row;  // the interlaced elements of one frame
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {  // idx runs over the interlaced elements only, [N, T, G, L]
    const int64_t i = row_offset(idx % shape.row, shape.row, shape.run, shape.run_stride);  // from the row's start
    const int64_t g = (idx / shape.row) % shape.groups;
    const int64_t t = (idx / frame_elements) % shape.frames;
    const int64_t n = idx / (frame_elements * shape.frames);
    int64_t shift;
    acc_t frac;
    split_offset(static_cast<acc_t>(offsets[n * shape.groups + g]), shift, frac);
    const scalar_t* w = weights + n * shape.frames * shape.groups + g;
    Taps<acc_t> taps;
    if constexpr (kInputGrad) {
      taps = input_grad_taps<acc_t>(t, shape.frames, shift, frac, w, shape.groups);
    } else {
      taps = forward_taps(t, shape.frames, shift, frac, static_cast<acc_t>(w[t * shape.groups]));
    }
    const scalar_t* block = src + n * shape.frames * frame_stride + g * shape.group_stride;
    const scalar_t* row0 = frame_row(block, taps.src0, taps.in0, frame_stride);
    const scalar_t* row1 = frame_row(block, taps.src1, taps.in1, frame_stride);
    dst[(n * shape.frames + t) * frame_stride + g * shape.group_stride + i] =
        static_cast<scalar_t>(gather_element(taps, row0, row1, i));
  }
}

// One block per (n, t, g) row: the row sums behind d loss / d weights and d loss / d offsets.
template <typename scalar_t>
__global__ void param_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                  const scalar_t* __restrict__ offsets, InterlaceShape shape,
                                  at::opmath_type<scalar_t>* __restrict__ interp_out,
                                  at::opmath_type<scalar_t>* __restrict__ diff_out) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t interp_shared[kThreads];
  __shared__ acc_t diff_shared[kThreads];
  const int64_t r = blockIdx.x;  // indexes [N, T, G]
  const int64_t g = r % shape.groups;
  const int64_t t = (r / shape.groups) % shape.frames;
  const int64_t n = r / (shape.groups * shape.frames);
  const int64_t frame_stride = shape.frame_stride;
  int64_t shift;
  acc_t frac;
  split_offset(static_cast<acc_t>(offsets[n * shape.groups + g]), shift, frac);
  const auto taps = forward_taps(t, shape.frames, shift, frac, acc_t(1));
  const scalar_t* block = x + n * shape.frames * frame_stride + g * shape.group_stride;
  const scalar_t* row0 = frame_row(block, taps.src0, taps.in0, frame_stride);
  const scalar_t* row1 = frame_row(block, taps.src1, taps.in1, frame_stride);
  const scalar_t* gy_row = grad + (n * shape.frames + t) * frame_stride + g * shape.group_stride;
  acc_t interp = 0, diff = 0;
  for (int64_t e = threadIdx.x; e < shape.row; e += blockDim.x) {
    const int64_t i = row_offset(e, shape.row, shape.run, shape.run_stride);
    accumulate_param_grads(taps, static_cast<acc_t>(gy_row[i]), row0, row1, i, interp, diff);
  }
  interp_shared[threadIdx.x] = interp;
  diff_shared[threadIdx.x] = diff;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      interp_shared[threadIdx.x] += interp_shared[threadIdx.x + stride];
      diff_shared[threadIdx.x] += diff_shared[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    interp_out[r] = interp_shared[0];
    diff_out[r] = diff_shared[0];
  }
}

at::Tensor interlace_cuda(const at::Tensor& x_in, const at::Tensor& offsets_in, const at::Tensor& weights_in,
                          int64_t channels) {
  const InterlaceShape shape = check_interlace_inputs(x_in, offsets_in, weights_in, channels);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = kernel_layout(x_in), offsets = offsets_in.contiguous(), weights = weights_in.contiguous();
  at::Tensor out = at::empty_like(x);  // in x's layout
  const int64_t total = shape.batch * shape.frames * shape.groups * shape.row;
  if (total == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tin_interlace_cuda", [&] {
    gather_kernel<scalar_t, false><<<grid_for(total), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), offsets.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        shape, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  copy_pass_through(x, out, shape);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> interlace_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                       const at::Tensor& offsets_in,
                                                                       const at::Tensor& weights_in, int64_t channels,
                                                                       bool input_grad, bool param_grads) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const BackwardBuffers b =
      prepare_backward(grad_in, x_in, offsets_in, weights_in, channels, input_grad, param_grads);
  const InterlaceShape shape = b.shape;
  const int64_t total = shape.batch * shape.frames * shape.groups * shape.row;
  if (total > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.x.scalar_type(), "tin_interlace_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      if (input_grad) {
        gather_kernel<scalar_t, true><<<grid_for(total), kThreads, 0, stream>>>(
            b.grad.data_ptr<scalar_t>(), b.offsets.data_ptr<scalar_t>(), b.weights.data_ptr<scalar_t>(),
            b.grad_x.data_ptr<scalar_t>(), shape, total);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (param_grads) {
        const int64_t rows = shape.batch * shape.frames * shape.groups;
        param_grad_kernel<scalar_t><<<rows, kThreads, 0, stream>>>(
            b.grad.data_ptr<scalar_t>(), b.x.data_ptr<scalar_t>(), b.offsets.data_ptr<scalar_t>(), shape,
            b.interp.data_ptr<acc_t>(), b.diff.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return finish_backward(b);
}

}  // namespace

TORCH_LIBRARY_IMPL(tin, CUDA, m) {
  m.impl("interlace", &interlace_cuda);
  m.impl("interlace_backward", &interlace_backward_cuda);
}

}  // namespace tin
