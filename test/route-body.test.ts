// How an upload route takes its body without a content-type parser: what hooks and the
// handler see, what earlier preParsing hooks made of the payload, validation. Real sockets.
import { Readable } from 'node:stream'
import { gzipSync, createGunzip } from 'node:zlib'
import Fastify, { type FastifyInstance, type FastifyPluginAsync, type FastifyRequest, type preParsingAsyncHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import t from 'tap'
import { Type } from 'typebox'
import { request } from 'undici'
import chunkedUpload from '../lib/index.js'
import { Recorder, bytes, eventually, listen, multipart, parseResponse, rawSocket, sha256, startApp, tmpDirFor } from './kit/index.js'
import { OCTETS, TUS } from './kit/resumable.js'

/** The body-related headers and media type a hook or the handler sees. */
function view (request: FastifyRequest): Record<string, string> {
  const { headers } = request
  return {
    type: headers['content-type'] ?? 'none',
    length: headers['content-length'] ?? 'none',
    encoding: headers['transfer-encoding'] ?? 'none',
    media: request.mediaType ?? 'none'
  }
}

t.test('hooks and the handler see the request\'s real headers, even with the media type read early', async (t) => {
  const recorder = new Recorder()
  const seen: Array<Record<string, string>> = []
  const { url } = await startApp(t, (app) => {
    // Reading request.mediaType this early makes Fastify keep the parsed type.
    app.addHook('onRequest', async (request) => { seen.push({ hook: 'onRequest', ...view(request) }) })
    app.addHook('preValidation', async (request) => { seen.push({ hook: 'preValidation', ...view(request) }) })
    app.post('/up', {
      allowUpload: { f: { accept: 'any', writer: recorder.factory } },
      preHandler: async (request) => { seen.push({ hook: 'preHandler', ...view(request) }) }
    }, async (request) => ({
      seen: view(request),
      files: await request.uploads.consume('f', (meta: { sha256: string }, entry) => ({ type: entry.clientType, sha256: meta.sha256 }))
    }))
  })
  const data = bytes(50_000, 7)
  const form = multipart([{ name: 'f', filename: 'a.bin', type: 'image/png', data }])
  const cases: Array<[string, Record<string, string>, () => Buffer | Readable, Record<string, string>, string]> = [
    ['multipart', { 'content-type': form.contentType }, () => form.body,
      { type: form.contentType, length: String(form.body.length), encoding: 'none', media: 'multipart/form-data' }, 'image/png'],
    ['raw, chunked', { 'content-type': 'image/png' }, () => Readable.from([data.subarray(0, 1000), data.subarray(1000)]),
      { type: 'image/png', length: 'none', encoding: 'chunked', media: 'image/png' }, 'image/png'],
    ['raw, no content type', {}, () => data,
      { type: 'none', length: String(data.length), encoding: 'none', media: 'none' }, '']
  ]
  for (const [name, headers, body, expected, clientType] of cases) {
    seen.length = 0
    const response = await request(`${url}/up`, { method: 'POST', headers, body: body() })
    t.same(await response.body.json(), { seen: expected, files: [{ type: clientType, sha256: sha256(data) }] }, `${name}: the handler`)
    t.same(seen, ['onRequest', 'preValidation', 'preHandler'].map((hook) => ({ hook, ...expected })), `${name}: the hooks`)
  }
  recorder.check(t)
})

t.test('the route\'s own preParsing hooks run first: the upload is what they made of the payload', async (t) => {
  const recorder = new Recorder()
  const { url } = await startApp(t, (app) => {
    app.post('/up', {
      allowUpload: { f: { accept: 'any', writer: recorder.factory } },
      preParsing: async (request, _reply, payload) => request.headers['content-encoding'] === 'gzip' ? payload.pipe(createGunzip()) : payload
    }, async (request) => await request.uploads.consume('f', (meta: { sha256: string, bytes: number }) => [meta.bytes, meta.sha256]))
  })
  const data = bytes(200_000, 9)
  for (const [name, headers, body] of [
    ['raw', { 'content-type': 'application/octet-stream' }, gzipSync(data)],
    ['multipart', { 'content-type': multipart([{ name: 'f', filename: 'a', data }]).contentType }, gzipSync(multipart([{ name: 'f', filename: 'a', data }]).body)]
  ] as const) {
    const response = await request(`${url}/up`, { method: 'POST', headers: { ...headers, 'content-encoding': 'gzip' }, body })
    t.same(await response.body.json(), [[data.length, sha256(data)]], name)
  }
  recorder.check(t)
})

t.test('a route\'s body schema validates the text fields of a multipart upload', async (t) => {
  const recorder = new Recorder()
  const { url } = await startApp(t, (app) => {
    app.post('/s', {
      allowUpload: { f: { accept: 'any', writer: recorder.factory } },
      schema: { body: Type.Object({ title: Type.String({ minLength: 3 }) }) }
    }, async (request) => ({ body: request.body, files: await request.uploads.consume('f', () => 'file') }))
  })
  const post = async (title: string): Promise<{ status: number, json: any }> => {
    const form = multipart([{ name: 'title', data: title }, { name: 'f', filename: 'a', data: 'x' }])
    const response = await request(`${url}/s`, { method: 'POST', headers: { 'content-type': form.contentType }, body: form.body })
    return { status: response.statusCode, json: await response.body.json() }
  }
  t.same(await post('hello'), { status: 200, json: { body: { title: 'hello' }, files: ['file'] } })
  t.match(await post('hi'), { status: 400, json: { code: 'FST_ERR_VALIDATION' } })
  recorder.check(t)
})

t.test('a failing upload answers with its error, and the connection serves the next request', async (t) => {
  const { url } = await startApp(t, (app) => {
    app.post('/up', { allowUpload: { f: { accept: ['image/png'] } } }, async () => 'not reached')
  })
  const refused = await request(`${url}/up`, { method: 'POST', headers: { 'content-type': 'text/csv' }, body: 'a,b' })
  // text/csv is no field type: a raw upload, refused by accept.
  t.match([refused.statusCode, await refused.body.json()], [415, { code: 'FST_CHUNKED_UPLOAD_NOT_ACCEPTED' }])
  const again = await request(`${url}/health`)
  t.same(await again.body.json(), { ok: true })
})

/** A plugin that decompresses every route's gzip bodies, from its own onRoute hook. */
const gunzipPlugin = fp(async (app: FastifyInstance) => {
  app.addHook('onRoute', (route) => {
    const gunzip: preParsingAsyncHookHandler = async (request, _reply, payload) => request.headers['content-encoding'] === 'gzip' ? payload.pipe(createGunzip()) : payload
    route.preParsing = [route.preParsing ?? []].flat().concat(gunzip)
  })
})

t.test('another plugin\'s onRoute preParsing hook: before the plugin it runs first, after it startup fails', async (t) => {
  const recorder = new Recorder()
  const before = Fastify()
  await before.register(gunzipPlugin)
  await before.register(chunkedUpload)
  before.post('/up', { allowUpload: { f: { accept: 'any', writer: recorder.factory } } }, async (request) =>
    await request.uploads.consume('f', (meta: { sha256: string }) => meta.sha256))
  const { url } = await listen(t, before)
  const data = bytes(30_000, 4)
  const response = await request(`${url}/up`, { method: 'POST', headers: { 'content-type': 'image/png', 'content-encoding': 'gzip' }, body: gzipSync(data) })
  t.same(await response.body.json(), [sha256(data)])
  recorder.check(t)

  // Its own tmpDir: \`before\` still runs, and holds the default one.
  const after = Fastify()
  await after.register(chunkedUpload, { tmpDir: await tmpDirFor(t) })
  await after.register(gunzipPlugin)
  after.post('/up', { allowUpload: { f: { accept: 'any', resumable: true } } }, async () => 'ok')
  await t.rejects(async () => { await after.ready() }, {
    code: 'FST_CHUNKED_UPLOAD_HOOK_ORDER',
    message: /A preParsing hook was added to POST \/up after fastify-chunked-upload's, which takes the body: register the plugin that adds it before fastify-chunked-upload, or \(on a route with a channel or resumable endpoint\) declare that hook on the route itself/
  })
  await after.close()

  // A plugin that appends its hook only to routes that take PATCH: the resumable endpoint's.
  const onPatchRoutes = fp(async (app: FastifyInstance) => {
    app.addHook('onRoute', (route) => {
      if (![route.method].flat().includes('PATCH')) return
      const gunzip: preParsingAsyncHookHandler = async (_request, _reply, payload) => payload
      route.preParsing = [route.preParsing ?? []].flat().concat(gunzip)
    })
  })
  const derived = Fastify()
  await derived.register(chunkedUpload, { tmpDir: await tmpDirFor(t) })
  await derived.register(onPatchRoutes)
  derived.post('/up', { allowUpload: { f: { accept: 'any', resumable: true } } }, async () => 'ok')
  await t.rejects(async () => { await derived.ready() }, {
    code: 'FST_CHUNKED_UPLOAD_HOOK_ORDER',
    message: /A preParsing hook was added to \/up\/tus \(derived from POST \/up\) after fastify-chunked-upload's/
  })
  await derived.close()
})

t.test('an upload refused before its body arrived answers with Connection: close, as Fastify does for a parser error', async (t) => {
  const { port } = await startApp(t, (app) => {
    app.post('/two', { allowUpload: { a: { accept: 'any' }, b: { accept: 'any' } } }, async () => 'not reached')
  })
  const cases: Array<[string, string, number, string]> = [
    // Refused before a byte is read: the route cannot tell which name a raw body is for.
    ['raw body without ?upload=', 'application/octet-stream', 400, 'FST_CHUNKED_UPLOAD_NO_UPLOAD_NAME'],
    // Refused by the multipart parser at once: no boundary.
    ['multipart without a boundary', 'multipart/form-data', 400, 'FST_CHUNKED_UPLOAD_MALFORMED']
  ]
  for (const [name, type, status, code] of cases) {
    const socket = await rawSocket(port)
    // 100 kB announced, 10 sent: the rest never comes.
    socket.write(`POST /two HTTP/1.1\r\nHost: x\r\nContent-Type: ${type}\r\nContent-Length: 100000\r\n\r\n${'x'.repeat(10)}`)
    t.ok(await eventually(() => parseResponse(socket.received())?.body.includes('}') === true), `${name}: answered`)
    const response = parseResponse(socket.received())!
    t.equal(response.status, status, name)
    t.match(response.body, code, name)
    t.match(response.headers, /connection: close/i, `${name}: the connection is not reused`)
    socket.destroy()
  }
})

/**
 * A plugin like @fastify/otel: from its onRoute hook, it wraps each of a route's hooks (to
 * trace them), adding none. Each wrapper passes its arguments and result through.
 */
const wrappingPlugin = (wrapped: Set<string>): FastifyPluginAsync => fp(async (app) => {
  app.addHook('onRoute', (route) => {
    const options = route as unknown as Record<string, unknown>
    for (const name of ['onRequest', 'preParsing', 'preValidation', 'preHandler', 'onSend', 'onResponse']) {
      if (options[name] === undefined) continue
      options[name] = ([options[name]].flat() as Array<(...args: unknown[]) => unknown>).map((hook) => function (this: unknown, ...args: unknown[]) {
        wrapped.add(`${name} ${hook.name}`)
        return hook.apply(this, args)
      })
    }
  })
})

t.test('a plugin that only wraps hooks starts registered before or after, and its wrapper of the body hook takes the body', async (t) => {
  for (const order of ['before', 'after']) {
    const recorder = new Recorder()
    const wrapped = new Set<string>()
    const app = Fastify()
    if (order === 'before') await app.register(wrappingPlugin(wrapped))
    await app.register(chunkedUpload)
    if (order === 'after') await app.register(wrappingPlugin(wrapped))
    app.post('/up', { allowUpload: { f: { accept: 'any', resumable: true, writer: recorder.factory } } }, async (request) =>
      await request.uploads.consume('f', (meta: { sha256: string }) => meta.sha256))
    const { url } = await listen(t, app)
    const data = bytes(20_000, 5)
    const response = await request(`${url}/up`, { method: 'POST', headers: { 'content-type': 'image/png' }, body: data })
    t.same(await response.body.json(), [sha256(data)], `${order}: a raw upload`)
    const created = await request(`${url}/up/tus`, { method: 'POST', headers: { ...TUS, 'upload-length': '10', 'content-type': OCTETS }, body: data.subarray(0, 10) })
    t.same([created.statusCode, created.headers['upload-offset']], [201, '10'], `${order}: a resumable creation with its body`)
    await created.body.dump()
    // Before: it sees the endpoint's routes with their body hook; after: the upload route's too.
    t.ok(wrapped.has('preParsing handOverBody'), `${order}: the plugin wrapped the endpoint's body hook`)
    t.equal(wrapped.has('preParsing takeUploadBody'), order === 'after', `${order}: the plugin wrapped the route's body hook`)
    await app.close()
    recorder.check(t)
  }
})
