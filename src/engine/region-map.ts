/**
 * Regions of a volume: the unit of dirty tracking, rebuild copies and checksums.
 *
 * `RegionMap` is a bitmap with one bit per region (bit r is byte r >> 3, mask 1 << (r & 7)),
 * the form the engine persists per out-of-sync replica and the rebuild sends as its
 * checkpoint. `RegionLocks` lets live I/O (shared) and the rebuild's copy and verify
 * (exclusive) of one region exclude each other, so a live write never lands on the target
 * between the rebuild reading a region from the source and writing it to the target.
 *
 * Both grow with the volume (online expansion: `grow`), keeping their regions; the region
 * size never changes, so a region keeps its index and its bit.
 */
import { Code, StorageError } from '../common/errors.js';

function regionCountFor(sizeBytes: number, regionBytes: number): number {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `volume size must be a whole number of bytes, got ${sizeBytes}`);
  }
  if (!Number.isSafeInteger(regionBytes) || regionBytes <= 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `region size must be a positive whole number of bytes, got ${regionBytes}`);
  }
  return Math.ceil(sizeBytes / regionBytes);
}

/** popcount of every byte value. */
const POPCOUNT = new Uint8Array(256);
for (let i = 1; i < 256; i++) POPCOUNT[i] = (i & 1) + POPCOUNT[i >> 1]!;

export class RegionMap {
  readonly regionBytes: number;
  private size: number;
  private regions: number;
  private bits: Buffer;
  private setCount = 0;

  /** `bits`: a saved bitmap (from `toBuffer`); INVALID_ARGUMENT when its length does not fit the volume. */
  constructor(sizeBytes: number, regionBytes: number, bits?: Buffer) {
    this.regions = regionCountFor(sizeBytes, regionBytes);
    this.size = sizeBytes;
    this.regionBytes = regionBytes;
    const length = Math.ceil(this.regionCount / 8);
    if (bits === undefined) {
      this.bits = Buffer.alloc(length);
      return;
    }
    if (bits.length !== length) {
      throw new StorageError(Code.INVALID_ARGUMENT,
        `a saved region map of ${bits.length} bytes does not fit a volume of ${sizeBytes} bytes in ${this.regionCount} regions of ${regionBytes} bytes (${length} bytes expected): the map belongs to another size; discard it and mark every region dirty`,
        { details: { sizeBytes, regionBytes, mapBytes: bits.length } });
    }
    this.bits = Buffer.from(bits);
    // Bits past the last region carry no meaning: drop them so count() stays truthful.
    const tail = this.regionCount & 7;
    if (tail !== 0) this.bits[length - 1]! &= (1 << tail) - 1;
    for (const b of this.bits) this.setCount += POPCOUNT[b]!;
  }

  static full(sizeBytes: number, regionBytes: number): RegionMap {
    const map = new RegionMap(sizeBytes, regionBytes);
    map.setAll();
    return map;
  }

  /**
   * A map saved for this volume when it was smaller (volumes only grow): its bits are kept,
   * and every region past what it surely covered is set, so that a rebuild copies the new
   * area too. The saved length only bounds the old region count to its last byte, so the
   * regions of that byte are set as well (a few regions copied more than needed, never fewer).
   */
  static grownFrom(sizeBytes: number, regionBytes: number, bits: Buffer): RegionMap {
    const map = new RegionMap(sizeBytes, regionBytes);
    const keep = Math.max(0, Math.min(bits.length, map.bits.length) - 1);
    bits.copy(map.bits, 0, 0, keep);
    map.setCount = 0;
    for (let i = 0; i < keep; i++) map.setCount += POPCOUNT[map.bits[i]!]!;
    map.setFrom(keep * 8);
    return map;
  }

  get sizeBytes(): number {
    return this.size;
  }

  get regionCount(): number {
    return this.regions;
  }

  /**
   * The volume grew to `sizeBytes` (same region size): the map covers the new regions, set
   * when `markNew` (a replica out of sync must get the new area copied), clear otherwise.
   * INVALID_ARGUMENT for a smaller size.
   */
  grow(sizeBytes: number, markNew: boolean): void {
    if (sizeBytes < this.size) {
      throw new StorageError(Code.INVALID_ARGUMENT, `a region map of ${this.size} bytes cannot shrink to ${sizeBytes}`);
    }
    const oldRegions = this.regions;
    const regions = regionCountFor(sizeBytes, this.regionBytes);
    const length = Math.ceil(regions / 8);
    if (length > this.bits.length) {
      const bits = Buffer.alloc(length);
      this.bits.copy(bits);
      this.bits = bits;
    }
    this.size = sizeBytes;
    this.regions = regions;
    // The old last region may have been shorter: it now reaches further, so it counts as new too.
    if (markNew && regions > 0) this.setFrom(Math.max(0, oldRegions - 1));
  }

  /** Sets every region from `first` to the end. */
  private setFrom(first: number): void {
    for (let r = first; r < this.regions; r++) this.set(r);
  }

  /** Sets the bits of every region that [offset, offset + lengthBytes) touches; true if any was newly set. */
  markRange(offset: number, lengthBytes: number): boolean {
    if (lengthBytes <= 0) return false;
    const [first, last] = this.regionsOf(offset, lengthBytes);
    let changed = false;
    for (let r = first; r <= last; r++) {
      const i = r >>> 3;
      const mask = 1 << (r & 7);
      const b = this.bits[i]!;
      if ((b & mask) === 0) {
        this.bits[i] = b | mask;
        this.setCount++;
        changed = true;
      }
    }
    return changed;
  }

  has(region: number): boolean {
    this.checkRegion(region);
    return (this.bits[region >>> 3]! & (1 << (region & 7))) !== 0;
  }

  set(region: number): void {
    this.checkRegion(region);
    const i = region >>> 3;
    const mask = 1 << (region & 7);
    if ((this.bits[i]! & mask) === 0) {
      this.bits[i]! |= mask;
      this.setCount++;
    }
  }

  clear(region: number): void {
    this.checkRegion(region);
    const i = region >>> 3;
    const mask = 1 << (region & 7);
    if ((this.bits[i]! & mask) !== 0) {
      this.bits[i]! &= ~mask;
      this.setCount--;
    }
  }

  /** Clears every bit (without allocating: maps are reused on the I/O path). */
  clearAll(): void {
    if (this.setCount === 0) return;
    this.bits.fill(0);
    this.setCount = 0;
  }

  setAll(): void {
    this.bits.fill(0xff);
    const tail = this.regionCount & 7;
    if (tail !== 0) this.bits[this.bits.length - 1] = (1 << tail) - 1;
    this.setCount = this.regionCount;
  }

  /** Set bits. */
  count(): number {
    return this.setCount;
  }

  /** Bytes covered by set bits (the last region may be shorter than the others). */
  dirtyBytes(): number {
    if (this.setCount === 0) return 0;
    const last = this.regionCount - 1;
    const lastLength = this.regionLength(last);
    return this.has(last) ? (this.setCount - 1) * this.regionBytes + lastLength : this.setCount * this.regionBytes;
  }

  /** The first set region at or after `from`, or -1. */
  nextSet(from: number): number {
    if (from < 0) from = 0;
    if (from >= this.regionCount || this.setCount === 0) return -1;
    let i = from >>> 3;
    let b = this.bits[i]! & (0xff << (from & 7));
    const length = this.bits.length;
    while (b === 0) {
      if (++i >= length) return -1;
      b = this.bits[i]!;
    }
    // Lowest set bit of b.
    const r = i * 8 + (31 - Math.clz32(b & -b));
    return r < this.regionCount ? r : -1;
  }

  regionOffset(r: number): number {
    this.checkRegion(r);
    return r * this.regionBytes;
  }

  regionLength(r: number): number {
    this.checkRegion(r);
    return Math.min(this.regionBytes, this.sizeBytes - r * this.regionBytes);
  }

  /** A copy of the bitmap. */
  toBuffer(): Buffer {
    return Buffer.from(this.bits);
  }

  /** First and last region of a non-empty byte range; OUT_OF_RANGE outside the volume. */
  private regionsOf(offset: number, lengthBytes: number): [number, number] {
    if (!(offset >= 0) || offset + lengthBytes > this.sizeBytes) {
      throw new StorageError(Code.OUT_OF_RANGE, `range [${offset}, ${offset + lengthBytes}) is outside the volume of ${this.sizeBytes} bytes`);
    }
    return [Math.floor(offset / this.regionBytes), Math.floor((offset + lengthBytes - 1) / this.regionBytes)];
  }

  private checkRegion(r: number): void {
    if (!Number.isInteger(r) || r < 0 || r >= this.regionCount) {
      throw new StorageError(Code.OUT_OF_RANGE, `region ${r} is outside the volume's ${this.regionCount} regions`);
    }
  }
}

interface Waiter {
  exclusive: boolean;
  first: number;
  last: number;
  grant: () => void;
}

const NOTHING_TO_RELEASE = (): void => undefined;

/**
 * Shared (live I/O) and exclusive (rebuild) holds on regions. Exclusive requests are
 * preferred: once one waits for a region, new shared holds on it wait too, so a stream of
 * live I/O cannot starve the rebuild. Exclusive holds of disjoint ranges run concurrently;
 * overlapping ones are granted in the order they were asked for.
 */
export class RegionLocks {
  readonly regionBytes: number;
  private regions: number;
  private sizeBytes: number;
  /** Shared holders per region. */
  private sharedHolds: Uint32Array;
  /** 1 where an exclusive holder has the region. */
  private exclusiveHeld: Uint8Array;
  /** Exclusive requests waiting for the region. */
  private exclusiveWaiting: Uint32Array;
  private readonly waiters: Waiter[] = [];

  constructor(sizeBytes: number, regionBytes: number) {
    this.regions = regionCountFor(sizeBytes, regionBytes);
    this.sizeBytes = sizeBytes;
    this.regionBytes = regionBytes;
    this.sharedHolds = new Uint32Array(this.regions);
    this.exclusiveHeld = new Uint8Array(this.regions);
    this.exclusiveWaiting = new Uint32Array(this.regions);
  }

  get regionCount(): number {
    return this.regions;
  }

  /** The volume grew: the new regions are free; holds and waiters on the old ones stay as they are. */
  grow(sizeBytes: number): void {
    if (sizeBytes < this.sizeBytes) throw new StorageError(Code.INVALID_ARGUMENT, `region locks of ${this.sizeBytes} bytes cannot shrink to ${sizeBytes}`);
    const regions = regionCountFor(sizeBytes, this.regionBytes);
    if (regions > this.regions) {
      const widen = <T extends Uint32Array | Uint8Array>(old: T, fresh: T): T => {
        fresh.set(old);
        return fresh;
      };
      this.sharedHolds = widen(this.sharedHolds, new Uint32Array(regions));
      this.exclusiveHeld = widen(this.exclusiveHeld, new Uint8Array(regions));
      this.exclusiveWaiting = widen(this.exclusiveWaiting, new Uint32Array(regions));
      this.regions = regions;
    }
    this.sizeBytes = sizeBytes;
  }

  /**
   * Live I/O: a shared hold on every region [offset, offset + lengthBytes) touches, at once
   * when no exclusive holder or waiter overlaps; otherwise undefined (use `shared`).
   */
  tryShared(offset: number, lengthBytes: number): (() => void) | undefined {
    if (lengthBytes <= 0) return NOTHING_TO_RELEASE;
    if (!(offset >= 0) || offset + lengthBytes > this.sizeBytes) this.regionsOf(offset, lengthBytes); // throws OUT_OF_RANGE
    const first = Math.floor(offset / this.regionBytes);
    const last = Math.floor((offset + lengthBytes - 1) / this.regionBytes);
    if (!this.sharedFree(first, last)) return undefined;
    return this.takeShared(first, last);
  }

  shared(offset: number, lengthBytes: number): Promise<() => void> {
    const now = this.tryShared(offset, lengthBytes);
    if (now) return Promise.resolve(now);
    const [first, last] = this.regionsOf(offset, lengthBytes);
    return new Promise((resolve) => {
      this.waiters.push({ exclusive: false, first, last, grant: () => resolve(this.takeShared(first, last)) });
    });
  }

  /**
   * Rebuild: an exclusive hold on regions [firstRegion, firstRegion + count). Waits until
   * every shared holder of them released; shared requests made meanwhile wait for this one.
   */
  exclusive(firstRegion: number, count: number): Promise<() => void> {
    if (!Number.isInteger(firstRegion) || !Number.isInteger(count) || count <= 0 || firstRegion < 0 || firstRegion + count > this.regionCount) {
      return Promise.reject(new StorageError(Code.OUT_OF_RANGE, `regions [${firstRegion}, ${firstRegion + count}) are outside the volume's ${this.regionCount} regions`));
    }
    const first = firstRegion;
    const last = firstRegion + count - 1;
    for (let r = first; r <= last; r++) this.exclusiveWaiting[r]!++;
    return new Promise((resolve) => {
      const waiter: Waiter = {
        exclusive: true, first, last, grant: () => {
          for (let r = first; r <= last; r++) {
            this.exclusiveWaiting[r]!--;
            this.exclusiveHeld[r] = 1;
          }
          let released = false;
          resolve(() => {
            if (released) return;
            released = true;
            for (let r = first; r <= last; r++) this.exclusiveHeld[r] = 0;
            this.wake();
          });
        },
      };
      this.waiters.push(waiter);
      this.wake();
    });
  }

  private sharedFree(first: number, last: number): boolean {
    for (let r = first; r <= last; r++) {
      if (this.exclusiveHeld[r] !== 0 || this.exclusiveWaiting[r] !== 0) return false;
    }
    return true;
  }

  private takeShared(first: number, last: number): () => void {
    for (let r = first; r <= last; r++) this.sharedHolds[r]!++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      let wakeNeeded = false;
      for (let r = first; r <= last; r++) {
        if (--this.sharedHolds[r]! === 0 && this.exclusiveWaiting[r] !== 0) wakeNeeded = true;
      }
      if (wakeNeeded) this.wake();
    };
  }

  /**
   * Grants what can be granted, in arrival order. An exclusive waiter that cannot go yet
   * keeps later exclusive waiters off its regions (first come, first served among
   * overlapping exclusives). Shared waiters go only when no exclusive holds or waits.
   */
  private wake(): void {
    if (this.waiters.length === 0) return;
    const blocked: Array<[number, number]> = [];
    const overlapsBlocked = (w: Waiter): boolean => blocked.some(([f, l]) => w.first <= l && f <= w.last);
    for (let i = 0; i < this.waiters.length;) {
      const w = this.waiters[i]!;
      let go: boolean;
      if (w.exclusive) {
        go = !overlapsBlocked(w);
        for (let r = w.first; go && r <= w.last; r++) {
          if (this.sharedHolds[r] !== 0 || this.exclusiveHeld[r] !== 0) go = false;
        }
        if (!go) blocked.push([w.first, w.last]);
      } else {
        go = this.sharedFree(w.first, w.last);
      }
      if (go) {
        this.waiters.splice(i, 1);
        w.grant();
      } else {
        i++;
      }
    }
  }

  private regionsOf(offset: number, lengthBytes: number): [number, number] {
    if (!(offset >= 0) || offset + lengthBytes > this.sizeBytes) {
      throw new StorageError(Code.OUT_OF_RANGE, `range [${offset}, ${offset + lengthBytes}) is outside the volume of ${this.sizeBytes} bytes`);
    }
    return [Math.floor(offset / this.regionBytes), Math.floor((offset + lengthBytes - 1) / this.regionBytes)];
  }
}
