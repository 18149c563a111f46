// The plugin: options, onRoute wiring, request decoration, body parsers, shutdown.
import { mkdir } from 'node:fs/promises'
import type { IncomingMessage } from 'node:http'
import { tmpdir } from 'node:os'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { errorCodes } from 'fastify'
import type { ChunkedUploadOptions, UploadWriter, WriterFactory } from '../types/index.js'
import { resolveAllowUpload, validatePluginOptions } from './config.js'
import {
  AlreadyRegisteredError, NoUploadConfigError, PrematureCloseError, ShuttingDownError, withUploadCode, type EntryFailure
} from './errors.js'
import { Uploads } from './uploads.js'
import { TmpFileWriter } from './writers/tmp-file.js'
import { receiveMultipart } from './transports/multipart.js'
import { receiveRaw } from './transports/raw.js'

const kRegistered = Symbol('fastify-chunked-upload.registered')

/** The upload set of a request, or null on routes without allowUpload. */
function uploadsOf (request: FastifyRequest): Uploads | null {
  return request.uploads as Uploads | null
}

const chunkedUpload: FastifyPluginAsync<ChunkedUploadOptions> = async function chunkedUpload (fastify, options) {
  if ((fastify as FastifyInstance & { [kRegistered]?: true })[kRegistered]) throw new AlreadyRegisteredError()
  fastify.decorate(kRegistered, true)

  const settings = validatePluginOptions(options)
  const tmpDir = settings.tmpDir ?? tmpdir()
  await mkdir(tmpDir, { recursive: true })
  const defaultWriter: WriterFactory = () => [TmpFileWriter, { dir: tmpDir }]
  /** Upload sets of requests in flight, cancelled at shutdown. */
  const live = new Set<Uploads>()

  fastify.decorateRequest('uploads', null as unknown as Uploads)

  fastify.addContentTypeParser('multipart/form-data', async (request: FastifyRequest, payload: IncomingMessage) => {
    const uploads = uploadsOf(request)
    if (uploads === null) throw new NoUploadConfigError(request.method, request.url)
    return await receiveMultipart(uploads, request, payload, settings)
  })

  // Any content type without a parser of its own is a raw upload on an upload route;
  // elsewhere it gets Fastify's usual 415.
  fastify.addContentTypeParser('*', async (request: FastifyRequest, payload: IncomingMessage) => {
    const uploads = uploadsOf(request)
    if (uploads === null) throw new errorCodes.FST_ERR_CTP_INVALID_MEDIA_TYPE(request.headers['content-type'])
    await receiveRaw(uploads, request, payload)
    return undefined
  })

  fastify.addHook('onRoute', (route: RouteOptions) => {
    if (route.allowUpload === undefined) return
    const where = `${[route.method].flat().join(',')} ${route.url}`
    const configs = resolveAllowUpload(route.allowUpload, settings.defaults, defaultWriter, where)

    function startUploads (request: FastifyRequest, reply: FastifyReply, done: () => void): void {
      const uploads = new Uploads(configs, request)
      request.uploads = uploads
      live.add(uploads)
      // 'close' comes after the response finished and when the client went away
      // first: onResponse alone misses the second.
      reply.raw.once('close', () => {
        // Stays in `live` until every writer closed and every file is gone: shutdown waits for it.
        uploads.end(withUploadCode(new PrematureCloseError(), 'cancelled') as EntryFailure).finally(() => live.delete(uploads))
      })
      done()
    }
    function closeIfBodyUnread (request: FastifyRequest, reply: FastifyReply, payload: unknown, done: (err: null, payload: unknown) => void): void {
      // The rest of the body was not read: the connection cannot carry another request.
      if (uploadsOf(request)?.bodyUnread === true) reply.header('connection', 'close')
      done(null, payload)
    }
    route.onRequest = [...[route.onRequest ?? []].flat(), startUploads]
    route.onSend = [...[route.onSend ?? []].flat(), closeIfBodyUnread]
  })

  const shuttingDown = (): EntryFailure => withUploadCode(new ShuttingDownError(), 'cancelled') as EntryFailure
  // preClose: uploads still reading stop now, so their requests can answer and drain.
  fastify.addHook('preClose', async () => {
    await Promise.all([...live].map((uploads) => uploads.abort(shuttingDown())))
  })
  // onClose: every request is over; wait until their writers are closed and files gone.
  fastify.addHook('onClose', async () => {
    await Promise.all([...live].map((uploads) => uploads.end(shuttingDown())))
  })
}

export default fp(chunkedUpload, { fastify: '5.x', name: 'fastify-chunked-upload' })
export { chunkedUpload }

/** Returns `impl` unchanged: it exists so TypeScript infers the writer's types. */
export function defineWriter<Options, State, Meta> (impl: UploadWriter<Options, State, Meta>): UploadWriter<Options, State, Meta> {
  return impl
}

export { TmpFileWriter } from './writers/tmp-file.js'
export type { TmpFileMeta, TmpFileOptions, TmpFileState } from './writers/tmp-file.js'
export { MemoryWriter } from './writers/memory.js'
export type { MemoryMeta, MemoryState } from './writers/memory.js'
export * as errors from './errors.js'
export type * from '../types/index.js'
