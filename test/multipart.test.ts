import t from 'tap'
import { Recorder, bytes, multipart, sha256, startApp, stillServes, strayFiles, tmpDirFor } from './kit/index.js'

t.test('files stream to their writers, text fields become the body', async (t) => {
  const recorder = new Recorder()
  const { url } = await startApp(t, (app) => {
    app.post('/form', { allowUpload: { docs: { accept: ['.bin'], maxEntries: 3, writer: recorder.factory } } }, async (request) => {
      const files = await request.uploads.consume('docs', (meta: { bytes: number, sha256: string }, entry) => ({ name: entry.clientName, ...meta, status: entry.status, progress: entry.progress }))
      return { body: request.body, files: files.map(({ name, bytes, sha256 }) => ({ name, bytes, sha256 })) }
    })
  })
  const a = bytes(100_003, 1)
  const b = bytes(1, 2)
  const { body, contentType } = multipart([
    { name: 'title', data: 'hello' },
    { name: 'docs', filename: 'a.bin', type: 'application/octet-stream', data: a },
    { name: 'tag', data: 'x' },
    { name: 'tag', data: 'y' },
    { name: 'tag', data: 'z' },
    { name: 'docs', filename: 'b.BIN', data: b }
  ])
  const response = await fetch(`${url}/form`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.equal(response.status, 200)
  t.same(await response.json(), {
    body: { title: 'hello', tag: ['x', 'y', 'z'] },
    files: [{ name: 'a.bin', bytes: a.length, sha256: sha256(a) }, { name: 'b.BIN', bytes: 1, sha256: sha256(b) }]
  })
  t.same(recorder.reasons(), ['done', 'done'])
  t.ok(recorder.records[0]!.chunks.every((size) => size <= 64_000), 'no chunk exceeds chunkSize')
  recorder.check(t)
  await stillServes(t, url)
})

t.test('the default temp-file writer leaves no file behind', async (t) => {
  const dir = await tmpDirFor(t)
  const { url } = await startApp(t, (app) => {
    app.post('/tmp', { allowUpload: { f: { accept: 'any' } } }, async (request) => {
      const [meta] = await request.uploads.consume('f', (meta: { path: string, size: number }) => meta)
      return meta
    })
  }, { tmpDir: dir })
  const { body, contentType } = multipart([{ name: 'f', filename: 'x', data: bytes(70_000) }])
  const response = await fetch(`${url}/tmp`, { method: 'POST', body, headers: { 'content-type': contentType } })
  const meta = await response.json() as { path: string, size: number }
  t.equal(meta.size, 70_000)
  t.ok(meta.path.startsWith(dir))
  t.same(await strayFiles(dir), [])
})

t.test('a text field over maxFieldSize: 413', async (t) => {
  const { url } = await startApp(t, (app) => {
    app.post('/f', { allowUpload: { f: { accept: 'any' } } }, async () => 'ok')
  }, { maxFieldSize: 10 })
  const { body, contentType } = multipart([{ name: 'note', data: 'x'.repeat(100) }])
  const response = await fetch(`${url}/f`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.equal(response.status, 413)
  t.equal((await response.json() as { code: string }).code, 'FST_CHUNKED_UPLOAD_FIELD_TOO_LARGE')
})
