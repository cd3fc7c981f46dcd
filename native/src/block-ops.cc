// Block-device calls: BLKGETSIZE64, BLKDISCARD, flush, and a loop device's size limit.
//
// blockFlush is fdatasync only. On a block device fd, fdatasync writes back the device's
// dirty page cache and then sends a cache-flush (FLUSH/FUA) to the device, which is what
// durability needs. BLKFLSBUF is deliberately not used: it also drops the clean page
// cache (every later read goes to the disk), needs CAP_SYS_ADMIN, and adds no durability.
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>

#include "worker.h"

namespace cairn {
namespace {

constexpr uint64_t kMaxSafeInteger = 9007199254740991ULL;
constexpr int kLoopStatusAttempts = 5;

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

// Sets a bound loop device's size limit (lo_sizelimit) and so its size, online: the
// kernel syncs the device, freezes its queue for the change and announces the new
// capacity. The rest of the status (offset, flags, file name) is read first and written
// back unchanged. This is how a loop device over a file that is larger than the volume
// (nbdfuse's growable export) grows with the volume.
Napi::Value LoopSetSizeLimit(const Napi::CallbackInfo& info) {
  int fd = 0;
  uint64_t limit = 0;
  if (!ArgFd(info, 0, &fd) || !ArgU64(info, 1, "sizeLimitBytes", &limit)) return info.Env().Undefined();
  return RunAsync(info.Env(), "cairn.loopSetSizeLimit", [=](Failure& f) {
    loop_info64 status{};
    if (ioctl(fd, LOOP_GET_STATUS64, &status) < 0) return f.Set(errno, "ioctl(LOOP_GET_STATUS64)");
    status.lo_sizelimit = limit;
    // Older kernels answer EAGAIN when pages were dirtied between their sync and their
    // check; a few more tries, then the caller sees EAGAIN.
    int rc = -1;
    for (int attempt = 0; attempt < kLoopStatusAttempts; attempt++) {
      rc = ioctl(fd, LOOP_SET_STATUS64, &status);
      if (rc == 0 || (errno != EAGAIN && errno != EINTR)) break;
    }
    if (rc < 0) f.Set(errno, "ioctl(LOOP_SET_STATUS64)");
  }, nullptr);
}

}  // namespace

void InitBlockOps(Napi::Env env, Napi::Object exports) {
  exports.Set("blockDeviceSize", Napi::Function::New(env, BlockDeviceSize, "blockDeviceSize"));
  exports.Set("blockDiscard", Napi::Function::New(env, BlockDiscard, "blockDiscard"));
  exports.Set("blockFlush", Napi::Function::New(env, BlockFlush, "blockFlush"));
  exports.Set("loopSetSizeLimit", Napi::Function::New(env, LoopSetSizeLimit, "loopSetSizeLimit"));
}

}  // namespace cairn
