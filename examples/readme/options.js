import Fastify from 'fastify'
import chunkedUpload from 'fastify-chunked-upload'

const app = Fastify({ logger: true })
await app.register(chunkedUpload, {
  // Where the plugin keeps its files (created if missing); default os.tmpdir(). The default
  // store claims <tmpDir>/fastify-chunked-upload: one process each.
  tmpDir: process.env.UPLOAD_DIR ?? '/var/tmp/uploads',
  // Upload state between requests and processes (see "Restarts and crashes");
  // default: a FileStore in <tmpDir>/fastify-chunked-upload.
  store: undefined,
  fsync: false,                             // true: checkpoints and records also wait for the disk (survive a power loss)
  defaults: { maxFileSize: 50_000_000, onEntryError: 'continue' },  // for every allowUpload config
  maxFields: 1000,                          // text fields per multipart request (413 past it)
  maxFieldSize: 1_048_576,                  // bytes per text field (413 past it)
  // The WebSocket channel (see "The WebSocket channel"):
  channel: false,                           // true: every upload route also gets a channel
  channelSuffix: '/ws',                     // channel path = route path + this
  channelWindow: 32,                        // chunk frames a client may have unacknowledged
  // Chunk bytes waiting for writers across this instance's channel sockets; past it, they
  // are not read until half of it is free.
  channelQueueBytes: 16_777_216,
  // Bytes handed to this instance's temp files and not yet on disk; past it, writeChunk
  // waits for the disk.
  tmpFileQueueBytes: 67_108_864,
  entryTtl: 300_000,                        // ms a finished channel or resumable entry waits for its ref
  owner: undefined,                         // (request) => owner id, a string: refs and uploads only for the same owner
  // Resumable uploads (see "Resumable uploads"):
  resumableSuffix: '/tus',                  // endpoint path = route path + this
  resumableExpiry: 3_600_000,               // ms without a request or byte before an upload expires
  resumableMaxLifetime: 86_400_000,         // ms from creation to the last byte, at most
  maxResumableUploads: 1000                 // resumable uploads open at once, all owners together (503 past it)
})

app.post('/upload', { allowUpload: { file: { accept: 'any' } } },
  async (request) => await request.uploads.consume('file', (meta, entry) => ({ name: entry.clientName, size: meta.size })))

await app.listen({ port: Number(process.env.PORT ?? 3000) })
