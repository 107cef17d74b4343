/**
 * The Node version moodio-rt needs, checked before anything else loads.
 *
 * npm checks `engines` against the Node that runs npm, which on a fresh
 * machine is the system's (often 20), while this project's code runs on the
 * Node 26 it brings (the `node` package, in node_modules/.bin). So the
 * requirement is not an `engines` field, which warned on every install, but
 * this check, made by the binary that actually runs the code.
 *
 * Plain JavaScript, so that any Node parses it: a Node older than 22.18 cannot
 * load the TypeScript sources at all, and would otherwise fail with
 * ERR_UNKNOWN_FILE_EXTENSION. Importing this module ends the process with a
 * clear message (exit code 1) when the running Node is too old.
 */

/** The oldest Node that runs moodio-rt (the version of the `node` package it pins). */
export const MIN_NODE = '26.10.0';

/** @param {string} version e.g. `20.20.2` or `26.10.0-pre` @returns {number[]} */
function parts(version) {
  return version
    .replace(/^v/, '')
    .split(/[.+-]/)
    .slice(0, 3)
    .map((part) => Number.parseInt(part, 10) || 0);
}

/**
 * What is wrong with running on `version`, in words, or null when nothing is.
 * @param {string} version `process.versions.node`
 * @param {string} execPath the binary, named in the message
 * @returns {string | null}
 */
export function nodeVersionProblem(version, execPath) {
  const have = parts(version);
  const need = parts(MIN_NODE);
  for (let i = 0; i < 3; i++) {
    if (have[i] > need[i]) return null;
    if (have[i] < need[i]) {
      return (
        `moodio-rt needs Node ${MIN_NODE} or newer, and this is Node ${version} (${execPath}). ` +
        'The project brings its own Node 26 (the "node" package, installed by npm install): run it through npm ' +
        '(npx moodio-rt …, npm start), as node_modules/.bin/node cli/moodio-rt.mjs …, or under a supervisor with scripts/moodio-rt-serve.'
      );
    }
  }
  return null;
}

const problem = nodeVersionProblem(process.versions.node, process.execPath);
if (problem !== null) {
  process.stderr.write(`${problem}\n`);
  process.exit(1);
}
