/**
 * The dev-mode secret file (`--dev-secret-file`, by default in the shared
 * temporary directory): `serve --dev` creates it, `moodio-rt token` reads it.
 * Whoever knows the secret can mint tokens, so the file is trusted only if it
 * is a regular file of this user that no one else can read or write, and it
 * is published atomically, never seen half written.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fstatSync, linkSync, mkdirSync, openSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { ConfigError } from '../errors.ts';

const OPTION = '--dev-secret-file';

/** Where dev mode keeps its secret unless told otherwise (`serve --dev` writes it; `token` and `loadtest` read it). */
export const DEV_SECRET_FILE = join(tmpdir(), 'moodio-rt-dev-secret');

function refuse(file: string, problem: string, fix: string): never {
  throw new ConfigError(OPTION, `${file} ${problem}; ${fix}`);
}

/**
 * The secret in `file`, or null when there is none (no dev server has run).
 * @throws {ConfigError} when the file exists but is not to be trusted.
 */
export function readDevSecret(file: string): string | null {
  let fd: number;
  try {
    // O_NOFOLLOW: a link planted at the path (say in /tmp) is refused, not followed.
    // O_NONBLOCK: a FIFO planted there cannot hang the open; fstat refuses it below.
    fd = openSync(file, constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code === 'ELOOP') refuse(file, 'is a symbolic link', 'remove it, or pass a path of your own');
    throw err;
  }
  try {
    // fstat of the open descriptor: what is checked is what is read.
    const stat = fstatSync(fd);
    if (!stat.isFile()) refuse(file, 'is not a regular file', 'remove it, or pass a path of your own');
    const uid = process.getuid?.();
    // Windows has no uid and no mode bits to check.
    if (uid !== undefined) {
      if (stat.uid !== uid)
        refuse(
          file,
          `is owned by uid ${stat.uid}, not by this user (uid ${uid}), so someone else may know the secret`,
          'remove it, or pass a path of your own',
        );
      if ((stat.mode & 0o077) !== 0) {
        refuse(
          file,
          `has mode 0${(stat.mode & 0o777).toString(8)}, so others may read or replace the secret`,
          'remove it to get a new one, or chmod 600 it if no one else could have read it',
        );
      }
    }
    const secret = readFileSync(fd, 'utf8').trim();
    if (secret === '') refuse(file, 'is empty', 'remove it to get a new one');
    return secret;
  } finally {
    closeSync(fd);
  }
}

/** Create `file` with a new secret; false when another process created it first. */
function createDevSecret(file: string, secret: string): boolean {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  // Written in full under a private name first ('wx' is O_CREAT|O_EXCL: it never follows a
  // planted link), then published with link(2), which is atomic and fails if the name
  // exists. A writer opening `file` itself with O_EXCL would leave a window where a
  // concurrent reader finds it empty.
  const temp = `${file}.${randomBytes(8).toString('hex')}.tmp`;
  writeFileSync(temp, secret + '\n', { mode: 0o600, flag: 'wx' });
  try {
    linkSync(temp, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    unlinkSync(temp);
  }
}

/**
 * The dev-mode secret: read from `file`, or generated (32 random bytes) and
 * stored there with mode 0600 so that `moodio-rt token` can mint tokens for a
 * dev server. Concurrent callers all end up with the same secret.
 * @throws {ConfigError} naming `--dev-secret-file` and the file, when it is a link or not a
 * regular file, is not this user's, is readable or writable by others, or is empty.
 */
export function loadOrCreateDevSecret(file: string): string {
  const existing = readDevSecret(file);
  if (existing !== null) return existing;
  const secret = randomBytes(32).toString('base64url');
  if (createDevSecret(file, secret)) return secret;
  // Another process published its secret first: use theirs, with the same checks.
  const theirs = readDevSecret(file);
  if (theirs === null) refuse(file, 'vanished while it was being created', 'try again');
  return theirs;
}
