// make_cuda_device and query_cuda_devices of a CUDA build: through the plugin, loaded on first use.
#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include <fmt/format.h>

#include "executor/gpu/cuda_plugin.h"

namespace kvp {
namespace {

constexpr const char* kPluginName = "libkvplan_cuda.so";

std::vector<std::string> candidates() {
  if (const char* env = std::getenv("KVPLAN_CUDA_PLUGIN"); env && *env) return {env};
  std::vector<std::string> paths;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) paths.push_back((exe.parent_path() / kPluginName).string());
  paths.push_back(KVP_CUDA_PLUGIN_PATH);  // the build tree's
  return paths;
}

struct Loaded {
  const CudaPlugin* plugin = nullptr;
  std::string why;
};

Loaded load() {
  Loaded out;
  std::string tried;
  for (const std::string& path : candidates()) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      tried += (tried.empty() ? "" : ", ") + path;
      continue;
    }
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      out.why = fmt::format("cannot load the CUDA plugin {}: {}", path, dlerror());
      return out;
    }
    using Entry = const CudaPlugin* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(handle, "kvp_cuda_plugin"));
    if (!entry) {
      out.why = fmt::format("{} is not a kvplan CUDA plugin (no kvp_cuda_plugin)", path);
      return out;
    }
    const CudaPlugin* plugin = entry();
    if (plugin->abi != kCudaPluginAbi) {
      out.why = fmt::format("{} was built for plugin ABI {}, this kvplan needs {}: rebuild it", path, plugin->abi,
                            kCudaPluginAbi);
      return out;
    }
    out.plugin = plugin;
    return out;
  }
  out.why = fmt::format("the CUDA plugin {} is not installed (looked for {})", kPluginName, tried);
  return out;
}

}  // namespace

const CudaPlugin* load_cuda_plugin(std::string* why) {
  static std::once_flag once;
  static Loaded loaded;
  std::call_once(once, [] { loaded = load(); });
  if (!loaded.plugin && why) *why = loaded.why;
  return loaded.plugin;
}

Result<std::unique_ptr<Device>> make_cuda_device() {
  std::string why;
  const CudaPlugin* plugin = load_cuda_plugin(&why);
  if (!plugin) return make_error("no CUDA device: {}", why);
  return plugin->make_device();
}

CudaDeviceReport query_cuda_devices() {
  std::string why;
  const CudaPlugin* plugin = load_cuda_plugin(&why);
  if (plugin) return plugin->query_devices();
  CudaDeviceReport report;
  report.built_with_cuda = true;
  report.why_none = why;
  return report;
}

}  // namespace kvp
