// See io.h. Every function returns byte counts or a negative errno; nothing throws for an
// I/O error, so the hot path never builds exception objects.
#include "io.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
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

// Advances `iov` from entry *i past `n` bytes (entries are adjusted in place).
void Consume(std::vector<struct iovec>& iov, size_t* i, size_t n) {
  while (n > 0 && *i < iov.size()) {
    if (n >= iov[*i].iov_len) {
      n -= iov[*i].iov_len;
      (*i)++;
    } else {
      iov[*i].iov_base = static_cast<uint8_t*>(iov[*i].iov_base) + n;
      iov[*i].iov_len -= n;
      n = 0;
    }
  }
}

// Fills every byte of `iov` (consumed in place), zeros past EOF. Bytes, or -errno.
int64_t FullReadv(int fd, std::vector<struct iovec>& iov, int64_t pos) {
  if (iov.size() == 1) return FullRead(fd, static_cast<uint8_t*>(iov[0].iov_base), iov[0].iov_len, pos);
  size_t i = 0;
  int64_t done = 0;
  while (i < iov.size()) {
    if (iov[i].iov_len == 0) {
      i++;
      continue;
    }
    int count = static_cast<int>(std::min<size_t>(iov.size() - i, IOV_MAX));
    ssize_t n = preadv(fd, &iov[i], count, pos + done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) {
      for (; i < iov.size(); i++) {
        memset(iov[i].iov_base, 0, iov[i].iov_len);
        done += static_cast<int64_t>(iov[i].iov_len);
      }
      break;
    }
    done += n;
    Consume(iov, &i, static_cast<size_t>(n));
  }
  return done;
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

// Writes every byte of `iov` (consumed in place: entries are advanced past what was
// written), IOV_MAX entries per call. Returns bytes written, or -errno.
int64_t FullWritev(int fd, std::vector<struct iovec>& iov, int64_t pos) {
  size_t i = 0;
  int64_t done = 0;
  while (i < iov.size()) {
    if (iov[i].iov_len == 0) {
      i++;
      continue;
    }
    int count = static_cast<int>(std::min<size_t>(iov.size() - i, IOV_MAX));
    ssize_t n = pwritev(fd, &iov[i], count, pos + done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    done += n;
    Consume(iov, &i, static_cast<size_t>(n));
  }
  return done;
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

// A Uint8Array, or an array of them (scatter-gather), as iovecs appended to `iov`.
bool IovecArg(const Napi::Value& v, std::vector<struct iovec>* iov) {
  uint8_t* data;
  size_t len;
  if (BufferArg(v, &data, &len)) {
    iov->push_back({data, len});
    return true;
  }
  if (!v.IsArray()) return false;
  Napi::Array parts = v.As<Napi::Array>();
  uint32_t n = parts.Length();
  iov->reserve(iov->size() + n);
  for (uint32_t i = 0; i < n; i++) {
    if (!BufferArg(parts.Get(i), &data, &len)) return false;
    iov->push_back({data, len});
  }
  return true;
}

// ioPreadNowait(fd, buf | bufs[], position): reads from the page cache only, into one
// buffer or several back to back. Returns the bytes read before the first byte that is
// not cached (possibly 0), or -errno for any other error.
Napi::Value PreadNowait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<struct iovec> iov;
  if (info.Length() < 3 || !info[0].IsNumber() || !IovecArg(info[1], &iov) || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "ioPreadNowait(fd, buf, position)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t pos = info[2].As<Napi::Number>().Int64Value();
  size_t i = 0;
  int64_t done = 0;
  while (i < iov.size()) {
    if (iov[i].iov_len == 0) {
      i++;
      continue;
    }
    int count = static_cast<int>(std::min<size_t>(iov.size() - i, IOV_MAX));
    ssize_t n = preadv2(fd, &iov[i], count, pos + done, RWF_NOWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return Napi::Number::New(env, done > 0 ? static_cast<double>(done) : -static_cast<double>(errno));
    }
    if (n == 0) {
      for (; i < iov.size(); i++) {
        memset(iov[i].iov_base, 0, iov[i].iov_len);
        done += static_cast<int64_t>(iov[i].iov_len);
      }
      break;
    }
    done += n;
    Consume(iov, &i, static_cast<size_t>(n));
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

// ioPwritev(fd, bufs: Uint8Array[], position): writes the buffers back to back with
// pwritev on the calling thread. Bytes or -errno.
Napi::Value Pwritev(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<struct iovec> iov;
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsArray() || !IovecArg(info[1], &iov) || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "ioPwritev(fd, bufs, position)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int64_t pos = info[2].As<Napi::Number>().Int64Value();
  return Napi::Number::New(env, static_cast<double>(FullWritev(fd, iov, pos)));
}

// ioDupFd(fd): a close-on-exec duplicate of `fd` (the NBD server re-wraps an accepted
// socket with a reader of its own, see src/engine/nbd/socket-reader.ts). fd or -errno.
Napi::Value DupFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "ioDupFd(fd)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int r = fcntl(info[0].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
  return Napi::Number::New(env, r < 0 ? -errno : r);
}

// One op of a batch. A read has one buffer (iov[0]); a write has one or more.
struct BatchOp {
  int32_t op;
  std::vector<struct iovec> iov;
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
      BatchOp& o = ops_[i];
      int64_t r = 0;
      switch (o.op) {
        case kRead: r = FullReadv(fd_, o.iov, o.pos); break;
        case kWrite: r = Write(o); break;
        case kSync: r = DataSync(fd_); break;
        case kWriteSync:
          r = Write(o);
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
  int64_t Write(BatchOp& o) {
    if (o.iov.size() == 1) return FullWrite(fd_, static_cast<const uint8_t*>(o.iov[0].iov_base), o.iov[0].iov_len, o.pos);
    return FullWritev(fd_, o.iov, o.pos);
  }

  int fd_;
  std::vector<BatchOp> ops_;
  int32_t* results_;
  Napi::ObjectReference keep_;
};

// ioSubmit(fd, ops: Int32Array, positions: Float64Array, bufs: (Uint8Array|null)[],
//          results: Int32Array, callback): runs the ops in order on one threadpool thread,
// writes 0 or -errno per op into `results`, then calls `callback()`. A read's or write's
// buffer may be an array of Uint8Arrays, filled or written back to back (preadv/pwritev).
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
    Napi::Value b = bufs[static_cast<uint32_t>(i)];
    if (o.op == kSync) continue;
    if (!IovecArg(b, &o.iov)) {
      Napi::TypeError::New(env, "ioSubmit: a read or write op needs a Uint8Array or an array of them").ThrowAsJavaScriptException();
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
  exports.Set("ioPwritev", Napi::Function::New(env, Pwritev, "ioPwritev"));
  exports.Set("ioDupFd", Napi::Function::New(env, DupFd, "ioDupFd"));
  exports.Set("ioSubmit", Napi::Function::New(env, Submit, "ioSubmit"));
}
