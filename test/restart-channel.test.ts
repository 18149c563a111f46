// The channel outlives the server process too. A real server (test/fixtures/restart-server.ts)
// is killed with SIGKILL, or stopped with SIGTERM, in the middle of an upload from the client
// library in Node, and started again on the same port and tmpDir: the client reconnects on
// its own, resumes the file from the offset the server saved (the last save every 16 MiB
// for a crash, every accepted byte for a shutdown), never from 0, and the route consumes it
// byte for byte. The writer log shows one logical upload: restored in the new process,
// closed exactly once, with 'done'.
import { File } from 'node:buffer'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { upload, type WebSocketConstructor } from '../client/index.js'
import { SAVE_EVERY_BYTES } from '../lib/transports/channel/channel.js'
import { bytes, sha256, tmpDirFor } from './kit/index.js'
import { RestartingServer, filesInStore, historyOf, readWriterLog } from './kit/restart.js'

const MiB = 1024 * 1024
/** Where the server holds its writer: past the first save, before the second. */
const HOLD_AFTER = SAVE_EVERY_BYTES + 4 * MiB
const SIZE = SAVE_EVERY_BYTES + 8 * MiB

async function uploadThroughRestart (t: Test, signal: 'SIGKILL' | 'SIGTERM'): Promise<void> {
  const server = new RestartingServer(t, await tmpDirFor(t), join(await tmpDirFor(t), 'writer.log'))
  await server.start({ HOLD_AFTER: String(HOLD_AFTER) })
  const data = bytes(SIZE, signal === 'SIGKILL' ? 3 : 4)
  const seen: number[] = []
  const uploading = upload(`${server.url}/upload`, [new File([data], 'movie.bin')], {
    uploadName: 'file',
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    submit: true,
    // The restart takes a few seconds on a busy machine: a long schedule of short waits.
    retryDelays: Array.from({ length: 200 }, () => 300),
    onProgress: (_file, progress) => { seen.push(progress.bytes) }
  })
  const path = (await server.current!.line('held ')).split(' ')[1]!
  const first = server.current!.pid
  await server.stop(signal)
  await server.start()
  const result = await uploading
  t.match(result.files, [{ name: 'movie.bin', ok: true, ref: String }])
  t.same(result.response, { sha256: sha256(data), size: SIZE }, 'consumed byte for byte')

  const log = readWriterLog(server.writerLog)
  const history = historyOf(log, path, server.runs.map((run) => run.pid))
  const saved = log.filter((line) => line.path === path && line.pid === first && line.event === 'checkpoint').at(-1)!.offset!
  const restored = log.find((line) => line.path === path && line.event === 'restore')
  t.equal(restored?.offset, saved, `restored from the last save of the first process (${saved})`)
  if (signal === 'SIGKILL') t.ok(saved >= SAVE_EVERY_BYTES && saved < HOLD_AFTER, 'a crash keeps the last periodic save')
  else t.ok(saved > HOLD_AFTER, 'a shutdown saves every byte its writer accepted')
  t.same(history.filter((event) => event.startsWith('close')), ['close:done@1'], 'one close, with done, in the second process')
  t.same(history.filter((event) => event.startsWith('init')), ['init@0'], 'one init: the file never started again')
  t.ok(seen.every((bytes, i) => i === 0 || bytes >= seen[i - 1]! || bytes === saved), 'progress went on (back only to the saved offset)')
  t.same(await filesInStore(server.tmpDir), [], 'nothing left once consumed')
}

t.test('kill -9 mid-upload: the client reconnects and resumes from the last save', async (t) => {
  await uploadThroughRestart(t, 'SIGKILL')
})

t.test('SIGTERM mid-upload: saved at shutdown, resumed from every byte the writer accepted', async (t) => {
  await uploadThroughRestart(t, 'SIGTERM')
})
