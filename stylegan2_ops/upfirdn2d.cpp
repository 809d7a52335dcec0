// upfirdn2d: argument checks, output allocation and dispatch.
//
// Our own implementation of the op defined by NVIDIA's StyleGAN2-ADA
// (torch_utils/ops/upfirdn2d.cpp, NVIDIA Source Code License).
//
// CUDA tensors run the kernel; CPU tensors run the same per-pixel code on the
// host, single-threaded (a test path for machines without a GPU, not a fast path).

#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <climits>
#include "upfirdn2d.h"

namespace {

int64_t footprint(const torch::Tensor& t)
{
    int64_t last = 0;
    for (int64_t i = 0; i < t.dim(); i++)
        last += (t.size(i) - 1) * t.stride(i);
    return last;
}

} // namespace

torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                        int padx0, int padx1, int pady0, int pady1, bool flip, double gain)
{
    TORCH_CHECK(x.dim() == 4, "x must be 4-d [N, C, H, W]");
    TORCH_CHECK(f.dim() == 2, "f must be 2-d [fh, fw]");
    TORCH_CHECK(f.dtype() == torch::kFloat, "f must be float32");
    TORCH_CHECK(f.device() == x.device(), "f must be on the device of x");
    TORCH_CHECK(x.numel() > 0, "x is empty");
    TORCH_CHECK(f.size(0) >= 1 && f.size(1) >= 1, "f must be at least 1x1");
    TORCH_CHECK(upx >= 1 && upy >= 1, "up must be >= 1");
    TORCH_CHECK(downx >= 1 && downy >= 1, "down must be >= 1");
    TORCH_CHECK(footprint(x) < INT_MAX && f.numel() < INT_MAX, "x is too large for 32-bit indexing");

    const int64_t outW = (x.size(3) * upx + padx0 + padx1 - f.size(1) + downx) / downx;
    const int64_t outH = (x.size(2) * upy + pady0 + pady1 - f.size(0) + downy) / downy;
    TORCH_CHECK(x.size(3) * upx + padx0 + padx1 - f.size(1) >= 0 && x.size(2) * upy + pady0 + pady1 - f.size(0) >= 0,
                "the padded image is smaller than the filter: the output would be empty");

    c10::cuda::OptionalCUDAGuard guard;
    if (x.is_cuda())
        guard.set_device(x.device());
    torch::Tensor y = torch::empty({x.size(0), x.size(1), outH, outW}, x.options(), x.suggest_memory_format());
    TORCH_CHECK(y.numel() < INT_MAX && footprint(y) < INT_MAX, "output is too large for 32-bit indexing");

    Upfirdn2dParams p;
    p.x = x.data_ptr();
    p.f = f.data_ptr<float>();
    p.y = y.data_ptr();
    p.upx = upx;     p.upy = upy;
    p.downx = downx; p.downy = downy;
    p.padx0 = padx0; p.pady0 = pady0;
    p.flip = flip ? 1 : 0;
    p.gain = gain;
    p.N = (int)x.size(0);   p.C = (int)x.size(1);   p.inH = (int)x.size(2);   p.inW = (int)x.size(3);
    p.xsN = (int)x.stride(0); p.xsC = (int)x.stride(1); p.xsH = (int)x.stride(2); p.xsW = (int)x.stride(3);
    p.fh = (int)f.size(0);  p.fw = (int)f.size(1);
    p.fsH = (int)f.stride(0); p.fsW = (int)f.stride(1);
    p.outH = (int)outH;     p.outW = (int)outW;
    p.ysN = (int)y.stride(0); p.ysC = (int)y.stride(1); p.ysH = (int)y.stride(2); p.ysW = (int)y.stride(3);
    p.channelsLast = (y.stride(1) == 1 && y.size(1) > 1) ? 1 : 0;
    p.total = (int)y.numel();
    if (p.total == 0)
        return y;

    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d", [&]
    {
        if (x.is_cuda())
            C10_CUDA_CHECK(upfirdn2d_launch<scalar_t>(p, c10::cuda::getCurrentCUDAStream()));
        else
            upfirdn2d_host<scalar_t>(p);
    });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("upfirdn2d", &upfirdn2d, "Upsample, pad, FIR-filter and downsample [N, C, H, W] images.");
}
