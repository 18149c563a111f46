// The demo app (`npm run demo`), run as a user runs it: `node examples/demo.js` in a
// child process, spoken to over HTTP and over its WebSocket channels (with the client
// library from dist/, as the page uses it), and its page in headless Chromium at a
// phone's width. It loads the built package: build first.
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { WebSocket } from 'ws'
import { openDemo, type TestFile } from './kit/browser.js'
import { startDemo } from './kit/client-kit.js'
import { eventually, strayFiles } from './kit/index.js'

/** The client library as the package exports it (dist/client/index.js), which the page loads too. */
const CLIENT = 'fastify-chunked-upload/client'
const { upload } = await import(CLIENT) as typeof import('../client/index.js')

function sha256 (data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

function form (field: string, files: Array<{ name: string, type: string, data: Buffer }>, fields: Record<string, string> = {}): FormData {
  const body = new FormData()
  for (const [name, value] of Object.entries(fields)) body.append(name, value)
  for (const file of files) body.append(field, new Blob([file.data], { type: file.type }), file.name)
  return body
}

/**
 * The same form, encoded up front. On a request it fails, the server answers as soon as
 * it knows (413) and closes without reading the rest of the body: a client still
 * writing its body then sometimes gets EPIPE instead of the answer. Sent as one
 * buffer, the body is on the wire before the server answers.
 */
async function encoded (body: FormData): Promise<{ body: Buffer, headers: Record<string, string> }> {
  const request = new Request('http://127.0.0.1/', { method: 'POST', body })
  return { body: Buffer.from(await request.arrayBuffer()), headers: { 'content-type': request.headers.get('content-type')! } }
}

const tmp = await mkdtemp(join(tmpdir(), 'fcu-demo-'))
t.teardown(() => rm(tmp, { recursive: true, force: true }))
const { url, logs, until: waitFor } = await startDemo(t, tmp)

t.test('GET / serves the page with its two upload forms, the transport switch, the client library and the Uppy bundle', async (t) => {
  const response = await fetch(url)
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), /^text\/html/)
  const html = await response.text()
  t.match(html, /<form id="files-form" action="\/upload\/files"/)
  t.match(html, /<input type="file" name="files" multiple/)
  t.match(html, /<form id="echo-form" action="\/upload\/echo"/)
  t.match(html, /<input type="file" name="echo" multiple/)
  t.match(html, /<input type="radio" name="transport" value="websocket" checked>/)
  t.match(html, /<input type="radio" name="transport" value="http">/)
  t.match(html, /<input type="radio" name="transport" value="resumable">/)
  const assets = [['/app.js', /^text\/javascript/], ['/style.css', /^text\/css/], ['/client.js', /^text\/javascript/], ['/resumable.js', /^text\/javascript/], ['/uppy.js', /^text\/javascript/]] as const
  for (const [path, type] of assets) {
    const asset = await fetch(`${url}${path}`)
    t.equal(asset.status, 200, path)
    t.match(asset.headers.get('content-type'), type, `${path} content type`)
    const text = await asset.text()
    if (path === '/app.js') t.match(text, /^import \{ upload \} from '\/client\.js'$/m, 'the page uses the client library')
    if (path === '/resumable.js') t.match(text, /^import \{ Tus, Uppy \} from '\/uppy\.js'$/m, 'the resumable mode uses the bundle')
    if (path === '/uppy.js') {
      t.match(text, /^export \{[^}]*\bTus\b[^}]*\bUppy\b[^}]*\}/m, '@uppy/core and @uppy/tus, bundled by esbuild')
      t.notMatch(text, /^\s*import\b/m, 'with nothing left to import')
    }
    if (path === '/client.js') {
      t.match(text, /^export async function upload ?\(/m, 'the built client library')
      t.notMatch(text, /^\s*import\b/m, 'which imports nothing, so a browser loads it as is')
    }
  }
})

t.test('over the channel: files land on the socket, their refs are submitted, the handler hashes them', async (t) => {
  const text = Buffer.from('hello over the channel\n')
  const image = randomBytes(300_000)
  const files = [new File([text], 'hello.txt', { type: 'text/plain' }), new File([image], 'photo.png', { type: 'image/png' }), new File([randomBytes(10)], 'report.pdf', { type: 'application/pdf' })]
  const done: string[] = []
  const result = await upload(`${url}/upload/files`, files, {
    uploadName: 'files', WebSocket, submit: true, fields: { note: 'by socket' }, onProgress: (file, p) => { if (p.status === 'done') done.push(file.name) }
  })
  t.match(result.files, [
    { name: 'hello.txt', ok: true, ref: String },
    { name: 'photo.png', ok: true, ref: String },
    { name: 'report.pdf', ok: false, code: 'not_accepted' }
  ])
  t.same(done.sort(), ['hello.txt', 'photo.png'])
  t.equal(result.status, 200)
  t.same(result.response, {
    note: 'by socket',
    files: [
      { name: 'hello.txt', type: 'text/plain', size: text.length, sha256: sha256(text) },
      { name: 'photo.png', type: 'image/png', size: image.length, sha256: sha256(image) }
    ],
    errors: []
  })
  t.ok(await waitFor('the upgrade in the log', () => logs().some((line) => line.req?.url === '/upload/files/ws')), 'the upgrade went to the route\'s channel')
})

t.test('over the channel, with ?slow=1: EchoWriter takes its time, and a cancel closes it with cancel', async (t) => {
  const big = new File([randomBytes(3_000_000)], 'slow.bin')
  const small = new File([Buffer.from('quick')], 'quick.txt', { type: 'text/plain' })
  const cancel = new AbortController()
  const result = await upload(`${url}/upload/echo?slow=1`, [{ file: big, signal: cancel.signal }, small], {
    uploadName: 'echo', WebSocket, submit: true, onProgress: (file, p) => { if (file === big && p.progress >= 10) cancel.abort() }
  })
  t.match(result.files, [{ name: 'slow.bin', ok: false, code: 'cancelled' }, { name: 'quick.txt', ok: true }])
  t.match(result.response, { files: [{ name: 'quick.txt', total: 5, chunks: 1 }] })
  const closed = await waitFor('the close log line', () => logs().find((line) => line.msg === 'echo writer: closed' && line.file === 'slow.bin'))
  t.equal(closed.reason, 'cancel', 'the cancelled entry\'s writer is closed with cancel')
  t.ok(closed.chunks! >= 4, 'it got chunks first')
  const delays = logs().filter((line) => line.msg === 'echo writer: chunk' && line.file === 'slow.bin').map((line) => line.delay)
  t.same(new Set(delays), new Set([25]), 'the writer waited 25 ms on each chunk (?slow=1 reached it)')
})

/** The tus 1.0 headers of a creation: length and metadata (base64 values). */
function tusCreation (length: number, metadata: Record<string, string>): Record<string, string> {
  return {
    'tus-resumable': '1.0.0',
    'upload-length': String(length),
    'upload-metadata': Object.entries(metadata).map(([key, value]) => `${key} ${Buffer.from(value).toString('base64')}`).join(',')
  }
}

async function tusPatch (uploadUrl: string, offset: number, data: Buffer): Promise<Response> {
  return await fetch(uploadUrl, {
    method: 'PATCH',
    headers: { 'tus-resumable': '1.0.0', 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' },
    body: data
  })
}

t.test('the resumable endpoint (tus): a file in two PATCHes, its upload URL submitted, the handler hashes the stored file', async (t) => {
  const image = randomBytes(300_000)
  const created = await fetch(`${url}/upload/files/tus`, { method: 'POST', headers: tusCreation(image.length, { filename: 'tus.png', filetype: 'image/png' }) })
  t.equal(created.status, 201)
  const uploadUrl = new URL(created.headers.get('location')!, url).href
  t.match(uploadUrl, /\/upload\/files\/tus\/[0-9a-f-]{36}$/)
  const first = await tusPatch(uploadUrl, 0, image.subarray(0, 100_000))
  t.equal(first.status, 204)
  t.equal(first.headers.get('upload-offset'), '100000')
  const head = await fetch(uploadUrl, { method: 'HEAD', headers: { 'tus-resumable': '1.0.0' } })
  t.equal(head.headers.get('upload-offset'), '100000', 'the server says where to go on')
  t.equal((await tusPatch(uploadUrl, 100_000, image.subarray(100_000))).headers.get('upload-offset'), String(image.length))

  const refused = await fetch(`${url}/upload/files/tus`, { method: 'POST', headers: tusCreation(10, { filename: 'report.pdf', filetype: 'application/pdf' }) })
  t.equal(refused.status, 415, 'the route\'s accept rule applies at creation')
  t.match(await refused.json(), { code: 'FST_CHUNKED_UPLOAD_NOT_ACCEPTED' })

  const response = await fetch(`${url}/upload/files`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ note: 'by tus', files: [uploadUrl] }) })
  t.equal(response.status, 200)
  t.same(await response.json(), {
    note: 'by tus',
    files: [{ name: 'tus.png', type: 'image/png', size: image.length, sha256: sha256(image) }],
    errors: []
  })
  const gone = await fetch(uploadUrl, { method: 'HEAD', headers: { 'tus-resumable': '1.0.0' } })
  t.equal(gone.status, 410, 'consumed: the upload URL is gone')
})

t.test('the resumable endpoint with ?slow=1: EchoWriter takes its time, and a tus DELETE closes it with cancel', async (t) => {
  const data = randomBytes(200_000)
  const created = await fetch(`${url}/upload/echo/tus?slow=1`, { method: 'POST', headers: tusCreation(1_000_000, { filename: 'deleted.bin' }) })
  t.equal(created.status, 201)
  const uploadUrl = new URL(created.headers.get('location')!, url).href
  t.equal((await tusPatch(uploadUrl, 0, data)).status, 204)
  const deleted = await fetch(uploadUrl, { method: 'DELETE', headers: { 'tus-resumable': '1.0.0' } })
  t.equal(deleted.status, 204)
  const closed = await waitFor('the close log line', () => logs().find((line) => line.msg === 'echo writer: closed' && line.file === 'deleted.bin'))
  // The log is in order: every chunk line came before the close line.
  const delays = logs().filter((line) => line.msg === 'echo writer: chunk' && line.file === 'deleted.bin').map((line) => line.delay)
  t.ok(delays.length >= 4, `the writer got the PATCH in chunks (${delays.length})`)
  t.same(new Set(delays), new Set([25]), 'and waited 25 ms on each (?slow=1 on the creation reached it)')
  t.match(closed, { reason: 'cancel', total: data.length, chunks: delays.length, sha256: sha256(data) }, 'closed with cancel, after what it got')
})

t.test('the temp-file route reports name, type, size and sha256 of each file', async (t) => {
  const text = Buffer.from('hello from the demo test\n')
  const image = randomBytes(300_000)
  const response = await fetch(`${url}/upload/files`, {
    method: 'POST',
    body: form('files', [{ name: 'hello.txt', type: 'text/plain', data: text }, { name: 'photo.png', type: 'image/png', data: image }], { note: 'two files' })
  })
  t.equal(response.status, 200)
  t.same(await response.json(), {
    note: 'two files',
    files: [
      { name: 'hello.txt', type: 'text/plain', size: text.length, sha256: sha256(text) },
      { name: 'photo.png', type: 'image/png', size: image.length, sha256: sha256(image) }
    ],
    errors: []
  })
})

t.test('the temp-file route lists refused files next to the stored ones', async (t) => {
  const text = Buffer.from('kept')
  const response = await fetch(`${url}/upload/files`, {
    method: 'POST',
    body: form('files', [
      { name: 'report.pdf', type: 'application/pdf', data: randomBytes(1000) },
      { name: 'kept.txt', type: 'text/plain', data: text }
    ])
  })
  t.equal(response.status, 200)
  const result = await response.json() as { files: unknown[], errors: Array<{ uploadName: string, clientName: string, code: string }> }
  t.same(result.files, [{ name: 'kept.txt', type: 'text/plain', size: 4, sha256: sha256(text) }])
  t.match(result.errors, [{ uploadName: 'files', clientName: 'report.pdf', code: 'not_accepted' }])
  t.equal(result.errors.length, 1)
})

t.test('the temp-file route lists an oversize file next to the stored ones', async (t) => {
  const text = Buffer.from('kept')
  const response = await fetch(`${url}/upload/files`, {
    method: 'POST',
    body: form('files', [
      { name: 'huge.png', type: 'image/png', data: randomBytes(2_000_001) },
      { name: 'kept.txt', type: 'text/plain', data: text }
    ])
  })
  t.equal(response.status, 200)
  const result = await response.json() as { files: unknown[], errors: unknown[] }
  t.same(result.files, [{ name: 'kept.txt', type: 'text/plain', size: 4, sha256: sha256(text) }])
  t.match(result.errors, [{ clientName: 'huge.png', code: 'too_large' }])
})

t.test('the echo route counts the bytes and logs every chunk', async (t) => {
  const a = randomBytes(200_000)
  const b = Buffer.from('tiny')
  const response = await fetch(`${url}/upload/echo`, {
    method: 'POST',
    body: form('echo', [{ name: 'a.bin', type: 'application/octet-stream', data: a }, { name: 'b.txt', type: 'text/plain', data: b }])
  })
  t.equal(response.status, 200)
  const result = await response.json() as { files: Array<{ name: string, type: string, total: number, chunks: number }>, errors: unknown[] }
  t.match(result, {
    files: [
      { name: 'a.bin', type: 'application/octet-stream', total: a.length, sha256: sha256(a) },
      { name: 'b.txt', type: 'text/plain', total: 4, chunks: 1, sha256: sha256(b) }
    ],
    errors: []
  })
  t.ok(result.files[0]!.chunks >= Math.ceil(a.length / 64_000), 'no chunk exceeds the default chunkSize')

  const closed = await waitFor('the close log line', () => logs().find((line) => line.msg === 'echo writer: closed' && line.file === 'a.bin'))
  t.match(closed, { total: a.length, chunks: result.files[0]!.chunks, reason: 'done', sha256: sha256(a) })
  const chunks = logs().filter((line) => line.msg === 'echo writer: chunk' && line.file === 'a.bin')
  t.equal(chunks.length, result.files[0]!.chunks, 'one log line per chunk')
  t.equal(chunks.reduce((sum, line) => sum + line.size!, 0), a.length, 'the logged chunk sizes add up')
})

t.test('the echo route answers an oversize file with the coded error', async (t) => {
  const files = [{ name: 'ok.txt', type: 'text/plain', data: Buffer.from('fine') }, { name: 'huge.bin', type: 'application/octet-stream', data: randomBytes(10_000_001) }]
  const response = await fetch(`${url}/upload/echo`, { method: 'POST', ...await encoded(form('echo', files)) })
  t.equal(response.status, 413)
  t.same(await response.json(), {
    statusCode: 413,
    code: 'FST_CHUNKED_UPLOAD_TOO_LARGE',
    error: 'Payload Too Large',
    message: 'File "huge.bin" for "echo" exceeds the size limit of 10000000 bytes'
  })
  const closed = await waitFor('the close log line', () => logs().find((line) => line.msg === 'echo writer: closed' && line.file === 'huge.bin'))
  t.equal(closed.reason, 'cancel', 'the oversize entry\'s writer is closed with cancel')
})

t.test('the echo route refuses a sixth file', async (t) => {
  const files = Array.from({ length: 6 }, (_, i) => ({ name: `f${i}.txt`, type: 'text/plain', data: Buffer.from(`file ${i}`) }))
  const response = await fetch(`${url}/upload/echo`, { method: 'POST', ...await encoded(form('echo', files)) })
  t.equal(response.status, 413)
  t.match(await response.json(), { statusCode: 413, code: 'FST_CHUNKED_UPLOAD_TOO_MANY_FILES' })
})

t.test('the demo leaves no temp file behind and still answers', async (t) => {
  const response = await fetch(url)
  t.equal(response.status, 200)
  await response.text()
  t.ok(await eventually(async () => (await strayFiles(tmp)).length === 0), 'every temp file was removed')
  t.same(await strayFiles(tmp), [])
})

/** A phone's width, in CSS pixels. */
const PHONE_WIDTH = 420

t.test(`the page at a phone's width (${PHONE_WIDTH} px): names visible, nothing wider than its card, a refused file not shown as done`, async (t) => {
  const { page, pageErrors, consoleErrors, chooseFiles, tableRows, waitForStatus } = await openDemo(t, 'demo-phone')
  await page.setViewportSize({ width: PHONE_WIDTH, height: 900 })
  const photo: TestFile = { name: 'a-rather-long-holiday-photo-name.png', mimeType: 'image/png', buffer: randomBytes(300_000) }
  const refused: TestFile = { name: 'report.pdf', mimeType: 'application/pdf', buffer: randomBytes(1000) }
  const note: TestFile = { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('twenty bytes of text') }

  // Over HTTP the request succeeds, so the client library says every file is done: the
  // page must take the refusal from the handler's answer.
  await page.check('input[name="transport"][value="http"]')
  await chooseFiles('#files-form input[type="file"]', [photo, refused, note])
  await page.click('#files-form button[type="submit"]')
  t.equal(await waitForStatus('section:has(#files-form)', /stored/), '2 stored, 1 not.')
  t.same((await tableRows('section:has(#files-form)')).map((row) => [row[0], row[3]]), [
    [photo.name, sha256(photo.buffer)], [note.name, sha256(note.buffer)], [refused.name, 'not_accepted: type not accepted']
  ])
  const line = (name: string): ReturnType<typeof page.locator> => page.locator(`#files-form + ul li[data-name="${name}"]`)
  t.equal(await line(refused.name).getAttribute('data-status'), 'failed', 'the refused file is failed, not done')
  t.equal(await line(refused.name).locator('.state').textContent(), 'not_accepted: type not accepted')
  t.not(await line(refused.name).locator('.percent').textContent(), '100 %', 'and not at 100 %')
  t.equal(await line(refused.name).locator('progress').evaluate((bar) => (bar as unknown as { value: number }).value), 0, 'its bar is empty: nothing was stored')
  const colorOf = async (name: string): Promise<string> => await line(name).locator('.state').evaluate((node) => (globalThis as any).getComputedStyle(node).color)
  t.not(await colorOf(refused.name), await colorOf(note.name), 'nor in the colour of a done file')
  for (const file of [photo, note]) t.equal(await line(file.name).getAttribute('data-status'), 'done', `${file.name}: done`)

  // One file over the channel to the echo form: its summary counts one file.
  await page.check('input[name="transport"][value="websocket"]')
  await page.uncheck('#echo-form input[name="slow"]')
  await chooseFiles('#echo-form input[type="file"]', [note])
  await page.click('#echo-form button[type="submit"]')
  t.match(await waitForStatus('section:has(#echo-form)', /echoed/), /^1 file, 20 B echoed/)

  for (const file of [photo, refused, note]) {
    const name = line(file.name).locator('.name')
    t.ok(await name.isVisible(), `${file.name}: its name is visible`)
    const box = (await name.boundingBox())!
    t.ok(box.width >= 80, `${file.name}: with room to read it (${box.width} px)`)
  }
  // Every element of each card lies within the card, and the page does not scroll sideways.
  const overflowing = await page.evaluate(() => {
    const { document } = globalThis as any
    const found: string[] = []
    for (const card of document.querySelectorAll('section')) {
      const outer = card.getBoundingClientRect()
      for (const node of card.querySelectorAll('*')) {
        const box = node.getBoundingClientRect()
        if (box.width === 0 && box.height === 0) continue // not laid out (a hidden table)
        if (box.left < outer.left - 0.5 || box.right > outer.right + 0.5) {
          const where = [node.tagName.toLowerCase(), node.className, node.closest('li')?.dataset.name].filter(Boolean).join(' ')
          found.push(`${where}: ${Math.round(box.left)}–${Math.round(box.right)} outside ${Math.round(outer.left)}–${Math.round(outer.right)}`)
        }
      }
    }
    return found
  })
  t.same(overflowing, [], 'nothing overflows its card')
  t.ok(await page.evaluate(() => (globalThis as any).document.documentElement.scrollWidth <= (globalThis as any).innerWidth), 'no sideways scrolling')
  t.same([...pageErrors, ...consoleErrors], [], 'the page raised no error')
})
