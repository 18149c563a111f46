// TmpFileWriter's checkpoint and restore: a checkpointed upload goes on in another
// process after the first one was killed; restore opens only the writer's own files and
// refuses a snapshot whose bytes are gone; a failed write leaves no checkpoint.
import { execFileSync, spawn } from 'node:child_process'
import { chownSync, closeSync, constants, openSync } from 'node:fs'
import { link, readFile, stat, symlink, writeFile } from 'node:fs/promises'
import { basename, dirname, join, relative } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { MemoryWriter, TmpFileWriter, type TmpFileState, type WriterSnapshot } from '../lib/index.js'
import { bytes, sha256, strayFiles, tmpDirFor } from './kit/index.js'

const CHILD = fileURLToPath(new URL('fixtures/checkpoint-child.ts', import.meta.url))
const checkpoint = TmpFileWriter.checkpoint!
const restore = TmpFileWriter.restore!

/** Runs the child (with this process's TypeScript loader) until it wrote past its checkpoint, then kills it. */
async function killedAfterCheckpoint (t: Test, env: Record<string, string>): Promise<{ snapshot: WriterSnapshot, signal: NodeJS.Signals | null }> {
  const child = spawn(process.execPath, [...process.execArgv, CHILD], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)))
  let snapshot: WriterSnapshot | undefined
  for await (const line of createInterface({ input: child.stdout })) {
    if (line.startsWith('snapshot ')) snapshot = JSON.parse(line.slice('snapshot '.length))
    if (line === 'past') break
  }
  child.kill('SIGKILL')
  return { snapshot: snapshot!, signal: await exited }
}

async function write (state: TmpFileState, data: Buffer, chunk = 65_536): Promise<TmpFileState> {
  for (let offset = 0; offset < data.length; offset += chunk) state = await TmpFileWriter.writeChunk(data.subarray(offset, offset + chunk), state)
  return state
}

t.test('a checkpoint outlives its process: another restores it, cuts what was written past it, and finishes the file byte for byte', async (t) => {
  const dir = await tmpDirFor(t)
  const sources = await tmpDirFor(t)
  const data = bytes(2_000_000, 7)
  const at = 700_001
  const source = join(sources, 'source.bin')
  await writeFile(source, data)

  const { snapshot, signal } = await killedAfterCheckpoint(t, { DIR: dir, SOURCE: source, CHECKPOINT_AT: String(at), CHUNK: '65536' })
  t.equal(signal, 'SIGKILL', 'the child was killed')
  t.equal(snapshot.offset, at, 'the snapshot holds the checkpointed bytes')
  const path = snapshot['path'] as string
  t.equal(dirname(path), dir, 'and names the file in the writer\'s directory')
  t.ok((await stat(path)).size > at, 'the child wrote past its checkpoint before it died')

  let state = await restore(JSON.parse(JSON.stringify(snapshot)), { dir })
  t.equal((await stat(path)).size, at, 'restore cut the file back to the snapshot')
  t.equal(sha256(await readFile(path)), sha256(data.subarray(0, at)), 'which holds exactly the checkpointed bytes')
  t.same(TmpFileWriter.meta(state), { path, size: at })

  state = await write(state, data.subarray(at))
  t.same(await checkpoint(state), { path, offset: data.length }, 'a checkpoint of the restored writer counts every byte')
  state = await TmpFileWriter.close(state, 'done')
  t.equal(sha256(await readFile(path)), sha256(data), 'the finished file is the upload, byte for byte')
  t.same(TmpFileWriter.meta(state), { path, size: data.length })
  await TmpFileWriter.discard!(state, { consumed: false })
  t.same(await strayFiles(dir), [], 'discard removed it')
})

t.test('restore opens only a file this writer made, in its own directory, and refuses one that lost bytes', async (t) => {
  const dir = await tmpDirFor(t)
  const elsewhere = await tmpDirFor(t)
  const data = bytes(100_000, 3)
  let state = await write(await TmpFileWriter.init({ dir }), data)
  const own = await checkpoint(state) as WriterSnapshot & { path: string }
  closeSync(state.fd) // this process lets go of the file as a dead one would
  const name = basename(own.path)
  const notOwn = /not a temp file of this writer/

  // A file with the writer's name outside its directory, and one with another name in it, both real.
  const outside = join(elsewhere, name)
  await writeFile(outside, data)
  const foreign = join(dir, 'notes.txt')
  await writeFile(foreign, data)
  const refusals: Array<[string, unknown, RegExp]> = [
    ['a path outside the directory', outside, notOwn],
    ['/etc/passwd', '/etc/passwd', notOwn],
    ['a path that climbs out of the directory', join(dir, 'x', '..', '..', relative(dirname(dir), outside)), notOwn],
    ['a path into the directory through ..', `${dir}/../${basename(dir)}/${name}`, notOwn],
    ['a relative path', name, notOwn],
    ['a foreign name in the directory', foreign, notOwn],
    ['a name like the writer\'s in upper case', join(dir, name.toUpperCase()), notOwn],
    ['a name like the writer\'s, longer', `${own.path}0`, notOwn],
    ['a path that is not a string', 42, notOwn]
  ]
  for (const [what, path, error] of refusals) {
    await t.rejects(async () => await restore({ offset: 10, path } as WriterSnapshot, { dir }), error, `refused: ${what}`)
  }
  t.equal(sha256(await readFile(outside)), sha256(data), 'the file outside is untouched')
  t.equal(sha256(await readFile(foreign)), sha256(data), 'the foreign file is untouched')

  for (const offset of [-1, 1.5, Number.NaN, '10', undefined]) {
    await t.rejects(async () => await restore({ path: own.path, offset } as unknown as WriterSnapshot, { dir }), /its offset .* is not a byte count/, `refused: offset ${String(offset)}`)
  }
  await t.rejects(async () => await restore({ ...own, offset: data.length + 1 }, { dir }),
    /bytes were lost, the file has 100000 of the 100001 bytes its snapshot holds/, 'refused: a snapshot larger than its file')
  await t.rejects(async () => await restore({ path: join(dir, `upload-${'0'.repeat(32)}`), offset: 0 }, { dir }), { code: 'ENOENT' }, 'refused: a missing file')

  // Under the writer's own names: what else a tampered directory could hold.
  const planted = (n: number): string => join(dir, `upload-${String(n).repeat(32)}`)
  await symlink(outside, planted(1))
  await t.rejects(async () => await restore({ path: planted(1), offset: 0 }, { dir }), { code: 'ELOOP' }, 'refused: a symbolic link')
  await link(outside, planted(2))
  await t.rejects(async () => await restore({ path: planted(2), offset: 0 }, { dir }), /not a regular file of this user with a single link/, 'refused: a hard link to another file')
  execFileSync('mkfifo', [planted(3)])
  const reader = openSync(planted(3), constants.O_RDONLY | constants.O_NONBLOCK)
  t.teardown(() => closeSync(reader))
  await t.rejects(async () => await restore({ path: planted(3), offset: 0 }, { dir }), /not a regular file/, 'refused: a FIFO')
  if (process.geteuid?.() === 0) {
    await writeFile(planted(4), data)
    chownSync(planted(4), 65_534, 65_534)
    await t.rejects(async () => await restore({ path: planted(4), offset: 0 }, { dir }), /not a regular file of this user/, 'refused: another user\'s file')
    t.equal((await stat(planted(4))).size, data.length, 'which keeps its bytes')
  } else {
    t.comment('not root: the test of another user\'s file needs a file this process does not own')
  }
  t.equal(sha256(await readFile(outside)), sha256(data), 'the file a link pointed to is untouched')

  // The writer's own file, after all that: intact, and restored.
  t.equal(sha256(await readFile(own.path)), sha256(data), 'the writer\'s file is untouched by the refusals')
  state = await restore({ ...own, offset: 60_000 }, { dir })
  t.equal((await stat(own.path)).size, 60_000, 'restored at an earlier offset, it is cut there')
  state = await TmpFileWriter.writeChunk(Buffer.from('more'), state)
  await TmpFileWriter.close(state, 'cancel')
  await t.rejects(stat(own.path), { code: 'ENOENT' }, 'a restored writer cancelled removes its file')
})

t.test('a checkpoint after a failed write rejects with the write\'s error', async (t) => {
  const dir = await tmpDirFor(t)
  const state = await write(await TmpFileWriter.init({ dir }), bytes(10_000))
  closeSync(state.fd) // the next write fails
  await TmpFileWriter.writeChunk(Buffer.from('lost'), state)
  await t.rejects(async () => await checkpoint(state), { code: 'EBADF' }, 'no snapshot for bytes that are not in the file')
  await t.rejects(async () => await checkpoint(state), { code: 'EBADF' }, 'nor later')
  await t.rejects(async () => await TmpFileWriter.close(state, { error: new Error('write failed') }), { code: 'EBADF' })
  t.same(await strayFiles(dir), [], 'the close removed the file')
})

t.test('with fsync, a checkpoint waits for the disk, before and after a restore', async (t) => {
  const dir = await tmpDirFor(t)
  const data = bytes(300_000, 5)
  let state = await write(await TmpFileWriter.init({ dir, fsync: true }), data.subarray(0, 200_000))
  t.equal(state.fsync, true)
  t.equal(state.entrySynced, false)
  const snapshot = await checkpoint(state)
  t.same(snapshot, { path: state.path, offset: 200_000 })
  t.equal(state.entrySynced, true, 'the first checkpoint also took the file\'s name to the disk')
  t.same(await checkpoint(state), snapshot, 'a checkpoint with nothing new')
  closeSync(state.fd)
  state = await restore(snapshot, { dir, fsync: true })
  state = await write(state, data.subarray(200_000))
  t.same(await checkpoint(state), { path: state.path, offset: data.length })
  state = await TmpFileWriter.close(state, 'done')
  t.equal(sha256(await readFile(state.path)), sha256(data))
  await TmpFileWriter.discard!(state, { consumed: true })
  const plain = await TmpFileWriter.init({ dir })
  t.equal(plain.fsync, false, 'off unless asked for')
  await TmpFileWriter.close(plain, 'cancel')
})

t.test('MemoryWriter has no checkpoint: its bytes cannot outlive its process', async (t) => {
  t.equal(MemoryWriter.checkpoint, undefined)
  t.equal(MemoryWriter.restore, undefined)
})
