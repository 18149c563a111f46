// The resumable endpoint under hostile timing, over real sockets on 127.0.0.1: creations
// racing the limits, concatenations whose partials end while read, shutdown with stalled
// appends, slow writers, expired refs, and X-HTTP-Method-Override on every URL. Time is
// controlled (fake timers, writer gates); events are ordered by barriers, never by sleeps.
import t from 'tap'
import { unlink } from 'node:fs/promises'
import { join } from 'node:path'
import type { FastifyRequest } from 'fastify'
import Fastify from 'fastify'
import chunkedUpload from '../lib/index.js'
import { bytes, eventually, sha256, strayFiles, tempFiles } from './kit/index.js'
import { TUS, WriterGate, heldPatch, ietf, open, patchHeaders, setupResumable, type Headers, type Reply } from './kit/resumable.js'
import { fakeClock } from './kit/clock.js'

const byUser = { owner: (request: FastifyRequest) => request.headers['x-user'] as string | undefined }
const alice = { 'x-user': 'alice' }

function statuses (replies: Reply[]): Record<number, number> {
  const counts: Record<number, number> = {}
  for (const reply of replies) counts[reply.status] = (counts[reply.status] ?? 0) + 1
  return counts
}

for (const kind of ['creation', 'final of a concatenation'] as const) {
  t.test(`concurrent ${kind}s by one owner with maxEntries 1 and a slow init: one 201 and one writer, the others 413 before any writer`, async (t) => {
    const gate = new WriterGate()
    const s = await setupResumable(t, { maxEntries: 1 }, { gate, plugin: byUser })
    const headers: Headers = { ...TUS, ...alice, 'upload-length': 10 }
    if (kind === 'final of a concatenation') {
      // Partials are staged by the temp-file writer, not the gated one.
      const partial = await s.create({ ...TUS, ...alice, 'upload-length': 10, 'upload-concat': 'partial' })
      await s.tus('PATCH', partial, patchHeaders(0, alice), bytes(10))
      headers['upload-concat'] = `final;${partial}`
      delete headers['upload-length']
    }
    gate.shut()
    const count = 40
    const requests = Array.from({ length: count }, async () => await s.tus('POST', '/up/tus', headers))
    const answered: Reply[] = []
    for (const request of requests) request.then((reply) => answered.push(reply), () => {})
    // Barrier: every creation either waits in a writer's init or was answered.
    t.ok(await eventually(() => gate.held + answered.length === count), 'every creation reached init or got its answer')
    t.equal(gate.held, 1, 'one init started: the others were refused before awaiting anything')
    gate.open()
    const replies = await Promise.all(requests)
    t.same(statuses(replies), { 201: 1, 413: count - 1 }, 'exactly one 201')
    t.ok(replies.filter((r) => r.status === 413).every((r) => r.json.code === 'FST_CHUNKED_UPLOAD_TOO_MANY_FILES'))
    t.equal(s.recorder.records.length, 1, 'one writer')
    await s.finish(t)
  })
}

t.test('a creation refused by validate, or whose init fails, gives its slot back', async (t) => {
  const gate = new WriterGate()
  const s = await setupResumable(t, { maxEntries: 1, validate: (entry) => entry.clientName === 'bad' ? 'bad_name' : undefined }, { gate, plugin: byUser })
  const named = (name: string): Headers => ({ ...TUS, ...alice, 'upload-length': 10, 'upload-metadata': `filename ${Buffer.from(name).toString('base64')}` })
  t.equal((await s.tus('POST', '/up/tus', named('bad'))).status, 422)
  s.recorder.faults.initThrows = true
  t.equal((await s.tus('POST', '/up/tus', named('good'))).status, 500)
  s.recorder.faults.initThrows = false
  t.equal((await s.tus('POST', '/up/tus', named('good'))).status, 201, 'the slot is free')
  await s.finish(t)
})

t.test('without an owner, maxEntries does not lock one client out by another; maxResumableUploads bounds them all with a coded 503', async (t) => {
  const s = await setupResumable(t, { maxEntries: 1 }, { plugin: { maxResumableUploads: 3 } })
  const first = await s.create({ ...TUS, 'upload-length': 10 })
  const second = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })
  t.equal(second.status, 201, 'another anonymous client creates its upload while the first holds one')
  const partial = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10, 'upload-concat': 'partial' })
  t.equal(partial.status, 201, 'partials count too')
  const full = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })
  t.equal(full.status, 503, 'past maxResumableUploads')
  t.equal(full.json.code, 'FST_CHUNKED_UPLOAD_TOO_MANY_UPLOADS')
  t.match(full.json.message, /maxResumableUploads/)
  t.equal(s.recorder.records.length, 2, 'no writer for it')
  t.equal((await s.tus('DELETE', first)).status, 204)
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })).status, 201, 'an ended upload frees its place')
  await s.finish(t)
})

t.test('with an owner, maxEntries is per owner: one user at the limit does not stop another', async (t) => {
  const s = await setupResumable(t, { maxEntries: 1 }, { plugin: byUser })
  await s.create({ ...TUS, ...alice, 'upload-length': 10 })
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, ...alice, 'upload-length': 10 })).status, 413, 'alice is at her limit')
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'x-user': 'bob', 'upload-length': 10 })).status, 201, 'bob is not')
  await s.finish(t)
})

t.test('maxResumableUploads must be a positive integer', async (t) => {
  for (const bad of [0, -1, 1.5, '10']) {
    const app = Fastify()
    app.register(chunkedUpload, { maxResumableUploads: bad as number })
    await t.rejects(async () => await app.ready(), { code: 'FST_CHUNKED_UPLOAD_INVALID_CONFIG', message: /maxResumableUploads/ })
    await app.close()
  }
})

t.test('a partial DELETEd while a final reads it: the final completes with its bytes, the DELETE answers after, and no file is left', async (t) => {
  const gate = new WriterGate()
  const s = await setupResumable(t, { chunkSize: 1000 }, { gate })
  const data = bytes(5000, 70)
  const partial = await s.create({ ...TUS, 'upload-length': data.length, 'upload-concat': 'partial' })
  t.equal((await s.tus('PATCH', partial, patchHeaders(0), data)).status, 204)
  gate.shut()
  const final = s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': `final;${partial}` })
  t.ok(await eventually(() => gate.held === 1), "the final's writer is starting")
  const deleted = s.tus('DELETE', partial)
  t.ok(await eventually(async () => (await s.tus('HEAD', partial)).status === 410), 'the DELETE ended the partial')
  gate.open()
  const created = await final
  t.equal(created.status, 201, 'the final read every byte of the partial it holds')
  t.equal((await deleted).status, 204)
  const claimed = await s.claim({ file: String(created.headers.location) })
  t.equal(claimed.json.files[0].sha256, sha256(data))
  t.ok(await eventually(async () => (await strayFiles(s.dir)).length === 0), 'the staged file is removed once read')
  await s.finish(t)
})

for (const held of ['init', 'writeChunk'] as const) {
  t.test(`a partial shut down while a final reads it (its ${held} in flight): its file stays until the read ends`, async (t) => {
    const gate = new WriterGate()
    gate.holdInit = held === 'init'
    const s = await setupResumable(t, { chunkSize: 1000 }, { gate })
    const partial = await s.create({ ...TUS, 'upload-length': 3000, 'upload-concat': 'partial' })
    await s.tus('PATCH', partial, patchHeaders(0), bytes(3000, 71))
    gate.shut()
    const final = s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': `final;${partial}` })
    t.ok(await eventually(() => gate.held === 1), `the final's ${held} is held`)
    const closing = s.app.close()
    t.ok(await eventually(() => s.recorder.records.every((r) => r.closes.length === 0) && gate.held === 1), 'shutdown waits on the read')
    t.equal((await tempFiles(s.dir)).length, 1, 'the staged file is still there while the final holds it')
    gate.open()
    const answer = await final
    t.equal(answer.status, 503, 'the final ends with the server')
    t.equal(answer.json.code, 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN')
    await closing
    t.same(s.recorder.reasons(), ['cancel'], "the final's writer closed once")
    t.same(await strayFiles(s.dir), [], 'and the staged file removed')
  })
}

t.test('a final whose partial cannot be read: a coded 500 in words, its writer closed at once, its slot free', async (t) => {
  const s = await setupResumable(t, { maxEntries: 1 }, { plugin: byUser })
  const partial = await s.create({ ...TUS, ...alice, 'upload-length': 100, 'upload-concat': 'partial' })
  await s.tus('PATCH', partial, patchHeaders(0, alice), bytes(100))
  // Removed behind the plugin's back (a temp cleaner, a full disk…).
  for (const file of await tempFiles(s.dir)) await unlink(join(s.dir, file))
  const failed = await s.tus('POST', '/up/tus', { ...TUS, ...alice, 'upload-concat': `final;${partial}` })
  t.equal(failed.status, 500)
  t.equal(failed.json.code, 'FST_CHUNKED_UPLOAD_CONCAT_READ')
  t.match(failed.json.message, /^Partial upload \/up\/tus\/[0-9a-f-]{36} could not be read/)
  t.notMatch(failed.body, /ResumableUpload|\[object|Entry/, 'no internal object in the message')
  t.same(s.recorder.reasons(), ['cancel'], "the final's writer is closed now, not at expiry")
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, ...alice, 'upload-length': 10 })).status, 201, 'its slot is free')
  await s.tus('DELETE', partial, { ...TUS, ...alice })
  await s.finish(t)
})

t.test('every 410 says in words why the upload ended', async (t) => {
  const s = await setupResumable(t, {}, { tmp: true })
  const deleted = await s.create({ ...TUS, 'upload-length': 10 })
  await s.tus('DELETE', deleted)
  const claimed = await s.create({ ...TUS, 'upload-length': 10 })
  await s.tus('PATCH', claimed, patchHeaders(0), bytes(10))
  await s.claim({ file: claimed })
  const partial = await s.create({ ...TUS, 'upload-length': 10, 'upload-concat': 'partial' })
  await s.tus('PATCH', partial, patchHeaders(0), bytes(10))
  const final = await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': `final;${partial}` })
  for (const [path, words] of [[deleted, /terminated/], [claimed, /consumed/], [partial, /concatenated/]] as const) {
    const reply = await s.tus('DELETE', path)
    t.equal(reply.status, 410)
    t.match(reply.json.message, words)
    t.match(reply.json.message, /^The upload ended: [a-z ,()-]+[a-zA-Z ()]*$/, `in words: ${String(reply.json.message)}`)
  }
  await s.claim({ file: String(final.headers.location) })
  await s.finish(t)
})

t.test('a finished upload whose entryTtl passed unclaimed answers 410 saying so, not "consumed"', async (t) => {
  const s = await setupResumable(t, {}, { tmp: true, plugin: { entryTtl: 60_000 } })
  const clock = fakeClock(t)
  const path = await s.create({ ...TUS, 'upload-length': 10 })
  await s.tus('PATCH', path, patchHeaders(0), bytes(10))
  await clock.tickAsync(59_999)
  t.equal((await s.tus('HEAD', path)).status, 200, 'waiting for its ref until entryTtl')
  await clock.tickAsync(1)
  t.ok(await eventually(async () => (await strayFiles(s.dir)).length === 0), 'discarded at entryTtl')
  const gone = await s.tus('DELETE', path)
  t.equal(gone.status, 410)
  t.match(gone.json.message, /no request claimed it within entryTtl/)
  t.notMatch(gone.json.message, /consumed/)
  t.equal((await s.claim({ file: path })).status, 400)
  clock.restore()
  await s.finish(t)
})

t.test('shutdown with PATCHes that stopped sending: they answer a coded 503 at once and close() resolves without waiting for chunkTimeout', async (t) => {
  const s = await setupResumable(t, { chunkTimeout: 30_000 })
  const clock = fakeClock(t)
  const paths = [await s.create({ ...TUS, 'upload-length': 10_000 }), await s.create({ ...TUS, 'upload-length': 10_000 })]
  const stalled = paths.map((path) => open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': 10_000 })))
  for (const { req } of stalled) req.write(bytes(1000))
  t.ok(await eventually(() => s.recorder.records.every((r) => r.bytes === 1000)), 'both PATCHes sent 1000 bytes, then nothing')
  let closed = false
  const closing = s.app.close().then(() => { closed = true })
  // No fake time passes: only the shutdown can end them.
  const answers: Reply[] = []
  for (const { reply } of stalled) reply.then((answer) => answers.push(answer), () => {})
  const answered = await eventually(() => answers.length === 2)
  t.ok(answered, 'both PATCHes answered with the clock stopped, far before chunkTimeout')
  if (!answered) await clock.tickAsync(30_000)
  for (const answer of await Promise.all(stalled.map(async ({ reply }) => await reply))) {
    t.equal(answer.status, 503, 'answered, not left hanging')
    t.equal(answer.json?.code, 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN')
    t.equal(answer.headers.connection, 'close')
  }
  t.ok(await eventually(() => closed), 'close() resolved with the clock stopped, far before chunkTimeout')
  if (!closed) await clock.tickAsync(30_000)
  await closing
  t.same(s.recorder.reasons(), ['cancel', 'cancel'])
  s.recorder.check(t)
  for (const { req } of stalled) req.destroy()
  clock.restore()
})

t.test('a creation whose writer starts while shutdown begins is ended with a coded 503, its writer closed', async (t) => {
  const gate = new WriterGate()
  let shuttingDown = false
  // Runs after the plugin's own preClose: the endpoint has begun its shutdown.
  const s = await setupResumable(t, {}, { gate, before: (app) => { app.addHook('preClose', async () => { shuttingDown = true }) } })
  gate.shut()
  const creation = s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })
  t.ok(await eventually(() => gate.held === 1))
  const closing = s.app.close()
  t.ok(await eventually(() => shuttingDown))
  gate.open()
  const answer = await creation
  t.equal(answer.status, 503)
  t.equal(answer.json.code, 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN')
  await closing
  t.same(s.recorder.reasons(), ['cancel'])
})

t.test('shutdown during a writer call in flight: the call settles, the writer gets one cancel, the PATCH a coded 503', async (t) => {
  const { s, gate, running } = await heldPatch(t)
  t.ok(await eventually(() => gate.held === 1), 'its writer call is in flight')
  const closing = s.app.close()
  t.ok(await eventually(() => s.recorder.records[0]!.closes.length === 0 && gate.held === 1), 'shutdown waits for the call in flight')
  gate.open()
  const answer = await running.reply
  t.equal(answer.status, 503)
  t.equal(answer.json?.code, 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN')
  await closing
  t.same(s.recorder.reasons(), ['cancel'])
  s.recorder.check(t)
  running.req.destroy()
})

t.test('a creation that reaches the limits after shutdown began gets a coded 503 and no writer', async (t) => {
  let shuttingDown = false
  let releaseOwner!: () => void
  const ownerHeld = new Promise<void>((resolve) => { releaseOwner = resolve })
  let asked = 0
  const s = await setupResumable(t, {}, {
    plugin: { owner: async () => { asked++; await ownerHeld; return 'alice' } },
    before: (app) => { app.addHook('preClose', async () => { shuttingDown = true }) }
  })
  const creation = s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })
  t.ok(await eventually(() => asked === 1), 'the creation waits for its owner')
  const closing = s.app.close()
  t.ok(await eventually(() => shuttingDown))
  releaseOwner()
  const answer = await creation
  t.equal(answer.status, 503)
  t.equal(answer.json.code, 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN')
  await closing
  t.equal(s.recorder.records.length, 0)
})

t.test('a writer slower than chunkTimeout does not time out a PATCH whose bytes were all sent (writer time is not client silence)', async (t) => {
  const gate = new WriterGate()
  const s = await setupResumable(t, { chunkTimeout: 250, chunkSize: 1000 }, { gate })
  const clock = fakeClock(t)
  gate.delay = 400
  const data = bytes(3000, 80)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  const running = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': data.length }))
  running.req.end(data)
  const answered: Reply[] = []
  running.reply.then((reply) => answered.push(reply), () => {})
  // Each writer call takes 400 ms of (fake) time; the client sent everything at once.
  for (let call = 0; call < 20; call++) {
    await eventually(() => gate.held > 0 || answered.length > 0)
    if (answered.length > 0) break
    await clock.tickAsync(400)
  }
  t.equal(answered[0]?.status, 204, 'the PATCH completed')
  t.equal(answered[0]?.headers['upload-offset'], String(data.length))
  t.same(s.recorder.reasons(), ['done'])
  gate.delay = 0
  clock.restore()
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('a client silent for chunkTimeout while the writer is idle: the PATCH is cut at chunkTimeout, not before, and the bytes kept', async (t) => {
  const s = await setupResumable(t, { chunkTimeout: 5000 })
  const clock = fakeClock(t)
  const path = await s.create({ ...TUS, 'upload-length': 5000 })
  const silent = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': 5000 }))
  silent.req.write(bytes(2000))
  let answer: Reply | undefined
  silent.reply.then((reply) => { answer = reply }, () => {})
  t.ok(await eventually(() => s.recorder.records[0]?.bytes === 2000), 'the bytes sent reached the writer')
  await clock.tickAsync(4999)
  t.equal(answer, undefined, 'still open just before chunkTimeout')
  await clock.tickAsync(1)
  t.ok(await eventually(() => answer !== undefined), 'cut at chunkTimeout')
  t.equal(answer?.status, 0, 'the connection is closed (tus: a timeout SHOULD close it)')
  clock.restore()
  t.equal((await s.tus('HEAD', path)).headers['upload-offset'], '2000')
  await s.tus('DELETE', path)
  await s.finish(t)
})

t.test('X-HTTP-Method-Override is the method on every URL, whatever the actual method; unknown methods are a 405; every answer but OPTIONS carries Tus-Resumable', async (t) => {
  const s = await setupResumable(t)
  const data = bytes(300, 90)
  for (const [actual, url] of [['GET', '/up/tus'], ['POST', '/up/tus'], ['PUT', '/up/tus']] as const) {
    const options = await s.tus(actual, url, { 'x-http-method-override': 'OPTIONS' })
    t.equal(options.status, 204, `${actual} ${url} as OPTIONS`)
    t.equal(options.headers['tus-version'], '1.0.0')
  }
  const created = await s.tus('GET', '/up/tus', { ...TUS, 'x-http-method-override': 'POST', 'upload-length': data.length })
  t.equal(created.status, 201, 'GET as POST creates')
  const path = new URL(String(created.headers.location), s.endpoint).pathname
  const asOptions = await s.tus('GET', path, { 'x-http-method-override': 'OPTIONS' })
  t.equal(asOptions.status, 204, 'GET on an upload URL as OPTIONS')
  const appended = await s.tus('PUT', path, patchHeaders(0, { 'x-http-method-override': 'PATCH' }), data.subarray(0, 100))
  t.equal(appended.status, 204, 'PUT as PATCH')
  t.equal(appended.headers['upload-offset'], '100')
  const fromGet = await s.tus('GET', path, patchHeaders(100, { 'x-http-method-override': 'PATCH', 'content-length': 200 }), data.subarray(100))
  t.equal(fromGet.status, 204, 'GET as PATCH, its body read though GET has none for Fastify')
  t.equal(fromGet.headers['upload-offset'], '300')
  const described = await s.tus('PUT', path, { ...TUS, 'x-http-method-override': 'HEAD' })
  t.equal(described.status, 200, 'PUT as HEAD')
  t.equal(described.headers['upload-offset'], '300')
  const unknown = await s.tus('GET', '/up/tus/3f1b6a38-0000-4000-8000-000000000000', { ...TUS, 'x-http-method-override': 'HEAD' })
  t.equal(unknown.status, 404, 'an unknown upload is our 404, with Tus-Resumable')
  for (const [method, url, headers] of [['GET', path, TUS], ['PUT', '/up/tus', TUS], ['GET', '/up/tus', TUS], ['POST', path, { ...TUS, 'x-http-method-override': 'TRACE' }]] as const) {
    const reply = await s.tus(method, url, headers)
    t.equal(reply.status, 405, `${method} ${url} ${JSON.stringify(headers)} → 405`)
    t.match(reply.headers.allow, /^OPTIONS, /)
    t.equal(reply.json.code, 'FST_CHUNKED_UPLOAD_METHOD_NOT_ALLOWED')
  }
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('IETF-draft headers never appear on tus 1.0 answers; the draft gets them', async (t) => {
  const s = await setupResumable(t, { maxFileSize: 1000 })
  const tooBig = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 1001 })
  const path = await s.create({ ...TUS, 'upload-length': 100 })
  const answers = [tooBig, await s.tus('HEAD', path), await s.tus('PATCH', path, patchHeaders(0), bytes(10)), await s.tus('PATCH', path, patchHeaders(10), bytes(200)),
    await s.tus('PATCH', path, patchHeaders(10, { 'upload-length': 5000 }), bytes(1)), await s.tus('OPTIONS', '/up/tus', {})]
  for (const answer of answers) {
    for (const header of ['upload-limit', 'upload-complete', 'upload-draft-interop-version']) {
      t.equal(answer.headers[header], undefined, `${answer.asked} → ${answer.status}: no ${header}`)
    }
  }
  const draft = await s.tus('POST', '/up/tus', ietf(6, { 'upload-complete': '?0', 'upload-length': 1001 }))
  t.equal(draft.status, 413)
  t.match(draft.headers['upload-limit'], /max-size=1000/)
  const deferred = await s.create({ ...TUS, 'upload-defer-length': 1 })
  const over = await s.tus('PATCH', deferred, patchHeaders(0), bytes(1001))
  t.equal(over.status, 413, 'without a known length, the limit is maxFileSize')
  t.equal(over.json.code, 'FST_CHUNKED_UPLOAD_TOO_LARGE')
  t.equal(over.headers['upload-limit'], undefined)
  await s.tus('DELETE', deferred)
  await s.tus('DELETE', path)
  await s.finish(t)
})
