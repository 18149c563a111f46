// Property-based tests of the channel: a fuzz of the protocol (valid, malformed and
// random messages interleaved), and sockets killed at random points during several
// concurrent entries. On every draw: every initialised writer closed exactly once,
// calls never overlapped, done entries are byte-identical, no temp file is left once
// the entries are gone, and the server still serves.
import t from 'tap'
import fc from 'fast-check'
import { Recorder, bytes, eventually, sha256, sleep, strayFiles, tempFiles, tmpDirFor } from './kit/index.js'
import { propertyRun } from './kit/property.js'
import { ProtocolClient, frame, isEnd, startChannelApp, type ServerMessage } from './kit/channel.js'

const { numRuns: RUNS, seed: SEED } = propertyRun(t, 40)

/** One step a client may take: polite, clumsy or hostile. */
const step = fc.oneof(
  fc.record({ kind: fc.constant('announce' as const), id: fc.integer({ min: 1, max: 4 }), size: fc.integer({ min: 0, max: 30_000 }) }),
  fc.record({ kind: fc.constant('send' as const), id: fc.integer({ min: 1, max: 4 }), frames: fc.integer({ min: 1, max: 12 }) }),
  fc.record({ kind: fc.constant('badOffset' as const), id: fc.integer({ min: 1, max: 4 }), offset: fc.integer({ min: 0, max: 2 ** 40 }) }),
  fc.record({ kind: fc.constant('cancel' as const), id: fc.integer({ min: 0, max: 5 }) }),
  fc.record({ kind: fc.constant('randomBinary' as const), data: fc.uint8Array({ maxLength: 64 }) }),
  fc.record({ kind: fc.constant('randomText' as const), text: fc.oneof(fc.string({ maxLength: 80 }), fc.json({ maxDepth: 2 })) }),
  fc.record({ kind: fc.constant('pause' as const), ms: fc.integer({ min: 0, max: 15 }) })
)

t.test('protocol fuzz: random message sequences never break a guarantee', async (t) => {
  const recorder = new Recorder()
  const dir = await tmpDirFor(t)
  const { wsUrl, url } = await startChannelApp(t, (app) => {
    app.post('/up', { allowUpload: { file: { accept: 'any', maxEntries: 6, maxFileSize: 25_000, chunkSize: 4096, chunkTimeout: 2000, writer: recorder.factory } } }, async () => ({}))
    app.post('/tmp', { allowUpload: { file: { accept: 'any', maxEntries: 6, maxFileSize: 25_000, chunkSize: 4096, chunkTimeout: 2000 } } }, async () => ({}))
  }, { tmpDir: dir, entryTtl: 50 })

  await fc.assert(fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 25 }), fc.boolean(), async (steps, tmp) => {
    const before = recorder.records.length
    const client = await ProtocolClient.open(`${wsUrl}/${tmp ? 'tmp' : 'up'}/ws`)
    // What the client believes it has sent, per id, so done entries can be checked.
    const sent = new Map<number, { data: Buffer, offset: number }>()
    for (const s of steps) {
      if (s.kind === 'announce') {
        client.announce(s.id, { size: s.size })
        sent.set(s.id, { data: bytes(s.size, s.id + s.size), offset: 0 })
      } else if (s.kind === 'send') {
        const file = sent.get(s.id)
        if (file === undefined) continue
        for (let i = 0; i < s.frames && file.offset < file.data.length; i++) {
          const piece = file.data.subarray(file.offset, file.offset + 4096)
          client.chunk(s.id, file.offset, piece)
          file.offset += piece.length
        }
      } else if (s.kind === 'badOffset') {
        client.chunk(s.id, s.offset, Buffer.from('zz'))
      } else if (s.kind === 'cancel') {
        client.json({ type: 'cancel', id: s.id })
      } else if (s.kind === 'randomBinary') {
        client.socket.send(Buffer.from(s.data))
      } else if (s.kind === 'randomText') {
        client.socket.send(s.text)
      } else {
        await sleep(s.ms)
      }
    }
    // A barrier, not a sleep: once its answer is here, every message before it was handled.
    // (A cancel of an id the fuzz never uses: only this one can be answered unknown_entry with it.)
    client.json({ type: 'cancel', id: 0xffff_ffff })
    await client.until(() => client.isClosed || client.messages.some((m) => m.code === 'unknown_entry' && m.id === 0xffff_ffff))
    client.socket.terminate()
    const mine = (): typeof recorder.records => tmp ? [] : recorder.records.slice(before)
    if (!(await eventually(() => mine().every((r) => r.closes.length === 1), 15_000))) {
      throw new Error(`not every writer closed once: ${JSON.stringify(mine().map((r) => r.closes))}`)
    }
    if (mine().some((r) => r.overlapped || r.outOfOrder)) throw new Error('overlap or chunk after close')
    if (mine().some((r) => typeof r.closes[0] === 'object')) throw new Error('{ error } without a writer error')
    // Every done entry holds exactly one announced file's bytes.
    const doneHashes = new Set(mine().filter((r) => r.closes[0] === 'done').map((r) => r.hash.copy().digest('hex')))
    const candidates = new Set<string>()
    for (const s of steps) if (s.kind === 'announce') candidates.add(sha256(bytes(s.size, s.id + s.size)))
    for (const hash of doneHashes) if (!candidates.has(hash)) throw new Error('a done entry holds bytes that were never one file')
    // Finished entries wait entryTtl (50 ms), then go with their files.
    return await eventually(async () => (await strayFiles(dir)).length === 0, 15_000)
  }), { numRuns: RUNS, endOnFailure: true, seed: SEED, includeErrorInReport: true })
  recorder.check(t)
  t.equal((await fetch(`${url}/health`)).status, 200, 'the server still serves')
})

t.test('sockets killed at random points during concurrent entries: the guarantees hold on every draw', async (t) => {
  const recorder = new Recorder()
  const dir = await tmpDirFor(t)
  const { wsUrl, url } = await startChannelApp(t, (app) => {
    app.post('/up', { allowUpload: { file: { accept: 'any', maxEntries: 4, maxFileSize: 200_000, chunkSize: 8192, writer: recorder.factory } } }, async (request) => {
      return await request.uploads.consume('file', (meta: { sha256: string }) => meta.sha256)
    })
    app.post('/tmp', { allowUpload: { file: { accept: 'any', maxEntries: 4, maxFileSize: 200_000, chunkSize: 8192 } } }, async (request) => {
      return await request.uploads.consume('file', (meta: { size: number }) => meta.size)
    })
    // An entry can finish after the kill, its `done` never heard: it waits entryTtl for a ref.
  }, { tmpDir: dir, entryTtl: 1000 })

  const draw = fc.record({
    sizes: fc.array(fc.integer({ min: 0, max: 150_000 }), { minLength: 1, maxLength: 4 }),
    seed: fc.integer({ min: 1, max: 1000 }),
    // kill the socket after this many frames in all (undefined: let everything finish)
    killAfter: fc.option(fc.integer({ min: 0, max: 60 }), { nil: undefined }),
    failOn: fc.option(fc.integer({ min: 1, max: 15 }), { nil: undefined }),
    chunkDelay: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
    closeDelay: fc.option(fc.integer({ min: 5, max: 30 }), { nil: undefined }),
    tmp: fc.boolean()
  })

  await fc.assert(fc.asyncProperty(draw, async ({ sizes, seed, killAfter, failOn, chunkDelay, closeDelay, tmp }) => {
    const before = recorder.records.length
    const began = Date.now()
    recorder.faults = { chunkDelay, closeDelay, ...(failOn === undefined ? {} : { throwOnChunk: failOn }) }
    const files = sizes.map((size, i) => bytes(size, seed + i))
    const client = await ProtocolClient.open(`${wsUrl}/${tmp ? 'tmp' : 'up'}/ws`)
    let frames = 0
    let killed = false
    const kill = (): void => {
      if (!killed && killAfter !== undefined && frames >= killAfter) {
        killed = true
        client.socket.terminate()
      }
    }
    kill()
    // All entries at once, each windowed, frames interleaved by the event loop.
    const outcomes = await Promise.all(files.map(async (data, i) => {
      const id = i + 1
      if (killed) return undefined
      client.announce(id, { size: data.length })
      // A killed socket answers no more: stop waiting at once (finished entries wait only entryTtl for their ref).
      const answer = (): ServerMessage | undefined => client.messages.find((m) => m.id === id && (m.type === 'accepted' || m.type === 'error'))
      await client.until(() => killed || answer() !== undefined)
      const accepted = answer()
      if (accepted?.type !== 'accepted' || killed) return accepted
      const { chunkSize, window } = accepted as unknown as { chunkSize: number, window: number }
      const failed = (): boolean => client.messages.some((m) => m.id === id && m.type === 'error')
      const acked = (): number => Math.ceil(client.ackedOffset(id) / chunkSize)
      let sentHere = 0
      for (let offset = 0; offset < data.length; offset += chunkSize) {
        // Each entry keeps under its share of the window.
        await client.until(() => killed || failed() || sentHere - acked() < window / files.length)
        if (killed || failed()) break
        client.socket.send(frame(id, offset, data.subarray(offset, offset + chunkSize)))
        sentHere++
        frames++
        kill()
      }
      if (killed) return undefined
      const outcome = (): ServerMessage | undefined => client.messages.find((m) => m.id === id && (m.type === 'done' || (m.type === 'error' && isEnd(m.code))))
      await client.until(() => killed || outcome() !== undefined)
      return outcome()
    }))
    const mine = (): typeof recorder.records => tmp ? [] : recorder.records.slice(before)
    if (!(await eventually(() => mine().every((r) => r.closes.length === 1), 15_000))) {
      throw new Error(`not every writer closed once: ${JSON.stringify(mine().map((r) => r.closes))}`)
    }
    if (mine().some((r) => r.overlapped || r.outOfOrder)) throw new Error('overlap or chunk after close')
    for (const r of mine()) {
      const reason = typeof r.closes[0] === 'object' ? 'error' : r.closes[0]
      // { error } exactly when writeChunk threw (on call failOn, after failOn - 1 good ones);
      // 'done' only if it never reached that call.
      const threw = failOn !== undefined && r.chunks.length === failOn - 1
      const wrong = reason === 'error' ? !threw : reason === 'done' && failOn !== undefined && r.chunks.length >= failOn
      if (wrong) throw new Error(`close reason ${String(reason)} after ${r.chunks.length} chunks`)
    }
    if (!killed && !tmp && failOn === undefined && outcomes.some((o) => o?.type !== 'done')) {
      throw new Error(`an upload did not finish: ${JSON.stringify(outcomes)}`)
    }
    // Done entries (also those done before the kill) are consumed by the route:
    // byte-identical, and their files go.
    const done = client.messages.filter((m) => m.type === 'done')
    const refs = done.map((m) => m.ref as string)
    if (!killed) client.close()
    if (refs.length > 0) {
      const response = await fetch(`${url}/${tmp ? 'tmp' : 'up'}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file: refs }) })
      if (response.status !== 200) throw new Error(`consume answered ${response.status}: ${await response.text()} after ${Date.now() - began} ms`)
      const consumed = await response.json() as Array<string | number>
      const byRef = new Map(done.map((m) => [m.ref as string, files[(m.id as number) - 1]!]))
      const expected = refs.map((ref) => tmp ? byRef.get(ref)!.length : sha256(byRef.get(ref)!))
      if (JSON.stringify(consumed) !== JSON.stringify(expected)) throw new Error('consumed bytes differ from what was sent')
    }
    return await eventually(async () => (await strayFiles(dir)).length === 0, 15_000)
  }), { numRuns: RUNS, endOnFailure: true, seed: SEED, includeErrorInReport: true })
  recorder.check(t)
  t.equal((await fetch(`${url}/health`)).status, 200, 'the server still serves')
})

t.test('1,000 concurrent sockets, each uploading a small file, all consumed', async (t) => {
  const dir = await tmpDirFor(t)
  const { wsUrl, url } = await startChannelApp(t, (app) => {
    app.post('/up', { allowUpload: { file: { accept: 'any' } } }, async (request) => {
      return await request.uploads.consume('file', (meta: { size: number }) => meta.size)
    })
  }, { tmpDir: dir })
  const count = 1000
  const results = await Promise.all(Array.from({ length: count }, async (_, i) => {
    const client = await ProtocolClient.open(`${wsUrl}/up/ws`)
    const outcome = await client.upload(1, bytes(1000 + i, i), { name: `${i}.bin` })
    client.close()
    return outcome
  }))
  t.equal(results.filter((o) => o.type === 'done').length, count, 'every upload finished')
  t.equal((await tempFiles(dir)).length, count, 'each finished entry waits for its ref, in its temp file')
  const sizes = await Promise.all(results.map(async (o) => {
    const response = await fetch(`${url}/up`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file: o.ref }) })
    return ((await response.json()) as number[])[0]
  }))
  t.same(sizes, Array.from({ length: count }, (_, i) => 1000 + i), 'each consumed with its own bytes')
  t.ok(await eventually(async () => (await strayFiles(dir)).length === 0), 'no temp file left')
})
