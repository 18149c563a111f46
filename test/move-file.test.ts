// Keeping a finished upload's file: moveFile, on one file system and across two (the
// machine's tmpfs /dev/shm against the disk), and from a consume callback.
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { moveFile } from '../lib/index.js'
import { bytes, multipart, sha256, startApp, strayFiles } from './kit/index.js'

async function scratch (t: Test, root = tmpdir()): Promise<string> {
  const dir = await mkdtemp(join(root, 'move-file-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}

async function exists (path: string): Promise<boolean> {
  return await stat(path).then(() => true, () => false)
}

t.test('on one file system: the file itself moves (same inode), into a directory made for it', async (t) => {
  const dir = await scratch(t)
  const from = join(dir, 'upload-1')
  await writeFile(from, bytes(5000))
  const { ino } = await stat(from)
  const to = join(dir, 'kept', 'deeper', 'a.bin')
  t.equal(await moveFile(from, to), to)
  t.equal((await stat(to)).ino, ino, 'not copied')
  t.notOk(await exists(from), 'the original is gone')
  t.equal(sha256(await readFile(to)), sha256(bytes(5000)))
})

t.test('an existing destination is never replaced unless asked: EEXIST, both files intact', async (t) => {
  const dir = await scratch(t)
  const from = join(dir, 'upload-2')
  const to = join(dir, 'taken.bin')
  await writeFile(from, 'new')
  await writeFile(to, 'old')
  await t.rejects(moveFile(from, to), { code: 'EEXIST' })
  t.equal(await readFile(to, 'utf8'), 'old')
  t.equal(await readFile(from, 'utf8'), 'new')
  t.equal(await moveFile(from, to, { overwrite: true }), to)
  t.equal(await readFile(to, 'utf8'), 'new')
  t.notOk(await exists(from))
})

t.test('across file systems (a rename would fail with EXDEV): copied, then the original removed', async (t) => {
  const disk = await scratch(t)
  const memory = await scratch(t, '/dev/shm')
  t.not((await stat(disk)).dev, (await stat(memory)).dev, 'two file systems (this test needs /dev/shm as a tmpfs)')
  const from = join(disk, 'upload-3')
  await writeFile(from, bytes(70_000, 3))
  const to = join(memory, 'kept', 'b.bin')
  t.equal(await moveFile(from, to), to)
  t.equal(sha256(await readFile(to)), sha256(bytes(70_000, 3)))
  t.notOk(await exists(from), 'the original is gone')
  // The same rule across file systems: no silent replacement, unless asked.
  const again = join(disk, 'upload-4')
  await writeFile(again, 'second')
  await t.rejects(moveFile(again, to), { code: 'EEXIST' })
  t.ok(await exists(again), 'a refused move keeps the original')
  await moveFile(again, to, { overwrite: true })
  t.equal(await readFile(to, 'utf8'), 'second')
  t.notOk(await exists(again))
})

t.test('a source that is not there: the error says so (ENOENT), nothing is made', async (t) => {
  const dir = await scratch(t)
  await t.rejects(moveFile(join(dir, 'missing'), join(dir, 'out.bin')), { code: 'ENOENT' })
  t.same(await readdir(dir), [])
})

t.test('from a consume callback: the upload is kept where the app wants it, and nothing else is left', async (t) => {
  const tmp = await scratch(t)
  const kept = await scratch(t)
  const { url } = await startApp(t, (app) => {
    app.post('/profile', { allowUpload: { avatar: { accept: 'any' } } }, async (request) => {
      const [path] = await request.uploads.consume('avatar', async (meta: { path: string }, entry) => await moveFile(meta.path, join(kept, 'avatars', `${entry.ref}.png`)))
      return { path }
    })
  }, { tmpDir: tmp })
  const data = bytes(200_000, 7)
  const { body, contentType } = multipart([{ name: 'avatar', filename: 'me.png', type: 'image/png', data }])
  const response = await fetch(`${url}/profile`, { method: 'POST', body, headers: { 'content-type': contentType } })
  t.equal(response.status, 200)
  const { path } = await response.json() as { path: string }
  t.equal(sha256(await readFile(path)), sha256(data))
  t.same(await strayFiles(tmp), [], 'no temp file left (the writer\'s discard found it moved)')
})
