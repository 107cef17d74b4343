/**
 * The SDK's own failures: one class with a stable `code`, thrown by misuse
 * (`send()` after close, a full queue, a bad option) and emitted as the
 * `error` event for what goes wrong in the background (a token that could
 * not be had). Apps test the code, not the wording.
 */

/** The codes of {@link ClientError}. */
export type ClientErrorCode =
  /** `send()` or `retryNow()` after `close()`, a refusal or a revocation. */
  | 'ERR_CLOSED'
  /** `send()` while away with `maxQueue` messages waiting. */
  | 'ERR_QUEUE_FULL'
  /** No `WebSocket` in this runtime and none passed. */
  | 'ERR_NO_WEBSOCKET'
  /** `on()` with a name that is not a lifecycle event. */
  | 'ERR_UNKNOWN_CLIENT_EVENT'
  /** An option of `connect()` is not valid; the message names it. */
  | 'ERR_INVALID_OPTION'
  /**
   * `send()` of a mutation type (`asset_moved`, …) while `permission` is
   * `viewer`: the server would drop it silently. As an `error` event: the
   * mutations queued while the role was unknown, dropped when the join named it viewer.
   */
  | 'ERR_VIEWER_MUTATION'
  /** `error` event: the `token` function threw, rejected, or answered what is not a token; the attempt is retried with backoff. */
  | 'ERR_TOKEN'
  /** `connectTopics()`: `subscribe()` of a topic that is not `desktop:{id}` or `production-table:{id}` (nothing around it). */
  | 'ERR_INVALID_TOPIC'
  /** `connectTopics()`: `subscribe()` of a 51st topic; the server holds 50 per connection. */
  | 'ERR_TOO_MANY_TOPICS'
  /** `connectTopics()`: `send()` of a type that is empty, over 64 characters, or only the server sends (`session_joined`, …). */
  | 'ERR_INVALID_TYPE'
  /** `connectTopics()`: `send()` on a topic the server refused (`topic.refusal` says why), or through a handle after its `unsubscribe()`. */
  | 'ERR_NOT_SUBSCRIBED';

export class ClientError extends Error {
  readonly code: ClientErrorCode;
  constructor(code: ClientErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ClientError';
    this.code = code;
  }
}

/** A viewer's mutation, refused: `send()` throws it, or an `error` event reports `count` dropped from the queue. */
export function viewerMutation(types: string, count = 0): ClientError {
  const what = count === 0 ? types : `${count} queued message(s) (${types})`;
  return new ClientError('ERR_VIEWER_MUTATION', `${what} not sent: this session is a viewer, and the server drops a viewer's changes`);
}
