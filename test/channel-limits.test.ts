// The channel under hostile clients, over real sockets: memory per socket stays bounded
// whatever a client sends or leaves unread (answers it does not read, announce floods,
// frames inflated by compression), budgets are per plugin instance, and the plugin
// leaves @fastify/websocket's state alone. Time is controlled where it is the subject.
import t, { type Test } from 'tap'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import websocket from '@fastify/websocket'
import type WebSocket from 'ws'
import chunkedUpload, { TmpFileBudget, TmpFileWriter, type UploadConfig } from '../lib/index.js'
import type { Uploads } from '../lib/uploads.js'
import { ANNOUNCE_LIMIT, ANNOUNCE_WINDOW, ANSWERS_HIGH_WATER, ANSWERS_LIMIT } from '../lib/transports/channel/channel.js'
import { Recorder, bytes, eventually, sha256, stillServes, strayFiles, tmpDirFor } from './kit/index.js'
import { ProtocolClient, SUBPROTOCOL, startChannelApp, type ChannelApp } from './kit/channel.js'
import { fakeClock } from './kit/clock.js'

/** The server's side of the only channel socket open on `app`. */
function serverSocket (app: FastifyInstance): WebSocket {
  const clients = [...(app as FastifyInstance & { websocketServer: { clients: Set<WebSocket> } }).websocketServer.clients]
  const channel = clients.filter((client) => client.protocol === SUBPROTOCOL)
  if (channel.length !== 1) throw new Error(`expected one channel socket, found ${channel.length}`)
  return channel[0]!
}

const pause = async (): Promise<void> => await new Promise((resolve) => setImmediate(resolve))

interface Setup extends ChannelApp { recorder: Recorder, ws: string, sockets: Array<Uploads> }

/** POST /up with upload name `file` and its channel; `sockets` collects request.uploads of each channel socket. */
async function setup (t: Test, config: Partial<UploadConfig> = {}, options: Record<string, unknown> = {}, websocketOptions: Record<string, unknown> = {}): Promise<Setup> {
  const recorder = new Recorder()
  const sockets: Uploads[] = []
  const dir = await tmpDirFor(t)
  const started = await startChannelApp(t, (app) => {
    app.post('/up', {
      allowUpload: { file: { accept: 'any', maxEntries: 5, chunkSize: 1000, writer: recorder.factory, ...config } },
      preHandler: async (request: FastifyRequest & { ws?: boolean }) => {
        if (request.ws === true) sockets.push(request.uploads as Uploads)
      }
    }, async () => ({}))
  }, { tmpDir: dir, ...options }, websocketOptions)
  t.teardown(() => recorder.release())
  return { ...started, recorder, ws: `${started.wsUrl}/up/ws`, sockets }
}

t.test('a client that never reads its answers: the server stops reading it, its unsent answers stay bounded, then it is closed with 1008 after chunkTimeout', async (t) => {
  const s = await setup(t, { chunkTimeout: 5000 })
  const client = await ProtocolClient.open(s.ws)
  const clock = fakeClock(t)
  client.socket.pause()
  // Garbage text frames, each answered with bad_message, until the server stops reading
  // (once the network buffers between them are full), or 40 MB at most.
  const server = serverSocket(s.app)
  const garbage = 'x'.repeat(100)
  /** Batches of 500 frames, each after the last was handed over, until `done()` or `batches`. */
  const flood = async (batches: number, done = (): boolean => false): Promise<void> => {
    for (let b = 0; b < batches && !done(); b++) {
      for (let i = 0; i < 500; i++) client.socket.send(garbage)
      await pause()
    }
  }
  await flood(800, () => server.isPaused)
  t.ok(server.isPaused, 'the server stopped reading the socket')
  t.ok(server.bufferedAmount >= ANSWERS_HIGH_WATER && server.bufferedAmount <= ANSWERS_LIMIT,
    `unsent answers stay bounded (${server.bufferedAmount} bytes)`)
  const backlog = server.bufferedAmount
  await flood(20)
  t.ok(server.isPaused, 'more garbage: still not read')
  t.equal(server.bufferedAmount, backlog, 'and not answered')
  await clock.tickAsync(4999)
  t.equal(server.readyState, 1, 'open until its answers went unread for chunkTimeout')
  await clock.tickAsync(1)
  t.equal(server.readyState, 2, 'then closing')
  client.socket.resume()
  const closed = await client.closed
  t.equal(closed.code, 1008)
  t.match(closed.reason, /^answers_not_read/)
  clock.restore()
  const wss = (s.app as FastifyInstance & { websocketServer: { clients: Set<WebSocket> } }).websocketServer
  t.ok(await eventually(() => wss.clients.size === 0), 'the socket and what it held are gone')
  await stillServes(t, s.url)
})

t.test('answers that outgrow what the server holds for an unread socket: closed at once with 1008 answers_not_read', async (t) => {
  // Ten long upload names: each unknown_upload answer lists them (~100 kB).
  const names = Array.from({ length: 10 }, (_, i) => `${'u'.repeat(10_000)}${i}`)
  const recorder = new Recorder()
  const dir = await tmpDirFor(t)
  const s = await startChannelApp(t, (app) => {
    app.post('/up', { allowUpload: Object.fromEntries(names.map((name) => [name, { accept: 'any', writer: recorder.factory }])) }, async () => ({}))
  }, { tmpDir: dir })
  const client = await ProtocolClient.open(`${s.wsUrl}/up/ws`)
  client.socket.pause()
  const raw = (client.socket as unknown as { _socket: { cork: () => void, uncork: () => void } })._socket
  raw.cork()
  for (let id = 1; id <= ANNOUNCE_LIMIT; id++) client.announce(id, { size: 5, uploadName: 'nope' })
  raw.uncork()
  // ~25 MB of answers: more than the network buffers hold, far more than the limit.
  t.ok(await eventually(() => serverSocket(s.app).readyState !== 1), 'the server closed the socket')
  t.ok(serverSocket(s.app).bufferedAmount <= ANSWERS_LIMIT + 120_000, `what waits unsent stays bounded (${serverSocket(s.app).bufferedAmount} bytes)`)
  client.socket.resume()
  const closed = await client.closed
  t.equal(closed.code, 1008)
  t.match(closed.reason, /^answers_not_read/)
  t.same(recorder.records, [])
  await stillServes(t, s.url)
})

t.test('a finished entry claimed by a request is no longer the socket\'s to cancel', async (t) => {
  const s = await setup(t)
  const client = await ProtocolClient.open(s.ws)
  const first = await client.upload(1, bytes(10, 1))
  t.equal((await fetch(`${s.url}/up`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file: first.ref }) })).status, 200)
  client.json({ type: 'cancel', id: 1 })
  t.match(await client.waitFor((m) => m.id === 1 && m.type === 'error'), { code: 'unknown_entry' }, 'claimed: unknown to the socket')
  const second = await client.upload(2, bytes(10, 2))
  t.equal((await fetch(`${s.url}/up`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file: second.ref }) })).status, 200)
  // The next done entry sweeps the claimed ones away.
  t.equal((await client.upload(3, bytes(10, 3))).type, 'done')
  client.json({ type: 'cancel', id: 2 })
  t.match(await client.waitFor((m) => m.id === 2 && m.type === 'error'), { code: 'unknown_entry' })
  client.close()
  s.recorder.check(t)
})

t.test('an announce flood: the socket is not read while announces wait, those past the limit are refused, refused entries are not kept', async (t) => {
  let release: () => void = () => {}
  const held = new Promise<void>((resolve) => { release = resolve })
  const s = await setup(t, { accept: ['.txt'], maxEntries: 1, validate: async () => { await held } })
  const client = await ProtocolClient.open(s.ws)
  // Every announce in one write: the server reads them all before it can pause.
  const count = ANNOUNCE_LIMIT + 44
  const raw = (client.socket as unknown as { _socket: { cork: () => void, uncork: () => void } })._socket
  raw.cork()
  for (let id = 1; id <= count; id++) client.announce(id, { size: 5, name: `${id}.txt` })
  raw.uncork()
  await client.waitFor((m) => m.id === count)
  const refused = client.messages.filter((m) => m.code === 'too_many_announces').map((m) => m.id as number)
  t.same(refused, Array.from({ length: count - ANNOUNCE_LIMIT }, (_, i) => ANNOUNCE_LIMIT + 1 + i), 'announces past the limit are refused with their id')
  t.ok(serverSocket(s.app).isPaused, `the socket is not read while ${ANNOUNCE_WINDOW} or more announces wait`)
  release()
  // The first is accepted (maxEntries: 1), every other answered too_many_files.
  t.equal((await client.accepted(1)).type, 'accepted')
  await client.waitFor((m) => m.id === ANNOUNCE_LIMIT && m.code === 'too_many_files')
  t.equal(client.messages.filter((m) => m.code === 'too_many_files').length, ANNOUNCE_LIMIT - 1)
  t.equal(serverSocket(s.app).isPaused, false, 'read again once the announces were answered')

  // Refused announces leave nothing behind on the socket.
  const from = client.messages.length
  for (let batch = 1000; batch < 1500; batch += 100) {
    for (let id = batch; id < batch + 100; id++) client.announce(id, { size: 5, name: `${id}.png` })
    await client.waitFor((m) => m.id === batch + 99, undefined, from)
  }
  t.equal(client.messages.slice(from).filter((m) => m.code === 'too_many_files').length, 500, 'each refused')
  t.same(s.sockets[0]!.errors(), [], 'the socket keeps no refused entry')
  t.equal(s.sockets[0]!.entries('file').inProgress.length, 1, 'only the accepted entry')
  client.chunk(1, 0, bytes(5))
  t.equal((await client.outcome(1)).type, 'done', 'the accepted entry goes on')
  client.close()
  s.recorder.check(t)
  await stillServes(t, s.url)
})

t.test('frames beyond the window that a paused socket still delivers are bounded: inflated ones close the socket with 1008', async (t) => {
  const s = await setup(t, { chunkSize: 16_000, maxFileSize: 100_000_000 }, { channelWindow: 2 }, { options: { perMessageDeflate: true } })
  s.recorder.faults = { hangOnChunk: 1 }
  const client = await ProtocolClient.open(s.ws, [SUBPROTOCOL], {}, { perMessageDeflate: true })
  client.announce(1, { size: 100_000_000 })
  await client.accepted(1)
  // Zeros compress ~1000:1: a few kB on the wire are thousands of full frames.
  const zeros = Buffer.alloc(16_000)
  const raw = (client.socket as unknown as { _socket: { cork: () => void, uncork: () => void, writableLength: number } })._socket
  raw.cork()
  for (let i = 0; i < 400; i++) client.chunk(1, i * 16_000, zeros)
  // Compression is asynchronous: every frame is in the corked socket once nothing waits for it.
  t.ok(await eventually(() => raw.writableLength > 0 && client.socket.bufferedAmount === raw.writableLength), 'every frame compressed')
  raw.uncork()
  const closed = await client.closed
  t.equal(closed.code, 1008)
  t.match(closed.reason, /^window_exceeded/)
  // The writer's first call hangs: its close waits for it.
  s.recorder.release()
  t.ok(await eventually(() => s.recorder.reasons()[0] === 'cancel'), 'the entry was cancelled with its socket')
  s.recorder.check(t)
  await stillServes(t, s.url)
})

t.test('the route frame limit holds whatever ws allows: per message, compressed or not, with public options only', async (t) => {
  for (const deflate of [false, true]) {
    const s = await setup(t, { chunkSize: 20_000, maxFileSize: 10_000_000 }, {}, { options: { perMessageDeflate: deflate } })
    const client = await ProtocolClient.open(s.ws, [SUBPROTOCOL], {}, { perMessageDeflate: deflate })
    t.equal(client.socket.extensions, deflate ? 'permessage-deflate' : '', deflate ? 'compressed' : 'not compressed')
    const data = bytes(50_000, 3)
    t.equal((await client.upload(1, data)).type, 'done', 'frames within the limit go through')
    t.equal(s.recorder.records[0]!.hash.copy().digest('hex'), sha256(data))
    client.announce(2, { size: 10_000_000 })
    await client.accepted(2)
    // 1 MB of zeros: a few kB compressed, far above the route's 20,012 bytes once inflated.
    client.chunk(2, 0, Buffer.alloc(1_000_000))
    const closed = await client.closed
    t.equal(closed.code, 1009)
    t.match(closed.reason, /at most 20012 bytes/)
    t.ok(await eventually(() => s.recorder.reasons()[1] === 'cancel'), 'the entry was cancelled with its socket')
    t.equal(s.recorder.records[1]!.bytes, 0, 'nothing of it reached the writer')
  }
})

t.test("@fastify/websocket's client set is left alone: a broadcasting app reaches its sockets, channel sockets still hear shutting_down and 1001", async (t) => {
  const dir = await tmpDirFor(t)
  const app = Fastify()
  await app.register(chunkedUpload, { channel: true, tmpDir: dir })
  await app.register(websocket)
  const server = app as FastifyInstance & { websocketServer: { clients: Set<WebSocket> } }
  app.get('/chat', { websocket: true }, (socket) => {
    socket.on('message', (data) => {
      // A broadcast to every client, as @fastify/websocket's README shows it.
      const message = JSON.stringify({ type: 'chat', clients: server.websocketServer.clients.size, text: String(data) })
      for (const client of server.websocketServer.clients) if (client.readyState === 1) client.send(message)
    })
  })
  app.post('/up', { allowUpload: { file: { accept: 'any', chunkSize: 1000 } } }, async () => ({}))
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const base = `ws://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const channel = await ProtocolClient.open(`${base}/up/ws`)
  const chat = await ProtocolClient.open(`${base}/chat`, ['chat'])
  t.equal(server.websocketServer.clients.size, 2, 'the channel socket is in the set, as every socket of the server')
  channel.announce(1, { size: 100_000 })
  await channel.accepted(1)
  chat.socket.send('hello')
  t.same(await chat.waitFor((m) => m.type === 'chat'), { type: 'chat', clients: 2, text: 'hello' }, 'the broadcast counted both sockets')
  t.ok(await channel.waitFor((m) => m.type === 'chat'), 'and reached the channel socket too: the app decides whom it broadcasts to')
  const chatClosed = chat.closed
  await app.close()
  t.match(await channel.outcome(1), { type: 'error', code: 'shutting_down' })
  t.equal((await channel.closed).code, 1001, 'the channel socket closed with 1001, after shutting_down')
  t.equal((await chatClosed).code, 1005, "other sockets closed by @fastify/websocket's own preClose")
})

t.test('registered after @fastify/websocket with channel: true: startup fails with a coded error saying what to do', async (t) => {
  const app = Fastify()
  await app.register(websocket)
  await t.rejects(async () => await app.register(chunkedUpload, { channel: true }).ready(), { code: 'FST_CHUNKED_UPLOAD_WEBSOCKET_ORDER', message: /register fastify-chunked-upload before @fastify\/websocket/ })
  const without = Fastify()
  await without.register(websocket)
  await without.register(chunkedUpload)
  await without.ready()
  t.pass('without the channel, either order is fine')
  await without.close()
})

t.test('budgets are per plugin instance: one instance whose writers stall does not pause another', async (t) => {
  const stalled = await setup(t, { chunkSize: 10_000, maxFileSize: 10_000_000 }, { channelQueueBytes: 50_000 })
  stalled.recorder.faults = { hangOnChunk: 1 }
  const busy = await ProtocolClient.open(stalled.ws)
  busy.announce(1, { size: 10_000_000 })
  await busy.accepted(1)
  for (let i = 0; i < 8; i++) busy.chunk(1, i * 10_000, bytes(10_000, i))
  t.ok(await eventually(() => serverSocket(stalled.app).isPaused), 'the stalled instance stopped reading once its 50 kB budget was spent')

  const other = await setup(t, { chunkSize: 10_000, maxFileSize: 10_000_000 }, { channelQueueBytes: 50_000 })
  const client = await ProtocolClient.open(other.ws)
  const data = bytes(300_000, 5)
  t.equal((await client.upload(1, data)).type, 'done', 'another instance in the same process uploads on')
  t.equal(other.recorder.records[0]!.hash.copy().digest('hex'), sha256(data))
  client.close()
  stalled.recorder.release()
  busy.close()
  await t.rejects(async () => await Fastify().register(chunkedUpload, { channelQueueBytes: 0 }).ready(), { message: /channelQueueBytes/ })
  await t.rejects(async () => await Fastify().register(chunkedUpload, { tmpFileQueueBytes: 1.5 }).ready(), { message: /tmpFileQueueBytes/ })
})

t.test('the temp-file writer: its budget comes through its options, shared by the files that share it', async (t) => {
  const dir = await tmpDirFor(t)
  const small = new TmpFileBudget(1000)
  t.equal(new TmpFileBudget().limit, 64 * 1024 * 1024, 'a 64 MiB default')
  const a = await TmpFileWriter.init({ dir, budget: small })
  const b = await TmpFileWriter.init({ dir, budget: small })
  const c = await TmpFileWriter.init({ dir })
  t.equal(TmpFileWriter.writeChunk(Buffer.alloc(600), a), a, 'under the budget: no wait')
  const waits = TmpFileWriter.writeChunk(Buffer.alloc(600), b)
  t.ok(waits instanceof Promise, 'past the budget shared with the first file: the second waits for its writes')
  t.equal(TmpFileWriter.writeChunk(Buffer.alloc(600), c), c, 'a file with another budget does not wait')
  await waits
  for (const state of [a, b, c]) await TmpFileWriter.close(state, 'cancel')
  t.equal(small.unwritten, 0, 'every byte written or dropped is given back')
  t.same(await strayFiles(dir), [])
})
