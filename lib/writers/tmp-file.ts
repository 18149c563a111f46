// The default writer: each entry streams into its own temp file, created exclusively
// with an unguessable name. The file is removed on cancel or error, and when the
// finished entry is discarded or consumed (unless the consumer moved it away); until
// then `read` streams it back.
//
// Like fs.WriteStream, it keeps one write in flight and gathers the chunks that
// arrive meanwhile into the next `writev`, so receiving and writing overlap. A
// `writeChunk` waits only when more than HIGH_WATER bytes are queued for its file, or
// its budget (shared by the files of one plugin instance) is spent, which bounds
// memory; a failed write surfaces at the next `writeChunk` or at `close`.
import { randomBytes } from 'node:crypto'
import { close, createReadStream, open, writev } from 'node:fs'
import { rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { UploadWriter } from '../../types/index.js'

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
  writing: Promise<void> | undefined
  failure: { error: unknown } | undefined
}

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

export const TmpFileWriter: UploadWriter<TmpFileOptions | undefined, TmpFileState, TmpFileMeta> = {
  async init (options) {
    const path = join(options?.dir ?? tmpdir(), `upload-${randomBytes(16).toString('hex')}`)
    // 'wx': fail rather than reuse an existing file; 0o600: readable by this user only
    const fd = await call<number>((done) => open(path, 'wx', 0o600, done))
    return { path, fd, size: 0, queue: [], unwritten: 0, budget: options?.budget ?? defaultBudget, writing: undefined, failure: undefined }
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
  }
}
