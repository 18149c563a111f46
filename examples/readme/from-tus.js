import Fastify from 'fastify'
import chunkedUpload, { moveFile } from 'fastify-chunked-upload'

const app = Fastify({ logger: true })
await app.register(chunkedUpload, {
  tmpDir: process.env.UPLOAD_DIR ?? '/var/tmp/uploads',  // FileStore's directory: records and unfinished files
  resumableExpiry: 24 * 3_600_000                       // FileStore's expirationPeriodInMilliseconds: swept every minute
})

app.post('/files', {
  onRequest: async (request, reply) => {                // onIncomingRequest: runs on every request to /files/tus too
    if (request.headers.authorization !== 'Bearer secret') return reply.code(401).send({ error: 'log in first' })
  },
  allowUpload: {
    file: {
      accept: 'any',
      resumable: true,                                  // the tus endpoint, POST /files/tus
      maxFileSize: 1_000_000_000,                       // maxSize
      // onUploadCreate's validation: a code refuses the upload at creation (422)
      validate: (entry) => entry.clientName.endsWith('.exe') ? 'no_executables' : undefined,
      // POST_RECEIVE and POST_FINISH: called as bytes arrive and when the upload ends
      progress: (name, entry) => {
        if (entry.status === 'done') app.log.info({ ref: entry.ref, file: entry.clientName }, 'upload finished')
      }
    }
  }
}, async (request) => {
  // The client posts the upload URL once tus-js-client's onSuccess fired: { "file": "<upload URL>" }
  return await request.uploads.consume('file', (meta, entry) => moveFile(meta.path, `files/${entry.ref}`))
})

await app.listen({ port: Number(process.env.PORT ?? 3000) })
