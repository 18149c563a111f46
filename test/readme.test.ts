// Every code block of README.md runs as pasted. Each program is a file under
// examples/readme/ that the README quotes byte for byte (checked first, so they cannot
// drift apart); each then runs as a user runs it — `node examples/readme/<name>.js`, in
// a child process, in a directory of its own, loading the built package (build first) —
// and is spoken to on 127.0.0.1 with real requests: fetch, the client library,
// tus-js-client, and Chromium for the blocks that are a page's script. What the README
// says the example does is what is asserted. The blocks that are not programs are listed
// with the reason.
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import { chromium, type Browser, type Page } from 'playwright-core'
import t, { type Test } from 'tap'
import * as tus from 'tus-js-client'
import { WebSocket } from 'ws'
import chunkedUpload from '../lib/index.js'
import { eventually, PATIENCE_MS, strayFiles } from './kit/index.js'
import { watched } from './kit/client-kit.js'
import { CHROMIUM } from './kit/system-packages.js'

/** The client library as the package exports it (dist/client/index.js), as a user imports it. */
const { upload } = await import('fastify-chunked-upload/client' as string) as typeof import('../client/index.js')

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const EXAMPLES = join(ROOT, 'examples', 'readme')
const sha256 = (data: Buffer | string): string => createHash('sha256').update(data).digest('hex')

/** A fenced code block of the README: its language, its text (with the final newline), its first line. */
interface Block { lang: string, code: string, line: number }

function codeBlocks (markdown: string): Block[] {
  const blocks: Block[] = []
  const lines = markdown.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(\S*)$/.exec(lines[i]!)
    if (open === null) continue
    const end = lines.indexOf('```', i + 1)
    blocks.push({ lang: open[1]!, code: lines.slice(i + 1, end).map((line) => `${line}\n`).join(''), line: i + 1 })
    i = end
  }
  return blocks
}

/** The README's code blocks, in order: a program's file, or why the block is not one. */
type Expected = { file: string } | { notRunnable: string, startsWith: string }
const BLOCKS: Expected[] = [
  { startsWith: 'npm install fastify-chunked-upload\n', notRunnable: 'a shell command: installing the package' },
  { startsWith: 'npm run demo ', notRunnable: 'shell commands of this repository: test/demo.test.ts runs the demo, and `npm test` runs this suite' },
  { file: 'usage.js' },
  { file: 'plugin-order.js' },
  { file: 'options.js' },
  { startsWith: 'type CloseReason = ', notRunnable: 'type declarations: the writer contract, which types/index.ts declares and the type tests check' },
  { file: 'hash-writer.ts' },
  { startsWith: 'npm install fastify-chunked-upload @fastify/websocket\n', notRunnable: 'a shell command: installing the packages' },
  { file: 'channel.js' },
  { file: 'channel-events.js' },
  { file: 'client-page.js' },
  { file: 'channel-node-client.js' },
  { file: 'resumable.js' },
  { file: 'tus-page.js' },
  { file: 'from-multipart.js' },
  { file: 'from-tus.js' },
  { file: 'from-liveview.js' }
]

const readme = await readFile(join(ROOT, 'README.md'), 'utf8')

t.test('every README code block is an example file, byte for byte, or is listed as not a program', async (t) => {
  const blocks = codeBlocks(readme)
  t.equal(blocks.length, BLOCKS.length, 'each block of the README is listed here')
  for (const [i, block] of blocks.entries()) {
    const expected = BLOCKS[i]
    if (expected === undefined) break
    if ('file' in expected) {
      const file = await readFile(join(EXAMPLES, expected.file), 'utf8')
      t.equal(block.code, file, `README.md:${block.line} is examples/readme/${expected.file}`)
      t.equal(block.lang, expected.file.endsWith('.ts') ? 'ts' : 'js', `README.md:${block.line} is marked as its language`)
    } else {
      t.ok(block.code.startsWith(expected.startsWith), `README.md:${block.line} is not a program (${expected.notRunnable})`)
    }
  }
  const quoted = BLOCKS.flatMap((expected) => 'file' in expected ? [expected.file] : [])
  const files = (await readdir(EXAMPLES)).filter((name) => /\.(js|ts)$/.test(name))
  t.same(files.sort(), [...quoted].sort(), 'and every example file is quoted')
})

/** A running example server: its URL, its JSON log, and the directory it runs in. */
interface Server {
  url: string
  port: number
  /** Where it runs (its cwd), and its TMPDIR (in there). */
  cwd: string
  tmp: string
  logs: () => Array<Record<string, any>>,
  until: <T>(what: string, fn: () => T | undefined | false) => Promise<T>
}

/** tap's TypeScript loader, for the examples written in TypeScript (Node 20 does not strip types). */
const TS_LOADER = process.execArgv.filter((arg) => arg.includes('@tapjs/typescript'))

/**
 * Runs an example file with `node` in a fresh directory (its cwd and TMPDIR, removed at
 * teardown) on a free port, and waits for Fastify's "Server listening" line.
 */
async function startExample (t: Test, file: string, env: Record<string, string> = {}): Promise<Server> {
  const cwd = await mkdtemp(join(tmpdir(), 'fcu-readme-'))
  t.teardown(() => rm(cwd, { recursive: true, force: true }))
  const tmp = join(cwd, 'tmp')
  await mkdir(tmp)
  const { child, logs, stderr, until } = watched(t, [...(file.endsWith('.ts') ? TS_LOADER : []), join(EXAMPLES, file)], { cwd, env: { TMPDIR: tmp, PORT: '0', ...env } })
  const url = await until(`${file} to listen`, () => {
    if (child.exitCode !== null) throw new Error(`${file} exited (${child.exitCode}): ${stderr()}`)
    for (const line of logs()) {
      const listening = /^Server listening at (http:\/\/127\.0\.0\.1:\d+)$/.exec(line.msg ?? '')
      if (listening !== null) return listening[1]
    }
    return undefined
  })
  return { url, port: Number(new URL(url).port), cwd, tmp, logs, until }
}

/**
 * Whether the example's temp files are all gone, once the requests that made them ended
 * (a failed request is answered first, then its files are removed). ts-node, which runs
 * the TypeScript examples, keeps its cache there too.
 */
async function noTempFiles (server: Server): Promise<boolean> {
  const left = async (): Promise<string[]> => (await strayFiles(server.tmp)).filter((name) => !name.startsWith('v8-compile-cache'))
  return await eventually(async () => (await left()).length === 0)
}

/** Runs a client example to its end: its exit code and output. */
async function runExample (file: string, cwd: string, env: Record<string, string>): Promise<{ code: number | null, stdout: string, stderr: string }> {
  const child = spawn(process.execPath, [join(EXAMPLES, file)], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (text: string) => { stdout += text })
  child.stderr.setEncoding('utf8').on('data', (text: string) => { stderr += text })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  return { code, stdout, stderr }
}

/** A multipart form of files (name, type, bytes) and text fields. */
function form (files: Array<[field: string, name: string, type: string, data: Buffer]>, fields: Record<string, string> = {}): FormData {
  const body = new FormData()
  for (const [name, value] of Object.entries(fields)) body.append(name, value)
  for (const [field, name, type, data] of files) body.append(field, new Blob([data], { type }), name)
  return body
}

const TUS = { 'tus-resumable': '1.0.0' }

/** The tus 1.0 creation headers: length and metadata (base64 values). */
function tusCreation (length: number, metadata: Record<string, string>): Record<string, string> {
  return {
    ...TUS,
    'upload-length': String(length),
    'upload-metadata': Object.entries(metadata).map(([key, value]) => `${key} ${Buffer.from(value).toString('base64')}`).join(',')
  }
}

t.test('Usage: files and fields over multipart, a raw body with ?upload=, the avatar moved into avatars/', async (t) => {
  const server = await startExample(t, 'usage.js')
  const avatar = randomBytes(5000)
  const response = await fetch(`${server.url}/profile`, {
    method: 'POST',
    body: form([['avatar', 'me.png', 'image/png', avatar], ['docs', 'cv.pdf', 'application/pdf', Buffer.from('%PDF-1.7')], ['docs', 'letter.pdf', 'application/pdf', Buffer.from('%PDF-1.4')]], { name: 'Ann' })
  })
  t.equal(response.status, 200)
  const body = await response.json() as { avatar: string, docs: string[], name: string }
  t.match(body, { avatar: /^avatars\/[0-9a-f-]{36}$/, docs: ['cv.pdf', 'letter.pdf'], name: 'Ann' })
  t.equal(sha256(await readFile(join(server.cwd, body.avatar))), sha256(avatar), 'the avatar was moved into avatars/, a directory moveFile made')

  const raw = await fetch(`${server.url}/profile?upload=avatar`, { method: 'POST', headers: { 'content-type': 'image/png', 'content-disposition': 'attachment; filename="raw.png"' }, body: avatar })
  t.equal(raw.status, 200)
  const rawBody = await raw.json() as { avatar: string, docs: string[] }
  t.same(Object.keys(rawBody).sort(), ['avatar', 'docs'], 'a raw body has no text fields: no name')
  t.equal(sha256(await readFile(join(server.cwd, rawBody.avatar))), sha256(avatar))

  const unnamed = await fetch(`${server.url}/profile`, { method: 'POST', headers: { 'content-type': 'image/png' }, body: avatar })
  t.equal(unnamed.status, 400, 'a raw body to a route with two names needs ?upload=')
  t.match(await unnamed.json(), { code: 'FST_CHUNKED_UPLOAD_NO_UPLOAD_NAME' })
  const refused = await fetch(`${server.url}/profile`, { method: 'POST', body: form([['avatar', 'me.gif', 'image/gif', avatar]]) })
  t.equal(refused.status, 415, 'a type outside accept is refused')
  t.match(await refused.json(), { code: 'FST_CHUNKED_UPLOAD_NOT_ACCEPTED' })
  t.ok(await noTempFiles(server), 'no temp file is left')
})

t.test('Plugins that edit routes: registered after, an onRoute plugin\'s hook guards the route and its derived endpoint, once per request', async (t) => {
  const server = await startExample(t, 'plugin-order.js')
  const hooks = (): number => server.logs().filter((line) => line.msg === 'auth checked').length
  /** The hook's runs, once the request's last log line is in. */
  const hooksAfter = async (requests: number): Promise<number> => {
    await server.until(`${requests} requests completed`, () => server.logs().filter((line) => line.msg === 'request completed').length >= requests)
    return hooks()
  }
  const anonymous = await fetch(`${server.url}/files/tus`, { method: 'POST', headers: tusCreation(5, { filename: 'a.txt' }) })
  t.equal(anonymous.status, 401, 'the derived /files/tus is protected')
  t.equal(await hooksAfter(1), 1)
  const auth = { authorization: 'Bearer secret' }
  const created = await fetch(`${server.url}/files/tus`, { method: 'POST', headers: { ...tusCreation(5, { filename: 'a.txt' }), ...auth, 'content-type': 'application/offset+octet-stream' }, body: 'hello' })
  t.equal(created.status, 201)
  t.equal(await hooksAfter(2), 2, 'the hook ran once for that request, not twice')
  const submitted = await fetch(`${server.url}/files`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ file: created.headers.get('location') }) })
  t.same(await submitted.json(), ['a.txt'])
  t.equal(await hooksAfter(3), 3)
  t.equal((await fetch(`${server.url}/files`, { method: 'POST', body: form([['file', 'b.txt', 'text/plain', Buffer.from('x')]]) })).status, 401, 'and the route itself')
})

t.test('Plugin options: every option shown is accepted, tmpDir is made, the store claims its subdirectory', async (t) => {
  const uploads = join(tmpdir(), `fcu-readme-options-${process.pid}`)
  t.teardown(() => rm(uploads, { recursive: true, force: true }))
  const server = await startExample(t, 'options.js', { UPLOAD_DIR: uploads })
  const store = await stat(join(uploads, 'fastify-chunked-upload'))
  t.ok(store.isDirectory(), '<tmpDir>/fastify-chunked-upload')
  t.equal(store.mode & 0o777, 0o700, 'readable by its owner only')
  const response = await fetch(`${server.url}/upload`, { method: 'POST', body: form([['file', 'a.bin', 'application/octet-stream', randomBytes(100)]]) })
  t.same(await response.json(), [{ name: 'a.bin', size: 100 }])
})

t.test('Writing a writer: HashWriter (TypeScript) hashes the upload, the handler returns the digest', async (t) => {
  const server = await startExample(t, 'hash-writer.ts')
  const data = randomBytes(300_000)
  const response = await fetch(`${server.url}/hash`, { method: 'POST', body: form([['file', 'a.bin', 'application/octet-stream', data]]) })
  t.equal(response.status, 200)
  t.same(await response.json(), [sha256(data)])
  t.ok(await noTempFiles(server), 'nothing stored')
})

t.test('The WebSocket channel: photos over the socket with the token, their refs posted; without it, 401; the Node client example', async (t) => {
  const server = await startExample(t, 'channel.js')
  const auth = { authorization: 'Bearer secret' }
  const photo = new File([randomBytes(200_000)], 'beach.png', { type: 'image/png' })
  const sent = await upload(`${server.url}/photos`, [photo, new File(['text'], 'notes.txt', { type: 'text/plain' })], { uploadName: 'photos', WebSocket, headers: auth })
  t.match(sent.files, [{ name: 'beach.png', ok: true, ref: String }, { name: 'notes.txt', ok: false, code: 'not_accepted' }])
  const refs = sent.files.flatMap((file) => 'ref' in file ? [file.ref] : [])
  const anonymous = await fetch(`${server.url}/photos`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ photos: refs }) })
  t.equal(anonymous.status, 401)
  const refused = await upload(`${server.url}/photos`, [photo], { uploadName: 'photos', WebSocket })
  t.match(refused.files, [{ ok: false, code: 'connection_failed' }], 'the upgrade is refused without the token')
  const posted = await fetch(`${server.url}/photos`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ photos: refs }) })
  t.same(await posted.json(), [{ name: 'beach.png', size: 200_000 }])

  await writeFile(join(server.cwd, 'photo.jpg'), randomBytes(70_000))
  const client = await runExample('channel-node-client.js', server.cwd, { SERVER: server.url })
  t.equal(client.code, 0, client.stderr)
  t.match(client.stdout, /ok: true/)
  t.match(client.stdout, /\[ \{ name: 'photo\.jpg', size: 70000 \} \]/, 'the route consumed it')
})

t.test('The WebSocket channel, on the socket: each photo logged as it lands, then moved when its ref is posted', async (t) => {
  const server = await startExample(t, 'channel-events.js')
  const photos = [new File([randomBytes(100_000)], 'a.png', { type: 'image/png' }), new File([randomBytes(10)], 'b.png', { type: 'image/png' })]
  const sent = await upload(`${server.url}/photos`, photos, { uploadName: 'photos', WebSocket })
  t.match(sent.files, [{ ok: true }, { ok: true }])
  const landed = await server.until('two "photo landed" lines', () => {
    const lines = server.logs().filter((line) => line.msg === 'photo landed')
    return lines.length === 2 && lines
  })
  for (const line of landed) t.ok((await stat(line.path)).isFile(), 'each logged path is the stored file, kept (postponed)')
  const posted = await fetch(`${server.url}/photos`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ photos: sent.files.map((file) => 'ref' in file ? file.ref : undefined) }) })
  t.equal(posted.status, 200)
  const moved = await posted.json() as string[]
  t.equal(moved.length, 2)
  for (const [i, path] of moved.entries()) {
    t.equal(sha256(await readFile(join(server.cwd, path))), sha256(Buffer.from(await photos[i]!.arrayBuffer())), `${path}: the photo's bytes`)
  }
})

t.test('Resumable uploads: tus-js-client (Node) uploads with the token, the route consumes the upload URL', async (t) => {
  const server = await startExample(t, 'resumable.js')
  const video = randomBytes(3_000_000)
  const auth = { authorization: 'Bearer secret' }
  const uploadUrl = await new Promise<string>((resolve, reject) => {
    const run: tus.Upload = new tus.Upload(video, {
      endpoint: `${server.url}/videos/tus`,
      headers: auth,
      chunkSize: 1_000_000,
      metadata: { filename: 'clip.mp4', filetype: 'video/mp4' },
      onError: reject,
      onSuccess: () => resolve(run.url!)
    })
    run.start()
  })
  const refused = await fetch(`${server.url}/videos/tus`, { method: 'POST', headers: tusCreation(10, { filename: 'clip.mp4', filetype: 'video/mp4' }) })
  t.equal(refused.status, 401, 'requireLogin runs on the endpoint')
  const notVideo = await fetch(`${server.url}/videos/tus`, { method: 'POST', headers: { ...auth, ...tusCreation(10, { filename: 'a.txt', filetype: 'text/plain' }) } })
  t.equal(notVideo.status, 415, 'accept applies at creation')
  const posted = await fetch(`${server.url}/videos`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ video: uploadUrl }) })
  t.same(await posted.json(), [{ name: 'clip.mp4', size: video.length }])
})

// The page scripts, in Chromium.
let browser: Browser | undefined
async function newPage (t: Test): Promise<{ page: Page, logged: () => Promise<unknown>, errors: string[] }> {
  browser ??= await chromium.launch({ executablePath: CHROMIUM.binary, args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'], timeout: PATIENCE_MS })
  const context = await browser.newContext()
  t.teardown(() => context.close())
  context.setDefaultTimeout(PATIENCE_MS)
  const page = await context.newPage()
  const errors: string[] = []
  let resolveLogged: (value: Promise<unknown>) => void
  /** What the page's script logs first (console.log), as a value. */
  const logged = new Promise<unknown>((resolve) => { resolveLogged = resolve })
  page.on('pageerror', (error) => errors.push(error.message))
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(message.text())
    else if (message.type() === 'log') resolveLogged(message.args()[0]!.jsonValue())
  })
  return { page, logged: async () => await logged, errors }
}
t.teardown(async () => await browser?.close())

/** A page with a file input, loading `script` with an import map for the bare names it imports. */
function pageHtml (input: string, script: string, imports: Record<string, string>): string {
  return `<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><script type="importmap">${JSON.stringify({ imports })}</script>
<body>${input}<script type="module" src="${script}"></script></body>`
}

t.test('Client library, in a page: files chosen, sent over the channel, refs submitted with the fields, bars at 100', async (t) => {
  const app = Fastify()
  await app.register(chunkedUpload, { channel: true })
  await app.register(websocket)
  const client = await readFile(join(ROOT, 'dist', 'client', 'index.js'))
  const script = await readFile(join(EXAMPLES, 'client-page.js'))
  app.get('/', async (_request, reply) => reply.type('text/html').send(pageHtml('<input type="file" name="photos" multiple>', '/client-page.js', { 'fastify-chunked-upload/client': '/client.js' })))
  app.get('/client.js', async (_request, reply) => reply.type('text/javascript').send(client))
  app.get('/client-page.js', async (_request, reply) => reply.type('text/javascript').send(script))
  app.post('/upload/photos', { allowUpload: { photos: { accept: ['image/*'], maxEntries: 5 } } }, async (request) => ({
    album: (request.body as { album: string }).album,
    photos: await request.uploads.consume('photos', (meta, entry) => ({ name: entry.clientName, size: meta.size }))
  }))
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const { page, logged, errors } = await newPage(t)
  await page.goto(url)
  const dir = await mkdtemp(join(tmpdir(), 'fcu-readme-files-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await writeFile(join(dir, 'sea.png'), randomBytes(500_000))
  await writeFile(join(dir, 'notes.txt'), 'not a photo')
  await page.setInputFiles('input[name="photos"]', [join(dir, 'sea.png'), join(dir, 'notes.txt')])
  const result = await logged()
  t.match(result, {
    files: [{ name: 'sea.png', ok: true, ref: String }, { name: 'notes.txt', ok: false, code: 'not_accepted' }],
    status: 200,
    response: { album: 'holidays', photos: [{ name: 'sea.png', size: 500_000 }] }
  })
  t.same(errors, [], 'the page raised no error')
  t.same(await page.$$eval('progress', (bars) => bars.map((bar) => (bar as unknown as { value: number }).value)), [100, 0], 'the bars show what the server took')
})

t.test('Resumable uploads, in a page: tus-js-client sends the chosen file, then the page posts its URL to the route', async (t) => {
  const server = await startExample(t, 'resumable.js')
  const esbuild = await import('esbuild')
  const bundle = await esbuild.build({
    stdin: { contents: "export * from 'tus-js-client'", resolveDir: ROOT, loader: 'js' },
    bundle: true,
    format: 'esm',
    platform: 'browser',
    write: false,
    logLevel: 'silent'
  })
  await esbuild.stop()
  const script = await readFile(join(EXAMPLES, 'tus-page.js'))
  const { page, logged, errors } = await newPage(t)
  // The page and its scripts come from the app's origin, as if the app served them.
  await page.route(`${server.url}/`, (route) => route.fulfill({ contentType: 'text/html', body: pageHtml('<input type="file">', '/tus-page.js', { 'tus-js-client': '/tus.js' }) }))
  await page.route(`${server.url}/tus-page.js`, (route) => route.fulfill({ contentType: 'text/javascript', body: script }))
  await page.route(`${server.url}/tus.js`, (route) => route.fulfill({ contentType: 'text/javascript', body: Buffer.from(bundle.outputFiles[0]!.contents) }))
  await page.goto(`${server.url}/`)
  const dir = await mkdtemp(join(tmpdir(), 'fcu-readme-files-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const video = randomBytes(1_000_000)
  await writeFile(join(dir, 'clip.mp4'), video)
  await page.setInputFiles('input[type="file"]', join(dir, 'clip.mp4'))
  t.same(await logged(), [{ name: 'clip.mp4', size: video.length }])
  t.ok(server.logs().some((line) => line.req?.method === 'PATCH'), 'the bytes went in a PATCH to the upload URL')
  t.same(errors, [], 'the page raised no error')
})

t.test('Coming from @fastify/multipart: fields in any order validated by the body schema, files moved, limits per upload name', async (t) => {
  const server = await startExample(t, 'from-multipart.js')
  const pdf = (text: string): [string, string, string, Buffer] => ['attachments', `${text}.pdf`, 'application/pdf', Buffer.from(`%PDF ${text}`)]
  // The title after the files: it is in request.body all the same.
  const body = form([pdf('one'), pdf('two')])
  body.append('title', 'Quarterly report')
  const response = await fetch(`${server.url}/documents`, { method: 'POST', body })
  t.equal(response.status, 200)
  t.same(await response.json(), { title: 'Quarterly report', saved: [{ name: 'one.pdf', size: 8 }, { name: 'two.pdf', size: 8 }] })
  const kept = await readdir(join(server.cwd, 'documents'))
  t.equal(kept.length, 2, 'both moved into documents/')
  t.equal((await readFile(join(server.cwd, 'documents', kept.find((name) => name.endsWith('.pdf'))!))).subarray(0, 4).toString(), '%PDF')

  const untitled = await fetch(`${server.url}/documents`, { method: 'POST', body: form([pdf('three')]) })
  t.equal(untitled.status, 400, 'schema.body validates the text fields')
  t.match(await untitled.json(), { code: 'FST_ERR_VALIDATION', message: "body must have required property 'title'" })
  const four = await fetch(`${server.url}/documents`, { method: 'POST', body: form([pdf('a'), pdf('b'), pdf('c'), pdf('d')], { title: 'x' }) })
  t.equal(four.status, 413, 'maxEntries: 3')
  t.match(await four.json(), { code: 'FST_CHUNKED_UPLOAD_TOO_MANY_FILES' })
  const undeclared = await fetch(`${server.url}/documents`, { method: 'POST', body: form([['cover', 'cover.pdf', 'application/pdf', Buffer.from('%PDF')]], { title: 'x' }) })
  t.equal(undeclared.status, 400, 'a file under an undeclared name')
  t.match(await undeclared.json(), { code: 'FST_CHUNKED_UPLOAD_UNEXPECTED_FILE' })
  const fields = Object.fromEntries(Array.from({ length: 21 }, (_, i) => [`f${i}`, 'x']))
  const many = await fetch(`${server.url}/documents`, { method: 'POST', body: form([], { title: 'x', ...fields }) })
  t.equal(many.status, 413, 'maxFields: 20')
  t.match(await many.json(), { code: 'FST_CHUNKED_UPLOAD_FIELDS_LIMIT' })
  t.ok(await noTempFiles(server), 'no temp file is left')
})

t.test('Coming from @tus/server: tus-js-client through the route\'s hook, validate at creation, progress at the end, the file kept', async (t) => {
  const uploads = join(tmpdir(), `fcu-readme-from-tus-${process.pid}`)
  t.teardown(() => rm(uploads, { recursive: true, force: true }))
  const server = await startExample(t, 'from-tus.js', { UPLOAD_DIR: uploads })
  const auth = { authorization: 'Bearer secret' }
  const data = randomBytes(2_500_000)
  const send = async (name: string, headers: Record<string, string>): Promise<string> => await new Promise<string>((resolve, reject) => {
    const run: tus.Upload = new tus.Upload(data, {
      endpoint: `${server.url}/files/tus`,
      headers,
      chunkSize: 1_000_000,
      retryDelays: [],
      metadata: { filename: name },
      onError: reject,
      onSuccess: () => resolve(run.url!)
    })
    run.start()
  })
  const uploadUrl = await send('data.bin', auth)
  const finished = await server.until('the "upload finished" line', () => server.logs().find((line) => line.msg === 'upload finished'))
  t.equal(finished.file, 'data.bin', 'progress saw the upload done')
  await t.rejects(send('data.bin', {}), /response code: 401/, 'the route\'s onRequest hook guards the endpoint')
  await t.rejects(send('setup.exe', auth), /response code: 422/, 'validate refuses at creation')
  const posted = await fetch(`${server.url}/files`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ file: uploadUrl }) })
  t.equal(posted.status, 200)
  const [kept] = await posted.json() as string[]
  t.equal(sha256(await readFile(join(server.cwd, kept!))), sha256(data), 'moved out of the store directory')
  t.equal((await fetch(uploadUrl, { method: 'HEAD', headers: { ...TUS, ...auth } })).status, 410, 'the consumed upload is gone')
})

t.test('Coming from Phoenix LiveView: EchoWriter and allow_upload, over the channel with the client library', async (t) => {
  const server = await startExample(t, 'from-liveview.js')
  const files = [new File([randomBytes(200_000)], 'me.jpg', { type: 'image/jpeg' }), new File(['x'], 'me.png', { type: 'image/png' })]
  const result = await upload(`${server.url}/profile`, files, { uploadName: 'avatar', WebSocket, submit: true })
  t.match(result.files, [{ name: 'me.jpg', ok: true }, { name: 'me.png', ok: false, code: 'not_accepted' }])
  t.same(result.response, [{ name: 'me.jpg', bytes: 200_000 }])
  const closing = await server.until('the writer\'s close line', () => server.logs().find((line) => /^closing upload after/.test(line.msg)))
  t.match(closing, { msg: 'closing upload after 200000 bytes', reason: 'done' })
  const chunks = server.logs().filter((line) => /^received chunk of \d+ bytes$/.test(line.msg))
  t.same(chunks.map((line) => line.msg), ['received chunk of 64000 bytes', 'received chunk of 64000 bytes', 'received chunk of 64000 bytes', 'received chunk of 8000 bytes'], 'LiveView\'s 64 000-byte chunks')
  t.ok(server.logs().some((line) => line.msg === 'me.jpg uploaded'), 'progress saw it done')
})
