// Contender: @fastify/multipart, streaming the file part to disk as its README shows
// (request.file() + pipeline(part.file, fs.createWriteStream(...))), limits raised.
import { randomBytes } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import Fastify from 'fastify'
import multipart from '@fastify/multipart'
import { MAX_FILE_SIZE, makeTmpDir, serve } from './common.js'

const dir = makeTmpDir('fastify-multipart')
const app = Fastify()
await app.register(multipart, { limits: { fileSize: MAX_FILE_SIZE, files: 1 } })

app.post('/upload', async (request, reply) => {
  const part = await request.file()
  if (part === undefined) return reply.code(400).send({ size: -1, error: 'no file part' })
  const path = join(dir, `upload-${randomBytes(16).toString('hex')}`)
  try {
    await pipeline(part.file, createWriteStream(path, { flags: 'wx', mode: 0o600 }))
    if (part.file.truncated) return reply.code(413).send({ size: -1, error: 'truncated' })
    return { size: (await stat(path)).size }
  } finally {
    await rm(path, { force: true })
  }
})

await serve(app, dir)
