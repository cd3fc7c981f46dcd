/**
 * The ConfigMap of start scripts the generated pods run from the Cairn image (sh, openssl
 * and node are in it). They do what the pod spec cannot say by itself:
 * - kube.mjs: the Kubernetes API calls the scripts make with the pod's service account: read
 *   a label of this node (its zone), and create the peer CA Secret unless it exists
 *   (CAIRN_SA_DIR overrides the service account directory, for tests).
 * - ca-bootstrap.sh: the one-shot Job that makes the cluster's peer CA (peer TLS mode
 *   `bootstrap`) unless the Secret is already there.
 * - peer-init.sh: an init container issues this pod's peer certificate from the CA, for the
 *   pod's IP and name, and records the node's zone.
 * - node-start.sh: expands the pool device glob on this node, then execs cairnd.
 */
import type { IConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { meta, SCRIPTS_NAME } from './meta.js';

export const SCRIPTS_DIR = '/opt/cairn/scripts';
/** Where peer-init.sh leaves (CAIRN_RUN_DIR overrides it, and CAIRN_CA_DIR the CA's directory, for tests) the certificate, key, CA and zone for the main container. */
export const RUN_DIR = '/run/cairn';
export const CA_MOUNT = '/etc/cairn/peer-ca';

const KUBE_MJS = `// Two calls to the Kubernetes API with the pod's service account (cairnctl spec).
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
const sa = process.env.CAIRN_SA_DIR || '/var/run/secrets/kubernetes.io/serviceaccount';
function call(method, path, body) {
  return new Promise((resolve, reject) => {
    const req = request({
      host: process.env.KUBERNETES_SERVICE_HOST, port: process.env.KUBERNETES_SERVICE_PORT, method, path, ca: readFileSync(sa + '/ca.crt'),
      headers: { authorization: 'Bearer ' + readFileSync(sa + '/token', 'utf8').trim(), 'content-type': 'application/json' },
    }, (res) => { let text = ''; res.on('data', (c) => { text += c; }); res.on('end', () => resolve({ status: res.statusCode, text })); });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}
function fail(what, r) { console.error('cairn: ' + what + ' failed (HTTP ' + r.status + '): ' + r.text.slice(0, 300)); process.exit(1); }
const [cmd, a, b, c] = process.argv.slice(2);
if (cmd === 'node-label') {
  const r = await call('GET', '/api/v1/nodes/' + encodeURIComponent(process.env.NODE_NAME));
  if (r.status !== 200) fail('reading node ' + process.env.NODE_NAME + ' (check the cairn-node ClusterRole: nodes get)', r);
  process.stdout.write(JSON.parse(r.text).metadata.labels?.[a] ?? '');
} else if (cmd === 'secret-exists') {
  const r = await call('GET', '/api/v1/namespaces/' + process.env.POD_NAMESPACE + '/secrets/' + a);
  if (r.status !== 200 && r.status !== 404) fail('reading secret ' + a, r);
  process.exit(r.status === 200 ? 0 : 3);
} else if (cmd === 'create-tls-secret') {
  const data = { 'tls.crt': readFileSync(b).toString('base64'), 'tls.key': readFileSync(c).toString('base64') };
  const r = await call('POST', '/api/v1/namespaces/' + process.env.POD_NAMESPACE + '/secrets', { apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls', metadata: { name: a }, data });
  if (r.status !== 201 && r.status !== 409) fail('creating secret ' + a, r);
} else {
  console.error('usage: kube.mjs node-label <label> | secret-exists <name> | create-tls-secret <name> <crt> <key>');
  process.exit(2);
}
`;

const CA_BOOTSTRAP_SH = `set -eu
# Makes the peer CA once: a Secret that already exists is kept (a rerun changes nothing).
if node "$(dirname "$0")/kube.mjs" secret-exists "$CA_SECRET"; then echo "cairn: peer CA secret $CA_SECRET exists; keeping it"; exit 0; fi
dir=$(mktemp -d)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -sha256 \\
  -subj "/CN=cairn-peer-ca/O=$POD_NAMESPACE" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \\
  -keyout "$dir/tls.key" -out "$dir/tls.crt"
node "$(dirname "$0")/kube.mjs" create-tls-secret "$CA_SECRET" "$dir/tls.crt" "$dir/tls.key"
rm -rf "$dir"
echo "cairn: peer CA secret $CA_SECRET created"
`;

const PEER_INIT_SH = `set -eu
# Issues this pod's peer certificate (for its IP and name) from the CA, and records the zone.
out=\${CAIRN_RUN_DIR:-${RUN_DIR}}
ca=\${CAIRN_CA_DIR:-${CA_MOUNT}}
mkdir -p "$out"
zone=""
if [ -n "\${ZONE_LABEL:-}" ]; then zone=$(node "$(dirname "$0")/kube.mjs" node-label "$ZONE_LABEL"); fi
printf '%s' "$zone" > "$out/zone"
if [ "$PEER_TLS" = insecure ]; then exit 0; fi
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$CERT_NAME" -keyout "$out/peer.key" -out "$out/peer.csr"
printf 'subjectAltName=IP:%s,DNS:%s\\nextendedKeyUsage=serverAuth,clientAuth\\nbasicConstraints=CA:FALSE\\n' "$POD_IP" "$CERT_NAME" > "$out/peer.ext"
openssl x509 -req -in "$out/peer.csr" -CA "$ca/tls.crt" -CAkey "$ca/tls.key" -set_serial "0x$(openssl rand -hex 16)" \\
  -days 365 -sha256 -extfile "$out/peer.ext" -out "$out/peer.crt"
cp "$ca/tls.crt" "$out/ca.crt"
rm -f "$out/peer.csr" "$out/peer.ext"
chmod 600 "$out/peer.key"
`;

const NODE_START_SH = `set -eu
# Starts cairnd: the zone peer-init.sh found, and the pool devices the glob matches here.
zone=$(cat "\${CAIRN_RUN_DIR:-${RUN_DIR}}/zone" 2>/dev/null || true)
if [ -n "$zone" ]; then export CAIRN_ZONE="$zone"; fi
if [ -n "\${POOL_DEVICE_GLOB:-}" ]; then
  devices=""
  for d in $POOL_DEVICE_GLOB; do
    if [ -b "$d" ]; then devices="\${devices:+$devices,}$d"; fi
  done
  if [ -z "$devices" ]; then
    echo "cairn: no block device on this node matches the pool glob $POOL_DEVICE_GLOB: fix --pool-device-glob, or keep this node out with --node-selector" >&2
    exit 1
  fi
  export CAIRN_POOL_DEVICES="$devices"
fi
exec cairnd "$@"
`;

export function scriptsConfigMap(namespace: string): IConfigMap {
  return {
    apiVersion: 'v1', kind: 'ConfigMap', metadata: meta(SCRIPTS_NAME, 'driver', namespace),
    data: { 'kube.mjs': KUBE_MJS, 'ca-bootstrap.sh': CA_BOOTSTRAP_SH, 'peer-init.sh': PEER_INIT_SH, 'node-start.sh': NODE_START_SH },
  };
}
