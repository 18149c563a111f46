// HTTP/2: the HTTP transports (multipart, raw) and the resumable endpoint on a Fastify
// server with `http2: true` (h2c) and with `https` + `http2: true` + `allowHTTP1`,
// driven by Node's http2 client. Uploads arrive byte-identical; a refused upload gets
// its status, then its stream is reset with NO_ERROR (the HTTP/2 way to say "stop
// sending", RFC 9113 §8.1) while the session stays usable; no answer carries a
// `Connection` header and Node warns about nothing. HTTP/1.1 on the same server still
// closes its connection after such an answer.
import { readFileSync } from 'node:fs'
import { request as httpsRequest } from 'node:https'
import { connect, constants, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2'
import FakeTimers from '@sinonjs/fake-timers'
import Fastify, { type FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import chunkedUpload from '../lib/index.js'
import { PATIENCE_MS, Recorder, bytes, eventually, multipart, sha256 } from './kit/index.js'

const key = readFileSync(new URL('fixtures/localhost-key.pem', import.meta.url))
const cert = readFileSync(new URL('fixtures/localhost-cert.pem', import.meta.url))

/** Every process warning (Node warns once per process about a Connection header on HTTP/2). */
const warnings: string[] = []
process.on('warning', (warning) => warnings.push(`${warning.name}: ${warning.message}`))

interface Flavor { name: string, tls: boolean }
const FLAVORS: Flavor[] = [{ name: 'h2c', tls: false }, { name: 'h2 over TLS with allowHTTP1', tls: true }]

const FILE_LIMIT = 1_000_000
/** A declared or streamed body far past every limit: a refused upload never reads it all. */
const HUGE = 64 * 1024 * 1024
/** Bound on waiting for a stream to end, only ever reached when the test fails. */
const STREAM_END_MS = PATIENCE_MS

interface Server { app: FastifyInstance, url: string, port: number, recorder: Recorder, sessions: Set<ClientHttp2Session> }

async function startServer (t: Test, flavor: Flavor, chunkTimeout?: number): Promise<Server> {
  const recorder = new Recorder()
  const app = (flavor.tls
    ? Fastify({ http2: true, https: { key, cert, allowHTTP1: true } })
    : Fastify({ http2: true })) as unknown as FastifyInstance
  await app.register(chunkedUpload)
  const report = async (request: import('fastify').FastifyRequest, name: string): Promise<unknown> =>
    await request.uploads.consume(name, (meta: { bytes: number, sha256: string }, entry) => ({ name: entry.clientName, bytes: meta.bytes, sha256: meta.sha256 }))
  app.post('/form', {
    allowUpload: { docs: { accept: ['.bin'], maxEntries: 3, maxFileSize: FILE_LIMIT, chunkTimeout, writer: recorder.factory } }
  }, async (request) => ({ body: request.body, files: await report(request, 'docs') }))
  app.post('/raw', {
    allowUpload: { file: { accept: 'any', maxFileSize: FILE_LIMIT, chunkTimeout, writer: recorder.factory } }
  }, async (request) => ({ files: await report(request, 'file') }))
  app.post('/files', {
    allowUpload: { file: { accept: 'any', maxFileSize: FILE_LIMIT, resumable: true, chunkTimeout, writer: recorder.factory } }
  }, async (request) => ({ files: await report(request, 'file') }))
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  const sessions = new Set<ClientHttp2Session>()
  // Sessions first: the server's close waits for them.
  t.teardown(async () => {
    for (const session of sessions) session.destroy()
    await app.close()
  })
  return { app, url: `${flavor.tls ? 'https' : 'http'}://127.0.0.1:${port}`, port, recorder, sessions }
}

async function openSession (server: Server): Promise<ClientHttp2Session> {
  const session = connect(server.url, { ca: cert })
  session.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    session.once('connect', () => resolve())
    session.once('error', reject)
  })
  server.sessions.add(session)
  return session
}

interface Answer {
  status: number
  headers: IncomingHttpHeaders
  json: any
  /** The server reset the stream (with rstCode) before the client finished sending. */
  reset: boolean
  rstCode: number
}

/**
 * One request on the session: `body`, then `tail` filler bytes, sent with backpressure
 * in 64 KiB pieces until the stream ends. A refused upload is never let to send it all.
 * `onRequest` gets the client stream as soon as it is opened.
 */
async function send (session: ClientHttp2Session, headers: OutgoingHttpHeaders, body: Buffer | undefined, tail = 0, onRequest?: (req: ClientHttp2Stream) => void): Promise<Answer> {
  const req = session.request(headers, { endStream: body === undefined && tail === 0 })
  onRequest?.(req)
  let reset = false
  req.on('aborted', () => { reset = true })
  req.on('error', () => {})
  const all = body ?? Buffer.alloc(0)
  const filler = Buffer.alloc(64 * 1024, 7)
  const total = all.length + tail
  let sent = 0
  function pump (): void {
    while (!req.closed && sent < total) {
      const next = sent < all.length ? all.subarray(sent, sent + filler.length) : filler.subarray(0, Math.min(filler.length, total - sent))
      sent += next.length
      if (!req.write(next)) {
        req.once('drain', pump)
        return
      }
    }
    if (!req.closed) req.end()
  }
  if (total > 0) pump()
  const responded = new Promise<IncomingHttpHeaders>((resolve) => req.once('response', resolve))
  let text = ''
  req.setEncoding('utf8')
  req.on('data', (chunk: string) => { text += chunk })
  const ended = new Promise<void>((resolve) => req.once('end', resolve))
  // The exchange is over when the stream closed normally or the server reset it.
  const over = new Promise<void>((resolve) => {
    req.once('close', resolve)
    req.once('aborted', resolve)
  })
  // Reached only when the test fails (a stream left open, a session out of window).
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${String(headers[':method'])} ${String(headers[':path'])}: the stream did not end within ${STREAM_END_MS} ms`)), STREAM_END_MS)
  })
  let headersIn: IncomingHttpHeaders
  try {
    headersIn = await Promise.race([responded, deadline])
    await Promise.race([Promise.all([ended, over]), deadline])
  } finally {
    clearTimeout(timer)
    // Writes the server will never read go with the stream (nothing is sent: it is closed).
    req.destroy()
  }
  const answer: Answer = {
    status: Number(headersIn[':status']),
    headers: headersIn,
    json: text.startsWith('{') ? JSON.parse(text) : text,
    reset,
    rstCode: req.rstCode ?? -1
  }
  return answer
}

function tus (path: string, more: OutgoingHttpHeaders = {}): OutgoingHttpHeaders {
  return { ':method': 'POST', ':path': path, 'tus-resumable': '1.0.0', ...more }
}

/** What every HTTP/2 answer must hold, refused or not. */
function checkAnswer (t: Test, answer: Answer, what: string): void {
  t.notOk('connection' in answer.headers, `${what}: no Connection header on HTTP/2`)
  t.same(warnings, [], `${what}: Node warned about nothing`)
}

/** A refused upload: its status, then its stream reset with NO_ERROR before the body was all sent. */
function checkRefused (t: Test, answer: Answer, status: number, what: string): void {
  t.equal(answer.status, status, `${what}: ${status}`)
  t.ok(answer.reset, `${what}: the stream was reset before the client sent its whole body`)
  t.equal(answer.rstCode, constants.NGHTTP2_NO_ERROR, `${what}: with NO_ERROR (stop sending, the answer stands)`)
  checkAnswer(t, answer, what)
}

for (const flavor of FLAVORS) {
  t.test(`${flavor.name}: multipart and raw uploads arrive byte-identical`, async (t) => {
    const server = await startServer(t, flavor)
    const session = await openSession(server)
    const a = bytes(700_001, 1)
    const b = bytes(3, 2)
    const form = multipart([
      { name: 'title', data: 'over h2' },
      { name: 'docs', filename: 'a.bin', type: 'application/octet-stream', data: a },
      { name: 'docs', filename: 'b.bin', data: b }
    ])
    const multi = await send(session, { ':method': 'POST', ':path': '/form', 'content-type': form.contentType, 'content-length': form.body.length }, form.body)
    t.equal(multi.status, 200)
    t.same(multi.json, {
      body: { title: 'over h2' },
      files: [{ name: 'a.bin', bytes: a.length, sha256: sha256(a) }, { name: 'b.bin', bytes: b.length, sha256: sha256(b) }]
    })
    checkAnswer(t, multi, 'multipart')

    const raw = bytes(900_000, 3)
    const declared = await send(session, { ':method': 'POST', ':path': '/raw', 'content-type': 'application/octet-stream', 'content-length': raw.length }, raw)
    t.same(declared.json, { files: [{ name: '', bytes: raw.length, sha256: sha256(raw) }] }, 'raw, with Content-Length')
    // HTTP/2 needs no Content-Length (nor chunked encoding): DATA frames until END_STREAM.
    const undeclared = await send(session, { ':method': 'POST', ':path': '/raw', 'content-type': 'application/octet-stream', 'content-disposition': 'attachment; filename="x.bin"' }, raw)
    t.same(undeclared.json, { files: [{ name: 'x.bin', bytes: raw.length, sha256: sha256(raw) }] }, 'raw, without Content-Length')
    checkAnswer(t, undeclared, 'raw')
    t.same(server.recorder.reasons(), ['done', 'done', 'done', 'done'])
    server.recorder.check(t)
  })

  t.test(`${flavor.name}: refused uploads are answered at once, their streams reset with NO_ERROR, the session goes on`, async (t) => {
    const server = await startServer(t, flavor)
    const session = await openSession(server)
    const big = { ':method': 'POST', ':path': '/raw', 'content-type': 'application/octet-stream' }

    // Too large by its declared length: refused before a byte is read.
    const declared = await send(session, { ...big, 'content-length': HUGE }, undefined, HUGE)
    checkRefused(t, declared, 413, 'raw, declared too large')
    t.equal(declared.json.code, 'FST_CHUNKED_UPLOAD_TOO_LARGE')
    // Too large while streaming (no declared length).
    const streamed = await send(session, big, undefined, HUGE)
    checkRefused(t, streamed, 413, 'raw, streamed too large')
    // A multipart part refused by type, the body still coming.
    const partHead = Buffer.from('--b\r\nContent-Disposition: form-data; name="docs"; filename="evil.exe"\r\n\r\n')
    const refusedPart = await send(session, { ':method': 'POST', ':path': '/form', 'content-type': 'multipart/form-data; boundary=b' }, partHead, HUGE)
    checkRefused(t, refusedPart, 415, 'multipart, a part not accepted')

    // The same session carries a whole upload afterwards: nothing of the refused
    // streams holds its flow-control window.
    const data = bytes(FILE_LIMIT, 9)
    const after = await send(session, { ...big, 'content-length': data.length }, data)
    t.equal(after.status, 200, 'the session still carries an upload')
    t.same(after.json, { files: [{ name: '', bytes: data.length, sha256: sha256(data) }] })
    t.notOk(session.destroyed, 'the session was never closed')
    t.same(server.recorder.reasons(), ['cancel', 'done'], 'the streamed-too-large writer was cancelled, the last one finished; no other writer was opened')
    server.recorder.check(t)
  })

  t.test(`${flavor.name}: the resumable endpoint: creation, PATCHes, an offset mismatch and a too-large append`, async (t) => {
    const server = await startServer(t, flavor)
    const session = await openSession(server)
    const data = bytes(600_000, 5)
    const created = await send(session, tus('/files/tus', { 'upload-length': data.length, 'upload-metadata': `filename ${Buffer.from('movie.bin').toString('base64')}` }), undefined)
    t.equal(created.status, 201)
    checkAnswer(t, created, 'creation')
    const location = String(created.headers.location)
    const patch = (offset: number, more: OutgoingHttpHeaders = {}): OutgoingHttpHeaders =>
      tus(location, { ':method': 'PATCH', 'upload-offset': offset, 'content-type': 'application/offset+octet-stream', ...more })

    const first = await send(session, patch(0, { 'content-length': 250_000 }), data.subarray(0, 250_000))
    t.equal(first.status, 204)
    t.equal(first.headers['upload-offset'], '250000')
    t.notOk(first.reset, 'a whole append ends its stream normally')
    checkAnswer(t, first, 'PATCH')

    const mismatch = await send(session, patch(100, { 'content-length': HUGE }), undefined, HUGE)
    checkRefused(t, mismatch, 409, 'PATCH at the wrong offset')
    t.equal(mismatch.headers['upload-offset'], '250000', 'and the offset to resume from')

    const declaredTooLarge = await send(session, patch(250_000, { 'content-length': HUGE }), undefined, HUGE)
    checkRefused(t, declaredTooLarge, 413, 'PATCH declared past Upload-Length')
    const head = await send(session, tus(location, { ':method': 'HEAD' }), undefined)
    t.equal(head.headers['upload-offset'], '250000', 'the refused append added nothing')

    // The rest of the upload and more, undeclared: what fits is kept, the rest refused.
    const streamedTooLarge = await send(session, patch(250_000), data.subarray(250_000), HUGE)
    checkRefused(t, streamedTooLarge, 413, 'PATCH streamed past Upload-Length')
    const kept = Number((await send(session, tus(location, { ':method': 'HEAD' }), undefined)).headers['upload-offset'])
    t.ok(kept >= 250_000 && kept <= data.length, `the bytes within Upload-Length were kept (${kept})`)
    if (kept < data.length) {
      const rest = await send(session, patch(kept, { 'content-length': data.length - kept }), data.subarray(kept))
      t.equal(rest.status, 204)
      t.equal(rest.headers['upload-offset'], String(data.length))
    }

    const json = Buffer.from(JSON.stringify({ file: location }))
    const consumed = await send(session, { ':method': 'POST', ':path': '/files', 'content-type': 'application/json', 'content-length': json.length }, json)
    t.same(consumed.json, { files: [{ name: 'movie.bin', bytes: data.length, sha256: sha256(data) }] }, 'the upload arrived byte-identical')
    checkAnswer(t, consumed, 'consume')
    t.notOk(session.destroyed, 'one session carried it all')
    t.same(server.recorder.reasons(), ['done'])
    server.recorder.check(t)
  })
}

t.test('h2c: a creation with its upload and no Content-Length (DATA frames until END_STREAM) keeps every byte, in tus and in the IETF draft', async (t) => {
  const server = await startServer(t, FLAVORS[0]!)
  const session = await openSession(server)
  const data = bytes(200_000, 11)
  const consume = async (answer: Answer): Promise<unknown> => {
    const json = Buffer.from(JSON.stringify({ file: answer.headers.location }))
    return (await send(session, { ':method': 'POST', ':path': '/files', 'content-type': 'application/json', 'content-length': json.length }, json)).json
  }
  const expected = { files: [{ name: '', bytes: data.length, sha256: sha256(data) }] }
  const created = await send(session, tus('/files/tus', { 'upload-length': data.length, 'content-type': 'application/offset+octet-stream' }), data)
  t.equal(created.status, 201)
  t.equal(created.headers['upload-offset'], String(data.length), 'tus: the body of the creation was read')
  t.same(await consume(created), expected, 'byte-identical')
  const draft = await send(session, { ':method': 'POST', ':path': '/files/tus', 'upload-draft-interop-version': '6', 'upload-complete': '?1', 'content-type': 'application/partial-upload' }, data)
  t.equal(draft.status, 201)
  t.equal(draft.headers['upload-offset'], String(data.length), 'IETF draft: the whole upload, not an empty one')
  t.same(await consume(draft), expected, 'byte-identical')
  server.recorder.check(t)
})

t.test('h2c: a creation whose stream ends with an empty DATA frame (Node\'s client default) has no body: 201, not 415', async (t) => {
  const server = await startServer(t, FLAVORS[0]!)
  const session = await openSession(server)
  // HEADERS without END_STREAM, then an empty DATA frame that ends the stream.
  const created = await send(session, tus('/files/tus', { 'upload-length': 10 }), Buffer.alloc(0), 0, (req) => req.end())
  t.equal(created.status, 201)
  t.equal(created.headers['upload-offset'], '0')
  checkAnswer(t, created, 'empty creation')
  const resumed = await send(session, tus(String(created.headers.location), { ':method': 'PATCH', 'upload-offset': 0, 'content-type': 'application/offset+octet-stream' }), bytes(10, 3))
  t.equal(resumed.status, 204, 'the upload it created takes its bytes')
  t.equal(resumed.headers['upload-offset'], '10')
})

t.test('h2c: a client that cancels its stream mid-upload: the writer is cancelled, the session goes on', async (t) => {
  const server = await startServer(t, FLAVORS[0]!)
  const session = await openSession(server)
  const req = session.request({ ':method': 'POST', ':path': '/raw', 'content-type': 'application/octet-stream', 'content-length': FILE_LIMIT })
  req.on('error', () => {})
  req.write(bytes(100_000, 12))
  t.ok(await eventually(() => server.recorder.records[0]?.bytes === 100_000), 'the first bytes reached the writer')
  req.close(constants.NGHTTP2_CANCEL)
  t.ok(await eventually(() => server.recorder.records[0]!.closes.length === 1), 'the writer was closed')
  t.same(server.recorder.reasons(), ['cancel'])
  const data = bytes(10_000, 13)
  const after = await send(session, { ':method': 'POST', ':path': '/raw', 'content-type': 'application/octet-stream', 'content-length': data.length }, data)
  t.same(after.json, { files: [{ name: '', bytes: data.length, sha256: sha256(data) }] }, 'the session carries the next upload')
  server.recorder.check(t)
})

/** Turns of the event loop (setImmediate, left alone by the fake clock) until `fn` holds; bounded. */
async function turnsUntil (fn: () => boolean, turns = 1_000_000): Promise<boolean> {
  for (let i = 0; i < turns && !fn(); i++) await new Promise((resolve) => setImmediate(resolve))
  return fn()
}

t.test('h2c: a client silent for chunkTimeout gets 408, then its stream is reset with NO_ERROR; the session goes on', async (t) => {
  const chunkTimeout = 2000
  const server = await startServer(t, FLAVORS[0]!, chunkTimeout)
  const session = await openSession(server)
  const clock = FakeTimers.install({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] })
  try {
    let stalled!: ClientHttp2Stream
    // An empty body of its own: the client writes 100 kB by hand, then nothing.
    const answer = send(session, { ':method': 'POST', ':path': '/raw', 'content-type': 'application/octet-stream', 'content-length': FILE_LIMIT }, Buffer.alloc(0), 0, (req) => {
      stalled = req
      req.write(bytes(100_000, 14))
    })
    t.ok(await turnsUntil(() => server.recorder.records[0]?.bytes === 100_000), 'the first bytes reached the writer, then the client fell silent')
    await clock.tickAsync(chunkTimeout + 1)
    const timedOut = await answer
    checkRefused(t, timedOut, 408, 'silent past chunkTimeout')
    t.equal(timedOut.json.code, 'FST_CHUNKED_UPLOAD_CHUNK_TIMEOUT')
    t.ok(stalled.closed, 'the client stream is closed')
  } finally {
    clock.uninstall()
  }
  const data = bytes(10_000, 15)
  const after = await send(session, { ':method': 'POST', ':path': '/raw', 'content-type': 'application/octet-stream', 'content-length': data.length }, data)
  t.equal(after.status, 200, 'the session carries the next upload')
  t.equal(server.recorder.records[0]!.closes.length, 1)
  server.recorder.check(t)
})

t.test('h2c: a resumable append silent for chunkTimeout gets 408 with the offset kept, then its stream is reset with NO_ERROR; the upload and the session go on', async (t) => {
  const chunkTimeout = 2000
  const server = await startServer(t, FLAVORS[0]!, chunkTimeout)
  const session = await openSession(server)
  const data = bytes(200_000, 16)
  const created = await send(session, tus('/files/tus', { 'upload-length': data.length }), undefined)
  const location = String(created.headers.location)
  const patch = (offset: number, more: OutgoingHttpHeaders = {}): OutgoingHttpHeaders =>
    tus(location, { ':method': 'PATCH', 'upload-offset': offset, 'content-type': 'application/offset+octet-stream', ...more })
  const clock = FakeTimers.install({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date'] })
  try {
    let answered = false
    // An empty body of its own: the client writes 100 kB by hand, then nothing.
    const answer = send(session, patch(0), Buffer.alloc(0), 0, (req) => {
      req.once('response', () => { answered = true })
      req.write(data.subarray(0, 100_000))
    })
    t.ok(await turnsUntil(() => server.recorder.records[0]?.bytes === 100_000), 'the first bytes reached the writer, then the client fell silent')
    await clock.tickAsync(chunkTimeout + 1)
    // Bounded in real time: a stream left unanswered (or reset bare) fails here rather than hanging.
    if (!await eventually(() => answered, STREAM_END_MS)) return t.fail('the timed-out append got no answer')
    const timedOut = await answer
    checkRefused(t, timedOut, 408, 'an append silent past chunkTimeout')
    t.equal(timedOut.json.code, 'FST_CHUNKED_UPLOAD_CHUNK_TIMEOUT')
    t.equal(timedOut.headers['upload-offset'], '100000', 'the answer says what was kept')
  } finally {
    clock.uninstall()
  }
  const head = await send(session, tus(location, { ':method': 'HEAD' }), undefined)
  t.equal(head.headers['upload-offset'], '100000', 'the upload kept what its writer accepted')
  const rest = await send(session, patch(100_000, { 'content-length': 100_000 }), data.subarray(100_000))
  t.equal(rest.status, 204, 'the client resumes on the same session')
  t.equal(rest.headers['upload-offset'], String(data.length))
  t.equal(server.recorder.records.length, 1, 'one writer throughout')
  t.same(server.recorder.reasons(), ['done'], 'closed once, done')
  t.equal(server.recorder.records[0]!.hash.copy().digest('hex'), sha256(data), 'byte-identical')
  server.recorder.check(t)
})

t.test('HTTP/1.1 on the allowHTTP1 server: a refused large body still closes its connection after the answer', async (t) => {
  const server = await startServer(t, FLAVORS[1]!)
  const answer = await new Promise<{ status: number, connection: string | undefined, body: string }>((resolve, reject) => {
    const req = httpsRequest(`${server.url}/raw`, {
      method: 'POST', ca: cert, agent: false, headers: { 'content-type': 'application/octet-stream', 'content-length': HUGE }
    }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode!, connection: res.headers.connection, body }))
    })
    req.on('error', reject)
    // More than the lingering drain reads: the connection cannot be reused.
    req.write(Buffer.alloc(5 * 1024 * 1024))
  })
  t.equal(answer.status, 413)
  t.equal(answer.connection, 'close', 'HTTP/1.1 answers as before: Connection: close')
  t.same(warnings, [])
})
