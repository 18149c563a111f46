// Shared by every contender server: a fresh temp dir, a stats route, the port on
// stdout, and a shutdown that removes the temp dir. Under the bench runner
// (BENCH_PARENT=1) the server also exits when its stdin closes, so it never
// outlives the runner, even if the runner is killed.
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { bufferutilStatus } from '../ws-native.js'

export const MAX_FILE_SIZE = 2 * 1024 ** 3

/** A fresh directory under os.tmpdir() for this server's uploads. */
export function makeTmpDir (name) {
  const dir = mkdtempSync(join(tmpdir(), `fcu-bench-${name}-`))
  // Also on a crash (uncaught exception); only SIGKILL skips this, and then the runner removes it.
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** VmHWM (peak resident set) and VmRSS of this process, in KiB. */
function procStatus () {
  try {
    const text = readFileSync('/proc/self/status', 'utf8')
    const kib = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1])
    return { hwmKiB: kib('VmHWM'), rssKiB: kib('VmRSS') }
  } catch {
    // Not Linux: maxRSS is the same peak, in KiB.
    return { hwmKiB: process.resourceUsage().maxRSS, rssKiB: process.memoryUsage.rss() / 1024 }
  }
}

/** Voluntary and involuntary context switches, summed over this process's threads. */
function contextSwitches () {
  let voluntary = 0
  let involuntary = 0
  try {
    for (const task of readdirSync('/proc/self/task')) {
      const text = readFileSync(`/proc/self/task/${task}/status`, 'utf8')
      voluntary += Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(text)?.[1] ?? 0)
      involuntary += Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(text)?.[1] ?? 0)
    }
  } catch {
    const usage = process.resourceUsage()
    voluntary = usage.voluntaryContextSwitches
    involuntary = usage.involuntaryContextSwitches
  }
  return { voluntary, involuntary }
}

// Largest V8 heap and off-heap (Buffer) memory seen, sampled every 50 ms: what the
// peak RSS was made of.
const maxMemory = { heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0 }
function sampleMemory () {
  const mem = process.memoryUsage()
  for (const key of Object.keys(maxMemory)) maxMemory[key] = Math.max(maxMemory[key], mem[key])
}
setInterval(sampleMemory, 50).unref()

/** `info`: what the server says of itself (the plugin's store), returned as is. */
export function stats (dir, info = {}) {
  sampleMemory()
  const cpu = process.cpuUsage()
  const { hwmKiB, rssKiB } = procStatus()
  const mem = process.memoryUsage()
  return {
    cpuUserS: cpu.user / 1e6,
    cpuSystemS: cpu.system / 1e6,
    cpuS: (cpu.user + cpu.system) / 1e6,
    peakRssMiB: hwmKiB / 1024,
    rssMiB: rssKiB / 1024,
    heapUsedMiB: mem.heapUsed / 1024 ** 2,
    externalMiB: mem.external / 1024 ** 2,
    arrayBuffersMiB: mem.arrayBuffers / 1024 ** 2,
    maxHeapTotalMiB: maxMemory.heapTotal / 1024 ** 2,
    maxHeapUsedMiB: maxMemory.heapUsed / 1024 ** 2,
    maxExternalMiB: maxMemory.external / 1024 ** 2,
    maxArrayBuffersMiB: maxMemory.arrayBuffers / 1024 ** 2,
    contextSwitches: contextSwitches(),
    /** Whether ws (servers with @fastify/websocket) masks with bufferutil's native code. */
    bufferutil: bufferutilStatus(),
    /** Files left in the upload dir, its subdirectories included: should be 0 between uploads. */
    leftoverFiles: leftoverFiles(dir),
    ...info
  }
}

/**
 * The plugin's durable store claims its directory with a file naming its pid, kept while
 * the server runs: not a leftover. Everything else is (temp files, upload records).
 */
const CLAIM_FILE = 'fcu-store-claim'

/** Files under `dir`, at any depth (the plugin's durable store keeps its own directory there). */
function leftoverFiles (dir) {
  let count = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) count += leftoverFiles(join(dir, entry.name))
    else if (entry.name !== CLAIM_FILE) count++
  }
  return count
}

/**
 * With BENCH_TIMES=1 (bench/patch-overhead.js): the server-side time of every request,
 * by method, from Node's 'request' event (its headers parsed; before Fastify sees it) to
 * the response's 'finish' (its last byte handed to the socket). GET /__bench/times
 * returns them (ms) and starts afresh.
 */
function timeRequests (app) {
  let times = {}
  app.server.prependListener('request', (req, res) => {
    const t0 = performance.now()
    res.once('finish', () => {
      const list = (times[req.method] ??= [])
      if (list.length < 1_000_000) list.push(performance.now() - t0)
    })
  })
  app.get('/__bench/times', async () => {
    const taken = times
    times = {}
    return taken
  })
}

/**
 * Adds GET /__bench/stats (with `info` in it), listens on 127.0.0.1, prints {"port"} on
 * stdout, wires shutdown.
 */
export async function serve (app, dir, info = {}) {
  app.get('/__bench/stats', async () => stats(dir, info))
  if (process.env.BENCH_TIMES === '1') timeRequests(app)
  await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) })
  let closing = false
  const shutdown = async () => {
    if (closing) return
    closing = true
    // Uploads still in flight must not keep us alive for long.
    setTimeout(() => {
      rmSync(dir, { recursive: true, force: true })
      process.exit(1)
    }, 3000).unref()
    try {
      await app.close()
    } finally {
      rmSync(dir, { recursive: true, force: true })
      // process.exit (not a signal death) so that --cpu-prof writes its profile.
      process.exit(0)
    }
  }
  process.on('SIGTERM', shutdown)
  process.on('SIGINT', shutdown)
  // The runner is gone (EPIPE) or closed our stdin: shut down, removing the dir.
  process.stdout.on('error', shutdown)
  if (process.env.BENCH_PARENT === '1') {
    process.stdin.on('end', shutdown)
    process.stdin.on('error', shutdown)
    process.stdin.resume()
  }
  process.stdout.write(JSON.stringify({ port: app.server.address().port, pid: process.pid, dir }) + '\n')
}
