import Fastify from 'fastify'
import chunkedUpload, { moveFile } from 'fastify-chunked-upload'

const app = Fastify({ logger: true })
await app.register(chunkedUpload)            // before the routes that use it

app.post('/profile', {
  allowUpload: {
    avatar: { accept: ['image/png', 'image/jpeg', 'image/webp', '.png', '.jpg'], maxFileSize: 8_000_000 },
    docs: { accept: ['application/pdf'], maxEntries: 5 }
  }
}, async (request) => {
  // The handler runs once every entry of the request is settled.
  // Keep the temp file by moving it (its directory is made; across file systems it is copied).
  const [avatar] = await request.uploads.consume('avatar', (meta, entry) => moveFile(meta.path, `avatars/${entry.ref}`))
  const docs = await request.uploads.consume('docs', (meta, entry) => entry.clientName)
  return { avatar, docs, name: request.body?.name }  // text fields are request.body (none for a raw body)
})

await app.listen({ port: Number(process.env.PORT ?? 3000) })
