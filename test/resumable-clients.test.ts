// tus-js-client 4.x in Node against the resumable endpoint, as a user runs it: buffers,
// streams and files, every chunk size, deferred length, creation with upload, parallel
// uploads (concatenation), both IETF draft protocols, abort and terminate, resuming in
// another process, and connections cut or stalled by a proxy. Each upload ends with the
// route consuming it byte-identical; then the guarantees are checked (kit/resumable.ts).
import t from 'tap'
import { spawn } from 'node:child_process'
import { createReadStream } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import type { FastifyReply, FastifyRequest } from 'fastify'
import * as tus from 'tus-js-client'
import { bytes, eventually, sha256, strayFiles, tmpDirFor } from './kit/index.js'
import { FaultProxy } from './kit/fault-proxy.js'
import { TUS, recordOf, setupResumable, type Setup } from './kit/resumable.js'

type Protocol = 'tus-v1' | 'ietf-draft-03' | 'ietf-draft-05'
/** tus-js-client's options, with `protocol`, which its typings lack. */
type Options = tus.UploadOptions & { protocol?: Protocol }
type Input = Buffer | Readable
const FileUrlStorage = (tus as unknown as { FileUrlStorage: new (path: string) => tus.UrlStorage }).FileUrlStorage

const MiB = 1024 * 1024
const config = { maxFileSize: 16 * MiB, chunkSize: 65_536, maxEntries: 4 }

interface Run {
  upload: tus.Upload
  url: string
  /** Offsets the server acknowledged, one per successful PATCH (or creation with data). */
  acked: number[]
}

function newUpload (input: Input, options: Options, acked: number[], resolve: (url: string) => void, reject: (error: Error) => void): tus.Upload {
  const upload: tus.Upload = new tus.Upload(input as Buffer, {
    retryDelays: [0, 20, 50, 100, 200],
    ...options,
    onChunkComplete: (_size, accepted) => { acked.push(accepted) },
    onSuccess: () => resolve(upload.url!),
    onError: (error) => {
      const response = (error as tus.DetailedError).originalResponse
      reject(new Error(`${error.message}${response === null || response === undefined ? '' : ` (${response.getStatus()}: ${response.getBody()})`}`))
    }
  } as tus.UploadOptions)
  return upload
}

/** One upload to its end; the bound only ends a run that would hang (generous: the machine may be loaded). */
async function run (input: Input, options: Options, ms = 120_000): Promise<Run> {
  const acked: number[] = []
  let upload!: tus.Upload
  const url = await new Promise<string>((resolve, reject) => {
    upload = newUpload(input, options, acked, resolve, reject)
    const timer = setTimeout(() => {
      upload.abort().catch(() => {})
      reject(new Error(`no end after ${ms} ms`))
    }, ms)
    timer.unref()
    upload.start()
  })
  return { upload, url, acked }
}

/** The route consumes the upload: its bytes as the writer got them. */
async function consumed (s: Setup, url: string, headers: Record<string, string> = {}): Promise<{ status: number, sha256?: string, name?: string, type?: string, size?: number }> {
  const claim = await s.claim({ file: [url] }, headers)
  return { status: claim.status, ...claim.json.files?.[0] }
}

/** Requests the server saw for one upload, in order: `POST` (its creation), `HEAD`, `PATCH <offset>`, … */
function requestsOf (s: Setup, url: string): string[] {
  const path = new URL(url).pathname
  return s.seen.filter((line) => line.includes(path))
    .map((line) => line.startsWith('POST /up/tus →') ? 'POST' : line.replace(` ${path}`, ''))
}

function pieces (data: Buffer, size: number): Readable {
  const parts: Buffer[] = []
  for (let at = 0; at < data.length; at += size) parts.push(data.subarray(at, at + size))
  return Readable.from(parts, { objectMode: false })
}

for (const protocol of ['tus-v1', 'ietf-draft-03', 'ietf-draft-05'] as const) {
  t.test(`${protocol}: a buffer with chunkSize Infinity, 1 MiB and 1,000,003; one PATCH per chunk, byte-identical`, async (t) => {
    const s = await setupResumable(t, config)
    const data = bytes(Math.floor(2.5 * MiB), 7)
    for (const chunkSize of [Infinity, MiB, 1_000_003]) {
      const before = s.recorder.records.length
      const { url, acked } = await run(data, { endpoint: s.endpoint, chunkSize, protocol, metadata: { filename: 'movie.mp4', filetype: 'video/mp4' } })
      const patches = Math.ceil(data.length / Math.min(chunkSize, data.length))
      t.equal(acked.length, patches, `chunkSize ${chunkSize}: ${patches} PATCH(es)`)
      t.equal(acked.at(-1), data.length)
      const requests = requestsOf(s, url)
      t.equal(requests.filter((r) => r.startsWith('POST')).length, 1, 'one creation')
      t.equal(requests.filter((r) => r.startsWith('PATCH')).length, patches)
      const record = s.recorder.records[before]!
      t.ok(record.chunks.every((size) => size <= config.chunkSize), "the writer's chunks are at most the route's chunkSize")
      t.match(await consumed(s, url), { status: 200, sha256: sha256(data), name: 'movie.mp4', type: 'video/mp4', size: data.length })
    }
    await s.finish(t)
  })
}

t.test('streams: a Readable with uploadSize, and one of unknown length (uploadLengthDeferred), tus and IETF', async (t) => {
  let lengths: Array<string | undefined> = []
  const s = await setupResumable(t, config, {
    before: (app) => app.addHook('onRequest', async (request: FastifyRequest) => {
      if (request.url.includes('/tus') && (request.method === 'POST' || request.method === 'PATCH')) lengths.push(`${request.method} ${String(request.headers['upload-length'] ?? (request.headers['upload-defer-length'] === undefined ? '-' : 'defer'))}`)
    })
  })
  const data = bytes(1_500_000, 8)
  for (const protocol of ['tus-v1', 'ietf-draft-05'] as const) {
    lengths = []
    const known = await run(pieces(data, 70_000), { endpoint: s.endpoint, chunkSize: 400_000, uploadSize: data.length, protocol })
    t.ok(known.acked.every((offset, i) => offset - (known.acked[i - 1] ?? 0) <= 400_000), 'no PATCH larger than chunkSize')
    t.equal((await consumed(s, known.url)).sha256, sha256(data), `${protocol}: known length`)
    t.same(lengths.slice(0, 1), [`POST ${data.length}`])

    lengths = []
    const deferred = await run(pieces(data, 33_333), { endpoint: s.endpoint, chunkSize: 512 * 1024, uploadLengthDeferred: true, protocol })
    t.equal((await consumed(s, deferred.url)).sha256, sha256(data), `${protocol}: deferred length`)
    if (protocol === 'tus-v1') t.equal(lengths[0], 'POST defer', 'the creation defers the length')
    t.equal(lengths.at(-1), `PATCH ${data.length}`, 'the last PATCH brings Upload-Length')
  }
  await s.finish(t)
})

t.test('a file read by path (fs.ReadStream), and an empty buffer', async (t) => {
  const s = await setupResumable(t, config)
  const dir = await tmpDirFor(t)
  const data = bytes(777_777, 9)
  const path = join(dir, 'photo.jpg')
  await writeFile(path, data)
  const file = await run(createReadStream(path), { endpoint: s.endpoint, chunkSize: 300_000, metadata: { filename: 'photo.jpg' } })
  t.equal(file.acked.length, 3)
  t.match(await consumed(s, file.url), { sha256: sha256(data), name: 'photo.jpg' })
  const empty = await run(Buffer.alloc(0), { endpoint: s.endpoint })
  t.match(await consumed(s, empty.url), { size: 0, sha256: sha256(Buffer.alloc(0)) })
  t.same(requestsOf(s, empty.url), ['POST'], 'an empty upload is one creation')
  await s.finish(t)
})

t.test('uploadDataDuringCreation: the first chunk rides on the POST (tus and IETF -05)', async (t) => {
  const s = await setupResumable(t, config)
  const data = bytes(1_200_000, 10)
  for (const protocol of ['tus-v1', 'ietf-draft-05'] as const) {
    const { url, acked } = await run(data, { endpoint: s.endpoint, chunkSize: 500_000, uploadDataDuringCreation: true, protocol })
    t.same(acked, [500_000, 1_000_000, 1_200_000], `${protocol}: the creation acknowledged the first chunk`)
    t.equal(requestsOf(s, url).filter((r) => r.startsWith('PATCH')).length, 2)
    t.equal((await consumed(s, url)).sha256, sha256(data))
    const whole = await run(bytes(1000, 11), { endpoint: s.endpoint, uploadDataDuringCreation: true, protocol })
    t.same(requestsOf(s, whole.url), ['POST'], `${protocol}: a small file is one request`)
    t.equal((await consumed(s, whole.url)).sha256, sha256(bytes(1000, 11)))
  }
  await s.finish(t)
})

t.test('parallelUploads: 3 partial uploads and a final one; byte-identical; no staging file left', async (t) => {
  const s = await setupResumable(t, config)
  const data = bytes(3_000_001, 12)
  const { url } = await run(data, { endpoint: s.endpoint, parallelUploads: 3, metadata: { filename: 'big.bin' } })
  const posts = s.seen.filter((line) => line.startsWith('POST /up/tus'))
  t.equal(posts.length, 4, 'three partials and the final')
  t.equal(s.recorder.records.length, 1, "only the final upload reached the route's writer")
  t.match(await consumed(s, url), { sha256: sha256(data), name: 'big.bin', size: data.length })
  t.same(await strayFiles(s.dir), [], 'the partials were removed once concatenated')
  const again = await run(bytes(5, 13), { endpoint: s.endpoint, parallelUploads: 3 })
  t.equal((await consumed(s, again.url)).sha256, sha256(bytes(5, 13)), 'a file smaller than the number of parts')
  await s.finish(t)
})

t.test('overridePatchMethod: every PATCH is a POST with X-HTTP-Method-Override', async (t) => {
  const s = await setupResumable(t, config)
  const data = bytes(700_000, 14)
  const { url, acked } = await run(data, { endpoint: s.endpoint, chunkSize: 300_000, overridePatchMethod: true })
  t.equal(acked.length, 3)
  t.equal(requestsOf(s, url).filter((r) => r.startsWith('POST')).length, 4, 'the creation and three overridden PATCHes')
  t.equal((await consumed(s, url)).sha256, sha256(data))
  await s.finish(t)
})

t.test('abort(), then a new Upload with uploadUrl: HEAD, then PATCH from the offset the server kept', async (t) => {
  const s = await setupResumable(t, { ...config, chunkSize: 16_384 }, { faults: { chunkDelay: 1 } })
  const data = bytes(2 * MiB, 15)
  const acked: number[] = []
  const first = newUpload(data, { endpoint: s.endpoint, chunkSize: 256 * 1024 }, acked, () => {}, () => {})
  first.start()
  t.ok(await eventually(() => acked.length >= 2), 'two chunks went through')
  await first.abort()
  const kept = await eventually(() => (s.recorder.records[0]?.closes.length ?? 1) === 0 && s.recorder.records[0]!.bytes >= 512 * 1024)
  t.ok(kept, 'the writer is open and holds at least the acknowledged bytes')
  const resumed = await run(data, { endpoint: s.endpoint, uploadUrl: first.url, chunkSize: 256 * 1024 })
  t.equal(resumed.url, first.url, 'the same upload')
  const requests = requestsOf(s, first.url!)
  const head = requests.indexOf('HEAD')
  t.ok(head > 0, 'it asked for the offset')
  const from = Number(requests[head + 1]!.split(' ')[1])
  t.ok(from >= acked.at(-1)!, `and resumed at ${from}, not before the acknowledged ${acked.at(-1)!}`)
  t.equal(requests.filter((r) => r.startsWith('POST')).length, 1, 'no new creation')
  const record = recordOf(s.recorder, data)
  t.ok(record, 'the writer got every byte exactly once, in order')
  t.equal((await consumed(s, resumed.url)).sha256, sha256(data))
  await s.finish(t)
})

t.test('abort(true) terminates: DELETE, the temp file removed, 410 for the URL, a resume starts anew', async (t) => {
  const s = await setupResumable(t, { ...config, chunkSize: 16_384 }, { tmp: true })
  const data = bytes(2 * MiB, 16)
  const acked: number[] = []
  const upload = newUpload(data, { endpoint: s.endpoint, chunkSize: 256 * 1024 }, acked, () => {}, () => {})
  upload.start()
  t.ok(await eventually(() => acked.length >= 1))
  await upload.abort(true)
  t.ok(s.seen.some((line) => line.startsWith('DELETE ')), 'the client sent DELETE')
  t.equal((await s.tus('HEAD', upload.url!, TUS)).status, 410)
  t.same(await strayFiles(s.dir), [], 'the temp file is gone')
  const resumed = await run(data, { endpoint: s.endpoint, uploadUrl: upload.url, chunkSize: 1 * MiB })
  t.not(resumed.url, upload.url, 'resuming a terminated upload starts a new one')
  t.equal((await consumed(s, resumed.url)).size, data.length)
  await s.finish(t)
})

t.test('resume across processes with FileUrlStorage: a child uploads two chunks and exits; this process finds and finishes it', async (t) => {
  const s = await setupResumable(t, { ...config, chunkSize: 16_384 })
  const dir = await tmpDirFor(t)
  const data = bytes(1_300_000, 17)
  const file = join(dir, 'data.bin')
  const storage = join(dir, 'uploads.json')
  await writeFile(file, data)
  await writeFile(storage, '{}')
  const child = `
    import * as tus from 'tus-js-client'
    import { readFileSync } from 'node:fs'
    const { ENDPOINT, FILE, STORAGE } = process.env
    let chunks = 0
    const upload = new tus.Upload(readFileSync(FILE), {
      endpoint: ENDPOINT, chunkSize: 262144, retryDelays: null, storeFingerprintForResuming: true, removeFingerprintOnSuccess: true,
      urlStorage: new tus.FileUrlStorage(STORAGE), metadata: { filename: 'crash.bin' },
      onChunkComplete: () => { if (++chunks === 2) process.exit(0) },
      onError: (error) => { console.error(String(error)); process.exit(2) }
    })
    upload.start()
    setTimeout(() => process.exit(3), 15000).unref()`
  const code = await new Promise<number | null>((resolve) => {
    const proc = spawn(process.execPath, ['--input-type=module', '-e', child], {
      cwd: process.cwd(), env: { ...process.env, ENDPOINT: s.endpoint, FILE: file, STORAGE: storage }, stdio: ['ignore', 'inherit', 'inherit']
    })
    proc.once('exit', resolve)
  })
  t.equal(code, 0, 'the child stopped after two chunks')
  t.equal(s.recorder.records[0]?.bytes, 2 * 262_144, 'the server kept its two chunks')

  const urlStorage = new FileUrlStorage(storage)
  const acked: number[] = []
  let resolveUrl!: (url: string) => void
  let rejectUrl!: (error: Error) => void
  const done = new Promise<string>((resolve, reject) => { resolveUrl = resolve; rejectUrl = reject })
  const upload = newUpload(data, { endpoint: s.endpoint, chunkSize: 262_144, urlStorage, storeFingerprintForResuming: true, removeFingerprintOnSuccess: true }, acked, resolveUrl, rejectUrl)
  const previous = await upload.findPreviousUploads()
  t.equal(previous.length, 1, 'the child left its upload URL behind')
  upload.resumeFromPreviousUpload(previous[0]!)
  upload.start()
  const url = await done
  t.equal(acked[0], 3 * 262_144, 'the first PATCH of this process went on from 524288')
  const requests = requestsOf(s, url)
  t.equal(requests.filter((r) => r.startsWith('POST')).length, 1, 'one creation, by the child')
  t.ok(requests.includes('HEAD'), 'this process asked for the offset')
  t.match(await consumed(s, url), { sha256: sha256(data), name: 'crash.bin' })
  t.ok(await eventually(async () => (await new FileUrlStorage(storage).findAllUploads()).length === 0), 'the stored URL is removed on success')
  await s.finish(t)
})

t.test('connections cut twice mid-PATCH by a proxy: the client resumes each time from the offset the server kept', async (t) => {
  const s = await setupResumable(t, config)
  const proxy = await FaultProxy.start(s.port, [{ direction: 'up', after: 1_000_000, kind: 'cut' }, { direction: 'up', after: 2_200_000, kind: 'cut' }])
  t.teardown(() => proxy.close())
  const data = bytes(3 * MiB, 18)
  const { url } = await run(data, { endpoint: `${proxy.url}/up/tus` })
  t.equal(proxy.stats.faults, 2)
  const requests = requestsOf(s, url)
  t.match(requests, ['POST', 'PATCH 0', 'HEAD', /^PATCH [1-9]\d*$/, 'HEAD', /^PATCH [1-9]\d*$/], 'POST, PATCH 0, then HEAD and PATCH from the kept offset, twice')
  t.ok(recordOf(s.recorder, data), 'the writer got every byte exactly once, in order')
  t.equal((await consumed(s, url)).sha256, sha256(data))
  await s.finish(t)
})

t.test('a stalled connection (half-open): a new client with the upload URL pre-empts the stalled PATCH at once and finishes', async (t) => {
  // chunkTimeout as long as timers allow: only pre-emption can end the stalled PATCH.
  const s = await setupResumable(t, { ...config, chunkTimeout: 2_147_483_647 })
  const proxy = await FaultProxy.start(s.port, [{ direction: 'up', after: 600_000, kind: 'stall' }])
  t.teardown(() => proxy.close())
  const data = bytes(2 * MiB, 19)
  const acked: number[] = []
  const stalled = newUpload(data, { endpoint: `${proxy.url}/up/tus` }, acked, () => {}, () => {})
  stalled.start()
  t.ok(await eventually(() => proxy.stats.faults === 1 && (s.recorder.records[0]?.bytes ?? 0) > 0, 30_000), 'the PATCH stalled after some bytes')
  await stalled.abort()
  const resumed = await run(data, { endpoint: s.endpoint, uploadUrl: stalled.url })
  t.equal(resumed.url, stalled.url, 'the resume pre-empted the stalled PATCH (it cannot time out)')
  t.ok(recordOf(s.recorder, data), 'every byte exactly once, in order')
  t.equal((await consumed(s, resumed.url)).sha256, sha256(data))
  await proxy.close()
  await s.finish(t)
})

t.test("the route's hooks guard the endpoint: without credentials the client fails with 401, with them it uploads", async (t) => {
  const s = await setupResumable(t, config, {
    route: {
      onRequest: async (request: FastifyRequest, reply: FastifyReply) => {
        if (request.headers.authorization !== 'Bearer good') await reply.code(401).send({ error: 'no' })
      }
    }
  })
  await t.rejects(run(bytes(10), { endpoint: s.endpoint }), /401/)
  t.equal(s.recorder.records.length, 0)
  const { url } = await run(bytes(100_000, 20), { endpoint: s.endpoint, headers: { authorization: 'Bearer good' } })
  t.equal((await consumed(s, url, { authorization: 'Bearer good' })).sha256, sha256(bytes(100_000, 20)))
  await s.finish(t)
})
