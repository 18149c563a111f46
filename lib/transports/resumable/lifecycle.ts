// The effects every handler shares on an upload's life: finding it for a request (or
// continuing it from its record), opening it (entry validated, writer started,
// registered, recorded), finishing it, and abandoning one whose creation failed.
import type { FastifyRequest } from 'fastify'
import type { WriterSnapshot } from '../../../types/index.js'
import { parseAccept, type ResolvedConfig } from '../../config.js'
import type { Entry } from '../../entry.js'
import { UploadNotFoundError, asFailure } from '../../errors.js'
import type { ForsakeReason } from '../../refs.js'
import type { HeldLock, UploadRecord } from '../../stores/store.js'
import { Uploads } from '../../uploads.js'
import { ResumableUpload, lockTimeout, type GoneReason, type Slot } from './upload.js'
import type { EndpointContext } from './context.js'
import { fileOf, metadataHeader } from './headers.js'

/** An upload's own upload set: told when a request claims its entry, or its ref expires. */
class UploadHome extends Uploads {
  onForsake: ((why: ForsakeReason | undefined) => void) | undefined
  override forsake (entry: Entry, why?: ForsakeReason): void {
    super.forsake(entry)
    this.onForsake?.(why)
  }
}

/**
 * The upload a request's URL names, if it exists for this request (404), or why it ended
 * (410). One this process does not hold is continued from its record in the store.
 */
export async function findUpload (context: EndpointContext, request: FastifyRequest): Promise<ResumableUpload> {
  return await uploadOf(context, request, (request.params as { id: string }).id)
}

/** The upload `id`, for a request that names it (see findUpload): 404, 410 or 503 as findUpload throws them. */
export async function uploadOf (context: EndpointContext, request: FastifyRequest, id: string): Promise<ResumableUpload> {
  const found = context.registry.find(id) ?? await continued(context, request, id)
  if (found === undefined) throw new UploadNotFoundError()
  if (typeof found === 'string') throw context.registry.whyGone(found)
  // Another owner's upload does not exist, as far as this request can tell.
  if (!belongs(context, found.owner, found.config.key, await context.settings.owner(request))) throw new UploadNotFoundError()
  return found
}

/** Whether an upload (or its record), of `owner` and `configKey`, is the requester's (`requester`), for one of this endpoint's upload configs. */
function belongs (context: EndpointContext, owner: string | undefined, configKey: string, requester: string | undefined): boolean {
  return owner === requester && [...context.configs.values()].some((config) => config.key === configKey)
}

/**
 * The upload `id` continued from its record, if the store has one this request may
 * continue (its owner's, of this endpoint): its writer restored (the request's writer
 * factory chooses it), registered and locked here. An expired record is ended instead
 * (410); one whose writer cannot be restored is removed (410, its writer failed).
 */
async function continued (context: EndpointContext, request: FastifyRequest, id: string): Promise<ResumableUpload | GoneReason | undefined> {
  const record = await context.settings.store.getUpload(id)
  if (record === undefined || !belongs(context, record.owner, record.configKey, await context.settings.owner(request))) return undefined
  const upload = await context.registry.restore(id, async () => await restoreUpload(context, request, record))
  return typeof upload === 'object' ? upload.ended ?? upload : upload
}

/**
 * Restores an upload from its record. The store's lock comes first: whoever holds the
 * upload elsewhere saves and lets go, and the record read under the lock is the one to go
 * on from. Undefined if it is gone by then.
 */
async function restoreUpload (context: EndpointContext, request: FastifyRequest, found: UploadRecord): Promise<ResumableUpload | GoneReason | undefined> {
  const { registry, settings } = context
  const routeConfig = [...context.configs.values()].find((config) => config.key === found.configKey)!
  // Asked to let go while it is being restored: it lets go once it is.
  const restored: { upload?: ResumableUpload, asked: boolean } = { asked: false }
  const onStopRequested = (): void => { if (restored.upload === undefined) restored.asked = true; else registry.letGoOf(restored.upload) }
  const lock = await settings.store.lock(found.id, onStopRequested, lockTimeout(routeConfig))
  let record: UploadRecord | undefined
  try {
    record = await settings.store.getUpload(found.id)
  } catch (error) {
    await lock.release()
    throw error
  }
  if (record === undefined) {
    await lock.release()
    return undefined
  }
  const partial = record.concat === 'partial'
  const config = partial ? stagingConfig(context, routeConfig) : routeConfig
  let slot: Slot
  try {
    // Not counted against maxEntries again: it was when it was created.
    slot = registry.reserve(record.owner, config, partial, Infinity)
  } catch (error) {
    // The process is full, or shutting down: the record stays, for a later request (or process).
    await lock.release()
    throw error
  }
  const home = new UploadHome(new Map([[config.uploadName, config]]), undefined, request.log)
  if (!partial) home.holdFinished(settings.refs, slot.owner)
  const info = { ...fileOf(record.metadata === undefined ? undefined : metadataHeader({ 'upload-metadata': record.metadata })), clientSize: record.length, ref: record.id }
  let entry: Entry
  try {
    entry = await home.restore(config, info, request, record.snapshot as WriterSnapshot)
  } catch (error) {
    registry.release(slot)
    request.log.error({ err: error, ref: record.id }, 'resumable upload could not be restored: its record is removed')
    await settings.store.deleteUpload(record.id)
    await settings.abandonRecord(record)
    await lock.release()
    registry.remember(record.id, 'failed')
    return 'failed'
  }
  const shape = { length: record.length, metadata: record.metadata, concat: record.concat, concatHeader: partial ? 'partial' : undefined }
  // What was written past the record's offset is gone: the client is told that offset.
  const upload = newUpload(context, home, entry, config, slot, shape, { createdAt: record.createdAt, saved: record.offset, lock })
  restored.upload = upload
  upload.announced = true
  try {
    await registry.add(upload, true)
  } catch (error) {
    // The server began shutting down: the writer lets go (its last call here), and the
    // record stays for whoever continues it.
    upload.stopTimers()
    registry.release(slot)
    await entry.checkpoint(true).catch(() => {})
    await upload.letGo()
    throw error
  }
  if (restored.asked) registry.letGoOf(upload)
  // Restored past its time: it ends now (its writer cancelled, so it cleans up).
  else if (record.expiresAt <= Date.now()) await expire(context, upload)
  // Every byte was saved, but it was let go before its close (a shutdown during its last
  // append): it finishes now, and waits for its ref.
  else if (record.length === record.offset) await finishUpload(context, upload)
  return upload
}

/** What an upload is, besides its entry: see `UploadInit`. */
export interface UploadShape {
  length: number | undefined
  metadata: string | undefined
  concat: 'partial' | 'final' | undefined
  concatHeader: string | undefined
  /** A finished upload waits for its ref (partials wait for their final upload instead). */
  hold: boolean
}

/**
 * Validates and starts an entry for a new upload in the slot reserved for it, and
 * registers the upload. On any failure the slot is given back and no writer stays open.
 * `observe` gets the upload's set before its entry is announced.
 */
export async function openUpload (
  context: EndpointContext, request: FastifyRequest, config: ResolvedConfig, slot: Slot, info: Parameters<Uploads['announce']>[1], shape: UploadShape,
  observe?: (home: Uploads) => void
): Promise<ResumableUpload> {
  const { registry, settings } = context
  // The upload outlives its creating request: its set keeps no request, only a logger.
  const home = new UploadHome(new Map([[config.uploadName, config]]), undefined, request.log)
  if (shape.hold) home.holdFinished(settings.refs, slot.owner)
  // Its events from the start (a refusal), for whoever carries it.
  observe?.(home)
  let entry: Entry | undefined
  let upload: ResumableUpload | undefined
  try {
    // Carried by the creation until it answers (its writer factory runs now).
    entry = await home.announce(config, info, request)
    if (entry.failure !== undefined) throw entry.failure
    await entry.start()
    upload = newUpload(context, home, entry, config, slot, shape, undefined)
    await registry.add(upload)
    return upload
  } catch (error) {
    // The server began shutting down while the writer started, or its record could not be made.
    upload?.stopTimers()
    registry.release(slot)
    await entry?.cancel(asFailure(error))
    throw error
  }
}

/**
 * The upload around a started (or restored) entry; durable when its writer can checkpoint
 * and restore, but for a concatenation's final upload, which is complete once created.
 */
function newUpload (
  context: EndpointContext, home: UploadHome, entry: Entry, config: ResolvedConfig, slot: Slot, shape: Omit<UploadShape, 'hold'>, restored: { createdAt: number, saved: number, lock: HeldLock } | undefined
): ResumableUpload {
  const { registry, settings } = context
  const durable = entry.resumable && shape.concat !== 'final'
  if (!entry.resumable) settings.notDurable(config)
  const upload = new ResumableUpload({
    entry,
    home,
    config,
    owner: slot.owner,
    slot,
    ...shape,
    ...restored,
    store: durable ? settings.store : undefined,
    expiry: settings.expiry,
    maxLifetime: settings.maxLifetime,
    onExpire: (expired) => { expire(context, expired).catch(() => {}) }
  })
  // Claimed by a request (consumed), or its ref expired unclaimed: the upload URL is gone.
  home.onForsake = (why) => registry.remove(upload, why === 'expired' ? 'unclaimed' : why === 'shut down' ? 'shut down' : 'consumed')
  return upload
}

/** An upload past its time ends: its writer cancelled, or a finished one's bytes removed. Never rejects. */
async function expire (context: EndpointContext, upload: ResumableUpload): Promise<void> {
  context.registry.remove(upload, 'expired')
  // Neither rejects: both settle once the writer is closed or the file removed.
  if (upload.complete) await upload.discard()
  else await upload.entry.cancel()
}

/** Partials are staged (they reach the route's writer through their final upload): any type, no validate. */
export function stagingConfig (context: EndpointContext, config: ResolvedConfig): ResolvedConfig {
  const { staging, stagingOptions } = context.settings
  return { ...config, accept: parseAccept('any'), validate: undefined, progress: undefined, writer: () => [staging, stagingOptions] }
}

/** The last byte arrived: the writer's `close('done')`. A writer that fails it ends the upload. */
export async function finishUpload (context: EndpointContext, upload: ResumableUpload): Promise<void> {
  try {
    // A last checkpoint names every byte: what the finished entry keeps while it waits for its ref.
    if (upload.durable) await upload.entry.checkpoint()
  } catch {
    throw context.registry.endedDuring(upload)
  }
  // Its record goes first: a crash after the close must not bring back a finished upload.
  await context.registry.dropRecord(upload)
  try {
    await upload.entry.finish()
  } catch {
    throw context.registry.endedDuring(upload)
  }
  // A finished upload waits for its ref (refs' entryTtl); a partial one for its final upload.
  if (upload.concat !== 'partial') upload.stopTimers()
  // Kept in the store before its client hears it finished: a crash after the answer keeps it.
  await context.settings.refs.kept(upload.id)
}

/** An upload whose creation (`request`) failed: it ends now, with its writer. */
export async function abandonUpload (context: EndpointContext, upload: ResumableUpload, request: FastifyRequest): Promise<void> {
  // Nobody was told its URL: it was never there (404), rather than ended (410).
  context.registry.remove(upload, undefined)
  upload.entry.carriedBy(request)
  try {
    if (!upload.complete) return await upload.entry.cancel()
    context.settings.refs.forget(upload.entry)
    await upload.discard()
  } finally {
    upload.entry.carriedBy(undefined)
  }
}

/** Ends an upload on request (DELETE): a finished one's bytes are removed, an unfinished one's writer cancelled. */
export async function terminateUpload (context: EndpointContext, upload: ResumableUpload): Promise<void> {
  context.registry.remove(upload, 'terminated')
  if (upload.complete) {
    context.settings.refs.forget(upload.entry)
    await upload.discard()
  } else {
    await upload.entry.cancel()
  }
}
