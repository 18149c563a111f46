// README's profile form in a real browser (Debian's Chromium, headless, driven by
// playwright-core): submitted with only one of its two file inputs chosen, the empty
// one is no file and the request succeeds. If the browser cannot start, this test
// fails; it never skips.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium } from 'playwright-core'
import t from 'tap'
import { MemoryWriter, startApp } from './kit/index.js'

const CHROMIUM = '/usr/bin/chromium'
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run', '--disable-component-update', '--disable-sync']
/** Bound on every browser step. */
const STEP_MS = 20_000

const FORM = `<!doctype html>
<form method="post" action="/profile" enctype="multipart/form-data">
  <input type="file" name="avatar">
  <input type="file" name="docs" multiple>
  <input name="name" value="Ada">
  <button>Save</button>
</form>`

const { url } = await startApp(t, (app) => {
  app.get('/', async (_request, reply) => await reply.type('text/html').send(FORM))
  // README's Usage route, with writers that keep the bytes in memory.
  app.post('/profile', {
    allowUpload: {
      avatar: { accept: ['image/png', 'image/jpeg', 'image/webp', '.png', '.jpg'], maxFileSize: 8_000_000, writer: () => [MemoryWriter, {}] },
      docs: { accept: ['application/pdf'], maxEntries: 5, writer: () => [MemoryWriter, {}] }
    }
  }, async (request) => {
    const [avatar] = await request.uploads.consume('avatar', (meta: { buffer: Buffer }, entry) => `${entry.clientName}: ${meta.buffer.toString()}`)
    const docs = await request.uploads.consume('docs', (_meta, entry) => entry.clientName)
    return { avatar, docs, name: (request.body as { name: string }).name }
  })
})

const userDataDir = await mkdtemp(join(tmpdir(), 'fcu-forms-chromium-'))
t.teardown(() => rm(userDataDir, { recursive: true, force: true }))
const context = await chromium.launchPersistentContext(userDataDir, { executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 30_000 })
t.teardown(() => context.close())
context.setDefaultTimeout(STEP_MS)
const page = context.pages()[0] ?? await context.newPage()

/** Loads the form, chooses the given files, submits, and returns the JSON the route answered. */
async function submit (files: Record<string, Array<{ name: string, mimeType: string, buffer: Buffer }>>): Promise<{ status: number, json: unknown }> {
  await page.goto(url)
  for (const [input, chosen] of Object.entries(files)) await page.setInputFiles(`input[name="${input}"]`, chosen)
  const [response] = await Promise.all([page.waitForResponse(`${url}/profile`), page.click('button')])
  return { status: response.status(), json: await response.json() }
}

t.test('only the avatar chosen: 200, no phantom doc', async (t) => {
  const { status, json } = await submit({ avatar: [{ name: 'me.png', mimeType: 'image/png', buffer: Buffer.from('PNG!') }] })
  t.equal(status, 200)
  t.same(json, { avatar: 'me.png: PNG!', docs: [], name: 'Ada' })
})

t.test('only the docs chosen: 200, no avatar', async (t) => {
  const { status, json } = await submit({
    docs: [{ name: 'a.pdf', mimeType: 'application/pdf', buffer: Buffer.from('%PDF-a') }, { name: 'b.pdf', mimeType: 'application/pdf', buffer: Buffer.from('%PDF-b') }]
  })
  t.equal(status, 200)
  t.same(json, { docs: ['a.pdf', 'b.pdf'], name: 'Ada' })
})

t.test('a chosen empty file is a file: an empty avatar is kept as one', async (t) => {
  const { status, json } = await submit({ avatar: [{ name: 'empty.png', mimeType: 'image/png', buffer: Buffer.alloc(0) }] })
  t.equal(status, 200)
  t.same(json, { avatar: 'empty.png: ', docs: [], name: 'Ada' })
})
