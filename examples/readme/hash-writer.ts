import Fastify from 'fastify'
import chunkedUpload, { defineWriter } from 'fastify-chunked-upload'
import { createHash } from 'node:crypto'

// Hashes an upload without storing it. defineWriter only helps TypeScript infer types.
export const HashWriter = defineWriter({
  init (opts: { algorithm: 'sha256' | 'sha1' }) {
    return { hash: createHash(opts.algorithm), bytes: 0, digest: '' }
  },
  meta (state) {
    return { digest: state.digest, bytes: state.bytes }   // what consumers receive
  },
  writeChunk (data, state) {
    state.hash.update(data)                               // may be async: return a Promise
    state.bytes += data.length
    return state
  },
  close (state, reason) {
    if (reason === 'done') state.digest = state.hash.digest('hex')
    return state                                          // on 'cancel' / { error }: clean up here
  }
})

const app = Fastify({ logger: true })
await app.register(chunkedUpload)

app.post('/hash', {
  allowUpload: { file: { accept: 'any', writer: () => [HashWriter, { algorithm: 'sha256' }] } }
}, async (request) => request.uploads.consume('file', (meta) => meta.digest))

await app.listen({ port: Number(process.env.PORT ?? 3000) })
