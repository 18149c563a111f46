// The benchmark runner (and the client). Starts a fresh server process per
// (contender, scenario, run), drives it from this process with bench/client.js
// (node:http, the plugin's client library over its WebSocket channel, bare ws, or
// tus-js-client for the resumable endpoints),
// asks the server for its CPU time and peak RSS, and prints medians.
//
//   npm run bench                                   full run (3 runs, 1 GiB, 200 × 4 MiB)
//   BENCH_RUNS=1 BENCH_SIZE_MIB=64 npm run bench    quick run
//
// Env: BENCH_RUNS (3), BENCH_SIZE_MIB (1024, scenario A), BENCH_B_COUNT (200),
// BENCH_B_SIZE_MIB (4), BENCH_SCENARIOS (A,B), BENCH_CONTENDERS (comma list of ids),
// BENCH_CPU_PROF=1 (servers run with --cpu-prof into bench/results/profiles/; slows them),
// BENCH_OUT (JSON output path, default bench/results/latest.json), BENCH_TIMEOUT_S (180, per upload),
// BENCH_BASELINE (a built checkout of another commit: its plugin runs beside this one, `<id>@base`).
import { mkdirSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { MiB, getJson, tusBody, upload, uploadBareWs, uploadChannel, uploadTus } from './client.js'
import { killAll, startServer } from './spawn.js'
import { bufferutilStatus } from './ws-native.js'

const here = dirname(fileURLToPath(import.meta.url))
const env = process.env
const RUNS = Number(env.BENCH_RUNS ?? 3)
const SIZE_A = Number(env.BENCH_SIZE_MIB ?? 1024) * MiB
const COUNT_B = Number(env.BENCH_B_COUNT ?? 200)
const SIZE_B = Number(env.BENCH_B_SIZE_MIB ?? 4) * MiB
const CPU_PROF = env.BENCH_CPU_PROF === '1'
const TIMEOUT_MS = Number(env.BENCH_TIMEOUT_S ?? 180) * 1000 // per upload
const WARMUP = 3 // uploads of 1 MiB before each measurement, outside the numbers

const CONTENDERS = [
  { id: 'chunked-upload', name: 'fastify-chunked-upload (multipart)', server: 'chunked-upload.js', format: 'multipart' },
  { id: 'chunked-upload-raw', name: 'fastify-chunked-upload (raw body)', server: 'chunked-upload.js', format: 'raw' },
  { id: 'fastify-multipart', name: '@fastify/multipart 10 (pipeline to file)', server: 'fastify-multipart.js', format: 'multipart' },
  { id: 'bare-pipe', name: 'bare pipe (raw body → file)', server: 'bare-pipe.js', format: 'raw' },
  { id: 'chunked-upload-channel', name: 'fastify-chunked-upload (WebSocket channel + submit ref)', server: 'chunked-upload.js', format: 'channel', env: { BENCH_CHANNEL: '1' } },
  { id: 'bare-ws', name: 'bare ws route (64 KiB binary frames → file)', server: 'bare-ws.js', format: 'ws' },
  // Resumable uploads (tus 1.0), all driven by tus-js-client 4.3.1 from a Buffer: creation
  // POST, PATCH(es), then the upload URL POSTed to /upload, whose handler stats and deletes
  // the file. `pair` is the @tus/server contender with the same chunking; `scenarios` says
  // where a variant differs from the one-PATCH one (B's 4 MiB uploads are one PATCH anyway).
  // The plugin runs with its durable default store (a FileStore in the server's own
  // tmpDir: every PATCH checkpointed and recorded) and, as `-memory`, with a MemoryStore
  // (BENCH_STORE=memory: still checkpointed, the record kept in memory); `memory` names
  // the latter's twin.
  { id: 'chunked-upload-tus', name: 'fastify-chunked-upload resumable (tus, one PATCH, durable default store)', server: 'chunked-upload.js', format: 'tus', env: { BENCH_RESUMABLE: '1' }, tus: { endpoint: '/upload/tus', chunkSize: Infinity }, pair: 'tus-server', memory: 'chunked-upload-tus-memory' },
  { id: 'chunked-upload-tus-8m', name: 'fastify-chunked-upload resumable (tus, 8 MiB PATCHes, durable default store)', server: 'chunked-upload.js', format: 'tus', env: { BENCH_RESUMABLE: '1' }, tus: { endpoint: '/upload/tus', chunkSize: 8 * MiB }, pair: 'tus-server-8m', memory: 'chunked-upload-tus-memory-8m', scenarios: ['A'] },
  { id: 'chunked-upload-tus-memory', name: 'fastify-chunked-upload resumable (tus, one PATCH, MemoryStore)', server: 'chunked-upload.js', format: 'tus', env: { BENCH_RESUMABLE: '1', BENCH_STORE: 'memory' }, tus: { endpoint: '/upload/tus', chunkSize: Infinity }, pair: 'tus-server' },
  { id: 'chunked-upload-tus-memory-8m', name: 'fastify-chunked-upload resumable (tus, 8 MiB PATCHes, MemoryStore)', server: 'chunked-upload.js', format: 'tus', env: { BENCH_RESUMABLE: '1', BENCH_STORE: 'memory' }, tus: { endpoint: '/upload/tus', chunkSize: 8 * MiB }, pair: 'tus-server-8m', scenarios: ['A'] },
  { id: 'tus-server', name: '@tus/server 2 + FileStore in Fastify (tus, one PATCH)', server: 'tus-server.js', format: 'tus', tus: { endpoint: '/files', chunkSize: Infinity } },
  { id: 'tus-server-8m', name: '@tus/server 2 + FileStore in Fastify (tus, 8 MiB PATCHes)', server: 'tus-server.js', format: 'tus', tus: { endpoint: '/files', chunkSize: 8 * MiB }, scenarios: ['A'] },
  // Diagnostic only, run when named in BENCH_CONTENDERS: the plugin with chunkSize 1 MiB,
  // so Node's 64 KiB socket reads are not split at the default 64_000 bytes.
  { id: 'chunked-upload-1m', name: 'fastify-chunked-upload (multipart, chunkSize 1 MiB)', server: 'chunked-upload.js', format: 'multipart', env: { BENCH_CHUNK_SIZE: String(MiB) }, optional: true },
  { id: 'chunked-upload-raw-1m', name: 'fastify-chunked-upload (raw body, chunkSize 1 MiB)', server: 'chunked-upload.js', format: 'raw', env: { BENCH_CHUNK_SIZE: String(MiB) }, optional: true },
  // Diagnostic only: the channel with a larger channelWindow (default 8 frames), or
  // larger chunks (and so larger frames).
  { id: 'chunked-upload-channel-w32', name: 'fastify-chunked-upload (WebSocket channel, channelWindow 32)', server: 'chunked-upload.js', format: 'channel', env: { BENCH_CHANNEL: '1', BENCH_CHANNEL_WINDOW: '32' }, optional: true },
  { id: 'chunked-upload-channel-w128', name: 'fastify-chunked-upload (WebSocket channel, channelWindow 128)', server: 'chunked-upload.js', format: 'channel', env: { BENCH_CHANNEL: '1', BENCH_CHANNEL_WINDOW: '128' }, optional: true },
  { id: 'chunked-upload-channel-256k', name: 'fastify-chunked-upload (WebSocket channel, chunkSize 256 KiB)', server: 'chunked-upload.js', format: 'channel', env: { BENCH_CHANNEL: '1', BENCH_CHUNK_SIZE: String(256 * 1024) }, optional: true },
  // Diagnostic only: the WebSocket clients with a zero masking key (no masked copy per
  // frame; not RFC 6455 conformant), to tell the client's masking cost from the rest.
  { id: 'chunked-upload-channel-zm', name: 'fastify-chunked-upload (WebSocket channel), client zero mask', server: 'chunked-upload.js', format: 'channel', env: { BENCH_CHANNEL: '1' }, zeroMask: true, optional: true },
  { id: 'bare-ws-zm', name: 'bare ws route, client zero mask', server: 'bare-ws.js', format: 'ws', zeroMask: true, optional: true },
  // Diagnostic only: the bare pipe fed the way tus-js-client writes a Buffer body (16 KiB
  // writes, the request's writableHighWaterMark), to tell client cost from server cost.
  { id: 'bare-pipe-16k', name: 'bare pipe, client writing 16 KiB pieces like tus-js-client', server: 'bare-pipe.js', format: 'raw', writeSize: 16 * 1024, optional: true }
].filter((c) => env.BENCH_CONTENDERS === undefined ? !c.optional : env.BENCH_CONTENDERS.split(',').includes(c.id))
// BENCH_BASELINE=<a checkout of another commit, built, with its node_modules>: each of
// the plugin's contenders runs a second time on that build, in the same interleaved
// rounds (`<id>@base`), so a change is compared with what it changed on one machine
// state, not across days.
if (env.BENCH_BASELINE !== undefined) {
  const plugin = join(resolve(env.BENCH_BASELINE), 'dist', 'lib', 'index.js')
  for (const contender of CONTENDERS.filter((c) => c.server === 'chunked-upload.js')) {
    CONTENDERS.push({ ...contender, id: `${contender.id}@base`, name: `${contender.name} — baseline build`, env: { ...contender.env, BENCH_PLUGIN: plugin } })
  }
}

const SCENARIOS = [
  { id: 'A', title: `A: one ${fmtSize(SIZE_A)} upload`, count: 1, size: SIZE_A },
  { id: 'B', title: `B: ${COUNT_B} concurrent ${fmtSize(SIZE_B)} uploads`, count: COUNT_B, size: SIZE_B }
].filter((s) => env.BENCH_SCENARIOS === undefined || env.BENCH_SCENARIOS.split(',').includes(s.id))

/** One upload with the contender's client (HTTP, the plugin's channel, or a bare WebSocket). */
function send (contender, options) {
  if (contender.format === 'channel') return uploadChannel({ ...options, zeroMask: contender.zeroMask })
  if (contender.format === 'ws') return uploadBareWs({ ...options, zeroMask: contender.zeroMask })
  if (contender.format === 'tus') return uploadTus({ ...options, ...contender.tus })
  return upload({ ...options, format: contender.format, writeSize: contender.writeSize })
}

const runsIn = (contender, scenario) => contender.scenarios === undefined || contender.scenarios.includes(scenario.id)

function fmtSize (bytes) {
  return bytes >= 1024 ** 3 && bytes % 1024 ** 3 === 0 ? `${bytes / 1024 ** 3} GiB` : `${+(bytes / MiB).toFixed(2)} MiB`
}

// ---------------------------------------------------------------------------------
// One measurement.

async function measure (contender, scenario, run) {
  const label = `${contender.id}-${scenario.id}-r${run}`
  const server = await startServer(contender, label, { cpuProf: CPU_PROF })
  // tus-js-client's PATCHes (and its creation POST before them) reuse their connection, as
  // with Node's default agent; every other client opens one connection per upload.
  const agent = new http.Agent({ keepAlive: contender.format === 'tus', maxSockets: Infinity })
  try {
    const idle = await getJson(server.port, '/__bench/stats')
    for (let i = 0; i < WARMUP; i++) {
      const r = await send(contender, { port: server.port, size: MiB, agent })
      if (!r.ok) throw new Error(`${label}: warm-up upload failed: ${r.status} ${r.error}`)
    }
    if (contender.format === 'tus') tusBody(scenario.size) // allocated and filled before the clock starts
    const before = await getJson(server.port, '/__bench/stats')
    const clientCpu0 = process.cpuUsage()
    const t0 = performance.now()
    const results = await Promise.all(Array.from({ length: scenario.count }, () =>
      send(contender, { port: server.port, size: scenario.size, agent, timeoutMs: TIMEOUT_MS })))
    const wallS = (performance.now() - t0) / 1000
    const clientCpu = process.cpuUsage(clientCpu0)
    const after = await getJson(server.port, '/__bench/stats')
    const failed = results.filter((r) => !r.ok)
    const latencies = results.map((r) => r.ms).sort((a, b) => a - b)
    const bytes = scenario.count * scenario.size
    return {
      run,
      scenario: scenario.id,
      contender: contender.id,
      wallS,
      mibPerS: bytes / MiB / wallS,
      serverCpuS: after.cpuS - before.cpuS,
      serverCpuUserS: after.cpuUserS - before.cpuUserS,
      serverCpuSystemS: after.cpuSystemS - before.cpuSystemS,
      clientCpuS: (clientCpu.user + clientCpu.system) / 1e6,
      peakRssMiB: after.peakRssMiB,
      peakRssAfterWarmupMiB: before.peakRssMiB,
      idleRssMiB: idle.rssMiB,
      loadavg1: os.loadavg()[0],
      serverBufferutil: after.bufferutil.status,
      // The plugin's servers: the store it got ('default', 'memory'; 'none' on a build without stores).
      serverStore: after.store,
      leftoverFiles: after.leftoverFiles,
      failures: failed.length,
      failureSamples: failed.slice(0, 3).map((r) => ({ status: r.status, size: r.size, error: r.error })),
      latencyMs: { p50: quantile(latencies, 0.5), p95: quantile(latencies, 0.95), max: latencies.at(-1) },
      // Largest values sampled (every 50 ms) over the server's life: what its peak RSS was made of.
      serverMemoryMax: { heapTotalMiB: after.maxHeapTotalMiB, heapUsedMiB: after.maxHeapUsedMiB, externalMiB: after.maxExternalMiB, arrayBuffersMiB: after.maxArrayBuffersMiB },
      serverContextSwitches: {
        voluntary: after.contextSwitches.voluntary - before.contextSwitches.voluntary,
        involuntary: after.contextSwitches.involuntary - before.contextSwitches.involuntary
      }
    }
  } finally {
    agent.destroy()
    const { code, signal } = await server.stop()
    if (code !== 0) process.stderr.write(`warning: ${label} server exited with ${code ?? signal}\n`)
  }
}

function quantile (sorted, q) {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

function median (values) {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b)
  if (sorted.length === 0) return NaN
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

// ---------------------------------------------------------------------------------
// Summary and output.

function summarise (measurements) {
  const summary = {}
  for (const scenario of SCENARIOS) {
    summary[scenario.id] = {}
    for (const contender of CONTENDERS) {
      const ms = measurements.filter((m) => m.scenario === scenario.id && m.contender === contender.id)
      if (ms.length === 0) continue
      summary[scenario.id][contender.id] = {
        runs: ms.length,
        mibPerS: median(ms.map((m) => m.mibPerS)),
        mibPerSMin: Math.min(...ms.map((m) => m.mibPerS)),
        mibPerSMax: Math.max(...ms.map((m) => m.mibPerS)),
        serverCpuS: median(ms.map((m) => m.serverCpuS)),
        serverCpuSPerGiB: median(ms.map((m) => m.serverCpuS / ((scenario.count * scenario.size) / 1024 ** 3))),
        clientCpuS: median(ms.map((m) => m.clientCpuS)),
        clientCpuSPerGiB: median(ms.map((m) => m.clientCpuS / ((scenario.count * scenario.size) / 1024 ** 3))),
        peakRssMiB: median(ms.map((m) => m.peakRssMiB)),
        peakRssMiBMax: Math.max(...ms.map((m) => m.peakRssMiB)),
        idleRssMiB: median(ms.map((m) => m.idleRssMiB)),
        maxHeapTotalMiB: median(ms.map((m) => m.serverMemoryMax.heapTotalMiB)),
        maxArrayBuffersMiB: median(ms.map((m) => m.serverMemoryMax.arrayBuffersMiB)),
        voluntaryCtxSwitchesPerGiB: median(ms.map((m) => m.serverContextSwitches.voluntary / ((scenario.count * scenario.size) / 1024 ** 3))),
        peakGrowthMiB: median(ms.map((m) => m.peakRssMiB - m.idleRssMiB)),
        p95LatencyMs: median(ms.map((m) => m.latencyMs.p95)),
        failures: ms.reduce((n, m) => n + m.failures, 0),
        serverBufferutil: [...new Set(ms.map((m) => m.serverBufferutil))].join(','),
        serverStore: [...new Set(ms.map((m) => m.serverStore))].join(','),
        leftoverFiles: Math.max(...ms.map((m) => m.leftoverFiles))
      }
    }
  }
  return summary
}

function ratio (a, b) {
  return a !== undefined && b !== undefined && b.mibPerS > 0 ? a.mibPerS / b.mibPerS : NaN
}

function checks (summary) {
  const out = []
  const verdict = (ok) => (Number.isNaN(ok) ? 'n/a' : ok ? 'PASS' : 'FAIL')
  for (const scenario of SCENARIOS) {
    const s = summary[scenario.id]
    const add = (what, value, target, ok) => out.push({ scenario: scenario.id, what, value, target, verdict: verdict(ok) })
    const vsMp = ratio(s['chunked-upload'], s['fastify-multipart'])
    const vsBare = ratio(s['chunked-upload'], s['bare-pipe'])
    const rawVsBare = ratio(s['chunked-upload-raw'], s['bare-pipe'])
    add('chunked-upload (multipart) ÷ @fastify/multipart, throughput', vsMp, '≥ 1.00×', Number.isNaN(vsMp) ? NaN : vsMp >= 1)
    add('chunked-upload (multipart) ÷ bare pipe, throughput', vsBare, '≥ 0.85×', Number.isNaN(vsBare) ? NaN : vsBare >= 0.85)
    add('chunked-upload (raw body) ÷ bare pipe, throughput', rawVsBare, '≥ 0.85×', Number.isNaN(rawVsBare) ? NaN : rawVsBare >= 0.85)
    // The WebSocket channel: against the bare HTTP pipe and a bare ws route, same run.
    const ch = s['chunked-upload-channel']
    if (ch !== undefined) {
      const chVsBare = ratio(ch, s['bare-pipe'])
      const chVsWs = ratio(ch, s['bare-ws'])
      if (scenario.id === 'A') {
        add('chunked-upload-channel ÷ bare pipe, throughput', chVsBare, '≥ 0.80×', Number.isNaN(chVsBare) ? NaN : chVsBare >= 0.8)
        add('chunked-upload-channel ÷ bare ws route, throughput', chVsWs, '≥ 1.50×', Number.isNaN(chVsWs) ? NaN : chVsWs >= 1.5)
      } else {
        out.push({ scenario: scenario.id, what: 'chunked-upload-channel ÷ bare pipe, throughput (info)', value: chVsBare, target: '—', verdict: 'info' })
        out.push({ scenario: scenario.id, what: 'chunked-upload-channel ÷ bare ws route, throughput (info)', value: chVsWs, target: '—', verdict: 'info' })
        add(`chunked-upload-channel peak RSS, ${scenario.count} sockets (MiB, median; max ${ch.peakRssMiBMax.toFixed(1)})`, ch.peakRssMiB, '< 150', ch.peakRssMiB < 150)
      }
      add('chunked-upload-channel failures (all runs)', ch.failures, '0', ch.failures === 0)
      add('chunked-upload-channel leftover temp files (max)', ch.leftoverFiles, '0', ch.leftoverFiles === 0)
    }
    // Resumable (tus): against @tus/server with the same chunking and the bare pipe, same run.
    for (const id of ['chunked-upload-tus', 'chunked-upload-tus-8m', 'chunked-upload-tus-memory', 'chunked-upload-tus-memory-8m']) {
      const r = s[id]
      if (r === undefined) continue
      const { pair, memory } = CONTENDERS.find((c) => c.id === id)
      const vsTus = ratio(r, s[pair])
      add(`${id} ÷ ${pair}, throughput`, vsTus, '≥ 1.50×', Number.isNaN(vsTus) ? NaN : vsTus >= 1.5)
      // What durability costs: the default store against the same endpoint with a MemoryStore, same run.
      if (memory !== undefined && s[memory] !== undefined) {
        out.push({ scenario: scenario.id, what: `${id} ÷ ${memory}, throughput (info: the durable store's cost)`, value: ratio(r, s[memory]), target: '—', verdict: 'info' })
        out.push({ scenario: scenario.id, what: `${id} server CPU s/GiB ÷ ${memory}'s (info)`, value: r.serverCpuSPerGiB / s[memory].serverCpuSPerGiB, target: '—', verdict: 'info' })
      }
      const vsBare = ratio(r, s['bare-pipe'])
      if ((id === 'chunked-upload-tus' || id === 'chunked-upload-tus-memory') && scenario.id === 'A') add(`${id} ÷ bare pipe, throughput`, vsBare, '≥ 0.85×', Number.isNaN(vsBare) ? NaN : vsBare >= 0.85)
      else out.push({ scenario: scenario.id, what: `${id} ÷ bare pipe, throughput (info)`, value: vsBare, target: '—', verdict: 'info' })
      out.push({ scenario: scenario.id, what: `${id} peak RSS (MiB, median; max ${r.peakRssMiBMax.toFixed(1)}; info: compare across BENCH_SIZE_MIB)`, value: r.peakRssMiB, target: '—', verdict: 'info' })
      add(`${id} failures (all runs)`, r.failures, '0', r.failures === 0)
      add(`${id} leftover temp files (max)`, r.leftoverFiles, '0', r.leftoverFiles === 0)
    }
    for (const id of ['tus-server', 'tus-server-8m']) {
      if (s[id] === undefined) continue
      add(`${id} failures (all runs)`, s[id].failures, '0', s[id].failures === 0)
      add(`${id} leftover files (max)`, s[id].leftoverFiles, '0', s[id].leftoverFiles === 0)
    }
    // This build against the baseline build (BENCH_BASELINE), same rounds.
    for (const id of Object.keys(s).filter((id) => id.endsWith('@base'))) {
      const now = s[id.slice(0, -'@base'.length)]
      const base = s[id]
      if (now === undefined) continue
      out.push({ scenario: scenario.id, what: `${id.slice(0, -5)} ÷ baseline build, throughput (info)`, value: ratio(now, base), target: '—', verdict: 'info' })
      out.push({ scenario: scenario.id, what: `${id.slice(0, -5)} server CPU s/GiB ÷ baseline build's (info)`, value: now.serverCpuSPerGiB / base.serverCpuSPerGiB, target: '—', verdict: 'info' })
    }
    for (const id of ['chunked-upload', 'chunked-upload-raw']) {
      if (s[id] === undefined) continue
      if (scenario.id === 'A') {
        add(`${id} peak RSS (MiB, median; max ${s[id].peakRssMiBMax.toFixed(1)})`, s[id].peakRssMiB, '< 80', s[id].peakRssMiB < 80)
        // Not a target of the brief: how the same number compares with bare Fastify.
        if (s['bare-pipe'] !== undefined) out.push({ scenario: scenario.id, what: `${id} peak RSS − bare pipe peak RSS (MiB, info)`, value: s[id].peakRssMiB - s['bare-pipe'].peakRssMiB, target: '—', verdict: 'info' })
      }
      add(`${id} failures (all runs)`, s[id].failures, '0', s[id].failures === 0)
    }
  }
  return out
}

const f = (v, digits = 1) => (Number.isFinite(v) ? v.toFixed(digits) : 'n/a')

function markdown (summary, checkList) {
  const lines = []
  for (const scenario of SCENARIOS) {
    const s = summary[scenario.id]
    const bare = s['bare-pipe']
    const mp = s['fastify-multipart']
    const bareWs = s['bare-ws']
    lines.push(`### ${scenario.title} — median of ${RUNS} run(s)`, '')
    const tus = CONTENDERS.some((c) => c.format === 'tus' && s[c.id] !== undefined)
    lines.push(`| contender | MiB/s (min–max) | server CPU s | server CPU s/GiB | client CPU s/GiB | peak RSS MiB | idle RSS MiB | peak − idle MiB | p95 latency ms | failures | leftover files | ÷ @fastify/multipart | ÷ bare pipe | ÷ bare ws |${tus ? ' ÷ @tus/server (same chunking) |' : ''}`)
    lines.push(`|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|${tus ? '---:|' : ''}`)
    for (const contender of CONTENDERS) {
      const r = s[contender.id]
      if (r === undefined) continue
      const vsTus = tus ? ` ${f(ratio(r, s[contender.pair]), 2)}× |` : ''
      lines.push(`| ${contender.name} | ${f(r.mibPerS)} (${f(r.mibPerSMin)}–${f(r.mibPerSMax)}) | ${f(r.serverCpuS, 2)} | ${f(r.serverCpuSPerGiB, 2)} | ${f(r.clientCpuSPerGiB, 2)} | ${f(r.peakRssMiB)} | ${f(r.idleRssMiB)} | ${f(r.peakGrowthMiB)} | ${f(r.p95LatencyMs, 0)} | ${r.failures} | ${r.leftoverFiles} | ${f(ratio(r, mp), 2)}× | ${f(ratio(r, bare), 2)}× | ${f(ratio(r, bareWs), 2)}× |${vsTus}`)
    }
    lines.push('')
  }
  // Servers of WebSocket contenders say whether ws found bufferutil's native code.
  const wsFormats = new Set(['channel', 'ws'])
  const wsServers = Object.values(summary).flatMap((byContender) => Object.entries(byContender))
    .filter(([id]) => wsFormats.has(CONTENDERS.find((c) => c.id === id)?.format))
  if (wsServers.length > 0) {
    lines.push(`ws masking with bufferutil: client ${bufferutilStatus().status}; servers ${[...new Set(wsServers.map(([, r]) => r.serverBufferutil))].join(', ')}`, '')
  }
  // The plugin's servers say which store they got ('none': a build without stores).
  const storeOf = new Map(Object.values(summary).flatMap((byContender) => Object.entries(byContender))
    .filter(([, r]) => r.serverStore !== '').map(([id, r]) => [id, r.serverStore]))
  if (storeOf.size > 0) lines.push(`the plugin's store: ${[...storeOf].map(([id, store]) => `${id} ${store}`).join('; ')}`, '')
  lines.push('### Targets', '')
  lines.push('| scenario | check | value | target | verdict |')
  lines.push('|---|---|---:|---:|---|')
  for (const c of checkList) lines.push(`| ${c.scenario} | ${c.what} | ${typeof c.value === 'number' && !Number.isInteger(c.value) ? f(c.value, 2) : c.value} | ${c.target} | ${c.verdict} |`)
  return lines.join('\n')
}

// ---------------------------------------------------------------------------------

async function main () {
  const started = performance.now()
  const machine = {
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    totalMemMiB: Math.round(os.totalmem() / MiB),
    loadavgAtStart: os.loadavg(),
    tmpdir: os.tmpdir(),
    // This process is the client of every contender; ws is loaded by bench/client.js.
    clientBufferutil: bufferutilStatus()
  }
  console.error(`bench: ${RUNS} run(s); scenarios ${SCENARIOS.map((s) => s.title).join('; ')}; ${CONTENDERS.length} contenders; node ${machine.node}, ${machine.cpus} CPUs, load ${machine.loadavgAtStart.map((l) => l.toFixed(2)).join(' ')}; client ws bufferutil: ${machine.clientBufferutil.status}`)
  const measurements = []
  for (let run = 1; run <= RUNS; run++) {
    for (const scenario of SCENARIOS) {
      // Interleave contenders, rotating who goes first so none always gets the same slot.
      const order = CONTENDERS.map((_, i) => CONTENDERS[(i + run - 1) % CONTENDERS.length]).filter((c) => runsIn(c, scenario))
      for (const contender of order) {
        const m = await measure(contender, scenario, run)
        measurements.push(m)
        console.error(`run ${run} ${scenario.id} ${contender.id.padEnd(28)} ${f(m.mibPerS).padStart(7)} MiB/s  ${f(m.wallS, 2)} s  server CPU ${f(m.serverCpuS, 2)} s  client CPU ${f(m.clientCpuS, 2)} s  peak RSS ${f(m.peakRssMiB)} MiB  failures ${m.failures}  load ${f(m.loadavg1, 2)}${m.failures > 0 ? ' ' + JSON.stringify(m.failureSamples) : ''}`)
      }
    }
  }
  const summary = summarise(measurements)
  const checkList = checks(summary)
  const table = markdown(summary, checkList)
  console.log(table)
  const out = env.BENCH_OUT ?? join(here, 'results', 'latest.json')
  mkdirSync(dirname(out), { recursive: true })
  writeFileSync(out, JSON.stringify({
    date: new Date().toISOString(),
    machine: { ...machine, loadavgAtEnd: os.loadavg() },
    config: { runs: RUNS, sizeA: SIZE_A, countB: COUNT_B, sizeB: SIZE_B, warmupUploads: WARMUP, cpuProfile: CPU_PROF },
    durationS: (performance.now() - started) / 1000,
    summary,
    checks: checkList,
    measurements
  }, null, 2) + '\n')
  console.error(`\nwrote ${out} (${f((performance.now() - started) / 1000)} s)`)
}

main().catch((error) => {
  console.error(error)
  killAll()
  process.exit(1)
})
