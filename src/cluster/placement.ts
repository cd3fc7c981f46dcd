/**
 * Replica placement: a pure function from the nodes the registry reports to the nodes
 * that get a volume's new replicas.
 *
 * Rules, in order:
 * 1. Never two replicas of a volume on one node: `existing` nodes are never chosen again.
 * 2. Only nodes that are up and have at least `sizeBytes` free qualify.
 * 3. The preferred node (the consuming pod's) goes first when it qualifies.
 * 4. Spread across zones: each next replica goes to the zone holding the fewest replicas
 *    of this volume so far (counting `existing`), so distinct zones are used while there
 *    are any left; when zones are fewer than replicas, the replicas still land on distinct
 *    nodes, as evenly over the zones as the nodes allow (`zonesShared` says so). A node
 *    without a zone label counts as a zone of its own.
 * 5. Ties go to the node with the most free bytes, then the smallest name, then the
 *    smallest id: the same input always gives the same answer.
 * 6. `zones` (a StorageClass's): only nodes labelled with one of them are candidates at all.
 *
 * A request that cannot be met throws a StorageError that says why: FAILED_PRECONDITION
 * when too few nodes are up, RESOURCE_EXHAUSTED when too few of them have the space.
 */
import { Code, StorageError } from '../common/errors.js';
import type { NodeId } from '../common/ids.js';
import { formatBytes } from '../common/units.js';

export interface PlacementNode {
  nodeId: NodeId;
  name: string;
  /** The node's zone label, if it has one. */
  zone?: string;
  up: boolean;
  freeBytes: number;
}

export interface PlacementRequest {
  /** How many new replicas to place (1 or more). */
  replicas: number;
  sizeBytes: number;
  nodes: readonly PlacementNode[];
  /** Placed first when it qualifies (locality); ignored otherwise. */
  preferredNode?: NodeId;
  /**
   * The first replica must land on one of these nodes (a CSI `requisite` topology): the
   * preferred node when it is one of them, else the one of them with the most free space.
   * RESOURCE_EXHAUSTED (details.requisite) when none of them is up with room.
   */
  firstAmong?: readonly NodeId[];
  /** Nodes that already hold a replica of the volume (repair): avoided, zones counted. */
  existing?: readonly NodeId[];
  /** Only nodes in one of these zones qualify (a StorageClass `zones`); undefined: any node. */
  zones?: readonly string[];
}

export interface PlacementResult {
  /** Chosen nodes, the preferred one first when it was chosen. */
  nodeIds: NodeId[];
  /** True when some zone holds more than one replica because zones ran out. */
  zonesShared: boolean;
  /** Whether the preferred node was chosen (false when none was given). */
  preferredChosen: boolean;
}

/** A node without a zone label is a zone of its own. */
const zoneOf = (n: PlacementNode): string => (n.zone !== undefined && n.zone !== '' ? `zone:${n.zone}` : `node:${n.nodeId}`);

function byFreeThenName(a: PlacementNode, b: PlacementNode): number {
  if (a.freeBytes !== b.freeBytes) return b.freeBytes - a.freeBytes;
  if (a.name !== b.name) return a.name < b.name ? -1 : 1;
  return a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0;
}

/** Whether `n` lies in one of `zones` (every node does when `zones` is undefined). */
function inZones(n: PlacementNode, zones: readonly string[] | undefined): boolean {
  return zones === undefined || (n.zone !== undefined && zones.includes(n.zone));
}

function validate(req: PlacementRequest): void {
  if (!Number.isInteger(req.replicas) || req.replicas < 1) {
    throw new StorageError(Code.INVALID_ARGUMENT, `replicas=${req.replicas} is not valid: place at least 1 replica`);
  }
  if (!Number.isSafeInteger(req.sizeBytes) || req.sizeBytes <= 0) {
    throw new StorageError(Code.INVALID_ARGUMENT, `size ${req.sizeBytes} bytes is not valid: use a positive whole number of bytes`);
  }
  const ids = new Set<NodeId>();
  for (const n of req.nodes) {
    if (ids.has(n.nodeId)) throw new StorageError(Code.INVALID_ARGUMENT, `node ${n.nodeId} is listed twice`);
    ids.add(n.nodeId);
  }
}

/** "replicas=3" or, for a repair, "1 more replica besides 2 on n1, n2". */
function wanted(req: PlacementRequest, existing: readonly PlacementNode[], existingIds: readonly NodeId[]): string {
  if (existingIds.length === 0) return `replicas=${req.replicas}`;
  const names = existingIds.map((id) => existing.find((n) => n.nodeId === id)?.name ?? id).join(', ');
  return `${req.replicas} more replica${req.replicas === 1 ? '' : 's'} besides ${existingIds.length} on ${names}`;
}

function describe(nodes: readonly PlacementNode[]): string {
  return nodes.map((n) => `${n.name} ${formatBytes(n.freeBytes)}`).join(', ');
}

/** Throws the reason when fewer than `replicas` candidates qualify. */
function checkEnough(req: PlacementRequest, candidates: readonly PlacementNode[], eligible: readonly PlacementNode[]): void {
  const existingIds = req.existing ?? [];
  const what = wanted(req, req.nodes, existingIds);
  const others = existingIds.length > 0 ? 'other ' : '';
  const s = (k: number): string => (k === 1 ? '' : 's');
  const verb = (k: number, one: string, many: string): string => (k === 1 ? one : many);
  if (candidates.length < req.replicas) {
    const down = req.nodes.filter((n) => !n.up && inZones(n, req.zones)).map((n) => n.name);
    const where = req.zones ? ` in zone${s(req.zones.length)} ${req.zones.join(', ')}` : '';
    throw new StorageError(Code.FAILED_PRECONDITION,
      `${what} but only ${candidates.length} ${others}node${s(candidates.length)} ${verb(candidates.length, 'is', 'are')} up${where}`
      + (down.length > 0 ? ` (down: ${down.join(', ')})` : ''),
      { details: { replicas: req.replicas, up: candidates.length, down, ...(req.zones ? { zones: req.zones } : {}) } });
  }
  if (eligible.length < req.replicas) {
    const short = [...candidates].sort(byFreeThenName).filter((n) => n.freeBytes < req.sizeBytes);
    throw new StorageError(Code.RESOURCE_EXHAUSTED,
      `${what} but only ${eligible.length} ${others}node${s(eligible.length)} ${verb(eligible.length, 'has', 'have')} ${formatBytes(req.sizeBytes)} free`
      + ` (too little free: ${describe(short)})`,
      { details: { replicas: req.replicas, sizeBytes: req.sizeBytes, eligible: eligible.length } });
  }
}

export function placeReplicas(req: PlacementRequest): PlacementResult {
  validate(req);
  const existingIds = new Set(req.existing ?? []);
  const candidates = req.nodes.filter((n) => n.up && !existingIds.has(n.nodeId) && inZones(n, req.zones));
  const eligible = candidates.filter((n) => n.freeBytes >= req.sizeBytes).sort(byFreeThenName);
  checkEnough(req, candidates, eligible);

  const zoneLoad = new Map<string, number>();
  const addLoad = (n: PlacementNode): void => void zoneLoad.set(zoneOf(n), (zoneLoad.get(zoneOf(n)) ?? 0) + 1);
  for (const n of req.nodes) if (existingIds.has(n.nodeId)) addLoad(n);

  const chosen: PlacementNode[] = [];
  const allowed = req.firstAmong ? new Set(req.firstAmong) : undefined;
  const preferred = eligible.find((n) => n.nodeId === req.preferredNode && (!allowed || allowed.has(n.nodeId)))
    ?? (allowed ? eligible.find((n) => allowed.has(n.nodeId)) : undefined);
  if (allowed && !preferred) {
    throw new StorageError(Code.RESOURCE_EXHAUSTED, `none of the required nodes (${[...allowed].join(', ') || 'none'}) is up with ${formatBytes(req.sizeBytes)} free`,
      { details: { requisite: [...allowed], sizeBytes: req.sizeBytes } });
  }
  if (preferred) {
    chosen.push(preferred);
    addLoad(preferred);
  }
  let zonesShared = preferred !== undefined && (zoneLoad.get(zoneOf(preferred)) ?? 0) > 1;
  while (chosen.length < req.replicas) {
    let best: PlacementNode | undefined;
    let bestLoad = Infinity;
    for (const n of eligible) {
      if (chosen.includes(n)) continue;
      const load = zoneLoad.get(zoneOf(n)) ?? 0;
      if (load < bestLoad) { // eligible is sorted, so the first of the least-loaded zones wins ties
        best = n;
        bestLoad = load;
      }
    }
    chosen.push(best!);
    if (bestLoad > 0) zonesShared = true;
    addLoad(best!);
  }
  return { nodeIds: chosen.map((n) => n.nodeId), zonesShared, preferredChosen: preferred !== undefined && preferred.nodeId === req.preferredNode };
}

export type CapacityRequest = Pick<PlacementRequest, 'replicas' | 'nodes' | 'firstAmong' | 'zones'>;

/**
 * The largest size `placeReplicas` can place `replicas` new replicas of now (0 when it can
 * place none): each replica needs a distinct up node (in `zones`) with that much free, and
 * with `firstAmong`, one of them must be among those nodes. Placement takes the allowed node
 * with the most free first, so any size this returns is one it places.
 */
export function largestPlaceable(req: CapacityRequest): number {
  const candidates = req.nodes.filter((n) => n.up && inZones(n, req.zones)).sort(byFreeThenName);
  if (req.replicas < 1 || candidates.length < req.replicas) return 0;
  if (!req.firstAmong) return candidates[req.replicas - 1]!.freeBytes;
  const allowed = new Set(req.firstAmong);
  let best = 0;
  for (const first of candidates) {
    if (!allowed.has(first.nodeId)) continue;
    const rest = candidates.filter((n) => n !== first);
    const others = req.replicas === 1 ? Infinity : rest[req.replicas - 2]?.freeBytes ?? 0;
    best = Math.max(best, Math.min(first.freeBytes, others));
  }
  return best;
}
