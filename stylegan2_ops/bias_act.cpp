// Fused bias + activation: argument checks, output allocation and dispatch.
//
// Our own implementation of the op defined by NVIDIA's StyleGAN2-ADA
// (torch_utils/ops/bias_act.cpp, NVIDIA Source Code License).
//
// CUDA tensors run the kernel; CPU tensors run the same per-element code on the
// host, single-threaded (a test path for machines without a GPU, not a fast path).

#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <climits>
#include "bias_act.h"

namespace {

bool same_layout(const torch::Tensor& a, const torch::Tensor& b)
{
    if (a.dim() != b.dim())
        return false;
    for (int64_t i = 0; i < a.dim(); i++)
    {
        if (a.size(i) != b.size(i))
            return false;
        if (a.size(i) >= 2 && a.stride(i) != b.stride(i))
            return false;
    }
    return true;
}

void check_ref(const torch::Tensor& t, const torch::Tensor& x, const char* name)
{
    if (t.numel() == 0)
        return;
    TORCH_CHECK(t.dtype() == x.dtype() && t.device() == x.device(), name, " must have the dtype and device of x");
    TORCH_CHECK(same_layout(t, x), name, " must have the shape and memory layout of x");
}

} // namespace

torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, torch::Tensor xref, torch::Tensor yref,
                       torch::Tensor dy, int grad, int dim, int act, double alpha, double gain, double clamp)
{
    TORCH_CHECK(x.numel() <= INT_MAX, "x is too large (more than INT_MAX elements)");
    TORCH_CHECK(x.is_non_overlapping_and_dense(), "x must be non-overlapping and dense");
    TORCH_CHECK(grad >= 0 && grad <= 2, "grad must be 0, 1 or 2");
    TORCH_CHECK(act >= kLinear && act <= kSwish, "unknown activation code ", act);
    TORCH_CHECK(b.dim() == 1, "b must be 1-d");
    if (b.numel() > 0)
    {
        TORCH_CHECK(b.dtype() == x.dtype() && b.device() == x.device(), "b must have the dtype and device of x");
        TORCH_CHECK(b.is_contiguous(), "b must be contiguous");
        TORCH_CHECK(dim >= 0 && dim < x.dim(), "dim is out of range");
        TORCH_CHECK(b.numel() == x.size(dim), "b must have x.shape[dim] elements");
    }
    check_ref(xref, x, "xref");
    check_ref(yref, x, "yref");
    check_ref(dy, x, "dy");

    c10::cuda::OptionalCUDAGuard guard;
    if (x.is_cuda())
        guard.set_device(x.device());
    torch::Tensor y = torch::empty_like(x);
    TORCH_CHECK(same_layout(y, x), "internal: y must have the layout of x");
    if (x.numel() == 0)
        return y;

    BiasActParams p;
    p.x     = x.data_ptr();
    p.b     = b.numel() ? b.data_ptr() : nullptr;
    p.xref  = xref.numel() ? xref.data_ptr() : nullptr;
    p.yref  = yref.numel() ? yref.data_ptr() : nullptr;
    p.dy    = dy.numel() ? dy.data_ptr() : nullptr;
    p.y     = y.data_ptr();
    p.grad  = grad;
    p.act   = act;
    p.alpha = alpha;
    p.gain  = gain;
    p.clamp = clamp;
    p.sizeX = (int)x.numel();
    p.sizeB = (int)b.numel();
    p.stepB = b.numel() ? (int)x.stride(dim) : 1;

    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "bias_act", [&]
    {
        if (x.is_cuda())
            C10_CUDA_CHECK(bias_act_launch<scalar_t>(p, c10::cuda::getCurrentCUDAStream()));
        else
            bias_act_host<scalar_t>(p);
    });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.def("bias_act", &bias_act, "Fused bias + activation (grad 0) and its gradients (grad 1, 2).");
}
