// Block-device calls: BLKGETSIZE64, BLKDISCARD and flush.
//
// blockFlush is fdatasync only. On a block device fd, fdatasync writes back the device's
// dirty page cache and then sends a cache-flush (FLUSH/FUA) to the device, which is what
// durability needs. BLKFLSBUF is deliberately not used: it also drops the clean page
// cache (every later read goes to the disk), needs CAP_SYS_ADMIN, and adds no durability.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>

#include "worker.h"

namespace cairn {
namespace {

constexpr uint64_t kMaxSafeInteger = 9007199254740991ULL;

Napi::Value BlockDeviceSize(const Napi::CallbackInfo& info) {
  int fd = 0;
  if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  auto size = std::make_shared<uint64_t>(0);
  return RunAsync(info.Env(), "cairn.blockDeviceSize", [=](Failure& f) {
    if (ioctl(fd, BLKGETSIZE64, size.get()) < 0) f.Set(errno, "ioctl(BLKGETSIZE64)");
    else if (*size > kMaxSafeInteger) f.Set(EOVERFLOW, "ioctl(BLKGETSIZE64)");
  }, [size](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, static_cast<double>(*size)); });
}

Napi::Value BlockDiscard(const Napi::CallbackInfo& info) {
  int fd = 0;
  uint64_t offset = 0, length = 0;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, "offset", &offset) || !ArgU64(info, 2, "length", &length)) {
    return info.Env().Undefined();
  }
  return RunAsync(info.Env(), "cairn.blockDiscard", [=](Failure& f) {
    uint64_t range[2] = {offset, length};
    if (ioctl(fd, BLKDISCARD, range) < 0) f.Set(errno, "ioctl(BLKDISCARD)");
  }, nullptr);
}

Napi::Value BlockFlush(const Napi::CallbackInfo& info) {
  int fd = 0;
  if (!ArgFd(info, 0, &fd)) return info.Env().Undefined();
  return RunAsync(info.Env(), "cairn.blockFlush", [=](Failure& f) {
    int rc;
    do rc = fdatasync(fd);
    while (rc < 0 && errno == EINTR);
    if (rc < 0) f.Set(errno, "fdatasync");
  }, nullptr);
}

}  // namespace

void InitBlockOps(Napi::Env env, Napi::Object exports) {
  exports.Set("blockDeviceSize", Napi::Function::New(env, BlockDeviceSize, "blockDeviceSize"));
  exports.Set("blockDiscard", Napi::Function::New(env, BlockDiscard, "blockDiscard"));
  exports.Set("blockFlush", Napi::Function::New(env, BlockFlush, "blockFlush"));
}

}  // namespace cairn
