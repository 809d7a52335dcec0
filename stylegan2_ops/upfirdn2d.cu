// Upsample, pad, FIR-filter and downsample a batch of 2-d images: per-pixel math and launchers.
//
// Our own implementation of the op defined by NVIDIA's StyleGAN2-ADA
// (torch_utils/ops/upfirdn2d.cu, NVIDIA Source Code License). NVIDIA's kernel
// stages tiles in shared memory; this one is a direct (gather) form: one thread
// per output pixel walks only the filter taps that meet a non-zero input sample,
// with the common up/down factors fixed at compile time. The same pixel function
// runs on the host, so the index math is tested without a GPU.

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include "upfirdn2d.h"

namespace {

template <class T> struct AccType { typedef float type; };
template <> struct AccType<double> { typedef double type; };

// Floor division for b > 0 (C++ division truncates towards zero).
__host__ __device__ __forceinline__ int floor_div(int a, int b)
{
    return (a >= 0) ? a / b : -((-a + b - 1) / b);
}

// One output pixel. The upsampled, padded signal is u[j] = x[(j - pad0) / up] when
// (j - pad0) is a multiple of up (zero otherwise); output o = sum_k u[o * down + k] * g[k]
// with g the filter flipped (convolution) or not (flip: correlation). So input sample i
// meets tap k = i * up - (o * down - pad0): taps advance by `up` per input sample.
template <class T, int UPX, int UPY, int DNX, int DNY>
__host__ __device__ __forceinline__ void upfirdn2d_pixel(const Upfirdn2dParams& p, int idx)
{
    typedef typename AccType<T>::type S;
    const int upx   = UPX ? UPX : p.upx;
    const int upy   = UPY ? UPY : p.upy;
    const int downx = DNX ? DNX : p.downx;
    const int downy = DNY ? DNY : p.downy;

    int ox, oy, c, n, t;
    if (p.channelsLast)
    {
        c = idx % p.C;     t = idx / p.C;
        ox = t % p.outW;   t /= p.outW;
        oy = t % p.outH;   n = t / p.outH;
    }
    else
    {
        ox = idx % p.outW; t = idx / p.outW;
        oy = t % p.outH;   t /= p.outH;
        c = t % p.C;       n = t / p.C;
    }

    // First input sample under the filter window and the tap it meets.
    const int bx = ox * downx - p.padx0;
    const int by = oy * downy - p.pady0;
    int ix0 = floor_div(bx + upx - 1, upx);
    int iy0 = floor_div(by + upy - 1, upy);
    int kx0 = ix0 * upx - bx;
    int ky0 = iy0 * upy - by;
    if (ix0 < 0) { kx0 -= ix0 * upx; ix0 = 0; }   // skip samples left of the image
    if (iy0 < 0) { ky0 -= iy0 * upy; iy0 = 0; }

    const T* xp = (const T*)p.x + n * p.xsN + c * p.xsC;
    S v = (S)0;
    for (int ky = ky0, iy = iy0; ky < p.fh && iy < p.inH; ky += upy, iy++)
    {
        const int fy = p.flip ? ky : p.fh - 1 - ky;
        const float* frow = p.f + fy * p.fsH;
        const T* xrow = xp + iy * p.xsH;
        for (int kx = kx0, ix = ix0; kx < p.fw && ix < p.inW; kx += upx, ix++)
        {
            const int fx = p.flip ? kx : p.fw - 1 - kx;
            v += (S)xrow[ix * p.xsW] * (S)frow[fx * p.fsW];
        }
    }
    ((T*)p.y)[n * p.ysN + c * p.ysC + oy * p.ysH + ox * p.ysW] = (T)(v * (S)p.gain);
}

template <class T, int UPX, int UPY, int DNX, int DNY>
__global__ void upfirdn2d_kernel(Upfirdn2dParams p)
{
    const unsigned int n = (unsigned int)p.total;
    const unsigned int step = blockDim.x * gridDim.x;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        upfirdn2d_pixel<T, UPX, UPY, DNX, DNY>(p, (int)i);
}

template <class T, int UPX, int UPY, int DNX, int DNY>
struct Runner
{
    static cudaError_t launch(const Upfirdn2dParams& p, cudaStream_t stream)
    {
        const int block = 256;
        int grid = (p.total - 1) / block + 1;
        if (grid > 262144)
            grid = 262144;  // grid-stride loop covers the rest
        upfirdn2d_kernel<T, UPX, UPY, DNX, DNY><<<grid, block, 0, stream>>>(p);
        return cudaGetLastError();
    }
    static void host(const Upfirdn2dParams& p)
    {
        for (int i = 0; i < p.total; i++)
            upfirdn2d_pixel<T, UPX, UPY, DNX, DNY>(p, i);
    }
};

// Calls R<T, up/down constants>::method for the factors StyleGAN2 uses, the
// runtime-generic instance (all zeros) otherwise.
#define UPFIRDN2D_DISPATCH(METHOD, ...)                                                        \
    do {                                                                                       \
        const int ux = p.upx, uy = p.upy, dx = p.downx, dy = p.downy;                          \
        if (ux == 1 && uy == 1 && dx == 1 && dy == 1) return Runner<T, 1, 1, 1, 1>::METHOD(__VA_ARGS__); \
        if (ux == 2 && uy == 2 && dx == 1 && dy == 1) return Runner<T, 2, 2, 1, 1>::METHOD(__VA_ARGS__); \
        if (ux == 1 && uy == 1 && dx == 2 && dy == 2) return Runner<T, 1, 1, 2, 2>::METHOD(__VA_ARGS__); \
        if (ux == 2 && uy == 1 && dx == 1 && dy == 1) return Runner<T, 2, 1, 1, 1>::METHOD(__VA_ARGS__); \
        if (ux == 1 && uy == 2 && dx == 1 && dy == 1) return Runner<T, 1, 2, 1, 1>::METHOD(__VA_ARGS__); \
        if (ux == 1 && uy == 1 && dx == 2 && dy == 1) return Runner<T, 1, 1, 2, 1>::METHOD(__VA_ARGS__); \
        if (ux == 1 && uy == 1 && dx == 1 && dy == 2) return Runner<T, 1, 1, 1, 2>::METHOD(__VA_ARGS__); \
        if (ux == 4 && uy == 4 && dx == 1 && dy == 1) return Runner<T, 4, 4, 1, 1>::METHOD(__VA_ARGS__); \
        return Runner<T, 0, 0, 0, 0>::METHOD(__VA_ARGS__);                                   \
    } while (0)

} // namespace

template <class T>
cudaError_t upfirdn2d_launch(const Upfirdn2dParams& p, cudaStream_t stream)
{
    UPFIRDN2D_DISPATCH(launch, p, stream);
}

template <class T>
void upfirdn2d_host(const Upfirdn2dParams& p)
{
    UPFIRDN2D_DISPATCH(host, p);
}

template cudaError_t upfirdn2d_launch<float>(const Upfirdn2dParams&, cudaStream_t);
template cudaError_t upfirdn2d_launch<double>(const Upfirdn2dParams&, cudaStream_t);
template cudaError_t upfirdn2d_launch<c10::Half>(const Upfirdn2dParams&, cudaStream_t);
template cudaError_t upfirdn2d_launch<c10::BFloat16>(const Upfirdn2dParams&, cudaStream_t);
template void upfirdn2d_host<float>(const Upfirdn2dParams&);
template void upfirdn2d_host<double>(const Upfirdn2dParams&);
template void upfirdn2d_host<c10::Half>(const Upfirdn2dParams&);
template void upfirdn2d_host<c10::BFloat16>(const Upfirdn2dParams&);
