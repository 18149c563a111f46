import Fastify from 'fastify'
import fp from 'fastify-plugin'
import chunkedUpload from 'fastify-chunked-upload'

// A plugin of that kind: it protects the routes declared with `auth: true` by adding an
// onRequest hook to each of them, from its onRoute hook.
const auth = fp(async (app) => {
  app.addHook('onRoute', (route) => {
    if (route.auth !== true) return
    route.onRequest = [route.onRequest ?? []].flat().concat(async (request, reply) => {
      request.log.info('auth checked')
      if (request.headers.authorization !== 'Bearer secret') return reply.code(401).send({ error: 'log in first' })
    })
  })
})

const app = Fastify({ logger: true })
await app.register(chunkedUpload)
await app.register(auth)                  // after it, as @fastify/compress, rate-limit, otel…

app.post('/files', {
  auth: true,                             // protects POST /files and the endpoint it derives, /files/tus
  allowUpload: { file: { accept: 'any', resumable: true } }
}, async (request) => await request.uploads.consume('file', (meta, entry) => entry.clientName))

await app.listen({ port: Number(process.env.PORT ?? 3000) })
