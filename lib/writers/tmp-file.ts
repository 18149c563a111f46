// The default writer: each entry streams into its own temp file, created exclusively
// with an unguessable name. The file is removed on cancel or error, and when the
// finished entry is discarded or consumed (unless the consumer moved it away).
import { randomBytes } from 'node:crypto'
import { open, rm, type FileHandle } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { UploadWriter } from '../../types/index.js'

export interface TmpFileOptions {
  /** Directory for the temp files. Default: the OS temp directory. */
  dir?: string
}

export interface TmpFileState {
  readonly path: string
  readonly handle: FileHandle
  size: number
}

export interface TmpFileMeta {
  /** Where the bytes are. Move or copy the file in the consume callback to keep it. */
  path: string
  size: number
}

export const TmpFileWriter: UploadWriter<TmpFileOptions | undefined, TmpFileState, TmpFileMeta> = {
  async init (options) {
    const path = join(options?.dir ?? tmpdir(), `upload-${randomBytes(16).toString('hex')}`)
    // 'wx': fail rather than reuse an existing file; 0o600: readable by this user only
    const handle = await open(path, 'wx', 0o600)
    return { path, handle, size: 0 }
  },

  meta (state) {
    return { path: state.path, size: state.size }
  },

  async writeChunk (data, state) {
    let written = 0
    while (written < data.length) {
      const { bytesWritten } = await state.handle.write(data, written, data.length - written)
      written += bytesWritten
    }
    state.size += written
    return state
  },

  async close (state, reason) {
    try {
      await state.handle.close()
    } finally {
      if (reason !== 'done') await rm(state.path, { force: true })
    }
    return state
  },

  async discard (state) {
    await rm(state.path, { force: true })
  }
}
