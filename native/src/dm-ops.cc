// N-API bindings of the device-mapper calls. Each opens /dev/mapper/control, issues one
// ioctl (retrying on DM_BUFFER_FULL_FLAG) and closes it, on the thread pool.
#include <sys/sysmacros.h>

#include <memory>

#include "dm-ioctl.h"

namespace cairn {
namespace {

constexpr size_t kSmallBuffer = 16u << 10;
constexpr size_t kMessageBuffer = 64u << 10;

using ToJs = std::function<Napi::Value(Napi::Env, const DmReply&)>;

Napi::Value RunDm(Napi::Env env, unsigned long cmd, const char* cmdName, DmRequest req, size_t minBuffer, ToJs toJs) {
  auto reply = std::make_shared<DmReply>();
  auto request = std::make_shared<DmRequest>(std::move(req));
  return RunAsync(env, "cairn.dm", [=](Failure& f) { DmRun(cmd, cmdName, *request, minBuffer, reply.get(), f); },
                  [=](Napi::Env e) -> Napi::Value { return toJs ? toJs(e, *reply) : e.Undefined(); });
}

void SetDev(Napi::Env env, Napi::Object obj, uint64_t dev) {
  obj.Set("major", Napi::Number::New(env, major(dev)));
  obj.Set("minor", Napi::Number::New(env, minor(dev)));
}

Napi::Object InfoToJs(Napi::Env env, const DmReply& r) {
  Napi::Object obj = Napi::Object::New(env);
  obj.Set("name", Napi::String::New(env, r.name));
  obj.Set("uuid", Napi::String::New(env, r.uuid));
  SetDev(env, obj, r.dev);
  obj.Set("openCount", Napi::Number::New(env, r.openCount));
  obj.Set("eventNr", Napi::Number::New(env, r.eventNr));
  obj.Set("targetCount", Napi::Number::New(env, r.targetCount));
  obj.Set("suspended", Napi::Boolean::New(env, (r.flags & DM_SUSPEND_FLAG) != 0));
  obj.Set("readOnly", Napi::Boolean::New(env, (r.flags & DM_READONLY_FLAG) != 0));
  obj.Set("activePresent", Napi::Boolean::New(env, (r.flags & DM_ACTIVE_PRESENT_FLAG) != 0));
  obj.Set("inactivePresent", Napi::Boolean::New(env, (r.flags & DM_INACTIVE_PRESENT_FLAG) != 0));
  return obj;
}

bool ArgName(const Napi::CallbackInfo& info, DmRequest* req) {
  return ArgString(info, 0, "name", DM_NAME_LEN, &req->name);
}

Napi::Value DmVersion(const Napi::CallbackInfo& info) {
  return RunDm(info.Env(), DM_VERSION, "DM_VERSION", DmRequest{}, kSmallBuffer, [](Napi::Env env, const DmReply& r) {
    Napi::Object obj = Napi::Object::New(env);
    obj.Set("major", Napi::Number::New(env, r.version[0]));
    obj.Set("minor", Napi::Number::New(env, r.version[1]));
    obj.Set("patch", Napi::Number::New(env, r.version[2]));
    return Napi::Value(obj);
  });
}

Napi::Value DmCreate(const Napi::CallbackInfo& info) {
  DmRequest req;
  if (!ArgName(info, &req) || !ArgString(info, 1, "uuid", DM_UUID_LEN, &req.uuid)) return info.Env().Undefined();
  return RunDm(info.Env(), DM_DEV_CREATE, "DM_DEV_CREATE", std::move(req), kSmallBuffer,
               [](Napi::Env env, const DmReply& r) { return Napi::Value(InfoToJs(env, r)); });
}

bool ReadTargets(const Napi::CallbackInfo& info, size_t index, std::vector<DmTarget>* out) {
  Napi::Env env = info.Env();
  if (!info[index].IsArray()) {
    ThrowType(env, "targets must be an array");
    return false;
  }
  Napi::Array list = info[index].As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); i++) {
    Napi::Value item = list.Get(i);
    if (!item.IsObject()) {
      ThrowType(env, "each target must be an object");
      return false;
    }
    Napi::Object obj = item.As<Napi::Object>();
    DmTarget t;
    if (!PropU64(env, obj, "startSector", &t.start) || !PropU64(env, obj, "lengthSectors", &t.length) ||
        !PropString(env, obj, "type", DM_MAX_TYPE_NAME, &t.type) ||
        !PropString(env, obj, "params", 1u << 20, &t.params)) {
      return false;
    }
    out->push_back(std::move(t));
  }
  return true;
}

Napi::Value DmLoadTable(const Napi::CallbackInfo& info) {
  DmRequest req;
  std::vector<DmTarget> targets;
  if (!ArgName(info, &req) || !ReadTargets(info, 1, &targets)) return info.Env().Undefined();
  req.targetCount = static_cast<uint32_t>(targets.size());
  req.payload = DmTablePayload(targets);
  return RunDm(info.Env(), DM_TABLE_LOAD, "DM_TABLE_LOAD", std::move(req), kSmallBuffer, nullptr);
}

Napi::Value DmSuspend(const Napi::CallbackInfo& info) {
  DmRequest req;
  bool noFlush = false, noLockfs = false;
  if (!ArgName(info, &req) || !ArgBool(info, 1, "noFlush", &noFlush) || !ArgBool(info, 2, "noLockfs", &noLockfs)) {
    return info.Env().Undefined();
  }
  req.flags = DM_SUSPEND_FLAG | (noFlush ? DM_NOFLUSH_FLAG : 0) | (noLockfs ? DM_SKIP_LOCKFS_FLAG : 0);
  return RunDm(info.Env(), DM_DEV_SUSPEND, "DM_DEV_SUSPEND", std::move(req), kSmallBuffer, nullptr);
}

Napi::Value DmResume(const Napi::CallbackInfo& info) {
  DmRequest req;
  if (!ArgName(info, &req)) return info.Env().Undefined();
  return RunDm(info.Env(), DM_DEV_SUSPEND, "DM_DEV_SUSPEND", std::move(req), kSmallBuffer, nullptr);
}

Napi::Value DmRemove(const Napi::CallbackInfo& info) {
  DmRequest req;
  bool deferred = false;
  if (!ArgName(info, &req) || !ArgBool(info, 1, "deferred", &deferred)) return info.Env().Undefined();
  req.flags = deferred ? DM_DEFERRED_REMOVE : 0;
  return RunDm(info.Env(), DM_DEV_REMOVE, "DM_DEV_REMOVE", std::move(req), kSmallBuffer, nullptr);
}

// Note: on DM_BUFFER_FULL_FLAG the message is sent again with a bigger buffer, as
// libdevmapper does; only query messages produce that much output.
Napi::Value DmMessage(const Napi::CallbackInfo& info) {
  DmRequest req;
  uint64_t sector = 0;
  std::string message;
  if (!ArgName(info, &req) || !ArgU64(info, 1, "sector", &sector) ||
      !ArgString(info, 2, "message", 1u << 20, &message)) {
    return info.Env().Undefined();
  }
  req.payload = DmMessagePayload(sector, message);
  return RunDm(info.Env(), DM_TARGET_MSG, "DM_TARGET_MSG", std::move(req), kMessageBuffer,
               [](Napi::Env env, const DmReply& r) -> Napi::Value {
                 if ((r.flags & DM_DATA_OUT_FLAG) == 0 || r.data.empty()) return env.Null();
                 return Napi::String::New(env, std::string(r.data.data(), strnlen(r.data.data(), r.data.size())));
               });
}

Napi::Value DmStatus(const Napi::CallbackInfo& info) {
  DmRequest req;
  bool table = false;
  if (!ArgName(info, &req) || !ArgBool(info, 1, "table", &table)) return info.Env().Undefined();
  req.flags = table ? DM_STATUS_TABLE_FLAG : 0;
  return RunDm(info.Env(), DM_TABLE_STATUS, table ? "DM_TABLE_STATUS(table)" : "DM_TABLE_STATUS", std::move(req),
               kMessageBuffer, [](Napi::Env env, const DmReply& r) -> Napi::Value {
                 std::vector<DmTarget> targets;
                 DmParseTargets(r, &targets);
                 Napi::Object obj = InfoToJs(env, r);
                 Napi::Array list = Napi::Array::New(env, targets.size());
                 for (size_t i = 0; i < targets.size(); i++) {
                   Napi::Object t = Napi::Object::New(env);
                   t.Set("startSector", Napi::Number::New(env, static_cast<double>(targets[i].start)));
                   t.Set("lengthSectors", Napi::Number::New(env, static_cast<double>(targets[i].length)));
                   t.Set("type", Napi::String::New(env, targets[i].type));
                   t.Set("params", Napi::String::New(env, targets[i].params));
                   list.Set(static_cast<uint32_t>(i), t);
                 }
                 obj.Set("targets", list);
                 return obj;
               });
}

Napi::Value DmList(const Napi::CallbackInfo& info) {
  return RunDm(info.Env(), DM_LIST_DEVICES, "DM_LIST_DEVICES", DmRequest{}, kMessageBuffer,
               [](Napi::Env env, const DmReply& r) -> Napi::Value {
                 std::vector<DmDevice> devices;
                 DmParseNames(r, &devices);
                 Napi::Array list = Napi::Array::New(env, devices.size());
                 for (size_t i = 0; i < devices.size(); i++) {
                   Napi::Object d = Napi::Object::New(env);
                   d.Set("name", Napi::String::New(env, devices[i].name));
                   SetDev(env, d, devices[i].dev);
                   list.Set(static_cast<uint32_t>(i), d);
                 }
                 return list;
               });
}

}  // namespace

void InitDeviceMapper(Napi::Env env, Napi::Object exports) {
  exports.Set("dmVersion", Napi::Function::New(env, DmVersion, "dmVersion"));
  exports.Set("dmCreate", Napi::Function::New(env, DmCreate, "dmCreate"));
  exports.Set("dmLoadTable", Napi::Function::New(env, DmLoadTable, "dmLoadTable"));
  exports.Set("dmSuspend", Napi::Function::New(env, DmSuspend, "dmSuspend"));
  exports.Set("dmResume", Napi::Function::New(env, DmResume, "dmResume"));
  exports.Set("dmRemove", Napi::Function::New(env, DmRemove, "dmRemove"));
  exports.Set("dmMessage", Napi::Function::New(env, DmMessage, "dmMessage"));
  exports.Set("dmStatus", Napi::Function::New(env, DmStatus, "dmStatus"));
  exports.Set("dmList", Napi::Function::New(env, DmList, "dmList"));
}

}  // namespace cairn
