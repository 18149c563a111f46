// The writer's `discard` is told whether the finished entry was consumed or dropped:
// a writer that stores objects elsewhere deletes only the dropped ones.
import t from 'tap'
import { defineWriter } from '../lib/index.js'
import { bytes, eventually, multipart, startApp } from './kit/index.js'

/** Remembers what each discard was told, by file name. */
function discardLog (): { writer: ReturnType<typeof defineWriter<string, { name: string }, { name: string }>>, told: Map<string, boolean> } {
  const told = new Map<string, boolean>()
  const writer = defineWriter({
    init: (name: string) => ({ name }),
    meta: (state) => ({ name: state.name }),
    writeChunk: (_data, state) => state,
    close: (state) => state,
    discard: (state, { consumed }) => { told.set(state.name, consumed) }
  })
  return { writer, told }
}

t.test('discard says consumed for an entry a consumer took (or threw on), and not for one the request dropped', async (t) => {
  const { writer, told } = discardLog()
  const { url } = await startApp(t, (app) => {
    app.post('/up', {
      allowUpload: { file: { accept: 'any', maxEntries: 3, writer: (_name, entry) => [writer, entry.clientName] } }
    }, async (request) => {
      const mode = (request.body as { mode: string }).mode
      if (mode === 'consume') return await request.uploads.consume('file', (meta: { name: string }) => meta.name)
      if (mode === 'throw') await request.uploads.consume('file', () => { throw new Error('the consumer failed') })
      return 'left unconsumed'
    })
  })
  const post = async (mode: string, filename: string): Promise<number> => {
    const { body, contentType } = multipart([{ name: 'mode', data: mode }, { name: 'file', filename, data: bytes(1000) }])
    return (await fetch(`${url}/up`, { method: 'POST', body, headers: { 'content-type': contentType } })).status
  }
  t.equal(await post('consume', 'taken.bin'), 200)
  t.equal(await post('throw', 'thrown.bin'), 500)
  t.equal(await post('leave', 'dropped.bin'), 200)
  t.ok(await eventually(() => told.size === 3), 'every finished entry was discarded once')
  t.same(Object.fromEntries(told), { 'taken.bin': true, 'thrown.bin': true, 'dropped.bin': false })
})
