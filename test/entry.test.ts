// The entry engine on its own: cancellation racing writer calls, hung writers,
// synchronous throws. The writers here are real writers; only the request is a
// bare object with a logger, since the engine uses nothing else of it.
import t from 'tap'
import { closeSync } from 'node:fs'
import type { FastifyRequest } from 'fastify'
import { resolveAllowUpload } from '../lib/config.js'
import { Entry } from '../lib/entry.js'
import { MemoryWriter, TmpFileWriter, defineWriter, type UploadWriter, type WriterFactory } from '../lib/index.js'
import { Recorder, eventually, sleep, strayFiles, tmpDirFor } from './kit/index.js'
import { fakeClock } from './kit/clock.js'

const warnings: unknown[] = []
const log = {
  warn: (...args: unknown[]) => { warnings.push(args) },
  error: () => {},
  info: () => {},
  debug: () => {},
  trace: () => {},
  fatal: () => {},
  child: () => log,
  level: 'info',
  silent: () => {}
}
const request = { log } as unknown as FastifyRequest
// The engine's writer watchdog is unref'd (a hung writer must not hold a process open);
// with no socket here, this keeps the test process alive while it waits on one.
const keepAlive = setInterval(() => {}, 1000)
t.teardown(() => clearInterval(keepAlive))

function entryWith (writer: WriterFactory, config: Record<string, unknown> = {}, clientSize?: number): Entry {
  const configs = resolveAllowUpload({ f: { accept: 'any', writer, ...config } }, {}, writer, 'TEST /')
  return new Entry(configs.get('f')!, { clientName: 'a.bin', clientType: '', clientSize }, request, log as never)
}

t.test('cancel while writeChunk is in flight: close comes after the call, never during it', async (t) => {
  const recorder = new Recorder({ hangOnChunk: 1 })
  const entry = entryWith(recorder.factory)
  await entry.start()
  const writing = entry.write(Buffer.from('abc'))
  await recorder.hung()
  const cancelled = entry.cancel()
  recorder.release()
  await t.rejects(writing, { code: 'FST_CHUNKED_UPLOAD_CANCELLED' })
  await cancelled
  t.equal(entry.status, 'cancelled')
  t.same(entry.errors, ['cancelled'])
  t.same(recorder.reasons(), ['cancel'])
  t.equal(recorder.records[0]!.bytes, 3, 'the in-flight chunk completed first')
  recorder.check(t)
  await t.rejects(entry.write(Buffer.from('x')), { code: 'FST_CHUNKED_UPLOAD_CANCELLED' }, 'no write after the end')
  await t.rejects(entry.finish(), { code: 'FST_CHUNKED_UPLOAD_CANCELLED' })
  await entry.cancel()
  t.same(recorder.reasons(), ['cancel'], 'cancel is idempotent')
})

t.test('cancel while init is in flight: the writer is closed once init returns', async (t) => {
  const recorder = new Recorder({ hangInit: true })
  const entry = entryWith(recorder.factory)
  const starting = entry.start()
  await recorder.hung()
  const cancelled = entry.cancel()
  recorder.release()
  await t.rejects(starting, { code: 'FST_CHUNKED_UPLOAD_CANCELLED' })
  await cancelled
  t.same(recorder.reasons(), ['cancel'])
})

t.test('cancel while the factory runs: no init, no close', async (t) => {
  const recorder = new Recorder()
  let release!: () => void
  let inFactory!: () => void
  const factoryRuns = new Promise<void>((resolve) => { inFactory = resolve })
  const entry = entryWith(async () => {
    inFactory()
    await new Promise<void>((resolve) => { release = resolve })
    return recorder.factory('f', entry, request)
  })
  const starting = entry.start()
  await factoryRuns
  const cancelled = entry.cancel()
  release()
  await cancelled
  await t.rejects(starting, { code: 'FST_CHUNKED_UPLOAD_CANCELLED' })
  t.equal(recorder.records.length, 0)
  const early = entryWith(recorder.factory)
  await early.cancel()
  await t.rejects(early.start(), { code: 'FST_CHUNKED_UPLOAD_CANCELLED' }, 'cancelled before start: start refuses')
  t.equal(recorder.records.length, 0)
})

t.test('a writer that throws synchronously is a writer failure', async (t) => {
  const closes: unknown[] = []
  const Sync = defineWriter({
    init: () => ({ n: 0 }),
    meta: (state) => state,
    writeChunk: () => { throw new Error('sync throw') },
    close: (state, reason) => { closes.push(reason); return state }
  })
  const entry = entryWith(() => Sync)
  await entry.start()
  await t.rejects(entry.write(Buffer.from('x')), { code: 'FST_CHUNKED_UPLOAD_WRITER_FAILURE' })
  t.equal(closes.length, 1)
  t.match(closes[0], { error: { message: 'sync throw' } })
  t.same(entry.errors, ['writer_failure'])
})

t.test('a factory that throws is a writer failure, without init or close', async (t) => {
  const entry = entryWith(() => { throw new Error('no writer for you') })
  await t.rejects(entry.start(), { code: 'FST_CHUNKED_UPLOAD_WRITER_FAILURE' })
  t.equal(entry.status, 'failed')
})

t.test('init that outlives writerTimeout fails the entry; if it succeeds later, close(cancel) follows', async (t) => {
  const clock = fakeClock(t)
  const recorder = new Recorder({ hangInit: true })
  const entry = entryWith(recorder.factory, { writerTimeout: 50 })
  const failing = t.rejects(entry.start(), { code: 'FST_CHUNKED_UPLOAD_WRITER_FAILURE' })
  await recorder.hung()
  await clock.tickAsync(50)
  await failing
  t.equal(recorder.records.length, 0)
  recorder.release()
  await recorder.until('the late init\'s writer to close', () => recorder.reasons().length === 1)
  t.same(recorder.reasons(), ['cancel'])
  await entry.cancel()
  t.same(recorder.reasons(), ['cancel'], 'no second close')
})

t.test("close('done') that outlives writerTimeout fails the entry", async (t) => {
  const clock = fakeClock(t)
  let release!: () => void
  let inClose!: () => void
  const closeRuns = new Promise<void>((resolve) => { inClose = resolve })
  const Slow = defineWriter({
    init: () => ({}),
    meta: () => ({}),
    writeChunk: (_data, state) => state,
    close: async (state) => {
      inClose()
      await new Promise<void>((resolve) => { release = resolve })
      return state
    }
  })
  const entry = entryWith(() => Slow, { writerTimeout: 50 })
  await entry.start()
  const failing = t.rejects(entry.finish(), { code: 'FST_CHUNKED_UPLOAD_WRITER_FAILURE' })
  await closeRuns
  await clock.tickAsync(50)
  await failing
  t.equal(entry.status, 'failed')
  release()
})

t.test('discard and progress failures are logged, never thrown', async (t) => {
  warnings.length = 0
  const Discarding: UploadWriter = { ...MemoryWriter, discard: () => { throw new Error('discard failed') } }
  const entry = entryWith(() => Discarding, { progress: () => { throw new Error('progress failed') } }, 3)
  await entry.start()
  await entry.write(Buffer.from('abc'))
  await entry.finish()
  t.same(entry.meta(), { buffer: Buffer.from('abc') })
  await entry.discard()
  await entry.discard()
  t.ok(warnings.length >= 2, 'both failures were logged')
  t.equal(entry.progress, 100)
})

t.test('a declared size bounds the bytes a client may send', async (t) => {
  const recorder = new Recorder()
  const entry = entryWith(recorder.factory, {}, 4)
  t.equal(entry.progress, 0)
  await entry.start()
  await entry.write(Buffer.from('ab'))
  t.equal(entry.progress, 50)
  await t.rejects(entry.write(Buffer.from('abc')), { code: 'FST_CHUNKED_UPLOAD_TOO_LARGE' })
  t.same(entry.errors, ['too_large'])
  t.same(recorder.reasons(), ['cancel'])
})

t.test('MemoryWriter meta mid-upload, and TmpFileWriter without a dir', async (t) => {
  const state = MemoryWriter.init(undefined) as ReturnType<typeof MemoryWriter.init> & object
  MemoryWriter.writeChunk(Buffer.from('ab'), state as never)
  t.same(MemoryWriter.meta(state as never), { buffer: Buffer.from('ab') })
  const tmp = await TmpFileWriter.init(undefined)
  await TmpFileWriter.close(tmp, 'cancel')
  t.notOk(tmp.path.includes('undefined'))
})

t.test('a temp-file write that fails surfaces at the next writeChunk or at close', async (t) => {
  const dir = await tmpDirFor(t)
  const state = await TmpFileWriter.init({ dir })
  closeSync(state.fd)
  await TmpFileWriter.writeChunk(Buffer.from('lost'), state)
  t.ok(await eventually(() => state.failure !== undefined), 'the background write failed')
  t.throws(() => TmpFileWriter.writeChunk(Buffer.from('more'), state), { code: 'EBADF' })
  await t.rejects(async () => { await TmpFileWriter.close(state, 'done') }, { code: 'EBADF' })
  t.same(await strayFiles(dir), [], 'an incomplete file does not outlive its close')
})

t.test('edges: empty writes, writes out of turn, unchanged progress, a zero-byte declared size', async (t) => {
  const seen: number[] = []
  const recorder = new Recorder()
  const entry = entryWith(recorder.factory, { progress: (_name: string, e: Entry) => { seen.push(e.progress) } }, 1000)
  await t.rejects(entry.write(Buffer.from('x')), { code: 'FST_CHUNKED_UPLOAD_CANCELLED' }, 'no write before start')
  await t.rejects(entry.finish(), { code: 'FST_CHUNKED_UPLOAD_CANCELLED' }, 'no finish before start')
  await entry.start()
  await entry.write(Buffer.alloc(0))
  await entry.write(Buffer.from('a'))
  await entry.write(Buffer.from('b'))
  t.same(seen, [0], 'progress is reported when it changes, not on every chunk')
  await entry.finish()
  await t.rejects(entry.write(Buffer.from('late')), { code: 'FST_CHUNKED_UPLOAD_CANCELLED' }, 'no write after done')
  t.same(seen, [0, 100])
  t.same(recorder.records[0]!.chunks, [1, 1], 'an empty piece never reaches the writer')
  const empty = entryWith(recorder.factory, {}, 0)
  t.equal(empty.progress, 0)
})

t.test('MemoryWriter drops its bytes on cancel; TmpFileWriter makes writeChunk wait past its high-water mark', async (t) => {
  const memory = MemoryWriter.init(undefined) as never
  MemoryWriter.writeChunk(Buffer.from('ab'), memory)
  MemoryWriter.close(memory, 'cancel')
  t.equal((memory as { buffer: unknown }).buffer, undefined)
  const dir = await tmpDirFor(t)
  const state = await TmpFileWriter.init({ dir })
  const waited = TmpFileWriter.writeChunk(Buffer.alloc(2 * 1024 * 1024, 1), state)
  t.ok(waited instanceof Promise, 'over the high-water mark, the call waits for the disk')
  await waited
  await TmpFileWriter.close(state, 'done')
  t.same(TmpFileWriter.meta(state), { path: state.path, size: 2 * 1024 * 1024 })
  await TmpFileWriter.discard!(state, { consumed: true })
  t.same(await strayFiles(dir), [])
})

t.test('a cancel while idle, with a slow close: no write or finish slips in, one close', async (t) => {
  const closes: unknown[] = []
  const calls: string[] = []
  const SlowClose = defineWriter({
    init: () => ({}),
    meta: () => ({}),
    writeChunk: (_data, state) => { calls.push('writeChunk'); return state },
    close: async (state, reason) => { calls.push('close'); closes.push(reason); await sleep(100); return state }
  })
  const entry = entryWith(() => SlowClose)
  await entry.start()
  const cancelling = entry.cancel()
  await t.rejects(entry.write(Buffer.from('late')), { code: 'FST_CHUNKED_UPLOAD_CANCELLED' })
  await t.rejects(entry.finish(), { code: 'FST_CHUNKED_UPLOAD_CANCELLED' })
  await cancelling
  t.same(closes, ['cancel'])
  t.same(calls, ['close'])
})

t.test("close('done') fails: the writer's discard still runs once, after the close", async (t) => {
  const events: string[] = []
  const Failing = defineWriter({
    init: () => ({}),
    meta: () => ({}),
    writeChunk: (_data, state) => state,
    close: async () => { events.push('close'); throw new Error('disk full') },
    discard: () => { events.push('discard'); throw new Error('discard failed too') }
  })
  warnings.length = 0
  const entry = entryWith(() => Failing)
  await entry.start()
  await t.rejects(entry.finish(), { code: 'FST_CHUNKED_UPLOAD_WRITER_FAILURE' })
  t.ok(await eventually(() => events.length === 2))
  t.same(events, ['close', 'discard'])
  t.ok(await eventually(() => warnings.length === 1), 'the failing discard was logged')
})

t.test('many temp files share one queue budget: past it, writeChunk waits even for a small file', async (t) => {
  const dir = await tmpDirFor(t)
  const states = await Promise.all(Array.from({ length: 280 }, async () => await TmpFileWriter.init({ dir })))
  const results = states.map((state) => TmpFileWriter.writeChunk(Buffer.alloc(250 * 1024, 2), state))
  t.notOk(results[0] instanceof Promise, 'a lone small chunk is queued at once')
  t.ok(results[279] instanceof Promise, 'past the shared budget, the next writer waits for the disk')
  await Promise.all(results)
  await Promise.all(states.map(async (state) => await TmpFileWriter.close(state, 'cancel')))
  t.same(await strayFiles(dir), [])
})

t.test('an init waiting on a remote service stops at the cancel (its signal aborts): the entry is cancelled, no close (no state)', async (t) => {
  fakeClock(t)
  let closes = 0
  let initStarted!: () => void
  const started = new Promise<void>((resolve) => { initStarted = resolve })
  const Remote = defineWriter({
    init: async (_options: undefined, call) => {
      initStarted()
      const signal = call!.signal
      return await new Promise<object>((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
    },
    meta: () => ({}),
    writeChunk: (_data, state) => state,
    close: (state) => { closes++; return state }
  })
  const entry = entryWith(() => Remote)
  const starting = t.rejects(entry.start(), { code: 'FST_CHUNKED_UPLOAD_CANCELLED' })
  await started
  await entry.cancel()
  await starting
  t.equal(entry.status, 'cancelled', 'cancelled, not failed: the writer did not fail')
  t.same(entry.errors, ['cancelled'])
  t.equal(closes, 0, 'init never succeeded: nothing to close')
})
