// A finished entry kept in the store, so that it outlives the process while it waits for
// its ref: the record it is kept as, and, in a later process, the entry a request claims
// from that record. Such an entry has no writer state any more (it lived in the process
// that received it): its meta is the one recorded, and letting it go cleans up after it
// from its snapshot, as an ended upload record is (Sweeper.abandonParked).
import { isDeepStrictEqual } from 'node:util'
import type { FastifyRequest } from 'fastify'
import type { JsonValue, UploadWriter } from '../types/index.js'
import type { ResolvedConfig } from './config.js'
import { Entry } from './entry.js'
import type { ParkedEntry, Store } from './stores/store.js'

/**
 * The record a finished entry is kept as, or why it cannot be: `undefined` when its
 * bytes cannot be found in another process (no checkpoint counts them all), `'meta'` when
 * its writer's meta is not JSON (it would not reach a consumer unchanged).
 */
export function keptRecord (entry: Entry, owner: string | undefined, expiresAt: number): ParkedEntry | 'meta' | undefined {
  const snapshot = entry.lastSnapshot
  if (snapshot === undefined || snapshot.offset !== entry.bytesReceived) return undefined
  const meta = asJson(() => entry.meta())
  if (meta === undefined) return 'meta'
  return {
    ref: entry.ref,
    owner,
    configKey: entry.config.key,
    meta,
    snapshot,
    expiresAt,
    clientName: entry.clientName,
    clientType: entry.clientType,
    clientSize: entry.clientSize,
    clientLastModified: entry.clientLastModified
  }
}

/** A value that comes back from JSON unchanged, as JSON; undefined for any other (or if `get` throws). */
function asJson (get: () => unknown): JsonValue | undefined {
  try {
    const value = get()
    // JSON.stringify(undefined) is undefined, which JSON.parse refuses too.
    const back = JSON.parse(JSON.stringify(value)) as JsonValue
    return isDeepStrictEqual(back, value) ? back : undefined
  } catch {
    return undefined
  }
}

/**
 * Claims kept entries for a request, all or none: each of `refs` for `owner` and
 * `configKey`. Returns the records, or the first ref that could not be claimed (unknown,
 * another's, or past its expiry, which is let go at once) once those claimed before it
 * were put back.
 */
export async function claimKept (
  store: Store, refs: readonly string[], owner: string | undefined, configKey: string, letGo: (record: ParkedEntry) => Promise<void>
): Promise<{ records: ParkedEntry[] } | { missing: string }> {
  const records: ParkedEntry[] = []
  for (const ref of refs) {
    let record: ParkedEntry | undefined
    try {
      record = await store.claim(ref, owner, configKey)
    } catch (error) {
      await putBack(store, records)
      throw error
    }
    if (record !== undefined && record.expiresAt > Date.now()) {
      records.push(record)
      continue
    }
    // Expired since the last sweep: it goes as the sweep would have taken it.
    if (record !== undefined) await letGo(record)
    await putBack(store, records)
    return { missing: ref }
  }
  return { records }
}

/** Parks claimed records again, as they were: a request that claimed them takes none after all. */
export async function putBack (store: Store, records: readonly ParkedEntry[]): Promise<void> {
  await Promise.all(records.map(async (record) => await store.park(record)))
}

interface KeptState { record: ParkedEntry, letGo: (record: ParkedEntry) => Promise<void> }

/** The writer of an entry claimed from its record: it has the recorded meta, and cleans up when let go. */
const KeptWriter: UploadWriter<KeptState, KeptState, JsonValue> = {
  init: (state) => state,
  meta: (state) => state.record.meta,
  // The entry is finished before anyone can hand it bytes.
  /* c8 ignore next */
  writeChunk: () => { throw new Error('a kept entry takes no bytes') },
  close: (state) => state,
  discard: async (state) => { await state.letGo(state.record) }
}

/**
 * The finished entry a request claimed from its record: status `'done'`, the recorded
 * meta, client info and ref, consumed as any other. When it is let go (consumed, or the
 * request ends without consuming it), `letGo` cleans up after it.
 */
export async function keptEntry (record: ParkedEntry, config: ResolvedConfig, request: FastifyRequest, letGo: (record: ParkedEntry) => Promise<void>): Promise<Entry> {
  // Checked and reported on when it was received: only its writer is other.
  const kept: ResolvedConfig = { ...config, validate: undefined, progress: undefined, writer: () => [KeptWriter, { record, letGo }] }
  const { ref, clientName, clientType, clientSize, clientLastModified } = record
  const entry = new Entry(kept, { ref, clientName, clientType, clientSize, clientLastModified }, request, request.log)
  entry.bytesReceived = (record.snapshot as { offset: number }).offset
  await entry.start()
  await entry.finish()
  return entry
}
