// The writer contract as writers rely on it: `discard` is told whether the finished
// entry was consumed or dropped (a writer that stores objects elsewhere deletes only the
// dropped ones), the `data` passed to `writeChunk` is the writer's to keep, and `read`
// gives back what was stored; a writer that can be continued elsewhere has both
// checkpoint and restore, and its snapshots are JSON that count the bytes written.
import t from 'tap'
import { MemoryWriter, TmpFileWriter, defineWriter, type UploadWriter } from '../lib/index.js'
import { bytes, eventually, multipart, sha256, startApp, strayFiles, tmpDirFor } from './kit/index.js'

/** Remembers what each discard was told, by file name. */
function discardLog (): { writer: ReturnType<typeof defineWriter<string, { name: string }, { name: string }>>, told: Map<string, boolean> } {
  const told = new Map<string, boolean>()
  const writer = defineWriter({
    init: (name: string) => ({ name }),
    meta: (state) => ({ name: state.name }),
    writeChunk: (_data, state) => state,
    close: (state) => state,
    discard: (state, { consumed }) => { told.set(state.name, consumed) }
  })
  return { writer, told }
}

t.test('discard says consumed for an entry a consumer took (or threw on), and not for one the request dropped', async (t) => {
  const { writer, told } = discardLog()
  const { url } = await startApp(t, (app) => {
    app.post('/up', {
      allowUpload: { file: { accept: 'any', maxEntries: 3, writer: (_name, entry) => [writer, entry.clientName] } }
    }, async (request) => {
      const mode = (request.body as { mode: string }).mode
      if (mode === 'consume') return await request.uploads.consume('file', (meta: { name: string }) => meta.name)
      if (mode === 'throw') await request.uploads.consume('file', () => { throw new Error('the consumer failed') })
      return 'left unconsumed'
    })
  })
  const post = async (mode: string, filename: string): Promise<number> => {
    const { body, contentType } = multipart([{ name: 'mode', data: mode }, { name: 'file', filename, data: bytes(1000) }])
    return (await fetch(`${url}/up`, { method: 'POST', body, headers: { 'content-type': contentType } })).status
  }
  t.equal(await post('consume', 'taken.bin'), 200)
  t.equal(await post('throw', 'thrown.bin'), 500)
  t.equal(await post('leave', 'dropped.bin'), 200)
  t.ok(await eventually(() => told.size === 3), 'every finished entry was discarded once')
  t.same(Object.fromEntries(told), { 'taken.bin': true, 'thrown.bin': true, 'dropped.bin': false })
})

t.test('data handed to writeChunk is the writer\'s: pieces kept without copying are intact at the end, over multipart, raw and tus', async (t) => {
  // Keeps every piece by reference; any reuse of a buffer by the plugin would show in the hash.
  const Keeper = defineWriter({
    init: () => ({ pieces: [] as Buffer[] }),
    meta: (state) => ({ sha256: sha256(Buffer.concat(state.pieces)) }),
    writeChunk: (data, state) => { state.pieces.push(data); return state },
    close: (state) => state
  })
  const { url } = await startApp(t, (app) => {
    app.post('/keep', {
      allowUpload: { file: { accept: 'any', maxFileSize: 10_000_000, chunkSize: 16_000, resumable: true, writer: () => Keeper } }
    }, async (request) => await request.uploads.consume('file', (meta: { sha256: string }) => meta.sha256))
  })
  const data = bytes(3_000_000, 9)
  const form = multipart([{ name: 'file', filename: 'a.bin', data }])
  const viaForm = await fetch(`${url}/keep`, { method: 'POST', body: form.body, headers: { 'content-type': form.contentType } })
  t.same(await viaForm.json(), [sha256(data)], 'multipart')
  const viaRaw = await fetch(`${url}/keep`, { method: 'POST', body: data, headers: { 'content-type': 'application/octet-stream' } })
  t.same(await viaRaw.json(), [sha256(data)], 'raw body')
  const tus = { 'tus-resumable': '1.0.0' }
  const created = await fetch(`${url}/keep/tus`, { method: 'POST', headers: { ...tus, 'upload-length': String(data.length) } })
  const location = created.headers.get('location')!
  for (const [from, to] of [[0, 1_000_000], [1_000_000, data.length]] as const) {
    const patched = await fetch(new URL(location, url), {
      method: 'PATCH', body: data.subarray(from, to), headers: { ...tus, 'upload-offset': String(from), 'content-type': 'application/offset+octet-stream' }
    })
    t.equal(patched.status, 204)
  }
  const viaTus = await fetch(`${url}/keep`, { method: 'POST', body: JSON.stringify({ file: location }), headers: { 'content-type': 'application/json' } })
  t.same(await viaTus.json(), [sha256(data)], 'tus, two PATCHes')
})

t.test('read gives back exactly what was written, in order, as often as asked, for both built-in writers', async (t) => {
  const dir = await tmpDirFor(t)
  const data = bytes(300_000, 4)
  const written = [data.subarray(0, 1), data.subarray(1, 65_536), data.subarray(65_536, 200_000), data.subarray(200_000)]
  const writers = [['TmpFileWriter', TmpFileWriter, { dir }], ['MemoryWriter', MemoryWriter, undefined]] as const
  for (const [name, writer, options] of writers) {
    const call = { signal: new AbortController().signal }
    let state = await (writer as UploadWriter).init(options, call)
    for (const piece of written) state = await writer.writeChunk(piece, state, call)
    state = await writer.close(state, 'done')
    for (const time of ['first', 'second']) {
      const back: Buffer[] = []
      for await (const chunk of writer.read!(state, call)) back.push(chunk)
      t.equal(sha256(Buffer.concat(back)), sha256(data), `${name}: the ${time} read`)
    }
    await writer.discard?.(state, { consumed: true })
  }
  t.same(await strayFiles(dir), [], 'the temp file is removed by its discard')
})

t.test('checkpoint and restore come together; a checkpoint is JSON, counts every byte written, and changes nothing the writer stores', async (t) => {
  const dir = await tmpDirFor(t)
  const data = bytes(500_000, 6)
  const writers = [['TmpFileWriter', TmpFileWriter, { dir }], ['MemoryWriter', MemoryWriter, undefined]] as const
  for (const [name, writer, options] of writers) {
    const w = writer as UploadWriter
    t.equal(w.checkpoint === undefined, w.restore === undefined, `${name}: both or neither`)
    if (w.checkpoint === undefined) continue
    const call = { signal: new AbortController().signal }
    let state = await w.init(options, call)
    t.equal((await w.checkpoint(state)).offset, 0, `${name}: nothing written, offset 0`)
    for (const [from, to] of [[0, 1], [1, 200_000], [200_000, data.length]] as const) {
      state = await w.writeChunk(data.subarray(from, to), state, call)
      const snapshot = await w.checkpoint(state)
      t.equal(snapshot.offset, to, `${name}: the offset after ${to} bytes`)
      t.same(JSON.parse(JSON.stringify(snapshot)), snapshot, `${name}: the snapshot survives JSON`)
    }
    state = await w.close(state, 'done')
    const back: Buffer[] = []
    for await (const chunk of w.read!(state, call)) back.push(chunk)
    t.equal(sha256(Buffer.concat(back)), sha256(data), `${name}: every byte stored once, in order`)
    await w.discard?.(state, { consumed: true })
  }
  t.same(await strayFiles(dir), [])
})
