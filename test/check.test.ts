/**
 * `/check` (issue 20), answered by the primary: the region probe a page of
 * any origin may read. CORS headers on every answer, the region from
 * `--region` and nothing else.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CHECK_PATH } from '../src/protocol/paths.ts';
import { rawRequest, type RawResponse } from './helpers/client.ts';
import { startServer } from './helpers/server.ts';

const ORIGIN = 'https://app.moodio.example';

function request(port: number, method: string, headers: Record<string, string> = {}): Promise<RawResponse> {
  const lines = Object.entries({ Host: '127.0.0.1', ...headers })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('');
  return rawRequest(port, [`${method} ${CHECK_PATH} HTTP/1.1\r\n${lines}\r\n`]);
}

function assertCors(res: RawResponse, origin: string | undefined): void {
  assert.equal(res.headers['access-control-allow-origin'], origin);
  assert.equal(res.headers['access-control-allow-methods'], 'GET, OPTIONS');
  assert.equal(res.headers['access-control-allow-headers'], 'Content-Type');
  assert.equal(res.headers.vary, 'Origin');
  assert.equal(res.headers['access-control-allow-credentials'], undefined, 'never with credentials');
}

test('GET answers 200 {"status":"ok","region":R} with R from --region, and the Origin reflected', async (t) => {
  const server = await startServer(t, { workers: 1, args: ['--region', 'eu-west-3'] });
  const res = await request(server.port, 'GET', { Origin: ORIGIN });
  assert.equal(res.status, 200);
  assert.match(res.headers['content-type']!, /^application\/json/);
  assert.equal(res.body, '{"status":"ok","region":"eu-west-3"}');
  assertCors(res, ORIGIN);

  // Any origin, reflected as sent: the answer is public.
  const other = await request(server.port, 'GET', { Origin: 'http://localhost:3000' });
  assert.equal(other.status, 200);
  assertCors(other, 'http://localhost:3000');
  // A query string is the same path.
  const query = await rawRequest(server.port, [`GET ${CHECK_PATH}?t=1 HTTP/1.1\r\nHost: x\r\n\r\n`]);
  assert.equal(query.body, '{"status":"ok","region":"eu-west-3"}');
});

test('OPTIONS (a preflight) answers 204 with the CORS headers and no body; other methods 405 with Allow and CORS', async (t) => {
  const server = await startServer(t, { workers: 1, env: { REGION_ID: 'us-east-1' } });
  const preflight = await request(server.port, 'OPTIONS', {
    Origin: ORIGIN,
    'Access-Control-Request-Method': 'GET',
    'Access-Control-Request-Headers': 'content-type',
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.body, '');
  assert.equal(preflight.headers['content-length'], undefined, 'a 204 does not say how long it is');
  assertCors(preflight, ORIGIN);

  for (const method of ['POST', 'PUT', 'DELETE', 'HEAD']) {
    const res = await request(server.port, method, { Origin: ORIGIN, 'Content-Length': '0' });
    assert.equal(res.status, 405, method);
    assert.equal(res.headers.allow, 'GET, OPTIONS', method);
    assertCors(res, ORIGIN);
  }
  // The region came from REGION_ID, the option's environment variable.
  assert.equal((await request(server.port, 'GET')).body, '{"status":"ok","region":"us-east-1"}');
});

test('without --region the region is "", and without Origin no Allow-Origin is sent', async (t) => {
  const server = await startServer(t, { workers: 1, env: { REGION_ID: undefined } });
  const res = await request(server.port, 'GET');
  assert.equal(res.status, 200);
  assert.equal(res.body, '{"status":"ok","region":""}');
  assertCors(res, undefined);
});
