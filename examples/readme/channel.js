import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import chunkedUpload from 'fastify-chunked-upload'

const app = Fastify({ logger: true })
// Your authentication hook; here, a fixed token.
async function requireLogin (request, reply) {
  if (request.headers.authorization !== 'Bearer secret') return reply.code(401).send({ error: 'log in first' })
}
// In this order (same scope, or the plugin in a parent scope): at shutdown the plugin
// tells each channel socket why its uploads stopped and closes it with 1001, before
// @fastify/websocket closes every socket without a code. The other order fails at
// startup (FST_CHUNKED_UPLOAD_WEBSOCKET_ORDER).
// owner: who is logged in, as a string (here the token itself; a user id in a real app).
await app.register(chunkedUpload, { channel: true, owner: (request) => request.headers.authorization })
// maxPayload: your largest chunkSize + 12, so larger frames are refused from their header
await app.register(websocket, { options: { maxPayload: 64_012 } })

app.post('/photos', {
  onRequest: requireLogin,           // runs on the channel's upgrade too
  allowUpload: { photos: { accept: ['image/*'], maxEntries: 20, maxFileSize: 50_000_000 } }
}, async (request) => {
  // The files came earlier over ws://host/photos/ws; the form posts their refs:
  // { "photos": ["<ref>", "<ref>"] } (JSON) or photos=<ref> fields (multipart).
  return await request.uploads.consume('photos', (meta, entry) => ({ name: entry.clientName, size: meta.size }))
})

await app.listen({ port: Number(process.env.PORT ?? 3000) })
