// The resumable endpoint's conformance, request by request over real sockets on
// 127.0.0.1: every status and header of tus 1.0 (core and the extensions we announce)
// and of the IETF draft (interop versions 5 to 8). Spec citations are to tus 1.0.0
// (protocol.md) and draft-ietf-httpbis-resumable-upload. After each test the server is
// closed and the guarantees checked: every writer closed exactly once, no overlapping
// calls, no stray temp file; and every answer but OPTIONS carried Tus-Resumable.
import t from 'tap'
import { createHash } from 'node:crypto'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import cors from '@fastify/cors'
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { bytes, eventually, multipart, sha256, strayFiles, tempFiles } from './kit/index.js'
import {
  IMF_FIXDATE, OCTETS, PARTIAL, TUS, WriterGate, heldPatch, idOf, ietf, open, patchHeaders, setupResumable, type Headers, type Reply, type Setup
} from './kit/resumable.js'
import { fakeClock } from './kit/clock.js'

const EXTENSIONS = ['creation', 'creation-with-upload', 'creation-defer-length', 'termination', 'expiration', 'checksum', 'concatenation']

/** PATCH `data` at `offset` in one request. */
async function patch (s: Setup, path: string, offset: number, data: Buffer, more: Headers = {}): Promise<Reply> {
  return await s.tus('PATCH', path, patchHeaders(offset, more), data)
}

async function head (s: Setup, path: string, headers: Headers = TUS): Promise<Reply> {
  return await s.tus('HEAD', path, headers)
}

function offsetOf (reply: Reply): number | undefined {
  const value = reply.headers['upload-offset']
  return value === undefined ? undefined : Number(value)
}

function digest (algorithm: string, data: Buffer): string {
  return createHash(algorithm).update(data).digest('base64')
}

/** The bytes the (only) writer accepted so far. */
function accepted (s: Setup, index = 0): number {
  return s.recorder.records[index]?.bytes ?? 0
}

t.test('OPTIONS (endpoint and upload URL): 204 with Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, Accept-Patch; Tus-Resumable ignored', async (t) => {
  const s = await setupResumable(t, { maxFileSize: 123_456 })
  const path = await s.create()
  for (const [where, headers] of [[s.endpoint, {}], [s.endpoint, { 'tus-resumable': '0.2.2' }], [s.url + path, {}]] as const) {
    const reply = await s.tus('OPTIONS', where, headers)
    t.ok([200, 204].includes(reply.status), `OPTIONS ${where} ${JSON.stringify(headers)}: 200 or 204 (tus 1.0 §OPTIONS; the Server MUST ignore Tus-Resumable)`)
    t.equal(String(reply.headers['tus-version']).split(',')[0]!.trim(), '1.0.0', 'Tus-Version lists 1.0.0 first')
    const extensions = String(reply.headers['tus-extension']).split(',').map((e) => e.trim())
    t.same([...extensions].sort(), [...EXTENSIONS].sort(), 'Tus-Extension names every extension served, and only those')
    t.equal(reply.headers['tus-max-size'], '123456', 'Tus-Max-Size is maxFileSize')
    const algorithms = String(reply.headers['tus-checksum-algorithm']).split(',').map((a) => a.trim())
    t.ok(algorithms.includes('sha1'), 'sha1 is supported (checksum: MUST)')
    t.ok(algorithms.every((a) => /^[\x21-\x40\x5b-\x7e]+$/.test(a)), 'algorithm names are ASCII without uppercase')
    t.match(reply.headers['accept-patch'], /application\/partial-upload/, 'Accept-Patch names application/partial-upload (IETF: MUST)')
    t.equal(reply.headers['upload-limit'], undefined, 'no IETF-draft header for a tus 1.0 client')
  }
  const draft = await s.tus('OPTIONS', s.endpoint, ietf(6))
  t.match(draft.headers['upload-limit'], /max-size=123456/, 'Upload-Limit for a client of the IETF draft')
  await s.finish(t)
})

t.test('412 with Tus-Version for a missing or unsupported Tus-Resumable, and the request is not processed', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create({ ...TUS, 'upload-length': 100 })
  for (const version of [undefined, '0.2.2', '1.0.1', '']) {
    const headers = { 'tus-resumable': version }
    const requests = [
      ['POST', '/up/tus', { ...headers, 'upload-length': 10 }, undefined],
      ['HEAD', path, headers, undefined],
      ['PATCH', path, { ...headers, 'content-type': OCTETS, 'upload-offset': 0 }, bytes(10)],
      ['DELETE', path, headers, undefined]
    ] as const
    for (const [method, where, sent, body] of requests) {
      const reply = await s.tus(method, where, sent, body)
      t.equal(reply.status, 412, `${method} with Tus-Resumable ${String(version)} → 412`)
      t.match(reply.headers['tus-version'], /1\.0\.0/, 'and Tus-Version (tus 1.0 §Tus-Resumable: MUST)')
    }
  }
  t.equal(s.recorder.records.length, 1, 'no creation was processed')
  const after = await head(s, path)
  t.equal(after.status, 200, 'no DELETE was processed')
  t.equal(offsetOf(after), 0, 'no PATCH was processed')
  t.equal(accepted(s), 0)
  await s.finish(t)
})

t.test('creation and core: 201 + Location, Upload-Expires; HEAD with Upload-Offset and Upload-Length, Cache-Control: no-store; PATCHes; the route consumes it', async (t) => {
  const s = await setupResumable(t, {}, { plugin: { resumableExpiry: 60_000 } })
  const clock = fakeClock(t)
  const data = bytes(50_000, 3)
  const created = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': data.length, 'content-length': 0 })
  t.equal(created.status, 201, 'creation: 201 Created')
  t.match(created.headers.location, /^\/up\/tus\/[0-9a-f-]{36}$/, 'Location: the upload URL (relative is allowed)')
  t.match(created.headers['upload-expires'], IMF_FIXDATE, 'Upload-Expires on the POST, as an RFC 7231 date (expiration: MUST when known)')
  const expires = Date.parse(String(created.headers['upload-expires']))
  t.equal(expires, Math.floor((Date.now() + 60_000) / 1000) * 1000, 'resumableExpiry from now (the clock stands still)')
  clock.restore()
  const path = String(created.headers.location)
  t.equal(s.recorder.records.length, 1, 'the writer is initialised at creation')

  const fresh = await head(s, path)
  t.equal(fresh.status, 200)
  t.equal(fresh.headers['upload-offset'], '0', 'HEAD: Upload-Offset even when 0 (core: MUST)')
  t.equal(fresh.headers['upload-length'], String(data.length), 'HEAD: Upload-Length when known (core: MUST)')
  t.equal(fresh.headers['upload-defer-length'], undefined, 'no Upload-Defer-Length when the length is not deferred (creation: MUST be omitted)')
  t.equal(fresh.headers['cache-control'], 'no-store', 'HEAD: Cache-Control: no-store (core: MUST)')
  t.equal(fresh.headers['upload-metadata'], undefined, 'no metadata, no Upload-Metadata')

  const first = await patch(s, path, 0, data.subarray(0, 20_000))
  t.equal(first.status, 204, 'PATCH: 204 No Content (core: MUST)')
  t.equal(first.headers['upload-offset'], '20000', 'with the new offset (core: MUST)')
  t.match(first.headers['upload-expires'], IMF_FIXDATE, 'Upload-Expires on every PATCH answer (expiration: MUST)')
  t.equal(accepted(s), 20_000, 'the offset is what the writer accepted')
  const last = await patch(s, path, 20_000, data.subarray(20_000))
  t.equal(last.status, 204)
  t.equal(last.headers['upload-offset'], String(data.length))
  t.same(s.recorder.reasons(), ['done'], "the last byte closes the writer with 'done'")

  const done = await head(s, path)
  t.equal(done.headers['upload-offset'], String(data.length), 'HEAD: Upload-Offset on a complete upload too (core: MUST)')
  t.equal(done.headers['cache-control'], 'no-store')

  const consumed = await s.claim({ file: [s.url + path] })
  t.equal(consumed.status, 200)
  t.same(consumed.json.files.map((f: { sha256: string }) => f.sha256), [sha256(data)], 'byte-identical')
  t.equal((await head(s, path)).status, 410, 'a consumed upload is gone')
  await s.finish(t)
})

t.test('Upload-Metadata: HEAD echoes it exactly as sent; the consumer sees the decoded name and type; bad metadata is a 400 before any writer', async (t) => {
  const s = await setupResumable(t)
  const name = Buffer.from('résumé 2024.pdf').toString('base64')
  const raw = `filename ${name},is_confidential, filetype YXBwbGljYXRpb24vcGRm`
  const path = await s.create({ ...TUS, 'upload-length': 10, 'upload-metadata': raw })
  const described = await head(s, path)
  t.equal(described.headers['upload-metadata'], raw, 'the value as the client sent it (creation: MUST)')
  await patch(s, path, 0, bytes(10))
  const consumed = await s.claim({ file: path })
  t.match(consumed.json.files, [{ name: 'résumé 2024.pdf', type: 'application/pdf', size: 10 }])

  const short = await s.create({ ...TUS, 'upload-length': 5, 'upload-metadata': `name ${Buffer.from('a.txt').toString('base64')},type ${Buffer.from('text/plain').toString('base64')}` })
  await patch(s, short, 0, bytes(5))
  t.match((await s.claim({ file: short })).json.files, [{ name: 'a.txt', type: 'text/plain' }], 'name and type work as filename and filetype')

  for (const bad of ['filename !!!!', 'filename YQ', 'a YQ==,a Yg==', 'filename YQ== extra', ',', 'filename YQ==,']) {
    const reply = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10, 'upload-metadata': bad })
    t.equal(reply.status, 400, `Upload-Metadata ${JSON.stringify(bad)} → 400`)
  }
  t.equal(s.recorder.records.length, 2, 'no writer for a refused creation')
  await s.finish(t)
})

t.test('Upload-Length: 0 is complete at creation: HEAD 0/0, the writer closed with done, an empty file to consume', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create({ ...TUS, 'upload-length': 0 })
  const described = await head(s, path)
  t.equal(described.headers['upload-offset'], '0')
  t.equal(described.headers['upload-length'], '0')
  t.same(s.recorder.reasons(), ['done'])
  const consumed = await s.claim({ file: [path] })
  t.match(consumed.json.files, [{ size: 0, sha256: sha256(Buffer.alloc(0)) }])
  await s.finish(t)
})

t.test('413 for an Upload-Length over maxFileSize, before any writer or byte (creation: MUST)', async (t) => {
  const s = await setupResumable(t, { maxFileSize: 1000 })
  const over = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 1001 })
  t.equal(over.status, 413)
  t.equal(over.headers.location, undefined)
  const withBody = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 5000, 'content-type': OCTETS }, bytes(100))
  t.equal(withBody.status, 413, 'creation-with-upload too')
  t.equal(s.recorder.records.length, 0, 'no writer was initialised')
  const exact = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 1000 })
  t.equal(exact.status, 201, 'maxFileSize itself is allowed')
  await s.finish(t)
})

t.test('creation-defer-length: Upload-Defer-Length: 1 on HEAD until a PATCH brings Upload-Length; bad combinations are 400; the length never changes', async (t) => {
  const s = await setupResumable(t, { maxFileSize: 10_000 })
  const data = bytes(1500, 9)
  const path = await s.create({ ...TUS, 'upload-defer-length': 1 })
  const deferred = await head(s, path)
  t.equal(deferred.headers['upload-defer-length'], '1', 'HEAD: Upload-Defer-Length: 1 while unknown (MUST)')
  t.equal(deferred.headers['upload-length'], undefined)
  t.equal((await patch(s, path, 0, data.subarray(0, 1000))).status, 204)
  t.equal((await head(s, path)).headers['upload-defer-length'], '1', 'still deferred')
  const tooLong = await patch(s, path, 1000, data.subarray(1000), { 'upload-length': 20_000 })
  t.equal(tooLong.status, 413, 'a declared length over maxFileSize is a 413')
  t.equal(accepted(s), 1000, 'and nothing of it was written')
  const last = await patch(s, path, 1000, data.subarray(1000), { 'upload-length': data.length })
  t.equal(last.status, 204)
  t.equal(last.headers['upload-offset'], String(data.length))
  const known = await head(s, path)
  t.equal(known.headers['upload-length'], String(data.length))
  t.equal(known.headers['upload-defer-length'], undefined, 'no Upload-Defer-Length once known')

  const other = await s.create({ ...TUS, 'upload-length': 100 })
  const changed = await patch(s, other, 0, bytes(10), { 'upload-length': 200 })
  t.equal(changed.status, 400, 'the length cannot change once set (creation: MUST NOT be changed)')
  t.equal(offsetOf(await head(s, other)), 0)
  t.equal((await patch(s, other, 0, bytes(10), { 'upload-length': 100 })).status, 204, 'repeating the same length is fine')

  const below = await s.create({ ...TUS, 'upload-defer-length': 1 })
  await patch(s, below, 0, bytes(100))
  t.equal((await patch(s, below, 100, bytes(10), { 'upload-length': 50 })).status, 400, 'a length below the offset is a 400')
  t.equal(offsetOf(await head(s, below)), 100)
  t.equal((await head(s, below)).headers['upload-defer-length'], '1', 'and the length stays unknown')
  await s.tus('DELETE', below, TUS)

  for (const headers of [{ 'upload-defer-length': 2 }, { 'upload-defer-length': 1, 'upload-length': 10 }, {}, { 'upload-length': '-1' }, { 'upload-length': 'ten' }]) {
    const reply = await s.tus('POST', '/up/tus', { ...TUS, ...headers })
    t.equal(reply.status, 400, `POST ${JSON.stringify(headers)} → 400`)
  }
  t.equal(s.recorder.records.length, 3)
  t.same(await s.claim({ file: [path] }).then((r) => r.json.files[0].sha256), sha256(data))
  await s.finish(t)
})

t.test('creation-with-upload: the POST carries the first bytes (or all), 201 with Upload-Offset (MUST) and Upload-Expires', async (t) => {
  const s = await setupResumable(t)
  const data = bytes(30_000, 4)
  const created = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': data.length, 'content-type': OCTETS }, data.subarray(0, 12_345))
  t.equal(created.status, 201)
  t.equal(created.headers['upload-offset'], '12345', 'Upload-Offset: the accepted bytes')
  t.match(created.headers['upload-expires'], IMF_FIXDATE)
  const path = String(created.headers.location)
  t.equal((await patch(s, path, 12_345, data.subarray(12_345))).status, 204)

  const whole = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 777, 'content-type': OCTETS }, bytes(777, 5))
  t.equal(whole.status, 201)
  t.equal(whole.headers['upload-offset'], '777')
  t.same(s.recorder.reasons(), ['done', 'done'])
  const consumed = await s.claim({ file: [path, String(whole.headers.location)] })
  t.same(consumed.json.files.map((f: { sha256: string }) => f.sha256), [sha256(data), sha256(bytes(777, 5))])
  await s.finish(t)
})

t.test('a creation-with-upload refused for its body (415, 413, 400, 460) leaves no live upload holding a writer and a maxEntries slot', async (t) => {
  const refusals: Array<[number, Headers]> = [
    [415, { 'content-type': 'text/plain' }],
    [413, { 'content-type': OCTETS, 'upload-length': 5 }],
    [400, { 'content-type': OCTETS, 'upload-checksum': `crc32 ${digest('sha1', bytes(10))}` }],
    [460, { 'content-type': OCTETS, 'upload-checksum': `sha1 ${digest('sha1', bytes(11))}` }]
  ]
  for (const [status, headers] of refusals) {
    await t.test(`${status}: ${JSON.stringify(headers)}`, async (t) => {
      const s = await setupResumable(t, { maxEntries: 1 }, { plugin: { owner: () => 'alice' } })
      const refused = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 100, ...headers }, bytes(10))
      t.equal(refused.status, status)
      t.notOk('location' in refused.headers, 'no Location: the refused upload has no URL')
      t.ok(await eventually(() => s.recorder.records.every((r) => r.closes.length === 1)), 'no writer stays open for it')
      t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 100 })).status, 201, 'it took no maxEntries slot')
      await s.finish(t)
    })
  }
})

t.test('a creation-with-upload cut or silent before its answer ends with its writer (nobody has its URL) and frees its slot', async (t) => {
  const s = await setupResumable(t, { maxEntries: 1, chunkTimeout: 300 }, { plugin: { owner: () => 'alice' } })
  const clock = fakeClock(t)
  const cut = open(s.endpoint, 'POST', { ...TUS, 'upload-length': 50_000, 'content-type': OCTETS, 'content-length': 50_000 })
  cut.req.write(bytes(20_000))
  t.ok(await eventually(() => accepted(s) === 20_000), 'bytes reached the writer')
  cut.req.destroy()
  t.equal((await cut.reply).status, 0)
  t.ok(await eventually(() => s.recorder.records[0]!.closes.length === 1), 'the writer is closed')
  t.same(s.recorder.reasons(), ['cancel'])
  const silent = open(s.endpoint, 'POST', { ...TUS, 'upload-length': 50_000, 'content-type': OCTETS, 'content-length': 50_000 })
  silent.req.write(bytes(1000))
  t.ok(await eventually(() => accepted(s, 1) === 1000), 'its bytes reached the writer, then nothing')
  await clock.tickAsync(300)
  t.equal((await silent.reply).status, 0, 'a silent creation is closed after chunkTimeout')
  t.ok(await eventually(() => s.recorder.records[1]?.closes.length === 1))
  clock.restore()
  t.same(s.recorder.reasons(), ['cancel', 'cancel'])
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })).status, 201, 'neither holds a maxEntries slot')
  await s.finish(t)
})

t.test('a chunked creation-with-upload that reaches its length and goes on: 413, and the upload is discarded with its file', async (t) => {
  const s = await setupResumable(t, { maxEntries: 1 }, { tmp: true, plugin: { owner: () => 'alice' } })
  const creation = open(s.endpoint, 'POST', { ...TUS, 'upload-length': 1000, 'content-type': OCTETS })
  creation.req.write(bytes(1000))
  // Barrier: the upload is complete (its file holds the 1000 bytes) before more arrive.
  t.ok(await eventually(async () => {
    const [file] = await tempFiles(s.dir)
    return file !== undefined && (await stat(join(s.dir, file))).size === 1000
  }), 'the first 1000 bytes are stored')
  creation.req.end(bytes(10))
  const answer = await creation.reply
  t.equal(answer.status, 413)
  t.ok(await eventually(async () => (await strayFiles(s.dir)).length === 0), 'its file is removed')
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })).status, 201, 'and its slot is free')
  await s.finish(t)
})

t.test('a complete upload: a PATCH without bytes at its length is a 204, with bytes a 400; the upload is unchanged', async (t) => {
  const s = await setupResumable(t)
  const data = bytes(100, 15)
  const path = await s.create({ ...TUS, 'upload-length': 100 })
  await patch(s, path, 0, data)
  const empty = await s.tus('PATCH', path, patchHeaders(100, { 'content-length': 0 }))
  t.equal(empty.status, 204)
  t.equal(empty.headers['upload-offset'], '100')
  t.equal((await patch(s, path, 100, bytes(1))).status, 400)
  t.equal((await patch(s, path, 0, data)).status, 409, 'a repeat of the whole is an offset mismatch')
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('PATCH Content-Type: 415 unless application/offset+octet-stream (parameters and case tolerated); nothing written on a 415', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create({ ...TUS, 'upload-length': 40 })
  for (const type of ['application/octet-stream', 'text/plain', undefined, 'application/offset+octet-streamx']) {
    const reply = await s.tus('PATCH', path, { ...TUS, 'content-type': type, 'upload-offset': 0 }, bytes(10))
    t.equal(reply.status, 415, `Content-Type ${String(type)} → 415 (core: SHOULD)`)
  }
  t.equal(accepted(s), 0)
  let offset = 0
  for (const type of [`${OCTETS}; charset=x`, 'Application/Offset+Octet-Stream', `${OCTETS} ; foo="bar"`]) {
    const reply = await s.tus('PATCH', path, { ...TUS, 'content-type': type, 'upload-offset': offset }, bytes(10, offset))
    t.equal(reply.status, 204, `Content-Type ${type} is accepted`)
    offset += 10
  }
  t.equal(accepted(s), 30)
  await s.finish(t)
})

t.test('409 on an offset mismatch, with Upload-Offset, and the upload unchanged; a missing or malformed Upload-Offset is a 400', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create({ ...TUS, 'upload-length': 1000 })
  await patch(s, path, 0, bytes(300))
  for (const offset of [0, 299, 301, 1000]) {
    const reply = await patch(s, path, offset, bytes(10))
    t.equal(reply.status, 409, `Upload-Offset ${offset} against 300 → 409 (core: MUST)`)
    t.equal(reply.headers['upload-offset'], '300', 'the 409 says the right offset')
  }
  for (const offset of [undefined, '-1', 'abc', '1.5', '0x10']) {
    const reply = await s.tus('PATCH', path, { ...TUS, 'content-type': OCTETS, 'upload-offset': offset }, bytes(10))
    t.equal(reply.status, 400, `Upload-Offset ${String(offset)} → 400`)
  }
  t.equal(offsetOf(await head(s, path)), 300, 'the upload was not modified')
  t.equal(accepted(s), 300)
  await s.finish(t)
})

t.test('X-HTTP-Method-Override is the method (core: MUST): POST as PATCH, HEAD and DELETE; DELETE as HEAD', async (t) => {
  const s = await setupResumable(t)
  const data = bytes(2000, 8)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  const asPatch = await s.tus('POST', path, { ...patchHeaders(0), 'x-http-method-override': 'PATCH' }, data.subarray(0, 500))
  t.equal(asPatch.status, 204)
  t.equal(asPatch.headers['upload-offset'], '500')
  const asHead = await s.tus('POST', path, { ...TUS, 'x-http-method-override': 'HEAD' })
  t.equal(asHead.status, 200)
  t.equal(asHead.headers['upload-offset'], '500')
  t.equal(asHead.headers['cache-control'], 'no-store')
  const deleteAsHead = await s.tus('DELETE', path, { ...TUS, 'x-http-method-override': 'HEAD' })
  t.equal(deleteAsHead.status, 200, 'the actual method is ignored')
  t.equal(deleteAsHead.headers['upload-offset'], '500', 'and the upload still exists')
  t.equal((await s.tus('POST', path, { ...patchHeaders(500), 'x-http-method-override': 'patch' }, data.subarray(500))).status, 204, 'case-insensitive')
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))

  const other = await s.create()
  const asDelete = await s.tus('POST', other, { ...TUS, 'x-http-method-override': 'DELETE' })
  t.equal(asDelete.status, 204)
  t.equal((await head(s, other)).status, 410)
  t.same(s.recorder.reasons(), ['done', 'cancel'])
  await s.finish(t)
})

t.test('a method a URL does not serve (actual or overridden) is a 405 with Allow and Tus-Resumable, and changes nothing', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create({ ...TUS, 'upload-length': 100 })
  const post = await s.tus('POST', path, patchHeaders(0), bytes(10))
  t.equal(post.status, 405, 'POST on an upload URL')
  t.equal(post.headers.allow, 'OPTIONS, HEAD, PATCH, DELETE')
  t.equal(post.json.code, 'FST_CHUNKED_UPLOAD_METHOD_NOT_ALLOWED')
  t.equal((await s.tus('POST', path, { ...patchHeaders(0), 'x-http-method-override': 'PUT' }, bytes(10))).status, 405, 'overridden to a method it does not serve')
  const patched = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10, 'x-http-method-override': 'PATCH' })
  t.equal(patched.status, 405, 'the endpoint only creates')
  t.equal(patched.headers.allow, 'OPTIONS, POST')
  t.equal((await s.tus('GET', '/up/tus', TUS)).status, 405, 'GET on the endpoint')
  t.equal(s.recorder.records.length, 1)
  t.equal(offsetOf(await head(s, path)), 0)
  await s.finish(t)
})

t.test('unknown uploads: 404 without Upload-Offset for HEAD, PATCH, DELETE', async (t) => {
  const s = await setupResumable(t)
  for (const id of ['3f1b6a38-0000-4000-8000-000000000000', 'nope']) {
    for (const [method, headers] of [['HEAD', TUS], ['PATCH', patchHeaders(0)], ['DELETE', TUS]] as const) {
      const reply = await s.tus(method, `/up/tus/${id}`, headers, method === 'PATCH' ? bytes(5) : undefined)
      t.equal(reply.status, 404, `${method} ${id} → 404`)
      t.equal(reply.headers['upload-offset'], undefined, 'without Upload-Offset (core: SHOULD)')
    }
  }
  await s.finish(t)
})

t.test('termination: DELETE → 204, the writer gets cancel, then 410 for every request; a finished upload is discarded too', async (t) => {
  const s = await setupResumable(t, {}, { tmp: true })
  const path = await s.create({ ...TUS, 'upload-length': 5000 })
  await patch(s, path, 0, bytes(2000))
  t.equal((await tempFiles(s.dir)).length, 1, 'the temp file exists')
  const deleted = await s.tus('DELETE', path, TUS)
  t.equal(deleted.status, 204, 'DELETE → 204 (termination: MUST)')
  t.same(await strayFiles(s.dir), [], 'its file is removed')
  for (const [method, headers] of [['HEAD', TUS], ['PATCH', patchHeaders(2000)], ['DELETE', TUS]] as const) {
    const reply = await s.tus(method, path, headers, method === 'PATCH' ? bytes(5) : undefined)
    t.equal(reply.status, 410, `${method} after DELETE → 410 (termination: SHOULD 404 or 410)`)
    t.equal(reply.headers['upload-offset'], undefined)
  }
  const done = await s.create({ ...TUS, 'upload-length': 100 })
  await patch(s, done, 0, bytes(100))
  t.equal((await s.tus('DELETE', done, TUS)).status, 204, 'a complete upload can be terminated')
  t.same(await strayFiles(s.dir), [], 'its file is removed')
  const claim = await s.claim({ file: done })
  t.equal(claim.status, 400, 'and its ref is no longer claimable')
  await s.finish(t)
})

t.test('413 before any byte when Upload-Offset + Content-Length exceeds Upload-Length; the upload goes on', async (t) => {
  const s = await setupResumable(t)
  const data = bytes(1000, 2)
  const path = await s.create({ ...TUS, 'upload-length': 1000 })
  await patch(s, path, 0, data.subarray(0, 400))
  const over = await patch(s, path, 400, bytes(601))
  t.equal(over.status, 413)
  t.equal(over.json.code, 'FST_CHUNKED_UPLOAD_PAST_LENGTH', 'the reason is the declared length, not the route limit')
  t.match(over.json.message, /upload length of 1000 bytes/)
  t.equal(over.headers['upload-limit'], undefined, 'no IETF-draft header on a tus 1.0 answer')
  t.equal(accepted(s), 400, 'not a byte of it was written')
  t.equal(offsetOf(await head(s, path)), 400)
  t.equal((await patch(s, path, 400, data.subarray(400))).status, 204)
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('chunked PATCH over the length: 413, a truthful HEAD offset, and the upload resumes from it', async (t) => {
  const s = await setupResumable(t, { chunkSize: 1000 })
  const data = bytes(10_000, 6)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  const { req, reply } = open(s.url + path, 'PATCH', patchHeaders(0))
  for (let at = 0; at < 20_000; at += 2500) req.write(at < data.length ? data.subarray(at, at + 2500) : bytes(2500, at))
  req.end()
  const answer = await reply
  t.equal(answer.status, 413, '413 once the body passes the length')
  t.equal(answer.json?.code, 'FST_CHUNKED_UPLOAD_PAST_LENGTH')
  const offset = offsetOf(await head(s, path))!
  t.equal(offset, accepted(s), 'HEAD reports what the writer accepted')
  t.ok(offset <= data.length)
  if (offset < data.length) t.equal((await patch(s, path, offset, data.subarray(offset))).status, 204)
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data), 'nothing past the length was kept')
  await s.finish(t)
})

t.test('checksum: sha1, sha256, md5 accepted; a mismatch is 460 and an unsupported algorithm 400, both leaving the offset', async (t) => {
  const s = await setupResumable(t)
  const data = bytes(3000, 12)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  let offset = 0
  for (const algorithm of ['sha1', 'sha256', 'md5']) {
    const piece = data.subarray(offset, offset + 1000)
    const wrong = await patch(s, path, offset, piece, { 'upload-checksum': `${algorithm} ${digest(algorithm, bytes(1000, 99))}` })
    t.equal(wrong.status, 460, `${algorithm} mismatch → 460 (checksum: MAY, the chunk MUST be discarded)`)
    t.equal(offsetOf(await head(s, path)), offset, 'offset unchanged')
    t.equal(accepted(s), offset, 'nothing reached the writer')
    for (const header of [`crc32 ${digest('sha1', piece)}`, `SHA1 ${digest('sha1', piece)}`, 'sha1', `sha1 ${digest('sha1', piece)} x`]) {
      const bad = await patch(s, path, offset, piece, { 'upload-checksum': header })
      t.equal(bad.status, 400, `Upload-Checksum ${JSON.stringify(header)} → 400`)
    }
    t.equal(offsetOf(await head(s, path)), offset)
    const good = await patch(s, path, offset, piece, { 'upload-checksum': `${algorithm} ${digest(algorithm, piece)}` })
    t.equal(good.status, 204, `${algorithm} match → 204`)
    offset += 1000
    t.equal(good.headers['upload-offset'], String(offset))
  }
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('checksum: a held append is pre-empted and timed out like any other, and what it held never reaches the writer', async (t) => {
  const s = await setupResumable(t, { chunkTimeout: 400 })
  const clock = fakeClock(t)
  const data = bytes(4000, 13)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  const checksum = { 'upload-checksum': `sha1 ${digest('sha1', data.subarray(0, 2000))}`, 'content-length': 2000 }
  // Barrier: an append holds the upload once its silence timer runs.
  const timers = clock.countTimers()
  const stalled = open(s.url + path, 'PATCH', patchHeaders(0, checksum))
  stalled.req.write(data.subarray(0, 1500))
  t.ok(await eventually(() => clock.countTimers() > timers), 'the PATCH holds the upload')
  // The clock stands still: the HEAD is answered by pre-emption, not by chunkTimeout.
  const described = await head(s, path)
  t.equal(offsetOf(described), 0, 'an unchecked body is not kept')
  t.equal((await stalled.reply).status, 204)
  stalled.req.destroy()
  const silent = open(s.url + path, 'PATCH', patchHeaders(0, checksum))
  silent.req.write(data.subarray(0, 1500))
  t.ok(await eventually(() => clock.countTimers() > timers), 'the second PATCH holds the upload')
  await clock.tickAsync(400)
  t.equal((await silent.reply).status, 0, 'a silent checksummed PATCH is closed after chunkTimeout')
  clock.restore()
  const chunked = open(s.url + path, 'PATCH', patchHeaders(0, { 'upload-checksum': `sha1 ${digest('sha1', data)}` }))
  chunked.req.end(Buffer.concat([data, data]))
  t.equal((await chunked.reply).status, 413, 'a chunked checksummed body over the length is a 413')
  t.equal(accepted(s), 0, 'none of it reached the writer')
  t.equal((await patch(s, path, 0, data, { 'upload-checksum': `sha1 ${digest('sha1', data)}` })).status, 204)
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('checksum: a checksummed body over 16 MiB is a 413 with nothing written; a writer failing after the check is a coded 500, then 410', async (t) => {
  t.test('over 16 MiB', async (t) => {
    const s = await setupResumable(t, { maxFileSize: 40 * 1024 * 1024 })
    const path = await s.create({ ...TUS, 'upload-length': 40 * 1024 * 1024 })
    const big = open(s.url + path, 'PATCH', patchHeaders(0, { 'upload-checksum': `sha1 ${digest('sha1', Buffer.alloc(0))}` }))
    const piece = Buffer.alloc(1024 * 1024, 7)
    for (let i = 0; i < 17; i++) big.req.write(piece)
    big.req.end()
    const answer = await big.reply
    t.equal(answer.status, 413)
    t.equal(answer.json?.code, 'FST_CHUNKED_UPLOAD_CHECKSUM_BODY_TOO_LARGE')
    t.equal(accepted(s), 0)
    t.equal(offsetOf(await head(s, path)), 0)
    await s.finish(t)
  })
  t.test('writer failure', async (t) => {
    const s = await setupResumable(t, {}, { faults: { throwOnChunk: 1 } })
    const data = bytes(100, 16)
    const path = await s.create({ ...TUS, 'upload-length': 100 })
    const failed = await patch(s, path, 0, data, { 'upload-checksum': `sha1 ${digest('sha1', data)}` })
    t.equal(failed.status, 500)
    t.equal(failed.json?.code, 'FST_CHUNKED_UPLOAD_WRITER_FAILURE')
    t.same(s.recorder.reasons(), ['error'])
    t.equal((await head(s, path)).status, 410)
    await s.finish(t)
  })
})

t.test('Expect: 100-continue on a creation with upload and on a PATCH; an empty PATCH changes nothing', async (t) => {
  const s = await setupResumable(t)
  const data = bytes(3000, 14)
  const expecting = async (url: string, method: string, headers: Headers, body: Buffer): Promise<Reply> => {
    const request = open(url, method, { ...headers, expect: '100-continue', 'content-length': body.length })
    let continued = false
    request.req.on('continue', () => {
      continued = true
      request.req.end(body)
    })
    request.req.flushHeaders()
    const reply = await request.reply
    t.ok(continued, `${method}: 100 Continue came first`)
    return reply
  }
  const created = await expecting(s.endpoint, 'POST', { ...TUS, 'upload-length': data.length, 'content-type': OCTETS }, data.subarray(0, 1000))
  t.equal(created.status, 201)
  t.equal(created.headers['upload-offset'], '1000')
  const path = String(created.headers.location)
  const empty = await s.tus('PATCH', path, patchHeaders(1000, { 'content-length': 0 }))
  t.equal(empty.status, 204)
  t.equal(empty.headers['upload-offset'], '1000')
  const rest = await expecting(s.url + path, 'PATCH', patchHeaders(1000), data.subarray(1000))
  t.equal(rest.status, 204)
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('expiration: an idle unfinished upload expires, its writer gets cancel, and later requests get 410', async (t) => {
  const s = await setupResumable(t, {}, { plugin: { resumableExpiry: 300 } })
  const clock = fakeClock(t)
  const path = await s.create({ ...TUS, 'upload-length': 1000 })
  const first = await patch(s, path, 0, bytes(100))
  t.equal(Date.parse(String(first.headers['upload-expires'])), Math.floor((Date.now() + 300) / 1000) * 1000, 'Upload-Expires is resumableExpiry away')
  await clock.tickAsync(299)
  t.same(s.recorder.records[0]!.closes, [], 'alive until resumableExpiry')
  await clock.tickAsync(1)
  t.ok(await eventually(() => s.recorder.records[0]!.closes.length === 1), 'the writer is closed')
  t.same(s.recorder.reasons(), ['cancel'])
  clock.restore()
  const gone = await head(s, path)
  t.equal(gone.status, 410, 'HEAD → 410 (expiration: SHOULD 404 or 410)')
  const late = await patch(s, path, 100, bytes(10))
  t.equal(late.status, 410)
  t.match(late.json.message, /expired/)
  await s.finish(t)
})

t.test('expiration during a stalled PATCH: the writer gets cancel at once, and the PATCH a 410 at once', async (t) => {
  const s = await setupResumable(t, { chunkTimeout: 10_000 }, { plugin: { resumableExpiry: 300 } })
  const clock = fakeClock(t)
  const path = await s.create({ ...TUS, 'upload-length': 10_000 })
  const stalled = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': 10_000 }))
  stalled.req.write(bytes(1000))
  t.ok(await eventually(() => accepted(s) === 1000), 'the bytes sent reached the writer, then nothing')
  // A PATCH that sends nothing is no activity: resumableExpiry passes while it is silent.
  await clock.tickAsync(300)
  t.ok(await eventually(() => s.recorder.records[0]!.closes.length === 1), 'expired while the PATCH was silent')
  t.same(s.recorder.reasons(), ['cancel'])
  const answer = await stalled.reply
  t.equal(answer.status, 410, 'the PATCH is stopped and told why')
  t.match(answer.json?.message, /expired/)
  stalled.req.destroy()
  clock.restore()
  t.equal((await head(s, path)).status, 410)
  await s.finish(t)
})

t.test('expiration: activity keeps an upload alive, resumableMaxLifetime ends it anyway', async (t) => {
  const s = await setupResumable(t, {}, { plugin: { resumableExpiry: 400, resumableMaxLifetime: 1200 } })
  const clock = fakeClock(t)
  const created = Date.now()
  const path = await s.create({ ...TUS, 'upload-length': 1000 })
  let offset = 0
  for (let i = 0; i < 5; i++) {
    await clock.tickAsync(200)
    const reply = await patch(s, path, offset, bytes(10, i))
    t.equal(reply.status, 204, `PATCH ${i} after 200 ms keeps it alive`)
    offset += 10
    const expires = Math.min(Date.now() + 400, created + 1200)
    t.equal(Date.parse(String(reply.headers['upload-expires'])), Math.floor(expires / 1000) * 1000, 'Upload-Expires never passes the lifetime')
  }
  t.same(s.recorder.records[0]!.closes, [], 'alive at 1000 ms, past resumableExpiry twice over')
  await clock.tickAsync(200)
  t.ok(await eventually(() => s.recorder.records[0]!.closes.length === 1), 'ended at resumableMaxLifetime')
  t.same(s.recorder.reasons(), ['cancel'])
  clock.restore()
  t.equal((await head(s, path)).status, 410)
  await s.finish(t)
})

t.test('a complete upload does not expire with resumableExpiry: it waits entryTtl for its ref, then is gone with its file', async (t) => {
  const s = await setupResumable(t, {}, { tmp: true, plugin: { resumableExpiry: 150, entryTtl: 700 } })
  const clock = fakeClock(t)
  const kept = await s.create({ ...TUS, 'upload-length': 100 })
  await patch(s, kept, 0, bytes(100))
  const dropped = await s.create({ ...TUS, 'upload-length': 10 })
  await patch(s, dropped, 0, bytes(10))
  await clock.tickAsync(350)
  t.equal((await head(s, kept)).status, 200, 'still there after resumableExpiry')
  t.equal((await s.claim({ file: kept })).status, 200)
  await clock.tickAsync(350)
  t.ok(await eventually(async () => (await strayFiles(s.dir)).length === 0), 'the unclaimed one is discarded after entryTtl')
  clock.restore()
  t.equal((await head(s, dropped)).status, 410)
  t.equal((await s.claim({ file: dropped })).status, 400)
  await s.finish(t)
})

t.test('DELETE while a PATCH is running: the PATCH stops, the writer gets one cancel, 204, then 410', async (t) => {
  const s = await setupResumable(t, { chunkSize: 4096 }, { tmp: false })
  // The clock stands still: the DELETE is answered by stopping the PATCH, not by a timer.
  const clock = fakeClock(t)
  const path = await s.create({ ...TUS, 'upload-length': 100_000 })
  const running = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': 100_000 }))
  running.req.write(bytes(30_000))
  t.ok(await eventually(() => accepted(s) === 30_000), 'the bytes sent reached the writer')
  const deleted = await s.tus('DELETE', path, TUS)
  t.equal(deleted.status, 204)
  const stopped = await running.reply
  t.ok(stopped.status === 0 || stopped.status === 204 || stopped.status === 410, `the running PATCH ended (${stopped.status})`)
  running.req.destroy()
  t.same(s.recorder.reasons(), ['cancel'])
  clock.restore()
  t.equal((await head(s, path)).status, 410)
  await s.finish(t)
})

t.test('a HEAD during a stalled PATCH pre-empts it at once and reports an offset the next PATCH accepts', async (t) => {
  const s = await setupResumable(t, { chunkSize: 4096, chunkTimeout: 30_000 })
  // The clock stands still: the HEAD is answered by pre-emption, not by chunkTimeout.
  const clock = fakeClock(t)
  const data = bytes(100_000, 21)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  const stalled = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': data.length }))
  stalled.req.write(data.subarray(0, 40_000))
  t.ok(await eventually(() => accepted(s) === 40_000))
  const described = await head(s, path)
  t.equal(described.status, 200)
  t.equal(offsetOf(described), 40_000, 'the offset is every byte the writer accepted')
  const answer = await stalled.reply
  t.equal(answer.status, 204, 'the pre-empted PATCH answers with what it kept')
  t.equal(answer.headers['upload-offset'], '40000')
  t.equal(answer.headers.connection, 'close', 'and closes its connection')
  stalled.req.destroy()
  clock.restore()
  const rest = await patch(s, path, 40_000, data.subarray(40_000))
  t.equal(rest.status, 204, 'the next PATCH at that offset is accepted (IETF §Concurrency: MUST)')
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('pre-emption waits for the writer call in flight; a PATCH whose client left while it waited changes nothing', async (t) => {
  const gate = new WriterGate()
  let aborted = 0
  const s = await setupResumable(t, { chunkSize: 1000, chunkTimeout: 30_000 }, { gate, before: (app) => { app.addHook('onRequestAbort', async (_request) => { aborted++ }) } })
  const data = bytes(5000, 25)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  const first = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': data.length }))
  first.req.write(data.subarray(0, 1000))
  t.ok(await eventually(() => accepted(s) === 1000), 'the first chunk went through')
  gate.shut()
  first.req.write(data.subarray(1000, 3000))
  t.ok(await eventually(() => gate.held === 1), 'the writer is held in its second writeChunk')
  const left = open(s.url + path, 'PATCH', patchHeaders(1000, { 'content-length': 10 }))
  left.req.end(bytes(10))
  t.ok(await eventually(() => s.seen.includes(`PATCH ${path} 1000`)), 'the second PATCH waits for the upload')
  left.req.destroy()
  t.ok(await eventually(() => aborted === 1), 'and its client left')
  const described = head(s, path)
  t.ok(await eventually(() => s.seen.includes(`HEAD ${path}`)), 'a HEAD waits too')
  gate.open()
  // The call in flight is part of a write of one network read: that write completes.
  const offset = offsetOf(await described)!
  t.ok(offset >= 2000, `the HEAD answered once the call in flight settled, with its bytes (${offset})`)
  t.equal(offsetOf(await first.reply), offset, 'the pre-empted PATCH answered the same offset')
  first.req.destroy()
  t.equal(accepted(s), offset, 'the PATCH that left wrote nothing')
  t.equal((await patch(s, path, offset, data.subarray(offset))).status, 204)
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('a HEAD queued behind a DELETE answers 410, not the offset of the upload the DELETE ended', async (t) => {
  const { s, gate, path, running } = await heldPatch(t)
  t.ok(await eventually(() => gate.held === 1), 'the PATCH holds the upload, its writer call in flight')
  const deleted = s.tus('DELETE', path, TUS)
  t.ok(await eventually(() => s.seen.includes(`DELETE ${path}`)), 'the DELETE waits for the upload first')
  const described = s.tus('HEAD', path, TUS)
  t.ok(await eventually(() => s.seen.includes(`HEAD ${path}`)), 'then the HEAD')
  gate.open()
  t.equal((await deleted).status, 204)
  const answer = await described
  t.equal(answer.status, 410, 'the DELETE came first')
  t.equal(answer.headers['upload-offset'], undefined)
  running.req.destroy()
  await s.finish(t)
})

t.test('a new PATCH pre-empts a half-open one at the same offset it would have been told', async (t) => {
  const s = await setupResumable(t, { chunkSize: 4096, chunkTimeout: 30_000 })
  const data = bytes(60_000, 22)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  const stale = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': data.length }))
  stale.req.write(data.subarray(0, 20_000))
  t.ok(await eventually(() => accepted(s) === 20_000))
  const fresh = await patch(s, path, 20_000, data.subarray(20_000))
  t.equal(fresh.status, 204)
  t.equal(fresh.headers['upload-offset'], String(data.length))
  t.equal((await stale.reply).status, 204)
  stale.req.destroy()
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('a PATCH cut midway keeps exactly what the writer accepted: HEAD offset = writer bytes; resuming gives identical bytes', async (t) => {
  const s = await setupResumable(t, { chunkSize: 3000 }, { faults: { chunkDelay: 1 } })
  const data = bytes(200_000, 23)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  const cut = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': data.length }))
  cut.req.write(data.subarray(0, 70_000))
  t.ok(await eventually(() => accepted(s) > 10_000))
  cut.req.destroy()
  t.equal((await cut.reply).status, 0)
  // The writer may still be taking a chunk: the HEAD waits for it.
  const offset = offsetOf(await head(s, path))!
  t.equal(offset, accepted(s), 'HEAD offset = what the writer accepted')
  t.ok(offset > 0 && offset <= 70_000)
  t.equal((await patch(s, path, offset, data.subarray(offset))).status, 204)
  const record = s.recorder.records[0]!
  t.equal(record.bytes, data.length, 'every byte exactly once')
  t.equal(record.hash.copy().digest('hex'), sha256(data), 'in order')
  await s.finish(t)
})

t.test('a client silent for chunkTimeout: the PATCH connection is closed, the bytes kept, the upload resumable', async (t) => {
  const s = await setupResumable(t, { chunkTimeout: 300 })
  const clock = fakeClock(t)
  const data = bytes(5000, 24)
  const path = await s.create({ ...TUS, 'upload-length': data.length })
  const silent = open(s.url + path, 'PATCH', patchHeaders(0, { 'content-length': data.length }))
  silent.req.write(data.subarray(0, 2000))
  t.ok(await eventually(() => accepted(s) === 2000))
  await clock.tickAsync(300)
  const ended = await silent.reply
  t.equal(ended.status, 0, 'the connection is closed at chunkTimeout (core: a timeout SHOULD close the connection)')
  clock.restore()
  t.equal(offsetOf(await head(s, path)), 2000)
  t.equal((await patch(s, path, 2000, data.subarray(2000))).status, 204)
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('writer failures: a coded 500, the writer closed with { error }, and later requests get 410', async (t) => {
  t.test('writeChunk throws', async (t) => {
    const s = await setupResumable(t, { chunkSize: 1000 }, { faults: { throwOnChunk: 3 } })
    const path = await s.create({ ...TUS, 'upload-length': 10_000 })
    const failed = await patch(s, path, 0, bytes(5000))
    t.equal(failed.status, 500)
    t.equal(failed.json?.code, 'FST_CHUNKED_UPLOAD_WRITER_FAILURE')
    t.notMatch(failed.body, /on purpose/, 'the writer error stays on the server')
    t.same(s.recorder.reasons(), ['error'])
    t.equal((await head(s, path)).status, 410)
    t.equal((await patch(s, path, 2000, bytes(10))).status, 410)
    await s.finish(t)
  })
  t.test("close('done') throws", async (t) => {
    const s = await setupResumable(t, {}, { faults: { closeDoneThrows: true } })
    const path = await s.create({ ...TUS, 'upload-length': 100 })
    const failed = await patch(s, path, 0, bytes(100))
    t.equal(failed.status, 500)
    t.equal(failed.json?.code, 'FST_CHUNKED_UPLOAD_WRITER_FAILURE')
    t.equal((await head(s, path)).status, 410)
    t.equal((await s.claim({ file: path })).status, 400)
    await s.finish(t)
  })
  t.test('init throws: the creation fails, no upload', async (t) => {
    const s = await setupResumable(t, {}, { faults: { initThrows: true } })
    const failed = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 100 })
    t.equal(failed.status, 500)
    t.equal(failed.json?.code, 'FST_CHUNKED_UPLOAD_WRITER_FAILURE')
    t.equal(failed.headers.location, undefined)
    await s.finish(t)
  })
})

t.test("owner binding: another owner's requests get 404 and its ref claim 400; the upload is untouched", async (t) => {
  const s = await setupResumable(t, {}, { plugin: { owner: (request: FastifyRequest) => request.headers['x-user'] as string | undefined } })
  const data = bytes(1000, 30)
  const alice = { 'x-user': 'alice' }
  const path = await s.create({ ...TUS, ...alice, 'upload-length': data.length })
  await patch(s, path, 0, data.subarray(0, 400), alice)
  for (const who of [{ 'x-user': 'mallory' }, {}]) {
    t.equal((await head(s, path, { ...TUS, ...who })).status, 404, `HEAD as ${JSON.stringify(who)} → 404`)
    t.equal((await patch(s, path, 400, data.subarray(400), who)).status, 404, 'PATCH → 404')
    t.equal((await s.tus('DELETE', path, { ...TUS, ...who })).status, 404, 'DELETE → 404')
    t.equal((await s.tus('POST', '/up/tus', { ...TUS, ...who, 'upload-concat': `final;${path}` })).status, 400, 'not a partial of theirs')
  }
  t.equal(offsetOf(await head(s, path, { ...TUS, ...alice })), 400, 'untouched')
  t.equal((await patch(s, path, 400, data.subarray(400), alice)).status, 204)
  const stolen = await s.claim({ file: path }, { 'x-user': 'mallory' })
  t.equal(stolen.status, 400)
  t.equal(stolen.json.code, 'FST_CHUNKED_UPLOAD_UNKNOWN_REF')
  const mine = await s.claim({ file: path }, alice)
  t.equal(mine.status, 200)
  t.equal(mine.json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('refs: by absolute URL, path or id, as JSON or a multipart field; once; an unfinished upload is not claimable', async (t) => {
  const s = await setupResumable(t, { maxEntries: 5 })
  const files = [bytes(10, 1), bytes(20, 2), bytes(30, 3), bytes(40, 4)]
  const paths: string[] = []
  for (const data of files) {
    const path = await s.create({ ...TUS, 'upload-length': data.length })
    await patch(s, path, 0, data)
    paths.push(path)
  }
  const unfinished = await s.create({ ...TUS, 'upload-length': 50 })
  t.equal((await s.claim({ file: [unfinished] })).status, 400, 'an unfinished upload is refused')
  t.equal((await head(s, unfinished)).status, 200, 'and left alone')
  const json = await s.claim({ file: [s.url + paths[0]!, paths[1], idOf(paths[2]!)] })
  t.equal(json.status, 200)
  t.same(json.json.files.map((f: { sha256: string }) => f.sha256), files.slice(0, 3).map(sha256), 'in the order submitted')
  const { body, contentType } = multipart([{ name: 'file', data: s.url + paths[3]! }])
  const form = await fetch(`${s.url}/up`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.equal(form.status, 200)
  t.equal(((await form.json()) as { files: Array<{ sha256: string }> }).files[0]!.sha256, sha256(files[3]!))
  t.equal((await s.claim({ file: paths[0] })).status, 400, 'a ref is claimable once')
  t.equal((await head(s, paths[0]!)).status, 410)
  await s.finish(t)
})

t.test('several resumable names: ?upload= picks one (400 without or unknown); Tus-Max-Size is the largest; refs stay with their name', async (t) => {
  const s = await setupResumable(t, { maxFileSize: 1000 }, {
    names: { avatar: { accept: 'any', resumable: true, maxFileSize: 5000 }, plain: { accept: 'any' } }
  })
  const options = await s.tus('OPTIONS', '/up/tus', {})
  t.equal(options.headers['tus-max-size'], '5000')
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10 })).status, 400, 'no name')
  t.equal((await s.tus('POST', '/up/tus?upload=nope', { ...TUS, 'upload-length': 10 })).status, 400, 'unknown name')
  t.equal((await s.tus('POST', '/up/tus?upload=plain', { ...TUS, 'upload-length': 10 })).status, 400, 'a name that is not resumable')
  t.equal((await s.tus('POST', '/up/tus?upload=file', { ...TUS, 'upload-length': 2000 })).status, 413, "each name's own maxFileSize")
  const created = await s.tus('POST', '/up/tus?upload=avatar', { ...TUS, 'upload-length': 2000 })
  t.equal(created.status, 201)
  const path = String(created.headers.location)
  t.notMatch(path, /\?/, 'the Location has no query')
  await patch(s, path, 0, bytes(2000))
  t.equal((await s.claim({ file: path })).status, 400, 'not a ref of "file"')
  const consumed = await s.claim({ avatar: path })
  t.equal(consumed.status, 200)
  t.match(consumed.json.files, [{ uploadName: 'avatar', size: 2000 }])
  await s.finish(t)
})

t.test('validation at creation: accept, validate and maxEntries refuse before any writer', async (t) => {
  const s = await setupResumable(t, {
    accept: ['.txt', 'image/*'],
    maxEntries: 2,
    validate: (entry) => entry.clientName.startsWith('evil') ? 'evil_name' : undefined
  }, { plugin: { owner: () => 'alice' } })
  const meta = (name: string, type?: string): string => `filename ${Buffer.from(name).toString('base64')}` + (type === undefined ? '' : `,filetype ${Buffer.from(type).toString('base64')}`)
  const png = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10, 'upload-metadata': meta('a.png') })
  t.equal(png.status, 415, 'not accepted')
  t.equal(png.json.code, 'FST_CHUNKED_UPLOAD_NOT_ACCEPTED')
  const evil = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10, 'upload-metadata': meta('evil.txt') })
  t.equal(evil.status, 422)
  t.equal(s.recorder.records.length, 0)
  await s.create({ ...TUS, 'upload-length': 10, 'upload-metadata': meta('a.txt') })
  await s.create({ ...TUS, 'upload-length': 10, 'upload-metadata': meta('x', 'image/png') })
  const third = await s.tus('POST', '/up/tus', { ...TUS, 'upload-length': 10, 'upload-metadata': meta('b.txt') })
  t.equal(third.status, 413, 'maxEntries unfinished uploads per owner')
  t.equal(third.json.code, 'FST_CHUNKED_UPLOAD_TOO_MANY_FILES')
  await s.finish(t)
})

t.test('concatenation: partials, a final upload of their bytes in order, Upload-Concat echoed, 403 for a PATCH on the final', async (t) => {
  const s = await setupResumable(t, { maxFileSize: 100_000 })
  const parts = [bytes(7000, 41), bytes(1, 42), bytes(12_345, 43)]
  const paths: string[] = []
  for (const data of parts) {
    const path = await s.create({ ...TUS, 'upload-length': data.length, 'upload-concat': 'partial' })
    const described = await head(s, path)
    t.equal(described.headers['upload-concat'], 'partial', 'HEAD on a partial echoes Upload-Concat (MUST)')
    t.equal(described.headers['upload-offset'], '0', 'and has Upload-Offset (MUST)')
    t.equal((await patch(s, path, 0, data)).status, 204)
    paths.push(path)
  }
  t.equal(s.recorder.records.length, 0, "partials are staged, not given to the route's writer")
  t.equal((await s.claim({ file: paths[0] })).status, 400, 'a partial is not a ref the route can claim (it skipped accept and validate)')
  const unfinished = await s.create({ ...TUS, 'upload-length': 10, 'upload-concat': 'partial' })
  const early = await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': `final;${paths[0]!} ${unfinished}` })
  t.equal(early.status, 400, 'concatenation-unfinished is not announced: an unfinished partial is refused')
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': 'final;/up/tus/nope' })).status, 400, 'unknown partial')
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': 'final;' })).status, 400, 'no partial')
  const concat = `final;${s.url}${paths[0]!} ${paths[1]!} ${paths[2]!}`
  const final = await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': concat, 'upload-metadata': `filename ${Buffer.from('all.bin').toString('base64')}` })
  t.equal(final.status, 201)
  const path = String(final.headers.location)
  const total = parts.reduce((sum, p) => sum + p.length, 0)
  const described = await head(s, path)
  t.equal(described.headers['upload-length'], String(total), 'the final length is the sum of the partials (MUST)')
  t.equal(described.headers['upload-offset'], String(total), 'Upload-Offset = Upload-Length once concatenated (MUST)')
  t.equal(described.headers['upload-concat'], concat, 'Upload-Concat as received (MUST)')
  const refused = await patch(s, path, total, bytes(1))
  t.equal(refused.status, 403, 'PATCH on a final upload → 403 (MUST)')
  t.equal(offsetOf(await head(s, path)), total, 'and it is not modified')
  for (const part of paths) t.equal((await head(s, part)).status, 410, 'partials are gone once concatenated (MAY)')
  const consumed = await s.claim({ file: path })
  t.match(consumed.json.files, [{ name: 'all.bin', size: total, sha256: sha256(Buffer.concat(parts)) }])
  t.equal((await s.tus('DELETE', unfinished, TUS)).status, 204)
  await s.finish(t)
})

t.test('concatenation: a final over maxFileSize is a 413; partials stay usable', async (t) => {
  const s = await setupResumable(t, { maxFileSize: 1000 })
  const a = await s.create({ ...TUS, 'upload-length': 600, 'upload-concat': 'partial' })
  const b = await s.create({ ...TUS, 'upload-length': 600, 'upload-concat': 'partial' })
  await patch(s, a, 0, bytes(600, 1))
  await patch(s, b, 0, bytes(600, 2))
  t.equal((await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': `final;${a} ${b}` })).status, 413)
  const final = await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': `final;${b}` })
  t.equal(final.status, 201)
  t.equal((await s.claim({ file: String(final.headers.location) })).json.files[0].sha256, sha256(bytes(600, 2)))
  await s.finish(t)
})

t.test('concatenation: a final counts toward maxEntries; a writer failing during concatenation is a coded 500, then 410', async (t) => {
  const s = await setupResumable(t, { maxEntries: 1 }, { faults: { throwOnChunk: 2 }, plugin: { owner: () => 'alice' } })
  const a = await s.create({ ...TUS, 'upload-length': 50_000, 'upload-concat': 'partial' })
  await patch(s, a, 0, bytes(50_000, 1))
  const busy = await s.create({ ...TUS, 'upload-length': 10 })
  const full = await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': `final;${a}` })
  t.equal(full.status, 413, 'maxEntries unfinished uploads already')
  t.equal(full.json.code, 'FST_CHUNKED_UPLOAD_TOO_MANY_FILES')
  await s.tus('DELETE', busy, TUS)
  const failed = await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': `final;${a}` })
  t.equal(failed.status, 500)
  t.equal(failed.json.code, 'FST_CHUNKED_UPLOAD_WRITER_FAILURE')
  t.same(s.recorder.reasons(), ['cancel', 'error'])
  await s.finish(t)
})

t.test('concatenation: a complete partial never used expires like an unfinished upload, with its staged file', async (t) => {
  const s = await setupResumable(t, {}, { plugin: { resumableExpiry: 300 } })
  const clock = fakeClock(t)
  const partial = await s.create({ ...TUS, 'upload-length': 100, 'upload-concat': 'partial' })
  await patch(s, partial, 0, bytes(100))
  t.equal((await tempFiles(s.dir)).length, 1, 'staged')
  await clock.tickAsync(300)
  t.ok(await eventually(async () => (await strayFiles(s.dir)).length === 0), 'removed at expiry')
  clock.restore()
  t.equal((await head(s, partial)).status, 410)
  await s.finish(t)
})

t.test('concatenation: a partial may be used twice in one final', async (t) => {
  const s = await setupResumable(t)
  const a = await s.create({ ...TUS, 'upload-length': 300, 'upload-concat': 'partial' })
  const b = await s.create({ ...TUS, 'upload-length': 200, 'upload-concat': 'partial' })
  await patch(s, a, 0, bytes(300, 1))
  await patch(s, b, 0, bytes(200, 2))
  const final = await s.tus('POST', '/up/tus', { ...TUS, 'upload-concat': `final;${a} ${b} ${a}`, 'upload-metadata': `name ${Buffer.from('aba.bin').toString('base64')}` })
  t.equal(final.status, 201)
  const expected = Buffer.concat([bytes(300, 1), bytes(200, 2), bytes(300, 1)])
  t.match((await s.claim({ file: String(final.headers.location) })).json.files, [{ name: 'aba.bin', sha256: sha256(expected) }])
  await s.finish(t)
})

t.test('shutdown: an unfinished upload and a finished unclaimed one are kept for the next process, a staged partial is removed', async (t) => {
  const s = await setupResumable(t, {}, { tmp: true })
  const unfinished = await s.create({ ...TUS, 'upload-length': 1000 })
  await patch(s, unfinished, 0, bytes(500))
  const finished = await s.create({ ...TUS, 'upload-length': 10 })
  await patch(s, finished, 0, bytes(10))
  const partial = await s.create({ ...TUS, 'upload-length': 10, 'upload-concat': 'partial' })
  await patch(s, partial, 0, bytes(10))
  t.equal((await tempFiles(s.dir)).length, 3)
  await s.finish(t)
})

t.test('CORS (@fastify/cors): the preflight allows the tus headers and methods, every answer exposes the tus headers', async (t) => {
  const s = await setupResumable(t, {}, { before: (app: FastifyInstance) => { app.register(cors, { origin: true, methods: ['GET', 'HEAD', 'POST', 'PATCH', 'DELETE'] }) } })
  const origin = { origin: 'http://example.test' }
  const preflight = await s.tus('OPTIONS', '/up/tus', {
    ...origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'tus-resumable,upload-length,upload-metadata'
  })
  t.ok([200, 204].includes(preflight.status))
  t.equal(preflight.headers['access-control-allow-origin'], origin.origin)
  t.match(preflight.headers['access-control-allow-headers'], /upload-length/i)
  const created = await s.tus('POST', '/up/tus', { ...TUS, ...origin, 'upload-length': 10 })
  t.equal(created.status, 201)
  const path = String(created.headers.location)
  const patchPreflight = await s.tus('OPTIONS', path, {
    ...origin, 'access-control-request-method': 'PATCH', 'access-control-request-headers': 'tus-resumable,upload-offset,content-type'
  })
  t.match(patchPreflight.headers['access-control-allow-methods'], /PATCH/)
  const answers = {
    created,
    head: await head(s, path, { ...TUS, ...origin }),
    conflict: await patch(s, path, 5, bytes(5), origin),
    patch: await patch(s, path, 0, bytes(10), origin)
  }
  for (const [name, reply] of Object.entries(answers)) {
    const exposed = String(reply.headers['access-control-expose-headers']).toLowerCase().split(',').map((h) => h.trim())
    for (const header of ['location', 'upload-offset', 'upload-length', 'upload-metadata', 'upload-expires', 'tus-resumable', 'tus-version', 'tus-max-size', 'tus-extension', 'upload-complete', 'upload-limit']) {
      t.ok(exposed.includes(header), `${name} (${reply.status}) exposes ${header}`)
    }
  }
  await s.finish(t)
})

// The IETF draft (draft-ietf-httpbis-resumable-upload), interop versions 5 to 8.

t.test('IETF: interop versions 5 to 8 are spoken, others get 412 with nothing processed', async (t) => {
  const s = await setupResumable(t, { maxEntries: 8 })
  for (const version of ['5', '6', '7', '8']) {
    const created = await s.tus('POST', '/up/tus', ietf(version, { 'upload-complete': '?0', 'upload-length': 10 }))
    t.equal(created.status, 201, `interop ${version}: 201`)
    t.ok(created.headers.location, 'with Location (MUST)')
    t.match(created.headers['upload-limit'], /max-size=1000000/, 'and Upload-Limit (MUST)')
    t.equal(created.headers['upload-complete'], '?0')
  }
  const path = await s.create()
  for (const version of ['4', '9', 'x', '']) {
    t.equal((await s.tus('POST', '/up/tus', ietf(version, { 'upload-complete': '?0' }))).status, 412, `interop ${JSON.stringify(version)} → 412`)
    t.equal((await s.tus('DELETE', path, ietf(version))).status, 412)
  }
  t.equal(s.recorder.records.length, 5)
  t.equal((await head(s, path)).status, 200)
  await s.finish(t)
})

for (const version of ['5', '6', '8']) {
  t.test(`IETF interop ${version}: create, HEAD with Upload-Complete, appends, complete with ?1`, async (t) => {
    const s = await setupResumable(t)
    const data = bytes(9000, 50)
    const type = version === '5' ? {} : { 'content-type': PARTIAL }
    const created = await s.tus('POST', '/up/tus', ietf(version, { 'upload-complete': '?0', 'upload-length': data.length }))
    const path = String(created.headers.location)
    const described = await s.tus('HEAD', path, ietf(version))
    t.equal(described.status, 200)
    t.equal(described.headers['upload-offset'], '0', 'HEAD: Upload-Offset (MUST)')
    t.equal(described.headers['upload-complete'], '?0', 'HEAD: Upload-Complete (MUST)')
    t.equal(described.headers['upload-length'], String(data.length), 'HEAD: Upload-Length when supplied (MUST)')
    t.match(described.headers['upload-limit'], /max-size=/, 'HEAD: Upload-Limit (MUST)')
    t.equal(described.headers['cache-control'], 'no-store')
    const first = await s.tus('PATCH', path, ietf(version, { ...type, 'upload-offset': 0, 'upload-complete': '?0' }), data.subarray(0, 4000))
    t.equal(first.status, 204)
    t.equal(first.headers['upload-complete'], '?0')
    t.equal(first.headers['upload-offset'], '4000')
    const last = await s.tus('PATCH', path, ietf(version, { ...type, 'upload-offset': 4000, 'upload-complete': '?1' }), data.subarray(4000))
    t.ok(last.status >= 200 && last.status < 300)
    t.equal(last.headers['upload-complete'], '?1', 'the completing answer says Upload-Complete: ?1 (MUST)')
    t.equal((await s.tus('HEAD', path, ietf(version))).headers['upload-complete'], '?1')
    const more = await s.tus('PATCH', path, ietf(version, { ...type, 'upload-offset': data.length, 'upload-complete': '?1' }), bytes(5))
    t.equal(more.status, 400, 'appending to a complete upload is refused (MUST)')
    t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
    await s.finish(t)
  })
}

t.test('IETF: application/partial-upload is required from interop 6 on; interop 5 appends without a type', async (t) => {
  const s = await setupResumable(t, { maxEntries: 5 })
  for (const version of ['6', '7', '8']) {
    const path = await s.create(ietf(version, { 'upload-complete': '?0', 'upload-length': 20 }))
    for (const type of [undefined, 'application/octet-stream']) {
      const reply = await s.tus('PATCH', path, ietf(version, { 'content-type': type, 'upload-offset': 0, 'upload-complete': '?0' }), bytes(10))
      t.equal(reply.status, 415, `interop ${version}, Content-Type ${String(type)} → 415`)
    }
    const ok = await s.tus('PATCH', path, ietf(version, { 'content-type': `${PARTIAL}; x=y`, 'upload-offset': 0, 'upload-complete': '?0' }), bytes(10))
    t.equal(ok.status, 204, `interop ${version}: partial-upload with a parameter is accepted`)
  }
  const five = await s.create(ietf(5, { 'upload-complete': '?0', 'upload-length': 20 }))
  t.equal((await s.tus('PATCH', five, ietf(5, { 'upload-offset': 0, 'upload-complete': '?0' }), bytes(10))).status, 204)
  t.equal((await s.tus('PATCH', five, ietf(5, { 'content-type': OCTETS, 'upload-offset': 10, 'upload-complete': '?0' }), bytes(10))).status, 204, 'or with the tus type')
  await s.finish(t)
})

t.test('IETF: 409 is a mismatching-upload-offset problem with Upload-Offset (MUST), expected-offset and provided-offset', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create(ietf(6, { 'upload-complete': '?0', 'upload-length': 100 }))
  await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': 0, 'upload-complete': '?0' }), bytes(30))
  const conflict = await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': 10, 'upload-complete': '?0' }), bytes(30))
  t.equal(conflict.status, 409)
  t.equal(conflict.headers['upload-offset'], '30')
  t.match(conflict.headers['content-type'], /^application\/problem\+json/)
  t.match(conflict.json, { type: 'https://iana.org/assignments/http-problem-types#mismatching-upload-offset', 'expected-offset': 30, 'provided-offset': 10 })
  t.equal(accepted(s), 30)
  await s.finish(t)
})

t.test('IETF: every 413 caused by the limits carries Upload-Limit (MUST)', async (t) => {
  const s = await setupResumable(t, { maxFileSize: 1000, maxEntries: 5 })
  const limit = /max-size=1000/
  const byLength = await s.tus('POST', '/up/tus', ietf(6, { 'upload-complete': '?0', 'upload-length': 1001 }))
  t.equal(byLength.status, 413)
  t.match(byLength.headers['upload-limit'], limit, 'creation with Upload-Length over the limit')
  const byContent = await s.tus('POST', '/up/tus', ietf(6, { 'upload-complete': '?1', 'content-type': PARTIAL }), bytes(1001))
  t.equal(byContent.status, 413)
  t.match(byContent.headers['upload-limit'], limit, 'creation with ?1 and a body over the limit')
  const path = await s.create(ietf(6, { 'upload-complete': '?0', 'upload-length': 500 }))
  const append = await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': 0, 'upload-complete': '?0' }), bytes(501))
  t.equal(append.status, 413)
  t.match(append.headers['upload-limit'], limit, 'append past the length')
  t.equal(s.recorder.records.length, 1)
  t.equal(accepted(s), 0)
  await s.finish(t)
})

t.test('IETF: an append that completes a deferred upload past max-size is a 413 with Upload-Limit (MUST)', async (t) => {
  const s = await setupResumable(t, { maxFileSize: 1000 })
  const path = await s.create(ietf(6, { 'upload-complete': '?0' }))
  const over = await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': 0, 'upload-complete': '?1' }), bytes(1001))
  t.equal(over.status, 413)
  t.match(over.headers['upload-limit'], /max-size=1000/)
  const declared = await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': 0, 'upload-complete': '?0', 'upload-length': 5000 }), bytes(10))
  t.equal(declared.status, 413)
  t.match(declared.headers['upload-limit'], /max-size=1000/)
  await s.finish(t)
})

t.test('IETF: creation with Upload-Complete: ?1 carries the whole upload (or none); the length comes from Content-Length', async (t) => {
  const s = await setupResumable(t, { maxEntries: 3 })
  const data = bytes(2345, 60)
  const whole = await s.tus('POST', '/up/tus', ietf(6, { 'upload-complete': '?1', 'content-type': PARTIAL }), data)
  t.equal(whole.status, 201)
  t.equal(whole.headers['upload-complete'], '?1')
  const described = await s.tus('HEAD', String(whole.headers.location), ietf(6))
  t.equal(described.headers['upload-length'], String(data.length), 'the length was recorded (MUST)')
  t.equal(described.headers['upload-complete'], '?1')
  const empty = await s.tus('POST', '/up/tus', ietf(6, { 'upload-complete': '?1' }))
  t.equal(empty.status, 201)
  t.equal(empty.headers['upload-complete'], '?1', 'an empty representation')
  const consumed = await s.claim({ file: [String(whole.headers.location), String(empty.headers.location)] })
  t.same(consumed.json.files.map((f: { size: number }) => f.size), [data.length, 0])
  await s.finish(t)
})

t.test('IETF: a creation with Upload-Complete: ?1 and a chunked body (no Content-Length, no Upload-Length) takes the whole body', async (t) => {
  const s = await setupResumable(t)
  const data = bytes(5000, 62)
  const creation = open(s.endpoint, 'POST', ietf(6, { 'upload-complete': '?1', 'content-type': PARTIAL }))
  creation.req.write(data.subarray(0, 2000))
  creation.req.end(data.subarray(2000))
  const answer = await creation.reply
  t.equal(answer.status, 201)
  t.equal(answer.headers['upload-complete'], '?1')
  if (answer.status === 201) t.equal((await s.claim({ file: String(answer.headers.location) })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('IETF: a malformed Upload-Complete is ignored, as if absent (draft: other values MUST cause the field to be ignored)', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create(ietf(6, { 'upload-complete': '?0', 'upload-length': 100 }))
  const reply = await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': 0, 'upload-complete': 'yes' }), bytes(10))
  t.equal(reply.status, 204)
  t.equal(reply.headers['upload-complete'], '?0')
  await s.finish(t)
})

t.test('IETF: inconsistent lengths are refused (MUST match) and change nothing', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create(ietf(6, { 'upload-complete': '?0', 'upload-length': 100 }))
  const mismatch = await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': 0, 'upload-complete': '?1' }), bytes(50))
  t.equal(mismatch.status, 400, 'Upload-Complete: ?1 with 50 bytes, against Upload-Length 100')
  const other = await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': 0, 'upload-complete': '?0', 'upload-length': 99 }), bytes(50))
  t.equal(other.status, 400, 'another Upload-Length')
  const described = await s.tus('HEAD', path, ietf(6))
  t.equal(described.headers['upload-offset'], '0')
  t.equal(described.headers['upload-length'], '100')
  t.equal(accepted(s), 0)
  await s.finish(t)
})

t.test('IETF: an interrupted completing append stays incomplete (MUST NOT be considered complete) and keeps its bytes', async (t) => {
  const s = await setupResumable(t, { chunkSize: 2000 })
  const data = bytes(40_000, 61)
  const path = await s.create(ietf(6, { 'upload-complete': '?0' }))
  const cut = open(s.url + path, 'PATCH', ietf(6, { 'content-type': PARTIAL, 'upload-offset': 0, 'upload-complete': '?1' }))
  cut.req.write(data.subarray(0, 15_000))
  t.ok(await eventually(() => accepted(s) >= 10_000))
  cut.req.destroy()
  await cut.reply
  const described = await s.tus('HEAD', path, ietf(6))
  t.equal(described.headers['upload-complete'], '?0', 'not complete')
  const offset = Number(described.headers['upload-offset'])
  t.equal(offset, accepted(s))
  const rest = await s.tus('PATCH', path, ietf(6, { 'content-type': PARTIAL, 'upload-offset': offset, 'upload-complete': '?1' }), data.subarray(offset))
  t.equal(rest.headers['upload-complete'], '?1')
  t.equal((await s.claim({ file: path })).json.files[0].sha256, sha256(data))
  await s.finish(t)
})

t.test('IETF: DELETE cancels (204), later requests 410', async (t) => {
  const s = await setupResumable(t)
  const path = await s.create(ietf(7, { 'upload-complete': '?0', 'upload-length': 100 }))
  t.equal((await s.tus('DELETE', path, ietf(7))).status, 204)
  t.equal((await s.tus('HEAD', path, ietf(7))).status, 410)
  t.same(s.recorder.reasons(), ['cancel'])
  await s.finish(t)
})
