/** Types of node-version.mjs (plain JavaScript, so that an old Node can parse it). */
export declare const MIN_NODE: string;
export declare function nodeVersionProblem(version: string, execPath: string): string | null;
