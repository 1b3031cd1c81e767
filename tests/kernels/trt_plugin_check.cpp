// CPU-only checks of libpolypseg_trt_plugins.so through TensorRT's own plugin registry (libnvinfer_lean, no GPU
// needed): creators, creation and validation, capability interfaces, getOutputDataTypes, supportsFormatCombination,
// configurePlugin, getOutputShapes (copy of the input expressions, with a stand-in expression builder),
// onShapeChange, clone, attachToContext and the serialise → createPlugin(kRUNTIME) round trip.
// Nothing here launches a kernel. Built and run by tests/kernels/test_trt_plugins.py:
//   g++ -std=c++17 trt_plugin_check.cpp -I<TensorRT include> -I<CUDA include> -L<dir> -l:libnvinfer_lean.so.11
//   ./trt_plugin_check /path/to/libpolypseg_trt_plugins.so   → exit 0 and "ALL CHECKS PASSED" on success.
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "NvInferRuntime.h"

using namespace nvinfer1;

namespace {

int g_checks = 0, g_failures = 0;

void check(bool ok, std::string const& what) {
  ++g_checks;
  if (!ok) ++g_failures;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  std::fflush(stdout);
}

struct PluginDeleter {
  void operator()(IPluginV3* p) const { delete p; }
};
using PluginPtr = std::unique_ptr<IPluginV3, PluginDeleter>;

// An owning list of PluginFields; collection() points into this object (valid until it changes or moves).
class Fields {
 public:
  template <class T>
  Fields& add(char const* name, PluginFieldType type, std::vector<T> const& values) {
    char const* bytes = reinterpret_cast<char const*>(values.data());
    entries_.push_back({name, type, static_cast<int32_t>(values.size()),
                        std::vector<char>(bytes, bytes + values.size() * sizeof(T))});
    return *this;
  }
  PluginFieldCollection const* collection() {
    fields_.clear();
    for (Entry const& e : entries_)  // an empty list is passed with a null data pointer, as parsers may do
      fields_.emplace_back(e.name.c_str(), e.bytes.empty() ? nullptr : e.bytes.data(), e.type, e.length);
    fc_.nbFields = static_cast<int32_t>(fields_.size());
    fc_.fields = fields_.data();
    return &fc_;
  }

 private:
  struct Entry {
    std::string name;
    PluginFieldType type;
    int32_t length;
    std::vector<char> bytes;
  };
  std::vector<Entry> entries_;
  std::vector<PluginField> fields_;
  PluginFieldCollection fc_{};
};

// A deep copy of a serialised field collection (the plugin's own storage may change on the next call).
struct FieldCopy {
  std::string name;
  PluginFieldType type;
  int32_t length;
  std::vector<char> bytes;
};

size_t fieldElementSize(PluginFieldType t) {
  switch (t) {
    case PluginFieldType::kFLOAT32:
    case PluginFieldType::kINT32: return 4;
    case PluginFieldType::kFLOAT16:
    case PluginFieldType::kINT16:
    case PluginFieldType::kBF16: return 2;
    case PluginFieldType::kFLOAT64:
    case PluginFieldType::kINT64: return 8;
    default: return 1;
  }
}

std::vector<FieldCopy> copyFields(PluginFieldCollection const* fc) {
  std::vector<FieldCopy> out;
  if (fc == nullptr) return out;
  for (int32_t i = 0; i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    FieldCopy c{f.name ? f.name : "", f.type, f.length, {}};
    size_t const n = static_cast<size_t>(f.length) * fieldElementSize(f.type);
    if (n) c.bytes.assign(static_cast<char const*>(f.data), static_cast<char const*>(f.data) + n);
    out.push_back(std::move(c));
  }
  return out;
}

bool sameFields(std::vector<FieldCopy> const& a, std::vector<FieldCopy> const& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].name != b[i].name || a[i].type != b[i].type || a[i].length != b[i].length || a[i].bytes != b[i].bytes)
      return false;
  return true;
}

PluginFieldCollection collectionOf(std::vector<FieldCopy> const& fields, std::vector<PluginField>& storage) {
  storage.clear();
  for (FieldCopy const& f : fields)
    storage.emplace_back(f.name.c_str(), f.bytes.empty() ? nullptr : f.bytes.data(), f.type, f.length);
  return PluginFieldCollection{static_cast<int32_t>(storage.size()), storage.data()};
}

IPluginV3OneCore* core(IPluginV3* p) {
  return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
}
IPluginV3OneBuild* build(IPluginV3* p) {
  return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
IPluginV3OneRuntime* runtime(IPluginV3* p) {
  return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}

Dims dims4(int64_t a, int64_t b, int64_t c, int64_t d) {
  Dims r{};
  r.nbDims = 4;
  r.d[0] = a;
  r.d[1] = b;
  r.d[2] = c;
  r.d[3] = d;
  return r;
}

DynamicPluginTensorDesc dyn(Dims d, DataType t, TensorFormat f = TensorFormat::kLINEAR) {
  DynamicPluginTensorDesc r{};
  r.desc.dims = d;
  r.desc.type = t;
  r.desc.format = f;
  r.min = d;
  r.max = d;
  r.opt = d;
  return r;
}

// Stand-in for TensorRT's expression builder: the plugins only copy input expressions, never build new ones, so
// no method of this object may be called (its implementation pointer is left null on purpose).
class NoExprBuilder : public IExprBuilder {
 public:
  NoExprBuilder() { mImpl = nullptr; }
};

struct Case {
  std::string label;
  char const* plugin;
  Fields fields;
  std::vector<Dims> inputs;  // valid input shapes
  int32_t output_from;       // output shape = this input's
  std::vector<std::vector<Dims>> bad_inputs;  // shapes configurePlugin must reject
  bool needs_device;         // prepare() allocates (BN upload)
};

void exerciseBuild(Case const& c, IPluginV3* plugin) {
  std::string const L = c.label + ": ";
  IPluginV3OneCore* co = core(plugin);
  IPluginV3OneBuild* b = build(plugin);
  IPluginV3OneRuntime* r = runtime(plugin);
  check(co && b && r, L + "core, build and runtime capabilities");
  if (!co || !b || !r) return;
  check(std::strcmp(co->getPluginName(), c.plugin) == 0 && std::strcmp(co->getPluginVersion(), "1") == 0 &&
            std::strcmp(co->getPluginNamespace(), "polypseg") == 0,
        L + "core name/version/namespace");
  check(std::strcmp(b->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0 && b->getInterfaceInfo().major == 1,
        L + "build capability is IPluginV3OneBuild 1.x");
  check(b->getNbOutputs() == 1, L + "getNbOutputs() == 1");
  int32_t const n = static_cast<int32_t>(c.inputs.size());

  // getOutputDataTypes: the output has the inputs' dtype; mixed or non-float inputs are rejected
  for (DataType t : {DataType::kFLOAT, DataType::kHALF}) {
    std::vector<DataType> in(static_cast<size_t>(n), t);
    DataType out = DataType::kINT32;
    check(b->getOutputDataTypes(&out, 1, in.data(), n) == 0 && out == t,
          L + "getOutputDataTypes " + (t == DataType::kFLOAT ? "float32" : "float16"));
  }
  {
    std::vector<DataType> in(static_cast<size_t>(n), DataType::kINT8);
    DataType out = DataType::kFLOAT;
    check(b->getOutputDataTypes(&out, 1, in.data(), n) != 0, L + "getOutputDataTypes rejects int8");
    if (n > 1) {
      std::vector<DataType> mixed(static_cast<size_t>(n), DataType::kFLOAT);
      mixed.back() = DataType::kHALF;
      check(b->getOutputDataTypes(&out, 1, mixed.data(), n) != 0, L + "getOutputDataTypes rejects mixed dtypes");
    }
    std::vector<DataType> extra(static_cast<size_t>(n + 1), DataType::kFLOAT);
    check(b->getOutputDataTypes(&out, 1, extra.data(), n + 1) != 0, L + "getOutputDataTypes rejects n+1 inputs");
  }

  // supportsFormatCombination: linear float32 or float16, one dtype for all
  std::vector<DynamicPluginTensorDesc> io;
  for (Dims const& d : c.inputs) io.push_back(dyn(d, DataType::kFLOAT));
  io.push_back(dyn(c.inputs[static_cast<size_t>(c.output_from)], DataType::kFLOAT));
  for (DataType t : {DataType::kFLOAT, DataType::kHALF}) {
    bool all = true;
    for (auto& d : io) d.desc.type = t;
    for (int32_t pos = 0; pos <= n; ++pos) all = all && b->supportsFormatCombination(pos, io.data(), n, 1);
    check(all, L + "supportsFormatCombination accepts all-" + (t == DataType::kFLOAT ? "float32" : "float16"));
  }
  for (auto& d : io) d.desc.type = DataType::kFLOAT;
  {
    auto mixed = io;
    mixed[static_cast<size_t>(n)].desc.type = DataType::kHALF;  // output differs from input 0
    check(!b->supportsFormatCombination(n, mixed.data(), n, 1), L + "supportsFormatCombination rejects mixed dtypes");
    auto i8 = io;
    i8[0].desc.type = DataType::kINT8;
    check(!b->supportsFormatCombination(0, i8.data(), n, 1), L + "supportsFormatCombination rejects int8");
    auto bf = io;
    bf[0].desc.type = DataType::kBF16;
    check(!b->supportsFormatCombination(0, bf.data(), n, 1), L + "supportsFormatCombination rejects bfloat16");
    auto hwc = io;
    hwc[0].desc.format = TensorFormat::kHWC8;
    check(!b->supportsFormatCombination(0, hwc.data(), n, 1), L + "supportsFormatCombination rejects non-linear");
    check(!b->supportsFormatCombination(n + 1, io.data(), n, 1), L + "supportsFormatCombination: pos out of range");
  }

  // configurePlugin: valid shapes (also with build-time wildcards), then the contract violations
  std::vector<DynamicPluginTensorDesc> in;
  for (Dims const& d : c.inputs) in.push_back(dyn(d, DataType::kHALF));
  DynamicPluginTensorDesc out = dyn(c.inputs[static_cast<size_t>(c.output_from)], DataType::kHALF);
  check(b->configurePlugin(in.data(), n, &out, 1) == 0, L + "configurePlugin accepts valid shapes");
  auto wild = in;
  for (auto& d : wild) d.desc.dims.d[0] = d.desc.dims.d[2] = d.desc.dims.d[3] = -1;
  check(b->configurePlugin(wild.data(), n, &out, 1) == 0, L + "configurePlugin accepts dynamic N/H/W");
  for (size_t k = 0; k < c.bad_inputs.size(); ++k) {
    std::vector<DynamicPluginTensorDesc> bad;
    for (Dims const& d : c.bad_inputs[k]) bad.push_back(dyn(d, DataType::kHALF));
    check(b->configurePlugin(bad.data(), n, &out, 1) != 0, L + "configurePlugin rejects bad shapes #" +
                                                              std::to_string(k));
  }
  check(b->getWorkspaceSize(in.data(), n, &out, 1) == 0, L + "getWorkspaceSize == 0");
  check(b->getTimingCacheID() != nullptr && b->getMetadataString() != nullptr,
        L + "timing cache ID '" + std::string(b->getTimingCacheID() ? b->getTimingCacheID() : "") + "', metadata '" +
            std::string(b->getMetadataString() ? b->getMetadataString() : "") + "'");

  // getOutputShapes copies the expressions of one input (stand-in expression pointers, never dereferenced)
  {
    std::vector<DimsExprs> exprs(static_cast<size_t>(n));
    static char tokens[8][8];
    for (int32_t i = 0; i < n; ++i) {
      exprs[static_cast<size_t>(i)].nbDims = 4;
      for (int32_t k = 0; k < 4; ++k)
        exprs[static_cast<size_t>(i)].d[k] = reinterpret_cast<IDimensionExpr const*>(&tokens[i][k]);
    }
    DimsExprs result{};
    NoExprBuilder builder;
    bool ok = b->getOutputShapes(exprs.data(), n, nullptr, 0, &result, 1, builder) == 0 && result.nbDims == 4;
    for (int32_t k = 0; ok && k < 4; ++k) ok = result.d[k] == exprs[static_cast<size_t>(c.output_from)].d[k];
    check(ok, L + "getOutputShapes = shape of input " + std::to_string(c.output_from));
    exprs[0].nbDims = 3;
    check(b->getOutputShapes(exprs.data(), n, nullptr, 0, &result, 1, builder) != 0,
          L + "getOutputShapes rejects a 3-D input");
  }

  // onShapeChange: concrete shapes; a plugin that uploads parameters needs a device (fails cleanly without one)
  {
    std::vector<PluginTensorDesc> rin;
    for (auto const& d : in) rin.push_back(d.desc);
    PluginTensorDesc rout = out.desc;
    int32_t const rc = r->onShapeChange(rin.data(), n, &rout, 1);
    if (c.needs_device)
      check(true, L + "onShapeChange with BN upload returned " + std::to_string(rc) +
                      " (0 with a GPU; without one a logged CUDA error)");
    else
      check(rc == 0, L + "onShapeChange accepts valid shapes");
    if (!c.bad_inputs.empty()) {
      std::vector<PluginTensorDesc> bad;
      for (Dims const& d : c.bad_inputs[0]) {
        PluginTensorDesc t = rout;
        t.dims = d;
        bad.push_back(t);
      }
      check(r->onShapeChange(bad.data(), n, &rout, 1) != 0, L + "onShapeChange rejects bad shapes");
    }
  }
}

void roundTrip(Case& c, IPluginCreatorV3One* creator, IPluginV3* plugin) {
  std::string const L = c.label + ": ";
  std::vector<FieldCopy> const serial = copyFields(runtime(plugin)->getFieldsToSerialize());
  std::string names;
  for (auto const& f : serial) names += f.name + "(" + std::to_string(f.length) + ") ";
  check(!serial.empty(), L + "getFieldsToSerialize: " + names);
  // the serialised fields are the creation fields (same names, types and values)
  std::vector<FieldCopy> const given = copyFields(c.fields.collection());
  bool covers = true;
  for (FieldCopy const& g : given) {
    bool found = false;
    for (FieldCopy const& s : serial) found = found || (s.name == g.name && s.type == g.type && s.length == g.length &&
                                                        s.bytes == g.bytes);
    covers = covers && found;
  }
  check(covers, L + "serialised fields hold the creation values");

  std::vector<PluginField> storage;
  PluginFieldCollection const fc = collectionOf(serial, storage);
  PluginPtr again(creator->createPlugin("roundtrip", &fc, TensorRTPhase::kRUNTIME));
  check(again != nullptr, L + "createPlugin(kRUNTIME) from the serialised fields");
  if (again) {
    check(sameFields(copyFields(runtime(again.get())->getFieldsToSerialize()), serial),
          L + "round trip: identical fields after deserialisation");
    check(std::strcmp(build(again.get())->getMetadataString(), build(plugin)->getMetadataString()) == 0,
          L + "round trip: identical metadata");
  }

  PluginPtr copy(plugin->clone());
  check(copy != nullptr && copy.get() != plugin, L + "clone");
  if (copy) {
    check(std::strcmp(core(copy.get())->getPluginName(), c.plugin) == 0 &&
              sameFields(copyFields(runtime(copy.get())->getFieldsToSerialize()), serial),
          L + "clone has the same name and fields");
  }
  PluginPtr attached(runtime(plugin)->attachToContext(nullptr));
  if (c.needs_device)
    check(true, std::string(L) + "attachToContext with BN upload: " +
                    (attached ? "attached (GPU present)" : "nullptr (no GPU, logged)"));
  else
    check(attached != nullptr && attached.get() != plugin, L + "attachToContext returns a new clone");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s libpolypseg_trt_plugins.so\n", argv[0]);
    return 2;
  }
  IPluginRegistry* registry = getPluginRegistry();
  check(registry != nullptr, "getPluginRegistry()");
  if (!registry) return 1;
  auto handle = registry->loadLibrary(argv[1]);  // IPluginRegistry::PluginLibraryHandle
  check(handle != nullptr, std::string("loadLibrary(") + argv[1] + ")");
  if (!handle) return 1;

  std::vector<Case> cases;
  {
    Case c{"MSS/MSNet", "MultiScaleSubtraction", {}, {dims4(2, 8, 11, 11), dims4(2, 8, 22, 22)}, 1,
           {{dims4(2, 8, 11, 11), dims4(2, 9, 22, 22)}, {dims4(2, 8, 11, 11), dims4(3, 8, 22, 22)}}, false};
    c.fields.add<int32_t>("scales", PluginFieldType::kINT32, {});
    cases.push_back(std::move(c));
  }
  {
    std::vector<float> bn(32);
    for (size_t i = 0; i < bn.size(); ++i) bn[i] = 0.25f * static_cast<float>(i) - 1.f;
    Case c{"MSS/M2SNet", "MultiScaleSubtraction", {}, {dims4(1, 8, 11, 11), dims4(1, 8, 22, 22)}, 1,
           {{dims4(1, 16, 11, 11), dims4(1, 16, 22, 22)}}, true};  // C = 16 but bn holds C = 8
    c.fields.add<int32_t>("scales", PluginFieldType::kINT32, {3, 5}).add("bn", PluginFieldType::kFLOAT32, bn);
    cases.push_back(std::move(c));
  }
  {
    Case c{"PAM", "PositionAttention", {},
           {dims4(2, 8, 12, 10), dims4(2, 8, 12, 10), dims4(2, 64, 12, 10), dims4(2, 64, 12, 10)}, 3,
           {{dims4(2, 65, 12, 10), dims4(2, 65, 12, 10), dims4(2, 64, 12, 10), dims4(2, 64, 12, 10)},
            {dims4(2, 8, 12, 10), dims4(2, 8, 12, 10), dims4(2, 64, 12, 10), dims4(2, 64, 12, 11)},
            {dims4(2, 8, 12, 10), dims4(2, 8, 12, 9), dims4(2, 64, 12, 10), dims4(2, 64, 12, 10)}},
           false};
    c.fields.add<float>("gamma", PluginFieldType::kFLOAT32, {0.75f});
    cases.push_back(std::move(c));
  }
  {
    Case c{"CAM", "ChannelAttention", {}, {dims4(2, 64, 12, 10)}, 0, {{dims4(2, 4096, 12, 10)}}, false};
    c.fields.add<float>("gamma", PluginFieldType::kFLOAT32, {-0.5f});
    cases.push_back(std::move(c));
  }

  for (Case& c : cases) {
    IPluginCreatorInterface* ci = registry->getCreator(c.plugin, "1", "polypseg");
    check(ci != nullptr && std::strcmp(ci->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0,
          c.label + ": creator is an IPluginCreatorV3One");
    if (!ci) continue;
    auto* creator = static_cast<IPluginCreatorV3One*>(ci);
    PluginPtr plugin(creator->createPlugin("check", c.fields.collection(), TensorRTPhase::kBUILD));
    check(plugin != nullptr, c.label + ": createPlugin(kBUILD)");
    if (!plugin) continue;
    exerciseBuild(c, plugin.get());
    roundTrip(c, creator, plugin.get());
  }

  // invalid attributes: nullptr (and a logged message), never an exception or a crash
  auto* mss = static_cast<IPluginCreatorV3One*>(registry->getCreator("MultiScaleSubtraction", "1", "polypseg"));
  auto* pam = static_cast<IPluginCreatorV3One*>(registry->getCreator("PositionAttention", "1", "polypseg"));
  auto* cam = static_cast<IPluginCreatorV3One*>(registry->getCreator("ChannelAttention", "1", "polypseg"));
  if (mss && pam && cam) {
    std::vector<std::pair<std::string, std::function<IPluginV3*()>>> bad;
    auto make = [](IPluginCreatorV3One* cr, Fields f) {
      return [cr, f]() mutable { return cr->createPlugin("bad", f.collection(), TensorRTPhase::kBUILD); };
    };
    bad.emplace_back("scales [3]", make(mss, Fields().add<int32_t>("scales", PluginFieldType::kINT32, {3})));
    bad.emplace_back("scales [5, 3]", make(mss, Fields().add<int32_t>("scales", PluginFieldType::kINT32, {5, 3})));
    bad.emplace_back("scales [3, 5] without bn",
                     make(mss, Fields().add<int32_t>("scales", PluginFieldType::kINT32, {3, 5})));
    bad.emplace_back("bn of length 7", make(mss, Fields()
                                                     .add<int32_t>("scales", PluginFieldType::kINT32, {3, 5})
                                                     .add("bn", PluginFieldType::kFLOAT32, std::vector<float>(7))));
    bad.emplace_back("bn without scales", make(mss, Fields().add("bn", PluginFieldType::kFLOAT32,
                                                                  std::vector<float>(8))));
    bad.emplace_back("scales as float32", make(mss, Fields().add<float>("scales", PluginFieldType::kFLOAT32,
                                                                         {3.f, 5.f})));
    bad.emplace_back("gamma with 2 values", make(pam, Fields().add<float>("gamma", PluginFieldType::kFLOAT32,
                                                                           {1.f, 2.f})));
    bad.emplace_back("gamma missing", make(cam, Fields()));
    bad.emplace_back("gamma as int32", make(cam, Fields().add<int32_t>("gamma", PluginFieldType::kINT32, {1})));
    for (auto& [label, fn] : bad) {
      PluginPtr p(fn());
      check(p == nullptr, "invalid attributes rejected: " + label);
    }
    PluginPtr msnet(mss->createPlugin("null", nullptr, TensorRTPhase::kBUILD));  // every field missing = MSNet
    check(msnet != nullptr, "createPlugin with a null field collection = MSNet defaults");
  }

  registry->deregisterLibrary(handle);
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  if (g_failures == 0) std::printf("ALL CHECKS PASSED\n");
  return g_failures == 0 ? 0 : 1;
}
