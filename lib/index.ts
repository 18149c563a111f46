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
  AlreadyRegisteredError, ChannelNeedsWebsocketError, NoUploadConfigError, PrematureCloseError, ShuttingDownError, TooManyFilesError,
  UnknownRefError, withUploadCode, type EntryFailure
} from './errors.js'
import { RefStore } from './refs.js'
import { Uploads } from './uploads.js'
import { TmpFileWriter } from './writers/tmp-file.js'
import { receiveMultipart } from './transports/multipart.js'
import { receiveRaw } from './transports/raw.js'
import { Channel, SUBPROTOCOL, maxMessageBytes, type ChannelSocket } from './transports/websocket.js'
import { EXPOSED_HEADERS, ResumableEndpoint, ResumableRegistry } from './transports/resumable.js'
import { TUS_VERSION, idOfUrl } from './transports/resumable-headers.js'
import { closeAfterAnswer } from './transports/close-after-answer.js'

const kRegistered = Symbol('fastify-chunked-upload.registered')
/** Set on requests to a resumable endpoint: their bodies are left unread for the endpoint. */
const kResumable = Symbol('fastify-chunked-upload.resumable')
type MaybeResumable = FastifyRequest & { [kResumable]?: true }

/** The upload set of a request, or null on routes without allowUpload. */
function uploadsOf (request: FastifyRequest): Uploads | null {
  return request.uploads as Uploads | null
}

/** What the channel needs of @fastify/websocket's decorator (without depending on its types). */
type WithWebsocketServer = FastifyInstance & { websocketServer: { clients?: Set<unknown> } }

/** A `ws` socket as the channel route's handler gets it. */
interface WsSocket extends ChannelSocket {
  readonly protocol: string
  close (code?: number, reason?: string): void
  once (event: 'close', listener: () => void): unknown
  /** ws's frame parser: its limit is checked against each frame's header, before the payload is read. */
  _receiver?: { _maxPayload: number }
}

/** A route's own path plus a suffix (`/up/` + `/ws` → `/up/ws`), under the same prefix. */
function pathWithSuffix (routePath: string, suffix: string): string {
  return (routePath.endsWith('/') ? routePath.slice(0, -1) : routePath) + suffix
}

const hooks = <T>(value: T | T[] | undefined): T[] => value === undefined ? [] : [value].flat() as T[]

const chunkedUpload: FastifyPluginAsync<ChunkedUploadOptions> = async function chunkedUpload (fastify, options) {
  if ((fastify as FastifyInstance & { [kRegistered]?: true })[kRegistered]) throw new AlreadyRegisteredError()
  fastify.decorate(kRegistered, true)

  const settings = validatePluginOptions(options)
  const tmpDir = settings.tmpDir ?? tmpdir()
  await mkdir(tmpDir, { recursive: true })
  const defaultWriter: WriterFactory = () => [TmpFileWriter, { dir: tmpDir }]
  /** Upload sets of requests in flight, cancelled at shutdown. */
  const live = new Set<Uploads>()
  /** Channel sockets open, closed with 1001 at shutdown. */
  const sockets = new Map<Uploads, WsSocket>()
  /** Finished channel and resumable entries waiting for their ref. */
  const refs = new RefStore(settings.entryTtl)
  /** Resumable uploads in progress, across requests. */
  const resumables = new ResumableRegistry()

  fastify.decorateRequest('uploads', null as unknown as Uploads)

  fastify.addContentTypeParser('multipart/form-data', async (request: FastifyRequest, payload: IncomingMessage) => {
    if ((request as MaybeResumable)[kResumable] === true) return payload
    const uploads = uploadsOf(request)
    if (uploads === null) throw new NoUploadConfigError(request.method, request.url)
    return await receiveMultipart(uploads, request, payload, settings)
  })

  // Any content type without a parser of its own is a raw upload on an upload route;
  // elsewhere it gets Fastify's usual 415.
  fastify.addContentTypeParser('*', async (request: FastifyRequest, payload: IncomingMessage) => {
    if ((request as MaybeResumable)[kResumable] === true) return payload
    const uploads = uploadsOf(request)
    if (uploads === null) throw new errorCodes.FST_ERR_CTP_INVALID_MEDIA_TYPE(request.headers['content-type'])
    await receiveRaw(uploads, request, payload)
    return undefined
  })

  fastify.addHook('onRoute', function (this: FastifyInstance, route: RouteOptions & { routePath: string }) {
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
      // The rest of the body was not read (by us, or by Fastify after a parser error): the exchange cannot go on.
      if (uploadsOf(request)?.bodyUnread === true || reply.getHeader('connection') === 'close') closeAfterAnswer(reply)
      done(null, payload)
    }
    /** Refs of finished channel entries, submitted as the upload name's value, join this request's entries. */
    async function claimRefs (request: FastifyRequest): Promise<void> {
      const body = request.body as Record<string, unknown> | null | undefined
      if (body === null || typeof body !== 'object') return
      const uploads = uploadsOf(request)!
      let owner: unknown
      for (const [uploadName, config] of uploads.configs) {
        if (!Object.hasOwn(body, uploadName)) continue
        const value = body[uploadName]
        const given = typeof value === 'string' ? [value] : value
        if (!Array.isArray(given) || !given.every((ref) => typeof ref === 'string')) {
          throw new UnknownRefError(JSON.stringify(value), uploadName)
        }
        // A resumable upload may be named by its URL: its id is the ref.
        const submitted = given.map((ref) => ref.includes('/') ? idOfUrl(ref) : ref)
        if (uploads.acceptedCount(uploadName) + submitted.length > config.maxEntries) {
          throw withUploadCode(new TooManyFilesError(uploadName, config.maxEntries), 'too_many_files')
        }
        owner ??= await settings.owner(request)
        // All or none: a bad ref leaves the good ones claimable.
        const seen = new Set<string>()
        for (const ref of submitted) {
          if (seen.has(ref) || !refs.claimable(ref, owner, config)) throw new UnknownRefError(JSON.stringify(ref), uploadName)
          seen.add(ref)
        }
        for (const ref of submitted) uploads.adopt(refs.claim(ref))
      }
    }

    const userHooks = { onRequest: hooks(route.onRequest), preParsing: hooks(route.preParsing), preValidation: hooks(route.preValidation), preHandler: hooks(route.preHandler) }
    route.onRequest = [...userHooks.onRequest, startUploads]
    route.onSend = [...hooks(route.onSend), closeIfBodyUnread]
    const resumableConfigs = new Map([...configs].filter(([, config]) => config.resumable))
    if (!settings.channel && resumableConfigs.size === 0) return
    route.preHandler = [...userHooks.preHandler, claimRefs]
    if (settings.channel) addChannel(this, route, configs, where, userHooks)
    if (resumableConfigs.size > 0) addResumable(this, route, resumableConfigs, userHooks)
  })

  /**
   * The route's resumable endpoint (tus 1.0, IETF draft): the route's path plus the
   * suffix, and upload URLs under it, behind the route's own hooks.
   */
  function addResumable (
    instance: FastifyInstance, route: RouteOptions & { routePath: string }, configs: ReturnType<typeof resolveAllowUpload>,
    userHooks: Pick<RouteOptions, 'onRequest' | 'preParsing' | 'preValidation' | 'preHandler'>
  ): void {
    const endpoint = new ResumableEndpoint(configs, resumables, {
      refs,
      owner: settings.owner,
      expiry: settings.resumableExpiry,
      maxLifetime: settings.resumableMaxLifetime,
      staging: TmpFileWriter,
      stagingOptions: { dir: tmpDir }
    })
    function markResumable (request: FastifyRequest, reply: FastifyReply, done: () => void): void {
      (request as MaybeResumable)[kResumable] = true
      reply.header('tus-resumable', TUS_VERSION)
      done()
    }
    // CORS: whoever allowed the origin (@fastify/cors, say), the page may read the protocol's headers.
    function exposeHeaders (_request: FastifyRequest, reply: FastifyReply, payload: unknown, done: (err: null, payload: unknown) => void): void {
      if (reply.getHeader('access-control-allow-origin') !== undefined) {
        const exposed = reply.getHeader('access-control-expose-headers')
        reply.header('access-control-expose-headers', exposed === undefined ? EXPOSED_HEADERS : `${String(exposed)}, ${EXPOSED_HEADERS}`)
      }
      done(null, payload)
    }
    const base = pathWithSuffix(route.routePath, settings.resumableSuffix)
    const common = {
      exposeHeadRoute: false,
      logLevel: route.logLevel,
      config: route.config,
      onRequest: [markResumable, ...hooks(userHooks.onRequest)],
      preParsing: userHooks.preParsing,
      preValidation: userHooks.preValidation,
      preHandler: userHooks.preHandler,
      onSend: exposeHeaders
    }
    const options = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => await endpoint.options(request, reply)
    instance.route({ ...common, method: 'OPTIONS', url: base, handler: options } as RouteOptions)
    instance.route({ ...common, method: 'POST', url: base, handler: async (request, reply) => await endpoint.post(request, reply) } as RouteOptions)
    instance.route({ ...common, method: 'OPTIONS', url: `${base}/:id`, handler: options } as RouteOptions)
    instance.route({
      ...common, method: ['HEAD', 'PATCH', 'DELETE', 'POST'], url: `${base}/:id`, handler: async (request, reply) => await endpoint.upload(request, reply)
    } as RouteOptions)
  }

  /**
   * The route's WebSocket channel: GET on its path plus the suffix, behind the route's
   * own hooks (its authentication protects the channel too).
   */
  function addChannel (
    instance: FastifyInstance, route: RouteOptions & { routePath: string }, configs: ReturnType<typeof resolveAllowUpload>, where: string,
    userHooks: Pick<RouteOptions, 'onRequest' | 'preParsing' | 'preValidation' | 'preHandler'>
  ): void {
    if (!instance.hasDecorator('websocketServer')) throw new ChannelNeedsWebsocketError(where)
    const maxBytes = maxMessageBytes(configs.values())

    function startChannelUploads (request: FastifyRequest, _reply: FastifyReply, done: () => void): void {
      request.uploads = new Uploads(configs, request)
      done()
    }
    // After the route's own hooks: the owner may depend on what they found (a session, a user).
    async function holdFinished (request: FastifyRequest): Promise<void> {
      uploadsOf(request)!.holdFinished(refs, await settings.owner(request))
    }
    function serveChannel (socket: WsSocket, request: FastifyRequest): void {
      const uploads = uploadsOf(request)!
      // ws fixes its frame limit per server; the channel's is per route. Set before the
      // first frame is parsed, it refuses a larger frame from its header (close 1009).
      socket._receiver!._maxPayload = maxBytes
      if (socket.protocol !== SUBPROTOCOL) return socket.close(1002, `use subprotocol ${SUBPROTOCOL}`)
      live.add(uploads)
      sockets.set(uploads, socket)
      // @fastify/websocket's own preClose closes the sockets it tracks, without a code, and
      // may run before ours: this one is ours to close (1001, after telling its entries).
      ;(instance as WithWebsocketServer).websocketServer.clients?.delete(socket)
      // The channel lives as long as the socket's listeners hold it.
      new Channel(socket, uploads, settings.channelWindow) // eslint-disable-line no-new
      socket.once('close', () => {
        sockets.delete(uploads)
        uploads.end(withUploadCode(new PrematureCloseError(), 'cancelled') as EntryFailure).finally(() => live.delete(uploads))
      })
    }

    instance.route({
      method: 'GET',
      url: pathWithSuffix(route.routePath, settings.channelSuffix),
      exposeHeadRoute: false,
      logLevel: route.logLevel,
      config: route.config,
      onRequest: [startChannelUploads, ...hooks(userHooks.onRequest)],
      preParsing: userHooks.preParsing,
      preValidation: userHooks.preValidation,
      preHandler: [...hooks(userHooks.preHandler), holdFinished],
      websocket: true,
      handler: serveChannel
    } as unknown as RouteOptions)
  }

  const shuttingDown = (): EntryFailure => withUploadCode(new ShuttingDownError(), 'cancelled') as EntryFailure
  // preClose: uploads still reading stop now, so their requests can answer and drain.
  // Channel sockets hear why their entries stopped, then close with 1001 (going away).
  fastify.addHook('preClose', async () => {
    await resumables.shutdown()
    await Promise.all([...live].map(async (uploads) => {
      await uploads.abort(shuttingDown())
      sockets.get(uploads)?.close(1001, 'server shutting down')
    }))
  })
  // onClose: every request is over; wait until their writers are closed and files gone.
  fastify.addHook('onClose', async () => {
    await Promise.all([...live].map((uploads) => uploads.end(shuttingDown())))
    await refs.discardAll()
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
