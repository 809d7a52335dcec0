// Fused bias + activation + gain + clamp: kernel parameters and launchers.
//
// Our own implementation of the op defined by NVIDIA's StyleGAN2-ADA
// (torch_utils/ops/bias_act.*, NVIDIA Source Code License); the activation
// table, gradient modes and numeric guards follow that design.

#pragma once
#include <cuda_runtime.h>

// Activation codes shared with stylegan2_ops/_bias_act.py (ACTIVATIONS[...].code).
enum BiasActCode
{
    kLinear = 1, kRelu = 2, kLrelu = 3, kTanh = 4, kSigmoid = 5,
    kElu = 6, kSelu = 7, kSoftplus = 8, kSwish = 9
};

// grad == 0: y  = clamp(act(x + b) * gain)
// grad == 1: dx = x * act'(xref + b) * gain, zeroed where yref was clamped (x is dy)
// grad == 2: d2 = x * dy * act''(xref + b) * gain, zeroed where yref was clamped (x is d(dx))
struct BiasActParams
{
    const void* x;      // input (grad 0) or incoming gradient (grad 1, 2)
    const void* b;      // bias [sizeB] or nullptr
    const void* xref;   // saved forward input or nullptr
    const void* yref;   // saved forward output or nullptr
    const void* dy;     // saved first-order gradient (grad 2) or nullptr
    void*       y;      // output, same layout as x

    int   grad;
    int   act;
    double alpha;
    double gain;
    double clamp;       // < 0: no clamping

    int   sizeX;        // number of elements of x
    int   sizeB;        // number of elements of b (0: no bias)
    int   stepB;        // stride of x along the bias dimension
};

// Runs the kernel on `stream`. T is float, double, c10::Half or c10::BFloat16.
template <class T> cudaError_t bias_act_launch(const BiasActParams& p, cudaStream_t stream);

// Runs the same per-element code on the host (CPU tensors): used to test the
// kernel math on machines without a GPU.
template <class T> void bias_act_host(const BiasActParams& p);
