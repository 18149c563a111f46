// Contender: the practical limit. A bare Fastify route that pipes the raw request
// body straight into a file, no parsing, no per-chunk bookkeeping.
// For bench/patch-overhead.js, two more bare routes take tus-like PATCHes
// (application/offset+octet-stream) and answer 204 with Upload-Offset:
// PATCH /patch/read/:id reads the body and throws it away (what Fastify alone costs);
// PATCH /patch/append/:id also appends it to a file of its id, kept open (what the
// bytes' own write costs on top).
import { randomBytes } from 'node:crypto'
import { createWriteStream, write } from 'node:fs'
import { open, rm, stat } from 'node:fs/promises'
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

app.addContentTypeParser('application/offset+octet-stream', (request, payload, done) => done(null))

/** Reads a request body to its end; resolves with its chunks. */
function readBody (raw) {
  return new Promise((resolve, reject) => {
    const chunks = []
    raw.on('data', (chunk) => chunks.push(chunk))
    raw.once('end', () => resolve(chunks))
    raw.once('error', reject)
  })
}

const offsets = new Map() // id → bytes received
app.patch('/patch/read/:id', async (request, reply) => {
  const chunks = await readBody(request.raw)
  const { id } = request.params
  let offset = offsets.get(id) ?? 0
  for (const chunk of chunks) offset += chunk.length
  offsets.set(id, offset)
  return reply.code(204).header('upload-offset', offset).send()
})

const files = new Map() // id → { fd, offset }
app.patch('/patch/append/:id', async (request, reply) => {
  const chunks = await readBody(request.raw)
  const { id } = request.params
  let file = files.get(id)
  if (file === undefined) {
    file = { handle: await open(join(dir, `patch-${id.replace(/\W/g, '')}`), 'w', 0o600), offset: 0 }
    files.set(id, file)
  }
  for (const chunk of chunks) {
    await new Promise((resolve, reject) => write(file.handle.fd, chunk, 0, chunk.length, null, (error) => error ? reject(error) : resolve()))
    file.offset += chunk.length
  }
  return reply.code(204).header('upload-offset', file.offset).send()
})
// The end of a series: its file goes.
app.delete('/patch/append/:id', async (request, reply) => {
  const file = files.get(request.params.id)
  files.delete(request.params.id)
  if (file !== undefined) {
    await file.handle.close()
    await rm(join(dir, `patch-${request.params.id.replace(/\W/g, '')}`), { force: true })
  }
  return reply.code(204).send()
})

await serve(app, dir)
