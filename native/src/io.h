// Block I/O primitives for the file pool backend: page-cache-only reads on the calling
// thread (preadv2 RWF_NOWAIT), page-cache writes on the calling thread (pwrite, and
// pwritev for scatter-gather), and batches of pread/pwrite(v)/fdatasync that run in one
// libuv threadpool hop. Declared for TypeScript in src/native/io.ts.
#pragma once
#include <napi.h>

void InitIo(Napi::Env env, Napi::Object exports);
