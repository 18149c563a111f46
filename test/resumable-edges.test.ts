// Edges of the resumable endpoint the conformance suite does not reach: an append whose
// client left while it waited for the upload, empty appends and metadata, an IETF
// append without Upload-Complete, and the bounded memory of ended uploads.
import t from 'tap'
import cors from '@fastify/cors'
import { Recorder, bytes, eventually, sha256, startApp } from './kit/index.js'
import { OCTETS, PARTIAL, TUS, WriterGate, ietf, open, setupResumable } from './kit/resumable.js'
import Fastify from 'fastify'
import { ResumableRegistry, goneError } from '../lib/transports/resumable/index.js'
import type { ResumableUpload } from '../lib/transports/resumable/upload.js'

t.test('an append whose client left while it waited for the upload stores nothing and leaves the upload resumable', async (t) => {
  const gate = new WriterGate()
  let aborted = 0
  const s = await setupResumable(t, { chunkSize: 1_000_000 }, { gate, before: (app) => { app.addHook('onRequestAbort', async (_request) => { aborted++ }) } })
  const path = await s.create({ ...TUS, 'upload-length': 3000 })
  // A: 1000 bytes, then silence; its writer call is held.
  gate.shut()
  const first = open(s.url + path, 'PATCH', { ...TUS, 'content-type': OCTETS, 'upload-offset': 0, 'content-length': 3000 })
  first.req.write(bytes(1000))
  t.ok(await eventually(() => gate.held === 1), "A's writer call is in flight")
  // B pre-empts A, then its own client gives up before A's writer call settled.
  const second = open(s.url + path, 'PATCH', { ...TUS, 'content-type': OCTETS, 'upload-offset': 1000, 'content-length': 2000 })
  second.req.write(bytes(10))
  t.ok(await eventually(() => s.seen.includes(`PATCH ${path} 1000`)), 'B waits for the upload')
  second.req.destroy()
  t.ok(await eventually(() => aborted === 1), "B's client left")
  first.req.destroy()
  t.ok(await eventually(() => aborted === 2), "and A's")
  gate.open()
  t.ok(await eventually(() => s.recorder.records[0]!.bytes === 1000))
  const head = await s.tus('HEAD', path)
  t.equal(head.headers['upload-offset'], '1000', 'only what the writer accepted')
  t.same(s.recorder.records.map((r) => r.closes.length), [0], 'the upload lives on: its writer is not closed')
  const rest = await s.tus('PATCH', path, { ...TUS, 'content-type': OCTETS, 'upload-offset': 1000 }, bytes(2000, 2))
  t.equal(rest.status, 204)
  t.equal(rest.headers['upload-offset'], '3000')
  t.equal(s.recorder.records[0]!.hash.copy().digest('hex'), sha256(Buffer.concat([bytes(1000), bytes(2000, 2)])))
  t.same(s.recorder.reasons(), ['done'])
  await s.finish(t)
})

t.test('an empty append at the offset answers 204 with the same offset; empty Upload-Metadata is echoed', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create({ ...TUS, 'upload-length': 10, 'upload-metadata': '' })
  const empty = await s.tus('PATCH', path, { ...TUS, 'content-type': OCTETS, 'upload-offset': 0, 'content-length': 0 })
  t.equal(empty.status, 204)
  t.equal(empty.headers['upload-offset'], '0')
  const head = await s.tus('HEAD', path)
  t.equal(head.headers['upload-metadata'], '', 'echoed exactly as sent')
  await s.tus('DELETE', path)
  await s.finish(t)
})

t.test('IETF: an append without Upload-Complete is an ordinary, incomplete append', async (t) => {
  const s = await setupResumable(t)
  const created = await s.tus('POST', '/up/tus', ietf(6, { 'upload-length': 20, 'upload-complete': '?0' }))
  const path = new URL(String(created.headers.location), s.endpoint).pathname
  const append = await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': 0 }), bytes(5))
  t.equal(append.status, 204)
  t.equal(append.headers['upload-complete'], '?0')
  t.equal(append.headers['upload-offset'], '5')
  // Interop 5 (draft -03) sends appends without a type; an empty one has no body at all.
  const bare = await s.tus('PATCH', path, ietf(5, { 'upload-offset': 5 }))
  t.equal(bare.status, 204)
  t.equal(bare.headers['upload-offset'], '5')
  await s.tus('DELETE', path, ietf(6))
  await s.finish(t)
})

t.test('ended uploads are remembered (410) up to a bound, oldest forgotten first (404)', async (t) => {
  const registry = new ResumableRegistry(Infinity, Fastify().log)
  const fake = (id: string): ResumableUpload => ({ id, slot: {}, durable: false, stopTimers () {}, interrupt () {}, async dropRecord () {} }) as unknown as ResumableUpload
  const count = 10_001
  let live = 0
  for (let i = 0; i < count; i++) {
    const upload = fake(`u${i}`)
    await registry.add(upload)
    if (registry.find(`u${i}`) === upload) live++
    registry.remove(upload, 'terminated')
  }
  t.equal(live, count, 'each was live until removed')
  t.equal(registry.find('u0'), undefined, 'the oldest is forgotten')
  t.equal(registry.find('u1'), 'terminated', 'the next one is remembered')
  t.equal(registry.find(`u${count - 1}`), 'terminated')
  registry.remove(fake('u1'), 'expired')
  t.equal(registry.find('u1'), 'terminated', 'removing an upload that is not live changes nothing')
  t.match(goneError(registry.find('u0') as undefined), { statusCode: 410, message: 'The upload ended: it ended' }, 'a request that held a forgotten upload is told it ended')
})

t.test('a multipart body to the endpoint is no upload: 415, and no upload is left behind', async (t) => {
  const s = await setupResumable(t, { maxEntries: 1 }, { plugin: { owner: () => 'alice' } })
  const refused = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10, 'content-type': 'multipart/form-data; boundary=x' }, '--x--\r\n')
  t.equal(refused.status, 415)
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })).status, 201, 'its maxEntries slot is free')
  await s.finish(t)
})

t.test('CORS: headers the app already exposes are kept, the protocol\'s are added', async (t) => {
  const s = await setupResumable(t, {}, { before: (app) => { app.register(cors, { origin: true, exposedHeaders: ['X-Request-Id'] }) } })
  const created = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10, origin: 'http://page.example' })
  t.equal(created.status, 201)
  const exposed = String(created.headers['access-control-expose-headers'])
  t.match(exposed, /^X-Request-Id, /, 'the app\'s own first')
  t.match(exposed, /Location/)
  t.match(exposed, /Upload-Offset/)
  await s.tus('DELETE', new URL(String(created.headers.location), s.endpoint).pathname)
  await s.finish(t)
})

t.test('a route path with a trailing slash: its endpoint is the path plus the suffix, without a double slash', async (t) => {
  const recorder = new Recorder()
  const { url } = await startApp(t, (app) => {
    app.post('/a/', { allowUpload: { f: { accept: 'any', resumable: true, writer: recorder.factory } } }, async () => ({}))
  })
  const created = await fetch(`${url}/a/tus`, { method: 'POST', headers: { ...TUS, 'upload-length': '0' } as Record<string, string> })
  t.equal(created.status, 201)
  t.match(created.headers.get('location'), /^\/a\/tus\/[0-9a-f-]{36}$/)
  recorder.check(t)
})

t.test('owners are strings: one that is not fails the request with a 500 saying so; null is nobody', async (t) => {
  let owner: unknown = 42
  const s = await setupResumable(t, { maxEntries: 1 }, { plugin: { owner: () => owner as string } })
  const refused = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })
  t.equal(refused.status, 500)
  t.equal(refused.json.code, 'FST_CHUNKED_UPLOAD_BAD_OWNER')
  t.match(refused.json.message, /returned a number/)
  owner = null
  const created = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })
  t.equal(created.status, 201, 'null: nobody, as undefined')
  owner = undefined
  const path = new URL(String(created.headers.location), s.endpoint).pathname
  t.equal((await s.tus('HEAD', path)).status, 200, 'the same nobody reaches it')
  await s.tus('DELETE', path)
  await s.finish(t)
})
