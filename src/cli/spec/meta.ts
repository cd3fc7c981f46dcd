/** Names, labels and the object type shared by the pieces of `cairnctl spec`. */
import type { IConfigMap } from 'kubernetes-models/v1/ConfigMap';

/** ObjectMeta of the Kubernetes API types (kubernetes-models, types only). */
export type IObjectMeta = NonNullable<IConfigMap['metadata']>;

/** One Kubernetes object of the stream, as plain data. */
export interface SpecObject {
  apiVersion: string;
  kind: string;
  metadata?: IObjectMeta | undefined;
}

export const DRIVER_NAME = 'csi.cairn.dev';
export const NODE_NAME = 'cairn-node';
export const CONTROLLER_NAME = 'cairn-controller';
export const ETCD_NAME = 'cairn-etcd';
export const CA_BOOTSTRAP_NAME = 'cairn-peer-ca-bootstrap';
export const SCRIPTS_NAME = 'cairn-scripts';

export type Component = 'node' | 'controller' | 'etcd' | 'peer-ca' | 'driver';

export function labels(component: Component): Record<string, string> {
  return { 'app.kubernetes.io/name': 'cairn', 'app.kubernetes.io/component': component, 'app.kubernetes.io/part-of': 'cairn' };
}

/** The labels that select a component's pods (stable across versions: selectors are immutable). */
export function selector(component: Component): Record<string, string> {
  return { 'app.kubernetes.io/name': 'cairn', 'app.kubernetes.io/component': component };
}

export function meta(name: string, component: Component, namespace?: string): IObjectMeta {
  return { name, ...(namespace ? { namespace } : {}), labels: labels(component) };
}
