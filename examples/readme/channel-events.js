import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import chunkedUpload, { moveFile } from 'fastify-chunked-upload'

const app = Fastify({ logger: true })
await app.register(chunkedUpload, { channel: true })
await app.register(websocket)

app.post('/photos', {
  allowUpload: { photos: { accept: ['image/*'], maxEntries: 20 } },
  preHandler: async (request) => {
    if (!request.ws) return
    // On the socket: react to each finished entry as it lands.
    request.uploads.on('done', (entry) => {
      request.uploads.consumeEntry(entry.ref, (meta) => ({ postpone: meta.path }))
        .then((path) => request.log.info({ path }, 'photo landed'), (error) => request.log.error(error))
    })
  }
}, async (request) => {
  // A later request submits the refs: keep the files (a consumed temp file is removed).
  return await request.uploads.consume('photos', (meta, entry) => moveFile(meta.path, `photos/${entry.ref}`))
})

await app.listen({ port: Number(process.env.PORT ?? 3000) })
