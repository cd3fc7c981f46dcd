// cairn_native: the few Linux calls node cannot make (fallocate, FICLONE, block-device
// and freeze ioctls, device-mapper, the nbd driver's netlink). Every call that can block
// runs on libuv's thread pool and returns a promise; the typed surface is
// src/native/native-addon.ts (and src/native/io.ts for the file device's batched I/O in
// io.cc).
#include <napi.h>

#include "io.h"
#include "worker.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  cairn::InitFileOps(env, exports);
  cairn::InitBlockOps(env, exports);
  cairn::InitDeviceMapper(env, exports);
  cairn::InitNbdNetlink(env, exports);
  InitIo(env, exports);  // the file device's I/O path, see io.h
  return exports;
}

NODE_API_MODULE(cairn_native, Init)
