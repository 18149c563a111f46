// The default writer: each entry streams into its own temp file, created exclusively
// with an unguessable name. The file is removed on cancel or error, and when the
// finished entry is discarded or consumed (unless the consumer moved it away); until
// then `read` streams it back.
//
// Like fs.WriteStream, it keeps one write in flight and gathers the chunks that
// arrive meanwhile into the next `writev`, so receiving and writing overlap. A
// `writeChunk` waits only when more than HIGH_WATER bytes are queued for its file, or
// its budget (shared by the files of one plugin instance) is spent, which bounds
// memory; a failed write surfaces at the next `writeChunk`, at `checkpoint` or at `close`.
//
// `checkpoint` waits for the queued writes (and with `fsync`, for the disk), and names
// the file and its size; `restore` reopens that file in any process, cuts it back to the
// size and appends from there. A snapshot comes from a store, so `restore` opens only a
// file this writer could have made: named `upload-<32 hex>`, directly in its directory, a
// regular file of this user with no other link, never through a symbolic link.
import { randomBytes } from 'node:crypto'
import { close, constants, createReadStream, fdatasync, fstat, fsync, ftruncate, open, writev, type Stats } from 'node:fs'
import { readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, isAbsolute, join, resolve } from 'node:path'
import type { UploadWriter, WriterSnapshot } from '../../types/index.js'

const HIGH_WATER = 256 * 1024
/** The default budget's size: bytes queued and not yet written, across the files sharing it. */
export const TMP_FILE_QUEUE_BYTES = 64 * 1024 * 1024

/**
 * Bytes handed to temp files and not yet written, across the files that share it, so
 * memory does not grow without bound with concurrency. Past `limit`, every `writeChunk`
 * of those files waits for its file's writes. The plugin gives each instance its own.
 */
export class TmpFileBudget {
  readonly limit: number
  unwritten = 0
  constructor (limit = TMP_FILE_QUEUE_BYTES) {
    this.limit = limit
  }
}

/** Shared by the writers used without a budget of their own (outside the plugin). */
const defaultBudget = new TmpFileBudget()

// The callback forms of open/writev/close: per call they cost less than FileHandle's
// promise machinery, which shows with hundreds of concurrent uploads.
function call<T> (fn: (done: (error: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => fn((error, value) => { if (error === null) resolve(value); else reject(error) }))
}

export interface TmpFileOptions {
  /** Directory for the temp files. Default: the OS temp directory. */
  dir?: string
  /**
   * `checkpoint` also waits for the disk (fdatasync), so a checkpointed file survives a
   * power loss, not only the process dying. Default false.
   */
  fsync?: boolean
  /**
   * Shared by the files whose unwritten bytes it bounds. Default: one budget of 64 MiB
   * for every writer used without one (the plugin passes its instance's).
   */
  budget?: TmpFileBudget
}

export interface TmpFileState {
  readonly path: string
  /** The open file descriptor. */
  readonly fd: number
  /** Bytes handed to the writer. */
  size: number
  /** Chunks waiting for the next write. */
  queue: Buffer[]
  /** Bytes queued or being written. */
  unwritten: number
  readonly budget: TmpFileBudget
  /** `checkpoint` waits for the disk. */
  readonly fsync: boolean
  /** With `fsync`: the directory's entry for the file is on disk too. */
  entrySynced: boolean
  writing: Promise<void> | undefined
  failure: { error: unknown } | undefined
}

/** What `checkpoint` returns: the file, and the bytes in it (`offset`). */
export type TmpFileSnapshot = { readonly path: string, readonly offset: number }

export interface TmpFileMeta {
  /** Where the bytes are. Move or copy the file in the consume callback to keep it. */
  path: string
  size: number
}

/** Writes the queue until it is empty; records the first failure. */
async function drain (state: TmpFileState): Promise<void> {
  try {
    while (state.queue.length > 0) {
      const buffers = state.queue
      state.queue = []
      let total = 0
      for (const buffer of buffers) total += buffer.length
      const bytesWritten = await call<number>((done) => writev(state.fd, buffers, done))
      // A regular file takes every byte or fails; a short write means the disk is full.
      /* c8 ignore next */
      if (bytesWritten !== total) throw new Error(`short write to ${state.path}: ${bytesWritten} of ${total} bytes`)
      state.unwritten -= total
      state.budget.unwritten -= total
    }
  } catch (error) {
    state.failure = { error }
    state.queue = []
    state.budget.unwritten -= state.unwritten
    state.unwritten = 0
  } finally {
    state.writing = undefined
  }
}

async function settle (state: TmpFileState): Promise<void> {
  while (state.writing !== undefined) await state.writing
  if (state.failure !== undefined) throw state.failure.error
}

const FILE_NAME = /^upload-[0-9a-f]{32}$/
// No O_CREAT: the file must exist. O_APPEND: writes go after the cut. O_NOFOLLOW: a
// symbolic link under the name is refused. O_NONBLOCK: a FIFO under the name cannot
// hold the open (a regular file ignores it).
const REOPEN = constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW | constants.O_NONBLOCK

async function syncDirectory (dir: string): Promise<void> {
  const fd = await call<number>((done) => open(dir, constants.O_RDONLY | constants.O_DIRECTORY, done))
  try {
    await call<void>((done) => fsync(fd, (error) => done(error, undefined)))
  } finally {
    await call<void>((done) => close(fd, () => done(null, undefined)))
  }
}

function directory (options: TmpFileOptions | undefined): string {
  return resolve(options?.dir ?? tmpdir())
}

/** The snapshot's path, if it names a file this writer could have made in `dir`. */
function ownPath (snapshot: WriterSnapshot, dir: string): string {
  const { path, offset } = snapshot
  if (typeof path !== 'string' || !isAbsolute(path) || dirname(path) !== dir || !FILE_NAME.test(basename(path))) {
    throw new Error(`TmpFileWriter cannot restore ${JSON.stringify(path)}: not a temp file of this writer in ${dir}`)
  }
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new Error(`TmpFileWriter cannot restore ${path}: its offset ${JSON.stringify(offset)} is not a byte count`)
  }
  return path
}

/** Opens the file for appending after checking it is one this writer made. */
async function reopen (path: string, offset: number): Promise<number> {
  const fd = await call<number>((done) => open(path, REOPEN, done))
  try {
    const stats = await call<Stats>((done) => fstat(fd, done))
    const user = process.geteuid?.() // the owner of the files this process creates; none on Windows
    if (!stats.isFile() || stats.nlink !== 1 || (user !== undefined && stats.uid !== user)) {
      throw new Error(`TmpFileWriter cannot restore ${path}: not a regular file of this user with a single link`)
    }
    if (stats.size < offset) {
      throw new Error(`TmpFileWriter cannot restore ${path}: bytes were lost, the file has ${stats.size} of the ${offset} bytes its snapshot holds`)
    }
    await call<void>((done) => ftruncate(fd, offset, (error) => done(error, undefined)))
    return fd
  } catch (error) {
    await call<void>((done) => close(fd, () => done(null, undefined)))
    throw error
  }
}

export const TmpFileWriter: UploadWriter<TmpFileOptions | undefined, TmpFileState, TmpFileMeta> = {
  async init (options) {
    // An absolute path, so that a snapshot names the file whatever the restoring process's cwd.
    const path = join(directory(options), `upload-${randomBytes(16).toString('hex')}`)
    // 'wx': fail rather than reuse an existing file; 0o600: readable by this user only
    const fd = await call<number>((done) => open(path, 'wx', 0o600, done))
    return opened(path, fd, 0, options)
  },

  meta (state) {
    return { path: state.path, size: state.size }
  },

  writeChunk (data, state) {
    if (state.failure !== undefined) throw state.failure.error
    state.queue.push(data)
    state.unwritten += data.length
    state.budget.unwritten += data.length
    state.size += data.length
    state.writing ??= drain(state)
    if (state.unwritten < HIGH_WATER && state.budget.unwritten < state.budget.limit) return state
    return settle(state).then(() => state)
  },

  async close (state, reason) {
    let complete = false
    try {
      if (reason === 'done') {
        await settle(state)
        complete = true
      } else {
        await state.writing
      }
    } finally {
      try {
        await call<void>((done) => close(state.fd, (error) => done(error ?? null, undefined)))
      } finally {
        // Only a complete file outlives its close (until the entry is consumed or discarded).
        if (!complete) await rm(state.path, { force: true })
      }
    }
    return state
  },

  async discard (state) {
    await rm(state.path, { force: true })
  },

  read (state, call) {
    return createReadStream(state.path, { signal: call?.signal })
  },

  // Once the queued writes completed, the bytes are in the kernel's page cache, which
  // outlives the process but not a power loss; fdatasync takes them to the disk, and
  // once per file an fsync of the directory takes its name there (a new file's entry is
  // not made durable by the file's own sync).
  async checkpoint (state, info) {
    await settle(state)
    if (state.fsync) {
      await call<void>((done) => fdatasync(state.fd, (error) => done(error, undefined)))
      if (!state.entrySynced) {
        await syncDirectory(dirname(state.path))
        state.entrySynced = true
      }
    }
    // The last call on this state here (shutdown): the file stays, its descriptor goes.
    if (info?.last === true) await call<void>((done) => close(state.fd, (error) => done(error ?? null, undefined)))
    const snapshot: TmpFileSnapshot = { path: state.path, offset: state.size }
    return snapshot
  },

  async restore (snapshot, options) {
    const path = ownPath(snapshot, directory(options))
    const fd = await reopen(path, snapshot.offset)
    return opened(path, fd, snapshot.offset, options)
  }
}

function opened (path: string, fd: number, size: number, options: TmpFileOptions | undefined): TmpFileState {
  return {
    path, fd, size, queue: [], unwritten: 0, budget: options?.budget ?? defaultBudget, fsync: options?.fsync === true, entrySynced: false, writing: undefined, failure: undefined
  }
}

/**
 * Removes the file a snapshot names, if it is one this writer could have made in its
 * directory (as `restore` checks): how an upload whose writer state is gone (its record
 * expired, or its bytes were lost) is cleaned up. Throws for any other path.
 */
export async function removeSnapshotFile (snapshot: WriterSnapshot, options: TmpFileOptions | undefined): Promise<void> {
  await rm(ownPath(snapshot, directory(options)), { force: true })
}

/**
 * Removes this writer's files in `dir` (named as it names them) but those in `keep`: what
 * a process that died left behind. Only for a directory no other running process writes
 * to (a store's claimed one). Returns the paths removed.
 */
export async function removeLeftovers (dir: string, keep: ReadonlySet<string>): Promise<string[]> {
  const base = resolve(dir)
  const leftovers = (await readdir(base)).filter((name) => FILE_NAME.test(name)).map((name) => join(base, name)).filter((path) => !keep.has(path))
  await Promise.all(leftovers.map(async (path) => await rm(path, { force: true })))
  return leftovers
}
