// A store keeps the state of uploads between requests, so it can outlive one request and
// (with a durable store) one process: resumable upload records, the lock each upload is
// written under, and finished entries parked until a request claims them by ref.
//
// Every method is async and every value is JSON: a store hands out copies, never objects
// it keeps, so a remote store behaves as the in-process ones do. A new store implements
// `Store` and passes test/kit/store-contract.ts unchanged. It keeps records by id and
// parked entries by ref; grants locks with a fencing token it also checks on
// `updateUpload` (so a holder that lost its lock cannot move an offset); and removes what
// it hands out (claim, sweep) atomically, so each item reaches exactly one caller. A
// RedisStore, say: records as keys created with SET NX, updates and claims as scripts that
// compare and write in one step, locks as keys holding the token with the timeout as their
// lease, stop requests to the holder over pub/sub.

import { StaleUpdateError } from '../errors.js'
import type { JsonValue } from '../../types/index.js'

/** A resumable upload between requests. */
export interface UploadRecord {
  id: string
  /** The upload config it was created for (ResolvedConfig.key). */
  configKey: string
  owner: string | undefined
  /** The whole upload's length; undefined while deferred. */
  length: number | undefined
  /** Bytes the writer holds durably: what a client is told and resumes from. */
  offset: number
  /** The raw Upload-Metadata header. */
  metadata: string | undefined
  concat: 'partial' | 'final' | undefined
  /** What the writer needs to continue or discard the upload, opaque to the store. */
  snapshot: JsonValue
  createdAt: number
  expiresAt: number
}

/** What an update may change: the rest of a record is fixed at creation. */
export type UploadChange = Partial<Pick<UploadRecord, 'offset' | 'length' | 'snapshot' | 'expiresAt'>>

/**
 * A finished entry waiting for a request to claim it by its ref: what a consumer gets in
 * another process (the entry's meta and what its client said of the file), and what
 * cleaning up after it needs (its config and its writer's snapshot).
 */
export interface ParkedEntry {
  ref: string
  owner: string | undefined
  /** The upload config it was checked against (ResolvedConfig.key). */
  configKey: string
  /** The writer's meta: what a consumer gets. */
  meta: JsonValue
  /** What the writer needs to read or discard the stored bytes. */
  snapshot: JsonValue
  expiresAt: number
  clientName: string
  clientType: string
  clientSize: number | undefined
  clientLastModified: number | undefined
}

/** A held upload lock. */
export interface HeldLock {
  /** Grows with every lock granted: an update under an older token fails. */
  token: number
  /** Lets the lock go; idempotent, and harmless once the lock was taken over. */
  release: () => Promise<void>
}

/** What one sweep removed: each item goes to one sweep only, whose caller then owns it. */
export interface Expired {
  uploads: UploadRecord[]
  parked: ParkedEntry[]
}

export interface Store {
  /**
   * A directory this store holds for this process alone (FileStore's), if any: the
   * plugin's temp files go there, and at start those no record names are removed.
   */
  readonly dir?: string
  /** Adds a record; throws UploadExistsError if its id is taken. */
  createUpload: (record: UploadRecord) => Promise<void>
  getUpload: (id: string) => Promise<UploadRecord | undefined>
  /**
   * Changes a record, only from the offset the caller read and under the lock it holds
   * (its token still the newest, not released); otherwise throws StaleUpdateError, and
   * UploadNotFoundError for a record that is gone. Returns the record as it now is.
   */
  updateUpload: (id: string, expected: { offset: number, token: number }, change: UploadChange) => Promise<UploadRecord>
  /** Every upload record (copies): what the plugin checks its files against at start. */
  uploads: () => Promise<UploadRecord[]>
  /** Removes a record; true for the one caller that removed it. */
  deleteUpload: (id: string) => Promise<boolean>
  /**
   * Resolves once the caller holds the upload's lock. While another holds it, that holder's
   * `onStopRequested` is called (it should save what it has and release); if it has not
   * released `timeout` ms later, it is presumed dead and the lock is taken over. Waiters are
   * served in order, each asking the holder before it to stop.
   */
  lock: (id: string, onStopRequested: () => void, timeout: number) => Promise<HeldLock>
  /** Every parked entry (copies): what the plugin checks its files against at start. */
  parked: () => Promise<ParkedEntry[]>
  /** Parks a finished entry; parking its ref again replaces it. */
  park: (entry: ParkedEntry) => Promise<void>
  /** Takes a parked entry, for the same owner and config only; once: a second claim gets undefined. */
  claim: (ref: string, owner: string | undefined, configKey: string) => Promise<ParkedEntry | undefined>
  /** Drops a parked entry; true for the one caller that dropped it. */
  forget: (ref: string) => Promise<boolean>
  /**
   * Removes and returns what expired by `now` (expiresAt <= now): upload records whose
   * lock nobody holds or awaits (one being written is not expired), and parked entries.
   */
  sweep: (now: number) => Promise<Expired>
  /** Lets go of what the store holds open (a directory claim, a connection). */
  close: () => Promise<void>
}

/** What an object must have to be used as a store (the `store` option is checked against it). */
export const STORE_METHODS = ['createUpload', 'getUpload', 'updateUpload', 'uploads', 'deleteUpload', 'lock', 'parked', 'park', 'claim', 'forget', 'sweep', 'close'] as const

/** A record read back, checked field by field; throws on anything else (a damaged record). */
export function decodeUpload (text: string): UploadRecord {
  const value = objectOf(JSON.parse(text))
  return {
    id: field(value, 'id', isString),
    configKey: field(value, 'configKey', isString),
    owner: optional(value, 'owner', isString),
    length: optional(value, 'length', isCount),
    offset: field(value, 'offset', isCount),
    metadata: optional(value, 'metadata', isString),
    concat: optional(value, 'concat', (v): v is 'partial' | 'final' => v === 'partial' || v === 'final'),
    snapshot: field(value, 'snapshot', isJson),
    createdAt: field(value, 'createdAt', isCount),
    expiresAt: field(value, 'expiresAt', isCount)
  }
}

/** A parked entry read back, checked as `decodeUpload` checks a record. */
export function decodeParked (text: string): ParkedEntry {
  const value = objectOf(JSON.parse(text))
  return {
    ref: field(value, 'ref', isString),
    owner: optional(value, 'owner', isString),
    configKey: field(value, 'configKey', isString),
    meta: field(value, 'meta', isJson),
    snapshot: field(value, 'snapshot', isJson),
    expiresAt: field(value, 'expiresAt', isCount),
    clientName: field(value, 'clientName', isString),
    clientType: field(value, 'clientType', isString),
    clientSize: optional(value, 'clientSize', isCount),
    clientLastModified: optional(value, 'clientLastModified', isFiniteNumber)
  }
}

/**
 * A record with a change applied, if the caller may make it: its offset is the record's and
 * it holds the lock; otherwise StaleUpdateError.
 */
export function applyChange (record: UploadRecord, expected: { offset: number, token: number }, change: UploadChange, holdsLock: boolean): UploadRecord {
  if (!holdsLock) throw new StaleUpdateError(record.id, `lock ${expected.token} is no longer held`)
  if (record.offset !== expected.offset) throw new StaleUpdateError(record.id, `its offset is ${record.offset}, not ${expected.offset}`)
  return { ...record, ...change }
}

/** A parked entry goes only to a request of its owner, for the upload config it was checked against. */
export function claimableBy (entry: ParkedEntry, owner: string | undefined, configKey: string): boolean {
  return entry.owner === owner && entry.configKey === configKey
}

function objectOf (value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new TypeError('not a JSON object')
  return value as Record<string, unknown>
}

function field<T> (value: Record<string, unknown>, name: string, is: (v: unknown) => v is T): T {
  const v = value[name]
  if (!is(v)) throw new TypeError(`field ${name} is missing or wrong`)
  return v
}

function optional<T> (value: Record<string, unknown>, name: string, is: (v: unknown) => v is T): T | undefined {
  return value[name] === undefined ? undefined : field(value, name, is)
}

function isString (v: unknown): v is string { return typeof v === 'string' }
function isCount (v: unknown): v is number { return Number.isSafeInteger(v) && (v as number) >= 0 }
function isFiniteNumber (v: unknown): v is number { return Number.isFinite(v) }
/** Anything JSON.parse gave, but for a missing field. */
function isJson (v: unknown): v is JsonValue { return v !== undefined }
