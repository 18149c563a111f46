// The effects every handler shares on an upload's life: finding it for a request,
// opening it (entry validated, writer started, registered), finishing it, and
// abandoning one whose creation failed.
import type { FastifyRequest } from 'fastify'
import { parseAccept, type ResolvedConfig } from '../../config.js'
import type { Entry } from '../../entry.js'
import { UploadNotFoundError, asFailure } from '../../errors.js'
import type { ForsakeReason } from '../../refs.js'
import { Uploads } from '../../uploads.js'
import { ResumableUpload, type Slot } from './upload.js'
import type { EndpointContext } from './context.js'

/** An upload's own upload set: told when a request claims its entry, or its ref expires. */
class UploadHome extends Uploads {
  onForsake: ((why: ForsakeReason | undefined) => void) | undefined
  override forsake (entry: Entry, why?: ForsakeReason): void {
    super.forsake(entry)
    this.onForsake?.(why)
  }
}

/** The upload a request's URL names, if it exists for this request (404), or why it ended (410). */
export async function findUpload (context: EndpointContext, request: FastifyRequest): Promise<ResumableUpload> {
  const found = context.registry.find((request.params as { id: string }).id)
  if (found === undefined) throw new UploadNotFoundError()
  if (typeof found === 'string') throw context.registry.whyGone(found)
  // Another owner's upload does not exist, as far as this request can tell.
  if (found.owner !== await context.settings.owner(request) || context.configs.get(found.config.uploadName)?.key !== found.config.key) {
    throw new UploadNotFoundError()
  }
  return found
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
 */
export async function openUpload (
  context: EndpointContext, request: FastifyRequest, config: ResolvedConfig, slot: Slot, info: Parameters<Uploads['announce']>[1], shape: UploadShape
): Promise<ResumableUpload> {
  const { registry, settings } = context
  // The upload outlives its creating request: its set keeps no request, only a logger.
  const home = new UploadHome(new Map([[config.uploadName, config]]), undefined, request.log)
  if (shape.hold) home.holdFinished(settings.refs, slot.owner)
  let entry: Entry | undefined
  try {
    // Carried by the creation until it answers (its writer factory runs now).
    entry = await home.announce(config, info, request)
    if (entry.failure !== undefined) throw entry.failure
    await entry.start()
    const upload = new ResumableUpload({
      entry,
      config,
      owner: slot.owner,
      slot,
      ...shape,
      expiry: settings.expiry,
      maxLifetime: settings.maxLifetime,
      onExpire: (expired) => {
        registry.remove(expired, 'expired')
        // Neither rejects: both settle once the writer is closed or the file removed.
        if (expired.complete) expired.discard()
        else expired.entry.cancel()
      }
    })
    // Claimed by a request (consumed), or its ref expired unclaimed: the upload URL is gone.
    home.onForsake = (why) => registry.remove(upload, why === 'expired' ? 'unclaimed' : why === 'shut down' ? 'shut down' : 'consumed')
    try {
      registry.add(upload)
    } catch (error) {
      // The server began shutting down while the writer started.
      upload.stopTimers()
      throw error
    }
    return upload
  } catch (error) {
    registry.release(slot)
    await entry?.cancel(asFailure(error))
    throw error
  }
}

/** Partials are staged (they reach the route's writer through their final upload): any type, no validate. */
export function stagingConfig (context: EndpointContext, config: ResolvedConfig): ResolvedConfig {
  const { staging, stagingOptions } = context.settings
  return { ...config, accept: parseAccept('any'), validate: undefined, progress: undefined, writer: () => [staging, stagingOptions] }
}

/** The last byte arrived: the writer's `close('done')`. A writer that fails it ends the upload. */
export async function finishUpload (context: EndpointContext, upload: ResumableUpload): Promise<void> {
  try {
    await upload.entry.finish()
  } catch {
    throw context.registry.endedDuring(upload)
  }
  // A finished upload waits for its ref (refs' entryTtl); a partial one for its final upload.
  if (upload.concat !== 'partial') upload.stopTimers()
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
