// Shared plumbing of the addon: running blocking work off the event loop, turning errno
// into a JS error, and reading arguments (exceptions are disabled, so helpers throw a JS
// TypeError and return false).
#pragma once

#include <napi.h>

#include <cstdint>
#include <functional>
#include <string>

namespace cairn {

// The outcome of work done on the thread pool: err == 0 means success.
struct Failure {
  int err = 0;
  std::string syscall;
  void Set(int error, std::string call) {
    err = error;
    syscall = std::move(call);
  }
};

using Work = std::function<void(Failure&)>;
using Done = std::function<Napi::Value(Napi::Env)>;

// Queues `work` on libuv's thread pool and returns a promise. The promise resolves with
// `done(env)` (undefined when `done` is empty) or rejects with ErrnoError.
Napi::Value RunAsync(Napi::Env env, const char* resource, Work work, Done done);

// An Error with `errno` (positive), `code` (e.g. "EOPNOTSUPP") and `syscall` set, the
// shape the TypeScript side turns into a SystemError.
Napi::Value ErrnoError(Napi::Env env, int err, const std::string& syscall);

Napi::Value ThrowType(Napi::Env env, const std::string& message);

// A file descriptor: an integer in [0, 2^31).
bool ArgFd(const Napi::CallbackInfo& info, size_t index, int* out);
// A non-negative integer number no larger than 2^53 - 1.
bool ArgU64(const Napi::CallbackInfo& info, size_t index, const char* what, uint64_t* out);
bool ArgBool(const Napi::CallbackInfo& info, size_t index, const char* what, bool* out);
// A string without NUL bytes, shorter than `limit` bytes (limit counts the NUL).
bool ArgString(const Napi::CallbackInfo& info, size_t index, const char* what, size_t limit, std::string* out);

// Readers for properties of a plain object; same rules as the Arg* helpers.
bool PropU64(Napi::Env env, const Napi::Object& obj, const char* key, uint64_t* out);
bool PropString(Napi::Env env, const Napi::Object& obj, const char* key, size_t limit, std::string* out);

bool ValueU64(Napi::Env env, const Napi::Value& value, const char* what, uint64_t* out);
bool ValueString(Napi::Env env, const Napi::Value& value, const char* what, size_t limit, std::string* out);

void InitFileOps(Napi::Env env, Napi::Object exports);
void InitBlockOps(Napi::Env env, Napi::Object exports);
void InitDeviceMapper(Napi::Env env, Napi::Object exports);
void InitNbdNetlink(Napi::Env env, Napi::Object exports);

}  // namespace cairn
