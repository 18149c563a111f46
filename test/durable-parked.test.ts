// Finished durable uploads waiting for their ref outlive the app: a tus upload finished by
// tus-js-client (or by hand) in a first app, that app closed, a second app on the same
// tmpDir (or store) consumes it when its URL is posted to the route, once, for its owner
// only, and leaves nothing behind; unclaimed, it is swept at entryTtl. A route's own writer
// keeps its meta across the restart (its files are logged and left, not removed); a meta
// that is not JSON keeps the entry in its process only. A version 2 channel entry is
// kept as a tus upload is. In one process nothing changes but that the store holds a
// record while the entry waits. Real sockets and files; time is a fake clock where it is
// the subject. Restarts of a real process are restart.test.ts.
import { readFile } from 'node:fs/promises'
import { Writable } from 'node:stream'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import chunkedUpload, {
  FileStore, MemoryStore, TmpFileWriter, type ChunkedUploadOptions, type ParkedEntry, type Store, type TmpFileMeta, type UploadWriter, type WriterFactory
} from '../lib/index.js'
import { resolveAllowUpload } from '../lib/config.js'
import { Entry } from '../lib/entry.js'
import { keptRecord } from '../lib/kept-entry.js'
import { RefStore } from '../lib/refs.js'
import { SWEEP_INTERVAL } from '../lib/sweep.js'
import { ProtocolClient, SUBPROTOCOL, SUBPROTOCOL_V2, startChannelApp } from './kit/channel.js'
import { fakeClock } from './kit/clock.js'
import { bytes, eventually, filesDir, listen, postJson, sha256, strayFiles, tempFiles, tmpDirFor } from './kit/index.js'
import { tusUpload } from './kit/restart.js'
import { TUS, patchHeaders, send } from './kit/resumable.js'

const UNKNOWN_REF = 'FST_CHUNKED_UPLOAD_UNKNOWN_REF'

interface Server { app: ReturnType<typeof Fastify>, url: string, endpoint: string, logs: Array<Record<string, any>> }

/**
 * POST /up, its upload name `file` resumable; owners by the x-user header. The handler
 * consumes every file and answers what it got (with `?keep`, it consumes nothing).
 */
async function serve (t: Test, options: ChunkedUploadOptions, writer?: WriterFactory): Promise<Server> {
  const logs: Array<Record<string, any>> = []
  const stream = new Writable({ write (line, _encoding, done) { logs.push(JSON.parse(String(line))); done() } })
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(chunkedUpload, { owner: (request) => request.headers['x-user'] as string | undefined, ...options })
  app.post('/up', { allowUpload: { file: { accept: 'any', resumable: true, maxFileSize: 1_000_000, maxEntries: 5, ...(writer === undefined ? {} : { writer }) } } }, async (request) => {
    if (Object.hasOwn(request.query as object, 'keep')) return []
    return await request.uploads.consume('file', async (meta: TmpFileMeta & { label?: string }, entry) => ({
      size: meta.size,
      sha256: sha256(await readFile(meta.path)),
      label: meta.label,
      ref: entry.ref,
      clientName: entry.clientName,
      clientType: entry.clientType,
      clientSize: entry.clientSize,
      status: entry.status,
      progress: entry.progress
    }))
  })
  const { url } = await listen(t, app)
  return { app, url, endpoint: `${url}/up/tus`, logs }
}

/** A tus-js-client upload of `data`, finished: its URL. */
async function finished (server: Server, data: Buffer, user = 'alice'): Promise<string> {
  return await tusUpload(data, { endpoint: server.endpoint, protocol: 'tus-v1', chunkSize: 100_000, headers: { 'x-user': user } }).done
}

/** An upload finished by hand (creation, then one PATCH), for tests whose clock is fake: its URL. */
async function finishedByHand (server: Server, data: Buffer, user = 'alice'): Promise<string> {
  const created = await send(server.endpoint, 'POST', { ...TUS, 'upload-length': data.length, 'upload-metadata': `filename ${Buffer.from('a.bin').toString('base64')}`, 'x-user': user })
  if (created.status !== 201) throw new Error(`creation answered ${created.status}: ${created.body}`)
  const url = `${server.url}${String(created.headers.location)}`
  const patched = await send(url, 'PATCH', { ...patchHeaders(0), 'x-user': user }, data)
  if (patched.status !== 204) throw new Error(`PATCH answered ${patched.status}: ${patched.body}`)
  return url
}

/** Posts refs (upload URLs) to the route, as `user`. */
async function consume (server: Server, refs: string | string[], user = 'alice', query = ''): Promise<{ status: number, json: any }> {
  return await postJson(`${server.url}/up${query}`, { file: refs }, { 'x-user': user })
}

function idOf (url: string): string {
  return url.split('/').pop()!
}

/** The parked entries a FileStore keeps in a tmpDir, as files. */
async function parkedFiles (dir: string): Promise<string[]> {
  return (await strayFiles(dir)).filter((path) => /fcu-store-parked-.*\.json$/.test(path))
}

/** The parked entries a store keeps, by ref. */
async function parkedRefs (store: Store): Promise<string[]> {
  return (await store.parked()).map((entry) => entry.ref).sort()
}

/** The temp-file writer, its meta with a label: a route's own writer (not the plugin's default). */
function labelled (dir: string, meta: (state: any) => unknown = (state) => ({ ...TmpFileWriter.meta(state), label: 'mine' })): WriterFactory {
  const writer: UploadWriter = { ...TmpFileWriter, meta }
  return () => [writer, { dir }]
}

t.test('a tus upload finished by tus-js-client waits across app.close(): the next app consumes it by its URL, once, for its owner, byte for byte, and nothing is left', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await serve(t, { tmpDir: dir })
  const data = bytes(250_000, 7)
  const url = await finished(first, data)
  const file = await tempFiles(dir)
  await first.app.close()
  t.equal(file.length, 1)
  t.same(await tempFiles(dir), file, 'its temp file stays')
  t.equal((await parkedFiles(dir)).length, 1, 'and its record')

  const second = await serve(t, { tmpDir: dir })
  t.same(await tempFiles(dir), file, 'the next app does not take its file for a leftover')
  t.match(await consume(second, url, 'mallory'), { status: 400, json: { code: UNKNOWN_REF } }, 'not for another owner')
  t.match(await consume(second, [url, `${second.endpoint}/nope`]), { status: 400, json: { code: UNKNOWN_REF, message: /"nope"/ } }, 'not beside a bad ref')
  t.match(await consume(second, [url, url]), { status: 400, json: { code: UNKNOWN_REF } }, 'not twice in one request')
  const answer = await consume(second, url)
  t.same(answer, {
    status: 200,
    json: [{ size: data.length, sha256: sha256(data), ref: idOf(url), clientName: 'movie.bin', clientType: 'application/octet-stream', clientSize: data.length, status: 'done', progress: 100 }]
  }, 'consumed as it would have been before the restart')
  t.same(await strayFiles(dir), [], 'its temp file and its record are gone')
  t.match(await consume(second, url), { status: 400, json: { code: UNKNOWN_REF } }, 'once')
})

t.test('a finished entry of a version 2 channel socket waits across app.close() too; one of a version 1 socket does not', async (t) => {
  const dir = await tmpDirFor(t)
  const routes = (app: FastifyInstance): void => {
    app.post('/up', { allowUpload: { file: { accept: 'any', maxFileSize: 1_000_000 } } }, async (request) => {
      return await request.uploads.consume('file', async (meta: TmpFileMeta, entry) => ({ size: meta.size, sha256: sha256(await readFile(meta.path)), clientName: entry.clientName }))
    })
  }
  const first = await startChannelApp(t, routes, { tmpDir: dir })
  const data = bytes(50_000, 18)
  const v2 = await ProtocolClient.open(`${first.wsUrl}/up/ws`, [SUBPROTOCOL_V2])
  const kept = await v2.upload(1, data, { name: 'kept.bin' })
  const v1 = await ProtocolClient.open(`${first.wsUrl}/up/ws`, [SUBPROTOCOL])
  const notKept = await v1.upload(1, bytes(100, 19))
  t.match([kept, notKept], [{ type: 'done' }, { type: 'done' }])
  await first.app.close()
  const second = await startChannelApp(t, routes, { tmpDir: dir })
  t.same(await postJson(`${second.url}/up`, { file: kept.ref }), { status: 200, json: [{ size: data.length, sha256: sha256(data), clientName: 'kept.bin' }] })
  t.match(await postJson(`${second.url}/up`, { file: notKept.ref }), { status: 400, json: { code: UNKNOWN_REF } })
  t.same(await strayFiles(dir), [])
})

t.test('a kept entry claimed by a request that does not consume it is removed when the request ends', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await serve(t, { tmpDir: dir })
  const url = await finished(first, bytes(1000, 2))
  await first.app.close()
  const second = await serve(t, { tmpDir: dir })
  t.same(await consume(second, url, 'alice', '?keep'), { status: 200, json: [] })
  t.ok(await eventually(async () => (await strayFiles(dir)).length === 0), 'its file and record are gone')
  t.match(await consume(second, url), { status: 400, json: { code: UNKNOWN_REF } })
})

t.test('two apps in turn on one MemoryStore: a kept entry and one of the running app are consumed together', async (t) => {
  const dir = await tmpDirFor(t)
  const store = new MemoryStore()
  const first = await serve(t, { tmpDir: dir, store })
  const before = bytes(3000, 3)
  const kept = await finished(first, before)
  await first.app.close()
  t.same(await parkedRefs(store), [idOf(kept)])
  const second = await serve(t, { tmpDir: dir, store })
  const after = bytes(2000, 4)
  const live = await finished(second, after)
  t.ok(await eventually(async () => (await parkedRefs(store)).length === 2), 'the new one is kept too')
  t.match(await consume(second, [kept, live], 'mallory'), { status: 400 })
  t.match(await consume(second, [live, kept, `${second.endpoint}/nope`]), { status: 400 })
  t.same((await consume(second, [live, kept])).json.map((file: { sha256: string }) => file.sha256), [sha256(after), sha256(before)], 'both, in the order submitted')
  t.same(await parkedRefs(store), [], 'nothing kept')
  t.same(await strayFiles(dir), [])
})

t.test('two running apps on one MemoryStore: a finished upload one of them holds is handed out by one of them only', async (t) => {
  const dir = await tmpDirFor(t)
  const store = new MemoryStore()
  const a = await serve(t, { tmpDir: dir, store })
  const b = await serve(t, { tmpDir: dir, store })
  const data = bytes(4000, 16)
  const first = await finished(a, data)
  const second = await finished(a, bytes(10, 17))
  t.ok(await eventually(async () => (await parkedRefs(store)).length === 2))
  t.match(await consume(b, first), { status: 200, json: [{ sha256: sha256(data) }] }, 'the other app claims it from the store')
  t.match(await consume(a, first), { status: 400, json: { code: UNKNOWN_REF } }, 'and the app that holds it no longer hands it out')
  t.match(await consume(a, second), { status: 200, json: [{ size: 10 }] }, 'the app that holds one claims it from the store too')
  t.match(await consume(b, second), { status: 400, json: { code: UNKNOWN_REF } })
  t.same(await parkedRefs(store), [])
  t.ok(await eventually(async () => (await strayFiles(dir)).length === 0), 'both files are gone')
})

t.test('in one process: the record is kept while the entry waits, and goes with it when it is claimed, deleted or expires', async (t) => {
  const clock = fakeClock(t)
  const dir = await tmpDirFor(t)
  const store = new MemoryStore()
  const server = await serve(t, { tmpDir: dir, store, entryTtl: 10_000 })
  const claimed = await finishedByHand(server, bytes(100, 1))
  const deleted = await finishedByHand(server, bytes(100, 2))
  const expiring = await finishedByHand(server, bytes(100, 3))
  t.ok(await eventually(async () => (await parkedRefs(store)).length === 3), 'each one kept while it waits')
  const kept = (await store.parked()).find((entry) => entry.ref === idOf(claimed))!
  t.match(kept, { owner: 'alice', meta: { size: 100 }, snapshot: { offset: 100 }, clientName: 'a.bin', clientType: '', clientSize: 100 })
  t.equal(kept.expiresAt, Date.now() + 10_000, 'until its entryTtl')
  t.equal((kept.snapshot as { path: string }).path, (kept.meta as unknown as TmpFileMeta).path, 'its snapshot names the file its meta does')

  t.equal((await consume(server, claimed)).status, 200)
  t.same(await parkedRefs(store), [idOf(deleted), idOf(expiring)].sort(), 'claimed: its record went')
  t.equal((await send(deleted, 'DELETE', { ...TUS, 'x-user': 'alice' })).status, 204)
  t.ok(await eventually(async () => (await parkedRefs(store)).length === 1), 'deleted: its record went')
  await clock.tickAsync(9_999)
  t.same(await parkedRefs(store), [idOf(expiring)])
  await clock.tickAsync(1)
  t.ok(await eventually(async () => (await parkedRefs(store)).length === 0), 'expired: its record went')
  t.ok(await eventually(async () => (await strayFiles(dir)).length === 0), 'and every file')
  t.match(await consume(server, expiring), { status: 400 })
})

t.test('unclaimed after the restart, it is swept once its entryTtl passed: its file and record go', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await serve(t, { tmpDir: dir, entryTtl: 120_000 })
  const url = await finished(first, bytes(5000, 5))
  await first.app.close()
  const clock = fakeClock(t)
  const second = await serve(t, { tmpDir: dir, entryTtl: 120_000 })
  await clock.tickAsync(SWEEP_INTERVAL)
  t.equal((await tempFiles(dir)).length, 1, 'kept until its time')
  await clock.tickAsync(120_000 - SWEEP_INTERVAL)
  t.ok(await eventually(async () => (await strayFiles(dir)).length === 0), 'the sweep took its record and file')
  t.match(await consume(second, url), { status: 400, json: { code: UNKNOWN_REF } })
})

t.test('claimed after its entryTtl, before a sweep took it: unknown, and it goes at once', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await serve(t, { tmpDir: dir, entryTtl: 10_000 })
  const url = await finished(first, bytes(5000, 6))
  await first.app.close()
  const clock = fakeClock(t)
  const second = await serve(t, { tmpDir: dir, entryTtl: 10_000 })
  await clock.tickAsync(10_000)
  t.match(await consume(second, url), { status: 400, json: { code: UNKNOWN_REF } })
  t.same(await strayFiles(dir), [], 'its record and file are gone')
})

t.test('a route\'s own writer with checkpoint/restore and a JSON meta: consumed after the restart with its meta; its file is left, and logged', async (t) => {
  const dir = await tmpDirFor(t)
  const writer = labelled(filesDir(dir))
  const first = await serve(t, { tmpDir: dir }, writer)
  const data = bytes(40_000, 8)
  const url = await finished(first, data)
  await first.app.close()
  const second = await serve(t, { tmpDir: dir }, writer)
  const [file] = await tempFiles(dir)
  const answer = await consume(second, url)
  t.match(answer, { status: 200, json: [{ size: data.length, sha256: sha256(data), label: 'mine', clientName: 'movie.bin' }] }, 'its meta, as the writer made it')
  t.same(await tempFiles(dir), [file], 'its writer cannot be told: its file is left')
  t.same(await parkedFiles(dir), [], 'its record is gone')
  t.match(second.logs.filter((line) => /kept across a restart ended without its writer/.test(line.msg)), [
    { level: 40, ref: idOf(url), snapshot: { offset: data.length } }
  ], 'what it left is logged, once')
  t.match(await consume(second, url), { status: 400 })
})

t.test('a meta that is not JSON: the entry waits in its process only, which is logged once per upload config', async (t) => {
  const dir = await tmpDirFor(t)
  const writer = labelled(filesDir(dir), (state) => ({ ...TmpFileWriter.meta(state), at: new Date(0) }))
  const first = await serve(t, { tmpDir: dir }, writer)
  const consumed = await finished(first, bytes(100, 9))
  const left = await finished(first, bytes(100, 10))
  t.match(first.logs.filter((line) => /not JSON/.test(line.msg)), [
    { level: 40, uploadName: 'file', msg: 'finished uploads of "file" wait for their ref in this process only, not across a restart: their writer\'s meta is not JSON' }
  ], 'once, for two uploads')
  t.match(await consume(first, consumed), { status: 200, json: [{ size: 100 }] }, 'in its process, consumed as ever')
  await first.app.close()
  t.same(await strayFiles(dir), [], 'nothing kept: the waiting one was discarded at shutdown, as ever')
  const second = await serve(t, { tmpDir: dir }, writer)
  t.match(await consume(second, left), { status: 400, json: { code: UNKNOWN_REF } })
})

/** A MemoryStore whose park, forget or claim fails when asked to. */
class FailingStore extends MemoryStore {
  failing = new Set<string>()
  override async park (entry: ParkedEntry): Promise<void> {
    if (this.failing.has('park')) throw new Error('park failed')
    await super.park(entry)
  }

  override async forget (ref: string): Promise<boolean> {
    if (this.failing.has('forget')) throw new Error('forget failed')
    return await super.forget(ref)
  }

  override async claim (ref: string, owner: string | undefined, configKey: string): Promise<ParkedEntry | undefined> {
    if (this.failing.has(`claim ${ref}`)) throw new Error('claim failed')
    return await super.claim(ref, owner, configKey)
  }
}

t.test('a store that fails: an entry it could not keep waits in its process only; a claim that fails takes nothing', async (t) => {
  const dir = await tmpDirFor(t)
  const store = new FailingStore()
  const first = await serve(t, { tmpDir: dir, store })
  store.failing.add('park')
  const notKept = await finished(first, bytes(100, 11), 'bob')
  t.ok(await eventually(() => first.logs.some((line) => line.level === 50 && line.ref === idOf(notKept) && /could not be kept in the store/.test(line.msg))), 'logged')
  store.failing.delete('park')
  const a = await finished(first, bytes(100, 12))
  const b = await finished(first, bytes(100, 13))
  const c = await finished(first, bytes(100, 14))
  t.ok(await eventually(async () => (await parkedRefs(store)).length === 3))
  t.match(await consume(first, [a, notKept]), { status: 400, json: { code: UNKNOWN_REF } }, 'one kept, one of another owner held here only: neither')
  t.same(await parkedRefs(store), [idOf(a), idOf(b), idOf(c)].sort(), 'the kept one is put back')
  store.failing.add('forget')
  t.equal((await consume(first, c)).status, 200)
  t.ok(await eventually(() => first.logs.some((line) => line.ref === idOf(c) && /could not be removed from the store/.test(line.msg))), 'a record that could not be removed is logged')
  store.failing.delete('forget')
  await store.forget(idOf(c))
  await first.app.close()
  t.same(await parkedRefs(store), [idOf(a), idOf(b)].sort(), 'kept: the two with a record')
  t.equal((await tempFiles(dir)).length, 2, 'the one without a record was discarded at shutdown')

  const second = await serve(t, { tmpDir: dir, store })
  store.failing.add(`claim ${idOf(b)}`)
  t.match(await consume(second, [a, b]), { status: 500 })
  t.same(await parkedRefs(store), [idOf(a), idOf(b)].sort(), 'what was claimed before the failure is put back')
  store.failing.clear()
  t.equal((await consume(second, [a, b])).status, 200)
  t.same(await strayFiles(dir), [])
})

/** A finished entry of the temp-file writer (in `dir`), its meta as `meta` makes it; checkpointed at its end if `checkpointed`. */
async function finishedEntry (dir: string, checkpointed: boolean, meta?: (state: any) => unknown): Promise<Entry> {
  const log = { warn () {}, error () {}, info () {}, debug () {} }
  const writer: WriterFactory = () => [meta === undefined ? TmpFileWriter : { ...TmpFileWriter, meta }, { dir }]
  const config = resolveAllowUpload({ f: { accept: 'any', writer } }, {}, writer, 'TEST /').get('f')!
  const entry = new Entry(config, { clientName: 'a.bin', clientType: '', clientSize: 3 }, { log } as unknown as FastifyRequest, log as never)
  await entry.start()
  await entry.write(Buffer.from('abc'))
  if (checkpointed) await entry.checkpoint()
  await entry.finish()
  return entry
}

const quiet = { warn () {}, error () {}, info () {}, debug () {} } as never

t.test('the ref store keeps a store\'s operations on one record in order, however fast they follow each other', async (t) => {
  const dir = await tmpDirFor(t)
  const store = new MemoryStore()
  const refs = new RefStore(60_000, { store, log: quiet })
  const entry = await finishedEntry(dir, true)
  t.match(entry.lastSnapshot, { offset: 3 }, 'the last checkpoint\'s snapshot')
  const home = { forsake () {} }
  t.equal(await refs.kept(entry.ref), false, 'not parked: not kept')
  refs.park(entry, 'alice', home)
  refs.forget(entry)
  refs.park(entry, 'alice', home)
  refs.forget(entry)
  refs.park(entry, 'alice', home)
  t.equal(await refs.kept(entry.ref), true, 'its record is written')
  await refs.close()
  t.same(await parkedRefs(store), [entry.ref], 'parked, forgotten, parked again, and so on: the last one holds')
  t.equal(entry.released, true, 'let go at shutdown without a discard')
  t.equal((await tempFiles(dir)).length, 1)
})

t.test('what is not kept: an entry no checkpoint counts whole, one whose meta is not JSON, and every entry of a ref store without a store', async (t) => {
  const dir = await tmpDirFor(t)
  const store = new MemoryStore()
  const home = { forsake () {} }
  const unsaved = await finishedEntry(dir, false)
  t.equal(unsaved.lastSnapshot, undefined, 'no checkpoint, no snapshot')
  const keeping = new RefStore(60_000, { store, log: quiet })
  keeping.park(unsaved, undefined, home)
  t.equal(await keeping.kept(unsaved.ref), false, 'parked, but not kept')
  t.equal(keptRecord(await finishedEntry(dir, true, () => undefined), undefined, 1), 'meta', 'undefined is not JSON')
  t.equal(keptRecord(await finishedEntry(dir, true, () => ({ n: 1n })), undefined, 1), 'meta', 'nor is what JSON.stringify throws on')
  t.equal(keptRecord(await finishedEntry(dir, true, () => { throw new Error('no meta') }), undefined, 1), 'meta', 'nor a meta that throws')
  const memoryOnly = new RefStore(60_000)
  const entry = await finishedEntry(dir, true)
  memoryOnly.park(entry, undefined, home)
  await Promise.all([keeping.close(), memoryOnly.close()])
  t.same(await store.parked(), [], 'nothing kept')
  t.equal((await tempFiles(dir)).length, 3, 'both discarded at shutdown: the three entries made for keptRecord are left')
})

t.test('a kept entry\'s record, as the default store holds it (with fsync): what the next app needs', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await serve(t, { tmpDir: dir, fsync: true })
  const url = await finished(first, bytes(1000, 15))
  await first.app.close()
  const store = await FileStore.open({ dir: filesDir(dir) })
  t.match(await store.parked(), [{ ref: idOf(url), owner: 'alice', clientName: 'movie.bin', clientSize: 1000, snapshot: { offset: 1000 }, meta: { size: 1000 } }])
  await store.close()
  const second = await serve(t, { tmpDir: dir })
  t.equal((await consume(second, url)).status, 200)
})
