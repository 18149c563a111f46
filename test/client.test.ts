// The client library (client/index.ts) against the real plugin on 127.0.0.1: over the
// WebSocket channel (the `ws` package injected, observed by a recording subclass) and
// over HTTP (fetch with a streamed body, as in Node).
import { createServer } from 'node:http'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import t from 'tap'
import { WebSocket as WsWebSocket, WebSocketServer } from 'ws'
import { channelUrls, SUBPROTOCOL, upload, type FileLike, type Progress, type UploadOptions, type WebSocketConstructor } from '../client/index.js'
import { bytes, sha256, until } from './kit/index.js'
import {
  discardingRecorder, file, fileWith, frames, messages, mostAnnounced, mostUnacked, recordingWebSocket, Recorder
} from './kit/client-kit.js'
import { startChannelApp } from './kit/channel.js'

interface Consumed { note: string | null, files: Array<{ name: string, type: string, bytes: number, sha256: string }>, errors: Array<{ clientName: string, code: string }> }

/** POST /upload/files: every file to the recorder's writers; the handler reports what it consumed. */
function filesRoute (factory: Recorder['factory'] | (() => unknown), config: Record<string, unknown> = {}): (app: FastifyInstance) => void {
  return (app) => {
    app.post('/upload/files', {
      allowUpload: { files: { accept: 'any', maxEntries: 10, chunkSize: 1000, writer: factory as Recorder['factory'], ...config } }
    }, async (request: FastifyRequest): Promise<Consumed> => {
      const files = await request.uploads.consume('files', (meta: { bytes: number, sha256: string }, entry) => ({
        name: entry.clientName, type: entry.clientType, bytes: meta.bytes, sha256: meta.sha256
      }))
      const body = request.body as { note?: string } | undefined
      return { note: body?.note ?? null, files, errors: request.uploads.errors().map((e) => ({ clientName: e.clientName!, code: e.code })) }
    })
  }
}

/** Every onProgress call, by file name. */
function progressLog (): { onProgress: NonNullable<UploadOptions['onProgress']>, of: (name: string) => Progress[] } {
  const seen: Array<[string, Progress]> = []
  return {
    onProgress: (file, progress) => { seen.push([file.name, progress]) },
    of: (name) => seen.filter(([n]) => n === name).map(([, p]) => p)
  }
}

const digest = (f: File): Promise<string> => f.arrayBuffer().then((data) => sha256(Buffer.from(data)))

t.test('websocket: files arrive whole, with refs, progress from the acks, at most `concurrency` at once and `window` frames in flight', async (t) => {
  const recorder = new Recorder({ chunkDelay: 3 })
  const { url } = await startChannelApp(t, filesRoute(recorder.factory), { channelWindow: 3 })
  const { WebSocket, wires } = recordingWebSocket()
  const files = [file('a.bin', 5500), file('empty.txt', 0, 'text/plain'), file('b.png', 3000, 'image/png'), file('c.bin', 12_345)]
  const progress = progressLog()

  const result = await upload(`${url}/upload/files`, files, {
    uploadName: 'files', WebSocket, concurrency: 2, submit: true, fields: { note: 'four files' }, onProgress: progress.onProgress
  })

  t.equal(result.files.length, 4)
  t.same(result.files.map((r) => [r.name, r.ok]), files.map((f) => [f.name, true]), 'one result per file, in order')
  const refs = result.files.map((r) => r.ok ? r.ref : undefined)
  t.ok(refs.every((ref) => typeof ref === 'string' && ref.length >= 16), 'each file has its ref')
  t.equal(result.status, 200)
  t.same(result.response, {
    note: 'four files',
    files: await Promise.all(files.map(async (f) => ({ name: f.name, type: f.type, bytes: f.size, sha256: await digest(f) }))),
    errors: []
  }, 'the handler consumed every byte of every file')
  recorder.check(t)
  t.same(recorder.reasons(), ['done', 'done', 'done', 'done'])

  t.equal(wires.length, 1, 'one socket')
  const [wire] = wires
  t.equal(wire!.url, 'ws://127.0.0.1:' + new URL(url).port + '/upload/files/ws')
  t.same(wire!.protocols, [SUBPROTOCOL])
  t.equal(wire!.options, undefined, 'no options without headers')
  const announces = messages(wire!, 'out', 'announce')
  t.same(announces, files.map((f, i) => ({
    type: 'announce', id: i + 1, uploadName: 'files', name: f.name, size: f.size, mimeType: f.type, lastModified: 1_700_000_000_000
  })))
  t.equal(mostAnnounced(wire!), 2, 'two files at once')
  t.equal(mostUnacked(wire!), 3, 'the window (from accepted) filled, never exceeded')
  for (const [i, f] of files.entries()) {
    const sent = frames(wire!, i + 1)
    t.ok(sent.every((frame) => frame.length <= 1000 && frame.length > 0), `${f.name}: chunks of at most chunkSize`)
    let offset = 0
    for (const frame of sent) {
      t.equal(frame.offset, offset, `${f.name}: frame at ${offset}`)
      offset += frame.length
    }
    t.equal(offset, f.size, `${f.name}: every byte sent once`)
  }
  t.match(wire!.events.at(-1), { dir: 'close', code: 1000 }, 'the client closed the socket when done')

  // Progress: one event at accepted, one per ack (the server's figures), then done.
  for (const [i, f] of files.entries()) {
    const acks = messages(wire!, 'in', 'ack').filter((ack) => ack.id === i + 1)
    t.same(progress.of(f.name), [
      { progress: 0, bytes: 0, status: 'uploading' },
      ...acks.map((ack) => ({ progress: ack.progress, bytes: ack.offset, status: 'uploading' })),
      { progress: 100, bytes: f.size, status: 'done' }
    ], `${f.name}: progress follows the acks`)
  }
  t.ok(progress.of('c.bin').slice(1, -1).every((p) => p.progress < 100), 'never 100 before done')
})

t.test('websocket: without submit, the refs are submitted later, once, as JSON', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const { WebSocket } = recordingWebSocket()
  const files = [file('one.txt', 10, 'text/plain'), file('two.txt', 2500, 'text/plain')]
  const result = await upload(`${url}/upload/files`, files, { uploadName: 'files', WebSocket })
  t.same(Object.keys(result), ['files'], 'no response without submit')
  const refs = result.files.map((r) => r.ok ? r.ref : '')
  const submit = (): Promise<Response> => fetch(`${url}/upload/files`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ files: refs }) })
  const first = await submit()
  t.equal(first.status, 200)
  t.same((await first.json() as Consumed).files.map((f) => [f.name, f.bytes]), [['one.txt', 10], ['two.txt', 2500]])
  const again = await submit()
  t.equal(again.status, 400)
  t.match(await again.json(), { code: 'FST_CHUNKED_UPLOAD_UNKNOWN_REF' })
})

t.test('websocket: refused files carry the server\'s code and message; the others go on', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory, { accept: ['.txt'], maxFileSize: 100 }))
  const { WebSocket, wires } = recordingWebSocket()
  const progress = progressLog()
  const result = await upload(`${url}/upload/files`, [file('ok.txt', 50), file('photo.png', 10, 'image/png'), file('big.txt', 101), file('fine.txt', 100)], {
    uploadName: 'files', WebSocket, submit: true, onProgress: progress.onProgress
  })
  t.match(result.files, [
    { name: 'ok.txt', ok: true, ref: String },
    { name: 'photo.png', ok: false, code: 'not_accepted', message: /photo\.png/ },
    { name: 'big.txt', ok: false, code: 'too_large', message: /big\.txt/ },
    { name: 'fine.txt', ok: true, ref: String }
  ])
  t.same(progress.of('photo.png'), [{ progress: 0, bytes: 0, status: 'failed' }])
  t.same((result.response as Consumed).files.map((f) => f.name), ['ok.txt', 'fine.txt'], 'only the refs of done files are submitted')
  t.equal(recorder.records.length, 2, 'no writer for a refused file')
  t.equal(frames(wires[0]!).filter((f) => f.id === 2 || f.id === 3).length, 0, 'no chunk of a refused file was sent')

  const unknown = await upload(`${url}/upload/files`, [file('a.txt', 5), file('b.txt', 5)], { uploadName: 'nope', WebSocket })
  t.match(unknown.files, [{ ok: false, code: 'unknown_upload', message: /files/ }, { ok: false, code: 'unknown_upload' }])
})

t.test('websocket: a file\'s own signal cancels that file only, on the server too', async (t) => {
  const recorder = new Recorder({ chunkDelay: 5 })
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const { WebSocket, wires } = recordingWebSocket()
  const b = new AbortController()
  const progress = progressLog()
  const result = await upload(`${url}/upload/files`, [file('a.bin', 3000), { file: file('b.bin', 50_000), signal: b.signal }, file('c.bin', 3000)], {
    uploadName: 'files',
    WebSocket,
    onProgress: (f, p) => {
      progress.onProgress(f, p)
      if (f.name === 'b.bin' && p.bytes >= 2000) b.abort()
    }
  })
  t.match(result.files, [
    { name: 'a.bin', ok: true },
    { name: 'b.bin', ok: false, code: 'cancelled', message: 'cancelled by the client' },
    { name: 'c.bin', ok: true }
  ])
  const bEvents = progress.of('b.bin')
  const before = bEvents.at(-2)!
  t.same(bEvents.at(-1), { progress: before.progress, bytes: before.bytes, status: 'cancelled' }, 'the last event says cancelled, and none follows')
  t.ok(before.bytes >= 2000 && before.bytes < 50_000, 'cancelled midway, after the ack that triggered it')
  t.same(messages(wires[0]!, 'out', 'cancel'), [{ type: 'cancel', id: 2 }])
  t.ok(frames(wires[0]!, 2).length < 50, 'b.bin was not sent whole')
  await recorder.until('b.bin\'s writer to close', () => recorder.records.length === 3 && recorder.records.every((r) => r.closes.length === 1))
  t.same(recorder.reasons().sort(), ['cancel', 'done', 'done'], 'the server closed b.bin\'s writer with cancel')
  recorder.check(t)
})

t.test('websocket: files cancelled before they start are never announced', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const { WebSocket, wires } = recordingWebSocket()
  const early = new AbortController()
  early.abort()
  const queued = new AbortController()
  const result = await upload(`${url}/upload/files`, [
    file('a.bin', 5000), { file: file('b.bin', 10), signal: early.signal }, { file: file('c.bin', 10), signal: queued.signal }, file('d.bin', 10)
  ], {
    uploadName: 'files',
    WebSocket,
    concurrency: 1,
    onProgress: (f, p) => { if (f.name === 'a.bin' && p.bytes > 0) queued.abort() }
  })
  t.match(result.files, [{ ok: true }, { ok: false, code: 'cancelled' }, { ok: false, code: 'cancelled' }, { ok: true }])
  t.same(messages(wires[0]!, 'out', 'announce').map((m) => m.name), ['a.bin', 'd.bin'])
  t.same(messages(wires[0]!, 'out', 'cancel'), [], 'nothing to cancel on the server')

  const none = await upload(`${url}/upload/files`, [{ file: file('x.bin', 10), signal: early.signal }], { uploadName: 'files', WebSocket })
  t.match(none.files, [{ name: 'x.bin', ok: false, code: 'cancelled' }])
  t.equal(wires.length, 1, 'no socket for nothing to send')
  t.same(await upload(`${url}/upload/files`, [], { uploadName: 'files', WebSocket }), { files: [] })
})

t.test('websocket: the upload\'s signal cancels what is in flight, discards what is done, closes, and rejects', async (t) => {
  const recorder = new Recorder({ chunkDelay: 5 })
  const { factory, discarded } = discardingRecorder(recorder)
  const { url } = await startChannelApp(t, filesRoute(factory))
  const { WebSocket, wires } = recordingWebSocket()
  const controller = new AbortController()
  const reason = new Error('stop it')
  const done = new Set<string>()
  const progress: Progress[] = []
  await t.rejects(upload(`${url}/upload/files`, [file('small.txt', 10), file('large.bin', 100_000), file('later.bin', 100_000), file('never.bin', 10)], {
    uploadName: 'files',
    WebSocket,
    concurrency: 2,
    signal: controller.signal,
    onProgress: (f, p) => {
      if (p.status === 'done') done.add(f.name)
      if (f.name === 'large.bin') progress.push(p)
      if (f.name === 'large.bin' && p.bytes >= 3000 && done.has('small.txt')) controller.abort(reason)
    }
  }), reason)
  const wire = wires[0]!
  t.same(messages(wire, 'out', 'announce').map((m) => m.name), ['small.txt', 'large.bin', 'later.bin'], 'the fourth never started')
  t.same(messages(wire, 'out', 'cancel'), [{ type: 'cancel', id: 1 }, { type: 'cancel', id: 2 }, { type: 'cancel', id: 3 }], 'a cancel for each started file')
  t.equal(progress.at(-1)!.status, 'uploading', 'no event after the abort')
  await until('the socket to close', () => wire.events.at(-1)?.dir === 'close')
  t.match(wire.events.at(-1), { dir: 'close', code: 1000 })
  await recorder.until('the writers to close', () => recorder.records.length === 3 && recorder.records.every((r) => r.closes.length === 1))
  t.same(recorder.reasons(), ['done', 'cancel', 'cancel'])
  await until('the done file to be discarded', () => discarded.length === 1)
  t.same(discarded, [recorder.records[0]!.id], 'the finished file is discarded')

  const aborted = AbortSignal.abort(reason)
  await t.rejects(upload(`${url}/upload/files`, [file('a.bin', 10)], { uploadName: 'files', WebSocket, signal: aborted }), reason)
  t.equal(wires.length, 1, 'an aborted signal opens no socket')
})

t.test('websocket: a throwing onProgress stops the upload and rejects with its error', async (t) => {
  const recorder = new Recorder({ chunkDelay: 5 })
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const { WebSocket, wires } = recordingWebSocket()
  const oops = new Error('progress bar broke')
  await t.rejects(upload(`${url}/upload/files`, [file('a.bin', 20_000)], {
    uploadName: 'files', WebSocket, onProgress: (_f, p) => { if (p.bytes > 0) throw oops }
  }), oops)
  t.same(messages(wires[0]!, 'out', 'cancel'), [{ type: 'cancel', id: 1 }])
  await recorder.until('the writer to close', () => recorder.records[0]?.closes.length === 1)
  t.same(recorder.reasons(), ['cancel'])

  // A throw on 'done' rejects too (the file is done, so the server discards it).
  await t.rejects(upload(`${url}/upload/files`, [file('b.bin', 10), file('c.bin', 10)], {
    uploadName: 'files', WebSocket, concurrency: 1, onProgress: (_f, p) => { if (p.status === 'done') throw oops }
  }), oops)
  t.same(messages(wires[1]!, 'out', 'announce').map((m) => m.name), ['b.bin'])
  t.same(messages(wires[1]!, 'out', 'cancel'), [{ type: 'cancel', id: 1 }])

  // onProgress that aborts the upload and then throws: the abort's reason wins.
  const controller = new AbortController()
  await t.rejects(upload(`${url}/upload/files`, [file('d.bin', 10)], {
    uploadName: 'files', WebSocket, signal: controller.signal, onProgress: () => { controller.abort(new Error('first')); throw oops }
  }), { message: 'first' })
})

t.test('websocket: server shutdown ends the files in flight and those waiting (no reconnection asked)', async (t) => {
  const recorder = new Recorder({ chunkDelay: 5 })
  const { app, url } = await startChannelApp(t, filesRoute(recorder.factory))
  const { WebSocket, wires } = recordingWebSocket()
  let closing: Promise<void> | undefined
  const result = await upload(`${url}/upload/files`, [file('a.bin', 50_000), file('b.bin', 10)], {
    uploadName: 'files', WebSocket, concurrency: 1, retryDelays: [], onProgress: (_f, p) => { if (p.bytes >= 2000) closing ??= app.close() }
  })
  await closing
  t.match(result.files, [
    { name: 'a.bin', ok: false, code: String, message: /shutting down/i },
    { name: 'b.bin', ok: false, code: 'connection_closed', message: 'the upload channel closed (1001: server shutting down)' }
  ])
  t.match(wires[0]!.events.at(-1), { dir: 'close', code: 1001 })
  t.same(recorder.reasons(), ['cancel'], 'b.bin never got a writer')
  t.equal((result.files[0] as { code: string }).code, 'shutting_down', 'PROTOCOL.md\'s code for it')
})

t.test('websocket: the server closing the socket with a final code ends every unfinished file with connection_closed', async (t) => {
  const recorder = new Recorder({ chunkDelay: 5 })
  const { app, url } = await startChannelApp(t, filesRoute(recorder.factory))
  const { WebSocket } = recordingWebSocket()
  // Catch the channel sockets as they connect.
  const sockets = new Set<import('ws').WebSocket>()
  app.websocketServer.on('connection', (socket: import('ws').WebSocket) => sockets.add(socket))
  const kick = (): void => { for (const socket of sockets) socket.close(4000, 'kicked out') }
  const result = await upload(`${url}/upload/files`, [file('a.bin', 2000), file('b.bin', 50_000), file('c.bin', 10)], {
    uploadName: 'files', WebSocket, concurrency: 1, onProgress: (f, p) => { if (f.name === 'b.bin' && p.bytes >= 2000) kick() }
  })
  t.match(result.files, [
    { name: 'a.bin', ok: true },
    { name: 'b.bin', ok: false, code: 'connection_closed', message: 'the upload channel closed (4000: kicked out)' },
    { name: 'c.bin', ok: false, code: 'connection_closed' }
  ])
  // The entry b.bin had on the server outlives the socket, for a client that resumes it; shutdown cancels it (its writer cannot checkpoint).
  t.same(recorder.records.map((r) => r.closes.length), [1, 0], 'b.bin is kept, its writer open')

  // A throw from onProgress while the files fail stops there, and rejects.
  const oops = new Error('no')
  const seen: string[] = []
  await t.rejects(upload(`${url}/upload/files`, [file('d.bin', 50_000), file('e.bin', 50_000)], {
    uploadName: 'files',
    WebSocket,
    // One at a time: e.bin is never announced, so nothing is left to cancel once d.bin failed.
    concurrency: 1,
    onProgress: (f, p) => {
      seen.push(`${f.name} ${p.status}`)
      if (p.status === 'failed') throw oops
      if (p.bytes >= 2000) kick()
    }
  }), oops)
  t.equal(seen.filter((line) => line.endsWith('failed')).length, 1, 'no event after the throw')
  await app.close()
  t.same(recorder.reasons(), ['done', 'cancel', 'cancel'], 'the kept entries (b.bin, d.bin) end with the server, cancelled')
})

t.test('websocket: a route without a channel, or no server, fails every file with connection_failed', async (t) => {
  const { url } = await startChannelApp(t, (app) => { app.get('/upload/files', async () => 'no channel here') })
  const { WebSocket } = recordingWebSocket()
  const result = await upload(`${url}/upload/files`, [file('a.bin', 10), file('b.bin', 10)], { uploadName: 'files', WebSocket })
  t.match(result.files, [
    { name: 'a.bin', ok: false, code: 'connection_failed', message: /could not open the upload channel ws:\/\/127\.0\.0\.1:\d+\/upload\/files\/ws \(1006\)/ },
    { name: 'b.bin', ok: false, code: 'connection_failed' }
  ])
})

t.test('websocket: headers reach the upgrade request (for ws), so route hooks can authenticate', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, (app) => {
    app.addHook('onRequest', async (request, reply) => {
      if (request.headers.authorization !== 'Bearer secret') await reply.code(401).send({ error: 'who are you' })
    })
    filesRoute(recorder.factory)(app)
  })
  const { WebSocket, wires } = recordingWebSocket()
  const denied = await upload(`${url}/upload/files`, [file('a.txt', 10)], { uploadName: 'files', WebSocket })
  t.match(denied.files, [{ ok: false, code: 'connection_failed' }])
  const allowed = await upload(`${url}/upload/files`, [file('a.txt', 10)], {
    uploadName: 'files', WebSocket, submit: true, headers: { authorization: 'Bearer secret' }
  })
  t.match(allowed.files, [{ ok: true }])
  t.same(wires[1]!.options, { headers: { authorization: 'Bearer secret' } })
  t.equal(allowed.status, 200, 'the submit request carried the header too')
  t.same((allowed.response as Consumed).files.map((f) => f.name), ['a.txt'])
})

t.test('websocket: a file that cannot be read fails alone, and its entry is cancelled', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const { WebSocket, wires } = recordingWebSocket()
  const broken = fileWith(file('broken.bin', 5000), (start, _end, data) => {
    if (start >= 2000) throw new Error('NotReadableError: the file moved')
    return data
  })
  const shrunk = fileWith(file('shrunk.bin', 5000), (start, _end, data) => start >= 3000 ? data.slice(0, 10) : data)
  const result = await upload(`${url}/upload/files`, [broken, shrunk, file('fine.bin', 5000)], { uploadName: 'files', WebSocket })
  t.match(result.files, [
    { name: 'broken.bin', ok: false, code: 'read_failed', message: 'could not read the file: NotReadableError: the file moved' },
    { name: 'shrunk.bin', ok: false, code: 'read_failed', message: /read 10 bytes at 3000 instead of 1000: the file changed/ },
    { name: 'fine.bin', ok: true }
  ])
  t.same(messages(wires[0]!, 'out', 'cancel'), [{ type: 'cancel', id: 1 }, { type: 'cancel', id: 2 }])
  await recorder.until('the writers to close', () => recorder.records.length === 3 && recorder.records.every((r) => r.closes.length === 1))
  t.same(recorder.reasons(), ['cancel', 'cancel', 'done'])
})

t.test('websocket: a file cancelled or aborted while a chunk is being read sends nothing more', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const { WebSocket, wires } = recordingWebSocket()
  const own = new AbortController()
  const cancelledWhileReading = fileWith(file('a.bin', 3000), (start, _end, data) => {
    if (start === 1000) own.abort()
    return data
  })
  const failsAfterCancel = new AbortController()
  const failing = fileWith(file('b.bin', 3000), (start) => {
    if (start === 1000) {
      failsAfterCancel.abort()
      throw new Error('read failed after the cancel')
    }
    return new ArrayBuffer(1000)
  })
  const result = await upload(`${url}/upload/files`, [{ file: cancelledWhileReading, signal: own.signal }, { file: failing, signal: failsAfterCancel.signal }], { uploadName: 'files', WebSocket })
  t.match(result.files, [{ ok: false, code: 'cancelled' }, { ok: false, code: 'cancelled' }])
  t.same(frames(wires[0]!).map((f) => [f.id, f.offset]).sort(), [[1, 0], [2, 0]], 'no frame after the cancel')

  const everything = new AbortController()
  const abortsAll = fileWith(file('c.bin', 3000), (start, _end, data) => {
    if (start === 1000) everything.abort()
    return data
  })
  await t.rejects(upload(`${url}/upload/files`, [abortsAll], { uploadName: 'files', WebSocket, signal: everything.signal }), { name: 'AbortError' })
  t.same(frames(wires[1]!).map((f) => f.offset), [0])
})

t.test('websocket: a file that stalls past chunkTimeout is let go by the server, saved, and resumed by the client: it finishes, the others too', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory, { chunkTimeout: 150 }))
  const { WebSocket, wires } = recordingWebSocket()
  // The file's second read stalls until the server gave up waiting for it.
  let release!: () => void
  const stalled = new Promise<void>((resolve) => { release = resolve })
  const stalling = fileWith(file('slow.bin', 3000), async (start, _end, data) => {
    if (start === 1000) await stalled
    return data
  })
  const uploading = upload(`${url}/upload/files`, [stalling, file('quick.bin', 3000)], { uploadName: 'files', WebSocket })
  await until('slow.bin\'s chunk_timeout to reach the client', () => wires[0] !== undefined && messages(wires[0], 'in', 'error').length > 0)
  t.match(messages(wires[0]!, 'in', 'error'), [{ id: 1, code: 'chunk_timeout' }])
  release()
  const result = await uploading
  t.match(result.files, [{ name: 'slow.bin', ok: true }, { name: 'quick.bin', ok: true }])
  t.same(recorder.reasons(), ['done', 'done'], 'one writer each, closed once')
  t.match(messages(wires[0]!, 'out', 'resume'), [{ id: 1 }], 'the client resumed it')
  t.same(frames(wires[0]!, 1).map((f) => f.offset), [0, 1000, 2000], 'each chunk once: the read begun before the timeout was sent after the resume only')
})

t.test('websocket: an announce the server cannot read fails that file only (the server names its id)', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const { WebSocket } = recordingWebSocket()
  const result = await upload(`${url}/upload/files`, [file('x'.repeat(5000), 10), file('b.bin', 10)], { uploadName: 'files', WebSocket, concurrency: 1 })
  t.match(result.files, [{ ok: false, code: 'bad_message', message: /malformed/ }, { name: 'b.bin', ok: true }])
})

t.test('websocket: a server that breaks the protocol, or cannot read a message (stand-ins: the plugin does neither to this client) fails the files', async (t) => {
  // The only server here that is not the plugin: one that answers an announce with a
  // binary message, which no version of the protocol sends, or with an error naming no
  // file (PROTOCOL.md: a message the server could not read), which fails them all.
  const server = createServer()
  const wss = new WebSocketServer({ server, handleProtocols: () => SUBPROTOCOL })
  wss.on('connection', (socket, request) => socket.on('message', () => {
    if (request.url === '/unreadable') socket.send(JSON.stringify({ type: 'error', code: 'bad_message', message: 'could not read it' }))
    else socket.send(Buffer.from('not json'))
  }))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const client of wss.clients) client.terminate()
    wss.close()
    server.close()
  })
  const { WebSocket } = recordingWebSocket()
  const port = (server.address() as { port: number }).port
  const result = await upload(`ws://127.0.0.1:${port}/anything`, [file('a.bin', 10)], { uploadName: 'files', WebSocket })
  t.match(result.files, [{ ok: false, code: 'protocol_error', message: 'the server sent a message that is not JSON' }])
  const unreadable = await upload(`ws://127.0.0.1:${port}/unreadable`, [file('a.bin', 10), file('b.bin', 10)], { uploadName: 'files', WebSocket, concurrency: 1 })
  t.match(unreadable.files, [{ ok: false, code: 'bad_message', message: 'could not read it' }, { ok: false, code: 'bad_message' }])
})

t.test('http: one multipart request, progress from the bytes sent, the handler\'s answer as response', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const files = [file('a "quoted"\r\nname.txt', 300_000, 'text/plain'), file('empty.bin', 0), file('c.png', 70_000, 'image/png')]
  const progress = progressLog()
  const result = await upload(`${url}/upload/files`, files, { uploadName: 'files', transport: 'http', fields: { note: 'by http' }, onProgress: progress.onProgress })
  t.same(result.files, files.map((f) => ({ name: f.name, ok: true })), 'ok: the request succeeded; no refs over HTTP')
  t.equal(result.status, 200)
  t.same(result.response, {
    note: 'by http',
    files: await Promise.all(files.map(async (f) => ({
      name: f.name.replace(/"/g, '%22').replace(/\r/g, '%0D').replace(/\n/g, '%0A'),
      type: f.type === '' ? 'application/octet-stream' : f.type,
      bytes: f.size,
      sha256: await digest(f)
    }))),
    errors: []
  })
  for (const f of files) {
    const events = progress.of(f.name)
    t.same(events[0], { progress: 0, bytes: 0, status: 'uploading' }, `${f.name}: starts at 0`)
    t.same(events.at(-1), { progress: 100, bytes: f.size, status: 'done' }, `${f.name}: ends done`)
    const middle = events.slice(1, -1)
    t.ok(middle.every((p, i) => p.status === 'uploading' && p.progress <= 99 && (i === 0 || p.bytes > middle[i - 1]!.bytes)), `${f.name}: bytes grow, progress stays below 100`)
  }
  t.ok(progress.of(files[0]!.name).length > 3, 'several progress events for a large file')
})

t.test('http: a refused request fails every file with the error\'s code; a bare status without', async (t) => {
  const { url } = await startChannelApp(t, (app) => {
    filesRoute(new Recorder().factory, { maxFileSize: 100 })(app)
    app.post('/teapot', { allowUpload: { files: { accept: 'any' } } }, async (_request, reply) => reply.code(418).type('text/plain').send('short and stout'))
  })
  const progress = progressLog()
  const refused = await upload(`${url}/upload/files`, [file('a.txt', 10), file('b.txt', 1000)], { uploadName: 'files', transport: 'http', onProgress: progress.onProgress })
  t.equal(refused.status, 413)
  t.match(refused.response, { code: 'FST_CHUNKED_UPLOAD_TOO_LARGE' })
  t.match(refused.files, [
    { name: 'a.txt', ok: false, code: 'FST_CHUNKED_UPLOAD_TOO_LARGE', message: /b\.txt/ },
    { name: 'b.txt', ok: false, code: 'FST_CHUNKED_UPLOAD_TOO_LARGE' }
  ])
  t.equal(progress.of('b.txt').at(-1)!.status, 'failed')

  const teapot = await upload(`${url}/teapot`, [file('a.txt', 10)], { uploadName: 'files', transport: 'http' })
  t.same(teapot, { files: [{ name: 'a.txt', ok: false, code: 'http_418', message: 'short and stout' }], status: 418, response: 'short and stout' })
})

t.test('http: no server fails every file with connection_failed', async (t) => {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  await new Promise((resolve) => server.close(resolve))
  const result = await upload(`http://127.0.0.1:${port}/upload/files`, [file('a.txt', 10)], { uploadName: 'files', transport: 'http' })
  t.match(result, { files: [{ ok: false, code: 'connection_failed', message: /^the upload request failed: / }] })
  t.notOk('response' in result)
})

t.test('http: a file\'s signal cancels the request its files share; the upload\'s signal rejects', async (t) => {
  const recorder = new Recorder({ chunkDelay: 2 })
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const early = new AbortController()
  early.abort()
  const one = new AbortController()
  const progress = progressLog()
  // Cancelled once the server's writer has some of a.bin.
  recorder.until('the writer to get bytes', () => (recorder.records[0]?.bytes ?? 0) >= 5000).then(() => one.abort(), () => {})
  const result = await upload(`${url}/upload/files`, [file('a.bin', 600_000), { file: file('b.bin', 10), signal: early.signal }, { file: file('c.bin', 10), signal: one.signal }], {
    uploadName: 'files', transport: 'http', onProgress: progress.onProgress
  })
  t.same(result.files.map((r) => r.ok ? 'ok' : r.code), ['cancelled', 'cancelled', 'cancelled'])
  const aEvents = progress.of('a.bin')
  t.equal(aEvents.at(-1)!.status, 'cancelled')
  t.ok(aEvents.slice(0, -1).every((p) => p.status === 'uploading'), 'nothing after cancelled')
  t.same(progress.of('b.bin'), [], 'a file cancelled before the request is not sent')
  // The server reads what the client had already handed to the network, then the end.
  await recorder.until('the writer to close', () => recorder.records[0]?.closes.length === 1)
  t.same(recorder.reasons(), ['cancel'], 'the server cancelled the entry')

  const controller = new AbortController()
  const reason = new Error('enough')
  await t.rejects(upload(`${url}/upload/files`, [file('a.bin', 200_000)], {
    uploadName: 'files', transport: 'http', signal: controller.signal, onProgress: (_f, p) => { if (p.bytes > 100_000) controller.abort(reason) }
  }), reason)
  await t.rejects(upload(`${url}/upload/files`, [file('a.bin', 10)], { uploadName: 'files', transport: 'http', signal: AbortSignal.abort(reason) }), reason)
})

t.test('http: a throwing onProgress stops the request and rejects with its error', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory))
  const oops = new Error('no')
  for (const when of ['uploading', 'middle', 'done'] as const) {
    await t.rejects(upload(`${url}/upload/files`, [file('a.bin', 200_000)], {
      uploadName: 'files',
      transport: 'http',
      onProgress: (_f, p) => {
        if (when === 'uploading' || (when === 'middle' && p.bytes > 0) || (when === 'done' && p.status === 'done')) throw oops
      }
    }), oops, `a throw at ${when}`)
  }
})

t.test('the ws package\'s WebSocket is a WebSocketConstructor', async (t) => {
  const constructor: WebSocketConstructor = WsWebSocket
  t.equal(constructor, WsWebSocket)
})

t.test('options and files are checked before anything is sent', async (t) => {
  const files = [file('a.txt', 1)]
  await t.rejects(upload('http://127.0.0.1:9/x', files, {} as UploadOptions), { name: 'TypeError', message: /uploadName is required/ })
  await t.rejects(upload('http://127.0.0.1:9/x', files, { uploadName: '' }), { name: 'TypeError', message: /uploadName is required/ })
  for (const concurrency of [0, 1.5, -1]) {
    await t.rejects(upload('http://127.0.0.1:9/x', files, { uploadName: 'f', concurrency }), { name: 'TypeError', message: /concurrency/ })
  }
  await t.rejects(upload('http://127.0.0.1:9/x', files, { uploadName: 'f', transport: 'tus' as 'http' }), { name: 'TypeError', message: /transport/ })
  const notFiles = [{ name: 'x', size: 1 }, { name: 'x', size: -1, slice: () => file('x', 1) }, { name: 1, size: 1, slice: () => file('x', 1) }, { file: { size: 1 } }]
  for (const item of notFiles) {
    await t.rejects(upload('http://127.0.0.1:9/x', [file('ok', 1), item as unknown as FileLike], { uploadName: 'f' }), { name: 'TypeError', message: /item 1 is not a file/ })
  }
  t.equal(globalThis.WebSocket, undefined, 'Node 20 has no global WebSocket')
  await t.rejects(upload('http://127.0.0.1:9/x', files, { uploadName: 'f' }), { name: 'TypeError', message: /pass options\.WebSocket/ })
  await t.rejects(upload('/relative', files, { uploadName: 'f' }), { name: 'TypeError' }, 'a relative URL needs a page')
})

t.test('channelUrls: the channel of a route URL, and the route of a channel URL', async (t) => {
  t.same(channelUrls('http://h:1/upload/files'), { http: 'http://h:1/upload/files', ws: 'ws://h:1/upload/files/ws' })
  t.same(channelUrls('https://h/upload/files?x=1', '/channel'), { http: 'https://h/upload/files?x=1', ws: 'wss://h/upload/files/channel?x=1' })
  t.same(channelUrls(new URL('ws://h/upload/files/ws')), { http: 'http://h/upload/files', ws: 'ws://h/upload/files/ws' })
  t.same(channelUrls('wss://h/other', '/ws'), { http: 'https://h/other', ws: 'wss://h/other' })
  const global = globalThis as { location?: { href: string } }
  global.location = { href: 'https://example.test/page/' }
  t.teardown(() => { delete global.location })
  t.same(channelUrls('/upload/files'), { http: 'https://example.test/upload/files', ws: 'wss://example.test/upload/files/ws' }, 'relative to the page')
})

t.test('a big file goes through whole over both transports', async (t) => {
  const recorder = new Recorder()
  const { url } = await startChannelApp(t, filesRoute(recorder.factory, { chunkSize: 64_000, maxFileSize: 20_000_000 }))
  const { WebSocket } = recordingWebSocket()
  const big = new File([bytes(8_000_000, 7)], 'big.bin')
  for (const transport of ['websocket', 'http'] as const) {
    const result = await upload(`${url}/upload/files`, [big], { uploadName: 'files', transport, WebSocket, submit: true })
    t.match(result.response, { files: [{ name: 'big.bin', bytes: big.size, sha256: await digest(big) }] }, transport)
  }
})
