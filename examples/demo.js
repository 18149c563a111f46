// The demo app of fastify-chunked-upload: `npm run demo`, then open the printed URL.
//
//   POST /upload/files  images and .txt files land in temp files (the default writer);
//                       the handler hashes them. Bad files are reported next to the
//                       good ones (onEntryError: 'continue').
//   POST /upload/echo   any file goes to EchoWriter, a custom writer that only counts
//                       and logs its chunks (and, with ?slow=1, takes its time, so that
//                       you can watch the progress and cancel). Any bad file fails the
//                       whole request.
//
// Both routes also have a WebSocket channel (`channel: true`): GET /upload/files/ws and
// /upload/echo/ws. The page sends files over either, with the client library
// (fastify-chunked-upload/client, served at /client.js): over the channel, the files
// land first and the page then posts their refs to the route, whose handler consumes
// them as if they had come in that request.
//
// Both upload names are also `resumable: true`: each route has a tus endpoint
// (POST /upload/files/tus, then HEAD/PATCH/DELETE /upload/files/tus/<id>; the same
// under /upload/echo). The page's third mode uploads there with Uppy (@uppy/core and
// @uppy/tus, bundled for the browser by esbuild on first request, served at /uppy.js),
// then posts the upload URLs to the route, like refs.
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import chunkedUpload, { defineWriter } from 'fastify-chunked-upload'

export const LIMITS = {
  files: { maxEntries: 5, maxFileSize: 2_000_000 },
  echo: { maxEntries: 5, maxFileSize: 10_000_000 }
}

/** With ?slow=1, EchoWriter waits this long on every chunk: a slow destination to watch. */
export const SLOW_CHUNK_MS = 25

/**
 * A writer that stores nothing: it logs every chunk it gets, and the total when it is
 * closed. Its meta is what a consumer sees: the byte and chunk counts, and the SHA-256
 * of the bytes it was given. With a `delay`, every chunk takes that long, like a slow
 * destination.
 */
export const EchoWriter = defineWriter({
  init ({ log, delay = 0 }) {
    return { log, delay, total: 0, chunks: 0, hash: createHash('sha256') }
  },
  meta (state) {
    return { total: state.total, chunks: state.chunks, sha256: state.hash.copy().digest('hex') }
  },
  async writeChunk (data, state) {
    state.log.info({ size: data.length, delay: state.delay }, 'echo writer: chunk')
    if (state.delay > 0) await sleep(state.delay)
    state.hash.update(data)
    return { ...state, total: state.total + data.length, chunks: state.chunks + 1 }
  },
  close (state, reason) {
    // reason: 'done', 'cancel', or { error } when writeChunk threw
    const how = typeof reason === 'string' ? reason : 'error'
    const sha256 = state.hash.copy().digest('hex')
    state.log.info({ total: state.total, chunks: state.chunks, sha256, reason: how }, 'echo writer: closed')
    return state
  }
})

async function sha256Of (path) {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path)) hash.update(chunk)
  return hash.digest('hex')
}

const STATIC = {
  '/': [new URL('./public/index.html', import.meta.url), 'text/html; charset=utf-8'],
  '/app.js': [new URL('./public/app.js', import.meta.url), 'text/javascript; charset=utf-8'],
  '/style.css': [new URL('./public/style.css', import.meta.url), 'text/css; charset=utf-8'],
  '/resumable.js': [new URL('./public/resumable.js', import.meta.url), 'text/javascript; charset=utf-8'],
  // the client library, as the package exports it (dist/client/index.js: `npm run build`)
  '/client.js': [new URL(import.meta.resolve('fastify-chunked-upload/client')), 'text/javascript; charset=utf-8']
}

/** What /uppy.js serves: Uppy's core and its tus plugin, as one browser module. */
const UPPY_ENTRY = "export { default as Uppy } from '@uppy/core'\nexport { default as Tus } from '@uppy/tus'\n"

/**
 * Bundles @uppy/core and @uppy/tus for the browser (which cannot import bare npm
 * names), in memory, with esbuild (a devDependency, loaded only here).
 */
export async function bundleUppy () {
  const esbuild = await import('esbuild')
  try {
    const result = await esbuild.build({
      stdin: { contents: UPPY_ENTRY, resolveDir: dirname(fileURLToPath(import.meta.url)), sourcefile: 'uppy.js', loader: 'js' },
      bundle: true,
      format: 'esm',
      platform: 'browser',
      target: 'es2022',
      write: false,
      logLevel: 'silent'
    })
    return Buffer.from(result.outputFiles[0].contents)
  } finally {
    await esbuild.stop() // its service process has nothing more to do
  }
}

/** The demo app, not listening yet. `options` go to Fastify (default: `{ logger: true }`). */
export async function buildDemo (options = { logger: true }) {
  const app = Fastify(options)
  // The plugin before @fastify/websocket: at shutdown it tells each socket why its
  // uploads stopped, and closes it with 1001, before @fastify/websocket closes the rest.
  await app.register(chunkedUpload, { channel: true })
  await app.register(websocket)

  for (const [url, [path, type]] of Object.entries(STATIC)) {
    app.get(url, async (request, reply) => reply.type(type).send(await readFile(path)))
  }
  // Bundled on the first request (the page asks when its resumable mode is chosen), once.
  let uppy
  app.get('/uppy.js', async (request, reply) => {
    uppy ??= bundleUppy().catch((error) => {
      uppy = undefined // the next request tries again
      throw error
    })
    return reply.type('text/javascript; charset=utf-8').send(await uppy)
  })

  app.post('/upload/files', {
    allowUpload: {
      files: { accept: ['image/*', '.txt'], ...LIMITS.files, onEntryError: 'continue', resumable: true }
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
        resumable: true,
        // one writer per entry, with its options: here a logger that names the file.
        // Over the channel, `request` is the socket's upgrade request (its query too);
        // on the resumable endpoint, the creation request (POST /upload/echo/tus?slow=1).
        writer: (uploadName, entry, request) => [EchoWriter, {
          log: request.log.child({ file: entry.clientName }),
          delay: request.query.slow === '1' ? SLOW_CHUNK_MS : 0
        }]
      }
    }
  }, async (request) => {
    const files = await request.uploads.consume('echo', (meta, entry) => ({
      name: entry.clientName,
      type: entry.clientType,
      total: meta.total,
      chunks: meta.chunks,
      sha256: meta.sha256
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
