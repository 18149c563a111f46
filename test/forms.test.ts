// HTML forms as browsers send them: a file input left empty is a part with
// `filename=""`, application/octet-stream and no bytes. It is no file: no entry, no
// writer, not counted toward maxEntries. A chosen empty file (a name, no bytes) is one.
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { moveFile } from '../lib/index.js'
import { Recorder, bytes, eventually, multipart, rawSocket, sha256, startApp, stillServes, strayFiles, tmpDirFor, type Part } from './kit/index.js'

const BOUNDARY = '----WebKitFormBoundary5jPtQnKYGhXScnMN'

/**
 * The body Chromium sends for README's profile form (`avatar`, `docs` with `multiple`,
 * a text input `name`) with only the avatar chosen, byte for byte as captured from
 * Debian's Chromium 1xx: the empty `docs` input is a part with `filename=""`.
 */
const CHROMIUM_AVATAR_ONLY = [
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="avatar"; filename="me.png"\r\nContent-Type: image/png\r\n\r\nPNG!\r\n`,
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="docs"; filename=""\r\nContent-Type: application/octet-stream\r\n\r\n\r\n`,
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\nAda\r\n`,
  `--${BOUNDARY}--\r\n`
].join('')

/** The same form with only `docs` chosen (two files): the empty input is `avatar`. */
const CHROMIUM_DOCS_ONLY = [
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="avatar"; filename=""\r\nContent-Type: application/octet-stream\r\n\r\n\r\n`,
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="docs"; filename="a.pdf"\r\nContent-Type: application/pdf\r\n\r\n%PDF-a\r\n`,
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="docs"; filename="b.pdf"\r\nContent-Type: application/pdf\r\n\r\n%PDF-b\r\n`,
  `--${BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\nAda\r\n`,
  `--${BOUNDARY}--\r\n`
].join('')

const FORM_TYPE = `multipart/form-data; boundary=${BOUNDARY}`

t.test("README's profile form as pasted: with only one of its two file inputs chosen, the request succeeds", async (t) => {
  const dir = await tmpDirFor(t)
  const kept = await tmpDirFor(t)
  const { url } = await startApp(t, (app) => {
    // README's Usage example, unchanged but for where the avatar is kept.
    app.post('/profile', {
      allowUpload: {
        avatar: { accept: ['image/png', 'image/jpeg', 'image/webp', '.png', '.jpg'], maxFileSize: 8_000_000 },
        docs: { accept: ['application/pdf'], maxEntries: 5 }
      }
    }, async (request) => {
      const [avatar] = await request.uploads.consume('avatar', (meta: { path: string }, entry) => moveFile(meta.path, join(kept, entry.ref)))
      const docs = await request.uploads.consume('docs', (_meta, entry) => entry.clientName)
      return { avatar, docs, name: (request.body as { name?: string } | undefined)?.name }
    })
  }, { tmpDir: dir })

  const avatarOnly = await fetch(`${url}/profile`, { method: 'POST', headers: { 'content-type': FORM_TYPE }, body: CHROMIUM_AVATAR_ONLY })
  t.equal(avatarOnly.status, 200, 'only the avatar chosen: 200, not 415 for the empty docs input')
  const first = await avatarOnly.json() as { avatar: string, docs: string[], name: string }
  t.same(first.docs, [], 'no phantom doc')
  t.equal(first.name, 'Ada')
  t.ok(first.avatar.startsWith(kept), 'the avatar was kept')

  const docsOnly = await fetch(`${url}/profile`, { method: 'POST', headers: { 'content-type': FORM_TYPE }, body: CHROMIUM_DOCS_ONLY })
  t.equal(docsOnly.status, 200, 'only the docs chosen: 200, not 415 for the empty avatar input')
  t.same(await docsOnly.json(), { docs: ['a.pdf', 'b.pdf'], name: 'Ada' }, 'no avatar, both docs')
  t.same(await strayFiles(dir), [], 'no temp file left behind')
})

/** A route that reports every entry of its request and the writers it opened. */
async function reportingApp (t: Test, recorder: Recorder, maxEntries = 3, accept: 'any' | string[] = 'any'): Promise<string> {
  const { url } = await startApp(t, (app) => {
    app.post('/form', { allowUpload: { f: { accept, maxEntries, writer: recorder.factory } } }, async (request) => {
      const { completed, inProgress } = request.uploads.entries('f')
      const entries = [...completed, ...inProgress, ...request.uploads.errors()].map((entry) => ({ name: entry.clientName, status: 'status' in entry ? entry.status : 'refused' }))
      const files = await request.uploads.consume('f', (meta: { bytes: number, sha256: string }, entry) => ({ name: entry.clientName, bytes: meta.bytes, sha256: meta.sha256 }))
      return { entries, files, body: request.body }
    })
  })
  return url
}

async function post (url: string, parts: Part[]): Promise<{ status: number, json: any }> {
  const { body, contentType } = multipart(parts)
  const response = await fetch(`${url}/form`, { method: 'POST', body, headers: { 'content-type': contentType } })
  return { status: response.status, json: await response.json() }
}

const EMPTY_INPUT: Part = { name: 'f', filename: '', type: 'application/octet-stream', data: '' }

t.test('an empty file input makes no entry and opens no writer', async (t) => {
  const recorder = new Recorder()
  const url = await reportingApp(t, recorder)
  const { status, json } = await post(url, [EMPTY_INPUT, { name: 'note', data: 'hi' }])
  t.equal(status, 200)
  t.same(json, { entries: [], files: [], body: { note: 'hi' } }, 'no phantom entry with an empty name')
  t.equal(recorder.records.length, 0, 'no writer was created')
  await stillServes(t, url)
})

t.test('a part with neither a file name nor bytes (octet-stream, no filename) is no file either', async (t) => {
  const recorder = new Recorder()
  const url = await reportingApp(t, recorder)
  const { status, json } = await post(url, [{ name: 'f', type: 'application/octet-stream', data: '' }])
  t.equal(status, 200)
  t.same(json.entries, [])
  t.equal(recorder.records.length, 0)
})

t.test('empty file inputs do not count toward maxEntries', async (t) => {
  const recorder = new Recorder()
  const url = await reportingApp(t, recorder, 1)
  const data = bytes(5000, 3)
  const { status, json } = await post(url, [EMPTY_INPUT, EMPTY_INPUT, { name: 'f', filename: 'real.bin', data }, EMPTY_INPUT])
  t.equal(status, 200, 'the one real file fits maxEntries: 1')
  t.same(json.files, [{ name: 'real.bin', bytes: 5000, sha256: sha256(data) }])
  t.same(json.entries, [{ name: 'real.bin', status: 'done' }])
  t.same(recorder.reasons(), ['done'])
  recorder.check(t)
})

t.test('a chosen empty file (a name, no bytes) stays an entry', async (t) => {
  const recorder = new Recorder()
  const url = await reportingApp(t, recorder)
  const { status, json } = await post(url, [{ name: 'f', filename: 'empty.txt', type: 'text/plain', data: '' }, EMPTY_INPUT])
  t.equal(status, 200)
  t.same(json.files, [{ name: 'empty.txt', bytes: 0, sha256: sha256(Buffer.alloc(0)) }])
  t.same(recorder.reasons(), ['done'], 'its writer was opened and closed with done')
  recorder.check(t)
})

t.test('a part without a file name but with bytes is a file: every byte reaches its writer', async (t) => {
  const recorder = new Recorder()
  const url = await reportingApp(t, recorder)
  const data = bytes(300_001, 4)
  const { status, json } = await post(url, [{ name: 'f', filename: '', type: 'application/octet-stream', data }])
  t.equal(status, 200)
  t.same(json.files, [{ name: '', bytes: data.length, sha256: sha256(data) }], 'the byte that told it from an empty input was not lost')
  recorder.check(t)
})

t.test('an empty input for a name the route does not declare is no file either: no 400', async (t) => {
  const recorder = new Recorder()
  const url = await reportingApp(t, recorder)
  const { status, json } = await post(url, [{ ...EMPTY_INPUT, name: 'other' }, { name: 'f', filename: 'a.bin', data: 'abc' }])
  t.equal(status, 200)
  t.same(json.files, [{ name: 'a.bin', bytes: 3, sha256: sha256(Buffer.from('abc')) }])
})

t.test('with `accept` a list, an empty input does not fail the request with 415', async (t) => {
  const recorder = new Recorder()
  const url = await reportingApp(t, recorder, 3, ['.png'])
  const { status, json } = await post(url, [EMPTY_INPUT, { name: 'f', filename: 'a.png', type: 'image/png', data: 'png' }])
  t.equal(status, 200)
  t.same(json.entries, [{ name: 'a.png', status: 'done' }])
})

t.test('a client that leaves while the server waits to tell an empty input from a file: nothing more opened, the server still serves', async (t) => {
  const recorder = new Recorder()
  const { url, port } = await startApp(t, (app) => {
    app.post('/form', { allowUpload: { f: { accept: 'any', writer: recorder.factory } } }, async () => 'never')
  })
  const parts = [
    `--${BOUNDARY}\r\nContent-Disposition: form-data; name="f"; filename="a.bin"\r\n\r\nabc\r\n`,
    `--${BOUNDARY}\r\nContent-Disposition: form-data; name="f"; filename=""\r\nContent-Type: application/octet-stream\r\n\r\n`
  ].join('')
  const socket = await rawSocket(port)
  const closed = new Promise((resolve) => socket.once('close', resolve))
  socket.write(`POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: ${FORM_TYPE}\r\nContent-Length: 100000\r\n\r\n${parts}`)
  // The barrier: once the first part's writer closed, the second part (its head in,
  // neither its first byte nor its end) is the one the server waits on.
  t.ok(await eventually(() => recorder.records[0]?.closes.length === 1), 'the first file was received')
  socket.destroy()
  await closed
  t.ok(await eventually(() => recorder.records.every((record) => record.closes.length === 1)), 'every writer closed')
  t.equal(recorder.records.length, 1, 'no writer was opened for the unfinished part')
  recorder.check(t)
  await stillServes(t, url)
})
