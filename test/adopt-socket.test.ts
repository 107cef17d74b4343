/**
 * shard/adopt-socket.ts: a socket transferred to a worker arrives with slow
 * (dictionary) properties; the adopted one is a normal fast object that
 * still carries the connection.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';

const ADOPT = new URL('../src/shard/adopt-socket.ts', import.meta.url).href;

test('an adopted socket has fast properties and still carries the connection', async (t) => {
  const worker = new Worker(
    `import { parentPort } from 'node:worker_threads';
     import { setFlagsFromString } from 'node:v8';
     import { adoptSocket } from ${JSON.stringify(ADOPT)};
     setFlagsFromString('--allow-natives-syntax');
     const hasFast = new Function('o', 'return %HasFastProperties(o)');
     parentPort.once('message', ({ socket }) => {
       const before = hasFast(socket);
       const adopted = adoptSocket(socket);
       parentPort.postMessage({ before, after: hasFast(adopted), remote: adopted.remoteAddress });
       adopted.on('data', (d) => adopted.end('echo:' + d));
     });`,
    { eval: true, type: 'module' } as never,
  );
  t.after(() => worker.terminate());
  const server = createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect((server.address() as AddressInfo).port, '127.0.0.1');
  t.after(() => client.destroy());
  const [socket] = await accepted;
  worker.postMessage({ socket }, [socket as never]);
  const [report] = (await once(worker, 'message')) as [{ before: boolean; after: boolean; remote: string }];
  assert.equal(report.before, false, 'Node delivers a slow-properties socket (if this changes, adoptSocket may be unnecessary)');
  assert.equal(report.after, true);
  assert.equal(report.remote, '127.0.0.1');
  client.write('ping');
  const chunks: Buffer[] = [];
  client.on('data', (c: Buffer) => chunks.push(c));
  await once(client, 'end');
  assert.equal(Buffer.concat(chunks).toString(), 'echo:ping');
});
