// dlopen of the CUDA plugin; see moe/cuda_plugin.h.
#include "moe/cuda_plugin.h"

#include <dlfcn.h>

#include <mutex>

namespace moe {

const CudaPlugin* loadCudaPlugin(const std::string& path, std::string& error) {
  static std::mutex mutex;
  static CudaPlugin* loaded = nullptr;  // process-wide, like the library itself; never unloaded
  std::lock_guard<std::mutex> lock(mutex);
  if (loaded) return loaded;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    error = "could not load the CUDA plugin " + path + ": " + (why ? why : "unknown dlopen error");
    return nullptr;
  }
  using Entry = const MoeCudaApi* (*)(uint32_t);
  auto entry = reinterpret_cast<Entry>(dlsym(handle, "moe_cuda_api"));
  const MoeCudaApi* api = entry ? entry(MOE_CUDA_API_VERSION) : nullptr;
  if (!api) {
    error = path + (entry ? " does not implement CUDA plugin ABI version " + std::to_string(MOE_CUDA_API_VERSION)
                          : " is not a CUDA plugin of this package (no moe_cuda_api symbol)") +
            ": rebuild it with \"npm run build:cuda\"";
    dlclose(handle);
    return nullptr;
  }
  auto plugin = std::make_unique<CudaPlugin>();
  plugin->api = api;
  plugin->path = path;
  char err[512] = {};
  if (api->probe(&plugin->probe, err, sizeof(err)) != 0) {
    error = std::string("the CUDA plugin loaded but cannot run here: ") + err;
    return nullptr;  // the library stays mapped; a later call probes again (a driver may appear)
  }
  loaded = plugin.release();
  return loaded;
}

}  // namespace moe
