/**
 * Sizes as people write them: "10GiB", "512MiB", "1TB", "4096". Binary suffixes (KiB, MiB,
 * GiB, TiB, also K/M/G/T as kubectl writes them: Ki, Mi, Gi, Ti) are powers of 1024; decimal
 * ones (kB, MB, GB, TB) powers of 1000.
 */
import { Code, StorageError } from './errors.js';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024, ki: 1024, kib: 1024,
  m: 1024 ** 2, mi: 1024 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gi: 1024 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, ti: 1024 ** 4, tib: 1024 ** 4,
  p: 1024 ** 5, pi: 1024 ** 5, pib: 1024 ** 5,
  kb: 1000, mb: 1000 ** 2, gb: 1000 ** 3, tb: 1000 ** 4, pb: 1000 ** 5,
};

export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw new StorageError(Code.INVALID_ARGUMENT, `cannot read size "${text}": write a number with an optional unit, e.g. 10GiB, 512MiB or 1TB`);
  }
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new StorageError(Code.INVALID_ARGUMENT, `size "${text}" is too large`);
  return bytes;
}

/** 10737418240 -> "10 GiB"; keeps one decimal where it matters. */
export function formatBytes(bytes: number): string {
  const names = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < names.length - 1) {
    v /= 1024;
    i++;
  }
  const text = i === 0 || Number.isInteger(v) ? String(v) : v.toFixed(1).replace(/\.0$/, '');
  return `${text} ${names[i]}`;
}

export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}
