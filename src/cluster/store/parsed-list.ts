/**
 * Lists the documents under a prefix and parses each: the ones that parse in `docs`, the
 * errors of the others (DATA_LOSS from the document's parser, naming its key) in
 * `unreadable`. A caller that acts on what is absent from `docs` (a collector that deletes)
 * must act on nothing while `unreadable` is not empty.
 */
import type { StorageError } from '../../common/errors.js';
import type { CallOptions, ClusterStore, KeyValue } from './cluster-store.js';

export interface ParsedList<T> {
  docs: T[];
  unreadable: StorageError[];
  /** The store's revision of the listing. */
  revision: number;
}

export async function listParsed<T>(store: ClusterStore, prefix: string, parse: (kv: KeyValue) => T, options?: CallOptions): Promise<ParsedList<T>> {
  const { items, revision } = await store.list(prefix, options);
  const docs: T[] = [];
  const unreadable: StorageError[] = [];
  for (const kv of items) {
    try {
      docs.push(parse(kv));
    } catch (err) {
      unreadable.push(err as StorageError);
    }
  }
  return { docs, unreadable, revision };
}
