// The demo page in a real browser: Debian's Chromium, headless, driven by playwright-core,
// against the demo run as a user runs it (a child process loading dist/: build first).
// Files are dropped or chosen, go over the WebSocket channel (and over HTTP, through
// the client's XMLHttpRequest branch), their bars reach 100 %, the page shows what the
// handler consumed, and a cancel button cancels a file on the server. If the browser
// cannot start, this test fails; it never skips.
import { createHash, randomBytes } from 'node:crypto'
import t from 'tap'
import { openDemo, STEP_MS, type TestFile } from './kit/browser.js'

const sha256 = (data: Buffer): string => createHash('sha256').update(data).digest('hex')

const { page, logs, until, pageErrors, consoleErrors, watchBars, bars, barValue, chooseFiles, dropFiles, tableRows, waitForStatus } = await openDemo(t, 'browser')

t.test('three files dropped and sent over the WebSocket: every bar reaches 100 %, the page shows what the handler consumed', async (t) => {
  const files: TestFile[] = [
    { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('dropped on the page\n'.repeat(100)) },
    { name: 'large.png', mimeType: 'image/png', buffer: randomBytes(1_500_000) },
    { name: 'small.png', mimeType: 'image/png', buffer: randomBytes(200_000) }
  ]
  t.equal(await page.locator('input[name="transport"]:checked').getAttribute('value'), 'websocket', 'the WebSocket channel is the default')
  await watchBars('#files-form + ul')
  await dropFiles('#files-form', files)
  t.equal(await page.locator('#files-form input[type="file"]').evaluate((input) => (input as unknown as { files: unknown[] }).files.length), 3, 'the drop chose the files')
  await page.fill('#files-form input[name="note"]', 'from the browser')
  const upgradesBefore = logs().filter((line) => line.req?.url === '/upload/files/ws').length
  await page.click('#files-form button[type="submit"]')

  const summary = await waitForStatus('section:has(#files-form)', /stored/)
  t.equal(summary, '3 stored, 0 not. Note: “from the browser”.')
  for (const file of files) {
    const line = page.locator(`#files-form + ul li[data-name="${file.name}"]`)
    t.equal(await line.getAttribute('data-status'), 'done', `${file.name}: done`)
    t.equal(await barValue(`#files-form + ul li[data-name="${file.name}"] progress`), 100, `${file.name}: the bar is full`)
    t.equal(await line.locator('.percent').textContent(), '100 %')
    t.ok(await line.locator('.cancel').isDisabled(), `${file.name}: nothing left to cancel`)
  }
  t.same(await tableRows('section:has(#files-form)'), files.map((file) => [
    file.name, file.mimeType, file.buffer.length < 1_000_000 ? `${Math.round(file.buffer.length / 100) / 10} kB` : `${Math.round(file.buffer.length / 100_000) / 10} MB`, sha256(file.buffer)
  ]), 'names, types, sizes and the SHA-256 the handler computed')
  const large = (await bars())['large.png']!
  t.ok(large.filter((value) => value > 0 && value < 100).length >= 3, `the large file's bar moved in steps with the acks (${large.join(', ')})`)
  t.ok(large.every((value, i) => i === 0 || value >= large[i - 1]!), 'and never went back')
  // The demo's log is read as it arrives; it is in order: the upgrade came before the POST.
  t.ok(await until('the refs\' POST in the log', () => logs().some((line) => line.req?.url === '/upload/files' && line.req.method === 'POST')), 'then the refs were posted to the route')
  t.equal(logs().filter((line) => line.req?.url === '/upload/files/ws').length, upgradesBefore + 1, 'the files went over the route\'s channel')
})

t.test('over HTTP (XMLHttpRequest, chosen files): bars by bytes sent, refused files shown with their error', async (t) => {
  const good = { name: 'photo.png', mimeType: 'image/png', buffer: randomBytes(900_000) }
  const refused = { name: 'report.pdf', mimeType: 'application/pdf', buffer: randomBytes(1000) }
  await page.check('input[name="transport"][value="http"]')
  await chooseFiles('#files-form input[type="file"]', [good, refused])
  await page.fill('#files-form input[name="note"]', '')
  const upgradesBefore = logs().filter((line) => line.req?.url === '/upload/files/ws').length
  const posts = (): number => logs().filter((line) => line.req?.url === '/upload/files' && line.req.method === 'POST').length
  const postsBefore = posts()
  await page.click('#files-form button[type="submit"]')
  t.equal(await waitForStatus('section:has(#files-form)', /stored/), '1 stored, 1 not.')
  await until('the form\'s POST in the log', () => posts() > postsBefore)
  t.same(await tableRows('section:has(#files-form)'), [
    ['photo.png', 'image/png', '900 kB', sha256(good.buffer)],
    ['report.pdf', '', '', 'not_accepted: type not accepted']
  ])
  t.equal(await barValue('#files-form + ul li[data-name="photo.png"] progress'), 100)
  t.equal(logs().filter((line) => line.req?.url === '/upload/files/ws').length, upgradesBefore, 'no channel this time')
  await page.check('input[name="transport"][value="websocket"]')
})

t.test('over the WebSocket, a refused file shows its error next to the stored ones', async (t) => {
  const huge = { name: 'huge.png', mimeType: 'image/png', buffer: randomBytes(2_100_000) }
  const fine = { name: 'fine.txt', mimeType: 'text/plain', buffer: Buffer.from('fine') }
  await chooseFiles('#files-form input[type="file"]', [huge, fine])
  await page.click('#files-form button[type="submit"]')
  t.equal(await waitForStatus('section:has(#files-form)', /stored/), '1 stored, 1 not.')
  const line = page.locator('#files-form + ul li[data-name="huge.png"]')
  t.equal(await line.getAttribute('data-status'), 'failed')
  t.match(await line.locator('.state').textContent(), /^too_large: File "huge\.png" for "files" exceeds the size limit of 2000000 bytes$/)
  t.same((await tableRows('section:has(#files-form)')).map((row) => row[0]), ['fine.txt', 'huge.png'])
})

t.test('a large upload cancelled midway with its button: the server closes its writer with cancel', async (t) => {
  const big = { name: 'big.bin', mimeType: 'application/octet-stream', buffer: randomBytes(8_000_000) }
  const small = { name: 'small.txt', mimeType: 'text/plain', buffer: Buffer.from('small and done') }
  t.ok(await page.locator('#echo-form input[name="slow"]').isChecked(), 'the slow writer is on: 25 ms a chunk')
  await chooseFiles('#echo-form input[type="file"]', [big, small])
  await page.click('#echo-form button[type="submit"]')
  const line = page.locator('#echo-form + ul li[data-name="big.bin"]')
  await page.waitForFunction(() => ((globalThis as any).document.querySelector('#echo-form + ul li[data-name="big.bin"] progress')?.value ?? 0) >= 5, undefined, { timeout: STEP_MS })
  await line.locator('.cancel').click()
  await page.waitForSelector('#echo-form + ul li[data-name="big.bin"][data-status="cancelled"]', { timeout: STEP_MS })
  const stoppedAt = await barValue('#echo-form + ul li[data-name="big.bin"] progress')
  t.ok(stoppedAt >= 5 && stoppedAt < 100, `the bar stopped midway (${stoppedAt} %)`)
  t.equal(await line.locator('.state').textContent(), 'cancelled: cancelled by the client')

  t.match(await waitForStatus('section:has(#echo-form)', /echoed/), /^1 file, 14 B echoed/)
  t.same(await tableRows('section:has(#echo-form)'), [['small.txt', 'text/plain', '14', '1', sha256(small.buffer)], ['big.bin', '', '', '', 'cancelled: cancelled']])
  const closed = await until('the server to close big.bin\'s writer', () => logs().find((line) => line.msg === 'echo writer: closed' && line.file === 'big.bin'))
  t.equal(closed.reason, 'cancel', 'the server\'s writer recorded cancel')
  t.ok(closed.total! > 0 && closed.total! < big.buffer.length, `after part of the file (${closed.total} bytes)`)
  t.equal(await page.locator('#echo-form + ul li[data-name="small.txt"]').getAttribute('data-status'), 'done')
})

t.test('the page raised no error', async (t) => {
  t.same([...pageErrors, ...consoleErrors], [])
})
