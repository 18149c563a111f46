// Resumable uploads outlive the server process. A real server (test/fixtures/restart-server.ts,
// the default store in its tmpDir) is killed with SIGKILL, or stopped with SIGTERM, in the
// middle of a PATCH from tus-js-client (tus 1.0 and the IETF draft -05), and started again
// on the same port and tmpDir: the client's next HEAD gets the offset the last checkpoint
// made durable, never 0, the upload goes on from there, and the route consumes it byte for
// byte. The writer log (one JSON line per writer call, across processes) shows one logical
// upload: restored in the new process, closed exactly once, with 'done'. Also: SIGTERM
// while an upload waits between PATCHes (a new Upload with its URL resumes it), kill -9
// during a checkpoint (the upload resumes from the one before), a finished upload waiting
// for its URL to be posted outlives kill -9, a second process on the same tmpDir is refused, and a damaged record, or one whose bytes were
// lost, is reported and dropped.
import { existsSync } from 'node:fs'
import { readdir, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { bytes, eventually, sha256, tmpDirFor, until } from './kit/index.js'
import {
  RestartingServer, ServerProcess, filesInStore, historyOf, readWriterLog, storeDirOf, tusUpload,
  type Protocol, type TusRun
} from './kit/restart.js'

const KiB = 1024
const MiB = 1024 * KiB
/** tus-js-client's chunk: one PATCH each, so an upload is several PATCHes, each checkpointed at its end. */
const CHUNK = 256 * KiB
/** Where the first server stops its writer: in the fifth PATCH, past the fourth's checkpoint. */
const HOLD_AFTER = 4 * CHUNK + 100_000
const PROTOCOLS: Protocol[] = ['tus-v1', 'ietf-draft-05']

interface Started {
  server: RestartingServer
  run: TusRun
  data: Buffer
  /** The upload's temp file, as the first server's writer named it. */
  path: string
}

/**
 * A server, and an upload of `size` bytes whose writer the server holds in its fifth PATCH
 * (or, `during: 'checkpoint'`, in the checkpoint at the fifth PATCH's end, its temp file
 * durable and its record not yet saved).
 */
async function heldUpload (t: Test, protocol: Protocol, size: number, seed: number, during: 'write' | 'checkpoint' = 'write'): Promise<Started> {
  const server = new RestartingServer(t, await tmpDirFor(t), join(await tmpDirFor(t), 'writer.log'))
  await server.start(during === 'write' ? { HOLD_AFTER: String(HOLD_AFTER) } : { HOLD_CHECKPOINT_AFTER: String(4 * CHUNK) })
  const data = bytes(size, seed)
  const run = tusUpload(data, { endpoint: server.endpoint, protocol, chunkSize: CHUNK, before: async () => await server.up() })
  run.done.catch(() => {}) // awaited later; a failure is reported there
  const held = await Promise.race([
    server.current!.line(during === 'write' ? 'held ' : 'checkpointing '),
    run.done.then((url) => { throw new Error(`the upload ended (${url}) before the server held it`) })
  ])
  return { server, run, data, path: held.split(' ')[1]! }
}

function headHeaders (protocol: Protocol): Record<string, string> {
  return protocol === 'tus-v1' ? { 'tus-resumable': '1.0.0' } : { 'upload-draft-interop-version': '5' }
}

/** Checkpoints of `path` by the process `pid`, in order. */
function checkpoints (server: RestartingServer, path: string, pid: number): number[] {
  return readWriterLog(server.writerLog).filter((l) => l.path === path && l.pid === pid && l.event === 'checkpoint').map((l) => l.offset!)
}

/**
 * The upload resumed at `durable` on the second server, ended byte-identical, and left
 * nothing behind; the writer log shows it restored there and closed once, with 'done'.
 * `exchangesBefore`: how many exchanges the client had made when the first server stopped.
 */
async function checkResumed (t: Test, s: Started, durable: number, exchangesBefore: number): Promise<void> {
  const { server, run, data, path } = s
  const url = await run.done
  // What the client sent once the first server was gone: its resume.
  const resumed = run.exchanges.slice(exchangesBefore)
  const head = resumed.find((e) => e.method === 'HEAD' && e.status !== 0)
  t.ok(head !== undefined && head.status >= 200 && head.status < 300, `the client asked for the offset after the restart (${JSON.stringify(head)})`)
  t.equal(head?.answeredOffset, durable, `and was answered the durable offset ${durable}, not 0`)
  const firstPatch = resumed.find((e) => e.method === 'PATCH')
  t.equal(firstPatch?.sentOffset, durable, 'and the next PATCH went on from there')
  t.equal(resumed.filter((e) => e.method === 'POST').length, 0, 'no new upload was created')
  t.equal(url.startsWith(server.endpoint), true, 'the same endpoint')

  const answer = await server.consume(url)
  t.same(answer, { status: 200, json: { sha256: sha256(data), size: data.length } }, 'the route consumed it byte for byte')

  const pids = server.runs.map((r) => r.pid)
  const history = historyOf(readWriterLog(server.writerLog), path, pids)
  t.same(history.filter((e) => e.startsWith('close')), ['close:done@1'], 'one close for the upload, \'done\', in the second process')
  t.ok(history.includes(`restore:${durable}@1`), `the second process restored it at ${durable}`)
  t.equal(history.at(-1), 'discard:true@1', 'and let it go once consumed')
  t.same(readWriterLog(server.writerLog).filter((l) => l.path !== path), [], 'no other writer was made')
  t.ok(await eventually(async () => (await filesInStore(server.tmpDir)).length === 0), 'nothing left in the store but its claim')
  t.same(await readdir(server.tmpDir), ['fastify-chunked-upload'], 'nor in tmpDir')

  const exit = await server.stop('SIGTERM')
  t.same(exit, { code: 0, signal: null }, 'the second server stops cleanly')
  t.same(await filesInStore(server.tmpDir), [], 'nothing left after it stopped')
}

for (const protocol of PROTOCOLS) {
  t.test(`${protocol}: kill -9 in the middle of a PATCH; the restarted server resumes from the last checkpoint`, async (t) => {
    const s = await heldUpload(t, protocol, 3 * MiB, 1)
    const { server, run, path } = s
    const first = server.current!
    const exchangesBefore = run.exchanges.length
    t.same(await server.stop('SIGKILL'), { code: null, signal: 'SIGKILL' }, 'the first server was killed')
    t.same(run.acked, [CHUNK, 2 * CHUNK, 3 * CHUNK, 4 * CHUNK], 'it had acknowledged four PATCHes')
    const durable = checkpoints(server, path, first.pid).at(-1)
    t.equal(durable, 4 * CHUNK, 'its last checkpoint was the fourth PATCH\'s end')
    t.same(readWriterLog(server.writerLog).filter((l) => l.event === 'close' || l.last === true), [], 'it closed nothing, and was not told of an end')

    await server.start()
    await checkResumed(t, s, 4 * CHUNK, exchangesBefore)
  })

  t.test(`${protocol}: kill -9 during a checkpoint (the temp file made durable, its record not yet saved); the restarted server resumes from the checkpoint before`, async (t) => {
    const s = await heldUpload(t, protocol, 3 * MiB, 3, 'checkpoint')
    const { server, run, path } = s
    const first = server.current!
    const exchangesBefore = run.exchanges.length
    t.ok(first.lines.includes(`checkpointing ${path} ${5 * CHUNK}`), 'held in the checkpoint at the fifth PATCH\'s end')
    t.same(await server.stop('SIGKILL'), { code: null, signal: 'SIGKILL' }, 'the first server was killed')
    t.same(run.acked, [CHUNK, 2 * CHUNK, 3 * CHUNK, 4 * CHUNK], 'the fifth PATCH was never acknowledged')
    t.equal(checkpoints(server, path, first.pid).at(-1), 4 * CHUNK, 'the last checkpoint that completed')
    await server.start()
    await checkResumed(t, s, 4 * CHUNK, exchangesBefore)
  })

  t.test(`${protocol}: SIGTERM in the middle of a PATCH; shutdown checkpoints the upload instead of cancelling it`, async (t) => {
    const s = await heldUpload(t, protocol, 3 * MiB, 2)
    const { server, run, path } = s
    const first = server.current!
    const exchangesBefore = run.exchanges.length
    t.same(await server.stop('SIGTERM'), { code: 0, signal: null }, 'the first server closed and exited 0')
    t.ok(first.lines.includes('closed'), 'after app.close() resolved')
    const firstLog = readWriterLog(server.writerLog).filter((l) => l.pid === first.pid)
    t.same(firstLog.filter((l) => l.event === 'close' || l.event === 'discard'), [], 'no close (no \'cancel\') and no discard at shutdown')
    const durable = checkpoints(server, path, first.pid).at(-1)!
    t.ok(durable > HOLD_AFTER, `the last checkpoint (${durable}) holds bytes of the held PATCH: it was made at shutdown`)
    t.match(firstLog.at(-1), { event: 'checkpoint', offset: durable, last: true }, 'the last call on the writer in the first process, told so')
    const cut = run.exchanges[exchangesBefore - 1]
    t.ok(cut?.method === 'PATCH' && cut.status >= 500, `the PATCH under way was answered with a status the client retries (${JSON.stringify(cut)})`)

    await server.start()
    await checkResumed(t, s, durable, exchangesBefore)
  })
}

for (const protocol of PROTOCOLS) {
  t.test(`${protocol}: SIGTERM while an upload waits between PATCHes; a new Upload with its URL resumes it after the restart`, async (t) => {
    const server = new RestartingServer(t, await tmpDirFor(t), join(await tmpDirFor(t), 'writer.log'))
    await server.start()
    const data = bytes(2 * MiB, 4)
    // Once two PATCHes are acknowledged, the next request waits until the upload is aborted: it stops there.
    let aborted!: () => void
    const stopped = new Promise<void>((resolve) => { aborted = resolve })
    const held: { run?: TusRun } = {}
    const first = held.run = tusUpload(data, { endpoint: server.endpoint, protocol, chunkSize: CHUNK, before: async () => { if ((held.run?.acked.length ?? 0) >= 2) await stopped } })
    first.done.catch(() => {}) // aborted below
    await until('two PATCHes acknowledged', () => first.acked.length >= 2)
    await first.upload.abort()
    aborted()
    const url = first.upload.url!
    // A HEAD pre-empts a PATCH the abort may have cut and answers once it let go: the upload is idle.
    const head = await fetch(url, { method: 'HEAD', headers: headHeaders(protocol) })
    const durable = Number(head.headers.get('upload-offset'))
    t.ok(durable >= 2 * CHUNK, `idle at ${durable}`)
    const path = readWriterLog(server.writerLog)[0]!.path

    t.same(await server.stop('SIGTERM'), { code: 0, signal: null }, 'the server stops cleanly')
    t.match(readWriterLog(server.writerLog).at(-1), { event: 'checkpoint', path, offset: durable, last: true }, 'shutdown checkpointed it, and closed nothing')
    await server.start()
    const resumed = tusUpload(data, { endpoint: server.endpoint, protocol, chunkSize: CHUNK, uploadUrl: url })
    await checkResumed(t, { server, run: resumed, data, path }, durable, 0)
  })
}

t.test('kill -9 while a finished upload waits for its URL to be posted: the restarted server consumes it, byte for byte, and leaves nothing', async (t) => {
  const server = new RestartingServer(t, await tmpDirFor(t), join(await tmpDirFor(t), 'writer.log'))
  await server.start()
  const data = bytes(MiB + 123, 6)
  // The plugin's own writer (POST /plain): the plugin removes its file once consumed.
  const url = await tusUpload(data, { endpoint: `${server.url}/plain/tus`, protocol: 'tus-v1', chunkSize: CHUNK }).done
  // Its record written (renamed into place: a temp file beside it is not yet a record).
  await until('the finished upload kept in the store', async () => (await filesInStore(server.tmpDir)).some((name) => /^fcu-store-parked-.*\.json$/.test(name)))
  t.same(await server.stop('SIGKILL'), { code: null, signal: 'SIGKILL' }, 'the first server was killed')
  t.equal((await filesInStore(server.tmpDir)).filter((name) => name.startsWith('upload-')).length, 1, 'its temp file outlived it')

  await server.start()
  t.same(await server.consume(url, '/plain'), { status: 200, json: { sha256: sha256(data), size: data.length } }, 'consumed by the restarted server')
  t.match(await server.consume(url, '/plain'), { status: 400, json: { code: 'FST_CHUNKED_UPLOAD_UNKNOWN_REF' } }, 'once')
  t.ok(await eventually(async () => (await filesInStore(server.tmpDir)).length === 0), 'nothing left in the store but its claim')
  t.same(await server.stop('SIGTERM'), { code: 0, signal: null })
})

t.test('a second process on the same tmpDir is refused with FST_CHUNKED_UPLOAD_STORE_IN_USE; the first still serves', async (t) => {
  const logs = await tmpDirFor(t)
  const server = new RestartingServer(t, await tmpDirFor(t), join(logs, 'writer.log'))
  const first = await server.start()
  const second = new ServerProcess(t, 0, server.tmpDir, join(logs, 'second.log'))
  const listened = second.line('listening ').then(() => 'listening', () => 'exited')
  t.equal(await Promise.race([second.exited.then(() => 'exited'), listened]), 'exited', 'the second did not start')
  const exit = await second.kill('SIGKILL')
  t.not(exit.code, 0, `it exited with ${JSON.stringify(exit)}`)
  t.match(second.output(), /FST_CHUNKED_UPLOAD_STORE_IN_USE/, 'its output names the error')
  t.notOk(second.lines.some((line) => line.startsWith('listening')), 'it never listened')
  t.ok(first.running, 'the first runs on')
  for (const protocol of PROTOCOLS) {
    const data = bytes(600 * KiB, protocol.length)
    const run = tusUpload(data, { endpoint: server.endpoint, protocol, chunkSize: CHUNK })
    const answer = await server.consume(await run.done)
    t.same(answer.json, { sha256: sha256(data), size: data.length }, `${protocol}: the first server took an upload`)
  }
  t.same(await filesInStore(server.tmpDir), [], 'nothing left in its store')
  t.same(await server.stop('SIGTERM'), { code: 0, signal: null }, 'the server stops cleanly')
})

for (const protocol of PROTOCOLS) {
  t.test(`${protocol}: a damaged record is reported at restart, its upload is gone (404 or 410), the client starts anew`, async (t) => {
    const s = await heldUpload(t, protocol, 2 * MiB, 3)
    const { server, run, data, path } = s
    const uploadUrl = run.upload.url!
    await server.stop('SIGKILL')
    const records = (await filesInStore(server.tmpDir)).filter((name) => name.startsWith('fcu-store-upload-'))
    t.equal(records.length, 1, 'the upload has one record')
    await writeFile(join(storeDirOf(server.tmpDir), records[0]!), '{"id": "garbage, cut short')

    const second = await server.start()
    const url = await run.done
    const named = new RegExp(`^.*${records[0]!.replace(/[.-]/g, '\\$&')}.*$`, 'm')
    t.match(await second.logged(named), /corrupt|damaged/i, 'the server logged a line about the damaged record, naming its file')
    const head = run.exchanges.find((e) => e.method === 'HEAD' && e.status !== 0)
    t.ok(head?.status === 404 || head?.status === 410, `the client's HEAD got ${String(head?.status)}`)
    t.not(url, uploadUrl, 'so tus-js-client created a new upload')
    t.same((await server.consume(url)).json, { sha256: sha256(data), size: data.length }, 'which the route consumed byte for byte')
    const again = await fetch(uploadUrl, { method: 'HEAD', headers: headHeaders(protocol) })
    t.ok(again.status === 404 || again.status === 410, `the old URL answers ${again.status}`)

    const pids = server.runs.map((r) => r.pid)
    t.same(historyOf(readWriterLog(server.writerLog), path, pids).filter((e) => !e.startsWith('checkpoint')), ['init@0'], 'the damaged upload\'s writer was never restored nor closed')
    const setAside = [`${records[0]!}.corrupt`]
    await eventually(async () => (await filesInStore(server.tmpDir)).join() === setAside.join()) // the new upload's file goes once consumed
    t.same(await filesInStore(server.tmpDir), setAside, 'nothing of it is left in the store but the record, set aside')
    t.notOk(existsSync(path), 'its temp file, which no record names any more, was removed at start')
    t.same(await server.stop('SIGTERM'), { code: 0, signal: null }, 'the server stops cleanly')
  })
}

for (const protocol of PROTOCOLS) {
  t.test(`${protocol}: bytes lost while the server was down (its temp file cut short): 410, the client starts anew, nothing left after the next start`, async (t) => {
    const s = await heldUpload(t, protocol, 2 * MiB, 5)
    const { server, run, data, path } = s
    const uploadUrl = run.upload.url!
    await server.stop('SIGKILL')
    // What a power loss may leave without fsync: the file shorter than its checkpoint.
    await truncate(path, 1000)

    const second = await server.start()
    const url = await run.done
    const head = run.exchanges.find((e) => e.method === 'HEAD' && e.status !== 0)
    t.equal(head?.status, 410, 'the client\'s HEAD got 410: the upload cannot go on')
    t.not(url, uploadUrl, 'so tus-js-client created a new upload')
    t.same((await server.consume(url)).json, { sha256: sha256(data), size: data.length }, 'which the route consumed byte for byte')
    t.match(await second.logged(/^.*bytes were lost.*$/m), path, 'the server logged why, naming the file')
    t.same(historyOf(readWriterLog(server.writerLog), path, server.runs.map((r) => r.pid)).filter((e) => !e.startsWith('checkpoint')), ['init@0'],
      'its writer was never restored nor closed')
    // This route's writer comes from its own factory, so the plugin cannot tell what its
    // snapshot names: it says so and leaves the file, which the next start removes (no
    // record names it). The plugin's default writer's file would go with the record.
    t.match(await second.logged(/^.*left as it is.*$/m), path, 'the server logged that it left the file the snapshot names')
    t.same(await server.stop('SIGTERM'), { code: 0, signal: null }, 'the server stops cleanly')
    await server.start()
    t.same(await filesInStore(server.tmpDir), [], 'the next start left nothing of it')
    t.same(await server.stop('SIGTERM'), { code: 0, signal: null }, 'the server stops cleanly')
  })
}
