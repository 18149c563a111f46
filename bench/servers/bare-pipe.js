// Contender: the practical limit. A bare Fastify route that pipes the raw request
// body straight into a file, no parsing, no per-chunk bookkeeping.
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import Fastify from 'fastify'
import { makeTmpDir, serve } from './common.js'

const dir = makeTmpDir('bare-pipe')
const app = Fastify()
// Leave the body unread: the handler streams it.
app.addContentTypeParser('application/octet-stream', (request, payload, done) => done(null))

app.post('/upload', async (request) => {
  const path = join(dir, `upload-${randomBytes(16).toString('hex')}`)
  try {
    await pipeline(request.raw, createWriteStream(path, { flags: 'wx', mode: 0o600 }))
    return { size: (await stat(path)).size }
  } finally {
    await rm(path, { force: true })
  }
})

await serve(app, dir)
