// See io.h. Every function returns byte counts or a negative errno; nothing throws for an
// I/O error, so the hot path never builds exception objects.
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <vector>

namespace {

enum Op : int32_t { kRead = 1, kWrite = 2, kSync = 3, kWriteSync = 4 };

// Reads until `len` bytes or EOF; the bytes past EOF read as zeros (a sparse file that is
// shorter than the device). Returns bytes read, or -errno.
int64_t FullRead(int fd, uint8_t* buf, size_t len, int64_t pos) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, pos + static_cast<int64_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) {
      memset(buf + done, 0, len - done);
      return static_cast<int64_t>(len);
    }
    done += static_cast<size_t>(n);
  }
  return static_cast<int64_t>(done);
}

int64_t FullWrite(int fd, const uint8_t* buf, size_t len, int64_t pos) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, buf + done, len - done, pos + static_cast<int64_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    done += static_cast<size_t>(n);
  }
  return static_cast<int64_t>(done);
}

int64_t DataSync(int fd) {
  while (fdatasync(fd) != 0) {
    if (errno != EINTR) return -errno;
  }
  return 0;
}

bool BufferArg(const Napi::Value& v, uint8_t** data, size_t* len) {
  if (!v.IsTypedArray()) return false;
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array) return false;
  Napi::Uint8Array u = ta.As<Napi::Uint8Array>();
  *data = u.Data();
  *len = u.ByteLength();
  return true;
}

// ioPreadNowait(fd, buf, position): reads from the page cache only. Returns the bytes read
// before the first byte that is not cached (possibly 0), or -errno for any other error.
Napi::Value PreadNowait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data;
  size_t len;
  if (info.Length() < 3 || !info[0].IsNumber() || !BufferArg(info[1], &data, &len) || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "ioPreadNowait(fd, buf, position)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t pos = info[2].As<Napi::Number>().Int64Value();
  size_t done = 0;
  while (done < len) {
    struct iovec iov = {data + done, len - done};
    ssize_t n = preadv2(fd, &iov, 1, pos + static_cast<int64_t>(done), RWF_NOWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return Napi::Number::New(env, done > 0 ? static_cast<double>(done) : -static_cast<double>(errno));
    }
    if (n == 0) {
      memset(data + done, 0, len - done);
      done = len;
      break;
    }
    done += static_cast<size_t>(n);
  }
  return Napi::Number::New(env, static_cast<double>(done));
}

// ioPwrite(fd, buf, position): a full pwrite on the calling thread. Bytes or -errno.
Napi::Value Pwrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint8_t* data;
  size_t len;
  if (info.Length() < 3 || !info[0].IsNumber() || !BufferArg(info[1], &data, &len) || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "ioPwrite(fd, buf, position)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t pos = info[2].As<Napi::Number>().Int64Value();
  return Napi::Number::New(env, static_cast<double>(FullWrite(fd, data, len, pos)));
}

struct BatchOp {
  int32_t op;
  uint8_t* data;
  size_t len;
  int64_t pos;
};

class BatchWorker : public Napi::AsyncWorker {
 public:
  BatchWorker(Napi::Function cb, int fd, std::vector<BatchOp> ops, Napi::Object keep, int32_t* results)
      : Napi::AsyncWorker(cb), fd_(fd), ops_(std::move(ops)), results_(results) {
    keep_ = Napi::Persistent(keep);
  }

  void Execute() override {
    for (size_t i = 0; i < ops_.size(); i++) {
      const BatchOp& o = ops_[i];
      int64_t r = 0;
      switch (o.op) {
        case kRead: r = FullRead(fd_, o.data, o.len, o.pos); break;
        case kWrite: r = FullWrite(fd_, o.data, o.len, o.pos); break;
        case kSync: r = DataSync(fd_); break;
        case kWriteSync:
          r = FullWrite(fd_, o.data, o.len, o.pos);
          if (r >= 0) {
            int64_t s = DataSync(fd_);
            if (s < 0) r = s;
          }
          break;
        default: r = -EINVAL;
      }
      results_[i] = r < 0 ? static_cast<int32_t>(r) : 0;
    }
  }

  void OnOK() override { Callback().Call({}); }

 private:
  int fd_;
  std::vector<BatchOp> ops_;
  int32_t* results_;
  Napi::ObjectReference keep_;
};

// ioSubmit(fd, ops: Int32Array, positions: Float64Array, bufs: (Uint8Array|null)[],
//          results: Int32Array, callback): runs the ops in order on one threadpool thread,
// writes 0 or -errno per op into `results`, then calls `callback()`.
Napi::Value Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 6 || !info[0].IsNumber() || !info[1].IsTypedArray() || !info[2].IsTypedArray() ||
      !info[3].IsArray() || !info[4].IsTypedArray() || !info[5].IsFunction()) {
    Napi::TypeError::New(env, "ioSubmit(fd, ops, positions, bufs, results, callback)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Int32Array ops = info[1].As<Napi::Int32Array>();
  Napi::Float64Array positions = info[2].As<Napi::Float64Array>();
  Napi::Array bufs = info[3].As<Napi::Array>();
  Napi::Int32Array results = info[4].As<Napi::Int32Array>();
  size_t count = ops.ElementLength();
  if (positions.ElementLength() < count || bufs.Length() < count || results.ElementLength() < count) {
    Napi::RangeError::New(env, "ioSubmit: arrays shorter than ops").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<BatchOp> list(count);
  for (size_t i = 0; i < count; i++) {
    BatchOp& o = list[i];
    o.op = ops[i];
    o.pos = static_cast<int64_t>(positions[i]);
    o.data = nullptr;
    o.len = 0;
    Napi::Value b = bufs[static_cast<uint32_t>(i)];
    if (o.op != kSync && !BufferArg(b, &o.data, &o.len)) {
      Napi::TypeError::New(env, "ioSubmit: a read or write op needs a Uint8Array").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  Napi::Object keep = Napi::Object::New(env);
  keep.Set("ops", ops);
  keep.Set("positions", positions);
  keep.Set("bufs", bufs);
  keep.Set("results", results);
  auto* worker = new BatchWorker(info[5].As<Napi::Function>(), fd, std::move(list), keep, results.Data());
  worker->Queue();
  return env.Undefined();
}

}  // namespace

void InitIo(Napi::Env env, Napi::Object exports) {
  exports.Set("ioPreadNowait", Napi::Function::New(env, PreadNowait, "ioPreadNowait"));
  exports.Set("ioPwrite", Napi::Function::New(env, Pwrite, "ioPwrite"));
  exports.Set("ioSubmit", Napi::Function::New(env, Submit, "ioSubmit"));
}
