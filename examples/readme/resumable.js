import Fastify from 'fastify'
import chunkedUpload from 'fastify-chunked-upload'

const app = Fastify({ logger: true })
await app.register(chunkedUpload)
// Your authentication hook, as in the channel example.
async function requireLogin (request, reply) {
  if (request.headers.authorization !== 'Bearer secret') return reply.code(401).send({ error: 'log in first' })
}

app.post('/videos', {
  onRequest: requireLogin,           // runs on every request to the endpoint too
  allowUpload: { video: { accept: ['video/*'], maxFileSize: 4_000_000_000, resumable: true } }
}, async (request) => {
  // The client uploaded to /videos/tus, then posts { "video": "<upload URL or ref>" }.
  return await request.uploads.consume('video', (meta, entry) => ({ name: entry.clientName, size: meta.size }))
})

await app.listen({ port: Number(process.env.PORT ?? 3000) })
