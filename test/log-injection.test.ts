/**
 * Strings from clients end up in logs (a close reason, say); in the pretty
 * format a newline in one must not start a line of its own that reads like a
 * server log line.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { join } from './helpers/client.ts';
import { startPermissionStub } from './helpers/permission-stub.ts';
import { desktop } from './helpers/scope.ts';
import { startServer } from './helpers/server.ts';
import { token, user } from './helpers/tokens.ts';

const PRETTY_LINE = /^\d{4}-\d\d-\d\dT[\d:.]+Z (DEBUG|INFO |WARN |ERROR) \[(primary|\d+)\] \w+/;

test('a close reason with a newline and a fake log line stays inside its session_close line (--log-format pretty)', async (t) => {
  const stub = await startPermissionStub(t);
  const server = await startServer(t, { workers: 1, permissionApiBase: stub.base, args: ['--log-format', 'pretty'] });
  const { client } = await join(t, server.wsUrl(desktop()), { token: token(user('Mal')) });
  const forged = '2026-01-01T00:00:00.000Z ERROR [primary] forged_line admin=granted';
  const reason = `bye\n${forged}\r\u2028x`;
  assert.ok(Buffer.byteLength(reason) <= 123, 'fits a close frame');
  client.ws.close(1000, reason);
  await client.closed;
  const stdout = await server.waitForStdout(/session_close .*\n/);

  const lines = stdout.split('\n').slice(0, -1);
  for (const line of lines) assert.match(line, PRETTY_LINE, 'every line is a log line the server wrote');
  const mentions = lines.filter((line) => line.includes('forged_line'));
  assert.equal(mentions.length, 1, stdout);
  assert.match(mentions[0]!, /\[0\] session_close /);
  assert.ok(mentions[0]!.includes(` reason=bye\\n${forged}\\r\\u2028x `), mentions[0]);
});
