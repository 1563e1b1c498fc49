// CUDA version of csrc/preprocess.cpp: one thread per output element, so the writes (the
// larger side: 2-4 bytes out per byte in) are fully coalesced; the uint8 reads gather with
// stride C inside a row and hit L1/L2. The arithmetic uses the explicitly rounded
// intrinsics so nvcc cannot contract it into an FMA: results are bit-identical to the CPU
// extension and to the PyTorch oracle.
//
// This file includes no torch header on purpose: the host launcher takes raw pointers and a
// stream, and preprocess.cpp (compiled with WITH_CUDA against a CUDA build of torch) wraps
// it. So the kernel compiles with a bare nvcc (CI: `nvcc -c -arch=sm_90`) on a machine whose
// torch is a CPU build and lacks the c10/cuda headers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

template <typename out_t>
__device__ __forceinline__ out_t from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ float normalise(uint8_t x, float mean, float inv_std) {
  float v = __fdiv_rn(static_cast<float>(x), 255.0f);
  v = __fsub_rn(v, mean);
  return __fmul_rn(v, inv_std);
}

// Output (B, C, F, H, W): element o -> input (b, f, h, w, c).
template <typename out_t>
__global__ void cfhw_kernel(const uint8_t* __restrict__ in, out_t* __restrict__ out,
                            const float* __restrict__ mean, const float* __restrict__ inv_std,
                            int64_t total, int64_t C, int64_t FHW) {
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < total;
       o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t pix = o % FHW;  // (f, h, w) flattened
    const int64_t bc = o / FHW;
    const int64_t c = bc % C, b = bc / C;
    const uint8_t x = in[(b * FHW + pix) * C + c];
    out[o] = from_float<out_t>(normalise(x, mean[c], inv_std[c]));
  }
}

// Output (B, T*GH*GW, C*tt*p*p): token (t, gh, gw), feature (c, dt, dy, dx).
template <typename out_t>
__global__ void patches_kernel(const uint8_t* __restrict__ in, out_t* __restrict__ out,
                               const float* __restrict__ mean, const float* __restrict__ inv_std,
                               int64_t total, int64_t F, int64_t H, int64_t W, int64_t C,
                               int64_t tt, int64_t p) {
  const int64_t GH = H / p, GW = W / p, T = F / tt;
  const int64_t feat = C * tt * p * p, tokens = T * GH * GW;
  for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < total;
       o += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = o % feat;
    int64_t n = o / feat;
    const int64_t b = n / tokens;
    n %= tokens;
    const int64_t gw = n % GW, gh = (n / GW) % GH, t = n / (GW * GH);
    const int64_t dx = k % p, dy = (k / p) % p, dt = (k / (p * p)) % tt, c = k / (p * p * tt);
    const int64_t f = t * tt + dt, h = gh * p + dy, w = gw * p + dx;
    const uint8_t x = in[(((b * F + f) * H + h) * W + w) * C + c];
    out[o] = from_float<out_t>(normalise(x, mean[c], inv_std[c]));
  }
}

template <typename out_t>
cudaError_t launch(const uint8_t* in, void* out, const float* mean, const float* inv_std,
                   int64_t B, int64_t F, int64_t H, int64_t W, int64_t C, bool patches,
                   int64_t tt, int64_t p, cudaStream_t stream) {
  const int64_t total = B * F * H * W * C;  // both layouts have one output per input byte
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  // Grid-stride loop: cap the grid, every thread handles several elements when large.
  int64_t blocks = (total + threads - 1) / threads;
  if (blocks > 65535LL * 8) blocks = 65535LL * 8;
  out_t* dst = static_cast<out_t*>(out);
  if (patches) {
    patches_kernel<out_t><<<(unsigned)blocks, threads, 0, stream>>>(in, dst, mean, inv_std, total,
                                                                    F, H, W, C, tt, p);
  } else {
    cfhw_kernel<out_t><<<(unsigned)blocks, threads, 0, stream>>>(in, dst, mean, inv_std, total, C,
                                                                 F * H * W);
  }
  return cudaGetLastError();
}

}  // namespace

// dtype_code: 0 float32, 1 bfloat16, 2 float16. Returns the launch's cudaError_t.
int fastlam_preprocess_cuda_launch(const uint8_t* in, void* out, const float* mean,
                                   const float* inv_std, int64_t B, int64_t F, int64_t H,
                                   int64_t W, int64_t C, int dtype_code, bool patches,
                                   int64_t tt, int64_t p, void* stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype_code) {
    case 0:
      return launch<float>(in, out, mean, inv_std, B, F, H, W, C, patches, tt, p, s);
    case 1:
      return launch<__nv_bfloat16>(in, out, mean, inv_std, B, F, H, W, C, patches, tt, p, s);
    case 2:
      return launch<__half>(in, out, mean, inv_std, B, F, H, W, C, patches, tt, p, s);
    default:
      return cudaErrorInvalidValue;
  }
}
