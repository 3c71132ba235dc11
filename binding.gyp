# node-gyp build of the CPU addon: the fallback `npm install` uses when no prebuild fits.
# The baseline is x86-64-v2; AVX2, AVX-512 and AMX kernels are static libraries built with their own flags and only
# called after a CPUID check. C++ exceptions are on, and every std::exception (bad_alloc included) becomes a JS error
# (node_addon_api_except_all = NAPI_CPP_EXCEPTIONS + NODE_ADDON_API_CPP_EXCEPTIONS_ALL), as in CMakeLists.txt. An error
# that cannot be thrown because the environment is going away (a worker terminated while an async call finishes) is
# dropped instead of aborting the process (NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS).
{
  "variables": {
    "moe_common_cflags": ["-O3", "-fvisibility=hidden", "-fno-math-errno", "-Wall", "-Wno-unused-function",
                          "-include", "moe/glibc_compat.h"],
    # 1 on glibc (the prebuild's libc), 0 elsewhere (musl: no libdl.so.2 to name)
    "moe_glibc": "<!(node -p \"process.report.getReport().header.glibcVersionRuntime ? 1 : 0\")"
  },
  "target_defaults": {
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
    "cflags_cc": ["-std=c++17", "<@(moe_common_cflags)"],
    "include_dirs": ["native/include", "native", "cuda/include"],
    "defines": ["NDEBUG", "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"]
  },
  "targets": [
    {
      "target_name": "moe_kernels_avx512",
      "type": "static_library",
      "cflags_cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma", "-mavx2"],
      "sources": ["native/cpu/gemm_avx512.cc"]
    },
    {
      # AMX tiles for bf16 (Xeon since Sapphire Rapids); the flags only when the compiler takes them (g++ 11+):
      # built without them, the file holds no kernel and the CPUID check never picks it.
      "target_name": "moe_kernels_amx",
      "type": "static_library",
      "cflags_cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma", "-mavx2",
                    "<!@(node scripts/cxx-flags-if-supported.js -mamx-tile -mamx-bf16)"],
      "sources": ["native/cpu/gemm_amx.cc"]
    },
    {
      "target_name": "moe_kernels_avx2",
      "type": "static_library",
      "cflags_cc": ["-mavx2", "-mfma", "-mf16c"],
      "sources": ["native/cpu/gemm_avx2.cc"]
    },
    {
      "target_name": "dynamic_moe_router_kit",
      "dependencies": [
        "moe_kernels_avx512",
        "moe_kernels_amx",
        "moe_kernels_avx2",
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except_all"
      ],
      "cflags_cc": ["-march=x86-64-v2"],
      "sources": [
        "native/runtime/cpu_features.cc",
        "native/runtime/glibc_compat.cc",
        "native/runtime/thread_pool.cc",
        "native/runtime/cuda_plugin.cc",
        "native/telemetry/telemetry.cc",
        "native/telemetry/exposition_text.cc",
        "native/cpu/gemm.cc",
        "native/cpu/gating.cc",
        "native/cpu/complexity.cc",
        "native/cpu/router.cc",
        "native/cpu/dispatch.cc",
        "native/cpu/expert_gemm.cc",
        "native/cpu/combine.cc",
        "native/cpu/layer.cc",
        "native/cpu/roofline.cc",
        "native/binding/addon.cc",
        "native/binding/async_gate.cc",
        "native/binding/router_wrap.cc",
        "native/binding/layer_wrap.cc",
        "native/binding/complexity_wrap.cc",
        "native/binding/bench_wrap.cc",
        "native/binding/telemetry_wrap.cc",
        "native/binding/exposition_wrap.cc",
        "native/binding/cuda_wrap.cc"
      ],
      # libstdc++ stays shared (with -static-libstdc++, libstdc++.a of a new build machine asks for a new glibc).
      # The symbols that would ask for a newer glibc or libstdc++ than the README's floor are bound to older
      # versions (native/include/moe/glibc_compat.h); libdl.so.2 is named so that its dlopen is there on glibc < 2.34.
      "ldflags": ["-pthread"],
      "libraries": ["-ldl"],
      "conditions": [
        ["moe_glibc==1", {"libraries": ["-Wl,--push-state,--no-as-needed,-l:libdl.so.2,--pop-state"]}]
      ]
    }
  ]
}
