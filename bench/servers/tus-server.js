// Contender: @tus/server 2 with @tus/file-store, mounted in Fastify exactly as its README's
// "Example: integrate tus into Fastify" shows (a no-op parser for
// application/offset+octet-stream, `app.all` on the path and on path/*, each calling
// tusServer.handle(req.raw, res.raw)), minus `logger: true` (no server of the bench logs).
// As with the plugin, the client then POSTs { "file": ["<upload URL>"] } to /upload,
// whose handler does what an application must: checks the upload is complete
// (datastore.getUpload: its JSON record and a stat of the file), then deletes it
// (datastore.remove: the file and its .json) and answers the size.
import Fastify from 'fastify'
import { Server } from '@tus/server'
import { FileStore } from '@tus/file-store'
import { makeTmpDir, serve } from './common.js'

const dir = makeTmpDir('tus-server')
const app = Fastify()
const tusServer = new Server({
  path: '/files',
  datastore: new FileStore({ directory: dir })
})

app.addContentTypeParser(
  'application/offset+octet-stream',
  (request, payload, done) => done(null)
)

app.all('/files', (req, res) => {
  tusServer.handle(req.raw, res.raw)
})
app.all('/files/*', (req, res) => {
  tusServer.handle(req.raw, res.raw)
})

app.post('/upload', async (request, reply) => {
  const url = request.body?.file?.[0]
  if (typeof url !== 'string') return reply.code(400).send({ size: -1, error: 'no upload URL' })
  const id = url.slice(url.lastIndexOf('/') + 1)
  let upload
  try {
    upload = await tusServer.datastore.getUpload(id)
  } catch {
    return reply.code(404).send({ size: -1, error: `no upload ${id}` })
  }
  if (upload.size !== upload.offset) return reply.code(409).send({ size: -1, error: `upload ${id} is incomplete` })
  await tusServer.datastore.remove(id)
  return { size: upload.offset }
})

await serve(app, dir)
