/**
 * Option haggling of the fixed newstyle handshake, as a pure step function: given the
 * negotiation state and one option, it returns the replies to send and what happens next.
 * The connection owns the socket and the bytes; this file owns the protocol decisions.
 */
import * as C from './codec.js';
import * as P from './protocol.js';

export interface ExportDescriptor {
  name: string;
  description: string;
  sizeBytes: number;
  readOnly: boolean;
  /**
   * When set, the export is also offered as `growableExportName(name)`, advertising this
   * size instead of `sizeBytes`; requests are still bounded by `sizeBytes`, which grows.
   */
  growableBytes?: number;
}

/**
 * The growable view of an export, for the nbdfuse + loop attach path. nbdfuse shows its
 * file at the size the server advertised when it connected and an NBD connection cannot
 * learn that the export grew, so a volume attached that way could never grow online. This
 * view advertises the largest size a volume can reach; the loop device on top is limited
 * to the volume's real size (lo_sizelimit) and raised when the volume grows, so nothing
 * past the real end is ever asked for, and a request that were is refused like any
 * out-of-range one. The suffix cannot occur in a volume name.
 */
export const GROWABLE_EXPORT_SUFFIX = '#growable';
/** What the growable view advertises: Cairn's largest volume, 1 PiB. */
export const GROWABLE_EXPORT_BYTES = 2 ** 50;

export function growableExportName(name: string): string {
  return `${name}${GROWABLE_EXPORT_SUFFIX}`;
}

export interface NegotiationState {
  noZeroes: boolean;
  structuredReplies: boolean;
  /** Whether shutdown is under way: options then get NBD_REP_ERR_SHUTDOWN. */
  shuttingDown: boolean;
}

export type OptionNext = 'continue' | 'transmission' | 'close';

export interface OptionOutcome {
  replies: Buffer[];
  next: OptionNext;
  /** Set when the client misbehaved; the connection logs it once. */
  problem?: string;
}

/** Client flags we understand; any other bit is a hard disconnect per the spec. */
export const KNOWN_CLIENT_FLAGS = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES;

/** The transmission flags for an export, given what was negotiated. */
export function transmissionFlags(exp: ExportDescriptor, structuredReplies: boolean): number {
  let flags = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_CAN_MULTI_CONN;
  if (exp.readOnly) flags |= P.NBD_FLAG_READ_ONLY;
  else flags |= P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES;
  // One content chunk is all Cairn ever sends, so "don't fragment" costs nothing.
  if (structuredReplies) flags |= P.NBD_FLAG_SEND_DF;
  return flags;
}

function matches(exp: ExportDescriptor, name: string): boolean {
  return name === '' || name === exp.name || (exp.growableBytes !== undefined && name === growableExportName(exp.name));
}

/** The size advertised to a client that asked for export `name` (one that matches). */
function advertisedBytes(exp: ExportDescriptor, name: string): number {
  return exp.growableBytes !== undefined && name === growableExportName(exp.name) ? exp.growableBytes : exp.sizeBytes;
}

function reply(option: number, type: number, data?: Uint8Array): Buffer {
  return C.encodeOptionReply(option, type, data);
}

function error(option: number, type: number, message: string, problem?: string): OptionOutcome {
  const out: OptionOutcome = { replies: [C.encodeOptionError(option, type, message)], next: 'continue' };
  if (problem !== undefined) out.problem = problem;
  return out;
}

function infoOrGo(state: NegotiationState, exp: ExportDescriptor, option: number, data: Buffer): OptionOutcome {
  const req = C.parseInfoRequest(data);
  if (!req) return error(option, P.NBD_REP_ERR_INVALID, 'malformed NBD_OPT_INFO/GO request', 'malformed info request');
  if (!matches(exp, req.name)) return error(option, P.NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`);
  const flags = transmissionFlags(exp, state.structuredReplies);
  const replies = [
    reply(option, P.NBD_REP_INFO, C.encodeInfoExport(advertisedBytes(exp, req.name), flags)),
    reply(option, P.NBD_REP_INFO, C.encodeInfoBlockSize(P.BLOCK_SIZE_MIN, P.BLOCK_SIZE_PREFERRED, P.BLOCK_SIZE_MAX)),
  ];
  if (req.infos.includes(P.NBD_INFO_NAME)) replies.push(reply(option, P.NBD_REP_INFO, C.encodeInfoString(P.NBD_INFO_NAME, exp.name)));
  if (req.infos.includes(P.NBD_INFO_DESCRIPTION)) {
    replies.push(reply(option, P.NBD_REP_INFO, C.encodeInfoString(P.NBD_INFO_DESCRIPTION, exp.description)));
  }
  replies.push(reply(option, P.NBD_REP_ACK));
  return { replies, next: option === P.NBD_OPT_GO ? 'transmission' : 'continue' };
}

/**
 * Meta contexts are declined: a valid query selects none, which the spec answers with a
 * lone NBD_REP_ACK. Clients then simply do not send NBD_CMD_BLOCK_STATUS.
 */
function metaContext(state: NegotiationState, exp: ExportDescriptor, option: number, data: Buffer): OptionOutcome {
  if (!state.structuredReplies) return error(option, P.NBD_REP_ERR_INVALID, 'negotiate structured replies first');
  const req = C.parseMetaContextRequest(data);
  if (!req) return error(option, P.NBD_REP_ERR_INVALID, 'malformed meta context request', 'malformed meta context request');
  if (!matches(exp, req.name)) return error(option, P.NBD_REP_ERR_UNKNOWN, `no export named "${req.name}"`);
  return { replies: [reply(option, P.NBD_REP_ACK)], next: 'continue' };
}

/** Handles one option (other than NBD_OPT_EXPORT_NAME, see exportNameReply). */
export function handleOption(state: NegotiationState, exp: ExportDescriptor, option: number, data: Buffer): OptionOutcome {
  if (option === P.NBD_OPT_ABORT) return { replies: [reply(option, P.NBD_REP_ACK)], next: 'close' };
  if (state.shuttingDown) return error(option, P.NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
  switch (option) {
    case P.NBD_OPT_LIST:
      if (data.length !== 0) return error(option, P.NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data', 'option with unexpected data');
      return { replies: [reply(option, P.NBD_REP_SERVER, C.encodeRepServer(exp.name)), reply(option, P.NBD_REP_ACK)], next: 'continue' };
    case P.NBD_OPT_INFO:
    case P.NBD_OPT_GO:
      return infoOrGo(state, exp, option, data);
    case P.NBD_OPT_STRUCTURED_REPLY:
      if (data.length !== 0) return error(option, P.NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data', 'option with unexpected data');
      state.structuredReplies = true;
      return { replies: [reply(option, P.NBD_REP_ACK)], next: 'continue' };
    case P.NBD_OPT_LIST_META_CONTEXT:
    case P.NBD_OPT_SET_META_CONTEXT:
      return metaContext(state, exp, option, data);
    default:
      return error(option, P.NBD_REP_ERR_UNSUP, `option ${option} is not supported`, 'unsupported option');
  }
}

/**
 * NBD_OPT_EXPORT_NAME ends haggling without a way to report errors: an unknown name is a
 * hard disconnect (undefined here).
 */
export function exportNameReply(state: NegotiationState, exp: ExportDescriptor, data: Buffer): Buffer | undefined {
  if (state.shuttingDown || data.length > P.MAX_STRING_BYTES) return undefined;
  const name = data.toString('utf8');
  if (!matches(exp, name)) return undefined;
  // Structured replies negotiated earlier in the session stay in force.
  return C.encodeExportNameReply(advertisedBytes(exp, name), transmissionFlags(exp, state.structuredReplies), state.noZeroes);
}
