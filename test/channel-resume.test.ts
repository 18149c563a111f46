// Version 2 of the channel: an entry outlives its socket. A socket that drops, a server
// that shuts down, another socket or another app that takes the entry over: the client
// resumes it by its ref from the offset the server holds, and the writer still gets one
// close. Real sockets, real files; restarts of a real process are restart-channel.test.ts.
import t from 'tap'
import { MemoryStore, TmpFileWriter, type TmpFileMeta } from '../lib/index.js'
import { SAVE_EVERY_BYTES } from '../lib/transports/channel/channel.js'
import { ProtocolClient, SUBPROTOCOL_V2, startChannelApp } from './kit/channel.js'
import { claim, gate, heard, resume, serve, started, v2 } from './kit/channel-v2.js'
import { bytes, filesDir, sha256, strayFiles, tmpDirFor, until } from './kit/index.js'
import { journaled } from './kit/journal.js'

/** A store whose disk is full: no record can be made. */
class FullStore extends MemoryStore {
  override async createUpload (): Promise<void> {
    throw new Error('disk full')
  }
}

t.test('a socket that drops mid-upload: another socket resumes the entry from the offset the writer holds, and the writer gets one close', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir)))
  const data = bytes(300_000)
  const first = await v2(server)
  const accepted = await started(first, 1, data, 100_000)
  first.socket.terminate()
  await first.closed

  const second = await v2(server)
  const resumed = await resume(second, 7, accepted.ref)
  t.match(resumed, { type: 'resumed', id: 7, ref: accepted.ref, offset: 100_000, chunkSize: 10_000 })
  await second.send(7, data, resumed, resumed.offset)
  t.same(await second.outcome(7), { type: 'done', id: 7, ref: accepted.ref })
  t.same((await claim(server, accepted.ref)).json, [{ size: 300_000, sha256: sha256(data) }], 'byte-identical')
  t.same(journal.filter((line) => !line.startsWith('checkpoint')), ['init', 'close done'], 'one init, one close')
  t.ok(journal.includes('checkpoint 100000'), 'saved when its socket dropped')
  t.same(await strayFiles(dir), [], 'nothing left once consumed')
})

t.test('a resume while the first socket still holds the entry: the first hears it goes on elsewhere, the second finishes it', async (t) => {
  const server = await serve(t, {})
  const data = bytes(50_000)
  const first = await v2(server)
  const accepted = await started(first, 1, data, 20_000)
  const second = await v2(server)
  const resumed = await resume(second, 1, accepted.ref)
  t.equal(resumed.offset, 20_000)
  t.match(await first.waitFor((m) => m.code === 'resumed_elsewhere'), { type: 'error', id: 1, ref: accepted.ref, error: 'FST_CHUNKED_UPLOAD_MOVED' })
  first.chunk(1, 20_000, data.subarray(20_000, 30_000))
  t.match(await first.waitFor((m) => m.code === 'unknown_entry'), { id: 1 }, 'the first socket feeds it no more')
  await second.send(1, data, resumed, resumed.offset)
  t.equal((await second.outcome(1)).type, 'done')
  t.same((await claim(server, accepted.ref)).json, [{ size: 50_000, sha256: sha256(data) }])
})

t.test('app.close() keeps an unfinished entry: the next app on the same tmpDir restores it when a socket resumes it', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const writer = journaled(journal, filesDir(dir))
  const data = bytes(200_000)
  const first = await serve(t, { tmpDir: dir }, writer)
  const client = await v2(first)
  const accepted = await started(client, 1, data, 60_000)
  await first.app.close()
  t.equal((await client.closed).code, 1001, 'the socket closes: the server is going away')
  t.notOk(client.messages.some((m) => m.type === 'error'), 'the entry did not end: nothing to tell')
  t.ok(journal.includes('checkpoint 60000 last'), 'saved, its writer let go')

  const next = await serve(t, { tmpDir: dir }, writer)
  const again = await v2(next)
  const resumed = await resume(again, 1, accepted.ref)
  t.match(resumed, { type: 'resumed', offset: 60_000 })
  await again.send(1, data, resumed, resumed.offset)
  t.equal((await again.outcome(1)).type, 'done')
  t.same((await claim(next, accepted.ref)).json, [{ size: 200_000, sha256: sha256(data) }], 'byte-identical')
  t.same(journal.filter((line) => !line.startsWith('checkpoint')), ['init', 'restore 60000', 'close done'], 'restored once, closed once')
  t.same(await strayFiles(dir), [])
})

t.test('two apps on one store: a socket of the second resumes an entry the first holds; the first saves it and lets go', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  // A MemoryStore has no directory of its own: the temp files go straight into tmpDir.
  const writer = journaled(journal, dir)
  const store = new MemoryStore()
  const a = await serve(t, { store, tmpDir: dir }, writer)
  const b = await serve(t, { store, tmpDir: dir }, writer)
  const data = bytes(80_000)
  const onA = await v2(a)
  const accepted = await started(onA, 1, data, 30_000)
  const onB = await v2(b)
  const resumed = await resume(onB, 1, accepted.ref)
  t.match(resumed, { type: 'resumed', offset: 30_000 })
  t.match(await onA.waitFor((m) => m.code === 'resumed_elsewhere'), { id: 1 })
  await onB.send(1, data, resumed, resumed.offset)
  t.equal((await onB.outcome(1)).type, 'done')
  t.same((await claim(b, accepted.ref)).json, [{ size: 80_000, sha256: sha256(data) }])
  t.same(journal.filter((line) => !line.startsWith('checkpoint')), ['init', 'restore 30000', 'close done'], 'one close, in the app that finished it')
})

t.test('an entry resumed once it finished is answered done; a cancelled one, or a foreign or unknown ref, is unknown', async (t) => {
  const server = await serve(t, { owner: (request) => request.headers['x-user'] as string | undefined }, undefined, { maxEntries: 10 })
  const alice = { 'x-user': 'alice' }
  const data = bytes(25_000)
  const first = await v2(server, alice)
  first.announce(1, { size: data.length })
  const accepted = await first.accepted(1)
  await first.send(1, data, accepted)
  t.equal((await first.outcome(1)).type, 'done')
  first.close()

  const again = await v2(server, alice)
  t.same(await resume(again, 2, accepted.ref), { type: 'done', id: 2, ref: accepted.ref }, 'finished: done again')
  const mallory = await v2(server, { 'x-user': 'mallory' })
  t.match(await resume(mallory, 1, accepted.ref), { type: 'error', code: 'unknown_entry', ref: accepted.ref }, 'not yours')
  t.match(await resume(mallory, 2, 'no-such-ref'), { type: 'error', code: 'unknown_entry' })

  again.announce(3, { size: 30_000 })
  const other = await again.accepted(3)
  again.json({ type: 'cancel', id: 3 })
  t.match(await again.outcome(3), { type: 'error', code: 'cancelled' })
  t.match(await resume(again, 4, other.ref), { type: 'error', code: 'unknown_entry' }, 'cancelled: gone')

  const from = again.messages.length
  again.json({ type: 'cancel', id: 2 })
  t.match(await again.waitFor((m) => m.id === 2, undefined, from), { type: 'error', code: 'cancelled' }, 'a finished entry resumed here can be discarded here')
  t.equal((await claim(server, accepted.ref, alice)).status, 400, 'discarded: its ref is gone')
})

t.test('an announce cancelled before it is accepted is accepted, then cancelled', async (t) => {
  const server = await serve(t, {})
  const client = await v2(server)
  client.announce(1, { size: 1000 })
  client.json({ type: 'cancel', id: 1 })
  const accepted = await client.accepted(1)
  t.match(await client.outcome(1), { type: 'error', code: 'cancelled' })
  t.match(await resume(client, 2, accepted.ref), { code: 'unknown_entry' })
})

t.test('a writer without checkpoint and restore: resumed within the app, cancelled at shutdown (and said so once)', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), { checkpoint: undefined, restore: undefined }))
  const data = bytes(40_000)
  const first = await v2(server)
  const accepted = await started(first, 1, data, 20_000)
  first.socket.terminate()
  const second = await v2(server)
  const resumed = await resume(second, 1, accepted.ref)
  t.equal(resumed.offset, 20_000, 'resumed in this process')
  second.announce(2, { size: 10 })
  await second.accepted(2)
  await server.app.close()
  t.same(journal.filter((line) => line.startsWith('close')), ['close cancel', 'close cancel'], 'both cancelled at shutdown')
  t.equal(server.logs.filter((line) => /cannot continue after a restart/.test(line.msg)).length, 1, 'said once')
  t.same(await strayFiles(dir), [])
})

t.test('limits: maxEntries per socket, maxResumableUploads per process, a store that fails', async (t) => {
  const server = await serve(t, { maxResumableUploads: 2 }, undefined, { maxEntries: 1 })
  const client = await v2(server)
  client.announce(1, { size: 10 })
  await client.accepted(1)
  client.announce(2, { size: 10 })
  t.match(await client.outcome(2), { code: 'too_many_files', error: 'FST_CHUNKED_UPLOAD_TOO_MANY_FILES' }, 'one per socket')
  const other = await v2(server)
  other.announce(1, { size: 10 })
  await other.accepted(1)
  const third = await v2(server)
  third.announce(1, { size: 10 })
  t.match(await third.outcome(1), { code: 'too_many_files', error: 'FST_CHUNKED_UPLOAD_TOO_MANY_UPLOADS' }, 'two in the process')

  const broken = await serve(t, { store: new FullStore() })
  const refused = await v2(broken)
  refused.announce(1, { size: 10 })
  t.match(await refused.outcome(1), { type: 'error', code: 'writer_failure', error: 'FST_CHUNKED_UPLOAD_STORE_FAILURE' })
  t.ok(broken.logs.some((line) => line.err?.message === 'disk full'), 'the store error is logged')
})

t.test('an entry that fails (too many bytes) ends: it cannot be resumed; one silent past chunkTimeout is saved and let go: it can', async (t) => {
  const server = await serve(t, {}, undefined, { chunkTimeout: 300, maxEntries: 10 })
  const client = await v2(server)
  client.announce(1, { size: 10 })
  const accepted = await client.accepted(1)
  client.chunk(1, 0, bytes(11))
  t.match(await client.outcome(1), { code: 'too_large' })
  t.match(await resume(client, 2, accepted.ref), { code: 'unknown_entry' })
  client.announce(3, { size: 10 })
  const silent = await client.accepted(3)
  t.match(await client.waitFor((m) => m.id === 3 && m.type === 'error'), { code: 'chunk_timeout', ref: silent.ref })
  const resumed = await resume(client, 4, silent.ref)
  t.match(resumed, { type: 'resumed', offset: 0 })
  client.chunk(4, 0, bytes(10))
  t.equal((await client.outcome(4)).type, 'done')
})

t.test('version 1 is unchanged: resume is not one of its messages', async (t) => {
  const server = await serve(t, {})
  const client = await ProtocolClient.open(server.ws)
  client.json({ type: 'resume', id: 1, ref: 'x' })
  t.match(await client.waitFor((m) => m.type === 'error'), { code: 'bad_message', id: 1 })
})

t.test('a resume waits for the socket holding the entry: finished meanwhile it is done; ended meanwhile it is unknown; a socket gone meanwhile takes nothing', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  let closing = gate()
  let writing: ReturnType<typeof gate> | undefined
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    close: async (state, reason) => {
      if (reason === 'done') { closing.arrive(); await closing.wait }
      journal.push(`close ${typeof reason === 'string' ? reason : 'error'}`)
      return await TmpFileWriter.close(state, reason)
    },
    writeChunk: async (data, state) => {
      const held = writing
      if (held !== undefined) { held.arrive(); await held.wait }
      return await TmpFileWriter.writeChunk(data, state)
    }
  }), { maxEntries: 10 })

  // Finished while the resume waited.
  const data = bytes(20_000)
  const a = await v2(server)
  a.announce(1, { size: data.length })
  const accepted = await a.accepted(1)
  await a.send(1, data, accepted)
  await closing.reached
  const b = await v2(server)
  const answer = resume(b, 1, accepted.ref)
  closing.open()
  t.same(await answer, { type: 'done', id: 1, ref: accepted.ref })
  t.equal((await a.outcome(1)).type, 'done')
  closing = gate()
  closing.open()

  // Ended (cancelled by its socket) while the resume waited.
  writing = gate()
  a.announce(2, { size: 20_000 })
  const second = await a.accepted(2)
  a.chunk(2, 0, bytes(10_000))
  await writing.reached
  const ended = resume(b, 2, second.ref)
  await heard(b)
  a.json({ type: 'cancel', id: 2 })
  const held = writing
  writing = undefined
  held.open()
  t.match(await ended, { type: 'error', code: 'unknown_entry', ref: second.ref })
  t.match(await a.outcome(2), { code: 'cancelled' })

  // The resuming socket closed while it waited: it takes nothing, a later one resumes.
  writing = gate()
  a.announce(3, { size: 20_000 })
  const third = await a.accepted(3)
  a.chunk(3, 0, bytes(10_000))
  await writing.reached
  const c = await v2(server)
  c.json({ type: 'resume', id: 1, ref: third.ref })
  await heard(c)
  const open = server.app.websocketServer.clients.size
  c.socket.terminate()
  await until('the server saw the socket close', () => server.app.websocketServer.clients.size === open - 1)
  const last = writing
  writing = undefined
  last.open()
  await a.waitFor((m) => m.id === 3 && m.code === 'resumed_elsewhere')
  const d = await v2(server)
  t.match(await resume(d, 1, third.ref), { type: 'resumed', offset: 10_000 }, 'nobody holds it: resumed from what the writer accepted')
})

t.test('a writer that fails its close(done), or its checkpoint when its socket drops: the entry ends, said to the client', async (t) => {
  const dir = await tmpDirFor(t)
  let failClose = true
  const server = await serve(t, { tmpDir: dir }, journaled([], filesDir(dir), {
    close: async (state, reason) => {
      const closed = await TmpFileWriter.close(state, reason)
      if (reason === 'done' && failClose) throw new Error('no room')
      return closed
    },
    checkpoint: async (state, info) => {
      if ((state as { size: number }).size === 5_000) throw new Error('disk gone')
      return await TmpFileWriter.checkpoint!(state, info)
    }
  }), { maxEntries: 10 })
  const client = await v2(server)
  client.announce(1, { size: 1000 })
  const accepted = await client.accepted(1)
  await client.send(1, bytes(1000), accepted)
  t.match(await client.outcome(1), { code: 'writer_failure' })
  t.match(await resume(client, 2, accepted.ref), { code: 'unknown_entry' })
  failClose = false
  client.announce(3, { size: 5_000 })
  const last = await client.accepted(3)
  await client.send(3, bytes(5_000), last)
  t.match(await client.outcome(3), { code: 'writer_failure' }, 'its last checkpoint, before its close, failed')

  const dropped = await v2(server)
  const kept = await started(dropped, 1, bytes(20_000), 5_000)
  dropped.socket.terminate()
  const again = await v2(server)
  t.match(await resume(again, 1, kept.ref), { code: 'unknown_entry' }, 'its save failed: it ended')
  t.same(await strayFiles(dir), [])
})

t.test('a held entry is saved every SAVE_EVERY_BYTES its writer accepts; a drop during that save waits for it; a save that fails ends the entry', async (t) => {
  const dir = await tmpDirFor(t)
  const journal: string[] = []
  let saving = gate()
  let failAt = Infinity
  const server = await serve(t, { tmpDir: dir }, journaled(journal, filesDir(dir), {
    checkpoint: async (state, info) => {
      const { size } = state as { size: number }
      if (size === SAVE_EVERY_BYTES) { saving.arrive(); await saving.wait }
      if (size >= failAt) throw new Error('disk gone')
      journal.push(`checkpoint ${size}`)
      return await TmpFileWriter.checkpoint!(state, info)
    }
  }), { maxFileSize: 64 * 1024 * 1024, chunkSize: 65_536, maxEntries: 10 })
  const data = bytes(SAVE_EVERY_BYTES + 1_000_000)
  const first = await v2(server)
  first.announce(1, { size: data.length })
  const accepted = await first.accepted(1)
  const sending = first.send(1, data, accepted)
  await saving.reached
  first.socket.terminate()
  saving.open()
  await sending
  const second = await v2(server)
  const resumed = await resume(second, 1, accepted.ref)
  t.equal(resumed.offset, SAVE_EVERY_BYTES, 'resumed where the save was')
  t.same(journal.filter((line) => line.startsWith('checkpoint')), ['checkpoint 0', `checkpoint ${SAVE_EVERY_BYTES}`, `checkpoint ${SAVE_EVERY_BYTES}`], 'the save, then the one at the drop, one after the other')
  await second.send(1, data, resumed, resumed.offset)
  t.equal((await second.outcome(1)).type, 'done')
  t.same((await claim(server, accepted.ref)).json, [{ size: data.length, sha256: sha256(data) }])

  saving = gate()
  saving.open()
  failAt = SAVE_EVERY_BYTES
  const failing = await v2(server)
  t.match(await failing.upload(1, data), { type: 'error', code: 'writer_failure' }, 'its periodic save failed')
  t.same(await strayFiles(dir), [])
})

t.test('an entry consumed on the socket (its request.uploads) leaves the registry: its place among the limits is free again', async (t) => {
  const consumed: number[] = []
  const server = await startChannelApp(t, (app) => {
    app.post('/up', {
      allowUpload: { file: { accept: 'any', maxEntries: 10 } },
      preHandler: async (request) => {
        if (request.ws !== true) return
        request.uploads.on('done', (entry: { ref: string }) => {
          request.uploads.consumeEntry(entry.ref, (meta: TmpFileMeta) => meta.size).then((size) => consumed.push(size), () => {})
        })
      }
    }, async () => ({}))
  }, { maxResumableUploads: 1 })
  const client = await ProtocolClient.open(`${server.wsUrl}/up/ws`, [SUBPROTOCOL_V2])
  const first = await client.upload(1, bytes(1000))
  t.equal(first.type, 'done')
  await until('the first to be consumed', () => consumed.length === 1)
  t.equal((await client.upload(2, bytes(2000))).type, 'done', 'the second one fits: the first left when it was consumed')
  await until('the second to be consumed', () => consumed.length === 2)
  t.same(consumed, [1000, 2000])
  t.match(await resume(client, 3, first.ref), { code: 'unknown_entry' }, 'a consumed entry cannot be resumed')
})
