/**
 * moodio-rt-client/react — one hook over the client for React apps:
 *
 *   const { state, others, permission, send } = useDesktop({ url, desktopId, token });
 *
 * It connects when the component mounts (in an effect: never during render,
 * never on a server) and closes when it unmounts or when `url` (a list:
 * its contents) or `desktopId` change; the component re-renders when the state, the room or
 * the role changes. React is an optional peer dependency of the package:
 * only this entry imports it, and the core entry stays dependency-free.
 */
import { useCallback, useEffect, useRef, useState } from 'react';
import type { Permission, SessionInfo } from '../protocol/events.ts';
import { ClientError } from './errors.ts';
import { connect, type MoodioClient } from './index.ts';
import type { ClientState, ConnectOptions, EventMap, SendArgs } from './types.ts';

/** What {@link useDesktop} returns: a snapshot of the connection, and the ways to act on it. */
export interface Desktop<E extends EventMap = Record<never, never>> {
  /** The client's state: `connecting` until the first join. */
  state: ClientState;
  /** The other sessions in the room (`client.sessions`), in the order they came; the last known room while not `open`. */
  others: readonly SessionInfo[];
  /** This session's role (`client.permission`): `'viewer'` means read-only. */
  permission: Permission | null;
  /**
   * `client.send`: queued while away; a viewer's mutation throws
   * ERR_VIEWER_MUTATION. Throws ERR_CLOSED before the component mounted or
   * after it unmounted. The same function across renders.
   */
  send: <K extends string>(type: K, ...args: SendArgs<E, K>) => void;
  /** The client, for `onEvent()` in an effect, `retryNow()` and the rest; null until mounted. */
  client: MoodioClient<E> | null;
}

interface Snapshot {
  state: ClientState;
  others: readonly SessionInfo[];
  permission: Permission | null;
}

const INITIAL: Snapshot = { state: 'connecting', others: [], permission: null };

/**
 * Connect to a desktop for as long as the component is mounted. Options are
 * those of `connect()`; only `url` (a list of URLs: its contents) and
 * `desktopId` reconnect when they change. The newest `token` is used at each attempt, so an inline
 * `token: () => session.accessToken` (or an async refresh) needs no memo.
 */
export function useDesktop<E extends EventMap = Record<never, never>>(options: ConnectOptions): Desktop<E> {
  const latest = useRef(options);
  // After each commit (not during render, which may be thrown away), and before the effect below reads it.
  useEffect(() => {
    latest.current = options;
  });
  const current = useRef<MoodioClient<E> | null>(null);
  const [client, setClient] = useState<MoodioClient<E> | null>(null);
  const [snapshot, setSnapshot] = useState<Snapshot>(INITIAL);
  const { desktopId } = options;
  // A list of URLs is compared by its contents: an inline array is a new one on every render.
  const url = typeof options.url === 'string' ? options.url : Array.isArray(options.url) ? options.url.join('\n') : options.url;

  // biome-ignore lint/correctness/useExhaustiveDependencies: a new connection only for another server or desktop; the rest is read through `latest`.
  useEffect(() => {
    const { token } = latest.current;
    const c = connect<E>({
      ...latest.current,
      // Asked at each attempt: whatever token the latest render passed.
      token:
        token === undefined || token === null
          ? token
          : () => {
              const current = latest.current.token;
              return typeof current === 'function' ? current() : current;
            },
    });
    const update = () => setSnapshot({ state: c.state, others: [...c.sessions.values()], permission: c.permission });
    const offs = [c.on('state', update), c.on('presence', update), c.on('permission', update), c.on('revoked', update)];
    current.current = c;
    setClient(c);
    update();
    return () => {
      for (const off of offs) off();
      current.current = null;
      // Strict mode mounts twice in development: the first client closes cleanly.
      c.close();
      setClient(null);
      setSnapshot(INITIAL);
    };
  }, [url, desktopId]);

  const send = useCallback(<K extends string>(type: K, ...args: SendArgs<E, K>): void => {
    const c = current.current;
    if (c === null) throw new ClientError('ERR_CLOSED', 'useDesktop: not connected (the component is not mounted)');
    c.send(type, ...args);
  }, []);

  return { ...snapshot, send, client };
}
