// Fused bias + activation + gain + clamp: the per-element math and its launchers.
//
// Our own implementation of the op defined by NVIDIA's StyleGAN2-ADA
// (torch_utils/ops/bias_act.cu, NVIDIA Source Code License). The gradient modes,
// the activation table and the numeric guards follow that design; the code is
// written afresh so that the same element function also runs on the host.

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include "bias_act.h"

namespace {

// Accumulation type: half and bfloat16 compute in float.
template <class T> struct AccType { typedef float type; };
template <> struct AccType<double> { typedef double type; };

__host__ __device__ __forceinline__ float  exp_(float v)   { return expf(v); }
__host__ __device__ __forceinline__ double exp_(double v)  { return exp(v); }
__host__ __device__ __forceinline__ float  log_(float v)   { return logf(v); }
__host__ __device__ __forceinline__ double log_(double v)  { return log(v); }
__host__ __device__ __forceinline__ float  tanh_(float v)  { return tanhf(v); }
__host__ __device__ __forceinline__ double tanh_(double v) { return tanh(v); }

template <class T, int A>
__host__ __device__ __forceinline__ void bias_act_element(const BiasActParams& p, int i)
{
    typedef typename AccType<T>::type S;
    const int G          = p.grad;
    const S alpha        = (S)p.alpha;
    const S gain         = (S)p.gain;
    const S clamp        = (S)p.clamp;
    const S zero         = (S)0;
    const S one          = (S)1;
    const S two          = (S)2;
    const S expRange     = (S)80;   // beyond this exp() saturates: use the asymptote
    const S halfExpRange = (S)40;
    const S seluScale    = (S)1.0507009873554804934193349852946;
    const S seluAlpha    = (S)1.6732632423543772848170429916717;

    S x    = (S)((const T*)p.x)[i];
    S b    = p.b    ? (S)((const T*)p.b)[(i / p.stepB) % p.sizeB] : zero;
    S xref = p.xref ? (S)((const T*)p.xref)[i] : zero;
    S yref = p.yref ? (S)((const T*)p.yref)[i] : zero;
    S dy   = p.dy   ? (S)((const T*)p.dy)[i]   : one;
    S yy   = (gain != zero) ? yref / gain : zero;  // activation output before the gain
    S y    = zero;

    if (G == 0)
        x += b;
    else
        xref += b;

    if (A == kLinear)
    {
        if (G <= 1) y = x;
    }
    else if (A == kRelu)
    {
        if (G == 0) y = (x > zero) ? x : zero;
        if (G == 1) y = (yy > zero) ? x : zero;
    }
    else if (A == kLrelu)
    {
        if (G == 0) y = (x > zero) ? x : x * alpha;
        if (G == 1) y = (yy > zero) ? x : x * alpha;
    }
    else if (A == kTanh)
    {
        if (G == 0) y = tanh_(x);
        if (G == 1) y = x * (one - yy * yy);
        if (G == 2) y = x * (one - yy * yy) * (-two * yy);
    }
    else if (A == kSigmoid)
    {
        if (G == 0) y = (x < -expRange) ? zero : one / (exp_(-x) + one);
        if (G == 1) y = x * yy * (one - yy);
        if (G == 2) y = x * yy * (one - yy) * (one - two * yy);
    }
    else if (A == kElu)
    {
        if (G == 0) y = (x >= zero) ? x : exp_(x) - one;
        if (G == 1) y = (yy >= zero) ? x : x * (yy + one);
        if (G == 2) y = (yy >= zero) ? zero : x * (yy + one);
    }
    else if (A == kSelu)
    {
        if (G == 0) y = (x >= zero) ? seluScale * x : (seluScale * seluAlpha) * (exp_(x) - one);
        if (G == 1) y = (yy >= zero) ? x * seluScale : x * (yy + seluScale * seluAlpha);
        if (G == 2) y = (yy >= zero) ? zero : x * (yy + seluScale * seluAlpha);
    }
    else if (A == kSoftplus)
    {
        if (G == 0) y = (x > expRange) ? x : log_(exp_(x) + one);
        if (G == 1) y = x * (one - exp_(-yy));
        if (G == 2) { S c = exp_(-yy); y = x * c * (one - c); }
    }
    else if (A == kSwish)
    {
        if (G == 0)
            y = (x < -expRange) ? zero : x / (exp_(-x) + one);
        else
        {
            // Derivatives of x * sigmoid(x) written with c = e^x, d = 1 + e^x.
            S c = exp_(xref);
            S d = c + one;
            if (G == 1)
                y = (xref > halfExpRange) ? x : x * c * (xref + d) / (d * d);
            else
                y = (xref > halfExpRange) ? zero : x * c * (xref * (two - d) + two * d) / (d * d * d);
            yref = (xref < -expRange) ? zero : xref / (exp_(-xref) + one) * gain;
        }
    }

    y *= gain * dy;

    if (clamp >= zero)
    {
        if (G == 0)
        {
            if (y > clamp) y = clamp;        // NaN passes through, as in torch.clamp
            else if (y < -clamp) y = -clamp;
        }
        else if (!(yref > -clamp && yref < clamp))
            y = zero;                        // the forward value was clamped: no gradient
    }

    ((T*)p.y)[i] = (T)y;
}

template <class T, int A>
__global__ void bias_act_kernel(BiasActParams p)
{
    const unsigned int n = (unsigned int)p.sizeX;
    const unsigned int step = blockDim.x * gridDim.x;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step)
        bias_act_element<T, A>(p, (int)i);
}

template <class T, int A>
cudaError_t launch_act(const BiasActParams& p, cudaStream_t stream)
{
    const int block = 256;
    int grid = (p.sizeX - 1) / block + 1;
    if (grid > 65536)
        grid = 65536;  // grid-stride loop covers the rest
    bias_act_kernel<T, A><<<grid, block, 0, stream>>>(p);
    return cudaGetLastError();
}

template <class T, int A>
void host_act(const BiasActParams& p)
{
    for (int i = 0; i < p.sizeX; i++)
        bias_act_element<T, A>(p, i);
}

} // namespace

template <class T>
cudaError_t bias_act_launch(const BiasActParams& p, cudaStream_t stream)
{
    switch (p.act)
    {
        case kLinear:   return launch_act<T, kLinear>(p, stream);
        case kRelu:     return launch_act<T, kRelu>(p, stream);
        case kLrelu:    return launch_act<T, kLrelu>(p, stream);
        case kTanh:     return launch_act<T, kTanh>(p, stream);
        case kSigmoid:  return launch_act<T, kSigmoid>(p, stream);
        case kElu:      return launch_act<T, kElu>(p, stream);
        case kSelu:     return launch_act<T, kSelu>(p, stream);
        case kSoftplus: return launch_act<T, kSoftplus>(p, stream);
        case kSwish:    return launch_act<T, kSwish>(p, stream);
    }
    return cudaErrorInvalidValue;
}

template <class T>
void bias_act_host(const BiasActParams& p)
{
    switch (p.act)
    {
        case kLinear:   host_act<T, kLinear>(p); break;
        case kRelu:     host_act<T, kRelu>(p); break;
        case kLrelu:    host_act<T, kLrelu>(p); break;
        case kTanh:     host_act<T, kTanh>(p); break;
        case kSigmoid:  host_act<T, kSigmoid>(p); break;
        case kElu:      host_act<T, kElu>(p); break;
        case kSelu:     host_act<T, kSelu>(p); break;
        case kSoftplus: host_act<T, kSoftplus>(p); break;
        case kSwish:    host_act<T, kSwish>(p); break;
    }
}

template cudaError_t bias_act_launch<float>(const BiasActParams&, cudaStream_t);
template cudaError_t bias_act_launch<double>(const BiasActParams&, cudaStream_t);
template cudaError_t bias_act_launch<c10::Half>(const BiasActParams&, cudaStream_t);
template cudaError_t bias_act_launch<c10::BFloat16>(const BiasActParams&, cudaStream_t);
template void bias_act_host<float>(const BiasActParams&);
template void bias_act_host<double>(const BiasActParams&);
template void bias_act_host<c10::Half>(const BiasActParams&);
template void bias_act_host<c10::BFloat16>(const BiasActParams&);
