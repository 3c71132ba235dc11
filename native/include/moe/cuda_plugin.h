// The optional CUDA plugin (cuda/ -> moe_cuda.so): found by path, dlopen'ed on request, checked for its C ABI
// version and probed for a usable GPU. No CUDA header or library is needed to build or load the CPU addon.
#pragma once
#include <memory>
#include <string>

#include "moe_cuda.h"  // cuda/include: plain C, no CUDA headers

namespace moe {

struct CudaPlugin {
  const MoeCudaApi* api = nullptr;
  MoeCudaProbe probe{};
  std::string path;
};

// The plugin at `path` (loaded once per process; later calls return the first plugin that loaded), or null with
// `error` saying what failed: the file, the symbol, the ABI version, the driver or the GPU.
const CudaPlugin* loadCudaPlugin(const std::string& path, std::string& error);

// A plugin layer handle that is destroyed through the plugin.
struct CudaLayerHandle {
  const MoeCudaApi* api = nullptr;
  MoeCudaLayer* layer = nullptr;
  CudaLayerHandle(const MoeCudaApi* a, MoeCudaLayer* l) : api(a), layer(l) {}
  CudaLayerHandle(const CudaLayerHandle&) = delete;
  CudaLayerHandle& operator=(const CudaLayerHandle&) = delete;
  ~CudaLayerHandle() {
    if (layer) api->layerDestroy(layer);
  }
};

}  // namespace moe
