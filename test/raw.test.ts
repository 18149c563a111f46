// Raw bodies: one entry per request, named by the route or the `upload` query parameter.
import t from 'tap'
import { setImmediate } from 'node:timers/promises'
import { Recorder, bytes, rawRequest, rawSocket, sha256, startApp, stillServes } from './kit/index.js'
import { fakeClock } from './kit/clock.js'

t.test('a raw body is one entry: filename, type and size from the headers', async (t) => {
  const recorder = new Recorder()
  const seen: unknown[] = []
  const { url } = await startApp(t, (app) => {
    app.put('/one', { allowUpload: { photo: { accept: ['image/*'], writer: recorder.factory } } }, async (request) => {
      return await request.uploads.consume('photo', (meta: { sha256: string }, entry) => {
        seen.push({ name: entry.clientName, type: entry.clientType, size: entry.clientSize, progress: entry.progress })
        return meta.sha256
      })
    })
  })
  const data = bytes(333_333)
  const response = await fetch(`${url}/one`, {
    method: 'PUT',
    body: data,
    headers: { 'content-type': 'image/png; charset=binary', 'content-disposition': 'attachment; filename="../x.png"; filename*=UTF-8\'\'%E2%82%AC%20rates.png' }
  })
  t.equal(response.status, 200)
  t.same(await response.json(), [sha256(data)])
  t.same(seen, [{ name: '€ rates.png', type: 'image/png', size: 333_333, progress: 100 }])
  recorder.check(t)
})

t.test('several upload names: the query parameter picks one', async (t) => {
  const recorder = new Recorder()
  const { url } = await startApp(t, (app) => {
    app.post('/two', { allowUpload: { a: { accept: 'any', writer: recorder.factory }, b: { accept: 'any', writer: recorder.factory } } }, async (request) => {
      return { a: request.uploads.entries('a').completed.length, b: request.uploads.entries('b').completed.length }
    })
  })
  const post = (query: string): Promise<Response> => fetch(`${url}/two${query}`, { method: 'POST', body: 'data', headers: { 'content-type': 'application/octet-stream' } })
  const picked = await post('?upload=b')
  t.same(await picked.json(), { a: 0, b: 1 })
  const none = await post('')
  t.equal(none.status, 400)
  t.equal((await none.json() as { code: string }).code, 'FST_CHUNKED_UPLOAD_NO_UPLOAD_NAME')
  const unknown = await post('?upload=zzz')
  t.equal(unknown.status, 400)
  t.equal((await unknown.json() as { code: string }).code, 'FST_CHUNKED_UPLOAD_UNEXPECTED_FILE')
  recorder.check(t)
  await stillServes(t, url)
})

t.test('an unreadable Content-Disposition leaves the name empty', async (t) => {
  const names: string[] = []
  const { url } = await startApp(t, (app) => {
    app.post('/n', { allowUpload: { f: { accept: 'any', writer: new Recorder().factory } } }, async (request) => {
      names.push(...request.uploads.entries('f').completed.map((e) => e.clientName))
      return 'ok'
    })
  })
  await fetch(`${url}/n`, { method: 'POST', body: 'x', headers: { 'content-type': 'application/octet-stream', 'content-disposition': 'attachment; filename=' } })
  await fetch(`${url}/n`, { method: 'POST', body: 'x', headers: { 'content-type': 'application/octet-stream', 'content-disposition': 'attachment; filename=".."' } })
  t.same(names, ['', ''])
})

t.test('client abort mid raw body: cancel at once (no timer involved), and the server carries on', async (t) => {
  // The clock stands still: the cancel can only come from the socket's close, not from a timeout.
  fakeClock(t)
  const recorder = new Recorder()
  const { url, port } = await startApp(t, (app) => {
    app.post('/raw', { allowUpload: { f: { accept: 'any', maxFileSize: 10_000_000, writer: recorder.factory } } }, async () => 'ok')
  })
  const socket = await rawSocket(port)
  socket.write('POST /raw HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n')
  socket.write(bytes(100_000))
  await recorder.until('bytes to reach the writer', () => (recorder.records[0]?.bytes ?? 0) > 0)
  socket.destroy()
  await recorder.until('the writer to close', () => recorder.records[0]!.closes.length === 1)
  t.same(recorder.reasons(), ['cancel'])
  recorder.check(t)
  await stillServes(t, url)
})

t.test("onEntryError 'continue' on a raw body: the handler reads the error", async (t) => {
  const recorder = new Recorder({ throwOnChunk: 1 })
  const { url } = await startApp(t, (app) => {
    app.post('/c', { allowUpload: { f: { accept: ['.txt'], maxFileSize: 10, onEntryError: 'continue', writer: recorder.factory } } }, async (request) => {
      return request.uploads.errors('f').map((e) => e.code)
    })
  })
  const send = (name: string, body: string): Promise<Response> => fetch(`${url}/c`, {
    method: 'POST', body, headers: { 'content-type': 'application/octet-stream', 'content-disposition': `attachment; filename="${name}"` }
  })
  const tooLarge = await send('a.txt', 'x'.repeat(50))
  t.equal(tooLarge.status, 200)
  t.same(await tooLarge.json(), ['too_large'])
  t.not(tooLarge.headers.get('connection'), 'close', 'the small refused body was drained: the connection stays usable')
  t.same(await (await send('a.png', 'x')).json(), ['not_accepted'])
  t.same(await (await send('a.txt', 'xyz')).json(), ['writer_failure'])
  t.same(recorder.reasons(), ['error'])
  recorder.check(t)
})

t.test('no Content-Type and no filename: an entry with empty type and name', async (t) => {
  const seen: unknown[] = []
  const { port } = await startApp(t, (app) => {
    app.post('/bare', { allowUpload: { f: { accept: 'any', writer: new Recorder().factory } } }, async (request) => {
      seen.push(...request.uploads.entries('f').completed.map((e) => [e.clientName, e.clientType, e.clientSize]))
      return 'ok'
    })
  })
  const response = await rawRequest(port, 'POST /bare HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Disposition: inline\r\nConnection: close\r\n\r\n', 'abc')
  t.equal(response?.status, 200)
  t.same(seen, [['', '', 3]])
})

t.test('a refused body larger than the drain limit is cut off with Connection: close', async (t) => {
  // The clock stands still: the drain ends by its byte limit, never by its time limit.
  fakeClock(t)
  const recorder = new Recorder()
  const { port, url } = await startApp(t, (app) => {
    app.post('/small', { allowUpload: { f: { accept: 'any', maxFileSize: 1000, writer: recorder.factory } } }, async () => 'ok')
  })
  const socket = await rawSocket(port)
  socket.write('POST /small HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 20000000\r\n\r\n')
  // Like a client that reads while it sends: it stops once the answer came. (Bytes sent
  // after the server closed would make its kernel reset the connection, and a reset
  // drops whatever the client had not read yet.)
  for (let i = 0; i < 80 && !socket.destroyed && !socket.received().includes('413'); i++) {
    await new Promise<void>((resolve) => socket.write(bytes(64 * 1024, i), () => resolve()))
    await setImmediate()
  }
  await socket.until('the 413', () => socket.received().includes('413'))
  t.pass('the client got its 413')
  t.match(socket.received(), /connection: close/i)
  socket.destroy()
  t.equal(recorder.records.length, 0)
  await stillServes(t, url)
})

t.test('the server can cancel an entry mid-upload (from a progress callback)', async (t) => {
  const recorder = new Recorder()
  const seen: number[] = []
  const { url } = await startApp(t, (app) => {
    app.put('/stop', {
      allowUpload: {
        f: {
          accept: 'any',
          chunkSize: 1000,
          writer: recorder.factory,
          progress: async (name, entry, request) => {
            if (entry.progress < 10 || entry.status !== 'uploading') return
            // A raw body's entry always has its request.
            const { uploads } = request!
            seen.push(uploads.entries(name).inProgress.length)
            await uploads.consume(name, () => 'too early').catch((error: { statusCode: number }) => seen.push(error.statusCode))
            await uploads.cancel(entry.ref)
          }
        }
      }
    }, async () => 'ran')
  })
  const response = await fetch(`${url}/stop`, { method: 'PUT', body: bytes(300_000), headers: { 'content-type': 'application/octet-stream' } })
  t.equal(response.status, 400)
  t.equal((await response.json() as { code: string }).code, 'FST_CHUNKED_UPLOAD_CANCELLED')
  t.same(seen, [1, 409], 'while uploading, the entry is in progress and cannot be consumed')
  t.same(recorder.reasons(), ['cancel'])
  recorder.check(t)
})
