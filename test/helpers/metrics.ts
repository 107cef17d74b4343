/** Scrape and parse the server's Prometheus /metrics. */
import { rawRequest } from './client.ts';

export type Metrics = Map<string, number>;

/** GET /metrics, with `token` if given, from `localAddress` if given (see rawRequest). */
export async function scrape(port: number, token?: string, localAddress?: string): Promise<{ status: number; metrics: Metrics; text: string }> {
  const auth = token ? `Authorization: Bearer ${token}\r\n` : '';
  const res = await rawRequest(port, [`GET /metrics HTTP/1.1\r\nHost: x\r\n${auth}\r\n`], localAddress ? { localAddress } : {});
  const metrics: Metrics = new Map();
  for (const line of res.body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    metrics.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return { status: res.status, metrics, text: res.body };
}

/** Sum of every series of `name` (e.g. per-shard gauges). */
export function sumOf(metrics: Metrics, name: string): number {
  let sum = 0;
  for (const [key, value] of metrics) if (key === name || key.startsWith(`${name}{`)) sum += value;
  return sum;
}

/**
 * Scrape until `predicate` holds for the metrics (one scrape per loop turn
 * after the previous answer); rejects after `timeoutMs`, naming `what`.
 */
export async function untilMetrics(
  port: number,
  predicate: (metrics: Metrics) => boolean,
  timeoutMs: number,
  what: string,
  localAddress?: string,
): Promise<Metrics> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const { metrics } = await scrape(port, undefined, localAddress);
    if (predicate(metrics)) return metrics;
    if (performance.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}
