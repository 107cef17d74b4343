/**
 * The servers a client may dial: one base URL, or every node of a fleet.
 * Each attempt takes the next URL in order, and a client given several
 * starts at a random one, so that a fleet's clients spread over its nodes
 * from their first attempt and a node's clients, sent away by its drain,
 * spread over the others. A close that sends the client away (1001, 1012)
 * is therefore answered by the next node, never the one going away.
 */
import { ClientError } from './errors.ts';

/** The `url` option: a base URL, or several (every node's). */
export type UrlOption = string | readonly string[];

/**
 * Check the `url` option once, at `connect()`: a `ws:` or `wss:` URL, or a
 * non-empty list of them, without a query or a fragment (the path of the
 * route is added to it). Returns the base URLs without their trailing `/`.
 * @throws {ClientError} ERR_INVALID_OPTION, naming `options.url` and the culprit.
 */
export function checkUrls(url: UrlOption): string[] {
  if (typeof url !== 'string' && !Array.isArray(url))
    throw new ClientError('ERR_INVALID_OPTION', `options.url must be a ws:// or wss:// URL or a list of them, not ${describe(url)}`);
  const list: readonly unknown[] = typeof url === 'string' ? [url] : url;
  if (list.length === 0) throw new ClientError('ERR_INVALID_OPTION', 'options.url is an empty list: give at least one ws:// or wss:// URL');
  return list.map((entry, i) => {
    const where = typeof url === 'string' ? 'options.url' : `options.url[${i}]`;
    if (typeof entry !== 'string') throw new ClientError('ERR_INVALID_OPTION', `${where} must be a ws:// or wss:// URL, not ${describe(entry)}`);
    let parsed: URL;
    try {
      parsed = new URL(entry);
    } catch {
      throw new ClientError('ERR_INVALID_OPTION', `${where} must be a ws:// or wss:// URL, not ${JSON.stringify(entry)}`);
    }
    if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:')
      throw new ClientError('ERR_INVALID_OPTION', `${where} must be a ws:// or wss:// URL, not ${JSON.stringify(entry)} (${parsed.protocol})`);
    // The route's path is appended: a query or fragment would end up before it.
    if (parsed.search !== '' || parsed.hash !== '')
      throw new ClientError('ERR_INVALID_OPTION', `${where} must be a base URL without a query or fragment, not ${JSON.stringify(entry)}`);
    return entry.replace(/\/+$/, '');
  });
}

function describe(value: unknown): string {
  return value === null || value === undefined
    ? String(value)
    : Array.isArray(value)
      ? 'an array'
      : typeof value === 'string'
        ? JSON.stringify(value)
        : `a ${typeof value}`;
}

/** The rotation over the checked URLs. */
export class Urls {
  readonly list: readonly string[];
  private next: number;

  /** `random` draws the first URL when there are several (one draw; none for a single URL). */
  constructor(url: UrlOption, random: () => number) {
    this.list = checkUrls(url);
    this.next = this.list.length > 1 ? Math.min(this.list.length - 1, Math.floor(random() * this.list.length)) : 0;
  }

  /** Whether there is another node to go to. */
  get several(): boolean {
    return this.list.length > 1;
  }

  /** The URL the next attempt dials. */
  get upcoming(): string {
    return this.list[this.next]!;
  }

  /** The URL of this attempt; the next one will dial the next URL. */
  take(): string {
    const url = this.list[this.next]!;
    this.next = (this.next + 1) % this.list.length;
    return url;
  }
}
