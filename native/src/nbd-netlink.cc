// The kernel's nbd driver over generic netlink (family "nbd", linux/nbd-netlink.h):
// CONNECT, RECONFIGURE (a new socket, or a new size) and DISCONNECT, plus a unix-socket connect whose fd the caller
// negotiates on and then hands to the kernel.
//
// Why netlink here and not nbd-client: only RECONFIGURE gives a connected /dev/nbdX a new
// socket after its server died (a cairnd restart), and Debian's nbd-client cannot send it.
// Why the addon opens the socket: the kernel needs a plain fd it can take its own
// reference on. A node net.Socket's fd is private and registered with libuv's epoll;
// this fd never is. It is blocking with send/receive timeouts so that the TypeScript
// handshake (fs.read/fs.write on the thread pool) cannot hang; the timeouts are cleared
// before the kernel gets it, since its receive thread waits on the socket indefinitely.
//
// No libnl: one request and its acknowledgement per call, a few attributes each. Every
// call opens a netlink socket, resolves the family, sends, reads until the ACK, closes.
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "worker.h"

namespace cairn {
namespace {

constexpr int kNetlinkTimeoutS = 30;
constexpr size_t kReceiveBytes = 16u << 10;

// One netlink message under construction: header, genl header, attributes.
class Message {
 public:
  Message(uint16_t type, uint8_t cmd, uint8_t version) {
    buf_.resize(NLMSG_HDRLEN + GENL_HDRLEN);
    auto* nlh = reinterpret_cast<nlmsghdr*>(buf_.data());
    nlh->nlmsg_type = type;
    nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    auto* genl = reinterpret_cast<genlmsghdr*>(buf_.data() + NLMSG_HDRLEN);
    genl->cmd = cmd;
    genl->version = version;
  }

  void Put(uint16_t type, const void* data, size_t len) {
    size_t at = buf_.size();
    buf_.resize(at + NLA_ALIGN(NLA_HDRLEN + len), 0);
    auto* nla = reinterpret_cast<nlattr*>(buf_.data() + at);
    nla->nla_type = type;
    nla->nla_len = static_cast<uint16_t>(NLA_HDRLEN + len);
    std::memcpy(buf_.data() + at + NLA_HDRLEN, data, len);
  }
  void PutU32(uint16_t type, uint32_t v) { Put(type, &v, sizeof v); }
  void PutU64(uint16_t type, uint64_t v) { Put(type, &v, sizeof v); }
  void PutString(uint16_t type, const std::string& s) { Put(type, s.c_str(), s.size() + 1); }

  // Nested attributes: Begin returns where the nest starts, End fixes its length.
  size_t Begin(uint16_t type) {
    size_t at = buf_.size();
    Put(type | NLA_F_NESTED, nullptr, 0);
    return at;
  }
  void End(size_t at) { reinterpret_cast<nlattr*>(buf_.data() + at)->nla_len = static_cast<uint16_t>(buf_.size() - at); }

  std::vector<char>& Finish(uint32_t seq) {
    auto* nlh = reinterpret_cast<nlmsghdr*>(buf_.data());
    nlh->nlmsg_len = static_cast<uint32_t>(buf_.size());
    nlh->nlmsg_seq = seq;
    return buf_;
  }

 private:
  std::vector<char> buf_;
};

// The attributes of one genl reply, by type (only the first of each).
struct Attrs {
  std::vector<const nlattr*> byType;
  const nlattr* Get(uint16_t type) const { return type < byType.size() ? byType[type] : nullptr; }
};

Attrs ParseAttrs(const char* data, size_t len, uint16_t maxType) {
  Attrs out;
  out.byType.assign(maxType + 1, nullptr);
  while (len >= NLA_HDRLEN) {
    auto* nla = reinterpret_cast<const nlattr*>(data);
    if (nla->nla_len < NLA_HDRLEN || nla->nla_len > len) break;
    uint16_t type = nla->nla_type & NLA_TYPE_MASK;
    if (type <= maxType && out.byType[type] == nullptr) out.byType[type] = nla;
    size_t step = NLA_ALIGN(nla->nla_len);
    if (step >= len) break;
    data += step;
    len -= step;
  }
  return out;
}

template <typename T>
bool AttrValue(const nlattr* nla, T* out) {
  if (nla == nullptr || nla->nla_len < NLA_HDRLEN + sizeof(T)) return false;
  std::memcpy(out, reinterpret_cast<const char*>(nla) + NLA_HDRLEN, sizeof(T));
  return true;
}

class Netlink {
 public:
  ~Netlink() {
    if (fd_ >= 0) close(fd_);
  }

  bool Open(Failure& f) {
    fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (fd_ < 0) return f.Set(errno, "socket(AF_NETLINK)"), false;
    timeval tv{kNetlinkTimeoutS, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_nl addr{};
    addr.nl_family = AF_NETLINK;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) return f.Set(errno, "bind(AF_NETLINK)"), false;
    return true;
  }

  // Sends `msg` and reads until its ACK; `onReply` sees each genl payload of the reply.
  bool Call(Message& msg, const std::string& what, Failure& f, const std::function<void(const char*, size_t)>& onReply) {
    uint32_t seq = ++seq_;
    std::vector<char>& out = msg.Finish(seq);
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    ssize_t sent;
    do sent = sendto(fd_, out.data(), out.size(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel);
    while (sent < 0 && errno == EINTR);
    if (sent < 0) return f.Set(errno, "sendto(" + what + ")"), false;
    std::vector<char> in(kReceiveBytes);
    for (;;) {
      ssize_t n;
      do n = recv(fd_, in.data(), in.size(), 0);
      while (n < 0 && errno == EINTR);
      if (n < 0) return f.Set(errno, "recv(" + what + ")"), false;
      size_t left = static_cast<size_t>(n);
      for (auto* nlh = reinterpret_cast<nlmsghdr*>(in.data()); NLMSG_OK(nlh, left); nlh = NLMSG_NEXT(nlh, left)) {
        if (nlh->nlmsg_seq != seq) continue;
        if (nlh->nlmsg_type == NLMSG_ERROR) {
          auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(nlh));
          if (err->error != 0) return f.Set(-err->error, "netlink(" + what + ")"), false;
          return true;  // the ACK: the request is done
        }
        if (nlh->nlmsg_type == NLMSG_DONE) return true;
        if (nlh->nlmsg_len < NLMSG_HDRLEN + GENL_HDRLEN) continue;
        const char* payload = static_cast<const char*>(NLMSG_DATA(nlh)) + GENL_HDRLEN;
        if (onReply) onReply(payload, nlh->nlmsg_len - NLMSG_HDRLEN - GENL_HDRLEN);
      }
    }
  }

  // The id of generic netlink family "nbd"; ENOENT when the kernel has no nbd driver.
  bool ResolveNbd(Failure& f, uint16_t* id) {
    Message msg(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1);
    msg.PutString(CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME);
    bool found = false;
    bool ok = Call(msg, "CTRL_CMD_GETFAMILY nbd", f, [&](const char* data, size_t len) {
      found = AttrValue(ParseAttrs(data, len, CTRL_ATTR_MAX).Get(CTRL_ATTR_FAMILY_ID), id) || found;
    });
    if (ok && !found) return f.Set(ENOENT, "netlink(CTRL_CMD_GETFAMILY nbd)"), false;
    return ok;
  }

 private:
  int fd_ = -1;
  uint32_t seq_ = 0;
};

// What CONNECT and RECONFIGURE send; fields left at their "absent" value are not sent.
struct NbdConfig {
  int64_t index = -1;
  int sockFd = -1;
  uint64_t sizeBytes = 0;
  uint64_t blockSizeBytes = 0;
  uint64_t serverFlags = 0;
  uint64_t clientFlags = 0;
  uint64_t timeoutS = 0;
  uint64_t deadConnTimeoutS = 0;
  std::string backend;
};

// The kernel's receive thread must block on the socket for as long as the server is idle.
void ClearSocketTimeouts(int fd) {
  timeval zero{0, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &zero, sizeof zero);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof zero);
}

void PutConfig(Message& msg, const NbdConfig& c, bool connect) {
  if (c.index >= 0) msg.PutU32(NBD_ATTR_INDEX, static_cast<uint32_t>(c.index));
  // RECONFIGURE with a size resizes the device (nbd_genl_size_set, Linux 5.3 and later).
  if (connect || c.sizeBytes > 0) msg.PutU64(NBD_ATTR_SIZE_BYTES, c.sizeBytes);
  if (connect) {
    msg.PutU64(NBD_ATTR_BLOCK_SIZE_BYTES, c.blockSizeBytes);
    msg.PutU64(NBD_ATTR_SERVER_FLAGS, c.serverFlags);
    msg.PutU64(NBD_ATTR_CLIENT_FLAGS, c.clientFlags);
  }
  if (c.timeoutS > 0) msg.PutU64(NBD_ATTR_TIMEOUT, c.timeoutS);
  if (c.deadConnTimeoutS > 0) msg.PutU64(NBD_ATTR_DEAD_CONN_TIMEOUT, c.deadConnTimeoutS);
  if (!c.backend.empty()) msg.PutString(NBD_ATTR_BACKEND_IDENTIFIER, c.backend);
  if (c.sockFd >= 0) {
    size_t socks = msg.Begin(NBD_ATTR_SOCKETS);
    size_t item = msg.Begin(NBD_SOCK_ITEM);
    msg.PutU32(NBD_SOCK_FD, static_cast<uint32_t>(c.sockFd));
    msg.End(item);
    msg.End(socks);
  }
}

// Runs one nbd command; `index` receives NBD_ATTR_INDEX from the reply when there is one.
void RunNbd(uint8_t cmd, const char* name, const NbdConfig& c, int64_t* index, Failure& f) {
  Netlink nl;
  uint16_t family = 0;
  if (!nl.Open(f) || !nl.ResolveNbd(f, &family)) return;
  if (c.sockFd >= 0) ClearSocketTimeouts(c.sockFd);
  Message msg(family, cmd, NBD_GENL_VERSION);
  PutConfig(msg, c, cmd == NBD_CMD_CONNECT);
  nl.Call(msg, name, f, [&](const char* data, size_t len) {
    uint32_t v = 0;
    if (index != nullptr && AttrValue(ParseAttrs(data, len, NBD_ATTR_MAX).Get(NBD_ATTR_INDEX), &v)) *index = v;
  });
}

bool ReadConfig(Napi::Env env, const Napi::Value& value, bool connect, NbdConfig* c) {
  if (!value.IsObject()) return ThrowType(env, "config must be an object"), false;
  Napi::Object obj = value.As<Napi::Object>();
  uint64_t fd = 0;
  if (!PropU64(env, obj, "fd", &fd)) return false;
  if (fd > 0x7fffffff) return ThrowType(env, "fd is out of range"), false;
  c->sockFd = static_cast<int>(fd);
  Napi::Value index = obj.Get("index");
  if (!(connect && index.IsNumber() && index.As<Napi::Number>().DoubleValue() == -1)) {
    uint64_t i = 0;
    if (!ValueU64(env, index, "index", &i)) return false;
    if (i > 0x7fffffff) return ThrowType(env, "index is out of range"), false;
    c->index = static_cast<int64_t>(i);
  }
  if (!PropU64(env, obj, "timeoutS", &c->timeoutS) || !PropU64(env, obj, "deadConnTimeoutS", &c->deadConnTimeoutS) ||
      !PropString(env, obj, "backend", 256, &c->backend)) {
    return false;
  }
  if (!connect) return true;
  return PropU64(env, obj, "sizeBytes", &c->sizeBytes) && PropU64(env, obj, "blockSizeBytes", &c->blockSizeBytes) &&
         PropU64(env, obj, "serverFlags", &c->serverFlags) && PropU64(env, obj, "clientFlags", &c->clientFlags);
}

Napi::Value NbdConnect(const Napi::CallbackInfo& info) {
  auto c = std::make_shared<NbdConfig>();
  if (!ReadConfig(info.Env(), info[0], true, c.get())) return info.Env().Undefined();
  auto index = std::make_shared<int64_t>(-1);
  return RunAsync(info.Env(), "cairn.nbdConnect", [=](Failure& f) {
    RunNbd(NBD_CMD_CONNECT, "NBD_CMD_CONNECT", *c, index.get(), f);
    if (f.err == 0 && *index < 0) f.Set(EPROTO, "netlink(NBD_CMD_CONNECT): no index in the reply");
  }, [index](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, static_cast<double>(*index)); });
}

Napi::Value NbdReconfigure(const Napi::CallbackInfo& info) {
  auto c = std::make_shared<NbdConfig>();
  if (!ReadConfig(info.Env(), info[0], false, c.get())) return info.Env().Undefined();
  return RunAsync(info.Env(), "cairn.nbdReconfigure",
                  [=](Failure& f) { RunNbd(NBD_CMD_RECONFIGURE, "NBD_CMD_RECONFIGURE", *c, nullptr, f); }, nullptr);
}

// RECONFIGURE with only a new size (no socket): the device grows (or shrinks) at once and
// the kernel announces the new capacity; I/O in flight is not disturbed. `backend` must be
// the device's backend identifier (the kernel refuses another with EINVAL).
Napi::Value NbdResize(const Napi::CallbackInfo& info) {
  uint64_t index = 0;
  auto c = std::make_shared<NbdConfig>();
  if (!ArgU64(info, 0, "index", &index) || !ArgU64(info, 1, "sizeBytes", &c->sizeBytes) ||
      !ArgString(info, 2, "backend", 256, &c->backend)) {
    return info.Env().Undefined();
  }
  if (index > 0x7fffffff) return ThrowType(info.Env(), "index is out of range");
  if (c->sizeBytes == 0) return ThrowType(info.Env(), "sizeBytes must be greater than zero");
  c->index = static_cast<int64_t>(index);
  return RunAsync(info.Env(), "cairn.nbdResize",
                  [=](Failure& f) { RunNbd(NBD_CMD_RECONFIGURE, "NBD_CMD_RECONFIGURE size", *c, nullptr, f); }, nullptr);
}

Napi::Value NbdDisconnect(const Napi::CallbackInfo& info) {
  uint64_t index = 0;
  if (!ArgU64(info, 0, "index", &index)) return info.Env().Undefined();
  if (index > 0x7fffffff) return ThrowType(info.Env(), "index is out of range");
  auto c = std::make_shared<NbdConfig>();
  c->index = static_cast<int64_t>(index);
  return RunAsync(info.Env(), "cairn.nbdDisconnect",
                  [=](Failure& f) { RunNbd(NBD_CMD_DISCONNECT, "NBD_CMD_DISCONNECT", *c, nullptr, f); }, nullptr);
}

// A blocking, close-on-exec unix stream socket connected to `path`, with send and receive
// timeouts of `timeoutMs`. Resolves with the fd, which the caller owns.
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  auto path = std::make_shared<std::string>();
  uint64_t timeoutMs = 0;
  if (!ArgString(info, 0, "path", sizeof(sockaddr_un::sun_path), path.get()) || !ArgU64(info, 1, "timeoutMs", &timeoutMs)) {
    return info.Env().Undefined();
  }
  auto fd = std::make_shared<int>(-1);
  return RunAsync(info.Env(), "cairn.unixConnect", [=](Failure& f) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return f.Set(errno, "socket(AF_UNIX)");
    timeval tv{static_cast<time_t>(timeoutMs / 1000), static_cast<suseconds_t>((timeoutMs % 1000) * 1000)};
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path->c_str(), path->size());
    int rc;
    if (setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 || setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0) {
      f.Set(errno, "setsockopt(SO_RCVTIMEO)");
    } else {
      do rc = connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
      while (rc < 0 && errno == EINTR);
      if (rc < 0) f.Set(errno, "connect(" + *path + ")");
    }
    if (f.err != 0) close(s);
    else *fd = s;
  }, [fd](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *fd); });
}

}  // namespace

void InitNbdNetlink(Napi::Env env, Napi::Object exports) {
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("nbdConnect", Napi::Function::New(env, NbdConnect, "nbdConnect"));
  exports.Set("nbdReconfigure", Napi::Function::New(env, NbdReconfigure, "nbdReconfigure"));
  exports.Set("nbdResize", Napi::Function::New(env, NbdResize, "nbdResize"));
  exports.Set("nbdDisconnect", Napi::Function::New(env, NbdDisconnect, "nbdDisconnect"));
}

}  // namespace cairn
