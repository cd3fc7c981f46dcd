/**
 * Human output for cairnctl: aligned tables, key/value blocks, progress bars, and the
 * renderings of the API's messages. Pure functions of their input (the clock is passed in),
 * so they are unit-tested without a daemon.
 */
import { formatBytes } from '../common/units.js';
import type {
  ClusterStatusMessage, NodeMessage, PublicationMessage, RebuildProgressMessage, SnapshotMessage, SnapshotRuleOutcomeMessage, StagingMessage, VerifyMessage,
  VolumeMessage,
} from './api-client.js';

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

export function keyValues(pairs: [string, string][]): string {
  const width = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(width + 1)} ${v}`).join('\n');
}

export function percent(part: number, whole: number): string {
  return whole > 0 ? `${((part / whole) * 100).toFixed(1)}%` : '-';
}

/** 15 -> "15s", 125 -> "2m05s", 3720 -> "1h02m", 97200 -> "1d03h". Whole seconds, rounded up. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds));
  const two = (n: number): string => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${two(s % 60)}s`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h${two(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86_400)}d${two(Math.floor((s % 86_400) / 3600))}h`;
}

/** How long ago an ISO 8601 time was: "4m12s ago"; "-" when there is no time. */
export function formatAge(iso: string, nowMs: number): string {
  const at = iso ? Date.parse(iso) : Number.NaN;
  if (Number.isNaN(at)) return '-';
  return `${formatDuration(Math.max(0, nowMs - at) / 1000)} ago`;
}

/**
 * A rebuild's progress on one line:
 * `[#########-----------] 45.2% 2.3 GiB/5 GiB 180 MiB/s ETA 16s`.
 * The percentage shows 100.0% only when the copy is complete (99.9% at most before); the ETA
 * is "-" while the rate is unknown (0).
 */
export function progressBar(p: RebuildProgressMessage, width = 20): string {
  const total = Math.max(0, p.totalBytes);
  const done = Math.min(Math.max(0, p.doneBytes), total);
  const fraction = total > 0 ? done / total : 1;
  const filled = Math.floor(fraction * width);
  const pct = `${(done < total ? Math.min(99.9, Math.round(fraction * 1000) / 10) : 100).toFixed(1)}%`;
  const rate = Math.max(0, p.bytesPerSecond);
  const eta = rate > 0 ? formatDuration((total - done) / rate) : '-';
  // No rate: the rebuild has just started, or this node is not the engine's (which alone measures it).
  const speed = rate > 0 ? `${formatBytes(rate)}/s` : '-/s';
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${pct} ${formatBytes(done)}/${formatBytes(total)} ${speed} ETA ${eta}`;
}

function inSyncCount(v: VolumeMessage): number {
  return v.replicas.filter((r) => r.state === 'in-sync').length;
}

/** The nodes a volume is published to (CSI): "node-a", "node-a(ro),node-b(ro)", "-" for none. */
export function publishedText(published: readonly PublicationMessage[] | undefined): string {
  return published?.length ? published.map((p) => `${p.nodeId}${p.readonly ? '(ro)' : ''}`).join(',') : '-';
}

/** The staging on the answering node in a list cell: "staged /dev/loop3", "staging", "-" when not staged there. */
export function stagedCell(s: StagingMessage | null | undefined): string {
  if (!s) return '-';
  return s.devicePath ? `${s.state} ${s.devicePath}` : s.state;
}

/** `volume list`: one row per volume; REPLICAS is in-sync/total, STAGED is the staging on the node that answered. */
export function volumeRows(volumes: VolumeMessage[]): string {
  return table(['NAME', 'SIZE', 'ALLOCATED', 'STATE', 'HEALTH', 'REPLICAS', 'EXPORT', 'PUBLISHED', 'STAGED'], volumes.map((v) => [
    v.name, formatBytes(v.sizeBytes), formatBytes(v.allocatedBytes), v.state, v.health, `${inSyncCount(v)}/${v.replicas.length}`, v.export ? v.export.uri : '-',
    publishedText(v.published), stagedCell(v.staging),
  ]));
}

/** `volume inspect`: the CSI staging on the node that answered, as key/value pairs. */
function stagingPairs(s: StagingMessage | null | undefined): [string, string][] {
  if (!s) return [['Staging', 'not staged on this node']];
  const what = s.accessType === 'block' ? 'block' : `${s.fsType || 'mount'}`;
  return [
    ['Staging', `${s.state} on ${s.nodeName} at ${s.stagingPath} (${what}${s.readonly ? ', read-only' : ''})`],
    ['Device', s.devicePath ? `${s.devicePath} (${s.attachMethod})` : 'not attached yet'],
  ];
}

/** Why each out-of-sync replica is out, and what it missed; one line each. */
function replicaNotes(v: VolumeMessage): string[] {
  return v.replicas.filter((r) => r.state !== 'in-sync' && (r.reason || r.dirtyBytes > 0)).map((r) => {
    const missed = r.dirtyBytes > 0 ? `${formatBytes(r.dirtyBytes)} to resync` : '';
    return `${r.id} on ${r.nodeName} is ${r.state}: ${[r.reason, missed].filter(Boolean).join('; ')}`;
  });
}

/** `volume inspect`: the volume's facts, its replica table, and notes on replicas out of sync. */
export function volumeDetail(v: VolumeMessage, nowMs: number): string {
  const wanted = v.replicasWanted || v.replicas.length;
  const head = keyValues([
    ['Name', v.name], ['ID', v.id], ['Size', `${formatBytes(v.sizeBytes)} (${v.sizeBytes} bytes)`],
    ['Allocated', `${formatBytes(v.allocatedBytes)} (${percent(v.allocatedBytes, v.sizeBytes)})`],
    ['State', v.state], ['Health', v.health], ['Replicas', `${inSyncCount(v)}/${wanted} in sync`],
    ['Engine node', v.engineNode || 'none'], ['Epoch', String(v.epoch)], ['Created', v.createdAt],
    ['Export', v.export ? `${v.export.uri} (${v.export.connectionCount} client(s))` : 'not exported'],
    ['Published', v.published?.length ? v.published.map((p) => `${p.nodeId}${p.readonly ? ' (read-only)' : ''}`).join(', ') : 'nowhere'],
    ...stagingPairs(v.staging),
  ]);
  const replicas = table(['REPLICA', 'NODE', 'STATE', 'SINCE', 'ALLOCATED', 'PROGRESS'], v.replicas.map((r) => [
    r.id, r.nodeName, r.state, formatAge(r.since, nowMs), formatBytes(r.allocatedBytes), r.state === 'rebuilding' && r.rebuild ? progressBar(r.rebuild) : '-',
  ]));
  const notes = replicaNotes(v);
  return [head, '', replicas, ...(notes.length ? ['', ...notes] : [])].join('\n');
}

/** `node list`. */
export function nodeRows(nodes: NodeMessage[]): string {
  return table(['NAME', 'ADDRESS', 'ZONE', 'STATE', 'FREE', 'TOTAL', 'VERSION'], nodes.map((n) => [
    n.name, n.peerAddress || '-', n.zone || '-', n.up ? 'up' : 'down', formatBytes(n.freeBytes), formatBytes(n.totalBytes), n.version || '-',
  ]));
}

/** `cluster status`. */
export function clusterStatusText(s: ClusterStatusMessage): string {
  const v = s.volumes;
  return keyValues([
    ['Cluster', s.cluster],
    ['Store', s.store === 'embedded' ? 'embedded (single node)' : s.store],
    ['Answered by', s.nodeName],
    ['Nodes', `${s.nodes.up}/${s.nodes.total} up`],
    ['Repair leader', s.repairLeader || 'none'],
    ['Volumes', `${v.total} (${v.healthy} healthy, ${v.degraded} degraded, ${v.faulted} faulted)`],
  ]);
}

/** How many regions the mismatching ranges of a verification cover. */
export function mismatchedRegions(r: VerifyMessage): number {
  if (r.regionBytes <= 0) return r.mismatches.length;
  return r.mismatches.reduce((n, m) => n + Math.max(1, Math.ceil(m.lengthBytes / r.regionBytes)), 0);
}

/** `volume verify`: the verdict when the replicas agree, else the ranges where they differ. */
export function verifyText(r: VerifyMessage): string {
  if (r.mismatches.length === 0) {
    const lines = [`replicas of ${r.volume} agree: ${r.regionsCompared} regions of ${formatBytes(r.regionBytes)} compared`];
    if (r.replicas.length === 1) lines.push(`(only one in-sync replica, ${r.replicas[0]}: there was nothing to compare it with)`);
    if (r.replicas.length === 0) lines.push('(no in-sync replica: there was nothing to compare)');
    return lines.join('\n');
  }
  const rows = r.mismatches.map((m) => [String(m.offset), formatBytes(m.offset), formatBytes(m.lengthBytes), m.replicas.join(',')]);
  return [
    `reference replica: ${r.replicas[0] ?? '-'}; compared: ${r.replicas.join(', ')}`,
    table(['OFFSET', 'AT', 'LENGTH', 'DIFFERING REPLICAS'], rows),
  ].join('\n');
}

/** A barrier pause in microseconds: "850us", "12.4ms", "1.20s"; "-" for none (no engine served the volume). */
export function formatPause(us: number): string {
  if (!(us > 0)) return '-';
  if (us < 1000) return `${Math.round(us)}us`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(1)}ms`;
  return `${(us / 1_000_000).toFixed(2)}s`;
}

/** A snapshot's copies as present/wanted, counting copies on nodes that are up: "2/3", "1/2 (+1 on a down node)". */
export function copiesText(s: SnapshotMessage): string {
  const up = s.copies.filter((c) => c.nodeUp).length;
  const down = s.copies.length - up;
  return `${up}/${s.copiesWanted || s.copies.length}${down > 0 ? ` (+${down} on a down node)` : ''}`;
}

/** READY: "yes" once every copy is durable, else the state (creating, deleting). */
function readyText(s: SnapshotMessage): string {
  return s.readyToUse ? 'yes' : s.state === 'ready' ? 'no' : s.state;
}

/** The source volume as shown: its name when the snapshot was taken, else its id. */
function sourceText(s: SnapshotMessage): string {
  return s.sourceVolumeName || s.sourceVolumeId || '-';
}

/** `snapshot list`. */
export function snapshotRows(snapshots: SnapshotMessage[], nowMs: number): string {
  return table(['NAME', 'VOLUME', 'SIZE', 'READY', 'COPIES', 'CREATED', 'PAUSE'], snapshots.map((s) => [
    s.name, sourceText(s), formatBytes(s.sizeBytes), readyText(s), copiesText(s), formatAge(s.createdAt, nowMs), formatPause(s.pauseUs),
  ]));
}

/** `snapshot inspect`: the snapshot's facts and one row per copy. */
export function snapshotDetail(s: SnapshotMessage, nowMs: number): string {
  const head = keyValues([
    ['Name', s.name], ['ID', s.id], ['Source volume', `${sourceText(s)} (${s.sourceVolumeId || 'no id'})`],
    ['Size', `${formatBytes(s.sizeBytes)} (${s.sizeBytes} bytes)`], ['State', s.state], ['Ready to use', s.readyToUse ? 'yes' : 'no'],
    ['Copies', `${copiesText(s)} wanted ${s.copiesWanted}`], ['Created', `${s.createdAt || '-'} (${formatAge(s.createdAt, nowMs)})`],
    ['Barrier pause', formatPause(s.pauseUs)],
  ]);
  const copies = s.copies.length === 0 ? 'no copies'
    : table(['NODE', 'FROM REPLICA', 'NODE STATE'], s.copies.map((c) => [c.nodeId, c.replicaId, c.nodeUp ? 'up' : 'down']));
  return [head, '', copies, ...(s.rule ? ['', ruleOutcomeText(s.rule)] : [])].join('\n');
}

/** One line: the rule a snapshot was taken under and whether it went well. */
export function ruleOutcomeLine(r: SnapshotRuleOutcomeMessage): string {
  const failed = r.actions.filter((a) => a.status === 'failed');
  return `rule ${r.name} ${r.ok ? 'ok' : 'FAILED'} in ${r.durationMs} ms${failed.length ? ` (failed: ${failed.map((a) => `${a.action} ${a.step}`).join(', ')})` : ''}`;
}

/** The rule a snapshot was taken under: a line, then a table of its steps, then each failure's message. */
export function ruleOutcomeText(r: SnapshotRuleOutcomeMessage): string {
  const rows = r.actions.map((a) => [
    a.action, a.phase, a.kind, a.step, a.target || '-', a.status, a.exited ? String(a.exitCode) : '-', `${a.durationMs} ms`,
  ]);
  const errors = r.actions.filter((a) => a.errorMessage).map((a) => `${a.action} ${a.step}: ${a.errorCode}: ${a.errorMessage}${a.outputTail ? `\n  output: ${a.outputTail.trim().split('\n').slice(-3).join('\n  ')}` : ''}`);
  return [ruleOutcomeLine(r), table(['ACTION', 'PHASE', 'KIND', 'STEP', 'TARGET', 'STATUS', 'EXIT', 'DURATION'], rows), ...errors].join('\n');
}

/** The fill of a new volume's replicas (restore, clone): the rebuilds summed; undefined when every replica is in sync. */
export function fillProgress(v: VolumeMessage): { filling: number; progress: RebuildProgressMessage | undefined } | undefined {
  const pending = v.replicas.filter((r) => r.state !== 'in-sync');
  if (pending.length === 0) return undefined;
  const rebuilds = pending.map((r) => r.rebuild).filter((p): p is RebuildProgressMessage => p !== null && p !== undefined);
  const progress = rebuilds.length === 0 ? undefined : rebuilds.reduce((a, p) => ({
    doneBytes: a.doneBytes + p.doneBytes, totalBytes: a.totalBytes + p.totalBytes, bytesPerSecond: a.bytesPerSecond + p.bytesPerSecond,
  }), { doneBytes: 0, totalBytes: 0, bytesPerSecond: 0 });
  return { filling: pending.length, progress };
}

/** One progress line of a fill: "pgcopy: filling 2 replica(s) [####----] 20.0% ...", or the wait without a measure yet. */
export function fillLine(v: VolumeMessage): string {
  const fill = fillProgress(v);
  if (!fill) return `${v.name}: every replica in sync`;
  const what = `${v.name}: filling ${fill.filling} replica(s)`;
  return fill.progress ? `${what} ${progressBar(fill.progress)}` : `${what} (${v.health}; no progress reported yet)`;
}
