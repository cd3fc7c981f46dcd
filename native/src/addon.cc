#include <napi.h>
#include "io.h"
static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitIo(env, exports);
  return exports;
}
NODE_API_MODULE(cairn_native, Init)
