// Property-based: tus-js-client uploads (random sizes, chunk sizes and protocols) to a
// server that is killed with SIGKILL in the middle of a PATCH at random bytes, one to
// three times, and started again on the same port and tmpDir each time. On every draw:
// after each restart the client's HEAD gets the offset the last finished PATCH made
// durable (the start of the PATCH that was cut), the upload completes as one logical
// upload (no new creation) and byte-identical, its writer was restored once in each
// restarted process and closed exactly once, with 'done', and nothing is left in the store.
// The same for the channel, through the client library, which reconnects on its own: it
// resumes from the last save (at the entry's start and every SAVE_EVERY_BYTES).
import { deepStrictEqual, equal, ok } from 'node:assert/strict'
import { File } from 'node:buffer'
import { join } from 'node:path'
import fc from 'fast-check'
import t from 'tap'
import WebSocket from 'ws'
import { upload, type WebSocketConstructor } from '../client/index.js'
import { SAVE_EVERY_BYTES } from '../lib/transports/channel/channel.js'
import { bytes, eventually, sha256, tmpDirFor } from './kit/index.js'
import { propertyRun } from './kit/property.js'
import { RestartingServer, filesInStore, historyOf, readWriterLog, tusUpload, type Protocol } from './kit/restart.js'

interface Draw {
  size: number
  /** Of the upload's bytes. */
  seed: number
  /** tus-js-client's: one PATCH each. */
  chunkSize: number
  protocol: Protocol
  kills: number[]
}

t.test('uploads killed at random bytes resume from their durable offset, byte-identical, closed once, nothing left', async (t) => {
  const { seed, numRuns } = propertyRun(t, 3)
  const draw: fc.Arbitrary<Draw> = fc.record({
    size: fc.integer({ min: 1, max: 1_500_000 }),
    seed: fc.integer({ min: 1, max: 100_000 }),
    chunkSize: fc.constantFrom(65_536, 200_003, 262_144, 524_288),
    protocol: fc.constantFrom<Protocol>('tus-v1', 'ietf-draft-05'),
    // Where each kill strikes, as a fraction of the upload: the first writeChunk past it is held, then SIGKILL.
    kills: fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 3 })
  })

  // Run first on every seed: a kill in the upload's first chunk (nothing durable but the
  // creation: it resumes from 0), and kills twice in the same PATCH, then in the last one.
  const examples: Array<[Draw]> = [
    [{ size: 700_000, seed: 1, chunkSize: 262_144, protocol: 'tus-v1', kills: [0] }],
    [{ size: 1_400_000, seed: 2, chunkSize: 262_144, protocol: 'ietf-draft-05', kills: [0.4, 0.4, 0.99] }]
  ]

  let draws = 0
  await fc.assert(fc.asyncProperty(draw, async ({ size, seed: dataSeed, chunkSize, protocol, kills }) => {
    draws++
    const data = bytes(size, dataSeed)
    // In order: a later kill point is never before the offset the previous restart resumed from.
    const holds = kills.map((at) => Math.floor(at * size)).sort((a, b) => a - b)
    const holdEnv = (i: number): Record<string, string> => holds[i] === undefined ? {} : { HOLD_AFTER: String(holds[i]) }
    const server = new RestartingServer(t, await tmpDirFor(t), join(await tmpDirFor(t), 'writer.log'))
    await server.start(holdEnv(0))
    const run = tusUpload(data, { endpoint: server.endpoint, protocol, chunkSize, before: async () => await server.up() })
    run.done.catch(() => {}) // awaited below

    const restarts: Array<{ durable: number, exchanges: number }> = []
    for (const [i, hold] of holds.entries()) {
      const held = await Promise.race([server.current!.line('held '), run.done.then(() => 'done')])
      ok(held.startsWith('held '), `the upload ended before the server held it past ${hold}`)
      const exchanges = run.exchanges.length
      deepStrictEqual(await server.stop('SIGKILL'), { code: null, signal: 'SIGKILL' })
      // The PATCH that was cut started at a multiple of chunkSize; the one before it ended there, checkpointed.
      restarts.push({ durable: Math.floor(hold / chunkSize) * chunkSize, exchanges })
      await server.start(holdEnv(i + 1))
    }
    const url = await run.done

    for (const [i, { durable, exchanges }] of restarts.entries()) {
      const resumed = run.exchanges.slice(exchanges)
      const head = resumed.find((e) => e.method === 'HEAD' && e.status !== 0)
      equal(head?.answeredOffset, durable, `after restart ${i + 1}, the HEAD answered ${JSON.stringify(head)}, not offset ${durable}`)
    }
    equal(run.exchanges.filter((e) => e.method === 'POST').length, 1, 'one creation: every restart resumed the same upload')
    deepStrictEqual((await server.consume(url)).json, { sha256: sha256(data), size }, 'consumed byte for byte')

    const log = readWriterLog(server.writerLog)
    const paths = [...new Set(log.map((line) => line.path))]
    equal(paths.length, 1, `one logical upload, not ${paths.length}`)
    const history = historyOf(log, paths[0]!, server.runs.map((r) => r.pid))
    const last = server.runs.length - 1
    deepStrictEqual(history.filter((e) => e.startsWith('close')), [`close:done@${last}`], `one close, 'done': ${history.join(' ')}`)
    deepStrictEqual(history.filter((e) => e.startsWith('restore')), restarts.map(({ durable }, i) => `restore:${durable}@${i + 1}`),
      `restored once in each restarted process, at its durable offset: ${history.join(' ')}`)
    ok(await eventually(async () => (await filesInStore(server.tmpDir)).length === 0), 'nothing left in the store but its claim')
    deepStrictEqual(await server.stop('SIGTERM'), { code: 0, signal: null })
    deepStrictEqual(await filesInStore(server.tmpDir), [], 'nothing left after the server stopped')
  }), { seed, numRuns: examples.length + numRuns, examples, endOnFailure: true })
  t.equal(draws, examples.length + numRuns, `${examples.length} fixed and ${numRuns} random draws, each killed and restarted one to three times`)
})

interface ChannelDraw {
  size: number
  seed: number
  kills: number[]
}

t.test('channel uploads (the client library) killed at random bytes resume from their last save, byte-identical, closed once, nothing left', async (t) => {
  const { seed, numRuns } = propertyRun(t, 2)
  const draw: fc.Arbitrary<ChannelDraw> = fc.record({
    // Small ones, and ones past the first periodic save.
    size: fc.oneof(fc.integer({ min: 1, max: 1_500_000 }), fc.integer({ min: SAVE_EVERY_BYTES + 1, max: SAVE_EVERY_BYTES + 8_000_000 })),
    seed: fc.integer({ min: 1, max: 100_000 }),
    kills: fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 2 })
  })
  const examples: Array<[ChannelDraw]> = [[{ size: SAVE_EVERY_BYTES + 3_000_000, seed: 3, kills: [0.1, 0.97] }]]

  let draws = 0
  await fc.assert(fc.asyncProperty(draw, async ({ size, seed: dataSeed, kills }) => {
    draws++
    const data = bytes(size, dataSeed)
    const holds = kills.map((at) => Math.floor(at * size)).sort((a, b) => a - b)
    const holdEnv = (i: number): Record<string, string> => holds[i] === undefined ? {} : { HOLD_AFTER: String(holds[i]) }
    const server = new RestartingServer(t, await tmpDirFor(t), join(await tmpDirFor(t), 'writer.log'))
    await server.start(holdEnv(0))
    const uploading = upload(`${server.url}/upload`, [new File([data], 'movie.bin')], {
      uploadName: 'file',
      WebSocket: WebSocket as unknown as WebSocketConstructor,
      submit: true,
      retryDelays: Array.from({ length: 200 }, () => 300)
    })
    uploading.catch(() => {}) // awaited below

    const durables: number[] = []
    for (const [i, hold] of holds.entries()) {
      await server.current!.line('held ')
      deepStrictEqual(await server.stop('SIGKILL'), { code: null, signal: 'SIGKILL' })
      // Saved at its creation and every SAVE_EVERY_BYTES (whole chunks of 64 KiB): what a crash keeps.
      durables.push(Math.floor(hold / SAVE_EVERY_BYTES) * SAVE_EVERY_BYTES)
      await server.start(holdEnv(i + 1))
    }
    const result = await uploading
    deepStrictEqual(result.response, { sha256: sha256(data), size }, 'consumed byte for byte')

    const log = readWriterLog(server.writerLog)
    const paths = [...new Set(log.map((line) => line.path))]
    equal(paths.length, 1, `one logical upload, not ${paths.length}`)
    const history = historyOf(log, paths[0]!, server.runs.map((r) => r.pid))
    const last = server.runs.length - 1
    deepStrictEqual(history.filter((e) => e.startsWith('close')), [`close:done@${last}`], `one close, 'done': ${history.join(' ')}`)
    deepStrictEqual(history.filter((e) => e.startsWith('restore')), durables.map((durable, i) => `restore:${durable}@${i + 1}`),
      `restored once in each restarted process, from its last save: ${history.join(' ')}`)
    ok(await eventually(async () => (await filesInStore(server.tmpDir)).length === 0), 'nothing left in the store but its claim')
    deepStrictEqual(await server.stop('SIGTERM'), { code: 0, signal: null })
  }), { seed, numRuns: examples.length + numRuns, examples, endOnFailure: true })
  t.equal(draws, examples.length + numRuns, `${examples.length} fixed and ${numRuns} random draws, each killed and restarted once or twice`)
})
