// CPU kernels of the temporal interlace op, the op schema, and the Python module stub that loads them.
// Parallel over (sample, group, span of a row); the inner loop runs over one contiguous run so it can vectorise.
#include <Python.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "interlace_element.h"
#include "interlace_host.h"

namespace tin {
namespace {

// Rows of about this many elements per parallel task keep the thread pool's overhead small.
constexpr int64_t kElementsPerTask = 1 << 15;
// The gather walks a group's rows in column chunks of this many elements, all frames of a chunk in turn: the T input
// chunks stay in cache, so each input element is read from memory once (as in a copy), not once per reading frame.
constexpr int64_t kChunk = 2048;

int64_t rows_per_task(const InterlaceShape& shape) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, shape.row));
}

// One span of an output row. Compiled twice, for AVX2 and for the baseline ISA, and picked at load time by the CPU
// (GCC function multiversioning): 8-wide vectors where the CPU has them, and the extension still runs everywhere.
#define TIN_CPU_CLONES __attribute__((target_clones("avx2", "default")))

TIN_CPU_CLONES void gather_span(const Taps<float>& taps, const float* row0, const float* row1, float* out,
                                int64_t first, int64_t last) {
  for (int64_t i = first; i < last; ++i) out[i] = gather_element(taps, row0, row1, i);
}

TIN_CPU_CLONES void gather_span(const Taps<double>& taps, const double* row0, const double* row1, double* out,
                                int64_t first, int64_t last) {
  for (int64_t i = first; i < last; ++i) out[i] = gather_element(taps, row0, row1, i);
}

// Half and bfloat16: read, accumulate in float, round once on the store.
template <typename scalar_t>
void gather_span(const Taps<float>& taps, const scalar_t* row0, const scalar_t* row1, scalar_t* out, int64_t first,
                 int64_t last) {
  for (int64_t i = first; i < last; ++i) out[i] = static_cast<scalar_t>(gather_element(taps, row0, row1, i));
}

// dst[n, t, g, :] = taps(n, g, t) applied to src rows. Forward and input-gradient differ only in their taps.
// Parallel over (sample, group, column chunk); each task runs through all frames of its chunk. A chunk is a span of
// one long run (channels-first: the row is one run) or several short runs whole (channels-last: C / G per pixel).
template <typename scalar_t, typename TapsFn>
void gather_rows(const scalar_t* src, scalar_t* dst, const InterlaceShape& shape, TapsFn taps_for) {
  const int64_t frame_stride = shape.frame_stride;
  const int64_t runs = shape.row / shape.run;
  const int64_t span = std::min(shape.run, kChunk);
  const int64_t spans_per_run = (shape.run + span - 1) / span;
  const int64_t runs_per_chunk = std::max<int64_t>(1, kChunk / shape.run);
  const int64_t chunks = (runs + runs_per_chunk - 1) / runs_per_chunk * spans_per_run;
  const int64_t tasks = shape.batch * shape.groups * chunks;
  const int64_t grain = std::max<int64_t>(1, kElementsPerTask / (kChunk * std::max<int64_t>(1, shape.frames)));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t g = (task / chunks) % shape.groups;
      const int64_t n = task / (chunks * shape.groups);
      const int64_t first = (chunk % spans_per_run) * span;
      const int64_t last = std::min(first + span, shape.run);
      const int64_t first_run = (chunk / spans_per_run) * runs_per_chunk;
      const int64_t last_run = std::min(first_run + runs_per_chunk, runs);
      const scalar_t* block = src + n * shape.frames * frame_stride + g * shape.group_stride;  // frame 0, group g
      for (int64_t t = 0; t < shape.frames; ++t) {
        const auto taps = taps_for(n, g, t);
        const scalar_t* row0 = frame_row(block, taps.src0, taps.in0, frame_stride);
        const scalar_t* row1 = frame_row(block, taps.src1, taps.in1, frame_stride);
        scalar_t* out = dst + (n * shape.frames + t) * frame_stride + g * shape.group_stride;
        for (int64_t r = first_run; r < last_run; ++r) {
          const int64_t base = r * shape.run_stride;  // padding rows (nullptr) are never read, so never offset
          gather_span(taps, row0 ? row0 + base : row0, row1 ? row1 + base : row1, out + base, first, last);
        }
      }
    }
  });
}

at::Tensor interlace_cpu(const at::Tensor& x_in, const at::Tensor& offsets_in, const at::Tensor& weights_in,
                         int64_t channels) {
  const InterlaceShape shape = check_interlace_inputs(x_in, offsets_in, weights_in, channels);
  const at::Tensor x = kernel_layout(x_in), offsets = offsets_in.contiguous(), weights = weights_in.contiguous();
  at::Tensor out = at::empty_like(x);  // in x's layout
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tin_interlace_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* off = offsets.data_ptr<scalar_t>();
    const scalar_t* w = weights.data_ptr<scalar_t>();
    gather_rows(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), shape, [&](int64_t n, int64_t g, int64_t t) {
      int64_t shift;
      acc_t frac;
      split_offset(static_cast<acc_t>(off[n * shape.groups + g]), shift, frac);
      const acc_t weight = static_cast<acc_t>(w[(n * shape.frames + t) * shape.groups + g]);
      return forward_taps(t, shape.frames, shift, frac, weight);
    });
  });
  copy_pass_through(x, out, shape);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> interlace_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                      const at::Tensor& offsets_in,
                                                                      const at::Tensor& weights_in, int64_t channels,
                                                                      bool input_grad, bool param_grads) {
  const BackwardBuffers b = prepare_backward(grad_in, x_in, offsets_in, weights_in, channels, input_grad, param_grads);
  const InterlaceShape shape = b.shape;  // named locals: lambdas cannot capture structured bindings in C++17
  const at::Tensor &grad = b.grad, &x = b.x, &offsets = b.offsets, &weights = b.weights;
  const at::Tensor &grad_x = b.grad_x, &interp = b.interp, &diff = b.diff;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "tin_interlace_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* off = offsets.data_ptr<scalar_t>();
    const scalar_t* w = weights.data_ptr<scalar_t>();
    const scalar_t* gy = grad.data_ptr<scalar_t>();
    const scalar_t* xs = x.data_ptr<scalar_t>();
    auto shift_and_frac = [&](int64_t n, int64_t g, int64_t& shift, acc_t& frac) {
      split_offset(static_cast<acc_t>(off[n * shape.groups + g]), shift, frac);
    };

    if (input_grad) {
      gather_rows(gy, grad_x.data_ptr<scalar_t>(), shape, [&](int64_t n, int64_t g, int64_t s) {
        int64_t shift;
        acc_t frac;
        shift_and_frac(n, g, shift, frac);
        return input_grad_taps<acc_t>(s, shape.frames, shift, frac, w + n * shape.frames * shape.groups + g,
                                      shape.groups);
      });
    }
    if (!param_grads) return;

    acc_t* interp_out = interp.data_ptr<acc_t>();
    acc_t* diff_out = diff.data_ptr<acc_t>();
    const int64_t frame_stride = shape.frame_stride;
    const int64_t rows = shape.batch * shape.frames * shape.groups;
    at::parallel_for(0, rows, rows_per_task(shape), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // r indexes [N, T, G]
        const int64_t g = r % shape.groups;
        const int64_t t = (r / shape.groups) % shape.frames;
        const int64_t n = r / (shape.groups * shape.frames);
        int64_t shift;
        acc_t frac;
        shift_and_frac(n, g, shift, frac);
        const auto taps = forward_taps(t, shape.frames, shift, frac, acc_t(1));
        const scalar_t* block = xs + n * shape.frames * frame_stride + g * shape.group_stride;
        const scalar_t* row0 = frame_row(block, taps.src0, taps.in0, frame_stride);
        const scalar_t* row1 = frame_row(block, taps.src1, taps.in1, frame_stride);
        const scalar_t* gy_row = gy + (n * shape.frames + t) * frame_stride + g * shape.group_stride;
        acc_t interp_sum = 0, diff_sum = 0;
        for (int64_t base = 0; base < shape.row / shape.run * shape.run_stride; base += shape.run_stride) {
          for (int64_t i = base; i < base + shape.run; ++i) {
            accumulate_param_grads(taps, static_cast<acc_t>(gy_row[i]), row0, row1, i, interp_sum, diff_sum);
          }
        }
        interp_out[r] = interp_sum;
        diff_out[r] = diff_sum;
      }
    });
  });
  return finish_backward(b);
}

}  // namespace

TORCH_LIBRARY(tin, m) {
  // channels: interlace channels [0, channels) of x, copy the rest (-1: all of them).
  m.def("interlace(Tensor x, Tensor offsets, Tensor weights, int channels=-1) -> Tensor");
  // input_grad / param_grads: which gradients to compute; one not computed comes back as an empty tensor.
  m.def(
      "interlace_backward(Tensor grad_out, Tensor x, Tensor offsets, Tensor weights, int channels=-1, "
      "bool input_grad=True, bool param_grads=True) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(tin, CPU, m) {
  m.impl("interlace", &interlace_cpu);
  m.impl("interlace_backward", &interlace_backward_cpu);
}

}  // namespace tin

// Importing tin_ops registers the ops above; the module itself exports nothing. It is a top-level module, apart
// from the pure-Python tin_core, so that a job whose working directory holds an uncompiled copy of the sources
// (ray job submit --working-dir .) still finds the installed binary.
extern "C" PyObject* PyInit_tin_ops(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "tin_ops", "TIN interlace kernels (torch.ops.tin)", -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
