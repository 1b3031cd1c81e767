// TensorRT plugin MultiScaleSubtraction (polypseg, version 1): D = |up(A) − B| (+ M2SNet's 3×3 and 5×5 terms).
// Kernel and definition: kernels/multi_scale_subtraction/ (README.md there).
//
// Inputs A [N, C, h, w] and B [N, C, H, W], output D [N, C, H, W]; fields:
//   scales  kINT32:   [] or absent (MSNet) or [3, 5] (M2SNet)
//   bn      kFLOAT32: 4·C values g3[C], h3[C], g5[C], h5[C] (folded BatchNorms), only with scales = [3, 5]
// The BN arrays live in device memory for the launcher: each plugin instance that runs (the clone attached to an
// execution context, or the builder's instance in onShapeChange) uploads them once, outside enqueue, and frees
// them in its destructor; enqueue itself only launches (CUDA-graph capturable).
#include <cmath>
#include <cstddef>
#include <utility>

#include "plugin_common.h"

namespace polypseg::plugins {
namespace {

using nvinfer1::Dims;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

class MultiScaleSubtraction final : public PluginBase {
 public:
  static constexpr char kName[] = "MultiScaleSubtraction";

  static std::vector<FieldSpec> fieldSpecs() {
    return {{"scales", PluginFieldType::kINT32, 0,
             "write 'scales' as an INTS attribute: [] or absent (MSNet), or [3, 5] (M2SNet)"},
            {"bn", PluginFieldType::kFLOAT32, 0,
             "write 'bn' as a FLOATS attribute of 4*C values g3[C], h3[C], g5[C], h5[C] (the folded BatchNorms), "
             "present only with scales = [3, 5]"}};
  }

  static PluginBase* create(FieldReader const& fields) {
    std::vector<int32_t> scales = fields.int32s("scales");
    std::vector<float> bn = fields.float32s("bn");
    bool const multi = !scales.empty();
    if (multi && !(scales.size() == 2 && scales[0] == 3 && scales[1] == 5))
      throw PluginError("field 'scales' = " + formatValues(scales) +
                        " is not supported: expected [] (MSNet) or [3, 5] (M2SNet). Fix: export the node with "
                        "scales = [] or [3, 5]");
    if (multi && bn.empty())
      throw PluginError("field 'bn' is missing or empty, but scales = [3, 5] needs the folded BatchNorms of both "
                        "scales. Fix: add 'bn' (FLOATS, 4*C values: g3, h3, g5, h5)");
    if (multi && bn.size() % 4 != 0)
      throw PluginError("field 'bn' has " + std::to_string(bn.size()) +
                        " values, not a multiple of 4. Fix: 'bn' must hold 4*C values: g3[C], h3[C], g5[C], h5[C]");
    if (!multi && !bn.empty())
      throw PluginError("field 'bn' has " + std::to_string(bn.size()) +
                        " values but 'scales' is empty (MSNet has no BatchNorm terms). Fix: drop 'bn', or set "
                        "scales = [3, 5]");
    for (size_t i = 0; i < bn.size(); ++i)
      if (!std::isfinite(bn[i]))
        throw PluginError("field 'bn' has a non-finite value at index " + std::to_string(i) +
                          ". Fix: re-export with finite BatchNorm parameters");
    return new MultiScaleSubtraction(std::move(scales), std::move(bn));
  }

  MultiScaleSubtraction(std::vector<int32_t> scales, std::vector<float> bn)
      : PluginBase(kName, 2), scales_(std::move(scales)), bn_(std::move(bn)) {
    metadata_ = "scales=" + formatValues(scales_) +
                (bn_.empty() ? std::string() : " bn=4x" + std::to_string(channels()) + " float32");
    // Timing depends on the number of scales (the BN values change no work); I/O shapes and formats are added by
    // TensorRT. "r1" = kernel revision: bump it when the kernel changes so cached timings are not reused.
    timing_cache_id_ = "r1;scales=" + std::to_string(scales_.size());
  }

  ~MultiScaleSubtraction() override {
    if (bn_dev_ != nullptr) cudaFree(bn_dev_);  // an error here (e.g. at process exit) cannot be acted upon
  }

 protected:
  PluginBase* cloneImpl() const override { return new MultiScaleSubtraction(scales_, bn_); }

  char const* inputName(int32_t i) const noexcept override {
    return i == 0 ? "input A [N, C, h, w]" : "input B [N, C, H, W]";
  }

  int32_t outputShapeInput() const noexcept override { return 1; }  // D has B's shape

  void checkShapes(Dims const* in) const override {
    Dims const& a = in[0];
    Dims const& b = in[1];
    requireSame(a.d[0], b.d[0], "the batch sizes N of A and B");
    requireSame(a.d[1], b.d[1], "the channel counts C of A and B");
    if (multi() && known(b.d[1]) && b.d[1] != channels())
      throw PluginError("B has C = " + std::to_string(b.d[1]) + " channels but 'bn' holds 4 x " +
                        std::to_string(channels()) + " values. Fix: 'bn' must hold g3, h3, g5, h5 of the C = " +
                        std::to_string(b.d[1]) + " channels of this node");
  }

  void prepare() override {
    if (!multi() || bn_dev_ != nullptr) return;
    float* dev = nullptr;
    checkCuda(cudaMalloc(reinterpret_cast<void**>(&dev), bn_.size() * sizeof(float)),
              "cudaMalloc of the BatchNorm parameters");
    cudaError_t const err = cudaMemcpy(dev, bn_.data(), bn_.size() * sizeof(float), cudaMemcpyHostToDevice);
    if (err != cudaSuccess) cudaFree(dev);
    checkCuda(err, "upload of the BatchNorm parameters");
    bn_dev_ = dev;
  }

  cudaError_t launch(nvinfer1::PluginTensorDesc const* in, void const* const* inputs, void* output, bool fp16,
                     cudaStream_t stream) const override {
    Dims const& a = in[0].dims;
    Dims const& b = in[1].dims;
    int const C = toInt(b.d[1], "C");
    float const* g3 = nullptr;
    if (multi()) {  // the checks of onShapeChange, repeated cheaply: a mismatch would read out of bounds
      if (bn_dev_ == nullptr)
        throw PluginError("the BatchNorm parameters are not on the device (onShapeChange/attachToContext did not "
                          "run before enqueue)");
      if (C != channels()) throw PluginError("C = " + std::to_string(C) + " does not match 'bn'");
      g3 = bn_dev_;
    }
    std::ptrdiff_t const c = C;
    return polypseg_mss_launch(inputs[0], inputs[1], output, toInt(b.d[0], "N"), C, toInt(a.d[2], "h"),
                               toInt(a.d[3], "w"), toInt(b.d[2], "H"), toInt(b.d[3], "W"),
                               multi() ? 2 : 0, g3, g3 ? g3 + c : nullptr, g3 ? g3 + 2 * c : nullptr,
                               g3 ? g3 + 3 * c : nullptr, fp16 ? 1 : 0, stream);
  }

  void serialFields(std::vector<PluginField>& out) const override {
    // Never a null data pointer, even for an empty list.
    static constexpr int32_t kNoInts = 0;
    static constexpr float kNoFloats = 0.f;
    out.emplace_back("scales", scales_.empty() ? &kNoInts : scales_.data(), PluginFieldType::kINT32,
                     static_cast<int32_t>(scales_.size()));
    out.emplace_back("bn", bn_.empty() ? &kNoFloats : bn_.data(), PluginFieldType::kFLOAT32,
                     static_cast<int32_t>(bn_.size()));
  }

 private:
  bool multi() const noexcept { return !scales_.empty(); }
  int64_t channels() const noexcept { return static_cast<int64_t>(bn_.size() / 4); }

  std::vector<int32_t> scales_;
  std::vector<float> bn_;
  float* bn_dev_ = nullptr;  // [4·C] on the device: g3, h3, g5, h5 (owned by this instance)
};

}  // namespace

nvinfer1::IPluginCreatorV3One* multiScaleSubtractionCreator() {
  static Creator<MultiScaleSubtraction> creator;
  return &creator;
}

}  // namespace polypseg::plugins
