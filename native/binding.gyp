{
  "targets": [
    {
      "target_name": "cairn_native",
      "sources": ["src/addon.cc", "src/io.cc", "src/worker.cc", "src/file-ops.cc", "src/block-ops.cc", "src/dm-ioctl.cc", "src/dm-ops.cc", "src/nbd-netlink.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-O2"]
    }
  ]
}
