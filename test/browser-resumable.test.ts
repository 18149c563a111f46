// The demo page's resumable mode in a real browser: Debian's Chromium, headless, driven
// by playwright-core, against the demo run as a user runs it (a child process loading
// dist/: build first). Uppy (@uppy/core + @uppy/tus, bundled by the demo) sends the
// files to the route's tus endpoint, the bars reach 100 %, the page posts the upload
// URLs to the route and shows what its handler consumed (the SHA-256 of what the
// route's writer got), and the demo's log shows the same on the server. A cancel
// terminates the upload (tus DELETE) and the writer is closed with 'cancel'; a reload
// midway, then the same file again, resumes at the server's offset. If the browser
// cannot start, this test fails; it never skips.
import { createHash, randomBytes } from 'node:crypto'
import t from 'tap'
import { openDemo, STEP_MS, type TestFile } from './kit/browser.js'
import type { LogLine } from './kit/client-kit.js'

const MiB = 1024 * 1024
const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex')
/** The demo's log lines, with the writer's own fields. */
type DemoLine = LogLine & { sha256?: string, res?: { statusCode?: number }, reqId?: string }

const demo = await openDemo(t, 'browser-tus')
const { page, url, until, pageErrors, consoleErrors, watchBars, bars, barValue, chooseFiles, tableRows, waitForStatus } = demo
const logs = demo.logs as () => DemoLine[]
/** Their lastModified is fixed: the same bytes dropped again are the same file to Uppy (and to its resume). */
const dropFiles = async (form: string, files: TestFile[]): Promise<void> => await demo.dropFiles(form, files, 1_700_000_000_000)

/** Requests the demo logged (Fastify's "incoming request" lines), as "METHOD url". */
const requests = (): string[] => logs().flatMap((line) => line.msg === 'incoming request' && line.req !== undefined ? [`${line.req.method} ${line.req.url}`] : [])

/** The upload ids the demo's tus endpoint gave out under a route, in order. */
function uploadIds (route: string): string[] {
  const ids = new Set<string>()
  for (const request of requests()) {
    const match = new RegExp(`^(?:PATCH|HEAD|DELETE) ${route}/tus/([0-9a-f-]{36})$`).exec(request)
    if (match !== null) ids.add(match[1]!)
  }
  return [...ids]
}

const echoClosed = (name: string): Promise<DemoLine> =>
  until(`the server to close ${name}'s writer`, () => logs().find((line) => line.msg === 'echo writer: closed' && line.file === name))

/** Chooses the resumable mode (after a reload too). */
async function chooseResumable (): Promise<void> {
  await page.check('input[name="transport"][value="resumable"]')
}

t.test('the resumable mode: Uppy sends images and text to /upload/files/tus, the page shows the SHA-256 of each stored file', async (t) => {
  const files: TestFile[] = [
    { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('resumed on the page\n'.repeat(100)) },
    { name: 'photo.png', mimeType: 'image/png', buffer: randomBytes(1_900_000) },
    { name: 'report.pdf', mimeType: 'application/pdf', buffer: randomBytes(1000) }
  ]
  const before = requests().length
  const bundle = page.waitForResponse((response) => response.url().endsWith('/uppy.js'), { timeout: STEP_MS })
  await page.check('input[name="transport"][value="resumable"]')
  const served = await bundle
  t.equal(served.status(), 200, 'choosing the mode loads the Uppy bundle')
  t.match(served.headers()['content-type'], /^text\/javascript/)

  await watchBars('#files-form + ul')
  await chooseFiles('#files-form input[type="file"]', files)
  await page.fill('#files-form input[name="note"]', 'by tus')
  await page.click('#files-form button[type="submit"]')

  t.equal(await waitForStatus('section:has(#files-form)', /stored/), '2 stored, 1 not. Note: “by tus”.')
  for (const file of files.slice(0, 2)) {
    const line = page.locator(`#files-form + ul li[data-name="${file.name}"]`)
    t.equal(await line.getAttribute('data-status'), 'done', `${file.name}: done`)
    t.equal(await barValue(`#files-form + ul li[data-name="${file.name}"] progress`), 100, `${file.name}: the bar is full`)
    t.equal(await line.locator('.percent').textContent(), '100 %')
    t.ok(await line.locator('.cancel').isDisabled(), `${file.name}: nothing left to cancel`)
  }
  const refused = page.locator('#files-form + ul li[data-name="report.pdf"]')
  t.equal(await refused.getAttribute('data-status'), 'failed')
  t.equal(await refused.locator('.state').textContent(), 'not_accepted: File "report.pdf" of type "application/pdf" is not accepted for "files"',
    'the creation was refused (415) with the server\'s coded error')
  t.same(await tableRows('section:has(#files-form)'), [
    ['notes.txt', 'text/plain', '2 kB', sha256(files[0]!.buffer)],
    ['photo.png', 'image/png', '1.9 MB', sha256(files[1]!.buffer)],
    ['report.pdf', '', '', 'not_accepted: type not accepted']
  ], 'the SHA-256 the handler computed from the temp files the writer stored')
  const photo = (await bars())['photo.png']!
  t.ok(photo.some((value) => value > 0 && value < 100), `the photo's bar moved in steps (${photo.join(', ')})`)
  t.ok(photo.every((value, i) => i === 0 || value >= photo[i - 1]!), 'and never went back')

  await until('the route\'s POST in the log', () => requests().slice(before).includes('POST /upload/files'))
  const sent = requests().slice(before)
  t.equal(sent.filter((request) => request === 'POST /upload/files/tus').length, 3, 'one creation per file')
  const patches = sent.filter((request) => /^PATCH \/upload\/files\/tus\/[0-9a-f-]{36}$/.test(request))
  t.equal(patches.length, 3, 'the photo in two 1 MiB PATCHes, the notes in one')
  t.equal(sent.filter((request) => request.endsWith('/ws')).length, 0, 'no WebSocket')
  t.equal(sent.at(-1), 'POST /upload/files', 'then the upload URLs went to the route')
})

t.test('a file of several MiB to EchoWriter: the bars reach 100 %, the page and the server log show the SHA-256 of what the writer got', async (t) => {
  const big = { name: 'big.bin', mimeType: 'application/octet-stream', buffer: randomBytes(6 * MiB) }
  const small = { name: 'small.txt', mimeType: 'text/plain', buffer: Buffer.from('small and done') }
  await chooseResumable()
  t.ok(await page.locator('#echo-form input[name="slow"]').isChecked(), 'the slow writer is on: 25 ms a chunk')
  await watchBars('#echo-form + ul')
  await dropFiles('#echo-form', [big, small])
  await page.click('#echo-form button[type="submit"]')

  t.match(await waitForStatus('section:has(#echo-form)', /echoed/), /^2 files, 6\.3 MB echoed/)
  const rows = await tableRows('section:has(#echo-form)')
  t.match(rows, [
    ['big.bin', 'application/octet-stream', big.buffer.length.toLocaleString('en'), /^\d+$/, sha256(big.buffer)],
    ['small.txt', 'text/plain', '14', '1', sha256(small.buffer)]
  ], 'what the handler consumed: the writer\'s byte count and the SHA-256 of the bytes it got')
  t.equal(rows.length, 2)
  for (const file of [big, small]) {
    t.equal(await page.locator(`#echo-form + ul li[data-name="${file.name}"]`).getAttribute('data-status'), 'done')
    t.equal(await barValue(`#echo-form + ul li[data-name="${file.name}"] progress`), 100)
  }
  const values = (await bars())['big.bin']!
  t.ok(values.filter((value) => value > 0 && value < 100).length >= 5, `the big file's bar moved in steps (${values.length} values)`)

  const closed = await echoClosed('big.bin')
  t.match(closed, { reason: 'done', total: big.buffer.length, sha256: sha256(big.buffer) }, 'the server\'s writer got every byte, in order')
  t.equal(closed.chunks, Number(rows[0]![3]))
  const chunks = logs().filter((line) => line.msg === 'echo writer: chunk' && line.file === 'big.bin')
  t.equal(chunks.reduce((sum, line) => sum + line.size!, 0), big.buffer.length, 'the logged chunks add up')
  t.same(new Set(chunks.map((line) => line.delay)), new Set([25]), 'the slow writer waited 25 ms on each of them')
  t.match(await echoClosed('small.txt'), { reason: 'done', total: 14, chunks: 1, sha256: sha256(small.buffer) })
  const patches = uploadIds('/upload/echo').map((id) => requests().filter((request) => request === `PATCH /upload/echo/tus/${id}`).length)
  t.same(patches.sort(), [1, 6], 'the big file in six 1 MiB PATCHes, the small one in one')
  t.ok(requests().includes('POST /upload/echo/tus?slow=1'), 'the creation asked for the slow writer')
})

t.test('a large upload cancelled midway with its button: Uppy terminates it (DELETE), the server closes its writer with cancel', async (t) => {
  const big = { name: 'cancel-me.bin', mimeType: 'application/octet-stream', buffer: randomBytes(8_000_000) }
  const small = { name: 'kept.txt', mimeType: 'text/plain', buffer: Buffer.from('kept') }
  await chooseResumable()
  const idsBefore = uploadIds('/upload/echo')
  await dropFiles('#echo-form', [big, small])
  await page.click('#echo-form button[type="submit"]')
  const selector = '#echo-form + ul li[data-name="cancel-me.bin"]'
  await page.waitForFunction((selector) => ((globalThis as any).document.querySelector(`${selector} progress`)?.value ?? 0) >= 15, selector, { timeout: STEP_MS })
  await page.locator(`${selector} .cancel`).click()
  await page.waitForSelector(`${selector}[data-status="cancelled"]`, { timeout: STEP_MS })
  const stoppedAt = await barValue(`${selector} progress`)
  t.ok(stoppedAt >= 15 && stoppedAt < 100, `the bar stopped midway (${stoppedAt} %)`)
  t.equal(await page.locator(`${selector} .state`).textContent(), 'cancelled: cancelled by the client')

  t.match(await waitForStatus('section:has(#echo-form)', /echoed/), /^1 file, 4 B echoed/)
  t.same(await tableRows('section:has(#echo-form)'), [
    ['kept.txt', 'text/plain', '4', '1', sha256(small.buffer)],
    ['cancel-me.bin', '', '', '', 'cancelled: cancelled']
  ])
  const closed = await echoClosed('cancel-me.bin')
  t.equal(closed.reason, 'cancel', 'the server\'s writer recorded cancel')
  t.ok(closed.total! > 0 && closed.total! < big.buffer.length, `after part of the file (${closed.total} bytes)`)
  const id = uploadIds('/upload/echo').find((id) => !idsBefore.includes(id) && requests().includes(`DELETE /upload/echo/tus/${id}`))
  t.ok(id, 'Uppy sent the tus DELETE for the cancelled upload')
  const deleted = logs().find((line) => line.req?.method === 'DELETE' && line.req.url === `/upload/echo/tus/${id}`)!
  const answer = await until('the DELETE\'s answer', () => logs().find((line) => line.reqId === deleted.reqId && line.res !== undefined))
  t.equal(answer.res!.statusCode, 204, 'which the endpoint answered with 204')
  const head = await fetch(`${url}/upload/echo/tus/${id}`, { method: 'HEAD', headers: { 'tus-resumable': '1.0.0' } })
  t.equal(head.status, 410, 'the upload URL is gone')
  t.equal(await page.locator('#echo-form + ul li[data-name="kept.txt"]').getAttribute('data-status'), 'done')
})

t.test('a reload midway, then the same file again: Uppy resumes at the server\'s offset, into the same writer', async (t) => {
  const file = { name: 'resume.bin', mimeType: 'application/octet-stream', buffer: randomBytes(8 * MiB) }
  await chooseResumable()
  const idsBefore = uploadIds('/upload/echo')
  await dropFiles('#echo-form', [file])
  await page.click('#echo-form button[type="submit"]')
  const selector = '#echo-form + ul li[data-name="resume.bin"]'
  await page.waitForFunction((selector) => ((globalThis as any).document.querySelector(`${selector} progress`)?.value ?? 0) >= 30, selector, { timeout: STEP_MS })
  const creations = requests().filter((request) => request === 'POST /upload/echo/tus?slow=1').length
  await page.reload()
  const id = uploadIds('/upload/echo').find((id) => !idsBefore.includes(id))!
  t.ok(id, 'the upload had an URL')

  await chooseResumable()
  await watchBars('#echo-form + ul')
  await dropFiles('#echo-form', [file])
  await page.click('#echo-form button[type="submit"]')
  t.match(await waitForStatus('section:has(#echo-form)', /echoed/), /^1 file, 8\.4 MB echoed/)
  const rows = await tableRows('section:has(#echo-form)')
  t.match(rows, [['resume.bin', 'application/octet-stream', file.buffer.length.toLocaleString('en'), /^\d+$/, sha256(file.buffer)]])
  const values = (await bars())['resume.bin']!
  t.ok(values.find((value) => value > 0)! >= 20, `the second page started where the server was (${values.slice(0, 3).join(', ')} %)`)

  await echoClosed('resume.bin')
  t.ok(requests().includes(`HEAD /upload/echo/tus/${id}`), 'Uppy asked the server for its offset (HEAD)')
  t.equal(requests().filter((request) => request === 'POST /upload/echo/tus?slow=1').length, creations, 'and created no new upload')
  const closes = logs().filter((line) => line.msg === 'echo writer: closed' && line.file === 'resume.bin')
  t.equal(closes.length, 1, 'one writer for the whole file')
  t.match(closes[0], { reason: 'done', total: file.buffer.length, sha256: sha256(file.buffer) }, 'which got every byte once, in order')
})

t.test('the page raised no error', async (t) => {
  t.same(pageErrors, [], 'no uncaught error')
  // The refused PDF: the browser logs the 415 of its creation, and Uppy its error.
  t.same(consoleErrors.filter((text) => !/\b415\b|report\.pdf/.test(text)), [], 'no console error but the refused file\'s')
})
