// A writer that journals its calls: what a test checks the one close of an upload with,
// across sockets, requests and apps.
import { TmpFileWriter, type UploadWriter, type WriterFactory } from '../../lib/index.js'

/** The temp-file writer, each call journaled as a line (`init`, `restore 1000`, `checkpoint 1000`, `close done`). */
export function journaled (journal: string[], filesIn: string, changes: Partial<UploadWriter> = {}): WriterFactory {
  const writer: UploadWriter = {
    ...TmpFileWriter,
    init: async (options, call) => { journal.push('init'); return await TmpFileWriter.init(options, call) },
    restore: async (snapshot, options, call) => { journal.push(`restore ${snapshot.offset}`); return await TmpFileWriter.restore!(snapshot, options, call) },
    checkpoint: async (state, info) => {
      const snapshot = await TmpFileWriter.checkpoint!(state, info)
      journal.push(`checkpoint ${snapshot.offset}${info?.last === true ? ' last' : ''}`)
      return snapshot
    },
    close: async (state, reason) => { journal.push(`close ${typeof reason === 'string' ? reason : 'error'}`); return await TmpFileWriter.close(state, reason) },
    ...changes
  }
  return () => [writer, { dir: filesIn }]
}
