// Entry points of libpolypseg_trt_plugins.so, a TensorRT "plugin shared library": TensorRT's plugin registry
// (IPluginRegistry::loadLibrary, Python `get_plugin_registry().load_library`, trtexec --dynamicPlugins, or a
// version-compatible plan that embeds the library) dlopen()s it, calls setLoggerFinder() and then getCreators().
// Nothing here links libnvinfer: only these two symbols are exported (default visibility; everything else is
// hidden by -fvisibility=hidden and the linker version script polypseg_trt_plugins.map).
#include "plugin_common.h"

#define POLYPSEG_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" POLYPSEG_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  polypseg::plugins::setLoggerFinder(finder);
}

extern "C" POLYPSEG_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  nbCreators = 0;
  try {
    static nvinfer1::IPluginCreatorInterface* const creators[] = {
        polypseg::plugins::multiScaleSubtractionCreator(),
        polypseg::plugins::positionAttentionCreator(),
        polypseg::plugins::channelAttentionCreator(),
    };
    nbCreators = static_cast<int32_t>(sizeof creators / sizeof creators[0]);
    return creators;
  } catch (...) {  // only an allocation failure while constructing the creators: report "no creators"
    polypseg::plugins::logMessage(nvinfer1::ILogger::Severity::kERROR,
                                  "polypseg plugins: could not construct the plugin creators");
    return nullptr;
  }
}
