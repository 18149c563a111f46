// The stores: the shared contract (test/kit/store-contract.ts) on each, then what only
// FileStore promises: records outlive the store that wrote them, a crash mid-write leaves
// the old record, one live process per directory, damaged files reported and skipped.
import { spawn } from 'node:child_process'
import { mkdir, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import t, { type Test } from 'tap'
import { MemoryStore } from '../lib/stores/memory.js'
import { FileStore, type FileStoreOptions } from '../lib/stores/file.js'
import { parked, storeContract, upload } from './kit/store-contract.js'
import { tmpDirFor } from './kit/index.js'

storeContract(t, 'MemoryStore', async () => new MemoryStore())
storeContract(t, 'FileStore', async (t) => await FileStore.open({ dir: await tmpDirFor(t) }))

/** The store's files in `dir` (its prefix), sorted. */
async function storeFiles (dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => name.startsWith('fcu-store-')).sort()
}

/** The one file of `dir` whose name starts with `prefix`. */
async function fileOf (dir: string, prefix: string): Promise<string> {
  const names = (await readdir(dir)).filter((name) => name.startsWith(prefix))
  if (names.length !== 1) throw new Error(`expected one ${prefix}* file in ${dir}, found ${JSON.stringify(names)}`)
  return join(dir, names[0]!)
}

/** Opens a FileStore, closed at the test's end. */
async function openFileStore (t: Test, options: FileStoreOptions): Promise<FileStore> {
  const store = await FileStore.open(options)
  t.teardown(() => store.close())
  return store
}

t.test('FileStore: records and parked entries outlive the store that wrote them', async (t) => {
  for (const fsync of [false, true]) {
    const dir = await tmpDirFor(t)
    const first = await FileStore.open({ dir, fsync })
    await first.createUpload(upload('u1'))
    const lock = await first.lock('u1', () => {}, 1_000)
    await first.updateUpload('u1', { offset: 0, token: lock.token }, { offset: 300, snapshot: { parts: [1, 2] } })
    await lock.release()
    await first.park(parked('r1'))
    await first.park(parked('r2', { expiresAt: 10 }))
    await first.close()

    const second = await openFileStore(t, { dir, fsync })
    t.same(await second.getUpload('u1'), upload('u1', { offset: 300, snapshot: { parts: [1, 2] } }), `fsync ${fsync}: the record, as last updated`)
    t.same(await second.claim('r1', 'alice', 'POST /up file'), parked('r1'), `fsync ${fsync}: the parked entry`)
    t.same((await second.sweep(10)).parked, [parked('r2', { expiresAt: 10 })], `fsync ${fsync}: expiry goes on`)
    const again = await second.lock('u1', () => {}, 1_000)
    t.equal((await second.updateUpload('u1', { offset: 300, token: again.token }, { offset: 1000 })).offset, 1000, `fsync ${fsync}: the new store's holder continues from the durable offset`)
    await again.release()
  }
})

t.test('FileStore: the directory is created if missing, and only files with the store\'s prefix are touched', async (t) => {
  const parent = await tmpDirFor(t)
  const dir = join(parent, 'a', 'b')
  await mkdir(join(parent, 'a'))
  await writeFile(join(parent, 'a', 'upload-0123'), 'a writer\'s temp file')
  const store = await openFileStore(t, { dir })
  await writeFile(join(dir, 'upload-4567'), 'a writer\'s temp file')
  await writeFile(join(dir, 'other.json'), '{"expiresAt":0}')
  await writeFile(join(dir, 'other.tmp'), 'not the store\'s')
  await store.createUpload(upload('u1', { expiresAt: 5 }))
  await store.park(parked('r1', { expiresAt: 5 }))
  t.equal((await stat(dir)).mode & 0o777, 0o700, 'a directory it creates is its user\'s only')
  t.equal((await stat(await fileOf(dir, 'fcu-store-upload-'))).mode & 0o777, 0o600, 'so are its records')
  const swept = await store.sweep(5)
  t.same([swept.uploads.length, swept.parked.length], [1, 1])
  await store.close()
  await FileStore.open({ dir }).then(async (store) => await store.close())
  t.same((await readdir(dir)).sort(), ['other.json', 'other.tmp', 'upload-4567'], 'foreign files stay, the store\'s are gone')
})

t.test('FileStore: a crash mid-write leaves the old record; the stray temp file is removed at the next start', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await FileStore.open({ dir })
  await first.createUpload(upload('u1', { offset: 100 }))
  await first.close()
  const record = await fileOf(dir, 'fcu-store-upload-')
  // What a process killed between writing the new record and renaming it over the old one leaves.
  const whole = JSON.stringify(upload('u1', { offset: 200 }))
  await writeFile(`${record}.4242-7.tmp`, whole.slice(0, whole.length / 2))
  t.same(await storeFiles(dir), [basename(record), `${basename(record)}.4242-7.tmp`])

  const corrupt: Error[] = []
  const second = await openFileStore(t, { dir, onCorrupt: (error) => corrupt.push(error) })
  t.equal((await second.getUpload('u1'))?.offset, 100, 'the old record, whole')
  t.same(await storeFiles(dir), ['fcu-store-claim', basename(record)], 'the temp file is gone')
  t.same(corrupt, [], 'nothing reported: a stray temp file is no damage')
})

t.test('FileStore: one store per directory in a process; close gives it up, once', async (t) => {
  const dir = await tmpDirFor(t)
  const first = await FileStore.open({ dir })
  await t.rejects(FileStore.open({ dir }), { code: 'FST_CHUNKED_UPLOAD_STORE_IN_USE', message: new RegExp(`in use by process ${process.pid}`) })
  await first.close()
  const second = await openFileStore(t, { dir })
  await first.close()
  await t.rejects(FileStore.open({ dir }), { code: 'FST_CHUNKED_UPLOAD_STORE_IN_USE' }, 'a second close of the first store did not give up the second\'s claim')
  t.equal(second.dir, resolve(dir))
})

t.test('FileStore: a directory held by another live process is refused; once that process is killed (SIGKILL), its claim is taken over', async (t) => {
  const dir = await tmpDirFor(t)
  const child = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', `
    const { FileStore } = await import(process.env.STORE_MODULE)
    const store = await FileStore.open({ dir: process.env.DIR })
    await store.createUpload(JSON.parse(process.env.RECORD))
    process.stdout.write('ready\\n')
    setInterval(() => {}, 1 << 30)`], {
    env: { ...process.env, DIR: dir, STORE_MODULE: pathToFileURL(resolve('lib/stores/file.ts')).href, RECORD: JSON.stringify(upload('from-child')) },
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)))
  t.teardown(() => { child.kill('SIGKILL') })
  let out = ''
  child.stdout.setEncoding('utf8')
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (text: string) => { out += text; if (out.includes('ready\n')) resolve() })
    child.once('exit', (code) => reject(new Error(`the child exited (${code}) before it claimed the directory`)))
  })

  await t.rejects(FileStore.open({ dir }), { code: 'FST_CHUNKED_UPLOAD_STORE_IN_USE', message: new RegExp(`in use by process ${child.pid}:`) })
  child.kill('SIGKILL')
  t.equal(await exited, 'SIGKILL')
  const store = await openFileStore(t, { dir })
  t.same(await store.getUpload('from-child'), upload('from-child'), 'and what the dead process stored is there')
})

t.test('FileStore: a claim that names no live process is stale: left empty by a crash, or naming this very pid (an earlier life, as after a container restart)', async (t) => {
  const dir = await tmpDirFor(t)
  const store = await FileStore.open({ dir })
  const claim = await fileOf(dir, 'fcu-store-claim')
  await store.close()
  for (const content of ['', 'garbage', '0', String(process.pid)]) {
    await writeFile(claim, content)
    const next = await FileStore.open({ dir })
    t.equal(await readFile(claim, 'utf8'), String(process.pid), `a claim of ${JSON.stringify(content)} was taken over`)
    await next.close()
  }
})

t.test('FileStore: damaged files are reported once, set aside and skipped; the store goes on', async (t) => {
  const dir = await tmpDirFor(t)
  const corrupt: Error[] = []
  const store = await openFileStore(t, { dir, onCorrupt: (error) => corrupt.push(error) })
  const ids = ['truncated', 'not-json', 'not-an-object', 'wrong-field', 'wrong-optional', 'a-directory', 'fine']
  for (const id of ids) await store.createUpload(upload(id, { expiresAt: 10 }))
  await store.park(parked('p-null', { expiresAt: 10 }))
  await store.park(parked('p-fine', { expiresAt: 10 }))
  const fileFor = async (id: string): Promise<string> => {
    const names = await readdir(dir)
    for (const name of names.filter((n) => n.endsWith('.json'))) {
      const text = await readFile(join(dir, name), 'utf8')
      if (text.includes(`"${id}"`)) return join(dir, name)
    }
    throw new Error(`no file for ${id}`)
  }
  const damage: Record<string, (path: string) => Promise<void>> = {
    truncated: async (path) => await truncate(path, 20),
    'not-json': async (path) => await writeFile(path, 'offset: 12'),
    'not-an-object': async (path) => await writeFile(path, '[1, 2]'),
    'wrong-field': async (path) => await writeFile(path, JSON.stringify({ ...upload('wrong-field'), offset: -1 })),
    'wrong-optional': async (path) => await writeFile(path, JSON.stringify({ ...upload('wrong-optional'), concat: 'whole' })),
    'a-directory': async (path) => { await rm(path); await mkdir(path) },
    'p-null': async (path) => await writeFile(path, 'null')
  }
  for (const [id, fn] of Object.entries(damage)) await fn(await fileFor(id))

  t.equal(await store.getUpload('truncated'), undefined, 'a damaged record reads as missing')
  t.equal(corrupt.length, 1)
  t.match(corrupt[0], { code: 'FST_CHUNKED_UPLOAD_STORE_CORRUPT', statusCode: 500, message: /could not be read \(.*JSON.*\): it was set aside as fcu-store-upload-.*\.json\.corrupt/ })
  t.equal(await store.getUpload('truncated'), undefined)
  t.equal(corrupt.length, 1, 'reported once: it was set aside')

  const swept = await store.sweep(10)
  t.same(swept.uploads.map((u) => u.id), ['fine'], 'a sweep skips what is damaged')
  t.same(swept.parked.map((p) => p.ref), ['p-fine'])
  const why = corrupt.slice(1).map((e) => (e.cause as Error).message)
  t.equal(why.length, 6, 'every other damaged file reported, with why')
  t.same(why.filter((message) => !message.includes('EISDIR')).sort(), [
    'Unexpected token \'o\', "offset: 12" is not valid JSON',
    'field concat is missing or wrong',
    'field offset is missing or wrong',
    'not a JSON object',
    'not a JSON object'
  ])
  t.equal((await readdir(dir)).filter((name) => name.endsWith('.corrupt')).length, 7, 'and kept aside for a look')
  await store.createUpload(upload('truncated'))
  t.equal((await store.getUpload('truncated'))?.id, 'truncated', 'its id is free again')
})

t.test('FileStore: a record file it cannot remove is an error, not "already gone"', async (t) => {
  const dir = await tmpDirFor(t)
  const store = await openFileStore(t, { dir })
  await store.createUpload(upload('u1'))
  const record = await fileOf(dir, 'fcu-store-upload-')
  await rm(record)
  await mkdir(record)
  await writeFile(join(record, 'inside'), '')
  await t.rejects(store.deleteUpload('u1'), { code: /^(EISDIR|EPERM)$/ })
})

t.test('FileStore: without onCorrupt, damage is a process warning', async (t) => {
  const dir = await tmpDirFor(t)
  const store = await openFileStore(t, { dir })
  await store.createUpload(upload('u1'))
  await writeFile(await fileOf(dir, 'fcu-store-upload-'), '{')
  const warned = new Promise<Error>((resolve) => process.once('warning', resolve))
  t.equal(await store.getUpload('u1'), undefined)
  t.match(await warned, { code: 'FST_CHUNKED_UPLOAD_STORE_CORRUPT' })
})
