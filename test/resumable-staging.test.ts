// How partial uploads are staged for concatenation, through the writer contract: the
// final upload reads each partial back with its staging writer's `read` and feeds it to
// the route's writer as an append. The plugin stages in temp files (the other resumable
// tests); here the endpoint is built on its own to stage in memory, and to show that a
// writer that cannot read back is refused at once.
import t from 'tap'
import Fastify from 'fastify'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import { resolveAllowUpload } from '../lib/config.js'
import { Entry } from '../lib/entry.js'
import { ShuttingDownError } from '../lib/errors.js'
import { MemoryStore, MemoryWriter, defineWriter, type MemoryMeta, type UploadWriter } from '../lib/index.js'
import { RefStore } from '../lib/refs.js'
import { ResumableEndpoint, ResumableRegistry, type ResumableSettings } from '../lib/transports/resumable/index.js'
import { bytes } from './kit/index.js'
import { OCTETS, TUS, send } from './kit/resumable.js'

/** A writer that stores nothing it could give back. */
const Forgetful = defineWriter({
  init: () => ({}),
  meta: () => ({}),
  writeChunk: (_data, state) => state,
  close: (state) => state
})

function endpointWith (staging: UploadWriter): { endpoint: ResumableEndpoint, registry: ResumableRegistry, refs: RefStore, configs: ReturnType<typeof resolveAllowUpload> } {
  const configs = resolveAllowUpload({ file: { accept: 'any', resumable: true, chunkSize: 1000 } }, {}, () => MemoryWriter, 'POST /up')
  const registry = new ResumableRegistry(10, Fastify().log)
  const refs = new RefStore(60_000)
  const settings: ResumableSettings = {
    refs, store: new MemoryStore(), abandonRecord: async () => {}, notDurable: () => {}, owner: async () => undefined, expiry: 60_000, maxLifetime: 60_000, staging, stagingOptions: undefined
  }
  return { endpoint: new ResumableEndpoint({ configs, registry, settings }), registry, refs, configs }
}

t.test('a staging writer without read is refused when the endpoint is built, saying why', async (t) => {
  t.throws(() => endpointWith(Forgetful), { code: 'FST_CHUNKED_UPLOAD_INVALID_CONFIG', message: /stages partial uploads.*read\(state\)/ })
})

t.test('an entry whose writer has no read cannot be read back: a clear error', async (t) => {
  const configs = resolveAllowUpload({ f: { accept: 'any' } }, {}, () => Forgetful, 'POST /up')
  const log = { error: () => {}, warn: () => {} } as unknown as FastifyBaseLogger
  const entry = new Entry(configs.get('f')!, { clientName: 'a.bin', clientType: '', clientSize: 0 }, { log } as FastifyRequest, log)
  await entry.start()
  await entry.finish()
  t.throws(() => entry.read(), { code: 'FST_CHUNKED_UPLOAD_INVALID_CONFIG', message: /"a\.bin" cannot read back what it stored/ })
})

t.test('partials staged in memory concatenate, in order and twice over, into the route\'s writer', async (t) => {
  const { endpoint, registry, refs, configs } = endpointWith(MemoryWriter)
  const app = Fastify()
  // The plugin hands the endpoint the unread body; so does this parser.
  app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })
  app.all('/up/tus', async (request, reply) => { await endpoint.endpoint(request, reply) })
  app.all('/up/tus/:id', async (request, reply) => { await endpoint.upload(request, reply) })
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(async () => {
    await registry.shutdown(new ShuttingDownError())
    await refs.close()
    await app.close()
  })
  const parts = [bytes(2500, 1), bytes(1, 2), bytes(4000, 3)]
  const paths: string[] = []
  for (const data of parts) {
    const created = await send(`${url}/up/tus`, 'POST', { ...TUS, 'upload-length': data.length, 'upload-concat': 'partial' })
    t.equal(created.status, 201)
    const path = String(created.headers.location)
    t.equal((await send(url + path, 'PATCH', { ...TUS, 'content-type': OCTETS, 'upload-offset': 0 }, data)).status, 204)
    paths.push(path)
  }
  const order = [paths[0], paths[1], paths[2], paths[0]]
  const final = await send(`${url}/up/tus`, 'POST', { ...TUS, 'upload-concat': `final;${order.join(' ')}` })
  t.equal(final.status, 201)
  t.equal(final.headers['upload-offset'], String(2500 + 1 + 4000 + 2500))
  const ref = String(final.headers.location).split('/').pop()!
  t.ok(refs.claimable(ref, undefined, configs.get('file')!), 'the final waits for its ref')
  const entry = refs.claim(ref)
  t.same((entry.meta() as MemoryMeta).buffer, Buffer.concat([parts[0]!, parts[1]!, parts[2]!, parts[0]!]), 'byte for byte, in order')
  await entry.discard(true)
  for (const path of paths) t.equal(registry.find(path.split('/').pop()!), 'concatenated')
})
