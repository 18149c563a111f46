// The store of one process, in a directory: each record and parked entry is one JSON file,
// replaced atomically (written to a temp file beside it, then renamed over it), so a crash
// leaves either the old record or the new one. Locks live in the process, so one process
// uses a directory: it claims it with a file naming its pid, refused while that process
// lives and taken over once it died. Damaged files are reported, set aside and skipped.
// Only files named with the store's prefix are touched: the directory may be shared.
import { mkdir, open, readdir, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { CorruptRecordError, StoreInUseError, UploadExistsError, UploadNotFoundError } from '../errors.js'
import { Locks } from './locks.js'
import {
  applyChange, claimableBy, decodeParked, decodeUpload,
  type Expired, type HeldLock, type ParkedEntry, type Store, type UploadChange, type UploadRecord
} from './store.js'

const PREFIX = 'fcu-store-'
const CLAIM = `${PREFIX}claim`
const UPLOAD = `${PREFIX}upload-`
const PARKED = `${PREFIX}parked-`
const RECORD_END = '.json'
const TEMP_END = '.tmp'

/** Directories claimed by stores of this process: a second store on one is refused too. */
const claimedHere = new Set<string>()

export interface FileStoreOptions {
  /** Where the files go; created if missing. */
  dir: string
  /** Flush each file and the directory to disk before going on: survives a power loss, not only a crash. Default false. */
  fsync?: boolean
  /** Told of each damaged file, which was set aside (renamed `….corrupt`) and skipped. Default: a process warning. */
  onCorrupt?: (error: Error) => void
}

export class FileStore implements Store {
  readonly dir: string
  readonly #fsync: boolean
  readonly #onCorrupt: (error: Error) => void
  readonly #locks = new Locks()
  /**
   * The records this store wrote, as written, by file name: an update (made under the
   * upload's lock) starts from it instead of reading the file back, since nothing else
   * writes there (the directory is claimed).
   */
  readonly #written = new Map<string, string>()
  /** Per file, the operation that runs last: operations on one file run one after another. */
  readonly #queues = new Map<string, Promise<void>>()
  #temps = 0
  #closed = false

  /** Claims the directory (StoreInUseError while another live process has it) and clears temp files a crash left. */
  static async open (options: FileStoreOptions): Promise<FileStore> {
    const dir = resolve(options.dir)
    // Its records name owners and files: this user's only.
    await mkdir(dir, { recursive: true, mode: 0o700 })
    await claim(dir)
    const names = await readdir(dir)
    await Promise.all(names.filter((name) => name.startsWith(PREFIX) && name.endsWith(TEMP_END)).map(async (name) => await rm(join(dir, name), { force: true })))
    return new FileStore(dir, options)
  }

  private constructor (dir: string, options: FileStoreOptions) {
    this.dir = dir
    this.#fsync = options.fsync ?? false
    this.#onCorrupt = options.onCorrupt ?? ((error) => process.emitWarning(error))
  }

  async createUpload (record: UploadRecord): Promise<void> {
    const name = uploadFile(record.id)
    await this.#serial(name, async () => {
      if (await this.#read(name, decodeUpload) !== undefined) throw new UploadExistsError(record.id)
      await this.#write(name, record)
    })
  }

  async getUpload (id: string): Promise<UploadRecord | undefined> {
    const name = uploadFile(id)
    return await this.#serial(name, async () => await this.#read(name, decodeUpload))
  }

  async updateUpload (id: string, expected: { offset: number, token: number }, change: UploadChange): Promise<UploadRecord> {
    const name = uploadFile(id)
    return await this.#serial(name, async () => {
      const written = this.#written.get(name)
      const record = written === undefined ? await this.#read(name, decodeUpload) : decodeUpload(written)
      if (record === undefined) throw new UploadNotFoundError()
      const updated = applyChange(record, expected, change, this.#locks.holds(id, expected.token))
      await this.#write(name, updated)
      return updated
    })
  }

  async uploads (): Promise<UploadRecord[]> {
    return await this.#all(UPLOAD, decodeUpload)
  }

  async deleteUpload (id: string): Promise<boolean> {
    const name = uploadFile(id)
    return await this.#serial(name, async () => await this.#remove(name))
  }

  async lock (id: string, onStopRequested: () => void, timeout: number): Promise<HeldLock> {
    return await this.#locks.lock(id, onStopRequested, timeout)
  }

  async parked (): Promise<ParkedEntry[]> {
    return await this.#all(PARKED, decodeParked)
  }

  async park (entry: ParkedEntry): Promise<void> {
    const name = parkedFile(entry.ref)
    await this.#serial(name, async () => await this.#write(name, entry))
  }

  async claim (ref: string, owner: string | undefined, configKey: string): Promise<ParkedEntry | undefined> {
    const name = parkedFile(ref)
    return await this.#serial(name, async () => {
      const entry = await this.#read(name, decodeParked)
      if (entry === undefined || !claimableBy(entry, owner, configKey)) return undefined
      await this.#remove(name)
      return entry
    })
  }

  async forget (ref: string): Promise<boolean> {
    const name = parkedFile(ref)
    return await this.#serial(name, async () => await this.#remove(name))
  }

  async sweep (now: number): Promise<Expired> {
    const names = (await readdir(this.dir)).filter((name) => name.endsWith(RECORD_END))
    const take = async <T extends { expiresAt: number }>(prefix: string, decode: (text: string) => T, keep: (item: T) => boolean): Promise<T[]> => {
      const taken = await Promise.all(names.filter((name) => name.startsWith(prefix)).map(async (name) => await this.#serial(name, async () => {
        const item = await this.#read(name, decode)
        if (item === undefined || item.expiresAt > now || keep(item)) return undefined
        await this.#remove(name)
        return item
      })))
      return taken.filter((item) => item !== undefined)
    }
    return {
      // An upload someone holds or awaits is being written: not expired.
      uploads: await take(UPLOAD, decodeUpload, (record) => this.#locks.busy(record.id)),
      parked: await take(PARKED, decodeParked, () => false)
    }
  }

  /** Gives the directory up; idempotent. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await rm(join(this.dir, CLAIM), { force: true })
    claimedHere.delete(this.dir)
  }

  /** Every file of one kind (`prefix`) read back, but for damaged ones (set aside). */
  async #all<T> (prefix: string, decode: (text: string) => T): Promise<T[]> {
    const names = (await readdir(this.dir)).filter((name) => name.startsWith(prefix) && name.endsWith(RECORD_END))
    const items = await Promise.all(names.map(async (name) => await this.#serial(name, async () => await this.#read(name, decode))))
    return items.filter((item) => item !== undefined)
  }

  /** Runs `fn` once every earlier operation on the same file settled. */
  async #serial<T> (name: string, fn: () => Promise<T>): Promise<T> {
    const run = (this.#queues.get(name) ?? Promise.resolve()).then(fn)
    const settled = run.then(() => {}, () => {})
    this.#queues.set(name, settled)
    try {
      return await run
    } finally {
      if (this.#queues.get(name) === settled) this.#queues.delete(name)
    }
  }

  /** A file's content, checked by `decode`; undefined if it is missing, or damaged (then reported and set aside). */
  async #read<T> (name: string, decode: (text: string) => T): Promise<T | undefined> {
    const path = join(this.dir, name)
    let text: string
    try {
      text = await readFile(path, 'utf8')
    } catch (error) {
      if (codeOf(error) === 'ENOENT') return undefined
      return await this.#setAside(name, error)
    }
    try {
      return decode(text)
    } catch (error) {
      return await this.#setAside(name, error)
    }
  }

  async #setAside (name: string, error: unknown): Promise<undefined> {
    this.#written.delete(name)
    const aside = `${name}.corrupt`
    await rename(join(this.dir, name), join(this.dir, aside))
    this.#onCorrupt(new CorruptRecordError(join(this.dir, name), (error as Error).message, aside, { cause: error }))
    return undefined
  }

  /** Replaces a file with `value` as JSON, all or nothing: a temp file beside it, renamed over it. */
  async #write (name: string, value: UploadRecord | ParkedEntry): Promise<void> {
    const path = join(this.dir, name)
    const temp = `${path}.${process.pid}-${++this.#temps}${TEMP_END}`
    const text = JSON.stringify(value)
    if (this.#fsync) {
      const file = await open(temp, 'w', 0o600)
      try {
        await file.writeFile(text)
        await file.sync()
      } finally {
        await file.close()
      }
    } else {
      await writeFile(temp, text, { mode: 0o600 })
    }
    await rename(temp, path)
    if (name.startsWith(UPLOAD)) this.#written.set(name, text)
    if (this.#fsync) {
      // The rename itself is durable only once the directory is flushed.
      const dir = await open(this.dir, 'r')
      try {
        await dir.sync()
      } finally {
        await dir.close()
      }
    }
  }

  /** Removes a file; whether this call removed it (false: it was not there). */
  async #remove (name: string): Promise<boolean> {
    this.#written.delete(name)
    try {
      await unlink(join(this.dir, name))
      return true
    } catch (error) {
      if (codeOf(error) === 'ENOENT') return false
      throw error
    }
  }
}

/**
 * Claims `dir` for this process with a file holding its pid, created exclusively. A claim
 * whose process is gone is stale (a kill -9, or an earlier life of this same pid) and is
 * replaced; a live one is refused.
 */
async function claim (dir: string): Promise<void> {
  if (claimedHere.has(dir)) throw new StoreInUseError(dir, process.pid)
  const path = join(dir, CLAIM)
  for (let attempt = 0; ; attempt++) {
    const created = await writeFile(path, String(process.pid), { flag: 'wx' }).then(() => true, () => false)
    if (created) break
    // Whatever kept the claim from being created, reading it says more (or throws why).
    const pid = Number(await readFile(path, 'utf8'))
    // A second attempt lost to another process starting at the same moment.
    if (attempt > 0 || (pid !== process.pid && isAlive(pid))) throw new StoreInUseError(dir, pid)
    await rm(path, { force: true })
  }
  claimedHere.add(dir)
}

/** Whether a process with this pid runs (EPERM: it does, as another user). */
function isAlive (pid: number): boolean {
  // An empty or damaged claim (a crash while it was written) names nobody.
  if (!(pid > 0)) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return codeOf(error) === 'EPERM'
  }
}

function codeOf (error: unknown): unknown {
  return (error as NodeJS.ErrnoException).code
}

/** File names carry ids as base64url: any id is a safe name, and names never collide. */
function uploadFile (id: string): string {
  return `${UPLOAD}${Buffer.from(id).toString('base64url')}${RECORD_END}`
}

function parkedFile (ref: string): string {
  return `${PARKED}${Buffer.from(ref).toString('base64url')}${RECORD_END}`
}
