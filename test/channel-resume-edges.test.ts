// Version 2 of the channel at its edges: an entry a socket feeds does not expire; two
// resumes at once; resumes during a shutdown, in a full process; an abort while the
// client reconnects; one owner's entries across sockets; writers starting at shutdown;
// a client gone silent. Real sockets, writers held at gates.
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import chunkedUpload, { MemoryStore, TmpFileWriter, type HeldLock, type ChunkedUploadOptions, type WriterFactory } from '../lib/index.js'
import { ProtocolClient, SUBPROTOCOL, SUBPROTOCOL_V2, type ServerMessage } from './kit/channel.js'
import { claim, gate, heard, heldWrites, resume, serve as serveApp, started, v2, type Server } from './kit/channel-v2.js'
import { bytes, filesDir, listen, strayFiles, tmpDirFor, until } from './kit/index.js'
import { fakeClock } from './kit/clock.js'
import { journaled } from './kit/journal.js'

/** The kit's app, with room for several entries per socket. */
async function serve (t: Test, options: ChunkedUploadOptions, writer?: WriterFactory, file: Record<string, unknown> = {}): Promise<Server> {
  return await serveApp(t, options, writer, { maxEntries: 10, ...file })
}

/** A MemoryStore that counts the times a lock's holder was asked to let go. */
class AskingStore extends MemoryStore {
  asked = 0
  override async lock (id: string, onStopRequested: () => void, timeout: number): Promise<HeldLock> {
    return await super.lock(id, () => {
      this.asked++
      onStopRequested()
    }, timeout)
  }
}

t.test('an entry a socket is feeding does not expire: bytes keep it alive, as a PATCH does (resumableExpiry)', async (t) => {
  const clock = fakeClock(t)
  const server = await serve(t, { resumableExpiry: 10_000 }, undefined, { chunkTimeout: 600_000 })
  const data = bytes(30_000)
  const client = await v2(server)
  client.announce(1, { size: data.length })
  const accepted = await client.accepted(1)
  client.chunk(1, 0, data.subarray(0, 10_000))
  await client.until(() => client.ackedOffset(1) === 10_000)
  await clock.tickAsync(6_000)
  client.chunk(1, 10_000, data.subarray(10_000, 20_000))
  await client.until(() => client.ackedOffset(1) === 20_000)
  // 12 s after the announce, 6 s after its last byte: within resumableExpiry of its last activity.
  await clock.tickAsync(6_000)
  client.chunk(1, 20_000, data.subarray(20_000))
  const outcome = await client.outcome(1)
  t.match(outcome, { type: 'done', ref: accepted.ref }, 'not ended while its socket feeds it')
})

t.test('two sockets resume an entry a third one holds: the later resume takes it over, the earlier hears resumed_elsewhere', async (t) => {
  const dir = await tmpDirFor(t)
  let saving: ReturnType<typeof gate> | undefined
  const server = await serve(t, { tmpDir: dir }, journaled([], filesDir(dir), {
    checkpoint: async (state, info) => {
      const held = saving
      if (held !== undefined) { saving = undefined; held.arrive(); await held.wait }
      return await TmpFileWriter.checkpoint!(state, info)
    }
  }), { chunkTimeout: 3_000 })
  const data = bytes(50_000)
  const a = await v2(server)
  const accepted = await started(a, 1, data, 20_000)
  // a's save (when b asks it to let go) waits at the gate, so b and c both wait for a.
  saving = gate()
  const reached = saving.reached
  const open = saving.open
  const b = await v2(server)
  b.json({ type: 'resume', id: 1, ref: accepted.ref })
  await reached
  const c = await v2(server)
  const fromC = c.messages.length
  c.json({ type: 'resume', id: 1, ref: accepted.ref })
  await heard(c)
  open()
  t.match(await b.waitFor((m) => m.id === 1 && m.type === 'resumed'), { offset: 20_000 }, 'b resumed it first')
  // b stays silent (its client moved on to c). c asked last: c must get it.
  const answer = await c.waitFor((m) => m.id === 1 && ['resumed', 'done', 'error'].includes(m.type), undefined, fromC)
  t.match(answer, { type: 'resumed', offset: 20_000 }, 'c takes the entry over')
  t.notOk(b.messages.some((m) => m.id === 1 && m.code === 'chunk_timeout'), 'the entry is not lost to b\'s silence')
})

t.test('a resume while the server shuts down is not told unknown_entry: the entry is kept for the next process', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const { writer, hold } = heldWrites(journal, filesDir(dir))
  const server = await serve(t, { tmpDir: dir }, writer)
  const data = bytes(40_000)
  // y: dropped by its socket, saved, waiting for a resume.
  const first = await v2(server)
  const y = await started(first, 1, data, 20_000)
  first.socket.terminate()
  await first.closed
  // x: its socket is writing a chunk (held at the gate) when the shutdown begins: the shutdown waits for it.
  const other = await v2(server)
  other.announce(1, { size: 40_000 })
  await other.accepted(1)
  const held = hold()
  other.chunk(1, 0, bytes(10_000))
  await held.reached
  const client = await v2(server)
  const closing = server.app.close()
  await until('y let go by the shutdown', () => journal.includes('checkpoint 20000 last'))
  const answer = await Promise.race([resume(client, 2, y.ref), client.closed.then(() => undefined)])
  held.open()
  await closing
  t.notMatch(answer, { code: 'unknown_entry' }, 'the client is not told to announce the file again')

  const next = await serve(t, { tmpDir: dir }, writer)
  const again = await v2(next)
  t.match(await resume(again, 1, y.ref), { type: 'resumed', offset: 20_000 }, 'it was kept all along')
})

t.test('client: an abort while the session waits to reconnect still cancels the files it started on the server', async (t) => {
  const { File } = await import('node:buffer')
  const { default: WebSocket } = await import('ws')
  const { upload } = await import('../client/index.js')
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  let writes = 0
  const third = gate()
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    writeChunk: async (chunk, state) => {
      if (++writes === 3) { third.arrive(); await third.wait }
      return await TmpFileWriter.writeChunk(chunk, state)
    }
  }))
  const clients = (server.app as unknown as { websocketServer: { clients: Set<{ terminate: () => void }> } }).websocketServer.clients
  const controller = new AbortController()
  const uploading = upload(`${server.url}/up`, [new File([bytes(500_000)], 'big.bin')], {
    uploadName: 'file',
    WebSocket: WebSocket as never,
    signal: controller.signal,
    // A long wait before the next socket: the abort comes during it.
    retryDelays: [600_000]
  }).catch((error: unknown) => error)
  await third.reached
  for (const socket of clients) socket.terminate()
  third.open()
  await until('the entry saved at the drop', () => journal.some((line) => line.startsWith('checkpoint') && line !== 'checkpoint 0'))
  controller.abort(new Error('user gave up'))
  t.match(await uploading, { message: 'user gave up' })
  await until('the server cancelled the entry', () => journal.includes('close cancel'), 10_000).catch(() => undefined)
  t.ok(journal.includes('close cancel'), 'the writer gets cancel: the user gave up on the file')
})

t.test('with the owner option, one owner cannot hold more than maxEntries channel entries by opening sockets (as over tus), locking the others out', async (t) => {
  const server = await serve(t, { maxResumableUploads: 3, owner: (request) => request.headers['x-user'] as string | undefined }, undefined, { maxEntries: 1 })
  const alice = { 'x-user': 'alice' }
  const answers: ServerMessage[] = []
  for (let i = 0; i < 3; i++) {
    // Announce one file, then drop the socket: the entry is kept, waiting for a resume.
    const socket = await ProtocolClient.open(server.ws, [SUBPROTOCOL_V2], alice)
    socket.announce(1, { size: 10_000 })
    answers.push(await socket.waitFor((m) => m.id === 1 && (m.type === 'accepted' || m.type === 'error')))
    socket.socket.terminate()
    await socket.closed
  }
  const bob = await ProtocolClient.open(server.ws, [SUBPROTOCOL_V2], { 'x-user': 'bob' })
  bob.announce(1, { size: 10_000 })
  const answer = await bob.waitFor((m) => m.id === 1 && (m.type === 'accepted' || m.type === 'error'))
  t.match(answers.slice(1), [{ type: 'error', code: 'too_many_files' }, { type: 'error', code: 'too_many_files' }], 'alice holds one entry at a time, as over tus')
  t.equal(answer.type, 'accepted', 'bob is not locked out by alice')
})

t.test('after a restart, a resume refused because the process is full (maxResumableUploads) is not unknown_entry, and leaves no lock behind', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await serve(t, { tmpDir: dir })
  const data = bytes(40_000)
  const a = await v2(first)
  const y = await started(a, 1, data, 20_000)
  await first.app.close()

  // writerTimeout 5 s: the lock's timeout is 2 × 5 + 5 = 15 s, past the 10 s this test waits.
  const next = await serve(t, { tmpDir: dir, maxResumableUploads: 1 }, undefined, { writerTimeout: 5_000 })
  const client = await v2(next)
  client.announce(1, { size: 10 })
  await client.accepted(1)
  const full = await resume(client, 2, y.ref)
  t.notMatch(full, { code: 'unknown_entry' }, 'the entry is there: the server is full, the file need not start again')
  client.json({ type: 'cancel', id: 1 })
  t.match(await client.outcome(1), { code: 'cancelled' })
  // Room again: the resume goes through at once (not after the leaked lock's timeout).
  const answer = await resume(client, 3, y.ref, 10_000).catch((error: Error) => ({ type: 'no answer', message: error.message.slice(0, 80) }))
  t.match(answer, { type: 'resumed', offset: 20_000 })
})

for (const protocol of [SUBPROTOCOL, SUBPROTOCOL_V2]) {
  t.test(`app.close() waits for an entry whose writer is starting (${protocol}): its init is told to stop, no writer call comes after`, async (t) => {
    const dir = await tmpDirFor(t)
    const journal: string[] = []
    const starting = gate()
    const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
      init: async (options, call) => {
        starting.arrive()
        const stopped = new Promise<void>((resolve) => call?.signal.addEventListener('abort', () => resolve(), { once: true }))
        await Promise.race([starting.wait, stopped])
        if (call?.signal.aborted === true) { journal.push('init stopped'); throw new Error('stopped') }
        journal.push('init')
        return await TmpFileWriter.init(options as never, call)
      }
    }))
    const client = await ProtocolClient.open(server.ws, [protocol])
    client.announce(1, { size: 10_000 })
    await starting.reached
    await server.app.close()
    const atClose = journal.slice()
    starting.open()
    await until('the entry is answered or forgotten', () => journal.length > atClose.length || atClose.includes('init stopped'), 5_000).catch(() => undefined)
    t.same(journal, atClose, 'no writer call after app.close() resolved')
  })
}

t.test('a socket that goes silent (a laptop asleep, a tab in the background) lets its entry go, as a silent PATCH does, rather than cancelling it', async (t) => {
  const server = await serve(t, {}, undefined, { chunkTimeout: 500 })
  const data = bytes(40_000)
  const asleep = await v2(server)
  const accepted = await started(asleep, 1, data, 20_000)
  // The client is suspended: its socket stays open, nothing more comes.
  t.match(await asleep.outcome(1), { code: 'chunk_timeout', ref: accepted.ref }, 'told, as the entry is let go')
  // It wakes up, finds its socket dead, and resumes on a new one.
  asleep.socket.terminate()
  const awake = await v2(server)
  t.match(await resume(awake, 1, accepted.ref), { type: 'resumed', offset: 20_000 }, 'the 20 000 bytes the server had are not thrown away')
})

t.test('a socket upgraded while the server shuts down is closed at once with 1001: the shutdown does not wait for it', async (t) => {
  const held = gate()
  const late: { closed?: Promise<{ code: number, reason: string }> } = {}
  const app = Fastify()
  await app.register(chunkedUpload, { channel: true, tmpDir: await tmpDirFor(t) })
  // Between the plugin's preClose (the channel stopped) and @fastify/websocket's (its server closed):
  // the upgrade held below goes through now.
  app.addHook('preClose', async () => {
    held.open()
    await late.closed
  })
  await app.register(websocket)
  // The route's hooks run on its channel's upgrade too: this one holds it until the shutdown began.
  app.post('/up', { allowUpload: { file: { accept: 'any' } }, preHandler: async (request) => { if (request.method === 'GET') { held.arrive(); await held.wait } } }, async () => ({}))
  const { url } = await listen(t, app)
  const client = new ProtocolClient(`${url.replace('http:', 'ws:')}/up/ws`, [SUBPROTOCOL_V2])
  late.closed = client.closed
  await held.reached
  await app.close()
  t.same(await late.closed, { code: 1001, reason: 'server shutting down' })
})

t.test('a tus upload of the route whose length is deferred cannot be resumed over the channel', async (t) => {
  const server = await serve(t, {}, undefined, { resumable: true })
  const created = await fetch(`${server.url}/up/tus`, { method: 'POST', headers: { 'tus-resumable': '1.0.0', 'upload-defer-length': '1' } })
  t.equal(created.status, 201)
  const id = String(created.headers.get('location')).split('/').pop()!
  const client = await v2(server)
  t.match(await resume(client, 1, id), { type: 'error', code: 'unknown_entry', message: /cannot be continued over the channel/ })
})

t.test('a resume that waits while the shutdown keeps the entry gets no answer (its socket closes with 1001); the next process resumes it', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const { writer, hold } = heldWrites(journal, filesDir(dir))
  const server = await serve(t, { tmpDir: dir }, writer)
  const a = await v2(server)
  const accepted = await started(a, 1, bytes(40_000), 20_000)
  const held = hold()
  a.chunk(1, 20_000, bytes(10_000))
  await held.reached
  // b's resume waits for a, whose write is held; then the shutdown lets the entry go, kept.
  const b = await v2(server)
  const from = b.messages.length
  b.json({ type: 'resume', id: 1, ref: accepted.ref })
  await heard(b)
  const closing = server.app.close()
  held.open()
  await closing
  t.equal((await b.closed).code, 1001)
  t.same(b.messages.slice(from).filter((m) => m.id === 1), [], 'no answer: the client resumes on the next server')
  const next = await serve(t, { tmpDir: dir }, writer)
  t.match(await resume(await v2(next), 1, accepted.ref), { type: 'resumed', offset: 30_000 }, 'kept with every byte its writer took')
})

t.test('a resume and a cancel of a finished entry discard it; an announce whose socket closes before it is accepted leaves nothing', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  let starting: ReturnType<typeof gate> | undefined
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    init: async (options, call) => {
      const held = starting
      if (held !== undefined) { starting = undefined; held.arrive(); await held.wait }
      journal.push('init')
      return await TmpFileWriter.init(options as never, call)
    }
  }))
  const client = await v2(server)
  const done = await client.upload(1, bytes(5_000))
  t.equal(done.type, 'done')
  const other = await v2(server)
  other.json({ type: 'resume', id: 3, ref: done.ref })
  other.json({ type: 'cancel', id: 3 })
  t.match(await other.waitFor((m) => m.id === 3), { type: 'error', code: 'cancelled' })
  t.equal((await claim(server, done.ref)).status, 400, 'discarded')

  starting = gate()
  const held = starting
  const gone = await v2(server)
  gone.announce(1, { size: 5_000 })
  await held.reached
  gone.socket.terminate()
  await until('the server saw the socket close', () => server.app.websocketServer.clients.size === 2)
  held.open()
  await until('its writer cancelled', () => journal.filter((line) => line === 'close cancel').length === 1)
  t.same(await strayFiles(dir), [], 'nobody knew its ref: it is gone')
})

t.test('two apps on one store: a resume waiting on the first app while the second takes the entry over is told try_again', async (t) => {
  const dir = await tmpDirFor(t)
  const store = new AskingStore()
  const { writer, hold } = heldWrites([], dir)
  const first = await serve(t, { store, tmpDir: dir }, writer)
  const second = await serve(t, { store, tmpDir: dir }, writer)
  const a = await v2(first)
  const accepted = await started(a, 1, bytes(40_000), 20_000)
  const held = hold()
  a.chunk(1, 20_000, bytes(10_000))
  await held.reached
  // On the first app, b waits for a (its write is held); on the second, c asks for the entry too.
  const b = await v2(first)
  const fromB = b.messages.length
  b.json({ type: 'resume', id: 1, ref: accepted.ref })
  await heard(b)
  const c = await v2(second)
  const taken = resume(c, 1, accepted.ref)
  await until('the first app asked to let go', () => store.asked > 0)
  held.open()
  t.match(await taken, { type: 'resumed', offset: 30_000 }, 'the second app has it')
  t.match(await b.waitFor((m) => m.id === 1, undefined, fromB), { type: 'error', code: 'try_again', ref: accepted.ref }, 'b is told to try again: the entry goes on elsewhere')
})
