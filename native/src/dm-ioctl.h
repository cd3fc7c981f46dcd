// The device-mapper ioctl protocol over /dev/mapper/control, without any N-API: a
// request is a struct dm_ioctl header plus a payload; the answer comes back in the same
// buffer. Struct layouts and command numbers are the kernel's, from <linux/dm-ioctl.h>.
#pragma once

#include <linux/dm-ioctl.h>
#include <sys/ioctl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "worker.h"

namespace cairn {

struct DmTarget {
  uint64_t start = 0;   // sectors
  uint64_t length = 0;  // sectors
  std::string type;
  std::string params;   // the table line's parameters, or the target's status
};

struct DmRequest {
  std::string name;
  std::string uuid;
  uint32_t flags = 0;
  uint32_t targetCount = 0;
  std::vector<char> payload;  // placed at data_start; 8-byte aligned inside
};

// The kernel's answer: a copy of the header fields plus the data area.
struct DmReply {
  uint32_t version[3] = {0, 0, 0};
  uint32_t flags = 0;
  uint32_t targetCount = 0;
  int32_t openCount = 0;
  uint32_t eventNr = 0;
  uint64_t dev = 0;
  std::string name;
  std::string uuid;
  std::vector<char> data;  // bytes from data_start to data_size
};

struct DmDevice {
  std::string name;
  uint64_t dev = 0;
};

// Opens the control node, issues `cmd` and retries with a larger buffer while the kernel
// answers DM_BUFFER_FULL_FLAG. `minBuffer` is the first buffer's size in bytes.
void DmRun(unsigned long cmd, const char* cmdName, const DmRequest& req, size_t minBuffer, DmReply* reply,
           Failure& f);

// Payload builders and reply parsers.
std::vector<char> DmTablePayload(const std::vector<DmTarget>& targets);
std::vector<char> DmMessagePayload(uint64_t sector, const std::string& message);
bool DmParseTargets(const DmReply& reply, std::vector<DmTarget>* out);
bool DmParseNames(const DmReply& reply, std::vector<DmDevice>* out);

}  // namespace cairn
