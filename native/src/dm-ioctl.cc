#include "dm-ioctl.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cerrno>
#include <cstring>

namespace cairn {
namespace {

constexpr const char* kControlPath = "/dev/mapper/control";
constexpr size_t kMaxBuffer = 64u << 20;

size_t Align8(size_t n) { return (n + 7) & ~static_cast<size_t>(7); }

constexpr size_t kHeaderSize = (sizeof(struct dm_ioctl) + 7) & ~static_cast<size_t>(7);

// An 8-byte aligned, zero-filled buffer holding one dm_ioctl and its data.
class DmBuffer {
 public:
  explicit DmBuffer(size_t bytes) : words_((bytes + 7) / 8, 0) {}
  struct dm_ioctl* io() { return reinterpret_cast<struct dm_ioctl*>(words_.data()); }
  char* bytes() { return reinterpret_cast<char*>(words_.data()); }
  size_t size() const { return words_.size() * 8; }

 private:
  std::vector<uint64_t> words_;
};

void Fill(DmBuffer& buf, const DmRequest& req) {
  struct dm_ioctl* io = buf.io();
  // Minor 0: every 4.x kernel accepts it (the kernel rejects only a newer minor).
  io->version[0] = DM_VERSION_MAJOR;
  io->version[1] = 0;
  io->version[2] = 0;
  io->data_size = static_cast<uint32_t>(buf.size());
  io->data_start = static_cast<uint32_t>(kHeaderSize);
  io->flags = req.flags;
  io->target_count = req.targetCount;
  std::strncpy(io->name, req.name.c_str(), DM_NAME_LEN - 1);
  std::strncpy(io->uuid, req.uuid.c_str(), DM_UUID_LEN - 1);
  if (!req.payload.empty()) std::memcpy(buf.bytes() + kHeaderSize, req.payload.data(), req.payload.size());
}

void Copy(DmBuffer& buf, DmReply* reply) {
  const struct dm_ioctl* io = buf.io();
  std::copy(io->version, io->version + 3, reply->version);
  reply->flags = io->flags;
  reply->targetCount = io->target_count;
  reply->openCount = io->open_count;
  reply->eventNr = io->event_nr;
  reply->dev = io->dev;
  reply->name.assign(io->name, strnlen(io->name, DM_NAME_LEN));
  reply->uuid.assign(io->uuid, strnlen(io->uuid, DM_UUID_LEN));
  size_t start = std::min<size_t>(io->data_start, buf.size());
  size_t end = std::min<size_t>(std::max<size_t>(io->data_size, start), buf.size());
  reply->data.assign(buf.bytes() + start, buf.bytes() + end);
}

}  // namespace

void DmRun(unsigned long cmd, const char* cmdName, const DmRequest& req, size_t minBuffer, DmReply* reply,
           Failure& f) {
  int fd = open(kControlPath, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    f.Set(errno, std::string("open(") + kControlPath + ")");
    return;
  }
  size_t size = std::max(minBuffer, kHeaderSize + Align8(req.payload.size()) + 4096);
  std::string call = std::string("ioctl(") + cmdName + ")";
  for (;;) {
    DmBuffer buf(size);
    Fill(buf, req);
    if (ioctl(fd, cmd, buf.io()) < 0) {
      f.Set(errno, call);
      break;
    }
    if ((buf.io()->flags & DM_BUFFER_FULL_FLAG) != 0) {
      if (size >= kMaxBuffer) {
        f.Set(ENOBUFS, call);
        break;
      }
      size *= 4;
      continue;
    }
    Copy(buf, reply);
    break;
  }
  close(fd);
}

std::vector<char> DmTablePayload(const std::vector<DmTarget>& targets) {
  std::vector<char> out;
  for (const DmTarget& t : targets) {
    size_t at = out.size();
    size_t next = Align8(sizeof(struct dm_target_spec) + t.params.size() + 1);
    out.resize(at + next, 0);
    struct dm_target_spec spec;
    std::memset(&spec, 0, sizeof spec);
    spec.sector_start = t.start;
    spec.length = t.length;
    spec.next = static_cast<uint32_t>(next);
    std::strncpy(spec.target_type, t.type.c_str(), DM_MAX_TYPE_NAME - 1);
    std::memcpy(out.data() + at, &spec, sizeof spec);
    std::memcpy(out.data() + at + sizeof spec, t.params.c_str(), t.params.size() + 1);
  }
  return out;
}

std::vector<char> DmMessagePayload(uint64_t sector, const std::string& message) {
  std::vector<char> out(Align8(sizeof(struct dm_target_msg) + message.size() + 1), 0);
  struct dm_target_msg head;
  std::memset(&head, 0, sizeof head);
  head.sector = sector;
  std::memcpy(out.data(), &head, sizeof head);
  std::memcpy(out.data() + sizeof head, message.c_str(), message.size() + 1);
  return out;
}

// On DM_TABLE_STATUS each spec's `next` is an offset from the start of the data area.
bool DmParseTargets(const DmReply& reply, std::vector<DmTarget>* out) {
  const char* data = reply.data.data();
  size_t size = reply.data.size();
  size_t offset = 0;
  for (uint32_t i = 0; i < reply.targetCount; i++) {
    if (offset + sizeof(struct dm_target_spec) > size) return false;
    struct dm_target_spec spec;
    std::memcpy(&spec, data + offset, sizeof spec);
    const char* params = data + offset + sizeof spec;
    size_t room = size - offset - sizeof spec;
    DmTarget t;
    t.start = spec.sector_start;
    t.length = spec.length;
    t.type.assign(spec.target_type, strnlen(spec.target_type, DM_MAX_TYPE_NAME));
    t.params.assign(params, strnlen(params, room));
    out->push_back(std::move(t));
    if (spec.next <= offset && i + 1 < reply.targetCount) return false;
    offset = spec.next;
  }
  return true;
}

// DM_LIST_DEVICES: records of dm_name_list, each `next` bytes after the previous one;
// dev == 0 in the first record means no devices.
bool DmParseNames(const DmReply& reply, std::vector<DmDevice>* out) {
  const char* data = reply.data.data();
  size_t size = reply.data.size();
  size_t offset = 0;
  while (offset + sizeof(struct dm_name_list) <= size) {
    struct dm_name_list entry;
    std::memcpy(&entry, data + offset, sizeof entry);
    if (entry.dev == 0) break;
    const char* name = data + offset + offsetof(struct dm_name_list, name);
    size_t room = size - offset - offsetof(struct dm_name_list, name);
    out->push_back(DmDevice{std::string(name, strnlen(name, room)), entry.dev});
    if (entry.next == 0) break;
    offset += entry.next;
  }
  return offset <= size;
}

}  // namespace cairn
