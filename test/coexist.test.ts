// The plugin changes nothing for routes without allowUpload: unknown routes keep
// Fastify's 404, an app's own catch-all parser keeps working, and @fastify/multipart can
// share the scope. Over real sockets.
import { createHmac } from 'node:crypto'
import multipartPlugin from '@fastify/multipart'
import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import { request } from 'undici'
import chunkedUpload, { MemoryWriter } from '../lib/index.js'
import { Recorder, bytes, listen, multipart, sha256 } from './kit/index.js'

interface Answer { status: number, type: string | undefined, body: string }

async function ask (url: string, method: string, headers: Record<string, string> = {}, body?: Buffer | string): Promise<Answer> {
  const response = await request(url, { method: method as 'POST', headers, body })
  const type = response.headers['content-type']
  return { status: response.statusCode, type: Array.isArray(type) ? type[0] : type, body: await response.body.text() }
}

const form = multipart([{ name: 'f', filename: 'a.bin', data: 'abc' }])
/** Requests with a body, each to a path or a method no route has. */
const strays: Array<[string, string, Record<string, string>, Buffer | string | undefined]> = [
  ['POST', '/nope', { 'content-type': form.contentType }, form.body],
  ['POST', '/nope', { 'content-type': 'application/octet-stream' }, 'raw bytes'],
  ['PUT', '/nope', { 'content-type': 'image/png' }, bytes(10)],
  ['POST', '/nope', {}, 'no content type'],
  ['POST', '/nope', { 'content-type': 'application/json' }, '{"a":1}'],
  ['DELETE', '/up', { 'content-type': 'application/octet-stream' }, 'raw bytes'],
  ['PATCH', '/up', { 'content-type': form.contentType }, form.body],
  ['PUT', '/up/tus', { 'content-type': 'application/offset+octet-stream' }, 'raw bytes'],
  ['POST', '/up/ws', { 'content-type': 'text/csv' }, 'a,b']
]

t.test('a body to an unknown path or method gets Fastify\'s own 404, exactly as without the plugin', async (t) => {
  const routes = (app: FastifyInstance, allowUpload: boolean): void => {
    // No resumable name, no channel: /up/tus and /up/ws are unknown paths too.
    app.post('/up', allowUpload ? { allowUpload: { f: { accept: 'any', writer: () => MemoryWriter } } } : {}, async () => 'ok')
  }
  const bare = Fastify()
  routes(bare, false)
  const { url: bareUrl } = await listen(t, bare)
  const withPlugin = Fastify()
  await withPlugin.register(chunkedUpload)
  routes(withPlugin, true)
  const { url } = await listen(t, withPlugin)

  for (const [method, path, headers, body] of strays) {
    const expected = await ask(bareUrl + path, method, headers, body)
    t.equal(expected.status, 404, `${method} ${path} is a 404 without the plugin`)
    t.same(await ask(url + path, method, headers, body), expected, `${method} ${path} ${headers['content-type'] ?? ''}`)
  }
})

const KEY = 'webhook secret'
const sign = (body: Buffer | string): string => createHmac('sha256', KEY).update(body).digest('hex')

/** An app's webhooks: a catch-all parser keeps the raw body, the route checks its signature. */
function webhooks (app: FastifyInstance, path: string): void {
  app.post(path, async (request, reply) => {
    const body = request.body as Buffer
    if (!Buffer.isBuffer(body) || sign(body) !== request.headers['x-signature']) return await reply.code(401).send({ verified: false })
    return { verified: true, bytes: body.length }
  })
}
function catchAll (app: FastifyInstance): void {
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => { done(null, body) })
}

for (const order of ['before', 'after'] as const) {
  t.test(`an app's catch-all parser registered ${order} the plugin keeps its routes, and raw uploads keep working`, async (t) => {
    const recorder = new Recorder()
    const app = Fastify()
    if (order === 'before') catchAll(app)
    webhooks(app, '/hook-early')
    await app.register(chunkedUpload)
    if (order === 'after') catchAll(app)
    webhooks(app, '/hook-late')
    // The app's own parser for a type: its routes parse it; an upload route takes it as a file.
    app.addContentTypeParser('application/xml', { parseAs: 'string' }, (_request, body, done) => { done(null, { xml: body }) })
    app.post('/xml', async (request) => request.body)
    app.post('/up', { allowUpload: { f: { accept: 'any', writer: recorder.factory } } }, async (request) => ({
      body: request.body ?? null,
      files: await request.uploads.consume('f', (meta: { sha256: string, bytes: number }, entry) => ({ type: entry.clientType, sha256: meta.sha256, bytes: meta.bytes }))
    }))
    const { url } = await listen(t, app)

    const payload = Buffer.from('{"event":"paid","amount":10}')
    for (const path of ['/hook-early', '/hook-late']) {
      const signed = await ask(url + path, 'POST', { 'content-type': 'application/vnd.shop+json', 'x-signature': sign(payload) }, payload)
      t.same([signed.status, JSON.parse(signed.body)], [200, { verified: true, bytes: payload.length }], `${path}: the raw body reaches the webhook`)
      const forged = await ask(url + path, 'POST', { 'content-type': 'application/vnd.shop+json', 'x-signature': sign('other') }, payload)
      t.equal(forged.status, 401, `${path}: a forged signature is refused`)
    }
    t.same(JSON.parse((await ask(`${url}/xml`, 'POST', { 'content-type': 'application/xml' }, '<a/>')).body), { xml: '<a/>' })

    for (const type of ['application/octet-stream', 'application/vnd.shop+json', 'application/xml']) {
      const data = bytes(70_000, type.length)
      const uploaded = await ask(`${url}/up`, 'POST', { 'content-type': type }, data)
      t.equal(uploaded.status, 200, `${type} on the upload route is an upload`)
      t.same(JSON.parse(uploaded.body), { body: null, files: [{ type, sha256: sha256(data), bytes: data.length }] })
    }
    // Fields still go to the scope's parsers: JSON to Fastify's, a form to the catch-all.
    const json = await ask(`${url}/up`, 'POST', { 'content-type': 'application/json' }, '{"title":"x"}')
    t.same(JSON.parse(json.body), { body: { title: 'x' }, files: [] })
    const urlencoded = await ask(`${url}/up`, 'POST', { 'content-type': 'application/x-www-form-urlencoded' }, 'a=1')
    t.same(JSON.parse(urlencoded.body), { body: { type: 'Buffer', data: [...Buffer.from('a=1')] }, files: [] })
    recorder.check(t)
  })
}

for (const order of ['before', 'after'] as const) {
  t.test(`@fastify/multipart registered ${order} the plugin: each serves its own routes in one scope`, async (t) => {
    const recorder = new Recorder()
    const app = Fastify()
    if (order === 'before') await app.register(multipartPlugin)
    await app.register(chunkedUpload)
    if (order === 'after') await app.register(multipartPlugin)
    app.post('/legacy', async (request) => {
      const fields: Record<string, string> = {}
      const files: Array<{ field: string, name: string, sha256: string }> = []
      for await (const part of request.parts()) {
        if (part.type === 'file') files.push({ field: part.fieldname, name: part.filename, sha256: sha256(await part.toBuffer()) })
        else fields[part.fieldname] = String(part.value)
      }
      return { fields, files }
    })
    app.post('/up', { allowUpload: { f: { accept: 'any', writer: recorder.factory } } }, async (request) => ({
      body: request.body,
      files: await request.uploads.consume('f', (meta: { sha256: string }, entry) => ({ name: entry.clientName, sha256: meta.sha256 }))
    }))
    const { url } = await listen(t, app)

    const data = bytes(100_000, 3)
    const body = multipart([{ name: 'title', data: 'hello' }, { name: 'f', filename: 'a.bin', type: 'application/octet-stream', data }])
    const legacy = await ask(`${url}/legacy`, 'POST', { 'content-type': body.contentType }, body.body)
    t.same([legacy.status, JSON.parse(legacy.body)], [200, { fields: { title: 'hello' }, files: [{ field: 'f', name: 'a.bin', sha256: sha256(data) }] }], '@fastify/multipart')
    const ours = await ask(`${url}/up`, 'POST', { 'content-type': body.contentType }, body.body)
    t.same([ours.status, JSON.parse(ours.body)], [200, { body: { title: 'hello' }, files: [{ name: 'a.bin', sha256: sha256(data) }] }], 'fastify-chunked-upload')
    recorder.check(t)
  })
}
