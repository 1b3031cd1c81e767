// TensorRT plugin ChannelAttention (polypseg, version 1): DANet's channel attention module,
//   E = X·Xᵀ (C×C over N = H·W),  A = softmax_j(rowmax(E) − E),  out = gamma · A·X + X
// Kernel: kernels/channel_attention/ (one block per row of E, float32 accumulation).
//
// Input X [B, C, H, W], output [B, C, H, W]; field gamma (kFLOAT32, one value). C ≤ 2048 (one row of E lives in
// shared memory).
#include <utility>

#include "plugin_common.h"
#define POLYPSEG_KERNEL_LIMITS_ONLY  // the kernel's limits, without the kernel
#include "../channel_attention/cam_kernel.cuh"

namespace polypseg::plugins {
namespace {

using nvinfer1::Dims;

constexpr int64_t kMaxC = polypseg_cam::kMaxC;  // defined once, in kernels/channel_attention/cam_kernel.cuh

class ChannelAttention final : public GammaPlugin<ChannelAttention> {
 public:
  static constexpr char kName[] = "ChannelAttention";

  explicit ChannelAttention(float gamma) : GammaPlugin(kName, 1, gamma) {}

 protected:
  char const* inputName(int32_t) const noexcept override { return "input X [B, C, H, W]"; }

  int32_t outputShapeInput() const noexcept override { return 0; }

  void checkShapes(Dims const* in) const override {
    Dims const& x = in[0];
    if (known(x.d[1]) && (x.d[1] < 1 || x.d[1] > kMaxC))
      throw PluginError("the channel count C = " + std::to_string(x.d[1]) + " is outside [1, " +
                        std::to_string(kMaxC) +
                        "] (one row of the C×C energy lives in shared memory). Fix: export this block without the "
                        "plugin (regular layers)");
    if (known(x.d[2]) && known(x.d[3])) toInt(x.d[2] * x.d[3], "N = H*W");
  }

  cudaError_t launch(nvinfer1::PluginTensorDesc const* in, void const* const* inputs, void* output, bool fp16,
                     cudaStream_t stream) const override {
    Dims const& x = in[0].dims;
    return polypseg_cam_launch(inputs[0], output, toInt(x.d[0], "B"), toInt(x.d[1], "C"),
                               toInt(x.d[2] * x.d[3], "N = H*W"), gamma_, fp16 ? 1 : 0, stream);
  }
};

}  // namespace

nvinfer1::IPluginCreatorV3One* channelAttentionCreator() {
  static Creator<ChannelAttention> creator;
  return &creator;
}

}  // namespace polypseg::plugins
