// Shared parts of the polypseg TensorRT plugins (IPluginV3, TensorRT 10.x and 11.x):
//   * logging through the ILoggerFinder TensorRT hands to the library (stderr when there is none),
//   * `guarded`: every TensorRT entry point is noexcept, so each one runs its body through this wrapper, which turns
//     an exception into a log message and an error value,
//   * FieldReader: typed, validated access to a PluginFieldCollection (error messages name the field and the fix),
//   * PluginBase: the IPluginV3 object with its three capabilities (core, build, runtime) for a plugin whose tensors
//     are all linear NCHW of one dtype (float32 or float16) with one output; the three plugins only supply their
//     attributes, shape checks and kernel launch,
//   * Creator<Plugin>: the IPluginCreatorV3One of such a plugin.
//
// Only the public TensorRT headers are used (no libnvinfer at link time): the library is loaded by TensorRT's plugin
// registry through getCreators()/setLoggerFinder() (plugin_library.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "NvInferRuntime.h"

namespace polypseg::plugins {

inline constexpr char kPluginNamespace[] = "polypseg";
inline constexpr char kPluginVersion[] = "1";

// ------------------------------------------------------------------------------------------------------ logging
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
// Sends `message` to the TensorRT logger of the calling context (stderr if there is none). Never throws.
void logMessage(nvinfer1::ILogger::Severity severity, char const* message) noexcept;
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

// An invalid attribute, shape or type: the message says what is wrong and how to fix it.
class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Logs "polypseg::<plugin> (node '<node>'), <method>: <what>" as an error; `node` may be null or empty.
void logFailure(char const* plugin, char const* node, char const* method, char const* what) noexcept;

// Runs `body` and returns its result; an exception is logged (naming plugin, node and method) and `on_error`
// returned.
template <class R, class F>
R guarded(char const* plugin, char const* node, char const* method, R on_error, F&& body) noexcept {
  try {
    return body();
  } catch (std::exception const& e) {
    logFailure(plugin, node, method, e.what());
  } catch (...) {
    logFailure(plugin, node, method, "unknown exception");
  }
  return on_error;
}

// Throws PluginError if `err` is not cudaSuccess ("<what>: <cuda error name>: <description>").
void checkCuda(cudaError_t err, char const* what);

// ------------------------------------------------------------------------------------------------------ fields
// A field a creator advertises (getFieldNames) and accepts. `length` is the advertised length (0 = variable);
// `fix` tells the user how the ONNX attribute should look.
struct FieldSpec {
  char const* name;
  nvinfer1::PluginFieldType type;
  int32_t length;
  char const* fix;
};

char const* fieldTypeName(nvinfer1::PluginFieldType type) noexcept;

// Validated view of a PluginFieldCollection against a plugin's FieldSpecs: a field of the wrong type, a negative
// length or a null data pointer is an error; unknown fields are ignored with a warning (the ONNX parser passes only
// advertised fields, so an unknown one is a caller's typo).
class FieldReader {
 public:
  FieldReader(nvinfer1::PluginFieldCollection const* fc, char const* plugin, std::vector<FieldSpec> specs);
  bool has(char const* name) const { return find(name) != nullptr; }
  // Values of a kINT32 / kFLOAT32 field; a missing field reads as empty.
  std::vector<int32_t> int32s(char const* name) const;
  std::vector<float> float32s(char const* name) const;

 private:
  nvinfer1::PluginField const* find(char const* name) const;
  FieldSpec const& spec(char const* name) const;
  nvinfer1::PluginField const* typed(char const* name) const;

  std::vector<nvinfer1::PluginField> fields_;
  std::vector<FieldSpec> specs_;
};

// The single finite value of a kFLOAT32 field that must hold exactly one (e.g. "gamma"); throws otherwise.
float singleFloat(FieldReader const& fields, char const* name);

// "[3, 5]"-style rendering for messages.
std::string formatValues(std::vector<int32_t> const& v);
std::string formatFloat(float v);

// ------------------------------------------------------------------------------------------------------ dims
// Dimensions in checks: -1 means "not known yet" (build-time wildcard) and matches anything.
inline bool known(int64_t d) noexcept { return d >= 0; }
std::string formatDims(nvinfer1::Dims const& d);
// Throws unless `d` has 4 dimensions (NCHW); `what` names the tensor in the message.
void requireNCHW(nvinfer1::Dims const& d, char const* what);
// Throws if both extents are known and differ; `what` names them, e.g. "the batch sizes N of A and B".
void requireSame(int64_t a, int64_t b, char const* what);
// Throws unless the shapes agree in every known extent; `what` names them, e.g. "the shapes of V and X".
void requireSameDims(nvinfer1::Dims const& a, nvinfer1::Dims const& b, char const* what);
// Narrows a concrete extent for the int-based kernel launchers (throws if it does not fit).
int toInt(int64_t v, char const* what);

// ------------------------------------------------------------------------------------------------------ plugin
// One IPluginV3 object exposing all three capabilities. All I/O tensors: linear layout, one dtype (float32 or
// float16), one output. Derived classes provide the hooks below; each hook may throw PluginError.
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  PluginBase(char const* name, int32_t nb_inputs) noexcept : name_(name), nb_inputs_(nb_inputs) {}
  ~PluginBase() override = default;
  PluginBase(PluginBase const&) = delete;
  PluginBase& operator=(PluginBase const&) = delete;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return name_; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nb_inputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nb_outputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* output_types, int32_t nb_outputs,
                             nvinfer1::DataType const* input_types, int32_t nb_inputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nb_inputs, nvinfer1::DimsExprs const* shape_inputs,
                          int32_t nb_shape_inputs, nvinfer1::DimsExprs* outputs, int32_t nb_outputs,
                          nvinfer1::IExprBuilder& expr_builder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* in_out, int32_t nb_inputs,
                                 int32_t nb_outputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return 1; }
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    return 0;
  }
  char const* getTimingCacheID() noexcept override { return timing_cache_id_.c_str(); }
  char const* getMetadataString() noexcept override { return metadata_.c_str(); }

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nb_inputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nb_outputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* input_desc, nvinfer1::PluginTensorDesc const* output_desc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

  // The layer (ONNX node) name given to createPlugin, for messages; kept by clones.
  void setNodeName(char const* node) { node_ = node ? node : ""; }

 protected:
  // A new plugin with the same creation state (attributes); no device resources are shared.
  virtual PluginBase* cloneImpl() const = 0;
  // Input shapes (nb_inputs_ of them, already checked to be 4-D): throw PluginError on a contract violation.
  // Extents may be -1 (unknown at build time); checks of such extents are skipped.
  virtual void checkShapes(nvinfer1::Dims const* in) const = 0;
  // Output shape = shape of this input.
  virtual int32_t outputShapeInput() const noexcept = 0;
  // Name of input i in messages, e.g. "B [N, C, H, W]".
  virtual char const* inputName(int32_t i) const noexcept = 0;
  // Device resources needed by launch(); called outside enqueue (onShapeChange, attachToContext). May allocate.
  virtual void prepare() {}
  // Launches the kernel; no allocation or synchronous copy here (enqueue may be captured in a CUDA graph).
  virtual cudaError_t launch(nvinfer1::PluginTensorDesc const* in, void const* const* inputs, void* output, bool fp16,
                             cudaStream_t stream) const = 0;
  // Fields for serialisation, pointing into members (valid until the next call or destruction).
  virtual void serialFields(std::vector<nvinfer1::PluginField>& out) const = 0;

  // Set by the derived constructor: strings returned by getTimingCacheID()/getMetadataString().
  std::string timing_cache_id_;
  std::string metadata_;

 private:
  void checkCounts(int32_t nb_inputs, int32_t nb_outputs) const;
  void checkTypes(nvinfer1::DataType const* types, int32_t n) const;

  PluginBase* cloneWithName() const;  // cloneImpl() + the node name

  char const* name_;
  std::string node_;
  int32_t nb_inputs_;
  std::vector<nvinfer1::PluginField> serial_;
  nvinfer1::PluginFieldCollection serial_fc_{};
};

// The attention plugins' common shape (CRTP): one field, 'gamma' (kFLOAT32, one finite value: the learned scale of
// the attention term), which is also all they serialise; Derived(float gamma) builds the plugin.
template <class Derived>
class GammaPlugin : public PluginBase {
 public:
  static std::vector<FieldSpec> fieldSpecs() {
    return {{"gamma", nvinfer1::PluginFieldType::kFLOAT32, 1,
             "write 'gamma' as a FLOAT attribute (the block's learned scale)"}};
  }
  static PluginBase* create(FieldReader const& fields) { return new Derived(singleFloat(fields, "gamma")); }

 protected:
  GammaPlugin(char const* name, int32_t nb_inputs, float gamma) : PluginBase(name, nb_inputs), gamma_(gamma) {
    metadata_ = "gamma=" + formatFloat(gamma_);
    timing_cache_id_ = "r1";  // gamma changes no work; "r1" = kernel revision (bump when the kernel changes)
  }
  PluginBase* cloneImpl() const override { return new Derived(gamma_); }
  void serialFields(std::vector<nvinfer1::PluginField>& out) const override {
    out.emplace_back("gamma", &gamma_, nvinfer1::PluginFieldType::kFLOAT32, 1);
  }

  float gamma_;
};

// ------------------------------------------------------------------------------------------------------ creator
// IPluginCreatorV3One for a Plugin type providing:
//   static constexpr char kName[];  static std::vector<FieldSpec> fieldSpecs();
//   static PluginBase* create(FieldReader const& fields);   (throws PluginError on invalid attributes)
template <class Plugin>
class Creator final : public nvinfer1::IPluginCreatorV3One {
 public:
  Creator() : specs_(Plugin::fieldSpecs()) {
    for (FieldSpec const& s : specs_) names_.emplace_back(s.name, nullptr, s.type, s.length);
    fc_.nbFields = static_cast<int32_t>(names_.size());
    fc_.fields = names_.data();
  }

  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override {
    try {
      FieldReader fields(fc, Plugin::kName, specs_);
      std::unique_ptr<PluginBase> plugin(Plugin::create(fields));
      plugin->setNodeName(name);
      return plugin.release();
    } catch (std::exception const& e) {
      logCreationFailure(name, phase, e.what());
    } catch (...) {
      logCreationFailure(name, phase, "unknown exception");
    }
    return nullptr;
  }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &fc_; }
  char const* getPluginName() const noexcept override { return Plugin::kName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

 private:
  static void logCreationFailure(char const* node, nvinfer1::TensorRTPhase phase, char const* what) noexcept {
    try {
      char const* phase_name = phase == nvinfer1::TensorRTPhase::kBUILD ? "build" : "runtime";
      logMessage(nvinfer1::ILogger::Severity::kERROR, std::string(kPluginNamespace) + "::" + Plugin::kName +
                                                          ": cannot create the plugin for node '" + (node ? node : "") +
                                                          "' (" + phase_name + " phase): " + what);
    } catch (...) {
      logFailure(Plugin::kName, node, "createPlugin", what);
    }
  }

  std::vector<FieldSpec> specs_;
  std::vector<nvinfer1::PluginField> names_;
  nvinfer1::PluginFieldCollection fc_{};
};

// The creators of this library (one static instance each; defined next to their plugins).
nvinfer1::IPluginCreatorV3One* multiScaleSubtractionCreator();
nvinfer1::IPluginCreatorV3One* positionAttentionCreator();
nvinfer1::IPluginCreatorV3One* channelAttentionCreator();

}  // namespace polypseg::plugins

// The C launchers of the kernels (kernels/*/*.cu; no TensorRT types there).
extern "C" {
cudaError_t polypseg_mss_launch(void const* A, void const* B, void* D, int N, int C, int h, int w, int H, int W,
                                int num_scales, float const* g3, float const* h3, float const* g5, float const* h5,
                                int fp16, cudaStream_t stream);
cudaError_t polypseg_pam_launch(void const* q, void const* k, void const* v, void const* x, void* out, int B, int C,
                                int D, int N, float gamma, int fp16, cudaStream_t stream);
cudaError_t polypseg_cam_launch(void const* x, void* out, int B, int C, int N, float gamma, int fp16,
                                cudaStream_t stream);
}
