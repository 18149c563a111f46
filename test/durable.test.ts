// Durable resumable uploads in one process: an app closes (its unfinished uploads kept in
// the store), another starts on the same tmpDir (or store) and goes on from the offset the
// last checkpoint saved. Real sockets, real files; the writers are the temp-file writer,
// wrapped to journal its calls. Restarts of a real process (kill -9) are restart.test.ts.
import { readFile, truncate, writeFile } from 'node:fs/promises'
import { Writable } from 'node:stream'
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import chunkedUpload, {
  FileStore, MemoryStore, MemoryWriter, TmpFileWriter, type ChunkedUploadOptions, type Store, type TmpFileMeta, type WriterFactory
} from '../lib/index.js'
import { SWEEP_INTERVAL, Sweeper } from '../lib/sweep.js'
import { resolveAllowUpload } from '../lib/config.js'
import { fakeClock } from './kit/clock.js'
import { bytes, eventually, filesDir, leftBehind, listen, sha256, strayFiles, tempFiles, tmpDirFor, until } from './kit/index.js'
import { PARTIAL, TUS, ietf, open, patchHeaders, send, type Reply } from './kit/resumable.js'
import { journaled } from './kit/journal.js'

interface Server { app: ReturnType<typeof Fastify>, url: string, endpoint: string, logs: Array<Record<string, any>> }

/** POST /up, its upload name `file` resumable (maxFileSize 1 MB); the handler answers each file's size and SHA-256. */
async function serve (t: Test, options: ChunkedUploadOptions, writer?: WriterFactory): Promise<Server> {
  const logs: Array<Record<string, any>> = []
  const stream = new Writable({ write (line, _encoding, done) { logs.push(JSON.parse(String(line))); done() } })
  const app = Fastify({ logger: { level: 'info', stream } })
  await app.register(chunkedUpload, options)
  app.post('/up', { allowUpload: { file: { accept: 'any', resumable: true, maxFileSize: 1_000_000, ...(writer === undefined ? {} : { writer }) } } }, async (request) => {
    return await request.uploads.consume('file', async (meta: TmpFileMeta) => ({ size: meta.size, sha256: sha256(await readFile(meta.path)) }))
  })
  const { url } = await listen(t, app)
  return { app, url, endpoint: `${url}/up/tus`, logs }
}

/** The id of the upload a creation made: the last segment of its Location. */
function idOf (created: Reply): string {
  return String(created.headers.location).split('/').pop()!
}

async function create (server: Server, length: number, more = {}): Promise<string> {
  const created = await send(server.endpoint, 'POST', { ...TUS, 'upload-length': length, 'upload-metadata': `filename ${Buffer.from('a.bin').toString('base64')}`, ...more })
  if (created.status !== 201) throw new Error(`creation answered ${created.status}: ${created.body}`)
  return idOf(created)
}

async function patch (server: Server, id: string, offset: number, data: Buffer): Promise<Reply> {
  return await send(`${server.endpoint}/${id}`, 'PATCH', patchHeaders(offset), data)
}

async function head (server: Server, id: string): Promise<Reply> {
  return await send(`${server.endpoint}/${id}`, 'HEAD', TUS)
}

/**
 * An upload created in a first app (and `data` appended from offset 0, if given), then
 * kept when that app closes: its id, for the next app to go on with.
 */
async function keptUpload (t: Test, options: ChunkedUploadOptions, writer: WriterFactory | undefined, length: number, data?: Buffer): Promise<string> {
  const first = await serve(t, options, writer)
  const id = await create(first, length)
  if (data !== undefined) t.equal((await patch(first, id, 0, data)).status, 204)
  await first.app.close()
  return id
}

async function claim (server: Server, id: string): Promise<{ status: number, json: any }> {
  const response = await fetch(`${server.url}/up`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file: id }) })
  return { status: response.status, json: await response.json() }
}

t.test('app.close() keeps an unfinished upload; the next app on the same tmpDir goes on from its offset, and its writer gets one close', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const data = bytes(3000)
  const first = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir)))
  const id = await create(first, 3000)
  const patched = await patch(first, id, 0, data.subarray(0, 1000))
  t.equal(patched.status, 204)
  t.equal(patched.headers['upload-offset'], '1000')
  await first.app.close()
  t.same(journal, ['init', 'checkpoint 0', 'checkpoint 1000', 'checkpoint 1000 last'], 'a checkpoint at creation, at the end of the PATCH, and a last one at shutdown; no close')
  t.equal((await tempFiles(dir)).length, 1, 'its file is kept')
  t.same(await leftBehind(dir), [], 'with its record, and nothing else')

  const second = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir)))
  const described = await head(second, id)
  t.equal(described.status, 200)
  t.equal(described.headers['upload-offset'], '1000', 'the saved offset')
  t.equal(described.headers['upload-length'], '3000')
  t.equal(described.headers['upload-metadata'], `filename ${Buffer.from('a.bin').toString('base64')}`, 'its metadata, as sent')
  t.equal((await patch(second, id, 0, data.subarray(0, 1000))).status, 409, 'nothing is written twice')
  const rest = await patch(second, id, 1000, data.subarray(1000))
  t.equal(rest.status, 204)
  t.equal(rest.headers['upload-offset'], '3000')
  const consumed = await claim(second, id)
  t.same(consumed.json, [{ size: 3000, sha256: sha256(data) }], 'byte-identical')
  t.same(journal.slice(4), ['restore 1000', 'checkpoint 3000', 'close done'], 'restored once, closed once with done')
  t.same(await strayFiles(dir), [], 'nothing left once consumed')
})

t.test('IETF draft: an upload kept at shutdown completes with Upload-Complete in the next app', async (t) => {
  const dir = await tmpDirFor(t)
  const data = bytes(2500, 7)
  const first = await serve(t, { tmpDir: dir })
  const created = await send(first.endpoint, 'POST', ietf(6, { 'upload-complete': '?0', 'content-type': PARTIAL }), data.subarray(0, 1500))
  t.equal(created.status, 201)
  const id = idOf(created)
  await first.app.close()
  const second = await serve(t, { tmpDir: dir })
  const described = await send(`${second.endpoint}/${id}`, 'HEAD', ietf(6))
  t.equal(described.headers['upload-offset'], '1500')
  t.equal(described.headers['upload-complete'], '?0')
  const done = await send(`${second.endpoint}/${id}`, 'PATCH', ietf(6, { 'upload-offset': 1500, 'upload-complete': '?1', 'content-type': PARTIAL }), data.subarray(1500))
  t.equal(done.status, 204)
  t.equal(done.headers['upload-complete'], '?1')
  t.same((await claim(second, id)).json, [{ size: 2500, sha256: sha256(data) }])
})

t.test('a PATCH in flight at shutdown answers 503; the bytes its writer accepted are saved and the next app goes on from them', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const data = bytes(100_000, 3)
  const first = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir)))
  const id = await create(first, data.length)
  const running = open(`${first.endpoint}/${id}`, 'PATCH', patchHeaders(0, { 'content-length': data.length }))
  running.req.write(data.subarray(0, 40_000))
  // Barrier: the writer holds the first 40 000 bytes (the temp file has them).
  await until('the first bytes on disk', async () => {
    const [file] = await tempFiles(dir)
    return file !== undefined && (await readFile(`${dir}/${file}`)).length === 40_000
  })
  const closing = first.app.close()
  const answer = await running.reply
  t.equal(answer.status, 503, 'the PATCH is told the server is shutting down')
  await closing
  t.same(journal.filter((line) => line.startsWith('close')), [], 'no close: the upload is kept')
  const second = await serve(t, { tmpDir: dir })
  t.equal((await head(second, id)).headers['upload-offset'], '40000', 'what the writer accepted')
  t.equal((await patch(second, id, 40_000, data.subarray(40_000))).status, 204)
  t.same((await claim(second, id)).json, [{ size: data.length, sha256: sha256(data) }])
})

t.test('restored by two requests at once: one restore, and both see the same upload', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const id = await keptUpload(t, { tmpDir: dir }, journaled(journal, filesDir(dir)), 10, bytes(4))
  const second = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir)))
  const [a, b] = await Promise.all([head(second, id), head(second, id)])
  t.same([a.status, b.status, a.headers['upload-offset'], b.headers['upload-offset']], [200, 200, '4', '4'])
  t.same(journal.filter((line) => line.startsWith('restore')), ['restore 4'], 'restored once')
  await send(`${second.endpoint}/${id}`, 'DELETE', TUS)
  t.equal((await head(second, id)).status, 410, 'terminated after its restore: gone')
  t.same(journal.slice(-1), ['close cancel'])
  t.same(await strayFiles(dir), [], 'its file and record are removed')
})

t.test('a record is for its owner and its route only: anyone else gets 404, and nothing is restored', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const owner = (request: { headers: Record<string, unknown> }): string | undefined => request.headers['x-user'] as string | undefined
  const first = await serve(t, { tmpDir: dir, owner }, journaled(journal, filesDir(dir)))
  const created = await send(first.endpoint, 'POST', { ...TUS, 'upload-length': 10, 'x-user': 'alice' })
  const id = idOf(created)
  await first.app.close()
  const second = await serve(t, { tmpDir: dir, owner }, journaled(journal, filesDir(dir)))
  t.equal((await send(`${second.endpoint}/${id}`, 'HEAD', { ...TUS, 'x-user': 'mallory' })).status, 404, 'another owner')
  t.equal((await send(`${second.endpoint}/${id}`, 'HEAD', TUS)).status, 404, 'nobody')
  t.same(journal.filter((line) => line.startsWith('restore')), [], 'never restored for them')
  t.equal((await send(`${second.endpoint}/${id}`, 'HEAD', { ...TUS, 'x-user': 'alice' })).headers['upload-offset'], '0', 'its owner continues it')
})

t.test('a record whose bytes were lost cannot be restored: 410 saying so, a log line, the record and the file removed', async (t) => {
  const dir = await tmpDirFor(t)
  const id = await keptUpload(t, { tmpDir: dir }, undefined, 10, bytes(5))
  const [file] = await tempFiles(dir)
  await truncate(`${dir}/${file!}`, 2)
  const second = await serve(t, { tmpDir: dir })
  const gone = await patch(second, id, 5, bytes(5))
  t.equal(gone.status, 410)
  t.match(gone.json, { code: 'FST_CHUNKED_UPLOAD_GONE', message: /its writer failed/ })
  t.ok(second.logs.some((line) => line.level === 50 && /could not be restored/.test(line.msg) && line.ref === id), 'logged, with its ref')
  t.equal((await head(second, id)).status, 410, 'remembered here')
  t.same(await strayFiles(dir), [], 'its record and its file are gone')
})

t.test('a route whose writer changed to one without restore: its kept uploads cannot go on (410)', async (t) => {
  const dir = await tmpDirFor(t)
  const id = await keptUpload(t, { tmpDir: dir }, undefined, 10)
  const second = await serve(t, { tmpDir: dir }, () => MemoryWriter)
  t.equal((await head(second, id)).status, 410)
  t.ok(second.logs.some((line) => /could not be restored/.test(line.msg) && /no restore/.test(line.err?.message)), 'the log says why')
})

t.test('a writer without checkpoint and restore: a warning once per upload config, and its uploads are cancelled at shutdown', async (t) => {
  const dir = await tmpDirFor(t)
  const server = await serve(t, { tmpDir: dir }, () => MemoryWriter)
  await create(server, 10)
  await create(server, 10)
  const warnings = server.logs.filter((line) => line.level === 40 && /cannot continue after a restart/.test(line.msg))
  t.equal(warnings.length, 1, 'said once')
  t.match(warnings[0]?.msg, /"file" of POST \/up cannot continue after a restart: their writer has no checkpoint\(\) and restore\(\)/)
  await server.app.close()
  t.same(await strayFiles(dir), [], 'nothing kept')
})

t.test('a checkpoint that throws ends the upload: 500, its writer closed with the error, later requests 410', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  let fail = false
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    checkpoint: async (state, info) => {
      if (fail) throw new Error('disk on fire')
      return await TmpFileWriter.checkpoint!(state, info)
    }
  }))
  const id = await create(server, 10)
  fail = true
  const failed = await patch(server, id, 0, bytes(5))
  t.equal(failed.status, 500)
  t.match(failed.json, { code: 'FST_CHUNKED_UPLOAD_WRITER_FAILURE' })
  t.same(journal.slice(-1), ['close error'])
  t.equal((await head(server, id)).status, 410)
  t.same(await strayFiles(dir), [], 'its file and record are removed')
})

t.test('a checkpoint whose snapshot does not count every accepted byte is a writer failure', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    checkpoint: async (state) => ({ path: state.path, offset: 0 })
  }))
  const id = await create(server, 10)
  const failed = await patch(server, id, 0, bytes(5))
  t.equal(failed.status, 500)
  t.same(journal.slice(-1), ['close error'])
  t.ok(server.logs.some((line) => /upload writer failed/.test(line.msg) && /counts 0 bytes, not the 5/.test(line.err?.message)))
})

/** A MemoryStore whose record updates fail while `failing` is set. */
class FailingStore extends MemoryStore {
  failing = false
  override async updateUpload (...args: Parameters<Store['updateUpload']>): ReturnType<Store['updateUpload']> {
    if (this.failing) throw new Error('store unreachable')
    return await super.updateUpload(...args)
  }
}

t.test('a record that cannot be saved ends its upload: 500 STORE_FAILURE, the writer cancelled, later requests 410', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const store = new FailingStore()
  const server = await serve(t, { tmpDir: dir, store }, journaled(journal, dir))
  const id = await create(server, 10)
  store.failing = true
  const failed = await patch(server, id, 0, bytes(5))
  t.equal(failed.status, 500)
  t.match(failed.json, { code: 'FST_CHUNKED_UPLOAD_STORE_FAILURE' })
  t.same(journal.slice(-1), ['close cancel'])
  t.equal((await head(server, id)).status, 410)
  t.same(await store.uploads(), [], 'its record is removed')
})

t.test('a store the app gives: used, kept by the app across app instances, and not closed by the plugin', async (t) => {
  const dir = await tmpDirFor(t)
  const store = new MemoryStore()
  const first = await serve(t, { tmpDir: dir, store })
  const id = await create(first, 6)
  t.equal((await patch(first, id, 0, bytes(2))).status, 204)
  t.match(await store.getUpload(id), { id, offset: 2, length: 6 }, 'its record, with the saved offset')
  await first.app.close()
  t.equal((await tempFiles(dir)).length, 1, 'temp files straight in tmpDir (a MemoryStore has no directory)')
  const second = await serve(t, { tmpDir: dir, store })
  t.equal((await head(second, id)).headers['upload-offset'], '2')
  t.equal((await patch(second, id, 2, bytes(4, 2))).status, 204)
  t.equal((await claim(second, id)).status, 200)
  t.same(await store.uploads(), [], 'consumed: no record')
})

t.test('another holder asks for an upload\'s lock: the app saves what it has, lets go, and continues it later from the store', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const store = new MemoryStore()
  const server = await serve(t, { tmpDir: dir, store }, journaled(journal, dir))
  const id = await create(server, 8)
  t.equal((await patch(server, id, 0, bytes(3))).status, 204)
  const lock = await store.lock(id, () => {}, 60_000)
  t.same(journal.slice(-1), ['checkpoint 3 last'], 'a last checkpoint before letting go')
  t.match(await store.getUpload(id), { offset: 3 })
  await lock.release()
  const described = await head(server, id)
  t.equal(described.status, 200, 'found again, from its record')
  t.equal(described.headers['upload-offset'], '3')
  t.same(journal.slice(-1), ['restore 3'])
  t.equal((await patch(server, id, 3, bytes(5))).status, 204)
  t.equal((await claim(server, id)).status, 200)
})

t.test('two apps on one tmpDir at once: the second fails to start with STORE_IN_USE, and the first goes on', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await serve(t, { tmpDir: dir })
  const second = Fastify()
  t.teardown(() => second.close())
  await t.rejects(async () => await second.register(chunkedUpload, { tmpDir: dir }), { code: 'FST_CHUNKED_UPLOAD_STORE_IN_USE', message: /give each running process, and each plugin instance in one, its own tmpDir/ })
  t.equal((await send(first.endpoint, 'POST', { ...TUS, 'upload-length': 1 })).status, 201)
})

t.test('the store option must be a store: a clear error naming what it lacks', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => await app.register(chunkedUpload, { store: { getUpload: async () => undefined } as unknown as Store }), {
    code: 'FST_CHUNKED_UPLOAD_INVALID_CONFIG', message: /"store" must be a store .* it has no createUpload, updateUpload/
  })
})

t.test('at start, expired records go (their temp files with them) and temp files no record names are removed', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await serve(t, { tmpDir: dir })
  const expiring = await create(first, 10)
  const kept = await create(first, 10)
  await first.app.close()
  const store = await FileStore.open({ dir: filesDir(dir) })
  const lock = await store.lock(expiring, () => {}, 1000)
  await store.updateUpload(expiring, { offset: 0, token: lock.token }, { expiresAt: 1 })
  await lock.release()
  await store.close()
  await writeFile(`${filesDir(dir)}/upload-${'a'.repeat(32)}`, 'a cut multipart upload of a process that died')
  await writeFile(`${filesDir(dir)}/notes.txt`, 'not the plugin\'s')
  t.equal((await tempFiles(dir)).length, 3)
  const second = await serve(t, { tmpDir: dir })
  t.equal((await tempFiles(dir)).length, 1, 'the kept upload\'s file only')
  t.ok((await strayFiles(dir)).some((path) => path.endsWith('notes.txt')), 'another file is left alone')
  t.equal((await head(second, expiring)).status, 404, 'the expired upload is gone')
  t.equal((await head(second, kept)).status, 200, 'the other goes on')
  t.ok(second.logs.some((line) => /removed temp files a previous run left behind/.test(line.msg) && line.files === 1))
})

t.test('the sweep: an expired record of the plugin\'s writer goes with its file; another writer\'s is logged and left', async (t) => {
  const dir = await tmpDirFor(t)
  const store = new MemoryStore()
  const defaultWriter: WriterFactory = () => [TmpFileWriter, { dir }]
  const own = resolveAllowUpload({ a: { accept: 'any' } }, {}, defaultWriter, 'POST /a')
  const custom = resolveAllowUpload({ b: { accept: 'any', writer: () => MemoryWriter } }, {}, defaultWriter, 'POST /b')
  const configs = new Map([...own.values(), ...custom.values()].map((config) => [config.key, config]))
  const state = await TmpFileWriter.init({ dir })
  await TmpFileWriter.writeChunk(bytes(3), state)
  const snapshot = await TmpFileWriter.checkpoint!(state, { last: true })
  const record = { configKey: own.get('a')!.key, owner: undefined, length: 10, offset: 3, metadata: undefined, concat: undefined, snapshot, createdAt: 0, expiresAt: 50 }
  await store.createUpload({ ...record, id: 'own' })
  await store.createUpload({ ...record, id: 'custom', configKey: custom.get('b')!.key, snapshot: { offset: 3, key: 'x' } })
  await store.createUpload({ ...record, id: 'later', expiresAt: 500 })
  const elsewhere = await tmpDirFor(t)
  const foreign = `${elsewhere}/upload-${'b'.repeat(32)}`
  await writeFile(foreign, 'not in the writer\'s directory')
  await store.createUpload({ ...record, id: 'foreign', snapshot: { offset: 3, path: foreign } })
  const warnings: Array<{ obj: any, msg: string }> = []
  const log = { warn: (obj: any, msg: string) => warnings.push({ obj, msg }), info () {}, error () {} } as never
  const sweeper = new Sweeper({ store, configs, defaultWriter, tmpFiles: { dir }, log })
  await sweeper.sweep(100)
  t.same((await store.uploads()).map((r) => r.id), ['later'], 'expired records leave the store')
  t.same(await strayFiles(dir), [], 'the plugin\'s writer removed its file')
  warnings.sort((x, y) => String(x.obj.ref).localeCompare(String(y.obj.ref)))
  t.match(warnings, [
    { obj: { ref: 'custom', snapshot: { key: 'x' } }, msg: /ended without its writer, which was not told/ },
    { obj: { ref: 'foreign', err: { message: /cannot restore .*not a temp file of this writer/ } }, msg: /temp file of an ended resumable upload could not be removed/ }
  ])
  t.equal(warnings.length, 2)
  t.equal(await readFile(foreign, 'utf8'), 'not in the writer\'s directory', 'a file it did not make is never removed')
})

t.test('the periodic sweep runs every minute while the app runs, and stops at close', async (t) => {
  const clock = fakeClock(t)
  const dir = await tmpDirFor(t)
  const store = new MemoryStore()
  const server = await serve(t, { tmpDir: dir, store })
  const id = await create(server, 10)
  // Another process's upload, of a route this app does not have, that expired.
  await store.createUpload({ ...(await store.getUpload(id))!, id: 'elsewhere', configKey: 'POST /gone {} file', snapshot: { offset: 0 }, expiresAt: 1 })
  await clock.tickAsync(SWEEP_INTERVAL - 1)
  t.ok(await store.getUpload('elsewhere'), 'not yet')
  await clock.tickAsync(1)
  t.ok(await eventually(async () => (await store.getUpload('elsewhere')) === undefined), 'swept after a minute')
  t.ok(await store.getUpload(id), 'a live upload is not swept')
  t.ok(server.logs.some((line) => line.ref === 'elsewhere' && /ended without its writer/.test(line.msg)))
  await server.app.close()
  await store.createUpload({ ...(await store.getUpload(id))!, id: 'after', configKey: 'POST /gone {} file', snapshot: { offset: 0 }, expiresAt: 1 })
  await clock.tickAsync(SWEEP_INTERVAL)
  t.ok(await store.getUpload('after'), 'no sweep once closed')
})

t.test('a partial upload (concatenation) kept at shutdown goes on in the next app, and its final upload concatenates it', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await serve(t, { tmpDir: dir })
  const a = await create(first, 4, { 'upload-concat': 'partial' })
  const b = await create(first, 3, { 'upload-concat': 'partial' })
  t.equal((await patch(first, a, 0, Buffer.from('ab'))).status, 204)
  t.equal((await patch(first, b, 0, Buffer.from('xyz'))).status, 204, 'b is complete: it waits for its final upload in this app only')
  await first.app.close()
  const second = await serve(t, { tmpDir: dir })
  t.equal((await head(second, a)).headers['upload-offset'], '2')
  t.equal((await patch(second, a, 2, Buffer.from('cd'))).status, 204)
  const c = await create(second, 2, { 'upload-concat': 'partial' })
  t.equal((await patch(second, c, 0, Buffer.from('ef'))).status, 204)
  const final = await send(second.endpoint, 'POST', { ...TUS, 'upload-concat': `final;/up/tus/${a} /up/tus/${c}` })
  t.equal(final.status, 201)
  const id = idOf(final)
  t.same((await claim(second, id)).json, [{ size: 6, sha256: sha256(Buffer.from('abcdef')) }])
  t.equal((await head(second, b)).status, 404, 'a complete partial does not outlive its app')
  t.same(await strayFiles(dir), [], 'nothing left')
})

/** A promise and the function that settles it: a barrier the test opens. */
function barrier (): { wait: Promise<void>, open: () => void } {
  let open!: () => void
  const wait = new Promise<void>((resolve) => { open = resolve })
  return { wait, open }
}

t.test('a shutdown that begins while a creation makes its record: the creation answers 503, and neither its record nor its file stays', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const gate = barrier()
  const reached = barrier()
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    checkpoint: async (state, info) => {
      reached.open()
      await gate.wait
      return await TmpFileWriter.checkpoint!(state, info)
    }
  }))
  const creating = send(server.endpoint, 'POST', { ...TUS, 'upload-length': 10 })
  await reached.wait
  const closing = server.app.close()
  // The shutdown has begun (preClose ran) once new requests are refused.
  await until('the shutdown to begin', () => server.app.server.listening ? undefined : true)
  gate.open()
  t.equal((await creating).status, 503)
  await closing
  t.same(journal.slice(-1), ['close cancel'], 'its writer is cancelled')
  t.same(await strayFiles(dir), [], 'no record, no file')
})

t.test('a creation whose first checkpoint fails: 500, its writer closed with the error, no record and no file', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    checkpoint: async () => { throw new Error('no room for it') }
  }))
  const created = await send(server.endpoint, 'POST', { ...TUS, 'upload-length': 10 })
  t.equal(created.status, 500)
  t.match(created.json, { code: 'FST_CHUNKED_UPLOAD_WRITER_FAILURE' })
  t.same(journal, ['init', 'close error'])
  t.same(await strayFiles(dir), [], 'no record, no file')
  t.equal((await send(server.endpoint, 'POST', { ...TUS, 'upload-length': 10 })).status, 500, 'its slot is free for the next')
})

/** A MemoryStore whose lock fails while `failing` is set, and whose record reads fail after `readsBeforeFailing` more. */
class UnlockableStore extends MemoryStore {
  failing = false
  readsBeforeFailing: number | undefined
  override async lock (...args: Parameters<Store['lock']>): ReturnType<Store['lock']> {
    if (this.failing) throw new Error('lock service unreachable')
    return await super.lock(...args)
  }

  /** Reads after which the record reads as gone (someone removed it). */
  readsBeforeGone: number | undefined

  override async getUpload (id: string): ReturnType<Store['getUpload']> {
    if (this.readsBeforeFailing !== undefined && this.readsBeforeFailing-- <= 0) throw new Error('store unreachable')
    if (this.readsBeforeGone !== undefined && this.readsBeforeGone-- <= 0) return undefined
    return await super.getUpload(id)
  }
}

t.test('an upload whose lock (or record, under the lock) cannot be had when it is restored: the request fails, nothing is restored, the record stays for later', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const store = new UnlockableStore()
  const id = await keptUpload(t, { tmpDir: dir, store }, journaled(journal, dir), 6, bytes(3))
  const second = await serve(t, { tmpDir: dir, store }, journaled(journal, dir))
  const before = journal.length
  store.failing = true
  t.equal((await head(second, id)).status, 500, 'the lock')
  store.failing = false
  store.readsBeforeFailing = 1
  t.equal((await head(second, id)).status, 500, 'the record, read again under the lock')
  store.readsBeforeFailing = undefined
  store.readsBeforeGone = 1
  t.equal((await head(second, id)).status, 404, 'gone by the time the lock was had')
  store.readsBeforeGone = undefined
  t.same(journal.slice(before), [], 'no writer call')
  t.equal((await head(second, id)).headers['upload-offset'], '3', 'a later request continues it: the lock was let go')
  t.equal((await patch(second, id, 3, bytes(3, 2))).status, 204)
  t.same(journal.slice(-3), ['restore 3', 'checkpoint 6', 'close done'])
})

t.test('a checkpoint that outlives writerTimeout fails the upload at once; its close follows when it settles', async (t) => {
  const clock = fakeClock(t)
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const hang = barrier()
  const hanging = barrier()
  t.teardown(hang.open)
  let hangs = false
  const server = await serve(t, { tmpDir: dir, defaults: { writerTimeout: 1000 } }, journaled(journal, filesDir(dir), {
    checkpoint: async (state, info) => {
      if (hangs) {
        hanging.open()
        await hang.wait
      }
      const snapshot = await TmpFileWriter.checkpoint!(state, info)
      journal.push(`checkpoint ${snapshot.offset}`)
      return snapshot
    }
  }))
  const id = await create(server, 10)
  hangs = true
  const patching = patch(server, id, 0, bytes(5))
  await hanging.wait
  await clock.tickAsync(1000)
  const failed = await patching
  t.equal(failed.status, 500)
  t.match(failed.json, { code: 'FST_CHUNKED_UPLOAD_WRITER_FAILURE' })
  t.same(journal, ['init', 'checkpoint 0'], 'no close while the checkpoint runs')
  hang.open()
  await until('the late close', () => journal.at(-1) === 'close error' ? true : undefined)
  t.same(journal, ['init', 'checkpoint 0', 'checkpoint 5', 'close error'], 'closed once, after it settled')
})

t.test('a damaged record: set aside with a log line at start, its upload cannot go on (404), the server runs, its file is removed', async (t) => {
  const dir = await tmpDirFor(t)
  const id = await keptUpload(t, { tmpDir: dir }, undefined, 10)
  const [record] = (await strayFiles(dir)).filter((path) => path.endsWith('.json'))
  await writeFile(`${dir}/${record!}`, '{"id": "truncated')
  const second = await serve(t, { tmpDir: dir })
  t.ok(second.logs.some((line) => line.level === 50 && /damaged upload record was set aside/.test(line.msg) && line.err?.code === 'FST_CHUNKED_UPLOAD_STORE_CORRUPT'), 'logged')
  t.equal((await head(second, id)).status, 404)
  t.same(await tempFiles(dir), [], 'its file went with the leftovers')
  t.same((await strayFiles(dir)).map((path) => path.endsWith('.json.corrupt')), [true], 'the damaged record is kept aside for a look')
  t.equal((await send(second.endpoint, 'POST', { ...TUS, 'upload-length': 1 })).status, 201, 'the server runs')
})

t.test('fsync: true, for a power loss too: uploads are kept and continued as without it', async (t) => {
  const dir = await tmpDirFor(t)
  const data = bytes(5000, 9)
  const id = await keptUpload(t, { tmpDir: dir, fsync: true }, undefined, data.length, data.subarray(0, 2000))
  const second = await serve(t, { tmpDir: dir, fsync: true })
  t.equal((await head(second, id)).headers['upload-offset'], '2000')
  t.equal((await patch(second, id, 2000, data.subarray(2000))).status, 204)
  t.same((await claim(second, id)).json, [{ size: data.length, sha256: sha256(data) }])
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => await app.register(chunkedUpload, { fsync: 'yes' as unknown as boolean }), { code: 'FST_CHUNKED_UPLOAD_INVALID_CONFIG', message: /"fsync"/ })
})

t.test('restored after its expiry (it expired since the last sweep): it ends at once, 410 expired, its writer cancelled and its file removed', async (t) => {
  const clock = fakeClock(t)
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const id = await keptUpload(t, { tmpDir: dir, resumableExpiry: 30_000 }, journaled(journal, filesDir(dir)), 10)
  const second = await serve(t, { tmpDir: dir, resumableExpiry: 30_000 }, journaled(journal, filesDir(dir)))
  // Past its expiry, before the next sweep (every minute).
  await clock.tickAsync(31_000)
  const gone = await patch(second, id, 0, bytes(3))
  t.equal(gone.status, 410)
  t.match(gone.json, { message: /it expired/ })
  t.same(journal.slice(-2), ['restore 0', 'close cancel'])
  t.same(await strayFiles(dir), [], 'its record and file are gone')
})

t.test('a shutdown that begins while an upload is restored: 503, the writer lets go (last checkpoint) and the record stays for the next app', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const id = await keptUpload(t, { tmpDir: dir }, journaled(journal, filesDir(dir)), 6, bytes(2))
  const gate = barrier()
  const reached = barrier()
  const second = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    restore: async (snapshot, options, call) => {
      journal.push(`restore ${snapshot.offset}`)
      reached.open()
      await gate.wait
      return await TmpFileWriter.restore!(snapshot, options, call)
    }
  }))
  const asking = head(second, id)
  await reached.wait
  const closing = second.app.close()
  await until('the shutdown to begin', () => second.app.server.listening ? undefined : true)
  gate.open()
  t.equal((await asking).status, 503)
  await closing
  t.same(journal.slice(-2), ['restore 2', 'checkpoint 2 last'], 'no close: it is kept')
  const third = await serve(t, { tmpDir: dir })
  t.equal((await head(third, id)).headers['upload-offset'], '2', 'the next app goes on')
})

/** A MemoryStore whose record deletions wait for `gate` while it is set. */
class SlowDeleteStore extends MemoryStore {
  gate: Promise<void> | undefined
  override async deleteUpload (id: string): Promise<boolean> {
    await this.gate
    return await super.deleteUpload(id)
  }
}

t.test('another holder asks for the lock of an upload that is ending: it ends (nothing saved), and the lock is granted once its record is gone', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const store = new SlowDeleteStore()
  const server = await serve(t, { tmpDir: dir, store }, journaled(journal, dir))
  const id = await create(server, 8)
  const gate = barrier()
  store.gate = gate.wait
  t.equal((await send(`${server.endpoint}/${id}`, 'DELETE', TUS)).status, 204)
  let granted = false
  const locking = store.lock(id, () => {}, 60_000).then((lock) => { granted = true; return lock })
  await until('the record deletion to wait', () => journal.at(-1) === 'close cancel' ? true : undefined)
  t.notOk(granted, 'held while its record is removed')
  gate.open()
  await (await locking).release()
  t.same(journal, ['init', 'checkpoint 0', 'close cancel'], 'no checkpoint for an upload that ended')
  t.equal(await store.getUpload(id), undefined)
})

t.test('a shutdown while the last bytes are with the writer: kept with every byte saved, and the next app finishes it at once (HEAD says complete, the ref can be claimed)', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const gate = barrier()
  const reached = barrier()
  let held = false
  const data = bytes(10, 5)
  const first = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    writeChunk: async (chunk, state, call) => {
      if (!held) {
        held = true
        reached.open()
        await gate.wait
      }
      return await TmpFileWriter.writeChunk(chunk, state, call)
    }
  }))
  const id = await create(first, 10)
  const running = patch(first, id, 0, data)
  await reached.wait
  const closing = first.app.close()
  // The shutdown has begun once Fastify refuses new requests (503) while it waits for this one.
  await until('the shutdown to begin', async () => (await send(`${first.url}/up`, 'GET', {})).status === 503 ? true : undefined)
  gate.open()
  t.equal((await running).status, 503)
  await closing
  t.same(journal, ['init', 'checkpoint 0', 'checkpoint 10', 'checkpoint 10 last'], 'kept, every byte saved, no close')
  const second = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir)))
  const described = await head(second, id)
  t.same([described.headers['upload-offset'], described.headers['upload-length']], ['10', '10'], 'complete: a client has nothing more to send')
  t.same(journal.slice(-3), ['restore 10', 'checkpoint 10', 'close done'], 'finished when restored')
  t.same((await claim(second, id)).json, [{ size: 10, sha256: sha256(data) }])
  t.same(await strayFiles(dir), [])
})

t.test('a shutdown during a creation\'s body: 503 without a URL, and neither its record nor its file stays (nobody could go on with it)', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir)))
  const data = bytes(100_000, 3)
  const running = open(server.endpoint, 'POST', { ...TUS, 'upload-length': data.length, 'content-type': 'application/offset+octet-stream', 'content-length': data.length })
  running.req.write(data.subarray(0, 40_000))
  await until('the first bytes on disk', async () => {
    const [file] = await tempFiles(dir)
    return file !== undefined && (await readFile(`${dir}/${file}`)).length === 40_000
  })
  const closing = server.app.close()
  const answer = await running.reply
  await closing
  t.equal(answer.status, 503)
  t.equal(answer.headers.location, undefined)
  t.same(journal.slice(-1), ['close cancel'])
  t.same(await strayFiles(dir), [], 'no record, no file')
})

t.test('an upload that expires while a checkpoint runs: closed once with cancel when the checkpoint settles, the append told it expired', async (t) => {
  const clock = fakeClock(t)
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const hold = barrier()
  const inCheckpoint = barrier()
  t.teardown(hold.open)
  let holds = false
  const server = await serve(t, { tmpDir: dir, resumableMaxLifetime: 1500 }, journaled(journal, filesDir(dir), {
    checkpoint: async (state, info) => {
      if (holds) {
        inCheckpoint.open()
        await hold.wait
      }
      return await TmpFileWriter.checkpoint!(state, info)
    }
  }))
  const id = await create(server, 10)
  holds = true
  const running = patch(server, id, 0, bytes(3))
  await inCheckpoint.wait
  await clock.tickAsync(1500)
  hold.open()
  const answer = await running
  t.equal(answer.status, 410)
  t.match(answer.json, { message: /it expired/ })
  t.same(journal, ['init', 'close cancel'], 'one close')
  t.same(await strayFiles(dir), [])
})

/** A MemoryStore whose next record update waits for `gate` (`waiting` counts those that did). */
class GatedStore extends MemoryStore {
  gate: Promise<void> | undefined
  waiting = 0
  /** Lock requests made so far. */
  locks = 0
  override async lock (...args: Parameters<Store['lock']>): ReturnType<Store['lock']> {
    this.locks++
    return await super.lock(...args)
  }

  override async updateUpload (...args: Parameters<Store['updateUpload']>): ReturnType<Store['updateUpload']> {
    // The next update waits, once.
    const gate = this.gate
    this.gate = undefined
    if (gate !== undefined) {
      this.waiting++
      await gate
    }
    return await super.updateUpload(...args)
  }
}

t.test('a holder presumed dead (its save too slow) is taken over: its save is fenced off, it lets go without a close (503, try again), and the upload goes on with the new holder', async (t) => {
  const clock = fakeClock(t)
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const store = new GatedStore()
  const plugin = { tmpDir: dir, store, defaults: { writerTimeout: 100 } }
  const a = await serve(t, plugin, journaled(journal, dir))
  const b = await serve(t, plugin, journaled(journal, dir))
  const data = bytes(10, 4)
  const id = await create(a, 10)
  t.equal((await patch(a, id, 0, data.subarray(0, 3))).status, 204)
  const gate = barrier()
  store.gate = gate.wait
  const slow = patch(a, id, 3, data.subarray(3, 5))
  await until('A saving', () => store.waiting === 1 ? true : undefined)
  const asking = head(b, id)
  // B waits for A to let go: 2 × writerTimeout + 5 s, then presumes it dead.
  await until('B waiting for the lock', () => store.locks === 2 ? true : undefined)
  await clock.tickAsync(5200)
  const described = await asking
  t.equal(described.headers['upload-offset'], '3', 'B goes on from the record')
  gate.open()
  const answer = await slow
  t.equal(answer.status, 503)
  t.match(answer.json, { code: 'FST_CHUNKED_UPLOAD_MOVED' })
  t.equal((await tempFiles(dir)).length, 1, 'the file B goes on with is still there')
  t.equal((await patch(b, id, 3, data.subarray(3))).status, 204)
  t.same((await claim(b, id)).json, [{ size: 10, sha256: sha256(data) }])
  t.same(journal.filter((line) => line.startsWith('close')), ['close done'], 'one close, by B')
})

t.test('two apps on one store: a request to the second for an upload the first is writing to takes it over cleanly (the first saves, answers 503 MOVED, lets go; the second goes on from what was saved)', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const store = new MemoryStore()
  const a = await serve(t, { tmpDir: dir, store }, journaled(journal, dir))
  const b = await serve(t, { tmpDir: dir, store }, journaled(journal, dir))
  const data = bytes(3000, 6)
  const id = await create(a, 3000)
  const running = open(`${a.endpoint}/${id}`, 'PATCH', patchHeaders(0, { 'content-length': 3000 }))
  running.req.write(data.subarray(0, 1500))
  await until('1500 bytes on disk', async () => {
    const [file] = await tempFiles(dir)
    return file !== undefined && (await readFile(`${dir}/${file}`)).length === 1500 ? true : undefined
  })
  const described = await head(b, id)
  t.equal(described.headers['upload-offset'], '1500', 'what the first saved when it let go')
  const cut = await running.reply
  t.equal(cut.status, 503)
  t.match(cut.json, { code: 'FST_CHUNKED_UPLOAD_MOVED' })
  t.equal((await patch(b, id, 1500, data.subarray(1500))).status, 204)
  t.same((await claim(b, id)).json, [{ size: 3000, sha256: sha256(data) }])
  t.same(journal.filter((line) => !line.startsWith('checkpoint')), ['init', 'restore 1500', 'close done'], 'one init, one restore, one close')
})

/** A MemoryStore whose next record read waits for `readGate`, once. */
class SlowReadStore extends MemoryStore {
  readGate: Promise<void> | undefined
  override async getUpload (id: string): ReturnType<Store['getUpload']> {
    const gate = this.readGate
    this.readGate = undefined
    await gate
    return await super.getUpload(id)
  }
}

t.test('a request that read the record while another restored the upload finds it restored: one restore, no hand-over within the app', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const store = new SlowReadStore()
  const id = await keptUpload(t, { tmpDir: dir, store }, journaled(journal, dir), 6, bytes(2))
  const second = await serve(t, { tmpDir: dir, store }, journaled(journal, dir))
  const gate = barrier()
  store.readGate = gate.wait
  const slow = head(second, id)
  await until('the slow read to start', () => store.readGate === undefined ? true : undefined)
  t.equal((await head(second, id)).headers['upload-offset'], '2', 'restored by the second request')
  gate.open()
  t.equal((await slow).headers['upload-offset'], '2', 'the first finds it')
  t.same(journal.filter((line) => line.startsWith('restore') || line.endsWith('last')), ['checkpoint 2 last', 'restore 2'], 'one restore here, never let go')
})

t.test('another holder asks for a restored upload, while it is restored and after: each time the app saves it and lets go', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const store = new MemoryStore()
  const id = await keptUpload(t, { tmpDir: dir, store }, journaled(journal, dir), 6, bytes(2))
  const gate = barrier()
  const reached = barrier()
  let gated = true
  const second = await serve(t, { tmpDir: dir, store }, journaled(journal, dir, {
    restore: async (snapshot, options, call) => {
      journal.push(`restore ${snapshot.offset}`)
      if (gated) {
        reached.open()
        await gate.wait
      }
      return await TmpFileWriter.restore!(snapshot, options, call)
    }
  }))
  const asking = head(second, id)
  await reached.wait
  const other = store.lock(id, () => {}, 60_000)
  gate.open()
  const moved = await asking
  t.equal(moved.status, 503, 'asked while it was restored: it lets go once it is')
  await (await other).release()
  t.same(journal.slice(-2), ['restore 2', 'checkpoint 2 last'])
  gated = false
  t.equal((await head(second, id)).headers['upload-offset'], '2', 'restored again')
  const again = await store.lock(id, () => {}, 60_000)
  t.same(journal.slice(-2), ['restore 2', 'checkpoint 2 last'], 'asked once restored: it lets go')
  await again.release()
  t.equal((await patch(second, id, 2, bytes(4))).status, 204)
  t.same(journal.slice(-3), ['restore 2', 'checkpoint 6', 'close done'])
})

t.test('a HEAD is activity: the expiry it reports is saved in the record, so it holds after a restart too', async (t) => {
  const clock = fakeClock(t)
  const dir = await tmpDirFor(t)
  const store = new FailingStore()
  const server = await serve(t, { tmpDir: dir, store, resumableExpiry: 3_600_000 })
  const id = await create(server, 10)
  const created = (await store.getUpload(id))!.expiresAt
  await clock.tickAsync(600_000)
  const described = await head(server, id)
  const saved = (await store.getUpload(id))!.expiresAt
  t.equal(saved, created + 600_000, 'ten minutes later than at creation')
  t.equal(described.headers['upload-expires'], new Date(saved).toUTCString(), 'what the client was told')
  store.failing = true
  await clock.tickAsync(60_000)
  const unsaved = await head(server, id)
  t.equal(unsaved.status, 200, 'a record that cannot be updated does not fail the HEAD')
  t.ok(server.logs.some((line) => line.level === 40 && /expiry could not be saved/.test(line.msg)), 'it is logged')
  t.equal((await store.getUpload(id))!.expiresAt, saved, 'the record keeps its older expiry')
})
