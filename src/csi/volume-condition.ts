/**
 * A CSI VolumeCondition from a volume's view: abnormal while the volume is degraded or
 * faulted, the message naming each replica that is not in sync, its node, state and reason.
 */
import type { VolumeView } from '../cluster/volume-views.js';

export interface CsiVolumeCondition {
  abnormal: boolean;
  message: string;
}

export function volumeCondition(view: Pick<VolumeView, 'health' | 'replicas'>): CsiVolumeCondition {
  if (view.health === 'healthy') return { abnormal: false, message: 'healthy' };
  const out = view.replicas.filter((r) => r.state !== 'in-sync')
    .map((r) => `replica ${r.id} on ${r.nodeName} ${r.state}${r.reason ? ` (${r.reason})` : ''}`);
  return { abnormal: true, message: `volume is ${view.health}${out.length ? `: ${out.join('; ')}` : ''}` };
}
