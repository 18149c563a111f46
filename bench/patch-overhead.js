// Per-PATCH overhead of the resumable endpoints: many tiny PATCHes (BENCH_PATCH_BYTES,
// default 1 KiB) in a row on one keep-alive connection, against a bare Fastify route
// that reads the same body.
//
//   node bench/patch-overhead.js                    3 rounds × 2000 PATCHes per contender
//   BENCH_RUNS=1 BENCH_PATCHES=500 node bench/patch-overhead.js
//   BENCH_CONTENDERS=bare-read,chunked-upload-tus BENCH_CPU_PROF=1 node bench/patch-overhead.js
//     (servers profiled into bench/results/profiles/patch-<id>-r<n>.cpuprofile)
//
// Each (contender, round) gets a fresh server (bench/servers/*, BENCH_TIMES=1). One
// connection (an agent with keepAlive and maxSockets 1) sends the requests one after the
// other, each only once the previous answer was read:
// - tus contenders: a creation POST (Upload-Length = count × size), then `count`
//   PATCHes of `size` bytes, each at the offset the previous answer gave; afterwards the
//   upload URL is POSTed to /upload, which consumes (stats and deletes) it;
// - bare routes (bench/servers/bare-pipe.js): the same PATCHes (same headers) to
//   /patch/read/:id (body read and dropped, 204 + Upload-Offset) or /patch/append/:id
//   (also appended to a file kept open).
// The plugin runs twice: with its durable default store (chunked-upload-tus) and with a
// MemoryStore (chunked-upload-tus-memory, BENCH_STORE=memory in its server).
// BENCH_PATCH_WARMUP (300) PATCHes of a separate upload go first, outside the numbers.
//
// Two times per PATCH:
// - server: from Node's 'request' event (headers parsed, before Fastify) to the
//   response's 'finish', measured in the server (bench/servers/common.js);
// - round trip: from the client's request to the end of the answer, on a warm
//   connection, as the client sees it (both processes' scheduling included).
// - server CPU: the server's user + system CPU over the series ÷ its PATCHes (steadier
//   than times on a busy machine; includes the creation POST and the final submit).
// The overhead of a contender is its median minus the bare read route's median, for
// each. Medians, since a shared machine adds a long tail; p95 and means are in the JSON
// (bench/results/patch-overhead.json, or BENCH_OUT).
import { mkdirSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { dirname, join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { getJson } from './client.js'
import { killAll, startServer } from './spawn.js'

const here = dirname(fileURLToPath(import.meta.url))
const env = process.env
const RUNS = Number(env.BENCH_RUNS ?? 3)
const COUNT = Number(env.BENCH_PATCHES ?? 2000)
const WARMUP = Number(env.BENCH_PATCH_WARMUP ?? 300)
const SIZE = Number(env.BENCH_PATCH_BYTES ?? 1024)
const BODY = Buffer.alloc(SIZE, 0x61)

const CONTENDERS = [
  { id: 'bare-read', name: 'bare Fastify route: read the body, 204', server: 'bare-pipe.js', kind: 'bare', path: '/patch/read' },
  { id: 'bare-append', name: 'bare Fastify route: read the body, append it to an open file, 204', server: 'bare-pipe.js', kind: 'bare', path: '/patch/append' },
  // The plugin's endpoint with its durable default store (each PATCH checkpointed and its
  // record rewritten, in the server's own tmpDir) and with a MemoryStore (still
  // checkpointed, the record kept in memory): their difference is the store's file I/O.
  { id: 'chunked-upload-tus', name: 'fastify-chunked-upload resumable (temp-file writer, durable default store)', server: 'chunked-upload.js', env: { BENCH_RESUMABLE: '1' }, kind: 'tus', endpoint: '/upload/tus' },
  { id: 'chunked-upload-tus-memory', name: 'fastify-chunked-upload resumable (temp-file writer, MemoryStore)', server: 'chunked-upload.js', env: { BENCH_RESUMABLE: '1', BENCH_STORE: 'memory' }, kind: 'tus', endpoint: '/upload/tus' },
  { id: 'tus-server', name: '@tus/server 2 + FileStore in Fastify', server: 'tus-server.js', kind: 'tus', endpoint: '/files' }
].filter((c) => env.BENCH_CONTENDERS === undefined || env.BENCH_CONTENDERS.split(',').includes(c.id))

/** One request on the agent's connection; resolves with { status, headers, text, ms }. */
function request (port, agent, method, path, headers, body) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, headers: { ...headers, 'content-length': String(body?.length ?? 0) } })
    req.on('error', reject)
    req.on('response', (res) => {
      const chunks = []
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('error', reject)
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text: Buffer.concat(chunks).toString(), ms: performance.now() - t0 }))
    })
    req.end(body)
  })
}

const TUS = { 'tus-resumable': '1.0.0' }
const PATCH_HEADERS = { ...TUS, 'content-type': 'application/offset+octet-stream' }

/** Where the `count` PATCHes of one series go; `done()` removes what they left. */
async function openSeries (contender, port, agent, count, n) {
  if (contender.kind === 'bare') {
    const path = `${contender.path}/s${n}-${process.pid}`
    return { path, done: () => contender.path === '/patch/append' ? request(port, agent, 'DELETE', path, {}) : undefined }
  }
  const created = await request(port, agent, 'POST', contender.endpoint, {
    ...TUS, 'upload-length': String(count * SIZE), 'upload-metadata': `filename ${Buffer.from('blob.bin').toString('base64')}`
  })
  if (created.status !== 201) throw new Error(`${contender.id}: creation answered ${created.status} ${created.text.slice(0, 200)}`)
  const url = new URL(created.headers.location, `http://127.0.0.1:${port}${contender.endpoint}`)
  return {
    path: url.pathname,
    async done () {
      const body = Buffer.from(JSON.stringify({ file: [url.href] }))
      const res = await request(port, agent, 'POST', '/upload', { 'content-type': 'application/json' }, body)
      if (res.status !== 200 || JSON.parse(res.text).size !== count * SIZE) throw new Error(`${contender.id}: submit answered ${res.status} ${res.text.slice(0, 200)}`)
    }
  }
}

/** `count` PATCHes in a row; returns their round-trip times (ms). */
async function patches (contender, port, agent, count, n) {
  const series = await openSeries(contender, port, agent, count, n)
  const times = []
  let offset = 0
  for (let i = 0; i < count; i++) {
    const res = await request(port, agent, 'PATCH', series.path, { ...PATCH_HEADERS, 'upload-offset': String(offset) }, BODY)
    if (res.status !== 204 || Number(res.headers['upload-offset']) !== offset + SIZE) {
      throw new Error(`${contender.id}: PATCH ${i} answered ${res.status} offset ${res.headers['upload-offset']} ${res.text.slice(0, 200)}`)
    }
    offset += SIZE
    times.push(res.ms)
  }
  await series.done()
  return times
}

async function measure (contender, run) {
  const server = await startServer({ ...contender, env: { ...contender.env, BENCH_TIMES: '1' } }, `patch-${contender.id}-r${run}`, { cpuProf: env.BENCH_CPU_PROF === '1' })
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  try {
    await patches(contender, server.port, agent, WARMUP, 0)
    await getJson(server.port, '/__bench/times') // drops the warm-up's
    const before = await getJson(server.port, '/__bench/stats')
    const roundTrip = await patches(contender, server.port, agent, COUNT, 1)
    const after = await getJson(server.port, '/__bench/stats')
    const serverTimes = (await getJson(server.port, '/__bench/times')).PATCH ?? []
    if (serverTimes.length !== COUNT) throw new Error(`${contender.id}: the server timed ${serverTimes.length} PATCHes, not ${COUNT}`)
    // CPU of the whole series (creation and submit included, a GET of stats in between), per PATCH.
    const cpuPerPatch = (after.cpuS - before.cpuS) / COUNT * 1000
    return { contender: contender.id, run, store: after.store, roundTrip: stats(roundTrip), server: stats(serverTimes), cpuPerPatchMs: cpuPerPatch }
  } finally {
    agent.destroy()
    await server.stop()
  }
}

function stats (values) {
  const sorted = [...values].sort((a, b) => a - b)
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
  return { n: sorted.length, median: at(0.5), p95: at(0.95), mean: sorted.reduce((a, b) => a + b, 0) / sorted.length }
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}
const us = (ms) => Number.isFinite(ms) ? (ms * 1000).toFixed(0) : 'n/a'

async function main () {
  console.error(`patch-overhead: ${RUNS} round(s) × ${COUNT} PATCHes of ${SIZE} bytes (warm-up ${WARMUP}), ${CONTENDERS.length} contenders`)
  const measurements = []
  for (let run = 1; run <= RUNS; run++) {
    const order = CONTENDERS.map((_, i) => CONTENDERS[(i + run - 1) % CONTENDERS.length])
    for (const contender of order) {
      const m = await measure(contender, run)
      measurements.push(m)
      console.error(`round ${run} ${contender.id.padEnd(25)} server median ${us(m.server.median)} µs p95 ${us(m.server.p95)} µs  round trip median ${us(m.roundTrip.median)} µs p95 ${us(m.roundTrip.p95)} µs  server CPU ${us(m.cpuPerPatchMs)} µs/PATCH`)
    }
  }
  // Per contender: the median over rounds of each round's median (and p95, mean).
  const summary = {}
  for (const contender of CONTENDERS) {
    const ms = measurements.filter((m) => m.contender === contender.id)
    summary[contender.id] = Object.fromEntries(['server', 'roundTrip'].map((k) => [k, {
      median: median(ms.map((m) => m[k].median)), p95: median(ms.map((m) => m[k].p95)), mean: median(ms.map((m) => m[k].mean))
    }]))
    summary[contender.id].cpuPerPatchMs = median(ms.map((m) => m.cpuPerPatchMs))
    // The plugin's servers: the store they got ('none' on a build without stores).
    summary[contender.id].store = [...new Set(ms.map((m) => m.store))].join(',') || undefined
  }
  const bare = summary['bare-read']
  const lines = [`### Per-PATCH time, ${SIZE}-byte PATCHes on one keep-alive connection — ${COUNT} per round, median of ${RUNS} round(s)`, '',
    '| contender | server µs (median) | server µs (p95) | round trip µs (median) | round trip µs (p95) | server CPU µs / PATCH | server − bare read µs | round trip − bare read µs | server CPU − bare read µs |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for (const contender of CONTENDERS) {
    const s = summary[contender.id]
    lines.push(`| ${contender.name} | ${us(s.server.median)} | ${us(s.server.p95)} | ${us(s.roundTrip.median)} | ${us(s.roundTrip.p95)} | ${us(s.cpuPerPatchMs)} | ${us(s.server.median - bare?.server.median)} | ${us(s.roundTrip.median - bare?.roundTrip.median)} | ${us(s.cpuPerPatchMs - bare?.cpuPerPatchMs)} |`)
  }
  // Overhead above bare Fastify: the larger of the round-trip and server differences.
  const overhead = (s) => Math.max(s.roundTrip.median - bare.roundTrip.median, s.server.median - bare.server.median)
  const durable = summary['chunked-upload-tus']
  const memory = summary['chunked-upload-tus-memory']
  const stores = CONTENDERS.filter((c) => summary[c.id].store !== undefined).map((c) => `${c.id} ${summary[c.id].store}`)
  if (stores.length > 0) lines.push('', `The plugin's store: ${stores.join('; ')}.`)
  if (durable !== undefined && bare !== undefined) {
    const stale = durable.store === 'none' ? ' (this build has no stores: nothing was recorded)' : ''
    lines.push('', `Target: per-PATCH overhead of fastify-chunked-upload with its durable default store (the larger of the round-trip and server differences) under 1 ms: ${us(overhead(durable))} µs → ${overhead(durable) < 1 ? 'PASS' : 'FAIL'}${stale}`)
  }
  if (memory !== undefined && bare !== undefined) {
    lines.push('', `Info: the same with a MemoryStore: ${us(overhead(memory))} µs.`)
  }
  if (durable !== undefined && memory !== undefined) {
    lines.push('', `Info: what the durable store adds per PATCH (default − MemoryStore): server ${us(durable.server.median - memory.server.median)} µs, round trip ${us(durable.roundTrip.median - memory.roundTrip.median)} µs, server CPU ${us(durable.cpuPerPatchMs - memory.cpuPerPatchMs)} µs.`)
  }
  console.log(lines.join('\n'))
  const out = env.BENCH_OUT ?? join(here, 'results', 'patch-overhead.json')
  mkdirSync(dirname(out), { recursive: true })
  writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), config: { runs: RUNS, count: COUNT, warmup: WARMUP, size: SIZE }, summary, measurements }, null, 2) + '\n')
  console.error(`wrote ${out}`)
}

main().catch((error) => {
  console.error(error)
  killAll()
  process.exit(1)
})
