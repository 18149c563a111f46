// ChannelSession (client/index.ts) on its own, against a scripted socket: the test plays
// the server of PROTOCOL.md message by message, so the session's own logic (the window
// of unacknowledged frames, coalesced acks, round-robin, concurrency, cancel ordering,
// how a dropped or garbled socket ends the files) is observed frame by frame. Files read
// from memory through promises only, so `settle()` (one turn of the event loop) lets
// every read the session started finish and its frames go out.
import t from 'tap'
import { fakeClock } from './kit/clock.js'
import { ChannelSession, type ChannelSessionOptions, type FileItem, type FileLike, type Progress, type WebSocketLike } from '../client/index.js'

/** What the session sent: a JSON message, or a chunk frame (decoded header). */
type Sent = { message: Record<string, unknown> } | { frame: { id: number, offset: number, length: number, first: number } }

/** A socket the test scripts: it records what the session sends and delivers what the test says. */
class ScriptedSocket implements WebSocketLike {
  binaryType = 'blob'
  readyState = 0
  readonly sent: Sent[] = []
  closedWith: number | undefined
  onopen: ((event: never) => void) | null = null
  onmessage: ((event: never) => void) | null = null
  onclose: ((event: never) => void) | null = null
  onerror: ((event: never) => void) | null = null

  send (data: string | Uint8Array): void {
    if (typeof data === 'string') {
      this.sent.push({ message: JSON.parse(data) as Record<string, unknown> })
      return
    }
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
    const id = view.getUint32(0)
    const offset = view.getUint32(4) * 0x1_0000_0000 + view.getUint32(8)
    this.sent.push({ frame: { id, offset, length: data.byteLength - 12, first: data[12] ?? -1 } })
  }

  close (code?: number): void {
    this.closedWith = code
  }

  // the server's side
  open (): void {
    this.readyState = 1;
    (this.onopen as (event: unknown) => void)({})
  }

  deliver (data: unknown): void {
    (this.onmessage as (event: { data: unknown }) => void)({ data: typeof data === 'string' ? data : JSON.stringify(data) })
  }

  drop (code: number, reason = ''): void {
    this.readyState = 3
    this.onerror?.({} as never);
    (this.onclose as (event: { code: number, reason: string }) => void)({ code, reason })
  }

  /** Messages of one type the session sent, in order. */
  messages (type: string): Array<Record<string, unknown>> {
    return this.sent.flatMap((s) => 'message' in s && s.message.type === type ? [s.message] : [])
  }

  /** Chunk frames sent, in order. */
  frames (): Array<{ id: number, offset: number, length: number, first: number }> {
    return this.sent.flatMap((s) => 'frame' in s ? [s.frame] : [])
  }

  /** Forgets what was sent so far (to look at what a step sends). */
  take (): Sent[] {
    return this.sent.splice(0)
  }
}

/** A file in memory whose bytes are `(offset + seed) % 256`; reads resolve on the microtask queue. */
function memoryFile (name: string, size: number, seed = 0): FileLike {
  const bytes = Uint8Array.from({ length: size }, (_, i) => (i + seed) % 256)
  return {
    name,
    size,
    type: 'application/octet-stream',
    lastModified: 1_700_000_000_000,
    slice: (start, end) => ({ arrayBuffer: async () => bytes.slice(start, end).buffer })
  }
}

/** Lets every pending read (promise) finish, so its frame is sent. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

/** A session over a scripted socket; `run` is its run(), settled into results or an error; `opened()` counts the sockets it opened. */
function session (files: Array<FileLike | FileItem>, options: Partial<ChannelSessionOptions> = {}): { socket: ScriptedSocket, run: Promise<Settled>, opened: () => number } {
  const socket = new ScriptedSocket()
  let opened = 0
  const run = new ChannelSession(files, {
    uploadName: 'files',
    concurrency: 3,
    url: 'ws://127.0.0.1:1/upload/files/ws',
    openSocket: () => {
      opened++
      return socket
    },
    ...options
  }).run().then((results) => ({ results }), (error: unknown) => ({ error }))
  return { socket, run, opened: () => opened }
}
type Settled = { results: Awaited<ReturnType<ChannelSession['run']>> } | { error: unknown }

const accepted = (id: number, chunkSize: number, window: number): Record<string, unknown> => ({ type: 'accepted', id, ref: `ref-${id}`, chunkSize, window })

t.test('the window bounds the unacknowledged frames over all files; one ack frees every frame it covers; files take turns', async (t) => {
  const { socket, run } = session([memoryFile('a', 10, 0), memoryFile('b', 10, 100)])
  socket.open()
  t.same(socket.messages('announce').map((m) => [m.id, m.name, m.size, m.uploadName]), [[1, 'a', 10, 'files'], [2, 'b', 10, 'files']], 'both announced at open')
  t.equal(socket.binaryType, 'arraybuffer')
  socket.take()

  socket.deliver(accepted(1, 4, 3))
  socket.deliver(accepted(2, 4, 3))
  await settle()
  t.same(socket.take(), [
    { frame: { id: 1, offset: 0, length: 4, first: 0 } },
    { frame: { id: 2, offset: 0, length: 4, first: 100 } },
    { frame: { id: 1, offset: 4, length: 4, first: 4 } }
  ], 'three frames (the window), round-robin, with each file\'s bytes at its offset')

  socket.deliver({ type: 'ack', id: 2, offset: 3, progress: 30 })
  await settle()
  t.same(socket.take(), [], 'an ack short of a frame\'s end frees nothing')

  socket.deliver({ type: 'ack', id: 1, offset: 8, progress: 80 })
  await settle()
  t.same(socket.take(), [
    { frame: { id: 2, offset: 4, length: 4, first: 104 } },
    { frame: { id: 1, offset: 8, length: 2, first: 8 } }
  ], 'one ack covering two frames frees two slots; b goes first, it had waited')

  socket.deliver({ type: 'ack', id: 1, offset: 10, progress: 99 })
  socket.deliver({ type: 'ack', id: 2, offset: 8, progress: 80 })
  await settle()
  t.same(socket.take(), [{ frame: { id: 2, offset: 8, length: 2, first: 108 } }], 'a sends nothing past its size')

  socket.deliver({ type: 'done', id: 1, ref: 'ref-1' })
  socket.deliver({ type: 'done', id: 2, ref: 'ref-2' })
  t.same(await run, { results: [{ name: 'a', ok: true, ref: 'ref-1' }, { name: 'b', ok: true, ref: 'ref-2' }] })
  t.equal(socket.closedWith, 1000, 'the session closes its socket when every file is settled')
})

t.test('at most `concurrency` files are announced; the next is announced when one ends; an empty file needs no frame', async (t) => {
  const { socket, run } = session([memoryFile('a', 0), memoryFile('b', 3), memoryFile('c', 0)], { concurrency: 1 })
  socket.open()
  t.same(socket.take().map((s) => 'message' in s && s.message.id), [1], 'one announce')
  socket.deliver(accepted(1, 4, 2))
  await settle()
  t.same(socket.take(), [], 'nothing to send for an empty file')
  socket.deliver({ type: 'done', id: 1, ref: 'ref-1' })
  t.same(socket.take().map((s) => 'message' in s && [s.message.type, s.message.id]), [['announce', 2]], 'b announced once a ended')
  socket.deliver(accepted(2, 4, 2))
  await settle()
  t.same(socket.take(), [{ frame: { id: 2, offset: 0, length: 3, first: 0 } }])
  socket.deliver({ type: 'error', id: 2, code: 'too_large', message: 'at most 2 bytes' })
  t.same(socket.take().map((s) => 'message' in s && [s.message.type, s.message.id]), [['announce', 3]], 'a failed file frees its slot too')
  socket.deliver(accepted(3, 4, 2))
  socket.deliver({ type: 'done', id: 3, ref: 'ref-3' })
  t.same(await run, {
    results: [
      { name: 'a', ok: true, ref: 'ref-1' },
      { name: 'b', ok: false, code: 'too_large', message: 'at most 2 bytes' },
      { name: 'c', ok: true, ref: 'ref-3' }
    ]
  })
})

t.test('a file cancelled after its announce: `cancel` goes out at once, its window slots go to the others, its later messages are ignored', async (t) => {
  const controller = new AbortController()
  const seen: Array<[string, Progress]> = []
  const { socket, run } = session([{ file: memoryFile('a', 20), signal: controller.signal }, memoryFile('b', 8, 50)], {
    onProgress: (file, progress) => { seen.push([file.name, progress]) }
  })
  socket.open()
  socket.take()
  socket.deliver(accepted(1, 4, 2))
  await settle()
  t.same(socket.take(), [{ frame: { id: 1, offset: 0, length: 4, first: 0 } }, { frame: { id: 1, offset: 4, length: 4, first: 4 } }], 'a fills the window')
  socket.deliver(accepted(2, 4, 2))
  await settle()
  t.same(socket.take(), [], 'b waits: the window is full')

  controller.abort()
  t.same(socket.take(), [{ message: { type: 'cancel', id: 1 } }], 'cancel is sent before anything else')
  await settle()
  t.same(socket.take(), [{ frame: { id: 2, offset: 0, length: 4, first: 50 } }, { frame: { id: 2, offset: 4, length: 4, first: 54 } }], 'a\'s two slots went to b')

  socket.deliver({ type: 'ack', id: 1, offset: 8, progress: 40 })
  socket.deliver({ type: 'error', id: 1, code: 'cancelled', message: 'cancelled by the client' })
  socket.deliver({ type: 'ack', id: 2, offset: 8, progress: 99 })
  socket.deliver({ type: 'done', id: 2, ref: 'ref-2' })
  t.same(await run, {
    results: [
      { name: 'a', ok: false, code: 'cancelled', message: 'cancelled by the client' },
      { name: 'b', ok: true, ref: 'ref-2' }
    ]
  })
  t.same(seen.filter(([name]) => name === 'a').map(([, p]) => p.status), ['uploading', 'cancelled'], 'a: no progress after its cancel')
  t.same(seen.filter(([name]) => name === 'b').map(([, p]) => [p.status, p.progress, p.bytes]), [['uploading', 0, 0], ['uploading', 99, 8], ['done', 100, 8]])
})

t.test('a frame read before its file was cancelled is not sent', async (t) => {
  const controller = new AbortController()
  const { socket, run } = session([{ file: memoryFile('a', 8), signal: controller.signal }])
  socket.open()
  socket.deliver(accepted(1, 4, 2))
  controller.abort() // the two reads are under way
  await settle()
  t.same(socket.take().slice(1), [{ message: { type: 'cancel', id: 1 } }], 'the cancel, and no frame after it')
  t.same(await run, { results: [{ name: 'a', ok: false, code: 'cancelled', message: 'cancelled by the client' }] })
})

t.test('files cancelled before their announce are never announced; all cancelled before run: no socket at all', async (t) => {
  const later = new AbortController()
  const first = session([memoryFile('a', 4), { file: memoryFile('b', 4), signal: later.signal }, { file: memoryFile('c', 4), signal: AbortSignal.abort() }], { concurrency: 1 })
  first.socket.open()
  later.abort()
  first.socket.deliver(accepted(1, 4, 1))
  first.socket.deliver({ type: 'done', id: 1, ref: 'ref-1' })
  t.same(first.socket.messages('announce').map((m) => m.name), ['a'], 'only a is announced')
  t.same(first.socket.messages('cancel'), [], 'nothing to cancel on the server')
  t.same(await first.run, {
    results: [
      { name: 'a', ok: true, ref: 'ref-1' },
      { name: 'b', ok: false, code: 'cancelled', message: 'cancelled by the client' },
      { name: 'c', ok: false, code: 'cancelled', message: 'cancelled by the client' }
    ]
  })

  const none = session([{ file: memoryFile('a', 4), signal: AbortSignal.abort() }])
  t.same(await none.run, { results: [{ name: 'a', ok: false, code: 'cancelled', message: 'cancelled by the client' }] })
  t.equal(none.opened(), 0, 'no socket opened')
})

t.test('the session\'s signal: cancels the files in flight and the finished ones (not the failed), closes, rejects with its reason', async (t) => {
  const controller = new AbortController()
  const { socket, run } = session([memoryFile('a', 4), memoryFile('b', 4), memoryFile('c', 4), memoryFile('d', 4)], { signal: controller.signal })
  socket.open()
  socket.deliver(accepted(1, 4, 4))
  socket.deliver({ type: 'done', id: 1, ref: 'ref-1' })
  socket.deliver({ type: 'error', id: 2, code: 'refused', message: 'no' })
  socket.take()
  const reason = new Error('stop')
  controller.abort(reason)
  t.same(socket.take(), [{ message: { type: 'cancel', id: 1 } }, { message: { type: 'cancel', id: 3 } }, { message: { type: 'cancel', id: 4 } }], 'a (done: discarded), c and d (in flight); b failed, nothing to cancel')
  t.equal(socket.closedWith, 1000)
  t.same(await run, { error: reason })
  socket.deliver({ type: 'done', id: 3, ref: 'ref-3' })
  socket.drop(1006)
  t.same(socket.take(), [], 'nothing more after the end')
})

t.test('onProgress throwing ends the session like an abort, with what it threw', async (t) => {
  const thrown = new Error('bar gone')
  const { socket, run } = session([memoryFile('a', 4)], { onProgress: () => { throw thrown } })
  socket.open()
  socket.deliver(accepted(1, 4, 1))
  t.same(socket.messages('cancel'), [{ type: 'cancel', id: 1 }])
  t.same(await run, { error: thrown })
  await settle()
  t.same(socket.frames(), [], 'the read under way sends nothing')
})

t.test('a socket that drops: connection_failed before it opened (with the URL), connection_closed after', async (t) => {
  const refused = session([memoryFile('a', 4)])
  refused.socket.drop(1006)
  t.same(await refused.run, { results: [{ name: 'a', ok: false, code: 'connection_failed', message: 'could not open the upload channel ws://127.0.0.1:1/upload/files/ws (1006)' }] })

  const dropped = session([memoryFile('a', 4), memoryFile('b', 4)], { concurrency: 1 })
  dropped.socket.open()
  dropped.socket.deliver(accepted(1, 4, 1))
  dropped.socket.drop(1001, 'going away')
  t.same(dropped.socket.messages('announce').length, 1, 'nothing more is announced once it closed')
  t.same(await dropped.run, {
    results: [
      { name: 'a', ok: false, code: 'connection_closed', message: 'the upload channel closed (1001: going away)' },
      { name: 'b', ok: false, code: 'connection_closed', message: 'the upload channel closed (1001: going away)' }
    ]
  })
})

t.test('what the server says to the socket as a whole, and what it should not say', async (t) => {
  const garbled = session([memoryFile('a', 4)])
  garbled.socket.open()
  garbled.socket.deliver('not json')
  t.same(await garbled.run, { results: [{ name: 'a', ok: false, code: 'protocol_error', message: 'the server sent a message that is not JSON' }] })

  const refused = session([memoryFile('a', 4), memoryFile('b', 4)])
  refused.socket.open()
  refused.socket.deliver({ type: 'ack', id: 99, offset: 4, progress: 1 }) // no such file: ignored
  refused.socket.deliver({ type: 'error', code: 'too_many_announces', message: 'slow down' })
  t.same(await refused.run, {
    results: [
      { name: 'a', ok: false, code: 'too_many_announces', message: 'slow down' },
      { name: 'b', ok: false, code: 'too_many_announces', message: 'slow down' }
    ]
  })
})

t.test('a file that cannot be read, or reads short: `cancel`, read_failed, and the others go on', async (t) => {
  const broken: FileLike = { ...memoryFile('broken', 8), slice: () => ({ arrayBuffer: async () => { throw new Error('gone') } }) }
  const short: FileLike = { ...memoryFile('short', 8), slice: () => ({ arrayBuffer: async () => new ArrayBuffer(1) }) }
  const { socket, run } = session([broken, short, memoryFile('fine', 2)])
  socket.open()
  socket.deliver(accepted(1, 4, 4))
  socket.deliver(accepted(2, 4, 4))
  socket.deliver(accepted(3, 4, 4))
  await settle()
  t.same(socket.messages('cancel'), [{ type: 'cancel', id: 1 }, { type: 'cancel', id: 2 }])
  t.same(socket.frames(), [{ id: 3, offset: 0, length: 2, first: 0 }], 'only the readable file sends')
  socket.deliver({ type: 'done', id: 3, ref: 'ref-3' })
  t.same(await run, {
    results: [
      { name: 'broken', ok: false, code: 'read_failed', message: 'could not read the file: gone' },
      { name: 'short', ok: false, code: 'read_failed', message: 'could not read the file: read 1 bytes at 0 instead of 4: the file changed' },
      { name: 'fine', ok: true, ref: 'ref-3' }
    ]
  })
})

/** A session that may open several sockets (reconnections): `sockets` in the order it opened them. */
function reconnecting (files: Array<FileLike | FileItem>, options: Partial<ChannelSessionOptions> = {}): { sockets: ScriptedSocket[], run: Promise<Settled> } {
  const sockets: ScriptedSocket[] = []
  const run = new ChannelSession(files, {
    uploadName: 'files',
    concurrency: 3,
    url: 'ws://127.0.0.1:1/upload/files/ws',
    retryDelays: [0, 0],
    openSocket: () => {
      const socket = new ScriptedSocket()
      sockets.push(socket)
      return socket
    },
    ...options
  }).run().then((results) => ({ results }), (error: unknown) => ({ error }))
  return { sockets, run }
}

t.test('a dropped socket: the session opens another, resumes the accepted files from the server\'s offset, announces the others again', async (t) => {
  // The reconnection timers run when the test says: `clock.tickAsync(0)` fires those due now.
  const clock = fakeClock(t)
  const progress: string[] = []
  const { sockets, run } = reconnecting([memoryFile('a', 12), memoryFile('b', 4, 1)], { concurrency: 2, onProgress: (file, p) => progress.push(`${file.name} ${p.bytes}`) })
  const first = sockets[0]!
  first.open()
  first.deliver(accepted(1, 4, 8))
  await settle()
  t.same(first.frames().map((f) => f.offset), [0, 4, 8], 'a is sent')
  first.deliver({ type: 'ack', id: 1, offset: 8, progress: 66 })
  first.drop(1006)
  await clock.tickAsync(0)
  t.equal(sockets.length, 2, 'a second socket')
  const second = sockets[1]!
  second.open()
  t.same(second.sent.map((s) => 'message' in s ? s.message : s), [
    { type: 'announce', id: 2, uploadName: 'files', name: 'b', size: 4, mimeType: 'application/octet-stream', lastModified: 1_700_000_000_000 },
    { type: 'resume', id: 1, ref: 'ref-1' }
  ], 'resume what was accepted, announce again what was not')
  await settle()
  t.same(second.frames(), [], 'no frame before the server says where it stands')
  second.deliver({ type: 'resumed', id: 1, ref: 'ref-1', offset: 4, chunkSize: 4, window: 8 })
  second.deliver(accepted(2, 4, 8))
  await settle()
  t.same(second.frames().map((f) => `${f.id}@${f.offset}`), ['1@4', '2@0', '1@8'], 'a from the offset the server holds, which may be less than it acknowledged')
  second.deliver({ type: 'done', id: 1, ref: 'ref-1' })
  second.deliver({ type: 'done', id: 2, ref: 'ref-2' })
  t.same(await run, { results: [{ name: 'a', ok: true, ref: 'ref-1' }, { name: 'b', ok: true, ref: 'ref-2' }] })
  t.ok(progress.includes('a 8') && progress.includes('a 4'), 'progress went on, back to the resumed offset')
})

t.test('a file the server no longer has starts again; one another client resumed fails', async (t) => {
  // The reconnection timers run when the test says: `clock.tickAsync(0)` fires those due now.
  const clock = fakeClock(t)
  const { sockets, run } = reconnecting([memoryFile('a', 4), memoryFile('b', 4)])
  sockets[0]!.open()
  sockets[0]!.deliver(accepted(1, 4, 8))
  sockets[0]!.deliver(accepted(2, 4, 8))
  await settle()
  sockets[0]!.drop(1001, 'server shutting down')
  await clock.tickAsync(0)
  const second = sockets[1]!
  second.open()
  second.take()
  second.deliver({ type: 'error', id: 1, ref: 'ref-1', code: 'unknown_entry', message: 'gone' })
  t.same(second.messages('announce').map((m) => m.id), [1], 'a is announced again')
  second.deliver({ type: 'error', id: 2, ref: 'ref-2', code: 'resumed_elsewhere', message: 'elsewhere' })
  second.deliver({ type: 'accepted', id: 1, ref: 'ref-1b', chunkSize: 4, window: 8 })
  await settle()
  t.same(second.frames().map((f) => f.offset), [0], 'from byte 0')
  second.deliver({ type: 'done', id: 1, ref: 'ref-1b' })
  t.same(await run, { results: [{ name: 'a', ok: true, ref: 'ref-1b' }, { name: 'b', ok: false, code: 'resumed_elsewhere', message: 'elsewhere' }] })
})

t.test('reconnection gives up: after its last delay, or at once on a final close code; an abort while it waits rejects', async (t) => {
  // The reconnection timers run when the test says: `clock.tickAsync(0)` fires those due now.
  const clock = fakeClock(t)
  const spent = reconnecting([memoryFile('a', 4)], { retryDelays: [0] })
  spent.sockets[0]!.open()
  spent.sockets[0]!.drop(1006)
  await clock.tickAsync(0)
  spent.sockets[1]!.drop(1006)
  t.same(await spent.run, { results: [{ name: 'a', ok: false, code: 'connection_closed', message: 'the upload channel closed (1006) after 1 attempts to reconnect' }] })
  t.equal(spent.sockets.length, 2)

  const final = reconnecting([memoryFile('a', 4)])
  final.sockets[0]!.open()
  final.sockets[0]!.drop(1008, 'window_exceeded')
  t.same(await final.run, { results: [{ name: 'a', ok: false, code: 'connection_closed', message: 'the upload channel closed (1008: window_exceeded)' }] })
  t.equal(final.sockets.length, 1, 'no second socket')

  const controller = new AbortController()
  const waiting = reconnecting([memoryFile('a', 4)], { retryDelays: [60_000], signal: controller.signal })
  waiting.sockets[0]!.open()
  waiting.sockets[0]!.deliver(accepted(1, 4, 8))
  waiting.sockets[0]!.drop(1006)
  controller.abort(new Error('stop'))
  t.match(await waiting.run, { error: { message: 'stop' } })
  t.equal(waiting.sockets[0]!.messages('cancel').length, 0, 'nothing sent on a socket that is closed')
  // The reconnection timer was cleared; a socket of its own cancels the entry on the server.
  t.equal(waiting.sockets.length, 2)
  const cancelling = waiting.sockets[1]!
  cancelling.open()
  t.same(cancelling.sent.map((s) => 'message' in s ? s.message : s), [{ type: 'resume', id: 1, ref: 'ref-1' }, { type: 'cancel', id: 1 }], 'resumed, then cancelled')
  cancelling.deliver({ type: 'resumed', id: 1, ref: 'ref-1', offset: 0, chunkSize: 4, window: 8 })
  t.equal(cancelling.closedWith, undefined, 'open until the cancel is answered')
  cancelling.deliver({ type: 'error', id: 1, code: 'cancelled', message: 'cancelled' })
  t.equal(cancelling.closedWith, 1000, 'then closed')

  // Garbage on that socket, or no answer: it closes all the same (after CANCEL_PATIENCE_MS).
  const garbled = reconnecting([memoryFile('a', 4)], { retryDelays: [60_000], signal: AbortSignal.abort(new Error('at once')) })
  t.match(await garbled.run, { error: { message: 'at once' } }, 'aborted before it ran: it rejects at once, no socket')
  t.equal(garbled.sockets.length, 0)
  const other = new AbortController()
  const noisy = reconnecting([memoryFile('a', 4)], { retryDelays: [60_000], signal: other.signal })
  noisy.sockets[0]!.open()
  noisy.sockets[0]!.deliver(accepted(1, 4, 8))
  noisy.sockets[0]!.drop(1006)
  other.abort(new Error('stop'))
  await noisy.run
  noisy.sockets[1]!.open()
  noisy.sockets[1]!.deliver('not json')
  t.equal(noisy.sockets[1]!.closedWith, 1000, 'a message it cannot read closes it')
})

t.test('resume answers: try_again is tried again after the next delay (then the file fails); chunk_timeout resumes at once', async (t) => {
  // The reconnection timers run when the test says: `clock.tickAsync(0)` fires those due now.
  const clock = fakeClock(t)
  const { sockets, run } = reconnecting([memoryFile('a', 8), memoryFile('b', 8)], { retryDelays: [0] })
  const first = sockets[0]!
  first.open()
  first.deliver(accepted(1, 4, 8))
  first.deliver(accepted(2, 4, 8))
  await settle()
  first.drop(1006)
  await clock.tickAsync(0)
  const second = sockets[1]!
  second.open()
  second.take()
  second.deliver({ type: 'error', id: 1, ref: 'ref-1', code: 'try_again', message: 'full' })
  await clock.tickAsync(0)
  t.same(second.messages('resume'), [{ type: 'resume', id: 1, ref: 'ref-1' }], 'asked again after the delay')
  second.deliver({ type: 'error', id: 1, ref: 'ref-1', code: 'try_again', message: 'still full' })
  second.deliver({ type: 'resumed', id: 2, ref: 'ref-2', offset: 4, chunkSize: 4, window: 8 })
  await settle()
  t.same(second.frames().map((f) => `${f.id}@${f.offset}`), ['2@4'])
  second.take()
  // Silent too long (the machine slept): the server saved b and let go; the client resumes it.
  second.deliver({ type: 'error', id: 2, ref: 'ref-2', code: 'chunk_timeout', message: 'saved' })
  t.same(second.messages('resume'), [{ type: 'resume', id: 2, ref: 'ref-2' }])
  second.deliver({ type: 'resumed', id: 2, ref: 'ref-2', offset: 8, chunkSize: 4, window: 8 })
  second.deliver({ type: 'done', id: 2, ref: 'ref-2' })
  t.same(await run, { results: [{ name: 'a', ok: false, code: 'try_again', message: 'still full' }, { name: 'b', ok: true, ref: 'ref-2' }] })
})

t.test('a read begun on a socket that dropped is not sent on the next one; events of the old socket are not heard', async (t) => {
  // The reconnection timers run when the test says: `clock.tickAsync(0)` fires those due now.
  const clock = fakeClock(t)
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const slow: FileLike = {
    name: 'slow',
    size: 4,
    type: '',
    slice: (start, end) => ({ arrayBuffer: async () => { await gate; return new Uint8Array(end - start).buffer } })
  }
  const broken: FileLike = { ...slow, name: 'broken', slice: () => ({ arrayBuffer: async () => { await gate; throw new Error('unreadable') } }) }
  const { sockets, run } = reconnecting([slow, broken])
  const first = sockets[0]!
  first.open()
  first.deliver(accepted(1, 4, 8))
  first.deliver(accepted(2, 4, 8))
  first.drop(1006)
  await clock.tickAsync(0)
  const second = sockets[1]!
  second.open()
  release()
  await settle()
  t.same(second.frames(), [], 'the read was for the old socket')
  t.same(second.messages('cancel'), [], 'and so was the failed one: nothing is cancelled for it')
  first.deliver({ type: 'done', id: 1, ref: 'ref-1' })
  t.same(second.messages('resume'), [{ type: 'resume', id: 1, ref: 'ref-1' }, { type: 'resume', id: 2, ref: 'ref-2' }])
  second.deliver({ type: 'resumed', id: 1, ref: 'ref-1', offset: 0, chunkSize: 4, window: 8 })
  await settle()
  t.same(second.frames().map((f) => f.offset), [0], 'read again and sent on the new socket')
  second.deliver({ type: 'done', id: 1, ref: 'ref-1' })
  second.deliver({ type: 'done', id: 2, ref: 'ref-2' })
  t.same(await run, { results: [{ name: 'slow', ok: true, ref: 'ref-1' }, { name: 'broken', ok: true, ref: 'ref-2' }] })
})

t.test('try_again without retryDelays fails the file at once; an abort while a resume waits to be tried again clears its timer; a cancel answered unknown_entry closes the cancelling socket too', async (t) => {
  // A session made without retryDelays (no reconnection): try_again is final.
  const plain = session([memoryFile('a', 4)])
  plain.socket.open()
  plain.socket.deliver(accepted(1, 4, 8))
  await settle()
  plain.socket.deliver({ type: 'error', id: 1, ref: 'ref-1', code: 'chunk_timeout', message: 'saved' })
  plain.socket.deliver({ type: 'error', id: 1, ref: 'ref-1', code: 'try_again', message: 'full' })
  t.same(await plain.run, { results: [{ name: 'a', ok: false, code: 'try_again', message: 'full' }] })

  const controller = new AbortController()
  const waiting = reconnecting([memoryFile('a', 4), memoryFile('b', 4)], { retryDelays: [60_000], signal: controller.signal })
  const socket = waiting.sockets[0]!
  socket.open()
  socket.deliver(accepted(1, 4, 8))
  socket.deliver(accepted(2, 4, 8))
  await settle()
  socket.deliver({ type: 'error', id: 1, ref: 'ref-1', code: 'chunk_timeout', message: 'saved' })
  socket.deliver({ type: 'error', id: 1, ref: 'ref-1', code: 'try_again', message: 'full' })
  socket.drop(1006)
  controller.abort(new Error('stop'))
  t.match(await waiting.run, { error: { message: 'stop' } })
  const cancelling = waiting.sockets[1]!
  cancelling.open()
  t.same(cancelling.messages('cancel').map((m) => m.id), [1, 2])
  cancelling.deliver({ type: 'error', id: 1, ref: 'ref-1', code: 'unknown_entry', message: 'ended' })
  t.equal(cancelling.closedWith, undefined, 'one answer still due')
  cancelling.deliver({ type: 'error', id: 2, code: 'cancelled', message: 'cancelled' })
  t.equal(cancelling.closedWith, 1000)
  t.equal(waiting.sockets.length, 2, 'the resume waiting to be tried again was not: its timer was cleared')
})

t.test('the socket that cancels while the session reconnects closes after CANCEL_PATIENCE_MS without answers, and ignores its own drop', async (t) => {
  const clock = fakeClock(t)
  const controller = new AbortController()
  const waiting = reconnecting([memoryFile('a', 4)], { retryDelays: [60_000], signal: controller.signal })
  waiting.sockets[0]!.open()
  waiting.sockets[0]!.deliver(accepted(1, 4, 8))
  waiting.sockets[0]!.drop(1006)
  controller.abort(new Error('stop'))
  await waiting.run
  const silent = waiting.sockets[1]!
  silent.open()
  await clock.tickAsync(9_999)
  t.equal(silent.closedWith, undefined, 'still waiting for the answer')
  await clock.tickAsync(1)
  t.equal(silent.closedWith, 1000, 'closed once its patience ran out')
  silent.drop(1006)
  t.equal(waiting.sockets.length, 2, 'its close opens nothing')
})
