/**
 * Bad peer input: garbage frames, oversized batches and frames, unknown replicas and
 * volumes, out-of-range offsets, peers without a valid certificate. Each gets its exact
 * refusal; the server stays up and a good stream opened before keeps working.
 */
import anyTest, { type TestFn } from 'ava';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { Code } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/log.js';
import { connect } from '../../src/replica/replica-client.js';
import { replicaServiceConstructor } from '../../src/replica/replica-wire.js';
import type { PeerTlsFiles } from '../../src/rpc/tls.js';
import { codeOf, filled, startReplicaNode, type ReplicaNode } from '../helpers/replica-fixture.js';
import { rawIo } from '../helpers/replica-raw.js';
import { makeTestPki, type TestPki } from '../helpers/tls.js';

interface Ctx { pki: TestPki; node: ReplicaNode; clientTls: PeerTlsFiles }
const test = anyTest as TestFn<Ctx>;
const MiB = 1 << 20;
const log = silentLogger();
const ref = { replicaId: 'rep-good', volumeId: 'vol-good' };

test.before(async (t) => {
  const pki = await makeTestPki();
  const node = await startReplicaNode(await pki.node('node-a'), { maxBatchRequests: 64, maxBatchBytes: MiB, maxFrameBytes: 2 * MiB });
  t.context = { pki, node, clientTls: await pki.node('engine-b') };
  await node.fx.manager.create(ref, 4 * MiB, 3, true);
});
test.after.always(async (t) => {
  await t.context.node?.cleanup();
  t.context.pki?.cleanup();
});


test('bad input gets exact refusals while a good stream keeps working', async (t) => {
  const c = connect(t.context.node.address, t.context.clientTls, { log, deadlineMs: 10_000 });
  t.teardown(() => c.close());
  const good = c.openIoStream(ref, 3, { maxBatchRequests: 64 });
  await good.write(0, filled(4096, 0x5a));

  const garbage = await rawIo(c, [Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x34])]);
  t.is(garbage.code, grpc.status.INVALID_ARGUMENT);
  t.regex(garbage.details, /malformed IoBatch frame/);

  const noReplica = await rawIo(c, [{ replica: null, epoch: 3, requests: [] }]);
  t.is(noReplica.code, grpc.status.INVALID_ARGUMENT);
  t.regex(noReplica.details, /must name the replica/);

  const frameOver = await rawIo(c, [{ replica: ref, epoch: 3, requests: [{ seq: 1, op: 'IO_OP_WRITE', offset: 0, lengthBytes: 0, data: Buffer.alloc(3 * MiB), fua: false, mayTrim: false }] }]);
  t.is(frameOver.code, grpc.status.RESOURCE_EXHAUSTED);

  const switching = await rawIo(c, [{ replica: ref, epoch: 3, requests: [] }, { replica: { replicaId: 'rep-other', volumeId: 'vol-good' }, epoch: 3, requests: [] }]);
  t.is(switching.code, grpc.status.INVALID_ARGUMENT);

  const unknownReplica = c.openIoStream({ replicaId: 'rep-nope', volumeId: 'vol-good' }, 3);
  t.is(await codeOf(unknownReplica.ready), Code.NOT_FOUND);
  t.is(await codeOf(unknownReplica.write(0, filled(512, 1))), Code.NOT_FOUND);
  const unknownVolume = c.openIoStream({ replicaId: 'rep-good', volumeId: 'vol-nope' }, 3);
  t.is(await codeOf(unknownVolume.ready), Code.NOT_FOUND);

  // Per-request refusals on a stream that stays open.
  const probe = c.openIoStream(ref, 3, { maxBatchRequests: 1000 });
  t.is(await codeOf(probe.write(4 * MiB - 512, filled(1024, 1))), Code.OUT_OF_RANGE);
  t.is(await codeOf(probe.read(4 * MiB, 4096)), Code.OUT_OF_RANGE);
  t.is(await codeOf(probe.trim(0, 0)), Code.INVALID_ARGUMENT);
  const tooMany = Array.from({ length: 100 }, () => codeOf(probe.flush()));
  t.deepEqual(new Set(await Promise.all(tooMany)), new Set([Code.RESOURCE_EXHAUSTED]), 'a batch of 100 requests is over the limit of 64');
  const tooBig = await rawIo(c, [{ replica: ref, epoch: 3, requests: [
    { seq: 1, op: 'IO_OP_READ', offset: 0, lengthBytes: MiB, data: Buffer.alloc(0), fua: false, mayTrim: false },
    { seq: 2, op: 'IO_OP_READ', offset: MiB, lengthBytes: 4096, data: Buffer.alloc(0), fua: false, mayTrim: false },
    { seq: 3, op: 99 as never, offset: 0, lengthBytes: 4096, data: Buffer.alloc(0), fua: false, mayTrim: false },
  ] }]);
  t.is(tooBig.code, grpc.status.OK);
  t.deepEqual(tooBig.replies.flatMap((b) => b.replies.map((r) => r.status?.code)), [Code.RESOURCE_EXHAUSTED, Code.RESOURCE_EXHAUSTED, Code.RESOURCE_EXHAUSTED]);
  t.regex(tooBig.replies[0]!.replies[0]!.status!.message, /exceeds the limit of 64 requests and 1048576 bytes per batch/);
  const unknownOp = await rawIo(c, [{ replica: ref, epoch: 3, requests: [{ seq: 9, op: 99 as never, offset: 0, lengthBytes: 1, data: Buffer.alloc(0), fua: false, mayTrim: false }] }]);
  t.deepEqual(unknownOp.replies.flatMap((b) => b.replies.map((r) => [r.seq, r.status?.code])), [[9, Code.INVALID_ARGUMENT]]);
  t.true((await probe.read(0, 4096)).equals(filled(4096, 0x5a)), 'the probing stream still works');

  // The good stream opened first saw none of it.
  await good.write(4096, filled(4096, 0x5b));
  t.true((await good.read(0, 8192)).equals(Buffer.concat([filled(4096, 0x5a), filled(4096, 0x5b)])));
  await Promise.all([good.end(), probe.end()]);
});

test('mutual TLS: peers without a certificate the CA signed are refused', async (t) => {
  const address = t.context.node.address;
  const Ctor = replicaServiceConstructor();
  const ca = readFileSync(t.context.pki.caFile);
  const statusOf = (creds: grpc.ChannelCredentials): Promise<grpc.status> => new Promise((resolve) => {
    const raw = new Ctor(address, creds);
    (raw as unknown as { ListReplicas: (req: object, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null) => void) => void })
      .ListReplicas({}, { deadline: Date.now() + 5000 }, (err) => {
        raw.close();
        resolve(err ? err.code : grpc.status.OK);
      });
  });
  t.is(await statusOf(grpc.credentials.createInsecure()), grpc.status.UNAVAILABLE, 'plaintext');
  t.is(await statusOf(grpc.credentials.createSsl(ca)), grpc.status.UNAVAILABLE, 'TLS without a client certificate');
  const rogue = await t.context.pki.rogue('intruder');
  t.is(await statusOf(grpc.credentials.createSsl(ca, readFileSync(rogue.keyFile), readFileSync(rogue.certFile))), grpc.status.UNAVAILABLE,
    'a certificate from another CA');
  t.is(await statusOf(grpc.credentials.createSsl(ca, readFileSync(t.context.clientTls.keyFile), readFileSync(t.context.clientTls.certFile))), grpc.status.OK,
    'a certificate our CA signed');
  // Our own client refuses to start with a certificate the CA did not sign.
  t.throws(() => connect(address, rogue, { log }), { message: /is not signed by the CA/ });
});
