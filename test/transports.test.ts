// Every transport at once, on several routes: the upload route's own HTTP body, the
// WebSocket channel and the resumable endpoint each stop at shutdown, side by side, and
// nothing any of them received is left behind. Real sockets.
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import t from 'tap'
import chunkedUpload from '../lib/index.js'
import { ProtocolClient } from './kit/channel.js'
import { Recorder, bytes, eventually, leftBehind, listen, strayFiles, tempFiles, tmpDirFor } from './kit/index.js'
import { OCTETS, TUS, WriterGate, open, patchHeaders, send } from './kit/resumable.js'

t.test('shutdown with every transport in flight on two routes: each stops, none waits for another\'s writer, no file is left but what the next process goes on with', async (t) => {
  const dir = await tmpDirFor(t)
  // One name of each route writes behind the gate; the others write temp files.
  const gate = new WriterGate()
  gate.holdInit = false
  const held = new Recorder()
  const app = Fastify()
  await app.register(chunkedUpload, { channel: true, tmpDir: dir })
  await app.register(websocket)
  const file = { accept: 'any', chunkSize: 1000, maxEntries: 3 } as const
  app.post('/photos', { allowUpload: { photo: { ...file, resumable: true, writer: gate.factory(held) }, thumb: file } }, async () => 'not reached')
  app.put('/docs', { allowUpload: { doc: { ...file, writer: gate.factory(held) }, note: { ...file, resumable: true } } }, async () => 'not reached')
  const { url } = await listen(t, app)
  const wsUrl = url.replace('http:', 'ws:')
  t.teardown(() => gate.open())

  // Resumable: a complete upload nobody claimed yet (a temp file), and an append whose writer call is held.
  const complete = await send(`${url}/docs/tus?upload=note`, 'POST', { ...TUS, 'upload-length': 500, 'content-type': OCTETS }, bytes(500, 1))
  t.equal(complete.status, 201)
  const created = await send(`${url}/photos/tus`, 'POST', { ...TUS, 'upload-length': 10_000 })
  t.equal(created.status, 201)
  gate.shut()
  const patch = open(new URL(String(created.headers.location), url).href, 'PATCH', patchHeaders(0, { 'content-length': 10_000 }))
  patch.req.write(bytes(1000, 2))
  // HTTP: a raw body, all sent, whose writer call is held.
  const put = send(`${url}/docs?upload=doc`, 'PUT', { 'content-type': 'application/octet-stream' }, bytes(5000, 3))
  t.ok(await eventually(() => gate.held === 2), 'the append and the PUT each have a writer call in flight')

  // Channels of both routes: a finished entry waiting for its ref, and one halfway through.
  const channels = await Promise.all([['/docs/ws', 'note'], ['/photos/ws', 'thumb']].map(async ([path, uploadName]) => {
    const client = await ProtocolClient.open(wsUrl + path!)
    t.match(await client.upload(1, bytes(700, 4), { uploadName }), { type: 'done' }, `${path}: a finished entry`)
    client.announce(2, { uploadName, size: 100_000 })
    await client.accepted(2)
    client.chunk(2, 0, bytes(1000, 5))
    await client.waitFor((m) => m.type === 'ack' && m.id === 2)
    return client
  }))
  t.equal((await tempFiles(dir)).length, 5, 'temp files: the complete upload, and two per channel')

  let closed = false
  const closing = app.close().then(() => { closed = true })
  // While both writer calls are held, the other transports stop all the same.
  const answer = await put
  t.same([answer.status, answer.json?.code], [503, 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN'], 'the PUT is answered at once')
  for (const client of channels) {
    t.match(await client.outcome(2), { type: 'error', code: 'shutting_down' }, 'the channel entry hears why it stopped')
    t.equal((await client.closed).code, 1001, 'then its socket closes with 1001')
  }
  t.equal(gate.held, 2, 'both writer calls still in flight meanwhile')
  t.notOk(closed, 'close() waits for them')

  gate.open()
  const patched = await patch.reply
  t.same([patched.status, patched.json?.code], [503, 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN'], 'the append ends with the server')
  await closing
  t.same(held.reasons(), ['cancel', 'cancel'], 'each held writer closed once, with cancel')
  held.check(t)
  t.equal((await strayFiles(dir)).filter((path) => path.includes('fcu-store-parked-')).length, 1, 'the complete upload waiting for its ref is kept for the next process')
  t.same(await leftBehind(dir), [], 'every other temp file is gone: unfinished, or waiting for a ref on a channel')
  patch.req.destroy()
})
