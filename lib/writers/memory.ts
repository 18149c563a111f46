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
    // `data` is the writer's to keep (the plugin never reuses it): no copy until close.
    state.chunks.push(data)
    state.size += data.length
    return state
  },

  close (state, reason) {
    state.buffer = reason === 'done' ? Buffer.concat(state.chunks, state.size) : undefined
    state.chunks = []
    return state
  },

  async * read (state) {
    yield state.buffer!
  }
}
