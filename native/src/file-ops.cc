// File calls: fallocate, FICLONE, FICLONERANGE, SEEK_DATA/SEEK_HOLE, FIFREEZE/FITHAW.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "worker.h"

namespace cairn {
namespace {

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  int fd = 0;
  uint64_t mode = 0, offset = 0, length = 0;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, "mode", &mode) || !ArgU64(info, 2, "offset", &offset) ||
      !ArgU64(info, 3, "length", &length)) {
    return info.Env().Undefined();
  }
  return RunAsync(info.Env(), "cairn.fallocate", [=](Failure& f) {
    int rc;
    do rc = fallocate(fd, static_cast<int>(mode), static_cast<off_t>(offset), static_cast<off_t>(length));
    while (rc < 0 && errno == EINTR);
    if (rc < 0) f.Set(errno, "fallocate");
  }, nullptr);
}

Napi::Value Ficlone(const Napi::CallbackInfo& info) {
  int dest = 0, src = 0;
  if (!ArgFd(info, 0, &dest) || !ArgFd(info, 1, &src)) return info.Env().Undefined();
  return RunAsync(info.Env(), "cairn.ficlone", [=](Failure& f) {
    if (ioctl(dest, FICLONE, src) < 0) f.Set(errno, "ioctl(FICLONE)");
  }, nullptr);
}

// ioctl(FICLONERANGE): dest's [destOffset, destOffset + length) shares src's blocks of
// [srcOffset, srcOffset + length). length 0 would mean "to the end of src": refused here.
Napi::Value FicloneRange(const Napi::CallbackInfo& info) {
  int dest = 0, src = 0;
  uint64_t srcOffset = 0, length = 0, destOffset = 0;
  if (!ArgFd(info, 0, &dest) || !ArgFd(info, 1, &src) || !ArgU64(info, 2, "srcOffset", &srcOffset) ||
      !ArgU64(info, 3, "length", &length) || !ArgU64(info, 4, "destOffset", &destOffset)) {
    return info.Env().Undefined();
  }
  return RunAsync(info.Env(), "cairn.ficlonerange", [=](Failure& f) {
    if (length == 0) {
      f.Set(EINVAL, "ioctl(FICLONERANGE)");
      return;
    }
    struct file_clone_range range = {};
    range.src_fd = src;
    range.src_offset = srcOffset;
    range.src_length = length;
    range.dest_offset = destOffset;
    int rc;
    do rc = ioctl(dest, FICLONERANGE, &range);
    while (rc < 0 && errno == EINTR);
    if (rc < 0) f.Set(errno, "ioctl(FICLONERANGE)");
  }, nullptr);
}

// lseek with SEEK_DATA or SEEK_HOLE; resolves with the offset, or null when the kernel
// answers ENXIO (no data at or after `offset`, or `offset` is past the end).
Napi::Value Seek(const Napi::CallbackInfo& info, int whence, const char* name) {
  int fd = 0;
  uint64_t offset = 0;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, "offset", &offset)) return info.Env().Undefined();
  auto result = std::make_shared<off_t>(-1);
  return RunAsync(info.Env(), "cairn.seek", [=](Failure& f) {
    off_t at = lseek(fd, static_cast<off_t>(offset), whence);
    if (at >= 0) *result = at;
    else if (errno != ENXIO) f.Set(errno, name);
  }, [result](Napi::Env env) -> Napi::Value {
    if (*result < 0) return env.Null();
    return Napi::Number::New(env, static_cast<double>(*result));
  });
}

Napi::Value SeekData(const Napi::CallbackInfo& info) { return Seek(info, SEEK_DATA, "lseek(SEEK_DATA)"); }
Napi::Value SeekHole(const Napi::CallbackInfo& info) { return Seek(info, SEEK_HOLE, "lseek(SEEK_HOLE)"); }

Napi::Value FreezeIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  int fd = 0;
  if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  return RunAsync(info.Env(), "cairn.freeze", [=](Failure& f) {
    if (ioctl(fd, request, 0) < 0) f.Set(errno, name);
  }, nullptr);
}

Napi::Value FsFreeze(const Napi::CallbackInfo& info) { return FreezeIoctl(info, FIFREEZE, "ioctl(FIFREEZE)"); }
Napi::Value FsThaw(const Napi::CallbackInfo& info) { return FreezeIoctl(info, FITHAW, "ioctl(FITHAW)"); }

}  // namespace

void InitFileOps(Napi::Env env, Napi::Object exports) {
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("ficlone", Napi::Function::New(env, Ficlone, "ficlone"));
  exports.Set("ficloneRange", Napi::Function::New(env, FicloneRange, "ficloneRange"));
  exports.Set("seekData", Napi::Function::New(env, SeekData, "seekData"));
  exports.Set("seekHole", Napi::Function::New(env, SeekHole, "seekHole"));
  exports.Set("fsFreeze", Napi::Function::New(env, FsFreeze, "fsFreeze"));
  exports.Set("fsThaw", Napi::Function::New(env, FsThaw, "fsThaw"));
  exports.Set("FALLOC_FL_KEEP_SIZE", Napi::Number::New(env, FALLOC_FL_KEEP_SIZE));
  exports.Set("FALLOC_FL_PUNCH_HOLE", Napi::Number::New(env, FALLOC_FL_PUNCH_HOLE));
  exports.Set("FALLOC_FL_ZERO_RANGE", Napi::Number::New(env, FALLOC_FL_ZERO_RANGE));
}

}  // namespace cairn
