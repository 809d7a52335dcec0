// Upsample, pad, FIR-filter and downsample a batch of 2-d images: parameters and launchers.
//
// Our own implementation of the op defined by NVIDIA's StyleGAN2-ADA
// (torch_utils/ops/upfirdn2d.*, NVIDIA Source Code License).

#pragma once
#include <cuda_runtime.h>

// Sizes and strides are in elements; x is [N, C, inH, inW] and y [N, C, outH, outW],
// each with arbitrary (non-negative) strides, f is [fh, fw] float32.
struct Upfirdn2dParams
{
    const void*  x;
    const float* f;
    void*        y;

    int upx, upy;
    int downx, downy;
    int padx0, pady0;     // leading padding of the upsampled image (negative: crop)
    int flip;             // 0: convolution, 1: correlation
    double gain;

    int N, C, inH, inW;
    int xsN, xsC, xsH, xsW;
    int fh, fw;
    int fsH, fsW;
    int outH, outW;
    int ysN, ysC, ysH, ysW;

    int channelsLast;     // thread order: 1 = (n, y, x, c), 0 = (n, c, y, x)
    int total;            // N * C * outH * outW
};

// Runs the kernel on `stream`. T is float, double, c10::Half or c10::BFloat16.
template <class T> cudaError_t upfirdn2d_launch(const Upfirdn2dParams& p, cudaStream_t stream);

// Runs the same per-pixel code on the host (CPU tensors): used to test the
// kernel math on machines without a GPU.
template <class T> void upfirdn2d_host(const Upfirdn2dParams& p);
