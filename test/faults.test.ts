// Bad input and faults over real sockets: after each, every initialised writer was
// closed exactly once, no temp file is left, and the server still answers.
import type { Socket } from 'node:net'
import { setImmediate } from 'node:timers/promises'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import {
  Recorder, bytes, eventually, multipart, parseResponse, rawRequest, rawSocket, sha256, startApp, stillServes, strayFiles, tempFiles, tmpDirFor, until,
  type Faults
} from './kit/index.js'
import { fakeClock } from './kit/clock.js'
import { defineWriter } from '../lib/index.js'

interface Setup { recorder: Recorder, url: string, port: number, dir: string, app: FastifyInstance }

/** One upload route `/up` with a recording writer (or the temp-file writer with `tmp: true`). */
async function setup (
  t: Test, config: Record<string, unknown> = {}, faults: Faults = {}, tmp = false, more?: (app: FastifyInstance, recorder: Recorder) => void
): Promise<Setup> {
  const recorder = new Recorder(faults)
  const dir = await tmpDirFor(t)
  const { url, port, app } = await startApp(t, (app) => {
    app.post('/up', {
      allowUpload: { file: { accept: 'any', maxEntries: 3, ...(tmp ? {} : { writer: recorder.factory }), ...config } }
    }, async (request) => {
      const files = await request.uploads.consume('file', (meta: { bytes?: number, sha256?: string, size?: number }) => meta.sha256 ?? meta.size)
      return { files, errors: request.uploads.errors() }
    })
    more?.(app, recorder)
  }, { tmpDir: dir })
  t.teardown(async () => {
    recorder.release()
  })
  return { recorder, url, port, dir, app }
}

async function afterEach (t: Test, s: Setup): Promise<void> {
  await s.recorder.until('every writer to get its close', () => s.recorder.records.every((r) => r.closes.length > 0))
  s.recorder.check(t)
  t.ok(await eventually(async () => (await strayFiles(s.dir)).length === 0), 'no stray temp file')
  await stillServes(t, s.url)
}

function head (port: number, contentType: string, length: number | undefined, path = '/up', extra = ''): string {
  return `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: ${contentType}\r\n` +
    (length === undefined ? 'Transfer-Encoding: chunked\r\n' : `Content-Length: ${length}\r\n`) + extra + '\r\n'
}

async function postForm (url: string, parts: Parameters<typeof multipart>[0], path = '/up'): Promise<{ status: number, json: any }> {
  const { body, contentType } = multipart(parts)
  const response = await fetch(url + path, { method: 'POST', body, headers: { 'content-type': contentType } })
  return { status: response.status, json: await response.json() }
}

for (const tmp of [false, true]) {
  t.test(`client abort mid-file: the writer gets 'cancel' at once, no timer involved (${tmp ? 'temp-file writer' : 'recording writer'})`, async (t) => {
    // The clock stands still: the cancel can only come from the socket's close, not from a timeout.
    fakeClock(t)
    const s = await setup(t, {}, {}, tmp)
    const { body, contentType } = multipart([{ name: 'file', filename: 'a.bin', data: bytes(2_000_000) }])
    const socket = await rawSocket(s.port)
    socket.write(head(s.port, contentType, body.length))
    socket.write(body.subarray(0, 300_000))
    if (!tmp) await s.recorder.until('bytes to reach the writer', () => (s.recorder.records[0]?.bytes ?? 0) > 0)
    else t.ok(await eventually(async () => (await tempFiles(s.dir)).length === 1), 'the temp file exists mid-upload')
    socket.destroy()
    if (!tmp) {
      await s.recorder.until('the writer to close', () => s.recorder.records[0]!.closes.length === 1)
      t.same(s.recorder.reasons(), ['cancel'], 'closed with cancel, with no time passing')
    }
    await afterEach(t, s)
  })
}

t.test('a writer call waiting on a remote service stops at the entry\'s cancel (its signal aborts): close(cancel), not { error }, no writerTimeout', async (t) => {
  // The clock stands still: only the signal can end the waiting call.
  fakeClock(t)
  const calls: string[] = []
  const Remote = defineWriter({
    init: (_options: undefined, call) => { calls.push(`init signal ${String(call?.signal.aborted)}`); return {} },
    meta: () => ({}),
    writeChunk: async (_data, state, call) => {
      calls.push('writeChunk waits')
      const signal = call!.signal
      await new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
      return state
    },
    close: (state, reason) => { calls.push(`close ${typeof reason === 'string' ? reason : 'error'}`); return state }
  })
  const { port } = await startApp(t, (app) => {
    app.post('/up', { allowUpload: { file: { accept: 'any', writer: () => Remote } } }, async () => 'never')
  })
  const socket = await rawSocket(port)
  socket.write(head(port, 'application/octet-stream', 100_000))
  socket.write(bytes(1000))
  await until('the call to wait', () => calls.includes('writeChunk waits'))
  socket.destroy()
  await until('the writer to close', () => calls.some((c) => c.startsWith('close')))
  t.same(calls, ['init signal false', 'writeChunk waits', 'close cancel'], 'one close, cancel, with no time passing')
})

t.test('writer throws on the 3rd chunk: close with { error }, a 500 that does not leak internals', async (t) => {
  const s = await setup(t, { chunkSize: 1000 }, { throwOnChunk: 3 })
  const { status, json } = await postForm(s.url, [{ name: 'file', filename: 'a.bin', data: bytes(10_000) }])
  t.equal(status, 500)
  t.equal(json.code, 'FST_CHUNKED_UPLOAD_WRITER_FAILURE')
  t.notMatch(json.message, /on purpose/, 'the writer error stays on the server')
  t.same(s.recorder.reasons(), ['error'])
  const reason = s.recorder.records[0]!.closes[0] as { error: Error }
  t.match(reason.error.message, /chunk 3 failed/)
  t.equal(s.recorder.records[0]!.bytes, 2000, 'close got the last good state: two chunks')
  await afterEach(t, s)
})

t.test('init throws: writer_failure, no close (no state exists)', async (t) => {
  const s = await setup(t, {}, { initThrows: true })
  const { status, json } = await postForm(s.url, [{ name: 'file', filename: 'a.bin', data: 'abc' }])
  t.equal(status, 500)
  t.equal(json.code, 'FST_CHUNKED_UPLOAD_WRITER_FAILURE')
  t.equal(s.recorder.records.length, 0)
  await afterEach(t, s)
})

t.test("close('done') throws: the entry fails, close is not called again", async (t) => {
  const s = await setup(t, {}, { closeDoneThrows: true })
  const { status, json } = await postForm(s.url, [{ name: 'file', filename: 'a.bin', data: 'abc' }])
  t.equal(status, 500)
  t.equal(json.code, 'FST_CHUNKED_UPLOAD_WRITER_FAILURE')
  t.same(s.recorder.reasons(), ['done'])
  await afterEach(t, s)
})

t.test("close('cancel') throws: logged, never re-thrown into the request", async (t) => {
  const s = await setup(t, { maxFileSize: 10 }, { closeCancelThrows: true })
  const { status, json } = await postForm(s.url, [{ name: 'file', filename: 'a.bin', data: bytes(100) }])
  t.equal(status, 413)
  t.equal(json.code, 'FST_CHUNKED_UPLOAD_TOO_LARGE')
  t.same(s.recorder.reasons(), ['cancel'])
  await afterEach(t, s)
})

t.test('oversize by declared length (raw body) is refused before any byte is read', async (t) => {
  const s = await setup(t, { maxFileSize: 1000 })
  const response = await rawRequest(s.port, head(s.port, 'application/octet-stream', 5000), '')
  t.equal(response?.status, 413)
  t.match(response?.body, /FST_CHUNKED_UPLOAD_TOO_LARGE/)
  t.match(response?.headers, /connection: close/i)
  t.equal(s.recorder.records.length, 0, 'no writer was started')
  await afterEach(t, s)
})

t.test('oversize by streamed bytes: multipart and chunked raw bodies', async (t) => {
  const s = await setup(t, { maxFileSize: 100_000 }, {}, true)
  const form = await postForm(s.url, [{ name: 'file', filename: 'big.bin', data: bytes(300_000) }])
  t.equal(form.status, 413)
  t.equal(form.json.code, 'FST_CHUNKED_UPLOAD_TOO_LARGE')
  const data = bytes(250_000)
  const chunked = `${data.length.toString(16)}\r\n${data.toString('latin1')}\r\n0\r\n\r\n`
  const response = await rawRequest(s.port, head(s.port, 'application/octet-stream', undefined), Buffer.from(chunked, 'latin1'))
  t.equal(response?.status, 413)
  await afterEach(t, s)
})

t.test('too many files: 413, and every writer already opened is closed', async (t) => {
  const s = await setup(t, { maxEntries: 2 })
  const { status, json } = await postForm(s.url, [1, 2, 3].map((i) => ({ name: 'file', filename: `${i}.bin`, data: bytes(1000, i) })))
  t.equal(status, 413)
  t.equal(json.code, 'FST_CHUNKED_UPLOAD_TOO_MANY_FILES')
  t.same(s.recorder.reasons(), ['done', 'done'], 'the finished siblings were done, then discarded')
  await afterEach(t, s)
})

t.test('not accepted: 415 by type or extension', async (t) => {
  const s = await setup(t, { accept: ['.png', 'image/webp'] })
  const bad = await postForm(s.url, [{ name: 'file', filename: 'a.exe', type: 'application/x-msdownload', data: 'MZ' }])
  t.equal(bad.status, 415)
  t.equal(bad.json.code, 'FST_CHUNKED_UPLOAD_NOT_ACCEPTED')
  const byExt = await postForm(s.url, [{ name: 'file', filename: 'A.PNG', type: 'application/octet-stream', data: 'png' }])
  t.equal(byExt.status, 200, 'extension matches case-insensitively')
  const byType = await postForm(s.url, [{ name: 'file', filename: 'noext', type: 'image/webp', data: 'webp' }])
  t.equal(byType.status, 200, 'declared type matches')
  await afterEach(t, s)
})

t.test('empty (0-byte) file: init, no chunks, done', async (t) => {
  const s = await setup(t)
  const { status, json } = await postForm(s.url, [{ name: 'file', filename: 'empty.bin', data: '' }])
  t.equal(status, 200)
  t.same(json.files, [sha256(Buffer.alloc(0))])
  t.same(s.recorder.records[0]!.chunks, [])
  t.same(s.recorder.reasons(), ['done'])
  const raw = await fetch(`${s.url}/up`, { method: 'POST', body: Buffer.alloc(0), headers: { 'content-type': 'application/octet-stream' } })
  t.equal(raw.status, 200, 'an empty raw body is an empty file too')
  t.same(s.recorder.reasons(), ['done', 'done'])
  await afterEach(t, s)
})

t.test('missing or empty boundary: 400 malformed', async (t) => {
  const s = await setup(t)
  for (const contentType of ['multipart/form-data', 'multipart/form-data; boundary=']) {
    const response = await fetch(`${s.url}/up`, { method: 'POST', body: 'x', headers: { 'content-type': contentType } })
    t.equal(response.status, 400, contentType)
    t.equal((await response.json() as { code: string }).code, 'FST_CHUNKED_UPLOAD_MALFORMED')
  }
  await afterEach(t, s)
})

t.test('truncated body (no closing boundary): 400, the open writer is cancelled', async (t) => {
  const s = await setup(t)
  const { body, contentType } = multipart([{ name: 'file', filename: 'a.bin', data: bytes(5000) }])
  const cut = body.subarray(0, body.length - 30)
  const response = await fetch(`${s.url}/up`, { method: 'POST', body: cut, headers: { 'content-type': contentType } })
  t.equal(response.status, 400)
  t.equal((await response.json() as { code: string }).code, 'FST_CHUNKED_UPLOAD_MALFORMED')
  t.same(s.recorder.reasons(), ['cancel'])
  await afterEach(t, s)
})

t.test('prototype-named fields are refused', async (t) => {
  const s = await setup(t)
  for (const name of ['__proto__', 'constructor', 'toString']) {
    const field = await postForm(s.url, [{ name, data: '{"polluted":true}' }])
    t.equal(field.status, 400, `text field ${name}`)
    t.equal(field.json.code, 'FST_CHUNKED_UPLOAD_FORBIDDEN_FIELD_NAME')
    const file = await postForm(s.url, [{ name, filename: 'a.bin', data: 'x' }])
    t.equal(file.status, 400, `file field ${name}`)
    t.equal(file.json.code, 'FST_CHUNKED_UPLOAD_UNEXPECTED_FILE')
  }
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched')
  await afterEach(t, s)
})

t.test('path-traversal and NUL filenames keep only a safe basename', async (t) => {
  const names: string[] = []
  const s = await setup(t, {}, {}, true, (app) => {
    app.addHook('preHandler', async (request) => {
      if (request.uploads !== null) for (const e of request.uploads.entries('file').completed) names.push(e.clientName)
    })
  })
  const { body, contentType } = multipart([
    { name: 'file', filename: '../../etc/passwd', data: 'a' },
    { name: 'file', filename: 'C:\\Windows\\evil.exe', data: 'b' },
    { name: 'file', filename: 'nul\u0000byte.txt', data: 'c' }
  ])
  const response = await fetch(`${s.url}/up`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.equal(response.status, 200)
  t.same(names, ['passwd', 'evil.exe', 'nulbyte.txt'])
  await afterEach(t, s)
})

t.test('a slow client that stops sending: 408 chunk timeout after chunkTimeout of silence, the writer is cancelled', async (t) => {
  const clock = fakeClock(t)
  const s = await setup(t, { chunkTimeout: 300, chunkSize: 1000 })
  const data = bytes(100_000)
  const { body, contentType } = multipart([{ name: 'file', filename: 'a.bin', data }])
  const socket = await rawSocket(s.port)
  socket.write(head(s.port, contentType, body.length))
  // The part's head and 20 whole chunks, then silence.
  const sent = body.indexOf(data) + 20_000
  socket.write(body.subarray(0, sent))
  await s.recorder.until('the writer to get the bytes sent (all but what the parser holds back)', () => (s.recorder.records[0]?.bytes ?? 0) >= 19_000)
  await setImmediate()
  await clock.tickAsync(299)
  t.equal(socket.received(), '', 'no answer after 299 ms of silence')
  await clock.tickAsync(1)
  await socket.until('the answer', () => socket.received().includes('\r\n\r\n{'))
  t.match(socket.received(), /^HTTP\/1.1 408/)
  t.match(socket.received(), /FST_CHUNKED_UPLOAD_CHUNK_TIMEOUT/)
  t.same(s.recorder.reasons(), ['cancel'])
  socket.destroy()
  await afterEach(t, s)
})

for (const form of [true, false]) {
  t.test(`a slow writer is not a silent client: a writer call 10 times chunkTimeout long (${form ? 'multipart' : 'raw body'})`, async (t) => {
    const clock = fakeClock(t)
    const s = await setup(t, { chunkTimeout: 200, chunkSize: 10_000 }, { hangOnChunk: 2 })
    const data = bytes(100_000)
    const { body, contentType } = form ? multipart([{ name: 'file', filename: 'a.bin', data }]) : { body: data, contentType: 'application/octet-stream' }
    const serverSocket = new Promise<Socket>((resolve) => s.app.server.once('connection', resolve))
    const socket = await rawSocket(s.port)
    const requestHead = head(s.port, contentType, body.length)
    socket.write(requestHead)
    const first = 15_000
    socket.write(body.subarray(0, first))
    await s.recorder.hung()
    // The rest arrives while the writer hangs: bytes heard then must not restart the silence clock.
    await new Promise<void>((resolve) => socket.write(body.subarray(first), () => resolve()))
    const server = await serverSocket
    await until('the server to read on', () => server.bytesRead > requestHead.length + first)
    await clock.tickAsync(2000)
    s.recorder.release()
    const answer = await socket.until('the answer', () => parseResponse(socket.received())?.body.endsWith('}') === true && parseResponse(socket.received()))
    t.equal(answer.status, 200, 'the writer\'s 2000 ms do not trip the 200 ms silence limit')
    t.same(JSON.parse(answer.body).files, [sha256(data)])
    socket.destroy()
    await afterEach(t, s)
  })
}

t.test('a writer call that hangs is bounded by writerTimeout', async (t) => {
  const clock = fakeClock(t)
  const s = await setup(t, { writerTimeout: 200, chunkSize: 1000 }, { hangOnChunk: 2 })
  let answered = false
  const posting = postForm(s.url, [{ name: 'file', filename: 'a.bin', data: bytes(5000) }]).finally(() => { answered = true })
  await s.recorder.hung()
  await clock.tickAsync(199)
  t.notOk(answered, 'no answer 199 ms into the hung call')
  await clock.tickAsync(1)
  const { status, json } = await posting
  t.equal(status, 500, 'answered at 200 ms')
  t.equal(json.code, 'FST_CHUNKED_UPLOAD_WRITER_FAILURE')
  t.same(s.recorder.records[0]!.closes, [], 'no close while the hung call runs: calls never overlap')
  s.recorder.release()
  await afterEach(t, s)
  t.same(s.recorder.reasons(), ['error'], 'closed with { error } once the hung call settled')
})

t.test('a writer call that never settles holds app.close() at most one more writerTimeout; its close still follows if it settles', async (t) => {
  const clock = fakeClock(t)
  const s = await setup(t, { writerTimeout: 200, chunkSize: 1000 }, { hangOnChunk: 2 })
  const posting = postForm(s.url, [{ name: 'file', filename: 'a.bin', data: bytes(5000) }])
  await s.recorder.hung()
  let closed = false
  const closing = s.app.close().then(() => { closed = true })
  const { status, json } = await posting
  t.equal(status, 503, 'shutdown answers the request at once')
  t.equal(json.code, 'FST_CHUNKED_UPLOAD_SHUTTING_DOWN')
  await clock.tickAsync(200)
  t.notOk(closed, 'close() waits while the call may still settle within writerTimeout…')
  await clock.tickAsync(199)
  t.notOk(closed, '…and one more writerTimeout for its close')
  await clock.tickAsync(1)
  await closing
  t.same(s.recorder.records[0]!.closes, [], 'no close while the hung call runs: calls never overlap')
  s.recorder.release()
  await s.recorder.until('the owed close', () => s.recorder.records[0]!.closes.length === 1)
  t.same(s.recorder.reasons(), ['error'], 'closed once, with { error }, when the call settled')
  s.recorder.check(t)
})

t.test('10,000 tiny parts', async (t) => {
  const s = await setup(t, { maxEntries: 10_000 })
  const parts = Array.from({ length: 10_000 }, (_, i) => ({ name: 'file', filename: `${i}.txt`, data: String(i % 10) }))
  const { status, json } = await postForm(s.url, parts)
  t.equal(status, 200)
  t.equal(json.files.length, 10_000)
  t.equal(s.recorder.records.length, 10_000)
  t.ok(s.recorder.reasons().every((r) => r === 'done'))
  const fields = await postForm(s.url, Array.from({ length: 10_000 }, (_, i) => ({ name: `f${i}`, data: 'v' })))
  t.equal(fields.status, 413, '10,000 text fields exceed maxFields')
  t.equal(fields.json.code, 'FST_CHUNKED_UPLOAD_FIELDS_LIMIT')
  await afterEach(t, s)
})

t.test('50 concurrent uploads, byte-exact (odd sizes)', async (t) => {
  const s = await setup(t, { maxFileSize: 2_000_000 }, {}, true, (app, recorder) => {
    app.post('/hash', { allowUpload: { file: { accept: 'any', maxFileSize: 2_000_000, writer: recorder.factory } } }, async (request) => {
      return await request.uploads.consume('file', (meta: { sha256: string }) => meta.sha256)
    })
  })
  const sizes = Array.from({ length: 50 }, (_, i) => 1 + ((i * 104_729) % 1_000_003))
  const results = await Promise.all(sizes.map(async (size, i) => {
    const data = bytes(size, i + 7)
    const { status, json } = await postForm(s.url, [{ name: 'file', filename: `${i}.bin`, data }], '/hash')
    return status === 200 && json[0] === sha256(data)
  }))
  t.equal(results.filter(Boolean).length, 50, 'every upload arrived intact')
  await afterEach(t, s)
})

t.test('the handler throws after consuming: the temp file is still removed', async (t) => {
  const dir = await tmpDirFor(t)
  const { url } = await startApp(t, (app) => {
    app.post('/boom', { allowUpload: { file: { accept: 'any', maxEntries: 2 } } }, async (request) => {
      await request.uploads.consumeEntry(request.uploads.entries('file').completed[0]!.ref, () => 'first')
      throw new Error('handler failed')
    })
  }, { tmpDir: dir })
  const { status } = await postForm(url, [{ name: 'file', filename: 'a', data: 'a' }, { name: 'file', filename: 'b', data: 'b' }], '/boom')
  t.equal(status, 500)
  t.ok(await eventually(async () => (await strayFiles(dir)).length === 0), 'consumed and unconsumed files are gone')
  await stillServes(t, url)
})

t.test('server close() during an upload cancels it and the server stops', async (t) => {
  const s = await setup(t)
  const { body, contentType } = multipart([{ name: 'file', filename: 'a.bin', data: bytes(1_000_000) }])
  const socket = await rawSocket(s.port)
  socket.write(head(s.port, contentType, body.length))
  socket.write(body.subarray(0, 100_000))
  await s.recorder.until('bytes to reach the writer', () => (s.recorder.records[0]?.bytes ?? 0) > 0)
  const closing = s.app.close()
  await s.recorder.until('the writer to close', () => s.recorder.records[0]!.closes.length === 1)
  t.same(s.recorder.reasons(), ['cancel'], 'cancelled at shutdown')
  await closing
  await socket.until('a 503 or the socket\'s end', () => socket.received().includes('503') || socket.destroyed || socket.readableEnded)
  socket.destroy()
  s.recorder.check(t)
  t.same(await strayFiles(s.dir), [])
})

t.test('a file field for an undeclared name is rejected', async (t) => {
  const s = await setup(t)
  const { status, json } = await postForm(s.url, [{ name: 'other', filename: 'a.bin', data: 'x' }])
  t.equal(status, 400)
  t.equal(json.code, 'FST_CHUNKED_UPLOAD_UNEXPECTED_FILE')
  await afterEach(t, s)
})

t.test('a consumer that postpones while the client goes away: the entry is still discarded', async (t) => {
  const dir = await tmpDirFor(t)
  let inConsumer!: () => void
  const consuming = new Promise<void>((resolve) => { inConsumer = resolve })
  let letGo!: () => void
  const held = new Promise<void>((resolve) => { letGo = resolve })
  let clientGone!: Promise<void>
  const { port, url } = await startApp(t, (app) => {
    app.post('/later', { allowUpload: { file: { accept: 'any' } } }, async (request) => {
      // Listened to after the plugin's own listeners: when it fires, the plugin has seen the close.
      clientGone = closeOf(request.raw.socket)
      return await request.uploads.consume('file', async () => {
        inConsumer()
        await held
        return { postpone: 'later' }
      })
    })
  }, { tmpDir: dir })
  const { body, contentType } = multipart([{ name: 'file', filename: 'a.bin', data: bytes(10_000) }])
  const socket = await rawSocket(port)
  socket.write(head(port, contentType, body.length, '/later'))
  socket.write(body)
  await consuming
  t.equal((await tempFiles(dir)).length, 1, 'the file exists while it is being consumed')
  socket.destroy()
  await clientGone
  await setImmediate()
  t.equal((await tempFiles(dir)).length, 1, 'not removed under the consumer')
  letGo()
  t.ok(await eventually(async () => (await strayFiles(dir)).length === 0), 'removed once the consumer let go')
  await stillServes(t, url)
})

t.test('a disconnect during consume: entries still waiting their turn keep their files', async (t) => {
  const dir = await tmpDirFor(t)
  let inFirst!: () => void
  const first = new Promise<void>((resolve) => { inFirst = resolve })
  let goOn!: () => void
  const proceed = new Promise<void>((resolve) => { goOn = resolve })
  const existed: boolean[] = []
  let clientGone!: Promise<void>
  const { port, url } = await startApp(t, (app) => {
    app.post('/three', { allowUpload: { file: { accept: 'any', maxEntries: 3 } } }, async (request) => {
      clientGone = closeOf(request.raw.socket)
      return await request.uploads.consume('file', async (meta: { path: string }) => {
        inFirst()
        await proceed
        existed.push((await tempFiles(dir)).some((file) => file.endsWith(meta.path.split('/').pop()!)))
        return meta.path
      })
    })
  }, { tmpDir: dir })
  const { body, contentType } = multipart(['a', 'b', 'c'].map((name) => ({ name: 'file', filename: name, data: bytes(1000) })))
  const socket = await rawSocket(port)
  socket.write(head(port, contentType, body.length, '/three'))
  socket.write(body)
  await first
  socket.destroy()
  await clientGone
  await setImmediate()
  goOn()
  t.ok(await eventually(() => existed.length === 3))
  t.same(existed, [true, true, true], 'each file existed when its consumer ran')
  t.ok(await eventually(async () => (await strayFiles(dir)).length === 0), 'and all are gone afterwards')
  await stillServes(t, url)
})

t.test('app.close() waits for a writer call in flight when the client went away', async (t) => {
  const recorder = new Recorder({ hangOnChunk: 2 })
  const { app, port } = await startApp(t, (app) => {
    app.post('/slow', { allowUpload: { file: { accept: 'any', maxFileSize: 10_000_000, chunkSize: 1000, writer: recorder.factory } } }, async () => 'ok')
  })
  const socket = await rawSocket(port)
  socket.write(head(port, 'application/octet-stream', 1_000_000, '/slow'))
  socket.write(bytes(100_000))
  await recorder.hung()
  // The server reads no further while the writer works, so it learns of this at shutdown at the latest.
  socket.destroy()
  let closed = false
  const closing = app.close().then(() => { closed = true })
  await setImmediate()
  t.notOk(closed, 'app.close() waits while the writer call runs')
  recorder.release()
  await closing
  t.same(recorder.reasons(), ['cancel'], 'the writer was closed with cancel before app.close() resolved')
  recorder.check(t)
})

/** A socket's close, as a promise. */
async function closeOf (socket: Socket): Promise<void> {
  await new Promise<void>((resolve) => socket.once('close', () => resolve()))
}
