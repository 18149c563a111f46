import Fastify from 'fastify'
import chunkedUpload, { moveFile } from 'fastify-chunked-upload'

const app = Fastify({ logger: true })
// busboy's limits.fields and limits.fieldSize, for every route
await app.register(chunkedUpload, { maxFields: 20, maxFieldSize: 10_000 })

// Was: const { files } = await request.saveRequestFiles({ limits: { fileSize: 5_000_000, files: 3 } }),
// with attachFieldsToBody and a body schema for the title.
app.post('/documents', {
  allowUpload: { attachments: { accept: ['application/pdf', '.pdf'], maxFileSize: 5_000_000, maxEntries: 3 } },
  schema: { body: { type: 'object', required: ['title'], properties: { title: { type: 'string' } } } }
}, async (request) => {
  // Every file is stored and every field parsed (and validated) before the handler runs.
  const saved = await request.uploads.consume('attachments', (meta, entry) =>
    moveFile(meta.path, `documents/${entry.ref}.pdf`).then(() => ({ name: entry.clientName, size: meta.size })))
  return { title: request.body.title, saved }
})

await app.listen({ port: Number(process.env.PORT ?? 3000) })
