// CUDA kernels of the temporal interlace op. The math is the same inline functions the CPU kernel calls
// (interlace_element.h); here a grid row of blocks covers one (sample, frame, group) row, whose taps each thread
// computes once and applies to the row's elements it strides over, and one block reduces each chunk of a row for the
// parameter gradients (the host sums the chunks). Row and element indices are 32-bit, divided by multiply and shift:
// no 64-bit division per element. Half and bfloat16 accumulate in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "interlace_element.h"
#include "interlace_host.h"

namespace tin {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kElementsPerThread = 4;  // a row's elements per thread: the taps' set-up is paid once for them
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kParamChunk = kThreads * 16;  // a row's elements per parameter-gradient block

// A row of [N, T, G]: its sample, frame and group.
struct RowIndex {
  int64_t n, t, g;
};

// Index arithmetic in 32 bits, dividing by multiply and shift (no 64-bit division in a kernel): which (n, t, g) row r
// is, and where element e of a row lies from the row's start (the layout in interlace_element.h): at e when the row
// is one run (channels-first), else at (e / run) * run_stride + e % run (channels-last).
struct RowIndexer {
  at::cuda::detail::IntDivider<uint32_t> groups, frames, run;
  int64_t run_stride;
  bool one_run;

  explicit RowIndexer(const InterlaceShape& shape)
      : groups(static_cast<uint32_t>(shape.groups)),
        frames(static_cast<uint32_t>(shape.frames)),
        run(static_cast<uint32_t>(shape.run)),
        run_stride(shape.run_stride),
        one_run(shape.run == shape.row) {}

  __device__ __forceinline__ RowIndex row(uint32_t r) const {
    const auto by_group = groups.divmod(r);
    const auto by_frame = frames.divmod(by_group.div);
    return {by_frame.div, by_frame.mod, by_group.mod};
  }

  __device__ __forceinline__ int64_t offset(uint32_t e) const {
    if (one_run) return e;
    const auto q = run.divmod(e);
    return static_cast<int64_t>(q.div) * run_stride + q.mod;
  }
};

TIN_HOST_DEVICE int64_t row_count(const InterlaceShape& shape) { return shape.batch * shape.frames * shape.groups; }

// Rows and a row's elements are counted in 32 bits: past 2^31 of either they would overflow.
void check_indices_fit(const InterlaceShape& shape) {
  TORCH_CHECK(shape.row <= INT32_MAX && row_count(shape) <= INT32_MAX, "tin::interlace (CUDA): ", row_count(shape),
              " rows of ", shape.row, " elements exceed the 2^31 - 1 the kernels index; split the call");
}

// A row's chunks for the parameter gradients.
int64_t param_chunks(const InterlaceShape& shape) { return (shape.row + kParamChunk - 1) / kParamChunk; }

// Grid of the gather: x over a row's elements (kElementsPerThread per thread), y over the rows (striding past 65535).
dim3 gather_grid(const InterlaceShape& shape) {
  const int64_t per_block = kThreads * kElementsPerThread;
  return dim3(static_cast<unsigned>((shape.row + per_block - 1) / per_block),
              static_cast<unsigned>(std::min(row_count(shape), kMaxGridY)));
}

// dst row (n, t, g) from src rows through the taps of (n, t, g). kInputGrad picks the taps: forward (out frame t reads
// t-k, t-k-1) or backward w.r.t. x (input frame s is read by s+k, s+k+1).
template <typename scalar_t, bool kInputGrad>
__global__ void gather_kernel(const scalar_t* __restrict__ src, const scalar_t* __restrict__ offsets,
                              const scalar_t* __restrict__ weights, scalar_t* __restrict__ dst, InterlaceShape shape,
                              RowIndexer index) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t frame_stride = shape.frame_stride;
  const uint32_t rows = static_cast<uint32_t>(row_count(shape)), row = static_cast<uint32_t>(shape.row);
  const uint32_t first = blockIdx.x * blockDim.x + threadIdx.x, step = gridDim.x * blockDim.x;
  for (uint32_t r = blockIdx.y; r < rows; r += gridDim.y) {  // r + gridDim.y < 2^32: both are below 2^31
    const auto [n, t, g] = index.row(r);
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
    scalar_t* out = dst + (n * shape.frames + t) * frame_stride + g * shape.group_stride;
    for (uint32_t e = first; e < row; e += step) {  // e + step < 2^32: both are below 2^31
      const int64_t i = index.offset(e);
      out[i] = static_cast<scalar_t>(gather_element(taps, row0, row1, i));
    }
  }
}

// Grid of the parameter gradients: x over a row's chunks of kParamChunk elements (enough blocks to fill the GPU when
// rows are few and long, as in a ResNet's first stages), y over the rows (striding past 65535).
dim3 param_grad_grid(const InterlaceShape& shape) {
  return dim3(static_cast<unsigned>(param_chunks(shape)), static_cast<unsigned>(std::min(row_count(shape), kMaxGridY)));
}

// Per (n, t, g) row and chunk of it: the partial sums behind d loss / d weights and d loss / d offsets, one block per
// (row, chunk), written to [rows, chunks] (no atomics: the host sums the chunks, so results repeat exactly).
template <typename scalar_t>
__global__ void param_grad_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                  const scalar_t* __restrict__ offsets, InterlaceShape shape, RowIndexer index,
                                  at::opmath_type<scalar_t>* __restrict__ interp_out,
                                  at::opmath_type<scalar_t>* __restrict__ diff_out) {
  using acc_t = at::opmath_type<scalar_t>;
  static_assert((kThreads & (kThreads - 1)) == 0, "the tree reduction below needs a power-of-two block");
  __shared__ acc_t interp_shared[kThreads];
  __shared__ acc_t diff_shared[kThreads];
  const int64_t frame_stride = shape.frame_stride;
  const uint32_t rows = static_cast<uint32_t>(row_count(shape)), row = static_cast<uint32_t>(shape.row);
  const uint32_t begin = blockIdx.x * static_cast<uint32_t>(kParamChunk);  // < row < 2^31
  const uint32_t end = row - begin < kParamChunk ? row : begin + static_cast<uint32_t>(kParamChunk);
  for (uint32_t r = blockIdx.y; r < rows; r += gridDim.y) {  // r + gridDim.y < 2^32: both are below 2^31
    const auto [n, t, g] = index.row(r);
    int64_t shift;
    acc_t frac;
    split_offset(static_cast<acc_t>(offsets[n * shape.groups + g]), shift, frac);
    const auto taps = forward_taps(t, shape.frames, shift, frac, acc_t(1));
    const scalar_t* block = x + n * shape.frames * frame_stride + g * shape.group_stride;
    const scalar_t* row0 = frame_row(block, taps.src0, taps.in0, frame_stride);
    const scalar_t* row1 = frame_row(block, taps.src1, taps.in1, frame_stride);
    const scalar_t* gy_row = grad + (n * shape.frames + t) * frame_stride + g * shape.group_stride;
    acc_t interp = 0, diff = 0;
    for (uint32_t e = begin + threadIdx.x; e < end; e += kThreads) {
      const int64_t i = index.offset(e);
      accumulate_param_grads(taps, static_cast<acc_t>(gy_row[i]), row0, row1, i, interp, diff);
    }
    interp_shared[threadIdx.x] = interp;
    diff_shared[threadIdx.x] = diff;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) {
        interp_shared[threadIdx.x] += interp_shared[threadIdx.x + stride];
        diff_shared[threadIdx.x] += diff_shared[threadIdx.x + stride];
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      interp_out[static_cast<int64_t>(r) * gridDim.x + blockIdx.x] = interp_shared[0];
      diff_out[static_cast<int64_t>(r) * gridDim.x + blockIdx.x] = diff_shared[0];
    }
    __syncthreads();  // thread 0 has read the sums before the next row overwrites them
  }
}

at::Tensor interlace_cuda(const at::Tensor& x_in, const at::Tensor& offsets_in, const at::Tensor& weights_in,
                          int64_t channels) {
  const InterlaceShape shape = check_interlace_inputs(x_in, offsets_in, weights_in, channels);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = kernel_layout(x_in), offsets = offsets_in.contiguous(), weights = weights_in.contiguous();
  at::Tensor out = at::empty_like(x);  // in x's layout
  if (row_count(shape) * shape.row == 0) return out;
  check_indices_fit(shape);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tin_interlace_cuda", [&] {
    gather_kernel<scalar_t, false><<<gather_grid(shape), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), offsets.data_ptr<scalar_t>(), weights.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        shape, RowIndexer(shape));
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
  if (row_count(shape) * shape.row > 0) {
    check_indices_fit(shape);
    const RowIndexer index(shape);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.x.scalar_type(), "tin_interlace_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      if (input_grad) {
        gather_kernel<scalar_t, true><<<gather_grid(shape), kThreads, 0, stream>>>(
            b.grad.data_ptr<scalar_t>(), b.offsets.data_ptr<scalar_t>(), b.weights.data_ptr<scalar_t>(),
            b.grad_x.data_ptr<scalar_t>(), shape, index);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (param_grads) {  // per (row, chunk) partial sums, then summed over chunks into [N, T, G]
        const std::array<int64_t, 4> sizes{shape.batch, shape.frames, shape.groups, param_chunks(shape)};
        const at::Tensor interp = at::empty(sizes, b.interp.options()), diff = at::empty(sizes, b.diff.options());
        param_grad_kernel<scalar_t><<<param_grad_grid(shape), kThreads, 0, stream>>>(
            b.grad.data_ptr<scalar_t>(), b.x.data_ptr<scalar_t>(), b.offsets.data_ptr<scalar_t>(), shape, index,
            interp.data_ptr<acc_t>(), diff.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        b.interp.copy_(interp.sum(-1));
        b.diff.copy_(diff.sum(-1));
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
