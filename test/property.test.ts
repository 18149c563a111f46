// Property-based: random files, random wire chunkings, random client aborts and
// random writer failures. On every draw the guarantees hold and nothing leaks.
// FC_SEED replays a run (its seed is printed), FC_RUNS sets the number of draws.
import { setImmediate } from 'node:timers/promises'
import t from 'tap'
import fc from 'fast-check'
import {
  Recorder, bytes, eventually, multipart, parseResponse, rawSocket, sha256, startApp, strayFiles, tmpDirFor
} from './kit/index.js'
import { propertyRun } from './kit/property.js'

const run = propertyRun(t, 60)

t.test('guarantees hold on every draw', async (t) => {
  const recorder = new Recorder()
  const dir = await tmpDirFor(t)
  const { port, url, app } = await startApp(t, (app) => {
    app.post('/up', { allowUpload: { file: { accept: 'any', maxEntries: 4, chunkSize: 8192, writer: recorder.factory } } }, async (request) => {
      return await request.uploads.consume('file', (meta: { sha256: string }) => meta.sha256)
    })
    app.post('/tmp', { allowUpload: { file: { accept: 'any', maxEntries: 4 } } }, async (request) => {
      return await request.uploads.consume('file', (meta: { size: number }) => meta.size)
    })
  }, { tmpDir: dir })

  const draw = fc.record({
    sizes: fc.array(fc.integer({ min: 0, max: 120_000 }), { minLength: 1, maxLength: 4 }),
    seed: fc.integer({ min: 1, max: 1000 }),
    // how the client cuts the body into writes
    pieces: fc.array(fc.integer({ min: 1, max: 40_000 }), { minLength: 1, maxLength: 12 }),
    // abort after this fraction of the body (undefined: send everything)
    abortAt: fc.option(fc.integer({ min: 0, max: 999 }).map((n) => n / 1000), { nil: undefined }),
    // the writer throws on this chunk (undefined: never)
    failOn: fc.option(fc.integer({ min: 1, max: 20 }), { nil: undefined }),
    tmp: fc.boolean(),
    // a writer slow to write or to close widens every race window
    chunkDelay: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
    closeDelay: fc.option(fc.integer({ min: 5, max: 40 }), { nil: undefined })
  })

  await fc.assert(fc.asyncProperty(draw, async ({ sizes, seed, pieces, abortAt, failOn, tmp, chunkDelay, closeDelay }) => {
    const before = recorder.records.length
    const t0 = Date.now()
    recorder.faults = { chunkDelay, closeDelay, ...(failOn === undefined ? {} : { throwOnChunk: failOn }) }
    const files = sizes.map((size, i) => bytes(size, seed + i))
    const { body, contentType } = multipart(files.map((data, i) => ({ name: 'file', filename: `${i}.bin`, data })))
    const stopAt = abortAt === undefined ? body.length : Math.floor(body.length * abortAt)
    const socket = await rawSocket(port)
    socket.write(`POST ${tmp ? '/tmp' : '/up'} HTTP/1.1\r\nHost: x\r\nContent-Type: ${contentType}\r\nContent-Length: ${body.length}\r\n\r\n`)
    let sent = 0
    for (let i = 0; sent < stopAt; i++) {
      const size = Math.min(pieces[i % pieces.length]!, stopAt - sent)
      const piece = body.subarray(sent, sent + size)
      sent += size
      // Every third piece waits until it is on the wire, so that the server reads the body in pieces.
      if (i % 3 === 0) {
        await new Promise<void>((resolve) => socket.write(piece, () => resolve()))
        await setImmediate()
      } else {
        socket.write(piece)
      }
    }
    if (abortAt !== undefined) socket.destroy()
    else await socket.until('the answer', () => parseResponse(socket.received())?.body.endsWith(']') === true || socket.received().includes('"code"') || socket.readableEnded)
    const mine = (): typeof recorder.records => recorder.records.slice(before)
    // Guarantee 1 and 5: every writer of this draw is closed.
    await recorder.until('every writer of the draw to close', () => mine().every((r) => r.closes.length >= 1))
    if (mine().some((r) => r.closes.length !== 1)) throw new Error(`not every writer closed once: ${JSON.stringify(mine().map((r) => r.closes))}`)
    const reasons = mine().map((r) => typeof r.closes[0] === 'object' ? 'error' : r.closes[0])
    // Guarantee 2: no overlap, no chunk after close.
    if (mine().some((r) => r.overlapped || r.outOfOrder)) throw new Error('overlap or chunk after close')
    // Guarantee 4: { error } exactly when writeChunk threw.
    for (const r of mine()) {
      const threw = failOn !== undefined && r.chunks.length === failOn - 1 && reasons[r.id - before] === 'error'
      if ((reasons[r.id - before] === 'error') !== threw) throw new Error(`close reason ${reasons[r.id - before]} after ${r.chunks.length} chunks`)
    }
    if (abortAt === undefined && !tmp) {
      const response = parseResponse(socket.received())
      const failed = reasons.includes('error')
      if (failed) {
        if (response?.status !== 500) throw new Error(`status ${response?.status} after a writer failure`)
      } else {
        // Integrity: what each writer received is what was sent.
        if (response?.status !== 200) throw new Error(`status ${response?.status}: ${socket.received()}`)
        if (JSON.stringify(JSON.parse(response.body)) !== JSON.stringify(files.map(sha256))) throw new Error('bytes differ')
      }
    }
    socket.destroy()
    // Guarantee 6: no temp file outlives its entry.
    const clean = await eventually(async () => (await strayFiles(dir)).length === 0)
    if (process.env.FC_DEBUG) console.error(JSON.stringify({ sizes, abortAt, failOn, tmp, ms: Date.now() - t0, clean, got: socket.received().slice(0, 12) }))
    return clean
  }), { ...run, endOnFailure: true })
  const health = await fetch(`${url}/health`)
  t.equal(health.status, 200, 'the server still answers')
  // A draw's aborted request may still be starting its entry when the draw ends; once
  // the server closed (it waits for every writer and temp file), nothing may be left.
  await app.close()
  recorder.check(t)
  t.same(await strayFiles(dir), [], 'no temp file left')
})
