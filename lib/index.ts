// The plugin: options, onRoute wiring (upload routes and the routes they derive), request decoration, shutdown.
import { mkdir } from 'node:fs/promises'
import type { Readable } from 'node:stream'
import { tmpdir } from 'node:os'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { ChunkedUploadOptions, UploadWriter, WriterFactory } from '../types/index.js'
import { resolveAllowUpload, validatePluginOptions } from './config.js'
import { CARRIED_HOOKS, DerivedRoutes, carriedFrom, constraintsKey, derivedOptions, hookList, type Carried, type HookName, type RouterMatching } from './derived-routes.js'
import {
  AlreadyRegisteredError, ChannelNeedsWebsocketError, InvalidConfigError, ChannelOrderError, HookOrderError, PluginOrderError, PrematureCloseError, ShuttingDownError, TooManyFilesError,
  UnknownRefError, type EntryFailure
} from './errors.js'
import { bodyKind, continueWithoutBody, takesBody } from './route-body.js'
import { RefStore } from './refs.js'
import { Uploads } from './uploads.js'
import { TmpFileBudget, TmpFileWriter } from './writers/tmp-file.js'
import { receiveMultipart } from './transports/multipart.js'
import { receiveRaw } from './transports/raw.js'
import { Channel, ChannelBudget, SUBPROTOCOL, maxMessageBytes, type ChannelSocket } from './transports/websocket.js'
import { EXPOSED_HEADERS, ResumableEndpoint, ResumableRegistry } from './transports/resumable/index.js'
import { TUS_VERSION, idOfUrl } from './transports/resumable/headers.js'
import { closeAfterAnswer } from './transports/close-after-answer.js'
import { holdErrors } from './transports/http-body.js'

const kRegistered = Symbol('fastify-chunked-upload.registered')
/** On a derived route's options: its preParsing hook that takes the body, which must stay last. */
const kBodyHook = Symbol('fastify-chunked-upload.bodyHook')
/** On a derived route's options: the route it derives from, and how many hooks of each kind it was given. */
const kDerivedFrom = Symbol('fastify-chunked-upload.derivedFrom')
interface DerivedFrom { where: string, hookCounts: Record<HookName, number> }
type WithBodyHook = RouteOptions & { [kBodyHook]?: unknown, [kDerivedFrom]?: DerivedFrom }

/**
 * A derived route's options (see derivedOptions: spread them once per route), marked with
 * the route it derives from and, if it takes the body itself, the hook that does.
 */
function derivedRoute (where: string, bodyHook: unknown, ...args: Parameters<typeof derivedOptions>): Partial<RouteOptions> {
  const options = derivedOptions(...args)
  const hookCounts = {} as DerivedFrom['hookCounts']
  for (const name of CARRIED_HOOKS) hookCounts[name] = hookList(options[name]).length
  // Added, not spread: a spread would fix the fresh arrays once.
  return Object.assign(options, { [kDerivedFrom]: { where, hookCounts }, [kBodyHook]: bodyHook })
}

/** A route, for messages: `POST /files`; a derived route (on every method) by its URL and origin. */
function nameOf (route: RouteOptions): string {
  const derivedFrom = (route as WithBodyHook)[kDerivedFrom]
  return derivedFrom === undefined ? `${[route.method].flat().join(',')} ${route.url}` : `${route.url} (derived from ${derivedFrom.where})`
}

/** The router options that make two paths one route, however the app gave them. */
function routerMatching (fastify: FastifyInstance): RouterMatching {
  const config = fastify.initialConfig as { routerOptions?: Partial<RouterMatching> } & Partial<RouterMatching>
  // Fastify 5 keeps the older top-level options (deprecated) where routerOptions is not given.
  const given = config.routerOptions ?? { caseSensitive: config.caseSensitive, ignoreDuplicateSlashes: config.ignoreDuplicateSlashes }
  return { caseSensitive: given.caseSensitive !== false, ignoreDuplicateSlashes: given.ignoreDuplicateSlashes === true }
}

/** The upload set of a request, or null on routes without allowUpload. */
function uploadsOf (request: FastifyRequest): Uploads | null {
  return request.uploads as Uploads | null
}

/** A `ws` socket as the channel route's handler gets it. */
interface WsSocket extends ChannelSocket {
  readonly protocol: string
}

/** A route's own path plus a suffix (`/up/` + `/ws` → `/up/ws`), under the same prefix. */
function pathWithSuffix (routePath: string, suffix: string): string {
  return (routePath.endsWith('/') ? routePath.slice(0, -1) : routePath) + suffix
}

type PreParsingDone = (error?: Error | null) => void

const chunkedUpload: FastifyPluginAsync<ChunkedUploadOptions> = async function chunkedUpload (fastify, options) {
  if ((fastify as FastifyInstance & { [kRegistered]?: true })[kRegistered]) throw new AlreadyRegisteredError()
  fastify.decorate(kRegistered, true)

  const settings = validatePluginOptions(options)
  const tmpDir = settings.tmpDir ?? tmpdir()
  await mkdir(tmpDir, { recursive: true })
  /** Bytes handed to this instance's temp files and not yet on disk. */
  const tmpFileBudget = new TmpFileBudget(settings.tmpFileQueueBytes)
  const defaultWriter: WriterFactory = () => [TmpFileWriter, { dir: tmpDir, budget: tmpFileBudget }]
  /** Chunk bytes received over this instance's channels and waiting for their writers. */
  const channelBudget = new ChannelBudget(settings.channelQueueBytes)
  // @fastify/websocket's preClose closes every socket it tracks, without a code; preClose
  // hooks run in registration order, so ours must come first to tell channel sockets why.
  if (settings.channel && fastify.hasDecorator('websocketServer')) throw new ChannelOrderError()
  /** Upload sets of requests in flight, cancelled at shutdown. */
  const live = new Set<Uploads>()
  /** Channel sockets open, closed with 1001 at shutdown. */
  const sockets = new Map<Uploads, WsSocket>()
  /** Finished channel and resumable entries waiting for their ref. */
  const refs = new RefStore(settings.entryTtl)
  /** Resumable uploads in progress, across requests. */
  const resumables = new ResumableRegistry(settings.maxResumableUploads)

  /** Channels and resumable endpoints, one per path (and constraints). */
  const derived = new DerivedRoutes(routerMatching(fastify))

  /**
   * Routes whose last preParsing hook takes the body: another plugin's onRoute hook
   * running after ours must not have put one of its own after it (checked once ready).
   */
  const bodyHooks: Array<{ route: RouteOptions, hook: unknown, count: number }> = []

  fastify.decorateRequest('uploads', null as unknown as Uploads)

  // Nothing scope-wide: no content-type parser, no hook on other routes. An upload route
  // takes its own body (see takeUploadBody); every other route stays Fastify's.
  fastify.addHook('onRoute', function (this: FastifyInstance, route: RouteOptions & { routePath: string }) {
    const derivedBodyHook = (route as WithBodyHook)[kBodyHook]
    if (derivedBodyHook !== undefined) bodyHooks.push({ route, hook: derivedBodyHook, count: hookList(route.preParsing).length })
    const derivedFrom = (route as WithBodyHook)[kDerivedFrom]
    if (derivedFrom !== undefined) {
      // An onRoute hook that ran before this one added hooks to this derived route: it did
      // the same to the route it derives from, whose hooks it carries, so they would run twice.
      const grown = CARRIED_HOOKS.find((name) => hookList(route[name]).length > derivedFrom.hookCounts[name])
      if (grown !== undefined) throw new PluginOrderError(grown, derivedFrom.where, route.url)
    }
    if (route.allowUpload === undefined) return
    const where = `${[route.method].flat().join(',')} ${route.url}`
    const configs = resolveAllowUpload(route.allowUpload, settings.defaults, defaultWriter, where, `${where} ${constraintsKey(route.constraints)}`)
    // As declared, before the plugin adds its hooks: what derived routes carry.
    const carried = carriedFrom(route)

    function startUploads (request: FastifyRequest, reply: FastifyReply, done: () => void): void {
      const uploads = new Uploads(configs, request)
      request.uploads = uploads
      live.add(uploads)
      // 'close' comes after the response finished and when the client went away
      // first: onResponse alone misses the second.
      reply.raw.once('close', () => {
        // Stays in `live` until every writer closed and every file is gone: shutdown waits for it.
        uploads.end(new PrematureCloseError()).finally(() => live.delete(uploads))
      })
      done()
    }
    /**
     * The route's body, read before any content-type parser could run: multipart and raw
     * uploads are received here; fields (JSON, text, form) go on to the scope's parsers.
     * Last of the route's preParsing hooks, it reads what earlier ones made of the payload.
     */
    function takeUploadBody (request: FastifyRequest, _reply: FastifyReply, payload: Readable, done: PreParsingDone): void {
      const kind = bodyKind(request)
      if (kind === 'none' || kind === 'fields') return done(null)
      const uploads = uploadsOf(request)!
      holdErrors(payload)
      const received = kind === 'multipart' ? receiveMultipart(uploads, request, payload, settings) : receiveRaw(uploads, request, payload)
      received.then((body) => {
        request.body = body
        continueWithoutBody(request, done)
      }, (error: Error) => {
        // Refused before the whole body arrived (and not drained): the rest would be read
        // as the next request, so the connection closes after the answer.
        if (!request.raw.complete) uploads.bodyUnread = true
        done(error)
      })
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
      let owner: string | undefined
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
          throw new TooManyFilesError(uploadName, config.maxEntries)
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

    route.onRequest = [...carried.hooks.onRequest, startUploads]
    route.preParsing = [...carried.hooks.preParsing, takeUploadBody]
    bodyHooks.push({ route, hook: takeUploadBody, count: route.preParsing.length })
    route.onSend = [...carried.hooks.onSend, closeIfBodyUnread]
    const resumableNames = [...configs.values()].some((config) => config.resumable)
    if (!settings.channel && !resumableNames) return
    route.preHandler = [...carried.hooks.preHandler, claimRefs]
    // Fastify's automatic HEAD route for a GET route comes through here too; it carries
    // no body, so derives nothing (nor does a HEAD route of the app's own).
    if (route.method === 'HEAD') return
    // The router allows a wildcard last only: `/files/*/tus` is no path.
    if (route.url.endsWith('*')) {
      throw new InvalidConfigError(`${where} has a wildcard path, under which its channel and resumable endpoint cannot be: declare the upload route on a path without one, or with channel: false and no resumable upload`)
    }
    const origin = { where, instance: this, constraints: route.constraints, carried, routeConfigs: configs }
    const channelUrl = pathWithSuffix(route.url, settings.channelSuffix)
    if (settings.channel && derived.claim(channelUrl, 'upload channel', { ...origin, configs: new Map(configs) })) {
      addChannel(this, route, configs, where, carried)
    }
    // After the channel's claim: a shared channel may have given the route its configs.
    const resumableConfigs = new Map([...configs].filter(([, config]) => config.resumable))
    const resumableUrl = pathWithSuffix(route.url, settings.resumableSuffix)
    if (resumableNames && derived.claim(resumableUrl, 'resumable endpoint', { ...origin, configs: resumableConfigs })) {
      addResumable(this, route, resumableConfigs, where, carried)
    }
  })

  /**
   * The route's resumable endpoint (tus 1.0, IETF draft): the route's path plus the
   * suffix, and upload URLs under it, behind the route's own hooks.
   */
  function addResumable (
    instance: FastifyInstance, route: RouteOptions & { routePath: string }, configs: ReturnType<typeof resolveAllowUpload>, where: string, carried: Carried
  ): void {
    const endpoint = new ResumableEndpoint(configs, resumables, {
      refs,
      owner: settings.owner,
      expiry: settings.resumableExpiry,
      maxLifetime: settings.resumableMaxLifetime,
      staging: TmpFileWriter,
      stagingOptions: { dir: tmpDir, budget: tmpFileBudget }
    })
    function markResumable (_request: FastifyRequest, reply: FastifyReply, done: () => void): void {
      reply.header('tus-resumable', TUS_VERSION)
      done()
    }
    /** The endpoint reads bodies itself: `request.body` is the payload, unread. */
    function handOverBody (request: FastifyRequest, _reply: FastifyReply, payload: Readable, done: PreParsingDone): void {
      if (!takesBody(request)) return done(null)
      holdErrors(payload)
      request.body = payload
      continueWithoutBody(request, done)
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
    // Behind everything the route declared (hooks, constraints, errorHandler, …). Each
    // `...common` below gets its own hook arrays (see derivedOptions).
    const common = derivedRoute(where, handOverBody, carried, { first: { onRequest: markResumable }, last: { preParsing: handOverBody, onSend: exposeHeaders } })
    // Every method: X-HTTP-Method-Override names the method whatever the actual one, and
    // the endpoint answers the others (405, with Tus-Resumable) itself.
    const method = instance.supportedMethods
    instance.route({ ...common, method, url: base, handler: async (request, reply) => await endpoint.endpoint(request, reply) } as RouteOptions)
    instance.route({ ...common, method, url: `${base}/:id`, handler: async (request, reply) => await endpoint.upload(request, reply) } as RouteOptions)
  }

  /**
   * The route's WebSocket channel: GET on its path plus the suffix, behind the route's
   * own hooks (its authentication protects the channel too).
   */
  function addChannel (
    instance: FastifyInstance, route: RouteOptions & { routePath: string }, configs: ReturnType<typeof resolveAllowUpload>, where: string, carried: Carried
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
      if (socket.protocol !== SUBPROTOCOL) return socket.close(1002, `use subprotocol ${SUBPROTOCOL}`)
      live.add(uploads)
      sockets.set(uploads, socket)
      // The channel lives as long as the socket's listeners hold it.
      new Channel(socket, uploads, { window: settings.channelWindow, maxMessageBytes: maxBytes, budget: channelBudget }) // eslint-disable-line no-new
      socket.once('close', () => {
        sockets.delete(uploads)
        uploads.end(new PrematureCloseError()).finally(() => live.delete(uploads))
      })
    }

    instance.route({
      // Behind everything the route declared (hooks, constraints, errorHandler, …).
      ...derivedRoute(where, undefined, carried, { first: { onRequest: startChannelUploads }, last: { preHandler: holdFinished } }),
      method: 'GET',
      url: pathWithSuffix(route.routePath, settings.channelSuffix),
      websocket: true,
      handler: serveChannel
    } as unknown as RouteOptions)
  }

  // A preParsing hook after the one that takes the body would see it consumed, and
  // Fastify would look for a parser: refuse to start rather than misbehave.
  fastify.addHook('onReady', async () => {
    for (const { route, hook, count } of bodyHooks) {
      const hooks = hookList(route.preParsing)
      // Ours but not last: a hook was put after it. Not there at all: another plugin wrapped
      // each hook (a tracer, say), which is harmless unless it also added one.
      const misplaced = hooks.includes(hook as never) ? hooks.at(-1) !== hook : hooks.length > count
      if (misplaced) throw new HookOrderError(nameOf(route))
    }
  })

  const shuttingDown = (): EntryFailure => new ShuttingDownError()
  // preClose: uploads still reading stop now, so their requests can answer and drain.
  // Channel sockets hear why their entries stopped, then close with 1001 (going away).
  // Side by side: a resumable writer call in flight does not hold up the others.
  fastify.addHook('preClose', async () => {
    await Promise.all([
      resumables.shutdown(),
      ...[...live].map(async (uploads) => {
        await uploads.abort(shuttingDown())
        sockets.get(uploads)?.close(1001, 'server shutting down')
      })
    ])
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

export { TmpFileBudget, TmpFileWriter } from './writers/tmp-file.js'
export type { TmpFileMeta, TmpFileOptions, TmpFileState } from './writers/tmp-file.js'
export { MemoryWriter } from './writers/memory.js'
export type { MemoryMeta, MemoryState } from './writers/memory.js'
export * as errors from './errors.js'
export type * from '../types/index.js'
