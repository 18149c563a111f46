// Collects an entry into one Buffer. Bounded by the upload's maxFileSize: use it for
// small files only.
import type { UploadWriter } from '../../types/index.js'

export interface MemoryState {
  chunks: Buffer[]
  size: number
  buffer: Buffer | undefined
}

export interface MemoryMeta {
  buffer: Buffer
}

export const MemoryWriter: UploadWriter<unknown, MemoryState, MemoryMeta> = {
  init () {
    return { chunks: [], size: 0, buffer: undefined }
  },

  meta (state) {
    return { buffer: state.buffer ?? Buffer.concat(state.chunks, state.size) }
  },

  writeChunk (data, state) {
    // Transports may reuse their buffers: keep a copy, not a view.
    state.chunks.push(Buffer.from(data))
    state.size += data.length
    return state
  },

  close (state, reason) {
    state.buffer = reason === 'done' ? Buffer.concat(state.chunks, state.size) : undefined
    state.chunks = []
    return state
  }
}
