/**
 * Staging a volume on this node (what CSI NodeStageVolume / NodeUnstageVolume do): export
 * it (its engine starts here), attach a kernel block device to the export, then for a
 * filesystem volume format it only when blank, check the type of an existing filesystem
 * (a mismatch is an error, never a reformat) and mount it at the staging path.
 *
 * - One volume's calls run one after another (a per-volume lock held across the whole
 *   sequence); `isBusy` lets the CSI edge answer ABORTED instead of waiting.
 * - The node store records each staging before it starts (`staging`), when it is complete
 *   (`staged`) and while it is undone (`unstaging`, then deleted): a crash anywhere is
 *   finished by the next call or by `recover` at start.
 * - A failure midway undoes what this call made, in reverse (unmount, detach, unexport).
 * - Idempotent: the same stage again returns the staging as it is; other arguments are
 *   ALREADY_EXISTS. Unstage of what is not staged succeeds.
 * - `recover` after a cairnd restart serves each staged volume again and takes its kernel
 *   device back (see kernel-attach.ts for what survives on each attach path).
 * - `expand` (NodeExpandVolume) grows a staged volume's kernel device to the size its
 *   export serves, then its filesystem online.
 *
 * The engine layer cannot import the cluster layer, so the export is reached through
 * `VolumeExporter`, which the daemon wires to the volume service.
 */
import { stat } from 'node:fs/promises';
import { abortable } from '../common/abort.js';
import { Code, StorageError, fromNodeError } from '../common/errors.js';
import type { VolumeId } from '../common/ids.js';
import { KeyedLock } from '../common/keyed-lock.js';
import type { Logger } from '../common/log.js';
import type { StagedVolumeRecord } from '../store/staged-volume-record.js';
import type { AttachMethod, Attachment, KernelAttacher } from './kernel-attach.js';
import { deviceNumber, detectContent, findMount, growFilesystem, makeFilesystem, mount, unmount, type FsType } from './mounter.js';
import { exportSizeBytes, isExportUnreachable } from './nbd-kernel-device.js';

/** Starts and stops serving a volume on this node (the daemon wires the volume service). */
export interface VolumeExporter {
  /**
   * Serves the volume here (its engine runs here from then on); idempotent. `readOnly`: a
   * read-only export, or a reader next to another node's read-only engine (a staging of a
   * volume every node has read-only).
   */
  export(volume: string, signal?: AbortSignal, options?: { readOnly?: boolean }): Promise<{ socketPath: string; volumeId?: VolumeId }>;
  /** Stops serving it here; not an error when it is not served. */
  unexport(volume: string): Promise<void>;
}

/** The node store's calls for staged volumes (NodeStore has them). */
export interface StagedVolumeStore {
  getStagedVolume(volume: string): StagedVolumeRecord | undefined;
  listStagedVolumes(): StagedVolumeRecord[];
  putStagedVolume(record: StagedVolumeRecord): void;
  deleteStagedVolume(volume: string): void;
}

export type StageAccess = { block: true } | { block?: false; fsType: FsType; mountFlags?: readonly string[] };

export interface StageRequest {
  stagingPath: string;
  access: StageAccess;
  readonly?: boolean;
  signal?: AbortSignal;
}

export interface StageResult {
  devicePath: string;
  method: AttachMethod;
  stagingPath: string;
  /** The filesystem mounted at the staging path; undefined for a block volume. */
  fsType?: string;
}

export interface ExpandRequest {
  /** The size the device must reach at least; the export may serve more, and the device gets it all. */
  requiredBytes: number;
  /** Bounds the wait for the engine to serve that size (it follows the volume's document). */
  signal: AbortSignal;
}

/** How often `expand` asks the export for its size while the engine has not grown yet. */
const EXPORT_SIZE_POLL_MS = 100;

export interface StagerOptions {
  store: StagedVolumeStore;
  exporter: VolumeExporter;
  attacher: KernelAttacher;
  log: Logger;
}

function checkAborted(signal: AbortSignal | undefined, volume: string): void {
  if (signal?.aborted) throw new StorageError(Code.CANCELLED, `staging volume "${volume}" was cancelled`, { cause: signal.reason, details: { volume } });
}

function sameRequest(a: StagedVolumeRecord, b: StagedVolumeRecord): boolean {
  return a.stagingPath === b.stagingPath && a.accessType === b.accessType && a.fsType === b.fsType && a.readonly === b.readonly
    && JSON.stringify(a.mountFlags) === JSON.stringify(b.mountFlags);
}

function attachmentOf(r: StagedVolumeRecord): Attachment | undefined {
  if (!r.devicePath) return undefined;
  const fuse = r.attachState.fuse as { dir: string; pid: number } | undefined;
  return { name: r.volume, devicePath: r.devicePath, method: r.attachMethod as AttachMethod, socketPath: String(r.attachState.socketPath ?? ''), ...(fuse ? { fuse } : {}) };
}

function resultOf(r: StagedVolumeRecord): StageResult {
  return { devicePath: r.devicePath, method: r.attachMethod as AttachMethod, stagingPath: r.stagingPath, ...(r.accessType === 'mount' ? { fsType: r.fsType } : {}) };
}

export class Stager {
  private readonly locks = new KeyedLock();

  constructor(private readonly opts: StagerOptions) {}

  /** Whether a call on `volume` is running (the CSI edge answers ABORTED). */
  isBusy(volume: string): boolean {
    return this.locks.isBusy(volume);
  }

  /** The record of a staged (or half-staged) volume. */
  get(volume: string): StagedVolumeRecord | undefined {
    return this.opts.store.getStagedVolume(volume);
  }

  stage(volume: string, request: StageRequest): Promise<StageResult> {
    return this.locks.run(volume, async () => {
      const wanted = this.recordFor(volume, request);
      const existing = this.opts.store.getStagedVolume(volume);
      if (existing) {
        if (!sameRequest(existing, wanted)) {
          throw new StorageError(Code.ALREADY_EXISTS,
            `volume "${volume}" is already staged at ${existing.stagingPath} with other arguments (${existing.accessType} ${existing.fsType}${existing.readonly ? ' read-only' : ''}): unstage it first`,
            { details: { volume, stagingPath: existing.stagingPath } });
        }
        if (existing.state === 'staged' && await this.intact(existing)) return resultOf(existing);
        this.opts.log.info({ volume, state: existing.state }, 'finishing an earlier staging that did not complete: undoing it first');
        await this.undo(existing);
        this.opts.store.deleteStagedVolume(volume);
      }
      await this.checkStagingPath(volume, request);
      checkAborted(request.signal, volume);
      this.opts.store.putStagedVolume(wanted);
      return this.doStage(wanted, request.signal);
    });
  }

  /** Undoes a staging; not an error when `volume` is not staged (twice, after a reboot). */
  unstage(volume: string, stagingPath: string): Promise<void> {
    return this.locks.run(volume, async () => {
      const record = this.opts.store.getStagedVolume(volume);
      if (!record) return;
      if (record.stagingPath !== stagingPath) {
        throw new StorageError(Code.FAILED_PRECONDITION, `volume "${volume}" is staged at ${record.stagingPath}, not at ${stagingPath}`,
          { details: { volume, stagingPath: record.stagingPath } });
      }
      this.opts.store.putStagedVolume({ ...record, state: 'unstaging', updatedAt: new Date().toISOString() });
      await this.undo(record);
      this.opts.store.deleteStagedVolume(volume);
      this.opts.log.info({ volume, stagingPath }, 'volume unstaged');
    });
  }

  /**
   * Grows staged volume `volume` online: waits until its export serves at least
   * `requiredBytes` (the engine grows when the volume's document does), grows the kernel
   * device to the export's size, then a mounted filesystem (resize2fs, xfs_growfs).
   * Repeating it is harmless. FAILED_PRECONDITION when the volume is not staged here, its
   * device is gone, or its filesystem is mounted read-only.
   */
  expand(volume: string, request: ExpandRequest): Promise<{ capacityBytes: number }> {
    return this.locks.run(volume, async () => {
      const record = this.opts.store.getStagedVolume(volume);
      const attachment = this.opts.attacher.get(volume);
      if (!record || record.state !== 'staged' || !attachment) {
        throw new StorageError(Code.FAILED_PRECONDITION, `volume "${volume}" is not staged on this node${record ? ' (its staging is incomplete or its device is gone)' : ''}: call NodeStageVolume first`,
          { details: { volume, state: record?.state ?? null } });
      }
      if (record.accessType === 'mount' && record.readonly) {
        throw new StorageError(Code.FAILED_PRECONDITION, `volume "${volume}" is staged read-only: its filesystem cannot grow until it is staged writable`, { details: { volume } });
      }
      const exportBytes = await this.servedSize(volume, attachment.socketPath, request);
      const capacityBytes = await this.opts.attacher.resize(volume, exportBytes);
      if (record.accessType === 'mount') await growFilesystem(record.devicePath, record.stagingPath, record.fsType, request.signal);
      this.opts.log.info({ volume, device: record.devicePath, sizeBytes: capacityBytes, fsType: record.fsType || undefined }, 'staged volume grown');
      return { capacityBytes };
    });
  }

  /** The export's size once it is at least `requiredBytes`, asked again every 100 ms until `signal` fires. */
  private async servedSize(volume: string, socketPath: string, { requiredBytes, signal }: ExpandRequest): Promise<number> {
    const what = `waiting for volume "${volume}" to be served at ${requiredBytes} bytes on this node`;
    for (;;) {
      const bytes = await abortable(exportSizeBytes(socketPath, volume), signal, what).catch((err: unknown) => {
        if (!isExportUnreachable(err)) throw err;
        throw new StorageError(Code.UNAVAILABLE, `volume "${volume}" is staged but not served on this node (cairnd still recovering it?): retry`, { cause: err, details: { volume } });
      });
      if (bytes >= requiredBytes) return bytes;
      await abortable(new Promise((r) => setTimeout(r, EXPORT_SIZE_POLL_MS)), signal, what);
    }
  }

  /**
   * At start: every staged volume is served again and its kernel device taken back, so a
   * mounted filesystem sees a pause. Stagings and unstagings a crash interrupted are undone
   * (kubelet repeats the call). A volume whose device is gone (a reboot) is left recorded
   * for NodeStageVolume to stage again or NodeUnstageVolume to clear.
   */
  async recover(): Promise<void> {
    for (const record of this.opts.store.listStagedVolumes()) {
      await this.locks.run(record.volume, () => this.recoverOne(record))
        .catch((err: unknown) => this.opts.log.error({ volume: record.volume, err }, 'staged volume could not be recovered'));
    }
  }

  private async recoverOne(record: StagedVolumeRecord): Promise<void> {
    const { volume } = record;
    if (record.state !== 'staged') {
      await this.undo(record);
      this.opts.store.deleteStagedVolume(volume);
      this.opts.log.info({ volume, state: record.state }, 'interrupted staging undone after restart');
      return;
    }
    const attachment = attachmentOf(record);
    const lost = (): void => this.opts.log.warn({ volume, device: record.devicePath }, 'staged volume lost its kernel device (a reboot?): it is staged again or cleared by the next call');
    if (!attachment || !this.opts.attacher.present(attachment)) return lost();
    // Served before the device is taken back: a /dev/nbdX reconnects through the export's handshake.
    const { socketPath } = await this.opts.exporter.export(volume, undefined, { readOnly: record.readonly });
    if (!(await this.opts.attacher.adopt({ ...attachment, socketPath }))) return lost();
    this.opts.log.info({ volume, device: record.devicePath, method: record.attachMethod }, 'staged volume served again after restart');
  }

  private recordFor(volume: string, request: StageRequest): StagedVolumeRecord {
    const mountAccess = request.access.block ? undefined : request.access;
    return {
      volume, volumeId: '' as VolumeId, stagingPath: request.stagingPath, accessType: mountAccess ? 'mount' : 'block',
      fsType: mountAccess?.fsType ?? '', mountFlags: [...(mountAccess?.mountFlags ?? [])], readonly: Boolean(request.readonly),
      devicePath: '', attachMethod: '', attachState: {}, state: 'staging', updatedAt: new Date().toISOString(),
    };
  }

  /** The staging path must exist and be a directory with nothing mounted on it yet. */
  private async checkStagingPath(volume: string, request: StageRequest): Promise<void> {
    const s = await stat(request.stagingPath).catch((err: unknown) => {
      throw fromNodeError(err, `staging path ${request.stagingPath} does not exist`, { volume, stagingPath: request.stagingPath });
    });
    if (!s.isDirectory()) {
      throw new StorageError(Code.FAILED_PRECONDITION, `staging path ${request.stagingPath} is not a directory`, { details: { volume, stagingPath: request.stagingPath } });
    }
    if (!request.access.block && await findMount(request.stagingPath)) {
      throw new StorageError(Code.FAILED_PRECONDITION, `something else is mounted at staging path ${request.stagingPath}`, { details: { volume, stagingPath: request.stagingPath } });
    }
  }

  private async doStage(initial: StagedVolumeRecord, signal: AbortSignal | undefined): Promise<StageResult> {
    const { volume } = initial;
    let record = initial;
    const undo: (() => Promise<void>)[] = [];
    const save = (patch: Partial<StagedVolumeRecord>): void => {
      record = { ...record, ...patch, updatedAt: new Date().toISOString() };
      this.opts.store.putStagedVolume(record);
    };
    try {
      const exported = await this.opts.exporter.export(volume, signal, { readOnly: record.readonly });
      undo.push(() => this.opts.exporter.unexport(volume));
      checkAborted(signal, volume);
      const a = await this.opts.attacher.attach(volume, exported.socketPath);
      undo.push(() => this.opts.attacher.detach(volume));
      save({ volumeId: exported.volumeId ?? record.volumeId, devicePath: a.devicePath, attachMethod: a.method,
        attachState: { socketPath: a.socketPath, ...(a.fuse ? { fuse: a.fuse } : {}) } });
      if (record.accessType === 'mount') {
        await this.prepareFilesystem(record, signal);
        await mount(a.devicePath, record.stagingPath, { fsType: record.fsType, flags: stageMountFlags(record.fsType, record.mountFlags), readonly: record.readonly, ...(signal ? { signal } : {}) });
        undo.push(() => unmount(record.stagingPath));
      }
      save({ state: 'staged' });
      this.opts.log.info({ volume, device: a.devicePath, method: a.method, stagingPath: record.stagingPath, fsType: record.fsType || undefined }, 'volume staged');
      return resultOf(record);
    } catch (err) {
      for (const step of undo.reverse()) {
        await step().catch((e: unknown) => this.opts.log.error({ volume, err: e }, 'undoing a failed staging step failed'));
      }
      this.opts.store.deleteStagedVolume(volume);
      throw err;
    }
  }

  /** Formats a blank device; an existing filesystem must be of the requested type. */
  private async prepareFilesystem(record: StagedVolumeRecord, signal: AbortSignal | undefined): Promise<void> {
    const { volume, devicePath, fsType } = record;
    const content = await detectContent(devicePath, signal);
    if (content.fsType === fsType) return;
    if (content.fsType || content.partitionTable) {
      throw new StorageError(Code.FAILED_PRECONDITION,
        `volume "${volume}" holds ${content.fsType ?? `a ${content.partitionTable} partition table`}, not ${fsType}: it is never reformatted`,
        { details: { volume, fsType: content.fsType ?? null, requested: fsType } });
    }
    if (record.readonly) {
      throw new StorageError(Code.FAILED_PRECONDITION, `volume "${volume}" has no filesystem and is staged read-only: it cannot be formatted`, { details: { volume } });
    }
    checkAborted(signal, volume);
    await makeFilesystem(devicePath, fsType as FsType, signal);
    this.opts.log.info({ volume, device: devicePath, fsType }, 'filesystem made on a blank volume');
  }

  /** Whether a staged record's pieces are all still there (device attached, filesystem mounted on it). */
  private async intact(record: StagedVolumeRecord): Promise<boolean> {
    const attachment = attachmentOf(record);
    if (!attachment || !(this.opts.attacher.get(record.volume) || await this.opts.attacher.adopt(attachment))) return false;
    if (record.accessType === 'block') return true;
    const m = await findMount(record.stagingPath);
    return m !== undefined && m.device === await deviceNumber(record.devicePath).catch(() => '');
  }

  /** Undoes a staging as far as it got: unmount, detach, unexport. Each step tolerates what is already gone. */
  private async undo(record: StagedVolumeRecord): Promise<void> {
    if (record.accessType === 'mount') await unmount(record.stagingPath);
    const attachment = attachmentOf(record);
    if (attachment) await this.opts.attacher.detach(record.volume, attachment);
    await this.opts.exporter.unexport(record.volume).catch((err: unknown) => {
      if (!(err instanceof StorageError && err.code === Code.NOT_FOUND)) throw err;
    });
  }
}

/**
 * The mount options a staging mount uses. xfs always gets `nouuid`: a volume restored or
 * cloned from a snapshot carries its source's filesystem UUID, and xfs refuses to mount a
 * second filesystem with a UUID already mounted ("duplicate UUID"), so a restore staged on
 * the node that has its source mounted would fail. nouuid only skips that check.
 */
export function stageMountFlags(fsType: string, flags: readonly string[]): string[] {
  return fsType === 'xfs' && !flags.includes('nouuid') ? [...flags, 'nouuid'] : [...flags];
}
