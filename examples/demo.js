// The demo app of fastify-chunked-upload: `npm run demo`, then open the printed URL.
//
//   POST /upload/files  images and .txt files land in temp files (the default writer);
//                       the handler hashes them. Bad files are reported next to the
//                       good ones (onEntryError: 'continue').
//   POST /upload/echo   any file goes to EchoWriter, a custom writer that only counts
//                       and logs its chunks. Any bad file fails the whole request.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import chunkedUpload, { defineWriter } from 'fastify-chunked-upload'

export const LIMITS = {
  files: { maxEntries: 5, maxFileSize: 2_000_000 },
  echo: { maxEntries: 5, maxFileSize: 10_000_000 }
}

/**
 * A writer that stores nothing: it logs every chunk it gets, and the total when it is
 * closed. Its meta is what a consumer sees: the byte and chunk counts.
 */
export const EchoWriter = defineWriter({
  init ({ log }) {
    return { log, total: 0, chunks: 0 }
  },
  meta (state) {
    return { total: state.total, chunks: state.chunks }
  },
  writeChunk (data, state) {
    state.log.info({ size: data.length }, 'echo writer: chunk')
    return { ...state, total: state.total + data.length, chunks: state.chunks + 1 }
  },
  close (state, reason) {
    // reason: 'done', 'cancel', or { error } when writeChunk threw
    const how = typeof reason === 'string' ? reason : 'error'
    state.log.info({ total: state.total, chunks: state.chunks, reason: how }, 'echo writer: closed')
    return state
  }
})

async function sha256Of (path) {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk)
  return hash.digest('hex')
}

const STATIC = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8']
}

/** The demo app, not listening yet. `options` go to Fastify (default: `{ logger: true }`). */
export async function buildDemo (options = { logger: true }) {
  const app = Fastify(options)
  await app.register(chunkedUpload)

  for (const [url, [file, type]] of Object.entries(STATIC)) {
    const path = new URL(`./public/${file}`, import.meta.url)
    app.get(url, async (request, reply) => reply.type(type).send(await readFile(path)))
  }

  app.post('/upload/files', {
    allowUpload: {
      files: { accept: ['image/*', '.txt'], ...LIMITS.files, onEntryError: 'continue' }
    }
  }, async (request) => {
    // Every entry is settled by now. Each temp file is removed once its callback returns:
    // move or copy it here to keep it.
    const files = await request.uploads.consume('files', async (meta, entry) => ({
      name: entry.clientName,
      type: entry.clientType,
      size: meta.size,
      sha256: await sha256Of(meta.path)
    }))
    return { note: request.body?.note ?? '', files, errors: request.uploads.errors() }
  })

  app.post('/upload/echo', {
    allowUpload: {
      echo: {
        accept: 'any',
        ...LIMITS.echo,
        // one writer per entry, with its options: here a logger that names the file
        writer: (uploadName, entry, request) => [EchoWriter, { log: request.log.child({ file: entry.clientName }) }]
      }
    }
  }, async (request) => {
    const files = await request.uploads.consume('echo', (meta, entry) => ({
      name: entry.clientName,
      type: entry.clientType,
      total: meta.total,
      chunks: meta.chunks
    }))
    return { files, errors: request.uploads.errors() }
  })

  return app
}

// Run directly (`node examples/demo.js`): listen, print the URL, stop cleanly on Ctrl-C.
if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const app = await buildDemo()
  const url = await app.listen({ port: Number(process.env.PORT ?? 3000), host: process.env.HOST ?? '127.0.0.1' })
  app.log.info({ url }, `demo ready: open ${url} in your browser`)
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.once(signal, () => {
      app.log.info(`${signal}: closing`)
      app.close().catch((error) => {
        app.log.error(error)
        process.exitCode = 1
      })
    })
  }
}
