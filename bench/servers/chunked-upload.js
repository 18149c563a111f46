// Contender: fastify-chunked-upload with its default writer (a temp file in tmpDir).
// Multipart (part named "file") and raw bodies (application/octet-stream) both reach
// this one route. The stored size is read back with stat() before the plugin removes
// the temp file after consume. BENCH_CHUNK_SIZE (bytes) overrides the route's
// chunkSize, for diagnosis only; unset, the plugin's default applies.
// BENCH_CHANNEL=1 registers @fastify/websocket and the plugin with `channel: true`:
// files then come over GET /upload/ws, and the client POSTs their refs as JSON
// ({ "file": "<ref>" }) to this same route, whose handler consumes them as above.
// BENCH_CHANNEL_WINDOW overrides the plugin's channelWindow, for diagnosis only.
// BENCH_RESUMABLE=1 makes the upload name resumable: tus-js-client uploads to
// /upload/tus, then POSTs { "file": ["<upload URL>"] } to this same route. maxEntries is
// then 1024, since every upload of the bench has the same (no) owner and maxEntries
// bounds an owner's unfinished uploads.
// The plugin's tmpDir is a fresh directory this process owns (removed on exit), so its
// default store (a FileStore in <tmpDir>/fastify-chunked-upload, claimed with a pid file)
// never meets another server's. BENCH_STORE=memory passes `store: new MemoryStore()`
// instead: records kept in memory (each PATCH still checkpointed), temp files straight
// in tmpDir. A build without stores (a BENCH_BASELINE from before them) keeps everything
// in memory anyway, and gets no option.
import { stat } from 'node:fs/promises'
import Fastify from 'fastify'
import { MAX_FILE_SIZE, makeTmpDir, serve } from './common.js'

// BENCH_PLUGIN: another build of the plugin (the runner's BENCH_BASELINE), else this one.
const plugin = await import(process.env.BENCH_PLUGIN ?? 'fastify-chunked-upload')
const chunkedUpload = plugin.default

const storeKind = process.env.BENCH_STORE ?? 'default'
if (storeKind !== 'default' && storeKind !== 'memory') throw new Error(`BENCH_STORE: "default" or "memory", not ${JSON.stringify(storeKind)}`)
const store = storeKind === 'memory' && plugin.MemoryStore !== undefined ? { store: new plugin.MemoryStore() } : {}
// Which store the plugin got, told in /__bench/stats: 'none' for a build without stores.
const storeUsed = plugin.MemoryStore === undefined ? 'none' : storeKind

const dir = makeTmpDir('chunked-upload')
const app = Fastify()
const channel = process.env.BENCH_CHANNEL === '1'
const channelWindow = process.env.BENCH_CHANNEL_WINDOW === undefined ? {} : { channelWindow: Number(process.env.BENCH_CHANNEL_WINDOW) }
await app.register(chunkedUpload, { tmpDir: dir, channel, ...channelWindow, ...store })
// After the plugin, which must tell channel sockets why they close before @fastify/websocket closes them.
if (channel) await app.register((await import('@fastify/websocket')).default)

const chunkSize = process.env.BENCH_CHUNK_SIZE === undefined ? {} : { chunkSize: Number(process.env.BENCH_CHUNK_SIZE) }

const resumable = process.env.BENCH_RESUMABLE === '1' ? { resumable: true, maxEntries: 1024 } : {}

app.post('/upload', {
  allowUpload: { file: { accept: 'any', maxFileSize: MAX_FILE_SIZE, maxEntries: 1, ...chunkSize, ...resumable } }
}, async (request) => {
  const sizes = await request.uploads.consume('file', async (meta) => (await stat(meta.path)).size)
  if (sizes.length !== 1) return { size: -1, errors: request.uploads.errors() }
  return { size: sizes[0] }
})

await serve(app, dir, { store: storeUsed })
