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
// as the plugin does (timed: "write"), then one checkpoint (timed: "checkpoint"), then
// the upload's record rewritten with that snapshot in a FileStore (timed: "record"), as
// the plugin's durable default store does after each PATCH's checkpoint: one store per
// mode (`fsync` as the writer's), in its own directory. The file and the record are
// discarded after each measurement. Medians over BENCH_RUNS (11) rounds, min–max
// beside them (a round takes a few tenths of a second); every measurement goes to bench/results/checkpoint-cost.json (or BENCH_OUT).
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import * as lib from '../dist/lib/index.js'

const { TmpFileWriter } = lib
// The public export once the plugin has one, else the module itself.
const { FileStore } = lib.FileStore === undefined ? await import('../dist/lib/stores/file.js') : lib

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

const stores = Object.fromEntries(await Promise.all(MODES.map(async (mode) =>
  [mode.id, await FileStore.open({ dir: join(dir, `store-${mode.id}`), fsync: mode.fsync })])))
let records = 0

/** One measurement: ms to write `mib` MiB, for the checkpoint after them, and for the record of it. */
async function measure (mib, mode) {
  const { fsync } = mode
  const store = stores[mode.id]
  let state = await TmpFileWriter.init({ dir, fsync })
  const id = `u${++records}`
  let lock
  try {
    const first = await TmpFileWriter.checkpoint(state)
    const now = Date.now()
    await store.createUpload({ id, configKey: 'bench', owner: undefined, length: undefined, offset: 0, metadata: undefined, concat: undefined, snapshot: first, createdAt: now, expiresAt: now + 3_600_000 })
    lock = await store.lock(id, () => {}, 60_000)
    const t0 = performance.now()
    for (let written = 0; written < mib * MIB; written += CHUNK) {
      // A fresh view per chunk, as the plugin hands over: the writer keeps it until written.
      state = await TmpFileWriter.writeChunk(source.subarray(written % MIB, written % MIB + CHUNK), state)
    }
    const t1 = performance.now()
    const snapshot = await TmpFileWriter.checkpoint(state)
    const t2 = performance.now()
    await store.updateUpload(id, { offset: 0, token: lock.token }, { offset: snapshot.offset, snapshot })
    const t3 = performance.now()
    if (snapshot.offset !== mib * MIB) throw new Error(`checkpoint counted ${snapshot.offset} bytes of ${mib * MIB}`)
    return { writeMs: t1 - t0, checkpointMs: t2 - t1, recordMs: t3 - t2 }
  } finally {
    await lock?.release()
    await store.deleteUpload(id)
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
    const result = await measure(mib, mode)
    results.push({ mib, mode: mode.id, run, ...result })
    process.stderr.write(`run ${run + 1}/${RUNS} ${mib} MiB ${mode.id}: write ${result.writeMs.toFixed(1)} ms, checkpoint ${result.checkpointMs.toFixed(3)} ms, record ${result.recordMs.toFixed(3)} ms\n`)
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
  const record = summary(mib, 'plain', 'recordMs')
  const recordFsync = summary(mib, 'fsync', 'recordMs')
  return { mib, write, plain, fsync, record, recordFsync }
})
await Promise.all(Object.values(stores).map(async (store) => await store.close()))

console.log(`\nOne TmpFileWriter checkpoint after N MiB written since the previous one, then the FileStore record of it; dir ${dir.slice(0, dir.lastIndexOf('/'))}; medians of ${RUNS} (min–max), ms\n`)
console.log('| N MiB | writing the N MiB | checkpoint | record | checkpoint with fsync | record with fsync | fsync: MiB/s to disk |')
console.log('|---:|---:|---:|---:|---:|---:|---:|')
for (const { mib, write, plain, fsync, record, recordFsync } of rows) {
  const rate = mib === 0 ? '–' : (mib / (fsync.median / 1000)).toFixed(0)
  console.log(`| ${mib} | ${mib === 0 ? '–' : cell(write)} | ${cell(plain)} | ${cell(record)} | ${cell(fsync)} | ${cell(recordFsync)} | ${rate} |`)
}

mkdirSync(dirname(OUT), { recursive: true })
writeFileSync(OUT, JSON.stringify({ date: new Date().toISOString(), dir, runs: RUNS, sizes: SIZES, rows, results }, null, 2))
process.stderr.write(`\nall measurements: ${OUT}\n`)
