#include "worker.h"

#include <cmath>
#include <cstring>

namespace cairn {
namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* resource, Work work, Done done)
      : Napi::AsyncWorker(env, resource),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        done_(std::move(done)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override { work_(failure_); }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (failure_.err != 0) {
      deferred_.Reject(ErrnoError(env, failure_.err, failure_.syscall));
    } else {
      deferred_.Resolve(done_ ? done_(env) : env.Undefined());
    }
  }

  // Execute never calls SetError, so this only runs if node-addon-api itself fails.
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  Done done_;
  Failure failure_;
};

}  // namespace

Napi::Value RunAsync(Napi::Env env, const char* resource, Work work, Done done) {
  auto* worker = new PromiseWorker(env, resource, std::move(work), std::move(done));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value ErrnoError(Napi::Env env, int err, const std::string& syscall) {
  const char* name = strerrorname_np(err);
  std::string code = name != nullptr ? name : "E" + std::to_string(err);
  Napi::Error error = Napi::Error::New(env, syscall + " failed: " + code + " (" + std::strerror(err) + ")");
  Napi::Object obj = error.Value();
  obj.Set("errno", Napi::Number::New(env, err));
  obj.Set("code", Napi::String::New(env, code));
  obj.Set("syscall", Napi::String::New(env, syscall));
  return obj;
}

Napi::Value ThrowType(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

bool ValueU64(Napi::Env env, const Napi::Value& value, const char* what, uint64_t* out) {
  if (!value.IsNumber()) {
    ThrowType(env, std::string(what) + " must be a number");
    return false;
  }
  double d = value.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d < 0 || d > kMaxSafeInteger || std::floor(d) != d) {
    ThrowType(env, std::string(what) + " must be a non-negative safe integer");
    return false;
  }
  *out = static_cast<uint64_t>(d);
  return true;
}

bool ValueString(Napi::Env env, const Napi::Value& value, const char* what, size_t limit, std::string* out) {
  if (!value.IsString()) {
    ThrowType(env, std::string(what) + " must be a string");
    return false;
  }
  std::string s = value.As<Napi::String>().Utf8Value();
  if (s.size() >= limit || s.find('\0') != std::string::npos) {
    ThrowType(env, std::string(what) + " must be shorter than " + std::to_string(limit) + " bytes and contain no NUL");
    return false;
  }
  *out = std::move(s);
  return true;
}

bool ArgFd(const Napi::CallbackInfo& info, size_t index, int* out) {
  uint64_t v = 0;
  if (!ValueU64(info.Env(), info[index], "fd", &v)) return false;
  if (v > 0x7fffffff) {
    ThrowType(info.Env(), "fd is out of range");
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

bool ArgU64(const Napi::CallbackInfo& info, size_t index, const char* what, uint64_t* out) {
  return ValueU64(info.Env(), info[index], what, out);
}

bool ArgBool(const Napi::CallbackInfo& info, size_t index, const char* what, bool* out) {
  if (!info[index].IsBoolean()) {
    ThrowType(info.Env(), std::string(what) + " must be a boolean");
    return false;
  }
  *out = info[index].As<Napi::Boolean>().Value();
  return true;
}

bool ArgString(const Napi::CallbackInfo& info, size_t index, const char* what, size_t limit, std::string* out) {
  return ValueString(info.Env(), info[index], what, limit, out);
}

bool PropU64(Napi::Env env, const Napi::Object& obj, const char* key, uint64_t* out) {
  return ValueU64(env, obj.Get(key), key, out);
}

bool PropString(Napi::Env env, const Napi::Object& obj, const char* key, size_t limit, std::string* out) {
  return ValueString(env, obj.Get(key), key, limit, out);
}

}  // namespace cairn
