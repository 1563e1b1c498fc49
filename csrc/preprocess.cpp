// Fused video preprocessing after decoding: uint8 (B?, F, H, W, C) frames -> normalised
// float32 / bfloat16 / float16 in the model's layout, in one pass over the bytes.
//
//   layout "cfhw":    out (B?, C, F, H, W)                     (what VideoEncoder takes)
//   layout "patches": out (B?, (F/tt)*(H/p)*(W/p), C*tt*p*p)   (tokens in (t, h, w) order,
//                     features in (c, dt, dy, dx) order: a Conv3d patch embedding with
//                     kernel = stride = (tt, p, p) is then a plain matmul with its
//                     weight.view(dim, -1))
//
// value = (x / 255 - mean[c]) * inv_std[c], each step rounded separately (IEEE single),
// so the result is bit-identical to the same chain of PyTorch ops (the oracle in
// fastlam/data/preprocess.py) and, with mean 0 and inv_std 1, to clip_to_tensor's x / 255.
// Built with -ffp-contract=off so the compiler cannot fuse the steps into an FMA.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <string>
#include <vector>

namespace {

struct Geometry {
  int64_t B, F, H, W, C;
  int64_t tt, p;  // tubelet and patch size (1, 1 for "cfhw")
};

template <typename out_t>
void cfhw_kernel(const uint8_t* in, out_t* out, const float* mean, const float* inv_std,
                 const Geometry& g) {
  const int64_t rows = g.B * g.F * g.H;  // one input row = W pixels of C channels
  const int64_t plane = g.F * g.H * g.W;  // one output channel of one clip
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (g.F * g.H);
      const int64_t fh = r % (g.F * g.H);  // (f, h) flattened: also the output row index
      const uint8_t* src = in + r * g.W * g.C;
      for (int64_t c = 0; c < g.C; ++c) {
        out_t* dst = out + (b * g.C + c) * plane + fh * g.W;
        const float m = mean[c], s = inv_std[c];
        for (int64_t w = 0; w < g.W; ++w) {
          float v = static_cast<float>(src[w * g.C + c]) / 255.0f;
          v = v - m;
          v = v * s;
          dst[w] = static_cast<out_t>(v);
        }
      }
    }
  });
}

template <typename out_t>
void patches_kernel(const uint8_t* in, out_t* out, const float* mean, const float* inv_std,
                    const Geometry& g) {
  const int64_t T = g.F / g.tt, GH = g.H / g.p, GW = g.W / g.p;
  const int64_t feat = g.C * g.tt * g.p * g.p;
  const int64_t tokens = T * GH * GW;
  const int64_t rows = g.B * g.F * g.H;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (g.F * g.H);
      const int64_t f = (r / g.H) % g.F, h = r % g.H;
      const int64_t t = f / g.tt, dt = f % g.tt, gh = h / g.p, dy = h % g.p;
      const uint8_t* src = in + r * g.W * g.C;
      out_t* base = out + (b * tokens + (t * GH + gh) * GW) * feat;
      for (int64_t gw = 0; gw < GW; ++gw) {
        out_t* tok = base + gw * feat;
        for (int64_t c = 0; c < g.C; ++c) {
          out_t* dst = tok + ((c * g.tt + dt) * g.p + dy) * g.p;
          const float m = mean[c], s = inv_std[c];
          for (int64_t dx = 0; dx < g.p; ++dx) {
            float v = static_cast<float>(src[(gw * g.p + dx) * g.C + c]) / 255.0f;
            v = v - m;
            v = v * s;
            dst[dx] = static_cast<out_t>(v);
          }
        }
      }
    }
  });
}

std::vector<int64_t> out_shape(const Geometry& g, bool patches) {
  if (patches) {
    return {g.B, (g.F / g.tt) * (g.H / g.p) * (g.W / g.p), g.C * g.tt * g.p * g.p};
  }
  return {g.B, g.C, g.F, g.H, g.W};
}

}  // namespace

#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

// csrc/preprocess_cuda.cu (torch-free, so it compiles with a bare nvcc).
int fastlam_preprocess_cuda_launch(const uint8_t* in, void* out, const float* mean,
                                   const float* inv_std, int64_t B, int64_t F, int64_t H,
                                   int64_t W, int64_t C, int dtype_code, bool patches,
                                   int64_t tt, int64_t p, void* stream);
#endif

// Argument checking lives in the Python wrapper (it names the user's arguments); these
// checks only guard the memory accesses below against a wrapper bug.
// dtype_code: 0 float32, 1 bfloat16, 2 float16 (an int keeps the binding independent of
// how a given torch version casts dtypes through pybind11).
torch::Tensor preprocess(const torch::Tensor& frames, const torch::Tensor& mean,
                         const torch::Tensor& inv_std, int64_t dtype_code, bool patches,
                         int64_t tubelet, int64_t patch) {
  TORCH_CHECK(dtype_code >= 0 && dtype_code <= 2, "dtype_code must be 0, 1 or 2");
  const at::ScalarType dtype = dtype_code == 0 ? at::kFloat : (dtype_code == 1 ? at::kBFloat16 : at::kHalf);
  TORCH_CHECK(frames.scalar_type() == at::kByte, "frames must be uint8");
  TORCH_CHECK(frames.dim() == 5 && frames.is_contiguous(), "frames must be contiguous (B, F, H, W, C)");
  TORCH_CHECK(mean.scalar_type() == at::kFloat && inv_std.scalar_type() == at::kFloat &&
                  mean.is_contiguous() && inv_std.is_contiguous() &&
                  mean.numel() == frames.size(4) && inv_std.numel() == frames.size(4),
              "mean / inv_std must be contiguous float32 with one value per channel");
  Geometry g{frames.size(0), frames.size(1), frames.size(2), frames.size(3), frames.size(4),
             patches ? tubelet : 1, patches ? patch : 1};
  TORCH_CHECK(g.tt >= 1 && g.p >= 1 && g.F % g.tt == 0 && g.H % g.p == 0 && g.W % g.p == 0,
              "frames / height / width must be multiples of tubelet / patch");
  if (frames.is_cuda()) {
#ifdef WITH_CUDA
    TORCH_CHECK(mean.device() == frames.device() && inv_std.device() == frames.device(),
                "mean / inv_std must be on the frames' CUDA device");
    const c10::cuda::CUDAGuard guard(frames.device());
    auto out = torch::empty(out_shape(g, patches), frames.options().dtype(dtype));
    const int err = fastlam_preprocess_cuda_launch(
        frames.data_ptr<uint8_t>(), out.data_ptr(), mean.data_ptr<float>(), inv_std.data_ptr<float>(),
        g.B, g.F, g.H, g.W, g.C, static_cast<int>(dtype_code), patches, g.tt, g.p,
        c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == 0, "preprocess CUDA kernel launch failed with cudaError ", err);
    return out;
#else
    TORCH_CHECK(false, "this build of the preprocessing extension has no CUDA kernel");
#endif
  }
  TORCH_CHECK(mean.device().is_cpu() && inv_std.device().is_cpu(), "mean / inv_std must be on the CPU");
  auto out = torch::empty(out_shape(g, patches), frames.options().dtype(dtype));
  const uint8_t* in = frames.data_ptr<uint8_t>();
  const float* m = mean.data_ptr<float>();
  const float* s = inv_std.data_ptr<float>();
  auto run = [&](auto* dst) {
    if (patches) {
      patches_kernel(in, dst, m, s, g);
    } else {
      cfhw_kernel(in, dst, m, s, g);
    }
  };
  if (dtype == at::kFloat) {
    run(out.data_ptr<float>());
  } else if (dtype == at::kBFloat16) {
    run(out.data_ptr<at::BFloat16>());
  } else {
    run(out.data_ptr<at::Half>());
  }
  return out;
}

bool has_cuda_kernel() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("preprocess", &preprocess, "uint8 (B, F, H, W, C) -> normalised (B, C, F, H, W) or tubelet patches");
  m.def("has_cuda_kernel", &has_cuda_kernel, "whether this build carries the CUDA kernel");
}
