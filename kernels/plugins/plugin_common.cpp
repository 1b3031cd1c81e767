// Logging, field parsing, shape helpers and the shared IPluginV3 implementation (see plugin_common.h).
#include "plugin_common.h"

#include <atomic>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

namespace polypseg::plugins {

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using Severity = nvinfer1::ILogger::Severity;

// ------------------------------------------------------------------------------------------------------ logging
namespace {

// Set by TensorRT when it loads the library (setLoggerFinder); the finder returns the logger of the builder,
// runtime or context on whose behalf a plugin method runs.
std::atomic<nvinfer1::ILoggerFinder*> g_logger_finder{nullptr};

char const* severityName(Severity s) noexcept {
  switch (s) {
    case Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case Severity::kERROR: return "ERROR";
    case Severity::kWARNING: return "WARNING";
    case Severity::kINFO: return "INFO";
    case Severity::kVERBOSE: return "VERBOSE";
  }
  return "LOG";
}

char const* dataTypeName(DataType t) noexcept {
  switch (t) {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kBOOL: return "bool";
    case DataType::kUINT8: return "uint8";
    case DataType::kFP8: return "fp8";
    default: return "another type";
  }
}

bool supportedType(DataType t) noexcept { return t == DataType::kFLOAT || t == DataType::kHALF; }

}  // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
  if (finder != nullptr) g_logger_finder.store(finder);
}

void logMessage(Severity severity, char const* message) noexcept {
  nvinfer1::ILogger* logger = nullptr;
  if (nvinfer1::ILoggerFinder* finder = g_logger_finder.load()) {
    try {
      logger = finder->findLogger();
    } catch (...) {
      logger = nullptr;
    }
  }
  if (logger != nullptr)
    logger->log(severity, message);
  else
    std::fprintf(stderr, "[polypseg plugins] %s: %s\n", severityName(severity), message);
}

void logMessage(Severity severity, std::string const& message) noexcept { logMessage(severity, message.c_str()); }

void logFailure(char const* plugin, char const* node, char const* method, char const* what) noexcept {
  try {
    std::string const where = node && *node ? std::string(" (node '") + node + "')" : std::string();
    logMessage(Severity::kERROR, std::string(kPluginNamespace) + "::" + plugin + where + ", " + method + ": " + what);
  } catch (...) {  // out of memory: log the parts without building a string
    logMessage(Severity::kERROR, plugin);
    logMessage(Severity::kERROR, what);
  }
}

void checkCuda(cudaError_t err, char const* what) {
  if (err != cudaSuccess)
    throw PluginError(std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// ------------------------------------------------------------------------------------------------------ fields
char const* fieldTypeName(PluginFieldType type) noexcept {
  switch (type) {
    case PluginFieldType::kFLOAT16: return "kFLOAT16";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    case PluginFieldType::kINT8: return "kINT8";
    case PluginFieldType::kINT16: return "kINT16";
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kCHAR: return "kCHAR";
    case PluginFieldType::kDIMS: return "kDIMS";
    case PluginFieldType::kUNKNOWN: return "kUNKNOWN";
    case PluginFieldType::kBF16: return "kBF16";
    case PluginFieldType::kINT64: return "kINT64";
    default: return "another type";
  }
}

FieldReader::FieldReader(nvinfer1::PluginFieldCollection const* fc, char const* plugin, std::vector<FieldSpec> specs)
    : specs_(std::move(specs)) {
  if (fc == nullptr || fc->nbFields == 0) return;  // every field missing
  if (fc->nbFields < 0 || fc->fields == nullptr)
    throw PluginError("malformed field collection (nbFields = " + std::to_string(fc->nbFields) +
                      ", fields = " + (fc->fields ? "set" : "null") + ")");
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    if (f.name == nullptr) throw PluginError("field #" + std::to_string(i) + " has no name");
    bool advertised = false;
    for (FieldSpec const& s : specs_) advertised = advertised || std::strcmp(s.name, f.name) == 0;
    if (!advertised) {
      std::string names;
      for (FieldSpec const& s : specs_) names += (names.empty() ? "" : ", ") + std::string(s.name);
      logMessage(Severity::kWARNING, std::string(kPluginNamespace) + "::" + plugin + ": ignoring unknown field '" +
                                         f.name + "' (fields: " + names + ")");
      continue;
    }
    if (find(f.name) != nullptr) throw PluginError(std::string("field '") + f.name + "' is given twice");
    if (f.length < 0 || (f.length > 0 && f.data == nullptr))
      throw PluginError(std::string("field '") + f.name + "' is malformed (length " + std::to_string(f.length) +
                        (f.data ? "" : ", no data") + ")");
    fields_.push_back(f);
  }
}

PluginField const* FieldReader::find(char const* name) const {
  for (PluginField const& f : fields_)
    if (std::strcmp(f.name, name) == 0) return &f;
  return nullptr;
}

FieldSpec const& FieldReader::spec(char const* name) const {
  for (FieldSpec const& s : specs_)
    if (std::strcmp(s.name, name) == 0) return s;
  throw std::logic_error(std::string("no FieldSpec for '") + name + "'");
}

PluginField const* FieldReader::typed(char const* name) const {
  FieldSpec const& s = spec(name);
  PluginField const* f = find(name);
  if (f != nullptr && f->type != s.type)
    throw PluginError(std::string("field '") + name + "' has type " + fieldTypeName(f->type) + ", expected " +
                      fieldTypeName(s.type) + ". Fix: " + s.fix);
  return f;
}

std::vector<int32_t> FieldReader::int32s(char const* name) const {
  PluginField const* f = typed(name);
  std::vector<int32_t> v(f ? static_cast<size_t>(f->length) : 0);
  if (!v.empty()) std::memcpy(v.data(), f->data, v.size() * sizeof(int32_t));
  return v;
}

std::vector<float> FieldReader::float32s(char const* name) const {
  PluginField const* f = typed(name);
  std::vector<float> v(f ? static_cast<size_t>(f->length) : 0);
  if (!v.empty()) std::memcpy(v.data(), f->data, v.size() * sizeof(float));
  return v;
}

float singleFloat(FieldReader const& fields, char const* name) {
  std::vector<float> const v = fields.float32s(name);
  std::string const field = std::string("field '") + name + "'";
  if (!fields.has(name))
    throw PluginError(field + " is missing. Fix: give the node a FLOAT attribute '" + name + "' (one value)");
  if (v.size() != 1)
    throw PluginError(field + " has " + std::to_string(v.size()) + " values, expected exactly 1. Fix: write '" +
                      name + "' as a single FLOAT attribute, not a list");
  if (!std::isfinite(v[0]))
    throw PluginError(field + " is not finite (" + formatFloat(v[0]) + "). Fix: re-export the trained model");
  return v[0];
}

std::string formatValues(std::vector<int32_t> const& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

std::string formatFloat(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

// ------------------------------------------------------------------------------------------------------ dims
std::string formatDims(Dims const& d) {
  std::string s = "[";
  for (int32_t i = 0; i < d.nbDims && i < Dims::MAX_DIMS; ++i) s += (i ? ", " : "") + std::to_string(d.d[i]);
  return s + "]";
}

void requireNCHW(Dims const& d, char const* what) {
  if (d.nbDims != 4)
    throw PluginError(std::string(what) + " must be a 4-D NCHW tensor, got shape " + formatDims(d) +
                      ". Fix: feed the plugin node 4-D tensors");
}

void requireSame(int64_t a, int64_t b, char const* what) {
  if (known(a) && known(b) && a != b)
    throw PluginError(std::string(what) + " must be equal, got " + std::to_string(a) + " and " + std::to_string(b));
}

void requireSameDims(Dims const& a, Dims const& b, char const* what) {
  bool same = a.nbDims == b.nbDims;
  for (int32_t i = 0; same && i < a.nbDims && i < Dims::MAX_DIMS; ++i)
    same = !known(a.d[i]) || !known(b.d[i]) || a.d[i] == b.d[i];
  if (!same) throw PluginError(std::string(what) + " must be equal, got " + formatDims(a) + " and " + formatDims(b));
}

int toInt(int64_t v, char const* what) {
  if (v < 0 || v > INT_MAX)
    throw PluginError(std::string(what) + " = " + std::to_string(v) + " is outside the kernels' range [0, 2^31)");
  return static_cast<int>(v);
}

// ------------------------------------------------------------------------------------------------------ plugin
nvinfer1::IPluginCapability* PluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

PluginBase* PluginBase::cloneWithName() const {
  std::unique_ptr<PluginBase> p(cloneImpl());
  p->node_ = node_;
  return p.release();
}

nvinfer1::IPluginV3* PluginBase::clone() noexcept {
  return guarded(name_, node_.c_str(), "clone", static_cast<nvinfer1::IPluginV3*>(nullptr),
                 [&]() -> nvinfer1::IPluginV3* { return cloneWithName(); });
}

void PluginBase::checkCounts(int32_t nb_inputs, int32_t nb_outputs) const {
  if (nb_inputs != nb_inputs_ || nb_outputs != 1)
    throw PluginError("expects " + std::to_string(nb_inputs_) + " input(s) and 1 output, got " +
                      std::to_string(nb_inputs) + " and " + std::to_string(nb_outputs) +
                      ". Fix: check the plugin node's inputs in the ONNX graph");
}

void PluginBase::checkTypes(DataType const* types, int32_t n) const {
  bool ok = n > 0 && supportedType(types[0]);
  for (int32_t i = 1; i < n; ++i) ok = ok && types[i] == types[0];
  if (ok) return;
  std::string got;
  for (int32_t i = 0; i < n; ++i) got += (i ? ", " : "") + std::string(dataTypeName(types[i]));
  throw PluginError("inputs must be all float32 or all float16, got (" + got +
                    "). Fix: keep the plugin node's inputs in one float type (Cast them in the graph)");
}

int32_t PluginBase::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nb_inputs,
                                    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nb_outputs) noexcept {
  return guarded(name_, node_.c_str(), "configurePlugin", int32_t{-1}, [&] {
    checkCounts(nb_inputs, nb_outputs);
    (void)out;
    std::vector<Dims> dims(static_cast<size_t>(nb_inputs));
    std::vector<DataType> types(static_cast<size_t>(nb_inputs));
    for (int32_t i = 0; i < nb_inputs; ++i) {
      requireNCHW(in[i].desc.dims, inputName(i));
      dims[static_cast<size_t>(i)] = in[i].desc.dims;
      types[static_cast<size_t>(i)] = in[i].desc.type;
    }
    checkTypes(types.data(), nb_inputs);
    checkShapes(dims.data());
    return int32_t{0};
  });
}

int32_t PluginBase::getOutputDataTypes(DataType* output_types, int32_t nb_outputs, DataType const* input_types,
                                       int32_t nb_inputs) const noexcept {
  return guarded(name_, node_.c_str(), "getOutputDataTypes", int32_t{-1}, [&] {
    checkCounts(nb_inputs, nb_outputs);
    checkTypes(input_types, nb_inputs);
    output_types[0] = input_types[0];
    return int32_t{0};
  });
}

int32_t PluginBase::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nb_inputs,
                                    nvinfer1::DimsExprs const* /*shape_inputs*/, int32_t nb_shape_inputs,
                                    nvinfer1::DimsExprs* outputs, int32_t nb_outputs,
                                    nvinfer1::IExprBuilder& /*expr_builder*/) noexcept {
  return guarded(name_, node_.c_str(), "getOutputShapes", int32_t{-1}, [&] {
    checkCounts(nb_inputs, nb_outputs);
    if (nb_shape_inputs != 0)
      throw PluginError("takes no shape inputs, got " + std::to_string(nb_shape_inputs) +
                        ". Fix: remove 'tensorrt_plugin_shape_input_indices' from the node");
    for (int32_t i = 0; i < nb_inputs; ++i)
      if (inputs[i].nbDims != 4)
        throw PluginError(std::string(inputName(i)) + " must be a 4-D NCHW tensor, got " +
                          std::to_string(inputs[i].nbDims) + " dimensions");
    // The output has exactly the shape of one input: copy its expressions (no new expression is needed).
    outputs[0] = inputs[outputShapeInput()];
    return int32_t{0};
  });
}

bool PluginBase::supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* in_out,
                                           int32_t nb_inputs, int32_t nb_outputs) noexcept {
  if (in_out == nullptr || nb_inputs != nb_inputs_ || nb_outputs != 1 || pos < 0 || pos >= nb_inputs + nb_outputs)
    return false;
  nvinfer1::PluginTensorDesc const& d = in_out[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR || !supportedType(d.type)) return false;
  return pos == 0 || d.type == in_out[0].desc.type;  // one dtype for every input and the output
}

int32_t PluginBase::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nb_inputs,
                                  nvinfer1::PluginTensorDesc const* out, int32_t nb_outputs) noexcept {
  return guarded(name_, node_.c_str(), "onShapeChange", int32_t{-1}, [&] {
    checkCounts(nb_inputs, nb_outputs);
    (void)out;
    std::vector<Dims> dims(static_cast<size_t>(nb_inputs));
    std::vector<DataType> types(static_cast<size_t>(nb_inputs));
    for (int32_t i = 0; i < nb_inputs; ++i) {
      requireNCHW(in[i].dims, inputName(i));
      for (int32_t k = 0; k < 4; ++k)
        if (!known(in[i].dims.d[k]))
          throw PluginError(std::string(inputName(i)) + " has an unresolved extent at run time: " +
                            formatDims(in[i].dims));
      dims[static_cast<size_t>(i)] = in[i].dims;
      types[static_cast<size_t>(i)] = in[i].type;
    }
    checkTypes(types.data(), nb_inputs);
    checkShapes(dims.data());
    prepare();  // device resources, before any enqueue (which must not allocate)
    return int32_t{0};
  });
}

int32_t PluginBase::enqueue(nvinfer1::PluginTensorDesc const* input_desc, nvinfer1::PluginTensorDesc const* output_desc,
                            void const* const* inputs, void* const* outputs, void* /*workspace*/,
                            cudaStream_t stream) noexcept {
  return guarded(name_, node_.c_str(), "enqueue", int32_t{-1}, [&] {
    int64_t volume = 1;
    for (int32_t k = 0; k < output_desc[0].dims.nbDims; ++k) volume *= output_desc[0].dims.d[k];
    if (volume == 0) return int32_t{0};  // empty batch: nothing to compute
    bool const fp16 = input_desc[0].type == DataType::kHALF;
    checkCuda(launch(input_desc, inputs, outputs[0], fp16, stream), "kernel launch failed");
    return int32_t{0};
  });
}

nvinfer1::IPluginV3* PluginBase::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return guarded(name_, node_.c_str(), "attachToContext", static_cast<nvinfer1::IPluginV3*>(nullptr),
                 [&]() -> nvinfer1::IPluginV3* {
                   std::unique_ptr<PluginBase> p(cloneWithName());
                   p->prepare();  // per-context device resources are created here, outside enqueue
                   return p.release();
                 });
}

nvinfer1::PluginFieldCollection const* PluginBase::getFieldsToSerialize() noexcept {
  using Result = nvinfer1::PluginFieldCollection const*;
  return guarded(name_, node_.c_str(), "getFieldsToSerialize", Result{nullptr}, [&] {
    serial_.clear();
    serialFields(serial_);
    serial_fc_.nbFields = static_cast<int32_t>(serial_.size());
    serial_fc_.fields = serial_.data();
    return Result{&serial_fc_};
  });
}

}  // namespace polypseg::plugins
