// The demo app (`npm run demo`), run as a user runs it: `node examples/demo.js` in a
// child process, spoken to over HTTP. It loads the built plugin (dist/): build first.
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'

interface LogLine { msg?: string, url?: string, file?: string, size?: number, total?: number, chunks?: number, reason?: string }
interface Demo { url: string, logs: () => LogLine[] }

function sha256 (data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

async function waitFor<T> (what: string, fn: () => T | undefined, ms = 15_000): Promise<T> {
  const until = Date.now() + ms
  for (;;) {
    const value = fn()
    if (value !== undefined) return value
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

async function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000)
  await exited
  clearTimeout(timer)
}

/** Starts the demo on a free port, with its own temp directory; stopped at teardown. */
async function startDemo (tmp: string): Promise<Demo> {
  const child = spawn(process.execPath, ['examples/demo.js'], {
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', TMPDIR: tmp },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => stop(child))
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (text: string) => { stdout += text })
  child.stderr!.setEncoding('utf8').on('data', (text: string) => { stderr += text })
  const logs = (): LogLine[] => stdout.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as LogLine)
  const url = await waitFor('the demo to print its URL', () => {
    if (child.exitCode !== null) throw new Error(`the demo exited (${child.exitCode}): ${stderr}`)
    return logs().find((line) => line.url !== undefined)?.url
  })
  return { url, logs }
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
const { url, logs } = await startDemo(tmp)

t.test('GET / serves the page with its two upload forms', async (t) => {
  const response = await fetch(url)
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), /^text\/html/)
  const html = await response.text()
  t.match(html, /<form id="files-form" action="\/upload\/files"/)
  t.match(html, /<input type="file" name="files" multiple/)
  t.match(html, /<form id="echo-form" action="\/upload\/echo"/)
  t.match(html, /<input type="file" name="echo" multiple/)
  for (const [path, type] of [['/app.js', /^text\/javascript/], ['/style.css', /^text\/css/]] as const) {
    const asset = await fetch(`${url}${path}`)
    t.equal(asset.status, 200, path)
    t.match(asset.headers.get('content-type'), type, `${path} content type`)
    await asset.arrayBuffer()
  }
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
      { name: 'a.bin', type: 'application/octet-stream', total: a.length },
      { name: 'b.txt', type: 'text/plain', total: 4, chunks: 1 }
    ],
    errors: []
  })
  t.ok(result.files[0]!.chunks >= Math.ceil(a.length / 64_000), 'no chunk exceeds the default chunkSize')

  const closed = await waitFor('the close log line', () => logs().find((line) => line.msg === 'echo writer: closed' && line.file === 'a.bin'))
  t.match(closed, { total: a.length, chunks: result.files[0]!.chunks, reason: 'done' })
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
  let left = await readdir(tmp)
  for (let i = 0; i < 50 && left.length > 0; i++) {
    await sleep(20)
    left = await readdir(tmp)
  }
  t.same(left, [], 'every temp file was removed')
})
