// The plugin: options and shared services, request decoration, upload routes handed to
// each transport, refs claimed by the routes they are submitted to, shutdown.
import { mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance, FastifyPluginAsync, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import type { ChunkedUploadOptions, UploadWriter, WriterFactory } from '../types/index.js'
import { resolveAllowUpload, validatePluginOptions, type ResolvedConfig } from './config.js'
import { DerivedRoutes, carriedFrom, checkDerived, constraintsKey, hookList, nameOf, routerMatching } from './derived-routes.js'
import { AlreadyRegisteredError, HookOrderError, ShuttingDownError, TooManyFilesError, UnknownRefError } from './errors.js'
import { claimKept, keptEntry, putBack } from './kept-entry.js'
import { RefStore } from './refs.js'
import { FileStore } from './stores/file.js'
import type { ParkedEntry, UploadRecord } from './stores/store.js'
import { Sweeper } from './sweep.js'
import type { Uploads } from './uploads.js'
import { TmpFileBudget, TmpFileWriter } from './writers/tmp-file.js'
import { ChannelTransport } from './transports/channel/route.js'
import { HttpTransport } from './transports/http/route.js'
import { ResumableTransport } from './transports/resumable/route.js'
import { ResumableService } from './transports/resumable/service.js'
import { uploadsOf, type Services, type Transport, type TransportClass, type UploadRoute } from './transports/transport.js'

/**
 * Every upload route is handed to each, in this order: the route's own body first; the
 * channel before the resumable endpoint, whose configs a shared channel may have set.
 */
const TRANSPORTS: TransportClass[] = [HttpTransport, ChannelTransport, ResumableTransport]

const kRegistered = Symbol('fastify-chunked-upload.registered')
/** The default store's directory in tmpDir: its records, and the plugin's temp files. */
const STORE_DIR = 'fastify-chunked-upload'

const chunkedUpload: FastifyPluginAsync<ChunkedUploadOptions> = async function chunkedUpload (fastify, options) {
  if ((fastify as FastifyInstance & { [kRegistered]?: true })[kRegistered]) throw new AlreadyRegisteredError()
  fastify.decorate(kRegistered, true)

  const settings = validatePluginOptions(options)
  const tmpDir = settings.tmpDir ?? tmpdir()
  await mkdir(tmpDir, { recursive: true })
  // The default store keeps its records in a directory of tmpDir this process claims.
  const store = settings.store ?? await FileStore.open({
    dir: join(tmpDir, STORE_DIR),
    fsync: settings.fsync,
    onCorrupt: (err) => fastify.log.error({ err }, 'a damaged upload record was set aside: its upload cannot continue')
  })
  /** The default store is the plugin's to close (once the app closes, or cannot start); one the app gave is the app's. */
  const closeOwnStore = async (): Promise<void> => { if (settings.store === undefined) await store.close() }
  /** Where the temp-file writer's files go (the store's own directory, if it has one), and the bytes handed to them and not yet on disk. */
  const tmpFiles = { dir: store.dir ?? tmpDir, budget: new TmpFileBudget(settings.tmpFileQueueBytes), fsync: settings.fsync }
  const defaultWriter: WriterFactory = () => [TmpFileWriter, tmpFiles]
  /** Every upload config, by key: what a store's records name. */
  const configs = new Map<string, ResolvedConfig>()
  const sweeper = new Sweeper({ store, configs, defaultWriter, tmpFiles, log: fastify.log })
  /** Finished channel and resumable entries waiting for their ref (those of durable uploads kept in the store too). */
  const refs = new RefStore(settings.entryTtl, { store, log: fastify.log })
  /**
   * Routes whose last preParsing hook takes the body: another plugin's onRoute hook
   * running after ours must not have put one of its own after it (checked once ready).
   */
  const bodyHooks: Array<{ route: RouteOptions, hook: unknown, count: number }> = []
  const abandonRecord = async (record: UploadRecord): Promise<void> => await sweeper.abandon(record)
  const services: Services = {
    settings,
    refs,
    store,
    tmpFiles,
    resumable: new ResumableService({ settings, refs, store, tmpFiles, abandonRecord, log: fastify.log }),
    /** Channels and resumable endpoints, one per path (and constraints). */
    derived: new DerivedRoutes(routerMatching(fastify)),
    abandonRecord,
    bodyHookLast: (route, hook) => { bodyHooks.push({ route, hook, count: hookList(route.preParsing).length }) }
  }
  let transports: Transport[]
  try {
    transports = TRANSPORTS.map((Transport) => new Transport(fastify, services))
  } catch (error) {
    // Refused at registration: the store the plugin opened is let go at once.
    await closeOwnStore()
    throw error
  }

  fastify.decorateRequest('uploads', null as unknown as Uploads)

  /** Refs of finished channel and resumable entries, submitted as the upload name's value, join this request's entries. */
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
      const submitted = given.map(refOf)
      if (uploads.acceptedCount(uploadName) + submitted.length > config.maxEntries) {
        throw new TooManyFilesError(uploadName, config.maxEntries)
      }
      owner ??= await settings.owner(request)
      const unknown = (ref: string): Error => new UnknownRefError(JSON.stringify(ref), uploadName)
      const repeated = submitted.find((ref, at) => submitted.indexOf(ref) !== at)
      if (repeated !== undefined) throw unknown(repeated)
      // A ref this process does not hold may be kept in the store by an earlier one (a
      // restart); one it holds and keeps there is taken from the store too, so that of
      // two processes sharing the store only one hands it out. All or none: a bad ref
      // leaves the good ones claimable, those taken from the store put back.
      const inStore: string[] = []
      for (const ref of submitted) if (!refs.holds(ref) || await refs.kept(ref)) inStore.push(ref)
      const claimed = await claimKept(store, inStore, owner, config.key, letGoKept)
      if ('missing' in claimed) throw unknown(claimed.missing)
      const kept = new Map(claimed.records.map((record) => [record.ref, record]))
      // Checked once the store answered: an entry held here may have expired meanwhile.
      const bad = submitted.find((ref) => refs.holds(ref) ? !refs.claimable(ref, owner, config) : !kept.has(ref))
      if (bad !== undefined) {
        await putBack(store, claimed.records)
        throw unknown(bad)
      }
      for (const ref of submitted) {
        // Held here, the live entry goes (its writer's discard runs); otherwise one made of its record.
        uploads.adopt(refs.holds(ref) ? refs.claim(ref) : await keptEntry(kept.get(ref)!, config, request, letGoKept))
      }
    }
  }
  /** A kept entry let go in this process (consumed, dropped, or expired): cleaned up from its snapshot (see Sweeper.abandonParked). */
  async function letGoKept (record: ParkedEntry): Promise<void> {
    await sweeper.abandonParked(record)
  }
  /** The ref a submitted value names: as a transport reads it (an upload URL, say), else the value itself. */
  function refOf (submitted: string): string {
    for (const transport of transports) {
      const ref = transport.refOf?.(submitted)
      if (ref !== undefined) return ref
    }
    return submitted
  }

  // Nothing scope-wide: no content-type parser, no hook on other routes. An upload route
  // takes its own body (see HttpTransport); every other route stays Fastify's.
  fastify.addHook('onRoute', function (this: FastifyInstance, route: RouteOptions & { routePath: string }) {
    const derivedBodyHook = checkDerived(route)
    if (derivedBodyHook !== undefined) services.bodyHookLast(route, derivedBodyHook)
    if (route.allowUpload === undefined) return
    const where = `${[route.method].flat().join(',')} ${route.url}`
    const routeConfigs = resolveAllowUpload(route.allowUpload, settings.defaults, defaultWriter, where, `${where} ${constraintsKey(route.constraints)}`)
    for (const config of routeConfigs.values()) configs.set(config.key, config)
    // As declared, before the transports add their hooks: what derived routes carry.
    const upload: UploadRoute = { options: route, instance: this, where, configs: routeConfigs, carried: carriedFrom(route) }
    for (const transport of transports) transport.addRoute(upload)
    if (transports.some((transport) => transport.holdsEntries?.(upload) === true)) {
      route.preHandler = [...upload.carried.hooks.preHandler, claimRefs]
    }
  })

  // A preParsing hook after the one that takes the body would see it consumed, and
  // Fastify would look for a parser: refuse to start rather than misbehave.
  fastify.addHook('onReady', async () => {
    for (const { route, hook, count } of bodyHooks) {
      const hooks = hookList(route.preParsing)
      // Ours but not last: a hook was put after it. Not there at all: another plugin wrapped
      // each hook (a tracer, say), which is harmless unless it also added one.
      const misplaced = hooks.includes(hook as never) ? hooks.at(-1) !== hook : hooks.length > count
      if (misplaced) {
        // The app cannot start: the store the plugin opened is let go at once.
        await closeOwnStore()
        throw new HookOrderError(nameOf(route))
      }
    }
    // Before any upload: what a previous run left behind goes.
    await sweeper.start()
  })

  /** Why everything still open stops at shutdown: one reason, told to every transport. */
  const shuttingDown = new ShuttingDownError()
  // preClose: every transport stops reading, side by side (a resumable writer call in
  // flight does not hold up the others), so requests can answer and drain.
  fastify.addHook('preClose', async () => {
    sweeper.stop()
    await Promise.all([...transports.map(async (transport) => await transport.stop(shuttingDown)), services.resumable.shutdown(shuttingDown)])
  })
  // onClose: every request is over; wait until their writers are closed and files gone.
  fastify.addHook('onClose', async () => {
    await Promise.all(transports.map(async (transport) => await transport.close?.(shuttingDown)))
    await refs.close()
    await closeOwnStore()
  })
}

export default fp(chunkedUpload, { fastify: '5.x', name: 'fastify-chunked-upload' })
export { chunkedUpload }

/** Returns `impl` unchanged: it exists so TypeScript infers the writer's types. */
export function defineWriter<Options, State, Meta> (impl: UploadWriter<Options, State, Meta>): UploadWriter<Options, State, Meta> {
  return impl
}

export { TmpFileBudget, TmpFileWriter } from './writers/tmp-file.js'
export type { TmpFileMeta, TmpFileOptions, TmpFileSnapshot, TmpFileState } from './writers/tmp-file.js'
export { MemoryWriter } from './writers/memory.js'
export { moveFile } from './move-file.js'
export { MemoryStore } from './stores/memory.js'
export { FileStore } from './stores/file.js'
export type { FileStoreOptions } from './stores/file.js'
export type { Expired, HeldLock, ParkedEntry, Store, UploadChange, UploadRecord } from './stores/store.js'
export type { MoveFileOptions } from './move-file.js'
export type { MemoryMeta, MemoryState } from './writers/memory.js'
export * as errors from './errors.js'
export type * from '../types/index.js'
