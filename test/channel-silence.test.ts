// chunkTimeout on the channel: the time the server waits for the client's next bytes of
// an entry. It never counts time spent in writers: neither the entry's own writer calls,
// nor the time its client cannot send because the socket's window is full of frames
// that writers have not taken yet. Time is the subject: it runs on the test's clock.
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type WebSocket from 'ws'
import type { UploadConfig } from '../lib/index.js'
import { Recorder, bytes, checkLetGo, eventually, stillServes, tmpDirFor, type Faults } from './kit/index.js'
import { ProtocolClient, SUBPROTOCOL, startChannelApp, type ChannelApp } from './kit/channel.js'
import { fakeClock } from './kit/clock.js'

interface Setup extends ChannelApp { recorder: Recorder, dir: string, ws: string }

async function setup (t: Test, config: Partial<UploadConfig>, faults: Faults, plugin: Record<string, unknown> = {}): Promise<Setup> {
  const recorder = new Recorder(faults)
  const dir = await tmpDirFor(t)
  const started = await startChannelApp(t, (app) => {
    app.post('/up', { allowUpload: { file: { accept: 'any', maxEntries: 5, chunkSize: 1000, writer: recorder.factory, ...config } } }, async () => ({}))
  }, { tmpDir: dir, ...plugin })
  t.teardown(() => recorder.release())
  return { ...started, recorder, dir, ws: `${started.wsUrl}/up/ws` }
}

/** The server's side of the only channel socket open on `app`. */
function serverSocket (app: FastifyInstance): WebSocket {
  const clients = [...(app as FastifyInstance & { websocketServer: { clients: Set<WebSocket> } }).websocketServer.clients]
  return clients.find((client) => client.protocol === SUBPROTOCOL)!
}

t.test('an entry whose client cannot send (the window is full of a sibling\'s frames, its writer hung) does not time out; its silence counts from when the client can send again', async (t) => {
  // The first writeChunk of every writer hangs: only the sibling (2) sends, so only its writer hangs.
  const s = await setup(t, { chunkTimeout: 300 }, { hangOnChunk: 1 }, { channelWindow: 4 })
  const client = await ProtocolClient.open(s.ws)
  const clock = fakeClock(t)
  client.announce(1, { size: 5000 })
  await client.accepted(1)
  client.announce(2, { size: 4000 })
  await client.accepted(2)
  // The whole window: the first frame is with the hung writer, three wait for it.
  for (let i = 0; i < 4; i++) client.chunk(2, i * 1000, bytes(1000, i))
  await s.recorder.hung()
  t.ok(await eventually(() => serverSocket(s.app).isPaused), 'the window is full: the server does not read the socket')
  const silent = s.recorder.records[0]!
  await clock.tickAsync(1000)
  t.same(silent.closes, [], 'entry 1 is not timed out: its client could not send')
  t.notOk(client.messages.some((m) => m.type === 'error'), 'no entry failed')

  // The writer goes on: the sibling's frames are written and acknowledged, the window is free.
  s.recorder.release()
  t.equal((await client.outcome(2)).type, 'done', 'the sibling is done: its writer\'s time was not its silence either')
  await clock.tickAsync(299)
  t.same(silent.closes, [], 'entry 1 waits a whole chunkTimeout from when its client could send')
  await clock.tickAsync(1)
  t.match(await client.outcome(1), { type: 'error', code: 'chunk_timeout', error: 'FST_CHUNKED_UPLOAD_CHUNK_TIMEOUT' })
  t.same(s.recorder.reasons(), ['cancel', 'done'])
  clock.restore()
  client.close()
  await checkLetGo(t, s.recorder, s.dir)
  await stillServes(t, s.url)
})

t.test('an entry silent while its own writer is slow is not timed out; silent after the writer settled, it is', async (t) => {
  const s = await setup(t, { chunkTimeout: 300 }, { hangOnChunk: 1 })
  const client = await ProtocolClient.open(s.ws)
  const clock = fakeClock(t)
  client.announce(1, { size: 3000 })
  await client.accepted(1)
  client.chunk(1, 0, bytes(1000))
  await s.recorder.hung()
  await clock.tickAsync(3000)
  t.same(s.recorder.records[0]!.closes, [], 'ten chunkTimeouts in the writer: not silence')
  s.recorder.release()
  await client.waitFor((m) => m.type === 'ack' && m.id === 1 && m.offset === 1000)
  await clock.tickAsync(299)
  t.same(s.recorder.records[0]!.closes, [], 'chunkTimeout counts from the ack')
  await clock.tickAsync(1)
  t.match(await client.outcome(1), { type: 'error', code: 'chunk_timeout' })
  clock.restore()
  client.close()
  await checkLetGo(t, s.recorder, s.dir)
  await stillServes(t, s.url)
})
