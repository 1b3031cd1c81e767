// TensorRT plugin PositionAttention (polypseg, version 1): DANet's position attention module without the N×N matrix,
//   out[b,c,n] = gamma · Σ_m softmax_m(q_n · k_m) · v[b,c,m] + x[b,c,n]
// Kernel: kernels/position_attention/ (flash-style online softmax, float32 accumulation).
//
// Inputs Q [B, D, H, W], K [B, D, H, W], V [B, C, H, W], X [B, C, H, W] (N = H·W), output [B, C, H, W];
// field gamma (kFLOAT32, one value). D ≤ 64 (the kernel keeps a query in registers).
#include <utility>

#include "plugin_common.h"
#define POLYPSEG_KERNEL_LIMITS_ONLY  // the kernel's limits, without the kernel
#include "../position_attention/pam_kernel.cuh"

namespace polypseg::plugins {
namespace {

using nvinfer1::Dims;

constexpr int64_t kMaxD = polypseg_pam::kMaxD;  // defined once, in kernels/position_attention/pam_kernel.cuh

class PositionAttention final : public GammaPlugin<PositionAttention> {
 public:
  static constexpr char kName[] = "PositionAttention";

  explicit PositionAttention(float gamma) : GammaPlugin(kName, 4, gamma) {}

 protected:
  char const* inputName(int32_t i) const noexcept override {
    static char const* const kNames[] = {"input Q [B, D, H, W]", "input K [B, D, H, W]", "input V [B, C, H, W]",
                                         "input X [B, C, H, W]"};
    return i >= 0 && i < 4 ? kNames[i] : "input";
  }

  int32_t outputShapeInput() const noexcept override { return 3; }  // the output has X's shape

  void checkShapes(Dims const* in) const override {
    Dims const &q = in[0], &k = in[1], &v = in[2], &x = in[3];
    requireSameDims(q, k, "the shapes of Q and K");
    requireSameDims(v, x, "the shapes of V and X");
    requireSame(q.d[0], x.d[0], "the batch sizes B of Q and X");
    requireSame(q.d[2], x.d[2], "the heights H of Q and X");
    requireSame(q.d[3], x.d[3], "the widths W of Q and X");
    int64_t const d = known(q.d[1]) ? q.d[1] : k.d[1];
    if (known(d) && (d < 1 || d > kMaxD))
      throw PluginError("the query/key width D = " + std::to_string(d) + " is outside [1, " + std::to_string(kMaxD) +
                        "] (the kernel keeps one query in registers). Fix: export this block without the plugin "
                        "(regular layers)");
    if (known(x.d[2]) && known(x.d[3])) toInt(x.d[2] * x.d[3], "N = H*W");
  }

  cudaError_t launch(nvinfer1::PluginTensorDesc const* in, void const* const* inputs, void* output, bool fp16,
                     cudaStream_t stream) const override {
    Dims const& q = in[0].dims;
    Dims const& x = in[3].dims;
    return polypseg_pam_launch(inputs[0], inputs[1], inputs[2], inputs[3], output, toInt(x.d[0], "B"),
                               toInt(x.d[1], "C"), toInt(q.d[1], "D"), toInt(x.d[2] * x.d[3], "N = H*W"), gamma_,
                               fp16 ? 1 : 0, stream);
  }
};

}  // namespace

nvinfer1::IPluginCreatorV3One* positionAttentionCreator() {
  static Creator<PositionAttention> creator;
  return &creator;
}

}  // namespace polypseg::plugins
