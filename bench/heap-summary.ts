/**
 * What a V8 heap snapshot holds, by kind of object: count, self size and
 * retained size per key, and the difference between two snapshots of one
 * thread divided by the sessions opened between them.
 *
 *   node --max-old-space-size=6144 bench/heap-summary.ts <before.heapsnapshot> <after.heapsnapshot> [--per <sessions>] [--json] [--top 40] [--holders <key>]
 *
 * `--holders <key>` lists instead who holds the nodes of that key in the
 * second snapshot (holder's key and edge name, per session), e.g.
 * `--holders '(sliced string)'`.
 *
 * The key of a node is its constructor (objects), `closure <name>`, or its
 * snapshot type (strings, arrays, code, contexts). Plain objects and
 * contexts are told apart by their property (variable) names, so the
 * session's `BudgetState` reads `{overBudgetSince,awaitingDrain,coalesced}`
 * and the context a set of listeners share names what they capture.
 *
 * Self sizes add up to the heap. A retained size is what would be freed
 * with the object (its dominator subtree, weak and shortcut edges left out,
 * as DevTools does); a key's retained size sums its instances that no other
 * instance of the same key dominates, so it counts nothing twice within a
 * key but overlaps across keys.
 */
import { readFileSync } from 'node:fs';

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]]; edge_fields: string[]; edge_types: [string[]] }; node_count: number };
  nodes: number[];
  edges: number[];
  strings: string[];
}

/** For the nodes of one key: who holds them, as `holder key .edge name` → count. */
export type Holders = Map<string, number>;

export interface KeyTotals {
  count: number;
  self: number;
  retained: number;
}

/** Totals per key, and the whole heap's self size. */
export interface HeapSummary {
  keys: Map<string, KeyTotals>;
  total: number;
}

const MAX_SIGNATURE_NAMES = 6;

export function summarize(path: string, holdersOf?: string): HeapSummary & { holders: Holders } {
  const snap = JSON.parse(readFileSync(path, 'utf8')) as Snapshot;
  const { meta } = snap.snapshot;
  const NF = meta.node_fields.length;
  const EF = meta.edge_fields.length;
  const nType = meta.node_fields.indexOf('type');
  const nName = meta.node_fields.indexOf('name');
  const nSelf = meta.node_fields.indexOf('self_size');
  const nEdges = meta.node_fields.indexOf('edge_count');
  const eType = meta.edge_fields.indexOf('type');
  const eName = meta.edge_fields.indexOf('name_or_index');
  const eTo = meta.edge_fields.indexOf('to_node');
  const nodeTypes = meta.node_types[0];
  const edgeTypes = meta.edge_types[0];
  const { nodes, edges, strings } = snap;
  const N = nodes.length / NF;
  const E = edges.length / EF;

  const firstEdge = new Uint32Array(N + 1);
  for (let i = 0, e = 0; i < N; i++) {
    firstEdge[i] = e;
    e += nodes[i * NF + nEdges]!;
    firstEdge[i + 1] = e;
  }
  const WEAK = edgeTypes.indexOf('weak');
  const SHORTCUT = edgeTypes.indexOf('shortcut');
  const PROPERTY = edgeTypes.indexOf('property');
  const CONTEXT = edgeTypes.indexOf('context');
  const essential = (e: number) => {
    const t = edges[e * EF + eType]!;
    return t !== WEAK && t !== SHORTCUT;
  };

  // Keys.
  const keyOf = new Array<string>(N);
  for (let i = 0; i < N; i++) {
    const type = nodeTypes[nodes[i * NF + nType]!]!;
    const name = strings[nodes[i * NF + nName]!]!;
    let key: string;
    if (type === 'object' && (name === 'Object' || name === 'system / Context'))
      key = name === 'Object' ? `{${signature(i, PROPERTY)}}` : `Context{${signature(i, CONTEXT)}}`;
    else if (type === 'object' || type === 'native') key = name;
    else if (type === 'closure') key = `closure ${name === '' ? '(anonymous)' : name}`;
    else if (type === 'hidden' && name === 'system / Context') key = `Context{${signature(i, CONTEXT)}}`;
    else if (type === 'array' || type === 'hidden' || type === 'object shape' || type === 'code')
      key = `(${type}) ${name.length > 40 ? name.slice(0, 40) + '…' : name}`;
    else key = `(${type})`;
    keyOf[i] = key;
  }
  function signature(node: number, edgeType: number): string {
    const names: string[] = [];
    for (let e = firstEdge[node]!; e < firstEdge[node + 1]! && names.length < MAX_SIGNATURE_NAMES; e++) {
      if (edges[e * EF + eType] === edgeType) names.push(strings[edges[e * EF + eName]!]!);
    }
    return names.join(',');
  }

  // Post-order from the root (node 0) over essential edges.
  const post = new Int32Array(N).fill(-1);
  const order = new Uint32Array(N);
  let count = 0;
  const stack = new Uint32Array(N);
  const cursor = new Uint32Array(N);
  const seen = new Uint8Array(N);
  let top = 0;
  stack[top++] = 0;
  seen[0] = 1;
  cursor[0] = firstEdge[0]!;
  while (top > 0) {
    const n = stack[top - 1]!;
    if (cursor[n]! < firstEdge[n + 1]!) {
      const e = cursor[n]!++;
      if (!essential(e)) continue;
      const to = edges[e * EF + eTo]! / NF;
      if (seen[to] === 0) {
        seen[to] = 1;
        cursor[to] = firstEdge[to]!;
        stack[top++] = to;
      }
    } else {
      top--;
      post[n] = count;
      order[count++] = n;
    }
  }

  // Predecessors (CSR) among reachable nodes.
  const predCount = new Uint32Array(N + 1);
  for (let n = 0; n < N; n++) {
    if (post[n] === -1) continue;
    for (let e = firstEdge[n]!; e < firstEdge[n + 1]!; e++) if (essential(e)) predCount[edges[e * EF + eTo]! / NF]!++;
  }
  const predStart = new Uint32Array(N + 1);
  for (let n = 0; n < N; n++) predStart[n + 1] = predStart[n]! + predCount[n]!;
  const preds = new Uint32Array(predStart[N]!);
  const fill = predStart.slice(0, N);
  for (let n = 0; n < N; n++) {
    if (post[n] === -1) continue;
    for (let e = firstEdge[n]!; e < firstEdge[n + 1]!; e++) if (essential(e)) preds[fill[edges[e * EF + eTo]! / NF]!++] = n;
  }

  // Dominators (Cooper, Harvey, Kennedy), in post-order numbers.
  const UNDEF = -1;
  const idom = new Int32Array(count).fill(UNDEF);
  const rootPost = post[0]!;
  idom[rootPost] = rootPost;
  const intersect = (a: number, b: number) => {
    while (a !== b) {
      while (a < b) a = idom[a]!;
      while (b < a) b = idom[b]!;
    }
    return a;
  };
  for (let changed = true; changed; ) {
    changed = false;
    for (let p = count - 1; p >= 0; p--) {
      if (p === rootPost) continue;
      const n = order[p]!;
      let d = UNDEF;
      for (let k = predStart[n]!; k < predStart[n + 1]!; k++) {
        const q = post[preds[k]!]!;
        if (idom[q] === UNDEF) continue;
        d = d === UNDEF ? q : intersect(q, d);
      }
      if (d !== UNDEF && idom[p] !== d) {
        idom[p] = d;
        changed = true;
      }
    }
  }

  // Retained sizes: children come before their dominator in post-order.
  const retained = new Float64Array(count);
  for (let p = 0; p < count; p++) retained[p] = nodes[order[p]! * NF + nSelf]!;
  for (let p = 0; p < count; p++) if (p !== rootPost && idom[p] !== UNDEF) retained[idom[p]!]! += retained[p]!;

  const keys = new Map<string, KeyTotals>();
  let total = 0;
  for (let p = 0; p < count; p++) {
    const n = order[p]!;
    const key = keyOf[n]!;
    let totals = keys.get(key);
    if (totals === undefined) keys.set(key, (totals = { count: 0, self: 0, retained: 0 }));
    const self = nodes[n * NF + nSelf]!;
    totals.count++;
    totals.self += self;
    total += self;
    // Counted unless an instance of the same key dominates it.
    let d = idom[p]!;
    let nested = false;
    while (d !== UNDEF && d !== rootPost) {
      if (keyOf[order[d]!] === key) {
        nested = true;
        break;
      }
      const up = idom[d]!;
      if (up === d) break;
      d = up;
    }
    if (!nested) totals.retained += retained[p]!;
  }
  const holders: Holders = new Map();
  if (holdersOf !== undefined) {
    for (let n = 0; n < N; n++) {
      if (post[n] === -1) continue;
      for (let e = firstEdge[n]!; e < firstEdge[n + 1]!; e++) {
        const to = edges[e * EF + eTo]! / NF;
        if (keyOf[to] !== holdersOf || !essential(e)) continue;
        const t = edgeTypes[edges[e * EF + eType]!]!;
        const name = t === 'element' || t === 'hidden' ? `[${t}]` : strings[edges[e * EF + eName]!]!;
        const k = `${keyOf[n]} .${name}`;
        holders.set(k, (holders.get(k) ?? 0) + 1);
      }
    }
  }
  void E;
  return { keys, total, holders };
}

export interface KeyDelta {
  key: string;
  count: number;
  self: number;
  retained: number;
}

/** `after` less `before`, per `per` (sessions), largest self size first. */
export function difference(before: HeapSummary, after: HeapSummary, per = 1): { rows: KeyDelta[]; total: number } {
  const rows: KeyDelta[] = [];
  for (const key of new Set([...before.keys.keys(), ...after.keys.keys()])) {
    const a = before.keys.get(key) ?? { count: 0, self: 0, retained: 0 };
    const b = after.keys.get(key) ?? { count: 0, self: 0, retained: 0 };
    rows.push({ key, count: (b.count - a.count) / per, self: (b.self - a.self) / per, retained: (b.retained - a.retained) / per });
  }
  rows.sort((x, y) => y.self - x.self);
  return { rows, total: (after.total - before.total) / per };
}

if (import.meta.main) {
  const args = process.argv.slice(2);
  const option = (name: string, fallback: number) => {
    const i = args.indexOf(name);
    return i >= 0 ? Number(args[i + 1]) : fallback;
  };
  const valued = new Set(['--per', '--top', '--holders']);
  const files = args.filter((a, i) => !a.startsWith('--') && !valued.has(args[i - 1] ?? ''));
  const per = option('--per', 1);
  const topN = option('--top', 40);
  const holdersKey = args[args.indexOf('--holders') + 1];
  if (args.includes('--holders')) {
    // Who holds the nodes of one key, in the second snapshot.
    const { holders } = summarize(files[1]!, holdersKey);
    for (const [k, n] of [...holders].sort((a, b) => b[1] - a[1]).slice(0, topN)) process.stdout.write(`${(n / per).toFixed(2)}\t${k}\n`);
    process.exit(0);
  }
  const diff = difference(summarize(files[0]!), summarize(files[1]!), per);
  if (args.includes('--json')) process.stdout.write(JSON.stringify(diff) + '\n');
  else {
    const lines = [`| key | count | self bytes | retained bytes |`, `|---|---|---|---|`];
    for (const r of diff.rows.slice(0, topN)) lines.push(`| \`${r.key}\` | ${r.count.toFixed(2)} | ${r.self.toFixed(0)} | ${r.retained.toFixed(0)} |`);
    lines.push(`| total | | ${diff.total.toFixed(0)} | |`);
    process.stdout.write(lines.join('\n') + '\n');
  }
}
