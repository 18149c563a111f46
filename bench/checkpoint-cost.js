// What one TmpFileWriter checkpoint costs, with and without `fsync`, after N MiB were
// written since the previous one (the resumable endpoint checkpoints once per PATCH, so
// N is a PATCH's size). Local files only: no server, no network.
//
//   npm run build && node bench/checkpoint-cost.js
//   BENCH_RUNS=3 BENCH_CKPT_MIB=0,1,8 node bench/checkpoint-cost.js     (quick)
//
// Each round, for each size N and each mode (no fsync, fsync), interleaved in a rotated
// order: a new writer in a fresh directory under BENCH_DIR (default os.tmpdir(), the
// plugin's default tmpDir), a first checkpoint (so N = 0 is the fixed cost of a
// checkpoint with nothing new), then N MiB in 64 KiB chunks, each `writeChunk` awaited
// as the plugin does (timed: "write"), then one checkpoint (timed: "checkpoint"). The
// file is discarded after each measurement. Medians over BENCH_RUNS (11) rounds, min–max
// beside them (a round takes a few tenths of a second); every measurement goes to bench/results/checkpoint-cost.json (or BENCH_OUT).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { TmpFileWriter } from '../dist/lib/index.js'

const here = dirname(fileURLToPath(import.meta.url))
const env = process.env
const RUNS = Number(env.BENCH_RUNS ?? 11)
const SIZES = (env.BENCH_CKPT_MIB ?? '0,1,8,64').split(',').map(Number)
const OUT = env.BENCH_OUT ?? join(here, 'results', 'checkpoint-cost.json')
const MIB = 1024 * 1024
const CHUNK = 64 * 1024
const MODES = [{ id: 'plain', fsync: false }, { id: 'fsync', fsync: true }]

const dir = mkdtempSync(join(env.BENCH_DIR ?? tmpdir(), 'fcu-checkpoint-'))
process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
const source = Buffer.alloc(MIB)
for (let i = 0; i < source.length; i++) source[i] = (i * 2654435761) >>> 24

/** One measurement: ms to write `mib` MiB, and ms for the checkpoint after them. */
async function measure (mib, fsync) {
  let state = await TmpFileWriter.init({ dir, fsync })
  try {
    await TmpFileWriter.checkpoint(state)
    const t0 = performance.now()
    for (let written = 0; written < mib * MIB; written += CHUNK) {
      // A fresh view per chunk, as the plugin hands over: the writer keeps it until written.
      state = await TmpFileWriter.writeChunk(source.subarray(written % MIB, written % MIB + CHUNK), state)
    }
    const t1 = performance.now()
    const snapshot = await TmpFileWriter.checkpoint(state)
    const t2 = performance.now()
    if (snapshot.offset !== mib * MIB) throw new Error(`checkpoint counted ${snapshot.offset} bytes of ${mib * MIB}`)
    return { writeMs: t1 - t0, checkpointMs: t2 - t1 }
  } finally {
    await TmpFileWriter.close(state, 'cancel')
  }
}

function median (values) {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

const results = [] // { mib, mode, run, writeMs, checkpointMs }
const cells = SIZES.flatMap((mib) => MODES.map((mode) => ({ mib, mode })))
for (let run = 0; run < RUNS; run++) {
  const order = cells.map((_, i) => cells[(i + run) % cells.length])
  for (const { mib, mode } of order) {
    const result = await measure(mib, mode.fsync)
    results.push({ mib, mode: mode.id, run, ...result })
    process.stderr.write(`run ${run + 1}/${RUNS} ${mib} MiB ${mode.id}: write ${result.writeMs.toFixed(1)} ms, checkpoint ${result.checkpointMs.toFixed(3)} ms\n`)
  }
}

const ms = (value) => value < 10 ? value.toFixed(3) : value.toFixed(1)
const summary = (mib, mode, key) => {
  const values = results.filter((r) => r.mib === mib && r.mode === mode).map((r) => r[key])
  return { median: median(values), min: Math.min(...values), max: Math.max(...values) }
}
const cell = ({ median, min, max }) => `${ms(median)} (${ms(min)}–${ms(max)})`
const rows = SIZES.map((mib) => {
  const plain = summary(mib, 'plain', 'checkpointMs')
  const fsync = summary(mib, 'fsync', 'checkpointMs')
  const write = summary(mib, 'plain', 'writeMs')
  return { mib, write, plain, fsync }
})

console.log(`\nOne TmpFileWriter checkpoint after N MiB written since the previous one; dir ${dir.slice(0, dir.lastIndexOf('/'))}; medians of ${RUNS} (min–max), ms\n`)
console.log('| N MiB | writing the N MiB | checkpoint | checkpoint with fsync | fsync: MiB/s to disk |')
console.log('|---:|---:|---:|---:|---:|')
for (const { mib, write, plain, fsync } of rows) {
  const rate = mib === 0 ? '–' : (mib / (fsync.median / 1000)).toFixed(0)
  console.log(`| ${mib} | ${mib === 0 ? '–' : cell(write)} | ${cell(plain)} | ${cell(fsync)} | ${rate} |`)
}

mkdirSync(dirname(OUT), { recursive: true })
writeFileSync(OUT, JSON.stringify({ date: new Date().toISOString(), dir, runs: RUNS, sizes: SIZES, rows, results }, null, 2))
process.stderr.write(`\nall measurements: ${OUT}\n`)
